"""Fitting many clusters at once: the sampler run, memberships and the per-cluster table.

:func:`fit_groups` samples the hierarchical program of :mod:`bayesmix.clusters` with
bayesmix's own sampler core (:mod:`bayesmix.hmc`): Newton steps to the posterior mode
and its Laplace approximation from a robust per-group start, chains started apart at
over-dispersed draws from that approximation with its inverse Hessian as the dense
mass matrix, then warmup and draws as one compiled loop. Diagnostics (R-hat, ESS,
divergences) come from :func:`bayesmix.diagnostics.summary` on the ArviZ posterior.

:func:`cluster_table` makes the per-cluster table (astropy): stars, expected members,
posterior median and 68% interval of ``mu``, ``sigma`` and ``f``, the shrinkage that the
pooling brought against the same program with pooling off (each group alone), and the
catalogue mean velocity of a reference table (Baumgardt's ``orbits_table.txt``) with the
difference in combined standard deviations. :func:`select_groups` keeps the groups a run
asks for and drops groups that are too small, every dropped row in the drop report.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table
from jax import lax
from jax.flatten_util import ravel_pytree

from bayesmix import _arviz, hmc
from bayesmix._files import atomic_write
from bayesmix._random import as_key
from bayesmix.catalogue import make_provenance, write_table
from bayesmix.clusters import (
    GroupParams,
    GroupScan,
    ManyClusterModel,
    group_log_joint,
    log_radius_about_median,
    many_cluster_model,
    scan_groups,
)
from bayesmix.diagnostics import check_convergence

__all__ = [
    "GroupFit",
    "GroupRunResult",
    "cluster_table",
    "fit_groups",
    "keep_detected",
    "many_clusters_from_catalogue",
    "read_reference_velocities",
    "run_groups",
    "scan_catalogue",
    "select_groups",
]

logger = logging.getLogger(__name__)

# Sites summarised and checked for convergence (those the program has).
_REPORTED = ("mu", "sigma", "frac", "field_mean", "field_sigma", "slope", "m_sigma", "tau_sigma", "m_frac",
             "tau_frac", "m_slope", "tau_slope", "m_field", "tau_field", "log_field_sigma")
_GROUP_SITES = GroupParams._fields
# Rounds of Newton steps (six each, bayesmix.hmc.laplace) towards the mode before sampling.
_MAX_LAPLACE_ROUNDS = 4


@dataclasses.dataclass
class GroupFit:
    """A finished run of the many-group program.

    Attributes
    ----------
    idata : arviz.InferenceData (or xarray.DataTree under ArviZ 1.x)
        ``posterior`` with ``mu``, ``sigma``, ``frac``, ``field_mean``, ``field_sigma``
        (chain, draw, cluster) and the hyper-parameters; ``sample_stats``.
    model : ManyClusterModel
    data : Observations
    group : ndarray of int (n_stars,)
    convergence : bayesmix.diagnostics.ConvergenceReport
        R-hat, ESS, divergences and mode agreement of the reported sites; its ``table``
        is :func:`bayesmix.diagnostics.summary` of them (``p50``, ``sd``, ``r_hat``, ...).
    membership : ndarray (n_stars, 3)
        Each star's member probability: posterior mean, 16th and 84th percentiles.
    settings : dict
        Sampler settings, the seed and the start information.
    """

    idata: Any
    model: ManyClusterModel
    data: Any
    group: np.ndarray
    convergence: Any
    membership: np.ndarray
    settings: dict

    @property
    def summary(self):
        """The posterior summary (pandas.DataFrame) of the reported sites, with R-hat and ESS."""
        return self.convergence.table

    @property
    def n_divergent(self) -> int:
        return int(np.sum(np.asarray(_arviz.group_dataset(self.idata, "sample_stats")["diverging"])))

    @property
    def max_r_hat(self) -> float:
        return float(np.nanmax(self.summary["r_hat"]))

    @property
    def min_ess(self) -> float:
        return float(np.nanmin(self.summary[["ess_bulk", "ess_tail"]].to_numpy()))

    def draws(self, name: str) -> np.ndarray:
        """Posterior draws of one site, (chain, draw, ...)."""
        return np.asarray(_arviz.group_dataset(self.idata, "posterior")[name].values)


# --------------------------------------------------------------------------- selection


def _check_selected(labels: np.ndarray, select, column: str) -> None:
    present = set(labels.tolist())
    unknown = [name for name in select if name not in present]
    if unknown:
        hints = {n: difflib.get_close_matches(n, sorted(present), n=1) for n in unknown}
        said = ", ".join(f"{n!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for n, h in hints.items())
        raise ValueError(f"[groups] select: {said} not found in column {column!r} (after the [data] "
                         "cuts); check the spelling.")


def select_groups(catalogue, column: str, select=None, min_stars: int = 5):
    """The catalogue's stars of the selected groups with at least ``min_stars`` stars each.

    Every row removed is recorded in the returned catalogue's drop report (reasons
    ``"[groups] select: ..."`` and ``"[groups] min_stars: ..."``), and the small groups are
    listed by name in a table and in the log.

    Parameters
    ----------
    catalogue : Catalogue
        Its ``table`` holds ``column``.
    column : str
        The group column (e.g. ``"Cluster"``).
    select : sequence of str, optional
        Group names to keep (all when None or empty).
    min_stars : int
        Groups with fewer stars are dropped (and reported).

    Returns
    -------
    catalogue : Catalogue
    skipped : astropy.table.Table
        ``group``, ``n_stars``, ``reason`` of each group left out for its size.

    Raises
    ------
    ValueError
        ``column`` is not in the catalogue, or ``select`` names a group it does not hold.

    Examples
    --------
    >>> from bayesmix.catalogue import Catalogue  # doctest: +SKIP
    >>> cat, skipped = select_groups(cat, "Cluster", ["NGC 288", "NGC 104"])  # doctest: +SKIP
    """
    if column not in catalogue.table.colnames:
        hint = difflib.get_close_matches(column, catalogue.table.colnames, n=1)
        raise ValueError(f"[groups] column: {column!r} is not a column of the catalogue"
                         + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; it has {catalogue.table.colnames}.")
    labels = np.char.strip(np.asarray(catalogue.table[column]).astype(str))
    reasons = {}
    keep = np.ones(labels.size, bool)
    if select:
        _check_selected(labels, select, column)
        keep = np.isin(labels, list(select))
        reasons[f"[groups] select: {column} not selected"] = ~keep
    names, counts = np.unique(labels[keep], return_counts=True)
    small = names[counts < min_stars]
    too_small = keep & np.isin(labels, small)
    reasons[f"[groups] min_stars: {column} with fewer than {min_stars} stars"] = too_small
    skipped = Table({"group": [str(n) for n in small],
                     "n_stars": [int(c) for c in counts[counts < min_stars]],
                     "reason": [f"fewer than min_stars = {min_stars} stars"] * len(small)},
                    dtype=[str, int, str])
    if len(small):
        logger.warning("skipped %d group(s) with fewer than %d stars: %s", len(small), min_stars,
                       ", ".join(f"{n} ({c})" for n, c in zip(small, counts[counts < min_stars],
                                                                strict=True)))
    keep &= ~too_small
    if not keep.any():
        raise ValueError(f"[groups]: no group of column {column!r} is left with at least {min_stars} stars.")
    return catalogue.subset(keep, reasons), skipped


# --------------------------------------------------------------------------- sampling


def _hessian_colouring(template: dict, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Colour and group of every unconstrained coordinate, in ``ravel_pytree(template)`` order.

    A per-group site (shape ``(n_groups,)``) gives each group's coordinate the site's
    colour and the group's index; a hyper-parameter (a scalar) has a colour of its own
    and group -1.
    """
    colours, groups, next_colour = {}, {}, 0
    per_group = [k for k in sorted(template) if np.shape(template[k]) == (n_groups,)]
    for k in per_group:
        colours[k], groups[k] = np.full(n_groups, float(next_colour)), np.arange(n_groups, dtype=float)
        next_colour += 1
    for k in sorted(template):
        if k not in colours:
            size = int(np.size(template[k]))
            shape = np.shape(template[k])
            colours[k] = np.arange(next_colour, next_colour + size, dtype=float).reshape(shape)
            groups[k] = np.full(shape, -1.0)
            next_colour += size
    return (np.asarray(ravel_pytree(colours)[0]).astype(int), np.asarray(ravel_pytree(groups)[0]).astype(int))


