"""NUTS from the EM start: posteriors against truth and against emcee, extension, checkpoints."""

import dataclasses

import arviz as az
import emcee
import numpy as np
import pytest
from scipy import stats

from bayesmix import _arviz, sampling
from bayesmix.em import fit_em
from bayesmix.likelihood import as_observations, log_likelihood_per_star
from bayesmix.models import Ordering, Priors, RadiusFraction, cluster_field_model, mixture_model
from bayesmix.sampling import add_log_likelihood, extend, sample_posterior
from bayesmix.simulate import simulate_cluster_field, simulate_mixture, thin_thick_disc_params

TUTORIAL = ["mean1", "sigma1", "mean2", "sigma2", "frac1"]


def truth_values(truth):
    return truth.tutorial_values()


@pytest.fixture(scope="module")
def ngc288_like():
    sim = simulate_cluster_field(0, 1500)
    model = cluster_field_model(sim.catalogue)
    fit = sample_posterior(1, model, sim.catalogue, num_warmup=300, num_samples=500)
    return sim, fit


def test_posterior_contains_truth_within_its_width(ngc288_like):
    sim, fit = ngc288_like
    post = fit.idata.posterior
    for name, true in truth_values(sim.truth).items():
        draws = post[name].values.ravel()
        assert abs(np.median(draws) - true) < 4 * draws.std(), name
    # Generic names agree with the tutorial's.
    np.testing.assert_array_equal(post["means"].values[..., 0, 0], post["mean1"].values)
    np.testing.assert_array_equal(post["scales"].values[..., 1, 0], post["sigma2"].values)
    assert np.all(post["sigma1"].values < post["sigma2"].values)


def test_chains_converge_without_divergences(ngc288_like):
    _, fit = ngc288_like
    summary = az.summary(fit.idata, var_names=TUTORIAL)
    assert summary["r_hat"].max() <= 1.01
    assert summary["ess_bulk"].min() >= 400
    assert int(fit.idata.sample_stats["diverging"].sum()) == 0
    # Started at the mode, NUTS needs short trajectories.
    assert float(fit.idata.sample_stats["n_steps"].mean()) < 16


def test_inference_data_layout(ngc288_like):
    sim, fit = ngc288_like
    idata = fit.idata
    post = idata.posterior
    assert post.sizes["chain"] == 4 and post.sizes["draw"] == 500
    assert post["weights"].dims == ("chain", "draw", "component")
    assert post["covariances"].dims == ("chain", "draw", "component", "feature", "feature_bis")
    assert list(post.coords["component"].values) == ["cluster", "field"]
    assert list(post.coords["feature"].values) == ["RV"]
    np.testing.assert_allclose(idata.observed_data["values"].values, sim.catalogue.values)
    np.testing.assert_allclose(idata.constant_data["error_covs"].values, sim.catalogue.error_covs)
    np.testing.assert_allclose(idata.constant_data["R_proj"].values, sim.catalogue.covariates["R_proj"])
    for stat in ("diverging", "n_steps", "acceptance_rate", "lp", "energy", "step_size"):
        assert stat in idata.sample_stats
    assert fit.em is not None and fit.em.converged
    assert post.attrs["bayesmix_version"]


def test_extend_continues_the_chains_exactly(ngc288_like):
    _, fit = ngc288_like
    longer = extend(fit, 100)
    assert longer.n_draws == 600 and longer.settings["num_samples"] == 600
    np.testing.assert_array_equal(longer.idata.posterior["mean1"].values[:, :500],
                                  fit.idata.posterior["mean1"].values)
    new = longer.idata.posterior["mean1"].values[:, 500:]
    assert np.all(np.isfinite(new)) and new.std() > 0
    assert int(longer.idata.sample_stats["diverging"].sum()) == 0


