"""DeconvolvedGaussianMixture: scikit-learn's estimator checks, GaussianMixture, truth, API and NUTS."""

import copy
import inspect
import pickle
import re
import warnings

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
import sklearn
from astropy.table import MaskedColumn, QTable, Table
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from bayesmix import _padding
from bayesmix.diagnostics import ConvergenceReport
from bayesmix.em import EMResult, n_free_parameters
from bayesmix.estimator import DeconvolvedGaussianMixture
from bayesmix.likelihood import MixtureParams, as_observations, log_likelihood_per_star, responsibilities
from bayesmix.sampling import PosteriorFit
from bayesmix.simulate import simulate_mixture, thin_thick_disc_params

# Checks of scikit-learn's suite that this estimator fails on purpose, with the reason; the
# class docstring lists the same ones (test_deviations_are_documented).
EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data": (
        "with n_components >= 2 the random EM initialisation (k-means++ seeding) draws from the rows, "
        "so integer weights and repeated rows start EM from different points and may end in different "
        "local optima; the likelihood is the same, and the fits agree when they reach the same optimum "
        "(test_sample_weights_equal_repeated_rows)"
    ),
}


def _two_blobs(seed, n=240, err=None):
    """Two well-separated 2-D Gaussian clusters (2:1), optionally with per-star standard errors."""
    rng = np.random.default_rng(seed)
    n0 = 2 * n // 3
    x = np.concatenate([
        rng.multivariate_normal([0.0, 0.0], [[1.0, 0.3], [0.3, 0.5]], n0),
        rng.multivariate_normal([6.0, 3.0], [[0.6, -0.2], [-0.2, 0.8]], n - n0),
    ])
    if err is None:
        return x, None
    sigma = rng.uniform(0.5 * err, 1.5 * err, x.shape)
    return x + sigma * rng.normal(size=x.shape), sigma


def _by_first_mean(means):
    return np.argsort(np.asarray(means)[:, 0])


# --------------------------------------------------------------------------- scikit-learn's checks


