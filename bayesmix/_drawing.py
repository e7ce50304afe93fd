"""A run's figures from plain data, drawn in the run's process or in a drawing process beside it.

A run (:func:`bayesmix.workflow.run_spec`) turns its fit into :class:`FigureJob` s: plain
arrays, numbers and strings (the draws a corner plot shows, the binned counts of the
predictive check), nothing that needs JAX. :func:`draw_job` draws one with
:mod:`bayesmix.plotting` and writes the PNG atomically.

:class:`DrawingProcess` draws the jobs in one or two more Python processes (``python -m
bayesmix._drawing``; one on two or three cores, two from four, see ``_default_processes``)
that start with the run: they import matplotlib and draw a throw-away figure while the
run samples, and draw each figure while the run checks the fit and writes its tables. A
thread cannot do this: drawing is Python that holds the GIL (a figure thread was
measured, and gained nothing). With one core, or where a process cannot be started, the
jobs are drawn in the run's own process.

The jobs go to a process as pickles over its standard input, one installation talking to
itself; results come back over its standard output; its log lines go to the run's
standard error. A process draws the figures of one run and exits: when the run stops
before asking for the figures (an error, Ctrl-C), the processes are ended and draw
nothing more.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, NamedTuple

from bayesmix import plotting
from bayesmix._files import atomic_write

logger = logging.getLogger("bayesmix._drawing")  # also when run as __main__

FIGURE_DPI = 100
# How every PNG is written (the warm-up too, so it loads the same encoder): zlib level 3, not
# PIL's 6, is half the encoding time for files within 15% of the size.
_PNG = {"format": "png", "dpi": FIGURE_DPI, "pil_kwargs": {"compress_level": 3}}

# Drawing processes by usable cores: one on two or three, two from four; with one core the
# figures are drawn in the run's own process. Measured on 2 cores (bench/demo_figures.py,
# alternating rounds of bayesmix demo): one process finished the demo a median 0.97 s sooner
# than drawing in the run's process (10 rounds, 8 of them sooner); two processes gained
# nothing (paired median 0.0 s over 16 rounds), their start-up competing with the run for the
# second core.
def _default_processes(cores: int) -> int:
    return 0 if cores < 2 else 1 if cores < 4 else 2


# What the process is told after the last job: finish and exit. End of input without it
# means the run has gone, and the process stops drawing.
_DONE = "done"


class FigureJob(NamedTuple):
    """One figure of a run as plain data.

    Attributes
    ----------
    file_name : str
        The PNG's name in the run's folder, e.g. ``"corner.png"``.
    kind : str
        How to draw it: a key of ``_DRAWERS`` (``"corner"``, ``"trace"``, ...).
    data : dict
        The drawer's keyword arguments: NumPy arrays, numbers, strings.
    """

    file_name: str
    kind: str
    data: dict


def _membership_histograms(probabilities, component_names):
    """One histogram panel per component (columns of ``probabilities``, (n_stars, n_shown))."""
    import matplotlib.pyplot as plt

    n = len(component_names)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False, layout="constrained")
    for k, name in enumerate(component_names):
        plotting.membership_histogram(probabilities[:, k], ax=axes[0, k], component_name=name)
    return fig


def _predictive_bands(bands, labels):
    """One posterior predictive panel per feature (:class:`bayesmix.plotting.PredictiveBand` each)."""
    import matplotlib.pyplot as plt

    n = len(bands)
    fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 3.8), squeeze=False, layout="constrained")
    for j, (band, label) in enumerate(zip(bands, labels, strict=True)):
        plotting.predictive_band_plot(band, ax=axes[0, j], label=label)
    return fig


def _membership_radius(values, radius, probability, value_label, radius_label, title):
    fig = plotting.membership_radius_plot(values, radius, probability, value_label=value_label,
                                          radius_label=radius_label)
    fig.axes[0].set_title(title)
    return fig


class EMHistory(NamedTuple):
    """What :func:`bayesmix.plotting.em_history_plot` reads of an EM result, as plain data."""

    log_likelihood_history: Any
    objective_history: Any
    n_iter: int
    converged: bool
    restart_objectives: Any
    start_kinds: tuple
    optima: tuple  # one entry (its objective) per distinct optimum


_DRAWERS = {"corner": plotting.corner_figure, "trace": plotting.trace_figure,
            "membership_histogram": _membership_histograms, "ppc": _predictive_bands,
            "membership_radius": _membership_radius, "em_history": plotting.em_history_plot}


def save_figure(path: Path, fig) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it; returns ``path``.

    Every run figure lays itself out (constrained layout, or the corner plot's own
    margins), so no ``bbox_inches="tight"``: that draws the whole figure a second time
    just to measure it.
    """
    import matplotlib.pyplot as plt  # pyplot only once a figure exists: the backend is chosen first

    start = time.perf_counter()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, **_PNG))
    finally:
        plt.close(fig)
        logger.info("%s drawn and saved in %.2f s", Path(path).name, time.perf_counter() - start)