def test_agrees_with_emcee_on_the_same_likelihood_and_priors():
    sim = simulate_cluster_field(5, 386)
    priors = Priors(mean_loc=0.0, mean_scale=100.0, scale_scale=60.0, weight_concentration=1.0)
    model = cluster_field_model(sim.catalogue, priors=priors)
    fit = sample_posterior(2, model, sim.catalogue, num_warmup=500, num_samples=1000)
    v = sim.catalogue.values[:, 0]
    e2 = sim.catalogue.error_covs[:, 0, 0]

    def log_prob(theta):  # theta (n_walkers, 5): mean1, sigma1, mean2, sigma2, frac1
        m1, s1, m2, s2, f = theta.T
        ok = (s1 > 0) & (s2 > s1) & (f > 0) & (f < 1)
        s1, s2, f = np.where(ok, s1, 1.0), np.where(ok, s2, 2.0), np.where(ok, f, 0.5)
        sd1, sd2 = np.sqrt(s1[:, None] ** 2 + e2), np.sqrt(s2[:, None] ** 2 + e2)
        ll = np.logaddexp(np.log(f)[:, None] + stats.norm.logpdf(v, m1[:, None], sd1),
                          np.log1p(-f)[:, None] + stats.norm.logpdf(v, m2[:, None], sd2))
        lp = (stats.norm.logpdf(m1, 0, 100) + stats.norm.logpdf(m2, 0, 100)
              + stats.halfnorm.logpdf(s1, scale=60) + stats.halfnorm.logpdf(s2, scale=60))
        return np.where(ok, ll.sum(axis=1) + lp, -np.inf)

    rng = np.random.default_rng(0)
    start = np.array([fit.em.means[0, 0], np.sqrt(fit.em.covariances[0, 0, 0]), fit.em.means[1, 0],
                      np.sqrt(fit.em.covariances[1, 0, 0]), fit.em.weights[0]])
    n_walkers = 32
    p0 = start * (1 + 1e-3 * rng.normal(size=(n_walkers, 5)))
    sampler = emcee.EnsembleSampler(n_walkers, 5, log_prob, vectorize=True)
    sampler.random_state = np.random.RandomState(1).get_state()  # emcee's own seeding API
    sampler.run_mcmc(p0, 6000)
    chain = sampler.get_chain(discard=1000)  # (steps, walkers, 5)
    emcee_draws = {name: chain[:, :, i].T for i, name in enumerate(TUTORIAL)}
    emcee_idata = _arviz.from_groups({"posterior": emcee_draws})
    ours_mcse = az.mcse(fit.idata, var_names=TUTORIAL, method="median")
    theirs_mcse = az.mcse(emcee_idata, var_names=TUTORIAL, method="median")
    for name in TUTORIAL:
        ours = fit.idata.posterior[name]
        theirs = emcee_idata.posterior[name]
        mcse = np.hypot(float(ours_mcse[name]), float(theirs_mcse[name]))
        diff = float(ours.median()) - float(theirs.median())
        assert abs(diff) < 3 * mcse + 1e-12, (name, diff, mcse)
        assert float(ours.std()) / float(theirs.std()) == pytest.approx(1.0, abs=0.10), name


def test_radius_dependent_fraction_recovers_the_plummer_law():
    sim = simulate_cluster_field(7, 2000)
    t = sim.truth
    model = cluster_field_model(sim.catalogue, radius_fraction=RadiusFraction("R_proj", kind="plummer"))
    fit = sample_posterior(3, model, sim.catalogue, num_chains=2, num_warmup=300, num_samples=400)
    post = fit.idata.posterior
    norm_c = 1.0 - 1.0 / (1.0 + (t.max_radius / t.plummer_radius) ** 2)
    true_c = np.log(t.member_fraction / (1 - t.member_fraction)
                    * t.max_radius**2 / (t.plummer_radius**2 * norm_c))
    for name, true in (("frac_radius", t.plummer_radius), ("frac_log_ratio", true_c),
                       ("mean1", t.cluster_mean), ("sigma1", t.cluster_dispersion)):
        draws = post[name].values.ravel()
        assert abs(np.median(draws) - true) < 4 * draws.std(), name
    r_hat = az.rhat(fit.idata, var_names=["frac_radius", "frac_log_ratio"])
    assert max(float(r_hat[name].max()) for name in ["frac_radius", "frac_log_ratio"]) < 1.02


