"""The notebooks in notebooks/ run from top to bottom, and are stored without outputs.

Each notebook is executed with nbclient in a fresh kernel (the ``python3`` kernel, which
jupyter_client starts with this interpreter), with notebooks/ as the working directory
and ``BAYESMIX_NOTEBOOK_QUICK=1``, so it uses its small settings. A notebook asserts the
numbers its text claims, so a cell error is a failed claim as much as a crash.

Executed copies: when ``BAYESMIX_EXECUTED_NOTEBOOKS`` names a folder, every notebook that
ran is also written there with its outputs (atomically: a temporary file, then a rename), and
the documentation build (``docs/conf.py``) renders those copies instead of executing the
notebooks a second time. ``.ci/run`` sets it for the test run and builds the docs after.

Real data: each notebook reads ``../shared/data`` (or ``$BAYESMIX_SHARED_DATA``) and falls
back to simulated data with a printed note when it is absent, unless
``BAYESMIX_REQUIRE_SHARED_DATA=1`` (CI), when the notebook itself fails.
"""

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 900  # one cell; a whole quick-mode notebook takes a few minutes
EXECUTED_DIR_VAR = "BAYESMIX_EXECUTED_NOTEBOOKS"


def _save_executed(nb, name):
    """Write the executed notebook to ``$BAYESMIX_EXECUTED_NOTEBOOKS/<name>`` (when set) for the docs.

    Written to a temporary file in the same folder and renamed, so the docs build never reads
    half a notebook (the workers of pytest-xdist may write side by side).
    """
    folder = os.environ.get(EXECUTED_DIR_VAR)
    if not folder:
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    nbformat.write(nb, tmp)
    os.replace(tmp, target)
    return target


def _execute(nb, cwd):
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
    """Quick mode and a private compilation cache, inherited by every kernel this module starts."""
    patch = pytest.MonkeyPatch()
    patch.setenv("BAYESMIX_NOTEBOOK_QUICK", "1")
    patch.setenv("BAYESMIX_CACHE", str(tmp_path_factory.mktemp("notebook-jax-cache")))
    patch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend turns figures into outputs
    yield
    patch.undo()


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


def test_kernel_runs_this_interpreter(notebook_env, tmp_path):
    """The kernel must see this environment's bayesmix; otherwise every notebook test is meaningless."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys, bayesmix\nprint(sys.executable)\nprint(bayesmix.__file__)")])
    _execute(nb, tmp_path)
    executable, module = "".join(out.get("text", "") for out in nb.cells[0].outputs).split()
    assert Path(executable).resolve() == Path(sys.executable).resolve(), (
        f"the python3 kernel runs {executable}, not {sys.executable}: install ipykernel in this environment")
    assert Path(module).resolve().parent == Path(__file__).resolve().parents[1] / "bayesmix"


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, notebook_env):
    nb = nbformat.read(path, as_version=4)
    try:
        _execute(nb, NOTEBOOK_DIR)
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name}: {exc}", pytrace=False)
    images = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.outputs)
    assert images > 0, f"{path.name} drew no figure"
    _save_executed(nb, path.name)


def test_executed_notebook_is_saved_atomically_for_the_docs(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    monkeypatch.delenv(EXECUTED_DIR_VAR, raising=False)
    assert _save_executed(nb, "x.ipynb") is None
    monkeypatch.setenv(EXECUTED_DIR_VAR, str(tmp_path / "executed"))
    target = _save_executed(nb, "x.ipynb")
    assert target == tmp_path / "executed" / "x.ipynb"
    assert nbformat.read(target, as_version=4).cells[0].outputs[0]["data"]["text/plain"] == "2"
    assert [p.name for p in target.parent.iterdir()] == ["x.ipynb"]  # no temporary file left


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name}: cell {i} has stored outputs"
        assert cell.execution_count is None, f"{path.name}: cell {i} has an execution count"
