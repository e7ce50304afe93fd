"""A run's figures drawn from plain-data jobs, in a drawing process beside the run or in the run's own."""

import logging

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from bayesmix import _drawing, plotting
from bayesmix._drawing import DrawingProcess, EMHistory, FigureError, FigureJob

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _jobs(seed=0):
    """One job of each kind, from stand-in draws (no fit needed)."""
    rng = np.random.default_rng(seed)
    columns = rng.normal([-45.0, 2.3, 0.36], [0.3, 0.3, 0.03], size=(400, 3))
    variables = {"mean1": rng.normal(-45.0, 0.3, (2, 200)), "sigma1": rng.normal(2.3, 0.3, (2, 200))}
    diverging = np.zeros((2, 200), bool)
    diverging[1, 50] = True
    p = rng.beta(0.3, 0.3, 300)
    values = rng.normal(0.0, 10.0, (300, 1))
    replicated = rng.normal(0.0, 10.0, (50, 300, 1))
    band = plotting.predictive_band(values, replicated)
    history = EMHistory(np.array([-10.0, -5.0, -4.0]), np.array([-10.0, -5.0, -4.0]), 2, True,
                        np.array([-4.0, -4.5]), ("kmeans++", "peak"), (-4.0,))
    return [FigureJob("corner.png", "corner", {"columns": columns, "labels": ["m", "s", "f"],
                                               "truths": [-45.0, None, 0.36]}),
            FigureJob("trace.png", "trace", {"variables": variables, "diverging": diverging}),
            FigureJob("membership_histogram.png", "membership_histogram",
                      {"probabilities": p[:, None], "component_names": ["cluster"]}),
            FigureJob("ppc.png", "ppc", {"bands": [band], "labels": ["RV [km/s]"]}),
            FigureJob("membership_radius.png", "membership_radius", {
                "values": values[:, 0], "radius": rng.uniform(0, 10, 300), "probability": p,
                "value_label": "RV", "radius_label": "R", "title": "probability of 'cluster'"}),
            FigureJob("em_history.png", "em_history", {"em_result": history})]


def test_the_drawing_process_draws_every_job_in_submission_order(tmp_path):
    jobs = _jobs()
    with DrawingProcess(True, in_process=False) as drawing:
        assert not drawing.in_process
        drawing.submit(tmp_path, jobs[:2])
        drawing.submit(tmp_path, jobs[2:])
        paths = drawing.finish()
    assert [p.name for p in paths] == [job.file_name for job in jobs]
    for path in paths:
        image = plt.imread(path)
        assert image.ndim == 3 and image.std() > 0.01  # a picture, not a blank canvas
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left


def test_the_process_draws_the_same_pixels_as_this_process_with_this_process_style(tmp_path):
    """The process applies the caller's matplotlib settings: a user's style reaches the run's PNGs."""
    jobs = [_jobs()[0], _jobs()[1]]
    with matplotlib.rc_context({"axes.facecolor": "0.85", "lines.linewidth": 2.5}):
        assert _drawing._style()["axes.facecolor"] == "0.85"
        here = DrawingProcess(True, in_process=True)
        here.submit(tmp_path / "here", jobs)
        there = DrawingProcess(True, in_process=False)
        there.submit(tmp_path / "there", jobs)
        for a, b in zip(here.finish(), there.finish(), strict=True):
            assert np.array_equal(plt.imread(a), plt.imread(b)), a.name
    plain = DrawingProcess(True, in_process=True)
    plain.submit(tmp_path / "plain", jobs[:1])
    assert not np.array_equal(plt.imread(plain.finish()[0]), plt.imread(tmp_path / "here" / "corner.png"))


