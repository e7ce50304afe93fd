"""Posterior diagnostics: summary table, convergence checks, label switching, model comparison.

Everything here reads an ArviZ ``InferenceData`` (or anything with an ``idata``
attribute, such as :class:`bayesmix.sampling.PosteriorFit`) whose ``posterior`` group
holds the mixture quantities with dimensions ``(chain, draw, ...)``:

* ``weights`` (component), ``means`` (component, feature),
  ``scales`` (component, feature), ``correlations`` (component, feature, feature_bis),
  ``covariances`` (component, feature, feature_bis);
* the model's raw sites (e.g. ``frac_intercept``, ``background_weight``).

Only ``sample_stats.diverging`` is read from the sampler statistics. Nothing here
needs JAX; the numbers come from ArviZ's rank-normalised split R-hat and ESS (Vehtari
et al. 2021).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayesmix import _arviz

__all__ = [
    "ConvergenceReport",
    "ConvergenceWarning",
    "LabelSwitchingReport",
    "LabelSwitchingWarning",
    "ModeDisagreementWarning",
    "ModeReport",
    "ModelCheckReport",
    "ModelMisfitWarning",
    "PosteriorMode",
    "check_convergence",
    "check_label_switching",
    "check_model_fit",
    "check_modes",
    "compare_models",
    "summary",
]

logger = logging.getLogger(__name__)

# The mixture quantities summarised by default, in this order; raw scalar sites follow.
_DEFAULT_VARIABLES = ("weights", "means", "scales", "correlations")
# Derived quantities that are never "raw scalar sites" (covariances duplicate scales and
# correlations, the cluster's own mean or scale site under a radius law duplicates its row of
# means or scales; they are summarised only when asked for by name).
_DERIVED_VARIABLES = (*_DEFAULT_VARIABLES, "covariances", "mean_member", "scale_member")
# Up to this many components the relabelling search tries every permutation (7! = 5040).
_BRUTE_FORCE_MAX_COMPONENTS = 7


# --------------------------------------------------------------------------- warnings


class ConvergenceWarning(UserWarning):
    """The posterior draws fail a convergence criterion (R-hat, ESS or divergences).

    Carries the numbers (like emcee's ``AutocorrError`` carries ``tau``).

    Attributes
    ----------
    report : ConvergenceReport
        The whole check; ``report.table`` is the summary table and
        ``report.offending`` its rows that failed.
    table : pandas.DataFrame
        Same as ``report.table``.
    offending : pandas.DataFrame
        Same as ``report.offending``.
    """

    def __init__(self, message, *, report=None):
        super().__init__(message)
        self.report = report
        self.table = None if report is None else report.table
        self.offending = None if report is None else report.offending


class ModeDisagreementWarning(ConvergenceWarning):
    """Chains settled in different modes of the posterior: the run has not converged.

    A :class:`ConvergenceWarning`, so code that catches those catches this too.

    Attributes
    ----------
    report : ConvergenceReport or None
        The convergence check it came from (None when raised by :func:`check_modes`).
    modes : ModeReport
        Every mode: its chains, its mean log posterior density, its parameters.
    """

    def __init__(self, message, *, modes=None, report=None):
        super().__init__(message, report=report)
        self.modes = modes


class ModelMisfitWarning(UserWarning):
    """The data fall outside the posterior predictive distribution more often than chance allows.

    Attributes
    ----------
    report : ModelCheckReport
    worst_bins : pandas.DataFrame
        The bins where observed and predicted counts differ most (``report.worst_bins``).
    """

    def __init__(self, message, *, report=None):
        super().__init__(message)
        self.report = report
        self.worst_bins = None if report is None else report.worst_bins


class LabelSwitchingWarning(UserWarning):
    """Chains (or parts of one chain) disagree on which component is which.

    Attributes
    ----------
    report : LabelSwitchingReport
    permutations : dict of int to tuple of int
        For every chain (and ``(chain, segment)`` pair) flagged, the permutation that maps
        its labels onto the reference chain's: its component ``k`` is the reference's
        component ``permutation[k]``.
    gains : dict
        For the same keys, how much closer (in pooled posterior standard deviations)
        the relabelled components are to the reference than the labelled ones.
    """

    def __init__(self, message, *, report=None, permutations=None, gains=None):
        super().__init__(message)
        self.report = report
        self.permutations = dict(permutations or {})
        self.gains = dict(gains or {})


# --------------------------------------------------------------------------- helpers


def _as_idata(fit_or_idata, parameter="fit_or_idata"):
    """The InferenceData of a fit (anything with ``.idata``) or the argument itself."""
    idata = getattr(fit_or_idata, "idata", fit_or_idata)
    if not hasattr(idata, "posterior"):
        raise ValueError(
            f"{parameter} must be an arviz.InferenceData with a posterior group, or a fit with an "
            f"`idata` attribute (bayesmix.sampling.PosteriorFit); got {type(fit_or_idata).__name__}."
        )
    return idata


def _coord_labels(da, dim):
    if dim in da.coords:
        return [str(v) for v in np.asarray(da.coords[dim].values)]
    return [str(i) for i in range(da.sizes[dim])]


def _flatten_variable(name, da):
    """Rows ``(label, (chain, draw) array)`` of one posterior variable.

    Symmetric matrices (last dimension named ``<previous>_bis``) keep the upper
    triangle; ``correlations`` also drops the diagonal (identically one).
    """
    extra = [d for d in da.dims if d not in ("chain", "draw")]
    values = np.asarray(da.transpose("chain", "draw", *extra).values)
    if not extra:
        return [(name, values)]
    labels = [_coord_labels(da, d) for d in extra]
    symmetric = len(extra) >= 2 and extra[-1] == f"{extra[-2]}_bis"
    rows = []
    for index in itertools.product(*(range(len(lab)) for lab in labels)):
        if symmetric:
            i, j = index[-2], index[-1]
            if j < i or (j == i and name == "correlations"):
                continue
        label = ", ".join(labels[a][b] for a, b in enumerate(index))
        rows.append((f"{name}[{label}]", values[(slice(None), slice(None), *index)]))
    return rows


def _default_var_names(posterior):
    names = [v for v in _DEFAULT_VARIABLES if v in posterior.data_vars]
    for name, da in posterior.data_vars.items():
        if name in _DERIVED_VARIABLES:
            continue
        if set(da.dims) <= {"chain", "draw"} and np.issubdtype(da.dtype, np.number):
            names.append(name)
    return names


def _resolve_var_names(posterior, var_names):
    if var_names is None:
        return _default_var_names(posterior)
    if isinstance(var_names, str):
        var_names = [var_names]
    missing = [v for v in var_names if v not in posterior.data_vars]
    if missing:
        raise ValueError(
            f"var_names {missing} are not in the posterior; choose from {sorted(posterior.data_vars)}."
        )
    return list(var_names)


def _stack_rows(posterior, var_names):
    """Row labels and one (chain, draw, n_rows) float array of every scalar quantity."""
    rows = []
    for name in var_names:
        rows.extend(_flatten_variable(name, posterior[name]))
    if not rows:
        raise ValueError("nothing to summarise: the selected variables have no entries.")
    labels = [label for label, _ in rows]
    stacked = np.stack([np.asarray(v, dtype=float) for _, v in rows], axis=-1)
    return labels, stacked


def _diagnostics(stacked, hdi_prob):
    """ESS, R-hat, MCSE and HDI of every column of a (chain, draw, n_rows) array."""
    n_chain, n_draw, _ = stacked.shape
    dims = ("chain", "draw", "row")
    ds = xr.Dataset({"x": (dims, stacked)})
    # One chain: ArviZ returns NaN for R-hat; split it in two so that R-hat compares its
    # halves (ArviZ splits each again, so the quarters are compared), as for any chain.
    if n_chain == 1 and n_draw >= 8:
        half = n_draw // 2
        rhat_ds = xr.Dataset({"x": (dims, stacked[0, : 2 * half].reshape(2, half, -1))})
    else:
        rhat_ds = ds
    az = _arviz.stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant rows: 0/0 in ESS, R-hat
        out = {
            "ess_bulk": az.ess(ds, method="bulk")["x"].values,
            "ess_tail": az.ess(ds, method="tail")["x"].values,
            "r_hat": az.rhat(rhat_ds)["x"].values,
            "mcse_mean": az.mcse(ds, method="mean")["x"].values,
        }
        hdi = _arviz.hdi(ds, hdi_prob)["x"].transpose("row", "hdi").values
    return out, hdi


def _percent_label(p):
    return f"{p:g}%"


# --------------------------------------------------------------------------- summary


def summary(fit_or_idata, var_names: Sequence[str] | None = None, hdi_prob: float = 0.94) -> pd.DataFrame:
    """Posterior summary of every mixture parameter, one readable row per scalar.

    Parameters
    ----------
    fit_or_idata : PosteriorFit or arviz.InferenceData
    var_names : sequence of str, optional
        Posterior variables to summarise. Default: ``weights``, ``means``, ``scales``,
        ``correlations`` (those present) and every raw scalar site (e.g.
        ``frac_intercept``, ``background_weight``). ``covariances`` on request.
    hdi_prob : float
        Probability mass of the highest-density interval, in (0, 1).

    Returns
    -------
    pandas.DataFrame
        Index like ``means[cluster, RV]``, ``scales[field, RV]``,
        ``correlations[c0, FeH, MgFe]`` (upper triangle only), ``frac_slope``.
        Columns: ``mean``, ``sd``, ``p16``, ``p50``, ``p84`` (percentiles),
        ``hdi_<a>%`` and ``hdi_<b>%`` (ArviZ's names, 3% and 97% by default),
        ``ess_bulk``, ``ess_tail``, ``r_hat``, ``mcse_mean``. Constant quantities
        (frozen parameters) have NaN ESS and R-hat.

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
    >>> from bayesmix.diagnostics import summary
    >>> table = summary(fit, var_names=["means"])
    >>> list(table.index)
    ['means[cluster, RV]', 'means[field, RV]']
    >>> {"p16", "p50", "p84", "r_hat", "ess_bulk"} <= set(table.columns)
    True
    """
    if not 0.0 < float(hdi_prob) < 1.0:
        raise ValueError(f"hdi_prob must lie in (0, 1); got {hdi_prob}.")
    idata = _as_idata(fit_or_idata)
    posterior = idata.posterior
    names = _resolve_var_names(posterior, var_names)
    labels, stacked = _stack_rows(posterior, names)
    flat = stacked.reshape(-1, stacked.shape[-1])
    stats, hdi = _diagnostics(stacked, hdi_prob)
    p16, p50, p84 = np.percentile(flat, [16.0, 50.0, 84.0], axis=0)
    sd = flat.std(axis=0, ddof=1) if flat.shape[0] > 1 else np.full(flat.shape[1], np.nan)
    sd[np.ptp(flat, axis=0) == 0.0] = 0.0  # exactly constant (frozen): exactly 0, not rounding noise
    tail = 100.0 * (1.0 - hdi_prob) / 2.0
    table = pd.DataFrame(
        {
            "mean": flat.mean(axis=0),
            "sd": sd,
            "p16": p16,
            "p50": p50,
            "p84": p84,
            f"hdi_{_percent_label(round(tail, 6))}": hdi[:, 0],
            f"hdi_{_percent_label(round(100.0 - tail, 6))}": hdi[:, 1],
            **stats,
        },
        index=pd.Index(labels, name="parameter"),
    )
    return table


# --------------------------------------------------------------------------- convergence


@dataclasses.dataclass(frozen=True)
class ConvergenceReport:
    """Outcome of :func:`check_convergence`.

    Attributes
    ----------
    ok : bool
        True when every non-constant quantity has ``r_hat <= r_hat_max``, bulk and
        tail ESS ``>= ess_min``, no transition diverged, and every constant quantity is
        fixed by construction (none "never moved").
    max_r_hat, min_ess_bulk, min_ess_tail : float
        Over the non-constant rows of ``table`` (NaN when there are none).
    n_divergent : int or None
        Divergent transitions over all chains; None when the run stored no
        ``sample_stats.diverging``.
    n_chains, n_draws : int
        Chains, and draws per chain.
    r_hat_max, ess_min : float
        The thresholds used.
    reasons : tuple of str
        One line per failed criterion (empty when ``ok``).
    offending : pandas.DataFrame
        Rows of ``table`` that never moved, fail the R-hat or ESS criteria, or whose
        diagnostics are not finite.
    table : pandas.DataFrame
        The :func:`summary` table the check ran on.
    """

    ok: bool
    max_r_hat: float
    min_ess_bulk: float
    min_ess_tail: float
    n_divergent: int | None
    n_chains: int
    n_draws: int
    r_hat_max: float
    ess_min: float
    reasons: tuple[str, ...]
    offending: pd.DataFrame
    table: pd.DataFrame
    modes: ModeReport | None = None

    def __str__(self) -> str:
        head = "converged" if self.ok else "NOT converged"
        lines = [
            f"{head}: {self.n_chains} chain(s) x {self.n_draws} draws; max r_hat {self.max_r_hat:.4f}, "
            f"min ess_bulk {self.min_ess_bulk:.0f}, min ess_tail {self.min_ess_tail:.0f}, "
            f"divergences {self.n_divergent if self.n_divergent is not None else 'not recorded'}"
        ]
        lines.extend(f"  - {r}" for r in self.reasons)
        if self.modes is not None and not self.modes.ok:
            lines.append(str(self.modes))
        elif len(self.offending):
            cols = ["mean", "sd", "ess_bulk", "ess_tail", "r_hat"]
            lines.append(self.offending[cols].to_string(float_format=lambda v: f"{v:.4g}"))
        return "\n".join(lines)


def _n_divergent(idata):
    stats = getattr(idata, "sample_stats", None)
    if stats is None or "diverging" not in stats.data_vars:
        return None
    return int(np.asarray(stats["diverging"].values).astype(bool).sum())


def _fixed_rows(fit_or_idata, posterior, names, labels, fixed) -> np.ndarray | None:
    """Which rows of the summary are constant by construction; None when nothing says.

    ``fixed`` (variable names or row labels) when given, else the fit's model
    (:meth:`bayesmix.models.MixtureModel.fixed_quantities`); a bare InferenceData with
    neither carries no such knowledge.
    """
    if fixed is not None:
        wanted = {str(f) for f in ([fixed] if isinstance(fixed, str) else fixed)}
        return np.array([label in wanted or label.split("[", 1)[0] in wanted for label in labels], bool)
    model = getattr(fit_or_idata, "model", None)
    if not hasattr(model, "fixed_quantities"):
        return None
    masks = model.fixed_quantities()
    flags = []
    for name in names:
        da = posterior[name]
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        da = da.transpose("chain", "draw", *extra).isel(chain=slice(0, 1), draw=slice(0, 1))
        try:
            mask = np.broadcast_to(np.asarray(masks.get(name, False), bool), da.shape[2:])
        except ValueError:  # a quantity shaped unlike the model's: nothing known about it
            mask = np.zeros(da.shape[2:], bool)
        flags.extend(bool(np.asarray(v).ravel()[0])
                     for _, v in _flatten_variable(name, da.copy(data=mask[None, None])))
    return np.array(flags, bool)


def _extreme(values, fn) -> float:
    """``fn`` over the finite ``values``; NaN when none is finite."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(fn(values)) if values.size else math.nan


def _convergence_reasons(table, never_moved, r_hat_max, ess_min, n_divergent, n_transitions):
    """Why the draws fail (one sentence per failed criterion) and the offending rows of ``table``.

    ``never_moved`` flags the constant rows that are not fixed by construction; the other
    constant rows have no R-hat or ESS and are not judged.
    """
    checked = table[(table["sd"] != 0.0).to_numpy()]
    not_finite = ~np.isfinite(checked[["r_hat", "ess_bulk", "ess_tail"]]).all(axis=1)
    bad_r_hat = checked["r_hat"] > r_hat_max
    bad_ess = (checked["ess_bulk"] < ess_min) | (checked["ess_tail"] < ess_min)
    offending = pd.concat([table[never_moved], checked[bad_r_hat | bad_ess | not_finite]])
    reasons = []
    if never_moved.any():
        moved_not = list(table.index[never_moved])
        reasons.append(f"never moved: {len(moved_not)} quantity(ies) have one value in every draw of every "
                       f"chain ({', '.join(moved_not[:4])}{' ...' if len(moved_not) > 4 else ''}); the "
                       "sampler did not explore them")
    if bad_r_hat.any():
        reasons.append(f"r_hat > {r_hat_max} for {int(bad_r_hat.sum())} quantity(ies) "
                       f"(max {_extreme(checked['r_hat'], np.max):.4f})")
    if bad_ess.any():
        reasons.append(
            f"ESS < {ess_min:g} for {int(bad_ess.sum())} quantity(ies) (min bulk "
            f"{_extreme(checked['ess_bulk'], np.min):.0f}, min tail "
            f"{_extreme(checked['ess_tail'], np.min):.0f}); draw more (extend the run)"
        )
    if not_finite.any():
        reasons.append(f"R-hat or ESS not finite for {int(not_finite.sum())} quantity(ies) (too few draws?)")
    if n_divergent:
        reasons.append(
            f"{n_divergent} divergent transition(s) of {n_transitions} "
            f"({100.0 * n_divergent / n_transitions:.2g}%); raise target_accept or reparameterise"
        )
    return reasons, offending


def check_convergence(fit_or_idata, r_hat_max: float = 1.01, ess_min: float = 400, *,
                      var_names: Sequence[str] | None = None, modes: bool = True,
                      mode_tolerance: float = 3.0, warn: bool = True,
                      fixed: Sequence[str] | None = None) -> ConvergenceReport:
    """Check R-hat, bulk and tail ESS, divergences and mode agreement; warn with the numbers on failure.

    Parameters
    ----------
    fit_or_idata : PosteriorFit or arviz.InferenceData
    r_hat_max : float
        Largest acceptable rank-normalised split R-hat (Vehtari et al. 2021 advise 1.01).
    ess_min : float
        Smallest acceptable bulk and tail effective sample size (over all chains).
    var_names : sequence of str, optional
        Variables checked; default as in :func:`summary`.
    modes : bool
        Also check that all chains settled in one mode (:func:`check_modes`); chains in
        different modes make the run NOT converged.
    mode_tolerance : float
        ``tolerance`` of :func:`check_modes`.
    warn : bool
        Emit a :class:`ConvergenceWarning` carrying the report when a check fails (a
        :class:`ModeDisagreementWarning`, its subclass, when chains disagree on the mode).
    fixed : sequence of str, optional
        Quantities constant by construction (variable names such as ``"means"``, or row
        labels such as ``"means[cluster, RV]"``). Default: what the fit's model fixes
        (frozen parameters, the weight of a one-component model; see
        :meth:`bayesmix.models.MixtureModel.fixed_quantities`); for a bare InferenceData,
        which does not say, every constant quantity is taken as fixed.

    Returns
    -------
    ConvergenceReport

    Notes
    -----
    Quantities fixed by construction have no R-hat or ESS and are skipped. Any other
    quantity with the same value in every draw of every chain **never moved**: the
    chains did not explore it (for example a mean whose steps were below the rounding
    of its value), and the run is NOT converged. For a single chain, R-hat compares
    its halves.

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
    >>> import warnings
    >>> from bayesmix.diagnostics import ConvergenceWarning, check_convergence
    >>> with warnings.catch_warnings(record=True) as caught:  # 100 draws: too few for ESS >= 400
    ...     warnings.simplefilter("always")
    ...     report = check_convergence(fit)
    >>> report.ok, any(issubclass(w.category, ConvergenceWarning) for w in caught)
    (False, True)
    >>> report.min_ess_bulk < 400
    True
    """
    if not float(r_hat_max) >= 1.0:
        raise ValueError(f"r_hat_max must be >= 1 (1.01 is the usual threshold); got {r_hat_max}.")
    if not float(ess_min) >= 0.0:
        raise ValueError(f"ess_min must be >= 0 (400 is the usual threshold); got {ess_min}.")
    idata = _as_idata(fit_or_idata)
    table = summary(idata, var_names=var_names)
    posterior = idata.posterior
    n_chains, n_draws = int(posterior.sizes["chain"]), int(posterior.sizes["draw"])

    constant = (table["sd"] == 0.0).to_numpy()
    fixed_rows = _fixed_rows(fit_or_idata, posterior, _resolve_var_names(posterior, var_names),
                             list(table.index), fixed)
    if fixed_rows is None:
        fixed_rows = constant
    checked = table[~constant]
    n_divergent = _n_divergent(idata)
    reasons, offending = _convergence_reasons(table, constant & ~fixed_rows, r_hat_max, ess_min,
                                              n_divergent, n_chains * n_draws)
    if n_divergent is None:
        logger.info("no sample_stats.diverging in the InferenceData; divergences not checked")

    mode_report = check_modes(idata, mode_tolerance, var_names=var_names, warn=False) if modes else None
    if mode_report is not None and not mode_report.ok:
        reasons.append(f"chains settled in {len(mode_report.modes)} different modes (see below); the "
                       "posterior has several modes or the chains have not mixed")

    report = ConvergenceReport(
        ok=not reasons,
        max_r_hat=_extreme(checked["r_hat"], np.max),
        min_ess_bulk=_extreme(checked["ess_bulk"], np.min),
        min_ess_tail=_extreme(checked["ess_tail"], np.min),
        n_divergent=n_divergent,
        n_chains=n_chains,
        n_draws=n_draws,
        r_hat_max=float(r_hat_max),
        ess_min=float(ess_min),
        reasons=tuple(reasons),
        offending=offending,
        table=table,
        modes=mode_report,
    )
    if not report.ok and warn:
        if mode_report is not None and not mode_report.ok:
            warnings.warn(ModeDisagreementWarning(str(report), modes=mode_report, report=report),
                          stacklevel=2)
        else:
            warnings.warn(ConvergenceWarning(str(report), report=report), stacklevel=2)
    return report


# --------------------------------------------------------------------------- modes


@dataclasses.dataclass(frozen=True)
class PosteriorMode:
    """Draws of a group of chains that agree with each other (see :func:`check_modes`).

    Attributes
    ----------
    chains : tuple of int
    mean_log_density : float
        Mean log posterior density of its draws (``sample_stats.lp``; NaN when absent).
        Its difference from another mode's compares how well each explains the data
        (it is not the ratio of their posterior masses).
    max_log_density : float
    parameters : pandas.Series
        Posterior mean of every summarised quantity over its draws (index as in
        :func:`summary`).
    """

    chains: tuple[int, ...]
    mean_log_density: float
    max_log_density: float
    parameters: pd.Series


@dataclasses.dataclass(frozen=True)
class ModeReport:
    """Outcome of :func:`check_modes`.

    Attributes
    ----------
    ok : bool
        All chains are in one mode.
    modes : tuple of PosteriorMode
        Highest mean log density first.
    chain_modes : tuple of int
        Index into ``modes`` of every chain.
    tolerance : float
    separation : pandas.DataFrame
        ``[c, c']``: largest standardised distance between the two chains' means over
        all quantities (in within-chain standard deviations).
    """

    ok: bool
    modes: tuple[PosteriorMode, ...]
    chain_modes: tuple[int, ...]
    tolerance: float
    separation: pd.DataFrame

    def __str__(self) -> str:
        if self.ok:
            return f"all {len(self.chain_modes)} chain(s) in one mode (tolerance {self.tolerance:g} sd)"
        lines = [f"chains settled in {len(self.modes)} different modes:"]
        best = self.modes[0].mean_log_density
        for i, mode in enumerate(self.modes):
            gap = mode.mean_log_density - best
            lines.append(f"  mode {i}: chains {list(mode.chains)}, mean log posterior density "
                         f"{mode.mean_log_density:.2f}" + (f" ({gap:+.2f})" if i else " (highest)"))
            shown = mode.parameters.head(12)
            lines.append("    " + ", ".join(f"{name} = {value:.4g}" for name, value in shown.items())
                         + (" ..." if len(mode.parameters) > len(shown) else ""))
        lines.append("  the posterior has several modes (or the chains have not mixed): results from one "
                     "mode hold only under it. Compare the modes above; consider more components, "
                     "priors on the component you mean (e.g. a systemic velocity), or longer warmup.")
        return "\n".join(lines)


def _chain_separation(stacked):
    """``[c, c']``: max over rows of |mean_c - mean_c'| / sqrt((var_c + var_c') / 2)."""
    means = stacked.mean(axis=1)  # (chain, row)
    variances = stacked.var(axis=1)
    diff = np.abs(means[:, None, :] - means[None, :, :])
    pooled = np.sqrt(0.5 * (variances[:, None, :] + variances[None, :, :]))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(diff == 0.0, 0.0, diff / pooled)
    return np.max(z, axis=-1) if z.shape[-1] else np.zeros(diff.shape[:2])


def _groups(linked):
    """Connected components of a boolean (n, n) adjacency, in order of first member."""
    n = linked.shape[0]
    label = [-1] * n
    groups = []
    for start in range(n):
        if label[start] >= 0:
            continue
        stack, members = [start], []
        label[start] = len(groups)
        while stack:
            c = stack.pop()
            members.append(c)
            for other in np.flatnonzero(linked[c]):
                if label[other] < 0:
                    label[other] = len(groups)
                    stack.append(int(other))
        groups.append(tuple(sorted(members)))
    return groups


def check_modes(fit_or_idata, tolerance: float = 3.0, *, var_names: Sequence[str] | None = None,
                warn: bool = True) -> ModeReport:
    """Did every chain settle in the same mode? Groups chains that agree and describes each group.

    Two chains agree when, for every summarised quantity (and the log posterior
    density), their means differ by at most ``tolerance`` pooled within-chain standard
    deviations. Chains in one mode differ by about ``sqrt(2 / ESS_chain)`` of that
    (0.1 at a per-chain ESS of 200); chains in different modes of a mixture (another
    group of stars taken as a component) differ by many. Chains are grouped by
    agreement (transitively); more than one group is a failure.

    Parameters
    ----------
    fit_or_idata : PosteriorFit or arviz.InferenceData
    tolerance : float
        In pooled within-chain standard deviations.
    var_names : sequence of str, optional
        Quantities compared; default as in :func:`summary`.
    warn : bool
        Emit a :class:`ModeDisagreementWarning` (carrying the report) on failure.

    Returns
    -------
    ModeReport

    Examples
    --------
    >>> report = check_modes(fit)  # doctest: +SKIP
    >>> [mode.chains for mode in report.modes]  # doctest: +SKIP
    [(0, 2), (1, 3)]
    """
    if not float(tolerance) > 0.0:
        raise ValueError(f"tolerance must be > 0 (within-chain standard deviations); got {tolerance}.")
    idata = _as_idata(fit_or_idata)
    posterior = idata.posterior
    names = _resolve_var_names(posterior, var_names)
    labels, stacked = _stack_rows(posterior, names)
    n_chains = stacked.shape[0]
    lp = None
    stats = getattr(idata, "sample_stats", None)
    if stats is not None and "lp" in stats.data_vars:
        lp = np.asarray(stats["lp"].transpose("chain", "draw").values, dtype=float)
    compared = stacked if lp is None else np.concatenate([stacked, lp[..., None]], axis=-1)
    finite = np.isfinite(compared).all(axis=(0, 1))
    separation = _chain_separation(compared[..., finite])
    groups = _groups(separation <= float(tolerance))
    flat_lp = lp if lp is not None else np.full(stacked.shape[:2], np.nan)
    modes = []
    for chains in groups:
        draws = stacked[list(chains)].reshape(-1, stacked.shape[-1])
        log_density = flat_lp[list(chains)]
        modes.append(PosteriorMode(chains=chains, mean_log_density=float(np.mean(log_density)),
                                   max_log_density=float(np.max(log_density)),
                                   parameters=pd.Series(draws.mean(axis=0), index=labels)))
    order = sorted(range(len(modes)), key=lambda i: -np.nan_to_num(modes[i].mean_log_density, nan=-np.inf))
    modes = [modes[i] for i in order]
    chain_modes = [0] * n_chains
    for index, mode in enumerate(modes):
        for c in mode.chains:
            chain_modes[c] = index
    report = ModeReport(ok=len(modes) == 1, modes=tuple(modes), chain_modes=tuple(chain_modes),
                        tolerance=float(tolerance),
                        separation=pd.DataFrame(separation, index=range(n_chains), columns=range(n_chains)))
    if not report.ok and warn:
        warnings.warn(ModeDisagreementWarning(str(report), modes=report), stacklevel=2)
    return report


# --------------------------------------------------------------------------- label switching


@dataclasses.dataclass(frozen=True)
class LabelSwitchingReport:
    """Outcome of :func:`check_label_switching`.

    A permutation ``perm`` maps labels onto the reference's: component ``k`` of the
    chain (or segment) is the reference's component ``perm[k]``. The reference is the
    first segment of the reference chain. A chain's labels are those of its first
    segment; a later segment whose labels differ is a switch within the chain. Gains are
    in pooled within-segment posterior standard deviations: the summed distance of the
    components from the reference under the labels they should have (identity for a
    chain, the chain's permutation for a segment) minus that under the best relabelling.

    Attributes
    ----------
    ok : bool
        No chain and no segment is relabelled with a gain above ``tolerance``.
    component_names : tuple of str
    reference_chain : int
    tolerance : float
    chain_permutations : tuple of tuple of int
        Labels of every chain (its first segment) mapped onto the reference.
    chain_gains : ndarray, shape (n_chains,)
    segment_permutations : ndarray of int, shape (n_chains, n_segments, n_components)
        Best permutation of every segment of every chain onto the reference.
    segment_gains : ndarray, shape (n_chains, n_segments)
        Gain of a segment's best permutation over its own chain's permutation.
    switched_chains : tuple of int
        Chains whose labels differ from the reference's.
    switched_segments : tuple of (int, int)
        ``(chain, segment)`` whose labels differ from their chain's (within-chain switching).
    segment_distances : ndarray, shape (n_chains, n_segments, n_components, n_components)
        ``[c, s, k, j]``: distance of segment ``(c, s)``'s component ``k`` from the
        reference's component ``j`` (posterior means, in pooled standard deviations).
    parameters : tuple of str
        The quantities compared per component.
    """

    ok: bool
    component_names: tuple[str, ...]
    reference_chain: int
    tolerance: float
    chain_permutations: tuple[tuple[int, ...], ...]
    chain_gains: np.ndarray
    segment_permutations: np.ndarray
    segment_gains: np.ndarray
    switched_chains: tuple[int, ...]
    switched_segments: tuple[tuple[int, int], ...]
    segment_distances: np.ndarray
    parameters: tuple[str, ...]

    def __str__(self) -> str:
        if self.ok:
            return (f"labels consistent across {len(self.chain_permutations)} chain(s) "
                    f"(tolerance {self.tolerance:g} sd)")
        names = self.component_names

        def mapping(perm):
            return ", ".join(f"{names[k]}->{names[j]}" for k, j in enumerate(perm) if k != j) or "identity"

        lines = ["label switching detected:"]
        for c in self.switched_chains:
            lines.append(f"  chain {c} vs reference chain {self.reference_chain}: "
                         f"{mapping(self.chain_permutations[c])} (closer by {self.chain_gains[c]:.3g} sd)")
        for c, s in self.switched_segments:
            segment = mapping(tuple(self.segment_permutations[c, s]))
            lines.append(f"  within chain {c}, segment {s}: {segment} against the reference, where the chain "
                         f"began with {mapping(self.chain_permutations[c])} "
                         f"(closer by {self.segment_gains[c, s]:.3g} sd)")
        lines.append("  use an ordering constraint (by mean, dispersion or weight) or relabel the draws.")
        return "\n".join(lines)


def _component_parameters(posterior):
    """Per-draw parameter vectors of the Gaussian components: (chain, draw, K, P) and names."""
    if "means" not in posterior.data_vars:
        raise ValueError(
            "the posterior has no `means` variable (chain, draw, component, feature); "
            "label switching is checked on the component means."
        )
    means = posterior["means"]
    names = tuple(_coord_labels(means, means.dims[2]))
    arrays = [np.asarray(means.values, dtype=float)]
    params = [f"means[{f}]" for f in _coord_labels(means, means.dims[3])]
    if "scales" in posterior.data_vars:
        scales = posterior["scales"]
        with np.errstate(divide="ignore"):
            arrays.append(np.log(np.asarray(scales.values, dtype=float)))
        params += [f"log scales[{f}]" for f in _coord_labels(scales, scales.dims[3])]
    weights = posterior.data_vars.get("weights")
    if weights is not None and weights.ndim == 3 and weights.shape[2] == len(names):
        with np.errstate(divide="ignore"):
            arrays.append(np.log(np.asarray(weights.values, dtype=float))[..., None])
        params.append("log weights")
    theta = np.concatenate(arrays, axis=-1)
    return theta, names, tuple(params)


def _best_assignment(cost):
    """Permutation minimising ``sum_k cost[k, perm[k]]``: brute force up to 7, else greedy."""
    k = cost.shape[0]
    if k <= _BRUTE_FORCE_MAX_COMPONENTS:
        perms = np.array(list(itertools.permutations(range(k))))
        totals = cost[np.arange(k), perms].sum(axis=1)
        return tuple(int(j) for j in perms[int(np.argmin(totals))])
    perm = [-1] * k
    work = cost.astype(float).copy()
    for _ in range(k):
        row, col = np.unravel_index(int(np.argmin(work)), work.shape)
        perm[row] = int(col)
        work[row, :] = np.inf
        work[:, col] = np.inf
    return tuple(perm)


def _distances(a, b, sd):
    """``[k, j]``: standardised Euclidean distance of a[k] from b[j] (both (K, P)).

    ``sd`` (K, P) holds each component's pooled posterior standard deviation; a pair
    uses the root mean square of the two. Exactly equal constant parameters count 0,
    unequal constant ones infinity.
    """
    diff = a[:, None, :] - b[None, :, :]
    scale = np.sqrt(0.5 * (sd[:, None, :] ** 2 + sd[None, :, :] ** 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(diff == 0.0, 0.0, np.abs(diff) / scale)
    return np.sqrt(np.sum(z**2, axis=-1))


def _cost(dist, perm):
    return float(sum(dist[k, j] for k, j in enumerate(perm)))


def check_label_switching(fit_or_idata, tolerance: float = 2.0, *, reference_chain: int = 0,
                          n_segments: int = 2, warn: bool = True) -> LabelSwitchingReport:
    """Post-hoc relabelling check: do all chains (and all parts of each chain) agree on labels?

    Every component is described by its posterior-mean parameters: the means, the log
    scales and the log weight (those present). Each chain is cut into ``n_segments``
    consecutive segments, and each segment's components are matched to those of the
    reference (the first segment of ``reference_chain``) by the permutation that
    minimises the summed distance, in units of the pooled within-segment posterior
    standard deviation of each parameter. A true switch moves a component by its
    separation from another, many standard deviations for separated components;
    sampling noise moves it by about ``1/sqrt(ESS)``. A chain whose first segment is
    relabelled disagrees with the reference chain; a later segment relabelled
    differently from its chain's first is a switch within the chain (``n_segments=2``
    compares the first and second halves; more segments find a late switch).

    Parameters
    ----------
    fit_or_idata : PosteriorFit or arviz.InferenceData
    tolerance : float
        A relabelling counts as a switch only when it brings the components closer to
        the reference by more than this many posterior standard deviations (summed over
        components). Nearly identical components, which no labelling tells apart, stay
        below it.
    reference_chain : int
    n_segments : int
        Consecutive parts each chain is cut into (>= 1; 1 checks chains against each
        other only).
    warn : bool
        Emit a :class:`LabelSwitchingWarning` with the permutations and gains on failure.

    Returns
    -------
    LabelSwitchingReport
    """
    if not float(tolerance) > 0.0:
        raise ValueError(f"tolerance must be > 0 (posterior standard deviations); got {tolerance}.")
    idata = _as_idata(fit_or_idata)
    theta, names, params = _component_parameters(idata.posterior)
    reference_chain, n_segments = _check_chain_and_segments(reference_chain, n_segments, theta.shape)
    seg_dist, seg_perms = _segment_matches(theta, reference_chain, n_segments)
    switches = _switches(seg_dist, seg_perms, tolerance)
    report = LabelSwitchingReport(
        ok=not switches["switched_chains"] and not switches["switched_segments"],
        component_names=names,
        reference_chain=reference_chain,
        tolerance=float(tolerance),
        segment_permutations=seg_perms,
        segment_distances=seg_dist,
        parameters=params,
        **switches,
    )
    if not report.ok and warn:
        permutations, gains = _switch_details(report)
        warnings.warn(LabelSwitchingWarning(str(report), report=report, permutations=permutations,
                                            gains=gains), stacklevel=2)
    return report


def _check_chain_and_segments(reference_chain, n_segments, theta_shape) -> tuple[int, int]:
    """``reference_chain`` and ``n_segments`` as ints, checked against the draws' (chain, draw, ...) shape."""
    n_chains, n_draws = theta_shape[:2]
    if not 0 <= int(reference_chain) < n_chains:
        raise ValueError(f"reference_chain must be in [0, {n_chains - 1}]; got {reference_chain}.")
    if int(n_segments) < 1 or 2 * int(n_segments) > n_draws:
        raise ValueError(f"n_segments must be between 1 and half the number of draws ({n_draws // 2}); "
                         f"got {n_segments}.")
    return int(reference_chain), int(n_segments)


def _segment_matches(theta, reference_chain, n_segments):
    """Distances of every segment's components from the reference's, and each segment's best permutation.

    ``theta`` (chain, draw, K, P). Returns ``seg_dist`` (chain, segment, K, K) and
    ``seg_perms`` (chain, segment, K), as :class:`LabelSwitchingReport` holds them.
    """
    n_chains, n_draws, n_components, n_params = theta.shape
    # Segment means and variances; the scale of each parameter is the median variance over
    # segments (robust to the few segments that contain a switch and so are too wide).
    bounds = np.array_split(np.arange(n_draws), n_segments)
    seg_mean = np.stack([np.stack([theta[c, idx].mean(axis=0) for idx in bounds]) for c in range(n_chains)])
    seg_var = np.stack([np.stack([theta[c, idx].var(axis=0) for idx in bounds]) for c in range(n_chains)])
    sd = np.sqrt(np.median(seg_var.reshape(-1, n_components, n_params), axis=0))
    ref = seg_mean[reference_chain, 0]
    seg_dist = np.zeros((n_chains, n_segments, n_components, n_components))
    seg_perms = np.zeros((n_chains, n_segments, n_components), dtype=int)
    for c in range(n_chains):
        for s in range(n_segments):
            seg_dist[c, s] = _distances(seg_mean[c, s], ref, sd)
            seg_perms[c, s] = _best_assignment(seg_dist[c, s])
    return seg_dist, seg_perms


def _switches(seg_dist, seg_perms, tolerance) -> dict[str, Any]:
    """Each chain's labels, and the chains and segments relabelled with a gain above ``tolerance``.

    Returns the :class:`LabelSwitchingReport` fields ``chain_permutations``,
    ``chain_gains``, ``segment_gains``, ``switched_chains`` and ``switched_segments``.
    """
    identity = tuple(range(seg_perms.shape[2]))
    chain_perms = tuple(tuple(int(j) for j in chain[0]) for chain in seg_perms)
    chain_gains = np.array([_cost(dist[0], identity) - _cost(dist[0], perm)
                            for dist, perm in zip(seg_dist, chain_perms, strict=True)])
    seg_gains = np.array([[_cost(d, perm) - _cost(d, p) for d, p in zip(dist, perms, strict=True)]
                          for dist, perms, perm in zip(seg_dist, seg_perms, chain_perms, strict=True)])
    switched_chains = tuple(c for c, perm in enumerate(chain_perms)
                            if perm != identity and chain_gains[c] > tolerance)
    switched_segments = tuple(
        (c, s) for c, perm in enumerate(chain_perms) for s in range(1, seg_perms.shape[1])
        if tuple(seg_perms[c, s]) != perm and seg_gains[c, s] > tolerance
    )
    return {"chain_permutations": chain_perms, "chain_gains": chain_gains, "segment_gains": seg_gains,
            "switched_chains": switched_chains, "switched_segments": switched_segments}


def _switch_details(report):
    """A :class:`LabelSwitchingWarning`'s ``permutations`` and ``gains``, by chain or (chain, segment)."""
    permutations: dict[Any, tuple[int, ...]] = {c: report.chain_permutations[c]
                                                for c in report.switched_chains}
    gains: dict[Any, float] = {c: float(report.chain_gains[c]) for c in report.switched_chains}
    for c, s in report.switched_segments:
        permutations[(c, s)] = tuple(int(j) for j in report.segment_permutations[c, s])
        gains[(c, s)] = float(report.segment_gains[c, s])
    return permutations, gains


# --------------------------------------------------------------------------- model comparison


def _loo_row(idata, var_name):
    if not _arviz.has_group(idata, "log_likelihood"):
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto-k warnings: reported as numbers
        loo = _arviz.loo(idata, var_name=var_name)
    pareto_k = loo.pareto_k
    return {
        "elpd_loo": loo.elpd,
        "se_elpd_loo": loo.se,
        "p_loo": loo.p_loo,
        "max_pareto_k": float(np.max(pareto_k)),
        "n_pareto_k_above_0.7": int(np.sum(pareto_k > 0.7)),
    }


def _em_row(em):
    return {
        "n_components": int(em.n_components),
        "n_parameters": int(em.n_parameters),
        "log_likelihood": float(em.log_likelihood),
        "bic": float(em.bic),
        "aic": float(em.aic),
    }


def compare_models(fits: Mapping[str, Any], *, loo_var_name: str | None = None) -> pd.DataFrame:
    """BIC/AIC of EM fits and PSIS-LOO of posterior fits, side by side.

    Parameters
    ----------
    fits : mapping of str to EMResult, PosteriorFit or arviz.InferenceData
        An ``EMResult`` contributes its BIC and AIC; a ``PosteriorFit`` contributes its
        EM start's BIC and AIC (when it has one) and PSIS-LOO (``arviz.loo``) when its
        InferenceData has a ``log_likelihood`` group (computed only on request, since
        it holds draws x stars numbers).
    loo_var_name : str, optional
        The ``log_likelihood`` variable, when the group has several.

    Returns
    -------
    pandas.DataFrame
        One row per model (index: the mapping's keys) with ``kind``, ``n_components``,
        ``n_parameters``, ``log_likelihood``, ``bic``, ``aic``, ``delta_bic``,
        ``delta_aic`` (from the smallest), ``elpd_loo``, ``se_elpd_loo``, ``p_loo``,
        ``max_pareto_k``, ``n_pareto_k_above_0.7``, ``delta_elpd_loo`` (from the
        largest); NaN where not applicable. Sorted by BIC, or by ELPD when no row has
        a BIC.
    """
    if not isinstance(fits, Mapping) or not fits:
        raise ValueError("fits must be a non-empty mapping of model name to EMResult / PosteriorFit.")
    rows = {}
    for name, fit in fits.items():
        if hasattr(fit, "bic") and hasattr(fit, "n_parameters"):
            rows[name] = {"kind": "em", **_em_row(fit)}
        elif hasattr(fit, "posterior") or hasattr(fit, "idata"):
            idata = _as_idata(fit, parameter=f"fits[{name!r}]")
            row: dict[str, Any] = {"kind": "posterior"}
            em = getattr(fit, "em", None)
            if em is not None:
                row.update(_em_row(em))
            row.update(_loo_row(idata, loo_var_name))
            if "elpd_loo" not in row:
                logger.info("fits[%r] has no log_likelihood group: no LOO (request it when sampling)", name)
            rows[name] = row
        else:
            raise ValueError(f"fits[{name!r}] must be an EMResult, a PosteriorFit or an InferenceData; "
                             f"got {type(fit).__name__}.")
    columns = ["kind", "n_components", "n_parameters", "log_likelihood", "bic", "aic", "delta_bic",
               "delta_aic", "elpd_loo", "se_elpd_loo", "p_loo", "max_pareto_k", "n_pareto_k_above_0.7",
               "delta_elpd_loo"]
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns)
    for col in ("bic", "aic"):
        table[f"delta_{col}"] = table[col] - table[col].min()
    table["delta_elpd_loo"] = table["elpd_loo"].max() - table["elpd_loo"]
    sort_by = "bic" if table["bic"].notna().any() else "elpd_loo"
    if table[sort_by].notna().any():
        ascending = sort_by == "bic"
        table = table.sort_values(sort_by, ascending=ascending, na_position="last")
    return table


# --------------------------------------------------------------------------- model check


@dataclasses.dataclass(frozen=True)
class ModelCheckReport:
    """Outcome of :func:`check_model_fit`: the data against mock catalogues from the posterior.

    Attributes
    ----------
    ok : bool
        ``p_value >= alpha``.
    p_value : float
        Posterior predictive p-value of the whole check: how often a mock catalogue looks
        at least as discrepant, on its most discrepant statistic, as the data do on theirs.
        Calibrated against the mocks themselves, so it already accounts for the several
        statistics and features tested.
    alpha : float
    n_replicates : int
    statistics : pandas.DataFrame
        One row per (feature, statistic): ``feature``, ``statistic`` ("chi2_fine",
        "chi2_coarse", "max_bin"), ``n_bins``, ``observed``, ``replicated_median``, and
        ``p_value`` (that statistic's own posterior predictive p-value).
    bins : pandas.DataFrame
        One row per fine bin of every feature: ``feature``, ``low``, ``high``,
        ``observed`` (stars), ``expected`` (mean of the mocks), ``p2_5``, ``p97_5`` (the
        mocks' 95% band), ``z`` (observed minus expected over the mocks' standard
        deviation) and ``outside`` (the observed count outside the band).
    worst_bins : pandas.DataFrame
        The five rows of ``bins`` with the largest ``|z|``.
    """

    ok: bool
    p_value: float
    alpha: float
    n_replicates: int
    statistics: pd.DataFrame
    bins: pd.DataFrame
    worst_bins: pd.DataFrame

    def __str__(self) -> str:
        head = "model check passed" if self.ok else "MODEL MISFIT"
        n_out = int(self.bins["outside"].sum())
        lines = [f"{head}: posterior predictive p = {self.p_value:.3g} (alarm below {self.alpha:g}) from "
                 f"{self.n_replicates} mock catalogues; {n_out} of {len(self.bins)} bins outside their "
                 "95% band"]
        for feature, rows in self.statistics.groupby("feature", sort=False):
            parts = ", ".join(f"{row.statistic} p={row.p_value:.3g}" for row in rows.itertuples())
            lines.append(f"  {feature}: {parts}")
        if not self.ok:
            lines.append("  worst bins (observed stars vs the mocks' mean and 95% band):")
            for row in self.worst_bins.itertuples():
                lines.append(f"    {row.feature} in [{row.low:.4g}, {row.high:.4g}): {row.observed:.0f} "
                             f"observed, {row.expected:.1f} expected ({row.p2_5:.0f}-{row.p97_5:.0f}), "
                             f"z = {row.z:+.1f}")
            lines.append("  the model misses structure in the data: add a component (a stream, a second "
                         "field population) or a background, and check the ppc figure.")
        return "\n".join(lines)


# Mock catalogues pooled to place the bin edges of check_model_fit.
_PILOT_CATALOGUES = 20


def _quantile_edges(values, n_bins):
    """Bin edges with about equal numbers of stars per bin; -inf and inf outermost."""
    inner = np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))
    return np.concatenate([[-np.inf], inner, [np.inf]])


def _exceedance_p(replicated, observed):
    """Posterior predictive p-values: of the data, and of every mock against the other mocks.

    ``replicated`` (S, T), ``observed`` (T,). Returns (p_observed (T,), p_replicated (S, T)),
    ``p = (1 + #{mocks at least as large}) / (S + 1)`` for the data, and the same among
    the other ``S - 1`` mocks for each mock.
    """
    n = replicated.shape[0]
    ordered = np.sort(replicated, axis=0)
    at_least_obs = n - np.stack([np.searchsorted(ordered[:, t], observed[t], side="left")
                                 for t in range(replicated.shape[1])])
    p_obs = (1.0 + at_least_obs) / (n + 1.0)
    at_least_rep = n - np.stack([np.searchsorted(ordered[:, t], replicated[:, t], side="left")
                                 for t in range(replicated.shape[1])], axis=1)  # includes itself
    return p_obs, at_least_rep / float(n)


def _discrepancies(counts, expected):
    """Pearson chi-square over bins and the largest single-bin term, per leading index."""
    terms = (counts - expected) ** 2 / np.maximum(expected, 0.5)
    return terms.sum(axis=-1), terms.max(axis=-1)


def _check_model_fit_options(n_replicates, alpha, n_bins) -> None:
    if (isinstance(n_replicates, bool) or not isinstance(n_replicates, (int, np.integer))
            or n_replicates < 100):
        raise ValueError(f"n_replicates must be an integer >= 100; got {n_replicates!r}.")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}.")
    if n_bins is not None and (isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer))
                               or n_bins < 2):
        raise ValueError(f"n_bins must be an integer >= 2; got {n_bins!r}.")


