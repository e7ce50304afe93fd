"""Sharded fits (bayesmix.distributed) equal the single-device ones to round-off.

JAX fixes its device count when it starts, so each configuration runs in a fresh
subprocess: four host-platform devices in one process, and two processes on localhost
(two devices each, each reading its own shard of the stars) joined by
``jax.distributed.initialize`` with gloo CPU collectives.
The subprocesses print JSON; the single-device references come from the four-device
run (``fit_em``, ``total_log_likelihood`` and the model's potential on one device).
``sample_posterior(..., mesh=)`` is checked the same way: its potential and gradient against
the one-device sampler's, a whole run against a one-device run, and a run over two processes.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT


def simulated_stars(n: int) -> str:
    """The subprocess scripts' stars: ``n`` two-feature stars of two blobs with errors ``err``
    (the lines that define ``rng, n, d, k, x, err``)."""
    return (f"rng = np.random.default_rng(5)\nn, d, k = {n}, 2, 2\n"
            "comp = rng.random(n) < 0.35\n"
            "x = np.where(comp[:, None], rng.normal(1.5, 0.4, (n, d)), rng.normal(-1.0, 1.2, (n, d)))\n"
            "err = rng.uniform(0.1, 0.5, (n, d))\n"
            "x = x + err * rng.normal(size=(n, d))\n")


SCRIPT = r"""
import json, sys
mode = sys.argv[1]
import jax
if mode == "process":
    from bayesmix.distributed import initialize
    initialize(f"127.0.0.1:{sys.argv[2]}", 2, int(sys.argv[3]))
import numpy as np
from bayesmix.distributed import (fit_em_sharded, replicate, shard_observations, sharded_model,
                                  sharded_total_log_likelihood, star_mesh)
from bayesmix.likelihood import MixtureParams

# STARS: simulated_stars(n)
start = MixtureParams(np.array([0.5, 0.5]), np.array([[1.0, 1.0], [-1.0, -0.5]]), np.stack([np.eye(d)] * 2))
if mode == "process":  # each process reads its own rows (1000 and 1001) of a streamed catalogue
    from bayesmix.stream import open_catalogue
    columns = {"x0": x[:, 0], "x1": x[:, 1], "e0": err[:, 0], "e1": err[:, 1]}
    x = open_catalogue(columns, ["x0", "x1"], ["e0", "e1"], chunk_size=300).shard(jax.process_index(), 2)
    err = None
mesh = star_mesh()
res = fit_em_sharded(0, x, k, errors=err, mesh=mesh, init_params=start, tol=1e-9, max_iter=30, chunk_size=128)
sharded = shard_observations(x, mesh, errors=err)
f = jax.jit(sharded_total_log_likelihood(mesh))

def total(m, c):
    return f(MixtureParams(start.weights, m, c), sharded)

val, (gm, gc) = jax.value_and_grad(total, argnums=(0, 1))(*replicate((start.means, start.covariances), mesh))
out = {"devices": jax.device_count(), "n_iter": res.n_iter, "ll": res.log_likelihood,
       "means": np.asarray(res.means).tolist(), "covs": np.asarray(res.covariances).tolist(),
       "weights": np.asarray(res.weights).tolist(), "total": float(val),
       "grad_means": np.asarray(gm).tolist(), "grad_covs": np.asarray(gc).tolist()}
if mode == "process":  # the default start: fit_em on process 0's subsample, sent to both
    sub = fit_em_sharded(0, x, k, mesh=mesh, n_start_stars=400, n_init=1, n_peaks=0, max_iter=3)
    out["subsample_start"] = [sub.start_kinds[0], np.asarray(sub.means).tolist()]
