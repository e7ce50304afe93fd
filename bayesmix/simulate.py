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

Every generator takes at most :data:`bayesmix.config.MAX_SIMULATED_STARS` (1e8) stars:
a simulation is held in memory (about 220 bytes per star with one feature, 500 with
two), and JAX aborts the process (SIGABRT) instead of raising when an array is far
too large for it, so the bound is checked before anything is drawn.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table

from bayesmix import _x64  # noqa: F401
from bayesmix._random import as_key, split
from bayesmix.catalogue import Catalogue, read_catalogue
from bayesmix.config import simulated_stars_problem
from bayesmix.likelihood import MixtureParams, check_params

__all__ = [
    "ClusterFieldSimulation",
    "ClusterFieldTruth",
    "ContaminatedFieldSimulation",
    "ContaminatedFieldTruth",
    "MixtureSimulation",
    "simulate_cluster_field",
    "simulate_contaminated_field",
    "simulate_mixture",
    "simulate_named",
    "thin_thick_disc_params",
]

NAMED_SIMULATIONS = {"cluster-field": 386, "contaminated-field": 400, "disc": 2000}  # name -> default stars


def _n_stars(n_stars, n_features: int = 1) -> int:
    """``n_stars`` as an int: at least 1 and few enough to hold in memory (a ValueError says why not)."""
    try:
        n = int(n_stars)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"n_stars must be a whole number of stars; got {n_stars!r}.") from None
    if n < 1:
        raise ValueError(f"n_stars must be at least 1; got {n_stars}.")
    problem = simulated_stars_problem(n, n_features)
    if problem is not None:
        raise ValueError(f"n_stars {problem}; a simulation is held in memory.")
    return n


def _positive(name, value):
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number; got {value!r}.")


def _observed(key_error, key_noise, true_values, error_median, error_log_sd, error_range):
    """Measured values and their standard errors, shape (n_stars,) each: log-normal errors
    (median ``error_median``, log-sd ``error_log_sd``, clipped to ``error_range``) added to
    the true values."""
    n_stars = true_values.shape[0]
    log_err = np.log(error_median) + error_log_sd * np.asarray(jax.random.normal(key_error, (n_stars,)))
    err = np.clip(np.exp(log_err), *error_range)
    return true_values + err * np.asarray(jax.random.normal(key_noise, (n_stars,))), err


