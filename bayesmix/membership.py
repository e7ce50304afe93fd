"""Per-star membership probabilities with credible intervals, and posterior predictive draws.

For posterior draw ``s`` the probability that star ``i`` belongs to component ``k`` is
the responsibility

    r_ik^(s) = w_ik^(s) N(x_i | mu_k^(s), Sigma_k^(s) + S_i) / sum_j (same),

with per-star weights ``w_ik`` when the member fraction depends on a covariate
(projected radius), and a fixed background density as one more column. The reported
membership is the posterior mean of ``r_ik`` over draws with its 16th and 84th
percentiles. Densities come from :mod:`bayesmix.likelihood` (never re-implemented).
:func:`membership_table` writes probabilities below :data:`PROBABILITY_FLOOR` as 0.

Memory: the responsibilities of all draws for all stars would take
``8 * n_draws * n_stars * n_components`` bytes (64 GB for 1e6 stars, 4000 draws and
two components), so draws are thinned (evenly) to ``max_draws`` and stars are processed
in chunks by one jit-compiled function (vmapped over draws), whose working block is
kept under about 64 MiB (peak memory a few times that).

The model (a :class:`bayesmix.models.MixtureModel`, or anything with the same
methods) turns one draw's site values into parameters: ``params(sample)``,
``log_weights(sample, covariates)``, ``log_background(data)``, ``component_names``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bayesmix import (
    _arviz,
    _padding,
    _programs,
    _x64,  # noqa: F401  (float64 before any array is made)
)
from bayesmix._random import as_key, split_data
from bayesmix.likelihood import (
    MixtureParams,
    Observations,
    as_observations,
    cholesky_factor,
    log_joint,
    measured_values,
    pad_stars,
    star_rows,
)
from bayesmix.models import MixtureModel

__all__ = [
    "PROBABILITY_FLOOR",
    "MembershipResult",
    "membership_probabilities",
    "membership_table",
    "posterior_predictive",
    "posterior_predictive_counts",
    "posterior_predictive_idata",
    "responsibilities_at",
    "select_draws",
]

logger = logging.getLogger(__name__)

# Largest (n_draws, star_chunk, n_components) float64 block of one chunk. Two blocks are alive
# at once (the next chunk is computed while the percentiles of this one are taken) and the
# percentiles need a sorted copy, so the peak is about four times this.
_BLOCK_BYTES = 64 * 2**20

PROBABILITY_FLOOR = 1e-300
"""Membership probabilities (means and percentiles) below this are written as exactly 0.

