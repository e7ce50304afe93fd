"""Runs and their files under faults: hostile or damaged checkpoints, changed data, two runs in
one folder, kills, a full or read-only disk, a broken compilation cache, errors in the shell.

The cases of the reliability audit (``../shared/audits/reliability-2026-12-01.md``; ids name
its rows) as tables: for each, what is done to a finished run's folder, the exit status, the
words the message must hold, and what must (not) be on disk afterwards. One small finished
run (150 stars, 2 x (60 + 60)) is made once and copied for each case; the cases that need a
second real run (concurrency, a kill, a full disk) are kept few.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bayesmix.catalogue import read_provenance
from bayesmix.checkpoint import CheckpointError, read_checkpoint
from bayesmix.cli import (
    EXIT_ENVIRONMENT_ERROR,
    EXIT_INPUT_ERROR,
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    main,
)
from bayesmix.runfolder import CHECKPOINT, LOCK, PARTIAL, RUN_RECORD, publish, result_files

SMALL = ["--num-warmup", "60", "--num-samples", "60", "--num-chains", "2", "--no-cache", "--no-figures",
         "--exit-zero"]
FINISHED_OK = (0,)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A catalogue file, a spec reading it, and the folder of one finished run of it."""
    root = tmp_path_factory.mktemp("finished")
    catalogue = root / "stars.fits"
    assert main(["simulate", "cluster-field", "--out", str(catalogue), "--n-stars", "150"]) == 0
    spec = root / "run.toml"
    spec.write_text(f'name = "faults"\nseed = 3\n[data]\npath = "{catalogue}"\nvalues = ["RV"]\n'
                    'errors = ["E_RV"]\n[model]\nkind = "cluster-field"\n[sampler]\nnum_samples = 1000\n')
    out = root / "run"
    assert main(["fit", str(spec), "--out", str(out), *SMALL]) == 0
    return {"catalogue": catalogue, "spec": spec, "out": out}


@pytest.fixture
def copy(finished, tmp_path):
    """A private copy of the finished run (catalogue and spec included), for a case to damage."""
    catalogue = tmp_path / "stars.fits"
    shutil.copy2(finished["catalogue"], catalogue)
    spec = tmp_path / "run.toml"
    spec.write_text(finished["spec"].read_text().replace(str(finished["catalogue"]), str(catalogue)))
    out = tmp_path / "run"
    shutil.copytree(finished["out"], out)
    return {"catalogue": catalogue, "spec": spec, "out": out}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- resume: what it reads


class _Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payload_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


def _crafted_pickle(run, marker):
    (run["out"] / CHECKPOINT).unlink()
    (run["out"] / "checkpoint.pkl").write_bytes(_payload_pickle(marker))


def _crafted_npz(run, marker):
    """An .npz whose one array is an object array: loading it would unpickle the payload."""
    with open(run["out"] / CHECKPOINT, "wb") as fh:
        np.savez(fh, meta=np.array([_Payload(marker)], dtype=object))


def _truncate(run, marker):
    path = run["out"] / CHECKPOINT
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(run, marker):
    (run["out"] / CHECKPOINT).write_bytes(b"")


def _random(run, marker):
    (run["out"] / CHECKPOINT).write_bytes(np.random.default_rng(0).bytes(5000))


def _text(run, marker):
    (run["out"] / CHECKPOINT).write_text("not a checkpoint\n")


def _foreign_npz(run, marker):
    with open(run["out"] / CHECKPOINT, "wb") as fh:
        np.savez(fh, x=np.arange(3))


def _other_format(run, marker):
    with open(run["out"] / CHECKPOINT, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps({"format": "something-else", "version": 1})))


def _missing_array(run, marker):
    path = run["out"] / CHECKPOINT
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "state/key"}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _run_json_corrupt(run, marker):
    (run["out"] / RUN_RECORD).write_text("{")


