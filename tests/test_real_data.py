"""Every catalogue listed in ../shared/data reads with its documented columns and quirks.

Skipped when ../shared/data is absent (a user's clone), failed instead when
BAYESMIX_REQUIRE_SHARED_DATA=1 (CI).
"""

import numpy as np
import pytest

from bayesmix.catalogue import read_catalogue, read_table

pytestmark = pytest.mark.shared_data

BAUMGARDT = "baumgardt_gc_rv"
HARPS = "harps_delgado_mena2017"
TUTT = "tutt_apogee_galah_filtered"

RV_COLUMNS = ["Cluster", "TWOMASS_ID", "RA", "DEC", "RV", "E_RV", "DCEN", "J_mag", "E_J_mag",
              "K_mag", "E_K_mag", "P_Mem", "NRV", "P_Single"]


@pytest.fixture(scope="module")
def rv_fixed_width(shared_data):
    return read_table(shared_data / BAUMGARDT / "appendix_combined_table.txt")


@pytest.fixture(scope="module")
def rv_csv(shared_data):
    return read_table(shared_data / BAUMGARDT / "appendix_combined_table.csv")


def test_baumgardt_fixed_width_file_loads_and_agrees_with_csv(rv_fixed_width, rv_csv):
    t = rv_fixed_width
    assert t.colnames == RV_COLUMNS
    # SOURCE.txt: 32,782 data rows, one malformed (NGC 6316, NRV=0) that the CSV dropped.
    assert len(t) == 32782 and len(rv_csv) == 32781
    assert t.meta["malformed_rows"] == [12734]
    assert str(t["Cluster"][12734]).strip() == "NGC 6316"
    good = np.setdiff1d(np.arange(len(t)), t.meta["malformed_rows"])
    for col in RV_COLUMNS:
        a, b = t[col][good], rv_csv[col]
        np.testing.assert_array_equal(np.ma.getmaskarray(a), np.ma.getmaskarray(b), err_msg=col)
        if a.dtype.kind in "fi":
            np.testing.assert_allclose(np.ma.filled(a, 0.0), np.ma.filled(b, 0.0), err_msg=col)
        else:
            assert np.all(np.char.strip(np.ma.filled(a, "").astype(str))
                          == np.char.strip(np.ma.filled(b, "").astype(str))), col
    assert str(t["RV"].unit) == "km / s" and str(t["DCEN"].unit) == "arcsec"
    # Documented ranges (SOURCE.txt): E_RV 0.07-9.99, 122 clusters.
    e = np.asarray(t["E_RV"][good])
    assert e.min() == pytest.approx(0.07) and e.max() == pytest.approx(9.99)
    assert len(np.unique(np.char.strip(np.asarray(t["Cluster"]).astype(str)))) == 122


def test_ngc288_selection_from_fixed_width_and_subset_csv_agree(shared_data, rv_fixed_width):
    full = read_catalogue(rv_fixed_width, values="RV", errors="E_RV", covariates="DCEN",
                          select={"Cluster": "NGC 288"})
    subset = read_catalogue(shared_data / BAUMGARDT / "ngc288_rv.csv", values="RV",
                            errors="E_RV", covariates="DCEN")
    assert full.n_stars == subset.n_stars == 386
    assert full.report.counts() == {"select: Cluster != 'NGC 288'": 32782 - 386}
    np.testing.assert_allclose(full.values, subset.values)
    np.testing.assert_allclose(full.error_covs, subset.error_covs)
    np.testing.assert_allclose(full.covariates["DCEN"], subset.covariates["DCEN"])
    # 172 stars with P_Mem > 0.5 (SOURCE.txt), median RV of members -44.6 km/s.
    members = np.asarray(full.table["P_Mem"]) > 0.5
    assert members.sum() == 172
    assert np.median(full.values[members, 0]) == pytest.approx(-44.6, abs=0.1)


def test_malformed_row_is_reported_when_its_cluster_is_selected(rv_fixed_width):
    cat = read_catalogue(rv_fixed_width, values="RV", errors="E_RV", select={"Cluster": "NGC 6316"})
    assert cat.report.counts()["malformed: row overflows its fixed-width fields"] == 1
    assert 12734 not in cat.source_rows


def test_baumgardt_orbits_structure_and_profiles(shared_data):
    orbits = read_table(shared_data / BAUMGARDT / "orbits_table.txt")
    assert len(orbits) == 154 and "malformed_rows" not in orbits.meta
    row = orbits[orbits["Cluster"] == "NGC 288"][0]
    assert row["RV"] == pytest.approx(-44.83) and row["ERV"] == pytest.approx(0.13)
    assert row["RA"] == pytest.approx(13.1885) and row["RAPO"] == pytest.approx(13.01)
    ngc104 = orbits[orbits["Cluster"] == "NGC 104"][0]
    assert ngc104["RV"] == pytest.approx(-17.21) and ngc104["E_RAPO"] == pytest.approx(0.01)

    structure = read_table(shared_data / BAUMGARDT / "cluster_params_combined_table.txt")
    assert len(structure) == 154 and "malformed_rows" not in structure.meta
    row = structure[structure["Cluster"] == "NGC 288"][0]
    assert row["Mass"] == pytest.approx(1.21e5) and row["R_Sun"] == pytest.approx(9.98)
    assert row["etah"] == pytest.approx(-0.09)

    profiles = read_table(shared_data / BAUMGARDT / "rv_dispersion_profiles.dat",
                          layout="baumgardt_rv_profiles")
    assert len(profiles) == 1358 and "malformed_rows" not in profiles.meta
    ngc288 = profiles[profiles["Cluster"] == "NGC 288"]
    assert len(ngc288) > 5 and ngc288["sigma"][0] == pytest.approx(3.79)
    assert set(np.char.strip(np.asarray(ngc288["data_type"]).astype(str))) <= {"W15", "RV", "GDR2",
                                                                              "MUSE", "K18", "PM"}


