"""Catalogue I/O on synthetic tables: cuts and their counts, error covariances, bad input, writing."""

import json
import logging

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayesmix.catalogue import (
    Catalogue,
    FixedWidthLayout,
    read_catalogue,
    read_provenance,
    read_table,
    write_table,
)


def make_table(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return Table(
        {
            "name": [f"star{i}" for i in range(n)],
            "group": ["A" if i % 2 == 0 else "B" for i in range(n)],
            "x": rng.normal(size=n),
            "ex": rng.uniform(0.1, 0.2, size=n),
            "y": rng.normal(size=n),
            "ey": rng.uniform(0.1, 0.2, size=n),
            "rho": rng.uniform(-0.5, 0.5, size=n),
            "r": rng.uniform(1, 100, size=n),
            "flag": np.zeros(n, dtype=int),
        }
    )


def test_values_errors_correlations_build_covariances():
    t = make_table()
    cat = read_catalogue(t, values=["x", "y"], errors=["ex", "ey"], correlations={("x", "y"): "rho"},
                         id_column="name", covariates="r")
    assert cat.values.shape == (10, 2) and cat.error_covs.shape == (10, 2, 2)
    ex, ey, rho = (np.asarray(t[c]) for c in ("ex", "ey", "rho"))
    np.testing.assert_allclose(cat.error_covs[:, 0, 0], ex**2)
    np.testing.assert_allclose(cat.error_covs[:, 1, 1], ey**2)
    np.testing.assert_allclose(cat.error_covs[:, 0, 1], rho * ex * ey)
    np.testing.assert_allclose(cat.error_covs[:, 1, 0], rho * ex * ey)
    np.testing.assert_allclose(cat.errors, np.column_stack([ex, ey]))
    assert list(cat.ids) == list(t["name"]) and cat.feature_names == ("x", "y")
    np.testing.assert_array_equal(cat.covariates["r"], np.asarray(t["r"]))
    assert cat.report.n_dropped == 0 and cat.n_stars == 10 and cat.n_features == 2


def test_error_free_feature_and_no_errors():
    t = make_table()
    cat = read_catalogue(t, values=["x", "y"], errors=["ex", None])
    np.testing.assert_allclose(cat.error_covs[:, 1, 1], 0.0)
    cat = read_catalogue(t, values="x")
    assert cat.error_covs.shape == (10, 1, 1) and np.all(cat.error_covs == 0)


def test_whole_error_covariance_column():
    t = make_table(5)
    covs = np.array([[[0.04, 0.01], [0.01, 0.09]]] * 5)
    t["cov"] = covs
    cat = read_catalogue(t, values=["x", "y"], error_cov_column="cov")
    np.testing.assert_allclose(cat.error_covs, covs)


def test_cuts_count_each_reason_once_in_order():
    t = make_table(12)
    t["flag"][[1, 2]] = [1, 3]           # row 1 is group B (dropped by select first)
    t["x"][4] = 9.99                     # sentinel
    t["y"][6] = np.nan                   # non-finite
    t["r"][8] = 500.0                    # out of range
    t["x"][10] = -9999.99                # second sentinel
    cat = read_catalogue(t, values=["x", "y"], errors=["ex", "ey"], covariates=["r"],
                         select={"group": "A"}, zero_flags="flag", missing=[9.99, -9999.99],
                         drop_nonfinite=True, ranges={"r": (None, 200)})
    counts = cat.report.counts()
    assert counts == {
        "select: group != 'A'": 6,
        "flag: flag != 0": 1,
        "missing: x == 9.99": 1,
        "missing: x == -9999.99": 1,
        "nonfinite: y": 1,
        "range: r outside [None, 200]": 1,
    }
    assert cat.n_stars == 1
    np.testing.assert_array_equal(cat.source_rows, [0])
    assert cat.report.n_kept == cat.n_stars
    # The dropped rows are recorded by source index.
    np.testing.assert_array_equal(cat.report.dropped["missing: x == 9.99"], [4])
    np.testing.assert_array_equal(cat.report.dropped["range: r outside [None, 200]"], [8])


def test_drops_are_logged_as_warning_and_selection_as_info(caplog):
    t = make_table(6)
    t["x"][0] = 9.99
    with caplog.at_level(logging.INFO, logger="bayesmix.catalogue"):
        read_catalogue(t, values="x", errors="ex", select={"group": "A"})
    assert any(r.levelno == logging.INFO and "select: group" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bayesmix.catalogue"):
        read_catalogue(t, values="x", errors="ex", missing=9.99)
    assert any(r.levelno == logging.WARNING and "missing: x == 9.99" in r.getMessage()
               for r in caplog.records)


def test_sentinels_match_in_float32():
    t = make_table(4)
    t["x"] = np.array([9.99, 1.0, 2.0, 3.0], dtype=np.float32)
    cat = read_catalogue(t, values="x", missing=9.99)
    assert cat.report.counts() == {"missing: x == 9.99": 1}


def test_per_column_missing_spec():
    t = make_table(4)
    t["x"][0] = 9.99
    t["y"][1] = 9.99
    cat = read_catalogue(t, values=["x", "y"], missing={"y": 9.99})
    assert cat.report.counts() == {"missing: y == 9.99": 1}


def test_error_floor_raises_small_errors_and_reports_them():
    t = make_table(5)
    t["ex"][[0, 3]] = [0.0, 0.005]
    cat = read_catalogue(t, values="x", errors="ex", error_floor=0.01)
    assert cat.report.floored == {"ex": 2}
    assert cat.n_stars == 5
    np.testing.assert_allclose(cat.errors[[0, 3], 0], [0.01, 0.01])
    cat = read_catalogue(t, values=["x", "y"], errors=["ex", "ey"], error_floor={"ex": 0.02})
    assert cat.report.floored == {"ex": 2}


@pytest.mark.parametrize("how,kept", [("first", [0, 2, 3]), ("best", [1, 2, 3])])
def test_duplicate_ids(how, kept):
    t = make_table(4)
    t["name"] = ["a", "a", "b", "c"]
    t["ex"][:2] = [0.5, 0.1]
    cat = read_catalogue(t, values="x", errors="ex", id_column="name", duplicates=how)
    np.testing.assert_array_equal(np.sort(cat.source_rows), kept)
    assert sum(cat.report.counts().values()) == 1


def test_duplicate_ids_error_by_default():
    t = make_table(4)
    t["name"] = ["a", "a", "b", "c"]
    with pytest.raises(ValueError, match=r"repeats 1 id.*'a'.*duplicates='first'"):
        read_catalogue(t, values="x", id_column="name")


def test_masked_entries_are_non_finite():
    t = make_table(4)
    t["x"] = MaskedColumn(np.asarray(t["x"]), mask=[False, True, False, False])
    with pytest.raises(ValueError, match=r"'x' has 1 NaN, infinite or blank.*drop_nonfinite=True"):
        read_catalogue(t, values="x")
    cat = read_catalogue(t, values="x", drop_nonfinite=True)
    assert cat.report.counts() == {"nonfinite: x": 1}


def test_nan_outside_the_selection_is_not_an_error():
    t = make_table(4)
    t["x"][1] = np.nan  # group B
    cat = read_catalogue(t, values="x", select={"group": "A"})
    assert cat.n_stars == 2


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"values": "xx"}, r"value column 'xx' is not in the table\. Did you mean 'x'"),
        ({"values": "x", "errors": "e_x"}, "error column 'e_x' is not in the table"),
        ({"values": "name"}, r"value column 'name' is not numeric \(dtype"),
        ({"values": ["x", "y"], "errors": ["ex"]}, "one error column per value column"),
        ({"values": "x", "select": {"group": "C"}}, "matches no row.*'A', 'B'"),
        ({"values": "x", "select": {"grp": "A"}}, "select column 'grp'"),
        ({"values": "x", "covariates": ["rr"]}, "covariate column 'rr'"),
        ({"values": "x", "ranges": {"r": (200, None)}}, "no rows left after the cuts"),
        ({"values": "x", "duplicates": "last", "id_column": "name"}, "duplicates='last'"),
        ({"values": []}, "at least one column"),
        ({"values": ["x", "x"]}, "twice"),
        ({"values": "x", "errors": "ex", "error_floor": -1}, "error_floor.*positive"),
        ({"values": ["x", "y"], "errors": ["ex", "ey"], "correlations": {("x", "z"): "rho"}},
         "pair of distinct value columns"),
        ({"values": ["x", "y"], "error_cov_column": "ex"}, "holds .* arrays per row|numeric"),
    ],
)
def test_bad_requests_name_the_column_and_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        read_catalogue(make_table(), **kwargs)


