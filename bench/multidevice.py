"""Data-parallel speed-up (bayesmix.distributed): one device vs two host devices vs two processes.

N stars (default 1e6), D = 4 with 4x4 correlated error covariances, K = 5 (the data of
``bench/em_stream.py``). Three configurations, each in fresh processes (JAX fixes its
device count at start):

* ``one``: one CPU device, :func:`bayesmix.distributed.fit_em_sharded` over a one-device mesh;
* ``devices2``: one process with two host-platform devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=2``);
* ``processes2``: two processes on localhost, one device each, joined by
  ``jax.distributed.initialize`` (gloo CPU collectives), each holding half the stars.

Measured per configuration: the time per EM iteration (the second of two fits of
``--iters`` iterations from the same start, so compilation is excluded; moments and
data placement included) and the time of one value-and-gradient of the sharded total
log-likelihood (:func:`bayesmix.distributed.sharded_total_log_likelihood`, the NUTS
potential's data term; mean of 5 calls after a warm-up). Speed-ups are one / other.
This machine's CPU cores are shared, so the load average is recorded with the numbers.

Usage::

    python bench/multidevice.py                # N = 1e6 (a few minutes)
    python bench/multidevice.py --n 2e5 --save out.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from em_stream import COLUMNS, PAIRS, D, K, _chunk, _start  # noqa: E402  (this folder's data)


def _data(n: int, part: int = 0, parts: int = 1):
    rec = _chunk(np.random.default_rng(7), n)[n * part // parts:n * (part + 1) // parts]
    x = np.stack([rec[f"x{j}"].astype(float) for j in range(D)], 1)
    err = np.stack([rec[f"e{j}"].astype(float) for j in range(D)], 1)
    corr = np.tile(np.eye(D), (len(x), 1, 1))
    for a, b in PAIRS:
        corr[:, a, b] = corr[:, b, a] = rec[f"r{a}{b}"]
    return x, corr * err[:, :, None] * err[:, None, :]


def child(mode: str, n: int, iters: int, port: int, pid: int) -> dict:
    import jax

    if mode == "processes2":
        from bayesmix.distributed import initialize

        initialize(f"127.0.0.1:{port}", 2, pid)
    from bayesmix.distributed import (
        fit_em_sharded,
        replicate,
        shard_observations,
        sharded_total_log_likelihood,
        star_mesh,
    )
    from bayesmix.likelihood import MixtureParams

    x, cov = _data(n, jax.process_index(), jax.process_count())
    mesh = star_mesh()
    start = _start()
    fit_em_sharded(0, x, K, errors=cov, mesh=mesh, init_params=start, max_iter=iters, tol=0.0)
    t = time.perf_counter()
    res = fit_em_sharded(0, x, K, errors=cov, mesh=mesh, init_params=start, max_iter=iters, tol=0.0)
    iter_s = (time.perf_counter() - t) / (iters + 1)
    sharded = shard_observations(x, mesh, errors=cov)
    f = sharded_total_log_likelihood(mesh)
    # The sharded stars are an argument: a jitted function cannot close over arrays of other processes.
    vg = jax.jit(jax.value_and_grad(lambda m, c, data: f(MixtureParams(start.weights, m, c), data),
                                    argnums=(0, 1)))
    args = (*replicate((start.means, start.covariances), mesh), sharded)
    jax.block_until_ready(vg(*args))
    t = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(vg(*args))
    grad_s = (time.perf_counter() - t) / 5
    return {"mode": mode, "devices": jax.device_count(), "processes": jax.process_count(), "iter_s": iter_s,
            "grad_s": grad_s, "log_likelihood": res.log_likelihood}


def _spawn(mode, n, iters, devices, port=0, pid=0):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, __file__, "--child", mode, str(n), str(iters), str(port), str(pid)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"child failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=float, default=1e6)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--save")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mode, n, iters, port, pid = args.child
        print(json.dumps(child(mode, int(n), int(iters), int(port), int(pid))))
        return {}
    n = int(args.n)
    load = [os.getloadavg()[0]]
    one = _result(_spawn("one", n, args.iters, 1))
    load.append(os.getloadavg()[0])
    two = _result(_spawn("devices2", n, args.iters, 2))
    load.append(os.getloadavg()[0])
    port = _free_port()
    procs = [_spawn("processes2", n, args.iters, 1, port, pid) for pid in (0, 1)]
    pp = _result(procs[0])
    _result(procs[1])
    load.append(os.getloadavg()[0])
    rows = [one, two, pp]
    for r in rows:
        r["iter_speedup"] = one["iter_s"] / r["iter_s"]
        r["grad_speedup"] = one["grad_s"] / r["grad_s"]
        r["same_log_likelihood"] = bool(np.isclose(r["log_likelihood"], one["log_likelihood"], rtol=1e-11))
    out = {"settings": {"n": n, "n_features": D, "n_components": K, "iters": args.iters, "columns": COLUMNS},
           "cpu_count": os.cpu_count(), "load_avg_1min": load, "results": rows}
    print(f"{'configuration':<14}{'devices':>8}{'procs':>6}{'s/EM iter':>11}{'speed-up':>9}"
          f"{'s/grad':>9}{'speed-up':>9}  same logL")
    for r in rows:
        print(f"{r['mode']:<14}{r['devices']:>8}{r['processes']:>6}{r['iter_s']:>11.2f}{r['iter_speedup']:>9.2f}"
              f"{r['grad_s']:>9.3f}{r['grad_speedup']:>9.2f}  {r['same_log_likelihood']}")
    print(f"N = {n}, {os.cpu_count()} CPU cores (shared); 1-min load average during the runs: {load}")
    if args.save:
        Path(args.save).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
