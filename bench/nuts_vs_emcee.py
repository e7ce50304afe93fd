"""bayesmix's NUTS against emcee on the NGC 288-like cluster + field velocity mixture.

The problem is the membership tutorial's: line-of-sight velocities ``v_i`` with errors
``e_i`` from :func:`bayesmix.simulate.simulate_cluster_field` (N = 300, 1500, 20000
stars), fitted with a two-component mixture with parameters ``mean1, sigma1, mean2,
sigma2, frac1`` (component 1 is the cluster, ``sigma1 < sigma2``) and per-star likelihood

    log( frac1 N(v_i | mean1, sigma1^2 + e_i^2) + (1 - frac1) N(v_i | mean2, sigma2^2 + e_i^2) ).

Priors (both sides the same)
----------------------------
``--priors bayesmix`` (default): the defaults of :func:`bayesmix.models.cluster_field_model`,
resolved against the data by bayesmix itself and handed to emcee as numbers:
``mean1, mean2 ~ Normal(median(v), 3 sd(v))``; ``sigma1, sigma2 ~ HalfNormal(2 sd(v))``
restricted to ``0 < sigma1 < sigma2``; ``frac1 ~ Uniform(0, 1)`` (Dirichlet(1, 1)). At these
N the data dominate: the priors are nearly flat over the posterior.
``--priors flat``: the tutorial's uniform boxes, ``-500 < mean1, mean2 < 500`` km/s,
``0 < sigma1 < sigma2 < 500`` km/s, ``0 < frac1 < 1``. bayesmix's ``Priors`` cannot express
these boxes, so with ``--priors flat`` only emcee runs them (the bayesmix rows keep their
own priors, and the table says so).

Methods, each in a fresh subprocess per measurement
---------------------------------------------------
* ``emcee_tutorial`` -- emcee as the tutorial ran it: 32 walkers x 1500 steps, the first
  1000 discarded, started in a 1e-4 ball around a MAP point found by
  ``scipy.optimize.minimize`` (Nelder-Mead), one call of a ``scipy.stats.norm.pdf``
  log-probability per walker. These settings reproduce the issue's "as the tutorial ran
  it" column (N = 1500: about 4 s and min ESS about 300).
* ``emcee_tutorial_ess`` -- the tutorial's sampler (its per-walker scipy
  log-probability) extended until ESS >= ``--target-ess`` by the rule below: the
  baseline of the issue's speed target ("emcee until min ESS >= 1000": 17.6 s at
  N = 1500 and 123 s at N = 20000 when the issue was written).
* ``emcee_fixed`` -- the same fixed run with the log-probability vectorised over the
  walkers in numpy (``vectorize=True``, stars processed in cache-sized blocks): what an
  expert gets from the same settings.
* ``emcee_ess`` -- the vectorised sampler extended until every parameter has an
  autocorrelation-based ESS ``n_walkers * n_kept / tau >= --target-ess`` (1000) and the kept
  chain is at least 50 tau long (emcee's own reliability rule for tau): after the 1000-step
  burn-in and a first 1000 kept steps, tau is estimated (``get_autocorr_time``) and the run
  is extended by the steps the estimate says are missing (plus 10%, at least 200), until
  both hold. A stronger baseline than the issue's: emcee at its best.
* ``bayesmix`` -- EM start (:func:`bayesmix.em.fit_em`, ``n_init=4``),
  :func:`bayesmix.models.cluster_field_model` (default priors),
  :func:`bayesmix.sampling.sample_posterior` with ``--nuts-chains`` x (``--nuts-warmup`` +
  ``--nuts-samples``) (4 x (200 + 250); chains start from the Laplace approximation at
  the EM point, see :mod:`bayesmix.hmc`), then :func:`bayesmix.sampling.extend` by the
  draws the ESS says are missing (plus 10%) until min bulk ESS >= --target-ess and max
  R-hat <= 1.01 (at most 5 extensions). Every CPU core is a JAX device
  (:func:`bayesmix.sampling.set_host_device_count`); ``chain_method="auto"``. No
  compilation cache: a fresh user's first run.
* ``bayesmix_cached`` -- the same with JAX's persistent compilation cache
  (:func:`bayesmix.sampling.enable_compilation_cache`, ``--cache-dir`` or a temporary
  directory), filled by one untimed run per N before the timed repeats: a repeated
  scripted run. Tracing and lowering are still paid (the cache key is the lowered program).

Timing: from the data in memory to finished draws. emcee's MAP search is excluded (it is
reported as ``map_s``); bayesmix's EM start and all JAX compilation are included. Imports
are timed separately (``import_s``: the sampler's stack; ``arviz_import_s`` for emcee,
whose sampling does not need ArviZ). Each measurement is repeated ``--repeats`` times
(3) in fresh processes with different sampler seeds on the same data; the table shows
medians.

ESS: ``ess_bulk_min`` is ArviZ's rank-normalised bulk ESS (``arviz.ess(method="bulk")``),
minimised over the five parameters, computed the same way for both samplers. For emcee
the walkers are passed as chains. That is generous in one respect (walkers of an
ensemble are not independent: each move uses another walker's position, and ArviZ
ignores correlation between chains) and conservative in another (ArviZ truncates the
autocorrelation sum with Geyer's initial-monotone rule, emcee's ``integrated_time`` with
a window ``5 tau``); on this problem ArviZ's value comes out below the autocorrelation
one. ``ess_tau_min`` is emcee's ``n_walkers * n_kept / tau`` (emcee runs only).
Agreement: for each parameter the 16/50/84 percentiles of a run are compared with those
of the ``emcee_ess`` run with the same repeat index, in units of the ``emcee_ess``
posterior sd; ``agree_max_sd`` is the largest difference over parameters and percentiles
(for independent runs with ESS ~1000 Monte Carlo error alone gives ~0.05-0.1).

Usage::

    python bench/nuts_vs_emcee.py             # N = 300, 1500, 20000 (~25 minutes on 2 cores)
    python bench/nuts_vs_emcee.py --quick     # N = 300, 1500, one repeat (about a minute)
    python bench/nuts_vs_emcee.py --json      # the same as one JSON object on stdout
    python bench/nuts_vs_emcee.py --methods emcee_tutorial emcee_ess --n 1500

JSON keys (``--json``)
----------------------
``machine``: {``cpu_count``, ``platform``, ``python``, ``numpy``, ``emcee``, ``scipy``,
``arviz``, ``jax``, ``numpyro``}; ``settings``: {``n_values``, ``repeats``, ``quick``,
``target_ess``, ``target_rhat``, ``n_walkers``, ``tutorial_steps``, ``burn_in``,
``priors`` ("bayesmix" or "flat"), ``prior_values`` {N: {``mean_loc``, ``mean_scale``,
``scale_scale``}}, ``data_seed``, ``nuts_chains``, ``nuts_warmup``, ``nuts_samples``,
``cache_warmup_wall_s`` {N: wall time of the untimed run that filled the cache}};
``params``: the five parameter names;
``runs``: every measurement: {``n_stars``, ``method``, ``repeat``, ``seed``, ``status``
("ok"/"failed"/"timeout"), ``reason``, ``wall_s``, ``import_s``, ``arviz_import_s``,
``map_s`` (emcee), ``n_steps`` (emcee: steps per walker, burn-in included), ``n_kept``
(emcee: kept steps per walker), ``tau`` (emcee: per parameter), ``ess_bulk`` (per
parameter), ``ess_bulk_min``, ``ess_tau_min`` (emcee), ``r_hat_max`` (ArviZ, walkers or
chains as chains), ``acceptance`` (emcee: mean acceptance fraction), ``quantiles``
{param: [q16, q50, q84]}, ``sd`` {param: sd}, ``peak_mb`` (VmHWM of the process, MiB),
bayesmix only: ``em_s`` (EM start), ``sample_s`` (model, sampling and extension calls),
``compile_s`` (JAX tracing + lowering + backend compilation or cache retrieval during the
timed part, from ``jax.monitoring`` events), ``backend_compile_s``, ``n_compiles`` (backend
compilations or cache loads), ``cache_hits``, ``num_chains``, ``num_warmup``, ``num_samples``
(final draws per chain), ``n_extends``, ``steps_per_draw`` (mean leapfrog steps per
post-warmup draw), ``post_warmup_steps`` (all chains), ``divergences``, ``step_size``,
``logp_s`` and ``grad_s`` (one jitted NUTS potential / value-and-gradient, measured after the
timed part), ``grad_time_post_warmup_s`` (post-warmup steps per chain x ``grad_s``: what the
draws would cost if a leapfrog step cost one gradient and nothing else)}.
``results``: medians over repeats per (N, method): {``n_stars``, ``method``, ``n_ok``,
``wall_s``, ``import_s``, ``ess_bulk_min``, ``ess_tau_min``, ``ess_per_s`` (bulk ESS / wall),
``speedup_vs_emcee_tutorial_ess`` (emcee_tutorial_ess wall / this wall),
``speedup_vs_emcee_ess`` (emcee_ess wall / this wall), ``ess_per_s_ratio`` (this ESS/s over
emcee_ess's), ``agree_max_sd`` (vs emcee_ess), ``r_hat_max``, ``n_steps``, and for bayesmix
``em_s``, ``compile_s``, ``n_compiles``, ``sample_s``, ``steps_per_draw``}.
``targets``: {``speedup_ge_10_at_1500``, ``speedup_ge_20_at_1500``, ``speedup_ge_10_at_20000``,
``speedup_ge_20_at_20000``} against ``emcee_tutorial_ess`` (the issue's baseline) and the same
keys with ``_vs_vectorised`` against ``emcee_ess``: booleans for the better of ``bayesmix`` and
``bayesmix_cached``, null when not measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PARAMS = ("mean1", "sigma1", "mean2", "sigma2", "frac1")
FULL_NS = [300, 1500, 20_000]
QUICK_NS = [300, 1500]
METHODS = ("emcee_tutorial", "emcee_tutorial_ess", "emcee_fixed", "emcee_ess", "bayesmix", "bayesmix_cached",
           "bayesmix_new_catalogue", "bayesmix_new_bucket", "blackjax", "blackjax_em_start", "pymc_nutpie")
# First runs on a new catalogue with a warm store: the store is filled by one untimed run on
# another catalogue (another data seed) of this size times the factor, then the timed runs
# start fresh processes on this one. 0.97: another size in the same bucket (bayesmix._padding);
# 0.7: a size in another bucket, so only the programs that do not depend on N are found.
NEW_CATALOGUE = {"bayesmix_new_catalogue": 0.97, "bayesmix_new_bucket": 0.7}
N_WALKERS = 32
TUTORIAL_STEPS = 1500
BURN_IN = 1000
BALL = 1e-4
FLAT_BOX = {"mean": (-500.0, 500.0), "sigma_max": 500.0}
LOG_2PI = math.log(2.0 * math.pi)
BLOCK = 2048  # stars per block in the vectorised log-probability (keeps temporaries in cache)


def _peak_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _summaries(draws):
    """Percentiles and sd per parameter from a dict of flat draw arrays."""
    quant = {p: np.percentile(draws[p], [16, 50, 84]).tolist() for p in PARAMS}
    sd = {p: float(np.std(draws[p])) for p in PARAMS}
    return quant, sd


def _arviz_stats(chains):
    """Bulk ESS per parameter and max R-hat from {param: (chain, draw)} arrays."""
    import arviz as az

    ds = az.convert_to_dataset({p: np.asarray(chains[p]) for p in PARAMS})
    ess = az.ess(ds, method="bulk")
    rhat = az.rhat(ds)
    ess_d = {p: float(ess[p].values) for p in PARAMS}
    return ess_d, float(max(float(rhat[p].values) for p in PARAMS))


# --------------------------------------------------------------------------- emcee side


class _Posterior:
    """Log-prior and log-likelihoods of the tutorial's five-parameter mixture (numpy)."""

    def __init__(self, v, e, priors, prior_values):
        self.v = np.ascontiguousarray(v, dtype=float)
        self.e = np.ascontiguousarray(e, dtype=float)
        self.e2 = self.e**2
        self.n = len(self.v)
        self.priors = priors
        self.loc = float(prior_values["mean_loc"])
        self.mscale = float(prior_values["mean_scale"])
        self.sscale = float(prior_values["scale_scale"])

    def log_prior(self, th):
        """Vectorised log-prior, th (W, 5) -> (W,); -inf outside the support."""
        m1, s1, m2, s2, f = th.T
        ok = (s1 > 0) & (s1 < s2) & (f > 0) & (f < 1)
        if self.priors == "flat":
            lo, hi = FLAT_BOX["mean"]
            ok &= (m1 > lo) & (m1 < hi) & (m2 > lo) & (m2 < hi) & (s2 < FLAT_BOX["sigma_max"])
            lp = np.zeros(len(th))
        else:
            # Normal means, HalfNormal scales (normalising constants kept, as in NumPyro).
            lp = (-0.5 * ((m1 - self.loc) / self.mscale) ** 2 - 0.5 * ((m2 - self.loc) / self.mscale) ** 2
                  - 2 * (math.log(self.mscale) + 0.5 * LOG_2PI)
                  - 0.5 * (s1 / self.sscale) ** 2 - 0.5 * (s2 / self.sscale) ** 2
                  + 2 * (0.5 * math.log(2.0 / math.pi) - math.log(self.sscale)))
        return np.where(ok, lp, -np.inf)

    def _block(self, th, v, e2):
        m1, s1, m2, s2, f = (th[:, i:i + 1] for i in range(5))
        v1 = s1 * s1 + e2
        v2 = s2 * s2 + e2
        a = v - m1
        a *= a
        a /= v1
        a += np.log(v1)
        a *= -0.5
        a += np.log(f)
        b = v - m2
        b *= b
        b /= v2
        b += np.log(v2)
        b *= -0.5
        b += np.log1p(-f)
        return np.logaddexp(a, b, out=a).sum(axis=1)

    def log_prob_vectorised(self, th):
        """log posterior for a (W, 5) batch of walkers (emcee ``vectorize=True``)."""
        th = np.atleast_2d(th)
        out = self.log_prior(th)
        ok = np.isfinite(out)
        if ok.any():
            t = th[ok]
            tot = np.zeros(len(t))
            for i in range(0, self.n, BLOCK):
                tot += self._block(t, self.v[i:i + BLOCK], self.e2[i:i + BLOCK])
            out[ok] += tot - 0.5 * self.n * LOG_2PI
        return out

    def log_prob_tutorial(self, theta):
        """log posterior of one walker, written as the tutorial did (scipy.stats, no vectorising)."""
        from scipy.stats import norm

        lp = self.log_prior(np.asarray(theta)[None, :])[0]
        if not np.isfinite(lp):
            return -np.inf
        m1, s1, m2, s2, f = theta
        like = (f * norm.pdf(self.v, m1, np.sqrt(s1**2 + self.e**2))
                + (1 - f) * norm.pdf(self.v, m2, np.sqrt(s2**2 + self.e**2)))
        return lp + np.sum(np.log(like))