Far-out stars get responsibilities like ``7e-309``: subnormal float64 numbers, on which
text readers such as astropy's CSV reader warn of an overflow (and lose digits). No
decision depends on a probability below 1e-300, so :func:`membership_table` flushes them.
"""


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class MembershipResult:
    """Per-star membership probabilities from :func:`membership_probabilities`.

    Attributes
    ----------
    component_names : tuple of str
        All components, the background (if any) last.
    mean : ndarray, shape (n_stars, n_components)
        Posterior mean of each star's responsibilities; rows sum to one.
    p16, p84 : ndarray, shape (n_stars, n_components)
        16th and 84th percentiles over draws (a 68% credible interval).
    labels : ndarray of int, shape (n_stars,)
        Hard label: the component with the largest mean probability.
    draw_indices : ndarray of int, shape (n_draws, 2)
        ``(chain, draw)`` of every posterior draw used.
    """

    component_names: tuple[str, ...]
    mean: np.ndarray
    p16: np.ndarray
    p84: np.ndarray
    labels: np.ndarray
    draw_indices: np.ndarray

    @property
    def n_stars(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_draws(self) -> int:
        return int(self.draw_indices.shape[0])

    @property
    def label_names(self) -> np.ndarray:
        """Hard labels as component names, shape (n_stars,)."""
        return np.asarray(self.component_names, dtype=str)[self.labels]

    def probability(self, component: str | int) -> np.ndarray:
        """Mean membership probability of one component (name or index), shape (n_stars,)."""
        return self.mean[:, self._index(component)]

    def _index(self, component):
        if isinstance(component, (int, np.integer)):
            if not -len(self.component_names) <= int(component) < len(self.component_names):
                raise ValueError(f"component index {component} out of range for {self.component_names}.")
            return int(component)
        if component not in self.component_names:
            raise ValueError(f"component {component!r} is not one of {self.component_names}.")
        return self.component_names.index(component)


# --------------------------------------------------------------------------- boundary helpers


def _check_fit(fit, parameter="fit"):
    missing = [a for a in ("idata", "model", "data") if not hasattr(fit, a)]
    if missing:
        raise ValueError(
            f"{parameter} must be a bayesmix.sampling.PosteriorFit (with idata, model, data); "
            f"{type(fit).__name__} lacks {missing}. Draws of your own NumPyro program become one with "
            "bayesmix.posterior_from_draws(draws, values, errors, rename=...)."
        )
    return fit


def _observations(fit) -> Observations:
    """``fit.data`` checked, as float64 :class:`Observations`."""
    return as_observations(fit.data)


def _covariates(fit, n_stars) -> dict[str, np.ndarray]:
    covariates = dict(getattr(fit, "covariates", None) or {})
    out = {}
    for name, col in covariates.items():
        arr = np.asarray(col, dtype=float)
        if arr.shape != (n_stars,):
            raise ValueError(f"fit.covariates[{name!r}] has shape {arr.shape}; need ({n_stars},), "
                             "one value per star.")
        out[name] = arr
    return out


def _positive_int(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def select_draws(n_chains: int, n_draws: int, max_draws: int, key=None) -> np.ndarray:
    """Which posterior draws to use: at most ``max_draws`` of ``n_chains * n_draws``.

    Parameters
    ----------
    n_chains, n_draws : int
        Shape of the posterior.
    max_draws : int
    key : int or JAX PRNG key, optional
        None (default): evenly spaced over the chains concatenated (deterministic).
        Otherwise a uniformly random subset without replacement.

    Returns
    -------
    ndarray of int, shape (min(max_draws, n_chains * n_draws), 2)
        ``(chain, draw)`` pairs in increasing flat order.
    """
    total = int(n_chains) * int(n_draws)
    max_draws = _positive_int("max_draws", max_draws)
    if total == 0:
        raise ValueError("the posterior has no draws.")
    if max_draws >= total:
        flat = np.arange(total)
    elif key is None:
        flat = np.unique(np.round(np.linspace(0, total - 1, max_draws)).astype(int))
    else:
        flat = np.sort(np.asarray(jax.random.choice(as_key(key), total, (max_draws,), replace=False)))
    return np.stack(np.divmod(flat, int(n_draws)), axis=1)


def _draw_sites(posterior, draw_indices) -> dict[str, np.ndarray]:
    """Every numeric posterior site at the chosen draws, leading axis n_selected."""
    chains, draws = draw_indices[:, 0], draw_indices[:, 1]
    sites = {}
    for name, da in posterior.data_vars.items():
        if not np.issubdtype(da.dtype, np.number):
            continue
        values = np.asarray(da.transpose("chain", "draw", ...).values)
        sites[name] = values[chains, draws]
    return sites


def _n_total(model):
    return len(model.component_names)


# --------------------------------------------------------------------------- memberships


def _percentiles_16_84(block):
    """16th and 84th percentiles along the last axis, as ``np.percentile`` (linear interpolation).

    On the host: numpy's (SIMD) sort of the contiguous last axis is several times faster
    than XLA's sort on CPU, and than ``np.percentile`` along a strided axis.
    """
    ordered = np.sort(block, axis=-1)
    n = block.shape[-1]
    out = []
    for q in (16.0, 84.0):
        position = (n - 1) * q / 100.0
        lo = math.floor(position)
        hi = min(lo + 1, n - 1)
        out.append(ordered[..., lo] + (position - lo) * (ordered[..., hi] - ordered[..., lo]))
    return out


def _memberships_one_draw(model, sample, data: Observations, covariates, log_background):
    """Responsibilities of one draw for a chunk of stars, (n_chunk, n_total).

    ``log_background`` (n_chunk,) or None: the background's log densities, the extra
    column of :func:`bayesmix.likelihood.log_joint`.
    """
    if getattr(model, "kinematics", None) is not None:
        # A per-star member density (dispersion profile, velocity gradient): the model joins it.
        return jax.nn.softmax(model.star_log_joint(sample, data, covariates or None), axis=-1)
    log_w = jnp.asarray(model.log_weights(sample, covariates or None))
    return jax.nn.softmax(log_joint(model.params(sample), data, log_w, log_background), axis=-1)


def membership_probabilities(fit, *, max_draws: int = 1000, star_chunk: int = 20000,
                             key=None) -> MembershipResult:
    """Posterior membership probabilities of every star, with 16/84 percentiles.

    Parameters
    ----------
    fit : PosteriorFit
        Uses ``fit.idata.posterior`` (every site of each draw), ``fit.model``,
        ``fit.data`` (Observations) and ``fit.covariates`` (e.g. projected radius).
    max_draws : int
        Posterior draws used at most; more are thinned evenly (see :func:`select_draws`).
    star_chunk : int
        Stars per compiled block at most; lowered automatically so that one block of
        ``(n_draws, star_chunk, n_components)`` responsibilities stays under ~64 MiB.
    key : int or JAX PRNG key, optional
        Draw a random subset of draws instead of thinning evenly.

    Returns
    -------
    MembershipResult
        ``mean``, ``p16``, ``p84`` (n_stars, n_components incl. background) and
        ``labels`` (n_stars,).

    Examples
    --------
    >>> import numpy as np
    >>> from bayesmix import posterior_from_draws
    >>> from bayesmix.simulate import simulate_cluster_field
    >>> cat = simulate_cluster_field(0, 100).catalogue
    >>> rng = np.random.default_rng(0)  # stand-in draws (2 chains x 50); sample_posterior makes real ones
    >>> draws = {"weights": rng.dirichlet([36, 64], size=(2, 50)),
    ...          "means": rng.normal([-44.7, 2.8], [0.3, 3.0], size=(2, 50, 2)),
    ...          "scales": rng.normal([2.3, 46.0], [0.2, 2.0], size=(2, 50, 2))}
    >>> fit = posterior_from_draws(draws, cat, component_names=["cluster", "field"])
    >>> from bayesmix.membership import membership_probabilities
    >>> members = membership_probabilities(fit)
    >>> members.mean.shape, members.p16.shape, members.labels.shape
    ((100, 2), (100, 2), (100,))
    >>> bool(np.allclose(members.mean.sum(axis=1), 1.0)), bool(np.all(members.p16 <= members.p84))
    (True, True)
    """
    _check_fit(fit)
    star_chunk = _positive_int("star_chunk", star_chunk)
    model = fit.model
    data = _observations(fit)
    n_stars = data.n_stars
    covariates = _covariates(fit, n_stars)
    posterior = fit.idata.posterior
    draw_indices = select_draws(posterior.sizes["chain"], posterior.sizes["draw"], max_draws, key)
    sites = _draw_sites(posterior, draw_indices)
    n_draws = draw_indices.shape[0]
    n_total = _n_total(model)

    log_background = model.log_background(data)
    if log_background is not None:
        log_background = np.asarray(log_background, dtype=float)

    # At most the bucket size of N (not N itself): catalogues in one bucket share the program.
    chunk = min(star_chunk, _padding.bucket(n_stars), max(1, _BLOCK_BYTES // (8 * n_draws * n_total)))
    n_chunks = math.ceil(n_stars / chunk)
    logger.info("memberships: %d stars in %d chunk(s) of %d, %d draws, %d components",
                n_stars, n_chunks, chunk, n_draws, n_total)

    fingerprint, constants = _program_constants(model)

    def chunk_responsibilities(sites, block, covs, log_bg, constants):
        bound = _bind_constants(model, constants)
        resp = jax.vmap(lambda s: _memberships_one_draw(bound, s, block, covs, log_bg))(sites)
        # Draws last (contiguous) for the host-side selection of the percentiles.
        return jnp.transpose(resp, (1, 2, 0)), jnp.mean(resp, axis=0)

    compiled = _programs.Program("memberships", jax.jit(chunk_responsibilities), fingerprint, (Observations,))
    mean = np.empty((n_stars, n_total))
    p16 = np.empty((n_stars, n_total))
    p84 = np.empty((n_stars, n_total))

    def submit(start):
        # Pad the last chunk (repeating its last star) so that every call has one shape.
        rows = np.minimum(np.arange(start, start + chunk), n_stars - 1)
        chunk_covariates = {name: col[rows] for name, col in covariates.items()}
        return compiled(sites, star_rows(data, rows), chunk_covariates,
                        None if log_background is None else log_background[rows], constants)

    starts = list(range(0, n_stars, chunk))
    pending = submit(starts[0])
    for i, start in enumerate(starts):
        resp, chunk_mean = pending
        if i + 1 < len(starts):
            pending = submit(starts[i + 1])  # dispatched asynchronously: overlaps the percentiles below
        n = min(start + chunk, n_stars) - start
        p16[start:start + n], p84[start:start + n] = _percentiles_16_84(np.asarray(resp)[:n])
        mean[start:start + n] = np.asarray(chunk_mean)[:n]
    return MembershipResult(
        component_names=tuple(model.component_names),
        mean=mean,
        p16=p16,
        p84=p84,
        labels=np.argmax(mean, axis=1),
        draw_indices=draw_indices,
    )


def membership_table(fit, result: MembershipResult, prefix: str = "p_", *, label_column: str = "label",
                     provenance: Mapping[str, Any] | None = None):
    """The input rows with membership columns appended, as an astropy Table.

    Parameters
    ----------
    fit : PosteriorFit
        With ``fit.catalogue`` the table is its source rows (all input columns, via
        ``Catalogue.with_columns``); otherwise an ``id`` column (0..n_stars-1) and the
        fitted values, named after the model's features.
    result : MembershipResult
    prefix : str
        Column prefix: ``<prefix><component>``, ``<prefix><component>_16``,
        ``<prefix><component>_84``.
    label_column : str
        Name of the hard-label column (component names).
    provenance : mapping, optional
        Added to the provenance stored in ``meta["bayesmix_provenance"]``.

    Returns
    -------
    astropy.table.Table
        Probabilities below :data:`PROBABILITY_FLOOR` (1e-300) are exactly 0, so no
        subnormal number reaches a written table (text readers overflow on them).

    Examples
    --------
    >>> import numpy as np
    >>> from bayesmix import posterior_from_draws
    >>> from bayesmix.simulate import simulate_cluster_field
    >>> cat = simulate_cluster_field(0, 100).catalogue
    >>> rng = np.random.default_rng(0)  # stand-in draws (2 chains x 50); sample_posterior makes real ones
    >>> draws = {"weights": rng.dirichlet([36, 64], size=(2, 50)),
    ...          "means": rng.normal([-44.7, 2.8], [0.3, 3.0], size=(2, 50, 2)),
    ...          "scales": rng.normal([2.3, 46.0], [0.2, 2.0], size=(2, 50, 2))}
    >>> fit = posterior_from_draws(draws, cat, component_names=["cluster", "field"])
    >>> from bayesmix.membership import membership_probabilities, membership_table
    >>> table = membership_table(fit, membership_probabilities(fit))
    >>> [name for name in table.colnames if name.startswith("p_") or name == "label"]
    ['p_cluster', 'p_cluster_16', 'p_cluster_84', 'p_field', 'p_field_16', 'p_field_84', 'label']
    """
    from astropy.table import Table

    # Here, not at the top: the catalogue module imports astropy, which a sampling run does not need.
    from bayesmix.catalogue import PROVENANCE_KEY, make_provenance

    _check_fit(fit)
    catalogue = getattr(fit, "catalogue", None)
    n_stars = catalogue.n_stars if catalogue is not None else _observations(fit).n_stars
    if result.n_stars != n_stars:
        raise ValueError(f"result has {result.n_stars} stars but the fit has {n_stars}; pass the "
                         "MembershipResult computed from this fit.")
    columns: dict[str, np.ndarray] = {}
    for k, name in enumerate(result.component_names):
        for suffix, probabilities in (("", result.mean), ("_16", result.p16), ("_84", result.p84)):
            columns[f"{prefix}{name}{suffix}"] = _flush_tiny(probabilities[:, k])
    columns[label_column] = result.label_names
    info = make_provenance(
        product="membership_probabilities",
        components=list(result.component_names),
        n_posterior_draws=result.n_draws,
        columns={"mean": f"{prefix}<component>", "percentiles": [16, 84], "label": label_column},
        **dict(provenance or {}),
    )
    if catalogue is not None:
        return catalogue.with_columns(columns, provenance=info)
    table = Table()
    table["id"] = np.arange(n_stars)
    values = measured_values(_observations(fit))  # a missing feature reads as missing (NaN)
    feature_names = tuple(getattr(fit.model, "feature_names", ()) or ())
    if len(feature_names) != values.shape[1]:
        feature_names = tuple(f"x{j}" for j in range(values.shape[1]))
    for j, name in enumerate(feature_names):
        table[name] = values[:, j]
    for name, col in columns.items():
        if name in table.colnames:
            raise ValueError(f"result column {name!r} would overwrite an input column; choose another "
                             "prefix or label_column.")
        table[name] = col
    table.meta[PROVENANCE_KEY] = info
    return table


def _flush_tiny(probabilities: np.ndarray) -> np.ndarray:
    """``probabilities`` with magnitudes below :data:`PROBABILITY_FLOOR` set to exactly 0."""
    probabilities = np.asarray(probabilities, dtype=float)
    return np.where(np.abs(probabilities) < PROBABILITY_FLOOR, 0.0, probabilities)


def responsibilities_at(params_or_em_result, data, log_weights=None, *, background=None):
    """Membership probabilities at one set of parameters (the EM responsibilities formula).

    ``r_ik = w_k N(x_i | mu_k, Sigma_k + S_i) / sum_j w_j N(x_i | mu_j, Sigma_j + S_j)``,
    with the background, when there is one, as a last column of weight
    ``background_weight`` and density ``background``.

    Parameters
    ----------
    params_or_em_result : MixtureParams or EMResult
        An ``EMResult`` brings its ``background_weight``.
    data : Observations, Catalogue or array_like (n_stars, n_features)
    log_weights : array, shape (n_total,) or (n_stars, n_total), optional
        Overrides the weights (e.g. a radius-dependent member fraction); ``n_total``
        counts the background.
    background : array (n_stars,) of log densities, or an object with
        ``log_density(data)`` (:mod:`bayesmix.components`), optional
        Required when the EM result has a background.

    Returns
    -------
    ndarray, shape (n_stars, n_total)
    """
    params = getattr(params_or_em_result, "params", params_or_em_result)
    if not isinstance(params, MixtureParams):
        raise ValueError("params_or_em_result must be a MixtureParams or an EMResult; "
                         f"got {type(params_or_em_result).__name__}.")
    background_weight = getattr(params_or_em_result, "background_weight", None)
    obs = as_observations(data)
    n_gauss = params.n_components
    log_background = None
    if background is not None:
        log_background = background.log_density(obs) if hasattr(background, "log_density") else background
        log_background = jnp.asarray(log_background, jnp.float64)
        if log_background.shape != (obs.n_stars,):
            raise ValueError(f"background log densities must have shape ({obs.n_stars},); "
                             f"got {log_background.shape}.")
    if log_weights is None:
        log_weights = jnp.log(jnp.asarray(params.weights))
        if background_weight is not None:
            log_weights = jnp.append(log_weights, math.log(background_weight))
    log_weights = jnp.asarray(log_weights, jnp.float64)
    n_total = log_weights.shape[-1]
    if n_total not in (n_gauss, n_gauss + 1):
        raise ValueError(f"log_weights has {n_total} columns; need {n_gauss} (or {n_gauss + 1} with a "
                         "background).")
    if (n_total == n_gauss + 1) != (log_background is not None):
        raise ValueError("a background weight needs the background's density: pass background= "
                         "(the UniformBackground/GaussianBackground of the fit, or log densities per star)."
                         if log_background is None else
                         "background= was given but the weights have no background column.")
    return np.asarray(jax.nn.softmax(log_joint(params, obs, log_weights, log_background), axis=-1))


# --------------------------------------------------------------------------- posterior predictive


def _error_factors(error_covs: np.ndarray) -> np.ndarray:
    """``A_i`` with ``A_i A_i^T = S_i`` for positive semi-definite S_i (zero errors allowed)."""
    eigval, eigvec = np.linalg.eigh(error_covs)
    return eigvec * np.sqrt(np.clip(eigval, 0.0, None))[:, None, :]


def _background_sampler(model):
    """A function ``(key, n_stars, error_draw) -> (n_stars, n_features)`` for the model's background."""
    background = getattr(model, "background", None)
    if hasattr(model, "sample_background"):
        return lambda key, n, error_draw: model.sample_background(key, n) + error_draw
    if background is not None and hasattr(background, "low") and hasattr(background, "high"):
        low = jnp.asarray(background.low, jnp.float64)
        high = jnp.asarray(background.high, jnp.float64)
        # The likelihood gives this background a constant density whatever the errors, so
        # its predictive draws are uniform in the box with no error added.
        return lambda key, n, error_draw: low + (high - low) * jax.random.uniform(key, (n, low.shape[0]))
    if background is not None and hasattr(background, "mean") and hasattr(background, "covariance"):
        mean = jnp.asarray(background.mean, jnp.float64)
        chol = cholesky_factor(jnp.asarray(background.covariance, jnp.float64))
        return lambda key, n, error_draw: (mean + jax.random.normal(key, (n, mean.shape[0])) @ chol.T
                                           + error_draw)
    raise ValueError(
        "the model has a background but no way to draw from it: give the model a "
        "`background` with low/high (uniform) or mean/covariance (Gaussian), or a "
        "`sample_background(key, n_stars)` method."
    )


