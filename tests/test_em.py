"""Extreme-deconvolution EM/MAP (bayesmix.em) against scikit-learn, astroML, truth and real data."""

import warnings

import jax
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from bayesmix.em import (
    DegenerateFitWarning,
    EMConvergenceWarning,
    EMOptions,
    EMResult,
    GaussianBackground,
    MAPPrior,
    UniformBackground,
    complete_start,
    em_step,
    fit_em,
    n_free_parameters,
    scan_n_components,
)
from bayesmix.likelihood import (
    MixtureParams,
    Observations,
    as_observations,
    check_params,
    log_likelihood,
)


def _blobs(rng, n_per, means, covs):
    return np.concatenate([rng.multivariate_normal(m, c, n_per) for m, c in zip(means, covs, strict=True)])


def _random_error_covs(rng, n, d, scale):
    a = rng.normal(size=(n, d, d)) * scale
    return a @ np.swapaxes(a, 1, 2) + 0.05 * scale**2 * np.eye(d)


@pytest.fixture(scope="module")
def three_blobs():
    rng = np.random.default_rng(5)
    x = _blobs(rng, 200, [[0, 0], [3, 1], [0, 4]],
               [[[1, 0.3], [0.3, 0.5]], [[0.5, -0.2], [-0.2, 0.8]], [[2, 0], [0, 0.3]]])
    idx = rng.choice(len(x), 3, replace=False)
    init = (np.ones(3) / 3, x[idx], np.tile(np.cov(x.T), (3, 1, 1)))
    return x, init


# --------------------------------------------------------------------------- references


def test_converged_fit_equals_sklearn_without_errors(three_blobs):
    x, (w0, m0, c0) = three_blobs
    # reg_covar=0 in scikit-learn and w=0 here: both exactly unregularised.
    gm = GaussianMixture(3, covariance_type="full", reg_covar=0.0, tol=1e-12, max_iter=10000,
                         weights_init=w0, means_init=m0,
                         precisions_init=np.linalg.inv(c0)).fit(x)
    res = fit_em(0, x, 3, init_params=(w0, m0, c0), w=0.0, tol=1e-10, max_iter=10000)
    assert res.converged and gm.converged_
    ll_sk = gm.score(x) * len(x)
    assert res.log_likelihood == pytest.approx(ll_sk, rel=1e-6)
    # Both stop within their tolerances of the same fixed point.
    np.testing.assert_allclose(res.weights, gm.weights_, atol=1e-5)
    np.testing.assert_allclose(res.means, gm.means_, atol=1e-5)
    np.testing.assert_allclose(res.covariances, gm.covariances_, atol=1e-5)


def test_single_step_equals_sklearn_without_errors(three_blobs):
    x, (w0, m0, c0) = three_blobs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(3, covariance_type="full", reg_covar=0.0, max_iter=1,
                             weights_init=w0, means_init=m0,
                             precisions_init=np.linalg.inv(c0)).fit(x)
    new, _ = em_step(MixtureParams(w0, m0, c0), as_observations(x))
    np.testing.assert_allclose(new.weights, gm.weights_, rtol=1e-10)
    np.testing.assert_allclose(new.means, gm.means_, rtol=1e-10)
    np.testing.assert_allclose(new.covariances, gm.covariances_, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("n_features", [1, 2, 3, 9])  # 9 takes the looped (non-unrolled) path
def test_single_step_equals_astroml_xdgmm(n_features):
    from astroML.density_estimation import XDGMM

    rng = np.random.default_rng(10 + n_features)
    n, k, d = 300, 3, n_features
    x = rng.normal(size=(n, d)) * 2.0
    xerr = _random_error_covs(rng, n, d, 0.4)
    mu = rng.normal(size=(k, d))
    b = rng.normal(size=(k, d, d))
    v = b @ np.swapaxes(b, 1, 2) + np.eye(d)
    alpha = rng.dirichlet(np.full(k, 3.0))
    xd = XDGMM(k)
    xd.mu, xd.V, xd.alpha = mu.copy(), v.copy(), alpha.copy()
    ll_astro = xd.logL(x, xerr)
    xd._EMstep(x, xerr)
    new, ll = em_step(MixtureParams(alpha, mu, v), as_observations(x, xerr), w=0.0)
    assert ll == pytest.approx(ll_astro, rel=1e-12)
    np.testing.assert_allclose(new.weights, xd.alpha, rtol=1e-8)
    np.testing.assert_allclose(new.means, xd.mu, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(new.covariances, xd.V, rtol=1e-8, atol=1e-10)


def test_bovy_w_regularisation_formula():
    # Bovy et al. eq. 38: V = (sum q [(b - m)(b - m)^T + B] + w I) / (q_j + 1).
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 2))
    s = _random_error_covs(rng, 50, 2, 0.3)
    p = MixtureParams(np.array([1.0]), np.zeros((1, 2)), np.eye(2)[None])
    plain, _ = em_step(p, as_observations(x, s), w=0.0)
    reg, _ = em_step(p, as_observations(x, s), w=0.7)
    np.testing.assert_allclose(reg.covariances[0],
                               (50 * plain.covariances[0] + 0.7 * np.eye(2)) / 51, rtol=1e-12)


