"""The ``bayesmix`` command line: a thin shell over the library (the only layer that prints).

Commands::

    bayesmix demo [--out DIR] [--seed 0] [--n-stars 386] [--num-samples 1000] [--no-figures] [--exit-zero]
    bayesmix fit MODEL.toml [--out DIR] [--seed N] [--resume] [--num-samples N] [--no-figures] [--exit-zero]
    bayesmix scan MODEL.toml [--k 1..8] [--loo] [--out DIR] [--seed N]
    bayesmix simulate cluster-field --out ngc288_sim.fits [--n-stars 386] [--seed 0]
    bayesmix simulate contaminated-field --out field_sim.fits [--n-stars 400] [--seed 0]
    bayesmix simulate disc --out disc_sim.fits [--n-stars 2000] [--seed 0]
    bayesmix --version

Exit status (:data:`EXIT_OK`, :data:`EXIT_INPUT_ERROR`, :data:`EXIT_CHECKS_FAILED`,
:data:`EXIT_ENVIRONMENT_ERROR`, :data:`EXIT_INTERNAL_ERROR`, :data:`EXIT_INTERRUPTED`): 0 when
the run finished and every check passed; 2 for bad input (a message names the file, column or
key and the fix: a catalogue or model file that is missing, damaged or wrong, a path that is a
file where a folder is needed, a damaged checkpoint, an output folder held by another run); 3
when ``fit`` or ``demo`` finished and wrote its outputs but a check failed: not converged
(R-hat, ESS, a quantity that never moved), divergent transitions, chains in different modes,
or a model misfit. ``--exit-zero`` gives 0 in that case too (the checks are still printed and
stored); 4 when the machine stopped the run: a file or folder that cannot be read or written
(permissions, a read-only or full disk), a missing or broken dependency, or too little memory;
1 for a bug in bayesmix (one line; please report it); 130 when interrupted (Ctrl-C). Never a
raw traceback (``-v`` / ``--verbose``, before or after the command, logs it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

# Light modules only (no JAX) at the top: `bayesmix --help`, `--version` and a bad argument stay fast,
# JAX starts after set_host_device_count, and a broken dependency imported inside a command is
# reported as exit status 4. The commands import the layers they run.
from bayesmix import __version__
from bayesmix._choices import SIMULATIONS
from bayesmix.config import RunSpec, load_spec, parse_k_range
from bayesmix.runfolder import FolderBusyError

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_INPUT_ERROR = 2
EXIT_CHECKS_FAILED = 3
EXIT_ENVIRONMENT_ERROR = 4
EXIT_INTERRUPTED = 130

_EPILOG = """exit status: 0 finished and every check passed; 2 bad input (the message says what and how to fix
it; also a damaged checkpoint or an output folder in use by another run); 3 (fit, demo) finished and
wrote the outputs, but a check failed: not converged, divergences, chains in different modes, or model
misfit (--exit-zero: 0 instead); 4 the machine stopped the run (a file or folder that cannot be read or
written, a full disk, a missing dependency, no memory); 1 a bug in bayesmix (-v shows the traceback);
130 interrupted."""


def _k_range(text: str) -> tuple[int, int]:
    try:
        return parse_k_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayesmix",
        description="Bayesian Gaussian mixtures with measurement errors for star catalogues.",
        epilog=_EPILOG,
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
                      help="do not keep compiled programs in ~/.cache/bayesmix (or $BAYESMIX_CACHE; "
                           "BAYESMIX_CACHE=off does the same)")
    fit = sub.add_parser("fit", help="run a model file: catalogue, EM start, NUTS, checks, memberships, "
                                     "outputs",
                         epilog=_EPILOG)
    fit.add_argument("model", type=Path, help="run specification (TOML), e.g. models/ngc288.toml")
    scan = sub.add_parser("scan", help="BIC/AIC over K (EM with restarts), LOO from NUTS on request")
    scan.add_argument("model", type=Path, help="run specification (TOML); [model] gives all but K")
    scan.add_argument("--k", type=_k_range, default=None, metavar="KMIN..KMAX",
                      help="components to try, e.g. 1..8 (default: [scan] k of the model file)")
    scan.add_argument("--loo", action="store_true", help="also sample each K with NUTS and compare PSIS-LOO")
    for command in (fit, scan):
        command.add_argument("--out", type=Path, default=None,
                             help="output folder (default: [output] directory, else bayesmix-output-"
                                  "<name>-seed<seed> or bayesmix-scan-<name>-seed<seed>)")
        command.add_argument("--seed", type=int, default=None, help="PRNG seed (default: the file's seed)")
        command.add_argument("--num-warmup", type=int, default=None, help="override [sampler] num_warmup")
        command.add_argument("--num-samples", type=int, default=None, help="override [sampler] num_samples")
        command.add_argument("--num-chains", type=int, default=None, help="override [sampler] num_chains")
        command.add_argument("--no-figures", action="store_true", help="write no PNGs")
        command.add_argument("--no-cache", action="store_true",
                             help="do not keep compiled programs in ~/.cache/bayesmix (or $BAYESMIX_CACHE; "
                                  "BAYESMIX_CACHE=off does the same)")
    demo.add_argument("--no-figures", action="store_true", help="write no PNGs")
    for command in (demo, fit):
        command.add_argument("--exit-zero", action="store_true",
                             help="exit 0 even when a check fails (not converged, divergences, modes, "
                                  "misfit); default: exit 3")
    fit.add_argument("--resume", action="store_true",
                     help="continue the run saved in the output folder (interrupted, or finished and now "
                          "given a larger --num-samples) without losing draws; without --num-samples it "
                          "continues to the saved run's number of draws")
    sim = sub.add_parser("simulate", help="write a simulated catalogue with its truth")
    sim.add_argument("kind", choices=SIMULATIONS,
                     help="cluster-field: NGC 288-like velocities with radii; contaminated-field: a faint "
                          "cluster in a broad, lumpy field with a cold stream; "
                          "disc: thin/thick disc in [Fe/H]-[Mg/Fe]")
    sim.add_argument("--out", required=True, type=Path,
                     help="output table (.fits, .csv, .ecsv or .vot), written atomically")
    sim.add_argument("--n-stars", type=int, default=None,
                     help="number of stars (default: 386 cluster-field, 400 contaminated-field, 2000 disc)")
    sim.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    for command in (demo, fit, scan, sim):  # -v also after the command: bayesmix fit x.toml -v
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log progress and cuts; show the traceback of an error")
    return parser


_TUTORIAL_MEANING = {"mean1": "cluster systemic velocity [km/s]", "sigma1": "cluster dispersion [km/s]",
                     "mean2": "field mean velocity [km/s]", "sigma2": "field dispersion [km/s]",
                     "frac1": "member fraction"}


def demo_spec(seed: int = 0, n_stars: int = 386, num_chains: int = 4, num_warmup: int = 300,
              num_samples: int = 1000):
    """The demo as a run spec (``models/demo.toml`` holds the same)."""
    return RunSpec.from_dict({
        "name": "demo", "seed": seed,
        "description": "NGC 288-like cluster + field velocities, simulated; EM start, then NUTS",
        "data": {"simulate": "cluster-field", "n_stars": n_stars},
        "model": {"kind": "cluster-field"},
        "sampler": {"num_chains": num_chains, "num_warmup": num_warmup, "num_samples": num_samples},
    })


def _sampler_overrides(args) -> dict:
    return {name: getattr(args, name) for name in ("num_chains", "num_warmup", "num_samples")
            if getattr(args, name, None) is not None}


def _demo(args) -> int:
    for name in ("n_stars", "num_warmup", "num_samples", "num_chains"):
        if getattr(args, name) < (0 if name == "num_warmup" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}.")
    spec = demo_spec(args.seed, args.n_stars, args.num_chains, args.num_warmup, args.num_samples)
    out = args.out or Path(f"bayesmix-demo-seed{args.seed}")
    _cache(args)
    print(f"bayesmix demo: {args.n_stars} NGC 288-like stars (seed {args.seed}); EM start, then NUTS "
          f"{args.num_chains} x ({args.num_warmup} + {args.num_samples})", flush=True)
    result = _run(spec, directory=out, figures=False if args.no_figures else None)
    _print_fit(result)
    n_members = int((result.members.labels == 0).sum())
    print(f"\n{n_members} of {args.n_stars} stars are more likely members than not; the membership "
          f"probabilities sum to {result.members.mean[:, 0].sum():.1f} members "
          f"(true fraction x stars: {result.truth['frac1'] * args.n_stars:.1f}).")
    _print_written(result.directory, result.written)
    return _exit_status(result, args)


def _exit_status(result, args) -> int:
    """0 when every check passed (or with --exit-zero), else EXIT_CHECKS_FAILED, saying why."""
    problems = result.problems
    if not problems:
        return EXIT_OK
    print(f"\nchecks failed ({'; '.join(problems)}): the outputs are written, but do not trust them as they "
          f"are" + ("" if args.exit_zero else f" (exit status {EXIT_CHECKS_FAILED}; --exit-zero gives 0)"))
    return EXIT_OK if args.exit_zero else EXIT_CHECKS_FAILED


def _run(spec, **kwargs):
    """``run_spec``, with the checks' named warnings silenced: the CLI prints their reports itself."""
    from bayesmix.diagnostics import ConvergenceWarning, ModelMisfitWarning  # lazy: see the imports above
    from bayesmix.workflow import run_spec

    with warnings.catch_warnings():
        # ModeDisagreementWarning is a ConvergenceWarning.
        for category in (ConvergenceWarning, ModelMisfitWarning):
            warnings.simplefilter("ignore", category)
        return run_spec(spec, **kwargs)