def _run_json_empty(run, marker):
    (run["out"] / RUN_RECORD).write_text("{}")


def _catalogue_changed(run, marker):
    from astropy.table import Table

    table = Table.read(run["catalogue"])
    table["RV"] += 100.0
    table.write(run["catalogue"], overwrite=True)


RESUME_CASES = [
    # id, damage, extra CLI arguments, exit status, words of the message
    ("row125-crafted-pickle-named-checkpoint", _crafted_pickle, [], EXIT_INPUT_ERROR,
     ["no saved run", "never loaded", "pickle can run code"]),
    ("row154-crafted-pickle-inside-npz", _crafted_npz, [], EXIT_INPUT_ERROR,
     ["checkpoint", "damaged or not a bayesmix checkpoint"]),
    ("row123-truncated-checkpoint", _truncate, [], EXIT_INPUT_ERROR, ["damaged", "start the run afresh"]),
    ("row123-empty-checkpoint", _empty, [], EXIT_INPUT_ERROR, ["damaged"]),
    ("row123-random-bytes-checkpoint", _random, [], EXIT_INPUT_ERROR, ["damaged"]),
    ("row123-text-checkpoint", _text, [], EXIT_INPUT_ERROR, ["damaged"]),
    ("row124-foreign-npz", _foreign_npz, [], EXIT_INPUT_ERROR, ["no bayesmix metadata"]),
    ("row124-other-format", _other_format, [], EXIT_INPUT_ERROR, ["not a bayesmix checkpoint",
                                                                   "something-else"]),
    ("row124-array-missing", _missing_array, [], EXIT_INPUT_ERROR, ["incomplete", "state/key"]),
    ("row126-run-json-corrupt", _run_json_corrupt, [], EXIT_INPUT_ERROR, ["run.json is damaged"]),
    ("row126-run-json-empty", _run_json_empty, [], EXIT_INPUT_ERROR, ["no run specification"]),
    ("row129-catalogue-changed", _catalogue_changed, [], EXIT_INPUT_ERROR,
     ["made from other data", "sha256", "catalogue"]),
    ("row128-seed-changed", lambda run, marker: None, ["--seed", "4"], EXIT_INPUT_ERROR,
     ["different spec", "seed"]),
    ("row127-fewer-draws", lambda run, marker: None, ["--num-samples", "30"], EXIT_INPUT_ERROR,
     ["already holds 60 draws"]),
]


@pytest.mark.parametrize(("damage", "extra", "status", "words"), [c[1:] for c in RESUME_CASES],
                         ids=[c[0] for c in RESUME_CASES])
def test_resume_refuses_what_it_cannot_trust_and_keeps_the_run(copy, tmp_path, capsys, damage, extra,
                                                                 status, words):
    marker = tmp_path / "PAYLOAD_RAN"
    damage(copy, marker)
    before = _snapshot(copy["out"])
    args = ["--num-warmup", "60", "--num-chains", "2", "--no-cache", "--no-figures", "--exit-zero"]
    assert main(["fit", str(copy["spec"]), "--out", str(copy["out"]), *args, *extra, "--resume"]) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert not marker.exists(), "a checkpoint file ran code"
    assert _snapshot(copy["out"]) == before, "a refused resume changed the folder"
    assert not (copy["out"] / PARTIAL).exists() and not (copy["out"] / LOCK).exists()