def _map_start(post):
    """MAP by Nelder-Mead from a data-driven guess (the histogram peak as the cluster)."""
    from scipy.optimize import minimize

    v = post.v
    lo, hi = np.percentile(v, [1, 99])
    counts, edges = np.histogram(v, bins=100, range=(lo, hi))
    peak = 0.5 * (edges[np.argmax(counts)] + edges[np.argmax(counts) + 1])
    mad = 1.4826 * np.median(np.abs(v - np.median(v)))
    x0 = np.array([peak, 0.05 * mad + 1.0, np.median(v), mad, 0.3])

    def nlp(t):
        val = post.log_prob_vectorised(t[None, :])[0]
        return -val if np.isfinite(val) else 1e300

    res = minimize(nlp, x0, method="Nelder-Mead",
                   options={"maxiter": 20000, "maxfev": 20000, "xatol": 1e-8, "fatol": 1e-8})
    return res.x


def _work_emcee(method, data, seed, args):
    t0 = time.perf_counter()
    import emcee
    import scipy.optimize
    import scipy.stats  # noqa: F401
    import_s = time.perf_counter() - t0

    prior_values = {k: float(data[k]) for k in ("mean_loc", "mean_scale", "scale_scale")}
    post = _Posterior(data["v"], data["e"], args.priors, prior_values)
    t0 = time.perf_counter()
    x_map = _map_start(post)
    map_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    p0 = x_map + BALL * rng.normal(size=(N_WALKERS, 5))
    state = np.random.RandomState(seed).get_state()

    t0 = time.perf_counter()
    if method in ("emcee_tutorial", "emcee_tutorial_ess"):
        sampler = emcee.EnsembleSampler(N_WALKERS, 5, post.log_prob_tutorial)
    else:
        sampler = emcee.EnsembleSampler(N_WALKERS, 5, post.log_prob_vectorised, vectorize=True)
    sampler.random_state = state
    if method in ("emcee_tutorial", "emcee_fixed"):
        sampler.run_mcmc(p0, TUTORIAL_STEPS)
    else:
        sampler.run_mcmc(p0, BURN_IN + 1000)
        while True:
            n_kept = sampler.iteration - BURN_IN
            tau = sampler.get_autocorr_time(discard=BURN_IN, tol=0)
            ess = N_WALKERS * n_kept / tau
            if n_kept >= 50 * tau.max() and ess.min() >= args.target_ess:
                break
            need = max(50 * tau.max(), args.target_ess * tau.max() / N_WALKERS)
            sampler.run_mcmc(None, max(math.ceil(1.1 * need - n_kept), 200))
    wall_s = time.perf_counter() - t0

    n_kept = sampler.iteration - BURN_IN
    tau = sampler.get_autocorr_time(discard=BURN_IN, tol=0)
    chain = sampler.get_chain(discard=BURN_IN)  # (kept, walkers, 5)
    t0 = time.perf_counter()
    import arviz  # noqa: F401
    arviz_import_s = time.perf_counter() - t0
    chains = {p: chain[:, :, i].T for i, p in enumerate(PARAMS)}
    ess, rhat = _arviz_stats(chains)
    quant, sd = _summaries({p: c.ravel() for p, c in chains.items()})
    return {"wall_s": wall_s, "import_s": import_s, "arviz_import_s": arviz_import_s, "map_s": map_s,
            "n_steps": int(sampler.iteration), "n_kept": int(n_kept), "tau": tau.tolist(),
            "ess_bulk": ess, "ess_bulk_min": min(ess.values()),
            "ess_tau_min": float(np.min(N_WALKERS * n_kept / tau)), "r_hat_max": rhat,
            "acceptance": float(np.mean(sampler.acceptance_fraction)), "quantiles": quant, "sd": sd}


