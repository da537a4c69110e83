"""Settings derived from the data set when the user gives none, as nnU-Net plans from a dataset fingerprint.

Training plans (each only when its setting is ``"auto"``, the bundle's default; a user's value wins):

- ``in_channels``: the channel count of the training images (:func:`plan_in_channels`);
- ``num_classes``: the ``"labels"`` of ``dataset.json``, else the label values (:func:`plan_num_classes`);
- ``modality``, the intensity normalization: ``dataset.json``'s channel names, the DICOM Modality, 8-bit
  files, else a z-score (:func:`plan_modality`);
- ``roi_size``, the crop and sliding window: the median image size, a multiple of the networks' total
  down-sampling, capped (:func:`plan_roi_size`; a fixed 64 x 64 crop on ~200 x 230 MRI slices cost 0.013 Dice
  against 128 x 128);
- ``num_samples``, crops per image and epoch (:func:`plan_num_samples`).

The fingerprint behind them (:func:`dataset_fingerprint`: sizes, channels, spacing, file kinds) is read from
the file headers only, once per run. The bundle's ``plan`` section holds the resolved values
(``"@plan#in_channels"``); the checkpoint savers write them (:func:`plan_record`) beside every model they
save, and inference and evaluation read them back (:func:`planned`), so the flags given at training need not
be repeated.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np

from ..files import atomic_write_text
from .checks import read_header
from .transforms import MODALITY_ALIASES

__all__ = [
    "CHANNEL_MODALITY",
    "MAX_ROI_SIZE",
    "UNTRAINED",
    "dataset_fingerprint",
    "plan_in_channels",
    "plan_modality",
    "plan_num_classes",
    "plan_num_samples",
    "plan_roi_size",
    "plan_record",
    "planned",
    "write_plan",
]

logger = logging.getLogger(__name__)

#: Largest planned crop edge per spatial_dims: a CPU-sized default; raise it with ``--roi_size`` on a GPU.
MAX_ROI_SIZE = {2: 128, 3: 64}


def dataset_fingerprint(datalist: Sequence[dict], image_key: str = "image") -> dict[str, Any]:
    """Image sizes, channels and file kinds of ``datalist`` from the file headers.

    Files whose header cannot be read are counted in ``"unreadable"`` and left out: planning runs before
    :func:`~qddens_monai.data.check_datalist`, which names every such file. An entry of several image files
    (stacked as channels by ``LoadImage``) counts the channels of all of them.

    Returns:
        ``{"num_images", "unreadable", "channels": sorted distinct channel counts, "channel_counts": {channels:
        images}, "median_size": per-axis median spatial size, "min_size", "max_size", "spacing": per-axis median
        voxel size or None, "formats": sorted file kinds ("nifti", "pil", "dicom", "itk"), "pil_modes",
        "dicom_modalities"}`` (sizes ``None`` when no header could be read).
    """
    shapes, spacings, unreadable = [], [], 0
    formats, pil_modes, dicom_modalities = set(), set(), set()
    for item in datalist:
        path = item.get(image_key) if isinstance(item, dict) else None
        try:
            headers = [read_header(str(p)) for p in (path if isinstance(path, (list, tuple)) else [path])]
        except Exception:  # reported, with every other problem, by check_datalist; a plan needs no such file
            unreadable += 1
            continue
        header = headers[0]
        shapes.append((sum(int(h.shape[0]) for h in headers),) + tuple(int(s) for s in header.shape[1:]))
        for h in headers:
            formats.add(h.kind)
            if "mode" in h.extras:
                pil_modes.add(str(h.extras["mode"]))
            if h.extras.get("modality"):
                dicom_modalities.add(str(h.extras["modality"]))
        if header.affine is not None:
            a = np.asarray(header.affine, dtype=float)[:-1, :-1]
            spacings.append(np.sqrt((a**2).sum(axis=0)))
    kinds = {"formats": sorted(formats), "pil_modes": sorted(pil_modes), "dicom_modalities": sorted(dicom_modalities)}
    if not shapes:
        return {
            "num_images": 0,
            "unreadable": unreadable,
            "channels": [],
            "channel_counts": {},
            "median_size": None,
            "min_size": None,
            "max_size": None,
            "spacing": None,
            **kinds,
        }
    spatial = np.array([s[1:] for s in shapes if len(s) == len(shapes[0])])
    spacing = None
    if spacings and len({len(s) for s in spacings}) == 1:
        spacing = [round(float(v), 4) for v in np.median(np.array(spacings), axis=0)]
    counts = Counter(s[0] for s in shapes)
    return {
        "num_images": len(shapes),
        "unreadable": unreadable,
        "channels": sorted(counts),
        "channel_counts": {str(c): n for c, n in sorted(counts.items())},  # str keys: the same after a JSON trip
        "median_size": [int(v) for v in np.median(spatial, axis=0)],
        "min_size": [int(v) for v in spatial.min(axis=0)],
        "max_size": [int(v) for v in spatial.max(axis=0)],
        "spacing": spacing,
        **kinds,
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


def _dataset_json(dataset_json: Union[str, os.PathLike, None]) -> tuple[str, dict]:
    # the MSD-style dataset.json (or the folder holding it) as (path, content); ({}: none given or unreadable)
    if dataset_json is None:
        return "", {}
    path = os.path.join(dataset_json, "dataset.json") if os.path.isdir(dataset_json) else os.fspath(dataset_json)
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, ValueError):  # load_datalist, which reads the same file, names the problem
        return path, {}
    return path, content if isinstance(content, dict) else {}


def plan_in_channels(datalist: DataOrFingerprint) -> int:
    """The network's input channels: the channel count most training images have.

    Images with another count are named by :func:`~qddens_monai.data.check_datalist`, which runs with the
    planned value, so one odd file (an RGBA PNG among RGB ones) gets an error naming it, not a different network.

    Config use: ``"$qddens_monai.data.plan_in_channels(@fingerprint)"`` (when ``in_channels`` is ``"auto"``).
    """
    fingerprint = _fingerprint(datalist)
    counts = {int(c): n for c, n in fingerprint["channel_counts"].items()}
    if not counts:  # nothing readable: the data check that follows says why
        return 1
    channels = max(counts, key=lambda c: (counts[c], -c))
    logger.info("planned in_channels %d (images per channel count: %s)", channels, counts)
    return channels


def plan_num_classes(dataset_json: Union[str, os.PathLike, None], datalist: Sequence[dict] = ()) -> int:
    """Classes including background: the ``"labels"`` of ``dataset_json`` (MSD / nnU-Net), else the label values.

    Without a ``"labels"`` entry of two or more classes, every label of ``datalist`` is read: 0/1 and 0/255
    masks give 2, otherwise the number of classes 0, 1, ..., k that all occur. A value past a gap (a stray 5 in
    0/1 labels) does not make a 6-class network: :func:`~qddens_monai.data.check_datalist`, which checks every
    label against the planned value, names its file.

    Config use: ``"$qddens_monai.data.plan_num_classes(@dataset_json, @datalist)"`` (when ``num_classes`` is
    ``"auto"``).
    """
    path, content = _dataset_json(dataset_json)
    labels = content.get("labels")
    if isinstance(labels, (dict, list)) and len(labels) >= 2:
        logger.info("planned num_classes %d from the 'labels' of %s", len(labels), path)
        return len(labels)
    from monai.transforms import LoadImage

    load, values = LoadImage(image_only=True), set()
    for item in datalist:
        if isinstance(item, dict) and item.get("label"):
            try:
                values.update(np.unique(np.asarray(load(str(item["label"])))).tolist())
            except Exception:  # named by check_datalist
                continue
    if values <= {0, 1} or values <= {0, 255}:
        num_classes = 2
    else:  # classes 0..k all present; a value beyond a gap (a stray 5 in 0/1 labels) is named by check_datalist
        num_classes = 0
        while num_classes in values:
            num_classes += 1
        num_classes = max(2, num_classes)
    logger.info("planned num_classes %d from the label values %s", num_classes, sorted(values)[:8])
    return num_classes


#: dataset.json channel names (lower case) that name a modality in :data:`~qddens_monai.data.MODALITIES`: the
#: modalities and their :data:`~qddens_monai.data.MODALITY_ALIASES`, and other channel names of MR and colour sets
CHANNEL_MODALITY = {
    **{m: m for m in ("ct", "mr", "rgb")},
    **MODALITY_ALIASES,
    **{n: "mr" for n in ("t1w", "t1gd", "t1c", "t1ce", "t2w", "adc", "dwi", "pd")},
    **{n: "rgb" for n in ("r", "g", "b", "red", "green", "blue")},
}

#: The settings of a network no training planned (no weights ship in 3D): 1-channel MR, background and one class.
UNTRAINED = {"in_channels": 1, "num_classes": 2, "modality": "mr"}


def plan_modality(dataset_json: Union[str, os.PathLike, None], datalist: DataOrFingerprint = ()) -> str:
    """The intensity normalization (:data:`~qddens_monai.data.MODALITIES`) for the data, as nnU-Net picks one.

    In order: the channel names in the ``"modality"`` of ``dataset_json`` (MSD: ``{"0": "CT"}``, ``{"0": "T2",
    "1": "ADC"}``) when they all name one modality (:data:`CHANNEL_MODALITY`); the DICOM ``Modality`` of the
    series (CT or MR); 8-bit image files (PNG, JPEG: ``"rgb"``, the fixed 0..255 range); otherwise ``"mr"``,
    a z-score per channel, nnU-Net's choice for anything but CT.

    Config use: ``"$qddens_monai.data.plan_modality(@dataset_json, @fingerprint)"`` (when ``modality`` is
    ``"auto"``).
    """
    path, content = _dataset_json(dataset_json)
    names = content.get("modality", content.get("channel_names"))
    names = list(names.values()) if isinstance(names, dict) else [names] if isinstance(names, str) else names or []
    found = {CHANNEL_MODALITY.get(str(n).strip().lower()) for n in names}
    fingerprint = _fingerprint(datalist)
    dicom = {m.upper() for m in fingerprint.get("dicom_modalities", [])}
    if names and len(found) == 1 and None not in found:
        modality, why = found.pop(), f"the channel names {names} of {path}"
    elif dicom and len(dicom) == 1 and dicom <= {"CT", "MR"}:
        modality, why = dicom.pop().lower(), "the DICOM Modality of the series"
    elif fingerprint.get("formats") == ["pil"] and set(fingerprint.get("pil_modes", [])) <= _EIGHT_BIT_MODES:
        modality, why = "rgb", "8-bit image files (0..255)"
    else:
        modality, why = "mr", "no CT or 8-bit evidence (z-score per channel)"
    logger.info("planned modality %r from %s", modality, why)
    return modality


_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "RGB", "RGBA"}  # PIL modes of 8-bit images
_REQUIRED = object()


def planned(
    plan_file: Union[str, os.PathLike],
    key: str,
    value: Any = "auto",
    default: Any = _REQUIRED,
    spatial_dims: Optional[int] = None,
) -> Any:
    """A setting of a trained model: ``value`` when the user gave one, else the one its training planned.

    Training writes the settings it used, the planned ones resolved, to ``plan.json`` beside every model it saves
    (:func:`plan_record`); inference and evaluation read them back, so a model trained on 1-channel MR with
    3 classes is run on 1-channel MR with 3 classes without repeating any flag.

    Config use: ``"$qddens_monai.data.planned(@plan_file, 'in_channels', @in_channels)"``.

    Args:
        plan_file: the ``plan.json`` beside the model.
        key: the setting (``"in_channels"``, ``"num_classes"``, ``"modality"``, ``"roi_size"``).
        value: the user's setting; ``"auto"`` reads the plan.
        default: used when the plan file or the key is missing; without one that is an error.
        spatial_dims: the config's; a plan of a model with other ``spatial_dims`` is an error, not a source.

    Raises:
        FileNotFoundError: no plan file and no default (the message names the file and the flag to give).
        ValueError: the plan file is not valid JSON, lacks ``key`` and there is no default, or belongs to a
            model of other ``spatial_dims``.
    """
    if not (isinstance(value, str) and value == "auto"):
        return value
    path = os.fspath(plan_file)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                settings = json.load(f).get("settings", {})
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}: not a plan written by training ({e}); give --{key}.") from None
        trained_dims = settings.get("spatial_dims")
        if spatial_dims is not None and trained_dims is not None and int(trained_dims) != int(spatial_dims):
            raise ValueError(
                f"{path}: the model beside it is {trained_dims}D, the config is {spatial_dims}D (spatial_dims="
                f"{spatial_dims}); train a {spatial_dims}D model, point --model_path at one, or give --{key}."
            )
        if key in settings:
            return settings[key]
        problem: Optional[str] = f"{path}: has no {key!r} setting"
    else:
        problem = f"{path}: not found"
    if default is not _REQUIRED:
        return default
    error = FileNotFoundError if problem.endswith("not found") else ValueError
    raise error(
        f"{problem}; {key} is 'auto', which a trained model takes from the plan its training saved beside it. "
        f"Give --{key} (the value the model was trained with)."
    )


def plan_record(settings: Mapping[str, Any], datalist: Optional[DataOrFingerprint] = None) -> dict[str, Any]:
    """The content of ``plan.json``: ``{"settings": the JSON-able settings, "fingerprint": of the data}``.

    Config use: ``"$qddens_monai.data.plan_record({**@settings, **@plan}, @fingerprint)"``, which the bundle's
    checkpoint savers write beside the weights (``AtomicCheckpointSaver(beside={"plan.json": ...})``).
    """
    plan: dict[str, Any] = {
        "settings": {k: v for k, v in settings.items() if isinstance(v, (int, float, str, list, bool))}
    }
    if datalist is not None:
        plan["fingerprint"] = dict(_fingerprint(datalist))
    return plan


def write_plan(
    output_dir: Union[str, os.PathLike], settings: Mapping[str, Any], datalist: Optional[DataOrFingerprint] = None
) -> str:
    """Write ``output_dir/plan.json`` (:func:`plan_record`) atomically, so a reader never sees half a file; returns
    the path. ``datalist`` is the training datalist or its :func:`dataset_fingerprint`."""
    path = os.path.join(output_dir, "plan.json")
    atomic_write_text(path, json.dumps(plan_record(settings, datalist), indent=2))
    return path
