"""Repeat epochs combined per star (duplicates="combine"): the GLS mean, its covariance and the
variability chi-square against brute force, calibration, binaries, the drop report, blank ids."""

import logging

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table
from scipy import stats

from bayesmix.catalogue import EPOCH_COLUMNS, combine_epochs, read_catalogue, read_table
from bayesmix.config import RunSpec, SpecError


def _random_covs(rng, n, d, correlated=True):
    a = rng.normal(size=(n, d, d)) * (0.3 if correlated else 0.0)
    sig = rng.uniform(0.2, 2.0, size=(n, d))
    covs = np.einsum("nij,nkj->nik", a, a) + np.einsum("ni,ij->nij", sig**2, np.eye(d))
    return covs


def _brute_force(x, covs, groups, observed):
    """One star at a time, with explicit sub-matrix inverses."""
    out = []
    for m in range(groups.max() + 1):
        rows = np.flatnonzero(groups == m)
        d = x.shape[1]
        total, rhs = np.zeros((d, d)), np.zeros(d)
        precs = []
        for i in rows:
            idx = np.flatnonzero(observed[i])
            p = np.zeros((d, d))
            if idx.size:
                p[np.ix_(idx, idx)] = np.linalg.inv(covs[i][np.ix_(idx, idx)])
            precs.append(p)
            total += p
            rhs += p @ np.where(observed[i], x[i], 0.0)
        seen = observed[rows].any(axis=0)
        idx = np.flatnonzero(seen)
        cov = np.zeros((d, d))
        cov[np.ix_(idx, idx)] = np.linalg.inv(total[np.ix_(idx, idx)])
        mean = cov @ rhs
        chi2 = sum(float(np.where(observed[i], x[i] - mean, 0) @ p @ np.where(observed[i], x[i] - mean, 0))
                   for i, p in zip(rows, precs, strict=True))
        dof = int(observed[rows].sum()) - idx.size
        out.append((np.where(seen, mean, np.nan), cov, chi2, dof, len(rows)))
    return out


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("with_missing", [False, True])
def test_combination_matches_brute_force(d, with_missing):
    rng = np.random.default_rng(10 * d + with_missing)
    n_epochs = rng.integers(1, 6, size=40)
    groups = np.repeat(np.arange(40), n_epochs)
    rng.shuffle(groups)  # epochs of a star need not be adjacent
    x = rng.normal(size=(groups.size, d)) * 3
    covs = _random_covs(rng, groups.size, d)
    observed = np.ones(x.shape, bool)
    if with_missing:
        observed = rng.uniform(size=x.shape) > 0.3
        observed[np.arange(groups.size), rng.integers(0, d, groups.size)] = True  # one feature each
        x[~observed] = np.nan
    got = combine_epochs(x, covs, groups, observed=observed if with_missing else None)
    for m, (mean, cov, chi2, dof, n) in enumerate(_brute_force(x, covs, groups, observed)):
        np.testing.assert_allclose(got.values[m], mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.covs[m], cov, rtol=1e-9, atol=1e-12)
        assert got.chi2[m] == pytest.approx(chi2, rel=1e-8, abs=1e-10)
        assert got.dof[m] == dof and got.n_epochs[m] == n
        expected_p = stats.chi2.sf(chi2, dof) if dof > 0 else 1.0
        assert got.p[m] == pytest.approx(expected_p, rel=1e-8, abs=1e-300)
    if not with_missing:
        np.testing.assert_array_equal(got.dof, (n_epochs[: got.dof.size] * 0 + np.bincount(groups) - 1) * d)


def test_single_epoch_stars_have_chi2_zero_dof_zero_p_one():
    got = combine_epochs([[1.0, 2.0], [3.0, 4.0]], np.eye(2)[None].repeat(2, 0) * 0.25, [0, 1])
    np.testing.assert_array_equal(got.chi2, 0.0)
    np.testing.assert_array_equal(got.dof, 0)
    np.testing.assert_array_equal(got.p, 1.0)
    np.testing.assert_allclose(got.values, [[1.0, 2.0], [3.0, 4.0]])


def test_chi2_is_calibrated_for_constant_stars():
    rng = np.random.default_rng(3)
    n_stars, n_ep, d = 2000, 3, 2
    groups = np.repeat(np.arange(n_stars), n_ep)
    covs = _random_covs(rng, groups.size, d)
    noise = np.einsum("nij,nj->ni", np.linalg.cholesky(covs), rng.normal(size=(groups.size, d)))
    truth = rng.normal(size=(n_stars, d)) * 10
    got = combine_epochs(truth[groups] + noise, covs, groups)
    assert (got.dof == (n_ep - 1) * d).all()
    assert stats.kstest(got.p, "uniform").pvalue > 1e-3
    assert 0.03 < np.mean(got.p < 0.05) < 0.07
    # With strongly correlated errors, a chi-square that ignored the correlations would not be uniform:
    strong = np.array([[1.0, 0.9], [0.9, 1.0]]) * rng.uniform(0.5, 2.0, size=(groups.size, 1, 1))
    noise = np.einsum("nij,nj->ni", np.linalg.cholesky(strong), rng.normal(size=(groups.size, d)))
    right = combine_epochs(truth[groups] + noise, strong, groups)
    wrong = combine_epochs(truth[groups] + noise, strong * np.eye(d), groups)
    assert stats.kstest(right.p, "uniform").pvalue > 1e-3
    assert stats.kstest(wrong.p, "uniform").pvalue < 1e-3