@parametrize_with_checks([DeconvolvedGaussianMixture(n_components=2, random_state=0)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_deviations_are_documented():
    doc = inspect.getdoc(DeconvolvedGaussianMixture)
    for name in EXPECTED_FAILED_CHECKS:
        assert name in doc, f"{name} is an expected failure but not listed in the class docstring"


def test_sample_weights_equal_repeated_rows():
    x, sigma = _two_blobs(3, 120, err=0.2)
    repeats = np.random.default_rng(4).integers(0, 4, len(x))
    kwargs = {"n_components": 2, "random_state": 0, "tol": 1e-9}
    weighted = DeconvolvedGaussianMixture(**kwargs).fit(x, X_err=sigma, sample_weight=repeats)
    repeated = DeconvolvedGaussianMixture(**kwargs).fit(np.repeat(x, repeats, axis=0),
                                                        X_err=np.repeat(sigma, repeats, axis=0))
    np.testing.assert_allclose(weighted.em_.log_likelihood, repeated.em_.log_likelihood, rtol=1e-9)
    a, b = _by_first_mean(weighted.means_), _by_first_mean(repeated.means_)
    np.testing.assert_allclose(weighted.weights_[a], repeated.weights_[b], rtol=1e-6)
    np.testing.assert_allclose(weighted.means_[a], repeated.means_[b], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(weighted.covariances_[a], repeated.covariances_[b], rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------- against GaussianMixture


def test_without_errors_agrees_with_sklearn_gaussian_mixture():
    x, _ = _two_blobs(0)
    ours = DeconvolvedGaussianMixture(2, reg_covar=0.0, tol=1e-10, random_state=0).fit(x)
    gm = GaussianMixture(2, reg_covar=0.0, tol=1e-12, max_iter=1000, random_state=0).fit(x)
    a, b = _by_first_mean(ours.means_), _by_first_mean(gm.means_)
    np.testing.assert_allclose(ours.weights_[a], gm.weights_[b], rtol=1e-6)
    np.testing.assert_allclose(ours.means_[a], gm.means_[b], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours.covariances_[a], gm.covariances_[b], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours.precisions_cholesky_[a], gm.precisions_cholesky_[b], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours.precisions_[a], gm.precisions_[b], rtol=1e-5, atol=1e-7)
    assert ours.score(x) == pytest.approx(gm.score(x), abs=1e-8)
    assert ours.lower_bound_ == pytest.approx(gm.score(x), abs=1e-8)
    np.testing.assert_allclose(ours.score_samples(x), gm.score_samples(x), rtol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(x)[:, a], gm.predict_proba(x)[:, b], atol=1e-6)
    assert ours.bic(x) == pytest.approx(gm.bic(x), rel=1e-9)
    assert ours.aic(x) == pytest.approx(gm.aic(x), rel=1e-9)


# --------------------------------------------------------------------------- deconvolution


@pytest.fixture(scope="module")
def disc():
    sim = simulate_mixture(7, thin_thick_disc_params(), 4000, error_scale=[0.05, 0.04],
                           feature_names=["FeH", "MgFe"])
    return sim


def test_recovers_intrinsic_parameters_where_gaussian_mixture_is_inflated(disc):
    cat, truth = disc.catalogue, disc.truth
    x = cat.values
    ours = DeconvolvedGaussianMixture(2, n_init=2, random_state=1).fit(x, X_err=cat.error_covs)
    gm = GaussianMixture(2, n_init=2, random_state=1).fit(x)
    n = len(x)
    w_true = np.asarray(truth.weights)
    mu_true = np.asarray(truth.means)
    cov_true = np.asarray(truth.covariances)
    # Components ordered by [Mg/Fe]: thin disc (alpha-poor) first, as in the truth.
    ours_order = np.argsort(ours.means_[:, 1])
    gm_order = np.argsort(gm.means_[:, 1])
    # Statistical errors of the estimates from the sample size: per-component star counts
    # N_k, observed variances s2 = intrinsic + mean error variance; 4 sigma.
    err_var = np.mean(cat.errors**2, axis=0)
    n_k = n * w_true
    s2 = np.diagonal(cov_true, axis1=1, axis2=2) + err_var
    tol_w = 4 * np.sqrt(w_true * (1 - w_true) / n)
    tol_mu = 4 * np.sqrt(s2 / n_k[:, None])
    tol_var = 4 * np.sqrt(2.0 / n_k[:, None]) * s2
    np.testing.assert_array_less(np.abs(ours.weights_[ours_order] - w_true), tol_w)
    np.testing.assert_array_less(np.abs(ours.means_[ours_order] - mu_true), tol_mu)
    var_ours = np.diagonal(ours.covariances_[ours_order], axis1=1, axis2=2)
    var_gm = np.diagonal(gm.covariances_[gm_order], axis1=1, axis2=2)
    var_true = np.diagonal(cov_true, axis1=1, axis2=2)
    np.testing.assert_array_less(np.abs(var_ours - var_true), tol_var)
    # The plain mixture fits the observed spread, intrinsic + error variance: in [Mg/Fe], where
    # errors are as large as the intrinsic spread, far outside the tolerance.
    assert np.all(var_gm[:, 1] - var_true[:, 1] > tol_var[:, 1])
    np.testing.assert_allclose(var_gm, var_true + err_var, rtol=0.15)


def test_standard_errors_equal_diagonal_covariances_and_likelihood_is_the_package_one(disc):
    cat = disc.catalogue
    x, sigma = cat.values[:250], cat.errors[:250]
    fit_sd = DeconvolvedGaussianMixture(2, random_state=0).fit(x, X_err=sigma)
    fit_cov = DeconvolvedGaussianMixture(2, random_state=0).fit(x, X_err=cat.error_covs[:250])
    np.testing.assert_allclose(fit_sd.means_, fit_cov.means_, rtol=1e-12)
    params = MixtureParams(fit_sd.weights_, fit_sd.means_, fit_sd.covariances_)
    obs = as_observations(x, sigma)
    np.testing.assert_allclose(fit_sd.score_samples(x, sigma), log_likelihood_per_star(params, obs),
                               rtol=1e-12)
    np.testing.assert_allclose(fit_sd.predict_proba(x, sigma), responsibilities(params, obs), atol=1e-14)
    # The fit maximised exactly this likelihood.
    assert fit_sd.score(x, X_err=sigma) == pytest.approx(fit_sd.lower_bound_, rel=1e-12)
    # New data without errors are treated as exact: zero errors give the same numbers.
    np.testing.assert_array_equal(fit_sd.score_samples(x), fit_sd.score_samples(x, np.zeros_like(x)))
    assert not np.allclose(fit_sd.score_samples(x), fit_sd.score_samples(x, sigma))


# --------------------------------------------------------------------------- API


@pytest.fixture(scope="module")
def fitted():
    x, sigma = _two_blobs(1, err=0.3)
    est = DeconvolvedGaussianMixture(2, random_state=0).fit(x, X_err=sigma)
    return est, x, sigma


def test_fitted_attributes(fitted):
    est, x, _ = fitted
    assert isinstance(est.em_, EMResult)
    assert est.weights_.shape == (2,) and est.means_.shape == (2, 2) and est.covariances_.shape == (2, 2, 2)
    assert est.weights_.sum() == pytest.approx(1.0)
    assert est.n_features_in_ == 2 and not hasattr(est, "feature_names_in_")
    assert est.converged_ is True and est.n_iter_ == est.em_.n_iter >= 1
    assert est.lower_bound_ == pytest.approx(est.em_.log_likelihood / len(x))
    eye = np.broadcast_to(np.eye(2), (2, 2, 2))
    np.testing.assert_allclose(est.precisions_ @ est.covariances_, eye, atol=1e-10)
    np.testing.assert_array_equal(np.tril(est.precisions_cholesky_[0], -1), 0.0)


def test_predictions_are_consistent(fitted):
    est, x, sigma = fitted
    proba = est.predict_proba(x, sigma)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(est.predict(x, sigma), np.argmax(proba, axis=1))
    assert est.score(x, X_err=sigma) == pytest.approx(np.mean(est.score_samples(x, sigma)), rel=1e-12)
    # Both clusters are found (2:1) and the hard labels split the stars that way.
    assert sorted(np.bincount(est.predict(x, sigma))) == pytest.approx([80, 160], abs=3)
    assert est.bic(x, X_err=sigma) == pytest.approx(est.em_.bic, rel=1e-10)
    assert est.aic(x, X_err=sigma) == pytest.approx(est.em_.aic, rel=1e-10)
    assert est.em_.n_parameters == n_free_parameters(2, 2) == 11


def test_evaluation_in_padded_chunks_matches_one_chunk(fitted, monkeypatch):
    est, x, sigma = fitted
    whole = est.score_samples(x, sigma), est.predict_proba(x, sigma)
    # 64-row chunks: 240 stars in three full chunks and a padded one of 48.
    monkeypatch.setattr(_padding, "CHUNK_FLOATS", 64 * 2 * 2 * 2)
    assert [c[2] for c in _padding.chunks(240, _padding.chunk_rows(8))] == [64] * 4
    np.testing.assert_allclose(est.score_samples(x, sigma), whole[0], rtol=1e-13)
    np.testing.assert_allclose(est.predict_proba(x, sigma), whole[1], rtol=1e-12, atol=1e-15)
    assert [_padding.bucket(n) for n in (1, 256, 257, 65536, 65537)] == [256, 256, 320, 65536, 81920]


def test_fit_predict_equals_fit_then_predict(fitted):
    est, x, sigma = fitted
    labels = clone(est).fit_predict(x, X_err=sigma)
    np.testing.assert_array_equal(labels, est.predict(x, sigma))


def test_sample_shapes_determinism_and_distribution(fitted):
    est, _, _ = fitted
    x1, y1 = est.sample(5000)
    x2, y2 = est.sample(5000)
    assert x1.shape == (5000, 2) and y1.shape == (5000,) and y1.dtype.kind == "i"
    np.testing.assert_array_equal(x1, x2)  # an int random_state makes sample() reproducible
    np.testing.assert_array_equal(y1, y2)
    assert np.all(np.diff(y1) >= 0)  # grouped by component, as GaussianMixture.sample
    reseeded = copy.deepcopy(est).set_params(random_state=1)
    other, _ = reseeded.sample(5000)
    assert not np.allclose(x1, other)
    # Draws follow the intrinsic mixture: per-component mean within 5 standard errors.
    for k in range(2):
        draws = x1[y1 == k]
        se = np.sqrt(np.diag(est.covariances_[k]) / len(draws))
        np.testing.assert_array_less(np.abs(draws.mean(axis=0) - est.means_[k]), 5 * se)
    assert np.bincount(y1, minlength=2) / 5000 == pytest.approx(est.weights_, abs=0.03)
    with pytest.raises(ValueError, match="n_samples"):
        est.sample(0)


def test_random_state_forms_and_reproducibility(fitted):
    _, x, sigma = fitted
    a = DeconvolvedGaussianMixture(2, init_params="random", random_state=5).fit(x, X_err=sigma)
    b = DeconvolvedGaussianMixture(2, init_params="random", random_state=5).fit(x, X_err=sigma)
    np.testing.assert_array_equal(a.means_, b.means_)
    c = DeconvolvedGaussianMixture(2, random_state=np.random.RandomState(5)).fit(x, X_err=sigma)
    assert np.isfinite(c.lower_bound_)


def test_clone_get_set_params_and_pickle(fitted):
    est, x, sigma = fitted
    params = est.get_params()
    assert params["n_components"] == 2 and params["method"] == "em" and params["reg_covar"] is None
    fresh = clone(est)
    assert fresh.get_params() == params and not hasattr(fresh, "weights_")
    fresh.set_params(n_components=3, reg_covar=1e-4)
    assert fresh.n_components == 3 and est.n_components == 2
    restored = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(restored.score_samples(x, sigma), est.score_samples(x, sigma))


def test_dataframe_input_sets_feature_names(disc):
    table = pd.DataFrame(disc.catalogue.values[:200], columns=["FeH", "MgFe"])
    est = DeconvolvedGaussianMixture(2, random_state=0).fit(table, X_err=disc.catalogue.errors[:200])
    assert list(est.feature_names_in_) == ["FeH", "MgFe"]
    with pytest.raises(ValueError, match="feature names"):
        est.predict(table.rename(columns={"FeH": "Fe"}))


def test_pipeline_passes_x_err_to_the_estimator(fitted):
    est, x, sigma = fitted
    pipe = Pipeline([("identity", FunctionTransformer()), ("xd", clone(est))]).fit(x, xd__X_err=sigma)
    np.testing.assert_array_equal(pipe.named_steps["xd"].means_, est.means_)


def test_grid_search_routes_x_err_to_fit_and_score():
    x, sigma = _two_blobs(2, 240, err=0.4)
    cv = KFold(3, shuffle=True, random_state=0)
    with sklearn.config_context(enable_metadata_routing=True):
        base = DeconvolvedGaussianMixture(random_state=0)
        base = base.set_fit_request(X_err=True).set_score_request(X_err=True)
        search = GridSearchCV(base, {"n_components": [1, 2]}, cv=cv).fit(x, X_err=sigma)
    assert search.best_params_["n_components"] == 2
    # Recompute one cell by hand: held-out scores include the held-out errors.
    scores = []
    for train, test in cv.split(x):
        est = DeconvolvedGaussianMixture(2, random_state=0).fit(x[train], X_err=sigma[train])
        scores.append(est.score(x[test], X_err=sigma[test]))
    assert search.cv_results_["mean_test_score"][1] == pytest.approx(np.mean(scores), rel=1e-12)
    no_errors = [DeconvolvedGaussianMixture(2, random_state=0).fit(x[tr], X_err=sigma[tr]).score(x[te])
                 for tr, te in cv.split(x)]
    assert np.mean(no_errors) != pytest.approx(np.mean(scores), rel=1e-3)


# --------------------------------------------------------------------------- bad input


def test_errors_as_second_positional_argument_raise_type_error(fitted):
    _, x, sigma = fitted
    est = DeconvolvedGaussianMixture(2)
    message = r"second positional argument of fit is y .*fit\(X, X_err=\.\.\.\)"
    with pytest.raises(TypeError, match=message):
        est.fit(x, sigma)
    covs = np.einsum("ni,ij->nij", sigma**2, np.eye(2))
    with pytest.raises(TypeError, match=message):
        est.fit(x, covs)
    with pytest.raises(TypeError, match=r"score\(X, X_err=\.\.\.\)"):
        fitted[0].score(x, sigma)
    # Integer labels are ignored, as scikit-learn does.
    labels = np.arange(len(x)) % 2
    with_labels = DeconvolvedGaussianMixture(2, random_state=0).fit(x, labels, X_err=sigma)
    np.testing.assert_array_equal(with_labels.means_, fitted[0].means_)


def test_given_start_is_one_more_start_with_auto_or_the_only_one_otherwise():
    x, sigma = _two_blobs(6, err=0.2)
    means = np.array([[1.0, 0.5], [5.0, 2.5]])
    auto = DeconvolvedGaussianMixture(2, random_state=0, means_init=means).fit(x, X_err=sigma)
    assert auto.em_.start_kinds[-1] == "given" and "peak" in auto.em_.start_kinds
    alone = DeconvolvedGaussianMixture(2, random_state=0, init_params="kmeans++", means_init=means,
                                       weights_init=[0.5, 0.5],
                                       precisions_init=np.tile(np.eye(2), (2, 1, 1))).fit(x, X_err=sigma)
    assert alone.em_.start_kinds == ("given",)  # GaussianMixture's behaviour: it replaces k-means++
    np.testing.assert_allclose(np.sort(alone.means_[:, 0]), np.sort(auto.means_[:, 0]), atol=1e-3)


@pytest.mark.parametrize(("change", "kwargs", "match"), [
    ("nan_x", {}, "X.*NaN"),
    ("inf_err", {}, "X_err.*infinite"),
    ("negative_err", {}, "X_err.*>= 0"),
    ("err_shape", {}, r"X_err.*shape"),
    ("none", {"n_components": 300}, "n_components=300 exceeds the number of stars"),
    ("none", {"method": "mcmc"}, re.escape("method must be one of ('em', 'nuts'); got 'mcmc'")),
    ("none", {"init_params": "gmm"},
     re.escape("init_params must be one of ('auto', 'kmeans++', 'k-means++', 'kmeans', 'random', "
               "'random_from_data'); got 'gmm'")),
    ("none", {"standardize": "yes"}, "standardize must be True or False"),
    ("none", {"errors_standardized": None}, "errors_standardized must be True or False"),
    ("none", {"reg_covar": -1.0}, "reg_covar must be"),
    ("none", {"max_iter": -1}, "max_iter"),
    ("none", {"tol": float("nan")}, "tol"),
    ("none", {"n_init": 0}, "n_init"),
    ("none", {"weights_init": [0.5, 0.5]}, "pass means_init too"),
    ("none", {"means_init": np.zeros((3, 2))}, r"means_init must be finite with shape \(2, 2\)"),
    ("none", {"means_init": np.zeros((2, 2)), "precisions_init": -np.ones((2, 2, 2))},
     "precisions_init must hold symmetric positive-definite"),
    ("sample_weight_nuts", {"method": "nuts"}, "sample_weight is supported with method='em' only"),
])
def test_bad_input_raises_value_error_naming_the_parameter(change, kwargs, match):
    x, sigma = _two_blobs(5, err=0.2)
    fit_kwargs = {"X_err": sigma}
    if change == "nan_x":
        x[3, 1] = np.nan
    elif change == "inf_err":
        sigma[7, 0] = np.inf
    elif change == "negative_err":
        sigma[7, 0] = -0.1
    elif change == "err_shape":
        fit_kwargs["X_err"] = sigma[:, :1].repeat(3, axis=1)
    elif change == "sample_weight_nuts":
        fit_kwargs["sample_weight"] = np.ones(len(x))
    with pytest.raises(ValueError, match=match):
        DeconvolvedGaussianMixture(**{"n_components": 2, **kwargs}).fit(x, **fit_kwargs)


def test_evaluation_input_is_checked(fitted):
    est, x, sigma = fitted
    with pytest.raises(ValueError, match="3 features, but DeconvolvedGaussianMixture is expecting 2"):
        est.predict(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"X_err.*shape"):
        est.score_samples(x, sigma[:10])
    with pytest.raises(NotFittedError):
        DeconvolvedGaussianMixture(2).predict(x)


def test_posterior_only_methods_need_nuts(fitted):
    est = fitted[0]
    for call in (est.summary, est.predict_proba_interval):
        with pytest.raises(NotFittedError, match="method='nuts'"):
            call()
    with pytest.raises(AttributeError, match="posterior_ exists only for method='nuts'"):
        _ = est.posterior_
    assert not hasattr(est, "convergence_")


# --------------------------------------------------------------------------- init_params spellings


def test_init_params_accepts_scikit_learn_spellings(fitted):
    _, x, sigma = fitted
    ref = DeconvolvedGaussianMixture(2, init_params="kmeans++", random_state=0).fit(x, X_err=sigma)
    assert ref.em_.start_kinds == ("kmeans++",)
    for spelling in ("k-means++", "kmeans"):
        est = DeconvolvedGaussianMixture(2, init_params=spelling, random_state=0)
        est.fit(x, X_err=sigma)
        assert est.get_params()["init_params"] == spelling  # the user's value, not the resolved one
        np.testing.assert_array_equal(est.means_, ref.means_)
    random = DeconvolvedGaussianMixture(2, init_params="random", random_state=5).fit(x, X_err=sigma)
    from_data = DeconvolvedGaussianMixture(2, init_params="random_from_data", random_state=5)
    from_data.fit(x, X_err=sigma)
    assert from_data.em_.start_kinds == ("random",)
    np.testing.assert_array_equal(from_data.means_, random.means_)


# --------------------------------------------------------------------------- astropy Tables and Quantities


def test_astropy_table_with_units_is_converted_and_named(fitted):
    est, x, sigma = fitted
    table = QTable({"vr": x[:, 0] * u.km / u.s, "pm": x[:, 1] * u.mas / u.yr})
    # Errors as a plain Table with column units, vr's in m/s: converted to km/s.
    errors = Table({"vr_err": sigma[:, 0] * 1000.0, "pm_err": sigma[:, 1]}, units={"vr_err": u.m / u.s,
                                                                                   "pm_err": u.mas / u.yr})
    ours = clone(est).fit(table, X_err=errors)
    assert list(ours.feature_names_in_) == ["vr", "pm"]
    assert ours.feature_units_ == (u.km / u.s, u.mas / u.yr)
    assert ours.feature_labels() == ["vr [km / s]", "pm [mas / yr]"]
    assert isinstance(ours.means_, np.ndarray) and not isinstance(ours.means_, u.Quantity)
    np.testing.assert_allclose(ours.means_, est.means_, rtol=1e-10)
    np.testing.assert_allclose(ours.covariances_, est.covariances_, rtol=1e-9)
    # New data in other units (vr in m/s, errors in km/s) give the same answers.
    other = QTable({"vr": table["vr"].to(u.m / u.s), "pm": table["pm"]})
    np.testing.assert_allclose(ours.predict_proba(other, errors), est.predict_proba(x, sigma), atol=1e-12)
    np.testing.assert_allclose(ours.score_samples(other, errors), est.score_samples(x, sigma), rtol=1e-12)
    with pytest.raises(ValueError, match="feature names"):
        ours.predict(QTable({"v": table["vr"], "pm": table["pm"]}))
    with pytest.raises(TypeError, match=r"fit\(X, X_err=\.\.\.\)"):
        clone(est).fit(table, errors)  # astroML's positional errors, as Tables


def test_quantity_x_and_errors_in_convertible_units(fitted):
    est, x, sigma = fitted
    ours = clone(est).fit(x * u.km / u.s, X_err=sigma * 1000.0 * u.m / u.s)
    assert ours.feature_units_ == (u.km / u.s,) * 2 and not hasattr(ours, "feature_names_in_")
    assert ours.feature_labels() == ["x0 [km / s]", "x1 [km / s]"]
    np.testing.assert_allclose(ours.means_, est.means_, rtol=1e-10)
    in_m_per_s = (x * u.km / u.s).to(u.m / u.s)
    covs = np.einsum("ni,ij->nij", sigma**2, np.eye(2)) * (u.km / u.s) ** 2
    np.testing.assert_allclose(ours.predict_proba(in_m_per_s, covs.to(u.m**2 / u.s**2)),
                               est.predict_proba(x, sigma), atol=1e-12)
    np.testing.assert_allclose(ours.score_samples(in_m_per_s), est.score_samples(x), rtol=1e-12)
    # Plain numbers after a fit with units are taken to be in feature_units_.
    np.testing.assert_array_equal(ours.score_samples(x, sigma), ours.score_samples(x * u.km / u.s, sigma))


@pytest.mark.parametrize(("case", "match"), [
    ("errors_in_other_dimension", r"X_err for feature 'x0' is in mas / yr, which cannot be converted to km"),
    ("covariances_not_squared", r"X_err \(covariance of features 'x0', 'x0'\) is in km / s, which cannot"),
    ("errors_with_units_x_without", r"X_err for feature 'x0' is in km / s, but the feature has no unit"),
    ("predict_in_other_dimension", r"X feature 'x0'.* is in mag, which cannot be converted to km / s"),
    ("predict_units_after_plain_fit", r"X feature 'x0'.* is in km / s, but the feature has no unit"),
])
def test_incompatible_units_raise_naming_feature_and_units(fitted, case, match):
    est, x, sigma = fitted
    fresh = DeconvolvedGaussianMixture(2)
    kms = u.km / u.s
    with pytest.raises(ValueError, match=match):
        if case == "errors_in_other_dimension":
            fresh.fit(x * kms, X_err=sigma * u.mas / u.yr)
        elif case == "covariances_not_squared":
            fresh.fit(x * kms, X_err=np.einsum("ni,ij->nij", sigma**2, np.eye(2)) * kms)
        elif case == "errors_with_units_x_without":
            fresh.fit(x, X_err=sigma * kms)
        elif case == "predict_in_other_dimension":
            clone(est).fit(x * kms, X_err=sigma * kms).predict(x * u.mag)
        else:
            est.predict(x * kms)


@pytest.mark.parametrize(("column", "match"), [
    (np.array(["a", "b"] * 120), "X column 'name' is not numeric"),
    (MaskedColumn(np.ones(240), mask=np.arange(240) < 3), "X column 'name' has 3 masked entries"),
    (np.ones((240, 2)), r"X column 'name' has shape \(240, 2\)"),
])
def test_bad_table_column_raises_naming_it(fitted, column, match):
    _, x, sigma = fitted
    table = Table({"a": x[:, 0], "name": column, "b": x[:, 1]})
    with pytest.raises(ValueError, match=match):
        DeconvolvedGaussianMixture(2).fit(table, X_err=sigma)


# --------------------------------------------------------------------------- scaling and the Pipeline trap


def _two_scales(seed, n=2000):
    """Two equal components whose intrinsic sds are (1, 100) and (0.5, 50): the second feature is in
    units 100 times smaller. Standard errors U(0.25, 0.75) times the feature's unit."""
    rng = np.random.default_rng(seed)
    sd = np.repeat([[1.0, 100.0], [0.5, 50.0]], n // 2, axis=0)
    mean = np.repeat([[0.0, 0.0], [5.0, 300.0]], n // 2, axis=0)
    err = rng.uniform(0.25, 0.75, (n, 2)) * [1.0, 100.0]
    return mean + sd * rng.normal(size=(n, 2)) + err * rng.normal(size=(n, 2)), err


@pytest.fixture(scope="module")
def two_scales():
    return _two_scales(11)


def _narrow_sd(est, unit=1.0):
    """Intrinsic sd in feature 0 of the component with the larger mean (true value 0.5)."""
    k = int(np.argmax(est.means_[:, 0]))
    return float(np.sqrt(est.covariances_[k, 0, 0])) * unit


def test_standard_scaler_pipeline_with_errors_is_refused(two_scales):
    x, err = two_scales
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = make_pipeline(StandardScaler(), DeconvolvedGaussianMixture(2).set_fit_request(X_err=True))
        message = r"X appears standardized.*standardize=True.*errors_standardized=True"
        with pytest.raises(ValueError, match=message):
            pipe.fit(x, X_err=err)
        # The same pipeline without errors is fine: there is nothing to scale consistently.
        pipe.fit(x[:240])


def test_standardize_recovers_the_intrinsic_sd_that_the_trap_misses(two_scales):
    x, err = two_scales
    ours = DeconvolvedGaussianMixture(2, standardize=True, random_state=0).fit(x, X_err=err)
    # Tolerance from the sample size: N_k = 1000 stars, observed variance s2 = 0.5^2 + mean(err^2)
    # (err ~ U(0.25, 0.75): mean(err^2) = 0.2708); var(sigma2_hat) ~ 2 s2^2 / N_k, and by the delta
    # method sd(sigma_hat) = sd(sigma2_hat) / (2 sigma) = 0.023; four of those.
    s2 = 0.5**2 + (0.75**3 - 0.25**3) / (3 * 0.5)
    tol = 4 * np.sqrt(2.0 / 1000) * s2 / (2 * 0.5)
    assert abs(_narrow_sd(ours) - 0.5) < tol
    # The trap (X scaled, errors not), forced past the check, is far off; scaling both is the same
    # fit as standardize=True.
    scaler = StandardScaler().fit(x)
    trap = DeconvolvedGaussianMixture(2, errors_standardized=True, random_state=0)
    trap.fit(scaler.transform(x), X_err=err)
    assert abs(_narrow_sd(trap, scaler.scale_[0]) - 0.5) > 3 * tol
    both = DeconvolvedGaussianMixture(2, errors_standardized=True, random_state=0)
    both.fit(scaler.transform(x), X_err=err / scaler.scale_)
    np.testing.assert_allclose(_narrow_sd(both, scaler.scale_[0]), _narrow_sd(ours), rtol=1e-9)


@pytest.mark.parametrize("kwargs", [
    {"reg_covar": 0.0},
    {"reg_covar": 0.5},
    {"reg_covar": 0.5, "init_params": "kmeans++", "means_init": [[0.0, 1000.0], [6.0, 1300.0]],
     "precisions_init": np.tile(np.diag([1.0, 1e-4]), (2, 1, 1))},
])
def test_standardize_equals_the_unstandardized_fit(fitted, kwargs):
    # Features 100 times apart in scale, off-centre: a reg_covar in squared original units that were
    # not mapped (0.5 in standardized units is 0.5 sd^2 here) would move the covariances by ~1e-3.
    _, x, sigma = fitted
    x, sigma = x * [1.0, 100.0] + [0.0, 1000.0], sigma * [1.0, 100.0]
    plain = DeconvolvedGaussianMixture(2, random_state=0, **kwargs).fit(x, X_err=sigma)
    scaled = DeconvolvedGaussianMixture(2, random_state=0, standardize=True, **kwargs).fit(x, X_err=sigma)
    assert scaled.n_iter_ == plain.n_iter_ and scaled.em_.start_kinds == plain.em_.start_kinds
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        ref = getattr(plain, name)
        np.testing.assert_allclose(getattr(scaled, name), ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max(),
                                   err_msg=name)
    # Log-likelihoods include the Jacobian, so they are comparable with the plain fit's.
    assert scaled.lower_bound_ == pytest.approx(plain.lower_bound_, rel=1e-12)
    assert scaled.em_.bic == pytest.approx(plain.em_.bic, rel=1e-12)
    assert scaled.em_.w == plain.em_.w == kwargs["reg_covar"]
    np.testing.assert_allclose(scaled.em_.objective_history, plain.em_.objective_history, rtol=1e-12)
    np.testing.assert_allclose(scaled.score_samples(x, sigma), plain.score_samples(x, sigma), rtol=1e-10)
    np.testing.assert_allclose(scaled.predict_proba(x, sigma), plain.predict_proba(x, sigma), atol=1e-10)
    np.testing.assert_allclose(scaled.sample(50)[0], plain.sample(50)[0], rtol=1e-8)


def test_standardize_with_the_automatic_ridge_agrees_to_its_size(fitted):
    # reg_covar=None adds 1e-6 of the mean variance as an isotropic ridge: in original units that is
    # ~0.014 here (feature 1's variance dominates), spread over N_k stars, i.e. ~3e-4 of feature 0's
    # variance; standardized, it is 1e-6 of each feature's own. The fits differ by about that, no more.
    _, x, sigma = fitted
    x, sigma = x * [1.0, 100.0], sigma * [1.0, 100.0]
    plain = DeconvolvedGaussianMixture(2, random_state=0).fit(x, X_err=sigma)
    scaled = DeconvolvedGaussianMixture(2, random_state=0, standardize=True).fit(x, X_err=sigma)
    sd = np.sqrt(np.diagonal(plain.covariances_, axis1=1, axis2=2))
    ridge = plain.em_.w / (len(x) * plain.weights_.min()) / sd[:, 0].min() ** 2
    np.testing.assert_array_less(
        np.abs(scaled.covariances_ - plain.covariances_) / (sd[:, :, None] * sd[:, None, :]), 3 * ridge)
    np.testing.assert_array_less(np.abs(scaled.means_ - plain.means_) / sd, 1e-4)
    assert scaled.lower_bound_ == pytest.approx(plain.lower_bound_, abs=1e-6)


# --------------------------------------------------------------------------- NUTS


@pytest.fixture(scope="module")
def nuts_fit(disc):
    values = pd.DataFrame(disc.catalogue.values[:300], columns=["FeH", "MgFe"])
    errors = disc.catalogue.error_covs[:300]
    est = DeconvolvedGaussianMixture(2, method="nuts", random_state=3, num_chains=2, num_warmup=150,
                                     num_samples=150)
    with warnings.catch_warnings():
        # 300 draws are too few for the default ESS threshold: the report says so, which is fine here.
        warnings.filterwarnings("ignore", message=".*NOT converged")
        est.fit(values, X_err=errors)
    return est, values, errors


def test_nuts_point_attributes_are_posterior_means_near_em(nuts_fit):
    est, _, _ = nuts_fit
    assert isinstance(est.posterior_, PosteriorFit) and isinstance(est.convergence_, ConvergenceReport)
    post = est.posterior_.idata.posterior
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 150
    mean = est.posterior_.posterior_mean_params()
    np.testing.assert_allclose(est.means_, mean.means)
    np.testing.assert_allclose(est.covariances_, mean.covariances)
    # The posterior orders components (by the dispersion of feature 0); match EM's to it.
    em = est.em_
    order = [int(np.argmin(np.abs(em.means[:, 1] - m))) for m in est.means_[:, 1]]
    assert sorted(order) == [0, 1]
    sd = {name: post[name].std(("chain", "draw")).values for name in ("weights", "means", "covariances")}
    np.testing.assert_array_less(np.abs(est.weights_ - em.weights[order]), 3 * sd["weights"])
    np.testing.assert_array_less(np.abs(est.means_ - em.means[order]), 3 * sd["means"])
    np.testing.assert_array_less(np.abs(est.covariances_ - em.covariances[order]), 3 * sd["covariances"])


def test_nuts_summary_has_posterior_widths(nuts_fit):
    est, _, _ = nuts_fit
    table = est.summary()
    assert {"mean", "sd", "p16", "p84", "r_hat", "ess_bulk"} <= set(table.columns)
    assert (table["sd"] > 0).all()
    assert any("MgFe" in label for label in table.index)  # DataFrame column names reach the model


def test_nuts_predict_proba_interval_training_and_new_data(nuts_fit):
    est, values, errors = nuts_fit
    mean, low, high = est.predict_proba_interval()
    assert mean.shape == low.shape == high.shape == (300, 2)
    np.testing.assert_allclose(mean.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all((low >= 0) & (low <= high) & (high <= 1))
    assert np.any(high - low > 0.01)  # some stars have genuinely uncertain memberships
    # A mean need not lie between two percentiles (draws of a probability near 0 or 1 are
    # skewed), but it always lies between the smallest and the largest draw.
    _, lowest, highest = est.predict_proba_interval(interval=(0, 100))
    assert np.all((lowest <= mean + 1e-12) & (mean <= highest + 1e-12))
    assert np.all((lowest <= low) & (high <= highest))
    # The same stars as new data go through the other code path and must agree.
    again = est.predict_proba_interval(values, errors)
    for a, b in zip((mean, low, high), again, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    # ... also when the stars are split into padded chunks (16 rows of 300 draws).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_padding, "CHUNK_FLOATS", 16 * 300 * 2 * 2 * 2)
        chunked = est.predict_proba_interval(values, errors)
    for a, b in zip(again, chunked, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-13)
    wide = est.predict_proba_interval(interval=(2.5, 97.5))
    assert np.all(wide[1] <= low + 1e-12) and np.all(wide[2] >= high - 1e-12)
    grid = pd.DataFrame({"FeH": np.linspace(-1.0, 0.4, 7), "MgFe": np.linspace(0.35, 0.0, 7)})
    g_mean, g_low, g_high = est.predict_proba_interval(grid)
    assert g_mean.shape == (7, 2)
    np.testing.assert_allclose(g_mean.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all((g_low >= 0) & (g_low <= g_high) & (g_high <= 1))
    # Metal-rich, alpha-poor end: thin disc; the other end: thick disc (components ordered by
    # the [Fe/H] dispersion, so find the thick disc by its mean [Mg/Fe]).
    thick = int(np.argmax(est.means_[:, 1]))
    assert g_mean[0, thick] > 0.9 and g_mean[-1, thick] < 0.1
    with pytest.raises(ValueError, match="interval"):
        est.predict_proba_interval(interval=(84, 16))


def test_nuts_estimator_pickles_without_its_sampler(nuts_fit):
    est, values, errors = nuts_fit
    restored = pickle.loads(pickle.dumps(est))
    assert restored.posterior_._state is None and est.posterior_._state is not None
    np.testing.assert_array_equal(restored.predict_proba(values, errors), est.predict_proba(values, errors))
