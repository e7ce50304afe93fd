"""Extreme-deconvolution EM and MAP fits of Gaussian mixtures with per-star errors.

The fast point estimate that starts every NUTS run: for star ``i`` with measured
values ``x_i`` and error covariance ``S_i``, component ``k`` has intrinsic mean
``mu_k`` and covariance ``Sigma_k``, and the observed value is drawn from
``N(mu_k, T_ik)`` with ``T_ik = Sigma_k + S_i`` (Bovy, Hogg & Roweis 2011). One EM
iteration is

* E-step: responsibilities ``q_ik`` from :func:`bayesmix.likelihood.log_joint` (the
  same likelihood every layer uses), and the posterior of the true value of star
  ``i`` under component ``k``: mean ``b_ik = mu_k + Sigma_k T_ik^-1 (x_i - mu_k)``
  and covariance ``B_ik = Sigma_k - Sigma_k T_ik^-1 Sigma_k = Sigma_k T_ik^-1 S_i``;
* M-step: ``mu_k = sum_i q_ik b_ik / q_k`` and
  ``Sigma_k = [sum_i q_ik ((b_ik - mu_k)(b_ik - mu_k)^T + B_ik) + Psi_k] / (q_k + c_k)``,
  where ``Psi_k, c_k`` come from Bovy's regularisation ``w`` and the optional
  inverse-Wishart-like prior of MAP mode, and the weights from the (Dirichlet-)
  weighted counts.

How the step is computed (and why it cannot hang)
--------------------------------------------------
Because ``Sigma_k`` is the same for every star, all M-step sums reduce to four small
sufficient statistics per component, accumulated in a single pass over the stars::

    q_k = sum_i q_ik,   u_k = sum_i q_ik z_ik,   Z_k = sum_i q_ik z_ik z_ik^T,
    R_k = sum_i q_ik T_ik^-1 S_i,         with  z_ik = T_ik^-1 (x_i - mu_k),

so that ``sum q b = q_k mu_k + Sigma_k u_k``, the scatter of ``b`` about the new mean
is ``Sigma_k Z_k Sigma_k - q_k d_k d_k^T`` (``d_k = Sigma_k u_k / q_k``, the mean shift;
centring on the old mean keeps this free of cancellation) and ``sum q B = Sigma_k R_k``
(the product form ``Sigma T^-1 S`` has no cancellation when errors are small).
``T_ik^-1`` comes from the unrolled closed-form Cholesky of
:mod:`bayesmix.likelihood` (a loop of batched arithmetic above
``UNROLL_MAX_FEATURES``): no LAPACK call is made per star, so the batched
cholesky + triangular-solve deadlock seen on this CPU (issue 3) cannot occur. The
stars are processed in blocks inside ``lax.scan`` so that every intermediate stays
in cache and the working memory beyond the data is O(chunk_size * K), whatever N;
within a block one variadic reduction produces all statistics. Measured with
``bench/em_speed.py`` (2-core CPU, D = 2, K = 5, N = 1e6): an iteration takes about
1.5 times one pass computing the N x K log-density matrix, and the whole process
peaks at about 0.7 GiB (JAX runtime, data and their padded copy included).

Everything inside :func:`fit_em` after validation is one jitted function: the
initialisation, the iterations (``lax.while_loop``) and the restarts (one after another; a
start identical to an earlier one reuses its run).
Inputs are validated eagerly in Python before that; nothing is checked inside jit.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import warnings
from functools import partial
from numbers import Integral, Real
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import xlogy

from bayesmix import _programs, _x64  # noqa: F401  (float64 before any array is made)
from bayesmix._choices import EM_INITS
from bayesmix._constraints import Interval, Options, validate_params
from bayesmix._padding import bucket, pad_rows
from bayesmix._random import as_key
from bayesmix._x64 import device_array
from bayesmix.components import GaussianBackground, UniformBackground
from bayesmix.likelihood import (
    UNROLL_MAX_FEATURES,
    MixtureParams,
    Observations,
    _checked_weight,
    _mask_missing,
    _spd_inverse_unrolled,
    as_observations,
    check_params,
    cholesky_factor,
    log_joint,
    spd_inverse,
)

__all__ = [
    "DegenerateFitWarning",
    "EMConvergenceWarning",
    "EMOptimum",
    "EMOptions",
    "EMResult",
    "GaussianBackground",
    "MAPPrior",
    "UniformBackground",
    "complete_start",
    "em_step",
    "fit_em",
    "n_free_parameters",
    "scan_n_components",
]

logger = logging.getLogger(__name__)

# Density-peak starts (init="auto"): stars used for the kernel density estimate, mean-shift
# steps, and the narrow kernel's width as a fraction of Silverman's rule (1.06 n^(-1/(D+4))
# in standardised units). A quarter of Silverman's width resolves a cluster of a few km/s
# inside a field of 50-100 km/s at a few hundred stars (bench/robustness.py).
_PEAK_SAMPLE = 2048
_MEAN_SHIFT_STEPS = 30
_PEAK_BANDWIDTH = 0.25 * 1.06
# Relative size (to the total sample weight) below which a component's share of the
# stars is treated as empty: its mean and covariance are then left where they are
# instead of being divided by a vanishing count.
_EMPTY_FRACTION = 1e-12
# Default Bovy regularisation, relative to the mean per-feature variance of the data:
# far below any statistical error, but enough that a component collapsing onto
# duplicated stars or a constant feature keeps a positive-definite covariance.
_AUTO_W_FRACTION = 1e-6


# --------------------------------------------------------------------------- public types


class EMConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the objective changed by less than ``tol``.

    Carries the numbers so that callers can decide (like emcee's ``AutocorrError``).

    Attributes
    ----------
    n_iter : int
        Iterations run.
    max_iter : int
    tol : float
        Tolerance on the change of the total objective per iteration (nats).
    last_change : float
        Last change of the total objective (same units as ``tol``).
    log_likelihood : float
        Log-likelihood of the returned parameters.
    """

    def __init__(self, message, *, n_iter=None, max_iter=None, tol=None, last_change=None,
                 log_likelihood=None):
        super().__init__(message)
        self.n_iter = n_iter
        self.max_iter = max_iter
        self.tol = tol
        self.last_change = last_change
        self.log_likelihood = log_likelihood


class DegenerateFitWarning(UserWarning):
    """Two components of a fit are identical (or a component is empty).

    Attributes
    ----------
    pairs : list of tuple of int
        Index pairs of components with the same mean and covariance.
    """

    def __init__(self, message, *, pairs=()):
        super().__init__(message)
        self.pairs = list(pairs)


@dataclasses.dataclass(frozen=True)
class EMOptions:
    """Settings of :func:`fit_em` (hashable; changing one recompiles).

    Attributes
    ----------
    max_iter : int
        Maximum number of EM iterations per restart (M-steps).
    tol : float
        Converged when the total objective (sample-weighted log-likelihood, plus the
        log prior in MAP mode or with ``w > 0``) changes by at most ``tol`` nats in an
        iteration (astroML's convention). A total, not a per-star mean (scikit-learn's
        ``tol``), because the log-likelihood curvature grows with N: a fixed total
        change means the same distance from the optimum in units of the statistical
        error at any N, whereas a per-star tolerance stops ever further from it as
        N grows.
    w : float or None
        Bovy et al.'s covariance regularisation (variance units): ``w * I`` is added to
        each covariance numerator and 1 to its denominator (their eq. 38), which is an
        ``|Sigma|^-1/2 exp(-w tr(Sigma^-1)/2)`` prior. pygmmis's ``w`` is a dispersion;
        its equivalent is ``w_pygmmis**2 * (N / K + 1)``. None (default): a ridge of
        ``1e-6`` times the mean per-feature variance of the data (errors included) is
        added to each numerator but nothing to the denominator (the prior
        ``exp(-w tr(Sigma^-1)/2)`` alone), so covariances are not shrunk by
        ``q_k / (q_k + 1)``; negligible next to any statistical error but enough that
        no covariance can become singular. Pass 0.0 for the unregularised XD of astroML.
    init : {"auto", "kmeans++", "random", "given"} or None
        Where EM starts.

        * "auto": ``n_init`` k-means++ starts, plus ``n_peaks`` density-peak starts (a
          narrow component on each of the most significant local over-densities of
          the stars, found by mean-shift, the other K - 1 components from k-means++),
          plus ``init_params`` when it is given. k-means++ alone cannot place a narrow
          component on a small, sharp over-density, such as a faint cluster inside a
          broad field; the peak starts can (``bench/robustness.py``).
        * "kmeans++": ``n_init`` starts from k-means++ seeding plus ``kmeans_iter``
          Lloyd iterations on standardised values (the only kind before density peaks).
        * "random": ``n_init`` starts with K distinct random stars as means and the
          global covariance.
        * "given": ``init_params`` only.

        None: "given" when ``init_params`` is passed, else "auto". All starts run in one
        program, one after another; the one with the highest objective is kept, and the
        distinct optima they reach are returned (:attr:`EMResult.optima`).
    n_init : int
        k-means++ (or random) starts.
    n_peaks : int
        Density-peak starts of ``init="auto"`` (none when K = 1).
    kmeans_iter : int
        Lloyd iterations after the k-means++ seeding.
    chunk_size : int
        Stars per block of the E-step; bounds the working memory per restart to
        about ``chunk_size * n_components * 100`` bytes.
    """

    max_iter: int = 1000
    tol: float = 1e-3
    w: float | None = None
    init: str | None = None
    n_init: int = 1
    n_peaks: int = 4
    kmeans_iter: int = 10
    chunk_size: int = 16384


@dataclasses.dataclass(frozen=True)
class MAPPrior:
    """Conjugate-style priors that turn the EM fit into a MAP fit.

    Attributes
    ----------
    weight_concentration : float or array_like, shape (n_components,) or (n_components + 1,)
        Dirichlet concentration ``alpha >= 1`` on the weights (the last entry is the
        background's when there is one). ``alpha > 1`` keeps every weight positive:
        each component gets ``alpha - 1`` pseudo-stars. (``alpha < 1`` is refused:
        its MAP is unbounded.)
    covariance_strength : float
        ``c > 0``: the covariance prior counts as ``c`` stars with covariance
        ``covariance_mode``. It is the inverse-Wishart with scale
        ``Psi = c * covariance_mode`` and ``nu = c - n_features - 1`` degrees of freedom
        (proper when ``c > 2 * n_features``; MAP needs no normalisation).
    covariance_mode : float, array_like (n_features,) or (n_features, n_features), or None
        Prior covariance (isotropic variance, diagonal variances or full). None:
        ``0.01 * diag(var(values) + mean error variance)``, i.e. a tenth of the
        data's spread per feature.

    Notes
    -----
    The M-step becomes ``Sigma_k = (scatter_k + Psi) / (q_k + c)`` and
    ``w_k ∝ q_k + alpha_k - 1``: a component with a single star keeps a covariance
    of about ``covariance_mode * c / (1 + c)``, so nothing can collapse.
    """

    weight_concentration: Any = 2.0
    covariance_strength: float = 1.0
    covariance_mode: Any = None


