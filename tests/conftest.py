"""Shared fixtures: where the real catalogues live, and whether their absence is allowed."""

import gc
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    override = os.environ.get("BAYESMIX_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips when absent unless BAYESMIX_REQUIRE_SHARED_DATA=1."""
    path = _shared_data_dir()
    if not path.is_dir():
        if os.environ.get("BAYESMIX_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(
                f"BAYESMIX_REQUIRE_SHARED_DATA=1 but the shared catalogues are missing at {path} "
                "(set BAYESMIX_SHARED_DATA to their folder)."
            )
        pytest.skip(f"real catalogues not found at {path} (a user's clone has no ../shared)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
    """One on-disk JAX cache per test session: samplers of the same structure compile once.

    ``BAYESMIX_CACHE`` points there too, so a CLI run inside a test (which enables the cache
    unless ``--no-cache``) never reads or writes the user's ``~/.cache/bayesmix``.
    """
    from bayesmix.sampling import enable_compilation_cache

    path = tmp_path_factory.mktemp("jax-cache")
    previous = os.environ.get("BAYESMIX_CACHE")
    os.environ["BAYESMIX_CACHE"] = str(path)
    enable_compilation_cache(path)
    yield path
    if previous is None:
        os.environ.pop("BAYESMIX_CACHE", None)
    else:
        os.environ["BAYESMIX_CACHE"] = previous


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Free every compiled executable after each test module.

    XLA:CPU maps each executable's machine code into the process in many small memory
    mappings. A whole test session in one process compiles thousands of programs (every
    shape a test uses), and with JAX's caches holding them all the process passed Linux's
    ``vm.max_map_count`` (65530) about 30 minutes in: LLVM could not map the next program
    and the interpreter aborted. Tests that share programs live in one module, so clearing
    between modules costs little (the on-disk cache still serves repeats).
    """
    yield
    import jax

    jax.clear_caches()
    gc.collect()


# --------------------------------------------------------------------------- parallel workers
#
# pyproject.toml runs the suite with ``-n auto --dist loadfile`` (pytest-xdist): each test
# module runs whole on one worker, so its module-scoped fits are computed once.

# The modules that take longest (minutes: notebooks, many short CLI runs, fits of real
# catalogues) go to the workers first, so no long module starts last and runs alone.
_LONG_MODULES = ("test_notebooks.py", "test_robustness.py", "test_cli.py", "test_real_posteriors.py",
                 "test_coverage.py")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown (and unused) without it
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 4 (each worker's XLA also uses every core).

    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` (pytest-xdist's own variable) overrides this; ``-n 0``
    runs in one process.
    """
    return max(1, min(4, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise
