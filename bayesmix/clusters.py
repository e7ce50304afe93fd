"""Many clusters in one hierarchical velocity-membership model (a NumPyro program).

Every star belongs to one group (a globular-cluster field, say) named in a catalogue
column. In group ``c`` the stars are a mixture of members and field, each with its own
measurement error ``e_i`` deconvolved::

    p(v_i) = f_c N(v_i | mu_c, sigma_c^2 + e_i^2) + (1 - f_c) N(v_i | mu_F,c, sigma_F,c^2 + e_i^2)

The groups share what physics says they share:

* ``mu_c`` (systemic velocity): no pooling, a broad prior centred on the group's median
  velocity with three times its spread as the scale (systemic velocities of different
  clusters are unrelated);
* ``log sigma_c`` (member dispersion) ~ Normal(``m_sigma``, ``tau_sigma``), partial pooling;
* ``logit f_c`` (member fraction) ~ Normal(``m_frac``, ``tau_frac``), partial pooling;
* the field: per group (default), with a broad mean prior as for ``mu_c`` and its
  dispersion ``sigma_F,c = sigma_c + d_c`` with ``log d_c ~ Normal(m_field, tau_field)``
  (partial pooling of the field's log excess dispersion; writing it as an excess keeps
  the field the broader component in every draw, so members and field cannot swap);
  or one field shared by all groups (``field="shared"``).

The hyper-parameters ``m_*`` and ``tau_*`` are sampled (``pooling=True``); with
``pooling=False`` they are fixed at the prior centre and a large ``alone_tau``, so every
group is fitted on its own under the same independent priors: the comparison that
measures how much the pooling shrinks each group. Every per-group quantity is
non-centred (``z ~ N(0, 1)``, ``log sigma_c = m_sigma + tau_sigma z_sigma_c``), which
removes the funnel between ``tau`` and the group values that centred hierarchies show
under NUTS when the groups hold few stars.

The per-star densities are :func:`bayesmix.likelihood.mvn_log_prob` with each star's
group parameters gathered by its group index; member and field enter
:func:`bayesmix.likelihood.total_log_likelihood` (the sampler's hot path) and
:func:`bayesmix.likelihood.log_joint` (memberships) as two per-star component columns
with per-star log weights: the one mixture join of the package.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from bayesmix import _x64  # noqa: F401
from bayesmix._choices import GROUP_FIELDS
from bayesmix.likelihood import MixtureParams, Observations, as_observations, log_joint, mvn_log_prob
from bayesmix.likelihood import total_log_likelihood as _total_log_likelihood

__all__ = [
    "FIELD_KINDS",
    "GroupParams",
    "ManyClusterModel",
    "group_log_joint",
    "group_log_likelihood",
    "many_cluster_model",
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
    """

    mu: Any
    sigma: Any
    frac: Any
    field_mean: Any
    field_sigma: Any


def _columns(params: GroupParams, data: Observations, group):
    """Per-star log weights (n_stars, 2) and member / field log densities (n_stars, 2)."""
    values, error_var = data.values, data.error_covs  # (N, 1), (N, 1, 1)
    member = mvn_log_prob(values, params.mu[group][:, None],
                          (params.sigma[group] ** 2)[:, None, None] + error_var)
    field = mvn_log_prob(values, params.field_mean[group][:, None],
                         (params.field_sigma[group] ** 2)[:, None, None] + error_var)
    logit = jnp.log(params.frac[group]) - jnp.log1p(-params.frac[group])
    log_w = jnp.stack([jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit)], axis=1)
    return log_w, jnp.stack([member, field], axis=1)


def group_log_joint(params: GroupParams, data: Observations, group):
    """``log w + log p`` of member and field for every star, through :func:`~bayesmix.likelihood.log_joint`.

    Parameters
    ----------
    params : GroupParams
        Arrays of shape (n_groups,).
    data : Observations
        ``values`` (n_stars, 1), ``error_covs`` (n_stars, 1, 1).
    group : int array, shape (n_stars,)
        Each star's group index in ``[0, n_groups)``.

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
    log_w, columns = _columns(params, data, group)
    return log_joint(_no_gaussians(), data, log_w, columns)


def group_log_likelihood(params: GroupParams, data: Observations, group):
    """Total log-likelihood of all groups, with the closed-form mixture gradient.

    :func:`bayesmix.likelihood.total_log_likelihood` over the per-star member and field
    columns of :func:`group_log_joint` (the same terms, reduced in one fused pass).

    Parameters
    ----------
    params : GroupParams
    data : Observations
    group : int array, shape (n_stars,)

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
    log_w, columns = _columns(params, data, group)
    return _total_log_likelihood(_no_gaussians(), data, log_w, columns)


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
        median of the groups' core dispersions, and the typical spread of all stars
        around their group's centre.
    global_centre, global_spread : float
        Median and standard deviation of all velocities (a shared field's mean prior is
        ``Normal(global_centre, 3 global_spread)``).
    start : tuple of 5 ndarray (n_groups,)
        Starting ``mu, sigma, frac, field_mean, field_sigma`` of each group from its
        densest velocity window (:meth:`init_values`).
    """

    group_names: tuple[str, ...]
    n_stars: tuple[int, ...]
    centre: np.ndarray
    spread: np.ndarray
    sigma_ref: float
    field_ref: float
    global_centre: float
    global_spread: float
    start: tuple = ()
    field: str = "per-group"
    pooling: bool = True
    alone_tau: float = 2.0

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def hyperparameters(self) -> dict[str, Any]:
        """Prior constants as arrays, passed to :meth:`model` as an argument (not baked in)."""
        hyper = {"centre": self.centre, "mean_scale": 3.0 * self.spread,
                 "field_mean_scale": 3.0 * np.maximum(self.spread, self.field_ref),
                 "log_sigma_ref": np.log(self.sigma_ref), "log_field_ref": np.log(self.field_ref),
                 "global_centre": self.global_centre, "global_scale": 3.0 * self.global_spread,
                 "alone_tau": self.alone_tau}
        return {k: jnp.asarray(v, dtype=jnp.float64) for k, v in hyper.items()}

    def _pooled(self, name, loc, hyper):
        """(m, tau) of one pooled quantity: sampled sites, or fixed when not pooling."""
        if not self.pooling:
            return loc, hyper["alone_tau"]
        m = numpyro.sample(f"m_{name}", dist.Normal(loc, 2.0))
        tau = numpyro.sample(f"tau_{name}", dist.HalfNormal(1.0))
        return m, tau

    def _group_values(self, name, m, tau):
        z = numpyro.sample(f"z_{name}", dist.Normal(0.0, 1.0).expand([self.n_groups]).to_event(1))
        return m + tau * z

    def _field(self, hyper, sigma):
        if self.field == "shared":
            z_mean = numpyro.sample("z_field_mean", dist.Normal(0.0, 1.0))
            log_sd = numpyro.sample("log_field_sigma", dist.Normal(hyper["log_field_ref"], 2.0))
            ones = jnp.ones(self.n_groups)
            return ones * (hyper["global_centre"] + hyper["global_scale"] * z_mean), ones * jnp.exp(log_sd)
        z_mean = numpyro.sample("z_field_mean", dist.Normal(0.0, 1.0).expand([self.n_groups]).to_event(1))
        m, tau = self._pooled("field", hyper["log_field_ref"], hyper)
        excess = jnp.exp(self._group_values("field", m, tau))
        return hyper["centre"] + hyper["field_mean_scale"] * z_mean, sigma + excess

    def group_params(self, hyper):
        """Sample every site and return the groups' :class:`GroupParams` (inside a NumPyro program)."""
        z_mu = numpyro.sample("z_mu", dist.Normal(0.0, 1.0).expand([self.n_groups]).to_event(1))
        mu = hyper["centre"] + hyper["mean_scale"] * z_mu
        m, tau = self._pooled("sigma", hyper["log_sigma_ref"], hyper)
        sigma = jnp.exp(self._group_values("sigma", m, tau))
        m, tau = self._pooled("frac", 0.0, hyper)
        frac = jax.nn.sigmoid(self._group_values("frac", m, tau))
        field_mean, field_sigma = self._field(hyper, sigma)
        return GroupParams(mu, sigma, frac, field_mean, field_sigma)

    def model(self, data: Observations, group, hyper: dict | None = None):
        """The NumPyro program: priors, then ``factor`` of :func:`group_log_likelihood`.

        Parameters
        ----------
        data : Observations
            ``values`` (n_stars, 1) and ``error_covs`` (n_stars, 1, 1).
        group : int array, shape (n_stars,)
        hyper : dict, optional
            :meth:`hyperparameters` (the default).
        """
        h = self.hyperparameters() if hyper is None else hyper
        params = self.group_params(h)
        for name, value in params._asdict().items():
            numpyro.deterministic(name, value)
        numpyro.factor("log_likelihood", group_log_likelihood(params, data, group))

    def params(self, sample: dict) -> GroupParams:
        """:class:`GroupParams` of one draw (or of stacked draws: leading axes kept)."""
        return GroupParams(*(jnp.asarray(sample[name]) for name in GroupParams._fields))

    def init_values(self) -> dict[str, np.ndarray]:
        """A starting point for every sampled site, from each group's velocity peak (:attr:`start`).

        The members start on the group's densest velocity window (the cluster's cold peak,
        which in a field-dominated group is far from the median), with that window's
        dispersion and share of the stars; the field on the other stars; the
        hyper-parameters at the means and spreads of these values.
        """
        mu, sigma, frac, field_mean, field_sigma = (np.asarray(a, float) for a in self.start)
        h = {k: np.asarray(v) for k, v in self.hyperparameters().items()}
        logit = np.log(frac) - np.log1p(-frac)
        excess = np.maximum(field_sigma - sigma, 0.1 * field_sigma)
        pooled = {"sigma": np.log(sigma), "frac": logit, "field": np.log(excess)}
        out = {"z_mu": (mu - h["centre"]) / h["mean_scale"]}
        for name, values in pooled.items():
            if name == "field" and self.field == "shared":
                continue
            if self.pooling:
                m, tau = float(np.mean(values)), max(float(np.std(values)), 0.1)
                out.update({f"m_{name}": m, f"tau_{name}": tau})
            else:
                m = {"sigma": h["log_sigma_ref"], "frac": 0.0, "field": h["log_field_ref"]}[name]
                tau = self.alone_tau
            out[f"z_{name}"] = (values - m) / tau
        if self.field == "shared":
            out.update(z_field_mean=(float(np.median(field_mean)) - h["global_centre"]) / h["global_scale"],
                       log_field_sigma=float(np.log(np.median(field_sigma))))
        else:
            out["z_field_mean"] = (field_mean - h["centre"]) / h["field_mean_scale"]
        return {k: np.asarray(v, float) for k, v in out.items()}

    def program_key(self) -> str:
        """What a compiled program depends on beyond its arguments: the structure and shapes."""
        return (f"{type(self).__name__}(n_groups={self.n_groups}, field={self.field!r}, "
                f"pooling={self.pooling})")


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


