"""Selections by pattern and comparison, and stars kept with missing features
(missing_features="marginalise"): counts, reasons, placeholders, masked output, spec keys."""

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table

from bayesmix.catalogue import Catalogue, read_catalogue, read_table, write_table
from bayesmix.config import RunSpec, SpecError


def _clusters():
    return Table({"Cluster": ["NGC 6121", "NGC 288", "NGC 6397 ", "Pal 5", "NGC 6121", "NGC 104"],
                  "ID": ["Car-1", "Car-2", "Scl-1", "car-3", "Car-4", "Fnx-1"],
                  "P_Mem": [0.9, 0.2, 0.5, 0.7, np.nan, 0.6],
                  "FeH": [-1.2, -1.3, -2.6, -1.4, -0.4, -0.7],
                  "HIP": [1234, 1299, 5678, 1200, 77, 12],
                  "v": np.arange(6.0), "ev": np.ones(6)})


@pytest.mark.parametrize(
    ("select", "kept", "reasons"),
    [
        ({"Cluster": {"glob": "NGC 6*"}}, [0, 2, 4], {"select: Cluster glob 'NGC 6*'": 3}),
        ({"ID": {"regex": "^Car-"}}, [0, 1, 4], {"select: ID regex '^Car-'": 3}),
        ({"P_Mem": {">=": 0.5}}, [0, 2, 3, 5], {"select: P_Mem >= 0.5": 2}),  # NaN meets no condition
        ({"FeH": {">": -2.5, "<=": -0.5}}, [0, 1, 3, 5],
         {"select: FeH > -2.5": 1, "select: FeH <= -0.5": 1}),
        ({"Cluster": {"glob": "NGC*"}, "P_Mem": {">": 0.5}}, [0, 5],
         {"select: Cluster glob 'NGC*'": 1, "select: P_Mem > 0.5": 3}),
        ({"P_Mem": {"!=": 0.5, "<": 0.8}}, [1, 3, 5], {"select: P_Mem != 0.5": 2, "select: P_Mem < 0.8": 1}),
        ({"Cluster": {"==": "NGC 6121"}}, [0, 4], {"select: Cluster == 'NGC 6121'": 4}),
        ({"Cluster": {"!=": "NGC 6121"}}, [1, 2, 3, 5], {"select: Cluster != 'NGC 6121'": 2}),
        ({"HIP": {"glob": "12*"}}, [0, 1, 3, 5], {"select: HIP glob '12*'": 2}),  # numbers as text
        ({"Cluster": "NGC 6121"}, [0, 4], {"select: Cluster != 'NGC 6121'": 4}),  # plain values as before
        ({"Cluster": ["NGC 288", "Pal 5"]}, [1, 3], {"select: Cluster not in ['NGC 288', 'Pal 5']": 4}),
    ],
)
def test_selection_conditions_keep_and_report(select, kept, reasons):
    cat = read_catalogue(_clusters(), "v", "ev", select=select)
    assert list(cat.source_rows) == kept
    assert cat.report.counts() == reasons


@pytest.mark.parametrize(
    ("select", "match"),
    [
        ({"ID": {"regex": "Car-("}}, r"select\['ID'\]: regex 'Car-\(' is not a valid regular expression \("
                                     r"missing \)"),
        ({"Cluster": {">=": 0.5}}, r"select\['Cluster'\] >= 0.5: a comparison needs a numeric column.*"
                                   r"'Cluster' has dtype <U9"),
        ({"P_Mem": {">=": "high"}}, r"select\['P_Mem'\] >= 'high': a comparison needs a numeric column and a "
                                    r"number"),
        ({"P_Mem": {"~": 1}}, r"select\['P_Mem'\] has the unknown operator '~'"),
        ({"P_Mem": {}}, r"select\['P_Mem'\] is an empty table"),
        ({"ID": {"glob": 5}}, r"select\['ID'\]: glob needs a pattern \(a string\)"),
        ({"Cluster": {"glob": "M *"}}, r"select Cluster glob 'M \*' matches no row; values in 'Cluster' "
                                       r"include 'NGC 104'"),
    ],
)
def test_bad_selections_name_the_column(select, match):
    with pytest.raises(ValueError, match=match):
        read_catalogue(_clusters(), "v", "ev", select=select)


def test_glob_on_baumgardt_clusters(shared_data):
    path = shared_data / "baumgardt_gc_rv" / "appendix_combined_table.txt"
    table = read_table(path)
    names = np.char.strip(np.asarray(table["Cluster"]).astype(str))
    cat = read_catalogue(table, "RV", "E_RV", select={"Cluster": {"glob": "NGC 6*"}, "P_Mem": {">=": 0.5}})
    expected = np.char.startswith(names, "NGC 6") & (np.asarray(table["P_Mem"]) >= 0.5)
    expected[table.meta["malformed_rows"]] = False
    assert cat.n_stars == int(expected.sum()) > 1000
    assert list(cat.report.counts())[:2] == ["select: Cluster glob 'NGC 6*'", "select: P_Mem >= 0.5"]


