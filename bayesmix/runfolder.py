"""Output folders a run owns: a lock while it runs, a staging folder, one consistent result set.

Layout of a run's output folder::

    .bayesmix.lock          while a run holds the folder: its pid, host, start time, command
    .bayesmix-partial/      the run in progress: run.json, checkpoint.npz, then its outputs
    run.json, summary.csv, posterior.nc, membership.*, checkpoint.npz, ...
                            the last finished run: one consistent set, listed in run.json

A run works in the staging folder and only at the end swaps its files in for the previous
set (:func:`publish`), so a run killed or failing at any moment leaves the previous
finished run untouched and never mixes files of two runs. A second run into a folder that
is held stops with :class:`FolderBusyError`; a lock left by a run that died on this
machine (its process is gone) is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT", "LOCK", "PARTIAL", "RUN_RECORD", "FolderBusyError", "locked", "publish", "recover",
           "result_files"]

LOCK = ".bayesmix.lock"
PARTIAL = ".bayesmix-partial"
RUN_RECORD = "run.json"
CHECKPOINT = "checkpoint.npz"
_RETIRED = ".bayesmix-retired"
# What bayesmix before the run.json file list wrote (a folder made by an older version).
_LEGACY_RESULTS = ("summary.csv", "posterior.nc", "em.json", "model_check.csv", "dropped_rows.csv",
                   "spec.toml", "checkpoint.pkl", "corner.png", "trace.png", "ppc.png", "ellipses.png",
                   "membership_histogram.png", "membership_radius.png", "em_history.png")
# A lock file this young with no readable owner is being written by its run right now.
_LOCK_GRACE_SECONDS = 10.0


class FolderBusyError(RuntimeError):
    """Another run holds the output folder.

    Attributes
    ----------
    folder : Path
    owner : dict
        The lock's record: ``pid``, ``host``, ``started_utc``, ``command`` (empty if unreadable).
    """

    def __init__(self, message: str, *, folder, owner: dict):
        super().__init__(message)
        self.folder = Path(folder)
        self.owner = owner


def _read_owner(lock: Path) -> dict:
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _owner_is_gone(lock: Path, owner: dict) -> bool:
    """True when the lock's run died on this machine (its process no longer exists)."""
    if not owner:
        try:
            return time.time() - lock.stat().st_mtime > _LOCK_GRACE_SECONDS
        except FileNotFoundError:
            return True
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False  # another machine's process: it cannot be checked from here
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _busy_message(folder: Path, owner: dict) -> str:
    who = (f"run {owner.get('pid')} on {owner.get('host')} since {owner.get('started_utc')} "
           f"({' '.join(map(str, owner.get('command', [])))})" if owner else "another run")
    return (f"output folder {folder} is in use by {who}. Wait for it to finish, or write elsewhere "
            f"(--out DIR / [output] directory). If that run is dead (e.g. on another machine), delete "
            f"{folder / LOCK}.")


def _try_create(lock: Path, record: dict) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    return True


def _acquire(folder: Path) -> dict:
    lock = folder / LOCK
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "command": list(sys.argv)}
    for _ in range(3):
        if _try_create(lock, record):
            return record
        owner = _read_owner(lock)
        if not _owner_is_gone(lock, owner):
            raise FolderBusyError(_busy_message(folder, owner), folder=folder, owner=owner)
        logger.warning("output folder %s: taking over the lock of run %s, which is no longer running",
                       folder, owner.get("pid", "(unknown)"))
        # Rename first: of two runs taking over the same stale lock, only one renames it.
        stale = lock.with_name(f"{LOCK}.stale-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(lock, stale)
            stale.unlink()
    owner = _read_owner(lock)
    raise FolderBusyError(_busy_message(folder, owner), folder=folder, owner=owner)


def _release(folder: Path, record: dict) -> None:
    lock = folder / LOCK
    if _read_owner(lock).get("pid") == record["pid"]:
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(folder) -> Iterator[Path]:
    """Hold ``folder`` (created if needed) for one run; a second run is refused meanwhile.

    Raises
    ------
    FolderBusyError
        Another live run holds it.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output folder {folder} is a file; give a folder (--out DIR / [output] "
                                 "directory).")
    folder.mkdir(parents=True, exist_ok=True)
    record = _acquire(folder)
    try:
        recover(folder)
        yield folder
    finally:
        _release(folder, record)


def result_files(folder) -> list[str]:
    """Names of the finished run's files in ``folder`` (from its ``run.json``; older folders by name)."""
    folder = Path(folder)
    listed = None
    with contextlib.suppress(OSError, ValueError):
        listed = json.loads((folder / RUN_RECORD).read_text()).get("files")
    if isinstance(listed, list) and all(isinstance(n, str) and n == Path(n).name for n in listed):
        names = [*listed, RUN_RECORD]
    else:
        names = [*_LEGACY_RESULTS, RUN_RECORD, CHECKPOINT,
                 *(p.name for p in folder.glob("membership.*")), *(p.name for p in folder.glob("*.csv.json"))]
    return sorted({n for n in names if not n.startswith(".") and (folder / n).is_file()})


def publish(folder, staged: list[Path]) -> list[Path]:
    """Swap the staged files in for the folder's previous result set.

    The previous set moves aside (its ``run.json`` first), the staged files (``run.json``
    last) move in, and the previous set is deleted. A run killed in between leaves
    ``.bayesmix-retired`` behind, and the next run into the folder completes the swap
    (:func:`recover`): the folder never ends up holding files of two runs.

    Parameters
    ----------
    folder : path
    staged : list of Path
        Files in the staging folder (flat), the new run's whole set.

    Returns
    -------
    list of Path
        Where the staged files now are (``run.json`` left out).
    """
    folder = Path(folder)
    retired = folder / _RETIRED
    if retired.exists():
        shutil.rmtree(retired)
    retired.mkdir()
    for name in sorted(result_files(folder), key=lambda n: n != RUN_RECORD):  # run.json first
        os.replace(folder / name, retired / name)
    published = _move_in(folder, staged)
    shutil.rmtree(retired)
    return [p for p in published if p.name != RUN_RECORD]


def _move_in(folder: Path, staged: list[Path]) -> list[Path]:
    published = []
    for path in sorted(staged, key=lambda p: p.name == RUN_RECORD):  # run.json last
        target = folder / path.name
        os.replace(path, target)
        published.append(target)
    return published


def recover(folder) -> None:
    """Finish a swap that a killed run left half done (see :func:`publish`).

    With the new set complete in the staging folder (its ``run.json`` says ``finished``)
    the swap is completed; otherwise the previous set is put back.
    """
    folder = Path(folder)
    retired, partial = folder / _RETIRED, folder / PARTIAL
    if not retired.is_dir():
        return
    record = {}
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((partial / RUN_RECORD).read_text())
    finished = isinstance(record, dict) and record.get("status") == "finished"
    new_names = record.get("files") if finished else None
    if isinstance(new_names, list):
        for name in result_files(retired):  # an old file not yet moved aside
            if (folder / name).is_file() and name not in new_names:
                os.replace(folder / name, retired / name)
        staged = [partial / n for n in [*new_names, RUN_RECORD] if (partial / n).is_file()]
        _move_in(folder, staged)
        shutil.rmtree(partial)
        logger.warning("output folder %s: completed the swap of results that a killed run left half done",
                       folder)
    else:
        for path in retired.iterdir():
            if not (folder / path.name).exists():
                os.replace(path, folder / path.name)
        logger.warning("output folder %s: restored the previous results that a killed run had moved aside",
                       folder)
    shutil.rmtree(retired)