def _member_or_field_radii(key, is_member, plummer_radius, max_radius):
    """Projected radii by inverse CDF: members from a Plummer profile truncated at ``max_radius``
    (F(R) = 1 - 1/(1 + R^2/a^2)), the rest from a uniform surface density (F(R) = R^2/R_max^2)."""
    u = np.asarray(jax.random.uniform(key, is_member.shape))
    a = plummer_radius
    u_member = u * (1.0 - 1.0 / (1.0 + (max_radius / a) ** 2))
    return np.where(is_member, a * np.sqrt(u_member / (1.0 - u_member)), max_radius * np.sqrt(u))


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
        Defaults to the 386 stars of the real NGC 288 sample; at most 1e8.

    Returns
    -------
    ClusterFieldSimulation

    Examples
    --------
    >>> from bayesmix.simulate import simulate_cluster_field
    >>> sim = simulate_cluster_field(0, n_stars=200)
    >>> sim.catalogue.n_stars, sim.catalogue.values.shape
    (200, (200, 1))
    >>> t = sim.truth  # the values the data were drawn from
    >>> t.cluster_mean, t.cluster_dispersion, t.member_fraction
    (-44.73, 2.3, 0.365)
    """
    n_stars = _n_stars(n_stars)
    for name, value in (("cluster_dispersion", cluster_dispersion),
                        ("field_dispersion", field_dispersion), ("error_median", error_median),
                        ("plummer_radius", plummer_radius), ("max_radius", max_radius)):
        _positive(name, value)
    if not 0.0 <= member_fraction <= 1.0:
        raise ValueError(f"member_fraction must lie in [0, 1]; got {member_fraction}.")
    if error_log_sd < 0 or not 0 < error_range[0] < error_range[1]:
        raise ValueError("error_log_sd must be >= 0 and error_range an increasing positive pair.")
    truth = ClusterFieldTruth(float(cluster_mean), float(cluster_dispersion), float(field_mean),
                              float(field_dispersion), float(member_fraction),
                              float(plummer_radius), float(max_radius))
    k_member, k_vel, k_err, k_noise, k_rad = split(as_key(key), 5)
    is_member = np.asarray(jax.random.bernoulli(k_member, member_fraction, (n_stars,)))
    z = np.asarray(jax.random.normal(k_vel, (n_stars,)))
    true_rv = np.where(is_member, cluster_mean + cluster_dispersion * z,
                       field_mean + field_dispersion * z)
    rv, err = _observed(k_err, k_noise, true_rv, error_median, error_log_sd, error_range)
    radius = _member_or_field_radii(k_rad, is_member, plummer_radius, max_radius)

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


# --------------------------------------------------------------------------- contaminated field


class ContaminatedFieldTruth(NamedTuple):
    """True parameters of a faint cluster in a crowded, lumpy field (velocities in km/s).

    Components, in this order: the cluster (0), the halo Gaussians (1 .. n_halo) and
    the cold stream (last). Radii in arcmin.

    Attributes
    ----------
    cluster_mean, cluster_dispersion : float
    halo_means, halo_dispersions, halo_fractions : tuple of float
        The broad foreground: fractions of all stars.
    stream_mean, stream_dispersion, stream_fraction : float
        A cold structure spread uniformly over the field (stream_fraction 0: none).
    member_fraction : float
        Fraction of all stars in the cluster.
    plummer_radius, max_radius : float
        Members follow a projected Plummer profile; halo and stream stars a uniform
        surface density; all out to ``max_radius``.
    """

    cluster_mean: float
    cluster_dispersion: float
    halo_means: tuple
    halo_dispersions: tuple
    halo_fractions: tuple
    stream_mean: float
    stream_dispersion: float
    stream_fraction: float
    member_fraction: float
    plummer_radius: float
    max_radius: float

    def mixture_params(self) -> MixtureParams:
        """Every component as D = 1 :class:`MixtureParams`: cluster, halo Gaussians, stream."""
        weights = [self.member_fraction, *self.halo_fractions]
        means = [[self.cluster_mean], *([m] for m in self.halo_means)]
        sds = [self.cluster_dispersion, *self.halo_dispersions]
        if self.stream_fraction > 0:
            weights.append(self.stream_fraction)
            means.append([self.stream_mean])
            sds.append(self.stream_dispersion)
        return check_params(weights, means, [[[s**2]] for s in sds])

    def tutorial_values(self) -> dict[str, float]:
        """The cluster under the tutorial's names (``mean1``, ``sigma1``, ``frac1``)."""
        return {"mean1": self.cluster_mean, "sigma1": self.cluster_dispersion,
                "frac1": self.member_fraction}


class ContaminatedFieldSimulation(NamedTuple):
    """A simulated faint cluster in a contaminated field.

    Attributes
    ----------
    catalogue : Catalogue
        Values ``RV`` (n_stars, 1) with errors ``E_RV`` and covariate ``R_proj``.
    table : astropy.table.Table
        ``star_id, RV, E_RV, R_proj`` plus the truth ``RV_true`` and ``component``
        (0 cluster, 1 .. n_halo halo, n_halo + 1 stream).
    truth : ContaminatedFieldTruth
    labels : ndarray of int, shape (n_stars,)
    """

    catalogue: Catalogue
    table: Table
    truth: ContaminatedFieldTruth
    labels: np.ndarray


def _halo(halo_dispersions, halo_weights) -> tuple[tuple[float, ...], np.ndarray]:
    """The halo Gaussians' dispersions and weights, checked: one of each per Gaussian, all positive."""
    halo_dispersions = tuple(float(s) for s in halo_dispersions)
    halo_weights = np.asarray(halo_weights, dtype=float)
    if len(halo_dispersions) < 1 or halo_weights.shape != (len(halo_dispersions),):
        raise ValueError("halo_dispersions and halo_weights need one entry per halo Gaussian (at least one); "
                         f"got {len(halo_dispersions)} and {halo_weights.shape}.")
    for s in halo_dispersions:
        _positive("halo_dispersions", s)
    if np.any(halo_weights <= 0) or not np.all(np.isfinite(halo_weights)):
        raise ValueError(f"halo_weights must be positive; got {halo_weights.tolist()}.")
    return halo_dispersions, halo_weights


