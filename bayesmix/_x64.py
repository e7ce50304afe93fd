"""Switch JAX to float64, once, when a numerical module of bayesmix is imported.

Mixture log-likelihoods sum up to ~1e6 per-star terms and EM compares them across
iterations to a relative tolerance of ~1e-10; float32 cannot resolve that. JAX's
``jax_enable_x64`` flag is process-wide, so importing :mod:`bayesmix.likelihood`
(or any module built on it) turns it on for the whole Python process. This is
documented in the README ("Numerics").
"""

import jax

jax.config.update("jax_enable_x64", True)