# --------------------------------------------------------------------------- EM properties


@pytest.mark.parametrize(("n_features", "n_components", "n_stars", "variant"), [
    (1, 2, 60, "plain"),
    (2, 3, 120, "background"),
    (3, 2, 90, "map"),
    (10, 2, 60, "plain"),  # looped linear algebra
])
def test_objective_never_decreases(n_features, n_components, n_stars, variant):
    rng = np.random.default_rng(100 + n_features)
    d, k = n_features, n_components
    worst = 0.0
    for trial in range(8):
        centres = rng.normal(size=(k, d)) * rng.uniform(0.5, 4.0)
        labels = rng.integers(0, k, n_stars)
        x = centres[labels] + rng.normal(size=(n_stars, d)) * rng.uniform(0.3, 2.0, size=d)
        s = _random_error_covs(rng, n_stars, d, rng.uniform(0.05, 1.0))
        kwargs = {"w": [0.0, None, 0.1][trial % 3]}
        if variant == "background":
            lo, hi = x.min(axis=0) - 1, x.max(axis=0) + 1
            kwargs["background"] = UniformBackground(lo, hi, weight=0.2)
        if variant == "map":
            kwargs["prior"] = MAPPrior(weight_concentration=rng.uniform(1, 3),
                                       covariance_strength=rng.uniform(0.5, 5))
        if trial % 2:
            kwargs["sample_weight"] = rng.uniform(0.2, 2.0, n_stars)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EMConvergenceWarning)
            res = fit_em(trial, x, k, errors=s, init="random", max_iter=40, tol=0.0, **kwargs)
        obj = res.objective_history
        assert np.isfinite(obj).all()
        drop = np.diff(obj) / np.maximum(1.0, np.abs(obj[1:]))
        worst = min(worst, drop.min())
    assert worst > -1e-11, f"objective decreased by a relative {-worst:.3g}"


def test_result_consistent_with_likelihood_module_and_usable_as_nuts_init():
    rng = np.random.default_rng(7)
    x = _blobs(rng, 150, [[0, 0], [4, 4]], [np.eye(2), 0.5 * np.eye(2)])
    s = _random_error_covs(rng, len(x), 2, 0.3)
    obs = as_observations(x, s)
    res = fit_em(0, obs, 2)
    assert isinstance(res, EMResult) and isinstance(res.params, MixtureParams)
    check_params(*res.params)  # constrained space: valid weights, SPD covariances
    assert float(log_likelihood(res.params, obs)) == pytest.approx(res.log_likelihood,
                                                                   rel=1e-12)
    assert len(res.log_likelihood_history) == res.n_iter + 1
    assert res.log_likelihood_history[-1] == res.log_likelihood


def test_restarts_are_deterministic_and_keep_the_best():
    rng = np.random.default_rng(8)
    x = _blobs(rng, 100, [[0, 0], [3, 0], [0, 3], [3, 3]], [0.6 * np.eye(2)] * 4)
    a = fit_em(jax.random.key(3), x, 4, n_init=6, init="random")
    b = fit_em(3, x, 4, n_init=6, init="random")
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_array_equal(a.restart_objectives, b.restart_objectives)
    assert a.restart_objectives.shape == (6,)
    assert a.objective == np.nanmax(a.restart_objectives)
    assert a.best_restart == int(np.nanargmax(a.restart_objectives))
    # The restarts start from different points (otherwise the vmap would be pointless).
    with pytest.warns(EMConvergenceWarning):
        starts = fit_em(3, x, 4, n_init=6, init="random", max_iter=0)
    assert np.unique(starts.restart_objectives).size == 6


