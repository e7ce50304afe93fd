"""Figures astronomers expect from a mixture fit.

* posterior: :func:`corner_plot`, :func:`trace_plot` (chains and divergences), and
  the same from plain arrays (:func:`corner_columns` / :func:`corner_figure`,
  :func:`trace_variables` / :func:`trace_figure`);
* memberships: :func:`membership_radius_plot`, :func:`membership_histogram`;
* model checks: :func:`ppc_plot` / :func:`ppc_plot_fit` (posterior predictive histograms;
  :func:`predictive_band` and :func:`predictive_band_plot`: their binned counts, and the
  plot from them),
  :func:`ellipse_plot` (stars and each component's intrinsic covariance);
* point fits: :func:`em_history_plot`, :func:`information_criterion_plot` (BIC/AIC
  against K), :func:`em_animation` (the EM iterations as a GIF).

Every function returns the matplotlib Figure and draws into a given ``fig=`` / ``ax=``
when one is passed, so figures compose into a user's own layout (:func:`em_animation`
writes a file and returns its path instead). Nothing here computes statistics of its
own beyond counting and histogramming: values come from the fit, :mod:`bayesmix.em`,
:func:`bayesmix.diagnostics.summary` and :mod:`bayesmix.membership`. matplotlib (and
JAX, where a function needs it) is imported inside the functions, so importing this
module is cheap.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bayesmix._files import atomic_write

__all__ = [
    "PredictiveBand",
    "cluster_shrinkage_plot",
    "cluster_velocity_plot",
    "corner_columns",
    "corner_figure",
    "corner_plot",
    "dispersion_profile_plot",
    "element_labels",
    "ellipse_plot",
    "em_animation",
    "em_history_plot",
    "feature_labels",
    "information_criterion_plot",
    "membership_histogram",
    "membership_radius_plot",
    "ppc_plot",
    "ppc_plot_fit",
    "predictive_band",
    "predictive_band_plot",
    "trace_figure",
    "trace_plot",
    "trace_variables",
]

_BACKGROUND_COLOUR = "0.55"


# --------------------------------------------------------------------------- shared helpers


def _new_axes(ax, figsize):
    """(fig, ax): the given axes and their figure, or a new single-panel figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    if not hasattr(ax, "figure") or not hasattr(ax, "plot"):
        raise ValueError(f"ax must be a matplotlib Axes (e.g. from plt.subplots()); got {type(ax).__name__}.")
    return ax.figure, ax


def _component_colour(k: int, n_gaussian: int) -> str:
    return _BACKGROUND_COLOUR if k >= n_gaussian else f"C{k % 10}"


def _idata_of(fit):
    """The InferenceData of a fit, or the argument itself when it is one (any ArviZ line)."""
    idata = getattr(fit, "idata", fit)
    if not hasattr(idata, "posterior"):
        raise ValueError(f"expected a PosteriorFit or an ArviZ InferenceData with a posterior group; got "
                         f"{type(fit).__name__} (draws of your own program: bayesmix.posterior_from_draws).")
    return idata


def _scalar_variables(fit, var_names) -> dict[str, np.ndarray]:
    """Each named posterior variable as (chain, draw) arrays, by label.

    A vector variable gives one entry per element, labelled with its coordinates
    (``means[thin, feh]``), so ``["weights", "means"]`` works as well as ``["mean1"]``.
    """
    post = _idata_of(fit).posterior
    var_names = [var_names] if isinstance(var_names, str) else list(var_names)
    if not var_names:
        raise ValueError("var_names is empty; name at least one posterior variable (e.g. 'mean1').")
    missing = [name for name in var_names if name not in post]
    if missing:
        raise ValueError(f"var_names {missing} are not posterior variables; available: "
                         f"{sorted(post.data_vars)}.")
    out = {}
    for name in var_names:
        da = post[name]
        if da.ndim == 2:
            out[name] = da.values
            continue
        extra = da.dims[2:]
        coords = [da.coords[d].values if d in da.coords else np.arange(da.sizes[d]) for d in extra]
        values = da.values
        for index in np.ndindex(*values.shape[2:]):
            label = f"{name}[{', '.join(str(c[i]) for c, i in zip(coords, index, strict=True))}]"
            out[label] = values[(slice(None), slice(None), *index)]
    return out


def _feature_units(fit) -> list[str | None]:
    """Each feature's unit from the fit's catalogue (None where unknown or dimensionless)."""
    names = list(getattr(fit.model, "feature_names", ()) or [])
    units = list(getattr(getattr(fit, "catalogue", None), "units", ()) or [])
    units += [None] * (len(names) - len(units))
    return [u if u not in (None, "", "None") else None for u in units[: len(names)]]


def feature_labels(fit) -> list[str]:
    """Each feature's name with its unit, e.g. ``["RV [km/s]"]`` (units from the fit's catalogue).

    Examples
    --------
    >>> feature_labels(fit)  # doctest: +SKIP
    ['feh [dex]', 'MgFe [dex]']
    """
    names = list(getattr(fit.model, "feature_names", ()) or [])
    units = _feature_units(fit)
    return [f"{name} [{unit}]" if unit else name for name, unit in zip(names, units, strict=True)]


# The tutorial's scalar names, and the feature each is measured in.
_TUTORIAL_FEATURE = {"mean1": 0, "sigma1": 0, "mean2": 0, "sigma2": 0}


def element_labels(fit, var_names: Sequence[str]) -> list[str]:
    """Labels of the elements :func:`corner_plot` draws, with units: ``means[cluster, RV] [km/s]``.

    Means, scales and the tutorial's ``mean1 ... sigma2`` carry their feature's unit;
    weights, correlations and the member-fraction law are dimensionless.
    """
    units = _feature_units(fit)
    by_name = dict(zip(getattr(fit.model, "feature_names", ()) or (), units, strict=False))
    labels = []
    for label in _scalar_variables(fit, var_names):
        name = label.split("[", 1)[0]
        unit = None
        if name in _TUTORIAL_FEATURE and units:
            unit = units[_TUTORIAL_FEATURE[name]]
        elif name in ("means", "scales"):
            unit = by_name.get(label.rsplit(", ", 1)[-1].rstrip("]"))
        labels.append(f"{label} [{unit}]" if unit else label)
    return labels


def _flat_truths(fit, var_names, truths) -> list:
    """Reference values in the order of :func:`_scalar_variables` (None where not given)."""
    post = _idata_of(fit).posterior
    flat = []
    for name in ([var_names] if isinstance(var_names, str) else var_names):
        n = int(np.prod(post[name].shape[2:], dtype=int))
        value = None if truths is None else truths.get(name)
        if value is None:
            flat.extend([None] * n)
            continue
        value = np.asarray(value, dtype=float)
        if value.size not in (1, n):
            raise ValueError(f"truths[{name!r}] has {value.size} values for a variable with {n} entries.")
        flat.extend(np.broadcast_to(value.reshape(-1), (n,)).tolist())
    return flat


def _values_2d(name, values) -> np.ndarray:
    """Measured values as a float (n_stars, n_features) array; accepts a catalogue/Observations.

    NaN marks a missing feature (a catalogue's or Observations' ``observed`` mask becomes
    NaN): each panel shows the stars that have its features.
    """
    observed = None
    if hasattr(values, "values") and not isinstance(values, np.ndarray) and not callable(values.values):
        values, observed = values.values, getattr(values, "observed", None)
    x = np.asarray(values, dtype=float)
    if observed is not None:  # as likelihood.measured_values, without importing JAX here
        x = np.where(np.asarray(observed), x, np.nan)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n_stars, n_features) (or (n_stars,)); got {x.shape}.")
    if np.isinf(x).any():
        raise ValueError(f"{name} has infinite entries; drop those stars first.")
    empty = np.flatnonzero(np.isnan(x).all(axis=0))
    if empty.size:
        raise ValueError(f"{name} has no measured value in feature(s) {empty.tolist()} (all NaN).")
    return x


def _check_feature(name, feature, n_features) -> int:
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)):
        raise ValueError(f"{name} must be an integer feature index; got {feature!r}.")
    if not -n_features <= int(feature) < n_features:
        raise ValueError(f"{name}={feature} is out of range for {n_features} feature(s); "
                         f"use 0..{n_features - 1}.")
    return int(feature) % n_features


