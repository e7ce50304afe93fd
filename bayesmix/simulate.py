"""Simulated catalogues with known truth: the demo data, and the ground truth of the tests.

Two generators, both taking an explicit JAX PRNG key (or an integer seed) first:

* :func:`simulate_cluster_field` -- line-of-sight velocities of a globular cluster
  seen against the Galactic field, with per-star errors and projected radii.
  Defaults are the NGC 288 numbers of the membership tutorial.
* :func:`simulate_mixture` -- a D-dimensional, K-component Gaussian mixture observed
  with heteroscedastic, correlated per-star error covariances (e.g. thin/thick disc
  in [Fe/H]-[Mg/Fe], :func:`thin_thick_disc_params`).

Each returns the catalogue (ready to fit), the table it was built from (truth
columns included), the true parameters, and each star's true component.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table

from bayesmix import _x64  # noqa: F401
from bayesmix.catalogue import Catalogue, read_catalogue
from bayesmix.likelihood import MixtureParams, check_params

__all__ = [
    "ClusterFieldSimulation",
    "ClusterFieldTruth",
    "MixtureSimulation",
    "simulate_cluster_field",
    "simulate_mixture",
    "simulate_named",
    "thin_thick_disc_params",
]

NAMED_SIMULATIONS = {"cluster-field": 386, "disc": 2000}  # name -> default number of stars


def _as_key(key):
    """A JAX PRNG key from a key or an integer seed."""
    if isinstance(key, (int, np.integer)):
        return jax.random.PRNGKey(int(key))
    return key


def _positive(name, value):
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number; got {value!r}.")


# --------------------------------------------------------------------------- cluster + field


class ClusterFieldTruth(NamedTuple):
    """True parameters of a cluster + field velocity simulation.

    Velocities in km/s, radii in arcsec. Component 0 is the cluster, 1 the field.
    """

    cluster_mean: float
    cluster_dispersion: float
    field_mean: float
    field_dispersion: float
    member_fraction: float
    plummer_radius: float
    max_radius: float

    def mixture_params(self) -> MixtureParams:
        """The velocity mixture as K=2, D=1 :class:`MixtureParams` (cluster first)."""
        return check_params(
            [self.member_fraction, 1.0 - self.member_fraction],
            [[self.cluster_mean], [self.field_mean]],
            [[[self.cluster_dispersion**2]], [[self.field_dispersion**2]]],
        )

    def tutorial_values(self) -> dict[str, float]:
        """The truth under the tutorial's names: mean1, sigma1, mean2, sigma2, frac1."""
        return {"mean1": self.cluster_mean, "sigma1": self.cluster_dispersion, "mean2": self.field_mean,
                "sigma2": self.field_dispersion, "frac1": self.member_fraction}

    def member_probability_at_radius(self, radius) -> np.ndarray:
        """Prior probability of membership given projected radius alone, shape like ``radius``.

        ``f p_c(R) / (f p_c(R) + (1 - f) p_f(R))`` with ``p_c`` a truncated projected
        Plummer profile and ``p_f`` a uniform surface density, both out to ``max_radius``.
        """
        r = np.asarray(radius, dtype=float)
        a, r_max, f = self.plummer_radius, self.max_radius, self.member_fraction
        norm_c = 1.0 - 1.0 / (1.0 + (r_max / a) ** 2)
        p_c = 2.0 * r / a**2 / (1.0 + (r / a) ** 2) ** 2 / norm_c
        p_f = 2.0 * r / r_max**2
        return f * p_c / (f * p_c + (1.0 - f) * p_f)


class ClusterFieldSimulation(NamedTuple):
    """A simulated cluster + field catalogue.

    Attributes
    ----------
    catalogue : Catalogue
        Values ``RV`` (n_stars, 1) with errors ``E_RV`` and covariate ``R_proj``.
    table : astropy.table.Table
        Columns ``star_id, RV, E_RV, R_proj`` plus the truth ``RV_true, component``.
    truth : ClusterFieldTruth
    labels : ndarray of int, shape (n_stars,)
        True component, 0 = cluster member, 1 = field.
    """

    catalogue: Catalogue
    table: Table
    truth: ClusterFieldTruth
    labels: np.ndarray