# --------------------------------------------------------------------------- bayesmix side


class _CompileLog:
    """Sums JAX's tracing, lowering and backend-compilation times (jax.monitoring events)."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        import jax

        self.total = 0.0
        self.backend = 0.0
        self.n_compiles = 0
        self.cache_hits = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)

    def _duration(self, event, duration, **kwargs):
        if self.active and event in self.EVENTS:
            self.total += duration
            if event == self.EVENTS[2]:
                self.backend += duration
                self.n_compiles += 1

    def _event(self, event, **kwargs):
        if self.active and event == "/jax/compilation_cache/cache_hits":
            self.cache_hits += 1


def _model_args(model, obs):
    """Arguments of the NumPyro program (with the prior constants, where the model takes them)."""
    if hasattr(model, "hyperparameters"):
        return (obs, {}, model.hyperparameters())
    return (obs, {})


def _gradient_cost(model, obs, init_values, repeats=20):
    """Seconds per jitted log-density pass and per value-and-gradient of the NUTS potential."""
    import jax
    from numpyro.infer.util import init_to_value, initialize_model

    info = initialize_model(jax.random.PRNGKey(0), model.model, model_args=_model_args(model, obs),
                            init_strategy=init_to_value(values=init_values))
    z = info.param_info.z
    pot = jax.jit(info.potential_fn)
    vg = jax.jit(jax.value_and_grad(info.potential_fn))
    out = {}
    for name, fn in (("logp_s", pot), ("grad_s", vg)):
        jax.block_until_ready(fn(z))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(z))
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times))
    return out


def _work_bayesmix(method, data, seed, args):
    t0 = time.perf_counter()

    from bayesmix.sampling import set_host_device_count

    set_host_device_count()  # every core a JAX device: chains in parallel where that pays
    # The harness's ESS check below runs in the timed loop; ArviZ is its tool, not bayesmix's
    # (a run needs only arviz-base), so it is imported here, with the stack, as for the peers.
    import arviz  # noqa: F401
    import jax  # noqa: F401

    from bayesmix.em import fit_em
    from bayesmix.likelihood import as_observations
    from bayesmix.models import cluster_field_model
    from bayesmix.sampling import enable_compilation_cache, extend, sample_posterior
    import_s = time.perf_counter() - t0
    if method == "bayesmix_cached" or method in NEW_CATALOGUE:
        enable_compilation_cache(args.cache_dir)
    clog = _CompileLog()
    v, e = data["v"], data["e"]
    num_chains, num_warmup, num_samples = args.nuts_chains, args.nuts_warmup, args.nuts_samples

    clog.active = True
    t_start = time.perf_counter()
    obs = as_observations(v[:, None], e[:, None])
    em = fit_em(seed, obs, 2, n_init=4)
    em_s = time.perf_counter() - t_start
    model = cluster_field_model(obs)
    t0 = time.perf_counter()
    fit = sample_posterior(seed, model, obs, init=em, num_chains=num_chains, num_warmup=num_warmup,
                           num_samples=num_samples, progress_bar=False)
    n_extends = 0
    while True:
        # Each variable on its own: ArviZ 1.x's DataTree refuses a list of names as a selection.
        ess, rhat_max = _arviz_stats({p: fit.idata.posterior[p].values for p in PARAMS})
        ess_min = min(ess.values())
        if (ess_min >= args.target_ess and rhat_max <= 1.01) or n_extends >= 5:
            break
        draws = fit.n_draws
        more = max(math.ceil(1.1 * draws * (args.target_ess / max(ess_min, 1.0) - 1.0)), 100)
        fit = extend(fit, more)
        n_extends += 1
    wall_s = time.perf_counter() - t_start
    sample_s = time.perf_counter() - t0
    clog.active = False

    post = fit.idata.posterior
    chains = {p: post[p].values for p in PARAMS}
    ess_d, rhat_max = _arviz_stats(chains)
    quant, sd = _summaries({p: c.ravel() for p, c in chains.items()})
    stats = fit.idata.sample_stats
    out = {"wall_s": wall_s, "import_s": import_s, "em_s": em_s, "sample_s": sample_s,
           "compile_s": clog.total, "backend_compile_s": clog.backend, "n_compiles": clog.n_compiles,
           "cache_hits": clog.cache_hits, "num_chains": num_chains, "num_warmup": num_warmup,
           "num_samples": int(fit.n_draws), "n_extends": n_extends,
           "likelihood_precision": model.likelihood_precision,
           "steps_per_draw": float(stats["n_steps"].mean()),
           "divergences": int(stats["diverging"].sum()),
           "step_size": float(np.median(stats["step_size"].values)),
           "ess_bulk": ess_d, "ess_bulk_min": min(ess_d.values()), "r_hat_max": rhat_max,
           "quantiles": quant, "sd": sd}
    init_values = model.init_values(em.params)
    out.update(_gradient_cost(model, obs, init_values))
    total_steps = float(stats["n_steps"].sum())
    out["post_warmup_steps"] = total_steps
    out["grad_time_post_warmup_s"] = total_steps / num_chains * out["grad_s"]
    return out


# --------------------------------------------------------------------------- peers: BlackJAX, PyMC + nutpie


def _until_ess(draw_block, constrained, args):
    """Draw blocks until min bulk ESS >= target and R-hat <= 1.01 (at most 8 blocks beyond the
    first); returns (chains {param: (chain, draw)}, n_blocks)."""
    blocks = [draw_block()]
    while True:
        chains = constrained(blocks)
        ess, rhat_max = _arviz_stats(chains)
        if (min(ess.values()) >= args.target_ess and rhat_max <= 1.01) or len(blocks) > 8:
            return chains, len(blocks)
        blocks.append(draw_block())


def _work_blackjax(method, data, seed, args):
    """BlackJAX NUTS with Stan's window adaptation on the same NumPyro model (bayesmix's
    ``cluster_field_model``: the same likelihood and priors), chains vmapped, ``--peer-warmup``
    adaptation steps, then blocks of ``--nuts-samples`` draws until the ESS target.
    ``blackjax``: from NumPyro's default random initialisation; ``blackjax_em_start``: from
    bayesmix's EM fit (the same ``fit_em`` call, timed), each chain jittered by N(0, 0.1) in
    the unconstrained coordinates, so the row times BlackJAX's sampler from a good start."""
    t0 = time.perf_counter()
    import arviz  # noqa: F401  (the ESS check's tool, imported with the stack)
    import blackjax
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import constrain_fn, initialize_model

    from bayesmix.likelihood import as_observations
    from bayesmix.models import cluster_field_model
    import_s = time.perf_counter() - t0
    clog = _CompileLog()
    clog.active = True
    t_start = time.perf_counter()
    obs = as_observations(data["v"][:, None], data["e"][:, None])
    # float64, as the rows measured before bayesmix's mixed precision: the row times
    # BlackJAX's sampler on the float64 likelihood a user would write for it.
    model = cluster_field_model(obs, likelihood_precision="float64")
    model_args = (obs, {}, model.hyperparameters())
    n_chains = args.nuts_chains
    keys = jax.random.split(jax.random.key(seed), n_chains + 1)
    inits = [initialize_model(k, model.model, model_args=model_args) for k in keys[1:]]
    potential = inits[0].potential_fn

    def logdensity(z):
        return -potential(z)

    z0 = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[i.param_info.z for i in inits])
    if method == "blackjax_em_start":
        from numpyro.infer.util import unconstrain_fn

        from bayesmix.em import fit_em

        em = fit_em(seed, obs, 2, n_init=4)
        z_em = unconstrain_fn(model.model, model_args, {}, model.init_values(em.params, data=obs))
        rng = np.random.default_rng(seed)
        z0 = {name: jnp.asarray(np.asarray(z_em[name])
                                + rng.normal(0.0, 0.1, (n_chains, *np.shape(z_em[name])))) for name in z0}

    @jax.jit
    def adapt(key, z):
        def one(k, position):
            warm = blackjax.window_adaptation(blackjax.nuts, logdensity, target_acceptance_rate=0.8)
            (state, params), _ = warm.run(k, position, num_steps=args.peer_warmup)
            return state, params

        return jax.vmap(one)(jax.random.split(key, n_chains), z)

    states, params = adapt(keys[0], z0)

    @jax.jit
    def block(key, states, params):
        def chain(k, state, p):
            step = blackjax.nuts(logdensity, **p).step

            def one(st, kk):
                st, info = step(kk, st)
                return st, (st.position, info.num_integration_steps)

            return jax.lax.scan(one, state, jax.random.split(k, args.nuts_samples))

        return jax.vmap(chain)(jax.random.split(key, n_chains), states, params)

    state = {"states": states, "key": jax.random.key(seed + 7919), "steps": []}

    def draw_block():
        state["key"], k = jax.random.split(state["key"])
        state["states"], (positions, n_steps) = block(k, state["states"], params)
        state["steps"].append(np.asarray(n_steps))
        return positions

    to_sites = jax.jit(jax.vmap(lambda z: constrain_fn(model.model, model_args, {}, z,
                                                       return_deterministic=True)))

    def constrained(blocks):
        z = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, axis=1), *blocks)
        flat = jax.tree_util.tree_map(lambda a: a.reshape((-1, *a.shape[2:])), z)
        sites = to_sites(flat)
        return {p: np.asarray(sites[p]).reshape(n_chains, -1) for p in PARAMS}

    chains, n_blocks = _until_ess(draw_block, constrained, args)
    wall_s = time.perf_counter() - t_start
    clog.active = False
    ess_d, rhat_max = _arviz_stats(chains)
    quant, sd = _summaries({p: c.ravel() for p, c in chains.items()})
    return {"wall_s": wall_s, "import_s": import_s, "compile_s": clog.total, "n_compiles": clog.n_compiles,
            "num_chains": n_chains, "num_warmup": args.peer_warmup,
            "num_samples": n_blocks * args.nuts_samples, "steps_per_draw": float(np.mean(state["steps"])),
            "ess_bulk": ess_d, "ess_bulk_min": min(ess_d.values()), "r_hat_max": rhat_max,
            "quantiles": quant, "sd": sd}


