"""The project as a user meets it: README and documentation commands and examples, CI script, import
cost, command line. The examples on the documentation pages (docs/) are run here, so they cannot drift."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT

from bayesmix import __version__
from bayesmix.catalogue import read_provenance, read_table
from bayesmix.cli import main

README = (REPO_ROOT / "README.md").read_text()
DOCS = REPO_ROOT / "docs"


def _fenced_blocks(language, text=README):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _python_block(marker, page="README.md"):
    """The one Python example on ``page`` (README.md or a docs/ page) that contains ``marker``."""
    text = README if page == "README.md" else (DOCS / page).read_text()
    blocks = [b for b in _fenced_blocks("python", text) if marker in b]
    assert len(blocks) == 1, f"{len(blocks)} Python blocks of {page} contain {marker!r}"
    return blocks[0]


def test_ci_runs_exactly_the_readme_test_command():
    tests_section = README.split("## Tests", 1)[1]
    command = _fenced_blocks("bash")[1].strip()
    assert command in tests_section
    ci_lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines
    assert "export BAYESMIX_REQUIRE_SHARED_DATA=1" in ci_lines


def test_readme_install_command_makes_an_environment_installs_the_runtime_and_runs_a_job():
    install = _fenced_blocks("bash")[0].strip()
    steps = [step.strip() for step in install.split("&&")]
    assert steps[0].startswith("python3 -m venv ") and steps[1].startswith(". ")
    assert steps[2] == "pip install -e ." and steps[3].startswith("bayesmix demo")


def test_readme_test_command_adds_the_test_extra():
    assert _fenced_blocks("bash")[1].strip().startswith('pip install -e ".[test]" && python -m pytest')


def test_runtime_dependencies_leave_out_the_test_tools():
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[<>=!~ ;\[]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    test_tools = {re.split(r"[<>=!~ ;\[]", dep, maxsplit=1)[0].lower()
                  for dep in project["optional-dependencies"]["test"]}
    assert {"pytest", "hypothesis", "ruff", "emcee", "astroml"} <= test_tools
    assert not runtime & {"pytest", "hypothesis", "ruff", "emcee", "astroml", "ipykernel"}
    assert project["license"] == "BSD-3-Clause" and (REPO_ROOT / "LICENSE").is_file()
    assert (REPO_ROOT / "CITATION.cff").is_file() and (REPO_ROOT / "CHANGELOG.md").is_file()


def test_getting_started_repeats_the_readme_commands():
    page = (DOCS / "getting-started.md").read_text()
    for command in _fenced_blocks("bash")[:2]:
        assert command in _fenced_blocks("bash", page), f"docs/getting-started.md lacks {command.strip()!r}"
    # and its Python example is the README's
    assert _python_block("sample_posterior", "getting-started.md") == _python_block("sample_posterior")


def test_by_hand_likelihood_example_runs(shared_data, tmp_path, monkeypatch):
    code = _python_block("by-hand parameters", "explanation/likelihood.md")
    code = code.replace("../shared/data", str(shared_data))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = read_table(tmp_path / "ngc288_members.fits")
    assert len(out) == 386 and "p_member" in out.colnames and "P_Mem" in out.colnames
    p = np.asarray(out["p_member"])
    assert np.all((p >= 0) & (p <= 1))
    # With the tutorial's parameters the by-hand membership already ranks like Baumgardt's.
    assert np.corrcoef(np.argsort(np.argsort(p)), np.argsort(np.argsort(out["P_Mem"])))[0, 1] > 0.5
    assert read_provenance(tmp_path / "ngc288_members.fits")["note"] == "by-hand parameters"


def test_import_bayesmix_is_light():
    code = "import sys, bayesmix; bayesmix.read_catalogue; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_importing_the_sampler_leaves_the_device_count_settable():
    # set_host_device_count must run before JAX starts its backend; importing the sampler (or
    # BlackJAX through it) must not start it, or chains lose their parallel CPU devices.
    code = ("from bayesmix.sampling import set_host_device_count; import bayesmix.workflow; "
            "set_host_device_count(2); import jax; print(jax.local_device_count())")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "2"


def test_lazy_exports_resolve():
    import bayesmix

    for name in bayesmix.__all__:
        assert getattr(bayesmix, name) is not None
    with pytest.raises(AttributeError):
        bayesmix.no_such_name  # noqa: B018


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out


@pytest.mark.parametrize(("kind", "suffix", "n"), [("cluster-field", ".fits", 386),
                                                   ("contaminated-field", ".ecsv", 400),
                                                   ("disc", ".csv", 2000)])
def test_cli_simulate_writes_catalogue_with_provenance(tmp_path, capsys, kind, suffix, n):
    out = tmp_path / f"sim{suffix}"
    assert main(["simulate", kind, "--out", str(out), "--seed", "4"]) == 0
    table = read_table(out)
    assert len(table) == n and "component" in table.colnames
    prov = read_provenance(out)
    assert prov["seed"] == 4 and prov["bayesmix_version"] == __version__
    assert prov["command"] == ["simulate", kind]
    assert "true" in capsys.readouterr().out


def test_cli_bad_input_is_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["simulate", "disc", "--out", str(tmp_path / "x.fits"), "--n-stars", "0"]) == 2
    assert "--n-stars must be at least 1" in capsys.readouterr().err
    assert main(["simulate", "disc", "--out", str(tmp_path / "x.weird")]) == 2



def test_cli_path_of_the_wrong_kind_is_a_message_and_exit_2(tmp_path, capsys):
    """The output's folder is a file: the user's path, named, with the fix; no traceback."""
    from bayesmix.cli import EXIT_INPUT_ERROR

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["simulate", "disc", "--out", str(blocker / "x.fits")]) == EXIT_INPUT_ERROR == 2
    err = capsys.readouterr().err
    assert "bayesmix simulate: error:" in err and "a_file" in err and "check the path" in err
    assert "Traceback" not in err


def test_cli_environment_fault_is_a_message_and_exit_4(tmp_path, capsys, monkeypatch):
    """The machine stopped the run (here: a full disk while writing): a message, no traceback."""
    import errno

    import bayesmix.catalogue
    from bayesmix.cli import EXIT_ENVIRONMENT_ERROR

    def full_disk(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(bayesmix.catalogue, "atomic_write", full_disk)
    assert main(["simulate", "disc", "--out", str(tmp_path / "x.fits")]) == EXIT_ENVIRONMENT_ERROR == 4
    err = capsys.readouterr().err
    assert "bayesmix simulate: error:" in err and "No space left" in err and "free disk space" in err
    assert "Traceback" not in err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "bayesmix"  # installed beside the interpreter
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_em_example_runs_and_recovers_the_disc(capsys):
    code = _python_block("scan_n_components(2", "explanation/em.md")
    assert "fit_em" in code
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result, scan = namespace["result"], namespace["scan"]
    assert result.converged
    order = np.argsort(result.means[:, 1])
    np.testing.assert_allclose(result.weights[order], [0.7, 0.3], atol=0.03)
    np.testing.assert_allclose(result.means[order], [[-0.05, 0.05], [-0.50, 0.28]], atol=0.03)
    assert scan.meta["best_bic"] == 2


def test_readme_nuts_example_runs():
    code = _python_block("sample_posterior")
    assert len(code.strip().splitlines()) <= 15, "the README's example is meant to be short"
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["report"].ok
    table = namespace["table"]
    assert len(table) == 386 and {"p_cluster", "p_cluster_16", "p_cluster_84", "label"} <= set(table.colnames)
    fit = namespace["fit"]
    mean1 = fit.idata.posterior["mean1"]
    assert abs(float(mean1.median()) + 44.73) < 4 * float(mean1.std())


_DATA_DEFAULTS = {"values": [], "correlations": [], "covariates": [], "select": {}, "zero_flags": [],
                  "ranges": {}, "drop_nonfinite": False, "duplicates": "error", "missing_features": "drop"}


def test_cli_demo_fits_and_writes_outputs_with_provenance(tmp_path, capsys):
    import json

    import arviz as az

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--seed", "3", "--n-stars", "200", "--num-warmup", "100",
            "--num-samples", "100", "--num-chains", "2", "--no-cache", "--exit-zero"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("mean1", "sigma1", "mean2", "sigma2", "frac1"):
        assert name in printed
    stars = read_table(out / "membership.fits")
    assert len(stars) == 200
    p = np.column_stack([stars["p_cluster"], stars["p_field"]])
    assert np.all((p >= 0) & (p <= 1)) and np.allclose(p.sum(axis=1), 1.0)
    assert np.all(stars["p_cluster_16"] <= stars["p_cluster_84"])
    for path in (out / "membership.fits", out / "membership.csv", out / "summary.csv"):
        prov = read_provenance(path)
        assert prov["seed"] == 3 and prov["spec"]["data"] == {"simulate": "cluster-field", "n_stars": 200,
                                                               **_DATA_DEFAULTS}
        assert prov["bayesmix_version"] == __version__ and prov["truth"]["mean1"] == -44.73
    summary = read_table(out / "summary.csv")
    assert list(summary["parameter"]) == ["mean1", "sigma1", "mean2", "sigma2", "frac1"]
    idata = az.from_netcdf(out / "posterior.nc")
    assert idata.posterior.sizes["chain"] == 2 and idata.posterior.sizes["draw"] == 100
    assert json.loads(idata.attrs["bayesmix_provenance"])["seed"] == 3
    em = json.loads((out / "em.json").read_text())
    assert em["converged"] and len(em["weights"]) == 2
    for figure in ("corner.png", "trace.png", "membership_radius.png", "membership_histogram.png", "ppc.png",
                   "em_history.png"):
        assert (out / figure).stat().st_size > 10_000
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind


def test_cli_demo_bad_settings_are_a_message(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--num-samples", "0"]) == 2
    assert "--num-samples must be positive" in capsys.readouterr().err


def test_whole_path_example_runs_on_harps(shared_data, tmp_path, monkeypatch):
    code = _python_block("# HARPS dwarfs", "how-to/abundances.md").replace("../shared/data", str(shared_data))
    assert "read_catalogue" in code and "sample_posterior" in code and "membership_probabilities" in code
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["report"].ok
    stars = read_table(tmp_path / "harps_disc.fits")
    assert len(stars) == 1059 and {"Star", "feh", "p_thin", "p_thick_84", "label"} <= set(stars.colnames)
    post = namespace["fit"].idata.posterior
    # The thick disc is the alpha-rich minority: higher [Mg/Fe], lower [Fe/H].
    means = post["means"].median(("chain", "draw")).values
    assert means[1, 1] > means[0, 1] + 0.1 and means[1, 0] < means[0, 0]
    assert 0.05 < float(post["weights"].median(("chain", "draw"))[1]) < 0.5
    for name in ("harps_disc.png", "harps_corner.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def _toml_blocks(page):
    """The TOML examples of a docs page, Markdown (```toml) or reStructuredText (code-block:: toml)."""
    text = (DOCS / page).read_text()
    blocks = _fenced_blocks("toml", text)
    for block in re.findall(r"\.\. code-block:: toml\n\n((?:   .*\n|\n)+)", text):
        blocks.append("\n".join(line[3:] for line in block.splitlines()))
    return blocks


def test_spec_reference_example_is_a_valid_spec_and_every_model_file_is_listed():
    import tomllib

    from bayesmix.config import RunSpec

    spec = RunSpec.from_dict(tomllib.loads(_toml_blocks("reference/spec.rst")[0]))
    assert spec.model.kind == "cluster-field" and spec.model.radius_fraction.covariate == "DCEN"
    documented = (DOCS / "reference" / "spec.rst").read_text().split("Ready specs", 1)[1]
    for path in sorted((REPO_ROOT / "models").glob("*.toml")):
        assert f"``{path.name}``" in documented, f"{path.name} is not described in docs/reference/spec.rst"


@pytest.mark.parametrize("page", ["how-to/own-cluster.md", "how-to/abundances.md", "how-to/many-clusters.md"])
def test_docs_spec_examples_are_valid_specs(page):
    """Every whole spec on a how-to page is read by the spec reader (fragments of [model] are skipped)."""
    import tomllib

    from bayesmix.config import RunSpec

    checked = 0
    for block in _toml_blocks(page):
        table = tomllib.loads(block)
        if "data" in table and "model" in table:
            RunSpec.from_dict(table)
            checked += 1
    assert checked, f"{page} holds no whole spec"


def test_spec_reference_describes_every_key():
    """The generated reference (docs/_ext/spec_reference.py) finds a type and a description for every key."""
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import spec_reference
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    lines, problems = spec_reference.spec_reference_rst()
    assert not problems, "\n".join(problems)
    text = "\n".join(lines)
    for key in ("``num_warmup``", "``membership_draws``", "[data.sky]", "[model.priors.<component>]",
                "[groups]"):
        assert key in text
    assert '``"cluster-field"``' in text and ">= 20" in text  # allowed values and bounds come from the checks


def test_docs_own_model_example_runs():
    from bayesmix.simulate import simulate_cluster_field

    code = _python_block("posterior_from_draws(mcmc.get_samples", "how-to/own-model.md")
    code = code.replace("num_warmup=500, num_samples=1000", "num_warmup=200, num_samples=200")
    cat = simulate_cluster_field(0, 200).catalogue
    namespace = {"rv": np.asarray(cat.values[:, 0]), "rv_err": np.sqrt(np.asarray(cat.error_covs[:, 0, 0]))}
    exec(compile(code, "README.md", "exec"), namespace)
    members = namespace["members"]
    assert members.mean.shape == (200, 2) and np.all(members.p16 <= members.p84)
    assert list(namespace["fit"].model.component_names) == ["cluster", "field"]


def test_docs_estimator_example_runs_and_deconvolves():
    code = _python_block("from bayesmix import DeconvolvedGaussianMixture", "how-to/abundances.md")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    plain, xd, bayes = namespace["plain"], namespace["xd"], namespace["bayes"]
    thin_plain = np.argmin(plain.means_[:, 1])
    thin_xd = np.argmin(xd.means_[:, 1])
    # The thin disc's [Mg/Fe] spread is 0.04 dex, errors 0.05: ignoring them inflates it.
    assert plain.covariances_[thin_plain, 1, 1] ** 0.5 > 0.055
    assert abs(xd.covariances_[thin_xd, 1, 1] ** 0.5 - 0.04) < 0.006
    mean, low, high = namespace["mean"], namespace["low"], namespace["high"]
    assert mean.shape == (3000, 2) and np.all(low <= high) and np.allclose(mean.sum(axis=1), 1.0)
    assert bayes.convergence_.ok and namespace["new_stars"].shape == (100, 2)


def test_every_notebook_is_described_and_rendered_in_the_docs():
    page = (DOCS / "tutorials.md").read_text()
    notebooks = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 4
    for path in notebooks:
        assert f"(notebooks/{path.name})" in page, f"{path.name} is not described in docs/tutorials.md"
        assert f"\nnotebooks/{path.stem}\n" in page, f"{path.name} is not in docs/tutorials.md's toctree"


def test_readme_links_into_the_docs_resolve():
    links = re.findall(r"\]\(((?:docs/|CHANGELOG)[^)#]*)\)", README)
    assert len(links) >= 15
    for link in links:
        assert (REPO_ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_ci_builds_the_docs_with_warnings_as_errors_and_checks_links():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "sphinx-build -W --keep-going -q -b html docs docs/_build/html" in ci
    assert "python docs/check_internal_links.py docs/_build/html" in ci
    assert "export BAYESMIX_EXECUTED_NOTEBOOKS" in ci
    test_command = ci.index('pip install -e ".[test]" && python -m pytest')
    assert ci.index("export BAYESMIX_EXECUTED_NOTEBOOKS") < test_command < ci.index("sphinx-build")
    assert 'pip install --quiet -e ".[test,docs]"' in ci


def test_internal_link_checker_finds_missing_pages_and_anchors(tmp_path):
    sys.path.insert(0, str(DOCS))
    try:
        from check_internal_links import broken_links, main
    finally:
        sys.path.remove(str(DOCS))
    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_text(
        '<h1 id="top">x</h1><a href="sub/a.html#here">ok</a><a href="#top">ok</a>'
        '<a href="https://example.org/x">external</a><a href="sub/a.html#gone">bad anchor</a>'
        '<a href="missing.html">bad</a>')
    (tmp_path / "sub" / "a.html").write_text(
        '<section id="here"><a href="../index.html#top">ok</a></section>')
    assert broken_links(tmp_path) == ["index.html: sub/a.html#gone (no anchor #gone)",
                                      "index.html: missing.html (no such file)"]
    assert main([str(tmp_path)]) == 1 and main([str(tmp_path / "sub")]) == 2
