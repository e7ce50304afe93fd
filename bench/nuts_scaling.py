"""How bayesmix's NUTS path scales with the number of stars: D = 2, K = 3, per-star errors.

Stars come from :func:`bayesmix.simulate.simulate_mixture` with three overlapping 2-D
components (weights 0.5, 0.3, 0.2; correlated intrinsic covariances) observed with
heteroscedastic, correlated 2x2 error covariances about as large as the intrinsic
widths. For each N (1e3, 1e4, 1e5, 1e6) one fresh process runs the whole path the
user runs: EM start (:func:`bayesmix.em.fit_em`, ``n_init=4``),
:func:`bayesmix.models.mixture_model` with default priors, and
:func:`bayesmix.sampling.sample_posterior` with 4 chains x (``--warmup`` + ``--samples``)
(300 + 500), then :func:`bayesmix.sampling.extend` by ``--extend`` draws per chain (200)
to time post-warmup sampling on its own. It reports:

* ``total_s``: EM start + sampling (4 x (warmup + samples)), compilation included (the
  target: under 300 s at N = 1e5);
* where the time goes: ``em_s``; ``compile_s`` (JAX tracing, lowering and backend
  compilation during the run, from ``jax.monitoring`` events) and ``n_compiles``;
  ``steps_per_draw`` (mean leapfrog steps per post-warmup draw, ``sample_stats.n_steps``);
  ``grad_s`` (one jitted value-and-gradient of the NUTS potential) and ``logp_s`` (one
  jitted potential), so ``grad_over_logp`` says what a gradient costs in log-density passes;
* ``per_1000_draws_s``: seconds per 1000 post-warmup draws (all chains together, i.e.
  1000 / n_chains per chain), from the ``extend`` call net of the compilation it triggers;
* ``peak_mb``: peak resident memory (VmHWM) of the process (interpreter, imports, data,
  compilation and draws included; the target: under 2 GiB at N = 1e5), and ``base_mb``
  after imports and data.

A run whose estimate exceeds ``--limit`` (600 s) is shortened: warmup and samples are
scaled down together (at least 20 each) and the row is marked ``reduced`` (its ``total_s``
is then not the 4 x 500 figure; ``estimate_s`` is the estimate for the full run). The
estimate is chains x (warmup + samples) x ``grad_s`` x ``cost_factor``, where
``cost_factor`` (the sampler's time per chain-iteration in gradients: leapfrog steps,
warmup's longer trajectories and per-step overhead together) is measured at the previous N
(10 before the first).

Usage::

    python bench/nuts_scaling.py            # N = 1e3 .. 1e6
    python bench/nuts_scaling.py --quick    # N = 1e3, 1e4 with 4 x (100 + 100)
    python bench/nuts_scaling.py --json     # one JSON object on stdout
    python bench/nuts_scaling.py --cache-dir /tmp/jaxcache   # with JAX's persistent compilation cache

JSON keys (``--json``)
----------------------
``machine``: {``cpu_count``, ``platform``, ``python``, ``numpy``, ``jax``, ``numpyro``,
``jax_backend`` ("cpu" or "gpu"), ``jax_devices``};
``settings``: {``n_values``, ``n_features``, ``n_components``, ``num_chains``, ``num_warmup``,
``num_samples``, ``num_extend``, ``limit_s``, ``quick``, ``cache_dir``, ``seed``};
``results``: one object per N: {``n_stars``, ``status`` ("ok", "reduced", "skipped" (no
sampling: even 4 x (20 + 20) estimated beyond twice the limit), "failed", "timeout"),
``reason``, ``num_warmup``, ``num_samples`` (as run), ``total_s``, ``em_s``, ``sample_s`` (the
``sample_posterior`` call), ``compile_s``, ``n_compiles``, ``extend_s``, ``extend_compile_s``,
``per_1000_draws_s``, ``steps_per_draw``, ``grad_s``, ``logp_s``, ``grad_over_logp``,
``estimate_s``, ``cost_factor``, ``likelihood_precision`` (as ``"auto"`` chose it),
``divergences``, ``ess_bulk_min`` (over weights, means, scales and the off-diagonal
correlations), ``r_hat_max``, ``peak_mb``, ``base_mb``, ``import_s``, ``wall_s`` (the
subprocess, start to end)}.
``targets``: {``n1e5_total_under_300s``, ``n1e5_peak_under_2GiB``} (null when N = 1e5 was not
run in full).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FULL_NS = [1_000, 10_000, 100_000, 1_000_000]
QUICK_NS = [1_000, 10_000]
D, K = 2, 3


def _status_mb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def true_params():
    """Three overlapping 2-D components with correlated intrinsic covariances."""
    from bayesmix.likelihood import check_params

    def cov(s1, s2, rho):
        return [[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]]

    return check_params(weights=[0.5, 0.3, 0.2],
                        means=[[0.0, 0.0], [1.5, 0.8], [-1.0, 1.5]],
                        covariances=[cov(0.5, 0.4, 0.3), cov(0.8, 0.5, -0.4), cov(0.6, 0.9, 0.2)])


class _CompileLog:
    """Sums JAX's tracing, lowering and backend-compilation times (jax.monitoring events)."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        import jax

        self.total = 0.0
        self.n_compiles = 0
        jax.monitoring.register_event_duration_secs_listener(self._duration)

    def _duration(self, event, duration, **kwargs):
        if event in self.EVENTS:
            self.total += duration
            self.n_compiles += event == self.EVENTS[2]

    def snapshot(self):
        return self.total, self.n_compiles