def _coloured_hessian(colour: np.ndarray, group: np.ndarray):
    """The Hessian by central differences of gradients along one direction per colour.

    Groups share nothing but the hyper-parameters, so the Hessian entry of two coordinates
    of different groups is zero: moving one site of every group at once (one colour)
    gives, in each group's rows, that group's column. The hyper-parameters' columns are
    differenced one by one and also give their rows. ``2 n_colours + 1`` gradients (about
    35) instead of ``2 n_params + 1`` (1000 for 80 clusters): the Laplace step of a
    hundred clusters in seconds, not many minutes.
    """
    colour_j, group_j = jnp.asarray(colour), jnp.asarray(group)
    n_colours = int(colour.max()) + 1
    hyper = group_j < 0
    # Column j is read from colour(j)'s differences where row i is in j's group, or j is a hyper.
    valid = hyper[None, :] | ((group_j[:, None] == group_j[None, :]) & ~hyper[:, None])

    def gradient_and_hessian(value_and_grad, z):
        h = 1e-5 * (1.0 + jnp.abs(z))
        steps = jax.nn.one_hot(colour_j, n_colours, dtype=z.dtype).T * h[None, :]  # (n_colours, n)
        _, grads = jax.vmap(value_and_grad)(jnp.concatenate([z[None], z + steps, z - steps]))
        diff = 0.5 * (grads[1:n_colours + 1] - grads[n_colours + 1:])  # (n_colours, n)
        column = diff[colour_j, :].T / h[None, :]  # column[i, j]: d grad_i / d z_j where valid
        hess = jnp.where(valid, column, jnp.where(valid.T, column.T, 0.0))
        return grads[0], 0.5 * (hess + hess.T)

    return gradient_and_hessian