def _observed_counts(values, edges, shape) -> np.ndarray:
    """Stars of ``values`` (N, D) per bin of each feature's ``edges``, zero-padded to ``shape`` (D, B)."""
    observed = np.zeros(shape)
    for j, e in enumerate(edges):  # the same binning rule as the mocks' (searchsorted, right side)
        column = values[:, j][~np.isnan(values[:, j])]  # NaN: a missing feature, not counted
        index = np.clip(np.searchsorted(e, column, side="right") - 1, 0, len(e) - 2)
        observed[j, : len(e) - 1] = np.bincount(index, minlength=len(e) - 1)
    return observed


def _fit_statistics(counts, observed, expected, edges, coarse, names):
    """The three discrepancy statistics of every feature, for the mocks and for the data.

    ``counts`` (S, D, B) of the mocks, ``observed`` and ``expected`` (D, B). Returns the
    (feature, statistic, n_bins) of each statistic, the mocks' values (S, T) and the data's (T,).
    """
    stat_names, rep_stats, obs_stats = [], [], []
    for j, e in enumerate(edges):
        nb = len(e) - 1
        # Coarse bins: consecutive fine bins merged (the fine edges are quantiles, so these are too).
        groups = np.array_split(np.arange(nb), coarse)

        def merge(c, groups=groups):
            return np.stack([c[..., g].sum(axis=-1) for g in groups], axis=-1)

        chi_rep, max_rep = _discrepancies(counts[:, j, :nb], expected[j, :nb])
        chi_obs, max_obs = _discrepancies(observed[j, :nb], expected[j, :nb])
        coarse_rep, _ = _discrepancies(merge(counts[:, j, :nb]), merge(expected[j, :nb]))
        coarse_obs, _ = _discrepancies(merge(observed[j, :nb]), merge(expected[j, :nb]))
        for name, rep, obs, size in (("chi2_fine", chi_rep, chi_obs, nb),
                                     ("chi2_coarse", coarse_rep, coarse_obs, len(groups)),
                                     ("max_bin", max_rep, max_obs, nb)):
            stat_names.append((names[j], name, size))
            rep_stats.append(rep)
            obs_stats.append(obs)
    return stat_names, np.stack(rep_stats, axis=1), np.asarray(obs_stats)