def _cache(args) -> None:
    if not getattr(args, "no_cache", False):
        from bayesmix.sampling import enable_compilation_cache  # lazy: imports JAX

        enable_compilation_cache()


def _print_fit(result) -> None:
    """The posterior summary (beside the truth for simulated data) and the convergence verdict."""
    table, truth = result.summary, result.truth or {}
    scalar_truth = {k: v for k, v in truth.items() if isinstance(v, (int, float))}
    print()
    width = max(24, *(len(str(name)) for name in table.index))
    header = f"{'parameter':{width}s} {'median':>10s} {'-1 sd':>9s} {'+1 sd':>9s} {'r_hat':>6s} {'ess':>6s}"
    print(header + (f" {'true':>9s}  meaning" if scalar_truth else ""))
    for name, row in table.iterrows():
        line = (f"{name:{width}s} {row['p50']:10.4g} {row['p50'] - row['p16']:9.3g} "
                f"{row['p84'] - row['p50']:9.3g} {row['r_hat']:6.3f} {row['ess_bulk']:6.0f}")
        if name in scalar_truth:
            line += f" {scalar_truth[name]:9.4g}  {_TUTORIAL_MEANING.get(name, '')}"
        print(line)
    if result.fit.settings.get("likelihood_precision") == "mixed":  # chosen by "auto" for this catalogue
        print("(likelihood in mixed precision: float64 residuals and sums, float32 per-star terms; "
              "[sampler] likelihood_precision = \"float64\" turns it off)")
    report = result.convergence
    print(f"\n{report}")
    if not report.ok and (report.modes is None or report.modes.ok):
        print("(run longer: bayesmix fit MODEL --resume --num-samples N; on divergences raise "
              "[sampler] target_accept)")
    if result.model_check is not None:
        print(f"\n{result.model_check}")