def test_harps_sentinels_and_zero_errors_are_counted(shared_data):
    path = shared_data / HARPS / "DelgadoMena2017.fits"
    table = read_table(path)
    assert len(table) == 1059
    for col in ("feh", "erfeh", "MgFe", "errMg", "AlFe", "errAl", "SiFe", "errSi", "EuFe", "errEu"):
        assert col in table.colnames
    # Documented quirks: 9.99 codes a missing value; errAl == 0 for 229 rows, errMg == 0 for 21.
    with pytest.raises(ValueError, match=r"'errAl' has 229 zero"):
        read_catalogue(table, values=["feh", "AlFe"], errors=["erfeh", "errAl"], missing=9.99)
    with pytest.raises(ValueError, match=r"'errMg' has 21 zero"):
        read_catalogue(table, values=["feh", "MgFe"], errors=["erfeh", "errMg"])
    cat = read_catalogue(table, values=["feh", "MgFe", "AlFe"], errors=["erfeh", "errMg", "errAl"],
                         missing=9.99, error_floor=0.01, id_column="Star")
    assert cat.report.counts() == {"missing: AlFe == 9.99": 7, "missing: errAl == 9.99": 15}
    assert cat.report.floored == {"errMg": 21, "errAl": 229}
    assert cat.n_stars == 1059 - 22
    assert cat.errors.min() >= 0.01 - 1e-7
    # The thin/thick disc plane used by the science case needs no cut but the floor.
    disc = read_catalogue(table, values=["feh", "MgFe"], errors=["erfeh", "errMg"], error_floor=0.01)
    assert disc.n_stars == 1059 and disc.report.floored == {"errMg": 21}


def test_harps_kinematics_block(shared_data):
    kin = read_table(shared_data / HARPS / "DelgadoMena2017_kinematics.fits")
    assert len(kin) == 1059
    for col in ("ID", "Xg", "vXg", "vXg_sig", "Lz", "E", "ecc", "zmax"):
        assert col in kin.colnames


@pytest.mark.parametrize(
    ("filename", "n_rows", "columns", "errors"),
    [
        ("Apogee_data_filtered_1612.fits", 1612,
         ["fe_h", "mg_fe", "al_fe", "mn_fe", "mg_mn", "E_50", "ecc_50", "dr3_source_id"],
         ["fe_h_err", "mg_fe_err", "al_fe_err", "mn_fe_err", "mg_mn_err"]),
        ("Galah_data_filtered_1061.fits", 1061,
         ["fe_h", "Mg_fe", "Al_fe", "Mn_fe", "Mg_Mn", "Energy", "Eccen", "dr3_source_id"],
         ["e_fe_h", "e_Mg_fe", "e_Al_fe", "e_Mn_fe", "e_Mg_Mn"]),
    ],
)
def test_tutt_halo_samples(shared_data, filename, n_rows, columns, errors):
    table = read_table(shared_data / TUTT / filename)
    assert len(table) == n_rows
    for col in columns + errors:
        assert col in table.colnames, col
    values = columns[:5]
    cat = read_catalogue(table, values=values, errors=errors, id_column="dr3_source_id")
    assert cat.n_stars == n_rows and cat.report.n_dropped == 0
    assert np.all(cat.errors > 0)


def test_apogee_halo_abundance_plane_with_flags(shared_data):
    table = read_table(shared_data / TUTT / "Apogee_data_filtered_1612.fits")
    # [Al/Fe] vs [Mg/Mn]: the accreted-halo plane; flags are all zero after the paper's cuts.
    cat = read_catalogue(table, values=["al_fe", "mg_mn"], errors=["al_fe_err", "mg_mn_err"],
                         zero_flags=["al_fe_flag", "mn_fe_flag", "mg_fe_flag"], id_column="apogee_id")
    assert cat.n_stars == 1612
    errors = cat.errors
    assert 0.007 <= errors[:, 0].min() and errors.max() < 0.1


@pytest.mark.parametrize(("filename", "n_rows", "n_gauss"),
                         [("XD_ref_apogee_GMM_scaled_Gauss7_results.fits", 1612, 7),
                          ("XD_ref_galah_GMM_scaled_Gauss5_results.fits", 1061, 5)])
def test_tutt_reference_assignments(shared_data, filename, n_rows, n_gauss):
    table = read_table(shared_data / TUTT / filename)
    assert len(table) == n_rows
    probs = np.column_stack([np.asarray(table[f"prob_gauss_{k}"]) for k in range(1, n_gauss + 1)])
    # Despite the name, prob_gauss_k are unnormalised per-component densities (rows sum to
    # ~1e-9..0.2, never near 1), so only their ranking is usable: max_gauss is the 1-based argmax.
    assert np.all(probs >= 0) and probs.sum(axis=1).max() < 0.5
    np.testing.assert_array_equal(np.argmax(probs, axis=1) + 1, np.asarray(table["max_gauss"]))
    assert set(np.unique(np.asarray(table["max_gauss"]))) == set(range(1, n_gauss + 1))
