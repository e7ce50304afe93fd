"""Whole runs from a :class:`~bayesmix.config.RunSpec`: the layer under ``bayesmix fit`` and ``scan``.

:func:`run_spec` wires catalogue -> EM -> NUTS -> diagnostics -> memberships -> outputs
and figures; :func:`scan_spec` fits K = k_min..k_max and tabulates BIC/AIC (and LOO on
request). Every step is also a public function of the layer below, so a script can stop
anywhere; these functions only choose settings from the spec and write the files.

Outputs of a run (folder ``[output] directory``, default ``bayesmix-output-<name>-seed<seed>``),
each written atomically and carrying provenance (bayesmix version, the spec, the seed, the
dropped-row counts):

``summary.csv``, ``membership.<fits|csv|...>`` (input columns + per-component probabilities,
their 16/84 percentiles, the hard label; probabilities below 1e-300 are written as 0),
``posterior.nc`` (the InferenceData), ``em.json`` (the EM start: every start's objective and
the distinct optima they reached), ``model_check.csv`` (the posterior predictive check, bin by
bin), ``dropped_rows.csv`` (when cuts removed rows), ``spec.toml`` (the spec as given),
``checkpoint.npz`` (draws and sampler state as plain arrays, :mod:`bayesmix.checkpoint`:
``resume=True`` continues from it), ``run.json`` (the spec, its SHA-256 and the data's, the
list of the run's files), the figures (``*.png``) and, beside each CSV, its provenance
sidecar ``<name>.csv.json``. The folder is the run's while it runs, and a finished folder
holds one run's files (:mod:`bayesmix.runfolder`).

Provenance sits where each format keeps metadata: the FITS header, ECSV/VOTable metadata,
the netCDF attributes of ``posterior.nc``, the ``provenance`` key of ``em.json``. The CSVs
are plain CSV (``pandas.read_csv(path)`` and ``astropy.table.Table.read(path)`` read them
with no options); each one's provenance is in the sidecar ``<name>.csv.json`` beside it
(e.g. ``membership.csv.json``), with the CSV's SHA-256 so that
:func:`bayesmix.catalogue.read_provenance` can tell it belongs to that CSV.

Checks (``[checks]``): convergence (R-hat, ESS, divergences and chains in one mode) and the
posterior predictive model check. Their verdicts are in every output's provenance and in
:attr:`RunResult.problems`; ``bayesmix fit`` exits with status 3 when one fails.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from astropy.table import Table

from bayesmix import _arviz, plotting, sampling  # sampling.<name>, looked up when called (patchable)
from bayesmix._drawing import (
    DrawingProcess,
    EMHistory,
    FigureJob,
    cyclic_gc_paused,
    save_figure,
    use_agg,
)
from bayesmix._files import atomic_write
from bayesmix._random import as_key
from bayesmix.catalogue import (
    check_output_names,
    make_provenance,
    provenance_sidecar,
    read_catalogue,
    write_table,
)
from bayesmix.checkpoint import CheckpointError, check_continues, checkpoint_draws, read_checkpoint
from bayesmix.cluster_runs import run_groups
from bayesmix.components import GaussianBackground, UniformBackground
from bayesmix.config import RunSpec
from bayesmix.diagnostics import (
    ConvergenceWarning,
    ModeDisagreementWarning,
    ModelMisfitWarning,
    check_convergence,
    check_model_fit,
    summary,
)
from bayesmix.em import complete_start, fit_em
from bayesmix.likelihood import measured_values
from bayesmix.membership import membership_probabilities, membership_table, posterior_predictive
from bayesmix.models import (
    ComponentPrior,
    MemberKinematics,
    Ordering,
    Priors,
    RadiusFraction,
    SpatialLaw,
    cluster_field_model,
    mixture_model,
)
from bayesmix.runfolder import CHECKPOINT, LOCK, PARTIAL, RUN_RECORD, locked, publish
from bayesmix.simulate import simulate_named
from bayesmix.spatial import circle_footprint, hull_footprint, polygon_footprint

logger = logging.getLogger(__name__)

__all__ = ["RunResult", "ScanResult", "build_model", "load_catalogue", "resume_target", "run_spec",
           "scan_spec"]



@dataclasses.dataclass
class RunResult:
    """What :func:`run_spec` made.

    Attributes
    ----------
    spec : RunSpec
    catalogue : Catalogue
    truth : dict or None
        True values of a simulated catalogue.
    fit : PosteriorFit
    members : MembershipResult
    summary : pandas.DataFrame
    convergence : ConvergenceReport
    directory : Path
    written : list of Path
    provenance : dict
    resumed_from : int
        Draws per chain that came from a checkpoint (0 for a fresh run).
    model_check : ModelCheckReport or None
        The posterior predictive check (None when ``[checks] model_fit = false``).
    """

    spec: RunSpec
    catalogue: Any
    truth: dict | None
    fit: Any
    members: Any
    summary: Any
    convergence: Any
    directory: Path
    written: list
    provenance: dict
    resumed_from: int = 0
    model_check: Any = None

    @property
    def problems(self) -> list[str]:
        """Why the results should not be trusted as they are (empty when every check passed):
        convergence (R-hat, ESS, divergences, chains in different modes) and model misfit."""
        out = list(self.convergence.reasons)
        if self.model_check is not None and not self.model_check.ok:
            out.append(f"model misfit: posterior predictive p = {self.model_check.p_value:.3g} < "
                       f"{self.model_check.alpha:g}")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclasses.dataclass
class ScanResult:
    """What :func:`scan_spec` made.

    Attributes
    ----------
    table : astropy.table.Table
        One row per K: ``n_components``, ``log_likelihood``, ``n_parameters``, ``bic``,
        ``aic``, ``delta_bic``, ``delta_aic``, ``converged``, ``n_iter`` (and ``elpd_loo``,
        ``se_elpd_loo``, ``p_loo``, ``max_pareto_k`` with LOO).
    preferred : dict of str to int
        The K each criterion prefers (``bic``, ``aic``, and ``loo``).
    fits : dict of int to EMResult
    directory : Path
    written : list of Path
    """

    table: Any
    preferred: dict
    fits: dict
    directory: Path
    written: list


# --------------------------------------------------------------------------- building blocks


def load_catalogue(spec: RunSpec):
    """The spec's stars: the catalogue file with its cuts, or a simulation.

    Returns
    -------
    catalogue : Catalogue
    truth : dict or None
    """
    data = spec.data
    if data.simulate is not None:
        sim, truth = simulate_named(spec.seed, data.simulate, data.n_stars)
        return sim.catalogue, truth
    path = spec.catalogue_path()
    if not path.is_file():
        hint = (" (the science specs in models/ read ../shared/data; set BAYESMIX_SHARED_DATA to the "
                "folder holding the catalogues)" if "{shared_data}" in data.path else "")
        raise FileNotFoundError(f"[data] path: catalogue file not found: {path}{hint}.")
    errors = None if data.errors is None else [e or None for e in data.errors]
    catalogue = read_catalogue(
        path, values=list(data.values), errors=errors,
        correlations={(a, b): col for a, b, col in data.correlations} or None,
        error_cov_column=data.error_cov_column, id_column=data.id_column,
        covariates=list(data.covariates) or None, select=data.select or None,
        zero_flags=list(data.zero_flags) or None, missing=data.missing,
        ranges=data.ranges or None, drop_nonfinite=data.drop_nonfinite, error_floor=data.error_floor,
        duplicates=data.duplicates, format=data.format, layout=data.layout, sky=data.sky,
        drop_variable_p=data.drop_variable_p, missing_features=data.missing_features,
    )
    if catalogue.report.n_dropped:
        logger.info("%s: kept %d of %d rows; dropped %s", path.name, catalogue.report.n_kept,
                    catalogue.report.n_input, catalogue.report.counts())
    # The membership table carries every input column; a name FITS cannot hold would
    # otherwise fail only when it is written, after the whole fit.
    check_output_names(catalogue.table.colnames, spec.output.formats, table=catalogue.table)
    return catalogue, None


def _feature_index(spec: RunSpec, catalogue) -> int:
    feature = spec.model.ordering_feature
    names = list(catalogue.feature_names)
    if isinstance(feature, str):
        if feature not in names:
            raise ValueError(f"[model] ordering_feature: {feature!r} is not a value column; use one of "
                             f"{names} or an index.")
        return names.index(feature)
    if feature >= len(names):
        raise ValueError(f"[model] ordering_feature: index {feature} is out of range for {names}.")
    return feature


def _background(spec: RunSpec, n_features: int):
    bg = spec.model.background
    if bg is None:
        return None
    if bg.kind == "uniform":
        low, high = (np.broadcast_to(np.asarray(v, float), (n_features,)) for v in (bg.low, bg.high))
        if np.any(high <= low):
            raise ValueError("[model.background] low, high: every high must exceed its low.")
        return UniformBackground(low, high, weight=bg.weight, fit_weight=bg.fit_weight)
    mean = np.broadcast_to(np.asarray(bg.mean, float), (n_features,))
    cov = np.asarray(bg.covariance, float)
    if cov.shape != (n_features, n_features) or np.any(np.linalg.eigvalsh(cov) <= 0):
        raise ValueError(f"[model.background] covariance must be a positive-definite {n_features}x"
                         f"{n_features} matrix.")
    return GaussianBackground(mean, cov, weight=bg.weight, fit_weight=bg.fit_weight)


def _priors(spec: RunSpec, k: int):
    """:class:`~bayesmix.models.Priors` of ``[model.priors]`` (component priors only at the spec's own K)."""
    p = spec.model.priors
    shared = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "components"}
    components = None
    if p.components and k == spec.model.k:
        components = {name: ComponentPrior(c.mean_loc, c.mean_scale, c.scale_scale)
                      for name, c in p.components.items()}
    return Priors(**shared, components=components)


