"""Subsample-then-reweight, measured: why bayesmix samples the full data (sharded) instead.

The idea: run NUTS on a random subsample of n of the N stars, then importance-weight its
draws to the full-data posterior with the log-likelihood of the other N - n stars,
Pareto-smoothed (PSIS), and trust the result when the Pareto k-hat is below 0.7. Two
variants of the subsample posterior:

* ``plain``: the subsample's own posterior (its likelihood as it is). Its width is about
  sqrt(N / n) times the full-data one, so the weights concentrate on the few draws that
  fall inside the much narrower full-data posterior.
* ``scaled``: each subsample star's log-likelihood times N / n (per-star weights), which has
  about the full-data width but is centred on the subsample's estimate, off the full-data
  one by about sqrt(N / n - 1) full-data standard deviations.

Both are compared with NUTS on all N stars (the reference): k-hat, the importance sampling
effective sample size, and each parameter's reweighted mean against the reference, in
reference standard deviations. NGC 288-like cluster + field (``simulate_cluster_field``),
the default ``cluster_field_model``.

Usage::

    python bench/subsample_reweight.py                      # N = 1e5, n = 1e4 and 3e4
    python bench/subsample_reweight.py --n 30000 --sub 3000 10000
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from arviz_stats.base.array import array_stats

from bayesmix.likelihood import MixtureParams, Observations, as_observations, log_likelihood_per_star
from bayesmix.models import cluster_field_model
from bayesmix.sampling import sample_posterior
from bayesmix.simulate import simulate_cluster_field

PARAMS = ("mean1", "sigma1", "mean2", "sigma2", "frac1")
NUTS = {"num_chains": 4, "num_warmup": 300, "num_samples": 500, "progress_bar": False}


def _draws(fit) -> dict[str, np.ndarray]:
    post = fit.idata.posterior
    return {p: np.asarray(post[p].values).reshape(-1) for p in PARAMS}


def _rest_log_likelihood(draws: dict, rest: Observations) -> np.ndarray:
    """Sum over the stars left out of each draw's log-likelihood, shape (n_draws,)."""
    @jax.jit
    def one(w1, m1, s1, m2, s2):
        params = MixtureParams(jnp.stack([w1, 1.0 - w1]), jnp.stack([m1, m2])[:, None],
                               jnp.stack([s1, s2])[:, None, None] ** 2)
        return jnp.sum(log_likelihood_per_star(params, rest))

    args = [draws[p] for p in ("frac1", "mean1", "sigma1", "mean2", "sigma2")]
    return np.asarray(jax.lax.map(lambda a: one(*a), tuple(jnp.asarray(a) for a in args)))


def _subsample_row(key, obs, rows, n_total, scaled, reference):
    sub = Observations(obs.values[rows], obs.error_covs[rows],
                       weight=np.full(rows.size, n_total / rows.size) if scaled else None)
    rest_rows = np.setdiff1d(np.arange(n_total), rows)
    rest = Observations(obs.values[rest_rows], obs.error_covs[rest_rows])
    t0 = time.perf_counter()
    fit = sample_posterior(key, cluster_field_model(sub), sub, **NUTS)
    sample_s = time.perf_counter() - t0
    draws = _draws(fit)
    log_w = _rest_log_likelihood(draws, rest)
    if scaled:  # the target over the proposal: full likelihood minus the scaled subsample's
        log_w = log_w - (n_total / rows.size - 1.0) * _rest_log_likelihood(draws, Observations(
            obs.values[rows], obs.error_covs[rows]))
    smoothed, khat = array_stats.psislw(log_w - log_w.max())
    w = np.exp(smoothed - np.max(smoothed))
    w /= w.sum()
    ref_mean, ref_sd = reference
    error = {p: float(abs(np.sum(w * draws[p]) - ref_mean[p]) / ref_sd[p]) for p in PARAMS}
    width = {p: float(draws[p].std() / ref_sd[p]) for p in PARAMS}
    offset = {p: float((draws[p].mean() - ref_mean[p]) / ref_sd[p]) for p in PARAMS}
    return {"n_sub": int(rows.size), "variant": "scaled" if scaled else "plain", "khat": float(khat),
            "width_over_full": width, "offset_sd": offset,
            "is_ess": float(1.0 / np.sum(w**2)), "n_draws": int(w.size), "sample_s": sample_s,
            "max_error_sd": max(error.values()), "error_sd": error}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--sub", type=int, nargs="+", default=[10_000, 30_000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save")
    args = ap.parse_args(argv)
    sim = simulate_cluster_field(args.seed, args.n)
    obs = as_observations(sim.catalogue)
    t0 = time.perf_counter()
    full = _draws(sample_posterior(args.seed, cluster_field_model(obs), obs, **NUTS))
    full_s = time.perf_counter() - t0
    reference = ({p: float(v.mean()) for p, v in full.items()}, {p: float(v.std()) for p, v in full.items()})
    rng = np.random.default_rng(args.seed)
    rows = []
    for n_sub in args.sub:
        chosen = np.sort(rng.choice(args.n, n_sub, replace=False))
        for scaled in (False, True):
            rows.append(_subsample_row(args.seed + 1, obs, chosen, args.n, scaled, reference))
    print(f"N = {args.n}; full-data NUTS {full_s:.1f} s, {NUTS['num_chains']} x {NUTS['num_samples']} draws")
    print(f"{'n':>7} {'variant':8} {'k-hat':>7} {'IS ESS':>8} {'max |mean - full| / sd':>24} {'NUTS s':>7}")
    for r in rows:
        print(f"{r['n_sub']:>7} {r['variant']:8} {r['khat']:7.2f} {r['is_ess']:8.1f} "
              f"{r['max_error_sd']:24.2f} {r['sample_s']:7.1f}")
    out = {"n": args.n, "full_s": full_s, "reference": reference, "rows": rows}
    if args.save:
        with open(args.save, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