def _field_means(key, cluster_mean, stream_offset, halo_means, n_halo):
    """``cluster_mean``, ``stream_offset`` and ``halo_means``, each drawn from ``key`` when None.

    One draw of uniforms serves all three, so a quantity given explicitly leaves the others as
    they would be without it.
    """
    u = np.asarray(jax.random.uniform(key, (4 + n_halo,)))
    if cluster_mean is None:
        cluster_mean = -120.0 + 240.0 * u[0]
    if stream_offset is None:
        stream_offset = (1.0 if u[1] < 0.5 else -1.0) * (80.0 + 40.0 * u[2])
    if halo_means is None:
        halo_means = tuple(-40.0 + 80.0 * u[4:])
    halo_means = tuple(float(m) for m in halo_means)
    if len(halo_means) != n_halo:
        raise ValueError(f"halo_means has {len(halo_means)} entries for {n_halo} halo Gaussians.")
    return cluster_mean, stream_offset, halo_means


def simulate_contaminated_field(
    key=0,
    n_stars: int = 400,
    *,
    cluster_mean: float | None = None,
    cluster_dispersion: float = 4.0,
    member_fraction: float = 0.175,
    halo_means: tuple | None = None,
    halo_dispersions: tuple = (100.0, 55.0),
    halo_weights: tuple = (0.6, 0.4),
    stream_offset: float | None = None,
    stream_dispersion: float = 5.0,
    stream_fraction: float = 0.05,
    error_median: float = 2.0,
    error_log_sd: float = 0.5,
    error_range: tuple[float, float] = (0.3, 15.0),
    plummer_radius: float = 3.0,
    max_radius: float = 30.0,
) -> ContaminatedFieldSimulation:
    """A faint cluster inside a broad, lumpy foreground with a cold stream: the hard membership case.

    About ``member_fraction * n_stars`` members (70 of 400 by default) with dispersion
    ``cluster_dispersion`` and a Plummer radial profile; a broad halo foreground of one
    or more Gaussians (``halo_dispersions``, 50-100 km/s); and a cold stream
    (``stream_fraction``, 20 of 400 stars, dispersion ``stream_dispersion``) about
    100 km/s from the cluster and spread uniformly in radius. Each star's label is
    drawn from these fractions. Errors are log-normal (median ``error_median``).

    Quantities left as None are drawn from the key, so that a set of seeds covers the
    class of problem rather than one configuration: ``cluster_mean`` uniform in
    [-120, 120] km/s; ``halo_means`` uniform in [-40, 40] km/s each;
    ``stream_offset`` (stream mean minus cluster mean) of random sign and size
    uniform in [80, 120] km/s.

    Parameters
    ----------
    key : jax PRNG key or int
    n_stars : int
        At most 1e8.

    Returns
    -------
    ContaminatedFieldSimulation
        ``truth`` holds the values actually used.

    Examples
    --------
    >>> sim = simulate_contaminated_field(3)
    >>> sim.catalogue.n_stars
    400
    """
    n_stars = _n_stars(n_stars)
    for name, value in (("cluster_dispersion", cluster_dispersion), ("stream_dispersion", stream_dispersion),
                        ("error_median", error_median), ("plummer_radius", plummer_radius),
                        ("max_radius", max_radius)):
        _positive(name, value)
    halo_dispersions, halo_weights = _halo(halo_dispersions, halo_weights)
    if not (0.0 < member_fraction < 1.0 and 0.0 <= stream_fraction < 1.0
            and member_fraction + stream_fraction < 1.0):
        raise ValueError("member_fraction must lie in (0, 1), stream_fraction in [0, 1), and their sum "
                         f"below 1; got {member_fraction} and {stream_fraction}.")
    if error_log_sd < 0 or not 0 < error_range[0] < error_range[1]:
        raise ValueError("error_log_sd must be >= 0 and error_range an increasing positive pair.")
    keys = split(as_key(key), 9)
    cluster_mean, stream_offset, halo_means = _field_means(keys[0], cluster_mean, stream_offset, halo_means,
                                                           len(halo_dispersions))
    halo_fractions = tuple((1.0 - member_fraction - stream_fraction) * halo_weights / halo_weights.sum())
    truth = ContaminatedFieldTruth(
        float(cluster_mean), float(cluster_dispersion), halo_means, halo_dispersions,
        tuple(float(f) for f in halo_fractions), float(cluster_mean + stream_offset),
        float(stream_dispersion), float(stream_fraction), float(member_fraction), float(plummer_radius),
        float(max_radius))
    params = truth.mixture_params()
    labels = np.asarray(jax.random.categorical(keys[1], jnp.log(params.weights), shape=(n_stars,)))
    sd = np.sqrt(np.asarray(params.covariances)[:, 0, 0])
    z = np.asarray(jax.random.normal(keys[2], (n_stars,)))
    true_rv = np.asarray(params.means)[labels, 0] + sd[labels] * z
    rv, err = _observed(keys[3], keys[4], true_rv, error_median, error_log_sd, error_range)
    radius = _member_or_field_radii(keys[5], labels == 0, plummer_radius, max_radius)
    table = Table({"star_id": np.arange(n_stars), "RV": rv, "E_RV": err, "R_proj": radius,
                   "RV_true": true_rv, "component": labels})
    table["RV"].unit = table["E_RV"].unit = table["RV_true"].unit = "km/s"
    table["R_proj"].unit = "arcmin"
    table.meta["bayesmix_simulation"] = {"kind": "contaminated_field", **truth._asdict()}
    catalogue = read_catalogue(table, values="RV", errors="E_RV", id_column="star_id", covariates=["R_proj"])
    return ContaminatedFieldSimulation(catalogue, table, truth, labels)


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