def _replicate(model, draw_key, sample, error_factors, covariates):
    """A mock catalogue (n_stars, n_features) at one draw's parameters, each star with its own errors.

    ``error_factors`` (n_stars, D, D) with ``A A^T = S_i``; ``covariates`` as in the fit.
    """
    k_comp, k_true, k_err, k_bg = jax.random.split(draw_key, 4)
    n_stars, n_features = error_factors.shape[:2]
    n_total = _n_total(model)
    log_w = jnp.broadcast_to(jnp.asarray(model.log_weights(sample, covariates or None)), (n_stars, n_total))
    component = jax.random.categorical(k_comp, log_w, axis=-1)
    if getattr(model, "kinematics", None) is not None:
        # The member's mean and dispersion vary from star to star (gradient, profile).
        means, covs = model.star_moments(sample, covariates, n_stars)
        n_gauss = means.shape[1]
        gauss = jnp.minimum(component, n_gauss - 1)
        rows = jnp.arange(n_stars)
        mean, chol = means[rows, gauss], cholesky_factor(covs[rows, gauss])
    else:
        params = model.params(sample)
        n_gauss = params.means.shape[0]
        gauss = jnp.minimum(component, n_gauss - 1)
        mean, chol = params.means[gauss], cholesky_factor(params.covariances)[gauss]
    shape = (n_stars, n_features)
    true = mean + jnp.einsum("nij,nj->ni", chol, jax.random.normal(k_true, shape))
    error = jnp.einsum("nij,nj->ni", error_factors, jax.random.normal(k_err, shape))
    observed = true + error
    if n_total > n_gauss:
        observed = jnp.where((component == n_gauss)[:, None],
                             _background_sampler(model)(k_bg, n_stars, error), observed)
    return observed