def build_model(spec: RunSpec, catalogue, n_components: int | None = None):
    """The spec's :class:`~bayesmix.models.MixtureModel` (``n_components`` overrides K for scans;
    component names and component priors then apply only at the spec's own K)."""
    m = spec.model
    k = n_components or m.k
    priors = _priors(spec, k)
    rf = None if m.radius_fraction is None else RadiusFraction(
        m.radius_fraction.covariate, m.radius_fraction.kind, m.radius_fraction.reference_radius)
    cluster_terms = _cluster_terms(spec, catalogue) if k + (m.background is not None) >= 2 else {}
    precision = spec.sampler.likelihood_precision
    if m.kind == "cluster-field" and k == 2:
        return cluster_field_model(catalogue, radius_fraction=rf, priors=priors,
                                   likelihood_precision=precision, **cluster_terms)
    names = m.component_names if (m.component_names and len(m.component_names) == k) else None
    background = _background(spec, catalogue.n_features)
    if names is not None and background is not None:
        names = (*names, "background")
    field_columns = k - 1 + (background is not None)
    return mixture_model(catalogue, k, priors=priors,
                         ordering=Ordering(m.ordering, _feature_index(spec, catalogue)),
                         background=background, radius_fraction=rf if field_columns >= 1 else None,
                         component_names=names, likelihood_precision=precision,
                         **(cluster_terms if k >= 2 else {}))


