"""bayesmix: Bayesian Gaussian mixtures with measurement errors for star catalogues.

The public API is re-exported here lazily, so ``import bayesmix`` stays cheap and
JAX is imported (and switched to float64) only when a numerical name is first used.
"""

from importlib import import_module

__version__ = "0.1.0.dev0"

_EXPORTS = {
    # catalogue I/O (numpy + astropy)
    "Catalogue": "catalogue",
    "DropReport": "catalogue",
    "read_catalogue": "catalogue",
    "read_table": "catalogue",
    "write_table": "catalogue",
    "read_provenance": "catalogue",
    "combine_epochs": "catalogue",
    # sky positions -> tangent-plane offsets and radii (numpy + astropy)
    "SkyOffsets": "sky",
    "sky_offsets": "sky",
    # likelihood core (JAX)
    "MixtureParams": "likelihood",
    "Observations": "likelihood",
    "as_observations": "likelihood",
    "check_params": "likelihood",
    "component_log_prob": "likelihood",
    "measured_values": "likelihood",
    "log_likelihood": "likelihood",
    "responsibilities": "likelihood",
    # extreme-deconvolution EM / MAP (JAX)
    "EMOptimum": "em",
    "EMOptions": "em",
    "EMResult": "em",
    "EMConvergenceWarning": "em",
    "GaussianBackground": "components",
    "MAPPrior": "em",
    "UniformBackground": "components",
    "complete_start": "em",
    "fit_em": "em",
    "scan_n_components": "em",
    # simulated catalogues
    "simulate_cluster_field": "simulate",
    "simulate_contaminated_field": "simulate",
    "simulate_mixture": "simulate",
    # cluster structure: spatial membership, dispersion profile, velocity gradient (JAX)
    "MemberKinematics": "models",
    "SpatialLaw": "models",
    "dispersion_profile": "models",
    # posterior diagnostics (ArviZ, pandas; no JAX)
    "ConvergenceReport": "diagnostics",
    "ConvergenceWarning": "diagnostics",
    "LabelSwitchingReport": "diagnostics",
    "LabelSwitchingWarning": "diagnostics",
    "ModeDisagreementWarning": "diagnostics",
    "ModeReport": "diagnostics",
    "ModelCheckReport": "diagnostics",
    "ModelMisfitWarning": "diagnostics",
    "check_convergence": "diagnostics",
    "check_label_switching": "diagnostics",
    "check_model_fit": "diagnostics",
    "check_modes": "diagnostics",
    "compare_models": "diagnostics",
    "summary": "diagnostics",
    # memberships and posterior predictive draws (JAX)
    "MembershipResult": "membership",
    "membership_probabilities": "membership",
    "membership_table": "membership",
    "posterior_predictive": "membership",
    "posterior_predictive_counts": "membership",
    "posterior_predictive_idata": "membership",
    "responsibilities_at": "membership",
    # your own NumPyro program's draws, for every tool above
    "posterior_from_draws": "own_model",
    # the scikit-learn-style estimator (imports scikit-learn when first used)
    "DeconvolvedGaussianMixture": "estimator",
    # run specifications and whole runs (the layer under `bayesmix fit` / `scan`)
    "RunSpec": "config",
    "SpecError": "config",
    "load_spec": "config",
    "run_spec": "workflow",
    "scan_spec": "workflow",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bayesmix' has no attribute {name!r}")
    value = getattr(import_module(f"bayesmix.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