def _work_pymc_nutpie(method, data, seed, args):
    """PyMC model with the same likelihood and priors (bayesmix's defaults, resolved in the data
    file), compiled and sampled by nutpie (numba backend); ``--peer-warmup`` tuning draws, then
    ``--nuts-samples`` draws per chain; short of the ESS target, a fresh run with the draws
    scaled by the shortfall. Needs ``pymc`` and
    ``nutpie`` (run this method with ``--peer-python`` naming an interpreter that has them)."""
    t0 = time.perf_counter()
    try:
        import nutpie
        import pymc as pm
    except ImportError as exc:
        raise RuntimeError(f"pymc_nutpie needs pymc and nutpie ({exc}); install them (pip install pymc "
                           "nutpie) or pass --peer-python /path/to/python-with-them") from exc
    import_s = time.perf_counter() - t0
    v, e = data["v"], data["e"]
    t_start = time.perf_counter()
    with pm.Model() as model:
        mean = pm.Normal("means", float(data["mean_loc"]), float(data["mean_scale"]), shape=2)
        # sigma1 < sigma2, both HalfNormal(scale_scale): bayesmix's ordered-scale prior.
        transforms = pm.distributions.transforms
        positive_ordered = (transforms.Chain([transforms.log, transforms.ordered])
                            if hasattr(transforms, "Chain") else transforms.ordered)
        sigma = pm.HalfNormal("sigmas", float(data["scale_scale"]), shape=2, transform=positive_ordered,
                              initval=np.array([0.2, 1.0]) * float(data["scale_scale"]))
        frac = pm.Dirichlet("w", np.ones(2))
        total = pm.math.sqrt(sigma[None, :] ** 2 + e[:, None] ** 2)
        pm.Mixture("v", w=frac, comp_dists=pm.Normal.dist(mean[None, :], total), observed=v)
    t_compile = time.perf_counter()
    compiled = nutpie.compile_pymc_model(model)
    compile_s = time.perf_counter() - t_compile
    draws, n_runs = args.nuts_samples, 0
    while True:
        n_runs += 1
        trace = nutpie.sample(compiled, draws=draws, tune=args.peer_warmup, chains=args.nuts_chains,
                              seed=seed, progress_bar=False)
        post = trace.posterior
        chains = {"mean1": post["means"].values[..., 0], "sigma1": post["sigmas"].values[..., 0],
                  "mean2": post["means"].values[..., 1], "sigma2": post["sigmas"].values[..., 1],
                  "frac1": post["w"].values[..., 0]}
        ess_d, rhat_max = _arviz_stats(chains)
        if (min(ess_d.values()) >= args.target_ess and rhat_max <= 1.01) or draws >= 16 * args.nuts_samples:
            break
        # nutpie cannot continue a run: the next call (tuned afresh) is sized by this one's ESS
        # shortfall, with a 20% margin, so that one more call usually suffices (doubling took up
        # to four calls, most of the row's time).
        shortfall = 1.2 * args.target_ess / max(min(ess_d.values()), 1.0)
        draws = int(min(16 * args.nuts_samples, np.ceil(draws * max(2.0, shortfall))))
    wall_s = time.perf_counter() - t_start
    quant, sd = _summaries({p: c.ravel() for p, c in chains.items()})
    # compile_s: numba's compilation of the PyMC log density; n_sample_calls > 1: the draws
    # were doubled (each call tunes afresh), which is where most of a slow row's time goes.
    return {"wall_s": wall_s, "import_s": import_s, "compile_s": compile_s, "sample_s": wall_s - compile_s,
            "n_sample_calls": n_runs, "num_chains": args.nuts_chains,
            "num_warmup": args.peer_warmup, "num_samples": draws, "ess_bulk": ess_d,
            "ess_bulk_min": min(ess_d.values()), "r_hat_max": rhat_max, "quantiles": quant, "sd": sd}