def pads_stars(model) -> bool:
    """Whether ``model``'s programs take stars padded to a bucket size (zero-weight rows).

    A :class:`MixtureModel` reaches the stars only through
    :func:`bayesmix.likelihood.total_log_likelihood` (which gives a padding row weight 0),
    per-star terms, and, with per-star log weights (a radius law), the ``weights`` mean
    over the stars, weighted by the same zero weights. Any other model keeps the
    catalogue's own size: nothing says how it reduces over the stars.
    """
    return isinstance(model, MixtureModel)


def _program_constants(model) -> tuple[str, dict]:
    """``(fingerprint, constants)`` of a program that takes ``model``'s data-derived constants
    as an argument and binds them with :func:`_bind_constants`: the structure alone then
    identifies it, so that catalogues with other radii (and sizes) share it."""
    if not pads_stars(model):
        return repr(model), {}
    return model.program_key(), model.program_constants()


def _bind_constants(model, constants: dict):
    """``model`` reading ``constants`` (traced arguments) instead of its own values."""
    return model.with_constants(constants) if constants else model


def padded_data(model, obs: Observations, covariates: dict) -> tuple[Observations, dict]:
    """``(obs, covariates)`` as a compiled program of ``model`` takes them: padded to the
    bucket size (:func:`bayesmix.likelihood.pad_stars`, covariates copying row 0) when
    :func:`pads_stars`, else unchanged."""
    if not pads_stars(model):
        return obs, covariates
    n_rows = _padding.bucket(obs.n_stars)
    return pad_stars(obs, n_rows), _padding.pad_columns(covariates, n_rows)


