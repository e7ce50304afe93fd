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
    "DISPERSION_PROFILES",
    "DUPLICATES",
    "EM_INITS",
    "ESTIMATOR_METHODS",
    "FOOTPRINT_KINDS",
    "GROUP_FIELDS",
    "LIKELIHOOD_PRECISIONS",
    "MISSING_FEATURES",
    "MODEL_KINDS",
    "ORDERINGS",
    "OUTPUT_TABLE_FORMATS",
    "RADIUS_LAWS",
    "SELECT_OPERATORS",
    "SIMULATIONS",
    "SKY_UNITS",
    "SPATIAL_PROFILES",
    "TABLE_FORMATS",
]

# bayesmix.simulate.simulate_named: the named simulations (also `bayesmix simulate`).
SIMULATIONS = ("cluster-field", "contaminated-field", "disc")
# bayesmix.models.mixture_model(likelihood_precision=) / config.SamplerSpec: the sampler
# likelihood's floating point ("auto": "mixed" for large catalogues, see models._resolve_precision).
LIKELIHOOD_PRECISIONS = ("auto", "float64", "mixed")
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
# bayesmix.clusters.many_cluster_model(field=...) and [groups] field: a field per group, or one shared.
GROUP_FIELDS = ("per-group", "shared")
# bayesmix.estimator.DeconvolvedGaussianMixture(method=...).
ESTIMATOR_METHODS = ("em", "nuts")
# bayesmix.catalogue.read_catalogue(duplicates=...).
DUPLICATES = ("error", "first", "best", "combine")
# bayesmix.catalogue.read_catalogue(missing_features=...): drop a star missing a feature, or keep it.
MISSING_FEATURES = ("drop", "marginalise")
# bayesmix.estimator.DeconvolvedGaussianMixture(missing_features=...): refuse NaN in X, or use the
# features each row has (an estimator has no drop report, so it never drops rows).
ESTIMATOR_MISSING_FEATURES = ("error", "marginalise")
# bayesmix.sky.sky_offsets(unit=...) and [data.sky] unit: the angular unit of the radii.
SKY_UNITS = ("arcsec", "arcmin", "deg")
# bayesmix.catalogue.read_catalogue(select={column: {operator: operand}}): pattern and comparison selections.
SELECT_OPERATORS = ("glob", "regex", "==", "!=", "<", "<=", ">", ">=")
# bayesmix.catalogue.read_catalogue(format=...): the format names a spec may give (read_catalogue
# also takes astropy's spellings, e.g. "ascii.csv").
TABLE_FORMATS = ("fits", "csv", "ecsv", "votable", "fixed_width", "ascii")
# config.OutputSpec.formats -> bayesmix.workflow: the formats a run writes its tables in.
OUTPUT_TABLE_FORMATS = ("fits", "csv", "ecsv", "votable")
# bayesmix.spatial / models.SpatialLaw.profile: the members' projected surface density.
SPATIAL_PROFILES = ("plummer", "exponential")
# bayesmix.spatial footprints (config.SpatialSpec.footprint).
FOOTPRINT_KINDS = ("circle", "polygon", "hull")
# bayesmix.models.MemberKinematics.kind: the members' dispersion against radius.
DISPERSION_PROFILES = ("power_law", "bins")