def test_zero_error_without_floor_names_column_and_fix():
    t = make_table(5)
    t["ex"][2] = 0.0
    with pytest.raises(ValueError, match=r"'ex' has 1 zero .*source rows 2.*error_floor="):
        read_catalogue(t, values="x", errors="ex")


def test_negative_error_is_rejected_even_with_floor():
    t = make_table(5)
    t["ex"][3] = -0.1
    with pytest.raises(ValueError, match=r"'ex' has 1 negative.*missing=<value>"):
        read_catalogue(t, values="x", errors="ex", error_floor=0.01)


def test_correlation_of_one_is_singular():
    t = make_table(5)
    t["rho"][1] = 1.0
    with pytest.raises(ValueError, match=r"'rho'.*\|rho\| >= 1.*strictly in \(-1, 1\)"):
        read_catalogue(t, values=["x", "y"], errors=["ex", "ey"], correlations={("x", "y"): "rho"})


def test_non_positive_definite_whole_covariance():
    t = make_table(3)
    t["cov"] = np.array([[[1.0, 2.0], [2.0, 1.0]]] * 3)
    with pytest.raises(ValueError, match=r"'cov'.*not positive definite"):
        read_catalogue(t, values=["x", "y"], error_cov_column="cov")


def test_whole_covariance_with_wrong_dimension():
    t = make_table(3)
    t["cov"] = np.ones((3, 3, 3))
    with pytest.raises(ValueError, match=r"holds \(3, 3\) arrays per row; 2 value columns"):
        read_catalogue(t, values=["x", "y"], error_cov_column="cov")