def _model_args(model, obs):
    """Arguments of the NumPyro program (with the prior constants, where the model takes them)."""
    if hasattr(model, "hyperparameters"):
        return (obs, {}, model.hyperparameters())
    return (obs, {})


def _cost(model, obs, init_values, repeats):
    """Median seconds of one jitted potential and one jitted value-and-gradient."""
    import jax
    from numpyro.infer.util import init_to_value, initialize_model

    info = initialize_model(jax.random.PRNGKey(0), model.model, model_args=_model_args(model, obs),
                            init_strategy=init_to_value(values=init_values))
    z = info.param_info.z
    out = {}
    for name, fn in (("logp_s", jax.jit(info.potential_fn)),
                     ("grad_s", jax.jit(jax.value_and_grad(info.potential_fn)))):
        jax.block_until_ready(fn(z))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(z))
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times))
    return out


def _worker(args):
    t0 = time.perf_counter()
    import arviz as az

    from bayesmix.sampling import set_host_device_count

    set_host_device_count()  # CPU cores as devices (chains in parallel); no effect on a GPU
    import jax

    from bayesmix.em import fit_em
    from bayesmix.models import mixture_model
    from bayesmix.sampling import enable_compilation_cache, extend, sample_posterior
    from bayesmix.simulate import simulate_mixture
    import_s = time.perf_counter() - t0
    if args.cache_dir:
        enable_compilation_cache(args.cache_dir)
    sim = simulate_mixture(args.seed, true_params(), args.worker_n, error_scale=[0.4, 0.3],
                           error_log_sd=0.3, max_error_correlation=0.5)
    cat = sim.catalogue
    from bayesmix.likelihood import as_observations

    obs = as_observations(cat)
    base_mb = _status_mb("VmRSS")
    clog = _CompileLog()
    out = {"import_s": import_s, "base_mb": base_mb, "jax_devices": [str(d) for d in jax.devices()]}

    # The full path, timed from the data in memory.
    c0 = clog.snapshot()
    t_start = time.perf_counter()
    em = fit_em(args.seed, obs, K, n_init=4)
    em_s = time.perf_counter() - t_start
    c_em = clog.snapshot()
    model = mixture_model(obs, K)
    out["likelihood_precision"] = model.likelihood_precision  # as "auto" resolved it for this N
    # Cost of one gradient, for the estimate and the breakdown (outside the timed path).
    cost = _cost(model, obs, model.init_values(em.params), repeats=5 if args.worker_n >= 300_000 else 20)
    out.update(cost)
    out["grad_over_logp"] = cost["grad_s"] / cost["logp_s"]
    warmup, samples = args.warmup, args.samples
    # Seconds per (chain x iteration) in units of one gradient: leapfrog steps per iteration
    # (warmup included) times the sampler's overhead per step, measured at the previous N.
    estimate = args.chains * (warmup + samples) * args.cost_factor * cost["grad_s"]
    out["estimate_s"] = estimate
    status = "ok"
    if estimate > args.limit:
        scale = args.limit / estimate
        warmup = max(int(warmup * scale), 20)
        samples = max(int(samples * scale), 20)
        status = "reduced"
        if args.chains * (warmup + samples) * args.cost_factor * cost["grad_s"] > 2 * args.limit:
            # Even 20 + 20 would take far longer than the limit: report the costs measured so far.
            out.update(status="skipped", em_s=em_s, peak_mb=_status_mb("VmHWM"))
            print("RESULT " + json.dumps(out, default=float), flush=True)
            return
    c_mid = clog.snapshot()
    t_sample = time.perf_counter()
    fit = sample_posterior(args.seed, model, obs, init=em, num_chains=args.chains, num_warmup=warmup,
                           num_samples=samples, progress_bar=False)
    sample_s = time.perf_counter() - t_sample
    c1 = clog.snapshot()
    out.update(status=status, num_warmup=warmup, num_samples=samples, em_s=em_s, sample_s=sample_s,
               total_s=em_s + sample_s, compile_s=(c_em[0] - c0[0]) + (c1[0] - c_mid[0]),
               n_compiles=(c_em[1] - c0[1]) + (c1[1] - c_mid[1]))
    out["cost_factor"] = max(sample_s - (c1[0] - c_mid[0]), 0.0) / (
        args.chains * (warmup + samples) * cost["grad_s"])
    stats = fit.idata.sample_stats
    out["steps_per_draw"] = float(stats["n_steps"].mean())
    out["divergences"] = int(stats["diverging"].sum())

    # Post-warmup sampling alone: extend, net of the compilation that extend triggers.
    n_ext = max(min(args.extend, samples), 10)
    c2 = clog.snapshot()
    t_ext = time.perf_counter()
    fit = extend(fit, n_ext)
    extend_s = time.perf_counter() - t_ext
    c3 = clog.snapshot()
    ext_compile = c3[0] - c2[0]
    out.update(extend_s=extend_s, extend_compile_s=ext_compile,
               per_1000_draws_s=max(extend_s - ext_compile, 0.0) / (n_ext * args.chains) * 1000.0)
    post = fit.idata.posterior
    names = [v for v in ("weights", "means", "scales", "correlations") if v in post]
    # Correlation matrices have constant diagonals (ESS and R-hat undefined there): off-diagonals only.
    keep = {v: post[v] for v in names if v != "correlations"}
    if "correlations" in names:
        keep["rho"] = post["correlations"].isel(feature=0, feature_bis=1)
    import xarray as xr

    sub = xr.Dataset(keep)
    ess = az.ess(sub, method="bulk")
    rhat = az.rhat(sub)
    out["ess_bulk_min"] = float(min(float(ess[v].min()) for v in keep))
    out["r_hat_max"] = float(max(float(rhat[v].max()) for v in keep))
    out["peak_mb"] = _status_mb("VmHWM")
    print("RESULT " + json.dumps(out, default=float), flush=True)