# UniformBackground and GaussianBackground live in bayesmix.components (the likelihood's
# layer, where the models and memberships reach them too); imported above so that
# bayesmix.em.UniformBackground keeps working.


@dataclasses.dataclass(frozen=True, eq=False)
class EMOptimum:
    """One distinct optimum reached by :func:`fit_em`'s starts.

    Attributes
    ----------
    params : MixtureParams
        As :attr:`EMResult.params`.
    background_weight : float or None
    log_likelihood, log_prior : float
    n_iter : int
        M-steps of the best start that reached it.
    converged : bool
    starts : tuple of int
        Indices (into :attr:`EMResult.restart_objectives`) of the starts that reached it.
    start_kinds : tuple of str
        Their kinds: "kmeans++", "random", "peak" or "given".
    """

    params: MixtureParams
    background_weight: float | None
    log_likelihood: float
    log_prior: float
    n_iter: int
    converged: bool
    starts: tuple
    start_kinds: tuple

    @property
    def objective(self) -> float:
        return self.log_likelihood + self.log_prior

    def to_dict(self) -> dict:
        """JSON-ready values (lists), as ``em.json`` stores them."""
        return {"weights": np.asarray(self.params.weights).tolist(),
                "means": np.asarray(self.params.means).tolist(),
                "covariances": np.asarray(self.params.covariances).tolist(),
                "background_weight": self.background_weight, "log_likelihood": self.log_likelihood,
                "log_prior": self.log_prior, "objective": self.objective, "n_iter": self.n_iter,
                "converged": self.converged, "n_starts": len(self.starts),
                "start_kinds": sorted(set(self.start_kinds))}


@dataclasses.dataclass(frozen=True, eq=False)
class EMResult:
    """Outcome of :func:`fit_em`.

    ``params`` is a :class:`~bayesmix.likelihood.MixtureParams` in constrained space,
    ready as NUTS initial values. With a background, ``params.weights`` are
    fractions of the whole model and sum to ``1 - background_weight``.

    Attributes
    ----------
    params : MixtureParams
        weights (n_components,), means (n_components, n_features),
        covariances (n_components, n_features, n_features).
    background_weight : float or None
    log_likelihood : float
        Log-likelihood of ``params`` (sample-weighted).
    log_prior : float
        Log prior density (unnormalised) of ``params``: MAP prior and ``w`` term.
    log_likelihood_history, objective_history : ndarray, shape (n_iter + 1,)
        Values at the initial parameters and after each M-step; the last entry
        belongs to ``params``. The objective is ``log_likelihood + log_prior``.
    n_iter : int
        M-steps taken by the kept restart.
    converged : bool
    n_parameters : int
        Free parameters (frozen ones and the sum-to-one constraint excluded).
    n_effective : float
        Sum of sample weights (the number of stars without weights); the N of BIC.
    w : float
        Bovy regularisation used (resolved from ``EMOptions.w``).
    restart_objectives : ndarray, shape (n_starts,)
        Final objective of every start (NaN for a failed one): the ``n_init``
        k-means++/random starts, then the density-peak starts, then the given one.
    best_restart : int
    optima : tuple of EMOptimum
        The distinct optima the starts reached, best (highest objective) first;
        ``optima[0]`` is ``params``. Two starts reach the same optimum when every
        component of one matches one of the other (Bhattacharyya distance below 0.01,
        weights within 0.01). More than one means the likelihood has several local
        maxima that the data populate: :func:`bayesmix.sampling.sample_posterior`
        starts chains from them.
    start_kinds : tuple of str
        Kind of every start ("kmeans++", "random", "peak" or "given").
    """

    params: MixtureParams
    background_weight: float | None
    log_likelihood: float
    log_prior: float
    log_likelihood_history: np.ndarray
    objective_history: np.ndarray
    n_iter: int
    converged: bool
    n_parameters: int
    n_effective: float
    w: float
    restart_objectives: np.ndarray
    best_restart: int
    optima: tuple = ()
    start_kinds: tuple = ()

    @property
    def weights(self) -> np.ndarray:
        return np.asarray(self.params.weights)

    @property
    def means(self) -> np.ndarray:
        return np.asarray(self.params.means)

    @property
    def covariances(self) -> np.ndarray:
        return np.asarray(self.params.covariances)

    @property
    def n_components(self) -> int:
        return self.params.n_components

    @property
    def objective(self) -> float:
        return self.log_likelihood + self.log_prior

    @property
    def bic(self) -> float:
        """``-2 log L + p log N`` with N the sum of sample weights."""
        return -2.0 * self.log_likelihood + self.n_parameters * math.log(self.n_effective)

    @property
    def aic(self) -> float:
        """``-2 log L + 2 p``."""
        return -2.0 * self.log_likelihood + 2.0 * self.n_parameters


# --------------------------------------------------------------------------- internals


class _Static(NamedTuple):
    """Shapes and switches that fix the compiled program (a hashable jit argument).

    The starts are, in this order: ``n_init`` k-means++ (or random) starts, ``n_peaks``
    density-peak starts, and the given start when ``given_start``.
    """

    n_components: int
    n_features: int
    n_blocks: int
    block: int
    has_background: bool
    max_iter: int
    init: str
    n_init: int
    kmeans_iter: int
    n_peaks: int = 0
    given_start: bool = False

    @property
    def n_starts(self) -> int:
        return self.n_init + self.n_peaks + int(self.given_start)


class _Model(NamedTuple):
    """Blocked data and everything that defines the objective (traced arrays).

    Internal parameters are a MixtureParams whose ``weights`` has one more entry,
    the background's, when there is a background.
    """

    values: Any  # (n_blocks, block, D)
    error_covs: Any  # (n_blocks, block, D, D)
    sample_weight: Any  # (n_blocks, block); 0 on padding rows
    log_background: Any  # (n_blocks, block); unused without a background
    frozen_weights: Any  # (Kb,) bool
    frozen_means: Any  # (K,) bool
    frozen_covariances: Any  # (K,) bool
    alpha_minus_one: Any  # (Kb,) Dirichlet pseudo-counts; 0 outside MAP mode
    psi: Any  # (K, D, D) prior scale added to the covariance numerator
    prior_count: Any  # (K,) added to the covariance denominator
    tol: Any  # ()
    total_weight: Any  # ()
    given: MixtureParams  # init_params (weights (Kb,)); zeros when none given
    global_cov: Any  # (D, D) observed covariance of all stars, plus w I
    feature_scale: Any  # (D,) standardisation for k-means
    observed: Any = None  # (n_blocks, block, D) 1.0 where measured; None when nothing is missing


class _Stats(NamedTuple):
    counts: Any  # (K,)
    u: Any  # (K, D)
    zz: Any  # (K, D, D)
    r: Any  # (K, D, D)
    background_count: Any  # ()
    log_likelihood: Any  # ()


def _variadic_sum(arrays, axis):
    # One reduce over several operands: XLA emits a single loop that computes the
    # shared producers (Cholesky, inverse) once per element instead of once per sum.
    zeros = tuple(jnp.zeros((), a.dtype) for a in arrays)
    return lax.reduce(tuple(arrays), zeros,
                      lambda acc, new: tuple(p + q for p, q in zip(acc, new, strict=True)),
                      (axis,))


def _block_stats(params, x, s, sw, log_bg, static: _Static, obs=None):
    """E-step statistics of one block of stars.

    Parameters
    ----------
    params : MixtureParams (internal: weights (Kb,))
    x : (B, D); s : (B, D, D); sw : (B,); log_bg : (B,)
    obs : (B, D) or None
        1.0 where a feature is measured. Missing features are projected out: the
        posterior of the intrinsic value there is the component's own (XD's ``R_i``).

    Returns
    -------
    _Stats for the block.
    """
    k = static.n_components
    gauss = MixtureParams(params.weights[:k], params.means, params.covariances)
    # The internal weights end with the background's, the column log_joint appends.
    lj = log_joint(gauss, Observations(x, s, obs), jnp.log(params.weights),
                   log_bg if static.has_background else None)
    # logsumexp by hand so that exp() runs once per (star, component): the same
    # terms give the responsibilities.
    top = lax.stop_gradient(jnp.max(lj, axis=1, keepdims=True))
    terms = jnp.exp(lj - top)
    total = jnp.sum(terms, axis=1)
    per_star = jnp.log(total) + top[:, 0]
    # Zero-weight stars (padding, or weights of 0) must not reach the sums, even if
    # their densities are not finite.
    used = sw > 0
    q = jnp.where(used[:, None], terms * (sw / total)[:, None], 0.0)
    ll = jnp.sum(jnp.where(used, sw * per_star, 0.0))
    bg_count = jnp.sum(q[:, k]) if static.has_background else jnp.zeros(())
    qg = q[:, :k]
    # Same expression as in component_log_prob, so XLA shares the Cholesky factor.
    tcov = params.covariances[None, :, :, :] + s[:, None, :, :]
    resid = x[:, None, :] - params.means[None, :, :]
    # What T^-1 multiplies in the posterior covariance Sigma - Sigma T^-1 Sigma = Sigma T^-1 S:
    # S itself, or with missing features (obs 0) the E of _missing_solve_factor.
    s_or_e = s[:, None, :, :] if obs is None else _missing_solve_factor(params.covariances, s, obs)
    if obs is not None:
        tcov, resid = _mask_missing(tcov, resid, obs[:, None, :])
    sums = _unrolled_sums if static.n_features <= UNROLL_MAX_FEATURES else _looped_sums
    counts, u, zz, r = sums(qg, tcov, resid, s_or_e, obs)
    return _Stats(counts, u, zz, r, bg_count, ll)