def _epochs_table(rng, n_stars=30, n_ep=4, jump_star=None):
    ids = np.repeat([f"S{i:03d}" for i in range(n_stars)], n_ep)
    truth = np.repeat(rng.normal(0, 10, n_stars), n_ep)
    err = rng.uniform(0.5, 1.5, ids.size)
    rv = truth + err * rng.normal(size=ids.size)
    if jump_star is not None:  # a binary: +-20 km/s swings at 1 km/s errors
        rows = np.flatnonzero(ids == jump_star)
        rv[rows] += 20.0 * np.array([1, -1, 1, -1][: rows.size])
    return Table({"id": ids, "rv": rv, "erv": err, "R": rng.uniform(1, 10, ids.size),
                  "field": [f"f{i}" for i in range(ids.size)]})


def test_binary_is_flagged_and_dropped_and_the_report_counts():
    rng = np.random.default_rng(4)
    t = _epochs_table(rng, jump_star="S007")
    cat = read_catalogue(t, "rv", "erv", id_column="id", covariates="R", duplicates="combine")
    assert cat.n_stars == 30 and list(cat.ids) == [f"S{i:03d}" for i in range(30)]
    p = np.asarray(cat.table["epoch_p"])
    assert p[7] < 1e-3 and np.sum(p < 1e-3) == 1
    assert cat.report.counts() == {"combined: 120 rows into 30 stars": 90}
    assert set(EPOCH_COLUMNS) <= set(cat.table.colnames)
    cut = read_catalogue(t, "rv", "erv", id_column="id", duplicates="combine", drop_variable_p=0.001)
    assert cut.report.counts() == {"combined: 120 rows into 30 stars": 90, "variable: epoch_p < 0.001": 1}
    assert "S007" not in list(cut.ids) and cut.n_stars == 29 and cut.report.n_kept == 29


def test_combined_star_values_errors_covariates_and_other_columns():
    t = Table({"id": ["a", "b", "a", "a"], "rv": [1.0, 5.0, 3.0, 2.0], "erv": [1.0, 1.0, 1.0, 2.0],
               "R": [1.0, 7.0, 2.0, 6.0], "note": ["first", "b", "second", "third"]})
    t["rv"].unit = "km/s"
    cat = read_catalogue(t, "rv", "erv", id_column="id", covariates="R", duplicates="combine")
    w = np.array([1.0, 1.0, 0.25])
    mean = np.sum(w * [1.0, 3.0, 2.0]) / w.sum()
    assert cat.values[:, 0] == pytest.approx([mean, 5.0])
    assert cat.error_covs[:, 0, 0] == pytest.approx([1 / w.sum(), 1.0])
    assert cat.covariates["R"] == pytest.approx([3.0, 7.0])  # numeric covariates: the mean over epochs
    row = cat.table[0]
    assert row["note"] == "first" and row["n_epochs"] == 3 and row["epoch_dof"] == 2
    assert row["rv"] == pytest.approx(mean) and row["erv"] == pytest.approx(w.sum() ** -0.5)
    assert cat.table["rv"].unit == "km/s"
    assert list(cat.source_rows) == [0, 1]


def test_blank_and_masked_ids_are_never_merged():
    ids = MaskedColumn(["x", "", "x", "  ", "y", "z"], mask=[False, False, False, False, False, True])
    t = Table({"id": ids, "v": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "ev": np.ones(6)})
    cat = read_catalogue(t, "v", "ev", id_column="id", duplicates="combine")
    assert cat.n_stars == 5 and cat.report.counts() == {"combined: 2 rows into 1 stars": 1}
    # The other modes treat blanks alike: the blanks do not repeat an id.
    first = read_catalogue(t, "v", "ev", id_column="id", duplicates="first")
    assert first.n_stars == 5
    with pytest.raises(ValueError, match=r"repeats 1 id\(s\) \(e.g. 'x'\)"):
        read_catalogue(t, "v", "ev", id_column="id")