def _print_em(result) -> None:
    """The distinct EM optima when there are several (the best few), and where the chains started."""
    em = result.fit.em
    optima = getattr(em, "optima", ()) if em is not None else ()
    if len(optima) < 2:
        return
    best = optima[0].objective
    print(f"\nEM: {len(em.start_kinds)} starts reached {len(optima)} distinct optima; the best few:")
    model, fit = result.fit.model, result.fit
    names = model.component_names
    for i, optimum in enumerate(optima[:3]):
        member = (model.member_component(optimum.params, fit.data, fit.covariates, optimum.background_weight)
                  if model.member_apart else None)
        order = model.order_components(optimum.params, member)
        means = np.asarray(optimum.params.means)[order]
        scales = np.sqrt(np.diagonal(np.asarray(optimum.params.covariances), axis1=1, axis2=2))[order]
        parts = ", ".join(f"{names[k]}: mean {np.array2string(means[k], precision=3)} "
                          f"sd {np.array2string(scales[k], precision=3)}" for k in range(len(order)))
        print(f"  {i}: log L {optimum.log_likelihood:.2f} ({optimum.objective - best:+.2f}), from "
              f"{len(optimum.starts)} start(s) [{', '.join(sorted(set(optimum.start_kinds)))}]; {parts}")
    attrs = result.fit.idata.posterior.attrs
    masses = np.atleast_1d(attrs.get("start_mode_log_mass", [0.0]))
    print(f"  chains started in {len(masses)} mode(s)" + (
        f" (log posterior mass relative to the best: {np.round(masses, 2).tolist()})" if len(masses) > 1 else
        " (the others hold under 0.1% of the posterior mass, or lie more than 25 nats below)"))


def _print_written(out: Path, written) -> None:
    print(f"wrote {', '.join(Path(p).name for p in written)} to {out}/")


