"""Catalogues larger than memory: EM streamed over chunks read from disk, outputs written chunk by chunk.

A survey catalogue of 1e7-1e8 stars, with an (N, D, D) error covariance per star, does
not fit in one process's memory, but extreme-deconvolution EM never needs all stars at
once: one iteration is a sum of per-star sufficient statistics (:mod:`bayesmix.em`) and
a closed-form M-step from their totals. :func:`fit_em_streamed` therefore makes each
iteration one pass over fixed-size chunks read from the file, accumulating exactly the
statistics :func:`bayesmix.em.fit_em` accumulates in memory (the same per-block function,
``em._e_stats``, compiled once for the chunk shape; the same ``em._m_step``), so the
result equals the in-memory fit from the same start to round-off, and the peak memory
is set by ``chunk_size``, not N.

Files are read chunk by chunk: FITS binary tables through astropy's memory map,
Parquet through pyarrow (extra ``bayesmix[parquet]``) and HDF5 through h5py (extra
``bayesmix[hdf5]``); an astropy Table or a dict of arrays is read in chunks too (handy
for a process's shard already in memory). Columns follow :func:`bayesmix.catalogue.read_catalogue`:
``values`` names the features, ``errors`` one standard-error column per feature (None
for an error-free one) and ``correlations`` ``{(value_a, value_b): column}`` of error
correlation coefficients. Rows are never dropped here: a non-finite value, a negative
error or a correlation outside [-1, 1] raises naming the column and the first rows,
so cut the catalogue first (``read_catalogue(..., drop_nonfinite=True)`` on pieces, or
the survey's own flags).

The starting point of the streamed iterations is a full :func:`bayesmix.em.fit_em` (its
restarts and density-peak starts) on a random subsample of ``n_start_stars`` stars, or
``init_params`` when given. Per-star outputs (memberships, log-likelihoods) are written
by :func:`write_memberships` chunk by chunk into a temporary file renamed over the
target at the end (FITS or CSV).

For NUTS at such N, sample on a random subsample and correct the draws with the full
data's streamed log-likelihood (:func:`streamed_log_likelihood`), or evaluate the
full-data potential sharded across devices (:mod:`bayesmix.distributed`).
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmix import _x64  # noqa: F401  (float64 before any array is made)
from bayesmix._files import atomic_write
from bayesmix._random import as_key
from bayesmix.em import (
    EMConvergenceWarning,
    EMOptions,
    EMResult,
    MAPPrior,
    _e_stats,
    _log_prior,
    _m_step,
    _merged_options,
    _Model,
    _not_converged_message,
    _resolve_regularisation,
    _Static,
    _Stats,
    fit_em,
    n_free_parameters,
)
from bayesmix.likelihood import MixtureParams, Observations, check_params, log_joint

__all__ = [
    "StreamedCatalogue",
    "fit_em_streamed",
    "open_catalogue",
    "streamed_log_likelihood",
    "write_memberships",
]

logger = logging.getLogger(__name__)

# Rows per chunk read from disk. 65536 stars with D = 4 and K = 5 keep the E-step's
# temporaries near 100 MB; the chunk's own arrays (values, covariances) are ~10 MB.
DEFAULT_CHUNK = 2**16
# Rows per E-step block inside a chunk: em's own block size (EMOptions.chunk_size).
_FORMATS = {".fits": "fits", ".fit": "fits", ".fts": "fits", ".parquet": "parquet", ".pq": "parquet",
            ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5"}


# --------------------------------------------------------------------------- readers


class _FitsReader:
    """Rows of a FITS binary table through astropy's memory map (only the chunk is copied)."""

    def __init__(self, path: Path, hdu):
        from astropy.io import fits

        self.path, self.hdu = path, hdu
        with fits.open(path, memmap=True) as hdul:
            table = hdul[hdu]
            if not isinstance(table, (fits.BinTableHDU, fits.TableHDU)):
                raise ValueError(f"{path}: HDU {hdu!r} is not a table ({type(table).__name__}); "
                                 "pass hdu= naming the table extension.")
            self.n_rows = int(table.header["NAXIS2"])
            self.names = [c.name for c in table.columns]

    def read(self, names, ranges):
        from astropy.io import fits

        with fits.open(self.path, memmap=True) as hdul:
            data = hdul[self.hdu].data
            for start, stop in ranges:
                part = data[start:stop]  # a view of the memory map; field() copies this slice only
                yield {n: np.array(part.field(n)) for n in names}  # native dtype: int64 ids stay exact
            del data


