"""Write the API reference pages (``docs/api/generated/``) from the package itself.

One page per public module (every ``bayesmix/<name>.py`` not starting with ``_``), documenting
the names in its ``__all__`` with autodoc and numpydoc, and one page of the top-level exports
(``bayesmix.__all__``), each linked to where it is documented. A module added to the package
gets its page without an edit here; ``GROUPS`` only orders them on the index.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# Modules in the order a user meets them; any other public module is listed under "More".
GROUPS = {
    "Data": ["catalogue", "sky", "simulate", "config"],
    "Fitting": ["em", "models", "sampling", "own_model", "estimator", "workflow"],
    "Results": ["diagnostics", "membership", "plotting"],
    "Model building blocks": ["likelihood", "components", "spatial", "clusters", "cluster_runs", "hmc"],
    "Files and runs": ["checkpoint", "runfolder", "cli"],
}


def public_modules(package: Path) -> list[str]:
    return sorted(p.stem for p in package.glob("*.py") if not p.stem.startswith("_"))


def _module_page(name: str) -> str:
    module = importlib.import_module(f"bayesmix.{name}")
    title = f"bayesmix.{name}"
    lines = [title, "=" * len(title), "", f".. automodule:: bayesmix.{name}", "   :no-members:", ""]
    names = list(getattr(module, "__all__", []))
    if names:
        lines += [".. currentmodule:: " + f"bayesmix.{name}", "", ".. autosummary::", "   :nosignatures:", ""]
        lines += [f"   {n}" for n in names] + [""]
        for n in names:
            obj = getattr(module, n)
            kind = "autoclass" if isinstance(obj, type) else (
                "autofunction" if callable(obj) else "autodata")
            lines += [f".. {kind}:: {n}"]
            if kind == "autoclass":
                lines += ["   :members:", "   :show-inheritance:"]
            if kind == "autodata":
                lines += ["   :no-value:"]
            lines.append("")
    return "\n".join(lines)


def _top_level_page() -> str:
    import bayesmix

    lines = ["Top-level names (``import bayesmix``)", "=" * 38, "",
             "``import bayesmix`` is light: these names are re-exported lazily, and JAX is imported "
             "(and switched to float64) when the first numerical one is used. Each is documented in "
             "its module.", "", ".. list-table::", "   :header-rows: 1", "   :widths: 40 60", "",
             "   * - name", "     - documented in"]
    for name in bayesmix.__all__:
        if name == "__version__":
            continue
        module = bayesmix._EXPORTS[name]
        lines += [f"   * - :py:obj:`bayesmix.{name} <bayesmix.{module}.{name}>`",
                  f"     - :doc:`bayesmix.{module} <bayesmix.{module}>`"]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:  # unchanged pages keep their time
        path.write_text(text)


def write_api_pages(app) -> None:
    src = Path(app.srcdir)
    out = src / "api" / "generated"
    out.mkdir(parents=True, exist_ok=True)
    modules = public_modules(src.parent / "bayesmix")
    for name in modules:
        _write(out / f"bayesmix.{name}.rst", _module_page(name))
    _write(out / "top_level.rst", _top_level_page())
    grouped = [m for group in GROUPS.values() for m in group]
    sections = {**GROUPS, "More": [m for m in modules if m not in grouped]}
    lines = []
    for title, names in sections.items():
        names = [n for n in names if n in modules]
        if not names:
            continue
        lines += [title, "-" * len(title), "", ".. toctree::", "   :maxdepth: 1", ""]
        lines += [f"   generated/bayesmix.{n}" for n in names] + [""]
    _write(out / "modules.inc", "\n".join(lines))
    for stale in out.glob("bayesmix.*.rst"):
        if stale.stem.removeprefix("bayesmix.") not in modules:
            stale.unlink()


def setup(app):
    app.connect("builder-inited", write_api_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