def _worker_main(method, path, seed, args):
    data = dict(np.load(path))
    peers = {"blackjax": _work_blackjax, "blackjax_em_start": _work_blackjax,
             "pymc_nutpie": _work_pymc_nutpie}
    fn = peers.get(method, _work_bayesmix if method.startswith("bayesmix") else _work_emcee)
    out = fn(method, data, seed, args)
    out["peak_mb"] = _peak_mb()
    print("RESULT " + json.dumps(out, default=float), flush=True)


# --------------------------------------------------------------------------- orchestration


def _make_data(n, seed, path):
    """Simulate the NGC 288-like catalogue; resolve bayesmix's default priors on it."""
    from bayesmix.simulate import simulate_cluster_field

    sim = simulate_cluster_field(seed, n)
    v = np.asarray(sim.catalogue.values, float)[:, 0]
    e = np.sqrt(np.asarray(sim.catalogue.error_covs, float)[:, 0, 0])
    try:
        from bayesmix.likelihood import as_observations
        from bayesmix.models import cluster_field_model

        model = cluster_field_model(as_observations(v[:, None], e[:, None]))
        pv = {"mean_loc": float(model.mean_loc[0, 0]), "mean_scale": float(model.mean_scale[0, 0]),
              "scale_scale": float(model.scale_scale[0, 0])}  # (component, feature): shared priors here
    except ImportError:  # before bayesmix.models existed: its documented defaults
        pv = {"mean_loc": float(np.median(v)), "mean_scale": 3.0 * float(np.std(v)),
              "scale_scale": 2.0 * float(np.std(v))}
    np.savez(path, v=v, e=e, **pv)
    return pv