class _Programs:
    """The compiled programs of one model structure: Laplace, start, run, constrain."""

    def __init__(self, model: ManyClusterModel, template: dict, *, num_samples: int, target_accept: float,
                 max_tree_depth: int):
        from numpyro.infer.util import constrain_fn, potential_energy

        flat, unravel = ravel_pytree(template)
        self.n_params = int(flat.shape[0])
        self.unravel = unravel

        def potential(z, args):
            return potential_energy(model.model, args, {}, unravel(z))

        def constrain(z, args):
            out = constrain_fn(model.model, args, {}, unravel(z), return_deterministic=True)
            return {k: v for k, v in out.items() if k in _REPORTED}

        def run_all(states, adapt, args, schedule):
            def one(chain):
                return hmc.run(potential, chain[0], chain[1], args, schedule, num_samples, num_samples,
                               target_accept=target_accept, max_tree_depth=max_tree_depth)
            return lax.map(one, (states, adapt))

        hessian = _coloured_hessian(*_hessian_colouring(template, model.n_groups))
        self.laplace = jax.jit(lambda z, args: hmc.laplace(potential, z, args, hessian_fn=hessian))
        self.start = jax.jit(lambda key, modes, inverse, args, dispersion: hmc.start(
            key, potential, modes, inverse, args, dispersion=dispersion))
        self.run = jax.jit(run_all)
        self.constrain = jax.jit(jax.vmap(constrain, in_axes=(0, None)))


def _newton_rounds(programs: _Programs, z0, args):
    """The Laplace approximation at the mode reached from ``z0``."""
    lap = jax.device_get(programs.laplace(jnp.asarray(z0), args))
    # Six Newton steps from the peak start may stop short of the mode (a Hessian that is
    # not positive definite there makes a poor mass matrix): continue while that improves.
    for _ in range(_MAX_LAPLACE_ROUNDS - 1):
        if bool(lap.hessian_ok):
            break
        again = jax.device_get(programs.laplace(jnp.asarray(lap.mode), args))
        if not float(again.potential_energy) < float(lap.potential_energy) - 1e-6:
            break
        lap = again
    if not np.isfinite(float(lap.potential_energy)):
        raise ValueError("the posterior density is not finite at the start: check the groups' data.")
    return lap


def _to_centred(unravel, hyper: dict):
    """The map from the non-centred program's unconstrained point to the partially centred one's.

    Both programs have the same sites; each pooled quantity's ``u = z`` becomes ``w m +
    tau^w z`` (the same group values ``m + tau z``); every other site is unchanged.
    """
    def to_centred(z_flat):
        point = dict(unravel(z_flat))
        for name in ("sigma", "frac", "slope", "field"):
            if f"u_{name}" in point and f"m_{name}" in point:
                w = hyper[f"centring_{name}"]
                m, log_tau = point[f"m_{name}"], point[f"tau_{name}"]  # tau's unconstrained value is its log
                point[f"u_{name}"] = w * m + jnp.exp(w * log_tau) * point[f"u_{name}"]
        return ravel_pytree(point)[0]

    return to_centred


def _laplace_start(model: ManyClusterModel, programs: _Programs, template: dict, args):
    """The Laplace approximation the chains start from, in the sampled (partially centred) program.

    A centred hierarchy's joint density grows without bound as a ``tau`` goes to zero with
    its centred groups' values at ``m``, and Newton steps run into that point (seen: the
    radial slopes of 83 globular clusters, ``tau_slope`` 1.1 -> 0 in three rounds). The
    non-centred program has no such point, so its mode and Hessian are found there and
    carried over by the map's Jacobian: the same approximation of the same posterior.
    """
    if model.information is None or not model.pooling:
        return _newton_rounds(programs, ravel_pytree(template)[0], args)
    plain = dataclasses.replace(model, information=None)
    plain_args = (*args[:3], plain.hyperparameters())
    plain_z0 = ravel_pytree(_unconstrained(plain, plain.init_values(), plain_args))[0]  # the same start
    # The centring weights are an argument of the compiled program (zero: non-centred), so
    # the sampled program's Laplace step serves the non-centred one without a second compile.
    lap = _newton_rounds(programs, plain_z0, plain_args)
    to_centred = _to_centred(programs.unravel, args[3])
    jacobian = np.asarray(jax.jacfwd(to_centred)(jnp.asarray(lap.mode)))
    lap = lap._replace(mode=np.asarray(to_centred(jnp.asarray(lap.mode))),
                       inverse_hessian=jacobian @ np.asarray(lap.inverse_hessian) @ jacobian.T)
    return lap


def _unconstrained(model: ManyClusterModel, values: dict, args) -> dict:
    from numpyro.infer.util import unconstrain_fn

    values = {k: jnp.asarray(v) for k, v in values.items()}
    return jax.device_get(unconstrain_fn(model.model, args, {}, values))


def _constrained_draws(programs: _Programs, z: np.ndarray, args, chunk: int = 256) -> dict:
    n_chains, n_draws = z.shape[:2]
    flat = z.reshape(n_chains * n_draws, -1)
    parts = []
    for begin in range(0, flat.shape[0], chunk):
        rows = np.minimum(np.arange(begin, begin + chunk), flat.shape[0] - 1)  # one compiled shape
        out = jax.device_get(programs.constrain(jnp.asarray(flat[rows]), args))
        parts.append({k: np.asarray(v)[: min(chunk, flat.shape[0] - begin)] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]).reshape(n_chains, n_draws, *parts[0][k].shape[1:])
            for k in parts[0]}


