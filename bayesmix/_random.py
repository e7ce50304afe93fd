"""The one place where a seed becomes a JAX PRNG key.

Everything stochastic in bayesmix takes an explicit key as its first argument; at the
user-facing edge an integer seed is accepted too. :func:`as_key` turns either into a
typed key (``jax.random.key``), so the rest of the package handles one key type.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["as_key"]


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