if mode == "devices":
    from numpyro.infer.util import potential_energy
    from bayesmix.em import fit_em
    from bayesmix.likelihood import Observations, total_log_likelihood
    from bayesmix.models import mixture_model
    ref = fit_em(0, x, k, errors=err, init_params=start, tol=1e-9, max_iter=30)
    obs = Observations(x, np.einsum("na,ab->nab", err**2, np.eye(d)))
    rv, (rm, rc) = jax.jit(jax.value_and_grad(
        lambda m, c: total_log_likelihood(MixtureParams(start.weights, m, c), obs), argnums=(0, 1)))(
        start.means, start.covariances)
    out["ref"] = {"n_iter": ref.n_iter, "ll": ref.log_likelihood, "means": np.asarray(ref.means).tolist(),
                  "covs": np.asarray(ref.covariances).tolist(), "weights": np.asarray(ref.weights).tolist(),
                  "total": float(rv), "grad_means": np.asarray(rm).tolist(),
                  "grad_covs": np.asarray(rc).tolist()}
    from numpyro import handlers
    from numpyro.infer.initialization import init_to_uniform
    from numpyro.infer.util import unconstrain_fn
    model = mixture_model(obs, k)
    sm = sharded_model(model, mesh)

    @jax.jit
    def potentials(obs, sharded):  # one program: a random point, the model's potential and the sharded one
        seeded = handlers.seed(model.model, 1)
        trace = handlers.trace(handlers.substitute(seeded, substitute_fn=init_to_uniform)).get_trace(obs)
        latent = {s: v["value"] for s, v in trace.items() if v["type"] == "sample" and not v["is_observed"]}
        z = unconstrain_fn(model.model, (obs,), {}, latent)
        return potential_energy(model.model, (obs,), {}, z), potential_energy(sm.model, (sharded,), {}, z)

    out["potential"] = [float(v) for v in potentials(obs, sharded)]
    out["program_key_differs"] = sm.program_key() != model.program_key()
print("RESULT " + json.dumps(out), flush=True)
""".replace("# STARS: simulated_stars(n)\n", simulated_stars(2001))


def _env(n_devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.pop("JAX_PLATFORMS", None)
    return env


def _result(proc: subprocess.Popen, timeout=240) -> dict:
    out, err = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"subprocess failed ({proc.returncode}):\n{out}\n{err[-4000:]}"
    return json.loads(lines[-1][7:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(*args, n_devices):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], env=_env(n_devices), cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_same(got: dict, ref: dict):
    assert got["n_iter"] == ref["n_iter"]
    np.testing.assert_allclose(got["ll"], ref["ll"], rtol=1e-12)
    for name in ("means", "covs", "weights"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["total"], ref["total"], rtol=1e-12)
    for name in ("grad_means", "grad_covs"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def runs():
    """The four-device run and the two-process run, started together (they are independent)."""
    port = _free_port()
    procs = {"devices": _spawn("devices", n_devices=4),
             "p0": _spawn("process", str(port), "0", n_devices=2),
             "p1": _spawn("process", str(port), "1", n_devices=2)}
    return {name: _result(p) for name, p in procs.items()}


def test_four_host_devices_equal_one_device(runs):
    got = runs["devices"]
    assert got["devices"] == 4
    _assert_same(got, got["ref"])
    one, sharded = got["potential"]
    np.testing.assert_allclose(sharded, one, rtol=1e-12)
    assert got["program_key_differs"]  # stored programs of the two are never shared


def test_two_processes_equal_one_device(runs):
    ref = runs["devices"]["ref"]
    for name in ("p0", "p1"):
        assert runs[name]["devices"] == 4  # two processes, two devices each
        _assert_same(runs[name], ref)
    kinds, means = zip(*(runs[name]["subsample_start"] for name in ("p0", "p1")), strict=True)
    assert kinds == ("subsample", "subsample") and np.isfinite(means[0]).all()
    np.testing.assert_array_equal(means[0], means[1])  # one start and one fit, in both processes


# --------------------------------------------------------------------------- sample_posterior(mesh=)

NUTS_SCRIPT = r"""
import json
import jax
import numpy as np
from bayesmix.distributed import star_mesh
from bayesmix.em import fit_em
from bayesmix.likelihood import Observations
from bayesmix.models import mixture_model
from bayesmix.sampling import _Sampler, _unconstrained, sample_posterior
import arviz as az