def test_two_dimensional_disc_posterior():
    truth = thin_thick_disc_params()
    sim = simulate_mixture(4, truth, 1200, error_scale=[0.05, 0.04], max_error_correlation=0.3,
                           feature_names=["FeH", "MgFe"])
    model = mixture_model(sim.catalogue, 2, ordering=Ordering("mean", 1))
    fit = sample_posterior(5, model, sim.catalogue, num_chains=2, num_warmup=300, num_samples=300)
    post = fit.idata.posterior
    assert list(post.coords["feature"].values) == ["FeH", "MgFe"]
    order = np.argsort(np.asarray(truth.means)[:, 1])
    for k_model, k_true in enumerate(order):
        for name, true in (("means", np.asarray(truth.means)[k_true]),
                           ("scales", np.sqrt(np.diag(np.asarray(truth.covariances)[k_true])))):
            draws = post[name].values[:, :, k_model, :].reshape(-1, 2)
            assert np.all(np.abs(np.median(draws, axis=0) - true) < 4 * draws.std(axis=0)), (name, k_model)
    # Two chains of 300 draws from over-dispersed starts: R-hat within its sampling noise of 1.
    assert "correlations" in post and float(az.rhat(fit.idata, var_names=["means"])["means"].max()) < 1.03


def test_interrupted_checkpointed_run_resumes_to_the_same_draws(tmp_path, monkeypatch):
    sim = simulate_cluster_field(9, 200)
    model = cluster_field_model(sim.catalogue)
    em = fit_em(0, sim.catalogue, 2, n_init=2)
    kwargs = {"num_chains": 2, "num_warmup": 100, "num_samples": 60, "chunk_size": 20, "init": em}
    reference = sample_posterior(3, model, sim.catalogue, checkpoint=tmp_path / "a.npz", **kwargs)
    real_write = sampling.write_checkpoint
    calls = {"n": 0}

    def killed_on_second_chunk(path, checkpoint):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        real_write(path, checkpoint)

    monkeypatch.setattr(sampling, "write_checkpoint", killed_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        sample_posterior(3, model, sim.catalogue, checkpoint=tmp_path / "b.npz", **kwargs)
    monkeypatch.setattr(sampling, "write_checkpoint", real_write)
    assert sampling.checkpoint_draws(tmp_path / "b.npz") == 20
    resumed = sample_posterior(3, model, sim.catalogue, checkpoint=tmp_path / "b.npz", **kwargs)
    assert resumed.n_draws == reference.n_draws == 60
    np.testing.assert_array_equal(resumed.idata.posterior["means"].values,
                                  reference.idata.posterior["means"].values)
    # A finished run resumes to itself without sampling again.
    again = sample_posterior(3, model, sim.catalogue, checkpoint=tmp_path / "b.npz", **kwargs)
    np.testing.assert_array_equal(again.idata.posterior["means"].values,
                                  reference.idata.posterior["means"].values)
    # Asking a finished run for more draws extends it: the same draws as one longer run.
    longer = sample_posterior(3, model, sim.catalogue, checkpoint=tmp_path / "b.npz",
                              **{**kwargs, "num_samples": 80})
    longer_reference = sample_posterior(3, model, sim.catalogue, checkpoint=tmp_path / "c.npz",
                                        **{**kwargs, "num_samples": 80})
    np.testing.assert_array_equal(longer.idata.posterior["means"].values,
                                  longer_reference.idata.posterior["means"].values)
    with pytest.raises(ValueError, match="already holds 80 draws"):
        sample_posterior(3, model, sim.catalogue, checkpoint=tmp_path / "b.npz",
                         **{**kwargs, "num_samples": 40})
    with pytest.raises(ValueError, match="other settings"):
        sample_posterior(3, model, sim.catalogue, checkpoint=tmp_path / "b.npz",
                         **{**kwargs, "num_warmup": 120})
    # Changed data (one star's velocity) never resume: the draws would mix two catalogues.
    values = np.asarray(sim.catalogue.values).copy()
    values[0, 0] += 0.5
    moved = dataclasses.replace(sim.catalogue, values=values)
    with pytest.raises(ValueError, match=r"made from other data \(sha256"):
        sample_posterior(3, model, moved, checkpoint=tmp_path / "b.npz", **kwargs)
    assert longer.idata.posterior.attrs["setting_data_sha256"] == sampling._data_digest(
        longer.data, longer.covariates)
    # A fit read back from its checkpoint extends exactly like the live one.
    loaded = sampling.load_fit(tmp_path / "a.npz", model, sim.catalogue)
    np.testing.assert_array_equal(loaded.idata.posterior["means"].values,
                                  reference.idata.posterior["means"].values)
    np.testing.assert_array_equal(sampling.extend(loaded, 20).idata.posterior["means"].values,
                                  longer_reference.idata.posterior["means"].values)
    with pytest.raises(ValueError, match="other data"):
        sampling.load_fit(tmp_path / "a.npz", model, moved)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_chains": 0}, "num_chains must be a positive integer; got 0"),
        ({"num_warmup": -1}, "num_warmup must be a non-negative integer; got -1"),
        ({"target_accept": 1.5}, r"target_accept must be a finite number in \(0, 1\); got 1.5"),
        ({"num_samples": 10.5}, "num_samples must be a positive integer; got 10.5"),
        ({"chain_method": "threads"}, "chain_method must be one of"),
        ({"init": "em"}, "init must be None, an EMResult or MixtureParams"),
        ({"start_dispersion": 0.0}, "start_dispersion must be a finite number > 0; got 0.0"),
    ],
)
def test_bad_sampler_settings(kwargs, match):
    sim = simulate_cluster_field(0, 50)
    model = cluster_field_model(sim.catalogue)
    with pytest.raises(ValueError, match=match):
        sample_posterior(0, model, sim.catalogue, **kwargs)


