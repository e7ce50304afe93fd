"""Posterior diagnostics (bayesmix.diagnostics) on draws with known properties, and through a real fit."""

import math
import warnings

import arviz as az
import numpy as np
import pytest

from bayesmix import _arviz
from bayesmix.diagnostics import (
    ConvergenceWarning,
    LabelSwitchingWarning,
    ModeDisagreementWarning,
    _best_assignment,
    _exceedance_p,
    check_convergence,
    check_label_switching,
    check_modes,
    compare_models,
    summary,
)

COMPONENTS = ["thin", "thick", "halo"]
FEATURES = ["FeH", "MgFe"]
TRUE_MEANS = np.array([[-0.05, 0.05], [-0.5, 0.28], [-1.4, 0.3]])
TRUE_SCALES = np.array([[0.2, 0.05], [0.25, 0.08], [0.4, 0.1]])
TRUE_WEIGHTS = np.array([0.6, 0.3, 0.1])
# Posterior standard deviations of the simulated draws (an N ~ 3000 star fit).
MEAN_SD = np.array([[0.005, 0.002], [0.01, 0.004], [0.03, 0.01]])


def _posterior_draws(rng, n_chains, n_draws):
    """Independent draws scattered around known values, like a well-mixed NUTS run."""
    shape = (n_chains, n_draws)
    means = TRUE_MEANS + MEAN_SD * rng.normal(size=(*shape, 3, 2))
    scales = TRUE_SCALES * np.exp(0.03 * rng.normal(size=(*shape, 3, 2)))
    rho = np.tanh(np.array([0.1, 0.3, -0.2]) + 0.05 * rng.normal(size=(*shape, 3)))
    corr = np.zeros((*shape, 3, 2, 2))
    corr[..., 0, 0] = corr[..., 1, 1] = 1.0
    corr[..., 0, 1] = corr[..., 1, 0] = rho
    logits = np.log(TRUE_WEIGHTS) + 0.05 * rng.normal(size=(*shape, 3))
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return {
        "weights": weights,
        "means": means,
        "scales": scales,
        "correlations": corr,
        "covariances": scales[..., :, None] * corr * scales[..., None, :],
        "lkj_raw": rng.normal(size=(*shape, 3)),  # a raw vector site: not in the default table
        "frac_slope": rng.normal(size=shape),  # a raw scalar site: in the default table
    }


def _idata(posterior, diverging=None, lp=None):
    n_chains, n_draws = posterior["means"].shape[:2]
    stats = {"diverging": np.zeros((n_chains, n_draws), bool) if diverging is None else diverging}
    if lp is not None:
        stats["lp"] = lp
    return _arviz.from_groups(
        {"posterior": posterior, "sample_stats": stats},
        coords={"component": COMPONENTS, "feature": FEATURES, "feature_bis": FEATURES},
        dims={"weights": ["component"], "means": ["component", "feature"],
              "scales": ["component", "feature"],
              "correlations": ["component", "feature", "feature_bis"],
              "covariances": ["component", "feature", "feature_bis"]},
    )


@pytest.fixture(scope="module")
def good_posterior():
    return _posterior_draws(np.random.default_rng(11), 4, 500)


class FitLike:
    """Duck-typed PosteriorFit: diagnostics only need ``idata``."""

    def __init__(self, idata, em=None):
        self.idata = idata
        self.em = em


# --------------------------------------------------------------------------- summary