def _cluster_terms(spec: RunSpec, catalogue) -> dict[str, Any]:
    """``spatial=`` and ``kinematics=`` of the model from ``[model.spatial]``,
    ``[model.dispersion_profile]`` and ``[model.velocity_gradient]`` (empty without them)."""
    m = spec.model
    terms: dict[str, Any] = {}
    if m.spatial is not None:
        terms["spatial"] = _spatial_law(m.spatial, catalogue)
    kinematics: dict[str, Any] = {}
    if m.dispersion_profile is not None:
        dp = m.dispersion_profile
        kinematics.update(radius=dp.covariate, kind=dp.kind, reference_radius=dp.reference_radius,
                          slope_scale=dp.slope_scale, bin_edges=dp.bin_edges, bin_scales=dp.bin_scales)
    if m.velocity_gradient is not None:
        vg = m.velocity_gradient
        kinematics.update(gradient=(vg.xi, vg.eta), gradient_scale=vg.scale)
    if kinematics:
        terms["kinematics"] = MemberKinematics(**kinematics)
    return terms


def _spatial_law(s, catalogue) -> SpatialLaw:
    """The :class:`~bayesmix.models.SpatialLaw` of a ``[model.spatial]`` table, its footprint logged."""
    if s.footprint == "circle":
        footprint = circle_footprint(s.footprint_radius, s.footprint_centre)
    elif s.footprint == "polygon":
        footprint = polygon_footprint(s.footprint_vertices)
    else:
        footprint = hull_footprint(catalogue.covariates[s.xi], catalogue.covariates[s.eta])
    logger.info("[model.spatial] footprint: %s", footprint.describe())
    shape = {} if s.fit_shape else {"ellipticity": s.ellipticity, "position_angle": s.position_angle}
    return SpatialLaw(footprint, xi=s.xi, eta=s.eta, profile=s.profile, scale_radius=s.scale_radius,
                      scale_radius_loc=s.scale_radius_loc, scale_radius_log_sd=s.scale_radius_log_sd,
                      **({"ellipticity": None, "position_angle": None} | shape))


def em_kwargs(spec: RunSpec, model=None, catalogue=None) -> dict[str, Any]:
    """Keyword arguments of :func:`bayesmix.em.fit_em` from ``[em]`` (and the model's background).

    A start given by ``init_means`` (completed by :func:`bayesmix.em.complete_start`)
    becomes ``init_params`` when ``catalogue`` is passed and K is the spec's own.
    """
    e = spec.em
    kwargs = {"n_init": e.n_init, "n_peaks": e.n_peaks, "max_iter": e.max_iter, "tol": e.tol, "init": e.init,
              "kmeans_iter": e.kmeans_iter}
    if e.w is not None:
        kwargs["w"] = e.w
    if model is not None and model.background is not None:
        kwargs["background"] = model.background
    k = model.n_components if model is not None else spec.model.k
    if e.init_means is not None and catalogue is not None and k == spec.model.k:
        covariances = None
        if e.init_scales is not None:
            scales = np.asarray(e.init_scales, float)
            covariances = scales[:, :, None] * np.eye(scales.shape[1]) * scales[:, None, :]
        kwargs["init_params"] = complete_start(catalogue, np.asarray(e.init_means, float),
                                               weights=e.init_weights, covariances=covariances)
        if e.init == "given":
            kwargs["n_init"] = 1  # the given start only: restarts from it would all be the same
    elif e.init == "given":
        kwargs["init"] = "auto"  # another K in a scan: the given start does not apply
    return kwargs


def default_directory(spec: RunSpec) -> Path:
    return Path(spec.output.directory or f"bayesmix-output-{spec.name}-seed{spec.seed}")


def _write_json(path: Path, record) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1, default=_plain)))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _comparable(spec_dict: dict) -> dict:
    """The parts of a spec that must match for a resume: not the draws asked for, nor outputs.

    Nor where the catalogue file is: a moved file resumes, since the data themselves are
    compared by their SHA-256 (values, errors, covariates after the cuts).
    """
    out = json.loads(json.dumps(spec_dict, default=_plain))
    out.get("data", {}).pop("path", None)
    out.get("sampler", {}).pop("num_samples", None)
    out.get("sampler", {}).pop("checkpoint_every", None)
    out.pop("output", None)
    out.pop("scan", None)
    out.pop("description", None)
    return out


# --------------------------------------------------------------------------- fit


def _spec_digest(spec_dict: dict) -> str:
    """SHA-256 of the parts of a spec that a resume must match (:func:`_comparable`)."""
    text = json.dumps(_comparable(spec_dict), sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def _saved_record(path: Path) -> dict:
    """A run's ``run.json``, with a named error when it is damaged."""
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is damaged ({exc}); the saved run cannot be resumed: start afresh "
                         "(without --resume).") from exc
    if not isinstance(record, dict) or not isinstance(record.get("spec"), dict):
        raise ValueError(f"{path} holds no run specification (key 'spec'); the saved run cannot be "
                         "resumed: start afresh (without --resume).")
    return record