def _unrolled_sums(qg, tcov, resid, s_or_e, obs):
    """Responsibility-weighted sums over a block's stars, elementwise over (B, K).

    Parameters
    ----------
    qg : (B, K) responsibilities times sample weights
    tcov : (B, K, D, D) total covariances, missing features masked out
    resid : (B, K, D) residuals, zero where missing
    s_or_e : (B, 1 or K, D, D) what T^-1 multiplies in the posterior covariance
    obs : (B, D) or None

    Returns
    -------
    counts (K,), u (K, D), zz (K, D, D), r (K, D, D): the :class:`_Stats` sums.
    """
    k, d = qg.shape[1], resid.shape[-1]
    tinv = _spd_inverse_unrolled(tcov)  # nested lists of (B, K)
    if obs is not None:  # the observed block's inverse, embedded in zeros
        tinv = [[tinv[a][b] * obs[:, None, a] * obs[:, None, b] for b in range(d)] for a in range(d)]
    res = [resid[..., a] for a in range(d)]
    z = [sum(tinv[a][b] * res[b] for b in range(d)) for a in range(d)]
    upper = [(a, b) for a in range(d) for b in range(a, d)]
    feats = [qg]
    feats += [qg * z[a] for a in range(d)]
    feats += [qg * z[a] * z[b] for a, b in upper]
    feats += [qg * (sum(tinv[a][c] * s_or_e[..., c, b] for c in range(d))
                    + (0.0 if obs is None or a != b else 1.0 - obs[:, None, a]))
              for a in range(d) for b in range(d)]
    sums = _variadic_sum(feats, axis=0)
    u = jnp.stack(sums[1:1 + d], axis=-1)
    zz = [[None] * d for _ in range(d)]
    for (a, b), val in zip(upper, sums[1 + d:1 + d + len(upper)], strict=True):
        zz[a][b] = val
        zz[b][a] = val
    zz = jnp.stack([jnp.stack(row, axis=-1) for row in zz], axis=-2)
    r = jnp.stack(sums[1 + d + len(upper):], axis=-1).reshape(k, d, d)
    return sums[0], u, zz, r


def _looped_sums(qg, tcov, resid, s_or_e, obs):
    """:func:`_unrolled_sums` for D > UNROLL_MAX_FEATURES, with (B, K, D, D) arrays."""
    d = resid.shape[-1]
    tinv = spd_inverse(tcov)  # (B, K, D, D), no LAPACK
    if obs is not None:
        tinv = tinv * obs[:, None, :, None] * obs[:, None, None, :]
    z = jnp.sum(tinv * resid[:, :, None, :], axis=-1)
    u = jnp.einsum("bk,bka->ka", qg, z)
    zz = jnp.einsum("bk,bka,bkc->kac", qg, z, z)
    te = jnp.einsum("bkac,bkcd->bkad", tinv, jnp.broadcast_to(s_or_e, tinv.shape))
    if obs is not None:
        te = te + jnp.eye(d) * (1.0 - obs)[:, None, None, :]
    return jnp.sum(qg, axis=0), u, zz, jnp.einsum("bk,bkad->kad", qg, te)


def _missing_solve_factor(covariances, s, obs):
    """``E`` with ``Sigma (P E + diag(1 - m)) = Sigma - Sigma P Sigma`` when features are missing.

    ``P`` is the inverse of the observed block of ``T = Sigma_k + S_i`` embedded in zeros
    and ``m`` the observed mask. Then ``I - P Sigma = P E + diag(1 - m)`` with
    ``E[c, b] = S[c, b]`` for an observed column ``b`` and ``-Sigma[c, b]`` for a missing
    one: the observed block keeps the well-conditioned ``P S`` of the complete-data update
    (no ``I - P Sigma`` cancellation when errors are small) and a missing feature's
    posterior is its component's own covariance.

    Returns
    -------
    array, shape (B, K, D, D)
    """
    col = obs[:, None, None, :]  # (B, 1, 1, D): by column b
    return s[:, None, :, :] * col - covariances[None, :, :, :] * (1.0 - col)


def _e_stats(params, model: _Model, static: _Static) -> _Stats:
    """E-step statistics summed over all blocks (``lax.scan``)."""
    k, d = static.n_components, static.n_features
    if static.n_blocks == 1:
        return _block_stats(params, model.values[0], model.error_covs[0],
                            model.sample_weight[0], model.log_background[0], static,
                            None if model.observed is None else model.observed[0])

    def body(acc, blk):
        *arrays, obs = blk
        part = _block_stats(params, *arrays, static, obs)
        return jax.tree_util.tree_map(jnp.add, acc, part), None

    zero = _Stats(jnp.zeros(k), jnp.zeros((k, d)), jnp.zeros((k, d, d)), jnp.zeros((k, d, d)),
                  jnp.zeros(()), jnp.zeros(()))
    out, _ = lax.scan(body, zero, (model.values, model.error_covs, model.sample_weight,
                                   model.log_background, model.observed))
    return out


def _sym(a):
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _m_step(params, stats: _Stats, model: _Model, static: _Static):
    """Closed-form M-step from the sufficient statistics; frozen parts are kept."""
    cov, mu = params.covariances, params.means
    counts = stats.counts
    threshold = _EMPTY_FRACTION * model.total_weight
    live = counts > threshold
    safe = jnp.where(live, counts, 1.0)
    shift = jnp.einsum("kab,kb->ka", cov, stats.u / safe[:, None])
    move = live & ~model.frozen_means
    shift = jnp.where(move[:, None], shift, 0.0)
    means = mu + shift
    # Scatter of b about the new mean, centred on the old one (see module docstring).
    # (Sigma Z) Sigma, in that order: Sigma Z is O(1) in any units, whereas a contraction
    # that pairs the two Sigmas first (einsum may choose it) overflows past 1e154 units.
    scatter = jnp.einsum("kac,kcd->kad", jnp.einsum("kab,kbc->kac", cov, stats.zz), cov)
    scatter = scatter - counts[:, None, None] * shift[:, :, None] * shift[:, None, :]
    posterior_cov = _sym(jnp.einsum("kab,kbc->kac", cov, stats.r))
    denom = counts + model.prior_count
    update = ~model.frozen_covariances & (denom > threshold)
    new_cov = (_sym(scatter) + posterior_cov + model.psi) / jnp.where(update, denom, 1.0)[:, None, None]
    covariances = jnp.where(update[:, None, None], new_cov, cov)

    all_counts = counts
    if static.has_background:
        all_counts = jnp.concatenate([counts, stats.background_count[None]])
    pseudo = jnp.maximum(all_counts + model.alpha_minus_one, 0.0)
    free = ~model.frozen_weights
    mass = 1.0 - jnp.sum(jnp.where(free, 0.0, params.weights))
    free_total = jnp.sum(jnp.where(free, pseudo, 0.0))
    ok = free & (free_total > 0)
    weights = jnp.where(ok, mass * pseudo / jnp.where(free_total > 0, free_total, 1.0),
                        params.weights)
    return MixtureParams(weights, means, covariances)


def _log_prior(params, model: _Model):
    """Unnormalised log prior of the free parameters (Dirichlet, w term, inverse Wishart)."""
    lp_w = jnp.sum(jnp.where(model.frozen_weights, 0.0,
                             xlogy(model.alpha_minus_one, params.weights)))
    cov = params.covariances
    low = cholesky_factor(cov)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(low, axis1=-2, axis2=-1)), axis=-1)
    trace = jnp.sum(model.psi * spd_inverse(cov), axis=(-2, -1))
    has_prior = (model.prior_count > 0) | (jnp.trace(model.psi, axis1=-2, axis2=-1) > 0)
    active = ~model.frozen_covariances & has_prior
    term = -0.5 * model.prior_count * logdet - 0.5 * trace
    return lp_w + jnp.sum(jnp.where(active, term, 0.0))


def _step(params, model: _Model, static: _Static):
    stats = _e_stats(params, model, static)
    return stats.log_likelihood, _log_prior(params, model), _m_step(params, stats, model, static)


class _Loop(NamedTuple):
    t: Any
    params: Any
    previous: Any
    hist_ll: Any
    hist_obj: Any
    status: Any  # 0 running, 1 converged, 2 non-finite objective, 3 max_iter reached


def _run_em(params0, model: _Model, static: _Static) -> _Loop:
    """EM iterations in ``lax.while_loop`` from ``params0`` (one restart)."""
    n_hist = static.max_iter + 1
    nan_hist = jnp.full(n_hist, jnp.nan)

    def cond(c: _Loop):
        return c.status == 0

    def body(c: _Loop):
        ll, lp, new = _step(c.params, model, static)
        obj = ll + lp
        hist_ll = c.hist_ll.at[c.t].set(ll)
        hist_obj = c.hist_obj.at[c.t].set(obj)
        prev_obj = c.hist_obj[jnp.maximum(c.t - 1, 0)]
        change = jnp.abs(obj - prev_obj)
        finite = jnp.isfinite(obj)
        converged = (c.t > 0) & (change <= model.tol)
        status = jnp.where(~finite, 2, jnp.where(converged, 1,
                                                 jnp.where(c.t >= static.max_iter, 3, 0)))
        status = status.astype(jnp.int32)
        running = status == 0
        params = jax.tree_util.tree_map(
            lambda a, b, p: jnp.where(running, a, jnp.where(finite, b, p)),
            new, c.params, c.previous)
        previous = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b),
                                          c.params, c.previous)
        return _Loop(jnp.where(running, c.t + 1, c.t).astype(jnp.int32), params, previous, hist_ll, hist_obj,
                     status)

    start = _Loop(jnp.zeros((), jnp.int32), params0, params0, nan_hist, nan_hist,
                  jnp.zeros((), jnp.int32))
    return lax.while_loop(cond, body, start)


# ----------------------------------------------------------------- initialisation (in JAX)


def _seed_centres(key, x, sw, n_components, kind):
    """K distinct stars: k-means++ (D^2) sampling, or uniform among unchosen values.

    Stars at zero distance from a chosen centre have zero probability, so duplicated
    values can never give two identical seeds (given K distinct values, checked at
    the boundary).
    """
    keys = jax.random.split(key, n_components)
    first = jax.random.categorical(keys[0], jnp.log(sw))
    c0 = x[first]
    centres = jnp.zeros((n_components, x.shape[1]), x.dtype).at[0].set(c0)
    dist2 = jnp.sum((x - c0) ** 2, axis=-1)

    def body(j, carry):
        centres, dist2 = carry
        score = dist2 if kind == "kmeans++" else (dist2 > 0).astype(x.dtype)
        idx = jax.random.categorical(keys[j], jnp.log(sw * score))
        c = x[idx]
        return centres.at[j].set(c), jnp.minimum(dist2, jnp.sum((x - c) ** 2, axis=-1))

    centres, _ = lax.fori_loop(1, n_components, body, (centres, dist2))
    return centres


