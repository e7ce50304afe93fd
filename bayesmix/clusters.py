"""Many clusters in one hierarchical velocity-membership model (a NumPyro program).

Every star belongs to one group (a globular-cluster field, say) named in a catalogue
column. In group ``c`` the stars are a mixture of members and field, each with its own
measurement error ``e_i`` deconvolved::

    p(v_i) = f_c(R_i) N(v_i | mu_c, sigma_c^2 + e_i^2) + (1 - f_c(R_i)) N(v_i | mu_F,c, sigma_F,c^2 + e_i^2)

where, when the stars' projected radii ``R_i`` are given, the member fraction follows
radius, ``logit f_c(R) = logit f_c + b_c log(R / R_c)`` (``R_c`` the group's median
radius): members crowd towards the centre, the field does not, which is what tells a
cluster's few stars from a lumpy bulge field at the same velocity. Without radii
``b_c = 0``.

The groups share what physics says they share:

* ``mu_c`` (systemic velocity): no pooling, a broad prior centred on the group's median
  velocity with three times its spread as the scale (systemic velocities of different
  clusters are unrelated);
* ``log sigma_c`` (member dispersion) ~ Normal(``m_sigma``, ``tau_sigma``), partial pooling;
* ``logit f_c`` (member fraction) ~ Normal(``m_frac``, ``tau_frac``), partial pooling;
* ``b_c`` (the fraction's radial slope) ~ Normal(``m_slope``, ``tau_slope``), partial pooling;
* the field: per group (default), with a broad mean prior as for ``mu_c`` and its
  dispersion ``sigma_F,c = sigma_c + d_c`` with ``log d_c ~ Normal(m_field, tau_field)``
  (partial pooling of the field's log excess dispersion; writing it as an excess keeps
  the field the broader component in every draw, so members and field cannot swap);
  or one field shared by all groups (``field="shared"``).

The hyper-parameters ``m_*`` and ``tau_*`` are sampled (``pooling=True``); with
``pooling=False`` they are fixed at the prior centre and a large ``alone_tau``, so every
group is fitted on its own under the same independent priors: the comparison that
measures how much the pooling shrinks each group. Each group's pooled values are
partially centred by a weight set by its stars (``ManyClusterModel._group_values``):
non-centred (``log sigma_c = m_sigma + tau_sigma z_c``) for a group of a few stars, which
removes the funnel between ``tau`` and the group values that a centred hierarchy shows
under NUTS there, and centred for a rich group, whose data pin the value (non-centred,
its ``z_c`` would have to follow every move of ``m`` and ``tau`` along a curved ridge).
With tens of clusters of both kinds in one model, neither form alone samples well.

The per-star densities are :func:`bayesmix.likelihood.mvn_log_prob` with each star's
group parameters gathered by its group index; member and field enter
:func:`bayesmix.likelihood.total_log_likelihood` (the sampler's hot path) and
:func:`bayesmix.likelihood.log_joint` (memberships) as two per-star component columns
with per-star log weights: the one mixture join of the package.

Before any sampling, :func:`scan_groups` finds every group's member peak by EM from
many starts (a profile of the likelihood over the members' velocity) and measures how
much better members + field explain the group than a field alone; a group whose peak
is not significant, not concentrated to the centre, or as broad as a field is "not
detected" (:attr:`GroupScan.detected`), and :mod:`bayesmix.cluster_runs` reports it
instead of fitting a cluster that the data do not show.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax

from bayesmix import _x64  # noqa: F401
from bayesmix._choices import GROUP_FIELDS
from bayesmix.likelihood import MixtureParams, Observations, as_observations, log_joint, mvn_log_prob
from bayesmix.likelihood import total_log_likelihood as _total_log_likelihood

__all__ = [
    "FIELD_KINDS",
    "GroupParams",
    "GroupScan",
    "ManyClusterModel",
    "detect_members",
    "group_log_joint",
    "group_log_likelihood",
    "log_radius_about_median",
    "many_cluster_model",
    "scan_groups",
]

FIELD_KINDS = GROUP_FIELDS


def _no_gaussians() -> MixtureParams:
    """A mixture join with no Gaussian components of its own: members and field arrive as
    per-star columns (each star has its own group's parameters). Built on use, not at import:
    a JAX array made at import time starts JAX's backend, after which
    ``set_host_device_count`` can no longer give the chains their CPU devices."""
    return MixtureParams(jnp.zeros(0), jnp.zeros((0, 1)), jnp.zeros((0, 1, 1)))


class GroupParams(NamedTuple):
    """Parameters of every group (a JAX PyTree); arrays of shape (n_groups,).

    With a shared field, ``field_mean`` and ``field_sigma`` hold one value repeated.

    Attributes
    ----------
    mu, sigma : array (n_groups,)
        Members' mean velocity and intrinsic dispersion.
    frac : array (n_groups,)
        Member fraction, in (0, 1).
    field_mean, field_sigma : array (n_groups,)
        The field's mean and intrinsic dispersion.
    slope : array (n_groups,) or None
        ``d logit f / d log R``: how the member fraction falls with radius (the fraction
        ``frac`` holds at each group's median radius). None: the same fraction everywhere.
    """

    mu: Any
    sigma: Any
    frac: Any
    field_mean: Any
    field_sigma: Any
    slope: Any = None


def _columns(params: GroupParams, data: Observations, group, log_radius=None):
    """Per-star log weights (n_stars, 2) and member / field log densities (n_stars, 2)."""
    values, error_var = data.values, data.error_covs  # (N, 1), (N, 1, 1)
    member = mvn_log_prob(values, params.mu[group][:, None],
                          (params.sigma[group] ** 2)[:, None, None] + error_var)
    field = mvn_log_prob(values, params.field_mean[group][:, None],
                         (params.field_sigma[group] ** 2)[:, None, None] + error_var)
    logit = jnp.log(params.frac[group]) - jnp.log1p(-params.frac[group])
    if params.slope is not None and log_radius is not None:
        logit = logit + params.slope[group] * log_radius
    log_w = jnp.stack([jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit)], axis=1)
    return log_w, jnp.stack([member, field], axis=1)


def group_log_joint(params: GroupParams, data: Observations, group, log_radius=None):
    """``log w + log p`` of member and field for every star, through :func:`~bayesmix.likelihood.log_joint`.

    Parameters
    ----------
    params : GroupParams
        Arrays of shape (n_groups,).
    data : Observations
        ``values`` (n_stars, 1), ``error_covs`` (n_stars, 1, 1).
    group : int array, shape (n_stars,)
        Each star's group index in ``[0, n_groups)``.
    log_radius : array, shape (n_stars,), optional
        ``log(R_i / R_c)``, each star's radius over its group's median radius, read with
        ``params.slope``.

    Returns
    -------
    array, shape (n_stars, 2)
        Column 0 the members, column 1 the field; ``softmax`` along axis 1 gives the
        memberships, ``logsumexp`` each star's log-likelihood.

    Examples
    --------
    >>> import numpy as np, jax.numpy as jnp
    >>> from bayesmix.likelihood import as_observations
    >>> obs = as_observations(np.array([0.0, 1.0, 40.0]), np.array([0.5, 0.5, 0.5]))
    >>> p = GroupParams(*(jnp.array([v]) for v in (0.0, 1.0, 0.5, 0.0, 30.0)))
    >>> group_log_joint(p, obs, jnp.zeros(3, int)).shape
    (3, 2)
    """
    log_w, columns = _columns(params, data, group, log_radius)
    return log_joint(_no_gaussians(), data, log_w, columns)


def group_log_likelihood(params: GroupParams, data: Observations, group, log_radius=None):
    """Total log-likelihood of all groups, with the closed-form mixture gradient.

    :func:`bayesmix.likelihood.total_log_likelihood` over the per-star member and field
    columns of :func:`group_log_joint` (the same terms, reduced in one fused pass).

    Parameters
    ----------
    params : GroupParams
    data : Observations
    group : int array, shape (n_stars,)
    log_radius : array, shape (n_stars,), optional
        As for :func:`group_log_joint`.

    Returns
    -------
    scalar

    Examples
    --------
    >>> import numpy as np, jax.numpy as jnp
    >>> from bayesmix.likelihood import as_observations
    >>> obs = as_observations(np.array([0.0, 1.0, 40.0]), np.array([0.5, 0.5, 0.5]))
    >>> p = GroupParams(*(jnp.array([v]) for v in (0.0, 1.0, 0.5, 0.0, 30.0)))
    >>> bool(jnp.isfinite(group_log_likelihood(p, obs, jnp.zeros(3, int))))
    True
    """
    log_w, columns = _columns(params, data, group, log_radius)
    return _total_log_likelihood(_no_gaussians(), data, log_w, columns)


# --------------------------------------------------------------------------- the member-peak scan


class GroupScan(NamedTuple):
    """Every group's best members + field fit from many starts, and whether members were found.

    Attributes
    ----------
    params : GroupParams
        numpy arrays (n_groups,): the best of the starts for each group (``slope`` zero
        without radii).
    log_lik : ndarray (n_groups,)
        Its log-likelihood.
    log_lik_field : ndarray (n_groups,)
        The log-likelihood of a field alone (one Gaussian, errors deconvolved).
    n_members : ndarray (n_groups,)
        Sum of the stars' member probabilities at the best fit.
    reason : tuple of str
        Empty where the members are detected; otherwise why not (see :func:`detect_members`).
    """

    params: GroupParams
    log_lik: np.ndarray
    log_lik_field: np.ndarray
    n_members: np.ndarray
    reason: tuple = ()

    @property
    def delta_log_lik(self) -> np.ndarray:
        """How much better members + field explain each group than a field alone."""
        return self.log_lik - self.log_lik_field

    @property
    def detected(self) -> np.ndarray:
        return np.array([not r for r in self.reason], bool)


def _xd_moments(weight, v, error_var, mean, var, group, n_groups):
    """One extreme-deconvolution update of a 1-D Gaussian per group (Bovy et al. 2011, eqs. 15-17).

    The expected true value ``b_i`` and its variance ``B_i`` given ``v_i``, then the
    weighted mean and variance of those per group.
    """
    var_i, mean_i = var[group], mean[group]
    total = var_i + error_var
    b = mean_i + var_i / total * (v - mean_i)
    big_b = var_i - var_i**2 / total
    w_sum = jax.ops.segment_sum(weight, group, n_groups) + 1e-12
    new_mean = jax.ops.segment_sum(weight * b, group, n_groups) / w_sum
    new_var = jax.ops.segment_sum(weight * ((b - new_mean[group]) ** 2 + big_b), group, n_groups) / w_sum
    return new_mean, new_var


def _fraction_step(frac, slope, resp, log_radius, group, n_groups):
    """One Newton step of the logistic ``logit f = a + b x`` towards the responsibilities.

    A small ridge keeps it defined when a group's radii are all alike; the slope is held
    at or below zero (members are never rarer at the centre).
    """
    a = jnp.log(frac) - jnp.log1p(-frac)
    f = jax.nn.sigmoid(a[group] + slope[group] * log_radius)
    h = f * (1.0 - f)

    def seg(x):
        return jax.ops.segment_sum(x, group, n_groups)

    g0, g1 = seg(resp - f), seg((resp - f) * log_radius)
    h00, h01, h11 = seg(h) + 0.1, seg(h * log_radius), seg(h * log_radius**2) + 0.1
    det = h00 * h11 - h01**2
    a = jnp.clip(a + (h11 * g0 - h01 * g1) / det, -10.0, 10.0)
    slope = jnp.clip(slope + (h00 * g1 - h01 * g0) / det, -5.0, 0.0)
    return jax.nn.sigmoid(a), slope


def _scan_step(params: GroupParams, data: Observations, group, log_radius, n_groups: int, sigma_max):
    """One EM step of every group's members + field, responsibilities from :func:`group_log_joint`."""
    v, error_var = data.values[:, 0], data.error_covs[:, 0, 0]
    resp = jax.nn.softmax(group_log_joint(params, data, group, log_radius), axis=1)[:, 0]
    mu, var = _xd_moments(resp, v, error_var, params.mu, params.sigma**2, group, n_groups)
    sigma = jnp.clip(jnp.sqrt(var), 1e-3 * sigma_max, sigma_max)
    field_mean, field_var = _xd_moments(1.0 - resp, v, error_var, params.field_mean, params.field_sigma**2,
                                        group, n_groups)
    frac, slope = _fraction_step(params.frac, params.slope, resp, log_radius, group, n_groups)
    return GroupParams(mu, sigma, frac, field_mean, jnp.maximum(jnp.sqrt(field_var), 1.05 * sigma), slope)


def _group_log_lik(params, data, group, log_radius, n_groups):
    per_star = jax.nn.logsumexp(group_log_joint(params, data, group, log_radius), axis=1)
    return jax.ops.segment_sum(per_star, group, n_groups)


def _field_alone(mean, var, data, group, n_groups, n_iter):
    """A field alone per group (one deconvolved Gaussian): its log-likelihood per group."""
    v, error_var = data.values[:, 0], data.error_covs[:, 0, 0]
    ones = jnp.ones_like(v)

    def body(state, _):
        return _xd_moments(ones, v, error_var, *state, group, n_groups), None

    (mean, var), _ = lax.scan(body, (mean, var), None, n_iter)
    per_star = mvn_log_prob(data.values, mean[group][:, None], (var[group] + error_var)[:, None, None])
    return jax.ops.segment_sum(per_star, group, n_groups)


@functools.partial(jax.jit, static_argnames=("n_groups", "n_iter"))
def _scan_program(starts: GroupParams, field0, data, group, log_radius, sigma_max, *, n_groups: int,
                  n_iter: int):
    def climb(params):
        def body(p, _):
            return _scan_step(p, data, group, log_radius, n_groups, sigma_max), None

        final = lax.scan(body, params, None, n_iter)[0]
        return final, _group_log_lik(final, data, group, log_radius, n_groups)

    finals, log_lik = jax.vmap(climb)(starts)  # (n_starts, n_groups)
    best = jnp.argmax(jnp.where(jnp.isfinite(log_lik), log_lik, -jnp.inf), axis=0)
    params = jax.tree.map(lambda a: a[best, jnp.arange(n_groups)], finals)
    resp = jax.nn.softmax(group_log_joint(params, data, group, log_radius), axis=1)[:, 0]
    return (params, log_lik[best, jnp.arange(n_groups)], _field_alone(*field0, data, group, n_groups, n_iter),
            jax.ops.segment_sum(resp, group, n_groups))


def _scan_starts(v: np.ndarray, group: np.ndarray, n_groups: int, sigma_max: float, n_starts: int):
    """Starts of the scan: ``n_starts`` member velocities at each group's quantiles, two widths."""
    rows = [v[group == c] for c in range(n_groups)]
    levels = (np.arange(n_starts) + 0.5) / n_starts
    mu = np.array([np.quantile(r, levels) for r in rows]).T  # (n_starts, n_groups)
    centre = np.array([np.median(r) for r in rows])
    spread = np.array([max(_robust_spread(r), float(np.std(r)) / 3.0, 1e-3 * sigma_max) for r in rows])
    starts = []
    for width in (sigma_max / 10.0, sigma_max / 3.0):
        shape = mu.shape
        field_sigma = np.broadcast_to(np.maximum(spread, 2.0 * width), shape)
        starts.append(GroupParams(mu, np.full(shape, width), np.full(shape, 0.25),
                                  np.broadcast_to(centre, shape), field_sigma, np.zeros(shape)))
    stacked = GroupParams(*(jnp.asarray(np.concatenate(parts)) for parts in zip(*starts, strict=True)))
    return stacked, (jnp.asarray(centre), jnp.asarray(spread**2))


def scan_groups(values, errors, group, *, log_radius=None, sigma_max: float = 25.0, n_starts: int = 32,
                n_iter: int = 30, min_delta_log_lik: float = 15.0, min_members: float = 3.0) -> GroupScan:
    """Find every group's member peak: EM of members + field from many starts, best kept.

    For each group, ``2 n_starts`` EM runs start the members at ``n_starts`` quantiles of
    the group's velocities (so one start lies in any peak holding a few percent of the
    stars) with two widths; each climbs (members, field and the fraction's radial law
    together, all groups at once) and the highest likelihood wins. Compared with a
    field alone, this says whether the group shows members at all
    (:func:`detect_members`).

    Parameters
    ----------
    values, errors : array_like, shape (n_stars,) or (n_stars, 1)
        Velocities and their standard errors.
    group : int array, shape (n_stars,)
        Group index of each star, ``0 .. n_groups - 1`` (every group non-empty).
    log_radius : array_like, shape (n_stars,), optional
        ``log(R_i / R_c)`` (:func:`log_radius_about_median`); without it the fraction is
        one number per group.
    sigma_max : float
        Widest member dispersion searched, in the velocities' units (25 km/s: a little above
        the most massive globular clusters'). Members found at this bound are a lump of
        field, not a cluster.
    n_starts : int
        Velocity quantiles per group at which the members start.
    n_iter : int
        EM steps from every start.
    min_delta_log_lik, min_members : float
        Detection thresholds, see :func:`detect_members`.

    Returns
    -------
    GroupScan

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> v = np.concatenate([rng.normal(-40, 3, 60), rng.normal(0, 60, 200)])
    >>> scan = scan_groups(v, np.full(260, 1.0), np.zeros(260, int))
    >>> bool(scan.detected[0]), bool(abs(scan.params.mu[0] + 40) < 2)
    (True, True)
    """
    data = as_observations(values, errors)
    group = np.asarray(group, np.int32)
    n_groups = int(group.max()) + 1
    v = np.asarray(data.values)[:, 0]
    starts, field0 = _scan_starts(v, group, n_groups, float(sigma_max), int(n_starts))
    x = jnp.zeros(v.shape) if log_radius is None else jnp.asarray(log_radius, jnp.float64)
    params, log_lik, log_lik_field, n_members = jax.device_get(_scan_program(
        starts, field0, data, jnp.asarray(group), x, jnp.asarray(float(sigma_max)), n_groups=n_groups,
        n_iter=int(n_iter)))
    scan = GroupScan(GroupParams(*(np.asarray(a) for a in params)), np.asarray(log_lik),
                     np.asarray(log_lik_field), np.asarray(n_members))
    return scan._replace(reason=detect_members(scan, sigma_max=sigma_max, uses_radius=log_radius is not None,
                                               min_delta_log_lik=min_delta_log_lik, min_members=min_members))


def detect_members(scan: GroupScan, *, sigma_max: float, uses_radius: bool, min_delta_log_lik: float = 15.0,
                   min_members: float = 3.0) -> tuple[str, ...]:
    """Why each group's best members are not a cluster ("" where they are).

    Members are detected when all of these hold:

    * they raise the log-likelihood over a field alone by at least ``min_delta_log_lik``
      (15 by default: with four more parameters and a search over all velocities, a
      chance lump of field stars rarely gains that much);
    * they number at least ``min_members`` stars (expected count);
    * their dispersion is below ``0.98 sigma_max`` (at the bound they are a broad lump
      of field);
    * with radii, they crowd towards the centre (slope below -0.3).

    Parameters
    ----------
    scan : GroupScan
    sigma_max : float
    uses_radius : bool
    min_delta_log_lik, min_members : float

    Returns
    -------
    tuple of str, one per group
    """
    out = []
    p = scan.params
    for c, gain in enumerate(scan.delta_log_lik):
        why = []
        if not gain >= min_delta_log_lik:
            why.append(f"members gain only {gain:.1f} in log-likelihood over a field alone "
                       f"(< {min_delta_log_lik:g})")
        if not scan.n_members[c] >= min_members:
            why.append(f"only {scan.n_members[c]:.2f} expected members (< {min_members:g})")
        if p.sigma[c] >= 0.98 * sigma_max:
            why.append(f"the best 'members' are as broad as sigma_max = {sigma_max:g} (a lump of field)")
        if uses_radius and p.slope[c] > -0.3:
            why.append(f"the best 'members' are not concentrated to the centre (slope {p.slope[c]:.2f})")
        out.append("; ".join(why))
    return tuple(out)


def log_radius_about_median(radius, group) -> tuple[np.ndarray, np.ndarray]:
    """``log(R_i / R_c)`` with ``R_c`` each group's median radius, and the ``R_c``.

    Parameters
    ----------
    radius : array_like, shape (n_stars,)
        Projected radii (any unit), positive and finite.
    group : int array, shape (n_stars,)

    Returns
    -------
    log_radius : ndarray (n_stars,)
    median : ndarray (n_groups,)

    Raises
    ------
    ValueError
        Naming the rows with a radius that is not positive and finite.
    """
    r = np.asarray(radius, float)
    group = np.asarray(group)
    bad = np.flatnonzero(~(np.isfinite(r) & (r > 0)))
    if bad.size:
        raise ValueError(f"radius: {bad.size} star(s) have a radius that is not positive and finite (rows "
                         f"{bad[:10].tolist()}{' ...' if bad.size > 10 else ''}); drop or fix them in [data] "
                         "(a star at the very centre can take half the smallest radius).")
    median = np.array([np.median(r[group == c]) for c in range(int(group.max()) + 1)])
    return np.log(r / median[group]), median


# --------------------------------------------------------------------------- the hierarchical program


@dataclasses.dataclass(frozen=True, eq=False)
class ManyClusterModel:
    """The hierarchical many-group program; build it with :func:`many_cluster_model`.

    Attributes
    ----------
    group_names : tuple of str
        One per group, in group-index order.
    n_stars : tuple of int
        Stars of each group.
    field : {"per-group", "shared"}
    pooling : bool
        Sample the hyper-parameters (partial pooling); False fixes them (each group alone).
    alone_tau : float
        The fixed ``tau`` of every pooled quantity when ``pooling`` is False.
    centre, spread : ndarray (n_groups,)
        Each group's median velocity and robust spread: the members' mean prior is
        ``Normal(centre, 3 spread)``, a per-group field's ``Normal(centre, 3 max(spread,
        field_ref))``.
    sigma_ref, field_ref : float
        Centres of the ``m_sigma`` and ``m_field`` priors (``Normal(log ref, 2)``): the
        median of the groups' member dispersions at the scan, and the typical field dispersion.
    global_centre, global_spread : float
        Median and standard deviation of all velocities (a shared field's mean prior is
        ``Normal(global_centre, 3 global_spread)``).
    start : GroupParams or None
        Starting values of each group (:meth:`init_values`): with radii the best fit of
        :func:`scan_groups`, without them each group's densest velocity window.
    radius_median : ndarray (n_groups,) or None
        Each group's median radius when the fraction follows radius; None otherwise.
    information : dict of str to ndarray (n_groups,), or None
        Each group's likelihood information about its pooled values (``"sigma"``,
        ``"frac"``, ``"slope"``, ``"field"``, in log or logit units) at the start, from
        ``_information`` (``ManyClusterModel._centring`` turns it into how far each
        group's values are centred). None: every group non-centred.
    """

    group_names: tuple[str, ...]
    n_stars: tuple[int, ...]
    centre: np.ndarray
    spread: np.ndarray
    sigma_ref: float
    field_ref: float
    global_centre: float
    global_spread: float
    start: GroupParams | None = None
    field: str = "per-group"
    pooling: bool = True
    alone_tau: float = 2.0
    radius_median: np.ndarray | None = None
    information: dict | None = None

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    @property
    def uses_radius(self) -> bool:
        return self.radius_median is not None

    def hyperparameters(self) -> dict[str, Any]:
        """Prior constants as arrays, passed to :meth:`model` as an argument (not baked in)."""
        hyper = {"centre": self.centre, "mean_scale": 3.0 * self.spread,
                 "field_mean_scale": 3.0 * np.maximum(self.spread, self.field_ref),
                 "log_sigma_ref": np.log(self.sigma_ref), "log_field_ref": np.log(self.field_ref),
                 "global_centre": self.global_centre, "global_scale": 3.0 * self.global_spread,
                 "alone_tau": self.alone_tau}
        pooled = ("sigma", "frac", "slope", "field")
        hyper.update({f"centring_{name}": self._centring(name) for name in pooled})
        return {k: jnp.asarray(v, dtype=jnp.float64) for k, v in hyper.items()}

    def _pooled(self, name, loc, hyper):
        """(m, tau) of one pooled quantity: sampled sites, or fixed when not pooling."""
        if not self.pooling:
            return loc, hyper["alone_tau"]
        m = numpyro.sample(f"m_{name}", dist.Normal(loc, 2.0))
        tau = numpyro.sample(f"tau_{name}", dist.HalfNormal(1.0))
        return m, tau

    def _centring(self, name: str) -> np.ndarray:
        """Each group's centring weight of a pooled quantity: 0 non-centred, 1 centred.

        For a normal likelihood of information ``I_c`` about a group value drawn from
        ``Normal(m, tau)``, the partially centred form with weight ``w_c = tau^2 I_c / (1 +
        tau^2 I_c)`` samples best (Papaspiliopoulos, Roberts & Skold 2007): about 0 where
        the data say little (non-centred), about 1 where they pin the value (centred).
        ``tau`` is the between-group spread of the start's values beyond what their
        information explains (``_between_group_spread``): where the groups agree
        within their errors it is 0 and every group stays non-centred, since a centred
        group would then make a funnel as ``tau`` goes to 0.
        """
        if self.information is None or name not in self.information:
            return np.zeros(self.n_groups)
        information = np.asarray(self.information[name], float)
        tau = _between_group_spread(_pooled_values(self.start)[name], information)
        return tau**2 * information / (1.0 + tau**2 * information)

    def _group_values(self, name, m, tau, hyper):
        """Group values ``x_c ~ Normal(m, tau)``, each partially centred by its own weight.

        The sampled site is ``u_c ~ Normal(w_c m, tau^w_c)`` and ``x_c = m + tau^(1 - w_c)
        (u_c - w_c m)`` (so ``x_c ~ Normal(m, tau)`` for any ``w_c``): ``w_c = 0`` is the
        non-centred ``m + tau z_c``, right for a group of few stars (the data leave ``x_c``
        near its prior, and a centred ``x_c`` would make a funnel with ``tau``), ``w_c = 1``
        the centred ``x_c`` itself, right for a rich group (the data pin ``x_c``, and a
        non-centred ``z_c = (x_c - m) / tau`` would bend with every move of ``m`` and ``tau``).
        """
        w = hyper[f"centring_{name}"]
        u = numpyro.sample(f"u_{name}", dist.Normal(w * m, tau**w).to_event(1))
        return m + tau ** (1.0 - w) * (u - w * m)

    def _field(self, hyper, sigma):
        if self.field == "shared":
            z_mean = numpyro.sample("z_field_mean", dist.Normal(0.0, 1.0))
            log_sd = numpyro.sample("log_field_sigma", dist.Normal(hyper["log_field_ref"], 2.0))
            ones = jnp.ones(self.n_groups)
            return ones * (hyper["global_centre"] + hyper["global_scale"] * z_mean), ones * jnp.exp(log_sd)
        z_mean = numpyro.sample("z_field_mean", dist.Normal(0.0, 1.0).expand([self.n_groups]).to_event(1))
        m, tau = self._pooled("field", hyper["log_field_ref"], hyper)
        excess = jnp.exp(self._group_values("field", m, tau, hyper))
        return hyper["centre"] + hyper["field_mean_scale"] * z_mean, sigma + excess

    def group_params(self, hyper):
        """Sample every site and return the groups' :class:`GroupParams` (inside a NumPyro program)."""
        z_mu = numpyro.sample("z_mu", dist.Normal(0.0, 1.0).expand([self.n_groups]).to_event(1))
        mu = hyper["centre"] + hyper["mean_scale"] * z_mu
        m, tau = self._pooled("sigma", hyper["log_sigma_ref"], hyper)
        sigma = jnp.exp(self._group_values("sigma", m, tau, hyper))
        m, tau = self._pooled("frac", 0.0, hyper)
        frac = jax.nn.sigmoid(self._group_values("frac", m, tau, hyper))
        slope = None
        if self.uses_radius:
            m, tau = self._pooled("slope", 0.0, hyper)
            slope = self._group_values("slope", m, tau, hyper)
        field_mean, field_sigma = self._field(hyper, sigma)
        return GroupParams(mu, sigma, frac, field_mean, field_sigma, slope)

    def model(self, data: Observations, group, log_radius=None, hyper: dict | None = None):
        """The NumPyro program: priors, then ``factor`` of :func:`group_log_likelihood`.

        Parameters
        ----------
        data : Observations
            ``values`` (n_stars, 1) and ``error_covs`` (n_stars, 1, 1).
        group : int array, shape (n_stars,)
        log_radius : array (n_stars,), optional
            ``log(R_i / R_c)``; needed when :attr:`uses_radius`.
        hyper : dict, optional
            :meth:`hyperparameters` (the default).
        """
        h = self.hyperparameters() if hyper is None else hyper
        params = self.group_params(h)
        for name, value in params._asdict().items():
            if value is not None:
                numpyro.deterministic(name, value)
        numpyro.factor("log_likelihood", group_log_likelihood(params, data, group, log_radius))

    def params(self, sample: dict) -> GroupParams:
        """:class:`GroupParams` of one draw (or of stacked draws: leading axes kept)."""
        return GroupParams(*(None if sample.get(name) is None else jnp.asarray(sample[name])
                             for name in GroupParams._fields))

    def _pooled_start(self, name: str, values: np.ndarray, h: dict) -> dict:
        if self.pooling:
            m, tau = float(np.mean(values)), max(float(np.std(values)), 0.1)
            out = {f"m_{name}": m, f"tau_{name}": tau}
        else:
            m = {"sigma": h["log_sigma_ref"], "frac": 0.0, "field": h["log_field_ref"], "slope": 0.0}[name]
            tau, out = self.alone_tau, {}
        w = self._centring(name)
        out[f"u_{name}"] = w * m + (values - m) / tau ** (1.0 - w)
        return out

    def init_values(self) -> dict[str, np.ndarray]:
        """A starting point for every sampled site, from each group's scan (:attr:`start`).

        The members start at each group's best peak of :func:`scan_groups` (the
        cluster's cold peak, which in a field-dominated group is far from the median),
        the field and the fraction's radial law at the same fit, the hyper-parameters at
        the means and spreads of these values.
        """
        s = GroupParams(*(None if a is None else np.asarray(a, float) for a in self.start))
        h = {k: np.asarray(v) for k, v in self.hyperparameters().items()}
        pooled = _pooled_values(self.start)
        if self.field == "shared":
            pooled.pop("field")
        if not self.uses_radius:
            pooled.pop("slope", None)
        out = {"z_mu": (s.mu - h["centre"]) / h["mean_scale"]}
        for name, values in pooled.items():
            out.update(self._pooled_start(name, values, h))
        if self.field == "shared":
            out.update(z_field_mean=(float(np.median(s.field_mean)) - h["global_centre"]) / h["global_scale"],
                       log_field_sigma=float(np.log(np.median(s.field_sigma))))
        else:
            out["z_field_mean"] = (s.field_mean - h["centre"]) / h["field_mean_scale"]
        return {k: np.asarray(v, float) for k, v in out.items()}

    def program_key(self) -> str:
        """What a compiled program depends on beyond its arguments: the structure and shapes."""
        return (f"{type(self).__name__}(n_groups={self.n_groups}, field={self.field!r}, "
                f"pooling={self.pooling}, radius={self.uses_radius})")


def _robust_spread(x: np.ndarray) -> float:
    """1.4826 times the median absolute deviation (the standard deviation of a Gaussian)."""
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def _peak_start(x: np.ndarray, err: np.ndarray, width: float) -> tuple[float, ...]:
    """``(mu, sigma, frac, field_mean, field_sigma)`` to start a group from: its densest window.

    The window of half-width ``width`` that holds the most stars is the members' start
    (its median, its robust spread less the median error, the share of stars in it); the
    stars outside are the field's (median, robust spread), or the whole group's spread
    when too few are outside to tell.
    """
    order = np.sort(x)
    counts = np.searchsorted(order, order + width, side="right") - np.searchsorted(order, order - width)
    peak = order[int(np.argmax(counts))]
    inside = np.abs(x - peak) <= width
    e2 = float(np.median(err[inside] ** 2))
    spread_in = _robust_spread(x[inside]) if inside.sum() > 2 else width / 2.0
    sigma = math.sqrt(max(spread_in**2 - e2, (0.1 * width) ** 2))
    frac = float(np.clip(inside.mean(), 0.05, 0.95))
    rest = x[~inside] if (~inside).sum() >= 3 else x
    field_sigma = max(_robust_spread(rest), float(np.std(rest)), 2.0 * sigma, width)
    return float(np.median(x[inside])), sigma, frac, float(np.median(rest)), field_sigma


def _pooled_values(start: GroupParams) -> dict[str, np.ndarray]:
    """The pooled quantities of a start, in the units the hierarchy pools them."""
    s = GroupParams(*(None if a is None else np.asarray(a, float) for a in start))
    frac = np.clip(s.frac, 1e-3, 1 - 1e-3)
    values = {"sigma": np.log(s.sigma), "frac": np.log(frac) - np.log1p(-frac),
              "field": np.log(np.maximum(s.field_sigma - s.sigma, 0.1 * s.field_sigma))}
    if s.slope is not None:
        values["slope"] = s.slope
    return values


def _between_group_spread(values: np.ndarray, information: np.ndarray) -> float:
    """DerSimonian & Laird's moment estimate of the spread of group values beyond their errors.

    ``values`` are the groups' estimates, ``information`` their inverse variances (groups
    with none are left out); 0 when the groups agree within their errors.
    """
    keep = information > 0
    if keep.sum() < 2:
        return 0.0
    x, w = np.asarray(values, float)[keep], information[keep]
    mean = np.sum(w * x) / np.sum(w)
    q = np.sum(w * (x - mean) ** 2)
    excess = (q - (x.size - 1)) / (np.sum(w) - np.sum(w**2) / np.sum(w))
    return math.sqrt(max(float(excess), 0.0))


def _information(start: GroupParams, data: Observations, group, log_radius=None, *,
                 shared_field: bool = False) -> dict[str, np.ndarray]:
    """Each group's likelihood information about its pooled values at the start.

    Minus the second derivative of the log-likelihood in each group's value (``log sigma``,
    ``logit f``, the slope, the field's log excess dispersion). The groups share nothing in
    the likelihood, so one difference of gradients along a whole site gives every group's
    at once: eight gradients in all.
    """
    s = GroupParams(*(None if a is None else jnp.asarray(a, jnp.float64) for a in start))
    values = {k: jnp.asarray(v) for k, v in _pooled_values(start).items()}
    if shared_field:
        values.pop("field")
    group = jnp.asarray(group)

    def log_likelihood(x):
        sigma = jnp.exp(x["sigma"])
        field_sigma = sigma + jnp.exp(x["field"]) if "field" in x else s.field_sigma
        frac = jax.nn.sigmoid(x["frac"])
        params = GroupParams(s.mu, sigma, frac, s.field_mean, field_sigma, x.get("slope"))
        return group_log_likelihood(params, data, group, log_radius)

    gradient = jax.jit(jax.grad(log_likelihood))
    information, h = {}, 1e-4
    for name in values:
        step = {k: (h if k == name else 0.0) * jnp.ones_like(a) for k, a in values.items()}
        up = gradient({k: a + step[k] for k, a in values.items()})[name]
        down = gradient({k: a - step[k] for k, a in values.items()})[name]
        information[name] = np.maximum(-np.asarray(up - down) / (2 * h), 0.0)
    return information


def _group_index(groups, min_stars: int) -> tuple[np.ndarray, tuple[str, ...]]:
    labels = np.asarray(groups).astype(str)
    names, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    small = [f"{str(n)!r} ({k} stars)" for n, k in zip(names, counts, strict=True) if k < min_stars]
    if small:
        raise ValueError(f"groups {', '.join(small)} have fewer than min_stars={min_stars} stars; drop them "
                         "first (bayesmix.cluster_runs.select_groups drops and reports them) or lower "
                         "min_stars.")
    return index.astype(np.int32), tuple(str(n) for n in names)


def _check_options(field, alone_tau, min_stars, sigma_max) -> None:
    if field not in FIELD_KINDS:
        raise ValueError(f"field={field!r}; use one of {FIELD_KINDS}.")
    if not (np.isfinite(alone_tau) and alone_tau > 0):
        raise ValueError(f"alone_tau={alone_tau!r} must be a positive number (e.g. 2.0).")
    if int(min_stars) < 2:
        raise ValueError(f"min_stars={min_stars!r} must be at least 2.")
    if not (np.isfinite(sigma_max) and sigma_max > 0):
        raise ValueError(f"sigma_max={sigma_max!r} must be a positive number in the velocities' units "
                         "(e.g. 25 km/s for globular clusters).")


def many_cluster_model(values, errors, groups, *, radius=None, field: str = "per-group", pooling: bool = True,
                       alone_tau: float = 2.0, min_stars: int = 5, sigma_max: float = 25.0,
                       scan: GroupScan | None = None):
    """The hierarchical model of many groups, its priors scaled to the data.

    Parameters
    ----------
    values : array_like, shape (n_stars,) or (n_stars, 1)
        Velocities (one feature).
    errors : array_like, shape (n_stars,) or (n_stars, 1)
        Their standard errors.
    groups : array_like of str or int, shape (n_stars,)
        Each star's group label (e.g. the catalogue's ``Cluster`` column). Groups are
        indexed in sorted label order.
    radius : array_like, shape (n_stars,), optional
        Each star's projected distance from its group's centre (any unit; Baumgardt's
        ``DCEN``, or ``R`` of ``[data.sky]``): the member fraction then falls with radius.
    field : {"per-group", "shared"}
        A field per group, its log excess dispersion partially pooled (default), or one
        field for all groups.
    pooling : bool
        Partial pooling of the member dispersions, fractions, radial slopes (and the
        fields' dispersions); False fits every group alone (fixed ``m`` at the prior
        centre and ``tau = alone_tau``).
    alone_tau : float
        Prior standard deviation (log or logit units) of the group values without pooling.
    min_stars : int
        Smallest group accepted (a group of 2 or 3 stars cannot tell members from field).
    sigma_max : float
        Widest member dispersion the start's scan searches (:func:`scan_groups`).
    scan : GroupScan, optional
        A scan of these same groups already made (with ``radius``, its ``params`` are
        the start; made here when not given).

    Returns
    -------
    model : ManyClusterModel
    data : Observations
    group : ndarray of int32, shape (n_stars,)
        Each star's group index into ``model.group_names``.
    log_radius : ndarray (n_stars,) or None
        ``log(R_i / R_c)`` to pass to the program with ``data`` and ``group``.

    Raises
    ------
    ValueError
        Naming the parameter, the groups that are too small, or the bad value.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> v = np.concatenate([rng.normal(-40, 3, 60), rng.normal(0, 50, 40), rng.normal(90, 5, 50)])
    >>> g = ["A"] * 100 + ["B"] * 50
    >>> model, data, group, log_radius = many_cluster_model(v, np.full(150, 1.0), g)
    >>> model.group_names, model.n_stars
    (('A', 'B'), (100, 50))
    """
    _check_options(field, alone_tau, min_stars, sigma_max)
    data = as_observations(values, errors)
    if data.n_features != 1:
        raise ValueError(f"values has {data.n_features} features; the many-cluster model fits one "
                         "(line-of-sight velocities).")
    labels = np.asarray(groups)
    if labels.shape != (data.n_stars,):
        raise ValueError(f"groups has shape {labels.shape}; need one label per star ({data.n_stars},).")
    group, names = _group_index(labels, int(min_stars))
    log_radius, radius_median = (None, None) if radius is None else log_radius_about_median(radius, group)
    v = np.asarray(data.values)[:, 0]
    err = np.sqrt(np.asarray(data.error_covs)[:, 0, 0])
    if scan is None and radius is not None:
        scan = scan_groups(v, err, group, log_radius=log_radius, sigma_max=sigma_max)
    members = [group == c for c in range(len(names))]
    centre = np.array([np.median(v[rows]) for rows in members])
    floor = max(float(np.median(err)), 1e-6 * (float(np.std(v)) + 1e-300))
    spread = np.array([max(_robust_spread(v[rows]), float(np.std(v[rows])) / 3.0, floor) for rows in members])
    if radius is not None:
        start = scan.params
    else:
        # Without radii the scan's most likely "members" can be a chance clump of a few stars
        # in a small group; the densest velocity window (half the typical group's spread:
        # wide enough for a cluster's peak, narrow against a field) is the safer start there.
        width = max(0.5 * float(np.median(spread)), 2.0 * floor)
        start = GroupParams(*np.array([_peak_start(v[rows], err[rows], width) for rows in members]).T)
    model = ManyClusterModel(
        group_names=names, n_stars=tuple(int(n) for n in np.bincount(group, minlength=len(names))),
        centre=centre, spread=spread, sigma_ref=float(np.median(start.sigma)),
        field_ref=float(np.median(start.field_sigma)), global_centre=float(np.median(v)),
        global_spread=max(float(np.std(v)), floor), start=start, field=field, pooling=bool(pooling),
        alone_tau=float(alone_tau), radius_median=radius_median,
        information=_information(start, data, group, log_radius, shared_field=field == "shared"))
    return model, data, group, log_radius