def _check_features_pair(features, n_features) -> tuple[int, int]:
    if n_features < 2:
        raise ValueError("the data have one feature; ellipses need two (use ppc_plot or "
                         "membership_histogram for 1-D data).")
    try:
        i, j = features
    except (TypeError, ValueError) as exc:
        raise ValueError(f"features must be a pair of feature indices like (0, 1); "
                         f"got {features!r}.") from exc
    i, j = _check_feature("features[0]", i, n_features), _check_feature("features[1]", j, n_features)
    if i == j:
        raise ValueError(f"features must name two different features; got {features!r}.")
    return i, j


def _mixture_arrays(params):
    """(means (K, D), covariances (K, D, D), weights) from MixtureParams, EMResult or PosteriorFit."""
    if hasattr(params, "posterior_mean_params"):
        params = params.posterior_mean_params()
    elif hasattr(params, "log_likelihood_history") and hasattr(params, "params"):
        params = params.params
    try:
        weights, means, covs = params
    except (TypeError, ValueError) as exc:
        raise ValueError("params must be a MixtureParams, an EMResult or a PosteriorFit; got "
                         f"{type(params).__name__}.") from exc
    means, covs = np.asarray(means, float), np.asarray(covs, float)
    if means.ndim != 2 or covs.shape != (*means.shape, means.shape[1]):
        raise ValueError(f"params need means (K, D) and covariances (K, D, D); got {means.shape} and "
                         f"{covs.shape}.")
    return means, covs, np.asarray(weights, float)


def _ellipse(mean2, cov2, radius, **style):
    """Ellipse of points at Mahalanobis distance ``radius`` from ``mean2`` under ``cov2`` (2x2)."""
    from matplotlib.patches import Ellipse

    eigval, eigvec = np.linalg.eigh(cov2)
    eigval = np.clip(eigval, 0.0, None)
    angle = np.degrees(np.arctan2(eigvec[1, 1], eigvec[0, 1]))  # major axis: the larger eigenvalue
    return Ellipse(tuple(mean2), 2 * radius * np.sqrt(eigval[1]), 2 * radius * np.sqrt(eigval[0]),
                   angle=angle, fill=False, **style)


def _component_ellipses(ax, means, covs, pair, *, radii=(1.0, 2.0), lw=2.0, alpha=1.0, zorder=3,
                        mark_means=True):
    """Draw every component's ellipses (and mean) in the ``pair`` plane; returns the artists."""
    from matplotlib import patheffects

    i, j = pair
    artists = []
    styles = ("-", "--", ":")
    for k in range(len(means)):
        colour = f"C{k % 10}"
        m2 = means[k, [i, j]]
        c2 = covs[k][np.ix_([i, j], [i, j])]
        for n, radius in enumerate(radii):
            width = lw if n == 0 else 0.75 * lw
            # A white rim keeps the outline visible over stars of the same colour.
            rim = [patheffects.withStroke(linewidth=width + 2, foreground="white")] if alpha == 1.0 else []
            patch = _ellipse(m2, c2, radius, edgecolor=colour, linestyle=styles[min(n, 2)], lw=width,
                             alpha=alpha, zorder=zorder, path_effects=rim)
            artists.append(ax.add_patch(patch))
        if mark_means:
            artists += ax.plot(*m2, marker="X", ms=9, color=colour, mec="k", mew=0.8, ls="none",
                               zorder=zorder + 1)
    return artists


def _data_limits(x, pad=0.05):
    """Axis limits covering the central 99.6% of ``x`` (a few outliers do not shrink the stars)."""
    low, high = np.nanpercentile(x, [0.2, 99.8])  # NaN: a star missing this feature
    if high <= low:
        low, high = low - 0.5, high + 0.5
    span = high - low
    return low - pad * span, high + pad * span


# --------------------------------------------------------------------------- posterior


def corner_plot(fit, var_names: Sequence[str], *, truths: Mapping[str, float] | None = None,
                labels: Sequence[str] | None = None, fig=None, **corner_kwargs):
    """Corner plot of posterior variables with 16/50/84 quantiles.

    Parameters
    ----------
    fit : PosteriorFit or arviz.InferenceData
    var_names : str or sequence of str
        Posterior variables, e.g. ``["mean1", "sigma1", "frac1"]``; a vector variable
        (``"weights"``, ``"means"``, ``"scales"``) contributes one panel per element,
        labelled with its coordinates (``means[thin, feh]``). Constant (frozen)
        elements are left out.
    truths : mapping of str to float or array, optional
        Reference values drawn as lines (true values, or the EM/MAP point), by variable
        name; arrays for vector variables, in the posterior's component order.
    labels : sequence of str, optional
        Axis labels, one per plotted element (default: the element labels).
    fig : matplotlib Figure, optional
        Drawn into (needs one axis per pair of plotted elements, or none).
    **corner_kwargs
        Passed to :func:`corner.corner`.

    Returns
    -------
    matplotlib.figure.Figure

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
    >>> from bayesmix import plotting
    >>> fig = plotting.corner_plot(fit, ["means", "scales"])
    >>> len(fig.axes)  # 4 quantities: a 4 x 4 grid
    16
    """
    columns, names, truth_values = corner_columns(fit, var_names, truths=truths, labels=labels)
    return corner_figure(columns, names, truth_values, fig=fig, **corner_kwargs)


def corner_columns(fit, var_names: Sequence[str], *, truths: Mapping[str, float] | None = None,
                   labels: Sequence[str] | None = None) -> tuple[np.ndarray, list[str], list | None]:
    """What :func:`corner_plot` draws, as plain data: (columns (n_draws, m), m labels, m
    reference values or None).

    Constant elements (frozen parameters) are left out: corner cannot draw a zero-width range.
    """
    variables = _scalar_variables(fit, var_names)
    truth_values = _flat_truths(fit, var_names, truths)
    names = list(variables)
    if labels is not None:
        if len(labels) != len(names):
            raise ValueError(f"labels has {len(labels)} entries for {len(names)} plotted quantities {names}.")
        names = list(labels)
    columns = np.column_stack([v.reshape(-1) for v in variables.values()])
    varying = np.ptp(columns, axis=0) > 0
    if not varying.any():
        raise ValueError(f"every selected quantity is constant over the draws ({names}); nothing to plot.")
    keep = np.flatnonzero(varying)
    truth_kept = [truth_values[i] for i in keep]
    return (columns[:, keep], [names[i] for i in keep],
            truth_kept if any(t is not None for t in truth_kept) else None)


