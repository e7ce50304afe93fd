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
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from bayesmix import _x64  # noqa: F401
from bayesmix.likelihood import MixtureParams, Observations, log_joint, mvn_log_prob, total_log_likelihood

__all__ = [
    "MixtureModel",
    "Ordering",
    "Priors",
    "RadiusFraction",
    "cluster_field_model",
    "mixture_model",
]

_ORDER_KINDS = ("scale", "mean", "weight")


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
        if self.kind not in _ORDER_KINDS:
            raise ValueError(f"Ordering kind={self.kind!r}; use one of {_ORDER_KINDS}.")


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
    """

    weight_concentration: float = 1.0
    mean_loc: Any = None
    mean_scale: Any = None
    scale_scale: Any = None
    lkj_concentration: float = 2.0
    frac_loc: float = 0.0
    frac_scale: float = 2.5


@dataclasses.dataclass(frozen=True)
class RadiusFraction:
    """Member fraction that depends on projected radius (membership problems, K = 2).

    Component 0 is the cluster (the narrower one under the default ordering), 1 the field.

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
        if self.kind not in ("logistic", "plummer"):
            raise ValueError(f"RadiusFraction kind={self.kind!r}; use 'logistic' or 'plummer'.")


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
    background : UniformBackground, GaussianBackground or None
        From :mod:`bayesmix.em`; its shape is fixed, its weight sampled.
    radius_fraction : RadiusFraction or None
    frozen : MixtureParams or None, with ``frozen_means`` / ``frozen_covariances`` /
        ``frozen_weights``
        Fixed values, used where the masks are True. Frozen weights keep their values;
        the free weights (and a background's) share the rest, with the Dirichlet prior
        conditioned on the frozen ones (a Dirichlet over the free shares).
    tutorial_names : bool
        Also record ``mean1, sigma1, mean2, sigma2, frac1`` (K = 2, D = 1).
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
    reference_radius: float | None = None
    frozen: MixtureParams | None = None
    frozen_means: tuple[bool, ...] | None = None
    frozen_covariances: tuple[bool, ...] | None = None
    frozen_weights: tuple[bool, ...] | None = None
    tutorial_names: bool = False

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
        if self.frozen is not None:
            hyper["frozen_means"] = self.frozen.means
            hyper["frozen_covariances"] = self.frozen.covariances
            hyper["frozen_weights"] = self.frozen.weights
        return {k: jnp.asarray(v, dtype=jnp.float64) for k, v in hyper.items()}

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
        log_w = self._sample_log_weights(data, covariates, h)

        loc, scale = h["mean_loc"], h["mean_scale"]
        if order.kind == "mean":
            j = order.feature
            col = _ordered_site("means_ordered", k,
                                lambda v: dist.Normal(loc[j], scale[j]).log_prob(v).sum(), False)
            rest = None
            if d > 1:
                keep = np.delete(np.arange(d), j)  # static indices: the priors are traced
                rest = numpyro.sample("means_rest", dist.Normal(jnp.take(loc, keep), jnp.take(scale, keep))
                                      .expand([k, d - 1]).to_event(2))
            means = _with_column(rest, col, j)
        else:
            means = numpyro.sample("means_free", dist.Normal(loc, scale).expand([k, d]).to_event(2))

        sscale = h["scale_scale"]
        if order.kind == "scale":
            j = order.feature
            col = _ordered_site("scales_ordered", k,
                                lambda v: dist.HalfNormal(sscale[j]).log_prob(v).sum(), True)
            rest = None
            if d > 1:
                keep = np.delete(np.arange(d), j)
                rest = numpyro.sample("scales_rest", dist.HalfNormal(jnp.take(sscale, keep))
                                      .expand([k, d - 1]).to_event(2))
            scales = _with_column(rest, col, j)
        else:
            scales = numpyro.sample("scales_free", dist.HalfNormal(sscale).expand([k, d]).to_event(2))

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
            w_mean = self._mean_weights(log_w)
            numpyro.deterministic("mean1", means[0, 0])
            numpyro.deterministic("sigma1", scales[0, 0])
            numpyro.deterministic("mean2", means[1, 0])
            numpyro.deterministic("sigma2", scales[1, 0])
            numpyro.deterministic("frac1", w_mean[0])

        params = MixtureParams(jnp.exp(log_w[..., :k]), means, covs)
        numpyro.factor("log_likelihood", self.total_log_likelihood(params, log_w, data))

    def total_log_likelihood(self, params: MixtureParams, log_w, data: Observations):
        """``sum_i logsumexp_k`` of :meth:`joint_log_prob`, with its closed-form gradient.

        The sampler's hot path (:func:`bayesmix.likelihood.total_log_likelihood`).
        """
        return total_log_likelihood(params, data, log_w, self.log_background(data))

    def joint_log_prob(self, params: MixtureParams, log_w, data: Observations):
        """``log w_k + log p_k(x_i)`` for every component, background last: (n_stars, n_total).

        The one place where the background joins the shared Gaussian likelihood; the
        program, the pointwise log-likelihood and the memberships all reduce this.
        """
        k = self.n_components
        lj = log_joint(params, data, log_w[..., :k])
        if self.background is not None:
            lj = jnp.concatenate([lj, (log_w[..., k] + self.log_background(data))[:, None]], axis=1)
        return lj

    def _mean_weights(self, log_w):
        return jnp.exp(log_w) if log_w.ndim == 1 else jnp.mean(jnp.exp(log_w), axis=0)

    def _sample_log_weights(self, data, covariates, h):
        k_total = self.n_total
        alpha = h["alpha"]
        if self.radius_fraction is not None:
            rf = self.radius_fraction
            radius = jnp.asarray((covariates or {})[rf.covariate])
            log_r = jnp.log(radius / h["reference_radius"])
            if rf.kind == "logistic":
                a = numpyro.sample("frac_intercept", dist.Normal(h["frac_loc"], h["frac_scale"]))
                b = numpyro.sample("frac_slope", dist.Normal(0.0, h["frac_scale"]))
                logit = a + b * log_r
            else:
                c = numpyro.sample("frac_log_ratio", dist.Normal(h["frac_loc"], 2.0 * h["frac_scale"]))
                r_p = numpyro.sample("frac_radius", dist.LogNormal(jnp.log(h["reference_radius"]), 1.0))
                logit = c - 2.0 * jnp.log1p((radius / r_p) ** 2)
            log_w = jnp.stack([jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit)], axis=-1)
            numpyro.deterministic("weights", jnp.mean(jnp.exp(log_w), axis=0))
            return log_w
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
        """Log density of each star under the fixed background, (n_stars,); None without one."""
        bg = self.background
        if bg is None:
            return None
        if hasattr(bg, "low"):
            low, high = np.asarray(bg.low, float), np.asarray(bg.high, float)
            return jnp.full(data.values.shape[0], -float(np.sum(np.log(high - low))))
        return mvn_log_prob(data.values, jnp.asarray(bg.mean, jnp.float64),
                            jnp.asarray(bg.covariance, jnp.float64) + data.error_covs)

    # ------------------------------------------------------------------ draws -> parameters

    def params(self, sample: dict) -> MixtureParams:
        """Gaussian-component parameters of one draw.

        ``weights`` are the Gaussian components' (averaged over stars under a radius
        law); with a background they sum to ``1 - background_weight``.
        """
        w = jnp.asarray(sample["weights"])[..., : self.n_components]
        return MixtureParams(w, jnp.asarray(sample["means"]), jnp.asarray(sample["covariances"]))

    def log_weights(self, sample: dict, covariates: dict | None = None):
        """Log weights of one draw: (n_total,), or (n_stars, n_total) with a radius law."""
        if self.radius_fraction is None:
            if self.background is not None:
                return jnp.log(jnp.append(jnp.asarray(sample["weights"]), sample["background_weight"]))
            return jnp.log(jnp.asarray(sample["weights"]))
        rf = self.radius_fraction
        radius = jnp.asarray((covariates or {})[rf.covariate])
        if rf.kind == "logistic":
            logit = sample["frac_intercept"] + sample["frac_slope"] * jnp.log(radius / self.reference_radius)
        else:
            logit = sample["frac_log_ratio"] - 2.0 * jnp.log1p((radius / sample["frac_radius"]) ** 2)
        return jnp.stack([jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit)], axis=-1)

    # ------------------------------------------------------------------ initial values

    def order_components(self, params: MixtureParams) -> np.ndarray:
        """Permutation that puts point-estimate components in this model's order."""
        order = self.ordering
        if order.kind == "scale":
            key = np.asarray(params.covariances)[:, order.feature, order.feature]
        elif order.kind == "mean":
            key = np.asarray(params.means)[:, order.feature]
        else:
            key = np.asarray(params.weights)
        return np.argsort(key, kind="stable")

    def init_values(self, params: MixtureParams, background_weight: float | None = None,
                    n_stars: int | None = None, key=None) -> dict[str, np.ndarray]:
        """Constrained values of every sample site from a point estimate (e.g. the EM fit).

        Parameters
        ----------
        params : MixtureParams
            Gaussian components, any order (they are sorted to satisfy the ordering).
        background_weight : float, optional
        n_stars : int, optional
            With ``key``: jitter each chain's start by about one posterior standard
            deviation (from the component's share of ``n_stars``), so chains do not all
            start at one point and R-hat keeps its power.
        key : jax PRNG key, optional

        Returns
        -------
        dict of str to ndarray
        """
        k, d = self.n_components, self.n_features
        perm = self.order_components(params)
        w = np.asarray(params.weights, float)[perm]
        mu = np.asarray(params.means, float)[perm].copy()
        cov = np.asarray(params.covariances, float)[perm]
        sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2)).copy()
        if self.background is not None:
            bw = float(background_weight if background_weight is not None else self.background.weight)
            w = np.append(w / w.sum() * (1.0 - bw), bw)
        w = np.clip(w / w.sum(), 1e-6, None)
        w /= w.sum()
        if key is not None and n_stars:
            k1, k2, k3 = jax.random.split(key, 3)
            n_k = np.maximum(w[:k] * n_stars, 2.0)
            mu += np.asarray(jax.random.normal(k1, mu.shape)) * sd / np.sqrt(n_k)[:, None]
            sd *= np.exp(np.asarray(jax.random.normal(k2, sd.shape)) / np.sqrt(2.0 * n_k)[:, None])
            w *= np.exp(np.asarray(jax.random.normal(k3, w.shape)) / np.sqrt(np.maximum(w * n_stars, 2.0)))
            w /= w.sum()
        values: dict[str, np.ndarray] = {}
        order = self.ordering
        if self.radius_fraction is not None:
            rf = self.radius_fraction
            logit0 = math.log(w[0] / w[1])
            if rf.kind == "logistic":
                values["frac_intercept"] = np.asarray(logit0)
                values["frac_slope"] = np.asarray(0.0)
            else:
                values["frac_log_ratio"] = np.asarray(logit0 + 2.0 * math.log(2.0))
                values["frac_radius"] = np.asarray(self.reference_radius)
        elif self.frozen_weights is not None and any(self.frozen_weights):
            fixed = np.asarray(self.frozen_weights + (False,) * (self.n_total - k))
            if np.sum(~fixed) > 1:
                free = w[~fixed]
                values["weights_free"] = free / free.sum()
        elif order.kind == "weight":
            values["weight_gammas"] = _strictly_increasing(np.sort(w) * self.n_total
                                                           * self.weight_concentration, positive=True)
        elif self.background is not None:
            values["weights_all"] = w
        else:
            values["weights"] = w
        if order.kind == "mean":
            j = order.feature
            values["means_ordered"] = _strictly_increasing(mu[:, j], positive=False)
            if d > 1:
                values["means_rest"] = np.delete(mu, j, axis=1)
        else:
            values["means_free"] = mu
        if order.kind == "scale":
            j = order.feature
            values["scales_ordered"] = _strictly_increasing(sd[:, j], positive=True)
            if d > 1:
                values["scales_rest"] = np.delete(sd, j, axis=1)
        else:
            values["scales_free"] = sd
        if d > 1:
            base_sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
            corr = cov / base_sd[:, :, None] / base_sd[:, None, :]
            corr = 0.999 * corr + 0.001 * np.eye(d)  # keep |rho| < 1 strictly
            values["corr_cholesky"] = np.linalg.cholesky(corr)
        return values


