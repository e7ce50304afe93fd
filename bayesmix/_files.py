"""Atomic file writes: a result file is either the old one or the whole new one, never half.

Standard library only, so every layer (catalogue writing, checkpoints, figures, stored
programs) can use the one implementation.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def _default_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give (mkstemp makes files 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)``, then rename the file onto ``path``: never a half-written result.

    The temporary file lies beside ``path`` (so the rename stays on one file system) and
    is removed if ``write`` fails. The file gets the permissions an ordinary write would give.

    Parameters
    ----------
    path : str or Path
        The file to write; missing parent folders are made.
    write : callable
        ``write(tmp_path)`` writes the whole content to the path it is given (a ``str``).

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from bayesmix._files import atomic_write
    >>> folder = Path(tempfile.mkdtemp())
    >>> atomic_write(folder / "a.txt", lambda tmp: Path(tmp).write_text("done")).read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
        return path
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