def _group_index(groups, min_stars: int) -> tuple[np.ndarray, tuple[str, ...]]:
    labels = np.asarray(groups).astype(str)
    names, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    small = [f"{str(n)!r} ({k} stars)" for n, k in zip(names, counts, strict=True) if k < min_stars]
    if small:
        raise ValueError(f"groups {', '.join(small)} have fewer than min_stars={min_stars} stars; drop them "
                         "first (bayesmix.cluster_runs.select_groups drops and reports them) or lower "
                         "min_stars.")
    return index.astype(np.int32), tuple(str(n) for n in names)


def _check_options(field, alone_tau, min_stars) -> None:
    if field not in FIELD_KINDS:
        raise ValueError(f"field={field!r}; use one of {FIELD_KINDS}.")
    if not (np.isfinite(alone_tau) and alone_tau > 0):
        raise ValueError(f"alone_tau={alone_tau!r} must be a positive number (e.g. 2.0).")
    if int(min_stars) < 2:
        raise ValueError(f"min_stars={min_stars!r} must be at least 2.")


def many_cluster_model(values, errors, groups, *, field: str = "per-group", pooling: bool = True,
                       alone_tau: float = 2.0, min_stars: int = 5):
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
    field : {"per-group", "shared"}
        A field per group, its log excess dispersion partially pooled (default), or one
        field for all groups.
    pooling : bool
        Partial pooling of the member dispersions, fractions (and the fields'
        dispersions); False fits every group alone (fixed ``m`` at the prior centre and
        ``tau = alone_tau``).
    alone_tau : float
        Prior standard deviation (log or logit units) of the group values without pooling.
    min_stars : int
        Smallest group accepted (a group of 2 or 3 stars cannot tell members from field).

    Returns
    -------
    model : ManyClusterModel
    data : Observations
    group : ndarray of int32, shape (n_stars,)
        Each star's group index into ``model.group_names``.

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
    >>> model, data, group = many_cluster_model(v, np.full(150, 1.0), g)
    >>> model.group_names, model.n_stars
    (('A', 'B'), (100, 50))
    """
    _check_options(field, alone_tau, min_stars)
    data = as_observations(values, errors)
    if data.n_features != 1:
        raise ValueError(f"values has {data.n_features} features; the many-cluster model fits one "
                         "(line-of-sight velocities).")
    labels = np.asarray(groups)
    if labels.shape != (data.n_stars,):
        raise ValueError(f"groups has shape {labels.shape}; need one label per star ({data.n_stars},).")
    group, names = _group_index(labels, int(min_stars))
    v = np.asarray(data.values)[:, 0]
    err = np.sqrt(np.asarray(data.error_covs)[:, 0, 0])
    members = [group == c for c in range(len(names))]
    centre = np.array([np.median(v[rows]) for rows in members])
    floor = max(float(np.median(err)), 1e-6 * (float(np.std(v)) + 1e-300))
    spread = np.array([max(_robust_spread(v[rows]), float(np.std(v[rows])) / 3.0, floor) for rows in members])
    # Half the typical group's spread: wide enough for a cluster's peak, narrow against a field.
    width = max(0.5 * float(np.median(spread)), 2.0 * floor)
    start = np.array([_peak_start(v[rows], err[rows], width) for rows in members]).T
    model = ManyClusterModel(
        group_names=names, n_stars=tuple(int(n) for n in np.bincount(group, minlength=len(names))),
        centre=centre, spread=spread, sigma_ref=float(np.median(start[1])),
        field_ref=float(np.median(start[4])), global_centre=float(np.median(v)),
        global_spread=max(float(np.std(v)), floor), start=tuple(start), field=field, pooling=bool(pooling),
        alone_tau=float(alone_tau))
    return model, data, group