def _error_scale(error_scale, n_features: int) -> np.ndarray:
    """``error_scale`` per feature, checked: all positive, or all zero for error-free data."""
    scale = np.broadcast_to(np.asarray(error_scale, dtype=float), (n_features,))
    if not np.all(np.isfinite(scale)) or not (np.all(scale == 0) or np.all(scale > 0)):
        raise ValueError(f"error_scale must be > 0 for every feature, or 0 for error-free data; "
                         f"got {error_scale!r}.")
    return scale


def _error_correlations(key, n_stars: int, n_features: int, max_error_correlation: float) -> np.ndarray:
    """Per-star error correlation matrices (n_stars, D, D): the identity mixed with a random
    correlation matrix in the proportion ``max_error_correlation``, so each stays positive definite."""
    corr = np.broadcast_to(np.eye(n_features), (n_stars, n_features, n_features)).copy()
    if max_error_correlation > 0 and n_features > 1:
        w = np.asarray(jax.random.normal(key, (n_stars, n_features, n_features)))
        a = np.einsum("nij,nkj->nik", w, w) + 1e-3 * np.eye(n_features)
        d = np.sqrt(np.diagonal(a, axis1=1, axis2=2))
        random_corr = a / d[:, :, None] / d[:, None, :]
        corr = (1.0 - max_error_correlation) * corr + max_error_correlation * random_corr
    return corr


