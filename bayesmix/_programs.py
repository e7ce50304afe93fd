"""Compiled programs kept on disk as :mod:`jax.export` modules (with the compilation cache).

JAX's persistent compilation cache skips XLA compilation on a repeated run, but the
Python tracing and lowering that produce its key are still paid: about a second for
the NUTS and EM programs, most of a small repeated run. A :class:`Program` stores the
lowered program itself, so a repeat loads it and goes straight to the (cached)
executable. Off until :func:`bayesmix.sampling.enable_compilation_cache` sets a store.

A stored program's key hashes the package's own source, the JAX, NumPyro and BlackJAX
versions and backend, a caller-given fingerprint (everything closed over: model ``repr``,
settings) and the arguments' tree structure, shapes and dtypes; ``Exported.call``
re-checks structure and shapes on every call. Files are written atomically; an
unreadable one, or one that fails on its first call (bytes damaged inside), is deleted and
rebuilt with a warning; a store that cannot be written is skipped with a warning. Within
one process, programs with the same key share one loaded (and compiled) copy, the most
recent 64 of them.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.metadata
import logging
from pathlib import Path

import jax
import numpy as np

from bayesmix._files import atomic_write

logger = logging.getLogger(__name__)

_STORE: Path | None = None
_SERIALIZABLE: set = set()
# Programs already loaded in this process, by stored key, most recently used last. Every
# sampler of the same structure shares one compiled executable instead of loading its own:
# XLA:CPU maps each executable's code into the process in many small memory mappings, and
# a loop of fits that each loaded their own copy ran a long process past Linux's
# vm.max_map_count (65530), where LLVM aborts. Bounded, so a scan over many shapes
# releases the oldest.
_LOADED: collections.OrderedDict = collections.OrderedDict()
_MAX_LOADED = 64
# How programs were obtained in this process (see program_counts).
_COUNTS: collections.Counter = collections.Counter()
_LISTENING = False
_EVENT_NAMES = {"jaxpr_trace_duration": "jax_traces", "jaxpr_to_mlir_module_duration": "jax_lowerings",
                "backend_compile_duration": "jax_executables"}


def _on_duration(event: str, duration: float, **_) -> None:
    if event.startswith("/jax/core/compile/"):
        _COUNTS[_EVENT_NAMES.get(event.rsplit("/", 1)[1], "jax_other")] += 1


def _on_event(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_misses":
        _COUNTS["xla_compiles"] += 1
    elif event == "/jax/compilation_cache/cache_hits":
        _COUNTS["xla_cache_hits"] += 1


def program_counts(reset: bool = False) -> dict[str, int]:
    """How this process obtained its compiled programs since the last reset.

    ``stored_exported``: bayesmix programs traced and written to the store;
    ``stored_read``: read back from the store; ``stored_shared``: already loaded in this
    process. From JAX's own monitoring events (counted once :func:`count_compilations`
    has run): ``jax_traces`` (Python functions traced), ``jax_executables`` (executables
    obtained, compiled or from the persistent cache), ``xla_compiles`` (persistent cache
    misses: compiled by XLA) and ``xla_cache_hits``. Without a persistent cache every
    executable is an XLA compile.

    Examples
    --------
    >>> from bayesmix import _programs
    >>> sorted(_programs.program_counts(reset=True))  # doctest: +SKIP
    """
    out = dict(_COUNTS)
    if reset:
        _COUNTS.clear()
    return out


def count_compilations() -> None:
    """Start counting JAX's traces and compilations in :func:`program_counts` (idempotent)."""
    global _LISTENING
    if not _LISTENING:
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(_on_duration)
        monitoring.register_event_listener(_on_event)
        _LISTENING = True


def set_store(path: Path | None) -> None:
    """Directory of stored programs, or None to switch storing off."""
    global _STORE
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
    _STORE = None if path is None else Path(path)