class _ParquetReader:
    """Row batches of a Parquet file through pyarrow (extra ``bayesmix[parquet]``)."""

    def __init__(self, path: Path):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError("reading Parquet needs pyarrow: pip install 'bayesmix[parquet]'.") from exc
        self.path = path
        meta = pq.ParquetFile(path)
        self.n_rows = int(meta.metadata.num_rows)
        self.names = list(meta.schema_arrow.names)

    def read(self, names, ranges):
        import pyarrow.parquet as pq

        ranges = list(ranges)
        if not ranges:
            return
        step = max(stop - start for start, stop in ranges)
        buffered: dict[str, list] = {n: [] for n in names}
        have, offset = 0, 0  # rows buffered; file row of the buffer's first row
        batches = pq.ParquetFile(self.path).iter_batches(batch_size=step, columns=list(names))
        for start, stop in ranges:
            while offset + have < stop:
                batch = next(batches)
                for n in names:
                    buffered[n].append(batch.column(n).to_numpy(zero_copy_only=False))
                have += batch.num_rows
                if offset + have <= start:  # wholly before this range (a later shard): let it go
                    buffered, offset, have = {n: [] for n in names}, offset + have, 0
            joined = {n: np.concatenate(buffered[n]) for n in names}
            yield {n: joined[n][start - offset:stop - offset] for n in names}
            buffered = {n: [joined[n][stop - offset:]] for n in names}
            have -= stop - offset
            offset = stop


class _Hdf5Reader:
    """Slices of an HDF5 table (extra ``bayesmix[hdf5]``): a compound dataset, or a group of 1-D
    datasets (one per column), at ``key``."""

    def __init__(self, path: Path, key: str | None):
        try:
            import h5py
        except ImportError as exc:
            raise ImportError("reading HDF5 needs h5py: pip install 'bayesmix[hdf5]'.") from exc
        self.path, self.key = path, key or "/"
        with h5py.File(path, "r") as f:
            node = f[self.key]
            if isinstance(node, h5py.Dataset):
                if node.dtype.names is None:
                    raise ValueError(f"{path}: dataset {self.key!r} has no named fields; pass key= naming "
                                     "a compound (table) dataset or a group of 1-D column datasets.")
                self.compound, self.names, self.n_rows = True, list(node.dtype.names), int(node.shape[0])
            else:
                cols = {n: d.shape for n, d in node.items() if isinstance(d, h5py.Dataset) and d.ndim == 1}
                lengths = set(cols.values())
                if len(lengths) != 1:
                    raise ValueError(f"{path}: group {self.key!r} needs 1-D column datasets of one length; "
                                     f"found {cols}.")
                self.compound, self.names, self.n_rows = False, list(cols), int(next(iter(lengths))[0])

    def read(self, names, ranges):
        import h5py

        with h5py.File(self.path, "r") as f:
            node = f[self.key]
            for start, stop in ranges:
                if self.compound:
                    part = node[start:stop]
                    yield {n: np.asarray(part[n]) for n in names}
                else:
                    yield {n: np.asarray(node[n][start:stop]) for n in names}


class _TableReader:
    """An in-memory astropy Table or mapping of 1-D arrays, read in chunks like a file."""

    def __init__(self, table):
        self.table = table
        self.names = list(table.colnames if hasattr(table, "colnames") else table.keys())
        lengths = {len(table[n]) for n in self.names}
        if len(lengths) != 1:
            raise ValueError(f"columns of the table have different lengths {sorted(lengths)}.")
        self.n_rows = int(next(iter(lengths)))

    def read(self, names, ranges):
        for start, stop in ranges:
            yield {n: np.asarray(self.table[n][start:stop]) for n in names}


