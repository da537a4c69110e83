"""Writing a volume as a real DICOM series (one CT-like file per slice) with pydicom.

The series is meant to be read back by MONAI's own DICOM readers, so that tests and users exercise
exactly the loaders the bundle uses::

    LoadImaged(keys="image", reader="ITKReader")({"image": out_dir})
    LoadImaged(keys="image", reader="PydicomReader")({"image": out_dir})

Conventions (matching what those readers return):

- ``volume`` is indexed ``(x, y, z)`` = (column, row, slice), which is the array order MONAI's
  ``ITKReader`` and ``PydicomReader`` (``swap_ij=True``) return for a series, so
  ``LoadImage(...)(out_dir)`` gives back ``volume`` itself (up to the int16 rescale rounding).
- ``spacing`` is ``(sx, sy, sz)`` in mm; the DICOM ``PixelSpacing`` is written as ``[sy, sx]``
  (row spacing first, as the standard wants).
- ``origin`` is the ``ImagePositionPatient`` of the first slice, in the DICOM patient (LPS) frame.
  MONAI reports RAS affines by default, so the loaded affine's translation is
  ``(-ox, -oy, oz)`` with ``diag(-sx, -sy, sz)``.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["write_dicom_series", "CT_IMAGE_STORAGE"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _uid(*entropy: object) -> str:
    """A deterministic DICOM UID derived from ``entropy`` (pydicom's own prefix and hashing)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(e) for e in entropy]))


def write_dicom_series(
    volume: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    out_dir: str = "dicom_series",
    series_uid: str | None = None,
    patient_id: str = "QDDENS-DEMO",
    study_uid: str | None = None,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    modality: str = "CT",
    series_description: str = "qddens-monai synthetic series",
    series_number: int = 1,
) -> list[str]:
    """Write ``volume`` (``(x, y, z)``, values in e.g. Hounsfield units) as a DICOM series.

    Each slice ``k`` becomes ``out_dir/slice_{k:04d}.dcm``: a CT Image Storage instance, explicit VR
    little endian, signed 16-bit pixels ``round((v - intercept) / slope)`` with ``RescaleSlope`` /
    ``RescaleIntercept``, axial ``ImageOrientationPatient`` ``[1, 0, 0, 0, 1, 0]``,
    ``ImagePositionPatient = origin + (0, 0, k * sz)``, ``PixelSpacing``, ``SliceThickness``,
    ``InstanceNumber = k + 1`` and one ``SeriesInstanceUID`` (generated deterministically from the
    patient id and the data if not given, so repeated runs give identical files).

    Args:
        volume: 3D array indexed ``(x, y, z)``.
        spacing: voxel size ``(sx, sy, sz)`` in mm.
        origin: position of the first voxel of the first slice, DICOM patient (LPS) frame, mm.
        out_dir: folder to write into (created if needed).
        series_uid: ``SeriesInstanceUID``; derived from the inputs when ``None``.
        patient_id: ``PatientID`` (also used as ``PatientName``).
        study_uid: ``StudyInstanceUID``; derived from ``patient_id`` when ``None``.
        rescale_slope: ``RescaleSlope``; stored values are ``(v - intercept) / slope``.
        rescale_intercept: ``RescaleIntercept``.
        modality: ``Modality`` tag (the SOP class stays CT Image Storage).
        series_description: ``SeriesDescription``.
        series_number: ``SeriesNumber``.

    Returns:
        The written file paths, in slice order.

    Raises:
        ValueError: when ``volume`` is not 3D, or its values do not fit int16 after rescaling.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"write_dicom_series needs a 3D (x, y, z) volume, got shape {volume.shape}.")
    if rescale_slope == 0:
        raise ValueError("rescale_slope must be non-zero.")
    stored = np.rint((volume.astype(np.float64) - rescale_intercept) / rescale_slope)
    info = np.iinfo(np.int16)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(
            f"volume values [{volume.min()}, {volume.max()}] do not fit int16 with slope {rescale_slope} and "
            f"intercept {rescale_intercept}; choose another rescale."
        )
    stored = stored.astype(np.int16)
    sx, sy, sz = (float(s) for s in spacing)
    ox, oy, oz = (float(o) for o in origin)
    nx, ny, nz = volume.shape

    # deterministic UIDs: the same call writes byte-identical series (needed for reproducible demo data)
    digest = hashlib.sha1(stored.tobytes()).hexdigest()
    study_uid = study_uid or _uid("study", patient_id)
    series_uid = series_uid or _uid("series", patient_id, digest, spacing, origin)
    frame_uid = _uid("frame", series_uid)
    date = datetime.date(2000, 1, 1).strftime("%Y%m%d")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(nz):
        sop_uid = _uid("instance", series_uid, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientID = patient_id
        ds.PatientName = f"{patient_id}^"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        # type 2 attributes (present, may be empty) that DICOM readers and SEG writers expect
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.ReferringPhysicianName = ""
        ds.AccessionNumber = ""
        ds.StudyID = "1"
        ds.Modality = modality
        ds.SeriesDescription = series_description
        ds.SeriesNumber = int(series_number)
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [ox, oy, oz + k * sz]
        ds.SliceLocation = oz + k * sz
        ds.PixelSpacing = [sy, sx]  # row spacing (between rows, i.e. along y) first
        ds.SliceThickness = sz
        ds.SpacingBetweenSlices = sz
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1  # signed
        ds.RescaleSlope = rescale_slope
        ds.RescaleIntercept = rescale_intercept
        ds.RescaleType = "HU" if modality == "CT" else "US"
        # a DICOM frame is (rows, columns) = (y, x): transpose the (x, y) slice
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        path = os.fspath(out / f"slice_{k:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
