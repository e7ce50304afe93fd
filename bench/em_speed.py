"""Speed of bayesmix's extreme-deconvolution EM against astroML, pygmmis and scikit-learn.

Fits D=2, K=5 Gaussian mixtures to N stars with per-star 2x2 (correlated) error
covariances, N = 1e3, 1e4, 1e5, 1e6, every method on the same data and from the
same initial parameters (bayesmix's k-means++ start), and reports per method:

* time per EM iteration (E-step + M-step + log-likelihood, as each method's own
  fit loop does it), measured as the difference between runs of n1 and n2
  iterations so that set-up and compilation cancel;
* time to convergence from the shared start, with each method's stopping rule set
  to the same criterion (total log-likelihood change below 1e-3 nats per
  iteration); for bayesmix also the first call, compilation included;
* peak resident memory (VmHWM) of the process that ran it, each method in a fresh
  subprocess (includes the interpreter, the imports and the data); pygmmis also
  forks a worker pool whose peak is reported separately (``children_peak_mb``,
  which on Linux includes the pages inherited from the parent at fork);
* the ratio of each peer's time per iteration to bayesmix's.

Peers: astroML ``XDGMM`` (per-star inverses in a Python loop; ``_EMstep`` + ``logL``
is one iteration of its ``fit``), pygmmis (``fit(..., covar=S)``, per-datum
covariances, its multiprocessing pool), scikit-learn ``GaussianMixture`` (no
deconvolution: the plain-EM floor; it sees the same values without errors). A
peer whose run is estimated to exceed the time limit (``--limit``, 600 s; 15 s
with ``--quick``) is skipped and reported as such, with the estimate.

Also timed: one pass computing the N x K log-density matrix with
:func:`bayesmix.likelihood.component_log_prob` (jitted), the yardstick of the
target "an EM iteration costs at most 2 such passes".

Usage::

    python bench/em_speed.py            # N = 1e3 .. 1e6 (several minutes; astroML dominates)
    python bench/em_speed.py --quick    # N <= 1e5, about a minute
    python bench/em_speed.py --json     # the same figures as one JSON object on stdout
    python bench/em_speed.py --save out.json   # the table, and the JSON object to a file

JSON keys (``--json``)
----------------------
``machine``: {``cpu_count``, ``platform``, ``python``, ``jax``, ``numpy``, versions of
peers}; ``settings``: {``n_features``, ``n_components``, ``n_values``, ``tol_total``,
``limit_s``, ``quick``}; ``results``: list with one object per N and method:

``n_stars`` (int), ``method`` ("bayesmix", "astroml", "pygmmis", "sklearn"),
``status`` ("ok", "skipped", "failed"), ``reason`` (str, why skipped or failed; else
null), ``iter_s`` (seconds per iteration or null), ``converge_s`` (seconds to
convergence from the shared start, or null if skipped), ``converge_iters`` (iterations
to convergence or null), ``first_call_s`` (bayesmix only: converge run including
JIT compilation), ``peak_mb`` (peak resident memory of the measuring process(es) in
MiB), ``base_mb`` (resident memory after imports and data load, MiB),
``children_peak_mb`` (pygmmis only: largest peak RSS of its pool processes, MiB),
``ratio_vs_bayesmix`` (peer ``iter_s`` / bayesmix ``iter_s``; 1 for bayesmix),
``logdensity_pass_s`` (bayesmix only: one jitted N x K log-density pass),
``iter_over_pass`` (bayesmix only: ``iter_s / logdensity_pass_s``),
``log_likelihood`` (at convergence, when run), ``estimate_s`` (for skipped runs: the
estimated run time).
``targets``: at the largest N: {``iter_over_pass_le_2``, ``astroml_ratio_ge_50``,
``pygmmis_ratio_ge_5``, ``sklearn_ratio_ge_1``} booleans (null when not measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

K = 5
D = 2
TOL_TOTAL = 1e-3
FULL_NS = [1_000, 10_000, 100_000, 1_000_000]


def make_data(n, seed=0):
    """Stars from a 5-component 2-D mixture, each with its own correlated 2x2 error covariance."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0.0, 2 * np.pi, K, endpoint=False)
    means = np.column_stack([4 * np.cos(angles), 4 * np.sin(angles)])
    a = rng.normal(size=(K, D, D)) * 0.6
    covs = a @ np.swapaxes(a, 1, 2) + 0.3 * np.eye(D)
    weights = rng.dirichlet(np.full(K, 5.0))
    labels = rng.choice(K, size=n, p=weights)
    chol = np.linalg.cholesky(covs)
    true = means[labels] + np.einsum("nij,nj->ni", chol[labels], rng.normal(size=(n, D)))
    sig = 0.4 * np.exp(0.3 * rng.normal(size=(n, D)))
    rho = rng.uniform(-0.5, 0.5, n)
    errs = np.empty((n, D, D))
    errs[:, 0, 0] = sig[:, 0] ** 2
    errs[:, 1, 1] = sig[:, 1] ** 2
    errs[:, 0, 1] = errs[:, 1, 0] = rho * sig[:, 0] * sig[:, 1]
    eps = np.einsum("nij,nj->ni", np.linalg.cholesky(errs), rng.normal(size=(n, D)))
    return true + eps, errs