def test_a_figure_failing_in_the_process_raises_with_its_name_and_traceback(tmp_path):
    bad = FigureJob("trace.png", "trace", {"variables": {}, "diverging": None})
    with DrawingProcess(True, in_process=False, n_processes=1) as drawing:
        drawing.submit(tmp_path, [_jobs()[2], bad])
        with pytest.raises(FigureError, match=r"trace\.png.*ValueError: variables is empty") as info:
            drawing.finish()
    assert info.value.figure == "trace.png"
    assert "Traceback" in info.value.detail and "trace_figure" in info.value.detail
    assert "\n" not in str(info.value)  # one line for the command line; the traceback is a note
    assert any("Traceback" in note for note in info.value.__notes__)
    assert (tmp_path / "membership_histogram.png").is_file()  # the figures before it were drawn


def test_figures_a_dead_process_left_are_drawn_here_with_a_warning(tmp_path, caplog):
    jobs = _jobs()[2:4]
    drawing = DrawingProcess(True, in_process=False)
    for proc in drawing._procs:  # killed from outside (out of memory, a signal)
        proc.kill()
        proc.wait()
    with caplog.at_level(logging.WARNING, logger="bayesmix._drawing"):
        drawing.submit(tmp_path, jobs)  # the pipe is broken: finish draws what the process did not
        paths = drawing.finish()
    assert [p.name for p in paths] == [job.file_name for job in jobs]
    assert all(p.is_file() for p in paths)
    assert "ended (exit codes" in caplog.text and "drawing them here" in caplog.text


def test_a_stopping_run_ends_the_process_and_it_draws_nothing_more(tmp_path):
    with pytest.raises(KeyboardInterrupt), DrawingProcess(True, in_process=False, n_processes=2) as drawing:
        procs = list(drawing._procs)
        assert len(procs) == 2
        raise KeyboardInterrupt
    assert all(proc.poll() is not None for proc in procs)


def test_the_process_stops_when_the_run_goes_without_finishing(tmp_path):
    """End of input without the closing message: the run died; the queued figures are not drawn."""
    drawing = DrawingProcess(True, in_process=False, n_processes=1)
    proc = drawing._procs[0]
    drawing.submit(tmp_path, _jobs()[2:3])
    proc.stdin.close()
    assert proc.wait(timeout=60) == 1
    proc.stdout.close()


def test_drawing_processes_by_cores_and_disabled_draws_nothing(tmp_path, monkeypatch):
    # One core: in this process; two or three: one process (measured on 2 cores: two gained
    # nothing, one finished the demo sooner); from four: two.
    for cores, expected in ((2, 1), (3, 1), (4, 2), (16, 2)):
        monkeypatch.setattr(_drawing, "_usable_cores", lambda cores=cores: cores)
        with DrawingProcess(True) as drawing:
            assert len(drawing._procs) == expected and not drawing.in_process
    monkeypatch.setattr(_drawing, "_usable_cores", lambda: 1)
    drawing = DrawingProcess(True)
    assert drawing.in_process
    drawing.submit(tmp_path, _jobs()[2:3])
    assert [p.name for p in drawing.finish()] == ["membership_histogram.png"]
    off = DrawingProcess(False, in_process=False)
    assert off._procs == []
    off.submit(tmp_path / "off", _jobs())
    assert off.finish() == [] and not (tmp_path / "off").exists()


def test_an_unknown_job_kind_is_named():
    with pytest.raises(ValueError, match=r"'gallery\.png' has kind 'gallery'; known: \['corner'"):
        _drawing.draw_job("unused", FigureJob("gallery.png", "gallery", {}))


def test_the_number_of_drawing_processes_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(_drawing, "_usable_cores", lambda: 4)
    monkeypatch.setenv("BAYESMIX_DRAWING_PROCESSES", "0")
    assert DrawingProcess(True).in_process
    monkeypatch.setenv("BAYESMIX_DRAWING_PROCESSES", "1")
    with DrawingProcess(True) as drawing:
        assert len(drawing._procs) == 1
    monkeypatch.setenv("BAYESMIX_DRAWING_PROCESSES", "two")
    with pytest.raises(ValueError, match=r"BAYESMIX_DRAWING_PROCESSES='two'; set it to a whole number"):
        DrawingProcess(True)
