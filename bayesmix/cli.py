"""The ``bayesmix`` command line: a thin shell over the library (the only layer that prints).

Commands so far::

    bayesmix demo [--out DIR] [--seed 0] [--n-stars 386] [--num-samples 1000] [--no-cache]
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
    demo = sub.add_parser("demo", help="simulate NGC 288-like velocities, fit them (EM then NUTS), "
                                       "print the posterior beside the truth, write the outputs")
    demo.add_argument("--out", type=Path, default=None,
                      help="output folder (default: bayesmix-demo-seed<SEED> in the current folder)")
    demo.add_argument("--seed", type=int, default=0, help="PRNG seed of data and sampler (default 0)")
    demo.add_argument("--n-stars", type=int, default=386, help="simulated stars (default 386, as NGC 288)")
    demo.add_argument("--num-warmup", type=int, default=300, help="NUTS warmup per chain (default 300)")
    demo.add_argument("--num-samples", type=int, default=1000, help="NUTS draws per chain (default 1000)")
    demo.add_argument("--num-chains", type=int, default=4, help="NUTS chains (default 4)")
    demo.add_argument("--no-cache", action="store_true",
                      help="do not keep compiled programs in ~/.cache/bayesmix (or $BAYESMIX_CACHE)")
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


TUTORIAL = ("mean1", "sigma1", "mean2", "sigma2", "frac1")
_TUTORIAL_MEANING = {"mean1": "cluster systemic velocity [km/s]", "sigma1": "cluster dispersion [km/s]",
                     "mean2": "field mean velocity [km/s]", "sigma2": "field dispersion [km/s]",
                     "frac1": "member fraction"}


def _demo(args) -> int:
    import json

    from astropy.table import Table

    from bayesmix.catalogue import atomic_write, make_provenance, write_table
    from bayesmix.diagnostics import check_convergence, summary
    from bayesmix.membership import membership_probabilities, membership_table
    from bayesmix.models import cluster_field_model
    from bayesmix.sampling import enable_compilation_cache, sample_posterior
    from bayesmix.simulate import simulate_cluster_field

    for name in ("n_stars", "num_warmup", "num_samples", "num_chains"):
        if getattr(args, name) < (0 if name == "num_warmup" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}.")
    out = args.out or Path(f"bayesmix-demo-seed{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_cache:
        enable_compilation_cache()
    sim = simulate_cluster_field(args.seed, args.n_stars)
    true = sim.truth.tutorial_values()
    print(f"bayesmix demo: {args.n_stars} NGC 288-like stars (seed {args.seed}); EM start, then NUTS "
          f"{args.num_chains} x ({args.num_warmup} + {args.num_samples})", flush=True)
    model = cluster_field_model(sim.catalogue)
    fit = sample_posterior(args.seed, model, sim.catalogue, num_chains=args.num_chains,
                           num_warmup=args.num_warmup, num_samples=args.num_samples)
    table = summary(fit, var_names=list(TUTORIAL))
    report = check_convergence(fit)
    print()
    print(f"{'parameter':8s} {'meaning':34s} {'true':>8s} {'median':>9s} {'-1 sd':>8s} {'+1 sd':>8s} "
          f"{'r_hat':>6s} {'ess':>6s}")
    for name in TUTORIAL:
        row = table.loc[name]
        print(f"{name:8s} {_TUTORIAL_MEANING[name]:34s} {true[name]:8.3f} {row['p50']:9.3f} "
              f"{row['p50'] - row['p16']:8.3f} {row['p84'] - row['p50']:8.3f} {row['r_hat']:6.3f} "
              f"{row['ess_bulk']:6.0f}")
    spec = {"command": "demo", "n_stars": args.n_stars, "num_chains": args.num_chains,
            "num_warmup": args.num_warmup, "num_samples": args.num_samples}
    provenance = make_provenance(spec=spec, seed=args.seed, truth=true, dropped_rows={},
                                 converged=bool(report.ok))
    members = membership_probabilities(fit)
    stars = membership_table(fit, members, provenance=provenance)
    written = [write_table(stars, out / "membership.fits", provenance=provenance),
               write_table(stars, out / "membership.csv", provenance=provenance)]
    summary_table = Table.from_pandas(table.reset_index().rename(columns={"index": "parameter"}))
    written.append(write_table(summary_table, out / "summary.csv", provenance=provenance))
    fit.idata.attrs["bayesmix_provenance"] = json.dumps(provenance, default=str)
    written.append(atomic_write(out / "posterior.nc", lambda tmp: fit.idata.to_netcdf(tmp)))
    em = fit.em
    em_record = {"weights": em.params.weights.tolist(), "means": em.params.means.tolist(),
                 "covariances": em.params.covariances.tolist(), "log_likelihood": em.log_likelihood,
                 "n_iter": em.n_iter, "converged": em.converged, "provenance": provenance}
    written.append(atomic_write(out / "em.json", lambda tmp: Path(tmp).write_text(
        json.dumps(em_record, indent=1, default=float))))
    written += _demo_figures(fit, members, sim, true, out)
    n_members = int((members.labels == 0).sum())
    print(f"\n{n_members} of {args.n_stars} stars are more likely members than not "
          f"({int((sim.labels == 0).sum())} simulated members).")
    print(f"wrote {', '.join(p.name for p in written)} to {out}/")
    return 0


def _demo_figures(fit, members, sim, true, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only: the demo never opens a window
    import matplotlib.pyplot as plt

    from bayesmix.catalogue import atomic_write
    from bayesmix.plotting import corner_plot, membership_radius_plot

    paths = []
    fig = corner_plot(fit, list(TUTORIAL), truths=true)
    paths.append(atomic_write(out / "corner.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110)))
    plt.close(fig)
    cat = sim.catalogue
    fig = membership_radius_plot(cat.values[:, 0], cat.covariates["R_proj"], members.mean[:, 0],
                                 value_label="line-of-sight velocity [km/s]",
                                 radius_label="projected radius [arcsec]")
    fig.axes[0].set_title("simulated NGC 288-like stars: posterior membership")
    paths.append(atomic_write(out / "membership_radius.png",
                              lambda tmp: fig.savefig(tmp, format="png", dpi=110)))
    plt.close(fig)
    return paths


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
    if args.command == "demo":
        from bayesmix.sampling import set_host_device_count

        set_host_device_count()  # before JAX starts: chains on every core where that pays
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "simulate":
            return _simulate(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bayesmix {args.command}: error: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects others


if __name__ == "__main__":
    sys.exit(main())