@pytest.mark.filterwarnings("ignore::bayesmix.em.EMConvergenceWarning")  # fixed iterations
def test_blocked_e_step_equals_single_block():
    rng = np.random.default_rng(9)
    x = _blobs(rng, 101, [[0, 0], [3, 2]], [np.eye(2), 0.3 * np.eye(2)])  # 202: ragged blocks
    s = _random_error_covs(rng, len(x), 2, 0.3)
    one = fit_em(1, x, 2, errors=s, max_iter=30, tol=0.0)
    many = fit_em(1, x, 2, errors=s, max_iter=30, tol=0.0, chunk_size=64)
    np.testing.assert_allclose(many.means, one.means, rtol=1e-10)
    np.testing.assert_allclose(many.covariances, one.covariances, rtol=1e-10)
    np.testing.assert_allclose(many.log_likelihood_history, one.log_likelihood_history,
                               rtol=1e-12)


@pytest.mark.filterwarnings("ignore::bayesmix.em.EMConvergenceWarning")  # fixed iterations
def test_integer_sample_weights_equal_duplicated_stars():
    rng = np.random.default_rng(11)
    x = _blobs(rng, 60, [[0, 0], [3, 2]], [np.eye(2), 0.3 * np.eye(2)])
    s = _random_error_covs(rng, len(x), 2, 0.3)
    reps = rng.integers(1, 4, len(x))
    init = (np.array([0.5, 0.5]), np.array([[0.5, 0.0], [2.5, 2.0]]), np.tile(np.eye(2), (2, 1, 1)))
    weighted = fit_em(0, x, 2, errors=s, sample_weight=reps.astype(float), init_params=init,
                      max_iter=25, tol=0.0)
    dup = fit_em(0, np.repeat(x, reps, axis=0), 2, errors=np.repeat(s, reps, axis=0),
                 init_params=init, max_iter=25, tol=0.0)
    np.testing.assert_allclose(weighted.means, dup.means, rtol=1e-10)
    np.testing.assert_allclose(weighted.covariances, dup.covariances, rtol=1e-9)
    assert weighted.log_likelihood == pytest.approx(dup.log_likelihood, rel=1e-12)
    assert weighted.n_effective == reps.sum()


@pytest.mark.filterwarnings("ignore::bayesmix.em.EMConvergenceWarning")  # fixed iterations
def test_weights_carried_by_the_observations_are_used_not_dropped():
    rng = np.random.default_rng(13)
    x = _blobs(rng, 60, [[0, 0], [3, 2]], [np.eye(2), 0.3 * np.eye(2)])
    s = _random_error_covs(rng, len(x), 2, 0.3)
    reps = rng.integers(1, 4, len(x)).astype(float)
    init = (np.array([0.5, 0.5]), np.array([[0.5, 0.0], [2.5, 2.0]]), np.tile(np.eye(2), (2, 1, 1)))
    carried = Observations(x, s, None, reps)
    assert np.array_equal(np.asarray(as_observations(carried).weight), reps)  # kept, not dropped
    by_data = fit_em(0, carried, 2, init_params=init, max_iter=25, tol=0.0)
    by_argument = fit_em(0, x, 2, errors=s, sample_weight=reps, init_params=init, max_iter=25, tol=0.0)
    np.testing.assert_array_equal(by_data.means, by_argument.means)
    assert by_data.n_effective == reps.sum()
    with pytest.raises(ValueError, match="pass the weights once"):
        fit_em(0, carried, 2, sample_weight=reps)
    with pytest.raises(ValueError, match=r"Observations\.weight must be finite and >= 0"):
        as_observations(Observations(x, s, None, -reps))


def test_frozen_parts_stay_and_parameter_count_drops():
    rng = np.random.default_rng(12)
    x = _blobs(rng, 150, [[0, 0], [4, 1]], [np.eye(2), 0.4 * np.eye(2)])
    init = (np.array([0.3, 0.7]), np.array([[0.2, 0.1], [4.5, 1.0]]),
            np.array([np.eye(2), 0.5 * np.eye(2)]))
    free = fit_em(0, x, 2, init_params=init)
    res = fit_em(0, x, 2, init_params=init, frozen_means=[0], frozen_covariances=[1],
                 frozen_weights=[0])
    np.testing.assert_array_equal(res.means[0], init[1][0])
    np.testing.assert_array_equal(res.covariances[1], init[2][1])
    assert res.weights[0] == init[0][0]
    assert not np.allclose(res.means[1], init[1][1])
    assert free.n_parameters == 1 + 2 * 2 + 2 * 3
    assert res.n_parameters == 0 + 2 + 3
    # Frozen parts also apply over a random initialisation.
    rnd = fit_em(0, x, 2, init="kmeans++", init_params=init, frozen_means=[1])
    np.testing.assert_array_equal(rnd.means[1], init[1][1])


