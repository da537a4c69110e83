"""What the figure handlers share: a pyplot-free Agg figure, PNGs written atomically, plain floats.

The handlers write only on rank 0 (:func:`qddens_monai.distributed.is_main_process`), each file through
:func:`qddens_monai.files.atomic_write`, so a reader never sees half a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from monai.utils import is_scalar

from ..files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["new_figure", "save_figure", "to_float"]


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas, independent of pyplot and of the interactive backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


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
