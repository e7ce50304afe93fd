"""The one place where a seed becomes a JAX PRNG key.

Everything stochastic in bayesmix takes an explicit key as its first argument; at the
user-facing edge an integer seed is accepted too. :func:`as_key` turns either into a
typed key (``jax.random.key``), so the rest of the package handles one key type.

Keys are split outside programs with :func:`split` (and :func:`split_data`): the same keys
as ``jax.random.split``, computed on the host for JAX's default threefry keys. In a fresh
process ``jax.random.split`` traces, lowers and loads a small program for every number of
keys (0.07-0.28 s measured at the start of a NUTS run, most of it lowering threefry), and
unpacking its result loads another; the host computation runs no program at all.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["as_key", "split", "split_data"]


def as_key(key, name: str = "key"):
    """A typed JAX PRNG key from an integer seed, a typed key or a legacy raw key.

    Parameters
    ----------
    key : int, typed key array (``jax.random.key(0)``) or raw ``uint32`` key (``jax.random.PRNGKey(0)``)
        A seed gives the same random numbers as the key ``jax.random.key(seed)``; a raw key
        the same numbers as itself.
    name : str
        The parameter's name, for the error message.

    Returns
    -------
    jax.Array
        A scalar typed key.

    Raises
    ------
    ValueError
        Anything else (a float, a string, a key array of several keys).

    Examples
    --------
    >>> from bayesmix._random import as_key
    >>> import jax
    >>> bool((jax.random.key_data(as_key(3)) == jax.random.key_data(jax.random.key(3))).all())
    True
    """
    if isinstance(key, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer seed or a JAX PRNG key (jax.random.key(0)); got a bool.")
    if isinstance(key, (int, np.integer)):
        if not 0 <= int(key) < 2**63:
            raise ValueError(f"{name} as a seed must be an integer in [0, 2**63); got {key}.")
        return _seed_key(int(key))
    if isinstance(key, jax.Array):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape == ():
                return key
        elif key.dtype == np.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(key)
    raise ValueError(
        f"{name} must be an integer seed or one JAX PRNG key (jax.random.key(0)); got "
        f"{type(key).__name__} with shape {getattr(key, 'shape', None)} "
        f"and dtype {getattr(key, 'dtype', None)}."
    )


def _seed_key(seed: int):
    """``jax.random.key(seed)``, made on the host where the key is threefry's (JAX's default).

    ``jax.random.key`` runs two small programs, compiled (or read from the cache) once per
    process; threefry's key of a seed is the seed's high and low 32-bit words, so it is
    wrapped here without running anything. ``test_random`` checks the two agree.
    """
    if jax.config.jax_default_prng_impl != "threefry2x32":
        return jax.random.key(seed)
    words = np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)
    return jax.random.wrap_key_data(words, impl="threefry2x32")


# Threefry-2x32, 20 rounds (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"),
# the block cipher behind JAX's default keys: two 32-bit words of key, two of counter.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)


def _threefry2x32(key_words: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32 of the counter pairs ``(x0[i], x1[i])`` (uint32 arrays) under ``key_words``.

    uint32 arithmetic wraps modulo 2**32 in numpy arrays as in the cipher's definition.
    """
    ks = (key_words[0], key_words[1], key_words[0] ^ key_words[1] ^ _KEY_PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
        x0 = x0 + ks[(group + 1) % 3]
        x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def _host_threefry_words(key) -> np.ndarray | None:
    """A concrete scalar threefry key's two words, or None (another PRNG, a traced key)."""
    if isinstance(key, jax.core.Tracer) or key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
        return None
    return np.asarray(jax.random.key_data(key), dtype=np.uint32)


def split_data(key, num: int = 2) -> np.ndarray:
    """The raw data of ``jax.random.split(key, num)``, computed on the host.

    Parameters
    ----------
    key : typed JAX PRNG key (scalar), e.g. from :func:`as_key`
    num : int
        Number of keys.

    Returns
    -------
    ndarray of uint32, shape (num, 2) for threefry keys
        ``jax.random.key_data(jax.random.split(key, num))``, bit for bit, under either
        setting of ``jax_threefry_partitionable`` (``test_random`` checks it). Keys of
        another PRNG implementation, or traced keys, go through ``jax.random.split``.

    Examples
    --------
    >>> import jax, numpy as np
    >>> from bayesmix._random import as_key, split_data
    >>> key = as_key(0)
    >>> bool(np.array_equal(split_data(key, 3), jax.random.key_data(jax.random.split(key, 3))))
    True
    """
    words = _host_threefry_words(key)
    if words is None:
        return np.asarray(jax.random.key_data(jax.random.split(key, num)))
    return _split_words(words, num)


def _split_words(words: np.ndarray, num: int) -> np.ndarray:
    """(num, 2) uint32: the data of ``num`` keys split from the threefry key ``words``."""
    if jax.config.jax_threefry_partitionable:
        # Key i is the cipher of counter i written as two words (high, low).
        count = np.arange(num, dtype=np.uint64)
        bits = _threefry2x32(words, (count >> np.uint64(32)).astype(np.uint32), count.astype(np.uint32))
        return np.stack(bits, axis=-1)
    # The original scheme: the cipher of the counters 0..2 num - 1 taken as halves, read in order.
    half = np.arange(2 * num, dtype=np.uint32).reshape(2, num)
    return np.concatenate(_threefry2x32(words, half[0], half[1])).reshape(num, 2)


def split(key, num: int = 2) -> tuple:
    """``tuple(jax.random.split(key, num))``, computed on the host (see :func:`split_data`).

    Parameters
    ----------
    key : typed JAX PRNG key (scalar)
    num : int

    Returns
    -------
    tuple of ``num`` scalar typed keys

    Examples
    --------
    >>> from bayesmix._random import as_key, split
    >>> key_em, key_start = split(as_key(1))
    """
    words = _host_threefry_words(key)
    if words is None:
        return tuple(jax.random.split(key, num))
    return tuple(jax.random.wrap_key_data(row, impl="threefry2x32") for row in _split_words(words, num))
