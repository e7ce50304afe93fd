"""Put the executed notebooks of ``notebooks/`` into ``docs/notebooks/`` before the build reads.

Where they come from, in order:

1. ``$BAYESMIX_EXECUTED_NOTEBOOKS``: the copies ``tests/test_notebooks.py`` wrote when it
   executed them (``.ci/run``). Every notebook must be there, newer than its source: a
   missing or stale copy fails the build (the tests did not run it, or it failed).
2. Otherwise the notebooks are executed here in quick mode (``BAYESMIX_NOTEBOOK_QUICK=1``),
   with the same nbclient call and working folder as the tests, and kept in
   ``docs/_build/executed_notebooks`` keyed by the SHA-256 of the notebook and
   ``notebooks/_common.py``, so an unchanged notebook is not run again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

ENV_VAR = "BAYESMIX_EXECUTED_NOTEBOOKS"
CELL_TIMEOUT_S = 900


def _digest(path: Path, common: Path) -> str:
    h = hashlib.sha256(path.read_bytes())
    if common.is_file():
        h.update(common.read_bytes())
    return h.hexdigest()


def _execute(source: Path, target: Path) -> None:
    import nbclient
    import nbformat

    nb = nbformat.read(source, as_version=4)
    saved = {k: os.environ.get(k) for k in ("BAYESMIX_NOTEBOOK_QUICK", "MPLBACKEND")}
    os.environ["BAYESMIX_NOTEBOOK_QUICK"] = "1"
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend turns figures into outputs
    try:
        client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                         resources={"metadata": {"path": str(source.parent)}})
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    tmp = target.with_name(f".{target.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, target)


def _from_tests(folder: Path, sources: list[Path]) -> dict[Path, Path]:
    found = {}
    for source in sources:
        copy = folder / source.name
        if not copy.is_file():
            raise ExtensionError(f"{ENV_VAR}={folder} holds no executed {source.name}: did "
                                 "tests/test_notebooks.py run (and pass) with that variable set?")
        if copy.stat().st_mtime < source.stat().st_mtime:
            raise ExtensionError(f"{copy} is older than {source}: run tests/test_notebooks.py again.")
        found[source] = copy
    return found


def _executed_here(cache: Path, sources: list[Path], common: Path) -> dict[Path, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    found = {}
    for source in sources:
        key = _digest(source, common)[:16]
        copy = cache / f"{source.stem}-{key}.ipynb"
        if not copy.is_file():
            logger.info(f"executing {source.name} in quick mode (set {ENV_VAR} to reuse the tests' copies)")
            for old in cache.glob(f"{source.stem}-*.ipynb"):
                old.unlink()
            _execute(source, copy)
        found[source] = copy
    return found


def copy_executed_notebooks(app) -> None:
    repo = Path(app.srcdir).parent
    sources = sorted((repo / "notebooks").glob("*.ipynb"))
    folder = os.environ.get(ENV_VAR)
    if folder:
        found = _from_tests(Path(folder), sources)
    else:
        found = _executed_here(Path(app.srcdir) / "_build" / "executed_notebooks", sources,
                               repo / "notebooks" / "_common.py")
    out = Path(app.srcdir) / "notebooks"
    out.mkdir(exist_ok=True)
    for source, copy in found.items():
        target = out / source.name
        if not target.is_file() or target.read_bytes() != copy.read_bytes():
            shutil.copyfile(copy, target)  # unchanged files keep their time: Sphinx skips them
    for stale in out.glob("*.ipynb"):
        if stale.name not in {s.name for s in sources}:
            stale.unlink()


def setup(app):
    app.connect("builder-inited", copy_executed_notebooks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