def simulate_cluster_field(
    key=0,
    n_stars: int = 386,
    *,
    cluster_mean: float = -44.73,
    cluster_dispersion: float = 2.30,
    field_mean: float = 2.76,
    field_dispersion: float = 46.1,
    member_fraction: float = 0.365,
    error_median: float = 1.05,
    error_log_sd: float = 0.83,
    error_range: tuple[float, float] = (0.1, 10.0),
    plummer_radius: float = 200.0,
    max_radius: float = 800.0,
) -> ClusterFieldSimulation:
    """Line-of-sight velocities of cluster members and field stars, with errors and radii.

    Members follow N(cluster_mean, cluster_dispersion**2) and a projected Plummer
    profile of scale ``plummer_radius``; field stars follow
    N(field_mean, field_dispersion**2) and a uniform surface density; both are
    truncated at ``max_radius``. Each star's error is drawn log-normally (median
    ``error_median`` km/s, log-sd ``error_log_sd``, clipped to ``error_range``, as in
    the NGC 288 sample of Baumgardt & Hilker) and added to its true velocity.

    Parameters
    ----------
    key : jax PRNG key or int
    n_stars : int
        Defaults to the 386 stars of the real NGC 288 sample.

    Returns
    -------
    ClusterFieldSimulation
    """
    if int(n_stars) < 1:
        raise ValueError(f"n_stars must be at least 1; got {n_stars}.")
    for name, value in (("cluster_dispersion", cluster_dispersion),
                        ("field_dispersion", field_dispersion), ("error_median", error_median),
                        ("plummer_radius", plummer_radius), ("max_radius", max_radius)):
        _positive(name, value)
    if not 0.0 <= member_fraction <= 1.0:
        raise ValueError(f"member_fraction must lie in [0, 1]; got {member_fraction}.")
    if error_log_sd < 0 or not 0 < error_range[0] < error_range[1]:
        raise ValueError("error_log_sd must be >= 0 and error_range an increasing positive pair.")
    n_stars = int(n_stars)
    truth = ClusterFieldTruth(float(cluster_mean), float(cluster_dispersion), float(field_mean),
                              float(field_dispersion), float(member_fraction),
                              float(plummer_radius), float(max_radius))
    k_member, k_vel, k_err, k_noise, k_rad = jax.random.split(_as_key(key), 5)
    is_member = np.asarray(jax.random.bernoulli(k_member, member_fraction, (n_stars,)))
    z = np.asarray(jax.random.normal(k_vel, (n_stars,)))
    true_rv = np.where(is_member, cluster_mean + cluster_dispersion * z,
                       field_mean + field_dispersion * z)
    log_err = np.log(error_median) + error_log_sd * np.asarray(jax.random.normal(k_err, (n_stars,)))
    err = np.clip(np.exp(log_err), *error_range)
    rv = true_rv + err * np.asarray(jax.random.normal(k_noise, (n_stars,)))
    # Inverse-CDF radii: Plummer F(R) = 1 - 1/(1 + R^2/a^2), uniform disc F(R) = R^2/R_max^2.
    u = np.asarray(jax.random.uniform(k_rad, (n_stars,)))
    a = plummer_radius
    u_member = u * (1.0 - 1.0 / (1.0 + (max_radius / a) ** 2))
    radius = np.where(is_member, a * np.sqrt(u_member / (1.0 - u_member)), max_radius * np.sqrt(u))

    labels = np.where(is_member, 0, 1)
    table = Table(
        {
            "star_id": np.arange(n_stars),
            "RV": rv,
            "E_RV": err,
            "R_proj": radius,
            "RV_true": true_rv,
            "component": labels,
        }
    )
    table["RV"].unit = table["E_RV"].unit = table["RV_true"].unit = "km/s"
    table["R_proj"].unit = "arcsec"
    table.meta["bayesmix_simulation"] = {"kind": "cluster_field", **truth._asdict()}
    catalogue = read_catalogue(table, values="RV", errors="E_RV", id_column="star_id",
                               covariates=["R_proj"])
    return ClusterFieldSimulation(catalogue, table, truth, labels)