def test_uniform_background_weight_is_recovered():
    rng = np.random.default_rng(13)
    n = 4000
    is_bg = rng.random(n) < 0.3
    x = np.where(is_bg, rng.uniform(-30, 30, n), rng.normal(2.0, 1.5, n))
    err = np.full(n, 0.5)
    x = x + rng.normal(size=n) * err
    res = fit_em(0, x, 1, errors=err, background=UniformBackground([-31], [31], weight=0.1))
    frac = is_bg.mean()
    tol = 5 * np.sqrt(frac * (1 - frac) / n) + 0.01  # + the box's few-percent edge loss
    assert res.background_weight == pytest.approx(frac, abs=tol)
    assert res.weights.sum() + res.background_weight == pytest.approx(1.0)
    assert res.means[0, 0] == pytest.approx(2.0, abs=5 * 1.6 / np.sqrt(0.7 * n))
    assert res.n_parameters == 1 + 1 + 1  # mean, variance, background weight

    fixed = fit_em(0, x, 1, errors=err,
                   background=GaussianBackground([0.0], [[300.0]], weight=0.3, fit_weight=False))
    assert fixed.background_weight == 0.3 and fixed.n_parameters == 2


def test_map_prior_prevents_collapse_where_ml_collapses():
    rng = np.random.default_rng(14)
    x = np.concatenate([rng.normal(size=(200, 2)), [[8.0, 8.0]]])
    init = (np.array([0.99, 0.01]), np.array([[0.0, 0.0], [8.0, 8.0]]),
            np.array([np.eye(2), np.eye(2)]))
    with pytest.warns(EMConvergenceWarning, match="non-finite"):
        ml = fit_em(0, x, 2, init_params=init, w=0.0, max_iter=200)
    # Maximum likelihood shrinks the one-star component onto a point (log L -> inf);
    # the last finite parameters are returned, flagged as not converged.
    assert not ml.converged and np.isfinite(ml.log_likelihood)
    assert np.linalg.eigvalsh(ml.covariances[1])[0] < 1e-6
    mode = 0.25
    res = fit_em(0, x, 2, init_params=init, w=0.0, prior=MAPPrior(2.0, 1.0, mode))
    assert res.converged and np.isfinite(res.objective)
    # One star plus one pseudo-star of covariance `mode`: at least mode / 2.
    assert np.linalg.eigvalsh(res.covariances[1])[0] >= 0.45 * mode
    assert res.weights.min() > 1.0 / len(x)


def test_not_converged_warning_carries_numbers():
    rng = np.random.default_rng(15)
    x = _blobs(rng, 100, [[0, 0], [1.5, 0]], [np.eye(2)] * 2)
    with pytest.warns(EMConvergenceWarning) as rec:
        res = fit_em(0, x, 2, max_iter=2, tol=1e-12)
    w = rec[0].message
    assert w.n_iter == 2 == res.n_iter and w.max_iter == 2 and w.tol == 1e-12
    assert w.last_change > 1e-12 and w.log_likelihood == res.log_likelihood
    assert not res.converged


def test_scan_n_components_picks_k_by_bic():
    rng = np.random.default_rng(16)
    x = _blobs(rng, 150, [[0, 0], [5, 0]], [np.eye(2), np.eye(2)])
    err = np.full_like(x, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EMConvergenceWarning)
        table, fits = scan_n_components(0, x, 3, errors=err, n_init=2, return_fits=True)
    assert list(table["n_components"]) == [1, 2, 3]
    assert list(table["n_parameters"]) == [n_free_parameters(k, 2) for k in (1, 2, 3)]
    np.testing.assert_allclose(table["bic"], [fits[k].bic for k in (1, 2, 3)])
    assert table.meta["best_bic"] == 2
    assert table["delta_bic"].min() == 0.0
    ll = np.asarray(table["log_likelihood"])
    assert ll[1] > ll[0]


# --------------------------------------------------------------------------- recovery