def _rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _peak_mb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so every worker
    # would inherit the orchestrating process's high-water mark.
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _children_peak_mb():
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# --------------------------------------------------------------------------- workers


def _work_bayesmix(x, s, init, n1, n2, limit):
    import jax
    import jax.numpy as jnp

    from bayesmix.em import EMConvergenceWarning, fit_em
    from bayesmix.likelihood import MixtureParams, Observations, component_log_prob

    obs = Observations(jnp.asarray(x), jnp.asarray(s))
    params = MixtureParams(*(jnp.asarray(a) for a in init))
    base = _rss_mb()
    clp = jax.jit(component_log_prob)
    clp(params, obs).block_until_ready()
    passes = []
    for _ in range(5):
        t, out = _timed(lambda: clp(params, obs).block_until_ready())
        passes.append(t)
    del out

    def run(m, tol):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EMConvergenceWarning)
            return fit_em(0, obs, K, init_params=init, w=0.0, max_iter=m, tol=tol)

    times = {}
    for m in (n1, n2):
        run(m, 0.0)  # compile
        times[m] = min(_timed(lambda m=m: run(m, 0.0))[0] for _ in range(2))
    iter_s = (times[n2] - times[n1]) / (n2 - n1)
    first, res = _timed(lambda: run(1000, TOL_TOTAL))
    conv, res = _timed(lambda: run(1000, TOL_TOTAL))
    pass_s = float(np.median(passes))
    return {"iter_s": iter_s, "converge_s": conv, "converge_iters": res.n_iter,
            "first_call_s": first, "logdensity_pass_s": pass_s,
            "iter_over_pass": iter_s / pass_s, "log_likelihood": res.log_likelihood,
            "base_mb": base}