def test_select_spec_accepts_patterns_and_comparisons_and_round_trips():
    data = {"path": "x.csv", "values": ["RV"], "errors": ["E_RV"],
            "select": {"Cluster": {"glob": "NGC 6*"}, "ID": {"regex": "^Car-"},
                       "FeH": {">": -2.5, "<=": -0.5}, "Name": {"!=": "x"}, "Plain": "NGC 288"}}
    spec = RunSpec.from_dict({"data": data, "model": {"kind": "cluster-field"}})
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert spec.data.select["FeH"] == {">": -2.5, "<=": -0.5}


@pytest.mark.parametrize(
    ("select", "match"),
    [
        ({"ID": {"regex": "Car-("}}, r"\[data\] select.ID.regex: 'Car-\(' is not a valid regular expression"),
        ({"FeH": {"=>": 1.0}}, r"\[data\] select.FeH.\"=>\": unknown operator '=>'"),
        ({"FeH": {">": "low"}}, r"\[data\] select.FeH.\">\": must be a number; got a string"),
        ({"ID": {"glob": 3}}, r"\[data\] select.ID.glob: must be a string"),
        ({"ID": {}}, r"\[data\] select.ID: an empty table selects nothing"),
    ],
)
def test_bad_select_specs_name_the_key(select, match):
    data = {"path": "x.csv", "values": ["RV"], "errors": ["E_RV"], "select": select}
    with pytest.raises(SpecError, match=match):
        RunSpec.from_dict({"data": data, "model": {"kind": "cluster-field"}})


# --------------------------------------------------------------------------- missing features


def _abundances():
    """6 stars, 3 features: NaN, blank, a 9.99 sentinel and a missing error, one star with none."""
    return Table({
        "id": [f"s{i}" for i in range(6)],
        "feh": [-0.5, -0.2, 0.1, np.nan, -1.0, 0.3],
        "efeh": [0.05, 0.04, 0.05, np.nan, 0.06, 0.05],
        "mg": MaskedColumn([0.1, 0.2, 0.0, 0.3, 9.99, 0.05], mask=[False, False, True, False, False, False]),
        "emg": [0.02, 0.03, 0.02, 0.04, 9.99, 0.03],
        "al": [0.2, np.nan, 0.1, np.nan, 0.3, 0.25],
        "eal": [0.1, 0.1, -1.0, 0.0, 0.1, np.nan],  # -1 and 0 errors sit on missing or NaN-error entries
        "rho": [0.3, 0.2, 0.1, np.nan, 0.0, 0.1],  # NaN only where feh is missing
    })


def _read(table, **kwargs):
    return read_catalogue(table, ["feh", "mg", "al"], ["efeh", "emg", "eal"], id_column="id",
                          missing={"mg": 9.99, "emg": 9.99, "eal": -1.0},
                          correlations={("feh", "mg"): "rho"}, missing_features="marginalise", **kwargs)


def test_marginalise_keeps_stars_marks_missing_and_fills_placeholders():
    t = _abundances()
    t["al"][3] = np.nan
    cat = _read(t)
    # star 3 lacks feh (NaN) and al (NaN) but has mg; star 2 lacks mg (blank) and al (error -1 sentinel)
    expected = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 1], [1, 1, 0]], bool)
    np.testing.assert_array_equal(cat.observed, expected)
    assert cat.n_stars == 6 and cat.report.n_dropped == 0
    assert cat.report.kept == {"with feh missing": 1, "with mg missing": 2, "with al missing": 4}
    feh = np.asarray(t["feh"])
    assert cat.values[3, 0] == pytest.approx(np.mean(feh[[0, 1, 2, 4, 5]]))  # the observed mean
    assert cat.values[2, 1] == pytest.approx(np.mean([0.1, 0.2, 0.3, 0.05]))
    assert np.isfinite(cat.values).all() and np.isfinite(cat.error_covs).all()
    # Placeholders: zero covariance with the other features, the median observed variance on the diagonal.
    assert cat.error_covs[3, 0, 1] == 0 and cat.error_covs[3, 1, 0] == 0
    assert cat.error_covs[3, 0, 0] == pytest.approx(np.median(np.asarray(t["efeh"])[[0, 1, 2, 4, 5]] ** 2))
    assert cat.error_covs[2, 2, 2] == pytest.approx(np.median([0.1**2, 0.1**2]))
    # Observed entries keep their covariances (the correlation between observed feh and mg).
    assert cat.error_covs[0, 0, 1] == pytest.approx(0.3 * 0.05 * 0.02)
    assert "kept          4: with al missing" in str(cat.report)


def test_no_feature_observed_is_its_own_drop_reason():
    t = _abundances()
    t["feh"][2] = np.nan
    cat = _read(t)
    assert cat.report.counts() == {"no feature observed": 1}
    assert 2 not in list(cat.source_rows) and cat.n_stars == 5


