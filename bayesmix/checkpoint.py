"""Checkpoints of a NUTS run as plain arrays: no code in the file, nothing to trust.

A checkpoint holds everything needed to continue a run exactly (the draws so far, each
chain's sampler state, the EM start) as a NumPy ``.npz`` archive of numeric arrays plus
one JSON text entry (``meta``: the format name and version, the sampler settings with
the data's SHA-256, the start information, the EM scalars). It is read with
``numpy.load(path)`` and its default ``allow_pickle=False``, so a crafted file can at
worst be refused, never run code; any damage (truncation, foreign content, a missing
array) is a :class:`CheckpointError` naming the file.

Layout of the arrays (chains first, as in the posterior)::

    samples/<site>      (n_chains, n_draws, ...)   the draws so far, constrained
    stats/<name>        (n_chains, n_draws)        per-draw sampler statistics
    state/hmc/<field>   (n_chains, ...)            :class:`bayesmix.hmc.ChainState`
    state/tuning/<field>
    state/key           (n_chains, 2) uint32       each chain's PRNG key data
    em/params/<field>, em/<history>, em/optima/<i>/params/<field>
    start/params/<field>                           the EM point the chains started from

Each write replaces the whole file atomically (temporary file, then rename): a run
killed at any moment leaves the previous checkpoint intact. Rewriting costs one pass
over the draws per chunk, small next to sampling them.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from bayesmix import hmc
from bayesmix._files import atomic_write
from bayesmix.em import EMOptimum, EMResult
from bayesmix.likelihood import MixtureParams

__all__ = ["FORMAT", "VERSION", "Checkpoint", "CheckpointError", "check_continues", "checkpoint_draws",
           "read_checkpoint", "write_checkpoint"]

FORMAT = "bayesmix-checkpoint"
VERSION = 3

_EM_SCALARS = ("background_weight", "log_likelihood", "log_prior", "n_iter", "converged", "n_parameters",
               "n_effective", "w", "best_restart")
_EM_ARRAYS = ("log_likelihood_history", "objective_history", "restart_objectives")
_OPTIMUM_SCALARS = ("background_weight", "log_likelihood", "log_prior", "n_iter", "converged")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: damaged, foreign, or of another format version.

    Attributes
    ----------
    path : Path
    """

    def __init__(self, message: str, *, path):
        super().__init__(message)
        self.path = Path(path)


class Checkpoint(NamedTuple):
    """What a checkpoint holds (see the module docstring for the file layout).

    Attributes
    ----------
    settings : dict
        Sampler settings, the seed, the bayesmix version and ``data_sha256``.
    params : MixtureParams
        The EM point the chains started from (constrained).
    background_weight : float or None
    em : EMResult or None
    state : bayesmix.hmc.ChainState
        Arrays with a leading chain axis; the PRNG keys as their raw ``uint32`` data
        (n_chains, 2), which ``jax.random.wrap_key_data`` turns back into typed keys.
    samples : dict of str to ndarray, each (n_chains, n_draws, ...)
    stats : dict of str to ndarray, each (n_chains, n_draws)
    start_info : dict
        JSON-ready start information (modes, chains per mode, warmup divergences).
    """

    settings: dict
    params: MixtureParams
    background_weight: float | None
    em: Any
    state: hmc.ChainState
    samples: dict
    stats: dict
    start_info: dict

    @property
    def n_draws(self) -> int:
        """Draws per chain saved."""
        return int(next(iter(self.stats.values())).shape[1]) if self.stats else 0


# --------------------------------------------------------------------------- write