def test_data_must_match_the_model():
    sim = simulate_cluster_field(0, 50)
    model = cluster_field_model(sim.catalogue, radius_fraction="R_proj")
    disc = simulate_mixture(0, thin_thick_disc_params(), 50)
    with pytest.raises(ValueError, match="data have 2 features; the model has 1"):
        sample_posterior(0, model, disc.catalogue)
    with pytest.raises(ValueError, match="needs covariate 'R_proj'"):
        sample_posterior(0, model, as_observations(sim.catalogue))
    with pytest.raises(ValueError, match="covariate 'R_proj' has shape"):
        sample_posterior(0, model, sim.catalogue, covariates={"R_proj": np.ones(3)})


# ArviZ 1.x warns when any star's k exceeds its threshold; the test bounds that fraction itself.
@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto:UserWarning")
def test_pointwise_log_likelihood_on_request_in_chunks(ngc288_like):
    _, fit = ngc288_like
    assert not _arviz.has_group(fit.idata, "log_likelihood")
    with_ll = add_log_likelihood(fit, max_draws=400, star_chunk=512)  # 3 chunks, last one padded
    ll = with_ll.idata.log_likelihood["values"]
    assert ll.dims == ("chain", "draw", "star") and ll.shape == (4, 100, 1500)
    post = fit.idata.posterior
    draw = int(ll.coords["draw"].values[7])
    params = fit.model.params({name: post[name].values[2, draw] for name in post.data_vars})
    np.testing.assert_allclose(ll.values[2, 7], np.asarray(log_likelihood_per_star(params, fit.data)),
                               rtol=1e-12)
    loo = _arviz.loo(with_ll.idata)
    # PSIS is reliable below k = 0.7; ArviZ 0.x and 1.x estimate k differently, and 1.x put
    # one star of 1500 at 0.706 here.
    assert np.isfinite(loo.elpd) and np.mean(loo.pareto_k > 0.7) < 0.01
    with pytest.raises(ValueError, match="max_draws"):
        add_log_likelihood(fit, max_draws=2)


