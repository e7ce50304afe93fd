"""Never confidently wrong: default runs on simulated contaminated fields, against today's k-means++ start.

Each field is :func:`bayesmix.simulate.simulate_contaminated_field` with a new seed: about
70 cluster members (dispersion 4 km/s, Plummer radii) among 400 stars, a broad halo of two
Gaussians (100 and 55 km/s) and a cold stream (about 20 stars, 5 km/s) 80-120 km/s from the
cluster, spread evenly in radius; the cluster's velocity is drawn in [-120, 120] km/s.

Runs per field
--------------
* ``baseline``: the pipeline before this change: EM with ``init="kmeans++"`` (``n_init=4``,
  no density-peak starts), every chain started at a draw from the Laplace approximation of the
  single best optimum (``start_dispersion=1``), and only the old checks (R-hat, ESS,
  divergences; no mode check, no model check).
* ``default``: ``bayesmix fit`` with a velocity-only cluster-field spec and every default
  (:func:`bayesmix.workflow.run_spec`): density-peak starts, chains started in every EM
  optimum that holds posterior mass, mode check and posterior predictive model check.
* ``radius``: the same with a logistic radius law on ``R_proj``.

A run *finds the cluster* when its posterior median of the cluster's mean is within 5 km/s
of the truth and its dispersion below 12 km/s (the stream lies 80 km/s or more away; a
piece of the halo is tens of km/s wide). Its *EM start is on the cluster* when the best EM
optimum's narrowest component passes the same test (its mean and standard deviation). A run
is *flagged* when any check fails (the exit status of ``bayesmix fit`` is then 3).

Timing: the added cost of the new initialisation (EM with ``init="auto"`` against
``init="kmeans++"``, both compiled beforehand, so this is run time only), of the extra
Laplace approximations at the other optima, and of the model check, against the whole
default run, at N = 400 and N = 20000 (the field scaled up), each in this process with
the compilation cache warm.

Usage::

    python bench/robustness.py                   # 50 fields, timing at N = 400 and 20000
    python bench/robustness.py --fields 10       # quicker
    python bench/robustness.py --json            # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
import warnings

import numpy as np

FOUND_MEAN_KMS = 5.0
FOUND_SIGMA_KMS = 12.0


def _versions():
    import jax
    import numpyro

    import bayesmix

    return {"bayesmix": bayesmix.__version__, "jax": jax.__version__, "numpyro": numpyro.__version__,
            "python": platform.python_version(), "cpu_devices": len(jax.devices("cpu"))}


def _spec(seed, n_stars, radius, num_samples=1000):
    from bayesmix.config import RunSpec

    model = {"kind": "cluster-field"}
    if radius:
        model["radius_fraction"] = {"covariate": "R_proj"}
    return RunSpec.from_dict({"name": "robustness", "seed": seed,
                              "data": {"simulate": "contaminated-field", "n_stars": n_stars},
                              "model": model, "sampler": {"num_samples": num_samples},
                              "output": {"figures": False, "formats": ["csv"]}})


def _verdict(post, truth):
    mean1 = float(np.median(post["mean1"].values))
    sigma1 = float(np.median(post["sigma1"].values))
    found = abs(mean1 - truth["cluster_mean"]) < FOUND_MEAN_KMS and sigma1 < FOUND_SIGMA_KMS
    lo, hi = np.percentile(post["mean1"].values.ravel(), [16, 84])
    slo, shi = np.percentile(post["sigma1"].values.ravel(), [16, 84])
    return {"found": bool(found), "mean1": mean1, "sigma1": sigma1,
            "mean1_covered": bool(lo <= truth["cluster_mean"] <= hi),
            "sigma1_covered": bool(slo <= truth["cluster_dispersion"] <= shi)}


def _em_found(em, truth):
    """Whether the best EM optimum's narrowest component is on the cluster (the same criteria)."""
    sd = np.sqrt(np.asarray(em.covariances)[:, 0, 0])
    narrow = int(np.argmin(sd))
    mean = float(np.asarray(em.means)[narrow, 0])
    return bool(abs(mean - truth["cluster_mean"]) < FOUND_MEAN_KMS and sd[narrow] < FOUND_SIGMA_KMS)


def run_baseline(seed, sim):
    """EM k-means++ x 4, chains from the single best optimum, old checks only."""
    from bayesmix.diagnostics import check_convergence
    from bayesmix.em import fit_em
    from bayesmix.models import cluster_field_model
    from bayesmix.sampling import sample_posterior

    em = fit_em(seed, sim.catalogue, 2, n_init=4, init="kmeans++")
    # One start point, as before, and chains drawn from its Laplace approximation (no inflation).
    em = dataclasses.replace(em, optima=em.optima[:1])
    fit = sample_posterior(seed, cluster_field_model(sim.catalogue), sim.catalogue, init=em,
                           progress_bar=False, start_dispersion=1.0)
    report = check_convergence(fit, modes=False, warn=False)
    return {"flagged": not report.ok, "problems": list(report.reasons)}, fit.idata.posterior, em


def run_default(seed, directory, radius):
    from bayesmix.workflow import run_spec

    result = run_spec(_spec(seed, 400, radius), directory=directory)
    return {"flagged": not result.ok, "problems": result.problems}, result


