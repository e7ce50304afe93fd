"""The fit does not depend on the data's units: EM and NUTS at scale factors 1e-150 .. 1e150.

Values and errors of one simulated cluster-field catalogue are multiplied by a factor; EM
must find the x1 optimum times the factor, and NUTS the x1 posterior times the factor (to
sampling noise). Before the sampler moved in standardised coordinates, means in units of
1e20 never moved (posterior sd exactly 0) and the convergence check passed them.
"""

import warnings

import numpy as np
import pytest

from bayesmix import _arviz
from bayesmix.diagnostics import check_convergence
from bayesmix.em import fit_em
from bayesmix.likelihood import MixtureParams, as_observations
from bayesmix.models import cluster_field_model, mixture_model
from bayesmix.sampling import sample_posterior
from bayesmix.simulate import simulate_cluster_field

FACTORS = [1e-150, 1e-10, 1e8, 1e20, 1e150]
QUANTITIES = ["mean1", "sigma1", "mean2", "sigma2"]
# Small settings: 2 chains x (150 warmup + 200 draws), about 250-400 effective draws.
SETTINGS = {"num_chains": 2, "num_warmup": 150, "num_samples": 200, "progress_bar": False}


def _catalogue(factor):
    sim = simulate_cluster_field(0, 200)
    values = np.asarray(sim.catalogue.values)[:, 0]
    errors = np.sqrt(np.asarray(sim.catalogue.error_covs)[:, 0, 0])
    return as_observations(values * factor, errors * factor)


def _fit(factor):
    obs = _catalogue(factor)
    em = fit_em(0, obs, 2, n_init=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sample_posterior(1, cluster_field_model(obs), obs, init=em, **SETTINGS)
    return em, fit


def _em_point(em, factor):
    """EM weights, means and dispersions in x1 units, narrowest component first."""
    order = np.argsort(np.asarray(em.covariances)[:, 0, 0])
    return (np.asarray(em.weights)[order], np.asarray(em.means)[order, 0] / factor,
            np.sqrt(np.asarray(em.covariances)[order, 0, 0]) / factor)


@pytest.fixture(scope="module")
def reference():
    return _fit(1.0)


@pytest.mark.parametrize("factor", FACTORS)
def test_em_and_posterior_are_the_x1_ones_rescaled(reference, factor):
    em_ref, fit_ref = reference
    em, fit = _fit(factor)
    for got, want in zip(_em_point(em, factor), _em_point(em_ref, 1.0), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    post, post_ref = fit.idata.posterior, fit_ref.idata.posterior
    for name in QUANTITIES:
        draws = post[name].values / factor
        ref = post_ref[name].values
        # Two independent runs of ~300 effective draws: the means differ by about
        # sqrt(2 / 300) = 0.08 sd and the sds by about 6% (1 / sqrt(ESS) relative); the
        # bounds are 6 of those standard errors, so noise never fails them while a frozen
        # (sd 0) or mis-scaled (sd 100x off) quantity always does.
        assert abs(draws.mean() - ref.mean()) < 0.5 * ref.std(), name
        assert 0.7 < draws.std() / ref.std() < 1.4, name
    report = check_convergence(fit, ess_min=50, warn=False)
    assert not any(r.startswith("never moved") for r in report.reasons), report.reasons
    assert np.isfinite(report.table.loc[["means[cluster, x0]", "means[field, x0]"], "r_hat"]).all()
    assert int(fit.idata.sample_stats["diverging"].sum()) == 0


def _idata(means, weights):
    n_chains, n_draws = means.shape[:2]
    return _arviz.from_groups(
        {"posterior": {"means": means, "weights": weights},
         "sample_stats": {"diverging": np.zeros((n_chains, n_draws), bool)}},
        coords={"component": ["c0", "c1"], "feature": ["x0"]},
        dims={"means": ["component", "feature"], "weights": ["component"]})


class _FitLike:
    def __init__(self, idata, model):
        self.idata, self.model = idata, model


def test_a_quantity_that_never_moved_fails_the_convergence_check():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(2, 400, 2, 1))
    means[..., 1, 0] = 3.5e20  # a chain frozen at its start, as at x1e20 before the fix
    weights = rng.dirichlet([20.0, 20.0], size=(2, 400))
    model = mixture_model(as_observations(rng.normal(size=50)), 2)
    report = check_convergence(_FitLike(_idata(means, weights), model), ess_min=100, warn=False)
    assert not report.ok
    assert report.reasons[0].startswith("never moved") and "means[c1, x0]" in report.reasons[0]
    assert "means[c1, x0]" in report.offending.index
    # A bare InferenceData says nothing about its model; fixed=() declares nothing fixed.
    assert not check_convergence(_idata(means, weights), ess_min=100, warn=False, fixed=()).ok
    # The same constant is fine where the model fixes it by construction (a frozen mean).
    frozen = mixture_model(as_observations(rng.normal(size=50)), 2,
                           frozen=MixtureParams(np.array([0.5, 0.5]), np.array([[0.0], [3.5e20]]),
                                                np.ones((2, 1, 1))),
                           frozen_means=[False, True])
    report = check_convergence(_FitLike(_idata(means, weights), frozen), ess_min=100, warn=False)
    assert report.ok, report.reasons
    # A one-component model's weight is 1 in every draw, by construction.
    one = mixture_model(as_observations(rng.normal(size=50)), 1)
    assert one.fixed_quantities()["weights"].all()
