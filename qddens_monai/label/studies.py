"""DICOM series folders in a MONAI Label studies folder, made visible to its local datastore.

MONAI Label's local datastore lists image *files* (``*.nii.gz``, ``*.nrrd``, ...), not DICOM series
folders. :func:`convert_dicom_studies` reads each series folder once with MONAI's ``LoadImage`` (the
same reader the bundle uses for a folder, so the geometry is the one the bundle sees) and writes it as
``<folder>.nii.gz`` beside it, with its affine. Labels saved from the viewer then refer to that file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional, Union

from monai.data import NibabelWriter
from monai.transforms import LoadImage

from ..data import dicom_series_in
from ..files import atomic_write

__all__ = ["convert_dicom_studies", "convert_dicom_series"]

logger = logging.getLogger(__name__)


def _loader() -> LoadImage:
    return LoadImage(image_only=True, ensure_channel_first=False)


def convert_dicom_series(
    folder: Union[str, os.PathLike], out: Union[str, os.PathLike], loader: Optional[LoadImage] = None
) -> Path:
    """Write the DICOM series in ``folder`` as the NIfTI file ``out`` (with its affine), atomically:
    written to a hidden name beside ``out``, then moved. The caller checks the series first."""
    folder, out = Path(folder), Path(out)
    image = (loader or _loader())(str(folder))
    writer = NibabelWriter()
    writer.set_data_array(image, channel_dim=None)
    writer.set_metadata({"affine": image.affine, "original_affine": image.affine}, resample=False)
    atomic_write(out, lambda tmp: writer.write(tmp), suffix=".tmp.nii.gz")  # the datastore never lists half a study
    logger.info(f"DICOM series {folder} -> {out} (shape {tuple(image.shape)})")
    return out


def convert_dicom_studies(
    studies: Union[str, os.PathLike], check: Optional[Callable[[Path], Optional[str]]] = None
) -> list[Path]:
    """Write ``<studies>/<series folder>.nii.gz`` for every DICOM series folder directly in ``studies``
    that has none yet (or an older one); returns the written files.

    Args:
        studies: the studies folder.
        check: returns why a series folder cannot be served (e.g. the bundle's slice-gap check, through
            :class:`~qddens_monai.label.screening.StudyScreen`), or ``None``; a refused folder is
            not converted (and is logged), so its slices are never placed with a wrong spacing.

    Raises:
        ValueError: a folder holds several series (naming the folder and the series count).
    """
    root = Path(studies)
    written: list[Path] = []
    loader = _loader()
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name in ("labels", "logs"):
            continue  # MONAI Label's own folders
        series = dicom_series_in(str(folder))
        if not series:
            continue
        problem = check(folder) if check else None
        if problem:  # several series, a slice gap, ...
            logger.warning(f"DICOM series folder {folder} not converted: {problem}")
            continue
        if len(series) > 1:
            raise ValueError(f"DICOM study folder {folder} holds {len(series)} series; put one series per folder.")
        out = root / f"{folder.name}.nii.gz"
        newest = max(f.stat().st_mtime for f in folder.iterdir())
        if out.is_file() and out.stat().st_mtime >= newest:
            continue
        convert_dicom_series(folder, out, loader)
        written.append(out)
    return written
