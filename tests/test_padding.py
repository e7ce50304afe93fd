"""Stars padded to bucket sizes: zero-weight rows change no value, gradient or output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesmix import _padding, _programs, membership, sampling
from bayesmix.components import UniformBackground
from bayesmix.likelihood import MixtureParams, Observations, log_likelihood, pad_stars, total_log_likelihood
from bayesmix.models import cluster_field_model, mixture_model
from bayesmix.own_model import posterior_from_draws
from bayesmix.simulate import simulate_cluster_field


def test_buckets_are_few_and_waste_at_most_a_quarter():
    sizes = np.arange(1, 300_000)
    buckets = np.array([_padding.bucket(int(n)) for n in sizes])
    assert np.all(buckets >= sizes) and np.all(np.diff(buckets) >= 0)
    assert np.max(buckets[sizes > 256] / sizes[sizes > 256]) <= 1.25
    assert len(set(buckets[sizes <= 65536].tolist())) == 33  # 256, then 4 per octave up to 65536
    assert [_padding.bucket(n) for n in (1, 256, 257, 1500, 1450, 1600, 20000)] == [
        256, 256, 320, 1536, 1536, 1792, 20480]


def _stars(seed, n, d, missing=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * 3
    a = rng.normal(size=(n, d, d)) * 0.3
    covs = a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(d)
    observed = None
    if missing:
        observed = rng.random((n, d)) > 0.3
        observed[:, 0] = True
    return Observations(x, covs, observed)


@pytest.mark.parametrize("d, missing", [(1, False), (2, True), (3, False)])
def test_padded_total_log_likelihood_and_gradient_equal_unpadded(d, missing):
    data = _stars(d, 300, d, missing)
    padded = pad_stars(data)
    assert padded.n_stars == 320 and float(padded.weight.sum()) == 300.0
    np.testing.assert_array_equal(padded.values[300:], np.repeat(data.values[:1], 20, axis=0))
    k = 2
    rng = np.random.default_rng(7)
    means = jnp.asarray(rng.normal(size=(k, d)))
    covs = jnp.asarray(np.stack([np.eye(d) * (1 + i) for i in range(k)]))
    log_w = jnp.asarray(np.log(rng.dirichlet(np.ones(k + 1), size=300)))  # per star, with an extra column
    extra = jnp.asarray(rng.normal(size=300) - 5)

    def total(m, c, lw, obs, ex):
        return total_log_likelihood(MixtureParams(None, m, c), obs, lw, ex)

    grad = jax.value_and_grad(total, argnums=(0, 1, 2))
    value, (g_m, g_c, g_w) = grad(means, covs, log_w, data, extra)
    value_p, (g_mp, g_cp, g_wp) = grad(means, covs, _padding.pad_rows(log_w, 320), padded,
                                       _padding.pad_rows(extra, 320))
    np.testing.assert_allclose(value_p, value, rtol=1e-13)
    np.testing.assert_allclose(g_mp, g_m, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(g_cp, g_c, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(g_wp[:300], g_w, rtol=1e-12)
    np.testing.assert_array_equal(g_wp[300:], 0.0)  # padding rows: no weight, no gradient
    # The custom JVP against autodiff of the plain (weighted) log-likelihood.
    plain = jax.grad(lambda m: log_likelihood(MixtureParams(jnp.ones(k) / k, m, covs), padded))(means)
    custom = jax.grad(lambda m: total_log_likelihood(MixtureParams(jnp.ones(k) / k, m, covs), padded))(means)
    np.testing.assert_allclose(custom, plain, rtol=1e-10, atol=1e-12)


def _potential(model, obs, covariates, theta):
    from numpyro.infer.util import potential_energy

    args = (obs, covariates, model.hyperparameters())
    return jax.value_and_grad(lambda t: potential_energy(model.model, args, {}, t))(theta)


@pytest.mark.parametrize("kind", ["plain", "background", "spatial"])
def test_padded_model_potential_equals_unpadded(kind):
    """The NumPyro program (priors, per-star spatial weights and member kinematics, a
    background) on padded stars: value and gradient as unpadded."""
    from numpyro.infer.util import initialize_model

    from bayesmix.models import MemberKinematics, SpatialLaw
    from bayesmix.spatial import simulate_cluster_kinematics

    if kind == "spatial":
        sim = simulate_cluster_kinematics(0, 150, 150)
        obs, covariates = sim.data, dict(sim.covariates)
        model = cluster_field_model(obs, covariates=covariates, spatial=SpatialLaw(sim.footprint),
                                    kinematics=MemberKinematics(radius="R"))
    else:
        cat = simulate_cluster_field(3, 300).catalogue
        obs, covariates = sampling._resolve_data(cat, None)[0], {}
        model = (mixture_model(cat, 2, background=UniformBackground(low=(-400.0,), high=(400.0,)))
                 if kind == "background" else cluster_field_model(cat))
    assert membership.pads_stars(model)
    p_obs, p_cov = membership.padded_data(model, obs, covariates)
    assert p_obs.n_stars == 320 and all(v.shape == (320,) for v in p_cov.values())
    init = initialize_model(jax.random.key(0), model.model,
                            model_args=(obs, covariates, model.hyperparameters()))
    theta = init.param_info.z
    value, grad = _potential(model, obs, covariates, theta)
    value_p, grad_p = _potential(model, p_obs, p_cov, theta)
    np.testing.assert_allclose(value_p, value, rtol=1e-12)
    for name in grad:
        np.testing.assert_allclose(grad_p[name], grad[name], rtol=1e-10, atol=1e-10)


def test_radius_law_models_keep_their_size():
    """A radius law's weights average over the stars: padding would bias them, so no padding."""
    sim = simulate_cluster_field(3, 300)
    model = cluster_field_model(sim.catalogue, radius_fraction="R_proj")
    obs, covariates, _ = sampling._resolve_data(sim.catalogue, None)
    assert not membership.pads_stars(model)
    assert membership.padded_data(model, obs, covariates)[0] is obs


