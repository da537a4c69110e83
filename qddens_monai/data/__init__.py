"""Data: demo sets written as real files, datalists, up-front checks, DRIVE, DICOM (series, SEG), transforms.

Everything here is called from the bundle configs (``$qddens_monai.data....``): paths are ``str``,
datalists are plain lists of ``{"image": path, "label": path[, "mask": path]}`` dicts.
"""

from .._lazy import lazy_exports

# Imported on first use (qddens_monai._lazy): importing one component does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".checks": ["DataValidationError", "FileHeader", "check_datalist", "dicom_series_in", "read_header"],
        ".datalist": ["load_datalist", "split_datalist", "write_datalist"],
        ".demo": ["DEMO_DEFAULTS", "ensure_demo_data", "find_images", "write_demo_2d", "write_demo_3d"],
        ".dicom": ["write_dicom_series"],
        ".dicom_seg": ["SaveDicomSegd", "write_dicom_seg"],
        ".drive": ["prepare_drive"],
        ".phantoms": ["create_mr_slice_2d", "write_demo_mr_2d"],
        ".plan": [
            "CHANNEL_MODALITY",
            "MAX_ROI_SIZE",
            "UNTRAINED",
            "dataset_fingerprint",
            "plan_in_channels",
            "plan_modality",
            "plan_num_classes",
            "plan_num_samples",
            "plan_record",
            "plan_roi_size",
            "planned",
            "write_plan",
        ],
        ".screen": ["InferenceInputError", "InputScreen"],
        ".transforms": [
            "MODALITIES",
            "MODALITY_ALIASES",
            "ClassIndicesd",
            "NormalizeModalityd",
            "intensity_normalization",
            "modality_name",
            "label_transform",
        ],
        ".vessels": ["create_vessel_image_2d"],
    },
)
