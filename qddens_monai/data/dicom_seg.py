"""Write predictions for DICOM input as DICOM Segmentation objects (highdicom)."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..files import atomic_write

__all__ = ["SaveDicomSegd", "write_dicom_seg"]


def _source_slices(folder: Union[str, os.PathLike]) -> list:
    import pydicom

    slices = []
    for f in sorted(Path(folder).iterdir()):
        if f.is_file():
            try:
                slices.append(pydicom.dcmread(str(f)))
            except Exception:  # not a DICOM file
                continue
    if not slices:
        raise ValueError(f"{folder}: no DICOM file to reference in the segmentation.")
    normal = np.cross(*np.reshape(np.asarray(slices[0].ImageOrientationPatient, float), (2, 3)))
    # ITK (and so MONAI's reader) orders the slices along the normal; the SEG frames follow them.
    return sorted(slices, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))


def write_dicom_seg(
    label_map: np.ndarray,
    source_folder: Union[str, os.PathLike],
    output_file: Union[str, os.PathLike],
    label_names: Mapping[int, str],
    algorithm_name: str = "QDD-Ens",
    algorithm_version: str = "0.1.0",
    algorithm_type: str = "AUTOMATIC",
) -> str:
    """Write ``label_map`` (x, y, z) of the DICOM series in ``source_folder`` as a DICOM SEG file.

    Args:
        label_map: integer labels indexed as MONAI reads the series, (columns, rows, slices).
        source_folder: the folder of the source series (one series).
        output_file: the ``.dcm`` file to write (written to a temporary name, then moved).
        label_names: ``{label value: segment name}`` of the foreground labels to store.
        algorithm_type: ``AUTOMATIC`` (a prediction) or ``SEMIAUTOMATIC`` (a prediction an annotator
            edited, e.g. a label saved from a viewer).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    slices = _source_slices(source_folder)
    frames = np.transpose(np.asarray(label_map), (2, 1, 0)).astype(np.uint8)  # (slices, rows, columns)
    if frames.shape != (len(slices), int(slices[0].Rows), int(slices[0].Columns)):
        raise ValueError(
            f"{source_folder}: the prediction {tuple(label_map.shape)} does not match the series "
            f"({slices[0].Columns} x {slices[0].Rows} x {len(slices)})."
        )
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=name,
            segmented_property_category=codes.cid7150.Tissue,
            segmented_property_type=codes.cid7166.ConnectiveTissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues[algorithm_type],
            algorithm_identification=algorithm,
        )
        for i, (_, name) in enumerate(sorted(label_names.items()))
    ]
    # Labels renumbered 1..n in the order of label_names, as the segment numbers.
    renumbered = np.zeros_like(frames)
    for i, (value, _) in enumerate(sorted(label_names.items())):
        renumbered[frames == value] = i + 1
    seg = hd.seg.Segmentation(
        source_images=slices,
        pixel_array=renumbered,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(slices[0], "SeriesNumber", 0) or 0) + 100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="qddens-monai",
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="0",
    )
    return str(atomic_write(output_file, lambda tmp: seg.save_as(tmp)))


class SaveDicomSegd(MapTransform):
    """Save ``pred`` label maps of DICOM-series inputs as DICOM SEG, ``<series folder>_seg.dcm``.

    Inputs that are not DICOM series folders are written as NIfTI instead (``fallback``), so one
    inference config serves mixed input folders.

    Args:
        keys: the prediction key (a (1, x, y, z) label map after ``AsDiscreted(argmax=True)``).
        output_dir: where to write.
        label_names: ``{label value: segment name}`` of the foreground labels.
        fallback: the transform for non-DICOM inputs, e.g. a ``SaveImaged``; ``None`` skips them.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        label_names: Mapping[int, str],
        fallback: Optional[MapTransform] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = output_dir
        self.label_names = {int(k): v for k, v in label_names.items()}
        self.fallback = fallback

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            source = str(d[key].meta.get("filename_or_obj", "")) if hasattr(d[key], "meta") else ""
            if source and os.path.isdir(source):
                name = Path(source).name or "series"
                write_dicom_seg(
                    d[key][0].cpu().numpy(), source, Path(self.output_dir) / f"{name}_seg.dcm", self.label_names
                )
            elif self.fallback is not None:
                d = dict(self.fallback(d))
        return d