class _Predictive:
    """The compiled replicate programs of one fit: data are arguments, the model a fingerprint.

    Stored with the compilation cache (:mod:`bayesmix._programs`), so a repeated run of the
    same model and shapes skips tracing.
    """

    def __init__(self, fit):

        model = fit.model
        data = _observations(fit)
        if model.log_background(data) is not None:
            _background_sampler(model)  # fail early, with its message, when it cannot be drawn from
        # A star's missing features are missing in its mocks too: NaN in the draws, and
        # not counted in the histograms (the data's counts skip them the same way).
        observed = np.ones(data.values.shape, bool) if data.observed is None else np.asarray(data.observed)
        # Stars padded to a bucket size (one program for catalogues of many sizes): padding
        # rows copy star 0 but count as unobserved, so no histogram counts them, and the
        # draws are cut back to the catalogue's rows. Random draws come row by row, so a
        # star's mocks are the same padded or not.
        self.n_stars = n = data.n_stars
        n_rows = _padding.bucket(n) if pads_stars(model) else n
        observed = np.concatenate([observed, np.zeros((n_rows - n, observed.shape[1]), bool)])
        # A radius law's reference and minimum radius travel as an argument too.
        fingerprint, constants = _program_constants(model)
        self.data_args = (jnp.asarray(_padding.pad_rows(_error_factors(np.asarray(data.error_covs)), n_rows)),
                          {name: jnp.asarray(col) for name, col in
                           _padding.pad_columns(_covariates(fit, n), n_rows).items()},
                          jnp.asarray(observed), constants)

        def draws(keys, sites, error_factors, covariates, observed, constants):
            bound = _bind_constants(model, constants)

            def one(a):
                return jnp.where(observed, _replicate(bound, a[0], a[1], error_factors, covariates), jnp.nan)

            return lax.map(one, (keys, sites))

        def counts(keys, sites, error_factors, covariates, observed, constants, table, last_bin):
            bound = _bind_constants(model, constants)
            n_bins = table.shape[1] - 1

            def one(a):
                mock = _replicate(bound, a[0], a[1], error_factors, covariates)
                index = jax.vmap(lambda e, x: jnp.searchsorted(e, x, side="right") - 1,
                                 in_axes=(0, 1))(table, mock)
                # Out-of-range mocks fall in the end bins of the real table (last_bin, an
                # argument: the table's bins are padded).
                index = jnp.clip(index, 0, last_bin)
                return jax.vmap(lambda i, m: jnp.zeros(n_bins, jnp.int32).at[i].add(m.astype(jnp.int32)))(
                    index, observed.T)

            return lax.map(one, (keys, sites))

        self.draws = _programs.Program("predictive_draws", jax.jit(draws), fingerprint)
        self.counts = _programs.Program("predictive_counts", jax.jit(counts), fingerprint)

    @staticmethod
    def sites(fit, n_draws):
        return {k: jnp.asarray(v) for k, v in _draw_sites(fit.idata.posterior,
                                                           _even_draws(fit.idata.posterior, n_draws)).items()}


