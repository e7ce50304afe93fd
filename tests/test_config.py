"""Run specifications: every model file loads, round-trips, and bad specs name the key and the fix."""

from pathlib import Path

import pytest
from conftest import REPO_ROOT

from bayesmix.config import RunSpec, SpecError, load_spec, parse_k_range

MODEL_FILES = sorted((REPO_ROOT / "models").glob("*.toml"))
MINIMAL = {"data": {"path": "stars.fits", "values": ["feh", "mgfe"], "errors": ["e_feh", "e_mgfe"]},
           "model": {"n_components": 2}}


def test_models_folder_holds_the_science_cases():
    names = {p.stem for p in MODEL_FILES}
    assert {"demo", "ngc288", "disc_harps", "halo_apogee_almg", "halo_apogee_multi", "halo_galah_almg",
            "halo_galah_multi", "contaminated_field", "contaminated_field_rich"} <= names


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_every_model_file_loads_and_round_trips(path):
    spec = load_spec(path)
    assert spec.source == str(path) and spec.description
    again = RunSpec.from_dict(spec.to_dict(), source=spec.source)
    assert again == spec
    if spec.data.path is not None:
        assert "{shared_data}" in spec.data.path  # never a copy inside the repository
        assert spec.catalogue_path().name == Path(spec.data.path).name


def test_shared_data_placeholder_follows_the_environment(monkeypatch, tmp_path):
    spec = load_spec(REPO_ROOT / "models" / "ngc288.toml")
    monkeypatch.setenv("BAYESMIX_SHARED_DATA", str(tmp_path))
    assert spec.catalogue_path() == tmp_path / "baumgardt_gc_rv" / "appendix_combined_table.txt"
    monkeypatch.delenv("BAYESMIX_SHARED_DATA")
    assert spec.catalogue_path() == (REPO_ROOT.parent / "shared" / "data" / "baumgardt_gc_rv"
                                     / "appendix_combined_table.txt")


def test_relative_paths_are_relative_to_the_spec_file(tmp_path):
    (tmp_path / "sub").mkdir()
    spec_file = tmp_path / "sub" / "run.toml"
    spec_file.write_text('[data]\npath = "stars.fits"\nvalues = ["rv"]\n[model]\nkind = "cluster-field"\n')
    assert load_spec(spec_file).catalogue_path() == tmp_path / "sub" / "stars.fits"


def test_defaults_fill_what_the_file_leaves_out():
    spec = RunSpec.from_dict(MINIMAL)
    assert spec.sampler.num_chains == 4 and spec.em.n_init == 4 and spec.model.ordering == "scale"
    assert spec.output.formats == ("fits", "csv") and spec.scan.k == (1, 6)


def test_overrides_are_checked_like_the_file():
    spec = RunSpec.from_dict(MINIMAL)
    assert spec.with_overrides(sampler={"num_samples": 50}, seed=3).sampler.num_samples == 50
    with pytest.raises(SpecError, match=r"\[sampler\] num_samples: must be at least 1"):
        spec.with_overrides(sampler={"num_samples": 0})


