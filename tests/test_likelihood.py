"""The likelihood core against brute force: scipy, a numpy loop, scikit-learn, finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.special import logsumexp as np_logsumexp
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

from bayesmix.likelihood import (
    UNROLL_MAX_FEATURES,
    MixtureParams,
    Observations,
    as_observations,
    check_params,
    cholesky_factor,
    component_log_prob,
    log_joint,
    log_likelihood,
    log_likelihood_per_star,
    responsibilities,
    total_log_likelihood,
)


def random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T + 0.2 * np.eye(d))


def random_problem(rng, n_stars, n_components, n_features, with_errors=True):
    x = rng.normal(scale=2.0, size=(n_stars, n_features))
    w = rng.dirichlet(np.ones(n_components))
    mu = rng.normal(scale=2.0, size=(n_components, n_features))
    cov = np.stack([random_spd(rng, n_features) for _ in range(n_components)])
    if with_errors:
        s = np.stack([random_spd(rng, n_features, 0.3) for _ in range(n_stars)])
    else:
        s = np.zeros((n_stars, n_features, n_features))
    params = MixtureParams(jnp.asarray(w), jnp.asarray(mu), jnp.asarray(cov))
    return params, Observations(jnp.asarray(x), jnp.asarray(s)), (x, w, mu, cov, s)


# Both code paths: unrolled small-D arithmetic and LAPACK above UNROLL_MAX_FEATURES.
DIMS = [1, 2, 5, UNROLL_MAX_FEATURES + 2]


@pytest.mark.parametrize("n_features", DIMS)
def test_component_log_prob_matches_scipy(n_features):
    rng = np.random.default_rng(n_features)
    params, data, (x, _, mu, cov, s) = random_problem(rng, 23, 4, n_features)
    got = np.asarray(jax.jit(component_log_prob)(params, data))
    assert got.shape == (23, 4)
    want = np.array([[multivariate_normal(mu[k], cov[k] + s[i]).logpdf(x[i]) for k in range(4)]
                     for i in range(23)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("n_features", DIMS)
def test_mixture_log_likelihood_matches_numpy_loop(n_features):
    rng = np.random.default_rng(100 + n_features)
    params, data, (x, w, mu, cov, s) = random_problem(rng, 17, 3, n_features)
    per_star = []
    for i in range(x.shape[0]):
        terms = []
        for k in range(w.size):
            total = cov[k] + s[i]
            r = x[i] - mu[k]
            sign, logdet = np.linalg.slogdet(total)
            assert sign > 0
            maha = r @ np.linalg.solve(total, r)
            terms.append(np.log(w[k]) - 0.5 * (n_features * np.log(2 * np.pi) + logdet + maha))
        per_star.append(np_logsumexp(terms))
    per_star = np.array(per_star)
    np.testing.assert_allclose(np.asarray(log_likelihood_per_star(params, data)), per_star,
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(float(log_likelihood(params, data)), per_star.sum(), rtol=1e-12)
    sw = rng.uniform(0.1, 2.0, size=x.shape[0])
    np.testing.assert_allclose(float(log_likelihood(params, data, sample_weight=jnp.asarray(sw))),
                               (sw * per_star).sum(), rtol=1e-12)


def test_per_star_log_weights_override():
    rng = np.random.default_rng(7)
    params, data, _ = random_problem(rng, 11, 2, 1)
    lw = np.log(rng.dirichlet(np.ones(2), size=11))
    got = np.asarray(log_joint(params, data, jnp.asarray(lw)))
    want = np.asarray(component_log_prob(params, data)) + lw
    np.testing.assert_allclose(got, want, atol=1e-14)
    r = np.asarray(responsibilities(params, data, jnp.asarray(lw)))
    np.testing.assert_allclose(r, np.exp(want - np_logsumexp(want, axis=1, keepdims=True)),
                               atol=1e-12)


@pytest.mark.parametrize("n_features", [1, 2, 3])
def test_responsibilities_match_sklearn_without_errors(n_features):
    rng = np.random.default_rng(200 + n_features)
    params, data, (x, w, mu, cov, _) = random_problem(rng, 50, 3, n_features, with_errors=False)
    gm = GaussianMixture(n_components=3, covariance_type="full")
    gm.weights_, gm.means_, gm.covariances_ = w, mu, cov
    gm.precisions_cholesky_ = np.linalg.cholesky(np.linalg.inv(cov))
    np.testing.assert_allclose(np.asarray(responsibilities(params, data)), gm.predict_proba(x),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(log_likelihood_per_star(params, data)),
                               gm.score_samples(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("n_features", [1, 2, UNROLL_MAX_FEATURES + 1])
def test_gradients_finite_and_match_finite_differences(n_features):
    rng = np.random.default_rng(300 + n_features)
    params, data, _ = random_problem(rng, 9, 2, n_features)
    chol = np.linalg.cholesky(np.asarray(params.covariances))

    # Differentiate through an unconstrained parameterisation, as the samplers will.
    def loss(theta):
        logits, mu, lower = theta
        w = jax.nn.softmax(logits)
        cov = lower @ jnp.swapaxes(lower, -1, -2)
        return log_likelihood(MixtureParams(w, mu, cov), data)

    theta = (jnp.log(params.weights), params.means, jnp.asarray(chol))
    grads = jax.grad(loss)(theta)
    for g in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(np.asarray(g)))
    eps = 1e-6
    flat, unravel = ravel_pytree(theta)
    gflat, _ = ravel_pytree(grads)
    for idx in rng.choice(flat.size, size=min(12, flat.size), replace=False):
        step = jnp.zeros_like(flat).at[idx].set(eps)
        fd = (loss(unravel(flat + step)) - loss(unravel(flat - step))) / (2 * eps)
        np.testing.assert_allclose(float(gflat[idx]), float(fd), rtol=1e-5, atol=1e-6)


def test_vmap_over_parameter_draws_equals_loop():
    rng = np.random.default_rng(4)
    params, data, _ = random_problem(rng, 13, 2, 2)
    shifts = jnp.asarray(rng.normal(size=(5, 2, 2)))
    batched = MixtureParams(jnp.broadcast_to(params.weights, (5, 2)), params.means + shifts,
                            jnp.broadcast_to(params.covariances, (5, 2, 2, 2)))
    got = jax.vmap(log_likelihood, in_axes=(0, None))(batched, data)
    want = [log_likelihood(MixtureParams(params.weights, params.means + shifts[i],
                                         params.covariances), data) for i in range(5)]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-13)


def test_cholesky_factor_matches_numpy():
    rng = np.random.default_rng(5)
    for d in DIMS:
        a = np.stack([random_spd(rng, d) for _ in range(6)])
        np.testing.assert_allclose(np.asarray(cholesky_factor(jnp.asarray(a))),
                                   np.linalg.cholesky(a), atol=1e-12)


def test_non_positive_definite_total_covariance_gives_nan_not_a_number():
    # Inside jit nothing can raise; the contract is NaN so callers can reject the point.
    params = MixtureParams(jnp.array([1.0]), jnp.zeros((1, 2)), jnp.array([[[1.0, 2.0], [2.0, 1.0]]]))
    data = Observations(jnp.zeros((3, 2)), jnp.zeros((3, 2, 2)))
    assert np.all(np.isnan(np.asarray(component_log_prob(params, data))))


# --------------------------------------------------------------------------- boundary checks


def test_as_observations_shapes_and_standard_errors():
    obs = as_observations(np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.2, 0.3]))
    assert obs.values.shape == (3, 1) and obs.error_covs.shape == (3, 1, 1)
    np.testing.assert_allclose(np.asarray(obs.error_covs[:, 0, 0]), [0.01, 0.04, 0.09])
    obs = as_observations(np.ones((4, 2)))
    assert np.all(np.asarray(obs.error_covs) == 0) and obs.values.dtype == jnp.float64


@pytest.mark.parametrize(
    ("values", "errors", "match"),
    [
        (np.ones((3, 2, 2)), None, "shape"),
        (np.empty((0, 2)), None, "empty"),
        (np.array([[1.0, np.nan]]), None, "NaN"),
        (np.array([[1.0], [np.inf]]), None, "NaN or infinite"),
        (np.ones((3, 2)), np.ones((3, 3)), "shape"),
        (np.ones((3, 2)), -np.ones((3, 2)), "negative"),
        (np.ones((2, 2)), np.array([[[1.0, 0.5], [0.4, 1.0]]] * 2), "symmetric"),
        (np.ones((2, 2)), np.array([[[1.0, 2.0], [2.0, 1.0]]] * 2), "positive semi-definite"),
        (np.array([["a"]]), None, "numeric"),
    ],
)
def test_as_observations_rejects_bad_input(values, errors, match):
    with pytest.raises(ValueError, match=match):
        as_observations(values, errors)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([0.5, 0.6], [[0.0], [1.0]], [[[1.0]], [[1.0]]]), "sum to 1"),
        (([0.5, 0.5], [[0.0], [1.0]], [[[1.0]], [[-1.0]]]), r"covariances\[1\] is not positive"),
        (([1.0], [[0.0, 1.0]], [[[1.0, 0.0], [0.1, 1.0]]]), "symmetric"),
        (([1.0], [[0.0, 1.0]], [[[1.0]]]), "shape"),
        (([0.5, 0.5], [[0.0, 1.0]], [[[1.0, 0.0], [0.0, 1.0]]]), "weights must have shape"),
        (([1.0], [[np.nan]], [[[1.0]]]), "means has NaN"),
    ],
)
def test_check_params_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        check_params(*args)


def test_check_params_accepts_1d_shorthand():
    p = check_params([0.3, 0.7], [1.0, 2.0], [4.0, 9.0])
    assert p.means.shape == (2, 1) and p.covariances.shape == (2, 1, 1)
    assert p.n_components == 2 and p.n_features == 1


def test_float64_is_enabled():
    assert jnp.zeros(1).dtype == jnp.float64


# --------------------------------------------------------------------------- total_log_likelihood


def _reference_total(means, covs, log_w, values, error_covs, extra=None):
    """Plain autodiff through component_log_prob: what the custom JVP must reproduce."""
    lp = component_log_prob(MixtureParams(None, means, covs), Observations(values, error_covs))
    if extra is not None:
        lp = jnp.concatenate([lp, extra], axis=1)
    return jnp.sum(jax.nn.logsumexp(lp + log_w, axis=1))


def _total(means, covs, log_w, values, error_covs, extra=None):
    return total_log_likelihood(MixtureParams(None, means, covs), Observations(values, error_covs),
                                log_w, extra)


def _assert_close_rel(got, want, rtol):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(np.abs(want).max(), 1e-300))


def _total_problem(rng, n_features, per_star_weights, with_extra, n_stars=40, n_components=3):
    params, data, _ = random_problem(rng, n_stars, n_components, n_features)
    n_total = n_components + int(with_extra)
    shape = (n_stars,) if per_star_weights else ()
    log_w = jnp.asarray(np.log(rng.dirichlet(np.ones(n_total), size=shape)))
    extra = jnp.asarray(rng.normal(-4.0, 1.0, size=(n_stars, 1))) if with_extra else None
    return (params.means, params.covariances, log_w, data.values, data.error_covs), extra


def _value_grad_hvp(fn, with_extra):
    """One compiled program: value, gradient in every array input, and a Hessian-vector
    product in (means, covariances, log_weights) (forward over reverse)."""

    def out(primals, extra, tangent):
        def f(*args):
            return fn(*args) if with_extra else fn(*args, None)

        args = (*primals, extra) if with_extra else primals
        grads = jax.grad(f, tuple(range(len(args))))(*args)

        def f3(mu, cov, lw):
            return fn(mu, cov, lw, *primals[3:], extra)

        _, hvp = jax.jvp(jax.grad(f3, (0, 1, 2)), primals[:3], tangent)
        return f(*args), grads, hvp

    return jax.jit(out)


# D = 1 (no factorisation), 2 and 3 (unrolled), UNROLL_MAX_FEATURES + 1 (looped); each D
# sees both log-weight shapes and both with and without an extra (background) column.
TOTAL_CASES = [(d, per_star, extra) for d in (1, 2, 3, UNROLL_MAX_FEATURES + 1)
               for per_star, extra in ((False, False), (True, True))]
TOTAL_CASES += [(2, False, True), (2, True, False)]


@pytest.mark.parametrize(("n_features", "per_star_weights", "with_extra"), TOTAL_CASES,
                         ids=[f"D{d}-{'wNK' if p else 'wK'}-{'extra' if e else 'noextra'}"
                              for d, p, e in TOTAL_CASES])
def test_total_log_likelihood_value_gradient_hessian_match_autodiff(n_features, per_star_weights,
                                                                    with_extra):
    """Value, gradient (means, covariances, log_weights, values, error_covs and the extra
    column) and Hessian-vector product in (means, covariances, log_weights) equal plain
    autodiff of logsumexp(component_log_prob + log_w).

    Breaks if a closed-form score term (r u, r (u u^T - T^-1)/2, r) is wrong on any of the
    D == 1, unrolled or looped paths, if per-star weights or the extra components are
    mis-indexed, or if the JVP rule is not itself differentiable to the right answer. A
    random direction for the Hessian sees every column of it (the unrolled path's
    lower-triangle covariance derivative equals the reference's exactly).
    """
    rng = np.random.default_rng(1000 + 10 * n_features + 2 * per_star_weights + with_extra)
    primals, extra = _total_problem(rng, n_features, per_star_weights, with_extra)
    tangent = tuple(jnp.asarray(rng.normal(size=p.shape)) for p in primals[:3])
    got = _value_grad_hvp(_total, with_extra)(primals, extra, tangent)
    want = _value_grad_hvp(_reference_total, with_extra)(primals, extra, tangent)
    _assert_close_rel(got[0], want[0], 1e-12)
    assert len(got[1]) == 5 + with_extra
    for g, w in zip(got[1], want[1], strict=True):
        _assert_close_rel(g, w, 1e-10)
    for g, w in zip(got[2], want[2], strict=True):
        _assert_close_rel(g, w, 1e-9)


def _mixed_total(means, covs, log_w, values, error_covs, extra=None):
    return total_log_likelihood(MixtureParams(None, means, covs), Observations(values, error_covs),
                                log_w, extra, precision="mixed")


@pytest.mark.parametrize(("n_features", "per_star_weights", "with_extra"), TOTAL_CASES,
                         ids=[f"D{d}-{'wNK' if p else 'wK'}-{'extra' if e else 'noextra'}"
                              for d, p, e in TOTAL_CASES])
def test_mixed_precision_value_gradient_hessian_match_autodiff(n_features, per_star_weights, with_extra):
    """precision="mixed" (float32 per star, float64 sums) gives float64 autodiff's value,
    gradient and Hessian-vector product to float32's relative precision (6e-8 per star).

    Breaks if a mixed sum accumulates in float32 (its error grows with the stars), if a
    float32 residual is formed from float32 data and means (cancellation), or if the
    rounding to float32 breaks the JVP rule's own derivative.
    """
    rng = np.random.default_rng(2000 + 10 * n_features + 2 * per_star_weights + with_extra)
    primals, extra = _total_problem(rng, n_features, per_star_weights, with_extra, n_stars=300)
    tangent = tuple(jnp.asarray(rng.normal(size=p.shape)) for p in primals[:3])
    got = _value_grad_hvp(_mixed_total, with_extra)(primals, extra, tangent)
    want = _value_grad_hvp(_reference_total, with_extra)(primals, extra, tangent)
    assert np.asarray(got[0]).dtype == np.float64
    _assert_close_rel(got[0], want[0], 1e-6)
    for g, w in zip(got[1], want[1], strict=True):
        assert np.asarray(g).dtype == np.float64
        _assert_close_rel(g, w, 1e-5)
    # A responsibility in float32 is exact to about 1e-7 absolute: per-star entries of the
    # Hessian (per-star log weights) that are themselves that small carry it as their error.
    for g, w in zip(got[2], want[2], strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4,
                                   atol=max(1e-4 * float(np.abs(np.asarray(w)).max()), 1e-6))


@pytest.mark.parametrize("n_features", [1, 2])
def test_mixed_precision_with_star_weights_missing_features_and_many_stars(n_features):
    """Mixed precision with padding (weight 0) and fractional star weights, missing
    features, and 30000 stars, whose float64 sums keep the total's error at float32's
    per-star precision times sqrt(N) rather than N; and the program really computes in
    float32 (the HLO holds f32 arithmetic), so the option is not a silent float64 path."""
    rng = np.random.default_rng(7 + n_features)
    n = 30000
    x = rng.normal(100.0, 40.0, size=(n, n_features))  # far from 0: a float32 residual would cancel
    err = rng.uniform(0.5, 3.0, size=(n, n_features))
    observed = np.ones((n, n_features), bool)
    if n_features > 1:
        observed[rng.random(n) < 0.2, 1] = False
    obs = as_observations(np.where(observed, x, np.nan), err, observed=observed)
    weight = np.where(rng.random(n) < 0.1, 0.0, rng.uniform(0.2, 1.0, n))
    obs = obs._replace(weight=jnp.asarray(weight))
    means = jnp.asarray([[95.0] * n_features, [101.0] * n_features])
    covs = jnp.asarray(np.stack([np.eye(n_features) * 4.0, np.eye(n_features) * 1600.0]))
    log_w = jnp.log(jnp.asarray([0.3, 0.7]))

    def f(precision):
        def total(m, c, lw):
            return total_log_likelihood(MixtureParams(None, m, c), obs, lw, precision=precision)
        return jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2)))

    v64, g64 = f("float64")(means, covs, log_w)
    v32, g32 = f("mixed")(means, covs, log_w)
    assert abs(float(v32 - v64)) < 1e-5 * abs(float(v64)) and abs(float(v32 - v64)) < 0.05
    for g, w in zip(g32, g64, strict=True):
        _assert_close_rel(g, w, 1e-5)
    hlo = jax.jit(lambda m: total_log_likelihood(MixtureParams(None, m, covs), obs, log_w,
                                                 precision="mixed")).lower(means).as_text()
    assert "f32" in hlo
    with pytest.raises(ValueError, match="precision='half'"):
        total_log_likelihood(MixtureParams(None, means, covs), obs, log_w, precision="half")


def test_total_log_likelihood_equals_log_likelihood_with_default_weights():
    """With no log_weights it is log_likelihood with log(params.weights) (the documented default)."""
    rng = np.random.default_rng(11)
    params, data, _ = random_problem(rng, 30, 3, 2)
    np.testing.assert_allclose(float(total_log_likelihood(params, data)),
                               float(log_likelihood(params, data)), rtol=1e-13)


def test_total_log_likelihood_vmap_over_means_equals_loop():
    """vmap over a batch of means (value and gradient) equals a Python loop: breaks if the
    custom JVP's batching rule mixes up the batch axis."""
    rng = np.random.default_rng(12)
    (mu, cov, lw, x, s), extra = _total_problem(rng, 2, True, True)
    batch = mu + jnp.asarray(rng.normal(scale=0.5, size=(4, *mu.shape)))

    def f(m):
        return _total(m, cov, lw, x, s, extra)

    vals, grads = jax.jit(jax.vmap(jax.value_and_grad(f)))(batch)
    one = jax.jit(jax.value_and_grad(f))
    for i in range(batch.shape[0]):
        v, g = one(batch[i])
        np.testing.assert_allclose(float(vals[i]), float(v), rtol=1e-13)
        np.testing.assert_allclose(np.asarray(grads[i]), np.asarray(g), rtol=1e-12, atol=1e-12)


def test_total_log_likelihood_extra_needs_log_weights_and_accepts_1d():
    """extra_log_prob without log_weights is a ValueError (its weight is unknown); a 1-D
    extra_log_prob is one extra column."""
    rng = np.random.default_rng(13)
    params, data, _ = random_problem(rng, 10, 2, 2)
    extra = jnp.asarray(rng.normal(size=10))
    with pytest.raises(ValueError, match="log_weights"):
        total_log_likelihood(params, data, extra_log_prob=extra)
    lw = jnp.log(jnp.array([0.5, 0.3, 0.2]))
    np.testing.assert_allclose(float(total_log_likelihood(params, data, lw, extra)),
                               float(total_log_likelihood(params, data, lw, extra[:, None])), rtol=1e-14)


def test_observations_and_seeds_reach_the_device_without_compiling():
    """A fresh run's host-side glue runs no JAX program: ``jnp.asarray`` of a NumPy array and
    ``jax.random.key`` each compile one per new shape (3-4 ms each from the cache, some thirty
    in a run); ``device_array`` and ``as_key`` copy instead."""
    import jax

    from bayesmix._random import as_key
    from bayesmix._x64 import device_array

    compiled = []

    def listener(event, duration, **kwargs):
        if event.endswith("backend_compile_duration"):
            compiled.append(event)

    rng = np.random.default_rng(0)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        # Shapes no other test uses, so nothing is found in this process's caches.
        observed = rng.random((1237, 3)) > 0.1
        observed[:, 0] = True  # every star measured in something
        obs = as_observations(rng.normal(size=(1237, 3)), np.full((1237, 3), 0.1), observed=observed)
        arrays = [device_array(rng.normal(size=(7, 11, 13))), device_array(3.5), device_array(17, np.int32)]
        key = as_key(2**40 + 99)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled == []
    assert obs.values.dtype == np.float64 and obs.observed.dtype == bool
    assert [a.dtype for a in arrays] == [np.float64, np.float64, np.int32]
    assert all(isinstance(a, jax.Array) for a in (*arrays, obs.values, obs.error_covs, key))