def _cluster_moments(centres, model: _Model):
    """Hard-assignment counts, sums and scatter about ``centres`` (k, D) (in original units)."""
    k, d = centres.shape
    scale = model.feature_scale

    def body(acc, blk):
        x, sw = blk
        d2 = jnp.sum(((x[:, None, :] - centres[None]) / scale) ** 2, axis=-1)
        hot = jax.nn.one_hot(jnp.argmin(d2, axis=1), k, dtype=x.dtype) * sw[:, None]
        dx = x[:, None, :] - centres[None]
        return (acc[0] + jnp.sum(hot, axis=0),
                acc[1] + jnp.einsum("bk,bka->ka", hot, dx),
                acc[2] + jnp.einsum("bk,bka,bkc->kac", hot, dx, dx)), None

    zero = (jnp.zeros(k), jnp.zeros((k, d)), jnp.zeros((k, d, d)))
    out, _ = lax.scan(body, zero, (model.values, model.sample_weight))
    return out


def _kmeans_init(key, model: _Model, static: _Static, kind, k):
    """``k`` components from k-means++ seeding and Lloyd iterations (or ``k`` random stars)."""
    d = static.n_features
    x = model.values.reshape(-1, d)
    sw = model.sample_weight.reshape(-1)
    centres = _seed_centres(key, x / model.feature_scale, sw, k, kind) * model.feature_scale
    global_cov = model.global_cov / k ** (2.0 / d)
    if kind == "random":
        weights = jnp.full(k, 1.0 / k)
        return MixtureParams(weights, centres, jnp.broadcast_to(global_cov, (k, d, d)))

    def lloyd(_, c):
        counts, sums, _unused = _cluster_moments(c, model)
        return jnp.where(counts[:, None] > 0, c + sums / jnp.where(counts > 0, counts, 1.0)[:, None], c)

    centres = lax.fori_loop(0, static.kmeans_iter, lloyd, centres)
    counts, sums, scatter = _cluster_moments(centres, model)
    safe = jnp.where(counts > 0, counts, 1.0)
    shift = jnp.where(counts[:, None] > 0, sums / safe[:, None], 0.0)
    means = centres + shift
    scatter = scatter - counts[:, None, None] * shift[:, :, None] * shift[:, None, :]
    # One pseudo-star of the global covariance keeps tiny clusters positive definite.
    covariances = _sym((scatter + global_cov) / (counts + 1.0)[:, None, None])
    weights = (counts + 1.0) / (jnp.sum(counts) + k)
    return MixtureParams(weights, means, covariances)


class _Peaks(NamedTuple):
    """Density peaks of the data: locations (P, D), excess star counts (P,), kernel width (D,)."""

    locations: Any
    excess: Any
    bandwidth: Any


def _mean_shift(z, w, h):
    """Mean-shift of every row of ``z`` (M, D) uphill on the Gaussian kernel density (width
    ``h``) of the rows with ``w`` (M,) = 1, in float32: the modes (M, D), the weighted count of
    rows within the narrow kernel of each mode (M,) and within a kernel of width 1 (M,).

    ``z`` is centred, in units of each feature's spread: positions are needed to a small
    fraction of ``h`` (0.06-0.2 here), and centring keeps the expansion of the squared
    distance from cancelling. float32 runs the search 2.3-2.7x faster than float64 on CPU
    (2048 rows, D = 1-8, 30 steps: 0.29-0.33 s -> 0.11-0.15 s on 2 cores). HIGHEST keeps
    GPUs from computing the products in TF32 (a 10-bit mantissa).
    """
    z = z.astype(jnp.float32)
    w = w.astype(jnp.float32)
    h = jnp.asarray(h, jnp.float32)
    zz = jnp.sum(z**2, axis=1)

    def kernel(p, width):
        cross = jnp.matmul(p, z.T, precision=lax.Precision.HIGHEST)
        r2 = jnp.sum(p**2, axis=1)[:, None] + zz[None, :] - 2.0 * cross
        return jnp.exp(-0.5 * jnp.maximum(r2, 0.0) / width**2) * w[None, :]

    def shift(_, p):
        k = kernel(p, h)
        total = jnp.maximum(jnp.sum(k, axis=1), jnp.finfo(jnp.float32).tiny)
        return jnp.matmul(k, z, precision=lax.Precision.HIGHEST) / total[:, None]

    modes = lax.fori_loop(0, _MEAN_SHIFT_STEPS, shift, z)
    return modes, jnp.sum(kernel(modes, h), axis=1), jnp.sum(kernel(modes, jnp.float32(1.0)), axis=1)


def _density_peaks(model: _Model, static: _Static) -> _Peaks:
    """The ``n_peaks`` most significant local over-densities of the stars (mean-shift).

    On at most ``_PEAK_SAMPLE`` stars (rows evenly spaced through the catalogue: the whole
    catalogue up to that size), in standardised units: every star is moved uphill on a
    Gaussian kernel density estimate of narrow bandwidth ``h`` (mean-shift) until it
    sits on a local maximum. Each maximum is scored by its excess over a broad density
    (bandwidth 1, the scale of the whole sample): ``c`` stars inside the narrow kernel
    against ``b`` expected there from the broad density, significance
    ``(c - b) / sqrt(b + 1)``. The most significant maxima are kept, each at least
    ``2 h`` from those kept before. A k-means++ seed cannot put a narrow component on a
    small, sharp over-density (a faint cluster in a broad field); a start placed on one
    of these peaks can.
    """
    d = static.n_features
    x = model.values.reshape(-1, d)
    sw = model.sample_weight.reshape(-1)
    n_rows = x.shape[0]
    m = min(n_rows, _PEAK_SAMPLE)
    # Static, evenly spaced over every row (a catalogue sorted by a column is still sampled whole).
    rows = np.unique(np.linspace(0, n_rows - 1, m).round().astype(int))
    z = x[rows] / model.feature_scale
    w = (sw[rows] > 0).astype(z.dtype)
    n_used = jnp.maximum(jnp.sum(w), 1.0)
    h = _PEAK_BANDWIDTH * n_used ** (-1.0 / (d + 4))
    centre = jnp.sum(z * w[:, None], axis=0) / n_used
    modes, inside, broad = _mean_shift(z - centre, w, h)
    modes = modes.astype(z.dtype) + centre
    inside = inside.astype(z.dtype)
    expected = broad.astype(z.dtype) * h**d
    score = jnp.where(w > 0, (inside - expected) / jnp.sqrt(expected + 1.0), -jnp.inf)

    def pick(score, _):
        i = jnp.argmax(score)
        far = jnp.sum((modes - modes[i]) ** 2, axis=1) > (2.0 * h) ** 2
        return jnp.where(far, score, -jnp.inf), (modes[i], inside[i] - expected[i])

    _, (locations, excess) = lax.scan(pick, score, None, length=static.n_peaks)
    scaled = n_used / jnp.maximum(jnp.sum(sw), 1e-300)  # sample counts -> all stars
    return _Peaks(locations * model.feature_scale, excess / scaled, h * model.feature_scale)


def _peak_start(key, location, excess, bandwidth, model: _Model, static: _Static):
    """A narrow component on one density peak, the other K - 1 from k-means++ on all stars."""
    k = static.n_components
    rest = _kmeans_init(key, model, static, "kmeans++", k - 1)
    fraction = jnp.clip(excess / model.total_weight, 0.02, 0.5)
    narrow = MixtureParams(fraction[None], location[None], jnp.diag(bandwidth**2)[None])
    return MixtureParams(jnp.concatenate([narrow.weights, (1.0 - fraction) * rest.weights]),
                         jnp.concatenate([narrow.means, rest.means]),
                         jnp.concatenate([narrow.covariances, rest.covariances]))


def _constrain_start(start: MixtureParams, model: _Model, static: _Static):
    """Internal parameters of a start: the background's weight appended, frozen parts from
    ``given``, and the free weights rescaled to share what the frozen ones leave."""
    k = static.n_components
    given = model.given
    weights = start.weights
    if static.has_background and weights.shape[0] == k:
        weights = jnp.concatenate([weights * (1.0 - given.weights[k]), given.weights[k:]])
    weights = jnp.where(model.frozen_weights, given.weights, weights)
    free = ~model.frozen_weights
    mass = 1.0 - jnp.sum(jnp.where(free, 0.0, weights))
    free_total = jnp.sum(jnp.where(free, weights, 0.0))
    weights = jnp.where(free, weights * mass / jnp.where(free_total > 0, free_total, 1.0),
                        weights)
    means = jnp.where(model.frozen_means[:, None], given.means, start.means)
    covs = jnp.where(model.frozen_covariances[:, None, None], given.covariances,
                     start.covariances)
    return MixtureParams(weights, means, covs)


def _starts(keys, model: _Model, static: _Static) -> MixtureParams:
    """Every start of one fit, stacked (n_starts, ...), in the order of :class:`_Static`."""
    k = static.n_components
    parts = []
    if static.n_init:
        kind = "random" if static.init == "random" else "kmeans++"
        parts.append(jax.vmap(lambda key: _kmeans_init(key, model, static, kind, k))(keys[:static.n_init]))
    if static.n_peaks:
        peaks = _density_peaks(model, static)
        def peak(key, location, excess):
            return _peak_start(key, location, excess, peaks.bandwidth, model, static)

        parts.append(jax.vmap(peak)(keys[static.n_init:static.n_init + static.n_peaks], peaks.locations,
                                    peaks.excess))
    if static.given_start:
        parts.append(jax.tree_util.tree_map(lambda a: a[None], model.given))
    stacked = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)
    return jax.vmap(lambda p: _constrain_start(p, model, static))(stacked)