def _saved_run_folder(out: Path) -> Path | None:
    """Where the run to resume is: the interrupted one in progress, else the finished one."""
    for folder in (out / PARTIAL, out):
        if (folder / CHECKPOINT).is_file() and (folder / RUN_RECORD).is_file():
            return folder
    return None


def resume_target(spec: RunSpec, directory=None) -> int | None:
    """Draws per chain the saved run in the output folder asked for (None if there is none).

    ``bayesmix fit --resume`` without ``--num-samples`` continues to this target.
    """
    out = Path(directory) if directory is not None else default_directory(spec)
    folder = _saved_run_folder(out)
    if folder is None:
        return None
    target = _saved_record(folder / RUN_RECORD)["spec"].get("sampler", {}).get("num_samples")
    return int(target) if isinstance(target, int) else None


def _prepare_resume(out: Path, spec_dict: dict, catalogue) -> int:
    """Check the saved run against the spec and the data; put its checkpoint in the staging folder.

    Returns the draws per chain already done.
    """
    folder = _saved_run_folder(out)
    if folder is None:
        legacy = (" (the checkpoint.pkl there, from an earlier bayesmix, is never loaded: a pickle can run "
                  "code)") if (out / "checkpoint.pkl").exists() else ""
        raise FileNotFoundError(f"--resume: no saved run in {out} (expected {CHECKPOINT} and {RUN_RECORD})"
                                f"{legacy}; run without --resume to start one.")
    saved = _saved_record(folder / RUN_RECORD)
    if _comparable(saved["spec"]) != _comparable(spec_dict):
        changed = sorted(k for k in set(_comparable(saved["spec"])) | set(_comparable(spec_dict))
                         if _comparable(saved["spec"]).get(k) != _comparable(spec_dict).get(k))
        raise ValueError(f"--resume: the saved run in {out} was made from a different spec (sections "
                         f"{changed} differ); only [sampler] num_samples and [output] may change.")
    checkpoint = read_checkpoint(folder / CHECKPOINT)  # a damaged checkpoint stops here, named
    # Its sampler settings and draws are checked by sample_posterior, with the same function.
    check_continues(checkpoint, f"--resume: the saved run in {out}",
                    data_sha256=sampling.data_digest(catalogue))
    partial = out / PARTIAL
    if folder != partial:  # extending a finished run: it stays whole until the new set replaces it
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
        shutil.copy2(folder / CHECKPOINT, partial / CHECKPOINT)
    return checkpoint.n_draws


def _prepare_fresh(out: Path) -> None:
    """An empty staging folder; an interrupted run left there is discarded, saying so."""
    partial = out / PARTIAL
    if partial.exists():
        try:
            done = checkpoint_draws(partial / CHECKPOINT)
        except CheckpointError:
            done = "?"
        logger.warning("%s holds an interrupted run (%s draws per chain); starting afresh discards it "
                       "(pass resume=True / --resume to continue it instead)", out, done)
        shutil.rmtree(partial)
    partial.mkdir()


