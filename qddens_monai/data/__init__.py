"""Data: demo sets written as real files, datalists, up-front checks, DRIVE, DICOM (series, SEG), transforms.

Everything here is called from the bundle configs (``$qddens_monai.data....``): paths are ``str``,
datalists are plain lists of ``{"image": path, "label": path[, "mask": path]}`` dicts.
"""

from qddens_monai.data.checks import DataValidationError, FileHeader, check_datalist, dicom_series_in, read_header
from qddens_monai.data.datalist import load_datalist, split_datalist, write_datalist
from qddens_monai.data.demo import DEMO_DEFAULTS, ensure_demo_data, find_images, write_demo_2d, write_demo_3d
from qddens_monai.data.dicom import write_dicom_series
from qddens_monai.data.dicom_seg import SaveDicomSegd, write_dicom_seg
from qddens_monai.data.drive import prepare_drive
from qddens_monai.data.phantoms import create_mr_slice_2d, write_demo_mr_2d
from qddens_monai.data.plan import MAX_ROI_SIZE, dataset_fingerprint, plan_num_samples, plan_roi_size, write_plan
from qddens_monai.data.screen import InferenceInputError, InputScreen
from qddens_monai.data.transforms import (
    MODALITIES,
    MODALITY_ALIASES,
    ClassIndicesd,
    NormalizeModalityd,
    intensity_normalization,
    label_transform,
)
from qddens_monai.data.vessels import create_vessel_image_2d

__all__ = [
    "DataValidationError",
    "FileHeader",
    "check_datalist",
    "dicom_series_in",
    "read_header",
    "load_datalist",
    "split_datalist",
    "write_datalist",
    "DEMO_DEFAULTS",
    "ensure_demo_data",
    "find_images",
    "write_demo_2d",
    "write_demo_3d",
    "write_dicom_series",
    "SaveDicomSegd",
    "write_dicom_seg",
    "prepare_drive",
    "create_mr_slice_2d",
    "write_demo_mr_2d",
    "dataset_fingerprint",
    "MAX_ROI_SIZE",
    "plan_roi_size",
    "plan_num_samples",
    "write_plan",
    "InputScreen",
    "InferenceInputError",
    "MODALITIES",
    "MODALITY_ALIASES",
    "intensity_normalization",
    "label_transform",
    "ClassIndicesd",
    "NormalizeModalityd",
    "create_vessel_image_2d",
]