def _mixture_table(names, values, sig, corr, true_values, labels, params):
    """:attr:`MixtureSimulation.table` and its correlation columns ``{(a, b): column}``."""
    n_features = len(names)
    table = Table({"star_id": np.arange(len(values))})
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
    return table, correlations


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
        At most 1e8.
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

    Examples
    --------
    >>> from bayesmix.simulate import simulate_mixture, thin_thick_disc_params
    >>> sim = simulate_mixture(0, thin_thick_disc_params(), 500, error_scale=[0.08, 0.05],
    ...                        feature_names=["FeH", "MgFe"])
    >>> sim.catalogue.values.shape, sim.catalogue.error_covs.shape
    ((500, 2), (500, 2, 2))
    """
    params = check_params(*params)
    n_features = params.n_features
    n_stars = _n_stars(n_stars, n_features)
    scale = _error_scale(error_scale, n_features)
    error_free = bool(np.all(scale == 0))
    if not 0.0 <= max_error_correlation < 1.0:
        raise ValueError(f"max_error_correlation must lie in [0, 1); got {max_error_correlation}.")
    if error_log_sd < 0:
        raise ValueError(f"error_log_sd must be >= 0; got {error_log_sd}.")
    names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(n_features)]
    if len(names) != n_features:
        raise ValueError(f"feature_names has {len(names)} names for {n_features} features.")

    k_lab, k_val, k_err, k_corr, k_noise = jax.random.split(as_key(key), 5)
    labels = np.asarray(jax.random.categorical(k_lab, jnp.log(params.weights), shape=(n_stars,)))
    chol = np.linalg.cholesky(np.asarray(params.covariances))
    z = np.asarray(jax.random.normal(k_val, (n_stars, n_features)))
    true_values = np.asarray(params.means)[labels] + np.einsum("nij,nj->ni", chol[labels], z)

    sig = scale * np.exp(error_log_sd * np.asarray(jax.random.normal(k_err, (n_stars, n_features))))
    corr = _error_correlations(k_corr, n_stars, n_features, max_error_correlation)
    error_covs = sig[:, :, None] * corr * sig[:, None, :]
    eps = np.asarray(jax.random.normal(k_noise, (n_stars, n_features)))
    if error_free:
        values = true_values.copy()
    else:
        values = true_values + np.einsum("nij,nj->ni", np.linalg.cholesky(error_covs), eps)

    table, correlations = _mixture_table(names, values, sig, corr, true_values, labels, params)
    if error_free:
        catalogue = read_catalogue(table, values=names, id_column="star_id")
    else:
        catalogue = read_catalogue(table, values=names, errors=[f"{n}_err" for n in names],
                                   correlations=correlations, id_column="star_id")
    return MixtureSimulation(catalogue, table, params, labels, true_values)


def simulate_named(key, kind: str, n_stars: int | None = None):
    """The simulations behind ``bayesmix simulate`` and ``[data] simulate`` in a model file.

    Parameters
    ----------
    key : int or jax PRNG key
        First, as in every stochastic function of bayesmix.
    kind : {"cluster-field", "contaminated-field", "disc"}
        NGC 288-like velocities with radii (:func:`simulate_cluster_field`); a faint
        cluster in a broad, lumpy field with a cold stream
        (:func:`simulate_contaminated_field`); or the thin and thick disc in
        ([Fe/H], [Mg/Fe]) with correlated errors (:func:`simulate_mixture`).
    n_stars : int, optional
        Default 386 (cluster-field), 400 (contaminated-field) or 2000 (disc); at most 1e8.

    Returns
    -------
    simulation : ClusterFieldSimulation, ContaminatedFieldSimulation or MixtureSimulation
    truth : dict
        JSON-ready true values (with the tutorial's ``mean1 .. frac1`` for cluster-field,
        ``mean1``, ``sigma1``, ``frac1`` of the cluster for contaminated-field; weights,
        means, covariances for disc).
    """
    if kind not in NAMED_SIMULATIONS:
        raise ValueError(f"simulation {kind!r} is unknown; use one of {list(NAMED_SIMULATIONS)}.")
    n_stars = NAMED_SIMULATIONS[kind] if n_stars is None else n_stars
    if kind == "cluster-field":
        sim = simulate_cluster_field(key, n_stars)
        return sim, {**sim.truth._asdict(), **sim.truth.tutorial_values()}
    if kind == "contaminated-field":
        sim = simulate_contaminated_field(key, n_stars)
        truth = {name: list(v) if isinstance(v, tuple) else v for name, v in sim.truth._asdict().items()}
        return sim, {**truth, **sim.truth.tutorial_values(),
                     "n_members": int(np.sum(sim.labels == 0))}
    sim = simulate_mixture(key, thin_thick_disc_params(), n_stars, error_scale=[0.05, 0.04],
                           max_error_correlation=0.3, feature_names=["FeH", "MgFe"])
    return sim, {name: np.asarray(v).tolist() for name, v in sim.truth._asdict().items()}