def fields(n_fields, out):
    from bayesmix.simulate import simulate_named

    rows = []
    for seed in range(n_fields):
        sim, truth = simulate_named(seed, "contaminated-field", 400)
        row = {"seed": seed, "cluster_mean": truth["cluster_mean"], "stream_mean": truth["stream_mean"]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base, post, em = run_baseline(seed, sim)
            row["baseline"] = {**base, **_verdict(post, truth), "em_found": _em_found(em, truth)}
            for name, radius in (("default", False), ("radius", True)):
                info, result = run_default(seed, f"{out}/{name}-{seed}", radius)
                row[name] = {**info, **_verdict(result.fit.idata.posterior, truth),
                             "n_members_true": truth["n_members"],
                             "n_members_found": float(result.members.mean[:, 0].sum()),
                             "em_optima": len(result.fit.em.optima),
                             "em_found": _em_found(result.fit.em, truth),
                             "chain_modes": int(np.size(result.fit.idata.posterior.attrs.get(
                                 "start_mode_log_mass", [0])))}
        rows.append(row)
        print(f"field {seed:2d}: " + "  ".join(
            f"{k} {'found' if row[k]['found'] else 'WRONG'}{' (flagged)' if row[k]['flagged'] else ''}"
            for k in ("baseline", "default", "radius")), file=sys.stderr, flush=True)
    return rows


def _timed(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def timing(n_stars, out):
    """Seconds of a default run and of the parts this change added, warm caches."""
    from bayesmix.diagnostics import check_model_fit
    from bayesmix.em import fit_em
    from bayesmix.simulate import simulate_named
    from bayesmix.workflow import run_spec

    sim, _ = simulate_named(7, "contaminated-field", n_stars)
    spec = _spec(7, n_stars, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_spec(spec, directory=f"{out}/warm-{n_stars}")  # compile everything once
        t0 = time.perf_counter()
        result = run_spec(spec, directory=f"{out}/timed-{n_stars}")
        total = time.perf_counter() - t0
        auto = _timed(lambda: fit_em(7, sim.catalogue, 2, n_init=4, init="auto"))
        kmeans = _timed(lambda: fit_em(7, sim.catalogue, 2, n_init=4, init="kmeans++"))
        check = _timed(lambda: check_model_fit(7, result.fit, warn=False))
    n_modes = int(np.size(result.fit.idata.posterior.attrs.get("start_mode_log_mass", [0])))
    added = max(auto - kmeans, 0.0) + check
    return {"n_stars": n_stars, "default_run_s": total, "em_auto_s": auto, "em_kmeans_s": kmeans,
            "init_added_s": auto - kmeans, "model_check_s": check, "chain_start_modes": n_modes,
            "added_fraction": added / total}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=50)
    parser.add_argument("--timing-n", type=int, nargs="*", default=[400, 20000])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from bayesmix.sampling import enable_compilation_cache, set_host_device_count

    set_host_device_count()
    with tempfile.TemporaryDirectory() as out:
        enable_compilation_cache(f"{out}/cache")
        rows = fields(args.fields, out)
        times = [timing(n, out) for n in args.timing_n]
    summary = {}
    for name in ("baseline", "default", "radius"):
        found = [r[name]["found"] for r in rows]
        wrong = [r for r in rows if not r[name]["found"]]
        summary[name] = {
            "found": int(sum(found)), "fields": len(rows),
            "em_found": int(sum(r[name]["em_found"] for r in rows)),
            "wrong_flagged": int(sum(r[name]["flagged"] for r in wrong)), "wrong": len(wrong),
            "right_flagged": int(sum(r[name]["flagged"] for r in rows if r[name]["found"])),
            "mean1_coverage_68": float(np.mean([r[name]["mean1_covered"] for r in rows])),
            "sigma1_coverage_68": float(np.mean([r[name]["sigma1_covered"] for r in rows])),
        }
    record = {"versions": _versions(), "summary": summary, "timing": times, "fields": rows}
    if args.json:
        print(json.dumps(record, indent=1))
        return
    print(f"{len(rows)} contaminated fields (N = 400); a run finds the cluster when its median mean is "
          f"within {FOUND_MEAN_KMS:g} km/s of the truth and its dispersion below {FOUND_SIGMA_KMS:g} km/s")
    print(f"{'run':10s} {'found':>8s} {'EM on it':>9s} {'wrong runs flagged':>20s} "
          f"{'right runs flagged':>20s} {'68% cover mean1':>16s} {'68% cover sigma1':>17s}")
    for name, s in summary.items():
        print(f"{name:10s} {s['found']:>3d}/{s['fields']:<4d} {s['em_found']:>5d}/{s['fields']:<3d} "
              f"{s['wrong_flagged']:>13d}/{s['wrong']:<6d} "
              f"{s['right_flagged']:>13d}/{s['found']:<6d} {s['mean1_coverage_68']:>16.2f} "
              f"{s['sigma1_coverage_68']:>17.2f}")
    print("\nadded wall time (warm caches; medians of 3):")
    for t in times:
        print(f"  N = {t['n_stars']:6d}: default run {t['default_run_s']:.1f} s; EM auto "
              f"{t['em_auto_s']:.2f} s vs k-means++ {t['em_kmeans_s']:.2f} s; model check "
              f"{t['model_check_s']:.2f} s; added {100 * t['added_fraction']:.1f}% of the run "
              f"(chains started in {t['chain_start_modes']} mode(s))")
    print(f"versions: {record['versions']}")


if __name__ == "__main__":
    main()
