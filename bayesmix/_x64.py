"""Switch JAX to float64, once, when a numerical module of bayesmix is imported.

Mixture log-likelihoods sum up to ~1e6 per-star terms and EM compares them across
iterations to a relative tolerance of ~1e-10; float32 cannot resolve that. JAX's
``jax_enable_x64`` flag is process-wide, so importing :mod:`bayesmix.likelihood`
(or any module built on it) turns it on for the whole Python process. This is
documented in the README ("Numerics").
"""

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)


def device_array(x, dtype=None) -> jax.Array:
    """``x`` (host data) as a JAX array on the default device, by a copy and nothing else.

    ``jnp.asarray`` of a NumPy array compiles a conversion program for each new shape and
    dtype; a fresh run met some thirty of them, 3-4 ms each even when found in the
    compilation cache. ``jax.device_put`` copies without compiling. A JAX array already of
    ``dtype`` is returned as it is.

    Parameters
    ----------
    x : array_like or jax.Array
    dtype : numpy dtype, optional
        Default: ``x``'s own (float64 and int64 stay 64-bit: this module enables x64).

    Returns
    -------
    jax.Array, uncommitted (as ``jnp.asarray`` gives)

    Examples
    --------
    >>> import numpy as np
    >>> device_array(np.arange(3), np.float64).dtype
    dtype('float64')
    """
    if isinstance(x, jax.Array) and (dtype is None or x.dtype == np.dtype(dtype)):
        return x
    return jax.device_put(np.asarray(x, dtype=dtype))
