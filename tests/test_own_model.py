"""A user's own NumPyro mixture program, fitted with NumPyro's MCMC, through bayesmix's tools.

The README's example, run for real: the program names its sites its own way (``w``, ``mu``,
``sigma``), ``posterior_from_draws`` maps them onto the protocol, and memberships (checked
against a brute-force numpy computation over the same draws), the summary, the figures, the
model check and the ArviZ-complete InferenceData all follow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.special import logsumexp
from numpyro.infer import MCMC, NUTS
from scipy.stats import norm

from bayesmix import _arviz
from bayesmix.diagnostics import check_model_fit, summary
from bayesmix.membership import membership_probabilities
from bayesmix.own_model import posterior_from_draws
from bayesmix.plotting import corner_plot, trace_plot
from bayesmix.sampling import arviz_complete
from bayesmix.simulate import simulate_cluster_field

RENAME = {"w": "weights", "mu": "means", "sigma": "scales"}


def velocity_mixture(rv, rv_err):
    """Cluster + field: each star's velocity error added in quadrature to each dispersion."""
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(2)))
    mu = numpyro.sample("mu", dist.Normal(0.0, 100.0).expand([2]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(50.0).expand([2]).to_event(1))
    numpyro.factor("ordered", jnp.where(sigma[0] < sigma[1], 0.0, -jnp.inf))  # cluster the colder
    width = jnp.sqrt(sigma**2 + rv_err[:, None] ** 2)
    log_joint = jnp.log(w) + dist.Normal(mu, width).log_prob(rv[:, None])
    numpyro.factor("likelihood", logsumexp(log_joint, axis=1).sum())


@pytest.fixture(scope="module")
def own_fit():
    sim = simulate_cluster_field(0, 300)
    rv = np.asarray(sim.catalogue.values[:, 0])
    rv_err = np.sqrt(np.asarray(sim.catalogue.error_covs[:, 0, 0]))
    init = {"w": jnp.array([0.4, 0.6]), "mu": jnp.array([-45.0, 0.0]), "sigma": jnp.array([3.0, 40.0])}
    mcmc = MCMC(NUTS(velocity_mixture, init_strategy=numpyro.infer.init_to_value(values=init)),
                num_warmup=300, num_samples=300, num_chains=2, chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(1), jnp.asarray(rv), jnp.asarray(rv_err), extra_fields=("diverging",))
    draws = mcmc.get_samples(group_by_chain=True)
    fit = posterior_from_draws(draws, rv, rv_err, rename=RENAME, component_names=["cluster", "field"],
                               feature_names=["RV"],
                               sample_stats=mcmc.get_extra_fields(group_by_chain=True))
    return sim, rv, rv_err, draws, fit


def test_memberships_equal_brute_force_over_the_same_draws(own_fit):
    _, rv, rv_err, draws, fit = own_fit
    members = membership_probabilities(fit)  # 600 draws <= max_draws: every draw
    w = np.asarray(draws["w"]).reshape(-1, 2)
    mu = np.asarray(draws["mu"]).reshape(-1, 2)
    sigma = np.asarray(draws["sigma"]).reshape(-1, 2)
    dens = w[:, None, :] * norm.pdf(rv[None, :, None], mu[:, None, :],
                                    np.sqrt(sigma[:, None, :] ** 2 + rv_err[None, :, None] ** 2))
    resp = dens / dens.sum(-1, keepdims=True)  # (draws, stars, 2)
    np.testing.assert_allclose(members.mean, resp.mean(0), atol=1e-10)
    np.testing.assert_allclose(members.p16[:, 0], np.percentile(resp[..., 0], 16, axis=0), atol=1e-10)


def test_summary_figures_and_checks_take_the_own_fit(own_fit):
    sim, *_, fit = own_fit
    table = summary(fit)
    assert {"means[cluster, RV]", "scales[field, RV]", "weights[cluster]"} <= set(table.index)
    assert abs(table.loc["means[cluster, RV]", "p50"] - sim.truth.cluster_mean) < 4 * table.loc[
        "means[cluster, RV]", "sd"]
    assert corner_plot(fit, ["means", "scales", "weights"]).axes
    assert len(trace_plot(fit, ["means", "scales"]).axes) == 2 * 4
    report = check_model_fit(0, fit, n_replicates=100, warn=False)
    assert report.ok, str(report)
    idata = arviz_complete(0, fit, log_likelihood_draws=100, predictive_draws=5)
    assert sorted(idata.posterior.data_vars) == ["means", "scales", "weights"]
    assert _arviz.has_group(idata, "log_likelihood") and _arviz.has_group(idata, "posterior_predictive")
    assert int(idata.sample_stats["diverging"].sum()) == int(fit.idata.sample_stats["diverging"].sum())
    assert np.isfinite(_arviz.loo(idata).elpd)


def test_protocol_errors_name_the_site_and_the_fix(own_fit):
    _, rv, rv_err, draws, _ = own_fit
    with pytest.raises(ValueError, match=r"need 'weights' \(K,\) and 'means'.*rename="):
        posterior_from_draws(draws, rv, rv_err)
    with pytest.raises(ValueError, match=r"rename names sites \['tau'\]"):
        posterior_from_draws(draws, rv, rv_err, rename={"tau": "scales"})
    with pytest.raises(ValueError, match="protocol's names"):
        posterior_from_draws(draws, rv, rv_err, rename={"w": "weight"})
    flat = {name: np.asarray(v).reshape(-1, 2) for name, v in draws.items()}
    with pytest.raises(ValueError, match=r"need \(chain, draw, K\)"):
        posterior_from_draws(flat, rv, rv_err, rename=RENAME)
    halved = {**draws, "w": np.asarray(draws["w"]) / 2}
    with pytest.raises(ValueError, match="must sum to 1"):
        posterior_from_draws(halved, rv, rv_err, rename=RENAME)
    with pytest.raises(ValueError, match=r"component_names has 3 names for 2 components"):
        posterior_from_draws(draws, rv, rv_err, rename=RENAME, component_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="posterior_from_draws"):  # a bare InferenceData says how
        membership_probabilities(own_fit[-1].idata)
