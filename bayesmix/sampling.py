"""NUTS from the EM start: chains, warmup, draws, extension, checkpoints; results as InferenceData.

The sampler is NumPyro's NUTS with a dense mass matrix. All chains run as one
vectorised program (``chain_method="vectorized"``), so the model is compiled once per
run, not once per chain. Each chain starts at the EM/MAP point jittered by about one
posterior standard deviation (:meth:`bayesmix.models.MixtureModel.init_values`), so
warmup starts at the mode yet R-hat keeps its power to detect chains that disagree.

Long runs can write a checkpoint after every chunk of draws (atomically: temporary
file, then rename); :func:`sample_posterior` with the same checkpoint path resumes
from it with no new warmup and without losing draws, and :func:`extend` adds draws
to a finished run from its last state, exactly as if the run had been longer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayesmix import _x64  # noqa: F401
from bayesmix.likelihood import MixtureParams, Observations, as_observations
from bayesmix.models import MixtureModel

__all__ = ["PosteriorFit", "add_log_likelihood", "enable_compilation_cache", "extend", "sample_posterior"]

logger = logging.getLogger(__name__)

_EXTRA_FIELDS = ("diverging", "num_steps", "accept_prob", "potential_energy", "energy",
                 "adapt_state.step_size")
_STAT_NAMES = {"diverging": "diverging", "num_steps": "n_steps", "accept_prob": "acceptance_rate",
               "energy": "energy", "adapt_state.step_size": "step_size"}
_CHECKPOINT_VERSION = 1


@dataclasses.dataclass
class PosteriorFit:
    """A finished NUTS run.

    Attributes
    ----------
    idata : arviz.InferenceData
        ``posterior`` (chain, draw, ...) with ``weights``, ``means``, ``covariances``,
        ``scales`` (and ``correlations`` for D > 1) plus the model's raw sites;
        ``sample_stats`` (``diverging``, ``n_steps``, ``acceptance_rate``, ``lp``,
        ``energy``, ``step_size``); ``observed_data`` (``values``); ``constant_data``
        (``error_covs`` and the covariates).
    model : MixtureModel
    data : Observations
    covariates : dict of str to ndarray
    em : EMResult or None
        The point fit the chains started from.
    catalogue : Catalogue or None
    settings : dict
        Sampler settings and seed, for provenance.
    """

    idata: Any
    model: MixtureModel
    data: Observations
    covariates: dict
    em: Any = None
    catalogue: Any = None
    settings: dict = dataclasses.field(default_factory=dict)
    _mcmc: Any = dataclasses.field(default=None, repr=False)

    @property
    def n_draws(self) -> int:
        return int(self.idata.posterior.sizes["draw"])

    @property
    def n_chains(self) -> int:
        return int(self.idata.posterior.sizes["chain"])

    def posterior_mean_params(self) -> MixtureParams:
        """Posterior-mean weights, means and covariances (a point summary, not a draw)."""
        post = self.idata.posterior
        return MixtureParams(jnp.asarray(post["weights"].mean(("chain", "draw")).values),
                             jnp.asarray(post["means"].mean(("chain", "draw")).values),
                             jnp.asarray(post["covariances"].mean(("chain", "draw")).values))


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path:
    """Keep compiled samplers on disk so a repeated scripted run skips compilation.

    Parameters
    ----------
    directory : path, optional
        Default ``$BAYESMIX_CACHE`` or ``~/.cache/bayesmix/jax``.

    Returns
    -------
    Path of the cache.
    """
    path = Path(directory or os.environ.get("BAYESMIX_CACHE") or Path.home() / ".cache" / "bayesmix" / "jax")
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def _default_progress_bar() -> bool:
    return bool(sys.stderr.isatty()) and not os.environ.get("CI")


def _resolve_data(data, covariates):
    catalogue = None
    if hasattr(data, "covariates") and hasattr(data, "error_covs") and hasattr(data, "table"):
        catalogue = data
        if covariates is None:
            covariates = data.covariates
    obs = data if isinstance(data, Observations) else as_observations(data)
    covariates = {name: np.asarray(v, float) for name, v in (covariates or {}).items()}
    for name, v in covariates.items():
        if v.shape != (obs.n_stars,):
            raise ValueError(f"covariate {name!r} has shape {v.shape}; need ({obs.n_stars},).")
    return obs, covariates, catalogue


def _initial_point(key, model: MixtureModel, obs: Observations, init, em_kwargs):
    """(MixtureParams, background_weight, EMResult or None) to start the chains from."""
    from bayesmix.em import EMResult, fit_em

    if init is None:
        kwargs = {"n_init": 4, **(em_kwargs or {})}
        if model.background is not None:
            kwargs.setdefault("background", model.background)
        init = fit_em(key, obs, model.n_components, **kwargs)
    if isinstance(init, EMResult):
        if init.n_components != model.n_components:
            raise ValueError(f"init has {init.n_components} components; the model has "
                             f"{model.n_components}.")
        return init.params, init.background_weight, init
    if isinstance(init, MixtureParams):
        if init.n_components != model.n_components or init.n_features != model.n_features:
            raise ValueError("init parameters do not match the model's components/features.")
        return init, None, None
    raise ValueError(f"init must be None, an EMResult or MixtureParams; got {type(init).__name__}.")


def _chain_inits(key, model, obs, covariates, params, background_weight, num_chains):
    from numpyro.infer.util import unconstrain_fn

    keys = jax.random.split(key, num_chains)
    per_chain = []
    for c in range(num_chains):
        values = model.init_values(params, background_weight, n_stars=obs.n_stars, key=keys[c])
        per_chain.append(unconstrain_fn(model.model, (obs, covariates, model.hyperparameters()), {},
                                        values))
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_chain)


def _build_mcmc(model, *, num_warmup, num_samples, num_chains, target_accept, dense_mass,
                max_tree_depth, progress_bar, init_values):
    from numpyro.infer import MCMC, NUTS, init_to_value

    kernel = NUTS(model.model, dense_mass=dense_mass, target_accept_prob=target_accept,
                  max_tree_depth=max_tree_depth, init_strategy=init_to_value(values=init_values))
    return MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=progress_bar)


def _collect(mcmc) -> tuple[dict, dict]:
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    return samples, extra


def _concat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}


def _to_idata(model: MixtureModel, obs: Observations, covariates, samples, extra, catalogue, attrs):
    import arviz as az

    k, d = model.n_components, model.n_features
    coords = {"component": list(model.component_names[:k]), "feature": list(model.feature_names),
              "feature_bis": list(model.feature_names)}
    ids = np.asarray(catalogue.ids) if catalogue is not None else np.arange(obs.n_stars)
    coords["star"] = ids.tolist() if ids.dtype.kind in "iuUS" else np.arange(obs.n_stars).tolist()
    dims = {"weights": ["component"], "means": ["component", "feature"],
            "means_free": ["component", "feature"], "scales": ["component", "feature"],
            "scales_free": ["component", "feature"], "means_ordered": ["component"],
            "scales_ordered": ["component"], "covariances": ["component", "feature", "feature_bis"],
            "correlations": ["component", "feature", "feature_bis"],
            "corr_cholesky": ["component", "feature", "feature_bis"],
            "values": ["star", "feature"], "error_covs": ["star", "feature", "feature_bis"]}
    dims.update({name: ["star"] for name in covariates})
    if d == 1:
        for name in ("corr_cholesky", "correlations"):
            dims.pop(name)
    posterior = dict(samples)
    stats = {_STAT_NAMES[k]: v for k, v in extra.items() if k in _STAT_NAMES}
    if "potential_energy" in extra:
        stats["lp"] = -extra["potential_energy"]
    constant = {"error_covs": np.asarray(obs.error_covs), **covariates}
    return az.from_dict(posterior=posterior, sample_stats=stats,
                        observed_data={"values": np.asarray(obs.values)}, constant_data=constant,
                        coords=coords, dims=dims, posterior_attrs=attrs, attrs=attrs)


def _atomic_pickle(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sample_posterior(
    key,
    model: MixtureModel,
    data,
    *,
    covariates: dict | None = None,
    init=None,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    target_accept: float = 0.8,
    dense_mass: bool = True,
    max_tree_depth: int = 10,
    progress_bar: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    chunk_size: int | None = None,
    em_kwargs: dict | None = None,
) -> PosteriorFit:
    """Sample the posterior of ``model`` with NUTS, started from an EM/MAP fit.

    Parameters
    ----------
    key : int or jax PRNG key
    model : MixtureModel
    data : Catalogue, Observations or array (n_stars, n_features)
        A catalogue brings its error covariances and covariates.
    covariates : dict of str to array (n_stars,), optional
    init : EMResult, MixtureParams or None
        Starting point; None runs :func:`bayesmix.em.fit_em` (``n_init=4``,
        plus ``em_kwargs``).
    num_chains, num_warmup, num_samples : int
        ``num_samples`` draws per chain after ``num_warmup`` adaptation steps.
    target_accept : float
        NUTS target acceptance probability (raise towards 0.95 on divergences).
    dense_mass : bool
        Adapt a dense mass matrix (correlated parameters: means and weights of
        overlapping components).
    max_tree_depth : int
    progress_bar : bool, optional
        Default: on in an interactive terminal, off in CI.
    checkpoint : path, optional
        Write draws and sampler state here after every ``chunk_size`` draws; if the
        file exists (an interrupted or finished run with the same settings), resume
        from it instead of starting again.
    chunk_size : int, optional
        Draws per chunk with ``checkpoint`` (default ``max(num_samples // 10, 1)``).
    em_kwargs : dict, optional
        Passed to :func:`bayesmix.em.fit_em` when ``init`` is None.

    Returns
    -------
    PosteriorFit
    """
    from bayesmix import __version__

    for name, value in (("num_chains", num_chains), ("num_samples", num_samples)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1; got {value}.")
    if int(num_warmup) < 0:
        raise ValueError(f"num_warmup must be >= 0; got {num_warmup}.")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1); got {target_accept}.")
    if isinstance(key, (int, np.integer)):
        seed, key = int(key), jax.random.PRNGKey(int(key))
    else:
        seed = None
    obs, covariates, catalogue = _resolve_data(data, covariates)
    if obs.n_features != model.n_features:
        raise ValueError(f"data have {obs.n_features} features; the model has {model.n_features}.")
    if model.radius_fraction is not None and model.radius_fraction.covariate not in covariates:
        raise ValueError(f"the model's radius law needs covariate {model.radius_fraction.covariate!r}; "
                         f"got {sorted(covariates)}.")
    progress_bar = _default_progress_bar() if progress_bar is None else progress_bar
    settings = {"seed": seed, "num_chains": int(num_chains), "num_warmup": int(num_warmup),
                "num_samples": int(num_samples), "target_accept": float(target_accept),
                "dense_mass": bool(dense_mass), "max_tree_depth": int(max_tree_depth),
                "bayesmix_version": __version__}
    k_em, k_jitter, k_run = jax.random.split(key, 3)

    ckpt = Path(checkpoint) if checkpoint is not None else None
    state = None
    parts: list[tuple[dict, dict]] = []
    em_result = None
    if ckpt is not None and ckpt.exists():
        with open(ckpt, "rb") as fh:
            saved = pickle.load(fh)
        if saved.get("version") != _CHECKPOINT_VERSION or saved["settings"] != settings:
            raise ValueError(f"checkpoint {ckpt} was written with other settings "
                             f"({saved.get('settings')}); delete it or use the same settings.")
        params, background_weight, em_result = saved["params"], saved["background_weight"], saved["em"]
        state, parts = saved["state"], saved["parts"]
        logger.info("resuming from %s: %d of %d draws per chain done", ckpt,
                    sum(p[0]["means"].shape[1] for p in parts), num_samples)
    else:
        params, background_weight, em_result = _initial_point(k_em, model, obs, init, em_kwargs)

    hyper = model.hyperparameters()
    inits = _chain_inits(k_jitter, model, obs, covariates, params, background_weight, int(num_chains))
    # JAX arrays: numpyro indexes these with traced indices inside its initialisation loop.
    chain0 = {k: jnp.asarray(v) for k, v in model.init_values(params, background_weight).items()}
    done = sum(p[0]["means"].shape[1] for p in parts)
    chunk = int(chunk_size or max(num_samples // 10, 1)) if ckpt is not None else int(num_samples)
    mcmc = _build_mcmc(model, num_warmup=num_warmup, num_samples=min(chunk, num_samples - done) or 1,
                       num_chains=num_chains, target_accept=target_accept, dense_mass=dense_mass,
                       max_tree_depth=max_tree_depth, progress_bar=progress_bar, init_values=chain0)
    if state is None:
        if ckpt is None:
            mcmc.run(k_run, obs, covariates, hyper, init_params=inits, extra_fields=_EXTRA_FIELDS)
            parts.append(_collect(mcmc))
            done = num_samples
        else:
            mcmc.warmup(k_run, obs, covariates, hyper, init_params=inits, extra_fields=_EXTRA_FIELDS,
                        collect_warmup=False)
            state = mcmc.post_warmup_state
    while done < num_samples:
        n = min(chunk, num_samples - done)
        if n != mcmc.num_samples:
            mcmc.num_samples = n
        mcmc.post_warmup_state = state
        mcmc.run(state.rng_key, obs, covariates, hyper, extra_fields=_EXTRA_FIELDS)
        parts.append(_collect(mcmc))
        state = jax.device_get(mcmc.last_state)
        done += n
        if ckpt is not None:
            _atomic_pickle({"version": _CHECKPOINT_VERSION, "settings": settings, "params": params,
                            "background_weight": background_weight, "em": em_result,
                            "state": state, "parts": parts}, ckpt)
            logger.info("checkpoint %s: %d of %d draws per chain", ckpt, done, num_samples)

    samples = _concat([p[0] for p in parts])
    extra = _concat([p[1] for p in parts])
    attrs = {"bayesmix_version": __version__, "sampler": "numpyro NUTS",
             **{f"setting_{k}": v for k, v in settings.items() if v is not None}}
    idata = _to_idata(model, obs, covariates, samples, extra, catalogue, attrs)
    fit = PosteriorFit(idata=idata, model=model, data=obs, covariates=covariates, em=em_result,
                       catalogue=catalogue, settings=settings, _mcmc=mcmc)
    n_div = int(np.sum(extra["diverging"]))
    if n_div:
        logger.warning("%d divergent transitions; consider target_accept closer to 1", n_div)
    return fit


def extend(fit: PosteriorFit, num_samples: int) -> PosteriorFit:
    """More draws for a finished run, from its last state: no new warmup.

    The result equals a run that had asked for the extra draws in the first place
    (same chains, same adapted step size and mass matrix).

    Parameters
    ----------
    fit : PosteriorFit
        Made by :func:`sample_posterior` in this process.
    num_samples : int
        Extra draws per chain.

    Returns
    -------
    PosteriorFit
        With the draws of ``fit`` followed by the new ones.
    """
    if fit._mcmc is None:
        raise ValueError("this fit has no sampler state (was it loaded from disk?); resume it through "
                         "sample_posterior(..., checkpoint=...) instead.")
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be at least 1; got {num_samples}.")
    mcmc = fit._mcmc
    mcmc.post_warmup_state = mcmc.last_state
    if mcmc.num_samples != num_samples:
        mcmc.num_samples = int(num_samples)
    mcmc.run(mcmc.post_warmup_state.rng_key, fit.data, fit.covariates, fit.model.hyperparameters(),
             extra_fields=_EXTRA_FIELDS)
    new_samples, new_extra = _collect(mcmc)
    post = fit.idata.posterior
    old_samples = {name: post[name].values for name in new_samples}
    stats = fit.idata.sample_stats
    inverse = {v: k for k, v in _STAT_NAMES.items()}
    old_extra = {inverse[name]: stats[name].values for name in stats.data_vars if name in inverse}
    if "lp" in stats:
        old_extra["potential_energy"] = -stats["lp"].values
    samples = _concat([old_samples, new_samples])
    extra = _concat([old_extra, {k: new_extra[k] for k in old_extra}])
    settings = {**fit.settings, "num_samples": fit.settings.get("num_samples", 0) + int(num_samples)}
    attrs = dict(fit.idata.posterior.attrs)
    attrs["setting_num_samples"] = settings["num_samples"]
    idata = _to_idata(fit.model, fit.data, fit.covariates, samples, extra, fit.catalogue, attrs)
    return dataclasses.replace(fit, idata=idata, settings=settings)


def add_log_likelihood(fit: PosteriorFit, *, max_draws: int | None = None,
                       star_chunk: int = 20000) -> PosteriorFit:
    """Add the pointwise log-likelihood group (for LOO), computed in chunks of stars.

    It holds ``n_chains * n_draws * n_stars`` numbers (8 bytes each: 32 GB for 1e6 stars
    and 4000 draws), so it is never made unless asked for; ``max_draws`` thins the
    draws evenly within each chain to bound it.

    Parameters
    ----------
    fit : PosteriorFit
    max_draws : int, optional
        Upper bound on ``n_chains * draws kept``.
    star_chunk : int
        Stars per compiled block.

    Returns
    -------
    PosteriorFit
        With ``idata.log_likelihood["stars"]`` of dims (chain, draw, star).
    """
    import math

    import arviz as az
    from jax.scipy.special import logsumexp

    if star_chunk < 1 or (max_draws is not None and max_draws < fit.n_chains):
        raise ValueError("star_chunk must be >= 1 and max_draws >= the number of chains.")
    post = fit.idata.posterior
    n_chains, n_draws = fit.n_chains, fit.n_draws
    step = 1 if max_draws is None else max(1, math.ceil(n_chains * n_draws / max_draws))
    keep = np.arange(0, n_draws, step)
    sites = {name: post[name].values[:, keep].reshape((n_chains * keep.size, *post[name].shape[2:]))
             for name in post.data_vars}
    model, data = fit.model, fit.data
    n_stars = data.n_stars
    chunk = min(star_chunk, n_stars)

    def per_star(sample, values, error_covs, covariates):
        lj = model.joint_log_prob(model.params(sample), model.log_weights(sample, covariates),
                                  Observations(values, error_covs))
        return logsumexp(lj, axis=1)

    compiled = jax.jit(jax.vmap(per_star, in_axes=(0, None, None, None)))
    values, error_covs = np.asarray(data.values), np.asarray(data.error_covs)
    out = np.empty((n_chains * keep.size, n_stars))
    for start in range(0, n_stars, chunk):
        rows = np.minimum(np.arange(start, start + chunk), n_stars - 1)  # pad: one compiled shape
        n = min(start + chunk, n_stars) - start
        cov_rows = {name: v[rows] for name, v in fit.covariates.items()}
        out[:, start:start + n] = np.asarray(compiled(sites, values[rows], error_covs[rows],
                                                      cov_rows))[:, :n]
    stars = fit.idata.observed_data.coords["star"].values
    group = az.from_dict(log_likelihood={"stars": out.reshape(n_chains, keep.size, n_stars)},
                         coords={"star": stars, "draw": keep}, dims={"stars": ["star"]})
    idata = fit.idata.copy()
    if "log_likelihood" in idata.groups():
        del idata.log_likelihood
    idata.add_groups(log_likelihood=group.log_likelihood)
    return dataclasses.replace(fit, idata=idata)