def _work_sklearn(x, s, init, n1, n2, limit):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    w0, m0, c0 = init
    base = _rss_mb()
    prec = np.linalg.inv(c0)

    def run(m, tol):
        gm = GaussianMixture(K, covariance_type="full", max_iter=m, tol=tol, weights_init=w0,
                             means_init=m0, precisions_init=prec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return gm.fit(x)

    times = {m: min(_timed(lambda m=m: run(m, 0.0))[0] for _ in range(2)) for m in (n1, n2)}
    iter_s = (times[n2] - times[n1]) / (n2 - n1)
    # scikit-learn's tol is on the per-sample mean: the same total criterion.
    conv, gm = _timed(lambda: run(10000, TOL_TOTAL / len(x)))
    return {"iter_s": iter_s, "converge_s": conv, "converge_iters": int(gm.n_iter_),
            "log_likelihood": float(gm.score(x) * len(x)), "base_mb": base}


def _work_astroml(x, s, init, n1, n2, limit):
    from astroML.density_estimation import XDGMM

    w0, m0, c0 = init
    base = _rss_mb()
    xd = XDGMM(K)

    def reset():
        xd.alpha, xd.mu, xd.V = w0.copy(), m0.copy(), c0.copy()

    reset()
    logl = xd.logL(x, s)
    t0 = time.perf_counter()
    xd._EMstep(x, s)
    logl_next = xd.logL(x, s)
    iter_s = time.perf_counter() - t0
    out = {"iter_s": iter_s, "base_mb": base}
    est_iters = max(int(os.environ.get("BENCH_EXPECTED_ITERS", "50")), 2)
    if iter_s * est_iters > limit:
        out.update(converge_status="skipped", estimate_s=iter_s * est_iters,
                   reason=f"convergence run estimated at {iter_s * est_iters:.0f} s "
                          f"({est_iters} iterations x {iter_s:.1f} s) > limit {limit:.0f} s")
        return out
    # astroML's own fit loop, minus its scikit-learn initialisation (same start for all).
    reset()
    t0 = time.perf_counter()
    logl = xd.logL(x, s)
    n_iter = 0
    for n_iter in range(1, 1001):  # noqa: B007
        xd._EMstep(x, s)
        logl_next = xd.logL(x, s)
        if logl_next < logl + TOL_TOTAL:
            break
        logl = logl_next
    out.update(converge_s=time.perf_counter() - t0, converge_iters=n_iter,
               log_likelihood=float(logl_next))
    return out


def _work_pygmmis(x, s, init, n1, n2, limit):
    import logging

    import pygmmis

    class _CountIterations(logging.Handler):
        # pygmmis logs one INFO line per EM iteration ("<it>\t<N>\t<logL>\t<stable>").
        def __init__(self):
            super().__init__(logging.INFO)
            self.count = 0

        def emit(self, record):
            if record.getMessage()[:1].isdigit():
                self.count += 1

    counter = _CountIterations()
    plog = logging.getLogger("pygmmis")
    plog.setLevel(logging.INFO)
    plog.propagate = False
    plog.addHandler(counter)
    w0, m0, c0 = init
    base = _rss_mb()

    def run(m, tol):
        gmm = pygmmis.GMM(K=K, D=D)
        gmm.amp[:], gmm.mean[:], gmm.covar[:] = w0, m0, c0
        log_l, _ = pygmmis.fit(gmm, x, covar=s, init_method="none", w=0.0, tol=tol,
                               miniter=1, maxiter=m, rng=np.random.RandomState(0))
        return gmm, log_l

    times = {}
    for m in (n1, n2):
        times[m] = _timed(lambda m=m: run(m, 0.0))[0]
    iter_s = (times[n2] - times[n1]) / (n2 - n1)
    out = {"iter_s": iter_s, "base_mb": base}
    est_iters = max(int(os.environ.get("BENCH_EXPECTED_ITERS", "50")), 2)
    if iter_s * est_iters > limit:
        out.update(converge_status="skipped", estimate_s=iter_s * est_iters,
                   reason=f"convergence run estimated at {iter_s * est_iters:.0f} s > limit")
        return out
    # pygmmis's tol is relative to |mean log L|: the same total criterion.
    probe = pygmmis.GMM(K=K, D=D)
    probe.amp[:], probe.mean[:], probe.covar[:] = w0, m0, c0
    total0 = abs(float(np.sum(probe(x, covar=s, as_log=True))))
    counter.count = 0
    t0 = time.perf_counter()
    _gmm, log_l = run(1000, TOL_TOTAL / total0)
    conv = time.perf_counter() - t0
    out.update(converge_s=conv, converge_iters=counter.count, log_likelihood=float(log_l),
               children_peak_mb=_children_peak_mb())
    return out


WORKERS = {"bayesmix": _work_bayesmix, "astroml": _work_astroml, "pygmmis": _work_pygmmis,
           "sklearn": _work_sklearn}


def _worker_main(method, path, limit):
    data = np.load(path)
    x, s = data["x"], data["s"]
    init = (data["w0"], data["m0"], data["c0"])
    n = len(x)
    n1, n2 = (2, 12) if n >= 100_000 else (5, 45)
    if method == "astroml":
        n1 = n2 = 1
    out = WORKERS[method](x, s, init, n1, n2, limit)
    out["peak_mb"] = _peak_mb()
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- orchestration


def _shared_start(x, s):
    """bayesmix's k-means++ start (fit with zero iterations), used by every method."""
    import warnings as _w

    from bayesmix.em import EMConvergenceWarning, fit_em

    with _w.catch_warnings():
        _w.simplefilter("ignore", EMConvergenceWarning)
        res = fit_em(0, x, K, errors=s, w=0.0, max_iter=0)
    return res.weights / res.weights.sum(), res.means, res.covariances


def _run_worker(method, path, limit, timeout, env):
    cmd = [sys.executable, __file__, "--worker", method, "--data", str(path), "--limit", str(limit)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "skipped", "reason": f"ran past {timeout:.0f} s and was stopped"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["status"] = "ok"
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": "failed", "reason": " | ".join(tail)}


def _estimate_peer(method, n, measured):
    """Per-iteration estimate from the largest smaller N (linear in N), or None."""
    prev = [r for r in measured if r["method"] == method and r.get("iter_s") and r["n_stars"] < n]
    if not prev:
        return None
    last = max(prev, key=lambda r: r["n_stars"])
    return last["iter_s"] * n / last["n_stars"]


def _versions():
    out = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "numpy": np.__version__}
    for mod in ("jax", "sklearn", "astroML", "pygmmis"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as exc:  # an absent peer is reported, not fatal
            out[mod] = f"unavailable ({type(exc).__name__})"
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N <= 1e5, about a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", metavar="PATH", help="also write the JSON object to PATH")
    parser.add_argument("--limit", type=float, default=None,
                        help="seconds a peer may take for one measurement (600; 15 with --quick)")
    parser.add_argument("--n", type=float, nargs="*", default=None, help="override the N list")
    parser.add_argument("--methods", nargs="*", default=list(WORKERS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limit = args.limit if args.limit is not None else (15.0 if args.quick else 600.0)
    if args.worker:
        _worker_main(args.worker, args.data, limit)
        return 0

    ns = [int(n) for n in args.n] if args.n else [n for n in FULL_NS
                                                  if not args.quick or n <= 100_000]
    results = []
    log = sys.stderr if args.json else sys.stdout
    with tempfile.TemporaryDirectory() as tmp:
        for n in ns:
            x, s = make_data(n)
            w0, m0, c0 = _shared_start(x, s)
            path = Path(tmp) / f"data_{n}.npz"
            np.savez(path, x=x, s=s, w0=w0, m0=m0, c0=c0)
            env = dict(os.environ)
            ours = None
            for method in args.methods:
                row = {"n_stars": n, "method": method, "reason": None}
                est = _estimate_peer(method, n, results)
                # astroML needs one iteration to be timed; skip when even that is too long.
                n_timed = 1 if method == "astroml" else 12
                if method != "bayesmix" and est is not None and est * n_timed > limit:
                    row.update(status="skipped", estimate_s=est * n_timed,
                               reason=f"estimated {est * n_timed:.0f} s > limit {limit:.0f} s")
                else:
                    if ours and ours.get("converge_iters"):
                        env["BENCH_EXPECTED_ITERS"] = str(ours["converge_iters"])
                    t0 = time.perf_counter()
                    row.update(_run_worker(method, path, limit, timeout=3 * limit + 120, env=env))
                    row["wall_s"] = time.perf_counter() - t0
                    if row.get("converge_status") == "skipped":
                        row["reason"] = row.pop("reason", None)
                if method == "bayesmix":
                    ours = row
                results.append(row)
                print(f"  N={n:>8d} {method:9s} {row['status']:7s} "
                      f"iter={_fmt(row.get('iter_s'), '.4g')} s "
                      f"converge={_fmt(row.get('converge_s'), '.4g')} s "
                      f"{row.get('reason') or ''}", file=log, flush=True)
            for row in results:
                if row["n_stars"] == n and ours and ours.get("iter_s") and row.get("iter_s"):
                    row["ratio_vs_bayesmix"] = row["iter_s"] / ours["iter_s"]

    largest = max(ns)

    def at(method):
        rows = [r for r in results if r["n_stars"] == largest and r["method"] == method]
        return rows[0] if rows else {}

    targets = {
        "iter_over_pass_le_2": (at("bayesmix").get("iter_over_pass") or np.inf) <= 2.0
        if at("bayesmix").get("iter_over_pass") else None,
        "astroml_ratio_ge_50": (at("astroml").get("ratio_vs_bayesmix") >= 50)
        if at("astroml").get("ratio_vs_bayesmix") else None,
        "pygmmis_ratio_ge_5": (at("pygmmis").get("ratio_vs_bayesmix") >= 5)
        if at("pygmmis").get("ratio_vs_bayesmix") else None,
        "sklearn_ratio_ge_1": (at("sklearn").get("ratio_vs_bayesmix") >= 1)
        if at("sklearn").get("ratio_vs_bayesmix") else None,
    }
    report = {
        "machine": _versions(),
        "settings": {"n_features": D, "n_components": K, "n_values": ns, "tol_total": TOL_TOTAL,
                     "limit_s": limit, "quick": args.quick},
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
          f"time per EM iteration, to convergence (|dlogL| < {TOL_TOTAL} nats), peak RSS")
    head = (f"{'N':>8} {'method':9} {'s/iter':>10} {'x ours':>8} {'converge s':>11} "
            f"{'iters':>6} {'peak MiB':>9}  note")
    print(head)
    print("-" * len(head))
    for r in results:
        note = r.get("reason") or ""
        if r["method"] == "bayesmix" and r.get("iter_over_pass"):
            note = (f"log-density pass {r['logdensity_pass_s']:.4g} s; iter/pass "
                    f"{r['iter_over_pass']:.2f}; first call {r['first_call_s']:.3g} s")
        print(f"{r['n_stars']:>8d} {r['method']:9} {_fmt(r.get('iter_s'), '10.4g')} "
              f"{_fmt(r.get('ratio_vs_bayesmix'), '8.1f')} {_fmt(r.get('converge_s'), '11.4g')} "
              f"{_fmt(r.get('converge_iters'), '6d')} {_fmt(r.get('peak_mb'), '9.0f')}  {note}")
    print()
    print(f"targets at N={largest}: " + ", ".join(f"{k}={v}" for k, v in targets.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
