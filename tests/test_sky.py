"""Sky positions -> tangent-plane offsets and radii (bayesmix.sky), against astropy and by hand,
and their use through read_catalogue(sky=...) and [data.sky]."""

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import Angle, SkyCoord
from astropy.table import MaskedColumn, Table

from bayesmix.catalogue import read_catalogue, read_table
from bayesmix.config import RunSpec, SpecError
from bayesmix.sky import parse_centre, sky_offsets

NGC288 = (13.1885, -26.582611)  # orbits_table.txt


def _random_stars(rng, centre, n, max_sep_deg):
    """Stars scattered up to ``max_sep_deg`` from ``centre`` (uniform in position angle)."""
    c = SkyCoord(*centre, unit="deg")
    pa = rng.uniform(0, 360, n) * u.deg
    sep = rng.uniform(0, max_sep_deg, n) * u.deg
    stars = c.directional_offset_by(pa, sep)
    return stars.ra.deg, stars.dec.deg


@pytest.mark.parametrize("centre", [NGC288, (0.5, 10.0), (359.7, -5.0), (120.0, 88.0), (200.0, -89.5)])
def test_radius_and_direction_match_astropy(centre):
    rng = np.random.default_rng(1)
    ra, dec = _random_stars(rng, centre, 300, 40.0)
    off = sky_offsets(ra, dec, centre, unit="deg")
    c0, stars = SkyCoord(*centre, unit="deg"), SkyCoord(ra, dec, unit="deg")
    sep = c0.separation(stars).deg
    np.testing.assert_allclose(off.radius, sep, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(off.elliptical_radius, off.radius, rtol=1e-12)  # e = 0
    # Gnomonic: (xi, eta) = tan(sep) (sin PA, cos PA), PA east of north.
    pa = c0.position_angle(stars).rad
    tan_deg = np.degrees(np.tan(np.radians(sep)))
    np.testing.assert_allclose(off.xi, tan_deg * np.sin(pa), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(off.eta, tan_deg * np.cos(pa), rtol=1e-8, atol=1e-10)


def test_hand_cases_east_north_centre_and_units():
    ra0, dec0 = 150.0, 0.0
    off = sky_offsets([150.1, 150.0, 150.0, 149.9], [0.0, 0.1, 0.0, 0.0], (ra0, dec0), unit="arcmin")
    assert off.xi[0] > 0 and abs(off.eta[0]) < 1e-12  # east: larger RA
    assert off.eta[1] > 0 and abs(off.xi[1]) < 1e-12  # north
    assert off.xi[3] < 0
    assert off.radius[2] == 0.0 and off.xi[2] == 0.0 and off.eta[2] == 0.0
    assert not any(np.isnan(a).any() for a in off[:4])
    np.testing.assert_allclose(off.radius[[0, 1]], 6.0, rtol=1e-6)  # 0.1 deg at the equator
    arcsec = sky_offsets([150.1], [0.0], (ra0, dec0), unit="arcsec")
    np.testing.assert_allclose(arcsec.radius, 60 * off.radius[0], rtol=1e-12)


@pytest.mark.parametrize(("pa", "east_r", "north_r"), [(90.0, 1.0, 2.0), (0.0, 2.0, 1.0), (45.0, None, None)])
def test_elliptical_radius_by_hand(pa, east_r, north_r):
    # Ellipticity 0.5: b/a = 0.5, so a star on the minor axis at distance d has R_ell = 2 d.
    d = 1 / 60  # 1 arcmin, small enough that the sphere is flat to 1e-8
    centre = (30.0, 0.0)
    off = sky_offsets([30.0 + d, 30.0], [0.0, d], centre, ellipticity=0.5, position_angle=pa)
    if east_r is not None:
        np.testing.assert_allclose(off.elliptical_radius, [east_r, north_r], rtol=1e-7)
    else:  # at PA 45 both lie 45 deg off the axes: x_major = x_minor = d / sqrt 2
        expected = np.sqrt(0.5 + 0.5 * 4)
        np.testing.assert_allclose(off.elliptical_radius, [expected, expected], rtol=1e-7)
    np.testing.assert_allclose(off.radius, [1.0, 1.0], rtol=1e-7)


def test_every_input_form_gives_the_same_offsets():
    ra, dec = np.array([13.2, 13.3]), np.array([-26.5, -26.7])
    ref = sky_offsets(ra, dec, NGC288)
    stars = SkyCoord(ra, dec, unit="deg")
    forms = [
        sky_offsets(ra * u.deg, dec * u.deg, NGC288),
        sky_offsets(Angle(ra, u.deg).to(u.hourangle), Angle(dec, u.deg), NGC288),
        sky_offsets(stars.ra.to_string(u.hourangle, precision=8), stars.dec.to_string(u.deg, precision=8),
                    NGC288),
        sky_offsets(stars, None, SkyCoord(*NGC288, unit="deg")),
        sky_offsets(ra, dec, SkyCoord(*NGC288, unit="deg").to_string("hmsdms", precision=8)),
    ]
    for form in forms:
        np.testing.assert_allclose(form.radius, ref.radius, rtol=1e-6)
        np.testing.assert_allclose(form.xi, ref.xi, rtol=1e-6)


def test_half_light_radius_ratio():
    off = sky_offsets([13.2, 13.3], [-26.5, -26.7], NGC288, ellipticity=0.2, position_angle=30,
                      half_light_radius=2.5)
    np.testing.assert_allclose(off.radius_over_half_light, off.elliptical_radius / 2.5)
    assert sky_offsets([13.2], [-26.5], NGC288).radius_over_half_light is None


def test_centre_parsing():
    assert parse_centre("00h52m45.2s -26d34m57s") == pytest.approx((13.1883333, -26.5825))
    assert parse_centre("00:52:45.2 -26:34:57") == pytest.approx((13.1883333, -26.5825))
    assert parse_centre((361.0, 5.0)) == (1.0, 5.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sky_offsets([1.0], [0.0], (0, 0), ellipticity=1.0), r"ellipticity must be in \[0, 1\)"),
        (lambda: sky_offsets([1.0], [0.0], (0, 0), ellipticity=-0.1), r"ellipticity must be in \[0, 1\)"),
        (lambda: sky_offsets([1.0], [0.0], (0, 0), unit="pc"), r"unit 'pc' is not one of"),
        (lambda: sky_offsets([1.0], [0.0], (0, 0), half_light_radius=0),
         r"half_light_radius must be a positive number"),
        (lambda: sky_offsets([1.0], [0.0], (0, 0), position_angle=np.nan),
         r"position_angle must be a finite number"),
        (lambda: sky_offsets([1.0, 2.0], [0.0, 95.0], (0, 0)),
         r"1 Dec value\(s\) outside \[-90, 90\].*rows 1"),
        (lambda: sky_offsets([1.0, 2.0, 180.0], [0.0, 0.0, 0.0], (0, 0)),
         r"1 star\(s\) lie 90 degrees or more from the centre.*rows 2"),
        (lambda: sky_offsets([1.0, 91.0], [0.0, 0.0], (0, 0)), r"90 degrees or more.*rows 1"),
        (lambda: sky_offsets([1.0, np.nan], [0.0, 0.0], (0, 0)), r"NaN, infinite or blank \(rows 1\)"),
        (lambda: sky_offsets([1.0], [0.0], (0, 100)), r"Dec within \[-90, 90\]"),
        (lambda: sky_offsets([1.0], [0.0], "not a place"), r"sky centre 'not a place' cannot be read"),
        (lambda: sky_offsets([1.0], [0.0], (1, 2, 3)), r"must be \(ra_deg, dec_deg\)"),
        (lambda: sky_offsets(["xx"], ["0"], (0, 0)), r"RA value 'xx' \(row 0\) cannot be read"),
        (lambda: sky_offsets([1.0] * u.km, [0.0] * u.deg, (0, 0)), r"RA has unit km, not an angle"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- in the catalogue


def _field(n=40, seed=2):
    rng = np.random.default_rng(seed)
    ra, dec = _random_stars(rng, NGC288, n, 0.5)
    return Table({"ra": ra, "dec": dec, "v": rng.normal(size=n), "ev": np.full(n, 0.5),
                  "grp": ["a"] * (n // 2) + ["b"] * (n - n // 2)})


def test_read_catalogue_adds_sky_columns_with_units_as_covariates():
    t = _field()
    sky = {"ra": "ra", "dec": "dec", "centre": NGC288, "unit": "arcsec", "ellipticity": 0.3,
           "position_angle": 40, "half_light_radius": 100}
    cat = read_catalogue(t, "v", "ev", sky=sky)
    assert list(cat.covariates) == ["xi", "eta", "R", "R_ell", "R_over_Rh"]
    assert cat.table["R"].unit == u.arcsec and cat.table["R_over_Rh"].unit is None
    direct = sky_offsets(t["ra"], t["dec"], NGC288, unit="arcsec", ellipticity=0.3, position_angle=40,
                         half_light_radius=100)
    np.testing.assert_allclose(cat.covariates["R_ell"], direct.elliptical_radius)
    np.testing.assert_allclose(np.asarray(cat.table["xi"]), direct.xi)
    assert "R" not in t.colnames  # the caller's table is left alone
    prefixed = read_catalogue(t, "v", "ev", covariates=["sky_R"],
                              sky={"ra": "ra", "dec": "dec", "centre": NGC288, "prefix": "sky_"})
    assert list(prefixed.covariates) == ["sky_R", "sky_xi", "sky_eta", "sky_R_ell"]


def test_sky_column_clash_names_it_and_suggests_prefix():
    t = _field()
    t["R"] = 1.0
    with pytest.raises(ValueError, match=r"already has column\(s\) \['R'\].*prefix"):
        read_catalogue(t, "v", "ev", sky={"ra": "ra", "dec": "dec", "centre": NGC288})


def test_blank_positions_go_through_the_drop_report():
    t = _field(10)
    t["ra"] = MaskedColumn(t["ra"], mask=[False] * 9 + [True])
    t["dec"][3] = np.nan
    sky = {"ra": "ra", "dec": "dec", "centre": NGC288}
    with pytest.raises(ValueError, match=r"column 'ra' has 1 NaN.*source rows 9"):
        read_catalogue(t, "v", "ev", sky=sky)
    cat = read_catalogue(t, "v", "ev", sky=sky, drop_nonfinite=True)
    assert cat.report.counts() == {"nonfinite: ra": 1, "nonfinite: dec": 1}
    assert np.isfinite(cat.covariates["R"]).all() and cat.n_stars == 8


def test_far_stars_refused_only_when_selected():
    t = _field(10)
    t["grp"] = ["a"] * 7 + ["far"] + ["a"] * 2
    t["ra"][7] = NGC288[0] + 180.0
    sky = {"ra": "ra", "dec": "dec", "centre": NGC288}
    with pytest.raises(ValueError, match=r"sky: 1 star\(s\) lie 90 degrees or more.*source rows 7"):
        read_catalogue(t, "v", "ev", sky=sky)
    cat = read_catalogue(t, "v", "ev", sky=sky, select={"grp": "a"})
    assert cat.n_stars == 9


def test_star_at_the_centre_has_radius_zero_and_is_kept():
    t = Table({"ra": [NGC288[0], 13.3], "dec": [NGC288[1], -26.6], "v": [1.0, 2.0], "ev": [0.1, 0.1]})
    cat = read_catalogue(t, "v", "ev", sky={"ra": "ra", "dec": "dec", "centre": NGC288})
    assert cat.covariates["R"][0] == 0.0 and cat.covariates["R_ell"][0] == 0.0 and cat.n_stars == 2


def test_sexagesimal_text_columns():
    t = _field(5)
    coords = SkyCoord(t["ra"], t["dec"], unit="deg")
    text = Table({"ra": coords.ra.to_string(u.hourangle, sep=":", precision=6),
                  "dec": coords.dec.to_string(u.deg, sep=":", precision=6), "v": t["v"], "ev": t["ev"]})
    sky = {"ra": "ra", "dec": "dec", "centre": "00h52m45.24s -26d34m57.4s"}
    a, b = read_catalogue(t, "v", "ev", sky=sky), read_catalogue(text, "v", "ev", sky=sky)
    np.testing.assert_allclose(a.covariates["R"], b.covariates["R"], rtol=1e-5)


def test_ngc288_radius_matches_the_catalogue_dcen(shared_data):
    path = shared_data / "baumgardt_gc_rv" / "appendix_combined_table.txt"
    orbits = read_table(shared_data / "baumgardt_gc_rv" / "orbits_table.txt")
    row = orbits[np.char.strip(np.asarray(orbits["Cluster"]).astype(str)) == "NGC 288"][0]
    centre = (float(row["RA"]), float(row["DEC"]))
    cat = read_catalogue(path, "RV", "E_RV", covariates=["DCEN"], select={"Cluster": "NGC 288"},
                         sky={"ra": "RA", "dec": "DEC", "centre": centre, "unit": "arcsec"})
    ratio = cat.covariates["R"] / cat.covariates["DCEN"]
    assert cat.n_stars == 386
    assert np.abs(ratio - 1).max() < 0.01  # measured: 7.5e-4 at most, 1.4e-6 median


# --------------------------------------------------------------------------- [data.sky]

BASE = {"data": {"path": "x.csv", "values": ["RV"], "errors": ["E_RV"]},
        "model": {"kind": "cluster-field", "radius_fraction": {"covariate": "R_ell"}}}


def _spec(**sky):
    table = {"data": {**BASE["data"], "sky": sky}, "model": dict(BASE["model"])}
    return RunSpec.from_dict(table)


def test_sky_spec_round_trips_with_a_sexagesimal_centre():
    spec = _spec(ra="RA", dec="DEC", centre="00h52m45.2s -26d34m57s", ellipticity=0.1, unit="arcsec",
                 half_light_radius=170.0)
    again = RunSpec.from_dict(spec.to_dict())
    assert again == spec and again.data.sky.centre == "00h52m45.2s -26d34m57s"
    numbers = _spec(ra="RA", dec="DEC", centre=[13.1885, -26.58])
    assert RunSpec.from_dict(numbers.to_dict()) == numbers and numbers.data.sky.centre == (13.1885, -26.58)


@pytest.mark.parametrize(
    ("sky", "match"),
    [
        ({"ra": "RA", "dec": "DEC", "centre": [0, 0], "ellipticity": 1.0},
         r"\[data.sky\] ellipticity: must be < 1"),
        ({"ra": "RA", "dec": "DEC", "centre": [0, 0], "unit": "pc"},
         r"\[data.sky\] unit: 'pc' is not allowed"),
        ({"ra": "RA", "dec": "DEC", "centre": [0, 95]}, r"\[data.sky\] centre\[1\]: must be <= 90"),
        ({"ra": "RA", "dec": "DEC", "centre": [0]}, r"\[data.sky\] centre: must be \[ra_deg, dec_deg\]"),
        ({"ra": "RA", "dec": "DEC", "centre": "nowhere"},
         r"\[data.sky\] centre: sky centre 'nowhere' cannot"),
        ({"ra": "RA", "centre": [0, 0]}, r"\[data.sky\] dec: is required"),
        ({"ra": "RA", "dec": "DEC", "centre": [0, 0], "half_light_radius": -1.0},
         r"\[data.sky\] half_light_radius: must be > 0"),
        ({"ra": "RA", "dec": "DEC", "centre": [0, 0], "centr": 1}, r"\[data.sky\] centr: unknown key"),
        ({"ra": "RA", "dec": "DEC", "centre": [0, 0], "prefix": "s_"},
         r"\[model.radius_fraction\] covariate: 'R_ell' must also be listed.*\['s_xi'"),
    ],
)
def test_bad_sky_specs_name_the_key(sky, match):
    with pytest.raises(SpecError, match=match):
        _spec(**sky)


def test_radius_covariate_without_sky_is_still_refused():
    with pytest.raises(SpecError, match=r"'R_ell' must also be listed .*none: no \[data.sky\]"):
        RunSpec.from_dict(BASE)


def test_workflow_reads_the_sky_section(tmp_path):
    from bayesmix.workflow import load_catalogue

    t = _field()
    t.write(tmp_path / "stars.csv")
    spec = RunSpec.from_dict({"data": {"path": str(tmp_path / "stars.csv"), "values": ["v"], "errors": ["ev"],
                                       "sky": {"ra": "ra", "dec": "dec", "centre": list(NGC288)}},
                              "model": {"kind": "cluster-field", "radius_fraction": {"covariate": "R"}}})
    cat, _ = load_catalogue(spec)
    assert "R" in cat.covariates and cat.table["R"].unit == u.arcmin


def test_ranges_apply_to_sky_columns():
    t = _field(40)
    sky = {"ra": "ra", "dec": "dec", "centre": NGC288, "unit": "arcmin"}
    full = read_catalogue(t, "v", "ev", sky=sky)
    inner = read_catalogue(t, "v", "ev", sky=sky, ranges={"R": (None, 15.0)})
    outside = int(np.sum(full.covariates["R"] > 15.0))
    assert 0 < outside < 40 and inner.report.counts() == {"range: R outside [None, 15.0]": outside}