def _even_draws(posterior, n_draws):
    """``n_draws`` (chain, draw) pairs evenly spaced over the chains (repeated when fewer exist)."""
    n_chain, n_draw = posterior.sizes["chain"], posterior.sizes["draw"]
    flat = np.round(np.linspace(0, n_chain * n_draw - 1, n_draws)).astype(int)
    return np.stack(np.divmod(flat, n_draw), axis=1)


def posterior_predictive(key, fit, n_draws: int = 100) -> np.ndarray:
    """Replicated catalogues from the posterior, each star with its own measurement error.

    For each of ``n_draws`` posterior draws (evenly spaced over the chains; repeated
    when the posterior has fewer): every star's component is drawn from its (per-star)
    weights, its true value from that component's intrinsic Gaussian, and the star's
    own error ``N(0, S_i)`` is added. Stars drawn into a uniform background are
    uniform in its box (its density ignores errors); a Gaussian background is
    convolved with the errors like the components.

    Parameters
    ----------
    key : int or JAX PRNG key
    fit : PosteriorFit
    n_draws : int

    Returns
    -------
    ndarray, shape (n_draws, n_stars, n_features)
    """
    key = as_key(key)
    _check_fit(fit)
    n_draws = _positive_int("n_draws", n_draws)
    programs = _Predictive(fit)
    keys = split_data(key, n_draws)
    mocks = programs.draws(keys, programs.sites(fit, n_draws), *programs.data_args)
    return np.asarray(mocks)[:, :programs.n_stars]