def test_recovers_thin_thick_disc_where_plain_gmm_is_biased_wide():
    from bayesmix.simulate import simulate_mixture, thin_thick_disc_params

    truth = thin_thick_disc_params()
    n = 20000
    sim = simulate_mixture(0, truth, n, error_scale=[0.08, 0.05], max_error_correlation=0.3)
    cat = sim.catalogue
    res = fit_em(1, cat.values, 2, errors=cat.error_covs, n_init=2)
    order = np.argsort(res.means[:, 1])  # thin disc: low [Mg/Fe]
    means, covs = res.means[order], res.covariances[order]
    gm = GaussianMixture(2, covariance_type="full", random_state=0).fit(cat.values)
    gorder = np.argsort(gm.means_[:, 1])
    med_err = np.median(cat.error_covs, axis=0)
    for k in range(2):
        n_k = float(truth.weights[k]) * n
        obs_cov = np.asarray(truth.covariances[k]) + med_err  # what a star's scatter is
        var = np.diag(obs_cov)
        se_cov = np.sqrt((np.outer(var, var) + obs_cov**2) / n_k)  # Wishart-like SE
        se_mean = np.sqrt(var / n_k)
        np.testing.assert_array_less(np.abs(means[k] - truth.means[k]), 6 * se_mean)
        np.testing.assert_array_less(np.abs(covs[k] - truth.covariances[k]), 6 * se_cov)
        # The no-error GMM absorbs the errors: its [Mg/Fe] variance is far too wide.
        gvar = gm.covariances_[gorder[k]][1, 1]
        assert gvar - truth.covariances[k][1, 1] > 10 * se_cov[1, 1]
    assert res.weights[order][0] == pytest.approx(0.7, abs=6 * np.sqrt(0.21 / n))


# --------------------------------------------------------------------------- degenerate input


def test_duplicated_stars_give_finite_distinct_components():
    rng = np.random.default_rng(17)
    pts = rng.normal(size=(5, 2)) * 3
    x = np.repeat(pts, 40, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateFitWarning)
        res = fit_em(0, x, 3, n_init=3)
    assert np.isfinite(res.means).all() and np.isfinite(res.covariances).all()
    assert np.isfinite(res.log_likelihood)
    assert all(np.linalg.eigvalsh(c)[0] > 0 for c in res.covariances)
    assert len({tuple(np.round(m, 8)) for m in res.means}) == 3


def test_more_components_than_distinct_stars_is_a_clear_error():
    x = np.repeat([[0.0, 1.0], [2.0, 3.0]], 10, axis=0)
    with pytest.raises(ValueError, match=r"n_components=3 exceeds the number of distinct"):
        fit_em(0, x, 3)


def test_zero_variance_feature():
    rng = np.random.default_rng(18)
    x = np.column_stack([rng.normal(size=100), np.full(100, 3.0)])
    res = fit_em(0, x, 2)  # default w keeps the flat direction positive definite
    assert np.isfinite(res.log_likelihood) and np.isfinite(res.covariances).all()
    assert np.allclose(res.means[:, 1], 3.0)
    with pytest.raises(ValueError, match=r"feature\(s\) \[1\] have zero variance"):
        fit_em(0, x, 2, w=0.0)
    # With measurement errors on that feature the plain XD fit is well defined.
    errs = np.column_stack([np.full(100, 0.1), np.full(100, 0.2)])
    res = fit_em(0, x, 2, errors=errs, w=0.0)
    assert np.isfinite(res.log_likelihood) and np.isfinite(res.covariances).all()


def test_single_star():
    res = fit_em(0, [[1.0, 2.0]], 1, errors=[[0.1, 0.2]])
    np.testing.assert_allclose(res.means, [[1.0, 2.0]])
    assert np.isfinite(res.covariances).all() and res.n_parameters == 5
    with pytest.raises(ValueError, match="exceeds the number of stars"):
        fit_em(0, [[1.0, 2.0]], 2, errors=[[0.1, 0.2]])
    with pytest.raises(ValueError, match="no spread"):
        fit_em(0, [[1.0, 2.0]], 1)
    point = fit_em(0, [[1.0, 2.0]], 1, w=0.5)
    np.testing.assert_allclose(point.covariances[0], 0.25 * np.eye(2))