def _run(n, args, cost_factor, limit):
    cmd = [sys.executable, __file__, "--worker-n", str(n), "--warmup", str(args.warmup), "--samples",
           str(args.samples), "--chains", str(args.chains), "--extend", str(args.extend),
           "--limit", str(limit), "--cost-factor", str(cost_factor), "--seed", str(args.seed)]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3 * limit + 600)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": "stopped after the time limit",
                "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["reason"] = {"reduced": "shortened to fit --limit; the full run is estimated at "
                                        f"{out['estimate_s']:.0f} s",
                             "skipped": "sampling skipped: even 4 x (20 + 20) is estimated beyond "
                                        f"2 x --limit (full run {out['estimate_s']:.0f} s); EM, gradient "
                                        "and memory measured"}.get(out["status"])
            out["wall_s"] = wall
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": "failed", "reason": " | ".join(tail), "wall_s": wall}


def _versions():
    out = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "numpy": np.__version__}
    for mod in ("jax", "numpyro"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError as exc:
            out[mod] = f"unavailable ({type(exc).__name__})"
    import jax

    out["jax_backend"] = jax.default_backend()
    out["jax_devices"] = [str(d) for d in jax.devices()]
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1e3, 1e4 with 4 x (100 + 100)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", metavar="PATH", help="also write the JSON object to PATH")
    parser.add_argument("--n", type=float, nargs="*", default=None, help="override the N list")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=None, help="warmup per chain (300; 100 with --quick)")
    parser.add_argument("--samples", type=int, default=None, help="draws per chain (500; 100 with --quick)")
    parser.add_argument("--extend", type=int, default=None,
                        help="extra draws per chain timed on their own (200; 50 with --quick)")
    parser.add_argument("--limit", type=float, default=600.0, help="estimated seconds allowed per run")
    parser.add_argument("--cache-dir", default=None, help="JAX persistent compilation cache directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker-n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cost-factor", type=float, default=10.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = 100 if args.quick else 300
    if args.samples is None:
        args.samples = 100 if args.quick else 500
    if args.extend is None:
        args.extend = 50 if args.quick else 200
    limit = args.limit
    if args.worker_n:
        args.limit = limit
        _worker(args)
        return 0
    ns = [int(n) for n in args.n] if args.n else (QUICK_NS if args.quick else FULL_NS)
    log = sys.stderr if args.json else sys.stdout
    results = []
    cost_factor = 30.0  # gradients' worth of time per chain-iteration, until measured
    for n in ns:
        row = {"n_stars": n}
        row.update(_run(n, args, cost_factor, limit))
        if row.get("cost_factor"):
            cost_factor = row["cost_factor"]
        results.append(row)
        print(f"  N={n:>8d} {row['status']:8s} total={_fmt(row.get('total_s'), '.4g')} s "
              f"per 1000 draws={_fmt(row.get('per_1000_draws_s'), '.4g')} s "
              f"peak={_fmt(row.get('peak_mb'), '.0f')} MiB {row.get('reason') or ''}", file=log, flush=True)

    at = [r for r in results if r["n_stars"] == 100_000 and r.get("status") == "ok"]
    targets = {"n1e5_total_under_300s": bool(at[0]["total_s"] < 300) if at else None,
               "n1e5_peak_under_2GiB": bool(at[0]["peak_mb"] < 2048) if at else None}
    report = {
        "machine": _versions(),
        "settings": {"n_values": ns, "n_features": D, "n_components": K, "num_chains": args.chains,
                     "num_warmup": args.warmup, "num_samples": args.samples, "num_extend": args.extend,
                     "limit_s": limit, "quick": args.quick, "cache_dir": args.cache_dir, "seed": args.seed},
        "results": results,
        "targets": targets,
    }
    if args.save:
        Path(args.save).write_text(json.dumps(report, indent=1, default=float))
    if args.json:
        print(json.dumps(report, indent=1, default=float))
        return 0
    print()
    print(f"D={D}, K={K}, per-star 2x2 error covariances; {os.cpu_count()} CPU cores; "
          f"{args.chains} chains x ({args.warmup} warmup + {args.samples} draws) unless reduced")
    head = (f"{'N':>8} {'status':8} {'total s':>8} {'EM s':>6} {'compile s':>9} {'#comp':>6} "
            f"{'s/1000dr':>9} {'steps/dr':>8} {'grad ms':>8} {'grad/logp':>9} {'peak MiB':>8} "
            f"{'ESS min':>7} {'R-hat':>6} {'lik.':7s}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['n_stars']:>8d} {r['status']:8} {_fmt(r.get('total_s'), '8.4g')} "
              f"{_fmt(r.get('em_s'), '6.3g')} "
              f"{_fmt(r.get('compile_s'), '9.3g')} {_fmt(r.get('n_compiles'), '6d')} "
              f"{_fmt(r.get('per_1000_draws_s'), '9.4g')} {_fmt(r.get('steps_per_draw'), '8.2f')} "
              f"{_fmt(r.get('grad_s') and 1e3 * r['grad_s'], '8.3g')} "
              f"{_fmt(r.get('grad_over_logp'), '9.2f')} "
              f"{_fmt(r.get('peak_mb'), '8.0f')} {_fmt(r.get('ess_bulk_min'), '7.0f')} "
              f"{_fmt(r.get('r_hat_max'), '6.3f')} {r.get('likelihood_precision') or '':7s} "
              f"{r.get('reason') or ''}")
    print()
    print("targets: " + ", ".join(f"{k}={v}" for k, v in targets.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
