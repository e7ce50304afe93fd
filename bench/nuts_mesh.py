"""NUTS with the stars split over devices: ``sample_posterior(..., mesh=)`` on 1 vs 2 devices.

N stars (default 1e5), D = 2 with diagonal errors, K = 3. Two configurations, each in a
fresh process (JAX fixes its device count when it starts):

* ``one``: one CPU device, ``sample_posterior`` without a mesh (chains ``"sequential"``);
* ``mesh2``: two host-platform devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=2``) and
  ``sample_posterior(..., mesh=star_mesh())``: every log-density and gradient is the
  ``psum`` of the two devices' sums over their own stars; chains ``"sequential"``.

Both start from the same EM fit (``fit_em`` with a fixed seed, computed in each process
and not timed) with the same key. Timed: ``sample_posterior`` as a whole (Laplace start,
warmup, draws, InferenceData), ``--repeat`` times in the same process: the first call
includes tracing and compilation, later ones load the programs from a fresh store
(:func:`bayesmix.sampling.enable_compilation_cache` on a temporary folder). Also reported:
the leapfrog steps of the run (``n_steps`` summed over chains and draws, warmup not
included) and the posterior means, which agree to Monte Carlo error (the two runs'
chains separate by round-off). The machine's CPU cores may be shared, so the load
average is recorded with the numbers. ``bench/multidevice.py`` measures the sharded EM
and a single value-and-gradient the same way.

Usage::

    python bench/nuts_mesh.py                          # N = 1e5, 2 chains x (200 + 300)
    python bench/nuts_mesh.py --n 2e4 --save out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

D, K = 2, 3


def _data(n: int):
    rng = np.random.default_rng(11)
    centres = np.array([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]])
    label = rng.choice(K, size=n, p=[0.5, 0.3, 0.2])
    x = centres[label] + rng.normal(size=(n, D)) * np.array([1.0, 0.6, 0.4])[label, None]
    err = rng.uniform(0.1, 0.5, (n, D))
    return x + err * rng.normal(size=(n, D)), err


def child(mode: str, n: int, warmup: int, samples: int, chains: int, repeat: int) -> dict:
    import jax

    from bayesmix.distributed import star_mesh
    from bayesmix.em import fit_em
    from bayesmix.likelihood import as_observations
    from bayesmix.models import mixture_model
    from bayesmix.sampling import enable_compilation_cache, sample_posterior

    # A fresh program store: later calls load the compiled programs instead of tracing again.
    enable_compilation_cache(tempfile.mkdtemp(prefix="nuts-mesh-"))
    x, err = _data(n)
    obs = as_observations(x, err)
    model = mixture_model(obs, K)
    init = fit_em(0, obs, K)
    mesh = star_mesh() if mode == "mesh2" else None
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fit = sample_posterior(1, model, obs, init=init, mesh=mesh, num_chains=chains, num_warmup=warmup,
                               num_samples=samples, chain_method="sequential", progress_bar=False)
        times.append(time.perf_counter() - t)
    stats = fit.idata.sample_stats
    return {"mode": mode, "devices": jax.device_count(), "times_s": times,
            "leapfrog_steps": int(np.sum(stats["n_steps"].values)),
            "divergences": int(np.sum(stats["diverging"].values)),
            "means": fit.posterior["means"].mean(("chain", "draw")).values.tolist()}


def _run(mode: str, args, devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, __file__, "--child", mode, str(int(args.n)), str(args.warmup), str(args.samples),
           str(args.chains), str(args.repeat)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=float, default=1e5)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="calls per process (the first one compiles)")
    ap.add_argument("--save")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mode, *numbers = args.child
        print(json.dumps(child(mode, *(int(v) for v in numbers))))
        return {}
    load = [os.getloadavg()[0]]
    rows = []
    for mode, devices in (("one", 1), ("mesh2", 2)):
        rows.append(_run(mode, args, devices))
        load.append(os.getloadavg()[0])
    one = rows[0]
    print(f"N = {int(args.n)}, D = {D}, K = {K}, {args.chains} chains x ({args.warmup} warmup + "
          f"{args.samples} draws), chains sequential")
    print(f"{'configuration':<14}{'devices':>8}{'first call s':>14}{'later call s':>14}{'ratio':>8}"
          f"{'leapfrog':>10}  div")
    for r in rows:
        later = min(r["times_s"][1:]) if len(r["times_s"]) > 1 else float("nan")
        r["ratio_first"] = one["times_s"][0] / r["times_s"][0]
        r["ratio_later"] = (min(one["times_s"][1:]) / later) if len(r["times_s"]) > 1 else float("nan")
        print(f"{r['mode']:<14}{r['devices']:>8}{r['times_s'][0]:>14.1f}{later:>14.1f}{r['ratio_later']:>8.2f}"
              f"{r['leapfrog_steps']:>10}  {r['divergences']}")
    print("ratio: one-device time / this time (later calls); posterior means:")
    for r in rows:
        print(f"  {r['mode']:<8}", np.round(r["means"], 4).tolist())
    print(f"{os.cpu_count()} CPU cores (shared); 1-min load average before/after each: {load}")
    out = {"settings": vars(args) | {"n_features": D, "n_components": K}, "cpu_count": os.cpu_count(),
           "load_avg_1min": load, "results": rows}
    if args.save:
        Path(args.save).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