def _abandon(out: Path, created: bool, discard_up_to: int) -> None:
    """After a failed run: drop a staging folder with nothing new to resume, and a folder made for nothing.

    The staged checkpoint is kept when it holds more than ``discard_up_to`` draws per
    chain (0, or the draws of the finished run it was copied from).
    """
    partial = out / PARTIAL
    if partial.is_dir():
        try:
            done = checkpoint_draws(partial / CHECKPOINT)
        except CheckpointError:
            done = 0
        if done <= discard_up_to:
            shutil.rmtree(partial, ignore_errors=True)
    if created and out.is_dir() and not any(p.name != LOCK for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


def run_spec(spec: RunSpec, *, directory=None, resume: bool = False, progress_bar: bool | None = None,
             figures: bool | None = None) -> RunResult:
    """Run a spec end to end and write its outputs.

    The run holds its output folder (:func:`bayesmix.runfolder.locked`: a second run into
    it is refused while this one lives), works in the staging folder
    ``<directory>/.bayesmix-partial`` and swaps its whole result set in at the end
    (:func:`bayesmix.runfolder.publish`): a run that fails or is killed leaves the previous
    finished run as it was, and an interrupted run can be resumed.

    Parameters
    ----------
    spec : RunSpec
    directory : path, optional
        Output folder (default from ``[output] directory``).
    resume : bool
        Continue the run saved in ``directory`` (interrupted, or finished and now asked
        for more draws) instead of starting afresh; its spec must match except for
        ``num_samples`` and the outputs, and its data must be the same (SHA-256).
    progress_bar : bool, optional
    figures : bool, optional
        Override ``[output] figures``.

    Returns
    -------
    RunResult

    Raises
    ------
    bayesmix.runfolder.FolderBusyError
        Another live run holds the folder.

    Examples
    --------
    >>> from bayesmix.config import load_spec
    >>> from bayesmix.workflow import run_spec
    >>> result = run_spec(load_spec("models/demo.toml"), directory="demo-out")  # doctest: +SKIP
    >>> result.problems, sorted(p.name for p in result.written)[:3]  # doctest: +SKIP
    ([], ['corner.png', 'em.json', 'em_history.png'])
    """
    out = Path(directory) if directory is not None else default_directory(spec)
    # The catalogue and model first: a run that fails on its input (a column typo) must not
    # touch the folder.
    catalogue, truth = load_catalogue(spec)
    if spec.groups is not None:
        return _run_groups(spec, out, catalogue, resume)
    model = build_model(spec, catalogue)
    created = not out.exists()
    with locked(out):
        resumed_from, copied = 0, False
        try:
            if resume:
                copied = _saved_run_folder(out) == out  # a finished run, copied to the staging folder
                resumed_from = _prepare_resume(out, spec.to_dict(), catalogue)
            else:
                _prepare_fresh(out)
            result = _run_in_staging(spec, out, catalogue, truth, model, progress_bar, figures)
        except BaseException:
            _abandon(out, created, resumed_from if copied else 0)
            raise
    result.resumed_from = resumed_from
    return result


def _run_groups(spec: RunSpec, out: Path, catalogue, resume: bool):
    """A ``[groups]`` run (many clusters in one hierarchical fit, :mod:`bayesmix.cluster_runs`)
    written into ``out`` under the folder's lock; returns a :class:`~bayesmix.cluster_runs.GroupRunResult`."""
    if resume:
        raise ValueError("--resume does not apply to a [groups] run (it keeps no checkpoint); run it afresh.")
    with locked(out):
        return run_groups(spec, catalogue, out)


def _run_in_staging(spec, out, catalogue, truth, model, progress_bar, figures) -> RunResult:
    stage = out / PARTIAL
    spec_dict = spec.to_dict()
    record = {"spec": spec_dict, "spec_sha256": _spec_digest(spec_dict), "status": "running",
              "provenance": make_provenance(spec=spec_dict, seed=spec.seed)}
    _write_json(stage / RUN_RECORD, record)
    # The drawing processes start now, to import matplotlib while the sampler runs.
    with DrawingProcess(figures if figures is not None else spec.output.figures) as drawing:
        done = _fit_and_write(spec, stage, catalogue, truth, model, progress_bar, drawing)
        written = done.written + drawing.finish()
    fit, provenance = done.fit, done.provenance
    files = [Path(p).name for p in written] + [CHECKPOINT]
    _write_json(stage / RUN_RECORD, {**record, "status": "finished", "draws_done": fit.n_draws,
                                     "data_sha256": fit.settings.get("data_sha256"), "files": files,
                                     "provenance": provenance})
    published = publish(out, [stage / name for name in [*files, RUN_RECORD]])
    shutil.rmtree(stage)
    written = [p for p in published if p.name != CHECKPOINT]
    return RunResult(spec=spec, catalogue=catalogue, truth=truth, fit=fit, members=done.members,
                     summary=done.table, convergence=done.report, directory=out, written=written,
                     provenance=provenance, model_check=done.model_check)


class _Written(NamedTuple):
    fit: Any
    table: Any
    report: Any
    model_check: Any
    members: Any
    provenance: dict
    written: list  # tables, posterior.nc and the figures drawn from the fit itself


def _fit_and_write(spec, stage, catalogue, truth, model, progress_bar, drawing: DrawingProcess) -> _Written:
    """Sample, check, compute memberships and write the run's files into ``stage``; each
    figure goes to ``drawing`` as soon as what it shows exists."""
    spec_dict = spec.to_dict()
    s = spec.sampler
    fit = sampling.sample_posterior(
        spec.seed, model, catalogue, num_chains=s.num_chains, num_warmup=s.num_warmup,
        num_samples=s.num_samples, target_accept=s.target_accept, adapt_mass=s.adapt_mass,
        max_tree_depth=s.max_tree_depth, chain_method=s.chain_method, progress_bar=progress_bar,
        checkpoint=stage / CHECKPOINT, chunk_size=s.checkpoint_every,
        em_kwargs=em_kwargs(spec, model, catalogue),
    )
    if spec.output.loo:
        fit = sampling.add_log_likelihood(fit)
    if drawing.enabled:
        drawing.submit(stage, posterior_figure_jobs(fit, truth=truth))
    var_names = corner_variables(fit) if model.tutorial_names else None
    table = summary(fit, var_names=var_names)
    report, model_check = run_checks(spec, fit, var_names)
    members = membership_probabilities(fit, max_draws=s.membership_draws)
    if drawing.enabled:
        drawing.submit(stage, membership_figure_jobs(fit, members, key=spec.seed))
    provenance = make_provenance(spec=spec_dict, spec_file=spec.source, seed=spec.seed,
                                 dropped_rows=catalogue.report.to_dict(), truth=truth,
                                 n_stars=catalogue.n_stars, draws_per_chain=fit.n_draws,
                                 converged=bool(report.ok), convergence_problems=list(report.reasons),
                                 **_check_provenance(fit, report, model_check))
    written = _write_run_outputs(spec, stage, fit, table, members, catalogue, provenance,
                                 membership_table(fit, members, provenance=provenance), model_check)
    if drawing.enabled:
        written += fit_figures(stage, fit, members)
    return _Written(fit, table, report, model_check, members, provenance, written)


def run_checks(spec: RunSpec, fit, var_names=None):
    """Convergence (R-hat, ESS, divergences, one mode) and the model check of a run, as ``[checks]`` says.

    Each failed check is also emitted as its named warning
    (:class:`~bayesmix.diagnostics.ModeDisagreementWarning` when chains disagree on the
    mode, else :class:`~bayesmix.diagnostics.ConvergenceWarning`;
    :class:`~bayesmix.diagnostics.ModelMisfitWarning`), carrying its report.

    Returns
    -------
    (ConvergenceReport, ModelCheckReport or None)
    """
    c = spec.checks
    report = check_convergence(fit, var_names=var_names, mode_tolerance=c.mode_tolerance, warn=False)
    model_check = None
    if c.model_fit:
        model_check = check_model_fit(spec.seed, fit, n_replicates=c.n_replicates, alpha=c.misfit_alpha,
                                      warn=False)
    if report.modes is not None and not report.modes.ok:
        warnings.warn(ModeDisagreementWarning(str(report), modes=report.modes, report=report), stacklevel=3)
    elif not report.ok:
        warnings.warn(ConvergenceWarning(str(report), report=report), stacklevel=3)
    if model_check is not None and not model_check.ok:
        warnings.warn(ModelMisfitWarning(str(model_check), report=model_check), stacklevel=3)
    return report, model_check


def _check_provenance(fit, report, model_check) -> dict[str, Any]:
    """What the checks found, for every output's provenance."""
    info: dict[str, Any] = {}
    if report.modes is not None:
        info["modes"] = [{"chains": list(m.chains), "mean_log_density": m.mean_log_density}
                         for m in report.modes.modes]
    attrs = fit.idata.posterior.attrs
    if "start_mode_log_mass" in attrs:
        info["start_modes_log_mass"] = np.atleast_1d(attrs["start_mode_log_mass"]).tolist()
    if fit.em is not None and getattr(fit.em, "optima", ()):
        info["em_optima_objectives"] = [o.objective for o in fit.em.optima]
    if model_check is not None:
        info["model_check"] = {"ok": bool(model_check.ok), "p_value": model_check.p_value,
                               "alpha": model_check.alpha, "n_replicates": model_check.n_replicates,
                               "statistics": model_check.statistics.to_dict(orient="records")}
    return info


def _table_files(path: Path) -> list[Path]:
    """A written table and, for a CSV, the provenance sidecar beside it."""
    sidecar = provenance_sidecar(path)
    return [path, sidecar] if path.suffix == ".csv" and sidecar.is_file() else [path]


def _published_idata(spec, fit):
    """``posterior.nc``: the fit's InferenceData made ArviZ-complete (log likelihood, mock catalogues)."""
    # Its own random stream: the mock catalogues of the model check use the seed itself.
    return sampling.arviz_complete(jax.random.fold_in(as_key(spec.seed), 1), fit)


def _check_free_space(folder: Path, idata, name: str) -> None:
    """Refuse to start writing ``name`` where it cannot fit.

    HDF5 (under netCDF) does not survive a full disk: h5py crashed the process
    (segmentation fault) when it could not close the file. Its size is about the arrays'
    bytes, so ask for that plus a margin first.
    """
    needed = sum(int(v.nbytes) for g in _arviz.group_names(idata)
                 for v in _arviz.group_dataset(idata, g).variables.values())
    needed = int(needed * 1.1) + 1_000_000
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"not enough free space to write {name}: it needs about "
                                    f"{needed / 1e6:.1f} MB, {free / 1e6:.1f} MB are free in {folder}")