def _memberships(model, data, group, log_radius, samples: dict, max_draws: int,
                 chunk: int = 64) -> np.ndarray:
    """(n_stars, 3): mean, 16th and 84th percentile of each star's member probability."""
    flat = {k: np.asarray(samples[k]).reshape(-1, model.n_groups) for k in _GROUP_SITES if k in samples}
    n = flat["mu"].shape[0]
    take = np.unique(np.linspace(0, n - 1, min(n, int(max_draws))).round().astype(int))
    def member_probability(p):
        return jax.nn.softmax(group_log_joint(p, data, group, log_radius), axis=1)[:, 0]

    fn = jax.jit(jax.vmap(member_probability))
    probs = []
    for begin in range(0, take.size, chunk):
        rows = take[np.minimum(np.arange(begin, begin + chunk), take.size - 1)]
        params = GroupParams(*(jnp.asarray(flat[k][rows]) if k in flat else None for k in _GROUP_SITES))
        probs.append(np.asarray(fn(params))[: min(chunk, take.size - begin)])
    p = np.concatenate(probs)
    return np.stack([p.mean(axis=0), *np.percentile(p, [16.0, 84.0], axis=0)], axis=1)


def _idata(model: ManyClusterModel, samples: dict, stats: dict, attrs: dict):
    names = list(model.group_names)
    dims = {name: ["cluster"] for name in _GROUP_SITES if name in samples and samples[name].ndim == 3}
    return _arviz.from_groups({"posterior": samples, "sample_stats": stats}, coords={"cluster": names},
                              dims=dims, attrs=attrs, group_attrs={"posterior": attrs})


def _check_settings(**settings) -> None:
    """Refuse sampler settings that cannot run, naming the setting."""
    for name, value in settings.items():
        if name in ("target_accept", "start_dispersion"):
            high = 1.0 if name == "target_accept" else math.inf
            if not 0.0 < value < high:
                raise ValueError(f"{name}={value!r} must lie in (0, {high:g}).")
        elif isinstance(value, bool) or int(value) != value or value < (name != "num_warmup"):
            raise ValueError(f"{name}={value!r} must be an integer >= {int(name != 'num_warmup')}.")


def fit_groups(key, model: ManyClusterModel, data, group, log_radius=None, *, num_chains: int = 4,
               num_warmup: int = 300,
               num_samples: int = 500, target_accept: float = 0.8, max_tree_depth: int = 10,
               start_dispersion: float = 2.0, membership_draws: int = 400) -> GroupFit:
    """Sample the many-group program with bayesmix's sampler core; memberships and diagnostics.

    Parameters
    ----------
    key : int or jax PRNG key
    model : ManyClusterModel
        From :func:`bayesmix.clusters.many_cluster_model`, with ``data`` and ``group``.
    data : Observations
    group : int array (n_stars,)
    log_radius : array (n_stars,), optional
        ``log(R_i / R_c)`` from :func:`~bayesmix.clusters.many_cluster_model` (needed when
        ``model.uses_radius``).
    num_chains, num_warmup, num_samples : int
    target_accept : float
        NUTS target acceptance probability, in (0, 1).
    max_tree_depth : int
    start_dispersion : float
        Chains start at draws from the Laplace approximation with its standard
        deviations times this (2: over-dispersed, so R-hat can see unmixed chains).
    membership_draws : int
        Evenly thinned draws for the memberships and their percentiles.

    Returns
    -------
    GroupFit

    Examples
    --------
    >>> model, data, group, log_radius = many_cluster_model(v, err, names, radius=r)  # doctest: +SKIP
    >>> fit = fit_groups(0, model, data, group, log_radius, num_chains=2, num_samples=300)  # doctest: +SKIP
    >>> fit.summary.loc["sigma[NGC 288]", ["p50", "r_hat"]]  # doctest: +SKIP
    """
    _check_settings(num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples,
                    max_tree_depth=max_tree_depth, membership_draws=membership_draws,
                    target_accept=target_accept, start_dispersion=start_dispersion)
    seed = int(key) if isinstance(key, (int, np.integer)) else None
    key = as_key(key)
    group = jnp.asarray(group, jnp.int32)
    if model.uses_radius and log_radius is None:
        raise ValueError("the model's member fraction follows radius: pass log_radius (from "
                         "many_cluster_model) too.")
    log_radius = None if not model.uses_radius else jnp.asarray(log_radius, jnp.float64)
    args = (data, group, log_radius, model.hyperparameters())
    template = _unconstrained(model, model.init_values(), args)
    programs = _Programs(model, template, num_samples=int(num_samples), target_accept=float(target_accept),
                         max_tree_depth=int(max_tree_depth))
    logger.info("%d groups, %d parameters: Laplace approximation at the peak start", model.n_groups,
                programs.n_params)
    lap = _laplace_start(model, programs, template, args)
    c = int(num_chains)
    modes = jnp.broadcast_to(jnp.asarray(lap.mode), (c, programs.n_params))
    inverse = jnp.broadcast_to(jnp.asarray(lap.inverse_hessian), (c, programs.n_params, programs.n_params))
    states, adapt = programs.start(key, modes, inverse, args, jnp.asarray(float(start_dispersion)))
    schedule = tuple(jnp.asarray(v, jnp.int32) for v in hmc.warmup_schedule(int(num_warmup)))
    logger.info("NUTS: %d chains x (%d + %d)", c, num_warmup, num_samples)
    states, adapt, z, info = jax.device_get(programs.run(states, adapt, args, schedule))
    logger.info("draws done; constraining and memberships")
    samples = _constrained_draws(programs, np.asarray(z), args)
    stats = {"diverging": np.asarray(info.diverging), "n_steps": np.asarray(info.num_steps),
             "acceptance_rate": np.asarray(info.accept_prob), "lp": -np.asarray(info.potential_energy),
             "tree_depth": np.asarray(info.tree_depth)}
    settings = {"seed": seed, "num_chains": c, "num_warmup": int(num_warmup), "num_samples": int(num_samples),
                "target_accept": float(target_accept), "max_tree_depth": int(max_tree_depth),
                "start_dispersion": float(start_dispersion), "n_params": programs.n_params,
                "laplace_hessian_ok": int(bool(lap.hessian_ok)), "pooling": int(model.pooling),
                "field": model.field, "sampler": "bayesmix NUTS (bayesmix.hmc, BlackJAX kernel)"}
    idata = _idata(model, samples, stats, {f"setting_{k}": v for k, v in settings.items() if v is not None})
    names = [n for n in _REPORTED if n in samples]
    report = check_convergence(idata, var_names=names, warn=False)
    fit = GroupFit(idata, model, data, np.asarray(group), report,
                   _memberships(model, data, group, log_radius, samples, membership_draws), settings)
    if fit.n_divergent:
        logger.warning("%d divergent transitions; consider target_accept closer to 1", fit.n_divergent)
    return fit