def test_arviz_complete_has_one_name_per_quantity_and_bounded_groups(ngc288_like, caplog):
    _, fit = ngc288_like  # 4 chains x 500 draws, 1500 stars
    before = set(fit.idata.posterior.data_vars)
    idata = sampling.arviz_complete(0, fit, log_likelihood_draws=200, predictive_draws=5)
    assert sorted(idata.posterior.data_vars) == ["means", "scales", "weights"]
    assert set(fit.idata.posterior.data_vars) == before and not _arviz.has_group(fit.idata, "log_likelihood")
    ll = idata.log_likelihood["values"]
    assert ll.dims == ("chain", "draw", "star") and ll.shape == (4, 50, 1500)
    np.testing.assert_array_equal(ll.coords["draw"].values, np.arange(0, 500, 10))  # evenly thinned
    mocks = idata.posterior_predictive["values"]
    assert mocks.dims == ("chain", "draw", "star", "feature") and mocks.shape == (1, 5, 1500, 1)
    np.testing.assert_array_equal(mocks.coords["star"].values, idata.observed_data.coords["star"].values)
    for name in ("sample_stats", "observed_data", "constant_data"):
        assert _arviz.has_group(idata, name)
    # Bounded: fewer draws when that keeps 100 or more, no group (and a warning) when not.
    with caplog.at_level("INFO", logger="bayesmix.sampling"):
        fewer = sampling.arviz_complete(0, fit, log_likelihood_draws=200, predictive_draws=5,
                                        max_values=1500 * 120)
    assert fewer.log_likelihood["values"].shape == (4, 30, 1500)  # 120 allowed: every 17th of 500
    assert "log_likelihood at 120 draws, not 200" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="bayesmix.sampling"):
        none = sampling.arviz_complete(0, fit, log_likelihood_draws=200, predictive_draws=5,
                                       max_values=1500 * 60)
    assert not _arviz.has_group(none, "log_likelihood") and _arviz.has_group(none, "posterior_predictive")
    assert "no log_likelihood group" in caplog.text
    with pytest.raises(ValueError, match="predictive_draws must be a non-negative integer"):
        sampling.arviz_complete(0, fit, predictive_draws=-1)


def test_stored_programs_replay_the_run_exactly(tmp_path, caplog):
    """enable_compilation_cache stores the EM and sampler programs (jax.export); a repeat
    loads them instead of tracing, with identical results, and an unreadable file is rebuilt."""
    from bayesmix import _programs

    previous = _programs.store()
    try:
        sampling.enable_compilation_cache(tmp_path)
        sim = simulate_cluster_field(11, 200)
        model = cluster_field_model(sim.catalogue)
        em = fit_em(0, as_observations(sim.catalogue), 2)
        kwargs = {"init": em, "num_chains": 2, "num_warmup": 60, "num_samples": 40, "progress_bar": False,
                  "chain_method": "sequential"}
        first = sample_posterior(4, model, sim.catalogue, **kwargs)
        stored = sorted((tmp_path / "bayesmix-programs").glob("*.jaxexport"))
        names = {p.name.split("-")[0] for p in stored}
        assert names == {"em_fit", "laplace", "start", "run", "constrain", "unconstrain"}
        em_again = fit_em(0, as_observations(sim.catalogue), 2)  # replayed from its stored program
        np.testing.assert_array_equal(np.asarray(em.params.means), np.asarray(em_again.params.means))
        loaded = dict(_programs._LOADED)
        again = sample_posterior(4, model, sim.catalogue, **kwargs)
        np.testing.assert_array_equal(first.idata.posterior["mean1"].values,
                                      again.idata.posterior["mean1"].values)
        # The repeat shares the programs already loaded in this process (one compiled copy each).
        assert all(_programs._LOADED[path] is fn for path, fn in loaded.items())
        assert set(_programs._LOADED) == set(loaded)
        run_file = next(p for p in stored if p.name.startswith("run-"))
        run_file.write_bytes(b"not a program")
        _programs._LOADED.clear()  # as a new process would: read the stored files again
        with caplog.at_level("WARNING", logger="bayesmix.sampling"):
            rebuilt = sample_posterior(4, model, sim.catalogue, **kwargs)
        assert any("unreadable" in r.getMessage() for r in caplog.records)
        np.testing.assert_array_equal(first.idata.posterior["mean1"].values,
                                      rebuilt.idata.posterior["mean1"].values)
        assert run_file.read_bytes() != b"not a program"
        # Another catalogue of the same model structure and another size in the same bucket (stars
        # padded to 256 rows), other priors: the programs take the data and the prior values as
        # arguments, so nothing new is stored.
        other = simulate_cluster_field(12, 230)
        other_model = cluster_field_model(other.catalogue, priors=Priors(mean_loc=-40.0))
        sample_posterior(4, other_model, other.catalogue,
                         **{**kwargs, "init": fit_em(0, as_observations(other.catalogue), 2)})
        assert sorted((tmp_path / "bayesmix-programs").glob("*.jaxexport")) == stored
        # A short extension (7 draws, not the run's 40) runs the same programs too: draws are
        # constrained in chunks of one size, whatever their number.
        assert sampling.extend(first, 7).n_draws == 47
        assert sorted((tmp_path / "bayesmix-programs").glob("*.jaxexport")) == stored
    finally:
        if previous is not None:
            sampling.enable_compilation_cache(previous.parent)
        else:
            _programs.set_store(None)


