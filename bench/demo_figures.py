"""What the figures cost ``bayesmix demo``: wall time with the drawing processes, drawn in the
run's own process, and with no figures.

Each mode runs ``bayesmix demo`` in a fresh process, the modes alternating so that a slow
spell of a shared machine hits them alike; one untimed run first fills a temporary program
store, so every timed run is a repeat run (as a user's second demo). The figures' cost is a
mode's median wall time minus that of the runs without figures, and their share is that
cost over the mode's median wall time.

Modes: ``processes`` (the default: two drawing processes beside the run),
``in_process`` (``BAYESMIX_DRAWING_PROCESSES=0``), ``none`` (``--no-figures``).

Usage::

    python bench/demo_figures.py                  # 8 rounds of the three modes
    python bench/demo_figures.py --rounds 4 --save figures.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {"processes": ({}, []), "in_process": ({"BAYESMIX_DRAWING_PROCESSES": "0"}, []),
         "none": ({}, ["--no-figures"])}


def _run_demo(mode: str, folder: Path, store: Path) -> float:
    """Wall seconds of one ``bayesmix demo`` in a fresh process; raises if it fails."""
    extra_env, extra_args = MODES[mode]
    env = {**os.environ, "BAYESMIX_CACHE": str(store), **extra_env}
    cmd = [sys.executable, "-m", "bayesmix.cli", "demo", "--out", str(folder), "--exit-zero", *extra_args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{mode}: bayesmix demo exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    n_png = len(list(folder.glob("*.png")))
    if (n_png == 0) != (mode == "none"):
        raise RuntimeError(f"{mode}: {n_png} PNGs written")
    return wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="timed runs per mode (8)")
    parser.add_argument("--save", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        _run_demo("processes", Path(tmp) / "warm", store)  # fills the store: untimed
        for r in range(args.rounds):
            for mode in MODES:
                walls[mode].append(_run_demo(mode, Path(tmp) / f"{mode}-{r}", store))
                print(f"  round {r} {mode:10s} {walls[mode][-1]:6.2f} s", flush=True)
    none = statistics.median(walls["none"])
    rows = []
    print(f"\nbayesmix demo, {os.cpu_count()} cores, medians of {args.rounds} fresh processes per mode")
    print(f"{'mode':12s} {'wall s':>7s} {'figures s':>10s} {'share':>6s}")
    for mode, values in walls.items():
        median = statistics.median(values)
        cost = median - none
        share = cost / median if mode != "none" else 0.0
        rows.append({"mode": mode, "median_wall_s": median, "figures_s": cost, "share": share,
                     "walls_s": values})
        print(f"{mode:12s} {median:7.2f} {cost:10.2f} {100 * share:5.1f}%")
    if args.save:
        Path(args.save).write_text(json.dumps({"cores": os.cpu_count(), "rounds": args.rounds, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
