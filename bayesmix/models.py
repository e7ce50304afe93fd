"""Mixture models as NumPyro programs, with discrete assignments marginalised.

Every model here is one program, :meth:`MixtureModel.model`, whose likelihood is the
shared error-deconvolved mixture of :mod:`bayesmix.likelihood` added through
``numpyro.factor`` (``logsumexp`` over components, so no discrete site exists and
NUTS applies). Priors are arguments (:class:`Priors`), resolved against the data once
at construction so that the program itself only does arithmetic.

Parameterisation of component ``k`` (intrinsic, i.e. before measurement errors):

* weights ``w ~ Dirichlet(alpha)`` (or a radius-dependent member fraction);
* means ``mu_k ~ Normal(mean_loc, mean_scale)`` per feature;
* covariances ``Sigma_k = diag(s_k) C_k diag(s_k)`` with scales
  ``s_kj ~ HalfNormal(scale_scale_j)`` and correlations ``C_k ~ LKJ(eta)``.

Label switching is broken by an :class:`Ordering`: the scales (or means) of one feature,
or the weights, are constrained to increase with the component index. The prior is
the exchangeable prior above restricted to that ordered region (an
``ImproperUniform`` ordered site plus the prior density as a factor), so component 0
is the narrowest (lowest, lightest) one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from bayesmix import (
    _x64,  # noqa: F401
    spatial,
)
from bayesmix._choices import (
    DISPERSION_PROFILES,
    LIKELIHOOD_PRECISIONS,
    ORDERINGS,
    RADIUS_LAWS,
    SPATIAL_PROFILES,
)
from bayesmix._x64 import device_array
from bayesmix.likelihood import (
    MixtureParams,
    Observations,
    as_observations,
    log_joint,
    mvn_log_prob,
    total_log_likelihood,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ComponentPrior",
    "MemberKinematics",
    "MixtureModel",
    "Ordering",
    "Priors",
    "RadiusFraction",
    "SpatialLaw",
    "cluster_field_model",
    "dispersion_profile",
    "mixture_model",
]



@dataclasses.dataclass(frozen=True)
class Ordering:
    """Which quantity increases with the component index (breaks label switching).

    Attributes
    ----------
    kind : {"scale", "mean", "weight"}
        Intrinsic dispersion of ``feature``, mean of ``feature``, or the weight.
    feature : int
        Feature index for "scale" and "mean".
    """

    kind: str = "scale"
    feature: int = 0

    def __post_init__(self):
        if self.kind not in ORDERINGS:
            raise ValueError(f"Ordering kind={self.kind!r}; use one of {ORDERINGS}.")


@dataclasses.dataclass(frozen=True)
class ComponentPrior:
    """Priors of one component, replacing the shared ones of :class:`Priors` for it.

    For example a literature systemic velocity and a cold dispersion for the cluster:
    ``ComponentPrior(mean_loc=-44.8, mean_scale=2.0, scale_scale=10.0)``. None keeps the
    shared value.

    Attributes
    ----------
    mean_loc, mean_scale : float or array_like (n_features,), optional
        Normal prior of the component's mean.
    scale_scale : float or array_like (n_features,), optional
        HalfNormal scale of the component's intrinsic dispersion.
    """

    mean_loc: Any = None
    mean_scale: Any = None
    scale_scale: Any = None


@dataclasses.dataclass(frozen=True)
class Priors:
    """Prior settings; None picks a weakly informative value scaled to the data.

    Attributes
    ----------
    weight_concentration : float
        Dirichlet concentration ``alpha`` of the weights (1: uniform on the simplex).
    mean_loc, mean_scale : float or array_like (n_features,), optional
        Normal prior of every component mean. Defaults: the data median, and three
        times the data standard deviation (measured values, errors included).
    scale_scale : float or array_like (n_features,), optional
        HalfNormal scale of the intrinsic dispersions. Default: twice the data
        standard deviation.
    lkj_concentration : float
        LKJ ``eta`` of the correlation matrices (1: uniform; 2 mildly favours 0).
    frac_loc, frac_scale : float
        Normal prior of the radius-law parameters (logit of the member fraction at
        the reference radius and its log-radius slope; or the log central density
        ratio of the Plummer law).
    components : mapping of str or int to ComponentPrior, optional
        Per-component priors by component name (or index), e.g.
        ``{"cluster": ComponentPrior(mean_loc=-44.8, mean_scale=2.0)}``. Under an
        ordering by mean or scale, component ``k`` is the ``k``-th in that order.
    """

    weight_concentration: float = 1.0
    mean_loc: Any = None
    mean_scale: Any = None
    scale_scale: Any = None
    lkj_concentration: float = 2.0
    frac_loc: float = 0.0
    frac_scale: float = 2.5
    components: Any = None


@dataclasses.dataclass(frozen=True)
class RadiusFraction:
    """Member fraction that depends on projected radius (membership problems).

    Component 0 is the cluster; every other component (and a background) is the field.
    The law sets the member fraction ``f(R)`` of each star; the field components share
    ``1 - f(R)`` with free weights (a Dirichlet over their shares), so the field can be
    lumpy (several Gaussians, a cold stream, a fixed background) while only the
    cluster follows the radial profile. With exactly two Gaussians and no background,
    the ordering applies to both (under the default ordering the cluster is the
    narrower one, as in the tutorial); with more, it applies among the field components
    only, and the cluster is told apart by the radius law and its own prior.

    Attributes
    ----------
    covariate : str
        Name of the projected-radius covariate (e.g. ``"DCEN"`` or ``"R_proj"``).
    kind : {"logistic", "plummer"}
        ``logistic``: ``f(R) = sigmoid(a + b log(R / R_ref))``, sites
        ``frac_intercept`` (a) and ``frac_slope`` (b).
        ``plummer``: the ratio of a projected Plummer member density to a constant
        field density, ``f/(1-f) = exp(c) (1 + R^2/r_p^2)^-2``, sites
        ``frac_log_ratio`` (c) and ``frac_radius`` (r_p, log-normal prior around R_ref).
    reference_radius : float, optional
        ``R_ref``; the median radius of the stars when None.
    """

    covariate: str = "R_proj"
    kind: str = "logistic"
    reference_radius: float | None = None

    def __post_init__(self):
        if self.kind not in RADIUS_LAWS:
            raise ValueError(f"RadiusFraction kind={self.kind!r}; use one of {RADIUS_LAWS}.")

    def sample_law(self, hyper: dict, n_field: int) -> dict:
        """Sample the law's sites in a NumPyro program (their priors live here).

        Parameters
        ----------
        hyper : dict
            :meth:`MixtureModel.hyperparameters`: ``frac_loc``, ``frac_scale``,
            ``reference_radius`` and ``alpha`` (the Dirichlet concentration of the field
            shares).
        n_field : int
            Field columns (field Gaussians and a background); with more than one, their
            shares are a ``field_weights`` site.

        Returns
        -------
        dict of str to array
            The sites :meth:`log_weights` reads.
        """
        h = hyper
        if self.kind == "logistic":
            law = {"frac_intercept": numpyro.sample("frac_intercept",
                                                    dist.Normal(h["frac_loc"], h["frac_scale"])),
                   "frac_slope": numpyro.sample("frac_slope", dist.Normal(0.0, h["frac_scale"]))}
        else:
            law = {"frac_log_ratio": numpyro.sample("frac_log_ratio",
                                                    dist.Normal(h["frac_loc"], 2.0 * h["frac_scale"])),
                   "frac_radius": numpyro.sample("frac_radius",
                                                 dist.LogNormal(jnp.log(h["reference_radius"]), 1.0))}
        if n_field > 1:
            law["field_weights"] = numpyro.sample("field_weights",
                                                  dist.Dirichlet(jnp.full(n_field, h["alpha"])))
        return law

    def log_weights(self, law: dict, radius, reference_radius, n_field: int, minimum_radius=0.0):
        """Per-star log weights under the law: the one place the models write it down.

        The cluster gets ``log f(R)``; every field column gets ``log(1 - f(R)) + log share``.

        Parameters
        ----------
        law : mapping of str to array
            The law's sites (``frac_intercept`` and ``frac_slope``, or ``frac_log_ratio`` and
            ``frac_radius``) and, when ``n_field > 1``, ``field_weights`` (n_field,): the
            values of one draw, or the sites being sampled.
        radius : array, shape (n_stars,)
            Projected radius of every star, >= 0.
        reference_radius : float or array, shape ()
            ``R_ref`` of the logistic law.
        n_field : int
            Field columns, background last.
        minimum_radius : float or array, shape ()
            The logistic law reads ``max(R, minimum_radius)``: its ``log R`` has no value (and
            its slope no gradient) at R = 0, so a star at the centre is placed at this radius
            (by default half the smallest positive radius, which leaves every positive radius
            exact). The Plummer law is smooth at R = 0 and reads R itself.

        Returns
        -------
        array, shape (n_stars, 1 + n_field)
            Finite, with finite gradients, for every R >= 0.

        Examples
        --------
        >>> import numpy as np
        >>> law = {"frac_intercept": 0.0, "frac_slope": -1.0}
        >>> lw = RadiusFraction("R").log_weights(law, np.array([0.0, 1.0]), 1.0, 1, minimum_radius=0.5)
        >>> np.round(np.exp(lw), 3).tolist()
        [[0.667, 0.333], [0.5, 0.5]]
        """
        if self.kind == "logistic":
            safe = jnp.maximum(radius, minimum_radius)
            logit = law["frac_intercept"] + law["frac_slope"] * jnp.log(safe / reference_radius)
        else:
            logit = law["frac_log_ratio"] - 2.0 * jnp.log1p((radius / law["frac_radius"]) ** 2)
        field_shares = law["field_weights"] if n_field > 1 else jnp.ones(1)
        return jnp.concatenate([jax.nn.log_sigmoid(logit)[:, None],
                                jax.nn.log_sigmoid(-logit)[:, None] + jnp.log(field_shares)[None, :]], axis=1)


@dataclasses.dataclass(frozen=True)
class SpatialLaw:
    """Spatial membership term: members follow a surface-density profile, the field is uniform.

    The per-star joint is ``f p_mem(x_i) N(v_i | member) + (1 - f) p_field(x_i) N(v_i | field)``
    with ``p_mem`` the profile and ``p_field = 1 / area`` both normalised over the
    footprint; it enters :func:`bayesmix.likelihood.log_joint` as per-star log weights
    ``log f + log p_mem(x_i)`` and ``log(1 - f) + log share + log p_field(x_i)`` (one join).
    The member fraction ``f`` (site ``frac_member``, uniform prior) is a global number;
    the memberships follow from the densities. Component 0 is the cluster, every other
    column the field (several field Gaussians share ``1 - f`` through ``field_weights``).

    Attributes
    ----------
    footprint : bayesmix.spatial.Footprint
        Normalises both densities; every star must lie inside it.
    xi, eta : str
        Covariates with the tangent-plane offsets from the cluster centre.
    profile : {"plummer", "exponential"}
    scale_radius : float, optional
        Fixed scale radius (e.g. from the literature); None samples ``scale_radius``
        with a LogNormal prior (median ``scale_radius_loc``, log sd ``scale_radius_log_sd``).
    scale_radius_loc : float, optional
        Default: half the median distance of the stars from the centre.
    scale_radius_log_sd : float
    ellipticity : float, optional
        ``1 - b/a``, fixed (default 0: round); None samples it, uniform in [0, 0.9].
    position_angle : float, optional
        Of the major axis, degrees north through east, fixed (default 0); None samples it,
        uniform in [0, 180).
    """

    footprint: Any
    xi: str = "xi"
    eta: str = "eta"
    profile: str = "plummer"
    scale_radius: float | None = None
    scale_radius_loc: float | None = None
    scale_radius_log_sd: float = 1.0
    ellipticity: float | None = 0.0
    position_angle: float | None = 0.0

    def __post_init__(self):
        if self.profile not in SPATIAL_PROFILES:
            raise ValueError(f"SpatialLaw profile={self.profile!r}; use one of {SPATIAL_PROFILES}.")
        for name, low, high in (("scale_radius", 0.0, math.inf), ("scale_radius_loc", 0.0, math.inf),
                                ("scale_radius_log_sd", 0.0, math.inf), ("ellipticity", -1e-300, 0.95)):
            value = getattr(self, name)
            if value is not None and not (low < float(value) < high):
                raise ValueError(f"SpatialLaw {name}={value!r}; must be in ({max(low, 0.0)}, {high}).")

    def sample_law(self, n_field: int, alpha) -> dict:
        """Sample the spatial sites (their priors live here); fixed values are not sites."""
        law = {"frac_member": numpyro.sample("frac_member", dist.Beta(1.0, 1.0))}
        if self.scale_radius is None:
            law["scale_radius"] = numpyro.sample(
                "scale_radius", dist.LogNormal(math.log(self.scale_radius_loc), self.scale_radius_log_sd))
        if self.ellipticity is None:
            law["ellipticity"] = numpyro.sample("ellipticity", dist.Uniform(0.0, 0.9))
        if self.position_angle is None:
            law["position_angle"] = numpyro.sample("position_angle", dist.Uniform(0.0, 180.0))
        if n_field > 1:
            law["field_weights"] = numpyro.sample("field_weights", dist.Dirichlet(jnp.full(n_field, alpha)))
        return law

    def _value(self, law, name):
        fixed = getattr(self, name)
        return law[name] if fixed is None else fixed

    def global_weights(self, law: dict, n_field: int):
        """``(f, (1 - f) share_1, ...)``, shape (1 + n_field,)."""
        shares = jnp.asarray(law["field_weights"]) if n_field > 1 else jnp.ones(1)
        f = jnp.asarray(law["frac_member"])
        return jnp.concatenate([f[None], (1.0 - f) * shares])

    def log_weights(self, law: dict, covariates: dict, n_field: int):
        """Per-star log weights: ``log f + log p_mem(x_i)``, ``log((1 - f) share) + log p_field``.

        Parameters
        ----------
        law : mapping of str to array
            ``frac_member`` and the sampled shape parameters (one draw, or the sites).
        covariates : mapping with the ``xi`` and ``eta`` columns, shape (n_stars,)
        n_field : int

        Returns
        -------
        array, shape (n_stars, 1 + n_field)
            Not normalised over the columns: each row carries the star's position density.
        """
        xi, eta = jnp.asarray(covariates[self.xi]), jnp.asarray(covariates[self.eta])
        log_member = spatial.normalised_profile_log_density(
            self.profile, xi, eta, self.footprint, self._value(law, "scale_radius"),
            self._value(law, "ellipticity"), self._value(law, "position_angle"))
        log_field = -math.log(self.footprint.area)
        log_g = jnp.log(self.global_weights(law, n_field))
        return jnp.concatenate([(log_g[0] + log_member)[:, None],
                                jnp.broadcast_to(log_g[1:] + log_field, (xi.shape[0], n_field))], axis=1)

    def init_values(self, w) -> dict:
        """Starting values from the weights of a velocity-only point estimate (EM)."""
        values = {"frac_member": np.asarray(float(np.clip(w[0], 0.01, 0.99)))}
        if self.scale_radius is None:
            values["scale_radius"] = np.asarray(self.scale_radius_loc)
        if self.ellipticity is None:
            values["ellipticity"] = np.asarray(0.1)
        if self.position_angle is None:
            values["position_angle"] = np.asarray(90.0)
        if len(w) > 2:
            values["field_weights"] = np.asarray(w[1:] / np.sum(w[1:]))
        return values

    def positions(self, covariates: dict) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(covariates[self.xi], float), np.asarray(covariates[self.eta], float)


@dataclasses.dataclass(frozen=True)
class MemberKinematics:
    """A radius-dependent velocity dispersion and a velocity gradient for the cluster (1-D data).

    The member's density of star ``i`` becomes ``N(v_i | mu_i, sigma(R_i)^2 + e_i^2)`` with
    ``mu_i = mu + k_xi xi_i + k_eta eta_i`` and ``sigma(R)`` a power law
    ``sigma_ref (R / R_ref)^gamma`` (``sigma_ref`` is the member's dispersion site, site
    ``dispersion_slope`` = gamma) or piecewise constant in radius bins (the innermost bin's
    dispersion is the member's dispersion site, with its prior and the ordering; site
    ``dispersion_bins`` holds the others, one HalfNormal prior per bin). It is computed with
    :func:`bayesmix.likelihood.mvn_log_prob` and joined by
    :func:`bayesmix.likelihood.log_joint` as an extra per-star column; the field stays an
    ordinary Gaussian component.

    Attributes
    ----------
    radius : str, optional
        Projected-radius covariate of the dispersion profile; None: constant dispersion.
    kind : {"power_law", "bins"}
    reference_radius : float, optional
        ``R_ref`` of the power law; default the median radius of the stars.
    slope_scale : float
        Normal(0, slope_scale) prior of gamma.
    bin_edges : sequence of float, optional
        Increasing radius edges of the bins (``kind="bins"``); stars outside the edges
        take the first or last bin.
    bin_scales : float or sequence of float, optional
        HalfNormal scale of each bin's dispersion (the first bin's is the member's dispersion
        prior, ``scale_scale``, which is also the default of the others).
    gradient : (str, str), optional
        Covariates ``(xi, eta)`` of the velocity gradient; None: no gradient.
    gradient_scale : float, optional
        Normal(0, gradient_scale) prior of ``gradient_xi`` and ``gradient_eta``
        (velocity per unit offset); default the member's ``scale_scale`` over the median radius.
    """

    radius: str | None = None
    kind: str = "power_law"
    reference_radius: float | None = None
    slope_scale: float = 1.0
    bin_edges: tuple | None = None
    bin_scales: Any = None
    gradient: tuple | None = None
    gradient_scale: float | None = None
    minimum_radius: float | None = None  # resolved by the model builder (half the smallest positive radius)

    def __post_init__(self):
        if self.kind not in spatial.DISPERSION_PROFILES:
            raise ValueError(f"MemberKinematics kind={self.kind!r}; use one of {DISPERSION_PROFILES}.")
        if self.radius is None and self.gradient is None:
            raise ValueError("MemberKinematics needs a radius (dispersion profile) or a gradient (or both).")
        if self.kind == "bins" and self.radius is not None:
            edges = np.asarray(self.bin_edges if self.bin_edges is not None else [], float)
            if edges.size < 2 or not np.all(np.diff(edges) > 0) or not np.all(np.isfinite(edges)):
                raise ValueError(f"MemberKinematics bin_edges={self.bin_edges!r}: give at least 2 "
                                 "increasing, finite radii.")

    @property
    def n_bins(self) -> int:
        return len(self.bin_edges) - 1 if self.kind == "bins" and self.radius is not None else 0

    def covariate_names(self) -> tuple[str, ...]:
        return ((self.radius,) if self.radius else ()) + tuple(self.gradient or ())

    def sample_sites(self) -> dict:
        """The profile's and the gradient's sites (their priors live here)."""
        sites = {}
        if self.radius is not None and self.kind == "power_law":
            sites["dispersion_slope"] = numpyro.sample("dispersion_slope", dist.Normal(0.0, self.slope_scale))
        if self.n_bins > 1:
            scales = jnp.broadcast_to(jnp.asarray(self.bin_scales, dtype=jnp.float64), (self.n_bins,))[1:]
            sites["dispersion_bins"] = numpyro.sample("dispersion_bins", dist.HalfNormal(scales).to_event(1))
        if self.gradient is not None:
            for axis in ("xi", "eta"):
                sites[f"gradient_{axis}"] = numpyro.sample(f"gradient_{axis}",
                                                           dist.Normal(0.0, self.gradient_scale))
            record_gradient(sites)
        return sites

    def init_values(self, sigma_ref: float) -> dict:
        """Starting values: a flat profile at the point estimate's dispersion, no gradient."""
        values = {}
        if self.radius is not None and self.kind == "power_law":
            values["dispersion_slope"] = np.asarray(0.0)
        if self.n_bins > 1:
            values["dispersion_bins"] = np.full(self.n_bins - 1, float(sigma_ref))
        if self.gradient is not None:
            values["gradient_xi"] = values["gradient_eta"] = np.asarray(0.0)
        return values

    def dispersion(self, sites: dict, sigma_ref, radius):
        """``sigma(R)`` of the members at ``radius`` (any shape)."""
        if self.radius is None:
            return jnp.broadcast_to(sigma_ref, jnp.shape(radius))
        if self.kind == "bins":
            sigmas = jnp.concatenate([jnp.reshape(sigma_ref, (1,)), jnp.reshape(sites.get(
                "dispersion_bins", jnp.zeros(0)), (-1,))])
            return spatial.binned_dispersion(radius, sigmas, self.bin_edges)
        safe = jnp.maximum(radius, self.minimum_radius)
        return spatial.power_law_dispersion(safe, sigma_ref, sites["dispersion_slope"], self.reference_radius)

    def member_log_prob(self, sites: dict, mean, sigma_ref, data: Observations, covariates: dict):
        """``log N(v_i | mu_i, sigma(R_i)^2 + e_i^2)`` of every star, shape (n_stars,)."""
        n = data.values.shape[0]
        mu = jnp.broadcast_to(mean, (n,))
        if self.gradient is not None:
            mu = mu + sites["gradient_xi"] * covariates[self.gradient[0]] \
                + sites["gradient_eta"] * covariates[self.gradient[1]]
        radius = covariates[self.radius] if self.radius is not None else jnp.zeros(n)
        sigma = self.dispersion(sites, sigma_ref, jnp.asarray(radius))
        var = sigma**2 + data.error_covs[:, 0, 0]
        return mvn_log_prob(data.values, mu[:, None], var[:, None, None])