def test_identical_components_are_never_silent():
    rng = np.random.default_rng(19)
    x = rng.normal(size=(100, 2))
    same = (np.array([0.5, 0.5]), np.zeros((2, 2)), np.tile(np.eye(2), (2, 1, 1)))
    with pytest.warns(DegenerateFitWarning) as rec:
        fit_em(0, x, 2, init_params=same)
    assert rec[0].message.pairs == [(0, 1)]


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    (([[0.0], [1.0]], 0), {}, "n_components must be a positive integer; got 0"),
    (([[0.0], [1.0]], 2.5), {}, "n_components must be a positive integer"),
    (([[0.0], [np.nan]], 1), {}, "NaN"),
    ((np.zeros((3, 2, 2)), 1), {}, "values must have shape"),
    (([[0.0], [1.0]], 1), {"errors": np.ones(3)}, "errors must have shape"),
    (([[0.0], [1.0]], 1), {"sample_weight": [1.0]}, "sample_weight must have shape"),
    (([[0.0], [1.0]], 1), {"init": "bogus"}, "init must be one of"),
    (([[0.0], [1.0]], 1), {"init": "given"}, "needs init_params"),
    (([[0.0], [1.0]], 1), {"frozen_means": [0]}, "frozen components need init_params"),
    (([[0.0], [1.0]], 1), {"w": -1.0}, "w must be a finite number"),
    (([[0.0], [1.0]], 1), {"max_iter": -1}, "max_iter must be"),
    (([[0.0], [1.0]], 1), {"n_peaks": -2}, "n_peaks must be a non-negative integer"),
    (([[0.0], [1.0]], 1), {"prior": MAPPrior(0.5)}, "weight_concentration must be >= 1"),
    (([[0.0], [1.0]], 1), {"init_params": ([1.0], [[0.0, 0.0]], [np.eye(2)])},
     "init_params has 1 components in 2 dimensions"),
    (([[0.0], [1.0]], 1), {"background": UniformBackground([1.0], [0.0])}, "high > low"),
])
def test_bad_input_is_a_clear_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_em(0, *args, **kwargs)