def _reader(source, format, hdu, key):
    if not isinstance(source, (str, os.PathLike)):
        return _TableReader(source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"catalogue {path} does not exist.")
    fmt = format or _FORMATS.get(path.suffix.lower())
    if fmt == "fits":
        return _FitsReader(path, 1 if hdu is None else hdu)
    if fmt == "parquet":
        return _ParquetReader(path)
    if fmt == "hdf5":
        return _Hdf5Reader(path, key)
    raise ValueError(f"{path}: cannot stream format {fmt or path.suffix!r}; use FITS, Parquet or HDF5 "
                     "(format='fits'|'parquet'|'hdf5'), or read it with read_catalogue.")


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class StreamedCatalogue:
    """A catalogue read chunk by chunk: which columns, and how to read them.

    Made by :func:`open_catalogue`; holds no star data. ``chunks()`` yields
    ``(start, Observations)`` with numpy arrays of at most ``chunk_size`` rows.

    Attributes
    ----------
    n_stars, n_features : int
    values : tuple of str
    errors : tuple of (str or None)
    correlations : dict of (str, str) to str
    chunk_size : int
    start, stop : int
        The rows this object reads (a process's shard, :meth:`shard`).
    """

    reader: Any = field(repr=False)
    values: tuple
    errors: tuple
    correlations: dict
    chunk_size: int
    start: int
    stop: int

    @property
    def n_stars(self) -> int:
        return self.stop - self.start

    @property
    def n_features(self) -> int:
        return len(self.values)

    def shard(self, index: int, count: int) -> StreamedCatalogue:
        """Rows of shard ``index`` of ``count`` equal contiguous shards (one per process).

        Examples
        --------
        >>> cat = open_catalogue("stars.fits", ["vx", "vy"], ["ex", "ey"])  # doctest: +SKIP
        >>> mine = cat.shard(jax.process_index(), jax.process_count())  # doctest: +SKIP
        """
        if not 0 <= index < count:
            raise ValueError(f"shard index must be in 0..{count - 1}; got {index}.")
        n = self.n_stars
        lo, hi = self.start + n * index // count, self.start + n * (index + 1) // count
        return StreamedCatalogue(self.reader, self.values, self.errors, self.correlations, self.chunk_size,
                                 lo, hi)

    def ranges(self) -> list[tuple[int, int]]:
        """``(start, stop)`` file rows of every chunk."""
        step = self.chunk_size
        return [(s, min(s + step, self.stop)) for s in range(self.start, self.stop, step)]

    def chunks(self, extra_columns: Sequence[str] = ()) -> Iterator[tuple[int, Observations, dict]]:
        """``(first row, Observations (numpy), {extra column: array})`` of each chunk, checked."""
        pairs = [c for pair in self.correlations.items() for c in (pair[1],)]
        names = list(dict.fromkeys([*self.values, *(e for e in self.errors if e), *pairs, *extra_columns]))
        for (start, _stop), cols in zip(self.ranges(), self.reader.read(names, self.ranges()), strict=True):
            yield start, _observations(cols, self, start), {n: cols[n] for n in extra_columns}


