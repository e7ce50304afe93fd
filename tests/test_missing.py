"""Stars that lack some features: the likelihood marginalises them star by star.

Every path (the log density, the sampler's custom gradient, the EM step, memberships, the
predictive check and the estimator) is checked against a brute-force computation that
projects each star onto the features it has (extreme deconvolution's ``R_i``).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from bayesmix.em import em_step, fit_em
from bayesmix.estimator import DeconvolvedGaussianMixture
from bayesmix.likelihood import (
    MixtureParams,
    as_observations,
    component_log_prob,
    log_likelihood,
    total_log_likelihood,
)
from bayesmix.simulate import simulate_mixture, thin_thick_disc_params


def _problem(seed, n_stars, n_features, n_components=2, missing=0.3):
    """Random stars with correlated errors, a random missing pattern, and random parameters."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_stars, n_features))
    b = 0.3 * rng.normal(size=(n_stars, n_features, n_features))
    s = np.einsum("nab,ncb->nac", b, b) + 0.1 * np.eye(n_features)
    mask = rng.random((n_stars, n_features)) > missing
    mask[~mask.any(axis=1), 0] = True
    a = rng.normal(size=(n_components, n_features, n_features))
    params = MixtureParams(np.full(n_components, 1.0 / n_components) + np.linspace(-0.1, 0.1, n_components),
                           rng.normal(size=(n_components, n_features)),
                           np.einsum("kab,kcb->kac", a, a) + 0.5 * np.eye(n_features))
    return x, s, mask, params


def _with_nan(x, s, mask):
    """What a catalogue gives: NaN values and NaN error rows/columns where a feature is missing."""
    pair = mask[:, :, None] & mask[:, None, :]
    return np.where(mask, x, np.nan), np.where(pair, s, np.nan)


def _brute_force_log_prob(x, s, mask, params):
    """(n_stars, n_components) densities of each star's observed sub-vector, with scipy."""
    out = np.empty((len(x), len(params.means)))
    for i in range(len(x)):
        o = mask[i]
        for k in range(len(params.means)):
            cov = (np.asarray(params.covariances)[k] + s[i])[np.ix_(o, o)]
            out[i, k] = multivariate_normal(np.asarray(params.means)[k][o], cov).logpdf(x[i][o])
    return out


@pytest.mark.parametrize("n_features", [2, 3, 10])
def test_log_density_is_that_of_the_observed_features(n_features):
    # 10 features takes the looped (non-unrolled) path.
    x, s, mask, params = _problem(0, 40, n_features)
    obs = as_observations(*_with_nan(x, s, mask), observed=mask)
    got = np.asarray(component_log_prob(MixtureParams(*map(jnp.asarray, params)), obs))
    np.testing.assert_allclose(got, _brute_force_log_prob(x, s, mask, params), rtol=0, atol=1e-10)


