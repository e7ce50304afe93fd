"""The one place bayesmix meets ArviZ, whose API changed shape between its two supported lines.

* ArviZ 0.x (0.18 to 0.23; the only line on Python 3.11): results are ``arviz.InferenceData``,
  ``from_dict(posterior=..., sample_stats=...)``, ``idata.groups()`` is a method,
  ``hdi(..., hdi_prob=)`` returns a dimension ``hdi``, ``loo`` returns ``elpd_loo``/``p_loo``.
* ArviZ 1.x (arviz-base/-stats/-plots, Python >= 3.12): results are ``xarray.DataTree``,
  ``from_dict({"posterior": ..., ...})``, ``tree.groups`` is a tuple of paths,
  ``hdi(..., prob=)`` returns a dimension ``ci_bound``, ``loo`` returns ``elpd``/``p``.

Everything else bayesmix does (``idata.posterior[name]``, ``.sizes``, ``.coords``, ``.attrs``,
``.to_netcdf``, ``ess``/``rhat``/``mcse`` on an ``xarray.Dataset``) is spelled the same in both, so
the rest of the package reads either object through attribute access and these few functions.
Nothing here is private API of ArviZ: only its public functions, chosen by major version.

The ``arviz`` meta-package of 1.x imports arviz-stats and arviz-plots (SciPy, Matplotlib) as
well: a second and a half, and a third more objects for every full garbage collection of the
run. Building results needs only arviz-base and the statistics only arviz-stats
(:func:`stats`), so on 1.x bayesmix never imports the meta-package; on 0.x ``arviz`` is the
only package.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

__all__ = ["ARVIZ_MAJOR", "LooResult", "from_groups", "group_dataset", "group_names", "has_group", "hdi",
           "loo", "stats", "with_group"]

ARVIZ_MAJOR = int(importlib.metadata.version("arviz").split(".")[0])
"""Major version of the installed ArviZ (0: InferenceData, 1: DataTree), read from its metadata."""


class LooResult(NamedTuple):
    """PSIS-LOO, named the same for both ArviZ lines.

    Attributes
    ----------
    elpd : float
        Expected log pointwise predictive density (ArviZ 0.x ``elpd_loo``, 1.x ``elpd``).
    se : float
        Its standard error.
    p_loo : float
        Effective number of parameters (0.x ``p_loo``, 1.x ``p``).
    pareto_k : numpy.ndarray, shape (n_observations,)
        Pareto shape of each observation's importance weights (above 0.7: unreliable).
    """

    elpd: float
    se: float
    p_loo: float
    pareto_k: np.ndarray


def from_groups(groups: Mapping[str, Mapping[str, Any]], *, coords=None, dims=None,
                attrs: Mapping[str, Any] | None = None,
                group_attrs: Mapping[str, Mapping[str, Any]] | None = None):
    """An InferenceData (ArviZ 0.x) or DataTree (1.x) from plain arrays, group by group.

    Parameters
    ----------
    groups : mapping of str to mapping of str to array
        ``{"posterior": {"mu": array (chain, draw, ...)}, "observed_data": {...}, ...}``; groups
        with sample dimensions have ``chain`` and ``draw`` leading.
    coords, dims : mapping, optional
        As ``arviz.from_dict``: coordinate values, and the dimension names of each variable
        after the sample dimensions.
    attrs : mapping, optional
        Root attributes (netCDF global attributes of the written file).
    group_attrs : mapping of str to mapping, optional
        Attributes of single groups, e.g. ``{"posterior": {...}}``.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree

    Examples
    --------
    >>> import numpy as np
    >>> from bayesmix import _arviz
    >>> idata = _arviz.from_groups({"posterior": {"mu": np.zeros((2, 10))}})
    >>> _arviz.group_names(idata)
    ('posterior',)
    """
    groups = {name: dict(variables) for name, variables in groups.items() if variables}
    if ARVIZ_MAJOR >= 1:
        from arviz_base import from_dict  # what arviz.from_dict is on this line

        idata = from_dict(groups, coords=coords, dims=dims)
    else:
        import arviz as az

        idata = az.from_dict(**groups, coords=coords, dims=dims)
    if attrs:
        idata.attrs.update(attrs)
    for name, extra in (group_attrs or {}).items():
        if name in group_names(idata):
            getattr(idata, name).attrs.update(extra)
    return idata


def stats():
    """The module whose ``ess``, ``rhat``, ``mcse``, ``hdi`` and ``loo`` bayesmix calls:
    ``arviz_stats`` on ArviZ 1.x (what ``arviz`` re-exports, without arviz-plots and
    Matplotlib), ``arviz`` on 0.x. Imported on first use."""
    if ARVIZ_MAJOR >= 1:
        import arviz_stats as module
    else:
        import arviz as module
    return module


def group_names(idata) -> tuple[str, ...]:
    """The groups of an InferenceData or DataTree, e.g. ``('posterior', 'sample_stats')``."""
    if isinstance(idata, xr.DataTree):
        return tuple(idata.children)
    return tuple(idata.groups())


def has_group(idata, name: str) -> bool:
    """Whether ``idata`` has the group ``name``."""
    return name in group_names(idata)


def group_dataset(idata, name: str) -> xr.Dataset:
    """Group ``name`` as an ``xarray.Dataset`` (a copy-free view where ArviZ allows it)."""
    group = getattr(idata, name)
    return group.to_dataset() if isinstance(group, xr.DataTree) else group


def with_group(idata, name: str, dataset: xr.Dataset):
    """A new ``idata`` with group ``name`` set to ``dataset``: in the old one's place, or added last.

    The other groups and the root attributes are shared with ``idata``, which is unchanged.
    """
    if isinstance(idata, xr.DataTree):
        children = {child: node.copy() for child, node in idata.children.items()}
        children[name] = xr.DataTree(dataset)
        return xr.DataTree(idata.to_dataset(inherit=False), children=children)
    import arviz as az

    groups = {group: getattr(idata, group) for group in idata.groups()}
    groups[name] = dataset
    return az.InferenceData(attrs=dict(idata.attrs), **groups)


def hdi(dataset: xr.Dataset, prob: float) -> xr.Dataset:
    """Highest-density intervals of every variable; the last dimension is ``hdi`` (lower, upper)."""
    az = stats()
    if ARVIZ_MAJOR >= 1:
        return az.hdi(dataset, prob=prob).rename({"ci_bound": "hdi"})
    return az.hdi(dataset, hdi_prob=prob)


def loo(idata, var_name: str | None = None) -> LooResult:
    """PSIS-LOO of the ``log_likelihood`` group (``arviz.loo`` with pointwise values)."""
    result = stats().loo(idata, pointwise=True, var_name=var_name)
    if ARVIZ_MAJOR >= 1:
        elpd, p_loo = result.elpd, result.p
    else:
        elpd, p_loo = result.elpd_loo, result.p_loo
    return LooResult(float(elpd), float(result.se), float(p_loo), np.asarray(result.pareto_k))