def test_a_checkpoint_is_read_without_unpickling(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "checkpoint.npz"
    with open(path, "wb") as fh:
        np.savez(fh, meta=np.array([_Payload(marker)], dtype=object))
    with pytest.raises(CheckpointError, match="damaged or not a bayesmix checkpoint"):
        read_checkpoint(path)
    assert not marker.exists()


def test_resume_without_num_samples_keeps_the_saved_target(copy, capsys):
    """The spec asks for 1000 draws; the run was made with --num-samples 60 and stays there."""
    before = read_provenance(copy["out"] / "summary.csv")["draws_per_chain"]
    assert main(["fit", str(copy["spec"]), "--out", str(copy["out"]), "--num-warmup", "60", "--num-chains",
                 "2", "--no-cache", "--no-figures", "--exit-zero", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "continuing the saved run to its 60 draws per chain" in printed
    assert before == read_provenance(copy["out"] / "summary.csv")["draws_per_chain"] == 60
    assert set(result_files(copy["out"])) == set(json.loads((copy["out"] / RUN_RECORD).read_text())["files"]
                                                 + [RUN_RECORD])


# --------------------------------------------------------------------------- folders: owned, consistent


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_of_a_dead_run_is_taken_over(copy, caplog):
    import socket

    (copy["out"] / LOCK).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                "started_utc": "2026-01-01T00:00:00+00:00", "command": []}))
    assert main(["fit", str(copy["spec"]), "--out", str(copy["out"]), *SMALL, "--resume"]) == 0
    assert "no longer running" in caplog.text
    assert not (copy["out"] / LOCK).exists()