def _identical_twins(starts: MixtureParams):
    """For each start, the index of the first start with bitwise the same parameters (itself
    when none comes earlier): shape (n_starts,), int32.

    k-means++ seeds that end their Lloyd iterations on the same partition give the same
    start, as do two density peaks at one place: EM from them repeats the same iterations.
    """
    leaves = [a.reshape(a.shape[0], -1) for a in jax.tree_util.tree_leaves(starts)]
    same = functools.reduce(jnp.logical_and, [jnp.all(a[:, None, :] == a[None, :, :], axis=-1)
                                              for a in leaves])  # (n_starts, n_starts)
    return jnp.argmax(same, axis=1).astype(jnp.int32)  # the first True: j itself at the latest


@partial(jax.jit, static_argnames=("static",))
def _fit_core(keys, model: _Model, static: _Static):
    # One start after another, not batched: a batched while-loop runs every start for as
    # many iterations as the slowest (8 starts of 11-141 iterations cost 8 x 141), which
    # made EM 2.2x slower at N = 2e5 and 10-25% slower at N = 1500-20000.
    starts = _starts(keys, model, static)
    twins = _identical_twins(starts)
    first = jax.tree_util.tree_map(lambda a: a[0], starts)
    done = jax.tree_util.tree_map(lambda a: jnp.zeros((twins.shape[0], *a.shape), a.dtype),
                                  jax.eval_shape(lambda p: _run_em(p, model, static), first))

    def one(done, j):
        # EM is deterministic: a start identical to an earlier one gets that start's run,
        # bitwise, without repeating it (NGC 288-like data, N = 1500: 54 of 266 iterations;
        # the conditional runs only its taken branch).
        start = jax.tree_util.tree_map(lambda a: a[j], starts)
        run = lax.cond(twins[j] == j, lambda: _run_em(start, model, static),
                       lambda: jax.tree_util.tree_map(lambda a: a[twins[j]], done))
        return jax.tree_util.tree_map(lambda a, r: a.at[j].set(r), done, run), None

    return lax.scan(one, done, jnp.arange(twins.shape[0]))[0]


_FIT_PROGRAMS: dict = {}


def _fit_program(static: _Static, impl: str):
    """The restarts' program for one static configuration; stored on disk when the
    compilation cache is on (:mod:`bayesmix._programs`), so a repeated run skips tracing.
    The key travels as raw key data (of PRNG implementation ``impl``), which a stored
    program can take, and is split into the starts' keys inside it: the same keys as a
    split outside, without a split program of its own to compile or load in each process."""
    if (static, impl) not in _FIT_PROGRAMS:
        n_starts = max(static.n_init + static.n_peaks, 1)

        def fit(key_data, model):
            keys = jax.random.split(jax.random.wrap_key_data(key_data, impl=impl), n_starts)
            return _fit_core(keys, model, static)

        _FIT_PROGRAMS[static, impl] = _programs.Program("em_fit", jax.jit(fit), f"{static!r}|{impl}",
                                                        (_Model, _Loop, MixtureParams))
    return _FIT_PROGRAMS[static, impl]


@partial(jax.jit, static_argnames=("static",))
def _step_core(params, model: _Model, static: _Static):
    return _step(params, model, static)


# --------------------------------------------------------------------------- boundary


def _component_mask(name, value, n, default=False):
    if value is None:
        return np.full(n, default)
    arr = np.asarray(value)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"{name} as a boolean mask must have shape ({n},); got {arr.shape}.")
        return arr.copy()
    try:
        idx = np.asarray(arr, dtype=int).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be component indices or a boolean mask ({exc}).") from exc
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise ValueError(f"{name} has indices outside 0..{n - 1}: {idx.tolist()}.")
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


def _count_distinct(values, sample_weight, limit):
    """Number of distinct rows (with positive weight), or ``limit`` if there are at least that."""
    x = values[sample_weight > 0]
    head = x[: max(100 * limit, 1000)]
    if len(np.unique(head, axis=0)) >= limit:
        return limit
    # A random projection separates distinct rows with probability one and needs a
    # 1-D unique only (fast for a million stars).
    proj = x @ np.random.default_rng(12345).normal(size=x.shape[1])
    return len(np.unique(proj))


def _resolve_prior_cov(name, value, d):
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = arr * np.eye(d)
    elif arr.shape == (d,):
        arr = np.diag(arr)
    if arr.shape != (d, d):
        raise ValueError(f"{name} must be a scalar, ({d},) or ({d}, {d}); got shape {arr.shape}.")
    if not np.isfinite(arr).all() or not np.allclose(arr, arr.T):
        raise ValueError(f"{name} must be finite and symmetric.")
    if np.linalg.eigvalsh(arr)[0] <= 0:
        raise ValueError(f"{name} must be positive definite; got {arr.tolist()}.")
    return arr


