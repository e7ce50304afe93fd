"""Fixed non-Gaussian mixture components (backgrounds) as first-class objects.

A background is a component whose shape is fixed in advance and whose weight is
fitted: a constant density over a box that encloses the field (:class:`UniformBackground`),
or one broad Gaussian convolved with each star's errors (:class:`GaussianBackground`).
Each has a pure JAX :meth:`log_density` of the *observed* values, shape (n_stars,), which
:func:`bayesmix.likelihood.log_joint` places as an extra column next to the Gaussian
components: EM, the NumPyro models, the memberships and the predictive checks all get
the background from there, so its density is written only in this module.

The classes are also importable from :mod:`bayesmix.em` (and ``bayesmix``), where they
were first defined.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax.numpy as jnp
import numpy as np

from bayesmix import _x64  # noqa: F401  (float64 before any array is made)
from bayesmix.likelihood import Observations, mvn_log_prob

__all__ = ["Background", "GaussianBackground", "UniformBackground"]


class Background(Protocol):
    """What the layers above ask of a fixed component: a weight and a log density.

    Attributes
    ----------
    weight : float
        Initial (or fixed) fraction of stars in the component, in (0, 1).
    fit_weight : bool
        Whether EM fits the weight (it is always sampled by the NumPyro models).
    """

    weight: float
    fit_weight: bool

    def log_density(self, data: Observations):
        """Log density of each star's observed values, shape (n_stars,)."""


@dataclasses.dataclass(frozen=True, eq=False)
class UniformBackground:
    """A fixed background of constant density ``1 / prod(high - low)`` over a box.

    Its shape is fixed; its weight is fitted unless ``fit_weight`` is False. The
    density is used for every star (the box is meant to enclose the data; stars
    outside it are logged). Measurement errors do not change a constant density.

    Attributes
    ----------
    low, high : array_like, shape (n_features,)
    weight : float
        Initial (or fixed) fraction of stars in the background, in (0, 1).
    fit_weight : bool
    """

    low: Any
    high: Any
    weight: float = 0.1
    fit_weight: bool = True

    def log_density(self, data: Observations):
        """Log density of each star under the background.

        Parameters
        ----------
        data : Observations
            ``values`` (n_stars, n_features); the errors are not used.

        Returns
        -------
        jax.Array, shape (n_stars,)
            ``-sum(log(high - low))`` for every star.
        """
        # The box is configuration, not a traced parameter: its log volume is a float64
        # constant computed once in numpy (the same number EM and the models always used).
        low = np.asarray(self.low, dtype=float)
        high = np.asarray(self.high, dtype=float)
        return jnp.full(data.values.shape[0], -float(np.sum(np.log(high - low))), dtype=jnp.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianBackground:
    """A fixed broad Gaussian background, convolved with each star's errors.

    Attributes
    ----------
    mean : array_like, shape (n_features,)
    covariance : array_like, shape (n_features, n_features)
    weight : float
        Initial (or fixed) fraction of stars in the background, in (0, 1).
    fit_weight : bool
    """

    mean: Any
    covariance: Any
    weight: float = 0.1
    fit_weight: bool = True

    def log_density(self, data: Observations):
        """``log N(x_i | mean, covariance + S_i)`` of each star.

        Parameters
        ----------
        data : Observations
            ``values`` (n_stars, n_features), ``error_covs`` (n_stars, n_features, n_features).

        Returns
        -------
        jax.Array, shape (n_stars,)
            NaN for a star whose total covariance is not positive definite.
        """
        mean = jnp.asarray(self.mean, dtype=jnp.float64)
        cov = jnp.asarray(self.covariance, dtype=jnp.float64)
        return mvn_log_prob(data.values, mean, cov + data.error_covs)