def record_gradient(sites: dict) -> None:
    """Record the gradient's magnitude and position angle (of increasing velocity, degrees
    north through east) as deterministic sites."""
    kx, ke = sites["gradient_xi"], sites["gradient_eta"]
    numpyro.deterministic("gradient_magnitude", jnp.hypot(kx, ke))
    numpyro.deterministic("gradient_angle", jnp.mod(jnp.rad2deg(jnp.arctan2(kx, ke)), 360.0))


def _ordered_site(name, shape_k, log_prob_fn, positive):
    support = constraints.positive_ordered_vector if positive else constraints.ordered_vector
    value = numpyro.sample(name, dist.ImproperUniform(support, (), (shape_k,)))
    numpyro.factor(f"{name}_prior", log_prob_fn(value))
    return value


def _with_column(rest, column, j):
    """Insert ``column`` (K,) as column ``j`` of ``rest`` (K, D-1)."""
    if rest is None:
        return column[:, None]
    return jnp.concatenate([rest[:, :j], column[:, None], rest[:, j:]], axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class MixtureModel:
    """A K-component deconvolved Gaussian mixture in D dimensions, as a NumPyro program.

    Build it with :func:`mixture_model` or :func:`cluster_field_model` (they resolve
    the priors against the data); call :meth:`model` as the NumPyro model.

    Attributes
    ----------
    n_components : int
        Gaussian components (a background, if any, is extra).
    n_features : int
    feature_names : tuple of str
    component_names : tuple of str
        One per component, the background last when there is one.
    ordering : Ordering
    mean_loc, mean_scale, scale_scale : ndarray, shape (n_components, n_features)
        The resolved priors of each component's mean and dispersion (shared defaults,
        replaced per component by :class:`ComponentPrior`).
    background : UniformBackground, GaussianBackground or None
        From :mod:`bayesmix.components`; its shape is fixed, its weight sampled.
    radius_fraction : RadiusFraction or None
    spatial : SpatialLaw or None
        Per-star weights from the positions (exclusive with ``radius_fraction``).
    kinematics : MemberKinematics or None
        The cluster's dispersion profile and velocity gradient (1-D data).
    frozen : MixtureParams or None, with ``frozen_means`` / ``frozen_covariances`` /
        ``frozen_weights``
        Fixed values, used where the masks are True. Frozen weights keep their values;
        the free weights (and a background's) share the rest, with the Dirichlet prior
        conditioned on the frozen ones (a Dirichlet over the free shares).
    tutorial_names : bool
        Also record ``mean1, sigma1, mean2, sigma2, frac1`` (K = 2, D = 1).
    likelihood_precision : {"float64", "mixed"}
        The ``precision`` of the likelihood in the sampler's potential
        (:func:`bayesmix.likelihood.total_log_likelihood`); part of the programs' key.
    """

    n_components: int
    n_features: int
    feature_names: tuple[str, ...]
    component_names: tuple[str, ...]
    ordering: Ordering
    weight_concentration: float
    mean_loc: np.ndarray
    mean_scale: np.ndarray
    scale_scale: np.ndarray
    lkj_concentration: float
    frac_loc: float
    frac_scale: float
    background: Any = None
    radius_fraction: RadiusFraction | None = None
    spatial: SpatialLaw | None = None
    kinematics: MemberKinematics | None = None
    reference_radius: float | None = None
    minimum_radius: float | None = None
    frozen: MixtureParams | None = None
    frozen_means: tuple[bool, ...] | None = None
    frozen_covariances: tuple[bool, ...] | None = None
    frozen_weights: tuple[bool, ...] | None = None
    tutorial_names: bool = False
    likelihood_precision: str = "float64"

    @property
    def n_total(self) -> int:
        """Components including the background."""
        return self.n_components + (self.background is not None)

    # ------------------------------------------------------------------ the program

    def hyperparameters(self) -> dict[str, Any]:
        """Prior constants as arrays, passed to :meth:`model` at run time.

        Keeping them out of the traced program makes the compiled sampler depend only
        on the model's structure and the data's shapes, so JAX's persistent cache
        serves it again for another data set of the same size.
        """
        hyper = {"mean_loc": self.mean_loc, "mean_scale": self.mean_scale,
                 "scale_scale": self.scale_scale, "alpha": self.weight_concentration,
                 "eta": self.lkj_concentration, "frac_loc": self.frac_loc,
                 "frac_scale": self.frac_scale}
        if self.reference_radius is not None:
            hyper["reference_radius"] = self.reference_radius
        if self.minimum_radius is not None:
            hyper["minimum_radius"] = self.minimum_radius
        if self.frozen is not None:
            hyper["frozen_means"] = self.frozen.means
            hyper["frozen_covariances"] = self.frozen.covariances
            hyper["frozen_weights"] = self.frozen.weights
        return {k: device_array(v, np.float64) for k, v in hyper.items()}

    def model(self, data: Observations, covariates: dict | None = None, hyper: dict | None = None):
        """The NumPyro program: priors, then ``factor(sum_i logsumexp_k(...))``.

        Parameters
        ----------
        data : Observations
        covariates : dict of str to array (n_stars,), optional
            Needed by a radius-dependent member fraction.
        hyper : dict, optional
            :meth:`hyperparameters` (the default); pass it as an argument when
            compiling so the compiled program can be reused.
        """
        h = self.hyperparameters() if hyper is None else hyper
        k, d = self.n_components, self.n_features
        order = self.ordering
        log_w, w_mean = self._sample_log_weights(data, covariates, h)
        loc, scale, sscale = h["mean_loc"], h["mean_scale"], h["scale_scale"]  # (K, D) each
        if order.kind == "mean":
            means = self._ordered_matrix("mean", loc, scale, positive=False)
        else:
            means = numpyro.sample("means_free", dist.Normal(loc, scale).to_event(2))
        if order.kind == "scale":
            scales = self._ordered_matrix("scale", None, sscale, positive=True)
        else:
            scales = numpyro.sample("scales_free", dist.HalfNormal(sscale).to_event(2))

        if d > 1:
            corr_chol = numpyro.sample("corr_cholesky", dist.LKJCholesky(d, h["eta"])
                                       .expand([k]).to_event(1))
            corr = corr_chol @ jnp.swapaxes(corr_chol, -1, -2)
        else:
            corr = jnp.ones((k, 1, 1))
        covs = scales[:, :, None] * corr * scales[:, None, :]

        if self.frozen is not None:
            if self.frozen_means is not None:
                means = jnp.where(jnp.asarray(self.frozen_means)[:, None], h["frozen_means"], means)
            if self.frozen_covariances is not None:
                covs = jnp.where(jnp.asarray(self.frozen_covariances)[:, None, None],
                                 h["frozen_covariances"], covs)
                scales = jnp.sqrt(jnp.diagonal(covs, axis1=-2, axis2=-1))
                corr = covs / scales[:, :, None] / scales[:, None, :]

        numpyro.deterministic("means", means)
        numpyro.deterministic("covariances", covs)
        numpyro.deterministic("scales", scales)
        if d > 1:
            numpyro.deterministic("correlations", corr)
        if self.tutorial_names:
            numpyro.deterministic("mean1", means[0, 0])
            numpyro.deterministic("sigma1", scales[0, 0])
            numpyro.deterministic("mean2", means[1, 0])
            numpyro.deterministic("sigma2", scales[1, 0])
            numpyro.deterministic("frac1", w_mean[0])

        if self.kinematics is not None:
            sites = self.kinematics.sample_sites()
            sites.update({"means": means, "covariances": covs})
            field, log_w, extra = self._kinematic_terms(sites, log_w, data, covariates)
            numpyro.factor("log_likelihood", total_log_likelihood(field, data, log_w, extra,
                                                                  precision=self.likelihood_precision))
            return
        params = MixtureParams(jnp.exp(log_w[..., :k]), means, covs)
        numpyro.factor("log_likelihood", self.total_log_likelihood(params, log_w, data))

    def _kinematic_terms(self, sample: dict, log_w, data: Observations, covariates: dict):
        """The field Gaussians, log weights and extra columns of a model with member kinematics.

        The member's per-star density is an extra column of
        :func:`bayesmix.likelihood.log_joint` (after the field Gaussians, before a
        background), so the log weights are permuted to match: columns come out in the
        order (field..., member, background).
        """
        k = self.n_components
        means, covs = jnp.asarray(sample["means"]), jnp.asarray(sample["covariances"])
        member = self.kinematics.member_log_prob(sample, means[0, 0], jnp.sqrt(covs[0, 0, 0]), data,
                                                 {n: jnp.asarray(covariates[n]) for n in
                                                  self.kinematics.covariate_names()})
        extra = member[:, None]
        background = self.log_background(data)
        if background is not None:
            extra = jnp.concatenate([extra, jnp.broadcast_to(background, member.shape)[:, None]], axis=1)
        order = np.r_[1:k, 0, k:self.n_total]  # static: (field..., member, background)
        field = MixtureParams(jnp.ones(k - 1) / (k - 1), means[1:], covs[1:])
        return field, jnp.asarray(log_w)[..., order], extra

    def star_moments(self, sample: dict, covariates: dict | None, n_stars: int):
        """Intrinsic mean and covariance of every Gaussian component at every star, for one draw.

        What predictive draws need: the same for every star, except under member
        kinematics, where the cluster's (component 0) mean and dispersion vary from star
        to star.

        Returns
        -------
        means : array, shape (n_stars, n_components, n_features)
        covariances : array, shape (n_stars, n_components, n_features, n_features)
        """
        means, covs = jnp.asarray(sample["means"]), jnp.asarray(sample["covariances"])
        k, d = self.n_components, self.n_features
        means = jnp.broadcast_to(means, (n_stars, k, d))
        covs = jnp.broadcast_to(covs, (n_stars, k, d, d))
        kin = self.kinematics
        if kin is None:
            return means, covs
        cov = {n: jnp.asarray((covariates or {})[n]) for n in kin.covariate_names()}
        mu = means[:, 0, 0]
        if kin.gradient is not None:
            mu = (mu + sample["gradient_xi"] * cov[kin.gradient[0]]
                  + sample["gradient_eta"] * cov[kin.gradient[1]])
        radius = cov[kin.radius] if kin.radius is not None else jnp.zeros(n_stars)
        sigma = kin.dispersion(sample, jnp.sqrt(covs[0, 0, 0, 0]), radius)
        return means.at[:, 0, 0].set(mu), covs.at[:, 0, 0, 0].set(sigma**2)

    def star_log_joint(self, sample: dict, data: Observations, covariates: dict | None = None):
        """``log w_ik + log p_k(x_i)`` of one draw, columns in :attr:`component_names` order.

        Every model's per-star joint (what memberships and the pointwise log-likelihood
        reduce): :meth:`joint_log_prob` of :meth:`params` and :meth:`log_weights`, or, with
        member kinematics, the member's per-star column joined by
        :func:`bayesmix.likelihood.log_joint` (then put back first).

        Parameters
        ----------
        sample : dict of str to array
            One draw's sites (``means``, ``covariances``, the weight and law sites).
        data : Observations
        covariates : dict of str to array (n_stars,), optional

        Returns
        -------
        array, shape (n_stars, n_total)
        """
        log_w = self.log_weights(sample, covariates)
        if self.kinematics is None:
            return self.joint_log_prob(self.params(sample), log_w, data)
        k = self.n_components
        field, log_w_perm, extra = self._kinematic_terms(sample, log_w, data, covariates or {})
        log_w_perm = jnp.broadcast_to(log_w_perm, (data.values.shape[0], self.n_total))
        joint = log_joint(field, data, log_w_perm, extra)
        back = np.r_[k - 1, 0:k - 1, k:self.n_total]  # static: member first again
        return joint[:, back]

    def program_key(self) -> str:
        """What a compiled program of :meth:`model` depends on beyond its arguments.

        The structure (components, ordering, background, radius law, frozen masks), not
        the prior values: those reach the program through :meth:`hyperparameters` as
        arguments, so another catalogue of the same shape and structure reuses the
        stored sampler programs. Prior values enter only as their shapes.
        """
        hyper = {"weight_concentration", "mean_loc", "mean_scale", "scale_scale", "lkj_concentration",
                 "frac_loc", "frac_scale", "reference_radius", "minimum_radius", "frozen"}
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in hyper:
                value = None if value is None else jax.tree_util.tree_map(np.shape, value)
            parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def program_constants(self) -> dict[str, Any]:
        """The data-derived constants that :meth:`log_weights` (and so :meth:`star_log_joint`)
        read: a radius law's ``reference_radius`` and ``minimum_radius``, as float64 arrays;
        empty for other models.

        A compiled program of those methods takes them as an argument and rebinds them with
        :meth:`with_constants`, so that catalogues with other radii share it (the NumPyro
        program reads the same values from :meth:`hyperparameters`).
        """
        if self.radius_fraction is None:
            return {}
        return {name: jnp.asarray(getattr(self, name), jnp.float64)
                for name in ("reference_radius", "minimum_radius")}

    def with_constants(self, constants: dict) -> MixtureModel:
        """This model with :meth:`program_constants` replaced by ``constants`` (traced values
        inside a compiled program); ``self`` when there are none."""
        return dataclasses.replace(self, **constants) if constants else self

    @property
    def member_apart(self) -> bool:
        """Whether the cluster (component 0) stands outside the ordering: a radius law with
        more than one field column (several field Gaussians or a background)."""
        return self.per_star_weights and self.n_total > 2

    @property
    def per_star_weights(self) -> bool:
        """Whether the weights come from a radius law or a spatial term (not a Dirichlet)."""
        return self.radius_fraction is not None or self.spatial is not None

    def _ordered_matrix(self, kind, loc, scale, *, positive):
        """(K, D) means or scales whose column ``ordering.feature`` increases with the index.

        The ordered column is an ``ImproperUniform`` ordered site plus each component's
        own prior as a factor (the exchangeable prior restricted to the ordered region);
        under :attr:`member_apart` component 0 has its own site and only the others are
        ordered. The other columns are plain sites.
        """
        k, d = self.n_components, self.n_features
        j = self.ordering.feature

        def prior(rows):
            if positive:
                return dist.HalfNormal(scale[rows, j])
            return dist.Normal(loc[rows, j], scale[rows, j])

        first = int(self.member_apart)
        parts = []
        if first:
            parts.append(numpyro.sample(f"{kind}_member", prior(0))[None])
        rows = slice(first, k)
        if k - first >= 2:
            parts.append(_ordered_site(f"{kind}s_ordered", k - first,
                                       lambda v: prior(rows).log_prob(v).sum(), positive))
        elif k - first == 1:
            parts.append(numpyro.sample(f"{kind}s_ordered", prior(rows).to_event(1)))
        column = jnp.concatenate(parts)
        rest = None
        if d > 1:
            keep = np.delete(np.arange(d), j)  # static indices: the priors are traced
            rest_dist = (dist.HalfNormal(jnp.take(scale, keep, axis=1)) if positive else
                         dist.Normal(jnp.take(loc, keep, axis=1), jnp.take(scale, keep, axis=1)))
            rest = numpyro.sample(f"{kind}s_rest", rest_dist.to_event(2))
        return _with_column(rest, column, j)

    def total_log_likelihood(self, params: MixtureParams, log_w, data: Observations):
        """``sum_i logsumexp_k`` of :meth:`joint_log_prob`, with its closed-form gradient.

        The sampler's hot path (:func:`bayesmix.likelihood.total_log_likelihood`, whose
        value and gradient come from the same terms as :func:`bayesmix.likelihood.log_joint`).

        Parameters
        ----------
        params : MixtureParams
            Gaussian components (``weights`` unused).
        log_w : array, shape (n_total,) or (n_stars, n_total)
        data : Observations

        Returns
        -------
        scalar
        """
        return total_log_likelihood(params, data, log_w, self.log_background(data),
                                    precision=self.likelihood_precision)

    def joint_log_prob(self, params: MixtureParams, log_w, data: Observations):
        """``log w_k + log p_k(x_i)`` for every component, background last.

        :func:`bayesmix.likelihood.log_joint` with the background's log density as the
        extra column; the pointwise log-likelihood reduces this.

        Parameters
        ----------
        params : MixtureParams
            Gaussian components (``weights`` unused).
        log_w : array, shape (n_total,) or (n_stars, n_total)
        data : Observations

        Returns
        -------
        array, shape (n_stars, n_total)
        """
        if self.kinematics is not None:
            raise ValueError("this model has member kinematics (a per-star member density): its joint "
                             "needs the draw's sites and the covariates; call "
                             "star_log_joint(sample, data, covariates).")
        return log_joint(params, data, log_w, self.log_background(data))

    @staticmethod
    def _mean_weights(log_w, weight=None):
        """The global weights: ``exp(log_w)``, or for per-star log weights (n_stars, n_total)
        their mean over the stars, ``sum_i w_i exp(log_w_i) / sum_i w_i`` with ``weight`` the
        data's :attr:`~bayesmix.likelihood.Observations.weight` (None: every star once).

        Weighted so that rows padded to a bucket size (weight 0) leave it unchanged: one
        compiled program then serves catalogues of many sizes.
        """
        w = jnp.exp(log_w)
        if w.ndim == 1:
            return w
        if weight is None:
            return jnp.mean(w, axis=0)
        weight = jnp.asarray(weight, w.dtype)
        return weight @ w / jnp.sum(weight)

    def _sample_log_weights(self, data, covariates, h):
        """Sample the weight sites: returns the (per-star) log weights and the global weights
        (the tutorial's ``frac1`` reads the first)."""
        log_w = self._sample_log_weight_sites(data, covariates, h)
        if isinstance(log_w, tuple):
            return log_w
        return log_w, self._mean_weights(log_w, data.weight)

    def _sample_spatial_weights(self, covariates, alpha):
        """The spatial term's sites: per-star log weights and the global weights ``(f, 1 - f ...)``."""
        n_field = self.n_total - 1
        law = self.spatial.sample_law(n_field, alpha)
        w = self.spatial.global_weights(law, n_field)
        numpyro.deterministic("weights", w[: self.n_components])
        if self.background is not None:
            numpyro.deterministic("background_weight", w[-1])
        return self.spatial.log_weights(law, covariates or {}, n_field), w

    def _sample_radius_weights(self, data, covariates, h):
        """The radius law's sites: per-star log weights and the global weights, their mean over
        the stars (weighted: padding rows do not count).

        The reference and minimum radius come from the data, so they are arguments
        (``h``), not constants of the program: catalogues with other radii share it.
        """
        rf = self.radius_fraction
        radius = jnp.asarray((covariates or {})[rf.covariate])
        law = rf.sample_law(h, self.n_total - 1)
        log_w = rf.log_weights(law, radius, h["reference_radius"], self.n_total - 1, h["minimum_radius"])
        mean_w = self._mean_weights(log_w, data.weight)
        numpyro.deterministic("weights", mean_w[: self.n_components])
        if self.background is not None:
            numpyro.deterministic("background_weight", mean_w[-1])
        return log_w, mean_w

    def _sample_log_weight_sites(self, data, covariates, h):
        k_total = self.n_total
        alpha = h["alpha"]
        if self.spatial is not None:
            return self._sample_spatial_weights(covariates, alpha)
        if self.radius_fraction is not None:
            return self._sample_radius_weights(data, covariates, h)
        if self.frozen_weights is not None and any(self.frozen_weights):
            fixed = np.asarray(self.frozen_weights + (False,) * (k_total - self.n_components))
            n_free = int(np.sum(~fixed))
            if n_free > 1:
                shares = numpyro.sample("weights_free", dist.Dirichlet(jnp.full(n_free, alpha)))
            else:
                shares = jnp.ones(1)
            given = jnp.concatenate([h["frozen_weights"], jnp.zeros(k_total - self.n_components)])
            mass = 1.0 - jnp.sum(jnp.where(fixed, given, 0.0))
            free_index = np.cumsum(~fixed) - 1  # static: position of each free entry in shares
            w = jnp.where(fixed, given, mass * shares[np.clip(free_index, 0, n_free - 1)])
            numpyro.deterministic("weights", w[: self.n_components])
            if self.background is not None:
                numpyro.deterministic("background_weight", w[-1])
        elif self.ordering.kind == "weight":
            # Dirichlet(alpha) is normalised independent Gamma(alpha, 1) draws; ordering the
            # gammas orders the weights, and their sum is an extra (harmless) direction.
            g = _ordered_site("weight_gammas", k_total,
                              lambda v: dist.Gamma(alpha, 1.0).log_prob(v).sum(), True)
            w = g / jnp.sum(g)
            numpyro.deterministic("weights", w)
        elif self.background is not None:
            w = numpyro.sample("weights_all", dist.Dirichlet(jnp.full(k_total, alpha)))
            numpyro.deterministic("weights", w[:-1])
            numpyro.deterministic("background_weight", w[-1])
        else:
            w = numpyro.sample("weights", dist.Dirichlet(jnp.full(k_total, alpha)))
        return jnp.log(w)

    def log_background(self, data: Observations):
        """Log density of each star under the fixed background; None without one.

        The component's own :meth:`~bayesmix.components.UniformBackground.log_density`
        (part of the model protocol that :mod:`bayesmix.membership` reads).

        Returns
        -------
        array, shape (n_stars,), or None
        """
        return None if self.background is None else self.background.log_density(data)

    # ------------------------------------------------------------------ draws -> parameters

    def params(self, sample: dict) -> MixtureParams:
        """Gaussian-component parameters of one draw.

        ``weights`` are the Gaussian components' (averaged over stars under a radius
        law); with a background they sum to ``1 - background_weight``.
        """
        if self.kinematics is not None:
            # The member's density differs from star to star: one (mean, covariance) per
            # component would give silently wrong memberships and predictive draws.
            raise ValueError("this model has member kinematics (a per-star member mean and dispersion), "
                             "which MixtureParams cannot hold: use star_log_joint(sample, data, covariates) "
                             "for the per-star joint (membership_probabilities(fit) uses it).")
        w = jnp.asarray(sample["weights"])[..., : self.n_components]
        return MixtureParams(w, jnp.asarray(sample["means"]), jnp.asarray(sample["covariances"]))

    def log_weights(self, sample: dict, covariates: dict | None = None):
        """Log weights of one draw: (n_total,), or (n_stars, n_total) with a radius law or a
        spatial term."""
        if self.spatial is not None:
            return self.spatial.log_weights(sample, covariates or {}, self.n_total - 1)
        if self.radius_fraction is None:
            if self.background is not None:
                return jnp.log(jnp.append(jnp.asarray(sample["weights"]), sample["background_weight"]))
            return jnp.log(jnp.asarray(sample["weights"]))
        rf = self.radius_fraction
        radius = jnp.asarray((covariates or {})[rf.covariate])
        return rf.log_weights(sample, radius, self.reference_radius, self.n_total - 1, self.minimum_radius)

    # ------------------------------------------------------------------ initial values

    def order_components(self, params: MixtureParams, member: int | None = None) -> np.ndarray:
        """Permutation that puts point-estimate components in this model's order.

        Under :attr:`member_apart`, ``member`` (default: the first in the ordering) goes
        first and the others follow in the ordering.
        """
        order = self.ordering
        if order.kind == "scale":
            key = np.asarray(params.covariances)[:, order.feature, order.feature]
        elif order.kind == "mean":
            key = np.asarray(params.means)[:, order.feature]
        else:
            key = np.asarray(params.weights)
        perm = np.argsort(key, kind="stable")
        if self.member_apart and member is not None:
            perm = np.concatenate([[int(member)], perm[perm != int(member)]])
        return perm

    def member_component(self, params: MixtureParams, data: Observations, covariates: dict,
                         background_weight: float | None = None) -> int:
        """The Gaussian component of a point estimate (e.g. an EM fit, which knows nothing of
        radii) that is most concentrated towards the centre: the smallest mean log radius of
        its stars, weighted by their membership probabilities."""
        radius = self._member_radius(covariates)
        log_w = np.log(np.asarray(params.weights, float))
        if self.background is not None:
            bw = float(background_weight if background_weight is not None else self.background.weight)
            log_w = np.append(log_w - math.log(np.exp(log_w).sum()) + math.log1p(-bw), math.log(bw))
        resp = np.asarray(jax.nn.softmax(self.joint_log_prob(params, jnp.asarray(log_w), data), axis=1))
        resp = resp[:, : self.n_components]
        # A star at R = 0 has no log radius: floor at half the smallest positive one.
        log_radius = np.log(np.maximum(radius, 0.5 * np.min(radius[radius > 0], initial=np.inf)))
        mean_log_radius = (resp * log_radius[:, None]).sum(axis=0) / np.maximum(resp.sum(axis=0), 1e-300)
        return int(np.argmin(mean_log_radius))

    def _member_radius(self, covariates: dict) -> np.ndarray:
        """Projected radius of every star: the radius law's covariate, or from the positions."""
        if self.spatial is not None:
            return np.hypot(*self.spatial.positions(covariates))
        return np.asarray(covariates[self.radius_fraction.covariate], float)

    def fixed_quantities(self) -> dict[str, np.ndarray]:
        """Which entries of the posterior quantities are constant by construction.

        Frozen means, covariances (their scales and correlations) and weights; the weights
        when at most one weight (background included) is free, since it then takes what the
        fixed ones leave (a one-component model's weight is 1); the diagonal of every
        correlation matrix. Everything else is sampled, so a draw-to-draw constant value
        there means the chains never moved (:func:`bayesmix.diagnostics.check_convergence`).

        Returns
        -------
        dict of str to bool ndarray
            Per-draw shapes: ``weights`` (K,), ``means``, ``scales`` (K, D), ``covariances``,
            ``correlations`` (K, D, D), ``background_weight`` (), and the tutorial names.
        """
        k, d = self.n_components, self.n_features
        fm = np.asarray(self.frozen_means or (False,) * k, bool)
        fc = np.asarray(self.frozen_covariances or (False,) * k, bool)
        fw = np.asarray(self.frozen_weights or (False,) * k, bool)
        if self.per_star_weights:
            fw = np.zeros(k, bool)  # f(R) averaged over stars, or a sampled member fraction: never fixed
        n_free = int(np.sum(~fw)) + int(self.background is not None)
        weights_fixed = fw | (n_free <= 1 and not self.per_star_weights)
        out = {"weights": weights_fixed, "means": np.repeat(fm[:, None], d, axis=1),
               "scales": np.repeat(fc[:, None], d, axis=1),
               "covariances": np.broadcast_to(fc[:, None, None], (k, d, d)).copy(),
               "correlations": np.broadcast_to(fc[:, None, None], (k, d, d)) | np.eye(d, dtype=bool)}
        if self.background is not None:
            out["background_weight"] = np.asarray(n_free <= 1 and not self.per_star_weights)
        if self.tutorial_names:
            out.update({"mean1": fm[0], "sigma1": fc[0], "mean2": fm[1], "sigma2": fc[1],
                        "frac1": weights_fixed[0]})
        return out

    def coordinate_scales(self, data: Observations, template: dict) -> dict[str, np.ndarray]:
        """Natural scale of every unconstrained coordinate, shaped like ``template``.

        Unconstrained means (``means_free``, ``means_rest``, ``mean_member`` and the first
        entry of ``means_ordered``, whose other entries are log gaps) are in the data's
        units: their scale is the feature's spread (:func:`_data_spread`). Every other
        coordinate (log dispersions and gaps, stick-breaking weights, correlations,
        radius-law parameters) is unitless or a logarithm, so its scale is 1. The sampler
        works in ``(theta - theta_0) / scale``, where the posterior looks the same
        whatever the units of the data.

        Parameters
        ----------
        data : Observations
        template : dict of str to array
            Unconstrained values of every sample site (their shapes are used).

        Returns
        -------
        dict of str to ndarray
        """
        spread = _data_spread(data)
        j = self.ordering.feature
        scales = {name: np.ones(np.shape(value)) for name, value in template.items()}
        if "means_free" in scales:
            scales["means_free"] = np.broadcast_to(spread, scales["means_free"].shape).copy()
        if "means_rest" in scales:
            scales["means_rest"] = np.broadcast_to(np.delete(spread, j), scales["means_rest"].shape).copy()
        if "mean_member" in scales:
            scales["mean_member"] = np.full(scales["mean_member"].shape, spread[j])
        if "means_ordered" in scales and scales["means_ordered"].size:
            scales["means_ordered"].reshape(-1)[0] = spread[j]  # the rest are log gaps
        return scales

    def _init_weight_values(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Starting values of the weight sites (or the radius law's, or the spatial term's)
        from the point estimate's weights ``w`` (n_total,), in this model's order."""
        values: dict[str, np.ndarray] = {}
        if self.spatial is not None:
            values.update(self.spatial.init_values(w))
        elif self.radius_fraction is not None:
            rf = self.radius_fraction
            logit0 = math.log(w[0] / (1.0 - w[0]))
            if self.n_total > 2:
                values["field_weights"] = w[1:] / w[1:].sum()
            if rf.kind == "logistic":
                values["frac_intercept"] = np.asarray(logit0)
                values["frac_slope"] = np.asarray(0.0)
            else:
                values["frac_log_ratio"] = np.asarray(logit0 + 2.0 * math.log(2.0))
                values["frac_radius"] = np.asarray(self.reference_radius)
        elif self.frozen_weights is not None and any(self.frozen_weights):
            fixed = np.asarray(self.frozen_weights + (False,) * (self.n_total - self.n_components))
            if np.sum(~fixed) > 1:
                free = w[~fixed]
                values["weights_free"] = free / free.sum()
        elif self.ordering.kind == "weight":
            values["weight_gammas"] = _strictly_increasing(np.sort(w) * self.n_total
                                                           * self.weight_concentration, positive=True,
                                                           unit=1.0)
        elif self.background is not None:
            values["weights_all"] = w
        else:
            values["weights"] = w
        return values

    def init_values(self, params: MixtureParams, background_weight: float | None = None, *,
                    data: Observations | None = None,
                    covariates: dict | None = None) -> dict[str, np.ndarray]:
        """Constrained values of every sample site from a point estimate (e.g. the EM fit).

        Parameters
        ----------
        params : MixtureParams
            Gaussian components, any order (they are sorted to satisfy the ordering).
        background_weight : float, optional
        data, covariates : optional
            Under :attr:`member_apart`, used to pick the cluster among the components
            (:meth:`member_component`); without them the first in the ordering is taken.

        Returns
        -------
        dict of str to ndarray
        """
        d = self.n_features
        member = None
        if self.member_apart and data is not None and covariates is not None:
            member = self.member_component(params, data, covariates, background_weight)
        perm = self.order_components(params, member)
        w = np.asarray(params.weights, float)[perm]
        mu = np.asarray(params.means, float)[perm].copy()
        cov = np.asarray(params.covariances, float)[perm]
        sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2)).copy()
        if self.background is not None:
            bw = float(background_weight if background_weight is not None else self.background.weight)
            w = np.append(w / w.sum() * (1.0 - bw), bw)
        w = np.clip(w / w.sum(), 1e-6, None)
        w /= w.sum()
        values = self._init_weight_values(w)
        order = self.ordering
        for kind, matrix, positive in (("mean", mu, False), ("scale", sd, True)):
            if order.kind != kind:
                values[f"{kind}s_free"] = matrix
                continue
            j = order.feature
            first = int(self.member_apart)
            if first:
                values[f"{kind}_member"] = np.asarray(matrix[0, j])
            # The data's scale for this column (the prior scale, resolved against the data):
            # gaps and floors relative to it leave the start the same in any units.
            unit = float(np.min((self.scale_scale if positive else self.mean_scale)[:, j]))
            values[f"{kind}s_ordered"] = _strictly_increasing(matrix[first:, j], positive=positive, unit=unit)
            if d > 1:
                values[f"{kind}s_rest"] = np.delete(matrix, j, axis=1)
        if d > 1:
            base_sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
            corr = cov / base_sd[:, :, None] / base_sd[:, None, :]
            corr = 0.999 * corr + 0.001 * np.eye(d)  # keep |rho| < 1 strictly
            values["corr_cholesky"] = np.linalg.cholesky(corr)
        if self.kinematics is not None:
            values.update(self.kinematics.init_values(sd[0, 0]))
        return values


def _strictly_increasing(v, positive, unit):
    """``v`` made strictly increasing (and positive when ``positive``) by the smallest nudges.

    ``unit`` is the scale of the quantity in the data's units (a prior scale): the floor
    (``1e-12 unit``) and the smallest gap (``1e-6 unit``) are relative to it, so that data
    in km/s or in 1e-150 km/s get the same start, not one stuck at an absolute floor.
    """
    v = np.asarray(v, float).copy()
    if positive:
        v = np.maximum(v, 1e-12 * unit)
    for i in range(1, v.size):
        if v[i] <= v[i - 1]:
            v[i] = v[i - 1] + max(1e-6 * abs(v[i - 1]), 1e-6 * unit)
    return v


def _data_spread(data: Observations) -> np.ndarray:
    """Per-feature spread of the measured values, errors included: ``sqrt(var(x) + mean(S_jj))``.

    The data's own unit of length along each feature (1 where there is no spread at all),
    as used by :meth:`MixtureModel.coordinate_scales`.
    """
    x = np.asarray(data.values, float)
    err_var = np.mean(np.diagonal(np.asarray(data.error_covs, float), axis1=1, axis2=2), axis=0)
    # Centred first: var() of values with a large common offset loses no digits this way.
    spread = np.sqrt(np.mean((x - np.mean(x, axis=0)) ** 2, axis=0) + err_var)
    fallback = np.where(np.abs(x).max(axis=0) > 0, np.abs(x).max(axis=0), 1.0)
    return np.where((spread > 0) & np.isfinite(spread), spread, fallback)


def _as_feature_array(name, value, default, n_features):
    try:
        arr = np.broadcast_to(np.asarray(default if value is None else value, float), (n_features,)).copy()
    except ValueError:
        raise ValueError(f"priors.{name} must be a number or one per feature ({n_features}); "
                         f"got {value!r}.") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"priors.{name} must be finite; got {value!r}.")
    return arr


def _resolve_priors(priors: Priors, x: np.ndarray, names: tuple[str, ...]):
    """``mean_loc``, ``mean_scale``, ``scale_scale`` as (n_components, n_features) arrays.

    Shared values (defaults scaled to the data), replaced per component by
    ``priors.components``.
    """
    k, d = len(names), x.shape[1]
    spread = np.std(x, axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    shared = {"mean_loc": _as_feature_array("mean_loc", priors.mean_loc, np.median(x, axis=0), d),
              "mean_scale": _as_feature_array("mean_scale", priors.mean_scale, 3.0 * spread, d),
              "scale_scale": _as_feature_array("scale_scale", priors.scale_scale, 2.0 * spread, d)}
    out = {name: np.tile(value, (k, 1)) for name, value in shared.items()}
    for ident, prior in dict(priors.components or {}).items():
        if isinstance(ident, (int, np.integer)) and not isinstance(ident, bool):
            if not 0 <= int(ident) < k:
                raise ValueError(f"priors.components: index {ident} is not a component (0..{k - 1}).")
            index = int(ident)
        elif ident in names:
            index = names.index(ident)
        else:
            raise ValueError(f"priors.components: {ident!r} is not a component; use one of {list(names)} "
                             "or an index.")
        if not isinstance(prior, ComponentPrior):
            raise ValueError(f"priors.components[{ident!r}] must be a ComponentPrior; "
                             f"got {type(prior).__name__}.")
        for name in out:
            value = getattr(prior, name)
            if value is not None:
                out[name][index] = _as_feature_array(f"components[{ident!r}].{name}", value, None, d)
    if np.any(out["mean_scale"] <= 0) or np.any(out["scale_scale"] <= 0):
        raise ValueError("priors.mean_scale and priors.scale_scale must be > 0 (for every component).")
    return out["mean_loc"], out["mean_scale"], out["scale_scale"]


def _check_radius_fraction(radius_fraction: RadiusFraction, covariates, n_stars: int, n_total: int,
                           ordering: Ordering) -> float:
    """Validate a radius law against the model and the radii.

    Returns the reference radius (the median positive radius unless given) and the
    logistic law's floor (half the smallest positive radius: see :meth:`RadiusFraction.log_weights`).
    """
    if n_total < 2:
        raise ValueError("radius_fraction needs a field: at least 2 components (cluster, field), or 1 "
                         "component (the cluster) and a background.")
    if ordering.kind == "weight":
        raise ValueError("radius_fraction sets the weights; order by scale or mean, not by weight.")
    if radius_fraction.covariate not in (covariates or {}):
        raise ValueError(f"radius_fraction needs the covariate {radius_fraction.covariate!r}; "
                         f"available covariates: {sorted(covariates or {})}.")
    radius = np.asarray(covariates[radius_fraction.covariate], float)
    if radius.shape != (n_stars,):
        raise ValueError(f"covariate {radius_fraction.covariate!r} must hold one radius per star "
                         f"({n_stars}); got shape {radius.shape}.")
    bad = np.flatnonzero(~np.isfinite(radius) | (radius < 0))
    if bad.size:
        raise ValueError(f"covariate {radius_fraction.covariate!r} must hold one finite radius >= 0 per "
                         f"star; {bad.size} star(s) do not (rows {bad[:5].tolist()}"
                         f"{' ...' if bad.size > 5 else ''}, values {radius[bad[:5]].tolist()}). Fix or drop "
                         "those rows (a projected radius is never negative; NaN means a missing position).")
    positive = radius[radius > 0]
    if positive.size == 0:
        raise ValueError(f"covariate {radius_fraction.covariate!r} is 0 for every star: a radius law needs "
                         "stars away from the centre (is it the right column?).")
    reference = float(radius_fraction.reference_radius or np.median(positive))
    return reference, 0.5 * float(positive.min())


def _resolve_ordering(ordering: Ordering | str | None, n_features: int, background) -> Ordering:
    """The ordering as an :class:`Ordering` (default: by the dispersion of feature 0), checked
    against the features and the background."""
    if isinstance(ordering, str):
        ordering = Ordering(ordering)
    ordering = ordering or Ordering("scale", 0)
    if ordering.kind != "weight" and not 0 <= ordering.feature < n_features:
        raise ValueError(f"ordering.feature={ordering.feature} is not a feature index (0..{n_features - 1}).")
    if ordering.kind == "weight" and background is not None:
        raise ValueError("ordering by weight cannot be combined with a background; order by scale or mean.")
    return ordering


def _component_names(component_names, n_components: int, background) -> tuple[str, ...]:
    """One name per component, the background last (default ``c0, c1, ..., background``)."""
    n_total = n_components + (background is not None)
    names = tuple(component_names) if component_names is not None else (
        tuple(f"c{k}" for k in range(n_components)) + (("background",) if background is not None else ()))
    if len(names) != n_total:
        raise ValueError(f"component_names has {len(names)} names for {n_total} components.")
    return names


def _frozen_masks(frozen, masks: dict, n_components: int) -> dict:
    """Each mask of ``masks`` (label -> array_like or None) as a tuple of n_components bools."""
    out = {}
    for label, mask in masks.items():
        if mask is not None:
            mask = tuple(bool(m) for m in np.broadcast_to(np.asarray(mask, bool), (n_components,)))
            if frozen is None:
                raise ValueError(f"{label} needs frozen= (a MixtureParams with the fixed values).")
        out[label] = mask
    return out


def _check_frozen_weights(frozen, mask, n_total: int, radius_fraction, ordering: Ordering) -> None:
    """Frozen weights must leave a free component and sum to less than one."""
    if mask is None or not any(mask):
        return
    if radius_fraction is not None or ordering.kind == "weight":
        raise ValueError("frozen_weights cannot be combined with radius_fraction or ordering by weight.")
    fixed_sum = float(np.sum(np.asarray(frozen.weights)[np.asarray(mask)]))
    n_free = n_total - int(np.sum(mask))
    if not (0.0 <= fixed_sum < 1.0) or n_free < 1:
        raise ValueError(f"frozen weights sum to {fixed_sum:.6g} with {n_free} free components; they "
                         "must sum to less than 1 and leave at least one component (or the "
                         "background) free.")


def mixture_model(data, n_components: int, *, priors: Priors | None = None,
                  ordering: Ordering | str | None = None, background=None,
                  radius_fraction: RadiusFraction | None = None, covariates: dict | None = None,
                  frozen: MixtureParams | None = None, frozen_means=None, frozen_covariances=None,
                  frozen_weights=None, feature_names=None, component_names=None,
                  tutorial_names: bool = False, spatial: SpatialLaw | None = None,
                  kinematics: MemberKinematics | None = None,
                  likelihood_precision: str = "auto") -> MixtureModel:
    """Build a :class:`MixtureModel` with priors resolved against the data.

    Parameters
    ----------
    data : Observations or Catalogue
        Used only to scale the default priors (and the reference radius).
    n_components : int
        Gaussian components.
    priors : Priors, optional
    ordering : Ordering or {"scale", "mean", "weight"}, optional
        Default: by the dispersion of feature 0.
    background : bayesmix.components.UniformBackground or GaussianBackground, optional
        A fixed component (anything with ``log_density(data)`` and ``weight``).
    radius_fraction : RadiusFraction, optional
        Component 0 is the cluster, the other components and the background the field
        (at least one field column is needed); ``covariates`` (or the catalogue's) must
        hold its radius column, all positive.
    covariates : dict of str to array, optional
    frozen, frozen_means, frozen_covariances, frozen_weights
        Fixed component values (a MixtureParams) and boolean masks (n_components,),
        as in :func:`bayesmix.em.fit_em`.
    feature_names, component_names : sequences of str, optional
    tutorial_names : bool
        Record the tutorial's ``mean1, sigma1, mean2, sigma2, frac1`` (K = 2, D = 1).
    spatial : SpatialLaw, optional
        Member and field position densities as per-star weights (component 0 is the
        cluster); exclusive with ``radius_fraction``. Every star must lie in its footprint.
    kinematics : MemberKinematics, optional
        The cluster's (component 0) dispersion profile and velocity gradient; 1-D data and
        at least one field Gaussian.
    likelihood_precision : {"auto", "float64", "mixed"}
        How the sampler's potential evaluates the likelihood
        (:func:`bayesmix.likelihood.total_log_likelihood`'s ``precision``). "auto" is
        "mixed" (float32 per star, float64 sums: about twice as fast) from
        ``_MIXED_MIN_TERMS`` star-component terms, where the gradient's arithmetic
        dominates a NUTS step, and when the data's variances lie well inside float32's
        range; "float64" otherwise.

    Returns
    -------
    MixtureModel
    """
    if likelihood_precision not in LIKELIHOOD_PRECISIONS:
        raise ValueError(f"likelihood_precision={likelihood_precision!r}; use one of "
                         f"{LIKELIHOOD_PRECISIONS}.")
    if hasattr(data, "covariates") and covariates is None:
        covariates = data.covariates
    if feature_names is None and hasattr(data, "feature_names"):
        feature_names = data.feature_names
    obs = as_observations(data)
    x = np.asarray(obs.values)
    n_stars, n_features = x.shape
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer; got {n_components!r}.")
    if n_components > n_stars:
        raise ValueError(f"n_components={n_components} exceeds the number of stars ({n_stars}).")
    priors = priors or Priors()
    ordering = _resolve_ordering(ordering, n_features, background)
    if priors.weight_concentration <= 0 or priors.lkj_concentration <= 0:
        raise ValueError("priors.weight_concentration and priors.lkj_concentration must be > 0.")
    n_total = n_components + (background is not None)
    names = _component_names(component_names, n_components, background)
    mean_loc, mean_scale, scale_scale = _resolve_priors(priors, x, names[:n_components])
    reference_radius = minimum_radius = None
    spatial, kinematics = _resolve_cluster_terms(spatial, kinematics, radius_fraction, covariates, x.shape,
                                                 n_components, n_total, ordering, float(scale_scale[0, 0]))
    if radius_fraction is not None:
        reference_radius, minimum_radius = _check_radius_fraction(radius_fraction, covariates, n_stars,
                                                                  n_total, ordering)
    if tutorial_names and (n_components != 2 or n_features != 1):
        raise ValueError("tutorial_names needs a 1-D, 2-component model.")
    feats = tuple(feature_names) if feature_names is not None else tuple(f"x{j}" for j in range(n_features))
    masks = _frozen_masks(frozen, {"frozen_means": frozen_means, "frozen_covariances": frozen_covariances,
                                   "frozen_weights": frozen_weights}, n_components)
    _check_frozen_weights(frozen, masks["frozen_weights"], n_total, radius_fraction or spatial, ordering)
    return MixtureModel(
        n_components=n_components, n_features=n_features, feature_names=feats, component_names=names,
        ordering=ordering, weight_concentration=float(priors.weight_concentration),
        mean_loc=mean_loc, mean_scale=mean_scale, scale_scale=scale_scale,
        lkj_concentration=float(priors.lkj_concentration), frac_loc=float(priors.frac_loc),
        frac_scale=float(priors.frac_scale), background=background, radius_fraction=radius_fraction,
        spatial=spatial, kinematics=kinematics, reference_radius=reference_radius,
        minimum_radius=minimum_radius, frozen=frozen, frozen_means=masks["frozen_means"],
        frozen_covariances=masks["frozen_covariances"], frozen_weights=masks["frozen_weights"],
        tutorial_names=tutorial_names,
        likelihood_precision=_resolve_precision(likelihood_precision, obs, n_total),
    )


# From this many star-component terms "auto" evaluates the likelihood in mixed precision:
# below it a NUTS step costs its loop's overhead more than its arithmetic (the same
# threshold as parallel chains, sampling._PARALLEL_MIN_TERMS). Measured at N = 20000, D = 1,
# K = 2 on 2 CPU cores: 250 draws of 4 chains in 0.73-0.89 s instead of 1.47-1.66 s.
_MIXED_MIN_TERMS = 10_000
# Mixed precision rounds each star's total variance and squared residual to float32 (normal
# from 1.2e-38 to 3.4e38); "auto" keeps float64 unless the data's lie well inside that range.
_MIXED_SAFE_RANGE = (1e-30, 1e30)


def _variance_range(obs: Observations) -> tuple[float, float]:
    """Smallest and largest positive variance in the data: error variances and each feature's spread."""
    variances = np.diagonal(np.asarray(obs.error_covs), axis1=1, axis2=2)
    spread = np.nanvar(np.asarray(obs.values), axis=0)
    scales = np.concatenate([variances[variances > 0].ravel(), spread[spread > 0]])
    return (float(scales.min()), float(scales.max())) if scales.size else (np.nan, np.nan)


def _resolve_precision(precision: str, obs: Observations, n_total: int) -> str:
    """The likelihood precision a model uses: "auto" resolved, "mixed" checked against the data."""
    if precision == "float64" or (precision == "auto" and obs.n_stars * n_total < _MIXED_MIN_TERMS):
        return "float64"
    low, high = _variance_range(obs)
    safe = _MIXED_SAFE_RANGE[0] <= low and high <= _MIXED_SAFE_RANGE[1]
    if precision == "auto":
        return "mixed" if safe else "float64"
    if not safe:
        raise ValueError(f"likelihood_precision='mixed' rounds each star's variances to float32, but the "
                         f"data's variances span {low:.3g}..{high:.3g}, outside {_MIXED_SAFE_RANGE[0]:g}.."
                         f"{_MIXED_SAFE_RANGE[1]:g}; use 'float64' (or 'auto'), or give the data in units "
                         "nearer 1.")
    return "mixed"


def cluster_field_model(data, *, radius_fraction: RadiusFraction | str | None = None,
                        priors: Priors | None = None, covariates: dict | None = None,
                        spatial: SpatialLaw | None = None,
                        kinematics: MemberKinematics | None = None,
                        likelihood_precision: str = "auto") -> MixtureModel:
    """The 1-D velocity-membership model: a narrow cluster and a broad field component.

    ``sigma1 < sigma2`` by construction (ordering by dispersion), components named
    ``("cluster", "field")``, and the tutorial's ``mean1, sigma1, mean2, sigma2, frac1``
    recorded. With ``radius_fraction`` (a :class:`RadiusFraction` or the name of the
    radius covariate) the member fraction follows projected radius; with ``spatial`` (a
    :class:`SpatialLaw`) the positions enter the likelihood (``frac1`` is then the global
    member fraction); with ``kinematics`` (a :class:`MemberKinematics`) the cluster's
    dispersion follows radius and its mean a gradient (``sigma1`` is then ``sigma_ref``).
    ``likelihood_precision`` is :func:`mixture_model`'s.

    Examples
    --------
    >>> from bayesmix.spatial import simulate_cluster_kinematics
    >>> sim = simulate_cluster_kinematics(0, 40, 40)
    >>> m = cluster_field_model(sim.data, covariates=sim.covariates,
    ...                         spatial=SpatialLaw(sim.footprint), kinematics=MemberKinematics(radius="R"))
    >>> m.component_names
    ('cluster', 'field')
    """
    if isinstance(radius_fraction, str):
        radius_fraction = RadiusFraction(covariate=radius_fraction)
    return mixture_model(data, 2, priors=priors, ordering=Ordering("scale", 0),
                         radius_fraction=radius_fraction, covariates=covariates,
                         component_names=("cluster", "field"), tutorial_names=True, spatial=spatial,
                         kinematics=kinematics, likelihood_precision=likelihood_precision)


def _covariate_column(covariates, name: str, n_stars: int, what: str) -> np.ndarray:
    """One finite value per star of covariate ``name``, or an error naming it, the count and the rows."""
    if name not in (covariates or {}):
        raise ValueError(f"{what} needs the covariate {name!r}; available covariates: "
                         f"{sorted(covariates or {})}.")
    col = np.asarray(covariates[name], float)
    if col.shape != (n_stars,):
        raise ValueError(f"covariate {name!r} must hold one value per star ({n_stars}); got shape "
                         f"{col.shape}.")
    bad = np.flatnonzero(~np.isfinite(col))
    if bad.size:
        raise ValueError(f"covariate {name!r} ({what}) is not finite for {bad.size} star(s) (rows "
                         f"{bad[:5].tolist()}{' ...' if bad.size > 5 else ''}): drop those rows or fill "
                         "them.")
    return col


def _resolve_cluster_terms(spatial_law, kinematics, radius_fraction, covariates, shape, n_components: int,
                           n_total: int, ordering: Ordering, member_scale: float):
    """The spatial term and the member kinematics, checked and with their defaults filled (or None)."""
    n_stars, n_features = shape
    if spatial_law is not None:
        spatial_law = _resolve_spatial(spatial_law, radius_fraction, covariates, n_stars, n_total, ordering)
    if kinematics is not None:
        kinematics = _resolve_kinematics(kinematics, covariates, n_stars, n_components, n_features,
                                         member_scale)
    return spatial_law, kinematics


def _resolve_spatial(law: SpatialLaw, radius_fraction, covariates, n_stars: int, n_total: int,
                     ordering: Ordering) -> SpatialLaw:
    """Check a spatial term against the model and the positions; fill its default prior.

    Stars outside the footprint are an error (naming the count and rows), not dropped:
    the field density ``1 / area`` would be wrong for them, and dropping belongs to the
    catalogue's selection (with its drop report).
    """
    if not isinstance(law, SpatialLaw):
        raise ValueError(f"spatial must be a SpatialLaw; got {type(law).__name__}.")
    if radius_fraction is not None:
        raise ValueError("spatial and radius_fraction both set the member fraction: give one of them.")
    if n_total < 2:
        raise ValueError("spatial needs a field: at least 2 components (cluster, field).")
    if ordering.kind == "weight":
        raise ValueError("spatial sets the weights; order by scale or mean, not by weight.")
    xi = _covariate_column(covariates, law.xi, n_stars, "spatial.xi")
    eta = _covariate_column(covariates, law.eta, n_stars, "spatial.eta")
    outside = np.flatnonzero(~law.footprint.contains(xi, eta))
    if outside.size:
        raise ValueError(f"{outside.size} star(s) lie outside the footprint ({law.footprint.describe()}): "
                         f"rows {outside[:5].tolist()}{' ...' if outside.size > 5 else ''}. Enlarge the "
                         "footprint, use the convex hull of the positions, or cut those stars in the "
                         "catalogue selection.")
    if law.scale_radius is None and law.scale_radius_loc is None:
        radius = np.hypot(xi, eta)
        loc = 0.5 * float(np.median(radius)) if np.median(radius) > 0 else 0.1 * math.sqrt(law.footprint.area)
        law = dataclasses.replace(law, scale_radius_loc=loc)
    logger.info("spatial term: %s profile; footprint %s", law.profile, law.footprint.describe())
    return law


def _kinematics_radius_defaults(kin: MemberKinematics, covariates, n_stars: int,
                                member_scale: float) -> dict[str, Any]:
    """Check the profile's radius covariate; the floor, reference radius and bin prior defaults."""
    radius = _covariate_column(covariates, kin.radius, n_stars, "kinematics.radius")
    bad = np.flatnonzero(radius < 0)
    if bad.size:
        raise ValueError(f"covariate {kin.radius!r} must hold radii >= 0; {bad.size} star(s) do not "
                         f"(rows {bad[:5].tolist()}).")
    positive = radius[radius > 0]
    if positive.size == 0:
        raise ValueError(f"covariate {kin.radius!r} is 0 for every star: is it the radius column?")
    # A falling power law diverges at R = 0: the profile reads max(R, R_min).
    updates: dict[str, Any] = {"minimum_radius": 0.5 * float(positive.min())}
    if kin.reference_radius is None:
        updates["reference_radius"] = float(np.median(positive))
    if kin.bin_scales is None:
        updates["bin_scales"] = member_scale
    return updates


def _resolve_kinematics(kin: MemberKinematics, covariates, n_stars: int, n_components: int, n_features: int,
                        member_scale: float) -> MemberKinematics:
    """Check member kinematics against the model and the covariates; fill the default priors."""
    if not isinstance(kin, MemberKinematics):
        raise ValueError(f"kinematics must be a MemberKinematics; got {type(kin).__name__}.")
    if n_features != 1 or n_components < 2:
        raise ValueError(f"kinematics needs 1-D data (velocities) and at least 2 Gaussian components (the "
                         f"cluster and a field); got {n_features} feature(s), {n_components} component(s).")
    updates = _kinematics_radius_defaults(kin, covariates, n_stars, member_scale) if kin.radius else {}
    if kin.gradient is not None:
        xi, eta = (_covariate_column(covariates, name, n_stars, "kinematics.gradient")
                   for name in kin.gradient)
        if kin.gradient_scale is None:
            spread = float(np.median(np.hypot(xi, eta)))
            updates["gradient_scale"] = member_scale / (spread if spread > 0 else 1.0)
    if kin.bin_scales is not None:
        scales = np.broadcast_to(np.asarray(kin.bin_scales, float), (kin.n_bins,))
        updates["bin_scales"] = tuple(scales.tolist())
    elif "bin_scales" in updates:
        updates["bin_scales"] = (float(updates["bin_scales"]),) * max(kin.n_bins, 1)
    if kin.bin_edges is not None:
        updates["bin_edges"] = tuple(float(e) for e in kin.bin_edges)
    return dataclasses.replace(kin, **updates)


def _posterior_sites(posterior, max_draws: int | None) -> dict[str, np.ndarray]:
    """Every numeric site of evenly thinned draws (chains pooled), leading axis n_draws."""
    n_chain, n_draw = posterior.sizes["chain"], posterior.sizes["draw"]
    total = n_chain * n_draw
    keep = np.arange(total) if max_draws is None or max_draws >= total else \
        np.round(np.linspace(0, total - 1, int(max_draws))).astype(int)
    out = {}
    for name, da in posterior.data_vars.items():
        if np.issubdtype(da.dtype, np.number):
            values = np.asarray(da.transpose("chain", "draw", ...).values)
            out[name] = values.reshape(total, *values.shape[2:])[keep]
    return out


def dispersion_profile(fit, radii, *, max_draws: int | None = 1000) -> np.ndarray:
    """Posterior draws of the members' velocity dispersion ``sigma(R)`` on a radius grid.

    Parameters
    ----------
    fit : PosteriorFit
        Of a model with :class:`MemberKinematics` (``fit.model.kinematics``), or any 1-D
        model (then ``sigma(R)`` is the cluster's constant dispersion).
    radii : array_like, shape (n_radii,)
    max_draws : int, optional
        Evenly thinned draws at most (None: all).

    Returns
    -------
    ndarray, shape (n_draws, n_radii)

    Examples
    --------
    >>> sigma = dispersion_profile(fit, np.geomspace(10, 1000, 30))  # doctest: +SKIP
    >>> np.percentile(sigma, [16, 50, 84], axis=0)  # doctest: +SKIP
    """
    radii = np.atleast_1d(np.asarray(radii, float))
    sites = _posterior_sites(fit.idata.posterior, max_draws)
    sigma_ref = np.asarray(sites["scales"])[:, 0, 0]
    kin = getattr(fit.model, "kinematics", None)
    if kin is None:
        return np.repeat(sigma_ref[:, None], radii.size, axis=1)

    def one(site, sref):
        return kin.dispersion(site, sref, jnp.asarray(radii))

    names = [n for n in ("dispersion_slope", "dispersion_bins") if n in sites]
    per_draw = {n: jnp.asarray(sites[n]) for n in names}
    return np.asarray(jax.vmap(one)(per_draw, jnp.asarray(sigma_ref)))
