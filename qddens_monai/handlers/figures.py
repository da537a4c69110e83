"""What the figure handlers share: rank 0 only, a pyplot-free Agg figure, atomic file writes, plain floats.

Files are written atomically (a temporary file in the same folder, then ``os.replace``), so a reader never sees
half a file; in a distributed run only rank 0 writes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from monai.utils import is_scalar

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["is_main_process", "new_figure", "atomic_write", "save_figure", "to_float"]


def is_main_process() -> bool:
    """Rank 0 of a distributed run, or the only process."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas, independent of pyplot and of the interactive backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` for a temporary file next to ``path``, then move it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_figure(fig: Figure, path: Path, dpi: int) -> None:
    """Write ``fig`` as a PNG, atomically."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def to_float(value: Any) -> Optional[float]:
    """A python float from a number or a one-element tensor/array, else ``None``."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean()) if value.numel() == 1 else None
    if isinstance(value, np.ndarray):
        return float(value.reshape(-1)[0]) if value.size == 1 else None
    if isinstance(value, bool):
        return float(value)
    if is_scalar(value):
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    return None