def _strictly_increasing(v, positive):
    v = np.asarray(v, float).copy()
    for i in range(1, v.size):
        if v[i] <= v[i - 1]:
            v[i] = v[i - 1] + 1e-6 * max(abs(v[i - 1]), 1e-6)
    if positive:
        v = np.maximum(v, 1e-12)
    return v


def _as_feature_array(name, value, default, n_features):
    arr = np.broadcast_to(np.asarray(default if value is None else value, float), (n_features,)).copy()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"priors.{name} must be finite; got {value!r}.")
    return arr


def mixture_model(data, n_components: int, *, priors: Priors | None = None,
                  ordering: Ordering | str | None = None, background=None,
                  radius_fraction: RadiusFraction | None = None, covariates: dict | None = None,
                  frozen: MixtureParams | None = None, frozen_means=None, frozen_covariances=None,
                  frozen_weights=None, feature_names=None, component_names=None,
                  tutorial_names: bool = False) -> MixtureModel:
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
    background : bayesmix.em.UniformBackground or GaussianBackground, optional
    radius_fraction : RadiusFraction, optional
        Requires ``n_components == 2`` and no background; ``covariates`` (or the
        catalogue's) must hold its radius column, all positive.
    covariates : dict of str to array, optional
    frozen, frozen_means, frozen_covariances, frozen_weights
        Fixed component values (a MixtureParams) and boolean masks (n_components,),
        as in :func:`bayesmix.em.fit_em`.
    feature_names, component_names : sequences of str, optional
    tutorial_names : bool
        Record the tutorial's ``mean1, sigma1, mean2, sigma2, frac1`` (K = 2, D = 1).

    Returns
    -------
    MixtureModel
    """
    from bayesmix.likelihood import as_observations

    if hasattr(data, "covariates") and covariates is None:
        covariates = data.covariates
    if feature_names is None and hasattr(data, "feature_names"):
        feature_names = data.feature_names
    obs = data if isinstance(data, Observations) else as_observations(data)
    x = np.asarray(obs.values)
    n_stars, n_features = x.shape
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer; got {n_components!r}.")
    if n_components > n_stars:
        raise ValueError(f"n_components={n_components} exceeds the number of stars ({n_stars}).")
    priors = priors or Priors()
    if isinstance(ordering, str):
        ordering = Ordering(ordering)
    ordering = ordering or Ordering("scale", 0)
    if ordering.kind != "weight" and not 0 <= ordering.feature < n_features:
        raise ValueError(f"ordering.feature={ordering.feature} is not a feature index (0..{n_features - 1}).")
    if ordering.kind == "weight" and background is not None:
        raise ValueError("ordering by weight cannot be combined with a background; order by scale or mean.")
    if priors.weight_concentration <= 0 or priors.lkj_concentration <= 0:
        raise ValueError("priors.weight_concentration and priors.lkj_concentration must be > 0.")
    spread = np.std(x, axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    mean_loc = _as_feature_array("mean_loc", priors.mean_loc, np.median(x, axis=0), n_features)
    mean_scale = _as_feature_array("mean_scale", priors.mean_scale, 3.0 * spread, n_features)
    scale_scale = _as_feature_array("scale_scale", priors.scale_scale, 2.0 * spread, n_features)
    if np.any(mean_scale <= 0) or np.any(scale_scale <= 0):
        raise ValueError("priors.mean_scale and priors.scale_scale must be > 0.")
    reference_radius = None
    if radius_fraction is not None:
        if n_components != 2 or background is not None:
            raise ValueError("radius_fraction needs exactly 2 components (cluster, field) and no background.")
        if radius_fraction.covariate not in (covariates or {}):
            raise ValueError(f"radius_fraction needs the covariate {radius_fraction.covariate!r}; "
                             f"available covariates: {sorted(covariates or {})}.")
        radius = np.asarray(covariates[radius_fraction.covariate], float)
        if radius.shape != (n_stars,) or not np.all(np.isfinite(radius)) or np.any(radius <= 0):
            raise ValueError(f"covariate {radius_fraction.covariate!r} must hold one positive, finite "
                             "radius per star.")
        reference_radius = float(radius_fraction.reference_radius or np.median(radius))
    if tutorial_names and (n_components != 2 or n_features != 1):
        raise ValueError("tutorial_names needs a 1-D, 2-component model.")
    n_total = n_components + (background is not None)
    names = tuple(component_names) if component_names is not None else (
        tuple(f"c{k}" for k in range(n_components)) + (("background",) if background is not None else ()))
    if len(names) != n_total:
        raise ValueError(f"component_names has {len(names)} names for {n_total} components.")
    feats = tuple(feature_names) if feature_names is not None else tuple(f"x{j}" for j in range(n_features))
    masks = {}
    for label, mask in (("frozen_means", frozen_means), ("frozen_covariances", frozen_covariances),
                        ("frozen_weights", frozen_weights)):
        if mask is not None:
            mask = tuple(bool(m) for m in np.broadcast_to(np.asarray(mask, bool), (n_components,)))
            if frozen is None:
                raise ValueError(f"{label} needs frozen= (a MixtureParams with the fixed values).")
        masks[label] = mask
    if masks["frozen_weights"] is not None and any(masks["frozen_weights"]):
        if radius_fraction is not None or ordering.kind == "weight":
            raise ValueError("frozen_weights cannot be combined with radius_fraction or ordering by weight.")
        fixed_sum = float(np.sum(np.asarray(frozen.weights)[np.asarray(masks["frozen_weights"])]))
        n_free = n_total - int(np.sum(masks["frozen_weights"]))
        if not (0.0 <= fixed_sum < 1.0) or n_free < 1:
            raise ValueError(f"frozen weights sum to {fixed_sum:.6g} with {n_free} free components; they "
                             "must sum to less than 1 and leave at least one component (or the "
                             "background) free.")
    return MixtureModel(
        n_components=n_components, n_features=n_features, feature_names=feats, component_names=names,
        ordering=ordering, weight_concentration=float(priors.weight_concentration),
        mean_loc=mean_loc, mean_scale=mean_scale, scale_scale=scale_scale,
        lkj_concentration=float(priors.lkj_concentration), frac_loc=float(priors.frac_loc),
        frac_scale=float(priors.frac_scale), background=background, radius_fraction=radius_fraction,
        reference_radius=reference_radius, frozen=frozen, frozen_means=masks["frozen_means"],
        frozen_covariances=masks["frozen_covariances"], frozen_weights=masks["frozen_weights"],
        tutorial_names=tutorial_names,
    )


def cluster_field_model(data, *, radius_fraction: RadiusFraction | str | None = None,
                        priors: Priors | None = None, covariates: dict | None = None) -> MixtureModel:
    """The 1-D velocity-membership model: a narrow cluster and a broad field component.

    ``sigma1 < sigma2`` by construction (ordering by dispersion), components named
    ``("cluster", "field")``, and the tutorial's ``mean1, sigma1, mean2, sigma2, frac1``
    recorded. With ``radius_fraction`` (a :class:`RadiusFraction` or the name of the
    radius covariate) the member fraction follows projected radius.
    """
    if isinstance(radius_fraction, str):
        radius_fraction = RadiusFraction(covariate=radius_fraction)
    return mixture_model(data, 2, priors=priors, ordering=Ordering("scale", 0),
                         radius_fraction=radius_fraction, covariates=covariates,
                         component_names=("cluster", "field"), tutorial_names=True)