def _run_worker(method, path, seed, args, timeout, cache_dir=None):
    python = args.peer_python if method == "pymc_nutpie" and args.peer_python else sys.executable
    cmd = [python, __file__, "--worker", method, "--data", str(path), "--seed", str(seed),
           "--priors", args.priors, "--target-ess", str(args.target_ess),
           "--nuts-chains", str(args.nuts_chains), "--nuts-warmup", str(args.nuts_warmup),
           "--nuts-samples", str(args.nuts_samples), "--peer-warmup", str(args.peer_warmup)]
    if method == "bayesmix_cached" or method in NEW_CATALOGUE:
        cmd += ["--cache-dir", cache_dir or args.cache_dir]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": f"ran past {timeout:.0f} s and was stopped"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["status"] = "ok"
            out["reason"] = None
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": "failed", "reason": " | ".join(tail)}


def _warm_new_catalogue_stores(n, tmp, args, log) -> dict:
    """For each new-catalogue method asked for: (a store filled by one untimed run on another
    catalogue, of size n times the method's factor, data seed + 1000; that size)."""
    stores = {}
    for method, factor in NEW_CATALOGUE.items():
        if method not in args.methods:
            continue
        n_warm = max(50, round(n * factor))
        warm_path = Path(tmp) / f"warm_{method}_{n}.npz"
        _make_data(n_warm, args.data_seed + 1000, warm_path)
        store = Path(tmp) / f"store_{method}_{n}"
        warm = _run_worker(method, warm_path, 0, args, args.timeout, str(store))
        print(f"  N={n:>6d} {method} store warmed at N={n_warm}: {warm['status']} "
              f"wall={_fmt(warm.get('wall_s'), '.3g')} s", file=log, flush=True)
        stores[method] = (store, n_warm)
    return stores


