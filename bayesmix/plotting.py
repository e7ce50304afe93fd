"""Figures astronomers expect: corner plot of the posterior, membership against radius.

Every function returns the matplotlib Figure and draws into a given ``fig=`` / ``ax=``
when one is passed, so figures compose into a user's own layout. Nothing here computes
statistics of its own: values come from the fit, :func:`bayesmix.diagnostics.summary`
and :func:`bayesmix.membership.membership_probabilities`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["corner_plot", "membership_radius_plot"]


def _posterior_columns(fit, var_names):
    post = fit.idata.posterior
    missing = [name for name in var_names if name not in post]
    if missing:
        raise ValueError(f"var_names {missing} are not scalar posterior variables; available: "
                         f"{sorted(post.data_vars)}.")
    columns = []
    for name in var_names:
        values = post[name].values
        if values.ndim != 2:
            raise ValueError(f"{name!r} has shape {values.shape[2:]} per draw; pick scalar variables "
                             "(e.g. mean1, sigma1) for a corner plot.")
        columns.append(values.reshape(-1))
    return np.column_stack(columns)


def corner_plot(fit, var_names: Sequence[str], *, truths: Mapping[str, float] | None = None,
                labels: Sequence[str] | None = None, fig=None, **corner_kwargs):
    """Corner plot of scalar posterior variables with 16/50/84 quantiles.

    Parameters
    ----------
    fit : PosteriorFit
    var_names : sequence of str
        Scalar posterior variables, e.g. ``["mean1", "sigma1", "frac1"]``.
    truths : mapping of str to float, optional
        Reference values drawn as lines (true values, or the EM/MAP point).
    labels : sequence of str, optional
        Axis labels (default: the variable names).
    fig : matplotlib Figure, optional
        Drawn into (needs ``len(var_names)**2`` axes or none).
    **corner_kwargs
        Passed to :func:`corner.corner`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import corner

    data = _posterior_columns(fit, list(var_names))
    truth_values = None
    if truths is not None:
        truth_values = [truths.get(name) for name in var_names]
    options = {"quantiles": [0.16, 0.5, 0.84], "show_titles": True, "title_fmt": ".4g",
               "labels": list(labels or var_names), "truths": truth_values, **corner_kwargs}
    return corner.corner(data, fig=fig, **options)


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
    import matplotlib.pyplot as plt

    values, radius, probability = (np.asarray(a, float).reshape(-1) for a in (values, radius, probability))
    if not values.shape == radius.shape == probability.shape:
        raise ValueError(f"values, radius and probability need one entry per star; got shapes "
                         f"{values.shape}, {radius.shape}, {probability.shape}.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 4.5))
    else:
        fig = ax.figure
    order = np.argsort(probability)  # members drawn last, on top
    points = ax.scatter(radius[order], values[order], c=probability[order], cmap=cmap, vmin=0.0, vmax=1.0,
                        s=14, edgecolors="none")
    fig.colorbar(points, ax=ax, label="membership probability")
    ax.set_xlabel(radius_label)
    ax.set_ylabel(value_label)
    return fig
