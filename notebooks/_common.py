"""Small helpers shared by the notebooks: where the real catalogues are, and quick mode.

* ``QUICK`` is True when ``BAYESMIX_NOTEBOOK_QUICK=1`` (set by ``tests/test_notebooks.py``):
  notebooks shrink chains, draws and loops so that CI runs each in a few minutes.
  ``pick(full, quick)`` returns the value for the current mode.
* ``find_data(name)`` returns the folder ``<shared data>/<name>``, where the shared data are
  ``$BAYESMIX_SHARED_DATA`` or ``../shared/data`` next to the repository. When it is absent
  the notebook falls back to simulated data: ``find_data`` prints a note and returns None,
  unless ``BAYESMIX_REQUIRE_SHARED_DATA=1``, when it raises ``FileNotFoundError``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["QUICK", "REPO_ROOT", "find_data", "pick", "shared_data_dir"]

QUICK = os.environ.get("BAYESMIX_NOTEBOOK_QUICK") == "1"
REPO_ROOT = Path(__file__).resolve().parents[1]


def pick(full, quick):
    """``quick`` in quick mode (CI), ``full`` otherwise."""
    return quick if QUICK else full


def shared_data_dir() -> Path:
    """``$BAYESMIX_SHARED_DATA`` if set, else ``../shared/data`` beside the repository."""
    override = os.environ.get("BAYESMIX_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


def find_data(name: str) -> Path | None:
    """The folder of one real catalogue, or None (with a printed note) when it is absent.

    Raises FileNotFoundError instead of returning None when BAYESMIX_REQUIRE_SHARED_DATA=1.
    """
    path = shared_data_dir() / name
    if path.is_dir():
        print(f"Real data: {path}")
        return path
    message = (f"The real catalogue folder {path} is absent (set BAYESMIX_SHARED_DATA to the folder "
               "that holds it).")
    if os.environ.get("BAYESMIX_REQUIRE_SHARED_DATA") == "1":
        raise FileNotFoundError(message + " BAYESMIX_REQUIRE_SHARED_DATA=1 forbids the simulated fallback.")
    print("NOTE: " + message + "\nThis run uses SIMULATED data instead: the numbers below describe the "
          "simulation, not the real cluster(s).")
    return None
