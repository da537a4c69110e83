"""Up-front validation of a datalist, before training starts, with errors that name the file.

A broken file found by a ``DataLoader`` worker in epoch 7 wastes hours and is reported badly;
:func:`check_datalist` looks at every file of a datalist first and raises one
:class:`DataValidationError` listing *all* problems, each as ``file: problem``:

- an empty datalist, items without an image, files that do not exist;
- unreadable / corrupt files, and formats MONAI's ``LoadImage`` has no reader for (GIF);
- a DICOM folder holding no series or more than one (the series UIDs are named), or whose slices are
  unevenly spaced (missing slices; the InstanceNumbers around the gap are named);
- wrong dimensionality (e.g. a 4D image where 3D is expected) and channel counts;
- image / label / mask spatial shapes and affines that do not match;
- with ``check_values=True`` (the default; reads the data): NaN/Inf values, label values outside
  ``num_classes``, non-binary masks, and truncated compressed files.

Two passes per file. The header pass is cheap (nibabel / PIL / pydicom / SimpleITK headers) and
predicts the shape ``LoadImaged`` + ``EnsureChannelFirstd`` will give, following MONAI's reader
rules. With ``check_values`` the file is then loaded by MONAI's own ``LoadImage`` (the loader the
bundle uses), whose shape and affine are authoritative.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataValidationError", "check_datalist", "dicom_series_in", "read_header", "FileHeader"]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img", ".img.gz")
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class DataValidationError(ValueError):
    """A datalist with unusable entries; ``problems`` lists ``(file or entry, what is wrong)``."""

    def __init__(self, problems: Sequence[tuple[str, str]], header: str | None = None) -> None:  # noqa: B042
        self.problems = [(str(where), str(what)) for where, what in problems]
        self.header = header
        lines = "\n".join(f"  {where}: {what}" for where, what in self.problems)
        super().__init__(f"{header or f'{len(self.problems)} problem(s) in the data:'}\n{lines}")

    def __reduce__(self):
        # rebuilt from its arguments, not from the message (B042 above): it crosses process boundaries
        return type(self), (self.problems, self.header)


class _Problem(Exception):
    """A finding about a file, reported verbatim (not as a reader crash)."""


@dataclass
class FileHeader:
    """What :func:`read_header` learns about a file without decoding its voxels."""

    path: str
    kind: str  # "nifti", "pil", "dicom", "itk"
    shape: tuple[int, ...]  # channel-first, as LoadImage + EnsureChannelFirst give it
    affine: np.ndarray | None = None  # RAS, as MONAI reports it; None for plain 2D image formats
    extras: dict = field(default_factory=dict)  # NIfTI "ndim", PIL "mode", DICOM "modality"


def _suffix(path: str) -> str:
    name = path.lower()
    for s in (".nii.gz", ".img.gz"):
        if name.endswith(s):
            return s
    return os.path.splitext(name)[1]


def _dicom_headers(folder: str) -> list[tuple[str, Any]]:
    """``(path, dataset)`` of the DICOM files directly in ``folder``; other files are skipped, as ITK does."""
    import pydicom

    out = []
    for f in sorted(Path(folder).iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        try:
            out.append((str(f), pydicom.dcmread(str(f), stop_before_pixels=True)))
        except Exception:  # not a DICOM file (a README, a thumbnail ...)
            continue
    return out


def dicom_series_in(folder: str) -> dict[str, int]:
    """``{SeriesInstanceUID: number of files}`` of the DICOM files directly inside ``folder``."""
    series: dict[str, int] = {}
    for _, ds in _dicom_headers(folder):
        uid = str(getattr(ds, "SeriesInstanceUID", "?"))
        series[uid] = series.get(uid, 0) + 1
    return series


def _dicom_affine(slices: Sequence[Any]) -> np.ndarray:
    """RAS affine of position-sorted slices: the DICOM (LPS) geometry flipped as MONAI's readers do."""
    first = slices[0]
    iop = np.asarray(getattr(first, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)
    ipp = np.asarray(getattr(first, "ImagePositionPatient", [0, 0, 0]), dtype=float)
    row_spacing, col_spacing = (float(v) for v in getattr(first, "PixelSpacing", [1.0, 1.0]))
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing  # along a row: the x (column) index
    lps[:3, 1] = iop[3:] * row_spacing  # down a column: the y (row) index
    if len(slices) > 1:
        last = np.asarray(getattr(slices[-1], "ImagePositionPatient", ipp), dtype=float)
        lps[:3, 2] = (last - ipp) / (len(slices) - 1)
    else:
        lps[:3, 2] = np.cross(iop[:3], iop[3:]) * float(getattr(first, "SliceThickness", 1.0) or 1.0)
    lps[:3, 3] = ipp
    return _LPS_TO_RAS @ lps


def _check_slice_spacing(slices: Sequence[Any], normal: np.ndarray, tolerance: float = 0.01) -> None:
    """Position-sorted slices must be evenly spaced: a gap means missing slices, and uneven spacing would
    give the volume a wrong geometry (readers assume one slice distance). Names the InstanceNumbers."""
    if len(slices) < 2:
        return
    pos = np.array([float(normal @ np.asarray(getattr(s, "ImagePositionPatient", [0, 0, 0]), float)) for s in slices])
    gaps = np.diff(pos)
    step = float(np.median(gaps))
    number = [getattr(s, "InstanceNumber", "?") for s in slices]
    if abs(step) < 1e-6 or np.any(np.abs(gaps) < 1e-6):
        dup = int(np.flatnonzero(np.abs(gaps) < 1e-6)[0]) if np.any(np.abs(gaps) < 1e-6) else 0
        raise _Problem(
            f"DICOM slices share a position ({pos[dup]:.3f} mm: InstanceNumber {number[dup]} and "
            f"{number[dup + 1]}); duplicated or mixed slices"
        )
    bad = np.flatnonzero(np.abs(gaps - step) > tolerance * abs(step))
    if bad.size:
        listed = ", ".join(f"{gaps[i]:.3g} mm between InstanceNumber {number[i]} and {number[i + 1]}" for i in bad[:4])
        raise _Problem(
            f"DICOM slice positions are unevenly spaced (usual spacing {step:.3g} mm; {listed}"
            f"{', ...' if bad.size > 4 else ''}): missing slices or inconsistent spacing"
        )


def read_header(path: str) -> FileHeader:
    """Read the header of an image file or DICOM series folder, without decoding voxels.

    The predicted ``shape`` follows MONAI's readers: NIfTI ``(x, y, z[, ..., c])`` with the last axis
    beyond the third read as channels (``NibabelReader``); PIL images ``(width, height[, bands])``
    (``PILReader`` swaps rows and columns); DICOM series ``(columns, rows, slices)`` (``ITKReader``);
    then the channel axis first.

    Raises:
        _Problem: a folder without DICOM files, or with several series; a GIF file.
        Exception: whatever the underlying reader raises for a corrupt file.
    """
    if os.path.isdir(path):
        files = _dicom_headers(path)
        if not files:
            raise _Problem("is a folder without DICOM files")
        series: dict[str, list] = {}
        for _, ds in files:
            series.setdefault(str(getattr(ds, "SeriesInstanceUID", "?")), []).append(ds)
        if len(series) > 1:
            listed = ", ".join(f"{uid} ({len(s)} files)" for uid, s in series.items())
            raise _Problem(f"holds {len(series)} DICOM series ({listed}); keep one series per folder")
        slices = next(iter(series.values()))
        iop = np.asarray(getattr(slices[0], "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        slices.sort(key=lambda s: float(normal @ np.asarray(getattr(s, "ImagePositionPatient", [0, 0, 0]), float)))
        _check_slice_spacing(slices, normal)
        sizes = sorted({(int(s.Rows), int(s.Columns)) for s in slices})
        if len(sizes) > 1:
            raise _Problem(f"DICOM slices have different sizes (rows, columns) {sizes}")
        rows, cols = sizes[0]
        modality = {"modality": str(getattr(slices[0], "Modality", ""))}
        return FileHeader(path, "dicom", (1, cols, rows, len(slices)), _dicom_affine(slices), modality)

    sfx = _suffix(path)
    if sfx == ".gif":
        # LoadImage's PILReader does not claim .gif and ITK has no GIF reader: the bundle could not load it
        raise _Problem("is a GIF, which MONAI's LoadImage cannot read; convert it to PNG (DRIVE: prepare_drive)")
    if sfx in _NIFTI_SUFFIXES:
        import nibabel as nib

        img = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
        if sfx == ".nii":  # an uncompressed file can be checked for truncation from its size alone
            need = int(img.dataobj.offset) + int(np.prod(shape)) * img.get_data_dtype().itemsize
            if os.path.getsize(path) < need:
                raise _Problem(f"is truncated: {os.path.getsize(path)} bytes, its header needs {need}")
        rank = max(min(len(shape), 3), 1)
        loaded = (shape[-1],) + shape[:-1] if len(shape) > rank else (1,) + shape
        return FileHeader(path, "nifti", loaded, np.asarray(img.affine, dtype=float), {"ndim": len(shape)})
    if sfx in _PIL_SUFFIXES:
        from PIL import Image

        if sfx == ".png":
            with Image.open(path) as img:
                img.verify()  # chunk CRCs: catches most corruption without decoding
        with Image.open(path) as img:
            return FileHeader(path, "pil", (len(img.getbands()), img.width, img.height), None, {"mode": img.mode})
    if sfx == ".dcm":
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        shape = (1, int(ds.Columns), int(ds.Rows)) + ((frames,) if frames > 1 else ())
        affine = _dicom_affine([ds]) if frames == 1 else None
        return FileHeader(path, "dicom", shape, affine, {"modality": str(getattr(ds, "Modality", ""))})
    import SimpleITK as sitk  # noqa: N813 (SimpleITK's own convention)

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    affine = None
    if reader.GetDimension() == 3:
        lps = np.eye(4)
        lps[:3, :3] = np.asarray(reader.GetDirection(), float).reshape(3, 3) @ np.diag(reader.GetSpacing())
        lps[:3, 3] = reader.GetOrigin()
        affine = _LPS_TO_RAS @ lps
    shape = (reader.GetNumberOfComponents(),) + tuple(int(s) for s in reader.GetSize())
    return FileHeader(path, "itk", shape, affine)


def _fmt(values: np.ndarray, limit: int = 8) -> str:
    vals = [int(v) if float(v).is_integer() else float(v) for v in values[:limit]]
    return str(vals)[:-1] + (", ...]" if len(values) > limit else "]")


def _unique(array: np.ndarray) -> np.ndarray:
    """``np.unique`` of a label map, by counting when the values are integers in a small range (much faster)."""
    if array.dtype.kind == "f":
        ints = array.astype(np.int64)
        if not np.array_equal(ints, array):
            return np.unique(array)
        array = ints
    lo, hi = int(array.min()), int(array.max())
    if array.dtype.kind in "iub" and hi - lo < 2**20:
        return np.flatnonzero(np.bincount((array.astype(np.int64) - lo).ravel())) + lo
    return np.unique(array)


def _value_problems(role: str, array: np.ndarray, num_classes: int | None) -> list[str]:
    """NaN/Inf for every role; class values for labels; 0/1 (or 0/255) for masks."""
    problems = []
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            problems.append(f"{role} contains {n_nan} NaN and {int(array.size - finite.sum()) - n_nan} infinite values")
            array = array[finite]
    if role == "image" or array.size == 0:
        return problems
    values = _unique(array)
    if not np.all(np.mod(values, 1) == 0):
        return problems + [f"{role} has non-integer values {_fmt(values[np.mod(values, 1) != 0])}"]
    binary = set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}  # 0/255: PNG/GIF convention
    if role == "mask":
        if not binary:
            problems.append(f"mask is not binary: values {_fmt(values)} (expected 0/1 or 0/255)")
    elif num_classes is not None:
        if not ((num_classes == 2 and binary) or (values.min() >= 0 and values.max() < num_classes)):
            bad = values[(values < 0) | (values >= num_classes)]
            problems.append(
                f"label values {_fmt(bad)} do not fit num_classes={num_classes} "
                f"(allowed 0..{num_classes - 1}{', or 0/255' if num_classes == 2 else ''}; found {_fmt(values)})"
            )
    elif values.min() < 0:
        problems.append(f"label has negative values {_fmt(values[values < 0])}")
    return problems


class _Inspector:
    """Reads one file (header, then optionally through MONAI's LoadImage) and records its problems."""

    def __init__(self, check_values: bool, num_classes: int | None) -> None:
        self.check_values, self.num_classes = check_values, num_classes
        self.problems: list[tuple[str, str]] = []
        self._loader = None
        self._seen: dict[tuple[str, str], Any] = {}  # a file shared by entries is read (and reported) once

    def loader(self):
        if self._loader is None:  # one instance: building MONAI's reader list is slow and chatty
            from monai.transforms import EnsureChannelFirst, LoadImage

            load, channel_first = LoadImage(image_only=True), EnsureChannelFirst()
            self._loader = lambda path: channel_first(load(path))
        return self._loader

    def __call__(self, path: str, role: str) -> tuple[tuple[int, ...], np.ndarray | None, FileHeader] | None:
        if (path, role) not in self._seen:
            self._seen[(path, role)] = self._inspect(path, role)
        return self._seen[(path, role)]

    def _inspect(self, path: str, role: str) -> tuple[tuple[int, ...], np.ndarray | None, FileHeader] | None:
        if not os.path.exists(path):
            self.problems.append((path, f"{role} file does not exist"))
            return None
        try:
            header = read_header(path)
        except _Problem as p:
            self.problems.append((path, f"{role} {p}"))
            return None
        except Exception as e:  # any reader error is a finding about this file, not a crash of the check
            self.problems.append((path, f"{role} cannot be read ({_last_line(e)})"))
            return None
        shape, affine = header.shape, header.affine
        if self.check_values:
            try:
                data = self.loader()(path)
            except Exception as e:
                self.problems.append((path, f"{role} cannot be read by MONAI's LoadImage ({_last_line(e)})"))
                return None
            shape = tuple(int(s) for s in data.shape)
            if affine is not None and hasattr(data, "affine"):
                affine = np.asarray(data.affine, dtype=float)
            array = np.asarray(data)
            for problem in _value_problems(role, array, self.num_classes):
                self.problems.append((path, problem))
            if role == "label" and array.size and not np.any(array):
                logger.warning(f"{path}: empty label (background only).")
        return shape, affine, header


def _last_line(e: BaseException) -> str:
    while e.__cause__ is not None:  # the reader's own error, not MONAI's wrappers around it
        e = e.__cause__
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[-1][:200] if text else ''}"


def check_datalist(
    items: Sequence[dict],
    spatial_dims: int | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
    mask_key: str = "mask",
    check_values: bool = True,
    affine_tolerance: float = 1e-3,
    require_label: bool = False,
) -> list[dict]:
    """Look at every entry of ``items`` once and report all problems together; returns ``items``.

    Config use: ``"$qddens_monai.data.check_datalist(@split[0], spatial_dims=2, in_channels=3, num_classes=2)"``.

    Args:
        items: a MONAI datalist (e.g. from :func:`qddens_monai.data.load_datalist`).
        spatial_dims: the image must have this many spatial dimensions as MONAI loads it (a 4D NIfTI
            ``(x, y, z, t)`` is a 3D image with ``t`` channels; ``(x, y, z, 2, 2)`` has 4 spatial
            dimensions). ``None``: not checked.
        in_channels: the image must have this many channels (3 for RGB). ``None``: not checked.
        num_classes: classes including background; label values must be ``0..num_classes-1`` (for 2,
            0/255 PNG labels are accepted too, see :func:`qddens_monai.data.label_transform`).
            ``None``: only integral, non-negative values are required.
        image_key, label_key, mask_key: the item keys; label and mask (a FOV mask) are optional.
        check_values: also load every file through MONAI's ``LoadImage`` and check its values (NaN/Inf,
            label classes, binary mask); this catches truncated ``.nii.gz`` files too. ``False``:
            headers only (fast; a truncated gzip can go unnoticed).
        affine_tolerance: largest absolute difference allowed between the image affine and the
            label / mask affines (mm), for formats with a geometry (NIfTI, DICOM, ITK).
        require_label: report items without ``label_key``.

    Raises:
        DataValidationError: listing every ``file: problem`` found.
    """
    items = list(items)
    if not items:
        raise DataValidationError([("datalist", "is empty: no image to train or evaluate on")])
    inspect = _Inspector(check_values, num_classes)
    problems = inspect.problems
    for n, item in enumerate(items):
        entry = f"datalist entry {n}"
        if not isinstance(item, dict):
            problems.append((entry, f"is a {type(item).__name__}, expected a dict with an {image_key!r} key"))
            continue
        for key in (image_key,) + ((label_key,) if require_label else ()):
            if not item.get(key):
                problems.append((entry, f"has no {key!r} key (keys: {sorted(item)})"))
        if not item.get(image_key):
            continue
        if isinstance(item[image_key], (list, tuple)):  # several files stacked as channels by LoadImage
            found = [inspect(str(p), "image") for p in item[image_key]]
            if any(f is None for f in found):
                continue
            spatial = {f[0][1:] for f in found}  # type: ignore[index]
            if len(spatial) > 1:
                problems.append(
                    (str(item[image_key][0]), f"image files of one entry have different shapes {sorted(spatial)}")
                )
                continue
            image = ((sum(f[0][0] for f in found),) + found[0][0][1:], found[0][1], found[0][2])  # type: ignore[index]
            name = str(item[image_key][0])
        else:
            image, name = inspect(str(item[image_key]), "image"), str(item[image_key])
        if image is not None:
            shape, _, header = image
            if spatial_dims is not None and len(shape) - 1 != spatial_dims:
                hint = (
                    " (a NIfTI's last axis beyond the third is read as channels)"
                    if header.extras.get("ndim", 0) > 3
                    else ""
                )
                problems.append(
                    (name, f"has {len(shape) - 1} spatial dimensions {shape[1:]}, expected {spatial_dims}{hint}")
                )
                image = None
            elif in_channels is not None and shape[0] != in_channels:
                ndim = header.extras.get("ndim", 0)
                hint = f" (a {ndim}D NIfTI: its last axis is read as channels)" if ndim > 3 else ""
                problems.append((name, f"has {shape[0]} channels, the network expects in_channels={in_channels}{hint}"))
        for key in (label_key, mask_key):
            if not item.get(key):
                continue
            other = inspect(str(item[key]), key)
            if other is None:
                continue
            oshape, oaffine, _ = other
            oname = str(item[key])
            if oshape[0] != 1:
                problems.append((oname, f"{key} has {oshape[0]} channels, expected a single-channel {key}"))
            if image is None:
                continue
            shape, affine, _ = image
            if oshape[1:] != shape[1:]:
                problems.append((oname, f"{key} shape {oshape[1:]} differs from image {name} {shape[1:]}"))
            elif affine is not None and oaffine is not None:
                diff = float(np.abs(np.asarray(affine) - np.asarray(oaffine)).max())
                if diff > affine_tolerance:
                    problems.append(
                        (
                            oname,
                            f"{key} affine differs from image {name} by {diff:.4g} > {affine_tolerance} "
                            f"(misaligned voxels): {np.round(oaffine, 4).tolist()} vs {np.round(affine, 4).tolist()}",
                        )
                    )
    if problems:
        files = len({where for where, _ in problems})
        raise DataValidationError(
            problems, f"{len(problems)} problem(s) in {files} file(s) of a datalist of {len(items)} entries:"
        )
    return items
