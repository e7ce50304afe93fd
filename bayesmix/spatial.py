"""Spatial and kinematic profiles of a star cluster: pure functions under the models.

* **Footprints** (:class:`Footprint`): the region of the sky a survey covers, in
  tangent-plane offsets ``(xi, eta)`` from the cluster centre (arcmin or any unit, as
  long as positions and radii agree): a circle, a polygon, or the convex hull of the
  data positions. Each carries a fixed quadrature grid of points inside it, built once
  in numpy, over which a traced surface-density profile is summed to normalise it:
  that works for any footprint shape and any ellipticity.
* **Surface-density profiles** (:func:`profile_log_density`): projected Plummer and
  exponential laws in the elliptical radius; :func:`normalised_profile_log_density`
  divides by their integral over the footprint.
* **Dispersion profiles** (:func:`power_law_dispersion`, :func:`binned_dispersion`).
* **A simulator** (:func:`simulate_cluster_kinematics`): a Plummer cluster with a
  power-law dispersion profile and a velocity gradient in a uniform field, inside a
  circular footprint, for the truth-recovery tests.

Everything here is a pure function (JAX where it is traced in a model, numpy where it
runs once at the boundary); the NumPyro sites live in :mod:`bayesmix.models`.

Conventions: ``xi`` points east and ``eta`` north; a position angle is measured from
north through east (degrees); ellipticity ``e = 1 - b/a``; the scale radius is measured
along the major axis.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmix import _x64  # noqa: F401  (float64 before any array is made)
from bayesmix._choices import DISPERSION_PROFILES, FOOTPRINT_KINDS, SPATIAL_PROFILES
from bayesmix._random import as_key
from bayesmix.likelihood import Observations

__all__ = [
    "DISPERSION_PROFILES",
    "FOOTPRINT_KINDS",
    "SPATIAL_PROFILES",
    "Footprint",
    "SimulatedCluster",
    "binned_dispersion",
    "binned_member_dispersion",
    "circle_footprint",
    "elliptical_radius_squared",
    "hull_footprint",
    "normalised_profile_log_density",
    "polygon_footprint",
    "power_law_dispersion",
    "profile_log_density",
    "simulate_cluster_kinematics",
]


# Quadrature nodes of a footprint: a polar grid about the cluster centre (where the
# profiles peak), radial nodes at r = r_max u^2 for midpoints u (dense near the centre).
_N_RADIAL = 96
_N_ANGLE = 64


@dataclasses.dataclass(frozen=True, eq=False)
class Footprint:
    """A survey footprint with its quadrature grid.

    Build one with :func:`circle_footprint`, :func:`polygon_footprint` or
    :func:`hull_footprint`.

    Attributes
    ----------
    kind : {"circle", "polygon", "hull"}
    area : float
        Exact area (the uniform field density is ``1 / area``).
    nodes : ndarray, shape (n_nodes, 2)
        Quadrature points ``(xi, eta)`` inside the footprint.
    node_weights : ndarray, shape (n_nodes,)
        Area element of each node: ``sum(node_weights * g(nodes))`` approximates the
        integral of ``g`` over the footprint.
    centre, radius : tuple and float (circle only)
    vertices : ndarray, shape (n_vertices, 2) (polygon and hull)
    """

    kind: str
    area: float
    nodes: np.ndarray = dataclasses.field(repr=False)
    node_weights: np.ndarray = dataclasses.field(repr=False)
    centre: tuple[float, float] = (0.0, 0.0)
    radius: float | None = None
    vertices: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def digest(self) -> str:
        """Short hash of the geometry (the compiled programs depend on it)."""
        h = hashlib.sha256(np.asarray(self.nodes).tobytes() + np.asarray(self.node_weights).tobytes())
        return h.hexdigest()[:12]

    def __repr__(self) -> str:
        # Compact and deterministic: the model's program key includes it.
        return f"Footprint(kind={self.kind!r}, area={self.area:.6g}, digest={self.digest!r})"

    def contains(self, xi, eta, tolerance: float = 1e-9) -> np.ndarray:
        """Whether each position lies inside (or on) the footprint.

        Parameters
        ----------
        xi, eta : array_like, shape (n,)
        tolerance : float
            Relative to the footprint's size: points this close outside count as inside
            (a hull's own vertices lie on its boundary).

        Returns
        -------
        ndarray of bool, shape (n,)
        """
        xi, eta = np.asarray(xi, float), np.asarray(eta, float)
        if self.kind == "circle":
            d = np.hypot(xi - self.centre[0], eta - self.centre[1])
            return d <= self.radius * (1.0 + tolerance)
        return _in_polygon(xi, eta, self.vertices, tolerance * math.sqrt(self.area))

    def describe(self) -> str:
        """One line for logs and run records."""
        if self.kind == "circle":
            return (f"circle of radius {self.radius:.6g} centred at ({self.centre[0]:.6g}, "
                    f"{self.centre[1]:.6g}), area {self.area:.6g}")
        return f"{self.kind} with {len(self.vertices)} vertices, area {self.area:.6g}"


def _segment_distance(xi, eta, a, b):
    """Distance of points to the segment a-b."""
    d = b - a
    t = np.clip(((xi - a[0]) * d[0] + (eta - a[1]) * d[1]) / max(float(d @ d), 1e-300), 0.0, 1.0)
    return np.hypot(xi - a[0] - t * d[0], eta - a[1] - t * d[1])


def _in_polygon(xi, eta, vertices, tolerance):
    """Even-odd ray casting, plus points within ``tolerance`` of an edge."""
    inside = np.zeros(xi.shape, bool)
    near = np.zeros(xi.shape, bool)
    n = len(vertices)
    for i in range(n):
        a, b = vertices[i], vertices[(i + 1) % n]
        crosses = (a[1] > eta) != (b[1] > eta)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = a[0] + (eta - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
        inside ^= crosses & (xi < x_cross)
        near |= _segment_distance(xi, eta, a, b) <= tolerance
    return inside | near


def _polygon_area(vertices) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _polar_nodes(r_max: float, inside):
    """Polar quadrature about the origin out to ``r_max``, nodes kept where ``inside``."""
    u = (np.arange(_N_RADIAL) + 0.5) / _N_RADIAL
    r = r_max * u**2
    dr = 2.0 * r_max * u / _N_RADIAL
    theta = (np.arange(_N_ANGLE) + 0.5) * 2.0 * np.pi / _N_ANGLE
    rr, tt = np.meshgrid(r, theta, indexing="ij")
    weights = (rr * np.repeat(dr[:, None], _N_ANGLE, axis=1) * 2.0 * np.pi / _N_ANGLE).ravel()
    nodes = np.column_stack([(rr * np.sin(tt)).ravel(), (rr * np.cos(tt)).ravel()])
    keep = inside(nodes[:, 0], nodes[:, 1])
    return nodes[keep], weights[keep]


def circle_footprint(radius: float, centre=(0.0, 0.0)) -> Footprint:
    """A circular footprint.

    Parameters
    ----------
    radius : float
        > 0, in the units of the positions.
    centre : (float, float)
        Its centre in ``(xi, eta)``; the cluster centre is the origin.

    Returns
    -------
    Footprint

    Examples
    --------
    >>> fp = circle_footprint(10.0)
    >>> round(float(fp.node_weights.sum()) / fp.area, 3)  # the quadrature's area
    1.0
    """
    radius = float(radius)
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"footprint radius must be a positive number; got {radius!r}.")
    cx, cy = (float(c) for c in centre)
    fp = Footprint("circle", math.pi * radius**2, np.zeros((0, 2)), np.zeros(0), (cx, cy), radius)
    nodes, weights = _polar_nodes(math.hypot(cx, cy) + radius, lambda x, y: fp.contains(x, y, 0.0))
    return dataclasses.replace(fp, nodes=nodes, node_weights=weights)


def polygon_footprint(vertices, kind: str = "polygon") -> Footprint:
    """A polygonal footprint (simple polygon, vertices in order).

    Parameters
    ----------
    vertices : array_like, shape (n_vertices, 2)
        ``(xi, eta)`` of each vertex, at least 3.

    Returns
    -------
    Footprint

    Examples
    --------
    >>> fp = polygon_footprint([[-1, -1], [1, -1], [1, 1], [-1, 1]])
    >>> fp.area
    4.0
    """
    v = np.asarray(vertices, float)
    if v.ndim != 2 or v.shape[1] != 2 or len(v) < 3 or not np.all(np.isfinite(v)):
        raise ValueError(f"footprint vertices must be at least 3 finite (xi, eta) pairs; got shape "
                         f"{v.shape}.")
    area = _polygon_area(v)
    if area <= 0:
        raise ValueError("footprint vertices enclose no area (collinear points?).")
    fp = Footprint(kind, area, np.zeros((0, 2)), np.zeros(0), vertices=v)
    r_max = float(np.max(np.hypot(v[:, 0], v[:, 1])))
    nodes, weights = _polar_nodes(r_max, lambda x, y: _in_polygon(x, y, v, 0.0))
    return dataclasses.replace(fp, nodes=nodes, node_weights=weights)


def _convex_hull(points):
    """Andrew's monotone chain: hull vertices counter-clockwise."""
    pts = np.unique(np.asarray(points, float), axis=0)
    if len(pts) < 3:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def chain(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = chain(pts), chain(pts[::-1])
    return np.asarray(lower[:-1] + upper[:-1])


def hull_footprint(xi, eta) -> Footprint:
    """The convex hull of the data positions as the footprint.

    Every star lies inside by construction; the field density is then the star count's
    own support, which slightly underestimates the true footprint (a hull of n points
    misses a fraction of order 1/n of a convex region's area).

    Examples
    --------
    >>> import numpy as np
    >>> fp = hull_footprint(np.array([0.0, 1, 1, 0, 0.5]), np.array([0.0, 0, 1, 1, 0.5]))
    >>> fp.kind, fp.area
    ('hull', 1.0)
    """
    hull = _convex_hull(np.column_stack([np.asarray(xi, float), np.asarray(eta, float)]))
    if len(hull) < 3:
        raise ValueError("the convex hull of the positions has no area: give a circle or a polygon.")
    return polygon_footprint(hull, kind="hull")


# --------------------------------------------------------------------------- profiles


def elliptical_radius_squared(xi, eta, ellipticity, position_angle):
    """Squared elliptical radius ``m^2`` (``m`` measured along the major axis).

    Parameters
    ----------
    xi, eta : arrays, shape (n,)
    ellipticity : float in [0, 1)
    position_angle : float
        Of the major axis, degrees from north through east.

    Returns
    -------
    m2 : array, shape (n,)
        ``x_major^2 + (x_minor / (1 - e))^2``. The profiles use ``m2`` so that the
        value and gradient exist at the centre (``sqrt`` has no derivative at 0).
    """
    pa = jnp.deg2rad(position_angle)
    major = xi * jnp.sin(pa) + eta * jnp.cos(pa)
    minor = xi * jnp.cos(pa) - eta * jnp.sin(pa)
    return major**2 + (minor / (1.0 - ellipticity)) ** 2


def _safe_sqrt(x):
    """sqrt with a zero (not infinite) derivative at 0, so that gradients stay finite."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def profile_log_density(kind: str, xi, eta, scale_radius, ellipticity=0.0, position_angle=0.0):
    """Unnormalised log surface density of a projected profile.

    Plummer: ``log (1 + m^2/a^2)^-2``; exponential: ``-m/a``; ``m`` the elliptical
    radius, ``a`` the scale radius. Finite, with finite gradients, at the centre.

    Parameters
    ----------
    kind : {"plummer", "exponential"}
    xi, eta : arrays, shape (n,)
    scale_radius, ellipticity, position_angle : float or traced scalars

    Returns
    -------
    array, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> float(profile_log_density("plummer", np.array([0.0]), np.array([1.0]), 1.0)[0])  # -2 log 2
    -1.3862943611198906
    """
    m2 = elliptical_radius_squared(xi, eta, ellipticity, position_angle) / scale_radius**2
    if kind == "plummer":
        return -2.0 * jnp.log1p(m2)
    if kind == "exponential":
        return -_safe_sqrt(m2)
    raise ValueError(f"spatial profile {kind!r}; use one of {SPATIAL_PROFILES}.")


def normalised_profile_log_density(kind: str, xi, eta, footprint: Footprint, scale_radius,
                                   ellipticity=0.0, position_angle=0.0):
    """Log probability density of positions under a profile normalised over the footprint.

    ``log Sigma(x_i) - log sum_g w_g Sigma(x_g)`` over the footprint's quadrature nodes.

    Returns
    -------
    array, shape (n,)
        Integrates to 1 over the footprint (to the quadrature's accuracy).

    Examples
    --------
    >>> import numpy as np
    >>> fp = circle_footprint(30.0)
    >>> lp = normalised_profile_log_density("plummer", fp.nodes[:, 0], fp.nodes[:, 1], fp, 2.0)
    >>> round(float(np.sum(np.exp(lp) * fp.node_weights)), 6)
    1.0
    """
    nodes = jnp.asarray(footprint.nodes)
    log_norm = jax.scipy.special.logsumexp(
        profile_log_density(kind, nodes[:, 0], nodes[:, 1], scale_radius, ellipticity, position_angle),
        b=jnp.asarray(footprint.node_weights))
    return profile_log_density(kind, xi, eta, scale_radius, ellipticity, position_angle) - log_norm


def power_law_dispersion(radius, sigma_ref, gamma, reference_radius):
    """``sigma(R) = sigma_ref (R / R_ref)^gamma``, defined at R = 0 for gamma >= 0 only.

    ``R`` is floored by the caller (the model passes ``max(R, R_min)``): a falling
    profile (gamma < 0) diverges at the centre.

    Examples
    --------
    >>> float(power_law_dispersion(4.0, 2.0, -0.5, 1.0))
    1.0
    """
    return sigma_ref * jnp.exp(gamma * jnp.log(radius / reference_radius))


def binned_dispersion(radius, sigmas, edges):
    """Piecewise-constant ``sigma(R)``: ``sigmas[b]`` for ``edges[b] <= R < edges[b+1]``.

    Radii below the first edge take the first bin, above the last edge the last bin.

    Examples
    --------
    >>> import numpy as np
    >>> binned_dispersion(np.array([0.5, 1.5, 9.0]), np.array([3.0, 2.0]), np.array([0.0, 1.0, 2.0])).tolist()
    [3.0, 2.0, 2.0]
    """
    edges = np.asarray(edges, float)
    index = jnp.clip(jnp.searchsorted(jnp.asarray(edges[1:-1]), radius, side="right"), 0, len(edges) - 2)
    return jnp.asarray(sigmas)[index]


# --------------------------------------------------------------------------- simulation


class SimulatedCluster(NamedTuple):
    """A simulated cluster + field catalogue with its truth.

    Attributes
    ----------
    data : Observations
        Velocities (n_stars, 1) with their error variances.
    covariates : dict of str to ndarray (n_stars,)
        ``xi``, ``eta`` and ``R`` (projected radius).
    member : ndarray of bool, shape (n_stars,)
    footprint : Footprint
    truth : dict of str to float
    """

    data: Observations
    covariates: dict
    member: np.ndarray
    footprint: Footprint
    truth: dict


def _plummer_positions(rng, n, scale_radius, max_radius):
    """Projected Plummer radii (M(<R) = R^2/(R^2+a^2)) truncated at ``max_radius``, random angles."""
    u_max = max_radius**2 / (max_radius**2 + scale_radius**2)
    u = rng.uniform(0.0, u_max, n)
    r = scale_radius * np.sqrt(u / (1.0 - u))
    theta = rng.uniform(0.0, 2.0 * np.pi, n)
    return r * np.sin(theta), r * np.cos(theta)


def simulate_cluster_kinematics(key, n_members: int = 300, n_field: int = 300, *, footprint_radius=30.0,
                                scale_radius=3.0, mean=-45.0, sigma_ref=3.0, gamma=0.0,
                                reference_radius=3.0, gradient=(0.0, 0.0), field_mean=0.0,
                                field_sigma=40.0, error_range=(0.5, 2.0)) -> SimulatedCluster:
    """A Plummer cluster in a uniform field inside a circular footprint, with velocities.

    Members: positions from a projected Plummer profile (truncated at the footprint);
    velocities ``N(mean + k_xi xi + k_eta eta, sigma(R)^2 + e^2)`` with
    ``sigma(R) = sigma_ref (R / R_ref)^gamma``. Field: uniform positions over the
    footprint, velocities ``N(field_mean, field_sigma^2 + e^2)``. Errors ``e`` uniform
    in ``error_range``.

    Parameters
    ----------
    key : int or JAX PRNG key
    n_members, n_field : int
    footprint_radius, scale_radius : float
    mean, sigma_ref, gamma, reference_radius : float
    gradient : (float, float)
        ``(k_xi, k_eta)``, velocity per unit offset.
    field_mean, field_sigma : float
    error_range : (float, float)

    Returns
    -------
    SimulatedCluster

    Examples
    --------
    >>> sim = simulate_cluster_kinematics(0, 50, 50)
    >>> sim.data.values.shape, int(sim.member.sum())
    ((100, 1), 50)
    """
    seed = int(jax.random.randint(as_key(key), (), 0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    xi_m, eta_m = _plummer_positions(rng, n_members, scale_radius, footprint_radius)
    r_f = footprint_radius * np.sqrt(rng.uniform(0.0, 1.0, n_field))
    t_f = rng.uniform(0.0, 2.0 * np.pi, n_field)
    xi = np.concatenate([xi_m, r_f * np.sin(t_f)])
    eta = np.concatenate([eta_m, r_f * np.cos(t_f)])
    radius = np.hypot(xi, eta)
    member = np.arange(n_members + n_field) < n_members
    err = rng.uniform(*error_range, n_members + n_field)
    sigma = sigma_ref * (np.maximum(radius, 1e-3 * reference_radius) / reference_radius) ** gamma
    mu = np.where(member, mean + gradient[0] * xi + gradient[1] * eta, field_mean)
    sd = np.where(member, sigma, field_sigma)
    v = rng.normal(mu, np.sqrt(sd**2 + err**2))
    data = Observations(jnp.asarray(v[:, None]), jnp.asarray((err**2)[:, None, None]))
    truth = {"scale_radius": scale_radius, "frac_member": n_members / (n_members + n_field), "mean": mean,
             "sigma_ref": sigma_ref, "gamma": gamma, "reference_radius": reference_radius,
             "k_xi": gradient[0], "k_eta": gradient[1], "field_mean": field_mean, "field_sigma": field_sigma}
    return SimulatedCluster(data, {"xi": xi, "eta": eta, "R": radius}, member,
                            circle_footprint(footprint_radius), truth)


def binned_member_dispersion(values, error_var, mean, radius, probability, edges):
    """Membership-weighted velocity dispersion of the stars in radius bins (errors removed).

    In each bin, ``s^2 = sum p (v - mu)^2 / sum p - sum p e^2 / sum p`` (floored at 0), with
    an uncertainty ``s / sqrt(2 n_eff)``, ``n_eff = (sum p)^2 / sum p^2``: the data points
    a dispersion-profile figure shows against the model.

    Parameters
    ----------
    values, error_var, mean, radius, probability : array_like, shape (n_stars,)
        Velocities, their error variances, the member mean at each star, projected radii
        and membership probabilities.
    edges : array_like, shape (n_bins + 1,)

    Returns
    -------
    centre, sigma, sigma_err, n_eff : ndarrays, shape (n_bins,)
        ``centre`` is the membership-weighted mean radius of the bin; empty
        bins give NaN.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.random.default_rng(0).normal(0.0, 3.0, 4000)
    >>> c, s, e, n = binned_member_dispersion(v, np.zeros(4000), 0.0, np.linspace(0, 1, 4000),
    ...                                      np.ones(4000), [0.0, 0.5, 1.0])
    >>> bool(np.all(np.abs(s - 3.0) < 0.2))
    True
    """
    v, e2, r, p = (np.asarray(a, float) for a in (values, error_var, radius, probability))
    mu = np.broadcast_to(np.asarray(mean, float), v.shape)
    edges = np.asarray(edges, float)
    index = np.digitize(r, edges) - 1
    n_bins = len(edges) - 1
    centre, sigma, sigma_err, n_eff = (np.full(n_bins, np.nan) for _ in range(4))
    for b in range(n_bins):
        w = p[index == b]
        if w.sum() <= 0:
            continue
        sel = index == b
        var = np.sum(w * (v[sel] - mu[sel]) ** 2) / w.sum() - np.sum(w * e2[sel]) / w.sum()
        n_eff[b] = w.sum() ** 2 / np.sum(w**2)
        centre[b] = np.sum(w * r[sel]) / w.sum()
        sigma[b] = math.sqrt(max(var, 0.0))
        sigma_err[b] = sigma[b] / math.sqrt(2.0 * n_eff[b])
    return centre, sigma, sigma_err, n_eff