# --------------------------------------------------------------------------- the table


# A value of the table: every one has a decimal point, which tells it from a name's number ("NGC 104").
_DECIMAL = re.compile(r"^[-+]?\d*\.\d*([eE][-+]?\d+)?$")


def read_reference_velocities(path) -> dict[str, tuple[float, float]]:
    """Catalogue mean velocities ``{cluster: (<RV>, error)}`` of Baumgardt's ``orbits_table.txt``.

    The file is text with two header lines; a cluster's name may hold spaces and numbers
    (``"NGC 104"``) and is not always within a fixed width (``"Whiting 1"`` runs into the
    RA column's space), so the name is the tokens before the first value with a decimal
    point (every value of the table has one). ``<RV>`` and its error are the values at
    the header's ``<RV>`` position (RA, DEC, l, b, R_sun, error, R_GC, <RV>, error, ...).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict of str to (float, float)

    Raises
    ------
    ValueError
        The header has no ``<RV>`` column.

    Examples
    --------
    >>> ref = read_reference_velocities("orbits_table.txt")  # doctest: +SKIP
    >>> ref["NGC 288"]  # doctest: +SKIP
    (-44.83, 0.13)
    """
    lines = Path(path).read_text().splitlines()
    header = lines[0].split()
    if "<RV>" not in header or header[0] != "Cluster":
        raise ValueError(f"{path}: the first line must name the columns, starting with 'Cluster' and "
                         f"holding '<RV>'; got {lines[0][:80]!r}.")
    k_rv = header.index("<RV>") - 1  # among the numeric columns (after the name)
    out = {}
    for line in lines[2:]:
        tokens = line.split()
        first = next((i for i, t in enumerate(tokens) if i > 0 and _DECIMAL.match(t) and t != "."), None)
        if first is None or len(tokens) <= first + k_rv + 1:
            continue
        out[" ".join(tokens[:first])] = (float(tokens[first + k_rv]), float(tokens[first + k_rv + 1]))
    return out