def test_summary_rows_and_statistics_match_numpy_and_arviz(good_posterior):
    idata = _idata(good_posterior)
    table = summary(FitLike(idata))
    expected_rows = (
        [f"weights[{c}]" for c in COMPONENTS]
        + [f"means[{c}, {f}]" for c in COMPONENTS for f in FEATURES]
        + [f"scales[{c}, {f}]" for c in COMPONENTS for f in FEATURES]
        + [f"correlations[{c}, FeH, MgFe]" for c in COMPONENTS]  # upper triangle, no unit diagonal
        + ["frac_slope"]
    )
    assert list(table.index) == expected_rows
    assert list(table.columns) == ["mean", "sd", "p16", "p50", "p84", "hdi_3%", "hdi_97%",
                                   "ess_bulk", "ess_tail", "r_hat", "mcse_mean"]
    # Moments and percentiles from numpy on the pooled draws of one entry.
    draws = good_posterior["means"][:, :, 1, 1].ravel()  # means[thick, MgFe]
    row = table.loc["means[thick, MgFe]"]
    np.testing.assert_allclose(row[["mean", "sd"]].to_numpy(float), [draws.mean(), draws.std(ddof=1)],
                               rtol=1e-12)
    np.testing.assert_allclose(row[["p16", "p50", "p84"]].to_numpy(float),
                               np.percentile(draws, [16, 50, 84]), rtol=1e-12)
    rho = good_posterior["correlations"][:, :, 2, 0, 1].ravel()
    assert table.loc["correlations[halo, FeH, MgFe]", "mean"] == pytest.approx(rho.mean(), rel=1e-12)
    # Diagnostics agree with ArviZ's own summary of the same entries (our flattening keeps the
    # (chain, draw) layout, so a transposition bug would change ESS and R-hat).
    if _arviz.ARVIZ_MAJOR >= 1:
        ref = az.summary(idata, var_names=["means", "weights"], ci_prob=0.94, ci_kind="hdi", round_to="none")
        ref = ref.rename(columns={"hdi94_lb": "hdi_3%", "hdi94_ub": "hdi_97%"})
    else:
        ref = az.summary(idata, var_names=["means", "weights"], hdi_prob=0.94, round_to="none")
    for name in ["means[thick, MgFe]", "means[halo, FeH]", "weights[thin]"]:
        for ours, theirs in [("ess_bulk", "ess_bulk"), ("ess_tail", "ess_tail"), ("r_hat", "r_hat"),
                             ("hdi_3%", "hdi_3%"), ("hdi_97%", "hdi_97%")]:
            assert table.loc[name, ours] == pytest.approx(ref.loc[name, theirs], rel=1e-10)
    # Independent draws: ESS near the number of draws (2000; its estimator scatters by ~10%),
    # R-hat within 1.01, MCSE near sd / sqrt(2000).
    assert table["ess_bulk"].between(1500, 2600).all()
    assert (table["r_hat"] < 1.01).all()
    np.testing.assert_allclose(table["mcse_mean"], table["sd"] / np.sqrt(2000), rtol=0.25)


def test_summary_var_names_hdi_prob_and_errors(good_posterior):
    idata = _idata(good_posterior)
    table = summary(idata, var_names=["covariances"], hdi_prob=0.9)
    assert list(table.index) == [f"covariances[{c}, {a}, {b}]" for c in COMPONENTS
                                 for a, b in [("FeH", "FeH"), ("FeH", "MgFe"), ("MgFe", "MgFe")]]
    assert "hdi_5%" in table.columns and "hdi_95%" in table.columns
    raw = summary(idata, var_names="lkj_raw")
    assert list(raw.index) == ["lkj_raw[0]", "lkj_raw[1]", "lkj_raw[2]"]
    with pytest.raises(ValueError, match=r"var_names \['sigma'\] are not in the posterior"):
        summary(idata, var_names=["sigma"])
    with pytest.raises(ValueError, match="hdi_prob"):
        summary(idata, hdi_prob=1.5)
    with pytest.raises(ValueError, match=r"fit_or_idata must be an arviz\.InferenceData"):
        summary(np.zeros(3))


# --------------------------------------------------------------------------- convergence


def test_well_mixed_draws_pass_without_warning(good_posterior):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        report = check_convergence(_idata(good_posterior))
    assert report.ok and report.reasons == ()
    assert report.n_divergent == 0 and report.n_chains == 4 and report.n_draws == 500
    assert report.max_r_hat < 1.01 and report.min_ess_bulk > 400 and report.min_ess_tail > 400
    assert report.offending.empty


def test_shifted_chain_fails_r_hat_and_the_warning_carries_the_table(good_posterior):
    posterior = {k: v.copy() for k, v in good_posterior.items()}
    # Chain 3 sits one posterior sd away for one parameter: R-hat ~ 1.1, far above 1.01
    # (well-mixed draws give 1.000 +- 0.003 here).
    posterior["means"][3, :, 2, 0] += MEAN_SD[2, 0]
    with pytest.warns(ConvergenceWarning, match=r"r_hat > 1.01") as record:
        report = check_convergence(_idata(posterior))
    warning = record[0].message
    assert warning.report is report and warning.table is report.table
    assert list(report.offending.index) == ["means[halo, FeH]"]
    assert not report.ok and report.max_r_hat > 1.05
    assert report.max_r_hat == pytest.approx(report.table.loc["means[halo, FeH]", "r_hat"])


