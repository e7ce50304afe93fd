"""The ``bayesmix`` command line: a thin shell over the library (the only layer that prints).

Commands so far::

    bayesmix simulate cluster-field --out ngc288_sim.fits [--n-stars 386] [--seed 0]
    bayesmix simulate disc --out disc_sim.fits [--n-stars 2000] [--seed 0]
    bayesmix --version
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bayesmix import __version__

SIMULATIONS = ("cluster-field", "disc")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayesmix",
        description="Bayesian Gaussian mixtures with measurement errors for star catalogues.",
    )
    parser.add_argument("--version", action="version", version=f"bayesmix {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and cuts")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sim = sub.add_parser("simulate", help="write a simulated catalogue with its truth")
    sim.add_argument("kind", choices=SIMULATIONS,
                     help="cluster-field: NGC 288-like velocities with radii; "
                          "disc: thin/thick disc in [Fe/H]-[Mg/Fe]")
    sim.add_argument("--out", required=True, type=Path,
                     help="output table (.fits, .csv, .ecsv or .vot), written atomically")
    sim.add_argument("--n-stars", type=int, default=None,
                     help="number of stars (default: 386 for cluster-field, 2000 for disc)")
    sim.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    return parser


def _simulate(args) -> int:
    from bayesmix.catalogue import make_provenance, write_table
    from bayesmix.simulate import simulate_cluster_field, simulate_mixture, thin_thick_disc_params

    if args.n_stars is not None and args.n_stars < 1:
        raise ValueError(f"--n-stars must be at least 1; got {args.n_stars}.")
    if args.kind == "cluster-field":
        sim = simulate_cluster_field(args.seed, args.n_stars or 386)
        truth = sim.truth._asdict()
    else:
        sim = simulate_mixture(args.seed, thin_thick_disc_params(), args.n_stars or 2000,
                               error_scale=[0.05, 0.04], max_error_correlation=0.3,
                               feature_names=["FeH", "MgFe"])
        truth = {k: v.tolist() for k, v in sim.truth._asdict().items()}
    provenance = make_provenance(command=["simulate", args.kind], seed=args.seed,
                                 n_stars=sim.catalogue.n_stars, truth=truth)
    path = write_table(sim.table, args.out, provenance=provenance)
    print(f"wrote {sim.catalogue.n_stars} simulated stars ({args.kind}, seed {args.seed}) to {path}")
    for name, value in truth.items():
        print(f"  true {name}: {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors in input give 2 and a message)."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "simulate":
            return _simulate(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bayesmix {args.command}: error: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects others


if __name__ == "__main__":
    sys.exit(main())
