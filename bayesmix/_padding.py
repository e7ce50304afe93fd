"""The one padding helper: rows padded to a few bucket sizes so compiled programs are reused.

A JAX program is compiled for exact array shapes, so a catalogue of a new size would
compile again. Padding the stars to a small set of sizes (powers of two from 256 to
65536, then multiples of 16384) lets one compiled program serve many sizes. Padding rows
copy row 0 (finite everywhere, so no NaN reaches a gradient) and must be given zero
weight by the caller (a ``sample_weight`` of 0, or sliced off the result).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CHUNK", "bucket", "chunk_rows", "chunks", "pad_rows"]

# Most stars per compiled evaluation chunk; also the largest power-of-two bucket.
CHUNK = 2**16
# Float64 numbers in the largest temporary of one evaluation chunk (64 MiB).
CHUNK_FLOATS = 2**23
# Smallest bucket: small catalogues (and the check suite's tens to hundreds of rows) share one program.
MIN_BUCKET = 256
# Above CHUNK stars, rows are padded to a multiple of this (<= 25% extra rows, usually far less).
LARGE_STEP = 2**14


def bucket(n: int) -> int:
    """Padded number of rows for ``n`` stars (few distinct values, so few compilations).

    Examples
    --------
    >>> from bayesmix._padding import bucket
    >>> bucket(10), bucket(300), bucket(70000)
    (256, 512, 81920)
    """
    if n <= CHUNK:
        return max(MIN_BUCKET, 1 << (max(int(n), 1) - 1).bit_length())
    return -(-n // LARGE_STEP) * LARGE_STEP


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