def test_chains_in_one_mode_agree(good_posterior):
    report = check_modes(_idata(good_posterior))
    assert report.ok and len(report.modes) == 1 and report.chain_modes == (0, 0, 0, 0)
    assert report.modes[0].chains == (0, 1, 2, 3)
    assert float(report.separation.to_numpy().max()) < 0.5  # chain means a fraction of an sd apart
    assert "one mode" in str(report)


def test_chains_in_two_modes_are_grouped_and_named_with_their_densities(good_posterior):
    """Chains 1 and 3 put the thick disc 25 posterior sd away (another group of stars taken as the
    component), with a lower log density: two modes, the better first, both in the warning."""
    posterior = {k: v.copy() for k, v in good_posterior.items()}
    rng = np.random.default_rng(5)
    lp = rng.normal(-1000.0, 2.0, size=(4, 500))
    for c in (1, 3):
        posterior["means"][c, :, 1, :] += 25 * MEAN_SD[1]
        lp[c] -= 12.0
    idata = _idata(posterior, lp=lp)
    with pytest.warns(ModeDisagreementWarning) as record:
        report = check_modes(idata)
    assert not report.ok and record[0].message.modes is report
    assert [m.chains for m in report.modes] == [(0, 2), (1, 3)] and report.chain_modes == (0, 1, 0, 1)
    assert report.modes[0].mean_log_density == pytest.approx(-1000.0, abs=0.3)
    assert report.modes[1].mean_log_density == pytest.approx(-1012.0, abs=0.3)
    name = "means[thick, FeH]"
    shifted = report.modes[1].parameters[name] - report.modes[0].parameters[name]
    assert shifted == pytest.approx(25 * MEAN_SD[1, 0], rel=0.05)
    text = str(report)
    assert "mode 0: chains [0, 2]" in text and "mode 1: chains [1, 3]" in text and "(-12." in text
    # The convergence check reports it as NOT converged, with the mode warning (a ConvergenceWarning).
    with pytest.warns(ModeDisagreementWarning) as record:
        conv = check_convergence(idata)
    assert not conv.ok and any("different modes" in r for r in conv.reasons)
    assert issubclass(ModeDisagreementWarning, ConvergenceWarning) and record[0].message.report is conv
    assert conv.modes.modes[1].chains == (1, 3)
    assert check_convergence(idata, modes=False, warn=False).modes is None


def test_mode_check_tolerance_and_input_errors(good_posterior):
    posterior = {k: v.copy() for k, v in good_posterior.items()}
    posterior["means"][2, :, 0, 0] += 5 * MEAN_SD[0, 0]  # 5 sd: a mode at tolerance 3, not at 10
    assert not check_modes(_idata(posterior), warn=False).ok
    assert check_modes(_idata(posterior), tolerance=10.0, warn=False).ok
    with pytest.raises(ValueError, match="tolerance must be > 0"):
        check_modes(_idata(good_posterior), tolerance=0.0)


def test_exceedance_p_values_of_data_and_of_each_mock():
    replicated = np.arange(1.0, 101.0)[:, None]  # 100 mocks: 1, 2, ..., 100
    p_obs, p_rep = _exceedance_p(replicated, np.array([95.5]))
    assert p_obs[0] == pytest.approx((1 + 5) / 101)  # mocks 96..100 are at least as large
    assert p_rep[99, 0] == pytest.approx(1 / 100) and p_rep[0, 0] == pytest.approx(1.0)