@pytest.fixture(scope="module")
def own_fit():
    """A fit from given draws (no sampling): 300 stars, two components, 2 chains x 30 draws."""
    sim = simulate_cluster_field(5, 300)
    rng = np.random.default_rng(1)
    draws = {"weights": rng.dirichlet([30, 70], size=(2, 30)),
             "means": np.stack([rng.normal(-40, 0.3, (2, 30)), rng.normal(-20, 2, (2, 30))], -1)[..., None],
             "scales": np.stack([rng.uniform(2, 3, (2, 30)), rng.uniform(40, 50, (2, 30))], -1)[..., None]}
    return posterior_from_draws(draws, sim.catalogue, component_names=["cluster", "field"])


def test_per_star_outputs_equal_unpadded(own_fit, monkeypatch):
    """Memberships, the pointwise log-likelihood and mock catalogues have the catalogue's rows
    and the values of unpadded programs (mocks included: random draws come row by row)."""
    padded = (membership.membership_probabilities(own_fit, star_chunk=128),
              sampling.add_log_likelihood(own_fit).idata.log_likelihood["values"].values,
              membership.posterior_predictive(0, own_fit, 4),
              membership.posterior_predictive_counts(0, own_fit, [np.linspace(-200, 200, 21)], 3))
    monkeypatch.setattr(_padding, "bucket", lambda n: n)
    plain = (membership.membership_probabilities(own_fit, star_chunk=128),
             sampling.add_log_likelihood(own_fit).idata.log_likelihood["values"].values,
             membership.posterior_predictive(0, own_fit, 4),
             membership.posterior_predictive_counts(0, own_fit, [np.linspace(-200, 200, 21)], 3))
    assert padded[0].mean.shape == (300, 2) and padded[1].shape == (2, 30, 300)
    assert padded[2].shape == (4, 300, 1)
    for name in ("mean", "p16", "p84"):
        np.testing.assert_allclose(getattr(padded[0], name), getattr(plain[0], name), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(padded[1], plain[1], rtol=1e-12)
    np.testing.assert_allclose(padded[2], plain[2], rtol=1e-12)
    np.testing.assert_array_equal(padded[3], plain[3])


def test_program_counts_are_recorded():
    _programs.count_compilations()
    _programs.program_counts(reset=True)
    jax.jit(lambda x: x * 3.0 + 1.0)(jnp.arange(7.0))
    counts = _programs.program_counts()
    assert counts.get("jax_traces", 0) >= 1 and counts.get("jax_executables", 0) >= 1
