"""Cost of marginalising missing features: EM iterations and likelihood gradients, masked vs complete.

The same stars (D = 3, K = 3, per-star correlated 3x3 error covariances) are fitted with every
feature measured and with a fraction of the entries missing (marginalised star by star,
``Observations.observed``). Reported per N: time per EM iteration (difference of runs of 20 and
60 iterations, so compilation and set-up cancel) and per value-and-gradient of the sampler's
``total_log_likelihood``, for both, and the ratio masked / complete. The masked program keeps
the complete one's shapes, so the ratio is the price of the extra masking arithmetic.

Usage::

    python bench/missing_features.py              # N = 1e4, 1e5
    python bench/missing_features.py --n 1e6      # other sizes
"""

import argparse
import time
import warnings

import jax
import numpy as np

from bayesmix.em import fit_em
from bayesmix.likelihood import MixtureParams, as_observations, total_log_likelihood
from bayesmix.simulate import simulate_mixture


def _stars(n_stars, missing, seed=0):
    rng = np.random.default_rng(seed)
    truth = MixtureParams(np.array([0.5, 0.3, 0.2]), np.array([[0.0, 0.0, 0.0], [1.0, 0.5, -0.5],
                                                               [-1.0, 0.8, 0.6]]),
                          np.stack([np.eye(3) * s for s in (0.2, 0.1, 0.15)]))
    sim = simulate_mixture(seed, truth, n_stars, error_scale=0.1, max_error_correlation=0.3)
    x, s = np.asarray(sim.catalogue.values), np.asarray(sim.catalogue.error_covs)
    if not missing:
        return as_observations(x, s), truth
    mask = rng.random(x.shape) > missing
    mask[~mask.any(axis=1), 0] = True
    return as_observations(np.where(mask, x, np.nan), s, observed=mask), truth


def _per_iteration(obs, truth):
    times = {}
    for n_iter in (20, 60):
        fit_em(0, obs, 3, init="given", init_params=truth, max_iter=n_iter, tol=0.0)  # compile
        start = time.perf_counter()
        fit_em(0, obs, 3, init="given", init_params=truth, max_iter=n_iter, tol=0.0)
        times[n_iter] = time.perf_counter() - start
    return (times[60] - times[20]) / 40


def _per_gradient(obs, truth, repeats=20):
    def log_lik(means, covs):
        return total_log_likelihood(MixtureParams(truth.weights, means, covs), obs)

    grad = jax.jit(jax.value_and_grad(log_lik, argnums=(0, 1)))
    means, covs = jax.numpy.asarray(truth.means), jax.numpy.asarray(truth.covariances)
    jax.block_until_ready(grad(means, covs))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(grad(means, covs))
    return (time.perf_counter() - start) / repeats


def main():
    warnings.simplefilter("ignore")  # EMConvergenceWarning: fixed iteration counts on purpose
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=float, nargs="*", default=[1e4, 1e5])
    parser.add_argument("--missing", type=float, default=0.3, help="fraction of entries missing")
    args = parser.parse_args()
    print(f"D = 3, K = 3, {args.missing:.0%} of entries missing; times in ms")
    print(f"{'N':>9} {'EM iter complete':>17} {'EM iter masked':>15} {'ratio':>6} "
          f"{'grad complete':>14} {'grad masked':>12} {'ratio':>6}")
    for n in args.n:
        complete, truth = _stars(int(n), 0.0)
        masked, _ = _stars(int(n), args.missing)
        em_c, em_m = _per_iteration(complete, truth), _per_iteration(masked, truth)
        g_c, g_m = _per_gradient(complete, truth), _per_gradient(masked, truth)
        print(f"{int(n):>9d} {1e3 * em_c:>17.2f} {1e3 * em_m:>15.2f} {em_m / em_c:>6.2f} "
              f"{1e3 * g_c:>14.2f} {1e3 * g_m:>12.2f} {g_m / g_c:>6.2f}")


if __name__ == "__main__":
    main()