def test_empty_table():
    with pytest.raises(ValueError, match="has no rows"):
        read_catalogue(make_table()[:0], values="x")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 20),
    bad_value=st.sampled_from([np.nan, np.inf, -np.inf]),
    data=st.data(),
)
def test_any_non_finite_value_is_rejected_or_dropped_and_counted(n, bad_value, data):
    t = make_table(n, seed=n)
    bad_rows = data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n))
    column = data.draw(st.sampled_from(["x", "ex", "r"]))
    for i in bad_rows:
        t[column][i] = bad_value
    with pytest.raises(ValueError, match=f"'{column}' has {len(bad_rows)} NaN"):
        read_catalogue(t, values="x", errors="ex", covariates=["r"])
    if len(bad_rows) == n:
        with pytest.raises(ValueError, match="no rows left"):
            read_catalogue(t, values="x", errors="ex", covariates=["r"], drop_nonfinite=True)
    else:
        cat = read_catalogue(t, values="x", errors="ex", covariates=["r"], drop_nonfinite=True)
        assert cat.report.counts() == {f"nonfinite: {column}": len(bad_rows)}
        assert cat.n_stars + len(bad_rows) == n
        assert set(cat.source_rows).isdisjoint(bad_rows)


@settings(max_examples=40, deadline=None)
@given(errors=st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=1, max_size=15))
def test_errors_accepted_iff_variance_positive(errors):
    # An error whose square underflows (1e-181) is a zero variance, and is refused as one.
    t = Table({"x": np.zeros(len(errors)), "ex": np.array(errors)})
    if min(errors) > 0 and min(np.square(errors)) > 0:
        cat = read_catalogue(t, values="x", errors="ex")
        np.testing.assert_allclose(cat.errors[:, 0], errors)
    else:
        with pytest.raises(ValueError, match=r"'ex' has .* (negative|zero)"):
            read_catalogue(t, values="x", errors="ex")


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".fits", ".csv", ".ecsv", ".vot"])
def test_round_trip_with_provenance(tmp_path, suffix):
    t = make_table(6)
    cat = read_catalogue(t, values=["x", "y"], errors=["ex", "ey"], id_column="name")
    probs = np.linspace(0, 1, 6)
    out = cat.with_columns({"p_member": probs}, provenance={"seed": 7, "config": {"K": 2}})
    assert out.colnames[: len(t.colnames)] == t.colnames
    path = write_table(out, tmp_path / f"result{suffix}")
    back = read_table(path)
    np.testing.assert_allclose(np.asarray(back["p_member"]), probs)
    np.testing.assert_allclose(np.asarray(back["x"]), np.asarray(t["x"]))
    prov = read_provenance(path)
    assert prov["seed"] == 7 and prov["config"] == {"K": 2}
    # A CSV keeps its provenance in a sidecar; the other formats in the file itself.
    expected = {f"result{suffix}"} | ({"result.csv.json"} if suffix == ".csv" else set())
    assert {p.name for p in tmp_path.iterdir()} == expected