def test_autocorrelated_draws_fail_ess():
    rng = np.random.default_rng(3)
    posterior = _posterior_draws(rng, 4, 500)
    # AR(1) with rho = 0.99: ESS ~ 2000 (1 - rho) / (1 + rho) ~ 10, far below 400.
    ar = np.zeros((4, 500))
    for t in range(1, 500):
        ar[:, t] = 0.99 * ar[:, t - 1] + math.sqrt(1 - 0.99**2) * rng.normal(size=4)
    posterior["frac_slope"] = ar + rng.normal(size=(4, 1))  # chains also start apart
    with pytest.warns(ConvergenceWarning, match="ESS < 400") as record:
        report = check_convergence(_idata(posterior))
    assert "frac_slope" in report.offending.index
    assert report.min_ess_bulk < 100
    assert record[0].message.offending is report.offending


def test_divergences_fail_and_are_counted(good_posterior):
    diverging = np.zeros((4, 500), bool)
    diverging[1, [5, 50, 300]] = True
    with pytest.warns(ConvergenceWarning, match="3 divergent transition"):
        report = check_convergence(_idata(good_posterior, diverging))
    assert report.n_divergent == 3 and report.offending.empty and not report.ok
    quiet = check_convergence(_idata(good_posterior, diverging), warn=False)
    assert not quiet.ok


def test_constant_quantities_are_skipped_and_single_chains_get_an_r_hat(good_posterior):
    posterior = {k: v[:1].copy() for k, v in good_posterior.items()}
    posterior["frac_slope"][:] = 0.3  # a frozen parameter: no R-hat, no ESS, not a failure
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        report = check_convergence(_idata(posterior), ess_min=300)
    assert np.isnan(report.table.loc["frac_slope", "r_hat"])
    assert report.ok and report.n_chains == 1
    assert np.isfinite(report.table["r_hat"].drop("frac_slope")).all()
    # One chain whose second half drifted away: the halves disagree.
    posterior["means"][0, 250:, 0, 0] += 5 * MEAN_SD[0, 0]
    with pytest.warns(ConvergenceWarning):
        bad = check_convergence(_idata(posterior), ess_min=300)
    assert "means[thin, FeH]" in bad.offending.index
    with pytest.raises(ValueError, match="r_hat_max"):
        check_convergence(_idata(posterior), r_hat_max=0.9)


# --------------------------------------------------------------------------- label switching


def _swap(posterior, chain, draws, a, b):
    out = {k: v.copy() for k, v in posterior.items()}
    for name in ("weights", "means", "scales", "correlations", "covariances"):
        arr = out[name]
        arr[chain, draws, a], arr[chain, draws, b] = arr[chain, draws, b].copy(), arr[chain, draws, a].copy()
    return out


def test_consistent_labels_pass(good_posterior):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelSwitchingWarning)
        report = check_label_switching(_idata(good_posterior))
    assert report.ok
    assert report.chain_permutations == ((0, 1, 2),) * 4
    assert report.component_names == tuple(COMPONENTS)
    # Chain means agree to ~1/sqrt(500) sd per parameter: gains are exactly zero, distances small.
    assert np.all(report.chain_gains == 0.0)
    # Segment means (250 draws) scatter by ~1/sqrt(250) sd per parameter, ~0.4 over 5 parameters.
    diag = np.diagonal(report.segment_distances, axis1=2, axis2=3)
    assert diag.max() < 1.5
    off_diag = report.segment_distances[:, :, ~np.eye(3, dtype=bool)]
    assert off_diag.min() > 20


def test_chain_with_swapped_labels_is_reported_with_its_permutation(good_posterior):
    swapped = _swap(good_posterior, 2, slice(None), 0, 1)
    with pytest.warns(LabelSwitchingWarning, match="chain 2 vs reference chain 0") as record:
        report = check_label_switching(_idata(swapped))
    assert report.switched_chains == (2,)
    assert report.chain_permutations[2] == (1, 0, 2)
    warning = record[0].message
    assert warning.permutations == {2: (1, 0, 2)}
    # thin and thick differ by ~90 posterior sd in the FeH mean alone.
    assert warning.gains[2] > 50 and warning.report is report
    # Segments inside chain 2 agree with chain 2's (swapped) labels: no within-chain switch.
    assert report.switched_segments == ()


