"""Written tables read correctly by plain readers; provenance in sidecars, checked against the data.

A CSV written by ``write_table`` must be plain CSV: ``pandas.read_csv(path)`` and
``astropy.table.Table.read(path)`` with no options give the columns and values written.
Its provenance lives in ``<path>.json`` with the CSV's SHA-256.
"""

import hashlib
import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from astropy.table import MaskedColumn, Table
from conftest import REPO_ROOT

from bayesmix.catalogue import (
    TEXT_FLOAT_FLOOR,
    provenance_sidecar,
    read_provenance,
    read_table,
    write_table,
)

PROVENANCE = {"seed": 7, "config": {"K": 2, "names": ["cluster", "field"]}}


def _table():
    return Table({
        "name": ["s1", "NGC 288, field", "#12", "s4", "s5"],  # a comma and a leading '#' in values
        "RV": [-44.7, 2.8, 1e300, 1e-300, -0.1],
        "n": np.array([1, 2, 3, 4, 5]),
        "flag": [True, False, True, False, True],
        "p": [0.5, 1.0, 0.0, 7.4e-309, 3e-320],  # the last two are subnormal
        "e": MaskedColumn([0.1, 0.2, 0.3, 0.4, 0.5], mask=[False, True, False, False, False]),
    })


def _written_values(table):
    """What a CSV should hold: subnormals written as 0, masked entries as missing (NaN)."""
    p = np.asarray(table["p"], dtype=float)
    return {"RV": np.asarray(table["RV"]), "n": np.asarray(table["n"]),
            "p": np.where(np.abs(p) < TEXT_FLOAT_FLOOR, 0.0, p),
            "e": np.ma.filled(table["e"].astype(float), np.nan)}


def _floats(table, name):
    """A column as floats, missing values as NaN, from a DataFrame or an astropy Table."""
    if isinstance(table, pd.DataFrame):
        return table[name].to_numpy(dtype=float)
    return np.ma.filled(np.ma.asarray(table[name], dtype=float), np.nan)