def test_drop_stays_the_default_and_observed_is_none():
    t = _abundances()
    cat = read_catalogue(t, ["feh", "mg"], ["efeh", "emg"], missing=9.99, drop_nonfinite=True)
    assert cat.observed is None
    assert cat.report.counts() == {"missing: mg == 9.99": 1, "nonfinite: feh": 1, "nonfinite: mg": 1}
    assert cat.report.kept == {} and "kept " not in str(cat.report).splitlines()[0][5:]
    complete = read_catalogue(t, ["feh", "mg"], ["efeh", "emg"], missing=9.99, drop_nonfinite=True,
                              missing_features="marginalise", select={"id": ["s0", "s1", "s5"]})
    assert complete.observed is None  # nothing missing among the kept stars


def test_checks_look_at_observed_entries_only():
    t = _abundances()
    # Without marginalising, the -1 error (on a star whose al is otherwise fine) is a data error ...
    with pytest.raises(ValueError, match=r"'eal' has 1 negative"):
        read_catalogue(t, ["feh", "al"], ["efeh", "eal"], drop_nonfinite=True)
    # ... and a huge value on a missing feature is no overflow when the feature is missing.
    t["mg"][4] = 1e200
    t["emg"][4] = np.nan
    cat = _read(t)
    assert not cat.observed[4, 1] and np.isfinite(cat.values[4, 1])


def test_output_tables_show_missing_values_as_missing(tmp_path):
    t = _abundances()
    cat = _read(t)
    out = cat.with_columns({"p_member": np.linspace(0, 1, cat.n_stars)})
    mg = out["mg"]
    assert np.ma.getmaskarray(mg).tolist() == [False, False, True, False, True, False]
    assert np.ma.getmaskarray(out["emg"])[4]  # the sentinel error too, not 9.99
    write_table(out, tmp_path / "members.csv")
    back = read_table(tmp_path / "members.csv")
    assert np.ma.getmaskarray(back["mg"])[4] and np.ma.getmaskarray(back["al"])[1]
    assert float(back["mg"][0]) == pytest.approx(0.1)


def test_from_arrays_accepts_nan_when_marginalising():
    x = np.array([[1.0, np.nan], [2.0, 0.5], [np.nan, 0.7]])
    err = np.array([[0.1, np.nan], [0.1, 0.2], [np.nan, 0.2]])
    cat = Catalogue.from_arrays(x, err, missing_features="marginalise")
    np.testing.assert_array_equal(cat.observed, ~np.isnan(x))
    with pytest.raises(ValueError, match=r"NaN, infinite or blank"):
        Catalogue.from_arrays(x, err)


def test_combined_epochs_with_missing_features():
    t = Table({"id": ["a", "a", "b"], "x": [1.0, np.nan, 2.0], "ex": [1.0, np.nan, 1.0],
               "y": [np.nan, 3.0, 4.0], "ey": [np.nan, 0.5, 0.5]})
    cat = read_catalogue(t, ["x", "y"], ["ex", "ey"], id_column="id", duplicates="combine",
                         missing_features="marginalise")
    assert cat.observed is None  # star a has x from one epoch and y from the other
    np.testing.assert_allclose(cat.values, [[1.0, 3.0], [2.0, 4.0]])
    assert list(cat.table["epoch_dof"]) == [0, 0]


def test_harps_sentinels_kept_as_missing_features(shared_data):
    path = shared_data / "harps_delgado_mena2017" / "DelgadoMena2017.fits"
    cat = read_catalogue(path, ["feh", "MgFe", "AlFe", "EuFe"], ["erfeh", "errMg", "errAl", "errEu"],
                         missing=9.99, error_floor=0.01, missing_features="marginalise")
    assert cat.n_stars == 1059  # "drop" keeps 1059 - 22 for AlFe alone (tests/test_real_data.py)
    assert cat.report.kept == {"with AlFe missing": 22, "with EuFe missing": 489}
    assert cat.report.floored == {"errMg": 21, "errAl": 229}
    assert (cat.observed.sum(axis=0) == [1059, 1059, 1037, 570]).all()


def test_missing_features_spec_key():
    data = {"path": "x.csv", "values": ["RV"], "errors": ["E_RV"], "missing_features": "marginalise"}
    spec = RunSpec.from_dict({"data": data, "model": {"kind": "cluster-field"}})
    assert RunSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match=r"\[data\] missing_features: 'impute' is not allowed; use one of "
                                        r"\['drop', 'marginalise'\]"):
        RunSpec.from_dict({"data": {**data, "missing_features": "impute"},
                           "model": {"kind": "cluster-field"}})


def test_subset_cuts_observed_with_the_rest_and_records_why():
    cat = _read(_abundances())
    keep = np.array([True, False, True, True, False, True])
    sub = cat.subset(keep, {"other group": ~keep})
    np.testing.assert_array_equal(sub.observed, cat.observed[keep])
    assert sub.n_stars == 4 and len(sub.table) == 4 and list(sub.source_rows) == [0, 2, 3, 5]
    assert sub.report.counts() == {"other group": 2} and cat.report.counts() == {}
    assert sub.report.n_kept == 4
    with pytest.raises(ValueError, match=r"keep has shape \(2,\); it must be \(6,\)"):
        cat.subset([True, False])