def _with(section, **values):
    table = {key: dict(value) for key, value in MINIMAL.items()}
    table.setdefault(section, {}).update(values)
    return table


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({**MINIMAL, "modle": {}}, r"modle: unknown key \(did you mean 'model'\?\); allowed keys: name"),
        (_with("model", n_component=2), r"\[model\] n_component: unknown key \(did you mean 'n_components'"),
        (_with("model", kind="gmm"), r"\[model\] kind: 'gmm' is not allowed; use one of \['mixture', "
                                     r"'cluster-field'\]"),
        (_with("model", n_components="2"), r"\[model\] n_components: must be an integer; got a string"),
        (_with("model", ordering="mass"), r"\[model\] ordering: 'mass' is not allowed; use one of \['scale'"),
        (_with("sampler", num_chains=0), r"\[sampler\] num_chains: must be at least 1; got 0"),
        (_with("sampler", target_accept=1.2), r"\[sampler\] target_accept: must be < 1.0"),
        (_with("sampler", chain_method="threads"), r"chain_method: 'threads' is not allowed"),
        (_with("em", w=-1.0), r"\[em\] w: must be >= 0.0"),
        (_with("data", errors=["e_feh"]), r"\[data\] errors: has 1 column\(s\) for 2 value column\(s\)"),
        (_with("data", ranges={"feh": [1.0, -1.0]}), r"\[data\] ranges.feh: low 1.0 is above high -1.0"),
        (_with("data", simulate="disc"), r"\[data\]: give exactly one of path .* or simulate"),
        ({"model": {"n_components": 2}}, r"\[data\]: section is missing"),
        (_with("data", values=[]), r"\[data\] values: name the value column"),
        ({**MINIMAL, "model": {}}, r"\[model\] n_components: is required for kind = \"mixture\""),
        ({**MINIMAL, "model": {"kind": "cluster-field"}}, r"\[model\] kind: \"cluster-field\" fits one value "
                                                           r"column"),
        (_with("model", n_components=1, radius_fraction={"covariate": "R"}),
         r"\[model\] radius_fraction: needs a field: at least 2 components"),
        (_with("model", n_components=3, ordering="weight", radius_fraction={"covariate": "R"}),
         r"\[model\] ordering: \"weight\" cannot be combined with a radius law"),
        (_with("model", n_components=3, component_names=["a", "b"]),
         r"\[model\] component_names: has 2 names for 3 components"),
        (_with("model", priors={"c2": {"mean_loc": 1.0}}),
         r"\[model.priors.c2\]: 'c2' is not a component of this model; its components are \['c0', 'c1'\]"),
        (_with("model", priors={"c1": {"mean_lox": 1.0}}),
         r"\[model.priors.c1\] mean_lox: unknown key \(did you mean 'mean_loc'\?\)"),
        (_with("model", priors={"c1": {"scale_scale": 0.0}}),
         r"\[model.priors.c1\] scale_scale: must be > 0.0"),
        (_with("em", init="given"), r"\[em\] init: \"given\" needs init_means"),
        (_with("em", init="peaks"), r"\[em\] init: 'peaks' is not allowed; use one of \['auto'"),
        (_with("em", init_means=[[0.0, 0.1], [0.2, 0.3], [0.1, 0.1]]),
         r"\[em\] init_means: has 3 rows; the model has 2 components"),
        (_with("em", init_means=[[0.0], [0.2]]),
         r"\[em\] init_means: rows have 1 value\(s\); the data have 2"),
        (_with("em", init_scales=[[0.1, 0.1], [0.1, 0.1]]),
         r"\[em\] init_means: init_scales and init_weights"),
        (_with("em", init_means=[[0.0, 0.1], [0.2, 0.3]], init_weights=[1.0]),
         r"\[em\] init_weights: has 1 entries; init_means has 2"),
        (_with("em", n_peaks=-1), r"\[em\] n_peaks: must be at least 0"),
        (_with("checks", misfit_alpha=1.5), r"\[checks\] misfit_alpha: must be < 1.0"),
        (_with("checks", n_replicates=10), r"\[checks\] n_replicates: must be at least 100"),
        (_with("model", radius_fraction={"covariate": "R"}), r"\[model.radius_fraction\] covariate: 'R' must "
                                                              r"also be listed in \[data\] covariates"),
        (_with("model", radius_fraction={"kind": "king"}),
         r"\[model.radius_fraction\] covariate: is required"),
        (_with("model", background={"kind": "uniform", "low": [0, 0]}),
         r"\[model.background\] high: a uniform background needs low and high"),
        (_with("output", formats=["hdf5"]), r"\[output\] formats: \['hdf5'\] not allowed"),
        (_with("scan", k=[3, 1]), r"\[scan\] k: must be \[k_min, k_max\] with 1 <= k_min <= k_max"),
        (_with("scan", k="1-8"), r"\[scan\] k: K range '1-8' must look like 1..8"),
    ],
)
def test_bad_specs_name_the_key_and_the_fix(table, match):
    with pytest.raises(SpecError, match=match):
        RunSpec.from_dict(table)


def test_component_priors_starts_and_checks_round_trip_as_toml_holds_them():
    table = _with("model", n_components=3, component_names=["cluster", "stream", "halo"],
                  radius_fraction={"covariate": "R"},
                  priors={"cluster": {"mean_loc": -45.0, "scale_scale": 10.0}})
    table["data"]["covariates"] = ["R"]
    table["em"] = {"init_means": [[0.0, 0.1], [0.2, 0.3], [0.1, 0.1]], "init_scales": [[0.1, 0.1]] * 3}
    table["checks"] = {"misfit_alpha": 0.001}
    spec = RunSpec.from_dict(table)
    assert spec.model.priors.components["cluster"].mean_loc == -45.0
    assert spec.em.init_means[1] == (0.2, 0.3) and spec.checks.misfit_alpha == 0.001
    plain = spec.to_dict()
    # As TOML holds it: [model.priors.cluster]
    assert plain["model"]["priors"]["cluster"] == {"mean_loc": -45.0, "scale_scale": 10.0}
    assert "components" not in plain["model"]["priors"]
    assert RunSpec.from_dict(plain) == spec
    assert RunSpec.from_dict(MINIMAL).em.init == "auto" and RunSpec.from_dict(MINIMAL).checks.model_fit


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[data]\npath = "x.fits"\nvalues = ["a"]\n[model]\nn_components = 2\n'
                    '[sampler]\nnum_draws = 5\n')
    with pytest.raises(SpecError, match=r"bad.toml \[sampler\] num_draws: unknown key"):
        load_spec(path)
    path.write_text("[data\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(path)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_spec(tmp_path / "missing.toml")


def test_k_range_text():
    assert parse_k_range("1..8") == (1, 8) and parse_k_range("3") == (3, 3)
    for bad in ("0..3", "5..2", "a..b", "1..2..3"):
        with pytest.raises(ValueError, match=r"must look like 1\.\.8"):
            parse_k_range(bad)