def _read_all_ways(path):
    """pandas and astropy (guessed and explicit format), none given an option; warnings fail."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. astropy's overflow warning on subnormal numbers
        return {"pandas": pd.read_csv(path), "astropy": Table.read(path),
                "astropy ascii.csv": Table.read(path, format="ascii.csv")}


def test_csv_with_provenance_is_plain_csv_for_pandas_and_astropy(tmp_path):
    table = _table()
    path = write_table(table, tmp_path / "membership.csv", provenance=PROVENANCE)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(table.colnames) and len(lines) == 1 + len(table)
    expected = _written_values(table)
    for reader, back in _read_all_ways(path).items():
        names = list(back.columns) if reader == "pandas" else back.colnames
        assert names == table.colnames, reader
        for name, values in expected.items():
            np.testing.assert_array_equal(_floats(back, name), values, err_msg=f"{reader}: {name}")
        assert [str(v) for v in back["name"]] == list(table["name"]), reader
        assert [str(v) for v in back["flag"]] == [str(v) for v in table["flag"]], reader
    # bayesmix's own reader agrees (the row whose name starts with '#' included).
    assert list(read_table(path)["name"]) == list(table["name"])


def test_sidecar_round_trips_and_holds_the_csv_digest(tmp_path):
    path = write_table(_table(), tmp_path / "summary.csv", provenance=PROVENANCE)
    sidecar = provenance_sidecar(path)
    assert sidecar == tmp_path / "summary.csv.json"
    record = json.loads(sidecar.read_text())
    assert record == {"bayesmix_provenance": PROVENANCE, "table": "summary.csv",
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert read_provenance(path) == PROVENANCE
    assert {p.name for p in tmp_path.iterdir()} == {"summary.csv", "summary.csv.json"}


def test_changed_csv_makes_read_provenance_name_both_files(tmp_path):
    path = write_table(_table(), tmp_path / "membership.csv", provenance=PROVENANCE)
    text = path.read_text()
    assert "-44.7" in text
    path.write_text(text.replace("-44.7", "-44.8"))
    with pytest.raises(ValueError, match=r"membership\.csv\.json.*membership\.csv.*belongs to other data"):
        read_provenance(path)
    provenance_sidecar(path).write_text("{not json")
    with pytest.raises(ValueError, match=r"membership\.csv\.json: not a bayesmix provenance sidecar"):
        read_provenance(path)


def test_rewrite_without_provenance_removes_the_stale_sidecar(tmp_path):
    path = write_table(_table(), tmp_path / "scan.csv", provenance=PROVENANCE)
    assert provenance_sidecar(path).is_file()
    write_table(Table({"a": [1.0, 2.0]}), path)
    assert [p.name for p in tmp_path.iterdir()] == ["scan.csv"]
    assert read_provenance(path) is None
    # Provenance from the table's meta counts as given: the sidecar comes back.
    write_table(Table({"a": [3.0]}, meta={"bayesmix_provenance": {"seed": 1}}), path)
    assert read_provenance(path) == {"seed": 1}


def test_killed_between_sidecar_and_csv_is_detected_not_misattributed(tmp_path, monkeypatch):
    path = write_table(Table({"a": [1.0, 2.0]}), tmp_path / "t.csv", provenance={"seed": 1})
    before = path.read_bytes()
    real_replace = os.replace

    def killed_at_csv_rename(src, dst):
        if os.fspath(dst) == os.fspath(path):
            raise KeyboardInterrupt("killed before the CSV was renamed into place")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_csv_rename)
    with pytest.raises(KeyboardInterrupt):
        write_table(Table({"a": [3.0, 4.0]}), path, provenance={"seed": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old CSV, untouched
    assert json.loads(provenance_sidecar(path).read_text())["bayesmix_provenance"] == {"seed": 2}
    with pytest.raises(ValueError, match="belongs to other data"):
        read_provenance(path)  # never the new provenance for the old data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.csv.json"]  # no .tmp left


def test_csv_of_an_earlier_version_still_reads(tmp_path):
    path = tmp_path / "membership.csv"
    path.write_text('# bayesmix_provenance: {"seed": 3, "config": {"K": 2}}\nid,p_cluster\n1,0.25\n2,0.75\n')
    assert read_provenance(path) == {"seed": 3, "config": {"K": 2}}
    table = read_table(path)
    assert table.colnames == ["id", "p_cluster"]
    np.testing.assert_array_equal(np.asarray(table["p_cluster"]), [0.25, 0.75])
    plain = tmp_path / "plain.csv"
    plain.write_text("id,p\n1,0.5\n")
    assert read_provenance(plain) is None


def test_fit_writes_only_plain_csvs(tmp_path, capsys):
    """Every CSV of a short CLI run reads with pandas and astropy, no options, the same way;
    the run lists each CSV's provenance sidecar among the files it wrote."""
    from bayesmix.cli import main

    out = tmp_path / "run"
    argv = ["fit", str(REPO_ROOT / "models" / "demo.toml"), "--out", str(out), "--num-warmup", "60",
            "--num-samples", "60", "--num-chains", "2", "--no-cache", "--no-figures", "--exit-zero"]
    assert main(argv) == 0
    wrote = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote "))
    for name in ("summary.csv", "summary.csv.json", "membership.csv.json", "model_check.csv.json"):
        assert f" {name}," in wrote or f" {name} " in wrote, (name, wrote)
    assert "membership.fits.json" not in wrote
    members = read_table(out / "membership.fits")
    summary_columns = ["parameter", "mean", "sd", "p16", "p50", "p84", "hdi_3%", "hdi_97%",
                       "ess_bulk", "ess_tail", "r_hat", "mcse_mean"]
    expected = {
        "membership.csv": (members.colnames, len(members)),
        "summary.csv": (summary_columns, None),
        "model_check.csv": (["feature", "low", "high", "observed", "expected", "p2_5", "p97_5", "z",
                             "outside"], None),
    }
    written = {p.name: p for p in out.glob("*.csv")}
    assert set(written) == set(expected)
    for name, path in written.items():
        columns, n_rows = expected[name]
        read = _read_all_ways(path)
        assert list(read["pandas"].columns) == columns, name
        for reader in ("astropy", "astropy ascii.csv"):
            assert read[reader].colnames == columns, (name, reader)
        assert len({len(t) for t in read.values()}) == 1, name
        assert n_rows is None or len(read["pandas"]) == n_rows, name
        assert read_provenance(path)["seed"] == 0, name
    for col in members.colnames:
        if col.startswith("p_"):  # the FITS and CSV memberships agree, floor included
            np.testing.assert_array_equal(read_table(written["membership.csv"])[col], members[col])
    _check_arviz_complete(out / "posterior.nc", n_chains=2, n_draws=60, n_stars=len(members))


def _check_arviz_complete(path, *, n_chains, n_draws, n_stars):
    """ArviZ's and corner's own functions on ``posterior.nc`` opened with default options.

    The demo model: K = 2 components of one feature (RV), so one name per quantity gives
    six scalar rows: means and scales of each component and the two weights.
    """
    import arviz as az
    import corner
    import matplotlib.pyplot as plt

    from bayesmix import _arviz

    idata = az.from_netcdf(path)
    groups = {"posterior", "log_likelihood", "posterior_predictive", "sample_stats", "observed_data",
              "constant_data"}
    assert groups <= set(_arviz.group_names(idata)), _arviz.group_names(idata)
    assert sorted(idata.posterior.data_vars) == ["means", "scales", "weights"]
    table = az.summary(idata)
    assert list(table.index) == ["means[cluster, RV]", "means[field, RV]", "scales[cluster, RV]",
                                 "scales[field, RV]", "weights[cluster]", "weights[field]"]
    assert idata.log_likelihood["values"].shape == (n_chains, n_draws, n_stars)
    assert idata.posterior_predictive["values"].shape[2:] == (n_stars, 1)
    loo = az.loo(idata)
    elpd = loo.elpd if _arviz.ARVIZ_MAJOR >= 1 else loo.elpd_loo
    assert np.isfinite(elpd) and len(np.asarray(loo.pareto_k)) == n_stars
    assert len(corner.corner(idata).axes) == 6 * 6
    plt.close("all")
    if _arviz.ARVIZ_MAJOR >= 1:
        az.plot_ppc_dist(idata)
        assert len(plt.gcf().axes) == 1  # one observed variable
        plt.close("all")
        az.plot_trace_dist(idata)
    else:
        assert np.size(az.plot_ppc(idata)) == 1
        plt.close("all")
        az.plot_trace(idata)
    assert len(plt.gcf().axes) == 3 * 2  # means, scales, weights: density and trace each
    plt.close("all")