def _write_run_outputs(spec, out, fit, table, members, catalogue, provenance, stars,
                       model_check=None) -> list[Path]:
    written = []
    summary_table = Table.from_pandas(table.reset_index())
    written += _table_files(write_table(summary_table, out / "summary.csv", provenance=provenance))
    for fmt in spec.output.formats:
        suffix = {"votable": "vot"}.get(fmt, fmt)
        written += _table_files(write_table(stars, out / f"membership.{suffix}", provenance=provenance))
    if catalogue.report.n_dropped:
        written += _table_files(write_table(catalogue.report.as_table(), out / "dropped_rows.csv",
                                            provenance=provenance))
    if model_check is not None:
        written += _table_files(write_table(Table.from_pandas(model_check.bins), out / "model_check.csv",
                                            provenance=provenance))
    fit.idata.attrs["bayesmix_provenance"] = json.dumps(provenance, default=_plain)
    published = _published_idata(spec, fit)
    _check_free_space(out, published, "posterior.nc")
    written.append(atomic_write(out / "posterior.nc", lambda tmp: published.to_netcdf(tmp)))
    em = fit.em
    if em is not None:
        written.append(_write_json(out / "em.json", {
            "weights": em.params.weights, "means": em.params.means, "covariances": em.params.covariances,
            "background_weight": em.background_weight, "log_likelihood": em.log_likelihood,
            "n_iter": em.n_iter, "converged": em.converged, "bic": em.bic, "aic": em.aic,
            "log_likelihood_history": em.log_likelihood_history,
            "starts": {"kinds": list(em.start_kinds), "objectives": em.restart_objectives},
            "optima": [o.to_dict() for o in em.optima], "provenance": provenance}))
    if spec.source is not None and Path(spec.source).is_file():
        text = Path(spec.source).read_text()
        written.append(atomic_write(out / "spec.toml", lambda tmp: Path(tmp).write_text(text)))
    return written


