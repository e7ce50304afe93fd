"""Bad run specifications and settings from the reliability audit (2026-12-01): each gives a named
error that says what is wrong and what to do, at validation (nothing is fitted or simulated here).

Case ids carry the audit's row numbers (``row84-...``); ``sec8-...`` cases come from its section 8
("settings silently ignored or accepted without meaning").
"""

import numpy as np
import pytest

from bayesmix import simulate
from bayesmix.config import MAX_EM_STARTS, MAX_SIMULATED_STARS, RunSpec, SpecError, load_spec

CLUSTER_FIELD = '[data]\nsimulate = "cluster-field"\n[model]\nkind = "cluster-field"\n'
MIXTURE = '[data]\nsimulate = "disc"\n[model]\nkind = "mixture"\nn_components = 2\n'
DEEP = 5000


def _simulating(key_line: str) -> str:
    """The cluster-field spec with one more ``[data]`` line."""
    return CLUSTER_FIELD.replace("[model]", f"{key_line}\n[model]", 1)


# (id, file contents (str is written as UTF-8), expected exception or None to load, words in the message)
SPEC_CASES = [
    ("row94-utf8-bom", b"\xef\xbb\xbf" + f'name = "bom"\n{CLUSTER_FIELD}'.encode(), None, ()),
    ("row95-latin1-text", f'description = "caf\xe9"\n{CLUSTER_FIELD}'.encode("latin-1"), SpecError,
     ("spec.toml", "must be UTF-8 text", "0xe9", "line 1", "Latin-1")),
    ("row95-binary", bytes(range(256)) * 4, SpecError, ("spec.toml", "must be UTF-8 text", "binary")),
    ("row96-nested-arrays-5000-deep", CLUSTER_FIELD + "[em]\ninit_means = " + "[" * DEEP + "]" * DEEP,
     SpecError, ("spec.toml", "nested too deeply")),
    ("row96-nested-inline-tables-5000-deep", CLUSTER_FIELD + "[em]\ninit_means = " + "{a = " * DEEP + "1"
     + "}" * DEEP, SpecError, ("spec.toml", "nested too deeply")),
    ("row84-component-names-too-many", MIXTURE + 'component_names = ["a", "b", "c"]\n', SpecError,
     ("[model] component_names", "has 3 names for 2 components", "n_components = 2", "one name per")),
    ("row84-component-names-too-few", MIXTURE.replace("= 2", "= 3") + 'component_names = ["a", "b"]\n',
     SpecError, ("[model] component_names", "has 2 names for 3 components")),
    ("row84-component-names-cluster-field", CLUSTER_FIELD + 'component_names = ["a", "b", "c"]\n', SpecError,
     ("[model] component_names", "got 3 names", '"cluster" and "field"', 'kind = "mixture"')),
    ("row84-component-names-background-not-counted",
     MIXTURE + 'component_names = ["a", "b", "c"]\n[model.background]\nkind = "uniform"\nlow = -2.0\n'
               'high = 1.0\n',
     SpecError, ("has 3 names for 2 components", "background", "not counted")),
    ("row84-component-names-take-background",
     MIXTURE + 'component_names = ["a", "background"]\n[model.background]\nkind = "uniform"\nlow = -2.0\n'
               'high = 1.0\n',
     SpecError, ("[model] component_names", '"background" is the name of the [model.background]')),
    ("row84-component-names-with-scan", MIXTURE + 'component_names = ["thin", "thick"]\n[scan]\nk = [1, 5]\n',
     None, ()),
    ("row89-background-infinite-range", MIXTURE + '[model.background]\nkind = "uniform"\nlow = -inf\n'
                                                  'high = inf\n',
     SpecError, ("[model.background] low", "must be finite", "zero", "finite range the field covers")),
    ("row89-background-one-infinite-bound", MIXTURE + '[model.background]\nkind = "uniform"\n'
                                                      'low = [-2.0, -1.0]\nhigh = [1.0, inf]\n',
     SpecError, ("[model.background] high", "must be finite", "[1.0, inf]")),
    ("row89-background-empty-box", MIXTURE + '[model.background]\nkind = "uniform"\nlow = [-2.0, 1.0]\n'
                                             'high = [1.0, 1.0]\n',
     SpecError, ("[model.background] high", "every high must exceed its low")),
    ("row80-membership-draws-1", CLUSTER_FIELD + "[sampler]\nmembership_draws = 1\n", SpecError,
     ("[sampler] membership_draws", "at least 20", "got 1", "16th and 84th percentiles", "p16 = p84")),
    ("row80-membership-draws-19", CLUSTER_FIELD + "[sampler]\nmembership_draws = 19\n", SpecError,
     ("at least 20", "got 19")),
    ("row80-membership-draws-20", CLUSTER_FIELD + "[sampler]\nmembership_draws = 20\n", None, ()),
    ("row103-name-dotdot", f'name = "../../../escaped"\n{CLUSTER_FIELD}', SpecError,
     ("spec.toml name", "'../../../escaped' is not a plain name", "[output] directory")),
    ("row157-name-absolute", f'name = "/tmp/escaped"\n{CLUSTER_FIELD}', SpecError, ("not a plain name",)),
    ("row157-name-backslash", f'name = "..\\\\up"\n{CLUSTER_FIELD}', SpecError, ("not a plain name",)),
    ("row157-name-hidden", f'name = ".hidden"\n{CLUSTER_FIELD}', SpecError, ("not starting with '.'",)),
    ("row157-name-empty", f'name = ""\n{CLUSTER_FIELD}', SpecError, ("not a plain name",)),
    ("row157-name-plain", f'name = "NGC_288.v2-final"\n{CLUSTER_FIELD}', None, ()),
    ("row157-output-directory-absolute", CLUSTER_FIELD + '[output]\ndirectory = "/tmp/bayesmix-run"\n',
     None, ()),
    ("row106-em-n-init-huge", CLUSTER_FIELD + "[em]\nn_init = 100000\n", SpecError,
     ("[em] n_init", f"at most {MAX_EM_STARTS}", "got 100000", "memory")),
    ("row106-em-n-peaks-huge", CLUSTER_FIELD + "[em]\nn_peaks = 100000\n", SpecError,
     ("[em] n_peaks", f"at most {MAX_EM_STARTS}")),
    ("row107-simulate-n-stars-1e11", _simulating("n_stars = 100000000000"), SpecError,
     ("[data] n_stars", "at most 100000000", "got 100000000000", "22 TB", "memory")),
    ("row107-simulate-n-stars-at-bound", _simulating(f"n_stars = {MAX_SIMULATED_STARS}"), None, ()),
    ("sec8-simulate-with-select", _simulating('select = { Cluster = "NGC 288" }'), SpecError,
     ("[data] select", "only applies to a catalogue file", "leave it out")),
    ("sec8-simulate-with-covariates", _simulating('covariates = ["R_proj"]'), SpecError,
     ("[data] covariates", "only applies to a catalogue file")),
    ("sec8-em-tol-infinite", CLUSTER_FIELD + "[em]\ntol = inf\n", SpecError,
     ("[em] tol", "must be a finite number")),
    ("sec8-prior-location-infinite", CLUSTER_FIELD + "[model.priors]\nmean_loc = -inf\n", SpecError,
     ("[model.priors] mean_loc", "must be a finite number")),
    ("sec8-n-peaks-without-auto", CLUSTER_FIELD + '[em]\ninit = "kmeans++"\nn_peaks = 8\n', SpecError,
     ("[em] n_peaks", 'init = "auto" only', "ignored")),
    ("sec8-kmeans-iter-with-random", CLUSTER_FIELD + '[em]\ninit = "random"\nkmeans_iter = 30\n', SpecError,
     ("[em] kmeans_iter", "ignored")),
    ("sec8-ordering-feature-with-weight", MIXTURE + 'ordering = "weight"\nordering_feature = 1\n', SpecError,
     ("[model] ordering_feature", "does not apply", '"weight"')),
    ("sec8-ordering-weight-with-background", MIXTURE + 'ordering = "weight"\n[model.background]\n'
                                                       'kind = "uniform"\nlow = -2.0\nhigh = 1.0\n',
     SpecError, ("[model] ordering", "[model.background]")),
    ("sec8-output-directory-empty", CLUSTER_FIELD + '[output]\ndirectory = ""\n', SpecError,
     ("[output] directory", "is empty")),
]