def test_unknown_option_and_options_object():
    x = np.arange(10.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        fit_em(0, x, 1, maxiter=3)
    with pytest.warns(EMConvergenceWarning, match="no iteration"):
        res = fit_em(0, x, 1, options=EMOptions(max_iter=0), w=0.0)
    assert res.n_iter == 0 and len(res.log_likelihood_history) == 1


# --------------------------------------------------------------------------- starts and distinct optima


def _cluster_found(result, truth):
    sd = np.sqrt(np.asarray(result.covariances)[:, 0, 0])
    narrow = int(np.argmin(sd))
    return abs(float(np.asarray(result.means)[narrow, 0]) - truth.cluster_mean) < 3.0 and sd[narrow] < 10.0


def test_peak_starts_find_the_faint_cluster_that_kmeans_misses():
    """A faint cluster in a broad field: k-means++ cannot put a narrow component on it; a start on a
    density peak can, and reaches a higher likelihood (the global optimum, not a local one)."""
    from bayesmix.simulate import simulate_contaminated_field

    kmeans_wrong = 0
    for seed in range(6):
        sim = simulate_contaminated_field(seed)
        kmeans = fit_em(seed, sim.catalogue, 2, n_init=16, init="kmeans++")
        auto = fit_em(seed, sim.catalogue, 2, n_init=4)
        assert _cluster_found(auto, sim.truth), seed
        assert auto.log_likelihood >= kmeans.log_likelihood - 1e-6
        if not _cluster_found(kmeans, sim.truth):
            kmeans_wrong += 1
            assert auto.log_likelihood > kmeans.log_likelihood + 10.0  # far higher: the real maximum
        assert "peak" in auto.start_kinds and set(kmeans.start_kinds) == {"kmeans++"}
    assert kmeans_wrong >= 3  # the case is really hard for k-means++ alone


def _mean_shift_peaks_float64(x, scale, n_peaks, steps, bandwidth):
    """Brute-force reference of the density-peak search, in float64 numpy: every star moved
    uphill on the narrow kernel density, scored against the broad one, peaks picked greedily."""
    z = x / scale
    n, d = z.shape
    h = bandwidth * n ** (-1.0 / (d + 4))

    def kernel(p, width):
        r2 = ((p[:, None, :] - z[None, :, :]) ** 2).sum(-1)
        return np.exp(-0.5 * r2 / width**2)

    modes = z.copy()
    for _ in range(steps):
        k = kernel(modes, h)
        modes = k @ z / k.sum(1, keepdims=True)
    inside = kernel(modes, h).sum(1)
    expected = kernel(modes, 1.0).sum(1) * h**d
    score = (inside - expected) / np.sqrt(expected + 1.0)
    peaks = []
    for _ in range(n_peaks):
        i = int(np.argmax(score))
        peaks.append((modes[i] * scale, inside[i] - expected[i]))
        score = np.where(((modes - modes[i]) ** 2).sum(1) > (2 * h) ** 2, score, -np.inf)
    return peaks, h * scale


def test_density_peaks_match_a_float64_mean_shift_far_from_the_origin():
    """The peak search runs in float32 on centred data: on features whose offsets are 40-80
    times their spread (where an uncentred float32 distance would lose most of its digits),
    every peak is where a float64 mean-shift puts it, to 1e-3 of the kernel width, with the
    same excess star count, and the first is the faint cluster."""
    from bayesmix import em as em_module

    rng = np.random.default_rng(7)
    field = rng.normal([3000.0, -200.0], [40.0, 5.0], size=(1400, 2))
    cluster = rng.normal([3025.0, -197.0], [1.0, 0.2], size=(100, 2))
    x = np.concatenate([field, cluster])[rng.permutation(1500)]
    prepared = em_module._prepare(x, 2, errors=None, options=EMOptions(), init_params=None,
                                  sample_weight=None, frozen_weights=None, frozen_means=None,
                                  frozen_covariances=None, background=None, prior=None)
    peaks = em_module._density_peaks(prepared.model, prepared.static)
    scale = np.asarray(prepared.model.feature_scale)
    want, width = _mean_shift_peaks_float64(x, scale, prepared.static.n_peaks, em_module._MEAN_SHIFT_STEPS,
                                            em_module._PEAK_BANDWIDTH)
    np.testing.assert_allclose(np.asarray(peaks.bandwidth), width, rtol=1e-12)
    for j, (location, excess) in enumerate(want):
        got = np.asarray(peaks.locations)[j]
        assert np.all(np.abs(got - location) < 1e-3 * width), (j, got, location)
        assert abs(float(peaks.excess[j]) - excess) <= 1e-4 * max(abs(excess), 1.0), j
    assert np.all(np.abs(np.asarray(peaks.locations)[0] - [3025.0, -197.0]) < [1.0, 0.2])


def test_distinct_optima_are_ranked_deduplicated_and_cover_every_start():
    from bayesmix.simulate import simulate_contaminated_field

    sim = simulate_contaminated_field(0)
    res = fit_em(0, sim.catalogue, 2, n_init=4, n_peaks=4)
    assert res.start_kinds == ("kmeans++",) * 4 + ("peak",) * 4
    assert res.restart_objectives.shape == (8,)
    objectives = [o.objective for o in res.optima]
    assert objectives == sorted(objectives, reverse=True) and len(res.optima) >= 2
    starts = sorted(i for o in res.optima for i in o.starts)
    assert starts == [i for i in range(8) if np.isfinite(res.restart_objectives[i])]
    for optimum in res.optima:  # every start of an optimum ended at (about) the same objective
        np.testing.assert_allclose(res.restart_objectives[list(optimum.starts)], optimum.objective, atol=0.5)
        assert optimum.start_kinds == tuple(res.start_kinds[i] for i in optimum.starts)
    best = res.optima[0]
    np.testing.assert_array_equal(np.asarray(best.params.means), res.means)
    assert best.objective == pytest.approx(res.objective) and res.best_restart == best.starts[0]
    record = best.to_dict()
    assert record["n_starts"] == len(best.starts) and len(record["means"]) == 2


def test_same_optimum_ignores_the_order_of_components_but_not_a_shift():
    from bayesmix.em import _same_optimum

    a = check_params([0.3, 0.7], [[0.0], [10.0]], [[[1.0]], [[4.0]]])
    permuted = MixtureParams(a.weights[::-1], a.means[::-1], a.covariances[::-1])
    assert _same_optimum(a, permuted, 2)
    shifted = MixtureParams(a.weights, a.means + np.array([[1.0], [0.0]]), a.covariances)
    assert not _same_optimum(a, shifted, 2)
    reweighted = MixtureParams(np.array([0.4, 0.6]), a.means, a.covariances)
    assert not _same_optimum(a, reweighted, 2)


def test_a_given_start_joins_the_automatic_ones_or_stands_alone():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-5.0, 1.0, 200), rng.normal(5.0, 1.0, 200)])
    start = complete_start(x, [[-4.0], [4.0]])
    auto = fit_em(0, x, 2, n_init=2, init="auto", init_params=start)
    assert auto.start_kinds == ("kmeans++", "kmeans++", "peak", "peak", "peak", "peak", "given")
    alone = fit_em(0, x, 2, init_params=start)  # init=None with init_params: the given start only
    assert alone.start_kinds == ("given",)
    assert auto.objective >= alone.objective - 1e-6
    only_kmeans = fit_em(0, x, 1, n_init=3)  # K = 1: no peak starts (a narrow component needs a broad one)
    assert only_kmeans.start_kinds == ("kmeans++",) * 3