# --------------------------------------------------------------------------- scan


def scan_spec(spec: RunSpec, *, k_range: tuple[int, int] | None = None, loo: bool | None = None,
              directory=None, figures: bool | None = None, progress_bar: bool | None = None) -> ScanResult:
    """Fit K = k_min..k_max by EM (with restarts) and tabulate BIC and AIC; LOO from NUTS on request.

    Parameters
    ----------
    spec : RunSpec
        ``[model]`` gives everything but K; ``[scan]`` the defaults of ``k_range`` and ``loo``.
    k_range : (int, int), optional
    loo : bool, optional
        Also sample each K with NUTS (``[sampler]`` settings) and add PSIS-LOO columns;
        radius laws and the cluster-field naming apply only at K = 2.
    directory : path, optional
        Default ``bayesmix-scan-<name>-seed<seed>``.

    Returns
    -------
    ScanResult
    """
    k_min, k_max = k_range or spec.scan.k
    loo = spec.scan.loo if loo is None else loo
    out = Path(directory) if directory is not None else Path(
        spec.output.directory or f"bayesmix-scan-{spec.name}-seed{spec.seed}")
    if spec.groups is not None:
        raise ValueError("[groups]: bayesmix scan fits one mixture to all stars; a [groups] spec fits each "
                         "group's members and field (bayesmix fit). Remove [groups] to scan K.")
    catalogue, truth = load_catalogue(spec)
    if k_max > catalogue.n_stars:
        raise ValueError(f"--k: k_max={k_max} exceeds the number of stars ({catalogue.n_stars}).")
    key = as_key(spec.seed)
    fits, rows = {}, []
    for k in range(k_min, k_max + 1):
        model = build_model(spec, catalogue, n_components=k)
        fits[k] = fit_em(jax.random.fold_in(key, k), catalogue, k, **em_kwargs(spec, model, catalogue))
        em = fits[k]
        row = {"n_components": k, "log_likelihood": em.log_likelihood, "n_parameters": em.n_parameters,
               "bic": em.bic, "aic": em.aic, "converged": em.converged, "n_iter": em.n_iter}
        if loo:
            row.update(_loo_columns(spec, model, catalogue, em, progress_bar))
        rows.append(row)
        logger.info("K=%d: log L %.2f, BIC %.2f, AIC %.2f", k, em.log_likelihood, em.bic, em.aic)
    table = Table(rows=rows)
    for col in ("bic", "aic"):
        table[f"delta_{col}"] = table[col] - np.min(table[col])
    preferred = {"bic": int(table["n_components"][np.argmin(table["bic"])]),
                 "aic": int(table["n_components"][np.argmin(table["aic"])])}
    if loo:
        preferred["loo"] = int(table["n_components"][np.nanargmax(table["elpd_loo"])])
    table.meta.update({f"best_{k}": v for k, v in preferred.items()})
    provenance = make_provenance(spec=spec.to_dict(), spec_file=spec.source, seed=spec.seed,
                                 command="scan", k_range=[k_min, k_max], loo=bool(loo), preferred=preferred,
                                 dropped_rows=catalogue.report.to_dict(), truth=truth)
    with locked(out):  # two scans into one folder: the second is refused, not interleaved
        written = _table_files(write_table(table, out / "scan.csv", provenance=provenance))
        if figures if figures is not None else spec.output.figures:
            written.append(save_figure(out / "information_criteria.png", _scan_plot(table)))
    return ScanResult(table=table, preferred=preferred, fits=fits, directory=out, written=written)


def _loo_columns(spec, model, catalogue, em, progress_bar) -> dict[str, float]:
    s = spec.sampler
    fit = sampling.sample_posterior(spec.seed, model, catalogue, init=em, num_chains=s.num_chains,
                           num_warmup=s.num_warmup, num_samples=s.num_samples,
                           target_accept=s.target_accept, chain_method=s.chain_method,
                           progress_bar=progress_bar)
    with_log_lik = sampling.add_log_likelihood(fit, max_draws=min(4000, fit.n_chains * fit.n_draws))
    loo = _arviz.loo(with_log_lik.idata)
    return {"elpd_loo": loo.elpd, "se_elpd_loo": loo.se, "p_loo": loo.p_loo,
            "max_pareto_k": float(np.max(loo.pareto_k))}


# --------------------------------------------------------------------------- figures


def _scan_plot(table):
    return plotting.information_criterion_plot(table)


TUTORIAL = ("mean1", "sigma1", "mean2", "sigma2", "frac1")


def corner_variables(fit) -> list[str]:
    """The posterior variables a run's corner and trace plots show."""
    post = fit.idata.posterior
    if fit.model.tutorial_names:
        scalars = [name for name in (*TUTORIAL, "frac_intercept", "frac_slope", "frac_log_ratio",
                                     "frac_radius", "scale_radius", "ellipticity", "position_angle",
                                     "dispersion_slope", "gradient_magnitude", "gradient_angle")
                   if name in post]
        return scalars
    return [name for name in ("weights", "means", "scales") if name in post]


