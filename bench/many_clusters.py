"""Many globular clusters at once: the hierarchical fit against fitting them one by one.

Reads Baumgardt & Hilker's per-star velocities (``../shared/data/baumgardt_gc_rv``, or
``$BAYESMIX_SHARED_DATA``), keeps the clusters with at least ``--min-stars`` stars (the
others are listed), and times

* the hierarchical fit of all of them (:func:`bayesmix.cluster_runs.scan_catalogue` finds
  each cluster's member peak with the member fraction falling with ``DCEN`` and leaves out
  the clusters that show no members; :func:`bayesmix.cluster_runs.fit_groups` fits the
  others in one program, partial pooling of dispersions, fractions and radial slopes),
  compilation included; and
* fitting them one by one with :func:`bayesmix.models.cluster_field_model` and
  :func:`bayesmix.sampling.sample_posterior` (EM start, NUTS), the same chains and draws,
  compilation included (each cluster has its own number of stars). ``--one-by-one N``
  times the first N clusters (in order of size, smallest first, then every k-th so the
  sizes are spread) and scales the total by the stars (reported as extrapolated).

It prints both times, the ratio, the convergence of the hierarchical fit (max R-hat, min
ESS, divergences), the clusters left out as not detected, and how many clusters'
systemic velocities agree with Baumgardt's catalogue means within 3 combined standard
deviations.

Usage::

    python bench/many_clusters.py                      # all clusters; one by one: 12, extrapolated
    python bench/many_clusters.py --n-clusters 20 --one-by-one 20
    python bench/many_clusters.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _shared() -> Path:
    return Path(os.environ.get("BAYESMIX_SHARED_DATA") or HERE.parent.parent / "shared" / "data")


def _catalogue(n_clusters: int | None, min_stars: int):
    from bayesmix.catalogue import read_catalogue
    from bayesmix.cluster_runs import select_groups

    path = _shared() / "baumgardt_gc_rv" / "appendix_combined_table.txt"
    cat = read_catalogue(path, values=["RV"], errors=["E_RV"], covariates=["DCEN"])
    names, counts = np.unique(np.char.strip(np.asarray(cat.table["Cluster"]).astype(str)), return_counts=True)
    chosen = None
    if n_clusters is not None:
        order = np.argsort(-counts)  # the biggest first: the hard part of the data
        chosen = [str(n) for n in names[order[:n_clusters]]]
    return select_groups(cat, "Cluster", chosen, min_stars)


def _hierarchical(cat, chains, warmup, samples):
    from bayesmix.cluster_runs import (
        cluster_table,
        fit_groups,
        keep_detected,
        many_clusters_from_catalogue,
        read_reference_velocities,
        scan_catalogue,
    )

    t0 = time.perf_counter()
    names, scan = scan_catalogue(cat, "Cluster", radius="DCEN")
    t_scan = time.perf_counter() - t0
    cat, undetected, scan = keep_detected(cat, "Cluster", names, scan)
    model, data, group, log_radius = many_clusters_from_catalogue(cat, "Cluster", radius="DCEN", scan=scan)
    fit = fit_groups(0, model, data, group, log_radius, num_chains=chains, num_warmup=warmup,
                     num_samples=samples)
    seconds = time.perf_counter() - t0
    ref = read_reference_velocities(_shared() / "baumgardt_gc_rv" / "orbits_table.txt")
    table = cluster_table(fit, reference=ref, scan=scan)
    return fit, table, seconds, t_scan, cat, undetected


def _one_by_one(cat, names, chains, warmup, samples):
    from bayesmix.catalogue import read_catalogue
    from bayesmix.models import cluster_field_model
    from bayesmix.sampling import sample_posterior

    labels = np.char.strip(np.asarray(cat.table["Cluster"]).astype(str))
    t0 = time.perf_counter()
    for name in names:
        rows = labels == name
        sub = read_catalogue(cat.table[rows], values=["RV"], errors=["E_RV"], covariates=["DCEN"])
        sample_posterior(0, cluster_field_model(sub), sub, num_chains=chains, num_warmup=warmup,
                         num_samples=samples, chain_method="sequential", progress_bar=False)
    return time.perf_counter() - t0, int(rows.sum()) if names else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-clusters", type=int, default=None, help="the N biggest clusters (default all)")
    parser.add_argument("--one-by-one", type=int, default=12, help="clusters timed one by one (default 12)")
    parser.add_argument("--min-stars", type=int, default=5)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", default=None, help="write the per-cluster table here (e.g. clusters.csv)")
    args = parser.parse_args(argv)

    cat, skipped = _catalogue(args.n_clusters, args.min_stars)
    fit, table, t_h, t_scan, cat, undetected = _hierarchical(cat, args.chains, args.warmup, args.samples)
    names = list(table["cluster"])
    sizes = np.asarray(table["n_stars"])
    k = min(args.one_by_one, len(names))
    # A spread of sizes: every j-th cluster in size order.
    picked = [names[i] for i in np.argsort(sizes)[np.linspace(0, len(names) - 1, k).round().astype(int)]]
    t_sub, _ = _one_by_one(cat, picked, args.chains, args.warmup, args.samples)
    stars_sub = int(sum(sizes[names.index(n)] for n in picked))
    # Per-cluster cost is set-up and compilation plus a part that grows with the stars: scale by count.
    t_all = t_sub * len(names) / k
    pulls = np.asarray(table["mu_pull"])
    finite = np.isfinite(pulls)
    outliers = [(str(r["cluster"]), round(float(r["mu_pull"]), 2), round(float(r["mu_p50"]), 2),
                 round(float(r["rv_ref"]), 2), round(float(r["n_members"]), 1))
                for r in table if np.isfinite(r["mu_pull"]) and abs(r["mu_pull"]) > 3]
    result = {
        "n_clusters": len(names), "n_stars": int(cat.n_stars), "skipped": list(skipped["group"]),
        "not_detected": list(undetected["group"]), "scan_seconds": round(t_scan, 1),
        "chains": args.chains, "warmup": args.warmup, "samples": args.samples,
        "hierarchical_seconds": round(t_h, 1), "n_params": fit.settings["n_params"],
        "one_by_one_clusters_timed": k, "one_by_one_stars_timed": stars_sub,
        "one_by_one_seconds_timed": round(t_sub, 1),
        "one_by_one_seconds_all": round(t_all, 1), "one_by_one_extrapolated": k < len(names),
        "ratio_one_by_one_over_hierarchical": round(t_all / t_h, 2),
        "max_r_hat": round(fit.max_r_hat, 4), "min_ess": round(fit.min_ess, 1),
        "divergences": fit.n_divergent,
        "reference_compared": int(finite.sum()),
        "within_3_sd": int((np.abs(pulls[finite]) <= 3).sum()),
        "outliers_beyond_3_sd": outliers,
    }
    if args.save:
        table.write(args.save, overwrite=True)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return 0
    for key, value in result.items():
        print(f"{key:36s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
