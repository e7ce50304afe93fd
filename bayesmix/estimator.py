"""A scikit-learn estimator for Gaussian mixtures of data with measurement errors.

:class:`DeconvolvedGaussianMixture` is a thin object shell over the functional layers:
:func:`bayesmix.em.fit_em` (extreme-deconvolution EM), and for ``method="nuts"``
:func:`bayesmix.models.mixture_model` + :func:`bayesmix.sampling.sample_posterior`,
:mod:`bayesmix.diagnostics` and :mod:`bayesmix.membership`. Every density it reports
comes from :mod:`bayesmix.likelihood` (``log_likelihood_per_star``, ``responsibilities``).

It follows ``sklearn.mixture.GaussianMixture`` (same method names, attributes and
``sample``) with errors passed as a fit parameter, ``fit(X, X_err=...)``, like
``sample_weight``: so ``clone``, ``Pipeline``, ``GridSearchCV`` (with metadata routing
for ``X_err``) and ``check_estimator`` work.

Compiled shapes. JAX compiles one program per array shape, and an EM program takes
seconds to compile. Stars are therefore padded to a few bucket sizes (powers of two from
256 to 65536, then multiples of 16384; :mod:`bayesmix._padding`): EM pads with zero-weight
copies of star 0 (which :func:`~bayesmix.em.fit_em` excludes exactly, as it does for its
own blocks), and the per-star evaluations run in padded chunks. A new sample size then
rarely recompiles.

Units and scaling. astropy Tables and Quantities are turned into plain numbers at the
boundary (:func:`_as_plain_features`, :func:`_as_plain_errors`), with each feature's unit
kept in ``feature_units_``; nothing astropy reaches the compiled programs. A scaling step
in a ``Pipeline`` changes X but not ``X_err`` (metadata is routed unchanged), so ``fit``
refuses standardized X with errors unless told the errors were scaled too, and
``standardize=True`` does the scaling inside, consistently for X, ``X_err`` and
``reg_covar``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import sys
from numbers import Integral, Real

import jax
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from bayesmix import _x64  # noqa: F401  (float64 before any array is made)
from bayesmix._choices import ESTIMATOR_METHODS, ESTIMATOR_MISSING_FEATURES
from bayesmix._constraints import Boolean, Interval, Options, validate_params
from bayesmix._padding import bucket, chunk_rows, chunks
from bayesmix.config import MAX_EM_STARTS
from bayesmix.em import EMResult, MAPPrior, complete_start, fit_em, n_free_parameters
from bayesmix.likelihood import (
    MixtureParams,
    Observations,
    as_observations,
    log_likelihood_per_star,
    responsibilities,
    star_rows,
)

__all__ = ["DeconvolvedGaussianMixture"]

logger = logging.getLogger(__name__)

# Accepted init_params spellings -> bayesmix.em's start. scikit-learn's "k-means++" (seeding
# only) and "kmeans" (Lloyd to convergence) both map to the k-means++ seeding + Lloyd start;
# its "random_from_data" (random stars as means) is what bayesmix calls "random".
_INIT_PARAMS = {"auto": "auto", "kmeans++": "kmeans++", "k-means++": "kmeans++", "kmeans": "kmeans++",
                "random": "random", "random_from_data": "random"}
# X counts as StandardScaler output when every column mean is within this (times
# max(1, mean |x|)) of 0 and every standard deviation within this of 1: rounding leaves
# ~1e-15, while real data essentially never lie this close by chance.
_STANDARDIZED_TOL = 1e-8
# Largest |value| and standard error accepted. The likelihood squares both (variances,
# squared distances, sums of them over features and stars), and squares of numbers beyond
# ~1.3e154 overflow float64; the fit itself runs in standardised units.
_MAX_MAGNITUDE = 1e153
# Attributes that only a posterior fit has; see __getattr__.
_POSTERIOR_ATTRIBUTES = ("posterior_", "convergence_")
# What the parameters that every fit uses accept, checked at the start of fit (validate_params).
# The sampler's settings are checked by sample_posterior when method="nuts" uses them.
_PARAMETER_CONSTRAINTS = {
    "n_components": Interval(Integral, 1, None),
    "method": Options(ESTIMATOR_METHODS),
    "tol": Interval(Real, 0, None),
    "reg_covar": [Interval(Real, 0, None, why=(
        " reg_covar is a variance in squared feature units; None adds the automatic ridge.")), None],
    "max_iter": Interval(Integral, 0, None),
    "n_init": Interval(Integral, 1, MAX_EM_STARTS, why=(
        " All starts run at once, each with its own per-star working arrays, so memory grows with "
        "n_init (100000 starts passed 3 GB); a few to tens of starts find the optimum.")),
    "init_params": Options(tuple(_INIT_PARAMS), why=(
        " 'k-means++' and 'kmeans' select 'kmeans++', 'random_from_data' selects 'random'.")),
    "standardize": Boolean(),
    "errors_standardized": Boolean(),
    "missing_features": Options(ESTIMATOR_MISSING_FEATURES, why=(
        " 'marginalise' keeps rows with NaN in some features and uses the features they have.")),
}


def _padded_range(start: int, stop: int, n_rows: int) -> np.ndarray:
    """Row indices ``start..stop-1`` padded to ``n_rows`` by repeating the first (as ``pad_rows``)."""
    return np.concatenate([np.arange(start, stop), np.full(max(0, n_rows - (stop - start)), start)])


@jax.jit
def _per_star(params: MixtureParams, data: Observations):
    # Both reductions of the same log_joint; XLA computes it once.
    return log_likelihood_per_star(params, data), responsibilities(params, data)


@jax.jit
def _responsibilities_over_draws(weights, means, covariances, data: Observations):
    return jax.vmap(lambda w, m, c: responsibilities(MixtureParams(w, m, c), data))(
        weights, means, covariances)


def _check_y(y, shape, method):
    """Refuse a ``y`` that looks like measurement errors (astroML's ``fit(X, Xerr)``)."""
    if y is None:
        return
    _, table = _astropy_classes()
    if _isinstance(y, table) and y.colnames and all(y[c].dtype.kind == "f" and y[c].ndim == 1
                                                    for c in y.colnames):
        y = np.column_stack([np.asarray(y[c]) for c in y.colnames])  # a Table of errors, one column each
    try:
        arr = np.asarray(y)
    except (TypeError, ValueError):
        return  # not an array at all, so not errors: ignored like any y (scikit-learn's convention)
    n, d = shape
    looks_like_errors = arr.shape in ((n, d), (n, d, d)) or (d == 1 and arr.shape == (n,))
    if arr.dtype.kind == "f" and looks_like_errors:
        raise TypeError(
            f"the second positional argument of {method} is y (ignored, scikit-learn's convention); "
            f"pass the errors as {method}(X, X_err=...)."
        )


# ----------------------------------------------------------------------- astropy inputs


def _astropy_classes():
    """``(Quantity, Table)`` when astropy is loaded, else ``(None, None)``.

    An astropy object can only exist once astropy has been imported, so looking in
    ``sys.modules`` never imports it: fits on plain arrays do not pay astropy's import.
    """
    units, table = sys.modules.get("astropy.units"), sys.modules.get("astropy.table")
    return getattr(units, "Quantity", None), getattr(table, "Table", None)


def _isinstance(obj, cls) -> bool:
    return cls is not None and isinstance(obj, cls)


def _feature_name(j: int, names) -> str:
    return str(names[j]) if names is not None else f"x{j}"


def _table_columns(table, what: str):
    """``(names, 1-D float arrays, units)`` of every column of an astropy Table, in order."""
    quantity, _ = _astropy_classes()
    names, columns, units = [], [], []
    for name in table.colnames:
        col = table[name]
        if col.dtype.kind not in "iuf":
            raise ValueError(
                f"{what} column {name!r} is not numeric (dtype {col.dtype}); every column of the Table "
                f"is a feature. Select the numeric ones, e.g. {what}[['a', 'b']], or drop {name!r}.")
        if col.ndim != 1:
            raise ValueError(f"{what} column {name!r} has shape {col.shape}: one value per row is needed; "
                             "split it into one column per feature.")
        n_masked = int(np.count_nonzero(getattr(col, "mask", False)))
        if n_masked:
            raise ValueError(f"{what} column {name!r} has {n_masked} masked entries; drop those rows or "
                             "fill them before fitting.")
        values = col.value if _isinstance(col, quantity) else col
        names.append(name)
        columns.append(np.asarray(values, dtype=np.float64))
        units.append(getattr(col, "unit", None))
    return names, columns, units


def _as_plain_features(X):
    """``(X, units)``: an astropy Table as a DataFrame of its columns (so scikit-learn records
    the column names as ``feature_names_in_``) and a Quantity as its values, each with one
    unit (or None) per feature; anything else unchanged, with ``units`` None."""
    quantity, table = _astropy_classes()
    if _isinstance(X, table):
        import pandas as pd

        names, columns, units = _table_columns(X, "X")
        return pd.DataFrame(dict(zip(names, columns, strict=True))), tuple(units)
    if _isinstance(X, quantity):
        values = np.asarray(X.value)
        return values, (X.unit,) * (values.shape[-1] if values.ndim == 2 else 1)
    return X, None


def _unit_factor(unit, target, what: str) -> float:
    """Factor taking numbers in ``unit`` to ``target`` (None: no unit, i.e. dimensionless).

    Plain numbers (``unit`` None) are taken to be in ``target`` already.
    """
    if unit is None:
        return 1.0
    units = sys.modules["astropy.units"]
    try:
        return float(unit.to(units.dimensionless_unscaled if target is None else target))
    except ValueError as exc:  # astropy's UnitConversionError (a ValueError), or an unrecognised unit
        if target is None:
            raise ValueError(
                f"{what} is in {unit}, but the feature has no unit (X was fitted or given as plain numbers); "
                "give X units too (a Quantity, or Table columns with units), or pass plain numbers for "
                "both.") from exc
        raise ValueError(f"{what} is in {unit}, which cannot be converted to {target}; pass it in units "
                         f"convertible to {target}, e.g. value.to({str(target)!r}).") from exc


def _product_unit(a, b):
    if a is None or b is None:
        return b if a is None else a
    return a * b


def _as_plain_errors(X_err, units, names):
    """``X_err`` as plain numbers in ``units`` (one per feature, None for none).

    A Quantity holds standard errors (n, D) or (n,) or covariances (n, D, D), entry
    ``(a, b)`` of a covariance in ``units[a] * units[b]``; a Table holds one
    standard-error column per feature, in X's order. Plain arrays pass unchanged (taken
    to be in ``units``); wrong shapes are left to :func:`~bayesmix.likelihood.as_observations`.
    """
    quantity, table = _astropy_classes()
    d = len(units)
    if _isinstance(X_err, table):
        _, columns, err_units = _table_columns(X_err, "X_err")
        if len(columns) != d:
            raise ValueError(f"X_err is a Table with {len(columns)} columns but X has {d} features; give "
                             "one standard-error column per feature, in the order of X's.")
        factors = [_unit_factor(u, t, f"X_err for feature {_feature_name(j, names)!r}")
                   for j, (u, t) in enumerate(zip(err_units, units, strict=True))]
        return np.column_stack(columns) * np.asarray(factors)
    if not _isinstance(X_err, quantity):
        return X_err
    values = np.asarray(X_err.value, dtype=np.float64)
    if values.ndim == 3 and values.shape[1:] == (d, d):
        factors = np.array([[_unit_factor(X_err.unit, _product_unit(units[a], units[b]),
                                          f"X_err (covariance of features {_feature_name(a, names)!r}, "
                                          f"{_feature_name(b, names)!r})")
                             for b in range(d)] for a in range(d)])
        return values * factors
    if values.shape[-1:] == (d,) and values.ndim in (1, 2):
        factors = np.array([_unit_factor(X_err.unit, unit, f"X_err for feature {_feature_name(j, names)!r}")
                            for j, unit in enumerate(units)])
        return values * factors
    return values


def _magnitude_error(what: str, entry: str, value: float) -> ValueError:
    limit = f"{_MAX_MAGNITUDE:.0e}".replace("+", "")
    return ValueError(
        f"{what} {entry} = {value:.3g} is beyond {limit} in absolute value: the likelihood squares values "
        "and standard errors, and their squares overflow float64 beyond ~1e154, so bayesmix handles values "
        f"and errors up to ~{limit}. Change units (e.g. km/s instead of cm/s, kpc instead of m) so that "
        "every value and error is well within that.")


def _check_magnitudes(what: str, values: np.ndarray, names) -> None:
    """Refuse a finite ``values`` entry whose square overflows (the real cause of later NaNs)."""
    big = np.abs(values) > _MAX_MAGNITUDE
    if big.any():
        row, col = np.argwhere(big)[0]
        raise _magnitude_error(what, f"[row {row}, feature {_feature_name(col, names)!r}]", values[row, col])


def _check_error_magnitudes(X_err, shape, names) -> None:
    """Standard errors (or the square roots of error variances) within ``_MAX_MAGNITUDE``.

    Only recognisable shapes are checked; the rest is left to
    :func:`~bayesmix.likelihood.as_observations`, which names the shape it expects.
    """
    try:
        err = np.asarray(X_err, dtype=np.float64)
    except (TypeError, ValueError):
        return
    n, d = shape
    if err.shape == (n, d, d):  # covariances: variances on the diagonal, bounded by the squared limit
        variances = np.abs(np.diagonal(err, axis1=1, axis2=2))
        big = np.isfinite(variances) & (variances > _MAX_MAGNITUDE**2)  # inf: as_observations names it
        if big.any():
            row, col = np.argwhere(big)[0]
            raise _magnitude_error("X_err", f"[row {row}, feature {_feature_name(col, names)!r}] "
                                            "(square root of the variance)", math.sqrt(variances[row, col]))
        return
    if err.shape == (n,) and d == 1:
        err = err[:, None]
    if err.shape == (n, d):
        _check_magnitudes("X_err", np.where(np.isfinite(err), err, 0.0), names)  # likewise


def _conversion_factors(x_units, fitted_units, names) -> np.ndarray:
    """Per-feature factors taking X in ``x_units`` to the fitted ``feature_units_``."""
    return np.array([_unit_factor(u, t, f"X feature {_feature_name(j, names)!r} (fitted in "
                                        f"{'no unit' if t is None else t}: feature_units_)")
                     for j, (u, t) in enumerate(zip(x_units, fitted_units, strict=True))])


# ------------------------------------------------------------------ scaling and errors


def _standardized_under(values, weights) -> bool:
    mean = np.average(values, axis=0, weights=weights)
    sd = np.sqrt(np.average((values - mean) ** 2, axis=0, weights=weights))
    typical = np.maximum(1.0, np.average(np.abs(values), axis=0, weights=weights))
    centred = np.abs(mean) < _STANDARDIZED_TOL * typical
    unit_sd = np.abs(sd - 1.0) < _STANDARDIZED_TOL
    # StandardScaler leaves a constant column at 0 (its scale is set to 1).
    return bool(np.all(centred & (unit_sd | (sd == 0.0))) and np.any(unit_sd))


def _looks_standardized(values, sample_weight) -> bool:
    """Whether X looks like StandardScaler output (plain, or weighted by ``sample_weight``,
    which a routed ``sample_weight`` would have used)."""
    if _standardized_under(values, None):
        return True
    weighted = not np.all(sample_weight == sample_weight[0])
    return weighted and _standardized_under(values, sample_weight)


@dataclasses.dataclass(frozen=True)
class _Standardizer:
    """The per-feature map ``x' = (x - centre) / scale`` of ``standardize=True``.

    Extreme-deconvolution EM is equivariant under this map (its k-means++ and density-peak
    starts already work on standardised values, and Bovy's regularisation is mapped as
    ``reg_covar * D^-2``, ``D = diag(scale)``), so a fit in these units maps back exactly:
    means ``centre + scale * mu'``, covariances ``D Sigma' D``, and every log-density
    gains the Jacobian ``-sum(log scale)`` per star.
    """

    centre: np.ndarray
    scale: np.ndarray

    @classmethod
    def of(cls, values):
        sd = values.std(axis=0)
        # A constant feature is left in its units: its spread, if any, is all error.
        return cls(values.mean(axis=0), np.where(sd > 0, sd, 1.0))

    @property
    def log_scale(self) -> float:
        return float(np.sum(np.log(self.scale)))

    def _outer(self):
        return np.multiply.outer(self.scale, self.scale)

    def observations(self, obs: Observations) -> Observations:
        return Observations((np.asarray(obs.values) - self.centre) / self.scale,
                            np.asarray(obs.error_covs) / self._outer(), obs.observed)

    def log_jacobian(self, obs: Observations, sample_weight) -> float:
        """Total log-likelihood change from standardised to original units: ``-log scale_j``
        per measured feature of each star, times its weight."""
        measured = np.ones(obs.values.shape) if obs.observed is None else np.asarray(obs.observed, float)
        return -float(np.asarray(sample_weight) @ (measured @ np.log(self.scale)))

    def means_in(self, means):
        return (means - self.centre) / self.scale

    def covariances_in(self, covariances):
        return covariances / self._outer()

    def params_out(self, params: MixtureParams) -> MixtureParams:
        return MixtureParams(np.asarray(params.weights), self.centre + self.scale * np.asarray(params.means),
                             np.asarray(params.covariances) * self._outer())

    def em_out(self, em: EMResult, w: float, prior_count: float, d_ll: float) -> EMResult:
        """``em`` in the original units: parameters, and log-likelihoods shifted by the Jacobian
        ``d_ll`` (:meth:`log_jacobian`); log priors by ``-prior_count * log_scale``
        per component (``log det Sigma = log det Sigma' + 2 log_scale``)."""
        d_lp = -prior_count * em.n_components * self.log_scale
        optima = tuple(dataclasses.replace(o, params=self.params_out(o.params), log_prior=o.log_prior + d_lp,
                                           log_likelihood=o.log_likelihood + d_ll)
                       for o in em.optima)
        return dataclasses.replace(
            em, params=self.params_out(em.params), log_likelihood=em.log_likelihood + d_ll,
            log_prior=em.log_prior + d_lp, log_likelihood_history=em.log_likelihood_history + d_ll,
            objective_history=em.objective_history + d_ll + d_lp,
            restart_objectives=em.restart_objectives + d_ll + d_lp, optima=optima, w=w)


class DeconvolvedGaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture of the *intrinsic* distribution of data with per-star measurement errors.

    Extreme deconvolution (Bovy, Hogg & Roweis 2011): star ``i`` with measured values
    ``x_i`` and error covariance ``S_i`` is drawn from ``sum_k w_k N(mu_k, Sigma_k + S_i)``;
    ``weights_``, ``means_`` and ``covariances_`` describe the error-free population. It is
    ``sklearn.mixture.GaussianMixture`` (full covariances) when there are no errors, and
    astroML's ``XDGMM`` with errors passed as ``fit(X, X_err=...)``.

    Parameters
    ----------
    n_components : int, default=1
        Number of Gaussian components K.
    method : {"em", "nuts"}, default="em"
        "em": maximum-likelihood point fit by extreme-deconvolution EM.
        "nuts": the full posterior by NUTS (NumPyro), started from the EM fit; the point
        attributes are then posterior means, and ``posterior_``, ``convergence_``,
        :meth:`summary` and :meth:`predict_proba_interval` give the uncertainties.
    tol : float, default=1e-3
        EM stops when the total log-likelihood (summed over stars, in nats, plus the
        ``reg_covar`` term) changes by at most ``tol`` in an iteration. Unlike
        GaussianMixture's ``tol`` (a change of the per-star *mean*) this is astroML's
        total, so it means the same distance from the optimum at any N; multiply
        GaussianMixture's ``tol`` by the number of stars for its stopping rule.
    reg_covar : float or None, default=None
        Bovy et al.'s covariance regularisation ``w``, a variance in squared feature
        units: ``w * I`` is added to each covariance's numerator and one star to its
        denominator in the M-step (their eq. 38), which keeps every covariance positive
        definite. None: a ridge of ``1e-6`` times the mean per-feature variance of the
        data is added to each numerator, with no extra star in the denominator (so no
        ``N_k / (N_k + 1)`` shrinkage). 0.0: the unregularised maximum-likelihood XD,
        which is what ``GaussianMixture(reg_covar=0)`` computes when there are no errors.
        With ``standardize=True`` a given ``reg_covar`` keeps this meaning (it is passed
        to EM as the equivalent ``reg_covar * D^-2`` in standardized units, so the fit is
        the same); None then adds ``1e-6`` of the mean standardized variance, i.e. about
        ``1e-6`` of each feature's own variance (``em_.w`` is then in standardized
        units), which stays negligible for features of very different scales, where the
        isotropic ridge in original units may not.
    max_iter : int, default=1000
        EM iterations per initialisation.
    n_init : int, default=1
        k-means++ (or random) EM initialisations, run in parallel with the others; the
        best optimum is kept. At most 1000: the starts run at once, each with its own
        per-star working arrays, so memory grows in proportion to ``n_init``.
    init_params : {"auto", "kmeans++", "k-means++", "kmeans", "random", "random_from_data"}, \
