"""The one padding helper: rows padded to a few bucket sizes so compiled programs are reused.

A JAX program is compiled for exact array shapes, so a catalogue of a new size would
compile again. Padding the stars to a small set of sizes (256, then four sizes per
octave, ``2^e * {1, 1.25, 1.5, 1.75}``, up to 65536, then multiples of 16384) lets one
compiled program, and one stored program (:mod:`bayesmix._programs`), serve many sizes
at most 25% extra rows (about 12% on average). Padding rows copy row 0 (finite
everywhere, so no NaN reaches a gradient) and must be given zero weight by the caller (a
``sample_weight`` of 0, an ``Observations.weight`` of 0, or sliced off the result).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CHUNK", "MIN_BINS", "bin_bucket", "bucket", "chunk_rows", "chunks", "pad_columns", "pad_rows"]

# Most stars per compiled evaluation chunk; also the largest power-of-two bucket.
CHUNK = 2**16
# Float64 numbers in the largest temporary of one evaluation chunk (64 MiB).
CHUNK_FLOATS = 2**23
# Smallest bucket: small catalogues (and the check suite's tens to hundreds of rows) share one program.
MIN_BUCKET = 256
# Above CHUNK stars, rows are padded to a multiple of this (<= 25% extra rows, usually far less).
LARGE_STEP = 2**14
# Smallest padded number of histogram bins (posterior predictive counts).
MIN_BINS = 16


def bucket(n: int) -> int:
    """Padded number of rows for ``n`` stars (few distinct values, so few compilations).

    Examples
    --------
    >>> from bayesmix._padding import bucket
    >>> bucket(10), bucket(300), bucket(1500), bucket(20000), bucket(70000)
    (256, 320, 1536, 20480, 81920)
    """
    n = max(int(n), 1)
    if n <= MIN_BUCKET:
        return MIN_BUCKET
    if n <= CHUNK:
        # Quarter octaves: 2^e * (4, 5, 6, 7) / 4, the smallest that holds n.
        quarter = 1 << ((n - 1).bit_length() - 3)
        return -(-n // quarter) * quarter
    return -(-n // LARGE_STEP) * LARGE_STEP


def bin_bucket(n_bins: int) -> int:
    """Padded number of histogram bins: a power of two, at least :data:`MIN_BINS`.

    The model check's binnings follow each catalogue (tens of bins); doubling steps keep
    nearly all of them in one or two programs, and an unused bin costs next to nothing.

    Examples
    --------
    >>> from bayesmix._padding import bin_bucket
    >>> bin_bucket(10), bin_bucket(17), bin_bucket(38), bin_bucket(50)
    (16, 32, 64, 64)
    """
    return max(MIN_BINS, 1 << (max(int(n_bins), 1) - 1).bit_length())


def pad_columns(columns: dict, n_rows: int) -> dict:
    """Every array (n, ...) of ``columns`` padded to ``n_rows`` rows by :func:`pad_rows`.

    Per-star covariates travel beside padded stars: their padding rows copy row 0 too,
    so that whatever the program computes from them stays finite.

    Examples
    --------
    >>> import numpy as np
    >>> pad_columns({"radius": np.array([1.0, 2.0])}, 3)["radius"].tolist()
    [1.0, 2.0, 1.0]
    """
    return {name: pad_rows(col, n_rows) for name, col in columns.items()}


def chunk_rows(floats_per_row: int) -> int:
    """Rows per evaluation chunk: a power of two, at most ``CHUNK``, keeping one temporary of
    ``floats_per_row`` numbers per row within ``CHUNK_FLOATS`` (at least one row)."""
    rows = max(1, min(CHUNK, CHUNK_FLOATS // max(1, floats_per_row)))
    return 1 << (rows.bit_length() - 1)


def chunks(n: int, chunk: int):
    """``(start, stop, padded_rows)`` covering ``n`` rows; few distinct padded sizes."""
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        yield start, stop, min(bucket(stop - start), chunk)


def pad_rows(a, n_rows: int) -> np.ndarray:
    """``a`` (n, ...) with copies of its first row appended up to ``n_rows`` rows.

    Parameters
    ----------
    a : array (n, ...), n >= 1
    n_rows : int
        Rows wanted; ``a`` is returned unchanged when it already has at least as many.

    Returns
    -------
    numpy array (max(n, n_rows), ...)

    Examples
    --------
    >>> import numpy as np
    >>> from bayesmix._padding import pad_rows
    >>> pad_rows(np.array([[1.0], [2.0]]), 4)[:, 0].tolist()
    [1.0, 2.0, 1.0, 1.0]
    """
    a = np.asarray(a)
    extra = n_rows - a.shape[0]
    if extra <= 0:
        return a
    return np.concatenate([a, np.repeat(a[:1], extra, axis=0)])
