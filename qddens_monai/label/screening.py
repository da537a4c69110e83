"""Which studies and labels the label server accepts, with the bundle's own up-front checks.

Nothing is checked twice in two ways: studies and labels go through
:func:`qddens_monai.data.check_datalist` (the check the bundle runs before training), configured with
the served bundle's ``spatial_dims`` / ``in_channels`` / ``num_classes``. It finds unreadable and
truncated files, wrong dimensionality (a one-slice DICOM series is 2D for a 3D model; a 4D NIfTI has
its last axis read as channels), wrong channel counts, NaN/Inf voxels, unevenly spaced DICOM slices
(the slice-gap check), and for labels: shape, affine (geometry) and values against the classes.

:class:`StudyScreen` caches each study's verdict by file path, size and modification time, so a
study is read once per change, and remembers refused DICOM series folders that were never converted.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Optional, Union

from ..data import DataValidationError, check_datalist

__all__ = ["StudyScreen", "problems_text"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def problems_text(error: DataValidationError, names: Optional[dict[str, str]] = None) -> str:
    """The problems of ``error`` as one line, each ``file name: problem``, without server folders:
    paths in ``names`` are shown as their value, other paths by their file name."""
    names = {str(k): v for k, v in (names or {}).items()}

    def shown(text: str) -> str:
        for path, name in names.items():
            text = text.replace(path, name)
        return text

    return "; ".join(
        f"{names.get(str(where)) or os.path.basename(str(where).rstrip('/'))}: {shown(what)}"
        for where, what in error.problems
    )


def _stamp(path: Path) -> tuple[int, int]:
    if path.is_dir():
        files = [f.stat() for f in path.iterdir() if f.is_file()]
        return (max((s.st_mtime_ns for s in files), default=0), sum(s.st_size for s in files))
    s = path.stat()
    return (s.st_mtime_ns, s.st_size)


class StudyScreen:
    """Checks studies and labels against the served bundle (see the module doc).

    Args:
        spatial_dims / in_channels / num_classes: the bundle's, as in its ``inference.json``.
        affine_tolerance: largest difference (mm) between a label's affine and its image's.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, affine_tolerance: float = 1e-3) -> None:
        self.spatial_dims, self.in_channels, self.num_classes = int(spatial_dims), int(in_channels), int(num_classes)
        self.affine_tolerance = affine_tolerance
        self._verdicts: dict[str, tuple[tuple[int, int], Optional[str]]] = {}
        self._lock = threading.Lock()

    def _check(self, item: dict, names: Optional[dict[str, str]] = None, **kwargs: Any) -> Optional[str]:
        try:
            check_datalist(
                [item],
                spatial_dims=self.spatial_dims,
                in_channels=self.in_channels,
                num_classes=self.num_classes,
                affine_tolerance=self.affine_tolerance,
                **kwargs,
            )
        except DataValidationError as e:
            return problems_text(e, names)
        return None

    def study_problem(self, path: PathLike) -> Optional[str]:
        """Why the study at ``path`` (a file, or a DICOM series folder) cannot be served; ``None`` if it can."""
        p = Path(path)
        key = str(p)
        try:
            stamp = _stamp(p)
        except OSError as e:
            return f"{p.name}: cannot be read ({e.strerror})"
        with self._lock:
            cached = self._verdicts.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        problem = self._check({"image": key}, {key: p.name})
        if problem:
            logger.warning(f"study refused: {problem}")
        with self._lock:
            self._verdicts[key] = (stamp, problem)
        return problem

    def refused(self) -> dict[str, str]:
        """``{path: problem}`` of every study screened so far that cannot be served."""
        with self._lock:
            return {k: v[1] for k, v in self._verdicts.items() if v[1]}

    def refuse(self, path: PathLike, problem: str) -> None:
        """Record ``problem`` for ``path`` (e.g. a series that could not be fetched), listed by :meth:`refused`
        until ``path`` is screened again."""
        with self._lock:
            self._verdicts[str(path)] = ((-1, -1), problem)

    def label_problem(self, image: PathLike, label: PathLike, name: str = "label") -> Optional[str]:
        """Why ``label`` cannot be the label of ``image`` (readable, one channel, same shape, same geometry
        within ``affine_tolerance``, values within the classes); ``None`` if it can. The message calls
        the label file ``name`` and the image by its file name."""
        names = {str(label): name, str(image): Path(image).name}
        return self._check({"image": str(image), "label": str(label)}, names, require_label=True)