# --------------------------------------------------------------------------- general mixtures


class MixtureSimulation(NamedTuple):
    """A simulated D-dimensional mixture catalogue.

    Attributes
    ----------
    catalogue : Catalogue
    table : astropy.table.Table
        ``star_id``, one column per feature, ``<feature>_err``, the error correlations
        ``corr_<a>_<b>`` for each pair, the truth ``<feature>_true`` and ``component``.
    truth : MixtureParams
    labels : ndarray of int, shape (n_stars,)
    true_values : ndarray, shape (n_stars, n_features)
        Values before measurement error.
    """

    catalogue: Catalogue
    table: Table
    truth: MixtureParams
    labels: np.ndarray
    true_values: np.ndarray


def thin_thick_disc_params() -> MixtureParams:
    """Thin and thick disc in ([Fe/H], [Mg/Fe]), roughly as in solar-neighbourhood samples.

    Component 0 is the thin disc (70%: solar metallicity, low alpha), component 1 the
    thick disc (30%: metal-poor, alpha-enhanced). Intrinsic [Mg/Fe] spreads (0.04-0.05
    dex) are comparable to typical measurement errors, which is what makes
    deconvolution matter.
    """
    def cov(sd_feh, sd_mgfe, rho):
        return [[sd_feh**2, rho * sd_feh * sd_mgfe], [rho * sd_feh * sd_mgfe, sd_mgfe**2]]

    return check_params(
        weights=[0.7, 0.3],
        means=[[-0.05, 0.05], [-0.50, 0.28]],
        covariances=[cov(0.20, 0.04, -0.3), cov(0.25, 0.05, -0.4)],
    )