@pytest.mark.parametrize("n_features", [2, 3, 10])
def test_custom_gradient_matches_autodiff_of_the_projected_density(n_features):
    x, s, mask, params = _problem(1, 30, n_features)
    obs = as_observations(*_with_nan(x, s, mask), observed=mask)
    weights = jnp.asarray(params.weights)

    def fast(means, covs):
        return total_log_likelihood(MixtureParams(weights, means, covs), obs)

    def plain(means, covs):
        return log_likelihood(MixtureParams(weights, means, covs), obs)

    means, covs = jnp.asarray(params.means), jnp.asarray(params.covariances)
    np.testing.assert_allclose(float(fast(means, covs)), float(plain(means, covs)), rtol=1e-12)
    brute = np.sum(np.log(np.exp(_brute_force_log_prob(x, s, mask, params)) @ np.asarray(params.weights)))
    np.testing.assert_allclose(float(fast(means, covs)), brute, rtol=1e-10)
    g_fast = jax.grad(fast, argnums=(0, 1))(means, covs)
    g_plain = jax.grad(plain, argnums=(0, 1))(means, covs)
    sym = lambda a: 0.5 * (np.asarray(a) + np.swapaxes(np.asarray(a), -1, -2))  # noqa: E731
    np.testing.assert_allclose(np.asarray(g_fast[0]), np.asarray(g_plain[0]), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(sym(g_fast[1]), sym(g_plain[1]), rtol=1e-9, atol=1e-10)


def _brute_force_xd_step(x, s, mask, params):
    """One extreme-deconvolution EM step with explicit projections (Bovy et al. 2011, eqs. 15-20)."""
    w, mu, sig = (np.asarray(a) for a in params)
    n, d = x.shape
    k = len(w)
    q = np.empty((n, k))
    b = np.empty((n, k, d))
    big_b = np.empty((n, k, d, d))
    for i in range(n):
        proj = np.eye(d)[mask[i]]
        xi, si = x[i][mask[i]], s[i][np.ix_(mask[i], mask[i])]
        for j in range(k):
            t = proj @ sig[j] @ proj.T + si
            q[i, j] = w[j] * multivariate_normal(proj @ mu[j], t).pdf(xi)
            gain = sig[j] @ proj.T @ np.linalg.inv(t)
            b[i, j] = mu[j] + gain @ (xi - proj @ mu[j])
            big_b[i, j] = sig[j] - gain @ proj @ sig[j]
    log_lik = np.sum(np.log(q.sum(axis=1)))
    q /= q.sum(axis=1, keepdims=True)
    counts = q.sum(axis=0)
    means = np.einsum("nk,nka->ka", q, b) / counts[:, None]
    dev = b - means[None]
    scatter = np.einsum("nk,nka,nkb->kab", q, dev, dev) + np.einsum("nk,nkab->kab", q, big_b)
    covs = scatter / counts[:, None, None]
    return MixtureParams(counts / n, means, covs), log_lik


@pytest.mark.parametrize("n_features", [3, 10])
def test_em_step_is_extreme_deconvolution_with_projections(n_features):
    x, s, mask, params = _problem(2, 50, n_features)
    obs = as_observations(*_with_nan(x, s, mask), observed=mask)
    new, log_lik = em_step(params, obs)
    want, want_ll = _brute_force_xd_step(x, s, mask, params)
    np.testing.assert_allclose(log_lik, want_ll, rtol=1e-12)
    for got, ref in zip(new, want, strict=True):
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-9, atol=1e-12)


def test_every_feature_observed_is_the_complete_data_program():
    x, s, _, params = _problem(3, 20, 3)
    full = as_observations(x, s)
    masked = as_observations(x, s, observed=np.ones(x.shape, bool))
    assert masked.observed is None  # nothing missing: the plain program, bit for bit
    assert float(log_likelihood(params, full)) == float(log_likelihood(params, masked))


