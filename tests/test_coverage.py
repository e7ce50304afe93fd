"""Frequentist calibration of the posterior: 68% intervals contain the truth 68% of the time.

Repeated NGC 288-like simulations (the simulator's defaults: 386 stars, the tutorial's
truths) are each fitted by the full pipeline (EM start, Laplace start, NUTS). With
weakly informative priors and hundreds of stars the posterior is close to its
Bernstein-von Mises limit, so each central 68% credible interval (16th to 84th
percentile) should cover the fixed truth with probability close to 0.68.

Tolerances: over ``N_SIMS`` simulations a single parameter's coverage has binomial sd
``sqrt(0.68 * 0.32 / N_SIMS)`` (0.074 for 40); the pooled coverage over the five
parameters has sd at most that and at least that over sqrt(5) (the parameters'
intervals are not independent). The test asks for each parameter within 3.5 sd of
0.68 and for the pooled coverage within 3 single-parameter sd / sqrt(2.5) (about 0.14).
A sampler that reported intervals too narrow by a third, or centred one posterior
sd off, falls outside (coverage ~0.48, or ~0.5).
"""

import numpy as np

from bayesmix.models import cluster_field_model
from bayesmix.sampling import sample_posterior
from bayesmix.simulate import simulate_cluster_field

N_SIMS = 40
NOMINAL = 0.68
TUTORIAL = ("mean1", "sigma1", "mean2", "sigma2", "frac1")


def test_68_percent_intervals_cover_the_truth_at_the_nominal_rate():
    hits = {name: [] for name in TUTORIAL}
    for sim_seed in range(N_SIMS):
        sim = simulate_cluster_field(1000 + sim_seed)
        true = sim.truth.tutorial_values()
        fit = sample_posterior(sim_seed, cluster_field_model(sim.catalogue), sim.catalogue,
                               num_warmup=200, num_samples=250, progress_bar=False)
        post = fit.idata.posterior
        assert int(fit.idata.sample_stats["diverging"].sum()) == 0, sim_seed
        for name in TUTORIAL:
            lo, hi = np.percentile(post[name].values.ravel(), [16, 84])
            hits[name].append(lo <= true[name] <= hi)
    sd_one = np.sqrt(NOMINAL * (1 - NOMINAL) / N_SIMS)
    rates = {name: float(np.mean(h)) for name, h in hits.items()}
    pooled = float(np.mean([np.mean(h) for h in hits.values()]))
    print(f"68% interval coverage over {N_SIMS} simulations: {rates}; pooled {pooled:.3f}")
    for name, rate in rates.items():
        assert abs(rate - NOMINAL) <= 3.5 * sd_one, (name, rates)
    assert abs(pooled - NOMINAL) <= 3 * sd_one / np.sqrt(2.5), (pooled, rates)