def test_extend_passes_the_run_program_arguments_placed_as_the_first_call(monkeypatch):
    """The run program's warmup bookkeeping argument is committed to the chains' device both in
    the first call (made by the start program) and in extend() (made afresh): an uncommitted one
    is another signature, for which JAX compiled the stored program again (1.4 s at N = 1500)."""
    import jax

    placements = []
    draws = sampling._Sampler.draws

    def recording_draws(self, states, n, progress=None):
        if not hasattr(self, "_recorded_run"):
            self._recorded_run = run = self._run

            def recording(carry, args, extra):
                placements.append(sorted({(leaf.committed, str(leaf.sharding))
                                          for leaf in jax.tree.leaves(carry[1])}))
                return run(carry, args, extra)

            self._run = recording
        return draws(self, states, n, progress)

    monkeypatch.setattr(sampling._Sampler, "draws", recording_draws)
    sim = simulate_cluster_field(4, 120)
    fit = sample_posterior(0, cluster_field_model(sim.catalogue), sim.catalogue, num_chains=2,
                           num_warmup=30, num_samples=10, progress_bar=False, chain_method="vectorized")
    assert extend(fit, 5).n_draws == 15
    assert len(placements) == 2 and placements[0] == placements[1], placements
    assert placements[0][0][0]  # committed


def test_sample_posterior_keeps_the_stars_weights_of_an_observations():
    """Per-star weights in an Observations reach the NUTS likelihood (they were once dropped
    silently by as_observations), and the padded program data keep them."""
    from bayesmix.likelihood import Observations
    from bayesmix.membership import padded_data

    sim = simulate_cluster_field(5, 150)
    obs = as_observations(sim.catalogue)
    w = np.random.default_rng(0).integers(1, 4, obs.n_stars).astype(float)
    resolved, _, _ = sampling._resolve_data(Observations(obs.values, obs.error_covs, None, w), None)
    np.testing.assert_array_equal(np.asarray(resolved.weight), w)
    padded, _ = padded_data(cluster_field_model(obs), resolved, {})
    np.testing.assert_array_equal(np.asarray(padded.weight)[:obs.n_stars], w)
    assert not np.asarray(padded.weight)[obs.n_stars:].any()


PARALLEL_SCRIPT = """
import json, sys
import numpy as np
from bayesmix import _programs
from bayesmix.likelihood import as_observations
from bayesmix.models import cluster_field_model
from bayesmix.sampling import enable_compilation_cache, extend, sample_posterior

enable_compilation_cache(sys.argv[1])
# Plain arrays (not a simulated Catalogue, whose module imports astropy): the run's own imports show.
rng = np.random.default_rng(3)
errors = rng.uniform(0.5, 2.0, 300)
values = np.where(rng.random(300) < 0.4, rng.normal(-45.0, 2.0, 300), rng.normal(0.0, 40.0, 300))
obs = as_observations(values + rng.normal(0.0, errors), errors)
model = cluster_field_model(obs)
out = {}
for method in ("parallel", "sequential"):
    _programs.program_counts(reset=True)
    fit = extend(sample_posterior(5, model, obs, chain_method=method, num_chains=4, num_warmup=40,
                                  num_samples=20, progress_bar=False), 10)
    out[method] = fit.posterior["mean1"].values.tolist()
    out[method + "_method"] = fit.posterior.attrs["chain_method"]
    out[method + "_counts"] = _programs.program_counts()
heavy = ("arviz", "arviz_stats", "arviz_plots", "matplotlib", "astropy", "blackjax")
out["heavy_imported"] = sorted(name for name in heavy if name in sys.modules)
print("RESULT " + json.dumps(out), flush=True)
"""


