"""Your own NumPyro mixture program, with bayesmix's memberships, summary, figures and checks.

A program fitted elsewhere (``numpyro.infer.MCMC``, or any sampler) joins bayesmix through one
small protocol: its posterior draws name the mixture's quantities as bayesmix does,

====================== ============================== =============================================
name                   shape per draw                 meaning
====================== ============================== =============================================
``weights``            (K,)                           component weights (with a background: of the
                                                      Gaussians only, summing to 1 - background)
``means``              (K, D), or (K,) when D = 1     intrinsic component means
``scales``             (K, D), or (K,) when D = 1     intrinsic dispersions (not convolved with
                                                      the errors)
``correlations``       (K, D, D), optional            intrinsic correlations (identity if absent)
``covariances``        (K, D, D)                      instead of ``scales``/``correlations``
``background_weight``  ()                             only with ``background=``
====================== ============================== =============================================

and each star's likelihood is the error-deconvolved one, ``sum_k w_k N(x_i | mu_k, Sigma_k +
S_i)`` (plus ``w_bg p_bg(x_i)``). A program that calls its sites otherwise passes ``rename=``
(``{"mu": "means", "sigma": "scales", "w": "weights"}``) or records them with
``numpyro.deterministic``. :func:`posterior_from_draws` then returns a
:class:`bayesmix.sampling.PosteriorFit`, which every bayesmix tool takes:
``membership_probabilities``, ``diagnostics.summary``/``check_convergence``/``check_model_fit``,
``plotting.corner_plot``/``trace_plot``/``ppc_plot`` and ``sampling.arviz_complete``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bayesmix.likelihood import Observations, as_observations
from bayesmix.models import mixture_model
from bayesmix.sampling import PosteriorFit, _to_idata

__all__ = ["posterior_from_draws"]

_CANONICAL = ("weights", "means", "scales", "correlations", "covariances", "background_weight")


def _posterior_arrays(draws) -> dict[str, np.ndarray]:
    """Site -> (chain, draw, ...) array, from a mapping or an InferenceData / DataTree."""
    if hasattr(draws, "posterior"):
        posterior = draws.posterior
        return {name: np.asarray(posterior[name].transpose("chain", "draw", ...).values)
                for name in posterior.data_vars}
    if not isinstance(draws, Mapping):
        raise ValueError("draws must be a mapping of site name to (chain, draw, ...) arrays "
                         "(numpyro MCMC.get_samples(group_by_chain=True)) or an ArviZ InferenceData; "
                         f"got {type(draws).__name__}.")
    return {str(name): np.asarray(value) for name, value in draws.items()}


def _renamed(arrays: dict[str, np.ndarray], rename: Mapping[str, str] | None) -> dict[str, np.ndarray]:
    rename = dict(rename or {})
    missing = sorted(set(rename) - set(arrays))
    if missing:
        raise ValueError(f"rename names sites {missing} that the draws do not have; they have "
                         f"{sorted(arrays)}.")
    bad = sorted(v for v in rename.values() if v not in _CANONICAL)
    if bad:
        raise ValueError(f"rename maps onto {bad}; the protocol's names are {list(_CANONICAL)}.")
    return {rename.get(name, name): value for name, value in arrays.items()}


def _site(arrays, name, shape, n_chains, n_draws):
    value = np.asarray(arrays[name], dtype=float)
    if value.shape[:2] != (n_chains, n_draws):
        raise ValueError(f"site {name!r} has shape {value.shape}; every site needs (chain, draw, ...) "
                         f"leading dimensions ({n_chains}, {n_draws}) as the weights (pass "
                         "get_samples(group_by_chain=True), or add a chain axis with [None]).")
    if value.shape[2:] != shape:
        if value.shape[2:] == shape[:-1] and shape[-1] == 1:  # one feature: (K,) for (K, 1)
            value = value[..., None]
        else:
            raise ValueError(f"site {name!r} has per-draw shape {value.shape[2:]}; the protocol needs "
                             f"{shape} (components x features).")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"site {name!r} has non-finite draws.")
    return value


def _covariances(arrays, n_chains, n_draws, k, d):
    if "covariances" in arrays:
        return _site(arrays, "covariances", (k, d, d), n_chains, n_draws)
    if "scales" not in arrays:
        raise ValueError("the draws need 'scales' (K, D) or 'covariances' (K, D, D); pass rename= to "
                         "name your dispersion site, e.g. rename={'sigma': 'scales'}.")
    scales = _site(arrays, "scales", (k, d), n_chains, n_draws)
    if "correlations" in arrays:
        corr = _site(arrays, "correlations", (k, d, d), n_chains, n_draws)
    else:
        corr = np.broadcast_to(np.eye(d), (*scales.shape[:3], d, d))
    return scales[..., :, None] * corr * scales[..., None, :]


def _sites(arrays, n_features, background):
    """The protocol's sites, checked, with ``scales``/``correlations``/``covariances`` completed."""
    if "weights" not in arrays or "means" not in arrays:
        raise ValueError(f"the draws need 'weights' (K,) and 'means' (K, D) sites; they have "
                         f"{sorted(arrays)}. Pass rename= (e.g. rename={{'w': 'weights', 'mu': 'means'}}).")
    weights = np.asarray(arrays["weights"], dtype=float)
    if weights.ndim != 3:
        raise ValueError(f"site 'weights' has shape {weights.shape}; need (chain, draw, K).")
    n_chains, n_draws, k = weights.shape
    means = _site(arrays, "means", (k, n_features), n_chains, n_draws)
    covs = _covariances(arrays, n_chains, n_draws, k, n_features)
    if not np.all(np.linalg.eigvalsh(covs) > 0):
        raise ValueError("the covariances of some draws are not positive definite (check 'scales' > 0 "
                         "and 'correlations').")
    sites = dict(arrays)
    sites.update(weights=weights, means=means, covariances=covs,
                 scales=np.sqrt(np.diagonal(covs, axis1=-2, axis2=-1)))
    if n_features > 1:
        sd = sites["scales"]
        sites["correlations"] = covs / (sd[..., :, None] * sd[..., None, :])
    if background is not None:
        if "background_weight" not in arrays:
            raise ValueError("background= needs a 'background_weight' site (chain, draw).")
        sites["background_weight"] = _site(arrays, "background_weight", (), n_chains, n_draws)
        total = weights.sum(-1) + sites["background_weight"]
    else:
        total = weights.sum(-1)
    if not np.allclose(total, 1.0, atol=1e-6):
        worst = float(np.max(np.abs(total - 1.0)))
        raise ValueError(f"the weights (with background_weight) must sum to 1 in every draw; they are off "
                         f"by up to {worst:.3g}. With a background, 'weights' are the Gaussians' only.")
    return sites


