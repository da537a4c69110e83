"""Up-front validation of a datalist, before training starts, with errors that name the file."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import EnsureChannelFirst, LoadImage

__all__ = ["DataValidationError", "check_datalist", "dicom_series_in"]

logger = logging.getLogger(__name__)


class DataValidationError(ValueError):
    """A datalist with unusable entries; ``problems`` lists ``(file or key, what is wrong)``."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {where}: {what}" for where, what in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the data:\n{lines}")


def dicom_series_in(folder: str) -> dict[str, int]:
    """``{SeriesInstanceUID: number of files}`` of the DICOM files directly inside ``folder``."""
    import pydicom

    series: dict[str, int] = {}
    for f in sorted(Path(folder).iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:  # not a DICOM file: ignored, as ITK does
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "?"))
        series[uid] = series.get(uid, 0) + 1
    return series


def _load(path: str, problems: list[tuple[str, str]], loader: LoadImage) -> Any:
    if not os.path.exists(path):
        problems.append((path, "does not exist"))
        return None
    if os.path.isdir(path):
        series = dicom_series_in(path)
        if not series:
            problems.append((path, "is a folder without DICOM files"))
            return None
        if len(series) > 1:
            listed = ", ".join(f"{uid} ({n} files)" for uid, n in series.items())
            problems.append((path, f"holds {len(series)} DICOM series ({listed}); keep one series per folder"))
            return None
    try:
        return EnsureChannelFirst()(loader(path))
    except Exception as e:  # any reader error: report it with the file, do not crash on the first one
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        problems.append((path, f"cannot be read ({type(e).__name__}: {reason[:200]})"))
        return None


def _label_values_ok(values: np.ndarray, num_classes: int) -> bool:
    if num_classes == 2:  # a binary mask: 0 and one foreground value (1, 255, ...)
        return values.min() >= 0 and len(values[values > 0]) <= 1
    return bool(np.all(np.isin(values, np.arange(num_classes))))


def check_datalist(
    items: Sequence[dict],
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    image_key: str = "image",
    label_key: str = "label",
    mask_key: str = "mask",
    check_values: bool = True,
    affine_tolerance: float = 1e-3,
) -> list[dict]:
    """Read every entry of ``items`` once and report all problems together; returns ``items``.

    Checked: files exist and can be read (DICOM folders hold one series); the image has
    ``spatial_dims`` spatial dimensions and ``in_channels`` channels; label and mask match the
    image's spatial shape and (3D) affine; with ``check_values``, the image has no NaN/Inf and the
    label only values of ``num_classes`` classes. An empty label is logged, not refused.

    Raises:
        DataValidationError: listing every ``file: problem`` found.
    """
    items = list(items)
    if not items:
        raise DataValidationError([("datalist", "is empty: no image to train or evaluate on")])
    problems: list[tuple[str, str]] = []
    loader = LoadImage(image_only=True)  # one instance: building MONAI's reader list is slow and chatty
    for n, item in enumerate(items):
        if image_key not in item:
            problems.append((f"datalist entry {n}", f"has no {image_key!r} key (keys: {sorted(item)})"))
            continue
        image = _load(str(item[image_key]), problems, loader)
        if image is None:
            continue
        name = str(item[image_key])
        if image.ndim - 1 != spatial_dims:
            problems.append((name, f"has {image.ndim - 1} spatial dimensions {tuple(image.shape[1:])}, expected {spatial_dims}"))
            continue
        if image.shape[0] != in_channels:
            problems.append((name, f"has {image.shape[0]} channels, the network expects in_channels={in_channels}"))
        if check_values and not torch.isfinite(torch.as_tensor(image)).all():
            problems.append((name, "contains NaN or infinite values"))
        for key in (label_key, mask_key):
            if key not in item:
                continue
            other = _load(str(item[key]), problems, loader)
            if other is None:
                continue
            oname = str(item[key])
            if tuple(other.shape[1:]) != tuple(image.shape[1:]):
                problems.append((oname, f"{key} shape {tuple(other.shape[1:])} differs from image {name} {tuple(image.shape[1:])}"))
                continue
            if spatial_dims == 3 and hasattr(image, "affine") and hasattr(other, "affine"):
                if not np.allclose(np.asarray(image.affine), np.asarray(other.affine), atol=affine_tolerance):
                    problems.append((oname, f"{key} affine differs from image {name} (misaligned voxels)"))
            if check_values and key == label_key:
                values = np.unique(np.asarray(other))
                if not _label_values_ok(values, num_classes):
                    problems.append((oname, f"label values {values[:10].tolist()} do not fit num_classes={num_classes}"))
                elif values.max() == 0:
                    logger.warning(f"{oname}: empty label (background only).")
    if problems:
        raise DataValidationError(problems)
    return items