def test_make_provenance_has_version():
    from bayesmix import __version__
    from bayesmix.catalogue import make_provenance

    prov = make_provenance(seed=3)
    assert prov["bayesmix_version"] == __version__ and prov["seed"] == 3
    json.dumps(prov)


def test_interrupted_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "result.fits"
    write_table(Table({"a": [1.0, 2.0]}), path)
    before = path.read_bytes()

    def boom(self, *args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(Table, "write", boom)
    with pytest.raises(KeyboardInterrupt):
        write_table(Table({"a": [3.0, 4.0]}), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["result.fits"]


def test_with_columns_refuses_to_overwrite_or_misalign():
    cat = read_catalogue(make_table(4), values="x")
    with pytest.raises(ValueError, match="overwrite an input column"):
        cat.with_columns({"x": np.zeros(4)})
    with pytest.raises(ValueError, match="first dimension must be n_stars=4"):
        cat.with_columns({"p": np.zeros(3)})


def test_from_arrays_round_trip():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 2))
    err = rng.uniform(0.1, 0.3, size=(7, 2))
    cat = Catalogue.from_arrays(x, err, feature_names=["a", "b"], covariates={"r": np.arange(7.0)})
    np.testing.assert_allclose(cat.values, x)
    np.testing.assert_allclose(cat.errors, err)
    covs = np.einsum("ni,ij->nij", err**2, np.eye(2))
    cat = Catalogue.from_arrays(x, covs)
    np.testing.assert_allclose(cat.error_covs, covs)
    with pytest.raises(ValueError, match="one standard error per value"):
        Catalogue.from_arrays(x, err[:, :1])


def test_fixed_width_with_user_layout_and_overflow(tmp_path, caplog):
    text = "name   a     b\n" + "s 1    1.50  2.00\n" + "s 2   12.25  3.50\n" + "s 3   1.0 999.0\n"
    path = tmp_path / "t.txt"
    path.write_text(text)
    layout = FixedWidthLayout(names=("name", "a", "b"), spans=((0, 4), (4, 11), (11, 17)),
                              header_lines=1, text_columns=("name",))
    with caplog.at_level(logging.WARNING):
        table = read_table(path, layout=layout)
    assert list(table["name"]) == ["s 1", "s 2", "s 3"]
    np.testing.assert_allclose(np.asarray(table["a"][:2]), [1.5, 12.25])
    assert table.meta["malformed_rows"] == [2]
    assert "overflow" in caplog.text
    cat = read_catalogue(table, values=["a", "b"])
    assert cat.report.counts() == {"malformed: row overflows its fixed-width fields": 1}


def test_unknown_format_and_layout(tmp_path):
    path = tmp_path / "t.weird"
    path.write_text("a\n1\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_table(path)
    with pytest.raises(ValueError, match="layout='nope' is unknown"):
        read_table(path, format="fixed_width", layout="nope")
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "missing.csv")
    unparseable = tmp_path / "u.txt"
    unparseable.write_text("a b c\n1 2\n3 4 5 6\n")
    with pytest.raises(ValueError, match=r"could not parse.*layout="):
        read_table(unparseable)


def test_csv_refuses_multidimensional_columns(tmp_path):
    t = Table({"a": [1.0, 2.0], "cov": np.zeros((2, 2, 2))})
    with pytest.raises(ValueError, match=r"CSV cannot hold.*'cov'.*\.fits or \.ecsv"):
        write_table(t, tmp_path / "x.csv")
    assert list(tmp_path.iterdir()) == []
