"""Files written so that a reader, or a crash, sees the old file or the complete new one, never half of one.

Every file the package writes beside a user's data (checkpoints excepted: ignite's saver is atomic itself)
goes through :func:`atomic_write`: the content is written to a temporary file in the destination's folder,
flushed to disk, given the permissions of a normally created file, and moved onto the destination with
``os.replace`` (atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Union

__all__ = ["atomic_write", "atomic_write_text"]

PathLike = Union[str, "os.PathLike[str]"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write(path: PathLike, write: Callable[[str], object], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` with the path of a new temporary file next to ``path``, then move it onto ``path``.

    Args:
        path: the destination; its folder is created if missing.
        write: writes the whole content to the path it is given (e.g. ``lambda tmp: torch.save(obj, tmp)``).
            If it raises, the temporary file is removed and ``path`` is left as it was.
        suffix: the temporary file's suffix, for writers that choose the format by extension
            (``".tmp.nii.gz"`` for NIfTI, ``".onnx"``).

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # the content is on disk before the name points at it
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