def _bin_table(counts, observed, expected, edges, names) -> pd.DataFrame:
    """:attr:`ModelCheckReport.bins`: every fine bin's observed count against the mocks'."""
    rows = []
    for j, e in enumerate(edges):
        nb = len(e) - 1
        band = np.percentile(counts[:, j, :nb], [2.5, 97.5], axis=0)
        sd = counts[:, j, :nb].std(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(sd > 0, (observed[j, :nb] - expected[j, :nb]) / sd,
                         np.where(observed[j, :nb] == expected[j, :nb], 0.0, np.inf))
        for b in range(nb):
            rows.append({"feature": names[j], "low": e[b], "high": e[b + 1],
                         "observed": observed[j, b], "expected": expected[j, b], "p2_5": band[0, b],
                         "p97_5": band[1, b], "z": z[b],
                         "outside": bool(observed[j, b] < band[0, b] or observed[j, b] > band[1, b])})
    return pd.DataFrame(rows)


def check_model_fit(key, fit, *, n_replicates: int = 500, alpha: float = 0.01, n_bins: int | None = None,
                    warn: bool = True) -> ModelCheckReport:
    """Posterior predictive goodness of fit per feature: do the data look like mock catalogues?

    ``n_replicates`` mock catalogues are drawn from the posterior, each star with its
    own measurement errors (and its own weights under a radius law),
    :func:`bayesmix.membership.posterior_predictive_counts`. For every feature the stars
    are counted in fine bins (about ten stars each, at most 50) and coarse bins (a
    quarter as many), with edges at quantiles of the data, and three discrepancy
    statistics are computed for the data and for every mock against the mocks' mean
    counts: the Pearson chi-square over fine bins and over coarse bins (the overall
    shape) and the largest single fine-bin term (a narrow structure the model lacks,
    such as an unmodelled cold stream). Each statistic's p-value is the fraction of
    mocks at least as discrepant. The check's p-value compares the data's smallest
    p-value with the mocks' own smallest p-values, so it is calibrated for the number
    of statistics and features. Like every posterior predictive p-value it is
    conservative when the model is right (the data also fitted the model); on data
    drawn from the fitted model it stays below ``alpha`` less often than ``alpha``.

    Parameters
    ----------
    key : int or JAX PRNG key
    fit : PosteriorFit
    n_replicates : int
        Mock catalogues (at least 100; p-values are resolved to ``1 / (n_replicates + 1)``).
    alpha : float
        The check fails (and warns) when its p-value is below this.
    n_bins : int, optional
        Fine bins per feature (default: about ten stars per bin, between 5 and 50).
    warn : bool
        Emit a :class:`ModelMisfitWarning` carrying the report on failure.

    Returns
    -------
    ModelCheckReport

    Examples
    --------
    >>> report = check_model_fit(0, fit)  # doctest: +SKIP
    >>> report.ok, report.p_value  # doctest: +SKIP
    (True, 0.41)
    """
    # Here, not at the top: these import JAX, which the rest of this module (diagnostics of a
    # saved InferenceData, `bayesmix.check_convergence`) does not need.
    from bayesmix._random import as_key, split
    from bayesmix.membership import posterior_predictive, posterior_predictive_counts

    _check_model_fit_options(n_replicates, alpha, n_bins)
    values = np.asarray(fit.data.values, dtype=float)
    n_stars, n_features = values.shape
    fine = int(n_bins) if n_bins is not None else int(np.clip(n_stars // 10, 5, 50))
    names = list(getattr(fit.model, "feature_names", ()) or [f"x{j}" for j in range(n_features)])
    # Edges at quantiles of the posterior predictive distribution (a pilot of mock catalogues), so
    # every bin expects about the same number of stars under the model: stars the model does not
    # expect (a cold stream it lacks) pile up in one or two bins instead of being spread over
    # several narrow bins, as edges at the data's own quantiles would do.
    key_pilot, key_counts = split(as_key(key))
    pilot = posterior_predictive(key_pilot, fit, _PILOT_CATALOGUES).reshape(-1, n_features)
    # A star's missing feature is missing (NaN) in its mocks too, and counted in neither.
    edges = [_quantile_edges(pilot[np.isfinite(pilot[:, j]), j], fine) for j in range(n_features)]
    counts = posterior_predictive_counts(key_counts, fit, edges, int(n_replicates)).astype(float)  # (S, D, B)
    measured = getattr(fit.data, "observed", None)
    observed = _observed_counts(values if measured is None else np.where(measured, values, np.nan), edges,
                                counts.shape[1:])
    expected = counts.mean(axis=0)
    stat_names, rep_stats, obs_stats = _fit_statistics(counts, observed, expected, edges, max(2, fine // 4),
                                                       names)
    p_obs, p_rep = _exceedance_p(rep_stats, obs_stats)
    p_value = float((1.0 + np.sum(p_rep.min(axis=1) <= p_obs.min())) / (len(p_rep) + 1.0))
    statistics = pd.DataFrame({
        "feature": [f for f, _, _ in stat_names], "statistic": [s for _, s, _ in stat_names],
        "n_bins": [b for _, _, b in stat_names], "observed": obs_stats,
        "replicated_median": np.median(rep_stats, axis=0), "p_value": p_obs})
    bins = _bin_table(counts, observed, expected, edges, names)
    worst = bins.iloc[np.argsort(-np.abs(bins["z"].to_numpy()), kind="stable")[:5]].reset_index(drop=True)
    report = ModelCheckReport(ok=p_value >= float(alpha), p_value=p_value, alpha=float(alpha),
                              n_replicates=int(n_replicates), statistics=statistics, bins=bins,
                              worst_bins=worst)
    if not report.ok and warn:
        warnings.warn(ModelMisfitWarning(str(report), report=report), stacklevel=2)
    return report