def test_switch_inside_one_chain_is_found_by_its_halves(good_posterior):
    swapped = _swap(good_posterior, 1, slice(250, None), 1, 2)
    with pytest.warns(LabelSwitchingWarning, match="within chain 1, segment 1") as record:
        report = check_label_switching(_idata(swapped))
    assert report.switched_segments == ((1, 1),)
    assert tuple(report.segment_permutations[1, 1]) == (0, 2, 1)
    assert (1, 1) in record[0].message.permutations
    # A switch in the last fifth of the chain needs finer segments.
    late = _swap(good_posterior, 1, slice(400, None), 1, 2)
    assert check_label_switching(_idata(late), warn=False).ok
    with pytest.warns(LabelSwitchingWarning):
        fine = check_label_switching(_idata(late), n_segments=5)
    assert fine.switched_segments == ((1, 4),)


def test_indistinguishable_components_do_not_raise_a_false_alarm():
    rng = np.random.default_rng(8)
    posterior = _posterior_draws(rng, 4, 500)
    # Components thin and thick identical in distribution: any labelling fits equally.
    posterior["means"][:, :, 1] = TRUE_MEANS[0] + MEAN_SD[0] * rng.normal(size=(4, 500, 2))
    posterior["scales"][:, :, 1] = TRUE_SCALES[0] * np.exp(0.03 * rng.normal(size=(4, 500, 2)))
    posterior["weights"][:, :, 1] = posterior["weights"][:, :, 0] * np.exp(0.05 * rng.normal(size=(4, 500)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelSwitchingWarning)
        report = check_label_switching(_idata(posterior))
    assert report.ok


def test_assignment_brute_force_and_greedy():
    rng = np.random.default_rng(0)
    for k in (3, 7, 9):  # 9 > 7 takes the greedy path
        perm = rng.permutation(k)
        cost = rng.uniform(5, 10, size=(k, k))
        cost[np.arange(k), perm] = rng.uniform(0, 1, size=k)
        assert _best_assignment(cost) == tuple(perm)
    # Brute force finds the optimum where greedy (smallest entry first) would not.
    cost = np.array([[1.0, 2.0], [1.5, 10.0]])
    assert _best_assignment(cost) == (1, 0)


def test_label_switching_input_errors(good_posterior):
    idata = _idata(good_posterior)
    with pytest.raises(ValueError, match="reference_chain"):
        check_label_switching(idata, reference_chain=4)
    with pytest.raises(ValueError, match="n_segments"):
        check_label_switching(idata, n_segments=0)
    no_means = _arviz.from_groups({"posterior": {"frac_slope": good_posterior["frac_slope"]}})
    with pytest.raises(ValueError, match="no `means` variable"):
        check_label_switching(no_means)


# --------------------------------------------------------------------------- model comparison


def test_compare_models_bic_from_em_and_loo_from_log_likelihood():
    from bayesmix.em import fit_em

    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(-45, 2.3, 150), rng.normal(3, 46, 250)])
    err = np.full_like(x, 1.0)
    em1 = fit_em(0, x, 1, errors=err)
    em2 = fit_em(0, x, 2, errors=err, n_init=2)
    # A posterior with a pointwise log-likelihood (two chains of draws x 40 stars).
    loglik = -1.0 - 0.1 * rng.standard_normal((2, 200, 40)) ** 2
    with_ll = _arviz.from_groups({"posterior": {"mu": rng.normal(size=(2, 200))},
                                  "log_likelihood": {"values": loglik}})
    table = compare_models({"one": em1, "two": em2, "nuts": FitLike(with_ll, em=em2)})
    assert table.loc["two", "bic"] == pytest.approx(em2.bic)
    assert table.loc["one", "aic"] == pytest.approx(em1.aic)
    # Two components describe a cluster inside a wide field far better.
    assert list(table.index[:1]) in (["two"], ["nuts"])
    assert table.loc["one", "delta_bic"] > 100 and table.loc["two", "delta_bic"] == 0.0
    loo = _arviz.loo(with_ll)
    assert table.loc["nuts", "elpd_loo"] == pytest.approx(loo.elpd)
    assert table.loc["nuts", "p_loo"] == pytest.approx(loo.p_loo)
    assert table.loc["nuts", "kind"] == "posterior" and table.loc["one", "kind"] == "em"
    assert np.isnan(table.loc["one", "elpd_loo"])
    with pytest.raises(ValueError, match=r"fits\['bad'\] must be"):
        compare_models({"bad": 3})