def _load(args):
    spec = load_spec(args.model)
    overrides = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    sampler = _sampler_overrides(args)
    if sampler:
        overrides["sampler"] = sampler
    return spec.with_overrides(**overrides) if overrides else spec


def _resume_target(spec, args):
    """Under --resume without --num-samples: the saved run's target, said aloud."""
    from bayesmix.workflow import resume_target  # lazy: imports JAX

    if not args.resume or args.num_samples is not None:
        return spec
    target = resume_target(spec, args.out)
    if target is None or target == spec.sampler.num_samples:
        return spec
    print(f"--resume: continuing the saved run to its {target} draws per chain (the model file says "
          f"{spec.sampler.num_samples}; --num-samples N asks for another number)")
    return spec.with_overrides(sampler={"num_samples": target})


def _fit(args) -> int:
    spec = _resume_target(_load(args), args)
    _cache(args)
    s = spec.sampler
    print(f"bayesmix fit {args.model}: {spec.name} (seed {spec.seed}); EM start, then NUTS "
          f"{s.num_chains} x ({s.num_warmup} + {s.num_samples})" + (" [resuming]" if args.resume else ""),
          flush=True)
    result = _run(spec, directory=args.out, resume=args.resume, figures=False if args.no_figures else None)
    if spec.groups is not None:
        return _print_groups(result, args)
    report = result.catalogue.report
    if report.n_dropped or report.floored:
        print(f"\ncatalogue: {report}")
    if result.resumed_from:
        print(f"resumed with {result.resumed_from} draws per chain already done")
    _print_em(result)
    _print_fit(result)
    for k, name in enumerate(result.members.component_names):
        print(f"{name}: {int((result.members.labels == k).sum())} stars most probably here, expected "
              f"{result.members.mean[:, k].sum():.1f}")
    _print_written(result.directory, result.written)
    return _exit_status(result, args)


def _print_groups(result, args) -> int:
    """A [groups] run: skipped groups, the per-cluster table (worst-converged first) and the verdict."""
    print(f"\ncatalogue: {result.catalogue.report}")
    skipped = result.skipped
    if len(skipped):
        small = np.array(["min_stars" in r for r in skipped["reason"]], bool)
        for label, rows in (("too few stars", small), ("no members detected", ~small)):
            if rows.any():
                pairs = zip(skipped["group"][rows], skipped["n_stars"][rows], strict=True)
                print(f"skipped ({label}, {int(rows.sum())}): " + ", ".join(f"{g} ({n})" for g, n in pairs))
        print("  (skipped_groups.csv gives each group's reason)")
    table = result.table
    has_ref = "rv_ref" in table.colnames
    print(f"\n{'cluster':14s} {'stars':>6s} {'members':>8s} {'mu':>9s} {'+-':>6s} {'sigma':>7s} {'+-':>6s} "
          f"{'f':>5s} {'r_hat':>6s}" + (f" {'<RV>ref':>8s} {'pull':>6s}" if has_ref else ""))
    for row in table:
        line = (f"{row['cluster']:14s} {row['n_stars']:6d} {row['n_members']:8.1f} {row['mu_p50']:9.2f} "
                f"{row['mu_sd']:6.2f} {row['sigma_p50']:7.2f} {row['sigma_sd']:6.2f} {row['frac_p50']:5.2f} "
                f"{row['r_hat_max']:6.3f}")
        if has_ref:
            line += f" {row['rv_ref']:8.2f} {row['mu_pull']:6.2f}"
        print(line)
    print(f"\n{result.fit.convergence}")
    _print_written(result.directory, result.written)
    return _exit_status(result, args)


def _scan(args) -> int:
    from bayesmix.workflow import scan_spec  # lazy: imports JAX

    spec = _load(args)
    _cache(args)
    result = scan_spec(spec, k_range=args.k, loo=True if args.loo else None, directory=args.out,
                       figures=False if args.no_figures else None)
    table = result.table
    print(f"bayesmix scan {args.model}: K = {table['n_components'][0]}..{table['n_components'][-1]}, "
          f"EM with {spec.em.n_init} restarts"
          + (" and NUTS for LOO" if "elpd_loo" in table.colnames else ""))
    cols = [c for c in ("n_components", "log_likelihood", "n_parameters", "bic", "delta_bic", "aic",
                        "delta_aic", "elpd_loo", "se_elpd_loo", "converged") if c in table.colnames]
    print("  ".join(f"{c:>14s}" for c in cols))
    for row in table:
        print("  ".join(f"{row[c]:>14.6g}" if isinstance(row[c], (float, np.floating)) else f"{row[c]!s:>14s}"
                        for c in cols))
    print("preferred K: " + ", ".join(f"{name.upper()} {k}" for name, k in result.preferred.items()))
    _print_written(result.directory, result.written)
    return 0