def n_free_parameters(n_components, n_features, *, frozen_weights=None, frozen_means=None,
                      frozen_covariances=None, background=None):
    """Number of free parameters of a full-covariance mixture (for BIC/AIC).

    Parameters
    ----------
    n_components, n_features : int
    frozen_weights, frozen_means, frozen_covariances : bool array (n_components,), optional
    background : UniformBackground or GaussianBackground, optional
        Its weight counts when fitted; its shape is fixed.

    Returns
    -------
    int
        ``(free weights - 1)`` (sum to one; none when at most one weight is free)
        ``+ n_features * free means + n_features (n_features + 1) / 2 * free covariances``.
    """
    k, d = n_components, n_features
    fw = _component_mask("frozen_weights", frozen_weights, k)
    fm = _component_mask("frozen_means", frozen_means, k)
    fc = _component_mask("frozen_covariances", frozen_covariances, k)
    n_free_w = int((~fw).sum()) + int(background is not None and background.fit_weight)
    return (max(n_free_w - 1, 0) + d * int((~fm).sum()) + d * (d + 1) // 2 * int((~fc).sum()))


# What fit_em's options accept, checked by validate_params before any work (never inside jit).
_N_COMPONENTS = {"n_components": Interval(Integral, 1, None)}
_OPTION_CONSTRAINTS = {
    "max_iter": Interval(Integral, 0, None),
    "tol": Interval(Real, 0, None),
    "n_init": Interval(Integral, 1, None),
    "kmeans_iter": Interval(Integral, 0, None),
    "n_peaks": Interval(Integral, 0, None),
    "chunk_size": Interval(Integral, 1, None),
    "w": [Interval(Real, 0, None), None],
    "init": [Options(EM_INITS), None],
}


class _Stars(NamedTuple):
    """The checked stars as numpy arrays, with their weighted moments."""

    values: np.ndarray  # (N, D)
    error_covs: np.ndarray  # (N, D, D)
    sample_weight: np.ndarray  # (N,)
    total: float  # sum of sample_weight
    obs_cov: np.ndarray  # (D, D) weighted covariance of the values
    spread: np.ndarray  # (D,) weighted variance of the values plus the mean error variance
    observed: np.ndarray | None = None  # (N, D) bool; None when nothing is missing


class _Background(NamedTuple):
    """The checked background (None without one) and what the fit needs of it."""

    background: Any  # GaussianBackground with its mean and covariance as arrays
    log_density: np.ndarray  # (N,); zeros without a background
    weight: float  # initial (or fixed) weight; 0 without a background


class _Regularisation(NamedTuple):
    """Bovy's ``w`` and the MAP prior as the M-step's pseudo-counts."""

    w: float
    psi: np.ndarray  # (K, D, D) added to each covariance numerator
    prior_count: np.ndarray  # (K,) added to each covariance denominator
    alpha_minus_one: np.ndarray  # (Kb,) Dirichlet pseudo-counts of the weights


class _Frozen(NamedTuple):
    """Which parts stay at ``init_params``, and the given start itself."""

    weights: np.ndarray  # (Kb,) bool; the background's last
    means: np.ndarray  # (K,) bool
    covariances: np.ndarray  # (K,) bool
    given: MixtureParams  # weights (Kb,) summing to one with the background's; zeros when none given


class _Blocks(NamedTuple):
    """The stars in ``n_blocks`` equal blocks of ``block`` rows (padding rows weigh 0)."""

    n_blocks: int
    block: int
    values: np.ndarray  # (n_blocks, block, D)
    error_covs: np.ndarray  # (n_blocks, block, D, D)
    sample_weight: np.ndarray  # (n_blocks, block)
    log_background: np.ndarray  # (n_blocks, block)
    observed: np.ndarray | None = None  # (n_blocks, block, D) 1.0 where measured


class _Prepared(NamedTuple):
    static: _Static
    model: _Model
    w: float
    n_parameters: int
    total: float
    scale: np.ndarray  # (D,) per-feature spread, for comparing fitted components


def _check_options(n_components, options: EMOptions, init_params) -> tuple[int, str]:
    """``(K, init)``: the checked number of components and the start ``init`` resolves to."""
    validate_params(_N_COMPONENTS, {"n_components": n_components}, "fit_em")
    validate_params(_OPTION_CONSTRAINTS, {name: getattr(options, name) for name in _OPTION_CONSTRAINTS},
                    "fit_em")
    init = options.init if options.init is not None else ("given" if init_params is not None else "auto")
    if init == "given" and init_params is None:
        raise ValueError('init="given" needs init_params (a MixtureParams or its three arrays).')
    if init == "given" and options.n_init > 1:
        raise ValueError(
            f'n_init={options.n_init} restarts from init="given" would all be identical; use n_init=1 '
            'or init="kmeans++"/"random" (frozen parts are still taken from init_params).'
        )
    return int(n_components), init


def _stars(data, errors, sample_weight, k: int) -> _Stars:
    """The stars and their weights, checked to support ``k`` components."""
    obs = as_observations(data, errors)
    values = np.asarray(obs.values)
    covs = np.asarray(obs.error_covs)
    n = values.shape[0]
    if obs.weight is not None:  # an Observations that carries its stars' weights (checked already)
        if sample_weight is not None:
            raise ValueError("the data carry per-star weights (Observations.weight) and sample_weight is "
                             "given too; pass the weights once.")
        sw = np.asarray(obs.weight, dtype=float)
    else:
        sw = np.ones(n) if sample_weight is None else _checked_weight(sample_weight, n, "sample_weight")
    n_used = int((sw > 0).sum())
    if k > n_used:
        raise ValueError(
            f"n_components={k} exceeds the number of stars ({n_used}); use at most {n_used} "
            "components or add stars."
        )
    n_distinct = _count_distinct(values, sw, k)
    if k > n_distinct:
        raise ValueError(
            f"n_components={k} exceeds the number of distinct star values ({n_distinct}); "
            f"duplicated stars cannot support more components: use n_components <= {n_distinct}."
        )
    total = float(sw.sum())
    dx = values - (sw @ values) / total
    obs_cov = np.einsum("i,ia,ib->ab", sw, dx, dx) / total
    err_var = np.einsum("i,iaa->a", sw, covs) / total
    observed = None if obs.observed is None else np.asarray(obs.observed)
    return _Stars(values, covs, sw, total, obs_cov, np.diag(obs_cov) + err_var, observed)


def _resolve_background(background, stars: _Stars) -> _Background:
    """The background checked against the stars, and each star's log density under it."""
    values, d = stars.values, stars.values.shape[1]
    if background is None:
        return _Background(None, np.zeros(values.shape[0]), 0.0)
    if not isinstance(background, (UniformBackground, GaussianBackground)):
        raise ValueError("background must be a UniformBackground or a GaussianBackground.")
    weight = float(background.weight)
    if not 0.0 < weight < 1.0:
        raise ValueError(f"background.weight must be in (0, 1); got {background.weight!r}.")
    if isinstance(background, UniformBackground):
        low = np.asarray(background.low, dtype=float).reshape(-1)
        high = np.asarray(background.high, dtype=float).reshape(-1)
        if low.shape != (d,) or high.shape != (d,) or not (high > low).all():
            raise ValueError(
                f"UniformBackground needs low and high of shape ({d},) with high > low; "
                f"got {low.tolist()} and {high.tolist()}."
            )
        outside = ((values < low) | (values > high)).any(axis=1)
        if outside.any():
            logger.warning("%d star(s) lie outside the UniformBackground box; the constant "
                           "density is used for them too.", int(outside.sum()))
    else:
        mean = np.asarray(background.mean, dtype=float).reshape(-1)
        cov = _resolve_prior_cov("GaussianBackground.covariance", background.covariance, d)
        if mean.shape != (d,):
            raise ValueError(f"GaussianBackground.mean must have shape ({d},); got {mean.shape}.")
        background = dataclasses.replace(background, mean=mean, covariance=cov)
    log_density = np.asarray(background.log_density(Observations(jnp.asarray(values),
                                                                 jnp.asarray(stars.error_covs))))
    return _Background(background, log_density, weight)


def _resolve_w(options: EMOptions, prior, spread) -> float:
    """Bovy's ``w``: the given one, or a ridge relative to the data's spread (None)."""
    if options.w is not None:
        w = float(options.w)
    else:
        w = _AUTO_W_FRACTION * float(np.mean(spread))
        if w <= 0:
            raise ValueError(
                "every star has the same values and no measurement errors: there is no spread "
                "to fit. Pass errors, or an explicit w > 0 to fit a point mass with width sqrt(w)."
            )
    if w == 0 and prior is None:
        flat = np.flatnonzero(spread <= 0)
        if flat.size:
            raise ValueError(
                f"feature(s) {flat.tolist()} have zero variance and zero errors, so a covariance "
                "would be singular; pass w > 0 (or w=None), a MAPPrior, or drop the feature."
            )
    return w


def _map_prior(prior, spread, kb: int, has_background: bool):
    """``(alpha - 1, c, covariance mode)`` of a checked :class:`MAPPrior`."""
    if not isinstance(prior, MAPPrior):
        raise ValueError("prior must be a MAPPrior (or None for maximum likelihood).")
    alpha = np.asarray(prior.weight_concentration, dtype=float)
    if alpha.ndim == 0:
        alpha = np.full(kb, float(alpha))
    if alpha.shape != (kb,) or not np.isfinite(alpha).all() or (alpha < 1).any():
        raise ValueError(
            f"MAPPrior.weight_concentration must be >= 1 (below 1 the MAP is unbounded: "
            f"a weight can run to zero), a scalar or shape ({kb},) "
            f"(one per component{' plus the background' if has_background else ''}); got {alpha}."
        )
    strength = float(prior.covariance_strength)
    if not (np.isfinite(strength) and strength > 0):
        raise ValueError(f"MAPPrior.covariance_strength must be > 0; got {strength!r}.")
    if prior.covariance_mode is None:
        # A feature without spread gets a variance relative to the others' (not an absolute one).
        unit = spread.max() if spread.max() > 0 else 1.0
        mode = np.diag(np.where(spread > 0, 0.01 * spread, 1e-6 * unit))
    else:
        mode = _resolve_prior_cov("MAPPrior.covariance_mode", prior.covariance_mode, spread.shape[0])
    return alpha - 1.0, strength, mode


def _resolve_regularisation(options: EMOptions, prior, spread, k: int, kb: int) -> _Regularisation:
    """The M-step's pseudo-counts from ``w`` and the MAP prior."""
    d = spread.shape[0]
    w = _resolve_w(options, prior, spread)
    psi = np.zeros((k, d, d))
    prior_count = np.zeros(k)
    alpha_m1 = np.zeros(kb)
    if w > 0:
        psi += w * np.eye(d)
        # Bovy's w prior counts one pseudo-star (denominator q + 1). The automatic ridge does
        # not: that would shrink every covariance by q / (q + 1), 5% at 20 stars.
        prior_count += 1.0 if options.w is not None else 0.0
    if prior is not None:
        alpha_m1, strength, mode = _map_prior(prior, spread, kb, kb > k)
        psi += strength * mode
        prior_count += strength
    return _Regularisation(w, psi, prior_count, alpha_m1)


def _resolve_frozen(k: int, d: int, frozen_weights, frozen_means, frozen_covariances, init_params,
                    bg: _Background) -> _Frozen:
    """The frozen masks, and the given start with the background's weight appended."""
    fw = _component_mask("frozen_weights", frozen_weights, k)
    fm = _component_mask("frozen_means", frozen_means, k)
    fc = _component_mask("frozen_covariances", frozen_covariances, k)
    if (fw.any() or fm.any() or fc.any()) and init_params is None:
        raise ValueError("frozen components need init_params: the values they are frozen at.")
    has_bg = bg.background is not None
    if has_bg:
        fw = np.concatenate([fw, [not bg.background.fit_weight]])
    bg_weight = [bg.weight] if has_bg else []
    if init_params is not None:
        given = check_params(*init_params)
        if given.n_components != k or given.n_features != d:
            raise ValueError(
                f"init_params has {given.n_components} components in {given.n_features} "
                f"dimensions; expected {k} in {d}."
            )
        gw = np.concatenate([np.asarray(given.weights) * (1.0 - bg.weight), bg_weight])
        given = MixtureParams(gw, np.asarray(given.means), np.asarray(given.covariances))
    else:
        given = MixtureParams(np.concatenate([np.zeros(k), bg_weight]), np.zeros((k, d)), np.zeros((k, d, d)))
    frozen_mass = float(np.sum(np.asarray(given.weights)[fw]))
    if fw.all():
        bad_mass = not math.isclose(frozen_mass, 1.0, rel_tol=1e-9)
    else:
        bad_mass = frozen_mass >= 1.0
    if fw.any() and bad_mass:
        raise ValueError(
            f"frozen weights sum to {frozen_mass:.6g}; they must leave room for the free "
            "components (sum < 1), or all weights must be frozen."
        )
    return _Frozen(fw, fm, fc, given)


def _block(stars: _Stars, log_background, chunk_size: int) -> _Blocks:
    """Equal blocks of at most ``chunk_size`` stars holding the bucket size of N
    (:func:`bayesmix._padding.bucket`): catalogues in one bucket share a compiled program."""
    n, d = stars.values.shape
    # (One block of n stars when the bucket would not fit in one block but n does.)
    padded = bucket(n) if n > int(chunk_size) or bucket(n) <= int(chunk_size) else n
    n_blocks = -(-padded // int(chunk_size))
    block = -(-padded // n_blocks)
    if n_blocks > 1:
        block = -(-block // 8) * 8
    rows = n_blocks * block
    # Padding rows copy star 0 (finite everywhere) with zero weight.
    sw = np.concatenate([stars.sample_weight, np.zeros(rows - n)])
    return _Blocks(n_blocks, block,
                   pad_rows(stars.values, rows).reshape(n_blocks, block, d),
                   pad_rows(stars.error_covs, rows).reshape(n_blocks, block, d, d),
                   sw.reshape(n_blocks, block),
                   pad_rows(log_background, rows).reshape(n_blocks, block),
                   None if stars.observed is None
                   else pad_rows(stars.observed.astype(float), rows).reshape(n_blocks, block, d))


def _prepare(data, n_components, *, errors, options: EMOptions, init_params, sample_weight,
             frozen_weights, frozen_means, frozen_covariances, background, prior) -> _Prepared:
    """Validate everything and build the static config and the traced model."""
    k, init = _check_options(n_components, options, init_params)
    stars = _stars(data, errors, sample_weight, k)
    d = stars.values.shape[1]
    bg = _resolve_background(background, stars)
    has_bg = bg.background is not None
    reg = _resolve_regularisation(options, prior, stars.spread, k, k + int(has_bg))
    frozen = _resolve_frozen(k, d, frozen_weights, frozen_means, frozen_covariances, init_params, bg)
    blocks = _block(stars, bg.log_density, options.chunk_size)
    scale = np.sqrt(stars.spread)
    scale = np.where(scale > 0, scale, 1.0)

    # "auto": k-means++ restarts, density-peak starts (a narrow component needs another one
    # beside it, so none for K = 1) and the given start when there is one.
    static = _Static(k, d, blocks.n_blocks, blocks.block, has_bg, int(options.max_iter), init,
                     n_init=0 if init == "given" else int(options.n_init),
                     kmeans_iter=int(options.kmeans_iter),
                     n_peaks=int(options.n_peaks) if init == "auto" and k > 1 else 0,
                     given_start=init == "given" or (init == "auto" and init_params is not None))
    model = _Model(
        values=device_array(blocks.values),
        error_covs=device_array(blocks.error_covs),
        sample_weight=device_array(blocks.sample_weight),
        log_background=device_array(blocks.log_background),
        frozen_weights=device_array(frozen.weights),
        frozen_means=device_array(frozen.means),
        frozen_covariances=device_array(frozen.covariances),
        alpha_minus_one=device_array(reg.alpha_minus_one),
        psi=device_array(reg.psi),
        prior_count=device_array(reg.prior_count),
        tol=device_array(float(options.tol)),
        total_weight=device_array(stars.total),
        given=MixtureParams(*(device_array(a, np.float64) for a in frozen.given)),
        # The observed spread (errors included) plus the regularisation / prior floor,
        # so that initial covariances are positive definite whenever the fit can be.
        global_cov=device_array(stars.obs_cov + reg.psi[0]),
        feature_scale=device_array(scale),
        observed=None if blocks.observed is None else device_array(blocks.observed),
    )
    n_params = n_free_parameters(k, d, frozen_weights=frozen.weights[:k], frozen_means=frozen.means,
                                 frozen_covariances=frozen.covariances, background=bg.background)
    return _Prepared(static, model, reg.w, n_params, stars.total, scale)


def _identical_pairs(params: MixtureParams, scale):
    means = np.asarray(params.means) / scale
    covs = np.asarray(params.covariances) / np.outer(scale, scale)
    k = len(means)
    tiny = 1e-9
    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            if (np.abs(means[i] - means[j]).max() <= tiny
                    and np.abs(covs[i] - covs[j]).max() <= tiny * max(np.abs(covs[i]).max(), 1e-300)):
                pairs.append((i, j))
    return pairs


def _start_kinds(static: _Static) -> tuple[str, ...]:
    """The kind of every start, in the order :func:`_starts` stacks them."""
    random_kind = "random" if static.init == "random" else "kmeans++"
    return ((random_kind,) * static.n_init + ("peak",) * static.n_peaks
            + (("given",) if static.given_start else ()))


# Two optima are one when every component of one has a partner in the other closer than this
# (Bhattacharyya distance: 0.01 is a mean shift of 0.28 sd at equal widths, or widths 1.4x
# apart at equal means) with weights within _SAME_WEIGHT. Converged starts on one optimum agree
# to ~1e-4; genuinely different optima (another star group as a component) differ by far more.
_SAME_DISTANCE = 0.01
_SAME_WEIGHT = 0.01


def _bhattacharyya(means_a, covs_a, means_b, covs_b) -> np.ndarray:
    """``[i, j]``: Bhattacharyya distance between Gaussian ``i`` of a and ``j`` of b."""
    # A relative ridge keeps it finite for (near-)singular covariances (a feature without spread).
    d = covs_a.shape[-1]
    ridge = 1e-9 * max(float(np.trace(covs_a, axis1=1, axis2=2).max()), 1e-300) / d * np.eye(d)
    covs_a, covs_b = covs_a + ridge, covs_b + ridge
    cov = 0.5 * (covs_a[:, None] + covs_b[None, :])
    diff = means_a[:, None] - means_b[None, :]
    maha = np.einsum("ija,ija->ij", diff, np.linalg.solve(cov, diff[..., None])[..., 0])
    logdet = np.linalg.slogdet(cov)[1]
    logdet_a, logdet_b = np.linalg.slogdet(covs_a)[1], np.linalg.slogdet(covs_b)[1]
    return 0.125 * maha + 0.5 * (logdet - 0.5 * (logdet_a[:, None] + logdet_b[None, :]))


def _same_optimum(a: MixtureParams, b: MixtureParams, k: int) -> bool:
    """Whether two internal parameter sets (weights may include a background) are one optimum."""
    from scipy.optimize import linear_sum_assignment

    wa, wb = np.asarray(a.weights), np.asarray(b.weights)
    dist = _bhattacharyya(np.asarray(a.means), np.asarray(a.covariances),
                          np.asarray(b.means), np.asarray(b.covariances))
    dist = np.where(np.isfinite(dist), dist, np.inf)
    if not np.isfinite(dist).any(axis=1).all():
        return False
    rows, cols = linear_sum_assignment(np.where(np.isfinite(dist), dist, 1e300))
    if dist[rows, cols].max() >= _SAME_DISTANCE:
        return False
    weight_gap = np.abs(wa[rows] - wb[cols]).max()
    if wa.shape[0] > k:  # the background's weight
        weight_gap = max(weight_gap, abs(wa[k] - wb[k]))
    return bool(weight_gap < _SAME_WEIGHT)


def _distinct_optima(params, final_obj, final_ll, last, status, kinds, static: _Static) -> list[EMOptimum]:
    """The distinct optima of all starts, best first (starts with a non-finite objective dropped)."""
    k = static.n_components
    order = [int(r) for r in np.argsort(-np.where(np.isfinite(final_obj), final_obj, -np.inf), kind="stable")
             if np.isfinite(final_obj[r])]
    groups: list[list[int]] = []
    for r in order:
        p = MixtureParams(*(np.asarray(a[r]) for a in params))
        for group in groups:
            q = MixtureParams(*(np.asarray(a[group[0]]) for a in params))
            if _same_optimum(p, q, k):
                group.append(r)
                break
        else:
            groups.append([r])
    optima = []
    for group in groups:
        r = group[0]
        weights = np.asarray(params.weights[r])
        optima.append(EMOptimum(
            params=MixtureParams(device_array(weights[:k]), device_array(params.means[r]),
                                 device_array(params.covariances[r])),
            background_weight=float(weights[k]) if static.has_background else None,
            log_likelihood=float(final_ll[r]), log_prior=float(final_obj[r] - final_ll[r]),
            n_iter=int(last[r]), converged=bool(status[r] == 1), starts=tuple(group),
            start_kinds=tuple(kinds[i] for i in group)))
    return optima


# --------------------------------------------------------------------------- public API


def fit_em(key, data, n_components, *, errors=None, options: EMOptions | None = None,
           init_params=None, sample_weight=None, frozen_weights=None, frozen_means=None,
           frozen_covariances=None, background=None, prior: MAPPrior | None = None,
           **option_overrides) -> EMResult:
    """Fit a Gaussian mixture to stars with per-star errors by extreme-deconvolution EM.

    Parameters
    ----------
    key : int or jax PRNG key
        Seed for the initialisations; the result is deterministic for a given key.
    data : array_like (n_stars, n_features) or (n_stars,), Observations, or a catalogue
        Measured values (validated with :func:`~bayesmix.likelihood.as_observations`
        together with ``errors``), or ready :class:`Observations`.
    n_components : int
        Number of Gaussian components K (a background is extra).
    errors : array_like, optional
        Standard errors (n_stars, n_features) or covariances
        (n_stars, n_features, n_features); None for error-free data.
    options : EMOptions, optional
        Settings; any field can also be given as a keyword (``max_iter=200``),
        overriding ``options``.
    init_params : MixtureParams or (weights, means, covariances), optional
        Starting point for ``init="given"`` and the values of frozen parts.
        ``weights`` sum to one over the Gaussian components (scaled by
        ``1 - background.weight`` when there is a background).
    sample_weight : array_like, shape (n_stars,), optional
        Non-negative per-star weights multiplying each star's log-likelihood.
    frozen_weights, frozen_means, frozen_covariances : indices or bool (n_components,), optional
        Components whose weight, mean or covariance stays at ``init_params``.
        The free weights share what the frozen ones leave.
    background : UniformBackground or GaussianBackground, optional
        A fixed-shape extra component (field stars); its weight is fitted unless
        ``fit_weight=False``.
    prior : MAPPrior, optional
        MAP mode: Dirichlet prior on the weights and an inverse-Wishart-like prior on
        the covariances, so that no component can collapse or vanish.

    Returns
    -------
    EMResult

    Warns
    -----
    EMConvergenceWarning
        When the kept restart hit ``max_iter`` before converging.
    DegenerateFitWarning
        When two fitted components are identical.

    Raises
    ------
    ValueError
        For invalid input (naming the argument and the fix), e.g. more components
        than distinct stars.
    FloatingPointError
        When every restart produced a non-finite objective.

    Examples
    --------
    >>> res = fit_em(0, values, 2, errors=sigma, n_init=4)  # doctest: +SKIP
    >>> res.means, res.bic  # doctest: +SKIP
    """
    options = _merged_options(options, option_overrides)
    key = as_key(key)
    prepared = _prepare(
        data, n_components, errors=errors, options=options, init_params=init_params,
        sample_weight=sample_weight, frozen_weights=frozen_weights, frozen_means=frozen_means,
        frozen_covariances=frozen_covariances, background=background, prior=prior)
    static = prepared.static
    out = _run_starts(key, static, prepared.model)
    ends = _restart_ends(out)
    kinds = _start_kinds(static)
    optima = _distinct_optima(out.params, ends.objective, ends.log_likelihood, ends.last, ends.status,
                              kinds, static)
    best = optima[0].starts[0]
    n_iter = int(ends.last[best])
    k = static.n_components
    weights = np.asarray(out.params.weights[best])
    hist_ll = np.asarray(out.hist_ll[best, : n_iter + 1])
    hist_obj = np.asarray(out.hist_obj[best, : n_iter + 1])
    result = EMResult(
        params=optima[0].params,
        background_weight=float(weights[k]) if static.has_background else None,
        log_likelihood=float(hist_ll[-1]),
        log_prior=float(hist_obj[-1] - hist_ll[-1]),
        log_likelihood_history=hist_ll,
        objective_history=hist_obj,
        n_iter=n_iter,
        converged=bool(ends.status[best] == 1),
        n_parameters=prepared.n_parameters,
        n_effective=prepared.total,
        w=prepared.w,
        restart_objectives=ends.objective,
        best_restart=best,
        optima=tuple(optima),
        start_kinds=kinds,
    )
    _report(result, int(ends.status[best]), static, options.tol, prepared.scale)
    return result


def _merged_options(options: EMOptions | None, overrides: dict) -> EMOptions:
    """``options`` (default :class:`EMOptions`) with keyword overrides of its fields."""
    options = options if options is not None else EMOptions()
    if not overrides:
        return options
    unknown = set(overrides) - {f.name for f in dataclasses.fields(EMOptions)}
    if unknown:
        raise TypeError(f"fit_em() got unexpected keyword argument(s) {sorted(unknown)}.")
    return dataclasses.replace(options, **overrides)


def _run_starts(key, static: _Static, model: _Model) -> _Loop:
    """Every start's EM run, on the host (one compiled program; the key travels as key data)."""
    impl = str(jax.random.key_impl(key))
    return jax.device_get(_fit_program(static, impl)(np.asarray(jax.random.key_data(key)), model))


class _RestartEnds(NamedTuple):
    last: np.ndarray  # (n_starts,) iteration of each start's returned parameters
    status: np.ndarray  # (n_starts,) _Loop.status at the end
    objective: np.ndarray  # (n_starts,) objective at ``last`` (NaN when none is finite)
    log_likelihood: np.ndarray  # (n_starts,) log-likelihood at ``last``


def _restart_ends(out: _Loop) -> _RestartEnds:
    """Where each start ended; raises when no start has a finite objective."""
    status = np.asarray(out.status)
    # For a restart stopped by a non-finite objective, the kept params are the
    # previous (finite) ones.
    last = np.where(status == 2, np.asarray(out.t) - 1, np.asarray(out.t))
    objective = np.array([out.hist_obj[r, i] if i >= 0 else np.nan for r, i in enumerate(last)])
    log_lik = np.array([out.hist_ll[r, i] if i >= 0 else np.nan for r, i in enumerate(last)])
    if not np.isfinite(objective).any():
        raise FloatingPointError(
            "every restart gave a non-finite log-likelihood (a covariance became singular). "
            "Use w=None or w > 0, or a MAPPrior, or fewer components."
        )
    return _RestartEnds(last, status, objective, log_lik)


def _not_converged_message(status: int, n_iter: int, change: float, max_iter: int, tol: float) -> str:
    if status == 2:
        return (f"EM stopped: the objective became non-finite after iteration {n_iter} (a "
                "covariance collapsed onto too few stars); the last finite parameters are "
                "returned. Use w=None or w > 0, a MAPPrior, or fewer components.")
    if n_iter == 0:
        return "no iteration was run (max_iter=0): the returned parameters are the initial ones."
    return (f"EM did not converge: max_iter={max_iter} was reached and the objective "
            f"still changed by {change:.3g} > tol={tol:.3g} in the last iteration. "
            "Raise max_iter or loosen tol (slow convergence often means more components "
            "than the data support).")


def _report(result: EMResult, status: int, static: _Static, tol: float, scale) -> None:
    """Log the fit; warn when it did not converge or has identical components."""
    k = static.n_components
    if len(result.optima) > 1:
        logger.info("EM K=%d: %d distinct optima; objectives %s", k, len(result.optima),
                    [round(o.objective, 3) for o in result.optima])
    logger.info("EM K=%d: log L = %.6f after %d iterations (%s), best of %d restart(s)",
                k, result.log_likelihood, result.n_iter,
                "converged" if result.converged else "not converged", static.n_init)
    # stacklevel 3: the warnings point at fit_em's caller.
    if not result.converged:
        hist_obj = result.objective_history
        change = float(abs(hist_obj[-1] - hist_obj[-2])) if len(hist_obj) > 1 else float("nan")
        warnings.warn(EMConvergenceWarning(
            _not_converged_message(status, result.n_iter, change, static.max_iter, tol),
            n_iter=result.n_iter, max_iter=static.max_iter, tol=tol, last_change=change,
            log_likelihood=result.log_likelihood), stacklevel=3)
    pairs = _identical_pairs(result.params, scale)
    if pairs:
        warnings.warn(DegenerateFitWarning(
            f"components {pairs} converged to identical means and covariances: the data "
            "support fewer components. Use a smaller n_components (or a MAPPrior).",
            pairs=pairs), stacklevel=3)
    weights = np.asarray(result.params.weights)
    empty = np.flatnonzero(weights * result.n_effective < 1e-6)
    if empty.size:
        logger.warning("component(s) %s hold no stars (weight %s)", empty.tolist(),
                       weights[empty].tolist())


def complete_start(data, means, *, covariances=None, weights=None, errors=None) -> MixtureParams:
    """A whole EM start from given means, the missing parts from the data.

    Parameters
    ----------
    data : array_like (n_stars, n_features), Observations or Catalogue
    means : array_like (n_components, n_features)
    covariances : array_like (n_components, n_features, n_features), optional
        Intrinsic covariances. Default: the data's covariance (errors included) divided
        by ``n_components ** (2 / n_features)``, as the k-means++ starts begin.
    weights : array_like (n_components,), optional
        Normalised to sum to one. Default: equal.
    errors : array_like, optional
        As for :func:`fit_em`, when ``data`` is an array.

    Returns
    -------
    MixtureParams
        Checked (finite means, positive weights, positive-definite covariances).

    Examples
    --------
    >>> start = complete_start(values, [[-45.0], [0.0]], errors=sigma)  # doctest: +SKIP
    >>> fit_em(0, values, 2, errors=sigma, init_params=start, init="auto")  # doctest: +SKIP
    """
    obs = as_observations(data, errors)
    values = np.asarray(obs.values)
    d = values.shape[1]
    means = np.asarray(means, dtype=float)
    if means.ndim == 1 and d == 1:
        means = means[:, None]
    if means.ndim != 2 or means.shape[1] != d:
        raise ValueError(f"means must have shape (n_components, {d}); got {means.shape}.")
    k = means.shape[0]
    if covariances is None:
        spread = np.cov(values, rowvar=False).reshape(d, d) + np.mean(np.asarray(obs.error_covs), axis=0)
        covariances = np.broadcast_to(spread / k ** (2.0 / d), (k, d, d))
    if weights is None:
        weights = np.full(k, 1.0 / k)
    weights = np.asarray(weights, dtype=float)
    if weights.shape != (k,) or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ValueError(f"weights must be {k} positive numbers (one per component); got {weights.tolist()}.")
    return check_params(weights / weights.sum(), means, covariances)


def em_step(params: MixtureParams, data: Observations, *, w: float = 0.0, sample_weight=None):
    """One extreme-deconvolution EM iteration (maximum likelihood, optional Bovy ``w``).

    Parameters
    ----------
    params : MixtureParams
        Current weights (K,), means (K, D), covariances (K, D, D).
    data : Observations
        values (N, D), error_covs (N, D, D) (zeros for plain EM).
    w : float
        Bovy regularisation (see :class:`EMOptions`); 0 for the plain XD step.
    sample_weight : array_like, shape (N,), optional

    Returns
    -------
    new_params : MixtureParams
    log_likelihood : float
        Log-likelihood of the *input* ``params`` (computed in the E-step).
    """
    params = check_params(*params)
    data = as_observations(data)
    n, d = data.n_stars, data.n_features
    k = params.n_components
    if params.n_features != d:
        raise ValueError(f"params are {params.n_features}-dimensional but data has {d} features.")
    sw = jnp.ones(n) if sample_weight is None else jnp.asarray(sample_weight, dtype=jnp.float64)
    if sw.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},); got {sw.shape}.")
    if not (np.isfinite(w) and w >= 0):
        raise ValueError(f"w must be a finite number >= 0; got {w!r}.")
    static = _Static(k, d, 1, n, False, 1, "given", n_init=0, kmeans_iter=0, given_start=True)
    model = _Model(
        values=data.values[None], error_covs=data.error_covs[None], sample_weight=sw[None],
        log_background=jnp.zeros((1, n)), frozen_weights=jnp.zeros(k, bool),
        frozen_means=jnp.zeros(k, bool), frozen_covariances=jnp.zeros(k, bool),
        alpha_minus_one=jnp.zeros(k), psi=jnp.broadcast_to(w * jnp.eye(d), (k, d, d)),
        prior_count=jnp.full(k, 1.0 if w > 0 else 0.0), tol=jnp.zeros(()),
        total_weight=jnp.sum(sw), given=params, global_cov=jnp.eye(d),
        feature_scale=jnp.ones(d),
        observed=None if data.observed is None else jnp.asarray(data.observed, jnp.float64)[None])
    ll, _lp, new = _step_core(params, model, static)
    return new, float(ll)


def scan_n_components(key, data, k_max, *, k_min=1, errors=None, return_fits=False,
                      **fit_kwargs):
    """Fit K = k_min..k_max components and tabulate BIC and AIC.

    Parameters
    ----------
    key : int or jax PRNG key
        Each K uses ``jax.random.fold_in(key, K)``.
    data, errors
        As for :func:`fit_em`.
    k_max : int
    k_min : int
    return_fits : bool
        Also return the :class:`EMResult` of every K.
    **fit_kwargs
        Passed to :func:`fit_em` (``n_init=``, ``prior=``, ``background=``, ...).

    Returns
    -------
    table : astropy.table.Table
        Columns ``n_components``, ``log_likelihood``, ``n_parameters``, ``bic``, ``aic``,
        ``delta_bic``, ``delta_aic``, ``converged``, ``n_iter``; ``meta`` holds
        ``best_bic`` and ``best_aic`` (the K with the smallest value).
    fits : dict of int to EMResult
        Only with ``return_fits=True``.

    Examples
    --------
    >>> from bayesmix.em import scan_n_components
    >>> from bayesmix.simulate import simulate_mixture, thin_thick_disc_params
    >>> sim = simulate_mixture(0, thin_thick_disc_params(), 2000, error_scale=[0.08, 0.05])  # doctest: +SKIP
    >>> scan = scan_n_components(1, sim.catalogue, k_max=3, n_init=2)  # doctest: +SKIP
    >>> scan["n_components", "bic", "delta_bic"]  # doctest: +SKIP
    >>> scan.meta["best_bic"]  # doctest: +SKIP
    2
    """
    from astropy.table import Table  # astropy is heavy; only the scan needs it

    if not isinstance(k_max, (int, np.integer)) or not isinstance(k_min, (int, np.integer)):
        raise ValueError(f"k_min and k_max must be integers; got {k_min!r}, {k_max!r}.")
    if not 1 <= k_min <= k_max:
        raise ValueError(f"need 1 <= k_min <= k_max; got k_min={k_min}, k_max={k_max}.")
    key = as_key(key)
    obs = as_observations(data, errors)
    fits = {}
    for k in range(int(k_min), int(k_max) + 1):
        fits[k] = fit_em(jax.random.fold_in(key, k), obs, k, **fit_kwargs)
    ks = np.array(sorted(fits))
    bic = np.array([fits[k].bic for k in ks])
    aic = np.array([fits[k].aic for k in ks])
    table = Table({
        "n_components": ks,
        "log_likelihood": np.array([fits[k].log_likelihood for k in ks]),
        "n_parameters": np.array([fits[k].n_parameters for k in ks]),
        "bic": bic,
        "aic": aic,
        "delta_bic": bic - bic.min(),
        "delta_aic": aic - aic.min(),
        "converged": np.array([fits[k].converged for k in ks]),
        "n_iter": np.array([fits[k].n_iter for k in ks]),
    })
    table.meta["best_bic"] = int(ks[np.argmin(bic)])
    table.meta["best_aic"] = int(ks[np.argmin(aic)])
    return (table, fits) if return_fits else table
