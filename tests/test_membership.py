"""Membership probabilities and posterior predictive draws (bayesmix.membership).

A stand-in model (the duck-typed contract of ``bayesmix.models.MixtureModel``) with a
radius-dependent member fraction and a uniform background is checked against a
per-draw reference written with scipy; the real model and sampler are checked at the
end on a small NUTS run.
"""

import dataclasses
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.table import Table
from scipy.special import expit, softmax
from scipy.stats import norm

from bayesmix import _arviz
from bayesmix.catalogue import PROVENANCE_KEY, Catalogue, write_table
from bayesmix.em import UniformBackground, fit_em
from bayesmix.likelihood import MixtureParams, Observations, as_observations, check_params, responsibilities
from bayesmix.membership import (
    PROBABILITY_FLOOR,
    MembershipResult,
    membership_probabilities,
    membership_table,
    posterior_predictive,
    posterior_predictive_idata,
    responsibilities_at,
    select_draws,
)

CLUSTER = (-44.7, 2.3)  # mean, dispersion (km/s)
FIELD = (2.8, 46.0)


@dataclasses.dataclass(frozen=True)
class StandInModel:
    """1-D cluster + field with ``f(R) = sigmoid(a + b log R)`` and an optional uniform background."""

    background: Any = None
    n_components: int = 2
    n_features: int = 1
    feature_names: tuple = ("RV",)
    radius_covariate: str = "R_proj"

    @property
    def component_names(self):
        return ("cluster", "field") + (("background",) if self.background is not None else ())

    def params(self, sample):
        return MixtureParams(sample["weights"], sample["means"], sample["covariances"])

    def log_weights(self, sample, covariates):
        logit = sample["frac_intercept"] + sample["frac_slope"] * jnp.log(covariates[self.radius_covariate])
        log_w = jnp.stack([jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit)], axis=-1)
        if self.background is None:
            return log_w
        bw = sample["background_weight"]
        return jnp.concatenate([log_w + jnp.log1p(-bw), jnp.broadcast_to(jnp.log(bw), logit.shape)[:, None]],
                               axis=1)

    def log_background(self, data):
        if self.background is None:
            return None
        return jnp.asarray(self.background.log_density(data))


@dataclasses.dataclass
class FitStandIn:
    idata: Any
    model: Any
    data: Observations
    covariates: dict
    em: Any = None
    catalogue: Any = None


def _stars(rng, n):
    member = rng.uniform(size=n) < 0.4
    true = np.where(member, rng.normal(*CLUSTER, n), rng.normal(*FIELD, n))
    errors = np.exp(rng.normal(0.0, 0.8, n))  # 0.2 .. 5 km/s, comparable to the cluster dispersion
    values = true + errors * rng.normal(size=n)
    radius = rng.uniform(10.0, 800.0, n)
    return values, errors, radius


def _posterior(rng, n_chains, n_draws, *, scatter=1.0, background_weight=None, frac_law=(3.0, -0.8)):
    shape = (n_chains, n_draws)
    means = (np.array([[CLUSTER[0]], [FIELD[0]]])
             + scatter * np.array([[0.3], [4.0]]) * rng.normal(size=(*shape, 2, 1)))
    scales = np.array([[CLUSTER[1]], [FIELD[1]]]) * np.exp(scatter * 0.1 * rng.normal(size=(*shape, 2, 1)))
    a = frac_law[0] + scatter * 0.3 * rng.normal(size=shape)
    b = frac_law[1] + scatter * 0.1 * rng.normal(size=shape)
    weights = np.stack([np.full(shape, 0.4), np.full(shape, 0.6)], axis=-1)
    post = {"weights": weights, "means": means, "scales": scales, "covariances": scales[..., None] ** 2,
            "frac_intercept": a, "frac_slope": b}
    if background_weight is not None:
        bw = background_weight + scatter * 0.02 * rng.normal(size=shape)
        post["background_weight"] = np.clip(bw, 0.01, 0.9)
    return _arviz.from_groups(
        {"posterior": post},
        coords={"component": ["cluster", "field"], "feature": ["RV"], "feature_bis": ["RV"]},
        dims={"weights": ["component"], "means": ["component", "feature"], "scales": ["component", "feature"],
              "covariances": ["component", "feature", "feature_bis"]},
    )