@pytest.mark.parametrize(("contents", "error", "words"), [c[1:] for c in SPEC_CASES],
                         ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_files_give_named_errors(tmp_path, contents, error, words):
    path = tmp_path / "spec.toml"
    path.write_bytes(contents if isinstance(contents, bytes) else contents.encode())
    if error is None:
        spec = load_spec(path)
        assert RunSpec.from_dict(spec.to_dict()) == spec  # what is accepted still round-trips
        return
    with pytest.raises(error) as caught:
        load_spec(path)
    for word in words:
        assert word in str(caught.value)


def test_bom_is_dropped_not_read_as_part_of_the_first_key(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + f'name = "bom"\n{CLUSTER_FIELD}'.encode())
    assert load_spec(path).name == "bom"  # row 94


def _deep_list(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


# (id, table given to RunSpec.from_dict, words in the SpecError): settings built in Python,
# as with_overrides and the CLI build them.
TABLE_CASES = [
    ("row96-from-dict-deep-array", {"data": {"simulate": "disc"}, "model": {"n_components": 2},
                                    "em": {"init_means": _deep_list(DEEP)}}, ("[em] init_means",)),
    ("row96-from-dict-deep-seed", {"seed": _deep_list(DEEP), "data": {"simulate": "disc"},
                                   "model": {"n_components": 2}}, ("seed", "must be an integer")),
    ("row107-demo-n-stars", {"data": {"simulate": "cluster-field", "n_stars": 10**11},
                             "model": {"kind": "cluster-field"}}, ("[data] n_stars", "at most 100000000")),
    ("row106-override-n-init", {"data": {"simulate": "disc"}, "model": {"n_components": 2},
                                "em": {"n_init": MAX_EM_STARTS + 1}}, ("[em] n_init", "at most 1000")),
]


@pytest.mark.parametrize(("table", "words"), [c[1:] for c in TABLE_CASES], ids=[c[0] for c in TABLE_CASES])
def test_bad_settings_tables_give_named_errors(table, words):
    with pytest.raises(SpecError) as caught:
        RunSpec.from_dict(table)
    message = str(caught.value)
    assert len(message) < 1000  # a huge or deep value is shown shortened
    for word in words:
        assert word in message


def _rows(scale=1.0, big=None):
    x = np.random.default_rng(0).normal(size=(40, 2)) * scale
    if big is not None:
        x[7, 1] = big
    return x


# (id, estimator settings, X, X_err, expected exception, words in the message)
ESTIMATOR_CASES = [
    ("row143-values-and-errors-x1e300", {}, _rows(1e300), np.full((40, 2), 0.1e300), ValueError,
     ("X [row 0", "1e153", "overflow float64", "Change units")),
    ("row143-errors-x1e300", {}, _rows(), np.full((40, 2), 1e300), ValueError,
     ("X_err [row 0, feature 'x0']", "1e153", "overflow float64", "Change units")),
    ("row143-error-covariances-x1e307", {}, _rows(), np.tile(np.eye(2) * 1e307, (40, 1, 1)), ValueError,
     ("X_err [row 0, feature 'x0']", "square root of the variance", "1e153")),
    ("row144-one-value-1e300", {}, _rows(big=1e300), None, ValueError,
     ("X [row 7, feature 'x1'] = 1e+300", "1e153", "Change units")),
    ("row144-one-value-1e300-with-errors", {}, _rows(big=-1e300), np.full((40, 2), 0.1), ValueError,
     ("X [row 7, feature 'x1'] = -1e+300",)),
    ("row106-n-init-100000", {"n_init": 100_000}, _rows(), None, ValueError,
     ("n_init must be an integer from 1 to 1000", "got 100000", "memory")),
    ("row106-n-init-zero", {"n_init": 0}, _rows(), None, ValueError, ("from 1 to 1000", "got 0")),
    ("row106-n-init-float", {"n_init": 4.0}, _rows(), None, ValueError, ("n_init must be an integer",)),
]


@pytest.mark.parametrize(("params", "X", "X_err", "error", "words"), [c[1:] for c in ESTIMATOR_CASES],
                         ids=[c[0] for c in ESTIMATOR_CASES])
def test_estimator_refuses_bad_input_before_fitting(params, X, X_err, error, words):
    from bayesmix.estimator import DeconvolvedGaussianMixture

    with pytest.raises(error) as caught:
        DeconvolvedGaussianMixture(2, **params).fit(X, X_err=X_err)
    for word in words:
        assert word in str(caught.value)


# (id, simulator, arguments, words in the ValueError): the library functions behind [data] simulate
# and `bayesmix simulate --n-stars`.
SIMULATION_CASES = [
    ("row107-named-cluster-field-1e11", simulate.simulate_named, (0, "cluster-field", 10**11),
     ("n_stars must be at most 100000000", "got 100000000000", "22 TB")),
    ("row107-named-disc-1e9", simulate.simulate_named, (0, "disc", 10**9), ("580 GB",)),
    ("row107-cluster-field-float", simulate.simulate_cluster_field, (0, 1e11), ("at most 100000000",)),
    ("row107-contaminated-field", simulate.simulate_contaminated_field, (0, 10**9), ("at most 100000000",)),
    ("row107-mixture", simulate.simulate_mixture, (0, simulate.thin_thick_disc_params(), 10**9),
     ("at most 100000000",)),
    ("row107-infinite", simulate.simulate_cluster_field, (0, float("inf")),
     ("n_stars must be a whole number",)),
]


@pytest.mark.parametrize(("function", "args", "words"), [c[1:] for c in SIMULATION_CASES],
                         ids=[c[0] for c in SIMULATION_CASES])
def test_simulators_refuse_too_many_stars_before_drawing(function, args, words):
    with pytest.raises(ValueError) as caught:
        function(*args)
    for word in words:
        assert word in str(caught.value)


def test_cli_reports_deep_toml_and_huge_simulation_without_traceback(tmp_path, capsys):
    from bayesmix.cli import main

    deep = tmp_path / "deep.toml"
    deep.write_text(CLUSTER_FIELD + "[em]\ninit_means = " + "[" * DEEP + "]" * DEEP)
    assert main(["fit", str(deep), "--out", str(tmp_path / "out")]) == 2  # row 96: was a RecursionError
    assert main(["simulate", "disc", "--out", str(tmp_path / "x.fits"), "--n-stars", "100000000000"]) == 2
    err = capsys.readouterr().err
    assert "deep.toml: arrays or tables are nested too deeply" in err
    assert "--n-stars must be at most 100000000" in err and "Traceback" not in err
    # row 109: the format follows the extension, and the CLI has no format option to name
    assert main(["simulate", "disc", "--out", str(tmp_path / "x.xlsx")]) == 2
    err = capsys.readouterr().err
    assert "x.xlsx: the file name must end in one of .fits, .csv, .ecsv, .vot" in err and "format=" not in err


def test_a_given_em_start_is_one_start_not_four(tmp_path):
    """``[em] init = "given"`` with ``init_means``: EM runs from that start alone (it used to be
    handed n_init = 4, which fit_em refuses for a given start)."""
    from bayesmix.em import fit_em
    from bayesmix.workflow import build_model, em_kwargs, load_catalogue

    path = tmp_path / "given.toml"
    path.write_text('name = "given"\n[data]\nsimulate = "cluster-field"\nn_stars = 120\n'
                    '[model]\nkind = "cluster-field"\n[em]\ninit = "given"\ninit_means = [[-45.0], [0.0]]\n')
    spec = load_spec(path)
    catalogue, _ = load_catalogue(spec)
    kwargs = em_kwargs(spec, build_model(spec, catalogue), catalogue)
    assert kwargs["n_init"] == 1
    assert fit_em(0, catalogue, 2, **kwargs).start_kinds == ("given",)