def open_catalogue(source, values: str | Sequence[str], errors: str | Sequence[str | None] | None = None, *,
                   correlations: Mapping[tuple[str, str], str] | None = None, format: str | None = None,
                   chunk_size: int = DEFAULT_CHUNK, hdu: int | str | None = None,
                   key: str | None = None) -> StreamedCatalogue:
    """Open a catalogue for chunked reading (nothing but the header is read now).

    Parameters
    ----------
    source : str, Path, astropy.table.Table or mapping of str to 1-D array
        A FITS binary table (memory-mapped), a Parquet file (``bayesmix[parquet]``), an
        HDF5 file (``bayesmix[hdf5]``), or a table already in memory.
    values : str or sequence of str
        Columns of the fitted features (n_features of them).
    errors : str or sequence of (str or None), optional
        Standard-error column of each value column, in order (None: error-free feature).
    correlations : mapping of (str, str) to str, optional
        ``{(value_a, value_b): column}`` of error-correlation coefficients (as
        :func:`bayesmix.catalogue.read_catalogue`).
    format : {"fits", "parquet", "hdf5"}, optional
        Default: from the file suffix.
    chunk_size : int
        Rows per chunk; sets the peak memory (about ``chunk_size * (D + D^2) * 8`` bytes
        of data plus the E-step's temporaries).
    hdu : int or str, optional
        FITS extension holding the table (default 1).
    key : str, optional
        HDF5 path of a compound dataset or a group of column datasets (default "/").

    Returns
    -------
    StreamedCatalogue

    Raises
    ------
    ValueError
        Naming a missing column (and the columns there are), or an unknown format.

    Examples
    --------
    >>> cat = open_catalogue("galah.fits", ["vx", "vy"], ["e_vx", "e_vy"],
    ...                      correlations={("vx", "vy"): "rho_vxvy"})  # doctest: +SKIP
    >>> cat.n_stars, cat.n_features  # doctest: +SKIP
    (1000000, 2)
    """
    values, errors, correlations = _column_roles(values, errors, correlations)
    if not (isinstance(chunk_size, (int, np.integer)) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
    reader = _reader(source, format, hdu, key)
    wanted = [*values, *(e for e in errors if e), *correlations.values()]
    missing = [c for c in wanted if c not in reader.names]
    if missing:
        raise ValueError(f"column(s) {missing} not in {source}; its columns are {reader.names}.")
    if reader.n_rows == 0:
        raise ValueError(f"{source} has no rows.")
    return StreamedCatalogue(reader, values, errors, correlations, int(chunk_size), 0, reader.n_rows)


def _column_roles(values, errors, correlations) -> tuple[tuple, tuple, dict]:
    """``(values, errors, correlations)`` checked against each other (not yet against a file)."""
    values = (values,) if isinstance(values, str) else tuple(values)
    if not values:
        raise ValueError("values must name at least one column.")
    if errors is None:
        errors = (None,) * len(values)
    errors = (errors,) if isinstance(errors, str) else tuple(errors)
    if len(errors) != len(values):
        raise ValueError(f"errors must name one column (or None) per value column: {len(values)} values "
                         f"{list(values)} but {len(errors)} errors {list(errors)}.")
    correlations = dict(correlations or {})
    for (a, b), col in correlations.items():
        if a not in values or b not in values or a == b:
            raise ValueError(f"correlations key ({a!r}, {b!r}) must name two different value columns "
                             f"of {list(values)}.")
        if errors[values.index(a)] is None or errors[values.index(b)] is None:
            raise ValueError(f"correlation column {col!r} pairs ({a!r}, {b!r}), but one of them has no "
                             "error column; give both errors.")
    return values, errors, correlations


def _first_rows(mask, start, limit=5) -> list[int]:
    return (np.flatnonzero(mask)[:limit] + start).tolist()


def _observations(cols: dict, cat: StreamedCatalogue, start: int) -> Observations:
    """The chunk's values (n, D) and error covariances (n, D, D), checked (rows are never dropped)."""
    d = cat.n_features
    cols = dict(cols)
    for name in (*cat.values, *(e for e in cat.errors if e), *cat.correlations.values()):
        try:
            cols[name] = np.asarray(cols[name], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"column {name!r} is not numeric ({cols[name].dtype}): {exc}") from exc
        bad = ~np.isfinite(cols[name])
        if bad.any():
            raise ValueError(f"column {name!r} is not finite in rows {_first_rows(bad, start)} (0-based "
                             f"file rows, {int(bad.sum())} in this chunk); streamed fits drop no rows: cut "
                             "them from the file first (e.g. read_catalogue(..., drop_nonfinite=True)).")
    values = np.stack([cols[n] for n in cat.values], axis=1)
    n = values.shape[0]
    sigma = np.zeros((n, d))
    for j, name in enumerate(cat.errors):
        if name is not None:
            bad = cols[name] < 0
            if bad.any():
                raise ValueError(f"error column {name!r} is negative in rows {_first_rows(bad, start)}; "
                                 "standard errors must be >= 0.")
            sigma[:, j] = cols[name]
    covs = np.zeros((n, d, d))
    idx = np.arange(d)
    covs[:, idx, idx] = sigma**2
    for (a, b), name in cat.correlations.items():
        rho = cols[name]
        bad = np.abs(rho) > 1
        if bad.any():
            raise ValueError(f"correlation column {name!r} lies outside [-1, 1] in rows "
                             f"{_first_rows(bad, start)}.")
        i, j = cat.values.index(a), cat.values.index(b)
        covs[:, i, j] = covs[:, j, i] = rho * sigma[:, i] * sigma[:, j]
    return Observations(values, covs)


# --------------------------------------------------------------------------- moments and model


class _Moments(NamedTuple):
    """Weighted first and second moments of the stars, accumulated chunk by chunk (shifted sums)."""

    total: float
    shift: np.ndarray  # (D,) subtracted before summing, against cancellation
    first: np.ndarray  # (D,) sum of (x - shift)
    second: np.ndarray  # (D, D) sum of (x - shift)(x - shift)^T
    error_var: np.ndarray  # (D,) sum of the error variances

    def add(self, obs: Observations) -> _Moments:
        dx = obs.values - self.shift
        return _Moments(self.total + dx.shape[0], self.shift, self.first + dx.sum(axis=0),
                       self.second + dx.T @ dx, self.error_var + np.einsum("iaa->a", obs.error_covs))

    def plus(self, other: _Moments) -> _Moments:
        """Both sets of stars' moments (same ``shift``): shards combined."""
        return _Moments(self.total + other.total, self.shift, self.first + other.first,
                       self.second + other.second, self.error_var + other.error_var)

    def covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """``(observed covariance (D, D), spread (D,))`` as :func:`bayesmix.em.fit_em` defines them."""
        mean_dx = self.first / self.total
        cov = self.second / self.total - np.outer(mean_dx, mean_dx)
        return cov, np.diag(cov) + self.error_var / self.total


def _moments(cat: StreamedCatalogue, shift: np.ndarray) -> _Moments:
    d = cat.n_features
    m = _Moments(0.0, shift, np.zeros(d), np.zeros((d, d)), np.zeros(d))
    for _start, obs, _ in cat.chunks():
        m = m.add(obs)
    return m


def _stream_model(moments: _Moments, k: int, options: EMOptions, prior, start: MixtureParams):
    """em's ``_Model`` without star arrays (each chunk brings its own), and Bovy's ``w``."""
    d = moments.shift.shape[0]
    obs_cov, spread = moments.covariance()
    reg = _resolve_regularisation(options, prior, spread, k, k)
    model = _Model(values=None, error_covs=None, sample_weight=None, log_background=None,
                   frozen_weights=jnp.zeros(k, bool), frozen_means=jnp.zeros(k, bool),
                   frozen_covariances=jnp.zeros(k, bool), alpha_minus_one=jnp.asarray(reg.alpha_minus_one),
                   psi=jnp.asarray(reg.psi), prior_count=jnp.asarray(reg.prior_count),
                   tol=jnp.asarray(float(options.tol)), total_weight=jnp.asarray(moments.total),
                   given=start, global_cov=jnp.asarray(obs_cov + reg.psi[0]), feature_scale=jnp.ones(d))
    return model, reg.w


def _block_static(k: int, d: int, n_blocks: int, block: int) -> _Static:
    return _Static(k, d, n_blocks, block, False, 1, "given", n_init=0, kmeans_iter=0, given_start=True)


def _blocked(obs: Observations, n_blocks: int, block: int):
    """A chunk's arrays padded (copies of row 0, weight 0) to ``n_blocks * block`` rows, blocked."""
    n, d = obs.values.shape
    rows = n_blocks * block
    extra = rows - n
    sw = np.concatenate([np.ones(n), np.zeros(extra)])
    values = np.concatenate([obs.values, np.repeat(obs.values[:1], extra, axis=0)])
    covs = np.concatenate([obs.error_covs, np.repeat(obs.error_covs[:1], extra, axis=0)])
    return (values.reshape(n_blocks, block, d), covs.reshape(n_blocks, block, d, d),
            sw.reshape(n_blocks, block), np.zeros((n_blocks, block)))


@partial(jax.jit, static_argnames=("static",))
def _chunk_stats(params, values, error_covs, sample_weight, log_background, model: _Model, static: _Static):
    """em's E-step statistics of one chunk (the one implementation, ``em._e_stats``)."""
    return _e_stats(params, model._replace(values=values, error_covs=error_covs, sample_weight=sample_weight,
                                           log_background=log_background), static)


@jax.jit
def _finish(params, stats: _Stats, model: _Model):
    """Objective terms and the M-step from an iteration's summed statistics (``em._m_step``)."""
    static = _block_static(params.means.shape[0], params.means.shape[1], 1, 1)
    return _log_prior(params, model), _m_step(params, stats, model, static)


def _add_stats(a: _Stats | None, b: _Stats) -> _Stats:
    return b if a is None else jax.tree_util.tree_map(jnp.add, a, b)


# --------------------------------------------------------------------------- the EM loop


class _LoopResult(NamedTuple):
    params: MixtureParams
    hist_ll: np.ndarray
    hist_obj: np.ndarray
    n_iter: int
    status: int  # as em's _Loop.status: 1 converged, 2 non-finite objective, 3 max_iter reached


def _em_iterations(params0: MixtureParams, e_stats, model: _Model, max_iter: int, tol: float) -> _LoopResult:
    """EM iterations driven from Python, each E-step ``e_stats(params) -> _Stats`` summed over all stars.

    The same stopping rule and bookkeeping as :func:`bayesmix.em.fit_em`'s compiled loop:
    iteration ``t`` evaluates the objective of the current parameters; it stops when the
    change is at most ``tol`` (the current parameters are returned), at ``max_iter`` M-steps,
    or at a non-finite objective (the previous parameters are returned). Shared by the
    streamed and the sharded fits (:mod:`bayesmix.distributed`), whose E-steps differ only
    in where the stars are.
    """
    params, previous = params0, params0
    hist_ll, hist_obj = [], []
    t = 0
    while True:
        stats = e_stats(params)
        log_prior, new = _finish(params, stats, model)
        ll = float(stats.log_likelihood)
        obj = ll + float(log_prior)
        hist_ll.append(ll)
        hist_obj.append(obj)
        if not np.isfinite(obj):
            status, params, t = 2, previous, t - 1
            hist_ll, hist_obj = hist_ll[:-1], hist_obj[:-1]
            break
        if t > 0 and abs(obj - hist_obj[-2]) <= tol:
            status = 1
            break
        if t >= max_iter:
            status = 3
            break
        previous, params = params, new
        t += 1
        logger.debug("EM iteration %d: objective %.6f", t, obj)
    params = jax.tree_util.tree_map(np.asarray, params)
    return _LoopResult(params, np.asarray(hist_ll), np.asarray(hist_obj), t, status)


def _as_em_result(loop: _LoopResult, *, w: float, n_effective: float, kind: str, max_iter: int,
                  tol: float) -> EMResult:
    """:class:`bayesmix.em.EMResult` of a Python-driven fit (one start), for every later layer;
    warns as :func:`bayesmix.em.fit_em` does when it did not converge."""
    if loop.n_iter < 0:
        raise FloatingPointError("the objective is not finite at the start: a covariance is singular. "
                                 "Use w=None or w > 0, or a MAPPrior, or another start.")
    k, d = loop.params.means.shape
    ll, obj = float(loop.hist_ll[-1]), float(loop.hist_obj[-1])
    if loop.status != 1:
        change = abs(obj - float(loop.hist_obj[-2])) if len(loop.hist_obj) > 1 else float("nan")
        warnings.warn(EMConvergenceWarning(
            _not_converged_message(loop.status, loop.n_iter, change, max_iter, tol), n_iter=loop.n_iter,
            max_iter=max_iter, tol=tol, last_change=change, log_likelihood=ll), stacklevel=3)
    return EMResult(params=MixtureParams(*loop.params), background_weight=None, log_likelihood=ll,
                    log_prior=obj - ll, log_likelihood_history=loop.hist_ll, objective_history=loop.hist_obj,
                    n_iter=loop.n_iter, converged=loop.status == 1, n_parameters=n_free_parameters(k, d),
                    n_effective=n_effective, w=w, restart_objectives=np.array([obj]), best_restart=0,
                    start_kinds=(kind,))


def _subsample(cat: StreamedCatalogue, n_wanted: int, seed: int) -> Observations:
    """About ``n_wanted`` stars drawn uniformly (each kept with probability n_wanted / N)."""
    rng = np.random.default_rng(seed)
    p = min(1.0, n_wanted / cat.n_stars)
    parts = [(o.values[keep], o.error_covs[keep]) for _, o, _ in cat.chunks()
             for keep in [rng.random(o.values.shape[0]) < p]]
    return Observations(np.concatenate([v for v, _ in parts]), np.concatenate([c for _, c in parts]))


def _check_start(init_params, k: int, d: int) -> MixtureParams:
    start = check_params(*init_params)
    if start.n_components != k or start.n_features != d:
        raise ValueError(f"init_params has {start.n_components} components in {start.n_features} dimensions; "
                         f"expected {k} in {d}.")
    return MixtureParams(*(jnp.asarray(a, jnp.float64) for a in start))


def _start_params(key, sample: Observations, n_components: int, options: EMOptions, prior) -> MixtureParams:
    """The streamed fit's start: a full :func:`bayesmix.em.fit_em` (all its starts) on a subsample."""
    fit = fit_em(key, sample, n_components, options=options, prior=prior)
    return MixtureParams(*(jnp.asarray(a, jnp.float64) for a in fit.params))


def fit_em_streamed(key, catalogue: StreamedCatalogue, n_components: int, *, options: EMOptions | None = None,
                    init_params=None, prior: MAPPrior | None = None, n_start_stars: int = 20000,
                    **option_overrides) -> EMResult:
    """Extreme-deconvolution EM over a catalogue read chunk by chunk (larger than memory).

    Each iteration is one pass over the file accumulating :mod:`bayesmix.em`'s sufficient
    statistics (the same compiled per-block function), then em's M-step: the result equals
    :func:`bayesmix.em.fit_em` from the same start on the same stars to round-off. Memory
    is bounded by ``catalogue.chunk_size`` rows, not N.

    Parameters
    ----------
    key : int or jax PRNG key
        Seed of the subsample and of its starts (unused with ``init_params``).
    catalogue : StreamedCatalogue
        From :func:`open_catalogue`.
    n_components : int
    options : EMOptions, optional
        ``max_iter``, ``tol``, ``w`` and ``chunk_size`` (rows per E-step block inside a
        chunk) as for :func:`bayesmix.em.fit_em`; the start options (``init``,
        ``n_init``, ``n_peaks``) apply to the subsample's fit. Keywords override fields.
    init_params : MixtureParams or (weights, means, covariances), optional
        Start here instead of fitting a subsample.
    prior : MAPPrior, optional
        MAP mode, as for :func:`bayesmix.em.fit_em`.
    n_start_stars : int
        Stars of the random subsample whose full :func:`fit_em` gives the start.

    Returns
    -------
    EMResult
        One start (``start_kinds`` is ``("given",)`` or ``("subsample",)``).

    Examples
    --------
    >>> cat = open_catalogue("stars.fits", ["vx", "vy"], ["e_vx", "e_vy"])  # doctest: +SKIP
    >>> res = fit_em_streamed(0, cat, 3, tol=1e-3)  # doctest: +SKIP
    >>> write_memberships(res.params, cat, "members.fits", id_column="source_id")  # doctest: +SKIP
    """
    options = _merged_options(options, option_overrides)
    k, d = int(n_components), catalogue.n_features
    if k < 1 or k > catalogue.n_stars:
        raise ValueError(f"n_components must be in 1..{catalogue.n_stars} (the stars); got {n_components}.")
    chunks = catalogue.chunks()
    first = next(chunks)[1]
    chunks.close()  # closes the file now, not at garbage collection
    moments = _moments(catalogue, first.values.mean(axis=0))
    key = as_key(key)
    if init_params is None:
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        start = _start_params(key, _subsample(catalogue, n_start_stars, seed), k, options, prior)
    else:
        start = _check_start(init_params, k, d)
    model, w = _stream_model(moments, k, options, prior, start)
    e_stats = _chunked_e_stats(catalogue, model, k, int(options.chunk_size))
    loop = _em_iterations(start, e_stats, model, int(options.max_iter), float(options.tol))
    return _as_em_result(loop, w=w, n_effective=moments.total,
                         kind="given" if init_params is not None else "subsample",
                         max_iter=int(options.max_iter), tol=float(options.tol))


def _chunked_e_stats(catalogue: StreamedCatalogue, model: _Model, k: int, block: int):
    """``e_stats(params) -> _Stats``: one pass over the catalogue's chunks (each padded to one shape)."""
    d = catalogue.n_features
    rows = min(catalogue.chunk_size, catalogue.n_stars)
    block = min(int(block), rows)
    n_blocks = -(-rows // block)
    static = _block_static(k, d, n_blocks, block)

    def e_stats(params):
        total = None
        for _start, obs, _ in catalogue.chunks():
            total = _add_stats(total, _chunk_stats(params, *_blocked(obs, n_blocks, block), model, static))
        return total

    return e_stats


# --------------------------------------------------------------------------- per-star outputs


@jax.jit
def _per_star(params: MixtureParams, values, error_covs):
    lj = log_joint(params, Observations(values, error_covs))
    per_star = jax.scipy.special.logsumexp(lj, axis=1)
    return per_star, jnp.exp(lj - per_star[:, None])


def _padded_chunk(obs: Observations, rows: int):
    n = obs.values.shape[0]
    if n == rows:
        return obs.values, obs.error_covs
    pad = rows - n
    return (np.concatenate([obs.values, np.repeat(obs.values[:1], pad, axis=0)]),
            np.concatenate([obs.error_covs, np.repeat(obs.error_covs[:1], pad, axis=0)]))


def _chunk_outputs(params, catalogue: StreamedCatalogue, id_column):
    """``(first row, ids, per-star log-likelihood, memberships)`` of each chunk (one compiled shape)."""
    extra = [id_column] if id_column else []
    for start, obs, cols in catalogue.chunks(extra):
        n = obs.values.shape[0]
        ll, resp = _per_star(params, *_padded_chunk(obs, min(catalogue.chunk_size, catalogue.n_stars)))
        ids = cols[id_column] if id_column else np.arange(start, start + n)
        yield ids, np.asarray(ll)[:n], np.asarray(resp)[:n]


def _output_names(k: int, id_column) -> list[str]:
    return [id_column or "row", "log_likelihood", *(f"p_{j}" for j in range(k))]


def _write_csv(tmp, chunks, names):
    with open(tmp, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(names)
        for ids, ll, resp in chunks:
            columns = (c.tolist() for c in (ll, *resp.T))
            out.writerows(zip(ids.tolist(), *columns, strict=True))


def _write_fits(tmp, chunks, names, n_rows: int):
    """A FITS binary table written row chunk by row chunk (header first, NAXIS2 known in advance)."""
    from astropy.io import fits

    cols = [fits.Column(name=names[0], format="K")] + [fits.Column(name=n, format="D") for n in names[1:]]
    header = fits.BinTableHDU.from_columns(cols, nrows=0).header
    header["NAXIS2"] = n_rows
    dtype = np.dtype([(names[0], ">i8")] + [(n, ">f8") for n in names[1:]])
    with open(tmp, "wb") as fh:
        fh.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
        fh.write(header.tostring().encode("ascii"))
        for ids, ll, resp in chunks:
            rec = np.empty(len(ids), dtype)
            rec[names[0]] = ids
            rec[names[1]] = ll
            for j, name in enumerate(names[2:]):
                rec[name] = resp[:, j]
            fh.write(rec.tobytes())
        size = n_rows * dtype.itemsize
        fh.write(b"\0" * (-size % 2880))


def write_memberships(params, catalogue: StreamedCatalogue, path, *, id_column: str | None = None) -> Path:
    """Each star's membership probabilities and log-likelihood, written chunk by chunk, atomically.

    Parameters
    ----------
    params : MixtureParams
        E.g. :attr:`EMResult.params` of :func:`fit_em_streamed`.
    catalogue : StreamedCatalogue
    path : str or Path
        ``.fits`` (binary table) or ``.csv``; written to a temporary file beside it and
        renamed when complete, so a crash leaves no half file.
    id_column : str, optional
        An integer column to copy as the star identifier (default: 0-based file row ``row``).

    Returns
    -------
    Path
        Columns: the identifier, ``log_likelihood``, ``p_0`` .. ``p_{K-1}``.

    Examples
    --------
    >>> write_memberships(res.params, cat, "members.fits", id_column="source_id")  # doctest: +SKIP
    """
    params = check_params(*params)
    if params.n_features != catalogue.n_features:
        raise ValueError(f"params are {params.n_features}-dimensional; the catalogue has "
                         f"{catalogue.n_features} features.")
    if id_column is not None and id_column not in catalogue.reader.names:
        raise ValueError(f"id_column {id_column!r} not in the catalogue; its columns are "
                         f"{catalogue.reader.names}.")
    path = Path(path)
    names = _output_names(params.n_components, id_column)
    chunks = _chunk_outputs(params, catalogue, id_column)
    suffix = path.suffix.lower()
    if suffix in (".fits", ".fit"):
        return atomic_write(path, lambda tmp: _write_fits(tmp, chunks, names, catalogue.n_stars))
    if suffix == ".csv":
        return atomic_write(path, lambda tmp: _write_csv(tmp, chunks, names))
    raise ValueError(f"{path}: write memberships as .fits or .csv; got {suffix!r}.")


def streamed_log_likelihood(params, catalogue: StreamedCatalogue) -> float:
    """Total log-likelihood of all stars for one parameter set, one pass over the chunks.

    The full-data correction of draws made on a subsample (importance weights
    ``exp(full - subsample-scaled)``), or a check of a fit at N beyond memory.

    Parameters
    ----------
    params : MixtureParams
    catalogue : StreamedCatalogue

    Returns
    -------
    float

    Examples
    --------
    >>> streamed_log_likelihood(res.params, cat)  # doctest: +SKIP
    """
    params = check_params(*params)
    total = 0.0
    for _ids, ll, _resp in _chunk_outputs(params, catalogue, None):
        total += float(np.sum(ll))
    return total