def draw_job(folder: Path, job: FigureJob) -> Path:
    """Draw ``job`` and write it into ``folder``; returns the PNG's path."""
    if job.kind not in _DRAWERS:
        raise ValueError(f"figure job {job.file_name!r} has kind {job.kind!r}; known: {sorted(_DRAWERS)}.")
    return save_figure(Path(folder) / job.file_name, _DRAWERS[job.kind](**job.data))


def use_agg() -> None:
    """matplotlib's file backend, unless the process already chose one (a notebook's)."""
    import matplotlib

    matplotlib.use("Agg", force=False)


@contextlib.contextmanager
def cyclic_gc_paused():
    """Python's cyclic garbage collector off for the block, back on (if it was) after.

    Drawing allocates hundreds of thousands of small objects, which sets off full
    collections, and in a run's process each walks every object that JAX and NumPyro hold
    (measured 0.3-0.5 s of the demo's figures). The figures' own reference cycles are
    freed by the first collection after the block.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class FigureError(RuntimeError):
    """A figure failed in a drawing process.

    The message is one line (the figure and the error); the drawing process's traceback is
    in :attr:`detail` and in the exception's notes, shown with a traceback.
    """

    def __init__(self, figure: str, error: str, detail: str):
        super().__init__(f"figure {figure} failed in the drawing process: {error}")
        self.figure, self.error, self.detail = figure, error, detail
        self.add_note(f"traceback in the drawing process:\n{detail}")


class DrawingProcess:
    """A run's figure jobs, drawn by drawing processes (or here, see the module docstring).

    Parameters
    ----------
    enabled : bool
        False: :meth:`submit` does nothing and :meth:`finish` returns no paths.
    in_process : bool, optional
        Draw in this process (default: when ``n_processes`` is 0).
    n_processes : int, optional
        Drawing processes, each taking every n-th job. Default ``$BAYESMIX_DRAWING_PROCESSES``,
        else by usable cores: none with one, 1 with two or three, 2 from four (the run's own
        process is mostly waiting by the time they draw); 0 draws in this process (a shared
        login node that limits processes, say).

    Examples
    --------
    >>> with DrawingProcess(True) as drawing:  # doctest: +SKIP
    ...     drawing.submit(folder, jobs)
    ...     paths = drawing.finish()  # waits; raises if a figure failed
    """

    def __init__(self, enabled: bool, *, in_process: bool | None = None, n_processes: int | None = None):
        self._procs: list = []
        self._jobs: list[tuple[Path, FigureJob]] = []
        self._paths: dict[int, Path] = {}
        self.enabled = bool(enabled)
        if n_processes is None:
            n_processes = _processes_from_environment()
        if in_process is None:
            in_process = n_processes == 0
        if self.enabled and not in_process:
            started = (_start_process() for _ in range(n_processes))
            self._procs = [proc for proc in started if proc is not None]

    @property
    def in_process(self) -> bool:
        """True when the figures are drawn in this process."""
        return not self._procs

    def submit(self, folder: Path, jobs) -> None:
        """Queue ``jobs`` (FigureJob s) to be drawn into ``folder``, after those queued before."""
        if not self.enabled:
            return
        for job in jobs:
            index = len(self._jobs)
            self._jobs.append((Path(folder), job))
            if not self._procs:
                self._draw_here(index)
                continue
            proc = self._procs[index % len(self._procs)]
            try:
                pickle.dump((index, str(folder), job), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                proc.stdin.flush()
            except OSError:  # that process has ended: finish() draws here what it did not
                continue

    def finish(self) -> list[Path]:
        """Wait for every job; the PNGs' paths in submission order.

        Jobs a drawing process did not draw because it ended (killed, out of memory) are
        drawn here, with a warning.

        Raises
        ------
        FigureError
            A figure failed in a drawing process.
        """
        procs, self._procs = self._procs, []
        failures = [failure for proc in procs for failure in self._collect(proc)]
        if failures:
            raise failures[0]
        left = [i for i in range(len(self._jobs)) if i not in self._paths]
        if left and procs:
            logger.warning("a drawing process ended (exit codes %s) before drawing %s; drawing them here",
                           [proc.returncode for proc in procs], [self._jobs[i][1].file_name for i in left])
        for index in left:
            self._draw_here(index)
        return [self._paths[i] for i in range(len(self._jobs))]

    def _draw_here(self, index: int) -> None:
        use_agg()
        with cyclic_gc_paused():
            self._paths[index] = draw_job(*self._jobs[index])

    def _collect(self, proc) -> list[FigureError]:
        """Tell ``proc`` that its jobs are all in, and read its results until it exits."""
        with contextlib.suppress(OSError):  # already ended: what it drew is still read below
            pickle.dump(_DONE, proc.stdin)
        with contextlib.suppress(OSError):
            proc.stdin.close()
        failures = []
        while True:
            try:
                index, ok, value, detail = pickle.load(proc.stdout)
            except EOFError:
                break
            if ok:
                self._paths[index] = Path(value)
            else:
                failures.append(FigureError(self._jobs[index][1].file_name, value, detail))
        proc.stdout.close()
        proc.wait()
        return failures

    def close(self) -> None:
        """End the drawing processes still running (the run is stopping)."""
        procs, self._procs = self._procs, []
        for proc in procs:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):  # a pipe to a killed process
                    stream.close()

    def __enter__(self) -> DrawingProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _processes_from_environment() -> int:
    """``$BAYESMIX_DRAWING_PROCESSES`` as a count (when unset, by usable cores)."""
    text = os.environ.get("BAYESMIX_DRAWING_PROCESSES", "").strip()
    if not text:
        return _default_processes(_usable_cores())
    if not text.isdigit():
        raise ValueError(f"BAYESMIX_DRAWING_PROCESSES={text!r}; set it to a whole number of drawing "
                         "processes (0 draws the figures in the run's own process), or unset it.")
    return int(text)


def _start_process():
    """``python -m bayesmix._drawing`` with this process's log level, import path and
    matplotlib style; None (the figures are drawn here) when it cannot be started."""
    level = logging.getLogger("bayesmix").getEffectiveLevel()
    # This bayesmix, also when it is imported from a source folder rather than installed.
    package_root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": path}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "bayesmix._drawing", str(level)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        pickle.dump(_style(), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.flush()
    except OSError as exc:
        logger.warning("no drawing process (%s: %s); the figures are drawn in this process",
                       type(exc).__name__, exc)
        return None
    return proc


def _style() -> dict:
    """The matplotlib settings this process changed from the defaults (a user's style), if
    matplotlib is loaded; the drawing process applies them."""
    if "matplotlib" not in sys.modules:
        return {}
    import matplotlib

    skip = {"backend", "backend_fallback", "interactive"}
    return {k: v for k, v in matplotlib.rcParams.items()
            if k not in skip and k in matplotlib.rcParamsDefault and v != matplotlib.rcParamsDefault[k]}


# --------------------------------------------------------------------------- the drawing process


def _read_jobs(stream, jobs: queue.Queue) -> None:
    """Move every job from ``stream`` to ``jobs`` as it arrives (so the run never waits to
    hand over a job while a figure is drawn); then ``_DONE``, or None when the input
    ended without it (the run has gone)."""
    while True:
        try:
            item = pickle.load(stream)
        except EOFError:
            jobs.put(None)
            return
        jobs.put(item)
        if item == _DONE:
            return


def _warm_up() -> None:
    """Draw a throw-away figure with the artists the run's figures use, while the run samples.

    The first figure of a process pays for loading fonts, matplotlib's lazily imported
    pieces, the mathematics parser and the PNG encoder (about half of the first corner
    plot's time); this process has the time before its first job to spare.
    """
    import io

    import corner
    import matplotlib.pyplot as plt
    import numpy as np

    rng = np.random.default_rng(0)
    fig = corner.corner(rng.normal(size=(200, 2)), labels=["a", "b"], quantiles=[0.16, 0.5, 0.84],
                        show_titles=True, truths=[0.0, 0.0])
    fig.savefig(io.BytesIO(), **_PNG)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, layout="constrained")
    axes[0].hist(rng.uniform(size=50), histtype="step", orientation="horizontal")
    axes[0].set_yscale("log")
    axes[1].stairs([1.0, 2.0], [0.0, 1.0, 2.0])
    axes[1].fill_between([0.0, 1.0], [0.0, 1.0], step="post")
    axes[1].scatter([0.0, 1.0], [1.0, 0.0], c=[0.2, 0.8], s=4)
    axes[1].legend(["x"], title="t")
    axes[1].text(0.5, 0.5, "Σp", bbox={"boxstyle": "round"})
    fig.savefig(io.BytesIO(), **_PNG)
    plt.close(fig)


def main(argv=None) -> int:
    """The drawing process: the style, then jobs from standard input until ``_DONE``."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the run, which ends this process
    logging.basicConfig(level=int(argv[0]) if argv else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    stdin = sys.stdin.buffer
    # Results go over a private copy of standard output; anything a library prints goes to
    # standard error instead of into the results.
    stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    style = pickle.load(stdin)
    jobs: queue.Queue = queue.Queue()
    threading.Thread(target=_read_jobs, args=(stdin, jobs), daemon=True).start()
    use_agg()
    # Imported now, while the run samples. corner imports ArviZ only to read InferenceData,
    # which this process never gets: kept out (Python's None-in-sys.modules rule makes
    # corner's optional import fail), it saves 1.5 s of a core the sampler may need.
    sys.modules.setdefault("arviz", None)
    import corner  # noqa: F401
    import matplotlib
    import matplotlib.pyplot

    matplotlib.rcParams.update(style)
    _warm_up()
    while (item := jobs.get()) not in (_DONE, None):
        index, folder, job = item
        try:
            result = (index, True, str(draw_job(Path(folder), job)), None)
        except Exception as exc:  # reported to the run, which raises it
            result = (index, False, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        pickle.dump(result, stdout)
        stdout.flush()
    return 0 if item == _DONE else 1


if __name__ == "__main__":
    sys.exit(main())
