"""Sky positions -> offsets and radii about a centre (numpy + astropy; no JAX).

A cluster's member fraction falls with projected radius, and catalogues give RA/Dec.
:func:`sky_offsets` turns them into the quantities a radius law needs:

- ``xi``, ``eta``: gnomonic (tangent-plane) standard coordinates about the centre, ``xi``
  towards the east (increasing RA), ``eta`` towards the north;
- ``radius``: the great-circle separation from the centre (what catalogues call the
  projected distance, e.g. Baumgardt's ``DCEN``), equal to ``astropy``'s
  ``SkyCoord.separation``;
- ``elliptical_radius``: the semi-major-axis equivalent radius of the ellipse through the
  star, ``sqrt(x_major**2 + (x_minor / (1 - e))**2)``, with the major axis at
  ``position_angle`` (degrees east of north). It is measured in the azimuthal
  equidistant frame (the separation along the star's position angle), so it equals
  ``radius`` exactly when the ellipticity is 0.

All radii come in one angular ``unit`` (``"arcsec"``, ``"arcmin"`` or ``"deg"``).
:func:`bayesmix.catalogue.read_catalogue` calls this through ``sky=`` (``[data.sky]`` in a
spec) and adds the columns to the catalogue.

Examples
--------
>>> from bayesmix.sky import sky_offsets
>>> off = sky_offsets([13.2, 13.1885], [-26.5826, -26.5826], (13.1885, -26.5826))
>>> bool(off.xi[0] > 0), float(off.radius[1])
(True, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from bayesmix._choices import SKY_UNITS

__all__ = ["SKY_KEYS", "SkyOffsets", "parse_centre", "sky_offsets"]

_PER_DEGREE = {"arcsec": 3600.0, "arcmin": 60.0, "deg": 1.0}
SKY_KEYS = ("ra", "dec", "centre", "ellipticity", "position_angle", "unit", "half_light_radius", "prefix")
"""Keys of ``read_catalogue(sky={...})`` (and of ``[data.sky]``)."""


class SkyOffsets(NamedTuple):
    """Offsets of stars from a centre, each an array of shape (n_stars,) in the chosen unit.

    Attributes
    ----------
    xi, eta : ndarray
        Gnomonic standard coordinates (east, north).
    radius : ndarray
        Great-circle separation from the centre.
    elliptical_radius : ndarray
        Semi-major-axis equivalent radius (equals ``radius`` at ellipticity 0).
    radius_over_half_light : ndarray or None
        ``elliptical_radius / half_light_radius`` (dimensionless) when a half-light
        radius was given.
    """

    xi: np.ndarray
    eta: np.ndarray
    radius: np.ndarray
    elliptical_radius: np.ndarray
    radius_over_half_light: np.ndarray | None = None


def parse_centre(centre) -> tuple[float, float]:
    """A centre as ``(ra_deg, dec_deg)``.

    Parameters
    ----------
    centre : (float, float), str or astropy.coordinates.SkyCoord
        Degrees; or a string SkyCoord parses (``"00h52m45.2s -26d34m57s"``; without
        unit letters, ``"00:52:45.2 -26:34:57"`` is read as hours and degrees); or a
        SkyCoord (converted to ICRS).

    Returns
    -------
    (float, float)

    Raises
    ------
    ValueError
        When the centre cannot be read or its Dec is outside [-90, 90].

    Examples
    --------
    >>> parse_centre("00h52m45.2s -26d34m57s")  # doctest: +ELLIPSIS
    (13.188333..., -26.5825)
    """
    from astropy.coordinates import SkyCoord

    if isinstance(centre, SkyCoord):
        icrs = centre.icrs
        ra, dec = float(icrs.ra.deg), float(icrs.dec.deg)
    elif isinstance(centre, str):
        ra, dec = _parse_centre_text(centre)
    else:
        try:
            ra, dec = (float(v) for v in centre)
        except (TypeError, ValueError):
            raise ValueError(f"sky centre {centre!r} must be (ra_deg, dec_deg), a string such as "
                             "\"00h52m45.2s -26d34m57s\", or a SkyCoord.") from None
    if not (np.isfinite(ra) and np.isfinite(dec)) or abs(dec) > 90:
        raise ValueError(f"sky centre {centre!r}: RA must be finite and Dec within [-90, 90] degrees "
                         f"(got RA {ra}, Dec {dec}).")
    return ra % 360.0, dec


def _parse_centre_text(text: str) -> tuple[float, float]:
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    errors = []
    for unit in (None, (u.hourangle, u.deg)):
        try:
            coord = SkyCoord(text, unit=unit) if unit else SkyCoord(text)
            return float(coord.icrs.ra.deg), float(coord.icrs.dec.deg)
        except (ValueError, TypeError, u.UnitsError) as exc:
            errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    raise ValueError(f"sky centre {text!r} cannot be read as a position ({errors[-1]}); give it as "
                     "\"00h52m45.2s -26d34m57s\" or as two numbers [ra_deg, dec_deg].")


def coordinate_degrees(values, axis: str) -> np.ndarray:
    """RA or Dec values as float64 degrees, NaN where blank or masked.

    ``values`` may be numbers (degrees), an astropy Quantity/Angle/Column with an angular
    unit (``hourangle`` included), or sexagesimal strings (RA strings without unit letters
    are read as hours, Dec strings as degrees). ``axis`` is ``"ra"`` or ``"dec"``.
    """
    import astropy.units as u

    mask = np.ma.getmaskarray(values) if np.ma.isMaskedArray(values) else None
    unit = getattr(values, "unit", None)
    if unit is not None and not isinstance(values, u.Quantity):  # an astropy Column with a unit
        values = u.Quantity(np.ma.getdata(values), unit)
    if isinstance(values, u.Quantity):
        try:
            out = np.asarray(values.to_value(u.deg), dtype=np.float64)
        except u.UnitConversionError:
            raise ValueError(f"{axis.upper()} has unit {values.unit}, not an angle; give degrees, "
                             "hours or another angular unit.") from None
    else:
        arr = np.asarray(np.ma.getdata(values))
        out = _text_degrees(arr, axis) if arr.dtype.kind in "USO" else arr.astype(np.float64)
    out = np.atleast_1d(out).astype(np.float64)
    if mask is not None:
        out = np.where(np.atleast_1d(mask), np.nan, out)
    return out


def _text_degrees(arr: np.ndarray, axis: str) -> np.ndarray:
    import astropy.units as u
    from astropy.coordinates import Angle

    unit = u.hourangle if axis == "ra" else u.deg
    flat = np.atleast_1d(arr).astype(str)
    out = np.full(flat.shape, np.nan)
    for i, text in enumerate(flat):
        text = text.strip()
        if not text:
            continue  # blank: missing, left NaN for the caller's non-finite handling
        try:
            out[i] = Angle(text, unit=unit).to_value(u.deg)
        except (ValueError, u.UnitsError) as exc:
            raise ValueError(f"{axis.upper()} value {text!r} (row {i}) cannot be read as an angle ({exc}); "
                             "give degrees or sexagesimal text such as '00h52m45.2s'.") from None
    return out


def _project(ra, dec, ra0, dec0, ellipticity, position_angle):
    """Offsets in degrees (NaN where RA/Dec are NaN; xi, eta NaN at or beyond 90 degrees)."""
    a, d = np.radians(ra), np.radians(dec)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    dra = a - a0
    sin_d, cos_d = np.sin(d), np.cos(d)
    east = cos_d * np.sin(dra)
    north = np.cos(d0) * sin_d - np.sin(d0) * cos_d * np.cos(dra)
    cos_sep = np.sin(d0) * sin_d + np.cos(d0) * cos_d * np.cos(dra)
    # Vincenty's form (as astropy's separation): accurate at every separation, exactly 0 at the centre.
    sep = np.degrees(np.arctan2(np.hypot(east, north), cos_sep))
    with np.errstate(divide="ignore", invalid="ignore"):
        tangent = np.where(cos_sep > 0, 1.0 / cos_sep, np.nan)
    xi, eta = np.degrees(east * tangent), np.degrees(north * tangent)
    pa = np.arctan2(east, north)  # east of north; atan2(0, 0) = 0 at the centre
    x_east, y_north = sep * np.sin(pa), sep * np.cos(pa)
    theta = np.radians(position_angle)
    major = x_east * np.sin(theta) + y_north * np.cos(theta)
    minor = x_east * np.cos(theta) - y_north * np.sin(theta)
    r_ell = np.hypot(major, minor / (1.0 - ellipticity))
    return xi, eta, sep, r_ell


def sky_problem(ra_deg: np.ndarray, dec_deg: np.ndarray, ra0: float, dec0: float,
                rows: np.ndarray | None = None, what: str = "row") -> str | None:
    """Why some finite positions cannot be projected (Dec outside [-90, 90], or 90 degrees
    or more from the centre), naming the rows; None when all can. NaN positions are skipped."""
    rows = np.arange(ra_deg.size) if rows is None else rows
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(ra_deg) & np.isfinite(dec_deg)
        bad_dec = finite & (np.abs(dec_deg) > 90)
    if bad_dec.any():
        hit = rows[bad_dec]
        return (f"{hit.size} Dec value(s) outside [-90, 90] degrees ({what}s {_list(hit)}; e.g. "
                f"{float(dec_deg[bad_dec][0])!r}): is the column in degrees?")
    _, _, sep, _ = _project(ra_deg, dec_deg, ra0, dec0, 0.0, 0.0)
    with np.errstate(invalid="ignore"):
        far = finite & (sep >= 90.0)
    if far.any():
        hit = rows[far]
        return (f"{hit.size} star(s) lie 90 degrees or more from the centre ({ra0:.6g}, {dec0:.6g}) "
                f"({what}s {_list(hit)}; up to {float(np.nanmax(sep[far])):.4g} deg), where the tangent-"
                "plane projection is undefined: select the cluster's stars first (select / ranges), or "
                "check the centre and the RA/Dec columns.")
    return None


def _list(rows, n=5) -> str:
    return ", ".join(map(str, rows[:n])) + (", ..." if rows.size > n else "")


def check_sky_options(ellipticity=0.0, position_angle=0.0, unit="arcmin", half_light_radius=None) -> None:
    """Refuse an ellipticity outside [0, 1), a non-finite angle, an unknown unit, a bad half-light radius."""
    e = float(ellipticity)
    if not 0.0 <= e < 1.0:
        raise ValueError(f"ellipticity must be in [0, 1) (1 - b/a); got {ellipticity!r}.")
    if not np.isfinite(float(position_angle)):
        raise ValueError(f"position_angle must be a finite number of degrees east of north; got "
                         f"{position_angle!r}.")
    if unit not in SKY_UNITS:
        raise ValueError(f"unit {unit!r} is not one of {list(SKY_UNITS)}.")
    if half_light_radius is not None:
        h = float(half_light_radius)
        if not (np.isfinite(h) and h > 0):
            raise ValueError(f"half_light_radius must be a positive number (in {unit}); got "
                             f"{half_light_radius!r}.")


def sky_offsets(ra, dec, centre, *, ellipticity: float = 0.0, position_angle: float = 0.0,
                unit: str = "arcmin", half_light_radius: float | None = None) -> SkyOffsets:
    """Tangent-plane offsets, projected and elliptical radii of stars about a centre.

    Parameters
    ----------
    ra, dec : array_like, shape (n_stars,)
        Degrees, astropy Quantity/Angle, or sexagesimal strings (RA without unit
        letters in hours). ``ra`` may instead be a SkyCoord, with ``dec=None``.
    centre : (float, float), str or SkyCoord
        See :func:`parse_centre`.
    ellipticity : float, default 0
        ``1 - b/a``, in [0, 1).
    position_angle : float, default 0
        Of the major axis, degrees east of north.
    unit : {"arcsec", "arcmin", "deg"}, default "arcmin"
    half_light_radius : float, optional
        In ``unit``; adds ``radius_over_half_light = elliptical_radius / half_light_radius``.

    Returns
    -------
    SkyOffsets
        Arrays of shape (n_stars,) in ``unit``.

    Raises
    ------
    ValueError
        Bad options, non-finite positions, Dec outside [-90, 90], or stars 90 degrees or more
        from the centre (the gnomonic projection is undefined there); the rows are named.

    Examples
    --------
    >>> off = sky_offsets([10.0, 10.0], [0.0, 1.0], (10.0, 0.0), unit="deg")
    >>> [round(float(r), 12) for r in off.radius]
    [0.0, 1.0]
    """
    check_sky_options(ellipticity, position_angle, unit, half_light_radius)
    ra_deg, dec_deg = _star_degrees(ra, dec)
    ra0, dec0 = parse_centre(centre)
    bad = ~(np.isfinite(ra_deg) & np.isfinite(dec_deg))
    if bad.any():
        raise ValueError(f"{int(bad.sum())} position(s) are NaN, infinite or blank (rows "
                         f"{_list(np.flatnonzero(bad))}); drop those stars first.")
    problem = sky_problem(ra_deg, dec_deg, ra0, dec0)
    if problem:
        raise ValueError(problem)
    return project(ra_deg, dec_deg, (ra0, dec0), ellipticity=ellipticity, position_angle=position_angle,
                   unit=unit, half_light_radius=half_light_radius)


def project(ra_deg, dec_deg, centre_deg, *, ellipticity=0.0, position_angle=0.0, unit="arcmin",
            half_light_radius=None) -> SkyOffsets:
    """:func:`sky_offsets` on float degrees, unchecked: NaN in, NaN out (for the catalogue reader,
    which checks the rows it keeps and reports the others)."""
    xi, eta, sep, r_ell = _project(np.asarray(ra_deg, float), np.asarray(dec_deg, float),
                                   centre_deg[0], centre_deg[1], float(ellipticity), float(position_angle))
    scale = _PER_DEGREE[unit]
    r_ell = r_ell * scale
    ratio = None if half_light_radius is None else r_ell / float(half_light_radius)
    return SkyOffsets(xi * scale, eta * scale, sep * scale, r_ell, ratio)


def _star_degrees(ra, dec) -> tuple[np.ndarray, np.ndarray]:
    from astropy.coordinates import SkyCoord

    if isinstance(ra, SkyCoord):
        if dec is not None:
            raise ValueError("give either a SkyCoord as ra (with dec=None) or ra and dec, not both.")
        icrs = ra.icrs
        return np.atleast_1d(icrs.ra.deg).astype(float), np.atleast_1d(icrs.dec.deg).astype(float)
    if dec is None:
        raise ValueError("dec is missing: give ra and dec, or a SkyCoord as ra.")
    ra_deg, dec_deg = coordinate_degrees(ra, "ra"), coordinate_degrees(dec, "dec")
    if ra_deg.shape != dec_deg.shape or ra_deg.ndim != 1:
        raise ValueError(f"ra and dec must be 1-D of the same length; got shapes {ra_deg.shape} and "
                         f"{dec_deg.shape}.")
    return ra_deg, dec_deg


def sky_settings(sky: Mapping[str, Any] | Any) -> dict[str, Any]:
    """``read_catalogue(sky=...)`` as a checked dict of :data:`SKY_KEYS` (defaults filled).

    ``sky`` is a mapping or an object with those attributes (``bayesmix.config.SkySpec``).
    The centre is parsed to ``(ra_deg, dec_deg)`` under ``"centre_deg"``.
    """
    if not isinstance(sky, Mapping):
        sky = {k: getattr(sky, k) for k in SKY_KEYS if getattr(sky, k, None) is not None}
    unknown = sorted(set(sky) - set(SKY_KEYS))
    if unknown:
        raise ValueError(f"sky has unknown key(s) {unknown}; allowed: {list(SKY_KEYS)}.")
    for key in ("ra", "dec", "centre"):
        if sky.get(key) is None:
            raise ValueError(f"sky needs {key!r} (the RA and Dec column names and the centre).")
    out = {"ellipticity": 0.0, "position_angle": 0.0, "unit": "arcmin", "half_light_radius": None,
           "prefix": "", **dict(sky)}
    check_sky_options(out["ellipticity"], out["position_angle"], out["unit"], out["half_light_radius"])
    out["centre_deg"] = parse_centre(out["centre"])
    return out


def sky_column_names(prefix: str = "", half_light: bool = False) -> tuple[str, ...]:
    """Columns the catalogue reader adds: ``xi, eta, R, R_ell`` (and ``R_over_Rh``), prefixed."""
    names = ("xi", "eta", "R", "R_ell") + (("R_over_Rh",) if half_light else ())
    return tuple(prefix + n for n in names)
