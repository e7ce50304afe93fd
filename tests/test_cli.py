"""``bayesmix fit`` and ``scan`` in-process over every model file; resume after a kill; bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import arviz as az
import numpy as np
import pytest
from conftest import REPO_ROOT

from bayesmix import __version__
from bayesmix.catalogue import read_provenance, read_table
from bayesmix.cli import EXIT_CHECKS_FAILED, EXIT_OK, main
from bayesmix.config import load_spec
from bayesmix.sampling import checkpoint_draws

# A [groups] spec (many clusters in one program) writes its own outputs (clusters.csv, no EM fit):
# tests/test_clusters.py::test_baumgardt_clusters_through_the_cli runs it through the CLI.
MODEL_FILES = [p for p in sorted((REPO_ROOT / "models").glob("*.toml")) if load_spec(p).groups is None]
SMALL = ["--num-warmup", "60", "--num-samples", "60", "--num-chains", "2", "--no-cache"]


def _needs_data(spec_path, shared_data_fixture):
    if load_spec(spec_path).data.path is not None:
        shared_data_fixture()  # skips (or fails under BAYESMIX_REQUIRE_SHARED_DATA=1) without ../shared


@pytest.fixture
def require_shared(request):
    return lambda: request.getfixturevalue("shared_data")


@pytest.mark.parametrize("spec_path", MODEL_FILES, ids=lambda p: p.stem)
def test_fit_runs_every_model_file_and_writes_checked_outputs(spec_path, require_shared, tmp_path, capsys):
    _needs_data(spec_path, require_shared)
    spec = load_spec(spec_path)
    out = tmp_path / "run"
    # Figures for one 1-D and one 2-D case (they are tested on their own in test_plotting).
    figures = [] if spec_path.stem in ("demo", "disc_harps") else ["--no-figures"]
    # Runs this short may fail a check (exit 3); --exit-zero keeps 0, and the outputs are written either way.
    argv = ["fit", str(spec_path), "--out", str(out), "--seed", "1", *SMALL, *figures, "--exit-zero"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "r_hat" in printed and "wrote" in printed
    assert "model check passed" in printed or "MODEL MISFIT" in printed

    stars = read_table(out / "membership.fits")
    names = ["cluster", "field"] if spec.model.kind == "cluster-field" else list(spec.model.component_names)
    p = np.column_stack([np.asarray(stars[f"p_{n}"]) for n in names])
    assert np.all((p >= 0) & (p <= 1)) and np.allclose(p.sum(axis=1), 1.0)
    for n in names:  # (a skewed posterior's mean may lie outside its 16-84% interval)
        assert np.all(stars[f"p_{n}_16"] <= stars[f"p_{n}_84"])
    assert set(np.unique(np.asarray(stars["label"]).astype(str))) <= set(names)
    input_columns = spec.data.values or ("RV",)
    assert set(input_columns) <= set(stars.colnames)  # the input rows come back whole
    assert len(read_table(out / "membership.csv")) == len(stars)

    for path in (out / "membership.fits", out / "membership.csv", out / "summary.csv"):
        prov = read_provenance(path)
        assert prov["bayesmix_version"] == __version__ and prov["seed"] == 1
        assert prov["spec"]["model"] == spec.to_dict()["model"]
        assert prov["dropped_rows"]["n_kept"] == len(stars)
    summary = read_table(out / "summary.csv")
    assert {"parameter", "mean", "sd", "p16", "p84", "r_hat", "ess_bulk"} <= set(summary.colnames)
    assert np.all(np.asarray(summary["sd"]) >= 0)
    idata = az.from_netcdf(out / "posterior.nc")
    assert idata.posterior.sizes["chain"] == 2 and idata.posterior.sizes["draw"] == 60
    assert json.loads(idata.attrs["bayesmix_provenance"])["spec"]["name"] == spec.name
    em = json.loads((out / "em.json").read_text())
    assert len(em["weights"]) == spec.model.k and em["provenance"]["seed"] == 1
    # Every start and the distinct optima they reached, best first, the first being the kept fit.
    assert len(em["starts"]["kinds"]) == len(em["starts"]["objectives"]) >= spec.em.n_init
    objectives = [o["objective"] for o in em["optima"]]
    assert objectives == sorted(objectives, reverse=True) and em["optima"][0]["weights"] == em["weights"]
    check = read_table(out / "model_check.csv")
    assert {"feature", "low", "high", "observed", "expected", "p2_5", "p97_5", "z", "outside"} <= set(
        check.colnames)
    assert read_provenance(out / "summary.csv")["model_check"]["n_replicates"] == spec.checks.n_replicates
    if spec.source:
        assert (out / "spec.toml").read_text() == spec_path.read_text()
    if figures == []:
        expected = {"corner.png", "trace.png", "membership_histogram.png", "ppc.png", "em_history.png"}
        expected |= {"membership_radius.png"} if spec.model.kind == "cluster-field" else {"ellipses.png"}
        for name in expected:
            assert (out / name).stat().st_size > 5_000, name
    assert not list(out.glob(".*.tmp"))


def test_fit_report_shows_dropped_rows(shared_data, tmp_path, capsys):
    out = tmp_path / "ngc288"
    assert main(["fit", str(REPO_ROOT / "models" / "ngc288.toml"), "--out", str(out), *SMALL,
                 "--no-figures", "--exit-zero"]) == 0
    printed = capsys.readouterr().out
    assert "select: Cluster != 'NGC 288'" in printed
    dropped = read_table(out / "dropped_rows.csv")
    n_input = read_provenance(out / "summary.csv")["dropped_rows"]["n_input"]
    assert int(np.sum(dropped["n_rows"])) + 386 == n_input


def test_killed_run_resumes_to_the_draws_of_an_uninterrupted_one(tmp_path, capsys):
    spec = tmp_path / "demo_chunked.toml"
    spec.write_text((REPO_ROOT / "models" / "demo.toml").read_text()
                    .replace("num_samples = 1000", "num_samples = 1000\ncheckpoint_every = 25"))
    settings = ["--num-warmup", "100", "--num-samples", "1500", "--num-chains", "2", "--no-figures",
                "--no-cache", "--exit-zero"]
    killed = tmp_path / "killed"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "bayesmix.cli", "fit", str(spec), "--out", str(killed),
                             *settings], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / ".bayesmix-partial" / "checkpoint.npz"  # the run in progress, staged
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "the run never wrote a checkpoint"
    done_when_killed = checkpoint_draws(checkpoint)
    assert 0 < done_when_killed < 1500  # really interrupted part-way
    assert not (killed / "posterior.nc").exists()

    assert main(["fit", str(spec), "--out", str(killed), *settings, "--resume"]) == 0
    assert f"resumed with {done_when_killed} draws per chain already done" in capsys.readouterr().out
    whole = tmp_path / "whole"
    assert main(["fit", str(spec), "--out", str(whole), *settings]) == 0
    resumed = az.from_netcdf(killed / "posterior.nc").posterior
    reference = az.from_netcdf(whole / "posterior.nc").posterior
    assert resumed.sizes["draw"] == reference.sizes["draw"] == 1500
    np.testing.assert_array_equal(resumed["means"].values, reference["means"].values)

    # A finished run asked for more draws continues from its state: the draws of one longer run.
    assert main(["fit", str(spec), "--out", str(whole), *settings[:2], "--num-samples", "1600",
                 *settings[4:], "--resume"]) == 0
    assert az.from_netcdf(whole / "posterior.nc").posterior.sizes["draw"] == 1600


def test_exit_status_says_whether_the_checks_passed(tmp_path, capsys):
    demo = str(REPO_ROOT / "models" / "demo.toml")
    # Far too short to reach ESS 400: the outputs are written and the exit status says so.
    short = ["--num-warmup", "30", "--num-samples", "20", "--num-chains", "2", "--no-figures", "--no-cache"]
    assert main(["fit", demo, "--out", str(tmp_path / "short"), *short]) == EXIT_CHECKS_FAILED == 3
    printed = capsys.readouterr().out
    assert "NOT converged" in printed and "checks failed (" in printed and "exit status 3" in printed
    assert (tmp_path / "short" / "posterior.nc").exists()
    assert (tmp_path / "short" / "membership.fits").exists()
    assert "mixed precision" not in printed  # "auto" keeps float64 for 386 stars
    # The same run in mixed precision (chosen by hand here; "auto" chooses it for large
    # catalogues) says so, with the setting that turns it off.
    mixed = tmp_path / "mixed.toml"
    mixed.write_text((REPO_ROOT / "models" / "demo.toml").read_text()
                     .replace("[sampler]", '[sampler]\nlikelihood_precision = "mixed"'))
    assert main(["fit", str(mixed), "--out", str(tmp_path / "zero"), *short, "--exit-zero"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "--exit-zero gives 0" not in printed
    assert 'likelihood in mixed precision' in printed and 'likelihood_precision = "float64"' in printed
    # Long enough, on data drawn from the fitted model: every check passes.
    good = ["--num-warmup", "300", "--num-samples", "300", "--num-chains", "4", "--no-figures"]
    assert main(["fit", demo, "--out", str(tmp_path / "good"), *good]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "converged:" in printed and "model check passed" in printed and "checks failed" not in printed
    short_demo = ["--n-stars", "200", "--num-samples", "20", "--num-warmup", "30", "--num-chains", "2"]
    assert main(["demo", "--out", str(tmp_path / "d"), *short_demo, "--no-cache",
                 "--no-figures"]) == EXIT_CHECKS_FAILED
    assert (tmp_path / "d" / "posterior.nc").is_file() and not list((tmp_path / "d").glob("*.png"))


def test_resume_refuses_another_spec_or_nothing_to_resume(tmp_path, capsys):
    demo = str(REPO_ROOT / "models" / "demo.toml")
    assert main(["fit", demo, "--out", str(tmp_path / "none"), *SMALL, "--resume"]) == 2
    assert "no saved run in" in capsys.readouterr().err
    out = str(tmp_path / "run")
    assert main(["fit", demo, "--out", out, *SMALL, "--no-figures", "--exit-zero"]) == 0
    capsys.readouterr()
    changed = [*SMALL]
    changed[1] = "80"  # num_warmup differs
    assert main(["fit", demo, "--out", out, *changed, "--no-figures", "--resume"]) == 2
    assert "different spec (sections ['sampler'] differ)" in capsys.readouterr().err
    assert main(["fit", demo, "--out", out, *SMALL[:2], "--num-samples", "30", *SMALL[4:], "--resume",
                 "--no-figures"]) == 2
    assert "already holds 60 draws per chain" in capsys.readouterr().err


def test_fresh_run_failing_on_its_input_keeps_the_previous_run(tmp_path, capsys):
    """A column typo is found before the folder is touched: the earlier run can still resume."""
    catalogue = tmp_path / "stars.fits"
    assert main(["simulate", "cluster-field", "--out", str(catalogue), "--n-stars", "150"]) == 0
    spec = tmp_path / "run.toml"
    spec.write_text(f'name = "typo"\n[data]\npath = "{catalogue}"\nvalues = ["RV"]\nerrors = ["E_RV"]\n'
                    '[model]\nkind = "cluster-field"\n')
    out = tmp_path / "out"
    assert main(["fit", str(spec), "--out", str(out), *SMALL, "--no-figures", "--exit-zero"]) == 0
    before = (out / "checkpoint.npz").read_bytes()
    spec.write_text(spec.read_text().replace('values = ["RV"]', 'values = ["RVV"]'))
    capsys.readouterr()
    assert main(["fit", str(spec), "--out", str(out), *SMALL, "--no-figures"]) == 2
    assert "RVV" in capsys.readouterr().err
    assert (out / "checkpoint.npz").read_bytes() == before


def test_scan_prefers_two_components_for_the_simulated_disc(tmp_path, capsys):
    spec = tmp_path / "disc.toml"
    spec.write_text('name = "disc"\n[data]\nsimulate = "disc"\nn_stars = 800\n'
                    '[model]\nn_components = 2\nordering = "mean"\nordering_feature = "MgFe"\n'
                    '[em]\nn_init = 3\n')
    out = tmp_path / "scan"
    assert main(["scan", str(spec), "--k", "1..4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "preferred K: BIC 2" in printed
    table = read_table(out / "scan.csv")
    assert list(table["n_components"]) == [1, 2, 3, 4]
    assert float(table["delta_bic"][1]) == 0.0 and np.all(np.diff(table["n_parameters"]) == 6)
    prov = read_provenance(out / "scan.csv")
    assert prov["preferred"]["bic"] == 2 and prov["k_range"] == [1, 4]
    assert (out / "information_criteria.png").stat().st_size > 5_000


def test_scan_with_loo_adds_elpd_columns(tmp_path, capsys):
    out = tmp_path / "scan"
    assert main(["scan", str(REPO_ROOT / "models" / "demo.toml"), "--k", "1..2", "--loo", "--out", str(out),
                 *SMALL, "--no-figures"]) == 0
    table = read_table(out / "scan.csv")
    assert {"elpd_loo", "se_elpd_loo", "p_loo", "max_pareto_k"} <= set(table.colnames)
    assert np.all(np.isfinite(table["elpd_loo"]))
    # Cluster + field: two components beat one by many standard errors, by every criterion.
    assert float(table["elpd_loo"][1] - table["elpd_loo"][0]) > 3 * float(table["se_elpd_loo"][1])
    assert "LOO 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["fit", "no_such.toml"], "model file not found: no_such.toml"),
        (["scan", "models/demo.toml", "--k", "9..2"], "must look like 1..8"),
        (["fit", "models/demo.toml", "--num-samples", "0"], r"\[sampler\] num_samples: must be at least 1"),
    ],
)
def test_bad_command_lines_are_messages(argv, match, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse rejects malformed options itself
        status = exc.code
    assert status == 2
    assert re.search(match, capsys.readouterr().err)


def test_missing_catalogue_names_the_key_and_the_remedy(tmp_path, capsys, monkeypatch):
    models = tmp_path / "repo" / "models"
    models.mkdir(parents=True)
    spec = models / "ngc288.toml"
    spec.write_text((REPO_ROOT / "models" / "ngc288.toml").read_text())
    monkeypatch.delenv("BAYESMIX_SHARED_DATA", raising=False)
    assert main(["fit", str(spec), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "[data] path: catalogue file not found" in err and "set BAYESMIX_SHARED_DATA" in err


def test_bad_column_in_a_spec_is_named(tmp_path, capsys, shared_data):
    spec = tmp_path / "bad.toml"
    spec.write_text((REPO_ROOT / "models" / "disc_harps.toml").read_text()
                    .replace('values = ["feh", "MgFe"]', 'values = ["feh", "MgFE"]')
                    .replace("{shared_data}", str(shared_data)))
    assert main(["fit", str(spec), "--out", str(tmp_path / "o")]) == 2
    assert "MgFE" in capsys.readouterr().err