def posterior_from_draws(draws, data, errors=None, *, rename: Mapping[str, str] | None = None,
                         component_names=None, feature_names=None, background=None,
                         sample_stats: Mapping[str, Any] | None = None):
    """Posterior draws of your own mixture program as a bayesmix :class:`PosteriorFit`.

    Parameters
    ----------
    draws : mapping of str to array, or arviz.InferenceData / xarray.DataTree
        ``numpyro.infer.MCMC.get_samples(group_by_chain=True)`` (arrays of shape (chain, draw,
        ...)) or an InferenceData with a ``posterior`` group. The protocol's sites are
        ``weights`` (K,), ``means`` (K, D), ``scales`` (K, D) or ``covariances`` (K, D, D),
        optionally ``correlations`` (K, D, D), and ``background_weight`` with a background;
        other sites are kept and summarised too.
    data : Catalogue or array_like, shape (n_stars, n_features) or (n_stars,)
        The stars the program was fitted to.
    errors : array_like, optional
        Their errors: (n_stars, n_features) standard errors or (n_stars, D, D) covariances
        (not with a Catalogue, which carries its own).
    rename : mapping of str to str, optional
        Your site name -> the protocol's name, e.g. ``{"mu": "means", "sigma": "scales"}``.
    component_names, feature_names : sequence of str, optional
        Default ``comp0, comp1, ...`` and the catalogue's columns (or ``x0, x1, ...``).
    background : bayesmix.components.UniformBackground or GaussianBackground, optional
        A fixed background component of your program (its weight site: ``background_weight``).
    sample_stats : mapping of str to array, optional
        NumPyro's sampler statistics, (chain, draw) each, for the diagnostics:
        ``mcmc.get_extra_fields(group_by_chain=True)`` (``diverging``, ``num_steps``,
        ``accept_prob``, ``energy``, ``potential_energy``, ``step_size``, ``tree_depth`` are kept).

    Returns
    -------
    PosteriorFit
        ``model`` is a bayesmix :class:`~bayesmix.models.MixtureModel` of the same K and D
        (its priors are unused; it is the likelihood that memberships and mock catalogues go
        through), ``em`` is None.

    Raises
    ------
    ValueError
        Naming the site, its shape and the protocol's shape, or the renaming to pass.

    Examples
    --------
    >>> import numpyro, numpyro.distributions as dist
    >>> def program(rv, rv_err):  # doctest: +SKIP
    ...     w = numpyro.sample("w", dist.Dirichlet(jnp.ones(2)))
    ...     mu = numpyro.sample("mu", dist.Normal(0, 100).expand([2]))
    ...     sigma = numpyro.sample("sigma", dist.HalfNormal(50).expand([2]))
    ...     ...  # the marginalised, error-convolved mixture likelihood
    >>> mcmc = numpyro.infer.MCMC(numpyro.infer.NUTS(program), num_warmup=500,
    ...                           num_samples=1000, num_chains=2)  # doctest: +SKIP
    >>> fit = posterior_from_draws(mcmc.get_samples(group_by_chain=True), rv, rv_err,
    ...                            rename={"w": "weights", "mu": "means", "sigma": "scales"},
    ...                            component_names=["cluster", "field"])  # doctest: +SKIP
    >>> membership_probabilities(fit).mean[:, 0]  # doctest: +SKIP
    """

    # A catalogue carries its rows and feature names; an Observations or an array does not.
    catalogue = (data if hasattr(data, "error_covs") and not isinstance(data, (np.ndarray, Observations))
                 else None)
    obs = as_observations(data, errors)
    arrays = _renamed(_posterior_arrays(draws), rename)
    sites = _sites(arrays, obs.n_features, background)
    k = sites["weights"].shape[-1]
    if feature_names is None and catalogue is not None:
        feature_names = list(catalogue.feature_names)
    model = mixture_model(obs, k, background=background, feature_names=feature_names,
                          component_names=list(component_names) if component_names else None)
    samples = {name: value for name, value in sites.items() if np.issubdtype(value.dtype, np.number)}
    attrs = {"sampler": "own program (bayesmix.own_model.posterior_from_draws)"}
    extra = {name: np.asarray(value) for name, value in (sample_stats or {}).items()}
    idata = _to_idata(model, obs, {}, samples, extra, catalogue, attrs)
    return PosteriorFit(idata=idata, model=model, data=obs, covariates={}, catalogue=catalogue,
                        settings={"sampler": "own"})