def _reference_memberships(fit, draw_indices):
    """Per-draw responsibilities written out with scipy: (n_draws, n_stars, n_total)."""
    post = fit.idata.posterior
    x = np.asarray(fit.data.values)[:, 0]
    err2 = np.asarray(fit.data.error_covs)[:, 0, 0]
    log_r = np.log(fit.covariates["R_proj"])
    out = []
    for c, d in draw_indices:
        mu = post["means"].values[c, d, :, 0]
        var = post["covariances"].values[c, d, :, 0, 0]
        f = expit(post["frac_intercept"].values[c, d] + post["frac_slope"].values[c, d] * log_r)
        cols = [np.log(f) + norm.logpdf(x, mu[0], np.sqrt(var[0] + err2)),
                np.log1p(-f) + norm.logpdf(x, mu[1], np.sqrt(var[1] + err2))]
        if fit.model.background is not None:
            bw = post["background_weight"].values[c, d]
            cols = [col + np.log1p(-bw) for col in cols]
            box = np.asarray(fit.model.background.high) - np.asarray(fit.model.background.low)
            cols.append(np.full_like(x, np.log(bw) - np.log(box[0])))
        out.append(softmax(np.stack(cols, axis=1), axis=1))
    return np.stack(out)


def _fit(rng, n_stars, n_chains, n_draws, *, background=None, scatter=1.0, frac_law=(3.0, -0.8)):
    values, errors, radius = _stars(rng, n_stars)
    idata = _posterior(rng, n_chains, n_draws, scatter=scatter, frac_law=frac_law,
                       background_weight=None if background is None else 0.2)
    return FitStandIn(idata=idata, model=StandInModel(background=background),
                      data=as_observations(values, errors), covariates={"R_proj": radius})


@pytest.fixture(scope="module")
def background_fit():
    return _fit(np.random.default_rng(21), 60, 2, 40, background=UniformBackground([-300.0], [300.0]))


# --------------------------------------------------------------------------- memberships


