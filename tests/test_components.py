"""Fixed components (bayesmix.components) and the one join of the likelihood (likelihood.log_joint).

Each background's ``log_density`` is checked against scipy, and the joined log joint
against a hand-made concatenation of the Gaussian terms and the extra columns; the last
tests check that EM, the models and the memberships take their background column from
that join (so a background written twice would break them).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import bayesmix.em
from bayesmix.components import GaussianBackground, UniformBackground
from bayesmix.likelihood import (
    MixtureParams,
    Observations,
    as_observations,
    component_log_prob,
    log_joint,
    responsibilities,
    total_log_likelihood,
)


def _random_stars(rng, n_stars, n_features):
    x = rng.normal(scale=3.0, size=(n_stars, n_features))
    a = rng.normal(scale=0.4, size=(n_stars, n_features, n_features))
    return Observations(jnp.asarray(x), jnp.asarray(a @ np.swapaxes(a, 1, 2)))


def _random_params(rng, n_components, n_features):
    a = rng.normal(size=(n_components, n_features, n_features))
    covs = a @ np.swapaxes(a, 1, 2) + 0.3 * np.eye(n_features)
    means = rng.normal(scale=2.0, size=(n_components, n_features))
    weights = rng.dirichlet(np.ones(n_components))
    return MixtureParams(jnp.asarray(weights), jnp.asarray(means), jnp.asarray(covs))


def test_em_reexports_the_same_classes():
    """Users and older code import the backgrounds from bayesmix.em: they must be the very classes."""
    assert bayesmix.em.UniformBackground is UniformBackground
    assert bayesmix.em.GaussianBackground is GaussianBackground


@pytest.mark.parametrize("n_features", [1, 3])
def test_uniform_background_is_the_inverse_box_volume_whatever_the_errors(n_features):
    rng = np.random.default_rng(n_features)
    data = _random_stars(rng, 17, n_features)
    low = rng.uniform(-50.0, -1.0, n_features)
    high = low + rng.uniform(0.5, 80.0, n_features)
    got = UniformBackground(low, high).log_density(data)
    assert isinstance(got, jax.Array) and got.shape == (17,) and got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), np.full(17, -np.log(np.prod(high - low))), rtol=1e-14)


@pytest.mark.parametrize("n_features", [1, 2, 5])
def test_gaussian_background_is_convolved_with_each_stars_errors(n_features):
    rng = np.random.default_rng(10 + n_features)
    data = _random_stars(rng, 19, n_features)
    a = rng.normal(size=(n_features, n_features))
    mean, cov = rng.normal(size=n_features), 4.0 * (a @ a.T + np.eye(n_features))
    got = GaussianBackground(mean, cov).log_density(data)
    assert got.shape == (19,)
    x, s = np.asarray(data.values), np.asarray(data.error_covs)
    want = [multivariate_normal(mean, cov + s[i]).logpdf(x[i]) for i in range(19)]
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-11)


def test_log_density_is_pure_jax_under_jit_and_vmap():
    """A component is a pure function of the data: jit and vmap over stars give the same numbers."""
    rng = np.random.default_rng(3)
    data = _random_stars(rng, 11, 2)
    for bg in (UniformBackground([-5.0, -5.0], [5.0, 7.0]),
               GaussianBackground([0.0, 1.0], np.diag([9.0, 4.0]))):
        eager = np.asarray(bg.log_density(data))
        np.testing.assert_allclose(np.asarray(jax.jit(bg.log_density)(data)), eager, rtol=1e-14)
        per_star = jax.vmap(lambda x, s, bg=bg: bg.log_density(Observations(x[None], s[None]))[0])
        np.testing.assert_allclose(np.asarray(per_star(data.values, data.error_covs)), eager, rtol=1e-14)


@pytest.mark.parametrize("per_star_weights", [False, True])
@pytest.mark.parametrize("n_extra", [0, 1, 2])
def test_log_joint_is_gaussian_columns_then_extra_columns_plus_log_weights(per_star_weights, n_extra):
    rng = np.random.default_rng(20 + n_extra + 5 * per_star_weights)
    n_stars, k, d = 13, 3, 2
    data = _random_stars(rng, n_stars, d)
    params = _random_params(rng, k, d)
    shape = (n_stars,) if per_star_weights else ()
    log_w = np.log(rng.dirichlet(np.ones(k + n_extra), size=shape))
    extra = rng.normal(-5.0, 1.0, size=(n_stars, n_extra))
    got = np.asarray(log_joint(params, data, jnp.asarray(log_w), jnp.asarray(extra) if n_extra else None))
    x, s = np.asarray(data.values), np.asarray(data.error_covs)
    gauss = np.array([[multivariate_normal(params.means[j], params.covariances[j] + s[i]).logpdf(x[i])
                       for j in range(k)] for i in range(n_stars)])
    want = np.concatenate([gauss, extra], axis=1) + log_w
    assert got.shape == (n_stars, k + n_extra)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_log_joint_defaults_and_one_dimensional_extra():
    rng = np.random.default_rng(4)
    data = _random_stars(rng, 9, 2)
    params = _random_params(rng, 2, 2)
    np.testing.assert_allclose(np.asarray(log_joint(params, data)),
                               np.asarray(component_log_prob(params, data) + jnp.log(params.weights)),
                               rtol=1e-15)
    extra = jnp.asarray(rng.normal(size=9))
    lw = jnp.log(jnp.array([0.5, 0.3, 0.2]))
    np.testing.assert_array_equal(np.asarray(log_joint(params, data, lw, extra)),
                                  np.asarray(log_joint(params, data, lw, extra[:, None])))
    with pytest.raises(ValueError, match="extra_log_prob needs log_weights"):
        log_joint(params, data, extra_log_prob=extra)


def test_total_log_likelihood_reduces_the_log_joint_with_a_background():
    """The sampler's hot path (value and gradient) is logsumexp of log_joint with the
    background's column: the custom JVP's component-major copy of the join agrees."""
    rng = np.random.default_rng(5)
    data = _random_stars(rng, 30, 2)
    params = _random_params(rng, 2, 2)
    bg = GaussianBackground([0.0, 0.0], np.diag([40.0, 40.0]))
    lw = jnp.log(jnp.array([0.45, 0.35, 0.2]))

    def via_total(means):
        return total_log_likelihood(params._replace(means=means), data, lw, bg.log_density(data))

    def via_join(means):
        lj = log_joint(params._replace(means=means), data, lw, bg.log_density(data))
        return jnp.sum(jax.nn.logsumexp(lj, axis=1))

    v1, g1 = jax.value_and_grad(via_total)(params.means)
    v2, g2 = jax.value_and_grad(via_join)(params.means)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-10, atol=1e-12)


def test_models_and_memberships_take_the_background_column_from_log_joint():
    """MixtureModel.joint_log_prob and responsibilities_at equal log_joint with the component's
    own log density as the extra column (no second implementation of a background)."""
    from bayesmix.membership import responsibilities_at
    from bayesmix.models import mixture_model

    rng = np.random.default_rng(6)
    data = _random_stars(rng, 25, 2)
    params = _random_params(rng, 2, 2)
    lw = jnp.log(jnp.array([0.5, 0.3, 0.2]))
    for bg in (UniformBackground([-20.0, -20.0], [20.0, 20.0]),
               GaussianBackground([0.0, 0.0], np.eye(2) * 30.0)):
        want = np.asarray(log_joint(params, data, lw, bg.log_density(data)))
        model = mixture_model(data, 2, background=bg)
        np.testing.assert_array_equal(np.asarray(model.joint_log_prob(params, lw, data)), want)
        np.testing.assert_array_equal(np.asarray(model.log_background(data)),
                                      np.asarray(bg.log_density(data)))
        resp = responsibilities_at(params, data, lw, background=bg)
        np.testing.assert_allclose(resp, np.asarray(jax.nn.softmax(jnp.asarray(want), axis=1)), rtol=1e-14)
    # Without extra components the join is the Gaussian responsibilities.
    np.testing.assert_allclose(responsibilities_at(params, data), np.asarray(responsibilities(params, data)),
                               rtol=1e-14)


def test_as_observations_takes_observations_and_checks_them():
    """The one coercion: an Observations comes back as float64 arrays, checked like any input."""
    obs = as_observations(Observations(np.ones((3, 1), np.float32), np.zeros((3, 1, 1))))
    assert obs.values.dtype == jnp.float64 and obs.error_covs.shape == (3, 1, 1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        as_observations(Observations(np.array([[1.0], [np.nan]]), np.zeros((2, 1, 1))))
    with pytest.raises(ValueError, match="errors must be None when data is an Observations"):
        as_observations(obs, np.ones(3))
    with pytest.raises(ValueError, match=r"error_covs must have shape \(n_stars, n_features, n_features\)"):
        as_observations(Observations(np.ones((3, 1)), np.ones((3, 1))))