@pytest.mark.parametrize(("observed", "message"), [
    (np.array([[True, True], [False, False]]), "no feature as measured in row(s) 1"),
    (np.array([[True, False], [True, False]]), "feature(s) [1] as missing for every star"),
    (np.array([[1, 1], [1, 0]]), "must be a boolean array"),
    (np.ones((3, 2), bool), "must have the shape of values"),
])
def test_bad_observed_masks_are_named(observed, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        as_observations(np.array([[1.0, 2.0], [3.0, np.nan]]), observed=observed)


def test_a_missing_value_marked_observed_is_refused():
    with pytest.raises(ValueError, match=r"values\[:, 1\] is marked observed but is NaN"):
        as_observations(np.array([[1.0, np.nan], [3.0, 4.0]]), observed=np.ones((2, 2), bool))


def test_nan_without_a_mask_points_to_marginalising():
    with pytest.raises(ValueError, match=r"observed=np\.isfinite"):
        as_observations(np.array([[1.0, np.nan], [3.0, 4.0]]))


@pytest.fixture(scope="module")
def disc():
    """Two-population disc abundances ([Fe/H], [Mg/Fe]) with 30% of each feature missing."""
    truth = thin_thick_disc_params()
    sim = simulate_mixture(4, truth, 1500)
    x = np.asarray(sim.catalogue.values)
    s = np.asarray(sim.catalogue.error_covs)
    rng = np.random.default_rng(4)
    mask = rng.random(x.shape) > 0.3
    mask[~mask.any(axis=1), 0] = True
    return truth, x, s, mask, sim.labels


def test_em_with_missing_features_recovers_the_complete_data_fit(disc):
    truth, x, s, mask, _ = disc
    complete = fit_em(0, as_observations(x, s), 2)
    partial = fit_em(0, as_observations(*_with_nan(x, s, mask), observed=mask), 2)
    order = lambda p: np.argsort(np.asarray(p.means)[:, 1])  # noqa: E731 ([Mg/Fe]: thin disc first)
    got = np.asarray(partial.params.means)[order(partial.params)]
    ref = np.asarray(complete.params.means)[order(complete.params)]
    # With 30% of each feature gone the fit loses information, not its answer: the means
    # move by less than their standard error, sd/sqrt(n_k) per feature, times 3.
    thin_first = np.argsort(np.asarray(truth.means)[:, 1])
    sd = np.sqrt(np.einsum("kaa->ka", np.asarray(truth.covariances)))[thin_first]
    n_k = 1500 * np.sort(np.asarray(truth.weights))
    assert np.all(np.abs(got - ref) < 3 * sd / np.sqrt(0.7 * n_k[:, None]) + 1e-3)


def test_posterior_memberships_and_predictive_check_with_missing_features(disc):
    from bayesmix.diagnostics import check_model_fit
    from bayesmix.membership import membership_probabilities, posterior_predictive
    from bayesmix.models import mixture_model
    from bayesmix.sampling import sample_posterior

    truth, x, s, mask, _ = disc
    obs = as_observations(*_with_nan(x[:600], s[:600], mask[:600]), observed=mask[:600])
    em = fit_em(0, obs, 2)
    fit = sample_posterior(1, mixture_model(obs, 2), obs, init=em, num_chains=2, num_warmup=200,
                           num_samples=300)
    post = fit.idata.posterior
    means = post["means"].values.reshape(-1, 2, 2)
    for k in range(2):
        # Truth within 4 posterior sd (two chains of 300 draws; both components, both features).
        mu, sd = means[:, k].mean(axis=0), means[:, k].std(axis=0)
        ref = np.asarray(truth.means)[np.argmin(np.abs(np.asarray(truth.means)[:, 1] - mu[1]))]
        assert np.all(np.abs(mu - ref) < 4 * sd), (mu, sd, ref)
    # The file shows missing values as missing, with the mask beside them.
    written = fit.idata.observed_data["values"].values
    assert np.array_equal(np.isnan(written), ~mask[:600])
    assert np.array_equal(fit.idata.constant_data["observed"].values, mask[:600])
    # Every star gets a membership, those missing a feature included.
    result = membership_probabilities(fit)
    assert result.mean.shape == (600, 2) and np.all(np.isfinite(result.mean))
    # Mocks miss what the data miss, and the check counts only measured entries.
    mocks = posterior_predictive(2, fit, 5)
    assert np.array_equal(np.isnan(mocks), np.broadcast_to(~mask[:600], mocks.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = check_model_fit(3, fit, n_replicates=100)
    per_feature = report.bins.groupby("feature")["observed"].sum()
    assert per_feature.to_dict() == {"x0": mask[:600, 0].sum(), "x1": mask[:600, 1].sum()}
    assert report.p_value > 0.01


@pytest.mark.parametrize("standardize", [False, True])
def test_estimator_marginalises_nan_features(disc, standardize):
    _, x, s, mask, _ = disc
    err = np.sqrt(np.einsum("nii->ni", s))
    X, E = np.where(mask, x, np.nan), np.where(mask, err, np.nan)
    est = DeconvolvedGaussianMixture(2, missing_features="marginalise", random_state=0,
                                     standardize=standardize).fit(X, X_err=E)
    obs = as_observations(X, E, observed=mask)
    params = MixtureParams(est.weights_, est.means_, est.covariances_)
    per_star = np.asarray(jax.scipy.special.logsumexp(
        np.log(est.weights_) + np.asarray(component_log_prob(params, obs)), axis=1))
    np.testing.assert_allclose(est.score_samples(X, E), per_star, rtol=1e-10)
    # lower_bound_ is the mean log-likelihood in the original units (standardising is exact).
    np.testing.assert_allclose(est.lower_bound_, per_star.mean(), rtol=1e-6)
    assert est.predict_proba(X, E).shape == (len(X), 2)


def test_estimator_refuses_nan_unless_asked(disc):
    _, x, _, mask, _ = disc
    X = np.where(mask, x, np.nan)
    with pytest.raises(ValueError, match="NaN"):
        DeconvolvedGaussianMixture(2).fit(X)
    with pytest.raises(ValueError, match="missing_features"):
        DeconvolvedGaussianMixture(2, missing_features="impute").fit(X)


def test_figures_show_missing_features_as_missing(disc):
    import matplotlib

    matplotlib.use("Agg")
    from bayesmix.plotting import ellipse_plot, ppc_plot

    truth, x, s, mask, _ = disc
    obs = as_observations(*_with_nan(x, s, mask), observed=mask)
    fig = ellipse_plot(obs, truth)
    offsets = fig.axes[0].collections[0].get_offsets()
    # Only stars with both features are drawn; none sits at a placeholder.
    assert np.isfinite(np.asarray(offsets)).all(axis=1).sum() == np.sum(mask.all(axis=1))
    mocks = np.where(mask, x, np.nan)[None] + np.random.default_rng(0).normal(0, 0.01, (3, *x.shape))
    fig = ppc_plot(obs, mocks, feature=1, bins=20)
    data_counts = next(p for p in fig.axes[0].patches if p.get_label() == "observed").get_data()[0]
    assert data_counts.sum() == mask[:, 1].sum()


def test_harps_stars_without_europium_keep_their_disc_memberships(shared_data):
    """HARPS-GTO: [Eu/Fe] is missing (9.99) for 489 of 1059 dwarfs. Dropping them loses 46% of
    the sample; marginalising keeps them, classified by [Fe/H]-[Mg/Fe] alone, and the thick
    disc's [Eu/Fe] enhancement is still measured from the stars that have it."""
    from bayesmix.catalogue import read_catalogue
    from bayesmix.likelihood import responsibilities

    path = shared_data / "harps_delgado_mena2017" / "DelgadoMena2017.fits"
    common = dict(id_column="Star", missing=9.99, error_floor=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the FITS file's non-standard unit strings
        three = read_catalogue(path, values=["feh", "MgFe", "EuFe"], errors=["erfeh", "errMg", "errEu"],
                               missing_features="marginalise", **common)
        two = read_catalogue(path, values=["feh", "MgFe"], errors=["erfeh", "errMg"], **common)
        dropped = read_catalogue(path, values=["feh", "MgFe", "EuFe"], errors=["erfeh", "errMg", "errEu"],
                                 **common)
    no_eu = ~three.observed[:, 2]
    assert three.n_stars == two.n_stars == 1059 and no_eu.sum() == 489
    assert dropped.n_stars == 1059 - 489
    fit3, fit2 = fit_em(0, three, 2, n_init=8), fit_em(0, two, 2, n_init=8)
    thick3 = int(np.argmax(np.asarray(fit3.params.means)[:, 1]))
    thick2 = int(np.argmax(np.asarray(fit2.params.means)[:, 1]))
    p3 = np.asarray(responsibilities(fit3.params, as_observations(three)))[:, thick3]
    p2 = np.asarray(responsibilities(fit2.params, as_observations(two)))[:, thick2]
    # Measured: 97.8% of the stars without Eu get the same thin/thick label as in the 2-D fit.
    assert np.mean((p3[no_eu] > 0.5) == (p2[no_eu] > 0.5)) > 0.93
    eu = np.asarray(fit3.params.means)[:, 2]
    assert eu[thick3] - eu[1 - thick3] > 0.1  # measured 0.18 dex: the thick disc is Eu-enhanced