def corner_figure(columns, labels: Sequence[str], truths: Sequence | None = None, *, fig=None,
                  **corner_kwargs):
    """:func:`corner_plot` drawn from plain data (the output of :func:`corner_columns`).

    Parameters
    ----------
    columns : array_like, shape (n_draws, m)
    labels : sequence of m str
    truths : sequence of m floats (None where unknown), optional
    fig : matplotlib Figure, optional
    **corner_kwargs
        Passed to :func:`corner.corner`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import corner

    many = len(labels) > 6  # long element labels over narrow panels: smaller text
    options = {"quantiles": [0.16, 0.5, 0.84], "show_titles": True, "title_fmt": ".3g",
               "title_kwargs": {"fontsize": 7 if many else 10},
               "label_kwargs": {"fontsize": 8 if many else 10},
               "labels": list(labels), "truths": None if truths is None else list(truths), **corner_kwargs}
    return corner.corner(np.asarray(columns), fig=fig, **options)


def trace_plot(fit, var_names: Sequence[str] | None = None, *, fig=None):
    """Per-chain traces and marginal histograms of scalar posterior variables, divergences marked.

    One row per variable: the left panel shows each chain's draws against draw index
    (one colour per chain), divergent transitions marked by black ticks along the bottom
    and black dots on the trace; the right panel shows each chain's histogram on the same
    value axis. Chains that disagree, trends, and divergences clustered at some values are
    what to look for.

    Parameters
    ----------
    fit : PosteriorFit or arviz.InferenceData
        With ``idata.posterior`` (chain, draw) variables and ``idata.sample_stats.diverging``
        (any InferenceData, e.g. from ``numpyro`` via ``arviz.from_numpyro``).
    var_names : sequence of str, optional
        Scalar posterior variables (e.g. ``["mean1", "sigma1", "frac1"]``); None plots
        every scalar variable of the posterior.
    fig : matplotlib Figure, optional
        Empty, or holding exactly ``2 * len(var_names)`` axes (used row by row).

    Returns
    -------
    matplotlib.figure.Figure

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
    >>> from bayesmix import plotting
    >>> fig = plotting.trace_plot(fit, ["means"])
    >>> fig.axes[0].get_ylabel()
    'means[cluster, RV]'
    """
    post = _idata_of(fit).posterior
    if var_names is None:
        var_names = [name for name in post.data_vars if post[name].ndim == 2]
        if not var_names:
            raise ValueError(f"the posterior has no scalar variables (it has {sorted(post.data_vars)}); "
                             "pass var_names, or use arviz.plot_trace(fit.idata) for vector variables.")
    return trace_figure(*trace_variables(fit, var_names), fig=fig)


def trace_variables(fit, var_names: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """What :func:`trace_plot` draws, as plain data: ({label: (chain, draw) array}, the
    (chain, draw) divergence flags or None)."""
    return _scalar_variables(fit, var_names), _divergences(fit)


def trace_figure(variables: Mapping[str, np.ndarray], diverging=None, *, fig=None):
    """:func:`trace_plot` drawn from plain data.

    Parameters
    ----------
    variables : mapping of str to array, each shape (n_chains, n_draws)
        One row of panels per entry, labelled by its key.
    diverging : array of bool, shape (n_chains, n_draws), optional
        Divergent transitions.
    fig : matplotlib Figure, optional
        Empty, or holding exactly ``2 * len(variables)`` axes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if not variables:
        raise ValueError("variables is empty; pass at least one {label: (chain, draw) array}.")
    n_rows = len(variables)
    n_chains = int(np.shape(next(iter(variables.values())))[0])
    if fig is None:
        fig = plt.figure(figsize=(9.0, 1.8 * n_rows + 0.7), layout="constrained")
    if not fig.axes:
        # The density panels copy their trace's value range instead of sharing its y axis, so
        # they can go without ticks (each tick is drawn several times by the layout engine).
        axes = fig.subplots(n_rows, 2, squeeze=False, gridspec_kw={"width_ratios": [3, 1]})
        for row in range(1, n_rows):  # traces share the draw axis; densities keep their own scales
            axes[row, 0].sharex(axes[0, 0])
            axes[row - 1, 0].tick_params(labelbottom=False)
    elif len(fig.axes) == 2 * n_rows:
        axes = np.asarray(fig.axes).reshape(n_rows, 2)
    else:
        raise ValueError(f"fig has {len(fig.axes)} axes; pass an empty figure or one with "
                         f"2 * {n_rows} = {2 * n_rows} axes (trace and histogram per variable).")
    for row, (name, draws) in enumerate(variables.items()):
        _trace_row(axes[row, 0], axes[row, 1], name, draws, diverging)
    axes[-1, 0].set_xlabel("draw")
    axes[-1, 1].set_xlabel("density")
    n_div = int(diverging.sum()) if diverging is not None else 0
    handles = [plt.Line2D([], [], color=f"C{c % 10}", label=f"chain {c}") for c in range(n_chains)]
    if n_div:
        handles.append(plt.Line2D([], [], color="k", marker="|", ls="none", ms=8,
                                  label=f"divergent ({n_div})"))
    axes[0, 0].legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(handles),
                      frameon=False, fontsize="small", borderaxespad=0.1)
    return fig


def _divergences(fit):
    """(chain, draw) bool array of divergent transitions, or None when not recorded."""
    stats = getattr(_idata_of(fit), "sample_stats", None)
    if stats is None or "diverging" not in stats:
        return None
    return np.asarray(stats["diverging"].values).astype(bool)