def test_complete_start_fills_in_from_the_data():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 2.0, size=(500, 2))
    start = complete_start(x, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(np.asarray(start.weights), [0.5, 0.5])
    # The data's covariance shared out as the k-means++ starts do: divided by K^(2/D) = 2.
    np.testing.assert_allclose(np.asarray(start.covariances)[0], np.cov(x, rowvar=False) / 2.0, rtol=1e-12)
    given = complete_start(x, [[-1.0, 0.0], [1.0, 0.0]], weights=[1.0, 3.0],
                           covariances=np.tile(np.eye(2), (2, 1, 1)))
    np.testing.assert_allclose(np.asarray(given.weights), [0.25, 0.75])
    with pytest.raises(ValueError, match="means must have shape"):
        complete_start(x, [0.0, 1.0])
    with pytest.raises(ValueError, match="weights must be 2 positive numbers"):
        complete_start(x, [[0.0, 0.0], [1.0, 1.0]], weights=[1.0, -1.0])


# --------------------------------------------------------------------------- real data and size


@pytest.mark.shared_data
def test_ngc288_cluster_mean_matches_baumgardt(shared_data):
    from bayesmix.catalogue import read_catalogue, read_table

    folder = shared_data / "baumgardt_gc_rv"
    cat = read_catalogue(folder / "ngc288_rv.csv", values="RV", errors="E_RV")
    orbits = read_table(folder / "orbits_table.txt", layout="baumgardt_orbits")
    names = np.char.strip(np.asarray(orbits["Cluster"]).astype(str))
    catalogue_rv = float(orbits["RV"][names == "NGC 288"][0])
    res = fit_em(0, cat, 2, n_init=4)
    assert res.converged
    cluster = int(np.argmin(res.covariances[:, 0, 0]))
    assert abs(res.means[cluster, 0] - catalogue_rv) < 1.0
    # The cluster is the majority of the bright, narrow peak; the field is broad.
    assert res.covariances[cluster, 0, 0] < res.covariances[1 - cluster, 0, 0] / 10


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore::bayesmix.em.EMConvergenceWarning")  # fixed iterations
@pytest.mark.parametrize("n_features", [2, 3])
def test_e_step_at_1e5_stars_does_not_hang(n_features):
    # Regression for the batched cholesky + matrix-RHS solve deadlock (issue 3):
    # the unrolled step must finish, repeatedly, at N = 1e5.
    rng = np.random.default_rng(20)
    n, k, d = 100_000, 4, n_features
    obs = Observations(rng.normal(size=(n, d)) * 3, _random_error_covs(rng, n, d, 0.3))
    p = MixtureParams(np.full(k, 1.0 / k), rng.normal(size=(k, d)), np.tile(np.eye(d), (k, 1, 1)))
    for _ in range(5):
        p, ll = em_step(p, obs)
        assert np.isfinite(ll)
    res = fit_em(0, obs, k, max_iter=5, tol=0.0)
    assert np.isfinite(res.log_likelihood_history).all()


def test_identical_starts_share_one_run():
    """A start bitwise identical to an earlier one (k-means++ seeds that end on the same
    partition, two density peaks at one place) takes that start's run instead of repeating
    it: each start's outcome equals EM run from every start on its own, and the data here
    do give such starts, so the shortcut is exercised."""
    from jax import lax

    from bayesmix import em as em_module
    from bayesmix.simulate import simulate_cluster_field

    sim = simulate_cluster_field(0, 1500)
    prepared = em_module._prepare(sim.catalogue, 2, errors=None, options=EMOptions(n_init=4),
                                  init_params=None, sample_weight=None, frozen_weights=None,
                                  frozen_means=None, frozen_covariances=None, background=None, prior=None)
    static, model = prepared.static, prepared.model
    keys = jax.random.split(jax.random.key(0), static.n_starts)
    twins = np.asarray(em_module._identical_twins(em_module._starts(keys, model, static)))
    assert np.all(twins <= np.arange(static.n_starts)) and np.any(twins < np.arange(static.n_starts))
    shared = em_module._fit_core(keys, model, static)
    each = jax.jit(lambda keys, model: lax.map(lambda p: em_module._run_em(p, model, static),
                                               em_module._starts(keys, model, static)))(keys, model)
    assert np.array_equal(np.asarray(shared.t), np.asarray(each.t))
    assert np.array_equal(np.asarray(shared.status), np.asarray(each.status))
    for got, want in zip(jax.tree_util.tree_leaves(shared), jax.tree_util.tree_leaves(each), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)
    for j, i in enumerate(twins):  # a twin's outcome is its original's, exactly
        for leaf in jax.tree_util.tree_leaves(shared.params):
            np.testing.assert_array_equal(np.asarray(leaf)[j], np.asarray(leaf)[i])