def _json_ready(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def _params_arrays(prefix: str, params: MixtureParams) -> dict[str, np.ndarray]:
    return {f"{prefix}/{field}": np.asarray(getattr(params, field)) for field in MixtureParams._fields}


def _em_record(em) -> tuple[dict[str, np.ndarray], dict]:
    """EMResult -> (arrays, JSON scalars)."""
    arrays = _params_arrays("em/params", em.params)
    arrays.update({f"em/{name}": np.asarray(getattr(em, name)) for name in _EM_ARRAYS})
    meta = {name: _json_ready(getattr(em, name)) for name in _EM_SCALARS}
    meta["start_kinds"] = list(em.start_kinds)
    meta["optima"] = []
    for i, optimum in enumerate(em.optima):
        arrays.update(_params_arrays(f"em/optima/{i}/params", optimum.params))
        record = {name: _json_ready(getattr(optimum, name)) for name in _OPTIMUM_SCALARS}
        record.update(starts=[int(s) for s in optimum.starts], start_kinds=list(optimum.start_kinds))
        meta["optima"].append(record)
    return arrays, meta


def _state_arrays(state: hmc.ChainState) -> dict[str, np.ndarray]:
    arrays = {f"state/hmc/{f}": np.asarray(getattr(state.hmc, f)) for f in hmc.HMCState._fields}
    arrays.update({f"state/tuning/{f}": np.asarray(getattr(state.tuning, f)) for f in hmc.Tuning._fields})
    # Typed keys (jax.random.key) are stored as their raw uint32 data: a plain array, and
    # the same layout older checkpoints (raw keys) have.
    key = state.key
    if jax.dtypes.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    arrays["state/key"] = np.asarray(key)
    return arrays


def write_checkpoint(path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (an ``.npz`` of plain arrays plus JSON).

    Parameters
    ----------
    path : path
    checkpoint : Checkpoint

    Returns
    -------
    Path
    """
    arrays = {**_params_arrays("start/params", checkpoint.params), **_state_arrays(checkpoint.state)}
    arrays.update({f"samples/{k}": np.asarray(v) for k, v in checkpoint.samples.items()})
    arrays.update({f"stats/{k}": np.asarray(v) for k, v in checkpoint.stats.items()})
    em_meta = None
    if checkpoint.em is not None:
        em_arrays, em_meta = _em_record(checkpoint.em)
        arrays.update(em_arrays)
    meta = {"format": FORMAT, "version": VERSION, "settings": _json_ready(checkpoint.settings),
            "background_weight": _json_ready(checkpoint.background_weight),
            "start_info": _json_ready(checkpoint.start_info), "em": em_meta,
            "samples": sorted(checkpoint.samples), "stats": sorted(checkpoint.stats)}
    arrays["meta"] = np.array(json.dumps(meta, allow_nan=True))

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(Path(path), write)


# --------------------------------------------------------------------------- read


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        # allow_pickle=False refuses object arrays with a ValueError: a pickle is never run.
        raise CheckpointError(f"checkpoint {path} is damaged or not a bayesmix checkpoint ({exc}); delete it "
                              "and start the run afresh (without --resume).", path=path) from exc


def _read_meta(path: Path, arrays: dict) -> dict:
    if "meta" not in arrays or arrays["meta"].dtype.kind != "U" or arrays["meta"].shape != ():
        raise CheckpointError(f"checkpoint {path} has no bayesmix metadata: not a bayesmix checkpoint; "
                              "delete it and start afresh.", path=path)
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path}: its metadata is not valid JSON ({exc}); delete it and "
                              "start afresh.", path=path) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a bayesmix checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r}).", path=path)
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('version')}; this bayesmix "
                              f"reads version {VERSION}. Finish it with the bayesmix that wrote it, or start "
                              "afresh.", path=path)
    return meta


def _params_from(arrays: dict, prefix: str) -> MixtureParams:
    return MixtureParams(*(arrays[f"{prefix}/{field}"] for field in MixtureParams._fields))


def _float_or_none(value):
    return None if value is None else float(value)


def _em_from(arrays: dict, meta: dict):
    optima = tuple(
        EMOptimum(params=_params_from(arrays, f"em/optima/{i}/params"),
                  background_weight=_float_or_none(o["background_weight"]),
                  log_likelihood=float(o["log_likelihood"]), log_prior=float(o["log_prior"]),
                  n_iter=int(o["n_iter"]), converged=bool(o["converged"]), starts=tuple(o["starts"]),
                  start_kinds=tuple(o["start_kinds"]))
        for i, o in enumerate(meta["optima"]))
    return EMResult(params=_params_from(arrays, "em/params"),
                    background_weight=_float_or_none(meta["background_weight"]),
                    log_likelihood=float(meta["log_likelihood"]), log_prior=float(meta["log_prior"]),
                    log_likelihood_history=arrays["em/log_likelihood_history"],
                    objective_history=arrays["em/objective_history"], n_iter=int(meta["n_iter"]),
                    converged=bool(meta["converged"]), n_parameters=int(meta["n_parameters"]),
                    n_effective=float(meta["n_effective"]), w=float(meta["w"]),
                    restart_objectives=arrays["em/restart_objectives"],
                    best_restart=int(meta["best_restart"]),
                    optima=optima, start_kinds=tuple(meta["start_kinds"]))


def _state_from(arrays: dict) -> hmc.ChainState:
    return hmc.ChainState(hmc.HMCState(*(arrays[f"state/hmc/{f}"] for f in hmc.HMCState._fields)),
                          hmc.Tuning(*(arrays[f"state/tuning/{f}"] for f in hmc.Tuning._fields)),
                          arrays["state/key"])


def read_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`, without unpickling anything.

    Parameters
    ----------
    path : path

    Returns
    -------
    Checkpoint

    Raises
    ------
    CheckpointError
        The file is damaged, not a bayesmix checkpoint, or of another format version.
    """
    path = Path(path)
    arrays = _load_arrays(path)
    meta = _read_meta(path, arrays)
    try:
        checkpoint = Checkpoint(
            settings=meta["settings"], params=_params_from(arrays, "start/params"),
            background_weight=_float_or_none(meta["background_weight"]),
            em=None if meta["em"] is None else _em_from(arrays, meta["em"]), state=_state_from(arrays),
            samples={k: arrays[f"samples/{k}"] for k in meta["samples"]},
            stats={k: arrays[f"stats/{k}"] for k in meta["stats"]}, start_info=meta["start_info"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is incomplete ({type(exc).__name__}: {exc}); delete it and "
                              "start afresh.", path=path) from exc
    _check_shapes(path, checkpoint)
    return checkpoint


def _check_shapes(path: Path, checkpoint: Checkpoint) -> None:
    """Every draw array has the same (chains, draws); the state has one row per chain."""
    position = checkpoint.state.hmc.position
    n_chains = int(np.shape(position)[0]) if np.ndim(position) else -1
    shapes = {name: np.shape(a)[:2] for group in (checkpoint.samples, checkpoint.stats)
              for name, a in group.items()}
    if len(set(shapes.values())) > 1 or any(len(s) < 2 or s[0] != n_chains for s in shapes.values()):
        raise CheckpointError(f"checkpoint {path} is inconsistent: draw arrays of shapes {shapes} for "
                              f"{n_chains} chain(s); delete it and start afresh.", path=path)
    if not math.isfinite(float(np.sum(np.asarray(checkpoint.state.tuning.step_size, dtype=float)))):
        raise CheckpointError(f"checkpoint {path} holds a non-finite step size; delete it and start afresh.",
                              path=path)


def checkpoint_draws(path) -> int:
    """Draws per chain saved in the checkpoint at ``path`` (0 if there is none).

    Raises
    ------
    CheckpointError
        The file exists but cannot be used.
    """
    path = Path(path)
    return read_checkpoint(path).n_draws if path.exists() else 0


def check_continues(saved: Checkpoint, what: str, *, data_sha256: str, settings: dict | None = None,
                    num_samples: int | None = None) -> None:
    """Refuse to continue a saved run unless it sampled these data, with these settings.

    The one resume check: :func:`bayesmix.sampling.sample_posterior` (a checkpoint file),
    :func:`bayesmix.sampling.load_fit` and ``bayesmix fit --resume`` (a run folder) all call it.

    Parameters
    ----------
    saved : Checkpoint
        From :func:`read_checkpoint`.
    what : str
        Names the saved run in the message, e.g. ``"checkpoint run.npz"``.
    data_sha256 : str
        :func:`bayesmix.sampling.data_digest` of the data to continue on.
    settings : dict, optional
        Sampler settings that must match the saved ones (``num_samples`` may grow).
    num_samples : int, optional
        Draws per chain wanted in all: at least the saved ones.

    Raises
    ------
    ValueError
        Naming ``what`` and what differs.
    """
    saved_digest = str(saved.settings.get("data_sha256"))
    if saved_digest != data_sha256:
        raise ValueError(f"{what} was made from other data (sha256 {saved_digest[:12]}..., now "
                         f"{data_sha256[:12]}...): the catalogue, its cuts, errors or covariates changed "
                         "since; restore the data, or start afresh without resuming (the saved run stays "
                         "until a new one finishes).")
    changed = sorted(k for k in set(settings or {}) | set(saved.settings if settings else ())
                     if k != "num_samples" and settings.get(k) != saved.settings.get(k))
    if changed:
        raise ValueError(f"{what} was written with other settings ("
                         + ", ".join(f"{k}: saved {saved.settings.get(k)!r}, now {settings.get(k)!r}"
                                     for k in changed)
                         + "); use the same settings, or start afresh without the checkpoint.")
    if num_samples is not None and saved.n_draws > num_samples:
        raise ValueError(f"{what} already holds {saved.n_draws} draws per chain, more than "
                         f"num_samples={num_samples}; ask for at least {saved.n_draws}.")