def _interval(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Median, 16th and 84th percentiles and standard deviation over (chain, draw), per group."""
    flat = draws.reshape(-1, draws.shape[-1])
    p16, p50, p84 = np.percentile(flat, [16.0, 50.0, 84.0], axis=0)
    return p50, p16, p84, flat.std(axis=0, ddof=1)


def _reference_columns(names, mu_median, mu_sd, reference) -> dict[str, np.ndarray]:
    ref = np.array([reference.get(n, (math.nan, math.nan)) for n in names], float).reshape(len(names), 2)
    combined = np.sqrt(mu_sd**2 + ref[:, 1] ** 2)
    return {"rv_ref": ref[:, 0], "rv_ref_err": ref[:, 1], "mu_minus_ref": mu_median - ref[:, 0],
            "mu_pull": (mu_median - ref[:, 0]) / combined}


def cluster_table(fit: GroupFit, alone: GroupFit | None = None,
                  reference: dict[str, tuple[float, float]] | None = None,
                  scan: GroupScan | None = None) -> Table:
    """One row per group: members, ``mu``, ``sigma``, ``f``, the pooling's shrinkage, the reference.

    Parameters
    ----------
    fit : GroupFit
        The hierarchical (pooled) fit.
    alone : GroupFit, optional
        The same groups with pooling off (``many_cluster_model(..., pooling=False)``): adds
        ``sigma_alone_*``, ``shrinkage_sigma = 1 - sd_pooled / sd_alone`` (the fraction of
        the dispersion's posterior width that pooling removed) and ``sigma_shift`` (pooled
        median minus alone median).
    reference : dict of str to (float, float), optional
        Catalogue mean velocities and errors by group name
        (:func:`read_reference_velocities`): adds ``rv_ref``, ``rv_ref_err``,
        ``mu_minus_ref`` and ``mu_pull`` (the difference over the combined standard
        deviation; NaN where the group has no reference).
    scan : GroupScan, optional
        The scan of these groups (:func:`scan_catalogue`): adds ``scan_delta_log_lik``
        (how clearly the members stand out) and ``scan_n_members``.

    Returns
    -------
    astropy.table.Table
        ``cluster``, ``n_stars``, ``n_members`` (sum of member probabilities),
        ``mu_p50``, ``mu_p16``, ``mu_p84``, ``mu_sd``, the same for ``sigma`` and ``frac``,
        ``field_mean_p50``, ``field_sigma_p50``, ``slope_p50`` (with radii: how the
        member fraction's logit falls per unit ``log R``), ``r_hat_max`` (over the group's
        sites), then the optional columns.

    Examples
    --------
    >>> table = cluster_table(fit, alone, read_reference_velocities(path))  # doctest: +SKIP
    >>> table["cluster", "mu_p50", "rv_ref", "mu_pull", "shrinkage_sigma"]  # doctest: +SKIP
    """
    model = fit.model
    names = list(model.group_names)
    cols: dict[str, Any] = {"cluster": names, "n_stars": np.asarray(model.n_stars, int),
                            "n_members": np.bincount(fit.group, weights=fit.membership[:, 0],
                                                     minlength=model.n_groups)}
    for site in ("mu", "sigma", "frac"):
        p50, p16, p84, sd = _interval(fit.draws(site))
        cols.update({f"{site}_p50": p50, f"{site}_p16": p16, f"{site}_p84": p84, f"{site}_sd": sd})
    for site in ("field_mean", "field_sigma", "slope"):
        if site in _arviz.group_dataset(fit.idata, "posterior"):
            cols[f"{site}_p50"] = _interval(fit.draws(site))[0]
    r_hat = fit.summary["r_hat"]
    cols["r_hat_max"] = np.array([np.nanmax([r_hat.get(f"{s}[{n}]", np.nan) for s in ("mu", "sigma", "frac")])
                                  for n in names])
    if alone is not None:
        if list(alone.model.group_names) != names:
            raise ValueError("alone= must be a fit of the same groups (model.group_names differ).")
        p50, p16, p84, sd = _interval(alone.draws("sigma"))
        cols.update({"sigma_alone_p50": p50, "sigma_alone_p16": p16, "sigma_alone_p84": p84,
                     "sigma_alone_sd": sd, "shrinkage_sigma": 1.0 - cols["sigma_sd"] / sd,
                     "sigma_shift": cols["sigma_p50"] - p50})
    if reference is not None:
        cols.update(_reference_columns(names, cols["mu_p50"], cols["mu_sd"], reference))
    if scan is not None:
        cols.update(scan_delta_log_lik=scan.delta_log_lik, scan_n_members=scan.n_members)
    return Table(cols)


def _labels(catalogue, column: str) -> np.ndarray:
    return np.char.strip(np.asarray(catalogue.table[column]).astype(str))


def _radius(catalogue, radius: str | None):
    """The radius covariate of the catalogue (None when not asked for), named in the error."""
    if radius is None:
        return None
    if radius in catalogue.covariates:
        return np.asarray(catalogue.covariates[radius], float)
    raise ValueError(f"[groups] radius: {radius!r} is not a covariate of the catalogue (it has "
                     f"{list(catalogue.covariates)}); list it in [data] covariates (read_catalogue(..., "
                     "covariates=[...])) or use a [data.sky] column such as 'R'.")


def scan_catalogue(catalogue, column: str, *, radius: str | None = None, sigma_max: float = 25.0,
                   min_delta_log_lik: float = 15.0,
                   min_members: float = 3.0) -> tuple[tuple[str, ...], GroupScan]:
    """:func:`bayesmix.clusters.scan_groups` of a catalogue's stars grouped by ``column``.

    Parameters
    ----------
    catalogue : Catalogue
    column : str
        The group column.
    radius : str, optional
        A covariate of the catalogue holding each star's projected radius.
    sigma_max, min_delta_log_lik, min_members : float
        As for :func:`~bayesmix.clusters.scan_groups`.

    Returns
    -------
    names : tuple of str
        The groups, sorted (the scan's group order).
    scan : GroupScan

    Examples
    --------
    >>> names, scan = scan_catalogue(cat, "Cluster", radius="DCEN")  # doctest: +SKIP
    >>> [n for n, ok in zip(names, scan.detected) if not ok]  # doctest: +SKIP
    """
    names, group = np.unique(_labels(catalogue, column), return_inverse=True)
    r = _radius(catalogue, radius)
    log_radius = None if r is None else log_radius_about_median(r, group)[0]
    scan = scan_groups(catalogue.values, catalogue.errors, group, log_radius=log_radius, sigma_max=sigma_max,
                       min_delta_log_lik=min_delta_log_lik, min_members=min_members)
    return tuple(str(n) for n in names), scan


def keep_detected(catalogue, column: str, names, scan: GroupScan):
    """The stars of the groups whose members :func:`scan_catalogue` detected, the others reported.

    Returns
    -------
    catalogue : Catalogue
        Rows of undetected groups left out under the reason ``"[groups] detect: ..."``.
    skipped : astropy.table.Table
        One row per undetected group: ``group``, ``n_stars``, ``reason``, and the scan's
        best "members" (``scan_mu``, ``scan_sigma``, ``scan_n_members``,
        ``scan_delta_log_lik``).
    scan : GroupScan
        The scan of the detected groups only (their order kept).

    Examples
    --------
    >>> names, scan = scan_catalogue(cat, "Cluster", radius="DCEN")  # doctest: +SKIP
    >>> cat, skipped, scan = keep_detected(cat, "Cluster", names, scan)  # doctest: +SKIP
    """
    labels = _labels(catalogue, column)
    detected = scan.detected
    lost = [n for n, ok in zip(names, detected, strict=True) if not ok]
    if not detected.any():
        raise ValueError(f"[groups] detect: no group of column {column!r} shows members (each group's reason "
                         f"is in the log); check [groups] radius and sigma_max, or set detect = false.")
    out = np.isin(labels, lost)
    where = np.flatnonzero(~detected)
    p = scan.params
    skipped = Table({"group": lost, "n_stars": [int(np.sum(labels == n)) for n in lost],
                     "reason": [scan.reason[c] for c in where], "scan_mu": p.mu[where],
                     "scan_sigma": p.sigma[where], "scan_n_members": scan.n_members[where],
                     "scan_delta_log_lik": scan.delta_log_lik[where]},
                    dtype=[str, int, str, float, float, float, float])
    for row in skipped:
        logger.warning("group %s left out: %s", row["group"], row["reason"])
    keep = np.flatnonzero(detected)
    kept = GroupScan(GroupParams(*(a[keep] for a in p)), scan.log_lik[keep], scan.log_lik_field[keep],
                     scan.n_members[keep], tuple(scan.reason[c] for c in keep))
    reason = f"[groups] detect: {column} shows no members (skipped_groups.csv says why)"
    return catalogue.subset(~out, {reason: out}), skipped, kept


def many_clusters_from_catalogue(catalogue, column: str, *, radius: str | None = None,
                                 field: str = "per-group", pooling: bool = True, min_stars: int = 5,
                                 sigma_max: float = 25.0, scan: GroupScan | None = None):
    """:func:`bayesmix.clusters.many_cluster_model` of a catalogue's stars grouped by ``column``.

    Returns ``(model, data, group, log_radius)``; run :func:`select_groups` first to drop
    small groups (and :func:`keep_detected` to leave out groups without members).

    Examples
    --------
    >>> cat, skipped = select_groups(cat, "Cluster", min_stars=5)  # doctest: +SKIP
    >>> model, data, group, log_radius = many_clusters_from_catalogue(  # doctest: +SKIP
    ...     cat, "Cluster", radius="DCEN")
    """
    return many_cluster_model(catalogue.values, catalogue.errors, _labels(catalogue, column),
                              radius=_radius(catalogue, radius), field=field, pooling=pooling,
                              min_stars=min_stars, sigma_max=sigma_max, scan=scan)


# --------------------------------------------------------------------------- a whole run


@dataclasses.dataclass
class GroupRunResult:
    """What a ``[groups]`` run made (:func:`run_groups`).

    Attributes
    ----------
    spec : RunSpec
    catalogue : Catalogue
        The stars fitted (the drop report names every row left out, small groups included).
    fit, alone : GroupFit, GroupFit or None
        The pooled fit, and every group alone (``[groups] compare_alone``).
    table : astropy.table.Table
        :func:`cluster_table`.
    skipped : astropy.table.Table
        Groups left out for having fewer than ``min_stars`` stars.
    directory : Path
    written : list of Path
    provenance : dict
    """

    spec: Any
    catalogue: Any
    fit: GroupFit
    alone: GroupFit | None
    table: Table
    skipped: Table
    directory: Path
    written: list
    provenance: dict
    resumed_from: int = 0

    @property
    def problems(self) -> list[str]:
        """Why the results should not be trusted as they are (empty when the checks passed)."""
        out = list(self.fit.convergence.reasons)
        if self.alone is not None:
            out += [f"each cluster alone: {r}" for r in self.alone.convergence.reasons]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


def _sampler_kwargs(spec) -> dict[str, Any]:
    s = spec.sampler
    return {"num_chains": s.num_chains, "num_warmup": s.num_warmup, "num_samples": s.num_samples,
            "target_accept": s.target_accept, "max_tree_depth": s.max_tree_depth,
            "membership_draws": s.membership_draws}


def _stars_table(catalogue, fit: GroupFit, provenance) -> Table:
    """The membership table as single-cluster runs write it: ``p_cluster``, ``p_field`` with their
    16/84 percentiles (the field's are the members' mirrored), and the hard ``label``."""
    p, p16, p84 = fit.membership.T
    return catalogue.with_columns({"p_cluster": p, "p_cluster_16": p16, "p_cluster_84": p84,
                                   "p_field": 1.0 - p, "p_field_16": 1.0 - p84, "p_field_84": 1.0 - p16,
                                   "label": np.where(p >= 0.5, "cluster", "field")}, provenance=provenance)


def _write_figures(out: Path, table: Table) -> list[Path]:
    """``clusters_velocity.png`` (with a reference) and ``clusters_shrinkage.png`` (with the fit alone)."""
    import matplotlib.pyplot as plt

    from bayesmix import plotting

    figures = []
    if "mu_pull" in table.colnames:
        figures.append(("clusters_velocity.png", plotting.cluster_velocity_plot(table)))
    if "sigma_alone_p50" in table.colnames:
        figures.append(("clusters_shrinkage.png", plotting.cluster_shrinkage_plot(table)))
    written = []
    for name, fig in figures:
        try:
            def save(tmp, fig=fig):
                fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")

            written.append(atomic_write(out / name, save))
        finally:
            plt.close(fig)
    return written


def _write_outputs(spec, out: Path, result_parts: dict, provenance: dict) -> list[Path]:
    fit, alone, catalogue = result_parts["fit"], result_parts["alone"], result_parts["catalogue"]
    written = [write_table(result_parts["table"], out / "clusters.csv", provenance=provenance)]
    for fmt in spec.output.formats:
        suffix = {"votable": "vot"}.get(fmt, fmt)
        written.append(write_table(_stars_table(catalogue, fit, provenance), out / f"membership.{suffix}",
                                   provenance=provenance))
    written.append(write_table(Table.from_pandas(fit.summary.reset_index()), out / "summary.csv",
                               provenance=provenance))
    if alone is not None:
        written.append(write_table(Table.from_pandas(alone.summary.reset_index()), out / "summary_alone.csv",
                                   provenance=provenance))
    if len(result_parts["skipped"]):
        written.append(write_table(result_parts["skipped"], out / "skipped_groups.csv",
                                   provenance=provenance))
    if catalogue.report.n_dropped:
        written.append(write_table(catalogue.report.as_table(), out / "dropped_rows.csv",
                                   provenance=provenance))
    if spec.output.figures:
        written += _write_figures(out, result_parts["table"])
    fit.idata.attrs["bayesmix_provenance"] = repr(provenance)
    written.append(atomic_write(out / "posterior.nc", lambda tmp: fit.idata.to_netcdf(tmp)))
    if spec.source is not None and Path(spec.source).is_file():
        text = Path(spec.source).read_text()
        written.append(atomic_write(out / "spec.toml", lambda tmp: Path(tmp).write_text(text)))
    return written


def _skipped_table(small: Table, undetected: Table) -> Table:
    """Groups left out for their size and for showing no members, in one table."""
    from astropy.table import vstack

    small = small.copy()
    for name in undetected.colnames[3:]:
        small[name] = np.full(len(small), np.nan)
    return vstack([small, undetected]) if len(small) else undetected


def run_groups(spec, catalogue, out) -> GroupRunResult:
    """A ``[groups]`` run end to end: select, fit pooled (and alone), tabulate, write into ``out``.

    Called by :func:`bayesmix.workflow.run_spec` (which holds the folder's lock). Writes
    ``clusters.csv`` (:func:`cluster_table`), ``membership.<formats>`` (input columns and
    ``p_cluster``, ``p_cluster_16``, ``p_cluster_84``, ``p_field`` (and its percentiles) and
    ``label``, ``"cluster"`` or ``"field"``, as a single-cluster run writes them),
    ``summary.csv`` (and ``summary_alone.csv``) with R-hat and ESS, ``skipped_groups.csv``
    and ``dropped_rows.csv`` when rows were left out, ``posterior.nc`` and ``spec.toml``.

    Parameters
    ----------
    spec : RunSpec
        With a ``[groups]`` section.
    catalogue : Catalogue
        The spec's catalogue after the ``[data]`` cuts.
    out : path
        The output folder.

    Returns
    -------
    GroupRunResult

    Examples
    --------
    >>> from bayesmix.config import load_spec  # doctest: +SKIP
    >>> from bayesmix.workflow import run_spec  # doctest: +SKIP
    >>> result = run_spec(load_spec("models/baumgardt_clusters.toml"))  # doctest: +SKIP
    >>> result.table["cluster", "mu_p50", "sigma_p50", "shrinkage_sigma"]  # doctest: +SKIP
    """
    g = spec.groups
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    catalogue, skipped = select_groups(catalogue, g.column, list(g.select), g.min_stars)
    names, scan = scan_catalogue(catalogue, g.column, radius=g.radius, sigma_max=g.sigma_max,
                                 min_delta_log_lik=g.min_delta_log_lik, min_members=g.min_members)
    if g.detect:
        catalogue, undetected, scan = keep_detected(catalogue, g.column, names, scan)
        skipped = _skipped_table(skipped, undetected)
    model, data, group, log_radius = many_clusters_from_catalogue(
        catalogue, g.column, radius=g.radius, field=g.field, min_stars=g.min_stars, sigma_max=g.sigma_max,
        scan=scan)
    model = dataclasses.replace(model, alone_tau=g.alone_tau)
    logger.info("fitting %d groups (%d stars) in one hierarchical model", model.n_groups, catalogue.n_stars)
    fit = fit_groups(spec.seed, model, data, group, log_radius, **_sampler_kwargs(spec))
    alone = None
    if g.compare_alone:
        alone = fit_groups(spec.seed, dataclasses.replace(model, pooling=False), data, group, log_radius,
                           **_sampler_kwargs(spec))
    reference_path = g.reference_path(spec)
    reference = read_reference_velocities(reference_path) if reference_path is not None else None
    table = cluster_table(fit, alone, reference, scan)
    spec_dict = spec.to_dict()
    provenance = make_provenance(spec=spec_dict, spec_file=spec.source, seed=spec.seed,
                                 dropped_rows=catalogue.report.to_dict(), n_stars=catalogue.n_stars,
                                 n_groups=model.n_groups, skipped_groups=list(skipped["group"]),
                                 draws_per_chain=spec.sampler.num_samples, converged=bool(fit.convergence.ok),
                                 convergence_problems=list(fit.convergence.reasons))
    parts = {"fit": fit, "alone": alone, "catalogue": catalogue, "table": table, "skipped": skipped}
    written = _write_outputs(spec, out, parts, provenance)
    return GroupRunResult(spec, catalogue, fit, alone, table, skipped, out, written, provenance)
