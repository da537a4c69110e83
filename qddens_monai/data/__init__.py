"""Data: demo generators writing real files, datalists, up-front checks, DRIVE, transform builders."""

from qddens_monai.data.checks import DataValidationError, check_datalist, dicom_series_in
from qddens_monai.data.datalist import load_datalist, split_datalist
from qddens_monai.data.demo import ensure_demo_data, find_images, write_demo_2d, write_demo_3d
from qddens_monai.data.dicom import write_dicom_series
from qddens_monai.data.dicom_seg import SaveDicomSegd, write_dicom_seg
from qddens_monai.data.drive import prepare_drive
from qddens_monai.data.transforms import MODALITIES, intensity_normalization, label_transform
from qddens_monai.data.vessels import create_vessel_image_2d

__all__ = [
    "DataValidationError",
    "check_datalist",
    "dicom_series_in",
    "load_datalist",
    "split_datalist",
    "ensure_demo_data",
    "find_images",
    "write_demo_2d",
    "write_demo_3d",
    "write_dicom_series",
    "SaveDicomSegd",
    "write_dicom_seg",
    "prepare_drive",
    "MODALITIES",
    "intensity_normalization",
    "label_transform",
    "create_vessel_image_2d",
]