def test_a_lock_held_on_another_machine_is_respected(copy, capsys):
    lock = {"pid": 1, "host": "another-node", "started_utc": "2026-01-01T00:00:00+00:00",
            "command": ["bayesmix", "fit", "x.toml"]}
    (copy["out"] / LOCK).write_text(json.dumps(lock))
    before = _snapshot(copy["out"])
    assert main(["fit", str(copy["spec"]), "--out", str(copy["out"]), *SMALL]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert "is in use by run 1 on another-node" in err and "delete" in err and LOCK in err
    assert _snapshot(copy["out"]) == before


def _subprocess_fit(spec, out, *extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "bayesmix.cli", "fit", str(spec), "--out", str(out),
                             "--num-warmup", "60", "--num-chains", "2", "--no-cache", "--no-figures",
                             "--exit-zero", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(path: Path, proc, timeout=300.0) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


def test_two_runs_into_one_folder_the_second_is_refused(copy, capsys):
    """row117 / row118: the first run's files survive, the second says who holds the folder."""
    first = _subprocess_fit(copy["spec"], copy["out"], "--seed", "5", "--num-samples", "400")
    try:
        assert _wait_for(copy["out"] / PARTIAL / CHECKPOINT, first), "the first run never checkpointed"
        assert main(["fit", str(copy["spec"]), "--out", str(copy["out"]), *SMALL, "--seed", "6"]) == 2
        err = capsys.readouterr().err
        assert "is in use by run" in err and str(first.pid) in err
        assert (copy["out"] / PARTIAL / CHECKPOINT).exists(), "the second run touched the first's checkpoint"
    finally:
        _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err.decode()
    assert json.loads((copy["out"] / RUN_RECORD).read_text())["spec"]["seed"] == 5
    assert read_provenance(copy["out"] / "summary.csv")["seed"] == 5


@pytest.mark.parametrize(("kill_when", "num_samples"), [(CHECKPOINT, "400"), ("summary.csv", "60")],
                         ids=["row116-after-first-checkpoint", "row115-while-writing-outputs"])
def test_a_killed_fresh_run_leaves_the_previous_results_whole(copy, kill_when, num_samples):
    """row116 / row115: a new run (another seed) killed after its first checkpoint, or while it
    writes its outputs: the folder still holds the previous run's consistent set, and the killed
    one's checkpoint is there to resume."""
    before = _snapshot(copy["out"])
    proc = _subprocess_fit(copy["spec"], copy["out"], "--seed", "4", "--num-samples", num_samples)
    assert _wait_for(copy["out"] / PARTIAL / kill_when, proc), f"the run never wrote {kill_when}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = _snapshot(copy["out"])
    assert LOCK in after, "the killed run should have held the folder"
    assert {k: v for k, v in after.items() if k != LOCK} == before, "the killed run touched the results"
    assert json.loads((copy["out"] / RUN_RECORD).read_text())["spec"]["seed"] == 3
    assert read_checkpoint(copy["out"] / PARTIAL / CHECKPOINT).settings["seed"] == 4
    from bayesmix.runfolder import locked

    with locked(copy["out"]):  # the dead run's lock is taken over
        pass
    assert not (copy["out"] / LOCK).exists()


def test_a_swap_killed_half_way_is_completed_by_the_next_run(copy, monkeypatch):
    """SIGKILL inside the swap of result sets (simulated: os.replace stops after three files)."""
    stage = copy["out"] / PARTIAL
    stage.mkdir()
    old_files = result_files(copy["out"])
    new_files = ["summary.csv", "posterior.nc", CHECKPOINT]
    for name in new_files:
        (stage / name).write_text(f"new {name}")
    (stage / RUN_RECORD).write_text(json.dumps({"status": "finished", "files": new_files}))
    real_replace, calls = os.replace, {"n": 0}

    def killed(src, dst):
        calls["n"] += 1
        if calls["n"] > len(old_files) + 1:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        publish(copy["out"], [stage / n for n in [*new_files, RUN_RECORD]])
    monkeypatch.setattr(os, "replace", real_replace)
    from bayesmix.runfolder import locked

    with locked(copy["out"]):
        pass
    assert sorted(p.name for p in copy["out"].iterdir()) == sorted([*new_files, RUN_RECORD])
    assert all((copy["out"] / n).read_text() == f"new {n}" for n in new_files)


# --------------------------------------------------------------------------- the machine: disk, cache


def test_output_folder_that_is_a_file_is_named(copy, tmp_path, capsys):
    """row102."""
    target = tmp_path / "a_file"
    target.write_text("x")
    assert main(["fit", str(copy["spec"]), "--out", str(target), *SMALL]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err


def _mount_tmpfs(path: Path, options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize(("options", "words"), [("size=400k", ["space", "free disk space"]),
                                                ("size=150k", ["space", "free disk space"]),
                                                ("size=1m,ro", ["Read-only file system"])],
                         ids=["row120-full-disk-400k", "row121-full-disk-150k", "row119-read-only"])
def test_a_full_or_read_only_disk_is_a_message_not_a_crash(finished, tmp_path, options, words):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, options):
        pytest.skip("needs root and tmpfs to make a small or read-only disk")
    try:
        proc = _subprocess_fit(finished["spec"], disk / "run", "--num-samples", "60")
        _, err = proc.communicate(timeout=600)
        err = err.decode()
        assert proc.returncode == EXIT_ENVIRONMENT_ERROR, (proc.returncode, err)
        assert "Traceback" not in err and all(w in err for w in words), err
        leftovers = [p for p in disk.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
        assert not leftovers
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_an_unusable_compilation_cache_is_skipped(copy, tmp_path, monkeypatch, caplog):
    """row134: the cache folder is a file: the run goes on without it, saying so."""
    cache = tmp_path / "cache_is_a_file"
    cache.write_text("x")
    monkeypatch.setenv("BAYESMIX_CACHE", str(cache))
    args = [a for a in SMALL if a != "--no-cache"]
    assert main(["fit", str(copy["spec"]), "--out", str(copy["out"]), *args, "--resume"]) == 0
    assert "compilation cache" in caplog.text and "running without it" in caplog.text
    from bayesmix import _programs

    _programs.set_store(None)


def test_a_damaged_stored_program_is_rebuilt(copy, tmp_path):
    """row132: 8 bytes overwritten inside every stored program: rebuilt with a warning, same results."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "BAYESMIX_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "bayesmix.cli", "fit", str(copy["spec"]), "--out", str(copy["out"]),
               "--num-warmup", "60", "--num-chains", "2", "--no-figures", "--exit-zero", "--resume"]
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    stored = sorted((tmp_path / "cache").rglob("*.jaxexport"))
    assert stored
    for path in stored:
        data = bytearray(path.read_bytes())
        data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8
        path.write_bytes(bytes(data))
    # errors="replace": MLIR prints the damaged bytes it met straight to stderr (not through Python).
    done = subprocess.run(command, env=env, capture_output=True, text=True, errors="replace")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- the shell


def test_verbose_after_the_command_is_accepted(tmp_path, capsys):
    """row111."""
    assert main(["fit", str(tmp_path / "missing.toml"), "-v"]) == EXIT_INPUT_ERROR
    assert "model file not found" in capsys.readouterr().err


@pytest.mark.parametrize(("raised", "status", "words"), [
    (TypeError("boom"), EXIT_INTERNAL_ERROR, ["internal error: TypeError: boom", "bug", "-v"]),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, ["interrupted", "--resume"]),
    (PermissionError(13, "Permission denied", "/x"), EXIT_ENVIRONMENT_ERROR, ["Permission denied"]),
    (MemoryError(), EXIT_ENVIRONMENT_ERROR, ["not enough memory"]),
], ids=["bug", "ctrl-c", "permissions", "memory"])
def test_every_failure_is_one_line_and_an_exit_status(monkeypatch, tmp_path, capsys, raised, status, words):
    import bayesmix.cli as cli

    def fail(args):
        raise raised

    monkeypatch.setattr(cli, "_fit", fail)
    assert main(["fit", str(tmp_path / "x.toml")]) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err


def test_a_failed_run_leaves_no_folder_behind(finished, tmp_path, monkeypatch, capsys):
    """The audit's minor list: a failed run used to leave an empty output folder (and temp files)."""
    import bayesmix.sampling

    def fails(*args, **kwargs):
        raise MemoryError("simulated: out of memory while sampling")

    monkeypatch.setattr(bayesmix.sampling, "sample_posterior", fails)
    out = tmp_path / "new_folder"
    assert main(["fit", str(finished["spec"]), "--out", str(out), *SMALL]) == EXIT_ENVIRONMENT_ERROR
    assert "not enough memory" in capsys.readouterr().err
    assert not out.exists()


WITH_FIGURES = [a for a in SMALL if a != "--no-figures"]


def test_a_failing_figure_fails_the_run_and_publishes_nothing(finished, tmp_path, monkeypatch, capsys):
    """A figure's bug (here in preparing its data, in the run's process) fails the run with
    the exit status of a bug: nothing is published, and the checkpoint is kept to resume."""
    import bayesmix.plotting as plotting

    def broken(*args, **kwargs):
        raise TypeError("simulated: a figure's bug")

    monkeypatch.setattr(plotting, "trace_variables", broken)
    out = tmp_path / "new_folder"
    assert main(["fit", str(finished["spec"]), "--out", str(out), *WITH_FIGURES]) == EXIT_INTERNAL_ERROR
    assert "a figure's bug" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [PARTIAL]
    assert (out / PARTIAL / CHECKPOINT).is_file()


def test_a_figure_failing_in_the_drawing_process_fails_the_run_in_one_line(finished, tmp_path, monkeypatch,
                                                                            capsys):
    """A figure that fails in the drawing process: the same exit status and nothing published;
    the message names the figure on one line, without the process's traceback."""
    from bayesmix import _drawing, workflow

    bad = _drawing.FigureJob("trace.png", "trace", {"variables": {}, "diverging": None})
    monkeypatch.setattr(workflow, "posterior_figure_jobs", lambda fit, truth=None: [bad])
    monkeypatch.setattr(_drawing, "_usable_cores", lambda: 8)  # drawn in the processes, as on most machines
    out = tmp_path / "new_folder"
    assert main(["fit", str(finished["spec"]), "--out", str(out), *WITH_FIGURES]) == EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "figure trace.png failed in the drawing process: ValueError: variables is empty" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [PARTIAL]