def _simulate(args) -> int:
    from bayesmix.catalogue import make_provenance, write_table  # lazy: astropy, and JAX for simulate
    from bayesmix.simulate import simulate_named

    if args.n_stars is not None and args.n_stars < 1:
        raise ValueError(f"--n-stars must be at least 1; got {args.n_stars}.")
    suffixes = (".fits", ".csv", ".ecsv", ".vot")
    if not str(args.out).lower().endswith(suffixes):  # before simulating: the format comes from the name
        raise ValueError(f"--out {args.out}: the file name must end in one of {', '.join(suffixes)} "
                         "(the table's format follows its extension).")
    try:
        sim, truth = simulate_named(args.seed, args.kind, args.n_stars)
    except ValueError as exc:  # the library names its argument n_stars; here it is --n-stars
        raise ValueError(str(exc).replace("n_stars", "--n-stars")) from exc
    provenance = make_provenance(command=["simulate", args.kind], seed=args.seed,
                                 n_stars=sim.catalogue.n_stars, truth=truth)
    path = write_table(sim.table, args.out, provenance=provenance)
    print(f"wrote {sim.catalogue.n_stars} simulated stars ({args.kind}, seed {args.seed}) to {path}")
    for name, value in truth.items():
        print(f"  true {name}: {value}")
    return 0


_ENVIRONMENT_HINTS = (
    (ImportError, "a dependency is missing or broken; reinstall bayesmix into a fresh environment "
                  "(python3 -m venv .venv && . .venv/bin/activate && pip install bayesmix)"),
    (MemoryError, "not enough memory; use fewer stars, chains or draws (e.g. [sampler] membership_draws)"),
    (OSError, "a file or folder could not be read or written; check the path, its permissions and the "
              "free disk space (--no-cache if the compilation cache is the problem)"),
)


def _environment_error(command: str, exc: BaseException) -> int:
    """The machine, not the input, stopped the run: say what and where, without a traceback."""
    hint = next(text for kind, text in _ENVIRONMENT_HINTS if isinstance(exc, kind))
    print(f"bayesmix {command}: error: {type(exc).__name__}: {exc}\n  {hint}", file=sys.stderr)
    logging.getLogger(__name__).info("traceback of the error above", exc_info=exc)
    return EXIT_ENVIRONMENT_ERROR


def _input_error(command: str, exc: BaseException) -> int:
    hint = ""
    if isinstance(exc, (FileExistsError, IsADirectoryError, NotADirectoryError)):
        hint = "\n  check the path: a file stands where a folder is needed, or a folder where a file is"
    print(f"bayesmix {command}: error: {exc}{hint}", file=sys.stderr)
    logging.getLogger(__name__).info("traceback of the error above", exc_info=exc)
    return EXIT_INPUT_ERROR


def _internal_error(command: str, exc: BaseException) -> int:
    """Neither the input nor the machine: a bug. One line, the traceback under -v."""
    print(f"bayesmix {command}: internal error: {type(exc).__name__}: {exc}\n  this is a bug in bayesmix; "
          f"rerun with -v for the traceback and report it", file=sys.stderr)
    logging.getLogger(__name__).info("traceback of the error above", exc_info=exc)
    return EXIT_INTERNAL_ERROR


def _dispatch(args) -> int:
    commands = {"demo": _demo, "simulate": _simulate, "fit": _fit, "scan": _scan}
    return commands[args.command](args)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors in input give 2 and a message)."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    if args.command in ("demo", "fit", "scan"):
        from bayesmix.sampling import set_host_device_count  # lazy: only the commands that sample

        set_host_device_count()  # before JAX starts: chains on every core where that pays
    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            FolderBusyError) as exc:
        return _input_error(args.command, exc)
    except (OSError, ImportError, MemoryError) as exc:
        return _environment_error(args.command, exc)
    except KeyboardInterrupt:
        hint = "; bayesmix fit MODEL --resume continues from the last checkpoint" * (args.command == "fit")
        print(f"bayesmix {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: one line, never a raw traceback (-v shows it)
        return _internal_error(args.command, exc)


if __name__ == "__main__":
    sys.exit(main())