default="auto"
        "auto": ``n_init`` k-means++ starts plus four density-peak starts (a narrow
        component on each of the most significant over-densities, which k-means++
        cannot place on a small cluster inside a broad population) plus the given
        start, if any (:class:`bayesmix.em.EMOptions`). "kmeans++": k-means++ seeding
        followed by 10 Lloyd iterations on standardised values, and nothing else; it
        lies between scikit-learn's "k-means++" (seeding only) and "kmeans" (Lloyd
        iterations to convergence), and both of those spellings select it. "random"
        (scikit-learn's "random_from_data", also accepted): random distinct stars as
        means, each with the global covariance. scikit-learn's own "random" (random
        responsibilities) has no counterpart. ``get_params()`` returns the spelling
        given; it is resolved at ``fit``.
    weights_init, means_init, precisions_init : array_like, optional
        A given start, as ``GaussianMixture`` spells it: weights (n_components,),
        means (n_components, n_features), precisions (inverse covariances,
        (n_components, n_features, n_features)); parts left out are completed from the
        data (:func:`bayesmix.em.complete_start`), but ``means_init`` is needed. With
        ``init_params="auto"`` it is one more start and the best optimum wins (a poor
        guess cannot trap the fit); with "kmeans++" or "random" it replaces them, as
        in ``GaussianMixture``.
    random_state : int, RandomState instance or None, default=None
        Seeds the EM initialisations and the sampler (an integer seed for JAX's keys is
        drawn from it) and :meth:`sample`. An int makes everything reproducible.
    num_chains, num_warmup, num_samples : int, default=4, 300, 1000
        NUTS chains, adaptation steps and draws per chain (``method="nuts"`` only).
    chain_method : {"auto", "sequential", "parallel", "vectorized"}, default="auto"
        How the chains run (see :func:`bayesmix.sampling.sample_posterior`).
    progress_bar : bool, default=False
        Show the sampler's progress bar.
    ordering : {"scale", "mean", "weight"}, bayesmix.models.Ordering or None, default=None
        Which quantity increases with the component index in the posterior (breaks label
        switching; ``method="nuts"`` only). None: the dispersion of feature 0.
    standardize : bool, default=False
        Fit EM on standardized features, ``x' = (x - mean) / sd`` per feature of the
        training X, with ``X_err`` scaled by the same factors (standard errors by
        ``1 / sd``, covariances by ``1 / (sd_a sd_b)``) and ``reg_covar`` mapped too.
        Every fitted attribute (``means_``, ``covariances_``, ``precisions_``, ``em_``,
        ``lower_bound_``) and every output (:meth:`score_samples`, which includes the
        Jacobian ``-sum(log sd)``, :meth:`predict_proba`, :meth:`sample`, :meth:`bic`)
        is in the original units. EM is affine-equivariant, so with a given
        ``reg_covar`` (0 included) the fit equals the unstandardized one to rounding
        (same starts, same iterations); with ``reg_covar=None`` only the automatic ridge
        differs (see ``reg_covar``). Use this instead of a ``StandardScaler`` step in a
        ``Pipeline``, which scales X but not ``X_err``. ``method="nuts"`` samples in the
        original units, started from the mapped EM fit.
    errors_standardized : bool, default=False
        Declare that ``X_err`` is in the same (scaled) units as X. ``fit`` refuses X that
        looks like ``StandardScaler`` output (every column mean 0 and standard deviation
        1 to ``1e-8``) together with non-zero ``X_err``, because a ``Pipeline`` passes
        ``X_err`` to this step unscaled; set this when you scaled the errors yourself.
    missing_features : {"error", "marginalise"}, default="error"
        "marginalise": a row with NaN in some features (and NaN or any value in their
        errors) is fitted, scored and classified with the features it has: its likelihood
        is the mixture's marginal over the missing ones (extreme deconvolution's
        projection), exactly. Rows with no finite feature are refused. "error": NaN in X
        is an error, as in scikit-learn.

    Attributes
    ----------
    weights_ : ndarray, shape (n_components,)
    means_ : ndarray, shape (n_components, n_features)
    covariances_ : ndarray, shape (n_components, n_features, n_features)
        Intrinsic (deconvolved) covariances. Posterior means for ``method="nuts"``, in
        the ``ordering`` of the posterior; EM's order (arbitrary) for ``method="em"``.
    precisions_ : ndarray, shape (n_components, n_features, n_features)
        Inverses of ``covariances_``.
    precisions_cholesky_ : ndarray, shape (n_components, n_features, n_features)
        Upper-triangular ``U`` with ``U @ U.T == precisions_`` (GaussianMixture's convention).
    converged_ : bool
        Whether EM converged (the NUTS diagnostics are in ``convergence_``).
    n_iter_ : int
        EM iterations of the kept initialisation.
    lower_bound_ : float
        EM's log-likelihood per star (sample-weighted mean, errors included): the
        training ``score`` of the EM fit.
    n_features_in_ : int
    feature_names_in_ : ndarray of str, shape (``n_features_in_``,)
        Only when X had string column names (a DataFrame or an astropy Table).
    feature_units_ : tuple of astropy.units.Unit or None, length ``n_features_in_``
        Unit of each feature (from the Table columns or the Quantity; None for plain
        numbers). The fitted arrays are plain ndarrays in these units: ``means_`` in
        ``feature_units_[j]``, ``covariances_[:, a, b]`` in
        ``feature_units_[a] * feature_units_[b]``; :meth:`feature_labels` gives
        "name [unit]" axis labels.
    em_ : bayesmix.em.EMResult
        The EM fit (``bic``, ``aic``, ``log_likelihood_history``, ...), in the original
        units also with ``standardize=True``.
    posterior_ : bayesmix.sampling.PosteriorFit
        ``method="nuts"`` only: the draws (``posterior_.idata``, an ArviZ InferenceData).
    convergence_ : bayesmix.diagnostics.ConvergenceReport
        ``method="nuts"`` only: R-hat, ESS and divergences (a ``ConvergenceWarning`` is
        issued at fit when a criterion fails).

    Notes
    -----
    Without ``X_err`` new data are treated as error-free: ``score_samples(X)`` is then the
    density of the intrinsic mixture, ``score_samples(X, X_err=...)`` that of the
    mixture convolved with each star's errors (the likelihood the fit maximised).

    Errors may be standard errors (n_samples, n_features) or full covariances
    (n_samples, n_features, n_features); a standard error of zero means an exact value.

    Units. X may be an astropy ``Table`` (every column a numeric feature, in order; the
    column names become ``feature_names_in_``) or a ``Quantity``; ``X_err`` may be a
    ``Quantity`` (standard errors, or covariances whose unit converts to the product of
    the two features' units) or a ``Table`` of one standard-error column per feature.
    Errors are converted to X's units per feature (``m/s`` errors of ``km/s`` values
    are divided by 1000); inconvertible units raise a ValueError. After ``fit``, X with
    units is converted to ``feature_units_``; plain numbers (X or ``X_err``) are taken
    to be in ``feature_units_`` already.

    Scaling in a Pipeline. Metadata routing passes ``X_err`` to this step unchanged, so a
    ``StandardScaler`` before it leaves X and ``X_err`` in different units and the
    intrinsic covariances come out wrong. ``fit`` therefore refuses standardized X with
    non-zero errors (unless ``errors_standardized=True``); pass ``standardize=True``
    instead of using a scaler. Other transformers (``MinMaxScaler``, PCA, ...) cannot be
    detected: any step that changes X before this one must be applied to ``X_err`` too.

    scikit-learn's ``check_estimator`` (run in ``tests/test_estimator.py`` with
    ``n_components=2``) passes except for one documented deviation:

    * ``check_sample_weight_equivalence_on_dense_data``: with ``n_components >= 2`` the
      random EM initialisation (k-means++ seeding) draws from the rows, so integer
      ``sample_weight`` and repeated rows start EM from different points and can end in
      different local optima. The likelihood maximised is the same, and the fits agree
      when they reach the same optimum.

    Examples
    --------
    >>> xd = DeconvolvedGaussianMixture(2, random_state=0).fit(X, X_err=sigma)  # doctest: +SKIP
    >>> xd.means_, xd.bic(X, X_err=sigma)  # doctest: +SKIP
    >>> post = DeconvolvedGaussianMixture(2, method="nuts").fit(X, X_err=sigma)  # doctest: +SKIP
    >>> mean, low, high = post.predict_proba_interval()  # doctest: +SKIP

    Features on very different scales, scaled consistently with their errors (instead of
    a ``StandardScaler`` step), with results in the original units:

    >>> xd = DeconvolvedGaussianMixture(2, standardize=True).fit(X, X_err=sigma)  # doctest: +SKIP

    An astropy Table with units, errors in other (convertible) units:

    >>> from astropy.table import QTable  # doctest: +SKIP
    >>> import astropy.units as u  # doctest: +SKIP
    >>> X = QTable({"vr": vr * u.km / u.s, "pm": pm * u.mas / u.yr})  # doctest: +SKIP
    >>> E = QTable({"vr_err": vr_err * u.m / u.s, "pm_err": pm_err * u.mas / u.yr})  # doctest: +SKIP
    >>> xd = DeconvolvedGaussianMixture(2, init_params="k-means++").fit(X, X_err=E)  # doctest: +SKIP
    >>> xd.feature_units_, xd.feature_labels()  # doctest: +SKIP
    ((Unit("km / s"), Unit("mas / yr")), ['vr [km / s]', 'pm [mas / yr]'])
    """

    def __init__(self, n_components=1, *, method="em", tol=1e-3, reg_covar=None, max_iter=1000,
                 n_init=1, init_params="auto", weights_init=None, means_init=None, precisions_init=None,
                 random_state=None, num_chains=4, num_warmup=300, num_samples=1000, chain_method="auto",
                 progress_bar=False, ordering=None, standardize=False, errors_standardized=False,
                 missing_features="error"):
        self.n_components = n_components
        self.method = method
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.num_chains = num_chains
        self.num_warmup = num_warmup
        self.num_samples = num_samples
        self.chain_method = chain_method
        self.progress_bar = progress_bar
        self.ordering = ordering
        self.standardize = standardize
        self.errors_standardized = errors_standardized
        self.missing_features = missing_features

    def __getattr__(self, name):
        # Only reached when normal lookup fails: say why a posterior attribute is missing.
        if name in _POSTERIOR_ATTRIBUTES and "weights_" in self.__dict__:
            raise AttributeError(
                f"{name} exists only for method='nuts' (a posterior); this estimator was fitted "
                f"with method={self.__dict__.get('method')!r}."
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: the default state is the live __dict__
        fit = state.get("posterior_")
        if fit is not None and fit._state is not None:
            # The live sampler (compiled programs) cannot be pickled; the draws can.
            import dataclasses

            state["posterior_"] = dataclasses.replace(fit, _state=None)
        return state

    # ------------------------------------------------------------------ validation

    def _validate_params(self):
        validate_params(_PARAMETER_CONSTRAINTS, self.get_params(deep=False), type(self).__name__)

    def _observations(self, X, X_err, *, reset):
        """Validated :class:`Observations` (errors zero when ``X_err`` is None), in plain numbers
        in ``feature_units_`` (recorded when ``reset``)."""
        X, x_units = _as_plain_features(X)
        marginalise = self.missing_features == "marginalise"
        X = validate_data(self, X, reset=reset, dtype=np.float64, ensure_min_samples=2 if reset else 1,
                          ensure_all_finite="allow-nan" if marginalise else True)
        observed = np.isfinite(X) if marginalise else None
        names = getattr(self, "feature_names_in_", None)
        if reset:
            self.feature_units_ = x_units if x_units is not None else (None,) * X.shape[1]
        elif x_units is not None:
            X = X * _conversion_factors(x_units, self.feature_units_, names)
        _check_magnitudes("X", X, names)
        X_err = _as_plain_errors(X_err, self.feature_units_, names)
        if X_err is None:
            return as_observations(X, observed=observed)
        _check_error_magnitudes(X_err, X.shape, names)
        try:
            return as_observations(X, X_err, observed=observed)
        except ValueError as exc:
            raise ValueError(f"X_err is invalid: {exc}") from exc

    @staticmethod
    def _sample_weight(sample_weight, n):
        if sample_weight is None:
            return np.ones(n)
        sw = np.asarray(sample_weight, dtype=np.float64)
        if sw.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},), one weight per row of X; "
                             f"got {sw.shape}.")
        if not np.isfinite(sw).all() or (sw < 0).any():
            raise ValueError("sample_weight must be finite and >= 0.")
        if not (sw > 0).any():
            raise ValueError("sample_weight is zero for every row: at least one weight must be non-zero.")
        return sw

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y=None, *, X_err=None, sample_weight=None):
        """Fit the deconvolved mixture.

        Parameters
        ----------
        X : array_like, astropy Table or Quantity, shape (n_samples, n_features)
            Measured values. A Table's columns (all numeric) are the features, in order.
        y : None
            Ignored (scikit-learn's convention). Errors passed here raise TypeError.
        X_err : array_like, Quantity or Table, shape (n_samples, n_features) or \
(n_samples, n_features, n_features), optional
            Standard errors or error covariances of each row; None for error-free data.
            With units, converted to X's units per feature (see the class Notes).
        sample_weight : array_like, shape (n_samples,), optional
            Non-negative weights multiplying each row's log-likelihood (``method="em"`` only).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            For invalid input, inconvertible units, values or errors beyond 1e153 in
            absolute value (their squares overflow float64; change units), ``n_init``
            outside 1..1000, or X that looks standardized while ``X_err`` is given (see
            ``errors_standardized``).
        """
        self._validate_params()
        obs = self._observations(X, X_err, reset=True)
        _check_y(y, (obs.n_stars, obs.n_features), "fit")
        if sample_weight is not None and self.method == "nuts":
            raise ValueError("sample_weight is supported with method='em' only (the NUTS model has "
                             "no per-star weights); drop it or use method='em'.")
        sw = self._sample_weight(sample_weight, obs.n_stars)
        self._check_errors_match_scaling(obs, sw)
        rng = check_random_state(self.random_state)
        em_seed, nuts_seed = (int(s) for s in rng.randint(np.iinfo(np.int32).max, size=2))
        em = self._fit_em(em_seed, obs, sw)
        self.em_ = em
        self.converged_ = bool(em.converged)
        self.n_iter_ = int(em.n_iter)
        self.lower_bound_ = float(em.log_likelihood / em.n_effective)
        params = em.params
        if self.method == "nuts":
            params = self._fit_posterior(obs, em, nuts_seed)
        self._set_point(params)
        return self

    def _check_errors_match_scaling(self, obs: Observations, sample_weight):
        """Refuse standardized X with errors in other units (a StandardScaler in a Pipeline)."""
        if self.errors_standardized or not np.any(np.asarray(obs.error_covs)):
            return  # zero errors are the same in any units
        if _looks_standardized(np.asarray(obs.values), sample_weight):
            raise ValueError(
                "X appears standardized (every column has mean 0 and standard deviation 1, as "
                "StandardScaler leaves it) while X_err is given: a Pipeline scales X but passes X_err to "
                "this step unchanged, so the errors would be in the original units and the intrinsic "
                "covariances wrong. Drop the scaler and pass DeconvolvedGaussianMixture(standardize=True), "
                "which scales X and X_err together and reports results in the original units; or, if "
                "X_err was scaled by the same factors, pass errors_standardized=True.")

    def _fit_em(self, seed, obs: Observations, sw) -> EMResult:
        """EM on ``obs`` (standardized first when ``standardize``), in the original units."""
        scaler = _Standardizer.of(np.asarray(obs.values)) if self.standardize else None
        fit_obs = obs if scaler is None else scaler.observations(obs)
        w, prior = self._regularisation(scaler)
        n_rows = bucket(obs.n_stars)
        padded = star_rows(fit_obs, np.minimum(np.arange(n_rows), obs.n_stars - 1))
        start = self._given_start(fit_obs, scaler)
        init, n_init = _INIT_PARAMS[self.init_params], self.n_init
        if start is not None and init != "auto":
            init, n_init = "given", 1  # GaussianMixture's behaviour: the given start replaces the others
        em = fit_em(seed, padded, self.n_components, max_iter=self.max_iter, tol=self.tol,
                    w=w, prior=prior, init=init, n_init=n_init, init_params=start,
                    sample_weight=np.concatenate([sw, np.zeros(n_rows - obs.n_stars)]))
        if scaler is None:
            return em
        return scaler.em_out(em, w=em.w if self.reg_covar is None else float(self.reg_covar),
                             prior_count=1.0 if prior is not None else 0.0, d_ll=scaler.log_jacobian(obs, sw))

    def _regularisation(self, scaler):
        """``(w, prior)`` for :func:`~bayesmix.em.fit_em`: ``reg_covar`` in the units EM works in."""
        if scaler is None or not self.reg_covar:  # None (automatic ridge) or 0 (none): no units
            return self.reg_covar, None
        # Bovy's w I in original units is w D^-2 in standardized ones, not isotropic, so it goes in
        # as the MAP prior with the same M-step and log prior: Psi = w D^-2, one pseudo-star in the
        # covariance denominator, and a flat Dirichlet (concentration 1) on the weights.
        mode = float(self.reg_covar) / scaler.scale**2
        return 0.0, MAPPrior(weight_concentration=1.0, covariance_strength=1.0, covariance_mode=mode)

    def _given_start(self, obs, scaler=None):
        """The start of ``weights_init`` / ``means_init`` / ``precisions_init`` (given in the
        original units; mapped by ``scaler`` to those of ``obs``), or None."""

        given = {"weights_init": self.weights_init, "means_init": self.means_init,
                 "precisions_init": self.precisions_init}
        if all(v is None for v in given.values()):
            return None
        if self.means_init is None:
            raise ValueError("weights_init / precisions_init complete a start given by means_init; pass "
                             f"means_init too (shape ({self.n_components}, {obs.n_features})).")
        k, d = self.n_components, obs.n_features
        shapes = {"weights_init": (k,), "means_init": (k, d), "precisions_init": (k, d, d)}
        arrays = {}
        for name, value in given.items():
            if value is None:
                continue
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != shapes[name] or not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be finite with shape {shapes[name]} (n_components="
                                 f"{k}, n_features={d}); got shape {arr.shape}.")
            arrays[name] = arr
        covariances = None
        if "precisions_init" in arrays:
            try:
                covariances = np.linalg.inv(arrays["precisions_init"])
                np.linalg.cholesky(covariances)
            except np.linalg.LinAlgError:
                raise ValueError("precisions_init must hold symmetric positive-definite matrices (inverse "
                                 "covariances).") from None
        means = arrays["means_init"]
        if scaler is not None:
            means = scaler.means_in(means)
            covariances = None if covariances is None else scaler.covariances_in(covariances)
        try:
            return complete_start(obs, means, covariances=covariances,
                                  weights=arrays.get("weights_init"))
        except ValueError as exc:
            raise ValueError(f"the given start (weights_init, means_init, precisions_init) is invalid: "
                             f"{exc}") from exc

    def _fit_posterior(self, obs, em, seed):
        # Lazy: NumPyro, BlackJAX and ArviZ load only when method='nuts' is fitted.
        from bayesmix.diagnostics import check_convergence
        from bayesmix.models import mixture_model
        from bayesmix.sampling import sample_posterior

        names = getattr(self, "feature_names_in_", None)
        model = mixture_model(obs, self.n_components, ordering=self.ordering,
                              feature_names=None if names is None else [str(n) for n in names])
        fit = sample_posterior(seed, model, obs, init=em, num_chains=self.num_chains,
                               num_warmup=self.num_warmup, num_samples=self.num_samples,
                               chain_method=self.chain_method, progress_bar=self.progress_bar)
        self.posterior_ = fit
        self.convergence_ = check_convergence(fit)
        logger.info("NUTS posterior: %s", "converged" if self.convergence_.ok else "NOT converged")
        return fit.posterior_mean_params()

    def _set_point(self, params: MixtureParams):
        weights = np.asarray(params.weights, dtype=np.float64)
        self.weights_ = weights / weights.sum()  # posterior means sum to one only to rounding
        self.means_ = np.asarray(params.means, dtype=np.float64)
        self.covariances_ = np.asarray(params.covariances, dtype=np.float64)
        # GaussianMixture's convention: U = inv(L).T for Sigma = L L^T, so U U^T = Sigma^-1.
        self.precisions_cholesky_ = np.swapaxes(np.linalg.inv(np.linalg.cholesky(self.covariances_)), 1, 2)
        self.precisions_ = self.precisions_cholesky_ @ np.swapaxes(self.precisions_cholesky_, 1, 2)

    def fit_predict(self, X, y=None, *, X_err=None, sample_weight=None):
        """Fit, then return the most probable component of each training row, shape (n_samples,)."""
        return self.fit(X, y, X_err=X_err, sample_weight=sample_weight).predict(X, X_err)

    # ------------------------------------------------------------------ evaluation

    def _params(self):
        return MixtureParams(self.weights_, self.means_, self.covariances_)

    def _evaluate(self, X, X_err):
        """Per-row log-likelihood (n,) and responsibilities (n, K), from the package likelihood."""
        check_is_fitted(self)
        obs = self._observations(X, X_err, reset=False)
        n, k, d = obs.n_stars, self.n_components, obs.n_features
        log_lik = np.empty(n)
        resp = np.empty((n, k))
        params = self._params()
        # The (rows, K, D, D) total covariances bound the chunk (materialised when D is large).
        for start, stop, rows in chunks(n, chunk_rows(k * d * d)):
            ll, r = _per_star(params, star_rows(obs, _padded_range(start, stop, rows)))
            log_lik[start:stop] = np.asarray(ll)[: stop - start]
            resp[start:stop] = np.asarray(r)[: stop - start]
        return log_lik, resp

    def score_samples(self, X, X_err=None):
        """Log-likelihood of each row under the mixture convolved with its errors.

        Parameters
        ----------
        X : array_like, astropy Table or Quantity, shape (n_samples, n_features)
            Quantities are converted to ``feature_units_``; plain numbers are taken to be in them.
        X_err : array_like, Quantity or Table, shape (n_samples, n_features) or \
(n_samples, n_features, n_features), optional
            None: the rows are exact (the intrinsic density).

        Returns
        -------
        ndarray, shape (n_samples,)
            Natural log of the density per unit of ``prod(feature_units_)``.
        """
        return self._evaluate(X, X_err)[0]

    def score(self, X, y=None, X_err=None):
        """Mean per-row log-likelihood (see :meth:`score_samples`); ``y`` is ignored."""
        log_lik = self.score_samples(X, X_err)
        _check_y(y, (log_lik.shape[0], self.n_features_in_), "score")
        return float(np.mean(log_lik))

    def predict_proba(self, X, X_err=None):
        """Probability of each component for each row (rows sum to one), shape (n_samples, n_components)."""
        return self._evaluate(X, X_err)[1]

    def predict(self, X, X_err=None):
        """Most probable component of each row, shape (n_samples,)."""
        return np.argmax(self.predict_proba(X, X_err), axis=1)

    def _n_parameters(self):
        return n_free_parameters(self.n_components, self.n_features_in_)

    def bic(self, X, X_err=None):
        """Bayesian information criterion ``-2 log L + p log n`` on X (lower is better).

        On the training data (unweighted) it equals ``em_.bic`` for ``method="em"``.
        """
        log_lik = self.score_samples(X, X_err)
        return float(-2.0 * log_lik.sum() + self._n_parameters() * math.log(log_lik.shape[0]))

    def aic(self, X, X_err=None):
        """Akaike information criterion ``-2 log L + 2 p`` on X (lower is better)."""
        return float(-2.0 * self.score_samples(X, X_err).sum() + 2.0 * self._n_parameters())

    def sample(self, n_samples=1):
        """Draw from the intrinsic (deconvolved, error-free) mixture.

        Parameters
        ----------
        n_samples : int, default=1

        Returns
        -------
        X : ndarray, shape (n_samples, n_features)
        y : ndarray of int, shape (n_samples,)
            Component of each draw; rows are grouped by component, as in GaussianMixture.
        """
        check_is_fitted(self)
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer; got {n_samples!r}.")
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        X = np.vstack([rng.multivariate_normal(mean, cov, int(c))
                       for mean, cov, c in zip(self.means_, self.covariances_, counts, strict=True)])
        y = np.concatenate([np.full(c, k, dtype=int) for k, c in enumerate(counts)])
        return X, y

    def feature_labels(self, unit_format=None):
        """Axis labels ``"name [unit]"`` of the features, e.g. for
        :func:`bayesmix.plotting.ellipse_plot`'s ``feature_names``.

        Parameters
        ----------
        unit_format : str, optional
            astropy unit format (``"latex_inline"`` for matplotlib); None: astropy's generic one.

        Returns
        -------
        list of str, length ``n_features_in_``
            The column name (``x0``, ``x1``, ... without names), followed by the unit in
            brackets when the feature has one (none for plain numbers or dimensionless).
        """
        check_is_fitted(self)
        names = getattr(self, "feature_names_in_", None)
        labels = []
        for j, unit in enumerate(self.feature_units_):
            text = "" if unit is None else unit.to_string(unit_format) if unit_format else unit.to_string()
            labels.append(f"{_feature_name(j, names)} [{text}]" if text else _feature_name(j, names))
        return labels

    # ------------------------------------------------------------------ posterior only

    def _check_posterior(self, what):
        check_is_fitted(self)
        check_is_fitted(self, "posterior_", msg=(
            f"{what} needs a posterior, which method='nuts' computes; this estimator was fitted with "
            f"method={self.__dict__.get('method')!r}. Refit with DeconvolvedGaussianMixture(..., "
            "method='nuts')."))

    def summary(self, var_names=None, hdi_prob=0.94):
        """ArviZ-based posterior summary (``mean``, ``sd``, ``p16``/``p50``/``p84``, HDI, ESS, R-hat).

        See :func:`bayesmix.diagnostics.summary`; ``method="nuts"`` only.

        Returns
        -------
        pandas.DataFrame
        """
        from bayesmix.diagnostics import summary  # lazy: ArviZ, for posterior fits only

        self._check_posterior("summary()")
        return summary(self.posterior_, var_names=var_names, hdi_prob=hdi_prob)

    def predict_proba_interval(self, X=None, X_err=None, *, interval=(16, 84), max_draws=1000):
        """Component probabilities with a credible interval over the posterior draws.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features), optional
            None: the training rows (:func:`bayesmix.membership.membership_probabilities`).
        X_err : array_like, optional
            Errors of ``X`` (as in :meth:`fit`); None treats new rows as exact.
        interval : (float, float), default=(16, 84)
            Lower and upper percentiles over draws (16-84: a 68% interval).
        max_draws : int, default=1000
            Posterior draws used at most (thinned evenly over the chains).

        Returns
        -------
        mean, low, high : ndarray, shape (n_samples, n_components)
            Posterior mean probability (rows sum to one) and the two percentiles. The mean
            of a skewed distribution (a probability near 0 or 1) can lie outside the
            interval; it always lies within ``interval=(0, 100)``, the range of the draws.
            ``mean`` is not :meth:`predict_proba`, which evaluates the posterior-mean
            parameters.
        """
        self._check_posterior("predict_proba_interval()")
        low_q, high_q = (float(q) for q in interval)
        if not 0.0 <= low_q <= high_q <= 100.0:
            raise ValueError(f"interval must be two percentiles 0 <= low <= high <= 100; got {interval!r}.")
        if X is None:
            if X_err is not None:
                raise ValueError("X_err needs X: without X the training rows and their errors are used.")
            if (low_q, high_q) == (16.0, 84.0):
                from bayesmix.membership import membership_probabilities  # lazy: posterior fits only

                result = membership_probabilities(self.posterior_, max_draws=max_draws)
                return result.mean, result.p16, result.p84
            obs = self.posterior_.data
        else:
            obs = self._observations(X, X_err, reset=False)
        return self._proba_over_draws(obs, (low_q, high_q), max_draws)

    def _proba_over_draws(self, obs: Observations, interval, max_draws):
        from bayesmix.membership import select_draws  # lazy: posterior fits only

        post = self.posterior_.idata.posterior
        draws = select_draws(post.sizes["chain"], post.sizes["draw"], max_draws)
        site = {name: post[name].transpose("chain", "draw", ...).values[draws[:, 0], draws[:, 1]]
                for name in ("weights", "means", "covariances")}
        n, k, d, n_draws = obs.n_stars, self.n_components, obs.n_features, draws.shape[0]
        mean, low, high = (np.empty((n, k)) for _ in range(3))
        for start, stop, rows in chunks(n, chunk_rows(n_draws * k * d * d)):
            resp = np.asarray(_responsibilities_over_draws(
                site["weights"], site["means"], site["covariances"],
                star_rows(obs, _padded_range(start, stop, rows))))[:, : stop - start]
            mean[start:stop] = resp.mean(axis=0)
            low[start:stop], high[start:stop] = np.percentile(resp, interval, axis=0)
        return mean, low, high