# STARS: simulated_stars(n)
obs = Observations(x, np.einsum("na,ab->nab", err**2, np.eye(d)))
model = mixture_model(obs, k)
mesh = star_mesh()
init = fit_em(0, obs, k)
out = {"devices": jax.device_count()}

# (a) The potential and its gradient as the two samplers' programs evaluate them (their own
# potential function and data arguments), at the EM start (z = 0) and at a point away from it.
template = _unconstrained(model, obs, {}, model.init_values(init.params, init.background_weight, data=obs))
samplers = {name: _Sampler(model, obs, {}, template, num_chains=2, chain_method="sequential", block=10,
                           target_accept=0.8, max_tree_depth=10, mesh=m)
            for name, m in (("one", None), ("mesh", mesh))}
z_away = 0.3 * np.random.default_rng(1).standard_normal(samplers["one"].n_params)
for name, s in samplers.items():
    vg = jax.jit(jax.value_and_grad(s.potential))
    out[name] = [[float(v), np.asarray(g).tolist()] for v, g in (vg(np.zeros(s.n_params), s.args),
                                                                vg(z_away, s.args))]
out["data_devices"] = len(samplers["mesh"].args[0].values.sharding.device_set)
out["rows"] = [samplers["one"].args[0].n_stars, samplers["mesh"].args[0].n_stars]

# (b) Whole runs from the same key and start, with and without the mesh.
kw = dict(init=init, num_chains=2, num_warmup=150, num_samples=200, progress_bar=False)
fits = {"mesh": sample_posterior(1, model, obs, mesh=mesh, **kw),
        "one": sample_posterior(1, model, obs, chain_method="sequential", **kw)}
for name, fit in fits.items():
    post = fit.posterior
    out[name + "_run"] = {
        "mean": post["means"].mean(("chain", "draw")).values.tolist(),
        "sd": post["means"].std(("chain", "draw")).values.tolist(),
        "ess": az.ess(post[["means"]], method="bulk")["means"].values.tolist(),
        "divergences": int(np.sum(fit.idata.sample_stats["diverging"].values)),
        "laplace_potential": float(post.attrs["start_laplace_potential"]),
        "chain_method": post.attrs["chain_method"], "settings": fit.settings,
        "data": [type(fit.data.values).__name__, len(fit.data.values.sharding.device_set)
                 if hasattr(fit.data.values, "sharding") else 1], "n_stars": fit.data.n_stars}

# (c) Another catalogue of another size in the same bucket: the mesh run's stored programs
# serve it (read, none exported); the store is filled by a first catalogue.
import tempfile
from bayesmix import _programs
from bayesmix.sampling import enable_compilation_cache
enable_compilation_cache(tempfile.mkdtemp())
counts = []
for n_cat in (600, 570):
    sub = Observations(obs.values[:n_cat], obs.error_covs[:n_cat])
    _programs.program_counts(reset=True)
    fit = sample_posterior(2, model, sub, mesh=mesh, **kw)
    counts.append(_programs.program_counts())
out["store_counts"] = counts
out["second_catalogue_stars"] = fit.data.n_stars

# (d) A checkpointed mesh run read back with load_fit(mesh=) extends to the draws of one
# longer run; without the mesh it is refused.
import os
from bayesmix.sampling import extend, load_fit
folder = tempfile.mkdtemp()
ck = dict(init=init, num_chains=2, num_warmup=60, num_samples=40, chunk_size=20, progress_bar=False)
sample_posterior(3, model, obs, mesh=mesh, checkpoint=os.path.join(folder, "a.npz"), **ck)
longer = sample_posterior(3, model, obs, mesh=mesh, checkpoint=os.path.join(folder, "b.npz"),
                          **{**ck, "num_samples": 60})
