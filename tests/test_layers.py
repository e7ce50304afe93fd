"""The package's map tells the truth: modules import only lower layers, and the README says which.

Every ``import`` of a bayesmix module is read from the source (module level and inside
functions alike), so a function-local import cannot hide an upward edge. The README's
module graph is the text :func:`module_graph` writes; when an import changes, the failing
test prints the new graph to paste.
"""

import ast
import re

import pytest
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "bayesmix"

# Bottom to top. A module may import modules of lower rows only (never its own row).
LAYERS = [
    ("_files",),
    ("_x64", "_random", "_padding", "_choices", "_arviz", "_programs", "_covariances"),
    ("_constraints",),
    ("sky",),
    ("config", "runfolder"),
    ("catalogue",),
    ("likelihood",),
    ("components", "spatial"),
    ("simulate",),
    ("em",),
    ("models", "clusters", "stream"),
    ("hmc", "distributed"),
    ("checkpoint",),
    ("membership",),
    ("sampling",),
    ("own_model", "diagnostics"),
    ("plotting",),
    ("cluster_runs", "_drawing"),
    ("estimator", "workflow"),
    ("cli",),
]
FRONT_DOORS = {"cli": "the command line", "workflow": "runs from a spec",
               "estimator": "scikit-learn estimator"}


def _rank():
    return {module: row for row, modules in enumerate(LAYERS) for module in modules}


def _imports(path):
    """bayesmix modules imported by ``path``: {name: True if any import of it is function-local}."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bayesmix"):
            parts = node.module.split(".")
            names = parts[1:2] if len(parts) > 1 else [a.name for a in node.names if a.name != "__version__"]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("bayesmix.")]
        for name in names:
            found[name] = found.get(name, False) or node.col_offset > 0
    found.pop(path.stem, None)
    return found


def _modules():
    return sorted(p for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def module_graph() -> str:
    """The README's module graph: one line per module, top layer first, with what it imports."""
    rank = _rank()
    lines = []
    for row in reversed(LAYERS):
        for module in row:
            path = PACKAGE / f"{module}.py"
            if not path.exists():
                continue
            imported = sorted(_imports(path), key=lambda m: (-rank.get(m, -1), m))
            door = f"  [front door: {FRONT_DOORS[module]}]" if module in FRONT_DOORS else ""
            imports = ", ".join(imported) or "(no bayesmix module)"
            lines.append(f"{module:<12} -> {imports}{door}")
    return "\n".join(lines)


def test_every_module_has_a_layer():
    missing = [p.stem for p in _modules() if p.stem not in _rank()]
    assert not missing, f"add {missing} to LAYERS in tests/test_layers.py (and the README's graph)"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.stem)
def test_modules_import_only_lower_layers(path):
    rank = _rank()
    upward = {name: local for name, local in _imports(path).items()
              if rank.get(name, len(LAYERS)) >= rank.get(path.stem, -1)}
    assert not upward, (f"{path.stem} (layer {rank.get(path.stem)}) imports {sorted(upward)} from its own "
                        "or a higher layer; move the shared piece down instead")


def test_front_doors_are_built_on_the_layers_below():
    # The CLI goes through workflow only for fitting; the estimator and workflow meet only in the functions.
    assert "workflow" in _imports(PACKAGE / "cli.py")
    assert "estimator" not in _imports(PACKAGE / "workflow.py")
    assert "workflow" not in _imports(PACKAGE / "estimator.py")


def test_readme_module_graph_is_the_real_one():
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- module graph -->\n```text\n(.*?)```", readme, flags=re.S)
    assert len(blocks) == 1, "the README needs one ```text block after <!-- module graph -->"
    graph = module_graph()
    assert blocks[0].strip() == graph, "README's module graph is stale; replace it with:\n" + graph