def posterior_predictive_counts(key, fit, edges, n_draws: int = 500) -> np.ndarray:
    """Histogram counts of replicated catalogues, per feature, without keeping the catalogues.

    The mock catalogues of :func:`posterior_predictive` (each star with its own errors),
    binned as they are drawn: memory is ``n_stars * n_features`` per draw, whatever
    ``n_draws``.

    Parameters
    ----------
    key : int or JAX PRNG key
    fit : PosteriorFit
    edges : sequence of array_like, one per feature
        Increasing bin edges of each feature (use -inf and inf as outer edges to count
        every star).
    n_draws : int

    Returns
    -------
    ndarray of int, shape (n_draws, n_features, max_bins)
        Counts; a feature with fewer bins has zeros beyond its last one.
    """
    key = as_key(key)
    _check_fit(fit)
    n_draws = _positive_int("n_draws", n_draws)
    n_features = _observations(fit).n_features
    if len(edges) != n_features:
        raise ValueError(f"edges has {len(edges)} entries; need one array of bin edges per feature "
                         f"({n_features}).")
    edges = [np.asarray(e, dtype=float) for e in edges]
    if any(e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0) for e in edges):
        raise ValueError("every entry of edges must be an increasing 1-D array of at least 2 edges.")
    n_bins = max(e.size for e in edges) - 1
    # Pad with +inf: searchsorted never reaches the padded bins. Their number is padded to a
    # few sizes too, so that the program's shapes do not follow each catalogue's binning.
    n_padded = _padding.bin_bucket(n_bins)
    table = jnp.asarray(np.stack([np.concatenate([e, np.full(n_padded + 1 - e.size, np.inf)])
                                  for e in edges]))
    programs = _Predictive(fit)
    keys = split_data(key, n_draws)
    counts = programs.counts(keys, programs.sites(fit, n_draws), *programs.data_args, table,
                             jnp.asarray(n_bins - 1, jnp.int32))
    return np.asarray(counts)[..., :n_bins]


def posterior_predictive_idata(key, fit, n_draws: int = 100):
    """:func:`posterior_predictive` as an ArviZ InferenceData (for ``az.plot_ppc``).

    Returns
    -------
    arviz.InferenceData
        ``posterior_predictive`` with ``values`` (chain=1, draw=n_draws, star, feature),
        and the fit's ``observed_data`` when it has one.
    """

    draws = posterior_predictive(key, fit, n_draws)
    feature_names = list(getattr(fit.model, "feature_names", ()) or [])
    if len(feature_names) != draws.shape[-1]:
        feature_names = [f"x{j}" for j in range(draws.shape[-1])]
    idata = _arviz.from_groups({"posterior_predictive": {"values": draws[None]}},
                               coords={"star": np.arange(draws.shape[1]), "feature": feature_names},
                               dims={"values": ["star", "feature"]})
    if _arviz.has_group(fit.idata, "observed_data"):
        idata = _arviz.with_group(idata, "observed_data", _arviz.group_dataset(fit.idata, "observed_data"))
    return idata
