"""Sharded fits (bayesmix.distributed) equal the single-device ones to round-off.

JAX fixes its device count when it starts, so each configuration runs in a fresh
subprocess: four host-platform devices in one process, and two processes on localhost
(two devices each, each reading its own shard of the stars) joined by
``jax.distributed.initialize`` with gloo CPU collectives.
The subprocesses print JSON; the single-device references come from the four-device
run (``fit_em``, ``total_log_likelihood`` and the model's potential on one device).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

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

rng = np.random.default_rng(5)
n, d, k = 2001, 2, 2
comp = rng.random(n) < 0.35
x = np.where(comp[:, None], rng.normal(1.5, 0.4, (n, d)), rng.normal(-1.0, 1.2, (n, d)))
err = rng.uniform(0.1, 0.5, (n, d))
x = x + err * rng.normal(size=(n, d))
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
"""


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