def test_correlated_two_feature_epochs_keep_their_correlation_column():
    rng = np.random.default_rng(5)
    t = Table({"id": ["a"] * 3 + ["b"], "x": rng.normal(size=4), "y": rng.normal(size=4),
               "ex": [0.5, 0.6, 0.7, 0.5], "ey": [0.4, 0.3, 0.5, 0.5], "rho": [0.5, -0.3, 0.2, 0.1]})
    cat = read_catalogue(t, ["x", "y"], ["ex", "ey"], correlations={("x", "y"): "rho"}, id_column="id",
                         duplicates="combine")
    covs = np.array([[[ex**2, r * ex * ey], [r * ex * ey, ey**2]]
                     for ex, ey, r in zip(t["ex"], t["ey"], t["rho"], strict=True)])
    ref = combine_epochs(np.column_stack([t["x"], t["y"]]), covs, [0, 0, 0, 1])
    np.testing.assert_allclose(cat.error_covs, ref.covs)
    c = ref.covs[0]
    assert cat.table["rho"][0] == pytest.approx(c[0, 1] / np.sqrt(c[0, 0] * c[1, 1]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"duplicates": "combine"}, r"duplicates='combine' needs id_column="),
        ({"duplicates": "combine", "id_column": "id", "errors": None}, r"every value column needs an error"),
        ({"id_column": "id", "drop_variable_p": 0.01}, r"drop_variable_p applies to combined repeat epochs"),
        ({"id_column": "id", "duplicates": "combine", "drop_variable_p": 1.5}, r"probability in \(0, 1\)"),
        ({"id_column": "id", "duplicates": "merge"}, r"duplicates='merge'; use one of"),
    ],
)
def test_bad_epoch_options_are_named(kwargs, match):
    t = Table({"id": ["a", "a"], "v": [1.0, 2.0], "ev": [1.0, 1.0]})
    kwargs = {"errors": "ev", **kwargs}
    with pytest.raises(ValueError, match=match):
        read_catalogue(t, "v", **kwargs)


def test_epoch_column_clash_is_named():
    t = Table({"id": ["a", "a"], "v": [1.0, 2.0], "ev": [1.0, 1.0], "n_epochs": [1, 1]})
    with pytest.raises(ValueError, match=r"adds the column\(s\) \['n_epochs'\]"):
        read_catalogue(t, "v", "ev", id_column="id", duplicates="combine")


def test_baumgardt_repeated_ids_are_copies_not_epochs(shared_data, caplog):
    """The 2MASS ids repeated in Baumgardt's table are stars listed under two neighbouring clusters
    with the same (already epoch-combined, NRV) velocity: combining them is flagged."""
    path = shared_data / "baumgardt_gc_rv" / "appendix_combined_table.txt"
    table = read_table(path)
    with caplog.at_level(logging.WARNING, logger="bayesmix.catalogue"):
        cat = read_catalogue(table, "RV", "E_RV", id_column="TWOMASS_ID", duplicates="combine")
    assert cat.report.counts()["combined: 262 rows into 131 stars"] == 131
    # 129 pairs are exact copies; 2 differ a little (chi2 0.006 and 1.6, both in NGC 6522 / 6528).
    assert "129 star(s) with repeated TWOMASS_ID have identical values" in caplog.text
    assert (np.asarray(cat.table["epoch_p"]) > 0.1).all()
    blank = np.char.strip(np.asarray(table["TWOMASS_ID"].filled("")).astype(str)) == ""
    assert blank.sum() > 16000 and cat.n_stars == len(table) - 1 - 131  # blanks are not merged; 1 malformed
    one = read_catalogue(table, "RV", "E_RV", id_column="TWOMASS_ID", duplicates="combine",
                         select={"Cluster": "NGC 288"})
    assert one.n_stars == 386 and (np.asarray(one.table["n_epochs"]) == 1).all()


def test_epoch_spec_keys_round_trip_and_are_checked():
    data = {"path": "x.csv", "values": ["RV"], "errors": ["E_RV"], "id_column": "ID", "duplicates": "combine",
            "drop_variable_p": 0.001}
    spec = RunSpec.from_dict({"data": data, "model": {"kind": "cluster-field"}})
    assert RunSpec.from_dict(spec.to_dict()) == spec and spec.data.drop_variable_p == 0.001
    with pytest.raises(SpecError, match=r"\[data\] drop_variable_p: applies to combined repeat epochs"):
        RunSpec.from_dict({"data": {**data, "duplicates": "first"}, "model": {"kind": "cluster-field"}})
    with pytest.raises(SpecError, match=r"\[data\] drop_variable_p: must be < 1.0"):
        RunSpec.from_dict({"data": {**data, "drop_variable_p": 1.0}, "model": {"kind": "cluster-field"}})
    no_id = {k: v for k, v in data.items() if k != "id_column"}
    with pytest.raises(SpecError, match=r"\[data\] duplicates: \"combine\" merges the rows of each star"):
        RunSpec.from_dict({"data": no_id, "model": {"kind": "cluster-field"}})


def test_whole_covariance_column_is_combined_and_written_back():
    rng = np.random.default_rng(6)
    covs = _random_covs(rng, 5, 2)
    x = rng.normal(size=(5, 2))
    t = Table({"id": [1, 2, 1, 1, 2], "x": x[:, 0], "y": x[:, 1], "cov": covs})
    cat = read_catalogue(t, ["x", "y"], error_cov_column="cov", id_column="id", duplicates="combine")
    ref = combine_epochs(x, covs, [0, 1, 0, 0, 1])
    np.testing.assert_allclose(cat.values, ref.values)
    np.testing.assert_allclose(cat.error_covs, ref.covs)
    np.testing.assert_allclose(np.asarray(cat.table["cov"]), ref.covs)
    assert list(cat.table["epoch_dof"]) == [4, 2] and list(cat.ids) == [1, 2]