extended = extend(load_fit(os.path.join(folder, "a.npz"), model, obs, mesh=mesh), 20)
got, want = extended.posterior["means"].values, longer.posterior["means"].values
out["extend_equal"] = bool(np.array_equal(got, want))
out["extend_max_diff"] = float(np.max(np.abs(got - want)))
try:
    load_fit(os.path.join(folder, "a.npz"), model, obs)
    out["no_mesh_refused"] = ""
except ValueError as err:
    out["no_mesh_refused"] = str(err)
print("RESULT " + json.dumps(out), flush=True)
""".replace("# STARS: simulated_stars(n)\n", simulated_stars(600))


@pytest.fixture(scope="module")
def nuts_run():
    """sample_posterior on four host devices (and on one, in the same process, for reference)."""
    proc = subprocess.Popen([sys.executable, "-c", NUTS_SCRIPT], env=_env(4), cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return _result(proc, timeout=400)


def test_sharded_sampler_potential_equals_one_device(nuts_run):
    assert nuts_run["devices"] == 4 and nuts_run["data_devices"] == 4  # the programs take sharded stars
    # One device: the bucket of 600 stars; the mesh: 4 devices x the bucket of 150 rows.
    assert nuts_run["rows"] == [640, 4 * 256]
    for (v1, g1), (vm, gm) in zip(nuts_run["one"], nuts_run["mesh"], strict=True):
        np.testing.assert_allclose(vm, v1, rtol=1e-9)
        np.testing.assert_allclose(gm, g1, rtol=1e-9, atol=1e-9 * np.max(np.abs(g1)))


def test_sharded_sample_posterior_agrees_with_one_device(nuts_run):
    mesh, one = nuts_run["mesh_run"], nuts_run["one_run"]
    assert mesh["divergences"] == 0 and one["divergences"] == 0
    assert mesh["chain_method"] == "sequential"  # "auto" with a mesh on CPUs
    assert mesh["settings"]["mesh_devices"] == 4 and "mesh_devices" not in one["settings"]
    assert mesh["data"] == one["data"] and mesh["data"][1] == 1 and mesh["n_stars"] == 600  # plain stars
    np.testing.assert_allclose(mesh["laplace_potential"], one["laplace_potential"], rtol=1e-9)
    diff = np.subtract(mesh["mean"], one["mean"])
    # Monte Carlo standard error of the difference of two independent runs' means.
    mcse = np.hypot(*(np.divide(r["sd"], np.sqrt(r["ess"])) for r in (mesh, one)))
    assert np.all(np.isfinite(mcse)) and np.all(np.abs(diff) < 4 * mcse), (diff, mcse)


def test_sharded_sample_posterior_reuses_stored_programs_for_another_catalogue(nuts_run):
    first, second = nuts_run["store_counts"]
    assert first.get("stored_exported", 0) >= 4  # laplace, start, run, constrain at least
    reused = second.get("stored_read", 0) + second.get("stored_shared", 0)
    assert reused >= 4 and second.get("stored_exported", 0) == 0, second
    assert nuts_run["second_catalogue_stars"] == 570


def test_load_fit_with_a_mesh_extends_like_one_longer_run(nuts_run):
    assert nuts_run["extend_equal"], nuts_run["extend_max_diff"]
    assert "sampled with a mesh of 4 devices, and is now given no mesh" in nuts_run["no_mesh_refused"]


def _small_data(n=60, d=2):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)), np.full((n, d), 0.2)


def test_sample_posterior_mesh_refusals():
    from bayesmix.distributed import star_mesh
    from bayesmix.likelihood import Observations, as_observations
    from bayesmix.models import cluster_field_model, mixture_model
    from bayesmix.sampling import sample_posterior
    from bayesmix.simulate import simulate_cluster_field

    x, err = _small_data()
    obs = as_observations(x, err)
    model, mesh = mixture_model(obs, 2), star_mesh()
    with pytest.raises(ValueError, match=r"chain_method='parallel'.*mesh=.*'sequential', 'vectorized'"):
        sample_posterior(0, model, obs, mesh=mesh, chain_method="parallel")
    sim = simulate_cluster_field(0)
    radius_model = cluster_field_model(sim.catalogue, radius_fraction="R_proj")
    with pytest.raises(ValueError, match=r"model\.radius_fraction"):
        sample_posterior(0, radius_model, sim.catalogue, mesh=mesh)
    mask = np.ones(x.shape, bool)
    mask[0, 1] = False
    missing = as_observations(np.where(mask, x, np.nan), err, observed=mask)
    with pytest.raises(ValueError, match=r"missing features \(Observations\.observed\)"):
        sample_posterior(0, model, missing, mesh=mesh)
    weighted = Observations(obs.values, obs.error_covs, None, np.full(len(x), 2.0))
    with pytest.raises(ValueError, match=r"per-star weights \(Observations\.weight\)"):
        sample_posterior(0, model, weighted, mesh=mesh)
    with pytest.raises(ValueError, match=r"axis 'stars'"):
        sample_posterior(0, model, obs, mesh="stars")


def test_load_fit_refuses_a_mesh_the_run_did_not_have(tmp_path):
    from bayesmix.distributed import star_mesh
    from bayesmix.likelihood import as_observations
    from bayesmix.models import mixture_model
    from bayesmix.sampling import load_fit, sample_posterior

    x, err = _small_data()
    obs = as_observations(x, err)
    model = mixture_model(obs, 2)
    sample_posterior(0, model, obs, num_chains=1, num_warmup=20, num_samples=10, progress_bar=False,
                     checkpoint=tmp_path / "run.npz")
    with pytest.raises(ValueError, match=r"sampled with no mesh, and is now given a mesh of 1 devices; "
                                         r"pass mesh=None"):
        load_fit(tmp_path / "run.npz", model, obs, mesh=star_mesh())
    assert load_fit(tmp_path / "run.npz", model, obs).n_draws == 10


PROCESS_NUTS_SCRIPT = r"""
import json, sys
import jax
from bayesmix.distributed import initialize, star_mesh
initialize(f"127.0.0.1:{sys.argv[1]}", 2, int(sys.argv[2]))
import numpy as np
from bayesmix.likelihood import Observations
from bayesmix.models import mixture_model
from bayesmix.sampling import sample_posterior