def simulate_mixture(
    key,
    params: MixtureParams,
    n_stars: int,
    *,
    error_scale=0.05,
    error_log_sd: float = 0.3,
    max_error_correlation: float = 0.0,
    feature_names=None,
) -> MixtureSimulation:
    """Draw stars from a Gaussian mixture and observe them with per-star error covariances.

    Parameters
    ----------
    key : jax PRNG key or int
    params : MixtureParams
        The true mixture (validated).
    n_stars : int
    error_scale : float or array_like, shape (n_features,)
        Median standard error of each feature.
    error_log_sd : float
        Log-normal scatter of the per-star standard errors (0: all equal).
    max_error_correlation : float in [0, 1)
        Bound on the absolute error correlation between features; each star's
        correlation matrix is a random convex mix of the identity and a random
        correlation matrix, so it stays positive definite.
    feature_names : sequence of str, optional
        Defaults to ``x0, x1, ...``.

    Returns
    -------
    MixtureSimulation
    """
    params = check_params(*params)
    n_features = params.n_features
    if int(n_stars) < 1:
        raise ValueError(f"n_stars must be at least 1; got {n_stars}.")
    n_stars = int(n_stars)
    scale = np.broadcast_to(np.asarray(error_scale, dtype=float), (n_features,))
    error_free = bool(np.all(scale == 0))
    if not np.all(np.isfinite(scale)) or not (error_free or np.all(scale > 0)):
        raise ValueError(f"error_scale must be > 0 for every feature, or 0 for error-free data; "
                         f"got {error_scale!r}.")
    if not 0.0 <= max_error_correlation < 1.0:
        raise ValueError(f"max_error_correlation must lie in [0, 1); got {max_error_correlation}.")
    if error_log_sd < 0:
        raise ValueError(f"error_log_sd must be >= 0; got {error_log_sd}.")
    names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(n_features)]
    if len(names) != n_features:
        raise ValueError(f"feature_names has {len(names)} names for {n_features} features.")

    k_lab, k_val, k_err, k_corr, k_noise = jax.random.split(_as_key(key), 5)
    labels = np.asarray(jax.random.categorical(k_lab, jnp.log(params.weights), shape=(n_stars,)))
    chol = np.linalg.cholesky(np.asarray(params.covariances))
    z = np.asarray(jax.random.normal(k_val, (n_stars, n_features)))
    true_values = np.asarray(params.means)[labels] + np.einsum("nij,nj->ni", chol[labels], z)

    sig = scale * np.exp(error_log_sd * np.asarray(jax.random.normal(k_err, (n_stars, n_features))))
    corr = np.broadcast_to(np.eye(n_features), (n_stars, n_features, n_features)).copy()
    if max_error_correlation > 0 and n_features > 1:
        w = np.asarray(jax.random.normal(k_corr, (n_stars, n_features, n_features)))
        a = np.einsum("nij,nkj->nik", w, w) + 1e-3 * np.eye(n_features)
        d = np.sqrt(np.diagonal(a, axis1=1, axis2=2))
        random_corr = a / d[:, :, None] / d[:, None, :]
        corr = (1.0 - max_error_correlation) * corr + max_error_correlation * random_corr
    error_covs = sig[:, :, None] * corr * sig[:, None, :]
    eps = np.asarray(jax.random.normal(k_noise, (n_stars, n_features)))
    if error_free:
        values = true_values.copy()
    else:
        values = true_values + np.einsum("nij,nj->ni", np.linalg.cholesky(error_covs), eps)

    table = Table({"star_id": np.arange(n_stars)})
    for j, name in enumerate(names):
        table[name] = values[:, j]
    for j, name in enumerate(names):
        table[f"{name}_err"] = sig[:, j]
    # Flat correlation columns (not one (D, D) column) so that every format, CSV included, holds them.
    correlations = {}
    for i in range(n_features):
        for j in range(i + 1, n_features):
            col = f"corr_{names[i]}_{names[j]}"
            table[col] = corr[:, i, j]
            correlations[(names[i], names[j])] = col
    for j, name in enumerate(names):
        table[f"{name}_true"] = true_values[:, j]
    table["component"] = labels
    table.meta["bayesmix_simulation"] = {
        "kind": "mixture",
        "weights": np.asarray(params.weights).tolist(),
        "means": np.asarray(params.means).tolist(),
        "covariances": np.asarray(params.covariances).tolist(),
    }
    if error_free:
        catalogue = read_catalogue(table, values=names, id_column="star_id")
    else:
        catalogue = read_catalogue(table, values=names, errors=[f"{n}_err" for n in names],
                                   correlations=correlations, id_column="star_id")
    return MixtureSimulation(catalogue, table, params, labels, true_values)


def simulate_named(kind: str, key=0, n_stars: int | None = None):
    """The simulations behind ``bayesmix simulate`` and ``[data] simulate`` in a model file.

    Parameters
    ----------
    kind : {"cluster-field", "disc"}
        NGC 288-like velocities with radii (:func:`simulate_cluster_field`), or the thin
        and thick disc in ([Fe/H], [Mg/Fe]) with correlated errors (:func:`simulate_mixture`).
    key : int or jax PRNG key
    n_stars : int, optional
        Default 386 (cluster-field) or 2000 (disc).

    Returns
    -------
    simulation : ClusterFieldSimulation or MixtureSimulation
    truth : dict
        JSON-ready true values (the tutorial's ``mean1 .. frac1`` for cluster-field;
        weights, means, covariances for disc).
    """
    if kind not in NAMED_SIMULATIONS:
        raise ValueError(f"simulation {kind!r} is unknown; use one of {list(NAMED_SIMULATIONS)}.")
    n_stars = NAMED_SIMULATIONS[kind] if n_stars is None else n_stars
    if kind == "cluster-field":
        sim = simulate_cluster_field(key, n_stars)
        return sim, {**sim.truth._asdict(), **sim.truth.tutorial_values()}
    sim = simulate_mixture(key, thin_thick_disc_params(), n_stars, error_scale=[0.05, 0.04],
                           max_error_correlation=0.3, feature_names=["FeH", "MgFe"])
    return sim, {name: np.asarray(v).tolist() for name, v in sim.truth._asdict().items()}