def test_parallel_chains_equal_sequential_ones_and_are_stored_programs(tmp_path):
    """chain_method="parallel" splits the chains over a device mesh (two host devices here) and
    gives exactly the sequential draws; its run program is stored like the others, so a fresh
    process on a warm store traces nothing and never imports BlackJAX. A run imports neither
    the ArviZ meta-package (arviz-stats, arviz-plots, Matplotlib) nor astropy: 1.3 s of
    imports, and a third more objects for each full garbage collection in the run."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("JAX_PLATFORMS", None)
    results = []
    for _ in range(2):  # the first process fills the store, the second finds everything in it
        proc = subprocess.run([sys.executable, "-c", PARALLEL_SCRIPT, str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=400)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, proc.stderr[-4000:]
        results.append(json.loads(lines[-1][7:]))
    first, second = results
    for out in results:
        assert out["parallel_method"] == "parallel" and out["sequential_method"] == "sequential"
        assert np.shape(out["parallel"]) == (4, 30)
        np.testing.assert_array_equal(out["parallel"], out["sequential"])
    assert first["parallel_counts"].get("stored_exported", 0) >= 4  # run, start, laplace, constrain...
    for method in ("parallel", "sequential"):
        counts = second[method + "_counts"]
        assert counts.get("stored_exported", 0) == 0 and counts.get("stored_read", 0) >= 1, counts
    assert first["heavy_imported"] == ["blackjax"]  # tracing the NUTS kernel, and nothing else heavy
    assert second["heavy_imported"] == []


def test_host_ravel_matches_jax_ravel_pytree():
    """The sampler flattens its template with NumPy (no JAX program per leaf shape); the vector
    and the unravelled tree must be ravel_pytree's, traced or not."""
    import jax
    from jax.flatten_util import ravel_pytree

    tree = {"weights": np.array([0.3, 0.7]), "mu": np.arange(6.0).reshape(3, 2), "sigma": np.float64(2.5),
            "frac": np.array(0.25)}
    flat, unravel = sampling._ravel_on_host(tree)
    expected, jax_unravel = ravel_pytree(tree)
    np.testing.assert_array_equal(flat, np.asarray(expected))
    assert flat.dtype == np.float64
    vector = np.linspace(-1.0, 1.0, flat.size)
    for out in (unravel(vector), jax.jit(unravel)(vector)):
        ref = jax_unravel(vector)
        assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(ref)
        for name in tree:
            assert np.shape(out[name]) == np.shape(tree[name])
            np.testing.assert_array_equal(np.asarray(out[name]), np.asarray(ref[name]))


def test_mixed_precision_posterior_agrees_with_float64():
    """A catalogue large enough for "auto" to choose mixed precision (6000 stars, K = 2)
    gives the float64 posterior: every tutorial quantity's mean agrees within 4 Monte Carlo
    standard errors (of the two runs together) and its sd within 15%, and the run records
    the precision it used (a resume must use the same one)."""
    sim = simulate_cluster_field(21, 6000)
    em = fit_em(0, sim.catalogue, 2, n_init=2)
    fits = {}
    for precision in ("auto", "float64"):
        model = cluster_field_model(sim.catalogue, likelihood_precision=precision)
        fits[model.likelihood_precision] = sample_posterior(3, model, sim.catalogue, init=em, num_chains=2,
                                                            num_warmup=200, num_samples=400)
    assert set(fits) == {"mixed", "float64"}
    assert fits["mixed"].settings["likelihood_precision"] == "mixed"
    assert fits["float64"].settings["likelihood_precision"] == "float64"
    for name in TUTORIAL:
        a, b = (fits[p].idata.posterior[name].values for p in ("mixed", "float64"))
        mcse = np.hypot(float(az.mcse(a, method="mean")), float(az.mcse(b, method="mean")))
        assert abs(a.mean() - b.mean()) < 4 * mcse, name
        assert abs(a.std() / b.std() - 1) < 0.15, name
