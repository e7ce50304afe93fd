"""What the figures cost ``bayesmix demo``: wall time with the drawing processes, drawn in the
run's own process, and with no figures.

Each mode runs ``bayesmix demo`` in a fresh process, the modes alternating so that a slow
spell of a shared machine hits them alike; one untimed run first fills a temporary program
store, so every timed run is a repeat run (as a user's second demo). The figures' cost is a
mode's median wall time minus that of the runs without figures, and their share is that
cost over the mode's median wall time.

Modes: ``processes`` (the default: drawing processes beside the run, one on two or three
cores, two from four), ``in_process`` (``BAYESMIX_DRAWING_PROCESSES=0``), ``none``
(``--no-figures``), and on request ``two_processes`` (``BAYESMIX_DRAWING_PROCESSES=2``).
As a shared machine's wall times drift by more than the figures cost, each round's
difference to ``in_process`` is also reported (its median over rounds: ``paired_vs_in_process_s``,
negative when the mode finished sooner).

Usage::

    python bench/demo_figures.py                  # 8 rounds of the three default modes
    python bench/demo_figures.py --rounds 4 --save figures.json
    python bench/demo_figures.py --modes processes two_processes in_process none
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
         "none": ({}, ["--no-figures"]), "two_processes": ({"BAYESMIX_DRAWING_PROCESSES": "2"}, [])}
DEFAULT_MODES = ["processes", "in_process", "none"]


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
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=DEFAULT_MODES,
                        help="modes to time (in_process and none are always included)")
    args = parser.parse_args(argv)
    modes = list(dict.fromkeys([*args.modes, "in_process", "none"]))
    walls: dict[str, list[float]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        _run_demo("processes", Path(tmp) / "warm", store)  # fills the store: untimed
        for r in range(args.rounds):
            for mode in modes:
                walls[mode].append(_run_demo(mode, Path(tmp) / f"{mode}-{r}", store))
                print(f"  round {r} {mode:13s} {walls[mode][-1]:6.2f} s", flush=True)
    none = statistics.median(walls["none"])
    rows = []
    print(f"\nbayesmix demo, {os.cpu_count()} cores, medians of {args.rounds} fresh processes per mode")
    print(f"{'mode':14s} {'wall s':>7s} {'figures s':>10s} {'share':>6s} {'paired vs in_process s':>23s}")
    for mode, values in walls.items():
        median = statistics.median(values)
        cost = median - none
        share = cost / median if mode != "none" else 0.0
        paired = statistics.median(a - b for a, b in zip(values, walls["in_process"], strict=True))
        rows.append({"mode": mode, "median_wall_s": median, "figures_s": cost, "share": share,
                     "paired_vs_in_process_s": paired, "walls_s": values})
        print(f"{mode:14s} {median:7.2f} {cost:10.2f} {100 * share:5.1f}% {paired:23.2f}")
    if args.save:
        Path(args.save).write_text(json.dumps({"cores": os.cpu_count(), "rounds": args.rounds, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