def _trace_row(ax_trace, ax_hist, name, draws, diverging):
    n_chains, n_draws = draws.shape
    edges = np.histogram_bin_edges(draws, bins=min(40, max(10, n_draws // 10)))
    x = np.arange(n_draws)
    for c in range(n_chains):
        colour = f"C{c % 10}"
        ax_trace.plot(x, draws[c], color=colour, lw=0.6, alpha=0.8)
        ax_hist.hist(draws[c], bins=edges, density=True, orientation="horizontal", histtype="step",
                     color=colour, lw=1.2)
    if diverging is not None and diverging.any():
        chain, at = np.nonzero(diverging)
        # Ticks in axes-fraction height, so they sit at the bottom whatever the values; dots
        # on the trace show where in parameter space the sampler diverged.
        ax_trace.vlines(at, 0.0, 0.08, transform=ax_trace.get_xaxis_transform(), colors="k", lw=0.8)
        ax_trace.plot(at, draws[chain, at], "o", color="k", ms=2.5, ls="none")
    ax_trace.set_ylabel(name)
    ax_trace.set_xlim(0, n_draws - 1)
    ax_hist.set_ylim(ax_trace.get_ylim())
    ax_hist.set_xticks([])  # density values carry no information; values are on the trace's axis
    ax_hist.set_yticks([])


# --------------------------------------------------------------------------- memberships


def membership_radius_plot(values, radius, probability, *, ax=None, value_label: str = "value",
                           radius_label: str = "projected radius", cmap: str = "viridis"):
    """Each star's value against its projected radius, coloured by membership probability.

    Parameters
    ----------
    values, radius, probability : array_like, shape (n_stars,)
        E.g. line-of-sight velocity, distance from the cluster centre, and the posterior
        mean probability of the cluster component.
    ax : matplotlib Axes, optional
    value_label, radius_label : str
    cmap : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    values, radius, probability = (np.asarray(a, float).reshape(-1) for a in (values, radius, probability))
    if not values.shape == radius.shape == probability.shape:
        raise ValueError(f"values, radius and probability need one entry per star; got shapes "
                         f"{values.shape}, {radius.shape}, {probability.shape}.")
    fig, ax = _new_axes(ax, (6.0, 4.5))
    order = np.argsort(probability)  # members drawn last, on top
    points = ax.scatter(radius[order], values[order], c=probability[order], cmap=cmap, vmin=0.0, vmax=1.0,
                        s=14, edgecolors="none")
    fig.colorbar(points, ax=ax, label="membership probability")
    ax.set_xlabel(radius_label)
    ax.set_ylabel(value_label)
    return fig


def membership_histogram(probability, *, ax=None, bins=20, component_name: str = "cluster",
                         log_scale: bool | None = None):
    """Histogram of the stars' membership probabilities of one component.

    Dashed lines mark p = 0.5 and p = 0.9; the numbers of stars above them and the
    expected number of members (the sum of the probabilities) are written on the plot.

    Parameters
    ----------
    probability : array_like, shape (n_stars,)
        Probabilities in [0, 1], e.g. ``membership_probabilities(fit).probability("cluster")``.
    ax : matplotlib Axes, optional
    bins : int or array_like
        Number of equal bins on [0, 1], or bin edges within [0, 1].
    component_name : str
        Used in the axis label.
    log_scale : bool, optional
        Logarithmic counts. None: when the fullest bin holds over 30 times the emptiest
        non-empty one (memberships pile up near 0 and 1, hiding the uncertain stars).

    Returns
    -------
    matplotlib.figure.Figure

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
    >>> from bayesmix import plotting
    >>> from bayesmix.membership import membership_probabilities
    >>> p_cluster = membership_probabilities(fit).probability("cluster")  # (n_stars,)
    >>> fig = plotting.membership_histogram(p_cluster)
    >>> type(fig).__name__
    'Figure'
    """
    p = np.asarray(probability, dtype=float)
    if p.ndim == 2 and p.shape[1] > 1:
        raise ValueError(f"probability has shape {p.shape}; pass one component's column, e.g. "
                         "result.probability('cluster') or result.mean[:, 0].")
    p = p.reshape(-1)
    if p.size == 0 or not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("probability must be a non-empty array of finite values in [0, 1].")
    edges = _probability_edges(bins)
    fig, ax = _new_axes(ax, (5.5, 4.0))
    counts, _, _ = ax.hist(p, bins=edges, color="C0", alpha=0.8, edgecolor="white", lw=0.5)
    filled = counts[counts > 0]
    if log_scale is None:
        log_scale = filled.size > 1 and filled.max() > 30 * filled.min()
    # Headroom above the fullest bin for the counts written at the top.
    if log_scale:
        from matplotlib import ticker

        ax.set_yscale("log")
        ax.set_ylim(0.7, 10 * counts.max())
        # Star counts read as 1, 10, 100 (not 10^0 typeset as mathematics), with minor
        # ticks at 2 and 5 only: 8 minor ticks per decade were half of this figure's time.
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        ax.set_ylim(0, 1.4 * counts.max())
    for threshold in (0.5, 0.9):
        ax.axvline(threshold, color="k", ls="--", lw=0.8)
    text = (f"p > 0.5: {int(np.sum(p > 0.5))} stars\np > 0.9: {int(np.sum(p > 0.9))} stars\n"
            f"Σp = {p.sum():.1f} (expected members)\nN = {p.size}")
    ax.text(0.5, 0.97, text, transform=ax.transAxes, ha="center", va="top", fontsize="small",
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(f"membership probability ({component_name})")
    ax.set_ylabel("stars")
    return fig


def _probability_edges(bins) -> np.ndarray:
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"bins must be a positive integer or bin edges; got {bins}.")
        return np.linspace(0.0, 1.0, int(bins) + 1)
    edges = np.asarray(bins, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0) or edges[0] < 0 or edges[-1] > 1:
        raise ValueError("bins given as edges must be an increasing 1-D array within [0, 1] "
                         f"(e.g. np.linspace(0, 1, 21)); got {bins!r}.")
    return edges


# --------------------------------------------------------------------------- posterior predictive


def ppc_plot(observed, replicated, *, feature: int = 0, ax=None, bins=40, label: str | None = None):
    """Observed histogram of one feature against histograms of posterior-predictive catalogues.

    Every mock catalogue is binned on the same edges; the plot shows the median count
    per bin with its 16-84% band across mocks, and the observed counts as a black step
    line. Observed counts outside the band in many adjacent bins mean the model misses
    a feature of the data (a tail, a second peak).

    Parameters
    ----------
    observed : array_like, shape (n_stars,) or (n_stars, n_features), or a catalogue
    replicated : array_like, shape (n_draws, n_stars) or (n_draws, n_stars, n_features)
        E.g. :func:`bayesmix.membership.posterior_predictive`.
    feature : int
        Which feature to histogram.
    ax : matplotlib Axes, optional
    bins : int or array_like
        Number of bins over the range of the observed values and the central 99% of
        the mocks, or bin edges. Stars outside the edges are not counted.
    label : str, optional
        x-axis label (default ``"feature <feature>"``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    obs = _values_2d("observed", observed)
    band = predictive_band(obs, replicated, feature=feature, bins=bins)
    j = _check_feature("feature", feature, obs.shape[1])
    return predictive_band_plot(band, ax=ax, label=label if label is not None else f"feature {j}")


def predictive_band(observed, replicated, *, feature: int = 0, bins=40) -> PredictiveBand:
    """The binned counts :func:`ppc_plot` draws (same arguments), as a :class:`PredictiveBand`."""
    obs = _values_2d("observed", observed)
    rep = np.asarray(replicated, dtype=float)
    if rep.ndim == 2:
        rep = rep[:, :, None]
    if rep.ndim != 3 or rep.shape[1:] != obs.shape:
        raise ValueError(f"replicated must have shape (n_draws, {obs.shape[0]}, {obs.shape[1]}) (or "
                         f"(n_draws, {obs.shape[0]}) for one feature) to match observed {obs.shape}; "
                         f"got {np.shape(replicated)}.")
    if rep.shape[0] < 2 or np.isinf(rep).any():
        raise ValueError(f"replicated needs at least 2 finite mock catalogues; got {rep.shape[0]}"
                         f"{' with infinite entries' if np.isinf(rep).any() else ''}.")
    j = _check_feature("feature", feature, obs.shape[1])
    # A star missing this feature (NaN) is in neither histogram, in the data or in its mocks.
    x_obs, x_rep = obs[:, j][~np.isnan(obs[:, j])], rep[:, ~np.isnan(obs[:, j]), j]
    edges = _ppc_edges(bins, x_obs, x_rep)
    low, median, high = np.percentile(_histograms(x_rep, edges), [16, 50, 84], axis=0)
    return PredictiveBand(edges, low, median, high, _histograms(x_obs[None], edges)[0], rep.shape[0])


class PredictiveBand(NamedTuple):
    """What :func:`ppc_plot` draws for one feature, as plain arrays.

    ``edges`` (n_bins + 1,); ``low``, ``median``, ``high`` (n_bins,): the 16th, 50th and
    84th percentiles of the mock catalogues' counts per bin; ``observed`` (n_bins,): the
    data's counts; ``n_mocks``: the number of mock catalogues.
    """

    edges: np.ndarray
    low: np.ndarray
    median: np.ndarray
    high: np.ndarray
    observed: np.ndarray
    n_mocks: int


def predictive_band_plot(band: PredictiveBand, *, ax=None, label: str = "value"):
    """:func:`ppc_plot` drawn from its binned counts (a :class:`PredictiveBand`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    edges, low, high = band.edges, band.low, band.high
    fig, ax = _new_axes(ax, (6.0, 4.0))
    ax.fill_between(edges, np.append(low, low[-1]), np.append(high, high[-1]), step="post", color="C0",
                    alpha=0.3, lw=0, label="posterior predictive 16–84%")
    ax.stairs(band.median, edges, color="C0", lw=1.5, label="posterior predictive median")
    ax.stairs(band.observed, edges, color="k", lw=1.5, label="observed")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(0, None)
    ax.set_xlabel(label)
    ax.set_ylabel("stars per bin")
    ax.legend(fontsize="small", title=f"{band.n_mocks} mock catalogues", title_fontsize="small")
    return fig


def _ppc_edges(bins, x_obs, x_rep) -> np.ndarray:
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"bins must be a positive integer or bin edges; got {bins}.")
        low, high = np.nanpercentile(x_rep, [0.5, 99.5])
        low, high = min(low, x_obs.min()), max(high, x_obs.max())
        if high <= low:
            low, high = low - 0.5, high + 0.5
        return np.linspace(low, high, int(bins) + 1)
    edges = np.asarray(bins, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins given as edges must be an increasing 1-D array; got {bins!r}.")
    return edges


def _histograms(x, edges) -> np.ndarray:
    """Counts of each row of ``x`` (n_rows, n) on ``edges`` (right edge inclusive), (n_rows, n_bins)."""
    n_bins = edges.size - 1
    idx = np.searchsorted(edges, x, side="right") - 1
    idx = np.where(x == edges[-1], n_bins - 1, idx)
    inside = (idx >= 0) & (idx < n_bins)
    rows = np.broadcast_to(np.arange(x.shape[0])[:, None], x.shape)
    flat = rows[inside] * n_bins + idx[inside]
    return np.bincount(flat, minlength=x.shape[0] * n_bins).reshape(x.shape[0], n_bins)


def ppc_plot_fit(key, fit, *, n_draws: int = 200, feature: int = 0, ax=None, bins=40):
    """:func:`ppc_plot` for a fit: draws ``n_draws`` mock catalogues with
    :func:`bayesmix.membership.posterior_predictive` (each star with its own errors).

    Parameters
    ----------
    key : int or JAX PRNG key
    fit : PosteriorFit
    n_draws : int
    feature : int
    ax : matplotlib Axes, optional
    bins : int or array_like

    Returns
    -------
    matplotlib.figure.Figure
    """
    from bayesmix.likelihood import measured_values  # lazy: JAX (see the module docstring)
    from bayesmix.membership import posterior_predictive

    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 2:
        raise ValueError(f"n_draws must be an integer >= 2 (mock catalogues for the band); got {n_draws!r}.")
    values = measured_values(fit.data)
    j = _check_feature("feature", feature, values.shape[1])
    replicated = posterior_predictive(key, fit, int(n_draws))
    names = feature_labels(fit)
    label = names[j] if len(names) == values.shape[1] else None
    return ppc_plot(values, replicated, feature=j, ax=ax, bins=bins, label=label)


# --------------------------------------------------------------------------- components in 2-D


def ellipse_plot(values, params, *, probability=None, features=(0, 1), ax=None, component_names=None,
                 feature_names=None, posterior=None, n_posterior_ellipses: int = 20, key: int = 0):
    """Stars in a plane of two features with each component's intrinsic covariance as ellipses.

    Ellipses are the intrinsic (deconvolved) covariance of each component, marginalised
    to the two chosen features: the solid one joins the points at Mahalanobis distance
    1 from the mean ("1 sigma"), the dashed one distance 2 ("2 sigma"). In two
    dimensions they enclose 39% and 86% of the component's true values (not 68% and
    95%, which are the 1-D numbers). Stars scatter beyond them by their errors.

    Parameters
    ----------
    values : array_like, shape (n_stars, n_features), or a catalogue / Observations
    params : MixtureParams, EMResult or PosteriorFit
        Means (K, D) and covariances (K, D, D); a PosteriorFit gives its posterior means.
    probability : array_like, shape (n_stars, K) or (n_stars, K + 1), optional
        Membership probabilities (background last). Stars are coloured by their most
        probable component, fainter when that probability is lower; without it grey.
    features : pair of int
        Feature indices for the x and y axes.
    ax : matplotlib Axes, optional
    component_names : sequence of str, optional
        One per column of ``probability`` (or per component).
    feature_names : sequence of str, optional
        One per feature (default from the fit or catalogue, else ``x0, x1, ...``).
    posterior : PosteriorFit, optional
        Also draw faint 1-sigma ellipses of ``n_posterior_ellipses`` random posterior
        draws, to show the uncertainty of each component.
    n_posterior_ellipses : int
    key : int
        Seed for choosing the posterior draws.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    x = _values_2d("values", values)
    means, covs, _ = _mixture_arrays(params)
    n_stars, n_features = x.shape
    if means.shape[1] != n_features:
        raise ValueError(f"params have {means.shape[1]} features but values have {n_features}.")
    pair = _check_features_pair(features, n_features)
    n_comp = means.shape[0]
    prob = _check_probability(probability, n_stars, n_comp)
    n_total = prob.shape[1] if prob is not None else n_comp
    names = _names("component_names", component_names, n_total,
                   _default_component_names(params, posterior, n_comp, n_total))
    fnames = _names("feature_names", feature_names, n_features,
                    _default_feature_names(values, params, posterior, n_features))
    draws = _posterior_draws(posterior, n_comp, n_features, n_posterior_ellipses, key)

    fig, ax = _new_axes(ax, (6.0, 5.0))
    i, j = pair
    _scatter_members(ax, x[:, i], x[:, j], prob, n_comp)
    if draws is not None:
        for d_means, d_covs in zip(*draws, strict=True):
            _component_ellipses(ax, d_means, d_covs, pair, radii=(1.0,), lw=0.7, alpha=0.25, zorder=2,
                                mark_means=False)
    _component_ellipses(ax, means, covs, pair)
    ax.set_xlim(_data_limits(x[:, i]))
    ax.set_ylim(_data_limits(x[:, j]))
    ax.set_xlabel(fnames[i])
    ax.set_ylabel(fnames[j])
    handles = [plt.Line2D([], [], color=_component_colour(k, n_comp), marker="o", ls="none", label=names[k])
               for k in range(n_total)]
    handles += [plt.Line2D([], [], color="k", ls="-", lw=2, label="1σ (Mahalanobis 1)"),
                plt.Line2D([], [], color="k", ls="--", lw=1.5, label="2σ (Mahalanobis 2)")]
    if draws is not None:
        handles.append(plt.Line2D([], [], color="k", lw=0.7, alpha=0.4,
                                  label=f"1σ, {len(draws[0])} posterior draws"))
    ax.legend(handles=handles, fontsize="small", loc="best", framealpha=0.85)
    return fig


def _check_probability(probability, n_stars, n_comp):
    if probability is None:
        return None
    prob = np.asarray(probability, dtype=float)
    if prob.ndim != 2 or prob.shape[0] != n_stars or prob.shape[1] not in (n_comp, n_comp + 1):
        raise ValueError(f"probability must have shape ({n_stars}, {n_comp}) or ({n_stars}, {n_comp + 1}) "
                         f"(with a background column last), e.g. membership_probabilities(fit).mean; "
                         f"got {prob.shape}.")
    if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise ValueError("probability must hold finite values in [0, 1].")
    return prob


def _names(name, given, n, default):
    if given is None:
        return list(default)
    given = [str(s) for s in given]
    if len(given) != n:
        raise ValueError(f"{name} has {len(given)} entries; need {n}.")
    return given


def _default_component_names(params, posterior, n_comp, n_total):
    for source in (params, posterior):
        names = tuple(getattr(getattr(source, "model", None), "component_names", ()) or ())
        if len(names) >= n_total:
            return names[:n_total]
    names = [f"component {k}" for k in range(n_comp)]
    return names + ["background"] * (n_total - n_comp)


def _default_feature_names(values, params, posterior, n_features):
    for source in (values, getattr(params, "model", None), getattr(posterior, "model", None)):
        names = tuple(getattr(source, "feature_names", ()) or ())
        if len(names) == n_features:
            return names
    return [f"x{j}" for j in range(n_features)]


def _posterior_draws(posterior, n_comp, n_features, n_ellipses, key):
    """(means (n, K, D), covariances (n, K, D, D)) of ``n_ellipses`` random draws, or None."""
    if posterior is None:
        return None
    post = getattr(getattr(posterior, "idata", None), "posterior", None)
    if post is None or "means" not in post or "covariances" not in post:
        raise ValueError("posterior must be a PosteriorFit whose idata.posterior has 'means' and "
                         "'covariances'.")
    if isinstance(n_ellipses, bool) or not isinstance(n_ellipses, (int, np.integer)) or n_ellipses < 1:
        raise ValueError(f"n_posterior_ellipses must be a positive integer; got {n_ellipses!r}.")
    means = np.asarray(post["means"].values, float)
    covs = np.asarray(post["covariances"].values, float)
    if means.shape[2:] != (n_comp, n_features):
        raise ValueError(f"posterior has means of shape {means.shape[2:]} per draw; params have "
                         f"({n_comp}, {n_features}): pass the fit the params came from.")
    means = means.reshape(-1, n_comp, n_features)
    covs = covs.reshape(-1, n_comp, n_features, n_features)
    rng = np.random.default_rng(key)
    pick = rng.choice(means.shape[0], size=min(int(n_ellipses), means.shape[0]), replace=False)
    return means[pick], covs[pick]


def _scatter_members(ax, xs, ys, prob, n_comp):
    from matplotlib.colors import to_rgba

    many = xs.size > 5000  # a vector file with a million markers is unusable
    size = 10 if xs.size < 2000 else 4
    if prob is None:
        ax.scatter(xs, ys, s=size, color="0.45", alpha=0.6, edgecolors="none", rasterized=many, zorder=1)
        return
    label = np.argmax(prob, axis=1)
    top = prob[np.arange(prob.shape[0]), label]
    floor = 1.0 / prob.shape[1]  # the least certain a hard label can be
    alpha = 0.08 + 0.52 * np.clip((top - floor) / (1.0 - floor), 0.0, 1.0)
    colours = np.array([to_rgba(_component_colour(k, n_comp)) for k in range(prob.shape[1])])[label]
    colours[:, 3] = alpha
    order = np.argsort(top)  # confident stars on top
    ax.scatter(xs[order], ys[order], s=size, c=colours[order], edgecolors="none", rasterized=many, zorder=1)


# --------------------------------------------------------------------------- EM fits


def em_history_plot(em_result, *, ax=None):
    """Log-likelihood (and the objective, where it differs) against EM iteration.

    Iteration 0 is the initialisation; the last point is the returned fit. The
    objective adds the log prior (MAP mode, Bovy's ``w``) to the log-likelihood. With
    several starts, their final objectives are shown as ticks at the right edge
    (several at the top: the optimum was found more than once; far below: local optima).

    Parameters
    ----------
    em_result : EMResult
        From :func:`bayesmix.em.fit_em` (``fit.em`` of a PosteriorFit).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    needed = ("log_likelihood_history", "objective_history", "n_iter", "converged", "restart_objectives")
    if not all(hasattr(em_result, name) for name in needed):
        raise ValueError(f"em_result must be an EMResult from fit_em (or fit.em of a PosteriorFit); got "
                         f"{type(em_result).__name__}.")
    ll = np.asarray(em_result.log_likelihood_history, dtype=float)
    obj = np.asarray(em_result.objective_history, dtype=float)
    if ll.ndim != 1 or ll.size == 0 or obj.shape != ll.shape:
        raise ValueError(f"em_result has histories of shapes {ll.shape} and {obj.shape}; "
                         "need equal 1-D ones.")
    fig, ax = _new_axes(ax, (6.0, 4.0))
    it = np.arange(ll.size)
    ax.plot(it, ll, "o-", color="C0", ms=3, lw=1.5, label="log-likelihood")
    scale = max(1.0, float(np.nanmax(np.abs(ll))))
    if np.nanmax(np.abs(obj - ll)) > 1e-9 * scale:
        ax.plot(it, obj, "s--", color="C1", ms=3, lw=1.2, label="objective (log L + log prior)")
    restarts = np.asarray(em_result.restart_objectives, dtype=float).reshape(-1)
    plural = "" if em_result.n_iter == 1 else "s"
    status = "converged" if em_result.converged else "NOT converged"
    lines = [f"{em_result.n_iter} iteration{plural}, {status}", f"final log L = {ll[-1]:.6g}"]
    if restarts.size > 1:
        finite = restarts[np.isfinite(restarts)]
        lines.append(_starts_text(em_result, restarts, finite))
        ax.plot(np.full(finite.size, it[-1] + 0.03 * max(it[-1], 1)), finite, marker="_", ms=14, mew=1.5,
                color="C3", ls="none", label="final objective of each start", clip_on=False)
    # The summary above the axes and the legend where it covers least: inside, either could hide
    # a start's tick (a local optimum far below the best one sits in the lower right corner).
    ax.set_title("\n".join(lines), loc="left", fontsize="small")
    ax.set_xlabel("EM iteration (0 = initialisation)")
    ax.set_ylabel("log-likelihood (nats)")
    ax.legend(fontsize="small", loc="best")
    return fig


def _starts_text(em_result, restarts, finite) -> str:
    """One line on the starts of an EM fit: how many of each kind, how many reached the best objective."""
    best = finite.max() if finite.size else np.nan
    n_best = int(np.sum(np.abs(finite - best) <= 1e-3 * max(1.0, abs(best))))
    kinds = list(getattr(em_result, "start_kinds", ()) or ())
    mix = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
    n_optima = len(getattr(em_result, "optima", ()) or ())
    return (f"{restarts.size} starts{f' ({mix})' if mix else ''}: {n_best} reached the best objective"
            + (f", {restarts.size - finite.size} failed" if finite.size < restarts.size else "")
            + (f"; {n_optima} distinct optima" if n_optima > 1 else ""))


def information_criterion_plot(scan_table, *, ax=None):
    """BIC and AIC against the number of components, preferred K of each criterion marked.

    Lower is better for BIC and AIC; an ``elpd_loo`` (or ``loo``) column, if present,
    is drawn on a second y-axis (higher is better).

    Parameters
    ----------
    scan_table : astropy Table, pandas DataFrame or mapping of columns
        From :func:`bayesmix.em.scan_n_components`: ``n_components``, ``bic``, ``aic``.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.ticker import MaxNLocator

    columns = _column_names(scan_table)
    missing = [c for c in ("n_components", "bic", "aic") if c not in columns]
    if missing:
        raise ValueError(f"scan_table lacks column(s) {missing} (has {columns}); pass the table of "
                         "bayesmix.em.scan_n_components.")
    k = np.asarray(scan_table["n_components"], dtype=float)
    order = np.argsort(k)
    k = k[order]
    if k.size == 0 or np.unique(k).size != k.size:
        raise ValueError(f"scan_table needs one row per distinct n_components; got {k.tolist()}.")
    fig, ax = _new_axes(ax, (5.5, 4.0))
    handles = []
    for name, colour, marker in (("bic", "C0", "o"), ("aic", "C1", "s")):
        y = np.asarray(scan_table[name], dtype=float)[order]
        best = int(np.nanargmin(y))
        handles += ax.plot(k, y, marker=marker, color=colour, label=f"{name.upper()} (best K = {k[best]:g})")
        ax.plot(k[best], y[best], marker="*", ms=16, color=colour, mec="k", ls="none", zorder=4)
    ax.set_ylabel("information criterion (lower is better)")
    loo_name = next((c for c in ("elpd_loo", "loo") if c in columns), None)
    if loo_name is not None:
        y = np.asarray(scan_table[loo_name], dtype=float)[order]
        best = int(np.nanargmax(y))
        twin = ax.twinx()
        handles += twin.plot(k, y, marker="D", color="C2", label=f"elpd_loo (best K = {k[best]:g})")
        twin.plot(k[best], y[best], marker="*", ms=16, color="C2", mec="k", ls="none", zorder=4)
        twin.set_ylabel("elpd_loo (higher is better)", color="C2")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of components K")
    # Above the axes: inside, the twin axis (drawn later) would paint over it.
    ax.legend(handles=handles, fontsize="small", title="★ = preferred K", title_fontsize="small",
              loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=min(len(handles), 2), frameon=False)
    return fig


def _column_names(table) -> list[str]:
    for attr in ("colnames", "columns"):
        if hasattr(table, attr):
            return [str(c) for c in getattr(table, attr)]
    if isinstance(table, Mapping):
        return [str(c) for c in table]
    raise ValueError(f"scan_table must be a table (astropy, pandas) or a mapping of columns; got "
                     f"{type(table).__name__}.")


# --------------------------------------------------------------------------- EM animation


def em_animation(key, data, n_components: int, path, *, errors=None, features=(0, 1), n_frames: int = 40,
                 fps: float = 8, dpi: int = 80, feature_names=None, **fit_kwargs) -> Path:
    """Animated GIF of extreme-deconvolution EM converging, from ``fit_em``'s own start.

    The fit is run as :func:`bayesmix.em.fit_em` would run it (same key, same
    initialisation, same options), then replayed one M-step at a time from the same
    start (``fit_em(init="given", max_iter=1)``), so the frames follow exactly the
    path of the returned fit, up to its last iteration (convergence or ``max_iter``).
    Frames are spaced more densely early on, where EM moves most; the last frame is
    held for about a second. Each frame shows the stars, the components' intrinsic
    1- and 2-sigma ellipses (Mahalanobis distance 1 and 2, as in :func:`ellipse_plot`),
    the iteration and the log-likelihood. For one feature it shows the histogram
    of the values and each component's density with the stars' errors added, instead.

    Replaying costs about twice the fit itself. The file is written atomically (a
    temporary file renamed onto ``path``).

    Parameters
    ----------
    key : int or JAX PRNG key
    data : array_like (n_stars, n_features), Observations or catalogue
    n_components : int
    path : str or Path
        Output file; must end in ``.gif``.
    errors : array_like, optional
        As for :func:`fit_em`.
    features : pair of int
        Plane of the frames (ignored for one feature).
    n_frames : int
        At most this many frames (>= 2) before the held last one.
    fps : float
        Frames per second.
    dpi : int
    feature_names : sequence of str, optional
    **fit_kwargs
        Passed to :func:`fit_em` (``w=``, ``prior=``, ``background=``, ``tol=``, ...).
        ``n_init`` must be 1 and ``init`` one of "kmeans++" (the default here),
        "random" or "given": the animation follows a single start.

    Returns
    -------
    Path
        ``path``.
    """
    from bayesmix.likelihood import as_observations  # lazy: JAX (see the module docstring)

    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"path must end in .gif (the animation is a GIF); got {str(path)!r}.")
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 2:
        raise ValueError(f"n_frames must be an integer >= 2; got {n_frames!r}.")
    if not (np.isfinite(fps) and fps > 0) or not (np.isfinite(dpi) and dpi > 0):
        raise ValueError(f"fps and dpi must be positive; got fps={fps!r}, dpi={dpi!r}.")
    options = fit_kwargs.get("options")
    n_init = fit_kwargs.get("n_init", getattr(options, "n_init", 1))
    if n_init != 1:
        raise ValueError(f"n_init={n_init}: the animation follows one start; pass n_init=1 (fit_em's "
                         "default), or animate the kept restart's key separately.")
    init = fit_kwargs.get("init", getattr(options, "init", None))
    if init == "auto":
        raise ValueError("init='auto' runs several starts (k-means++ and density peaks); the animation "
                         "follows one: pass init='kmeans++' (the default here), 'random' or 'given'.")

    obs = as_observations(data, errors)
    values = np.asarray(obs.values)
    n_features = values.shape[1]
    pair = _check_features_pair(features, n_features) if n_features > 1 else (0, 0)
    fnames = _names("feature_names", feature_names, n_features,
                    _default_feature_names(data, None, None, n_features))
    path_params = _em_path(key, obs, n_components, fit_kwargs)
    n_iter = len(path_params) - 1
    shown = _frame_iterations(n_iter, int(n_frames))

    def write(tmp):
        gif = f"{tmp}.gif"  # Pillow picks the format from the file suffix
        try:
            _write_em_gif(gif, values, np.asarray(obs.error_covs), path_params, shown, pair, fnames,
                          fps=float(fps), dpi=float(dpi))
            os.replace(gif, tmp)
        finally:
            if os.path.exists(gif):
                os.unlink(gif)

    return atomic_write(path, write)


def _em_path(key, obs, n_components, fit_kwargs):
    """[(MixtureParams, log-likelihood)] after 0, 1, ..., n_iter M-steps of ``fit_em``'s run (from one
    start: k-means++ unless ``fit_kwargs`` names another)."""
    from bayesmix.em import EMConvergenceWarning, fit_em  # lazy: JAX (see the module docstring)

    if fit_kwargs.get("init", getattr(fit_kwargs.get("options"), "init", None)) is None:
        single = "given" if fit_kwargs.get("init_params") is not None else "kmeans++"
        fit_kwargs = {**fit_kwargs, "init": single}

    full = fit_em(key, obs, n_components, **fit_kwargs)
    with warnings.catch_warnings():
        # Stopping after 0 or 1 M-step is the point here, not a failure to converge.
        warnings.simplefilter("ignore", EMConvergenceWarning)
        state = fit_em(key, obs, n_components, **{**fit_kwargs, "max_iter": 0})
        out = [(state.params, state.log_likelihood)]
        for _ in range(full.n_iter):
            state = fit_em(key, obs, n_components, **_continue_kwargs(state, fit_kwargs))
            out.append((state.params, state.log_likelihood))
    return out


def _continue_kwargs(state, fit_kwargs):
    """fit_em keywords for one more M-step from ``state`` (the background's weight carried over)."""
    weights = np.asarray(state.params.weights)
    kwargs = {**fit_kwargs, "init": "given", "n_init": 1, "max_iter": 1}
    background = fit_kwargs.get("background")
    if background is not None:
        kwargs["background"] = dataclasses.replace(background, weight=state.background_weight)
        weights = weights / (1.0 - state.background_weight)  # init_params weights sum to one
    kwargs["init_params"] = (weights / weights.sum(), np.asarray(state.params.means),
                             np.asarray(state.params.covariances))
    return kwargs


def _frame_iterations(n_iter: int, n_frames: int) -> np.ndarray:
    """Iterations to draw: all when few, else quadratically spaced (dense early, where EM moves most)."""
    if n_iter + 1 <= n_frames:
        return np.arange(n_iter + 1)
    return np.unique(np.round(n_iter * np.linspace(0.0, 1.0, n_frames) ** 2).astype(int))


def _write_em_gif(gif_path, values, error_covs, path_params, shown, pair, fnames, *, fps, dpi):
    from matplotlib.animation import PillowWriter
    from matplotlib.figure import Figure

    one_d = values.shape[1] == 1
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")  # not registered with pyplot: nothing to close
    ax = fig.add_subplot()
    if one_d:
        draw = _em_frame_1d(ax, values[:, 0], error_covs[:, 0, 0], fnames[0],
                            [path_params[it][0] for it in shown])
    else:
        draw = _em_frame_2d(ax, values, pair, fnames)
    label = ax.text(0.02, 0.98, "", transform=ax.transAxes, ha="left", va="top", fontsize="small",
                    bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9}, zorder=10)
    n_iter = len(path_params) - 1
    writer = PillowWriter(fps=fps)
    with writer.saving(fig, gif_path, dpi):
        for frame, it in enumerate(shown):
            params, ll = path_params[it]
            artists = draw(params)
            label.set_text(f"EM iteration {it} / {n_iter}\nlog L = {ll:.6g}")
            repeats = max(1, round(fps)) if frame == len(shown) - 1 else 1
            for _ in range(repeats):
                writer.grab_frame()
            if frame == 0:
                fig.set_layout_engine("none")  # laid out once: the frames keep still, and render faster
            for artist in artists:
                artist.remove()


def _em_frame_2d(ax, values, pair, fnames):
    i, j = pair
    _scatter_members(ax, values[:, i], values[:, j], None, 0)
    ax.set_xlim(_data_limits(values[:, i]))
    ax.set_ylim(_data_limits(values[:, j]))
    ax.set_xlabel(fnames[i])
    ax.set_ylabel(fnames[j])
    ax.set_title("intrinsic 1σ / 2σ ellipses", fontsize="small")

    def draw(params):
        return _component_ellipses(ax, np.asarray(params.means), np.asarray(params.covariances), pair)

    return draw


def _em_frame_1d(ax, x, error_var, fname, frames):
    low, high = _data_limits(x)
    heights, _, _ = ax.hist(x, bins=int(np.clip(x.size // 5, 20, 100)), range=(low, high), density=True,
                            color="0.8", edgecolor="0.6", lw=0.5)
    grid = np.linspace(low, high, 400)
    # Each component's density of *measured* values averages over the stars' own errors
    # (at most 2000 of them: enough for a smooth curve), so it is comparable to the histogram.
    err = error_var[:: max(1, error_var.size // 2000)]

    def densities(params):
        w = np.asarray(params.weights)
        mu = np.asarray(params.means)[:, 0]
        total_var = np.asarray(params.covariances)[:, 0, 0][:, None, None] + err[None, None, :]
        return w[:, None] * np.mean(np.exp(-0.5 * (grid[None, :, None] - mu[:, None, None]) ** 2 / total_var)
                                    / np.sqrt(2 * np.pi * total_var), axis=2)

    # One y-range for all frames, so that the axes keep still while the curves move.
    peak = max([heights.max()] + [densities(p).sum(axis=0).max() for p in frames])
    ax.set_ylim(0, 1.08 * peak)
    ax.set_xlim(low, high)
    ax.set_xlabel(fname)
    ax.set_ylabel("density")
    ax.set_title("model density with the stars' errors (dashed: components)", fontsize="small")

    def draw(params):
        dens = densities(params)
        artists = [line for k in range(len(dens))
                   for line in ax.plot(grid, dens[k], color=f"C{k % 10}", lw=1.5, ls="--")]
        artists += ax.plot(grid, dens.sum(axis=0), color="k", lw=1.5)
        return artists

    return draw


# --------------------------------------------------------------------------- dispersion profile


def _reference_profile(reference):
    """``(radius, sigma, err)`` arrays from a mapping (``radius``, ``sigma``, optional
    ``sigma_err``: (n,) or (2, n) lower/upper) or a tuple of the same."""
    if isinstance(reference, Mapping):
        radius, sigma, err = reference.get("radius"), reference.get("sigma"), reference.get("sigma_err")
    else:
        radius, sigma, *rest = reference
        err = rest[0] if rest else None
    radius, sigma = np.asarray(radius, float).reshape(-1), np.asarray(sigma, float).reshape(-1)
    if radius.shape != sigma.shape:
        raise ValueError(f"reference radius and sigma need the same length; got {radius.size} and "
                         f"{sigma.size}.")
    return radius, sigma, None if err is None else np.asarray(err, float)


def dispersion_profile_plot(fit, ax=None, reference=None, *, radii=None, n_bins: int = 8,
                            probability=None, reference_label: str = "reference",
                            radius_label: str | None = None, max_draws: int = 1000):
    """The members' velocity dispersion against projected radius: posterior and binned data.

    The posterior median of ``sigma(R)`` with its 68% and 95% bands
    (:func:`bayesmix.models.dispersion_profile`), the membership-weighted dispersion of
    the stars in radius bins of equal member counts
    (:func:`bayesmix.spatial.binned_member_dispersion`, about the posterior median member
    mean, gradient included) and, optionally, a reference profile (e.g. Baumgardt's).

    Parameters
    ----------
    fit : PosteriorFit
        Of a 1-D model; with :class:`bayesmix.models.MemberKinematics` the profile
        follows its radius covariate (otherwise ``radius_label`` names a covariate).
    ax : matplotlib Axes, optional
    reference : mapping or tuple, optional
        ``{"radius": (n,), "sigma": (n,), "sigma_err": (n,) or (2, n)}``, in the units of
        the fit's radius covariate and velocities.
    radii : array_like, optional
        Where to evaluate the posterior (default: 100 points over the stars' radii).
    n_bins : int
        Bins of the data points.
    probability : array_like (n_stars,), optional
        Member probabilities (default :func:`bayesmix.membership.membership_probabilities`).
    reference_label, radius_label : str
    max_draws : int

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> ref = {"radius": r, "sigma": s, "sigma_err": e}  # e.g. Baumgardt's binned profile  # doctest: +SKIP
    >>> fig = dispersion_profile_plot(fit, reference=ref)  # doctest: +SKIP
    """
    import jax.numpy as jnp

    from bayesmix.membership import membership_probabilities
    from bayesmix.models import dispersion_profile
    from bayesmix.spatial import binned_member_dispersion

    model = fit.model
    kin = getattr(model, "kinematics", None)
    name = kin.radius if kin is not None and kin.radius is not None else radius_label
    if name not in (fit.covariates or {}):
        raise ValueError(f"dispersion_profile_plot needs a radius covariate: the model's kinematics radius "
                         f"or radius_label= one of {sorted(fit.covariates or {})}; got {name!r}.")
    radius = np.asarray(fit.covariates[name], float)
    if radii is None:
        positive = radius[radius > 0]
        radii = np.geomspace(positive.min(), radius.max(), 100)
    radii = np.asarray(radii, float)
    sigma = dispersion_profile(fit, radii, max_draws=max_draws)
    fig, ax = _new_axes(ax, (6.0, 4.5))
    q = np.percentile(sigma, [2.5, 16.0, 50.0, 84.0, 97.5], axis=0)
    ax.fill_between(radii, q[0], q[4], color="C0", alpha=0.18, lw=0, label="95%")
    ax.fill_between(radii, q[1], q[3], color="C0", alpha=0.35, lw=0, label="68%")
    ax.plot(radii, q[2], color="C0", lw=2, label="posterior median")
    p = np.asarray(membership_probabilities(fit).mean[:, 0] if probability is None else probability, float)
    post = fit.idata.posterior
    mean = float(np.median(np.asarray(post["means"])[..., 0, 0]))
    if kin is not None and kin.gradient is not None:
        gx, ge = (float(np.median(np.asarray(post[f"gradient_{a}"]))) for a in ("xi", "eta"))
        mean = mean + gx * np.asarray(fit.covariates[kin.gradient[0]]) + ge * np.asarray(
            fit.covariates[kin.gradient[1]])
    order = np.argsort(radius)
    cum = np.cumsum(p[order])
    cuts = np.searchsorted(cum, np.linspace(0, cum[-1], n_bins + 1)[1:-1])
    edges = np.concatenate([[radius.min()], radius[order][cuts], [np.nextafter(radius.max(), np.inf)]])
    centre, s, s_err, _ = binned_member_dispersion(np.asarray(fit.data.values)[:, 0],
                                                   np.asarray(jnp.asarray(fit.data.error_covs))[:, 0, 0],
                                                   mean, radius, p, edges)
    ax.errorbar(centre, s, yerr=s_err, fmt="o", color="k", ms=4, capsize=2, label="members (binned)")
    if reference is not None:
        r_ref, s_ref, e_ref = _reference_profile(reference)
        ax.errorbar(r_ref, s_ref, yerr=e_ref, fmt="s", color="C3", ms=4, capsize=2, mfc="none",
                    label=reference_label)
    ax.set_xscale("log")
    ax.set_xlabel(f"projected radius ({name})")
    ax.set_ylabel("velocity dispersion")
    ax.legend(frameon=False, fontsize="small")
    return fig


# --------------------------------------------------------------------------- many clusters


def _table_columns(table, names: Sequence[str], caller: str) -> dict[str, np.ndarray]:
    missing = [n for n in names if n not in table.colnames]
    if missing:
        raise ValueError(f"{caller} needs the columns {missing} of bayesmix.cluster_runs.cluster_table "
                         f"(it has {table.colnames}).")
    return {n: np.asarray(table[n], float) for n in names}


def cluster_velocity_plot(table, *, ax=None, label_beyond: float = 3.0):
    """Each cluster's systemic velocity against a reference catalogue's, in combined standard deviations.

    Parameters
    ----------
    table : astropy.table.Table
        :func:`bayesmix.cluster_runs.cluster_table` with a reference (``mu_pull``,
        ``n_members``, ``cluster``).
    ax : matplotlib Axes, optional
    label_beyond : float
        Clusters with ``|mu_pull|`` above this are named on the figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from astropy.table import Table
    >>> t = Table({"cluster": ["A", "B"], "mu_pull": [0.4, -1.2], "n_members": [80.0, 12.0]})
    >>> fig = cluster_velocity_plot(t)
    """
    cols = _table_columns(table, ("mu_pull", "n_members"), "cluster_velocity_plot")
    fig, ax = _new_axes(ax, (6.0, 4.0))
    ok = np.isfinite(cols["mu_pull"])
    ax.axhspan(-1.0, 1.0, color="C0", alpha=0.15, lw=0, label="1 sd")
    ax.axhspan(-3.0, 3.0, color="C0", alpha=0.07, lw=0, label="3 sd")
    ax.scatter(cols["n_members"][ok], cols["mu_pull"][ok], s=14, color="C0", zorder=3)
    for name, n, pull in zip(np.asarray(table["cluster"])[ok], cols["n_members"][ok], cols["mu_pull"][ok],
                             strict=True):
        if abs(pull) > label_beyond:
            ax.annotate(str(name), (n, pull), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("expected members")
    ax.set_ylabel("(mu - reference) / combined sd")
    within = int(np.sum(np.abs(cols["mu_pull"][ok]) <= 3))
    ax.set_title(f"{ok.sum()} clusters with a reference; {within} within 3 sd", fontsize="medium")
    ax.legend(frameon=False, fontsize="small", loc="upper right")
    return fig


def cluster_shrinkage_plot(table, *, ax=None):
    """Each cluster's member dispersion fitted alone against the pooled fit (68% intervals).

    Points below the diagonal were pulled down by the pooling, above it up; small clusters
    (wide intervals alone) move most.

    Parameters
    ----------
    table : astropy.table.Table
        :func:`bayesmix.cluster_runs.cluster_table` with ``alone`` (``sigma_alone_*``).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from astropy.table import Table
    >>> t = Table({"sigma_p50": [3.0, 6.0], "sigma_p16": [2.5, 5.5], "sigma_p84": [3.5, 6.5],
    ...            "sigma_alone_p50": [4.0, 6.1], "sigma_alone_p16": [2.0, 5.5],
    ...            "sigma_alone_p84": [7.0, 6.6]})
    >>> fig = cluster_shrinkage_plot(t)
    """
    names = ("sigma_p50", "sigma_p16", "sigma_p84", "sigma_alone_p50", "sigma_alone_p16", "sigma_alone_p84")
    c = _table_columns(table, names, "cluster_shrinkage_plot")
    fig, ax = _new_axes(ax, (5.0, 5.0))
    alone, pooled = c["sigma_alone_p50"], c["sigma_p50"]
    ax.errorbar(alone, pooled, xerr=[alone - c["sigma_alone_p16"], c["sigma_alone_p84"] - alone],
                yerr=[pooled - c["sigma_p16"], c["sigma_p84"] - pooled],
                fmt="o", ms=3, lw=0.7, color="C0", ecolor="C0", alpha=0.8)
    lo = 0.8 * min(c["sigma_alone_p16"].min(), c["sigma_p16"].min())
    hi = 1.2 * max(c["sigma_alone_p84"].max(), c["sigma_p84"].max())
    ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("member dispersion, each cluster alone")
    ax.set_ylabel("member dispersion, pooled")
    return fig
