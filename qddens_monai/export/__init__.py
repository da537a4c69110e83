"""Export: Model Zoo bundle folder and zip (code vendored), TorchScript, packed low-bit weights,
ONNX / ONNX Runtime int8."""

from .._lazy import lazy_exports

# Imported on first use (qddens_monai._lazy): importing one component does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".metadata": ["REQUIRED_KEYS", "build_metadata", "check_metadata"],
        ".onnx": ["OnnxRuntimeNetwork", "export_onnx", "quantize_onnx_int8"],
        ".vendor": ["VENDOR_PACKAGE", "rewrite_config", "rewrite_names", "vendor_package"],
        ".zoo": ["ExportResult", "check_zoo_name", "export_zoo", "load_bundle_network", "mask_dice", "predict_masks"],
    },
)