# STARS: simulated_stars(n)
covs = np.einsum("na,ab->nab", err**2, np.eye(d))
model = mixture_model(Observations(x, covs), k)  # the same priors in both processes
p = jax.process_index()
mine = Observations(x[p::2], covs[p::2])  # each process holds its own half of the stars
fit = sample_posterior(1, model, mine, mesh=star_mesh(), num_chains=2, num_warmup=100, num_samples=100,
                       progress_bar=False)
post = fit.posterior
print("RESULT " + json.dumps({
    "devices": jax.device_count(), "n_stars": fit.data.n_stars,
    "draws": post["means"].values.tolist(), "em_means": np.asarray(fit.em.means).tolist(),
    "divergences": int(np.sum(fit.idata.sample_stats["diverging"].values))}), flush=True)
""".replace("# STARS: simulated_stars(n)\n", simulated_stars(400))


def test_two_processes_sample_posterior():
    """Each process passes its own stars; both get the same draws of the posterior of all of them."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS_NUTS_SCRIPT, str(port), str(rank)], env=_env(1),
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    r0, r1 = (_result(p, timeout=400) for p in procs)
    assert r0["devices"] == 2 and r0["n_stars"] == 200 and r1["n_stars"] == 200
    np.testing.assert_array_equal(r0["draws"], r1["draws"])  # one chain state, replicated
    assert r0["divergences"] == 0
    draws = np.asarray(r0["draws"]).reshape(-1, 2, 2)
    # The posterior of all 400 stars: its mean near the (sharded) EM fit of all of them.
    assert np.all(np.abs(draws.mean(0) - r0["em_means"]) < 3 * draws.std(0))
