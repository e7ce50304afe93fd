"""The one source of allowed option values.

Each tuple lists the values one option accepts. The module that implements the option
(its owner, named beside each tuple) and :mod:`bayesmix.config`, which checks run specs
before anything is imported, both import the tuple from here. Adding a value means
adding it here and implementing it in the owner, and then every check accepts it.

The module imports nothing, so ``config`` and the CLI stay free of JAX.
"""

from __future__ import annotations

__all__ = [
    "BACKGROUND_KINDS",
    "CHAIN_METHODS",
    "DUPLICATES",
    "EM_INITS",
    "ESTIMATOR_METHODS",
    "MODEL_KINDS",
    "ORDERINGS",
    "OUTPUT_TABLE_FORMATS",
    "RADIUS_LAWS",
    "SIMULATIONS",
    "TABLE_FORMATS",
]

# bayesmix.simulate.simulate_named: the named simulations (also `bayesmix simulate`).
SIMULATIONS = ("cluster-field", "contaminated-field", "disc")
# bayesmix.workflow / config.ModelSpec.kind: the general mixture or the 1-D cluster-field model.
MODEL_KINDS = ("mixture", "cluster-field")
# bayesmix.models.Ordering.kind: what increases with the component index.
ORDERINGS = ("scale", "mean", "weight")
# bayesmix.models.RadiusFraction.kind: the member fraction's law in projected radius.
RADIUS_LAWS = ("logistic", "plummer")
# config.BackgroundSpec.kind -> bayesmix.em.UniformBackground / GaussianBackground.
BACKGROUND_KINDS = ("uniform", "gaussian")
# bayesmix.sampling.sample_posterior(chain_method=...).
CHAIN_METHODS = ("auto", "sequential", "parallel", "vectorized")
# bayesmix.em.EMOptions.init (None also: "given" with init_params, else "auto").
EM_INITS = ("auto", "kmeans++", "random", "given")
# bayesmix.estimator.DeconvolvedGaussianMixture(method=...).
ESTIMATOR_METHODS = ("em", "nuts")
# bayesmix.catalogue.read_catalogue(duplicates=...).
DUPLICATES = ("error", "first", "best")
# bayesmix.catalogue.read_catalogue(format=...): the format names a spec may give (read_catalogue
# also takes astropy's spellings, e.g. "ascii.csv").
TABLE_FORMATS = ("fits", "csv", "ecsv", "votable", "fixed_width", "ascii")
# config.OutputSpec.formats -> bayesmix.workflow: the formats a run writes its tables in.
OUTPUT_TABLE_FORMATS = ("fits", "csv", "ecsv", "votable")
