"""Settings derived from the data set when the user gives none: a small dataset fingerprint, as nnU-Net plans.

The bundle's crop (and sliding-window) size used to be a fixed 64 x 64: on ~200 x 230 MRI slices that
cost 0.013 Dice against 128 x 128 crops. :func:`plan_roi_size` derives it from the training images'
sizes instead: per axis the median image size, rounded down to a multiple of ``divisor`` (the
networks' total down-sampling), capped at ``max_size`` (CPU time and memory grow with the crop), never
below ``divisor``. The fingerprint behind it (:func:`dataset_fingerprint`: the images' sizes, channels and
voxel spacing) is read from the file headers only (:func:`read_header`), so planning costs no voxel
decoding, and only once: the bundle's ``"fingerprint"`` entry is passed to :func:`plan_roi_size`,
:func:`plan_num_samples` and :func:`write_plan`, which saves the plan beside the model.

In the bundle, ``roi_size`` and ``num_samples`` are ``"auto"`` by default and the ``plan`` section resolves
them (``"@plan#roi_size"``); a user's ``--roi_size [96,96]`` / ``--num_samples 2`` is used as given.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np

from ..files import atomic_write_text
from .checks import read_header

__all__ = ["dataset_fingerprint", "plan_roi_size", "plan_num_samples", "write_plan", "MAX_ROI_SIZE"]

logger = logging.getLogger(__name__)

#: Largest planned crop edge per spatial_dims: a CPU-sized default; raise it with ``--roi_size`` on a GPU.
MAX_ROI_SIZE = {2: 128, 3: 64}


def dataset_fingerprint(datalist: Sequence[dict], image_key: str = "image") -> dict[str, Any]:
    """Image sizes and channels of ``datalist`` from the file headers.

    Files whose header cannot be read are counted in ``"unreadable"`` and left out: planning runs before
    :func:`~qddens_monai.data.check_datalist`, which names every such file.

    Returns:
        ``{"num_images", "unreadable", "channels": sorted distinct channel counts, "median_size": per-axis
        median spatial size, "min_size", "max_size", "spacing": per-axis median voxel size or None}`` (sizes
        ``None`` when no header could be read).
    """
    shapes, spacings, unreadable = [], [], 0
    for item in datalist:
        path = item.get(image_key) if isinstance(item, dict) else None
        try:
            header = read_header(str(path[0] if isinstance(path, (list, tuple)) else path))
        except Exception:  # reported, with every other problem, by check_datalist; a plan needs no such file
            unreadable += 1
            continue
        shapes.append(tuple(int(s) for s in header.shape))
        if header.affine is not None:
            a = np.asarray(header.affine, dtype=float)[:-1, :-1]
            spacings.append(np.sqrt((a**2).sum(axis=0)))
    if not shapes:
        return {
            "num_images": 0,
            "unreadable": unreadable,
            "channels": [],
            "median_size": None,
            "min_size": None,
            "max_size": None,
            "spacing": None,
        }
    spatial = np.array([s[1:] for s in shapes if len(s) == len(shapes[0])])
    spacing = None
    if spacings and len({len(s) for s in spacings}) == 1:
        spacing = [round(float(v), 4) for v in np.median(np.array(spacings), axis=0)]
    return {
        "num_images": len(shapes),
        "unreadable": unreadable,
        "channels": sorted({s[0] for s in shapes}),
        "median_size": [int(v) for v in np.median(spatial, axis=0)],
        "min_size": [int(v) for v in spatial.min(axis=0)],
        "max_size": [int(v) for v in spatial.max(axis=0)],
        "spacing": spacing,
    }


DataOrFingerprint = Union[Sequence[dict], Mapping[str, Any]]


def _fingerprint(data: DataOrFingerprint) -> Mapping[str, Any]:
    # a fingerprint already read (a mapping), or the datalist to read it from
    return data if isinstance(data, Mapping) else dataset_fingerprint(data)


def plan_roi_size(
    datalist: DataOrFingerprint, spatial_dims: int, max_size: Union[int, Sequence[int], None] = None, divisor: int = 16
) -> list[int]:
    """The crop / sliding-window size for ``datalist``: median image size, multiple of ``divisor``, capped.

    Config use: ``"$qddens_monai.data.plan_roi_size(@fingerprint, @spatial_dims)"`` (when ``roi_size`` is ``"auto"``).

    Args:
        datalist: the training datalist (``[{"image": path, ...}]``), or its :func:`dataset_fingerprint`.
        spatial_dims: 2 or 3; the images' trailing ``spatial_dims`` axes are planned.
        max_size: cap per axis (default :data:`MAX_ROI_SIZE`).
        divisor: every edge is a multiple of it (16 covers four 2x down-samplings).

    Returns:
        ``spatial_dims`` positive integers.
    """
    fingerprint = _fingerprint(datalist)
    cap = MAX_ROI_SIZE.get(spatial_dims, 64) if max_size is None else max_size
    caps = [int(cap)] * spatial_dims if isinstance(cap, (int, np.integer)) else [int(c) for c in cap]
    if fingerprint["median_size"] is None:  # nothing readable: the data check that follows says why
        return caps
    median = fingerprint["median_size"][-spatial_dims:]
    roi = [max(divisor, min(c, (int(m) // divisor) * divisor)) for m, c in zip(median, caps)]
    logger.info(
        "planned roi_size %s from %d images (median size %s, cap %s)", roi, fingerprint["num_images"], median, caps
    )
    return roi


def plan_num_samples(datalist: DataOrFingerprint, roi_size: Sequence[int], max_samples: int = 4) -> int:
    """Random crops per image and epoch: how many ``roi_size`` crops the median image holds, in ``[1, max_samples]``.

    A crop as large as the image gives one sample (four crops of a whole image would be four copies).

    Config use: ``"$qddens_monai.data.plan_num_samples(@fingerprint, @plan#roi_size)"`` (when ``num_samples`` is
    ``"auto"``); ``datalist`` is the training datalist or its :func:`dataset_fingerprint`.
    """
    median = _fingerprint(datalist)["median_size"]
    if median is None:  # nothing readable: the data check that follows says why
        return 1
    median = median[-len(roi_size) :]
    ratio = float(np.prod(median)) / float(np.prod([int(r) for r in roi_size]))
    return int(min(max_samples, max(1, round(ratio))))


def write_plan(
    output_dir: Union[str, os.PathLike], settings: dict, datalist: Optional[DataOrFingerprint] = None
) -> str:
    """Write ``output_dir/plan.json``: the settings a run used and the fingerprint of its data; returns the path.

    ``datalist`` is the training datalist or its :func:`dataset_fingerprint` (read once by the bundle).

    Written atomically, so a reader never sees half a file.
    """
    plan: dict[str, Any] = {
        "settings": {k: v for k, v in settings.items() if isinstance(v, (int, float, str, list, bool))}
    }
    if datalist is not None:
        plan["fingerprint"] = dict(_fingerprint(datalist))
    path = os.path.join(output_dir, "plan.json")
    atomic_write_text(path, json.dumps(plan, indent=2))
    return path