def test_memberships_equal_the_per_draw_reference(background_fit):
    fit = background_fit
    # 30 of 80 draws, and 16-star chunks (60 is not a multiple: the last chunk is padded).
    result = membership_probabilities(fit, max_draws=30, star_chunk=16)
    assert isinstance(result, MembershipResult)
    assert result.component_names == ("cluster", "field", "background")
    assert result.n_draws == 30 and result.n_stars == 60
    np.testing.assert_array_equal(result.draw_indices, select_draws(2, 40, 30))
    ref = _reference_memberships(fit, result.draw_indices)
    np.testing.assert_allclose(result.mean, ref.mean(axis=0), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(result.p16, np.percentile(ref, 16, axis=0), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(result.p84, np.percentile(ref, 84, axis=0), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(result.mean.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(result.labels, np.argmax(ref.mean(axis=0), axis=1))
    assert set(result.label_names) <= {"cluster", "field", "background"}
    np.testing.assert_array_equal(result.probability("field"), result.mean[:, 1])
    # The posterior scatter gives real intervals: some stars are uncertain.
    assert np.max(result.p84 - result.p16) > 0.05


def test_radius_law_moves_membership(background_fit):
    # Same velocity, different radius: the inner star is more likely a member (a > 0, b < 0).
    fit = dataclasses.replace(
        background_fit,
        data=as_observations(np.array([-40.0, -40.0]), np.array([1.0, 1.0])),
        covariates={"R_proj": np.array([20.0, 700.0])},
    )
    result = membership_probabilities(fit)
    assert result.mean[0, 0] > result.mean[1, 0] + 0.01


def test_chunks_and_thinning_do_not_change_results(background_fit):
    whole = membership_probabilities(background_fit, max_draws=80, star_chunk=1000)
    assert whole.n_draws == 80  # all draws when max_draws covers them
    chunked = membership_probabilities(background_fit, max_draws=80, star_chunk=7)
    np.testing.assert_allclose(chunked.mean, whole.mean, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(chunked.p84, whole.p84, rtol=1e-13, atol=1e-15)
    random_a = membership_probabilities(background_fit, max_draws=20, key=3)
    random_b = membership_probabilities(background_fit, max_draws=20, key=jax.random.key(3))
    np.testing.assert_array_equal(random_a.draw_indices, random_b.draw_indices)
    assert not np.array_equal(random_a.draw_indices, select_draws(2, 40, 20))


def test_select_draws_is_even_and_deterministic():
    idx = select_draws(4, 1000, 100)
    flat = idx[:, 0] * 1000 + idx[:, 1]
    np.testing.assert_array_equal(flat, np.round(np.linspace(0, 3999, 100)).astype(int))
    assert idx[0].tolist() == [0, 0] and idx[-1].tolist() == [3, 999]
    assert np.all(np.diff(flat) >= 40)  # evenly spread, not clustered in one chain
    random = select_draws(4, 1000, 100, key=0)
    assert len(np.unique(random[:, 0] * 1000 + random[:, 1])) == 100
    np.testing.assert_array_equal(select_draws(2, 5, 50), np.stack(np.divmod(np.arange(10), 5), axis=1))
    with pytest.raises(ValueError, match="max_draws must be a positive integer"):
        select_draws(2, 5, 0)


def test_point_mass_posterior_gives_the_responsibilities_formula():
    """With every draw equal, memberships are the EM formula at those parameters, no spread."""
    rng = np.random.default_rng(2)
    params = check_params([0.5, 0.3, 0.2], [[0.0, 0.0], [2.0, 1.0], [-1.0, 3.0]],
                          [[[1.0, 0.3], [0.3, 0.5]], [[0.4, -0.1], [-0.1, 0.6]], [[2.0, 0.0], [0.0, 0.3]]])
    x = rng.normal(size=(50, 2)) * 2
    a = rng.normal(size=(50, 2, 2)) * 0.3
    data = as_observations(x, a @ np.swapaxes(a, 1, 2))

    class ThreeBlobs:
        n_components, n_features = 3, 2
        component_names = ("c0", "c1", "c2")
        feature_names = ("FeH", "MgFe")

        def params(self, sample):
            return MixtureParams(sample["weights"], sample["means"], sample["covariances"])

        def log_weights(self, sample, covariates):
            assert covariates is None  # no covariates in this fit
            return jnp.log(sample["weights"])

        def log_background(self, data):
            return None

    post = {name: np.broadcast_to(np.asarray(v), (2, 10, *np.shape(v)))
            for name, v in params._asdict().items()}
    fit = FitStandIn(_arviz.from_groups({"posterior": post}), ThreeBlobs(), data, {})
    result = membership_probabilities(fit)
    expected = np.asarray(responsibilities(params, data))
    np.testing.assert_allclose(result.mean, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(result.p16, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(result.p84, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(responsibilities_at(params, data), expected, rtol=1e-12, atol=1e-15)
    # ... and the formula itself, written with explicit inverses for the 2x2 case.
    total = np.asarray(params.covariances)[None] + np.asarray(data.error_covs)[:, None]
    resid = x[:, None, :] - np.asarray(params.means)[None]
    maha = np.einsum("nki,nkij,nkj->nk", resid, np.linalg.inv(total), resid)
    log_det = np.log(np.linalg.det(total))
    log_joint = np.log(params.weights) - 0.5 * (maha + log_det + 2 * math.log(2 * math.pi))
    np.testing.assert_allclose(expected, softmax(log_joint, axis=1), rtol=1e-10, atol=1e-14)


def test_responsibilities_at_em_result_with_background():
    rng = np.random.default_rng(7)
    values, errors, _ = _stars(rng, 300)
    background = UniformBackground([-250.0], [250.0], weight=0.05)
    em = fit_em(0, values, 2, errors=errors, background=background, n_init=2)
    r = responsibilities_at(em, as_observations(values, errors), background=background)
    assert r.shape == (300, 3)
    w = np.append(em.weights, em.background_weight)
    sd = np.sqrt(em.covariances[:, 0, 0][None, :] + errors[:, None] ** 2)
    joint = np.column_stack([w[0] * norm.pdf(values, em.means[0, 0], sd[:, 0]),
                             w[1] * norm.pdf(values, em.means[1, 0], sd[:, 1]),
                             np.full(300, w[2] / 500.0)])
    np.testing.assert_allclose(r, joint / joint.sum(axis=1, keepdims=True), rtol=1e-9, atol=1e-14)
    with pytest.raises(ValueError, match="background weight needs the background's density"):
        responsibilities_at(em, as_observations(values, errors))
    with pytest.raises(ValueError, match="MixtureParams or an EMResult"):
        responsibilities_at({"weights": 1}, values)


def test_membership_table_with_and_without_catalogue(background_fit):
    result = membership_probabilities(background_fit, max_draws=10)
    table = membership_table(background_fit, result, provenance={"seed": 5})
    assert table.colnames[:2] == ["id", "RV"]
    for name in ("cluster", "field", "background"):
        for suffix in ("", "_16", "_84"):
            assert f"p_{name}{suffix}" in table.colnames
    np.testing.assert_array_equal(table["p_field_84"], result.p84[:, 1])
    np.testing.assert_array_equal(table["label"], result.label_names)
    prov = table.meta[PROVENANCE_KEY]
    assert prov["seed"] == 5 and prov["n_posterior_draws"] == 10 and "bayesmix_version" in prov

    values = np.asarray(background_fit.data.values)[:, 0]
    errors = np.sqrt(np.asarray(background_fit.data.error_covs)[:, 0, 0])
    catalogue = Catalogue.from_arrays(values, errors, feature_names=["RV"], ids=np.arange(100, 160),
                                      covariates={"R_proj": background_fit.covariates["R_proj"]})
    with_cat = dataclasses.replace(background_fit, catalogue=catalogue)
    table = membership_table(with_cat, result, prefix="prob_", label_column="member_of")
    assert table.colnames[:4] == ["id", "RV", "RV_err", "R_proj"]  # the input columns, untouched
    np.testing.assert_array_equal(table["id"], np.arange(100, 160))
    np.testing.assert_array_equal(table["prob_cluster"], result.mean[:, 0])
    assert "member_of" in table.colnames and PROVENANCE_KEY in table.meta
    with pytest.raises(ValueError, match="would overwrite an input column"):
        membership_table(with_cat, result, label_column="RV")
    short = dataclasses.replace(result, mean=result.mean[:5])
    with pytest.raises(ValueError, match="result has 5 stars but the fit has 60"):
        membership_table(with_cat, short)


def test_membership_table_writes_tiny_probabilities_as_zero(background_fit, tmp_path):
    # Stars far out in the cluster's tail (0.1 km/s errors): responsibilities down to 1e-300 and below.
    x = np.linspace(20.0, 60.0, 80)
    fit = dataclasses.replace(background_fit, data=as_observations(x, np.full(80, 0.1)),
                              covariates={"R_proj": np.full(80, 100.0)})
    result = membership_probabilities(fit, max_draws=10)
    stats = ("mean", "p16", "p84")
    raw = np.column_stack([getattr(result, s)[:, k] for k in range(3) for s in stats])
    assert np.any((raw > 0) & (raw < PROBABILITY_FLOOR))  # the case under test occurs
    # A subnormal probability (text readers overflow on it) is written as exactly 0 too.
    mean = result.mean.copy()
    mean[0, 0], mean[1, 0] = 7.4e-309, 2 * PROBABILITY_FLOOR
    result = dataclasses.replace(result, mean=mean)
    table = membership_table(fit, result)
    columns = [f"p_{name}{suffix}" for name in result.component_names for suffix in ("", "_16", "_84")]
    written = np.column_stack([np.asarray(table[c]) for c in columns])
    assert not np.any((written > 0) & (written < PROBABILITY_FLOOR))
    assert table["p_cluster"][0] == 0.0 and table["p_cluster"][1] == 2 * PROBABILITY_FLOOR
    raw = np.column_stack([getattr(result, s)[:, k] for k in range(3) for s in stats])
    np.testing.assert_array_equal(written, np.where(raw < PROBABILITY_FLOOR, 0.0, raw))  # the rest as is
    # The CSV reads back exactly, without astropy's overflow warning.
    path = write_table(table, tmp_path / "membership.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = Table.read(path)
    np.testing.assert_array_equal(np.column_stack([np.asarray(back[c]) for c in columns]), written)


def test_membership_input_errors(background_fit):
    with pytest.raises(ValueError, match="lacks"):
        membership_probabilities(object())
    with pytest.raises(ValueError, match="star_chunk must be a positive integer"):
        membership_probabilities(background_fit, star_chunk=0)
    bad = dataclasses.replace(background_fit, covariates={"R_proj": np.ones(3)})
    with pytest.raises(ValueError, match=r"fit.covariates\['R_proj'\] has shape \(3,\)"):
        membership_probabilities(bad)


# --------------------------------------------------------------------------- posterior predictive


def test_posterior_predictive_component_fractions_and_errors():
    """Point-mass posterior, well separated components: each star's replicated values fall in
    the cluster with its own radius-dependent probability, and scatter by sigma^2 + e_i^2."""
    rng = np.random.default_rng(5)
    fit = _fit(rng, 60, 1, 5, scatter=0.0)
    n_draws = 400
    draws = posterior_predictive(0, fit, n_draws=n_draws)
    assert draws.shape == (n_draws, 60, 1)
    x = draws[..., 0]
    in_cluster = np.abs(x - CLUSTER[0]) < 40  # cluster +- >= 7 sigma; field stars land there ~30%
    radius = fit.covariates["R_proj"]
    f = expit(3.0 - 0.8 * np.log(radius))
    # Field stars falling into the window: P(|N(2.8, 46^2 + e^2) + 44.7| < 40).
    err = np.sqrt(np.asarray(fit.data.error_covs)[:, 0, 0])
    field_sd = np.sqrt(FIELD[1] ** 2 + err**2)
    field_in = norm.cdf(CLUSTER[0] + 40, FIELD[0], field_sd) - norm.cdf(CLUSTER[0] - 40, FIELD[0], field_sd)
    expected = f + (1 - f) * field_in
    sd = np.sqrt(expected * (1 - expected) / n_draws)
    assert np.all(np.abs(in_cluster.mean(axis=0) - expected) < 4.5 * sd + 1e-3)  # 60 stars: 4.5 sd
    # All stars members (logit 30): the spread includes each star's own error, so the
    # z-scores have unit variance (without the errors it would be ~2 for these errors).
    members = _fit(np.random.default_rng(5), 60, 1, 5, scatter=0.0, frac_law=(30.0, 0.0))
    x = posterior_predictive(0, members, n_draws=100)[..., 0]
    z = (x - CLUSTER[0]) / np.sqrt(CLUSTER[1] ** 2 + err**2)
    assert abs(np.mean(z)) < 4.0 / math.sqrt(z.size)
    assert abs(np.var(z) - 1.0) < 4.0 * math.sqrt(2.0 / z.size)
    assert np.var((x - CLUSTER[0]) / CLUSTER[1]) > 1.5
    # Same key, same draws; new key, new draws.
    first = posterior_predictive(0, fit, n_draws=3)
    np.testing.assert_array_equal(posterior_predictive(0, fit, n_draws=3), first)
    assert not np.array_equal(posterior_predictive(1, fit, n_draws=3), first)


def test_posterior_predictive_uniform_background_and_error_free_data():
    rng = np.random.default_rng(9)
    fit = _fit(rng, 40, 1, 4, scatter=0.0, background=UniformBackground([-1000.0], [1000.0]))
    fit = dataclasses.replace(fit, data=as_observations(np.asarray(fit.data.values)[:, 0]))  # no errors
    draws = posterior_predictive(jax.random.key(4), fit, n_draws=500)[..., 0]
    assert np.all(np.isfinite(draws))
    # Beyond |x| > 400 (> 8.6 field sigma) only the background reaches: fraction 0.2 * 1200 / 2000.
    far = np.abs(draws) > 400
    expected = 0.2 * 1200 / 2000
    assert abs(far.mean() - expected) < 4 * math.sqrt(expected * (1 - expected) / far.size)
    assert np.all(np.abs(draws) <= 1000)


def test_posterior_predictive_idata(background_fit):
    idata = posterior_predictive_idata(0, background_fit, n_draws=7)
    assert _arviz.has_group(idata, "posterior_predictive")
    assert idata.posterior_predictive["values"].shape == (1, 7, 60, 1)
    assert list(idata.posterior_predictive["feature"].values) == ["RV"]
    with pytest.raises(ValueError, match="n_draws must be a positive integer"):
        posterior_predictive(0, background_fit, n_draws=0)
    with pytest.raises(ValueError, match="key must be an integer seed or one JAX PRNG key"):
        posterior_predictive("seed", background_fit)


# --------------------------------------------------------------------------- the real model and sampler


@pytest.fixture(scope="module")
def real_fit():
    from bayesmix.models import cluster_field_model
    from bayesmix.sampling import sample_posterior
    from bayesmix.simulate import simulate_cluster_field

    sim = simulate_cluster_field(0, 200)
    model = cluster_field_model(sim.catalogue, radius_fraction="R_proj")
    fit = sample_posterior(1, model, sim.catalogue, num_chains=2, num_warmup=100, num_samples=100,
                           progress_bar=False)
    return sim, fit


@pytest.mark.timeout(120)
def test_real_fit_memberships_diagnostics_and_predictive(real_fit):
    from bayesmix.diagnostics import check_convergence, check_label_switching, summary

    sim, fit = real_fit
    result = membership_probabilities(fit, max_draws=50)
    assert result.component_names == ("cluster", "field")
    # Reference from the posterior sites with scipy (the model's radius law, its reference radius).
    post = fit.idata.posterior
    x = np.asarray(fit.data.values)[:, 0]
    err2 = np.asarray(fit.data.error_covs)[:, 0, 0]
    log_r = np.log(fit.covariates["R_proj"] / fit.model.reference_radius)
    ref = []
    for c, d in result.draw_indices:
        mu, var = post["means"].values[c, d, :, 0], post["covariances"].values[c, d, :, 0, 0]
        f = expit(post["frac_intercept"].values[c, d] + post["frac_slope"].values[c, d] * log_r)
        joint = np.stack([np.log(f) + norm.logpdf(x, mu[0], np.sqrt(var[0] + err2)),
                          np.log1p(-f) + norm.logpdf(x, mu[1], np.sqrt(var[1] + err2))], axis=1)
        ref.append(softmax(joint, axis=1))
    ref = np.stack(ref)
    np.testing.assert_allclose(result.mean, ref.mean(axis=0), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(result.p16, np.percentile(ref, 16, axis=0), rtol=1e-9, atol=1e-14)
    # At the posterior-mean parameters, the EM responsibilities formula.
    params = fit.posterior_mean_params()
    np.testing.assert_allclose(responsibilities_at(params, fit.data),
                               np.asarray(responsibilities(params, fit.data)), rtol=1e-12)
    # Table beside the catalogue's columns.
    table = membership_table(fit, result)
    assert {"star_id", "RV", "E_RV", "R_proj", "p_cluster", "p_field_84", "label"} <= set(table.colnames)
    # Memberships recover the simulated labels for most stars.
    assert np.mean(result.labels == sim.labels) > 0.9
    # Diagnostics read the real InferenceData.
    table = summary(fit)
    rows = {"means[cluster, RV]", "scales[field, RV]", "weights[cluster]", "frac_slope", "sigma1"}
    assert rows <= set(table.index)
    report = check_convergence(fit, warn=False)
    assert report.n_chains == 2 and report.n_divergent is not None
    assert check_label_switching(fit, warn=False).chain_permutations == ((0, 1), (0, 1))
    draws = posterior_predictive(0, fit, n_draws=20)
    assert draws.shape == (20, 200, 1) and np.all(np.isfinite(draws))