def store() -> Path | None:
    return _STORE


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """Hash of the package's own source: any code change invalidates stored programs."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def _library_versions() -> tuple[str, str, str]:
    """JAX's, NumPyro's and BlackJAX's versions: a program traced under another release is
    another program (the NUTS kernel is BlackJAX's). Read from the installed packages'
    metadata, not by importing them: a stored program runs without BlackJAX, whose import
    (optax's with it) would cost a fresh process a third of a second."""
    return tuple(importlib.metadata.version(name) for name in ("jax", "numpyro", "blackjax"))


def register(*classes) -> None:
    """Let jax.export store these NamedTuples in a program's signature (idempotent)."""
    from jax import export

    for cls in classes:
        if cls not in _SERIALIZABLE:
            export.register_namedtuple_serialization(cls, serialized_name=f"bayesmix.{cls.__qualname__}")
            _SERIALIZABLE.add(cls)


class Program:
    """A jitted function that is stored and reloaded as a jax.export module when a store is set.

    Parameters
    ----------
    name : str
        File-name prefix.
    jitted : callable
        The ``jax.jit``-wrapped function.
    fingerprint : str
        Everything the program closes over that its arguments do not show.
    classes : tuple of NamedTuple classes
        Those appearing in its arguments or results (registered for serialisation).
    """

    def __init__(self, name: str, jitted, fingerprint: str, classes: tuple = ()):
        self.name, self.jitted, self.fingerprint, self.classes = name, jitted, fingerprint, classes
        self._fns = {}

    def __call__(self, *args):
        if _STORE is None:
            return self.jitted(*args)
        leaves, tree = jax.tree_util.tree_flatten(args)
        signature = f"{tree}|{[(np.shape(x), str(getattr(x, 'dtype', type(x).__name__))) for x in leaves]}"
        # Keyed by store too: a program first used under another store is exported to this one.
        fn = self._fns.get((_STORE, signature))
        if fn is not None:
            return fn(*args)
        fn, path = self._load_or_export(args, signature)
        try:
            out = fn(*args)
        except Exception as exc:  # a damaged stored program: rebuild it, and say so
            if path is None:
                raise
            logger.warning("stored program %s failed on its first call (%s: %s); rebuilding it (the "
                           "compilation cache may be damaged; --no-cache runs without it)", path,
                           type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            _LOADED.pop(path, None)
            path.unlink(missing_ok=True)
            fn, _ = self._load_or_export(args, signature)
            out = fn(*args)
        self._fns[(_STORE, signature)] = fn
        return out

    def _load_or_export(self, args, signature):
        """(callable, path of the stored file it was read from, or None when freshly exported)."""
        register(*self.classes)
        key = hashlib.sha256("|".join([self.name, source_fingerprint(), *_library_versions(),
                                       jax.default_backend(), self.fingerprint, signature])
                             .encode()).hexdigest()[:32]
        path = _STORE / f"{self.name}-{key}.jaxexport"
        if path in _LOADED:
            _LOADED.move_to_end(path)
            _COUNTS["stored_shared"] += 1
            return _LOADED[path]
        loaded = _LOADED[path] = self._read_or_export(args, path)
        while len(_LOADED) > _MAX_LOADED:
            _LOADED.popitem(last=False)
        return loaded

    def _read_or_export(self, args, path):
        from jax import export

        if path.exists():
            try:
                fn = jax.jit(export.deserialize(bytearray(path.read_bytes())).call), path
                _COUNTS["stored_read"] += 1
                return fn
            except Exception as exc:  # a truncated or foreign file: rebuild it, and say so
                logger.warning("stored program %s unreadable (%s); rebuilding it", path, exc)
        exported = export.export(self.jitted)(*args)
        _COUNTS["stored_exported"] += 1
        try:
            data = exported.serialize()
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
        except OSError as exc:  # the store is only an optimisation: run on without it
            logger.warning("could not store program %s (%s); it runs without being stored", path, exc)
        return jax.jit(exported.call), None