def _agreement(run, ref):
    if not run.get("quantiles") or not ref.get("quantiles"):
        return None
    return max(abs(a - b) / ref["sd"][p] for p in PARAMS
               for a, b in zip(run["quantiles"][p], ref["quantiles"][p], strict=True))


def _median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.median(vals)) if vals else None


def _versions():
    out = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "numpy": np.__version__}
    for mod in ("emcee", "scipy", "arviz", "jax", "numpyro"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as exc:
            out[mod] = f"unavailable ({type(exc).__name__})"
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 300, 1500, one repeat (about a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", metavar="PATH", help="also write the JSON object to PATH")
    parser.add_argument("--repeats", type=int, default=None, help="fresh processes per measurement (3)")
    parser.add_argument("--n", type=float, nargs="*", default=None, help="override the N list")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--priors", choices=("bayesmix", "flat"), default="bayesmix")
    parser.add_argument("--target-ess", type=float, default=1000.0)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per measurement")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--nuts-chains", type=int, default=4)
    parser.add_argument("--nuts-warmup", type=int, default=200)
    parser.add_argument("--nuts-samples", type=int, default=250, help="first-run draws per chain")
    parser.add_argument("--cache-dir", default=None,
                        help="JAX persistent compilation cache of bayesmix_cached (default: a temporary one)")
    parser.add_argument("--peer-warmup", type=int, default=500,
                        help="adaptation steps of the BlackJAX and nutpie runs (from a random start)")
    parser.add_argument("--peer-python", default=None,
                        help="interpreter with pymc and nutpie for the pymc_nutpie column "
                             "(default: this one)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(args.worker, args.data, args.seed, args)
        return 0

    ns = [int(n) for n in args.n] if args.n else (QUICK_NS if args.quick else FULL_NS)
    repeats = args.repeats or (1 if args.quick else 3)
    log = sys.stderr if args.json else sys.stdout
    runs, prior_values, cache_warmup = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in ns:
            path = Path(tmp) / f"data_{n}.npz"
            prior_values[n] = _make_data(n, args.data_seed, path)
            if "bayesmix_cached" in args.methods:
                args.cache_dir = args.cache_dir or str(Path(tmp) / "jax_cache")
                # One untimed run fills the cache; the timed repeats then find every program in it.
                warm = _run_worker("bayesmix_cached", path, 0, args, args.timeout)
                cache_warmup[n] = warm.get("wall_s")
                print(f"  N={n:>6d} bayesmix_cached cache warm-up run: {warm['status']} "
                      f"wall={_fmt(warm.get('wall_s'), '.3g')} s", file=log, flush=True)
            new_stores = _warm_new_catalogue_stores(n, tmp, args, log)
            for rep in range(repeats):
                for method in args.methods:
                    row = {"n_stars": n, "method": method, "repeat": rep, "seed": rep}
                    if method in NEW_CATALOGUE:  # each repeat on a copy of the warm store: a first run
                        store = Path(tmp) / f"store_{method}_{n}_rep{rep}"
                        shutil.copytree(new_stores[method][0], store)
                        row["store_warmed_at_n"] = new_stores[method][1]
                        row.update(_run_worker(method, path, rep, args, args.timeout, str(store)))
                        shutil.rmtree(store, ignore_errors=True)
                    else:
                        row.update(_run_worker(method, path, rep, args, args.timeout))
                    runs.append(row)
                    print(f"  N={n:>6d} {method:15s} rep {rep} {row['status']:7s} "
                          f"wall={_fmt(row.get('wall_s'), '.3g')} s "
                          f"ess_bulk_min={_fmt(row.get('ess_bulk_min'), '.0f')} "
                          f"{row.get('reason') or ''}", file=log, flush=True)

    for r in runs:
        ref = [q for q in runs if q["n_stars"] == r["n_stars"] and q["method"] == "emcee_ess"
               and q["repeat"] == r["repeat"] and q["status"] == "ok"]
        r["agree_max_sd"] = _agreement(r, ref[0]) if ref and r["method"] != "emcee_ess" else None
        if r.get("wall_s") and r.get("ess_bulk_min"):
            r["ess_per_s"] = r["ess_bulk_min"] / r["wall_s"]

    results = []
    for n in ns:
        for method in args.methods:
            rows = [r for r in runs if r["n_stars"] == n and r["method"] == method and r["status"] == "ok"]
            res = {"n_stars": n, "method": method, "n_ok": len(rows)}
            for key in ("wall_s", "import_s", "ess_bulk_min", "ess_tau_min", "ess_per_s", "agree_max_sd",
                        "r_hat_max", "n_steps", "em_s", "compile_s", "n_compiles", "sample_s",
                        "steps_per_draw", "n_sample_calls", "num_samples"):
                res[key] = _median(rows, key)
            precisions = sorted({r["likelihood_precision"] for r in rows if "likelihood_precision" in r})
            if precisions:
                res["likelihood_precision"] = "/".join(precisions)
            results.append(res)
        for ref_method, key in (("emcee_ess", "speedup_vs_emcee_ess"),
                                ("emcee_tutorial_ess", "speedup_vs_emcee_tutorial_ess")):
            base = [r for r in results if r["n_stars"] == n and r["method"] == ref_method]
            for res in results:
                if res["n_stars"] == n and base and base[0]["wall_s"] and res["wall_s"]:
                    res[key] = base[0]["wall_s"] / res["wall_s"]
                    if ref_method == "emcee_ess":
                        res["ess_per_s_ratio"] = (res["ess_per_s"] / base[0]["ess_per_s"]
                                                  if res["ess_per_s"] and base[0]["ess_per_s"] else None)

    def speedup(n, key):
        rows = [r.get(key) for r in results if r["n_stars"] == n and r["method"].startswith("bayesmix")]
        rows = [r for r in rows if r is not None]
        return max(rows) if rows else None

    targets = {}
    for n in (1500, 20_000):
        for level in (10, 20):
            s = speedup(n, "speedup_vs_emcee_tutorial_ess")
            targets[f"speedup_ge_{level}_at_{n}"] = None if s is None else bool(s >= level)
            s = speedup(n, "speedup_vs_emcee_ess")
            targets[f"speedup_ge_{level}_at_{n}_vs_vectorised"] = None if s is None else bool(s >= level)
    report = {
        "machine": _versions(),
        "settings": {"n_values": ns, "repeats": repeats, "quick": args.quick, "target_ess": args.target_ess,
                     "target_rhat": 1.01, "n_walkers": N_WALKERS, "tutorial_steps": TUTORIAL_STEPS,
                     "burn_in": BURN_IN, "priors": args.priors,
                     "prior_values": {str(k): v for k, v in prior_values.items()},
                     "data_seed": args.data_seed, "nuts_chains": args.nuts_chains,
                     "nuts_warmup": args.nuts_warmup, "nuts_samples": args.nuts_samples,
                     "cache_warmup_wall_s": {str(k): v for k, v in cache_warmup.items()}},
        "params": list(PARAMS),
        "runs": runs,
        "results": results,
        "targets": targets,
    }
    if args.save:
        Path(args.save).write_text(json.dumps(report, indent=1, default=float))
    if args.json:
        print(json.dumps(report, indent=1, default=float))
        return 0
    print()
    print(f"NGC 288-like cluster + field, {os.cpu_count()} CPU cores, medians of {repeats} fresh "
          f"process(es); priors: {args.priors}; target ESS {args.target_ess:.0f}")
    head = (f"{'N':>6} {'method':15} {'wall s':>8} {'ESS bulk':>9} {'ESS tau':>8} {'ESS/s':>8} "
            f"{'x tut':>6} {'x vec':>6} {'ESS/s x':>8} {'agree sd':>8} {'R-hat':>6} {'import s':>8}  note")
    print(head)
    print("-" * len(head))
    for r in results:
        note = ""
        if r["method"].startswith("emcee") and r.get("n_steps"):
            note = f"{N_WALKERS} walkers x {r['n_steps']:.0f} steps, burn-in {BURN_IN}"
        if r["method"].startswith("bayesmix") and r.get("compile_s") is not None:
            note = (f"EM {r['em_s']:.2g} s, compile {r['compile_s']:.3g} s ({r['n_compiles']:.0f}x), "
                    f"sampling {r['sample_s']:.3g} s, {r['steps_per_draw']:.1f} steps/draw, "
                    f"{r.get('likelihood_precision', '?')} likelihood")
        if r["method"] == "pymc_nutpie" and r.get("compile_s") is not None:
            note = (f"numba compile {r['compile_s']:.3g} s, sampling {r['sample_s']:.3g} s in "
                    f"{r['n_sample_calls']:.0f} call(s), {r['num_samples']:.0f} draws/chain at the end")
        if r["n_ok"] == 0:
            bad = [q for q in runs if q["n_stars"] == r["n_stars"] and q["method"] == r["method"]]
            note = bad[0].get("reason") if bad else "not run"
        print(f"{r['n_stars']:>6d} {r['method']:15} {_fmt(r['wall_s'], '8.3g')} "
              f"{_fmt(r['ess_bulk_min'], '9.0f')} {_fmt(r['ess_tau_min'], '8.0f')} "
              f"{_fmt(r['ess_per_s'], '8.1f')} {_fmt(r.get('speedup_vs_emcee_tutorial_ess'), '6.2f')} "
              f"{_fmt(r.get('speedup_vs_emcee_ess'), '6.2f')} "
              f"{_fmt(r.get('ess_per_s_ratio'), '8.2f')} {_fmt(r['agree_max_sd'], '8.3f')} "
              f"{_fmt(r['r_hat_max'], '6.3f')} {_fmt(r['import_s'], '8.2f')}  {note}")
    print()
    print("x tut: emcee_tutorial_ess wall time / this wall time (the issue's baseline); x vec: the same "
          "against emcee_ess (vectorised log-probability); ESS/s x: ESS per second relative to emcee_ess; "
          "agree sd: max |16/50/84 percentile difference| vs emcee_ess in posterior sd")
    print("targets: " + ", ".join(f"{k}={v}" for k, v in targets.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