def run_figures(out: Path, fit, members, catalogue, *, truth=None, key=0) -> list[Path]:
    """The figures of a run, as PNGs in ``out``, drawn in this process; returns their paths.

    corner (EM values as reference lines; true values for simulated data), trace, the EM
    log-likelihood per iteration, membership histograms (the first component's only,
    when there are two), posterior predictive check per feature, membership against
    radius (with a radius covariate), the 2-D plane with component ellipses (D >= 2) and
    the dispersion profile (a kinematic model with a radius). :func:`run_spec` draws the
    same beside the run (:class:`bayesmix._drawing.DrawingProcess`). ``catalogue`` is not
    read (kept for callers).
    """
    drawing = DrawingProcess(True, in_process=True)
    drawing.submit(out, posterior_figure_jobs(fit, truth=truth))
    drawing.submit(out, membership_figure_jobs(fit, members, key=key))
    return drawing.finish() + fit_figures(out, fit, members)


def posterior_figure_jobs(fit, *, truth=None) -> list[FigureJob]:
    """The corner, trace and EM-history figures of a run, as plain data (no JAX)."""
    names = corner_variables(fit)
    reference = _reference_values(fit, names, truth)
    labels = plotting.element_labels(fit, names)
    columns, kept, truths = plotting.corner_columns(fit, names, truths=reference, labels=labels)
    variables, diverging = plotting.trace_variables(fit, names)
    jobs = [FigureJob("corner.png", "corner", {"columns": columns, "labels": kept, "truths": truths}),
            FigureJob("trace.png", "trace", {"variables": variables, "diverging": diverging})]
    em = fit.em
    if em is not None:
        history = EMHistory(np.asarray(em.log_likelihood_history, float),
                            np.asarray(em.objective_history, float), int(em.n_iter), bool(em.converged),
                            np.asarray(em.restart_objectives, float),
                            tuple(getattr(em, "start_kinds", ()) or ()),
                            tuple(o.objective for o in getattr(em, "optima", ()) or ()))
        jobs.append(FigureJob("em_history.png", "em_history", {"em_result": history}))
    return jobs


def membership_figure_jobs(fit, members, *, key=0, n_mocks: int = 200) -> list[FigureJob]:
    """The membership histogram(s), the posterior predictive check (``n_mocks`` mock
    catalogues, drawn here with JAX and binned) and membership against radius, as plain data."""
    # With two components the second histogram is the first one mirrored (p2 = 1 - p1): one panel.
    shown = members.component_names if len(members.component_names) > 2 else members.component_names[:1]
    jobs = [FigureJob("membership_histogram.png", "membership_histogram",
                      {"probabilities": np.asarray(members.mean)[:, : len(shown)],
                       "component_names": list(shown)})]
    values = measured_values(fit.data)
    replicated = posterior_predictive(key, fit, n_mocks)
    labels = plotting.feature_labels(fit)
    bands = [plotting.predictive_band(values, replicated, feature=j) for j in range(values.shape[1])]
    jobs.append(FigureJob("ppc.png", "ppc", {"bands": bands, "labels": labels}))
    radius = _radius_covariate(fit)
    if radius is not None:
        jobs.append(FigureJob("membership_radius.png", "membership_radius", {
            "values": np.asarray(fit.data.values)[:, 0], "radius": np.asarray(fit.covariates[radius]),
            "probability": np.asarray(members.mean)[:, 0], "value_label": labels[0],
            "radius_label": f"projected radius ({radius})",
            "title": f"probability of {fit.model.component_names[0]!r}"}))
    return jobs


def fit_figures(out: Path, fit, members) -> list[Path]:
    """The figures drawn from the fit object itself, in this process: component ellipses
    (D >= 2) and the dispersion profile (a kinematic model with a radius)."""
    model = fit.model
    figures = []
    if fit.data.n_features >= 2:
        figures.append(("ellipses.png", lambda: plotting.ellipse_plot(
            fit.data, fit, probability=members.mean, component_names=model.component_names,
            feature_names=plotting.feature_labels(fit), posterior=fit)))
    kinematics = getattr(model, "kinematics", None)
    if kinematics is not None and kinematics.radius is not None:
        figures.append(("dispersion_profile.png",
                        lambda: plotting.dispersion_profile_plot(fit, probability=members.mean[:, 0])))
    if not figures:
        return []
    use_agg()
    with cyclic_gc_paused():
        return [save_figure(out / name, draw()) for name, draw in figures]


def _radius_covariate(fit) -> str | None:
    if fit.model.radius_fraction is not None:
        return fit.model.radius_fraction.covariate
    kinematics = getattr(fit.model, "kinematics", None)
    if kinematics is not None and kinematics.radius is not None:
        return kinematics.radius
    if fit.model.tutorial_names:
        return next(iter(fit.covariates), None)
    return None


def _reference_values(fit, names, truth) -> dict[str, Any] | None:
    """True values when known (simulations), else the EM start's, for the corner plot's lines."""
    if truth is not None and all(isinstance(truth.get(n), (int, float)) for n in names):
        return {n: truth[n] for n in names}
    if fit.em is None:
        return None
    params = fit.em.params
    order = fit.model.order_components(params)
    weights = np.asarray(params.weights)[order]
    means = np.asarray(params.means)[order]
    scales = np.sqrt(np.diagonal(np.asarray(params.covariances), axis1=1, axis2=2))[order]
    values = {"weights": weights, "means": means, "scales": scales}
    if fit.model.tutorial_names:
        values.update(mean1=means[0, 0], sigma1=scales[0, 0], mean2=means[1, 0], sigma2=scales[1, 0],
                      frac1=weights[0])
    return {name: values[name] for name in names if name in values}
