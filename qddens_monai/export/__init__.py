"""Export: Model Zoo bundle folder and zip (code vendored), TorchScript, packed low-bit weights, ONNX / ONNX Runtime int8."""

from qddens_monai.export.metadata import REQUIRED_KEYS, build_metadata, check_metadata
from qddens_monai.export.onnx import OnnxRuntimeNetwork, export_onnx, quantize_onnx_int8
from qddens_monai.export.vendor import VENDOR_PACKAGE, rewrite_config, rewrite_names, vendor_package
from qddens_monai.export.zoo import ExportResult, check_zoo_name, export_zoo, load_bundle_network, mask_dice, predict_masks

__all__ = [
    "REQUIRED_KEYS",
    "build_metadata",
    "check_metadata",
    "OnnxRuntimeNetwork",
    "export_onnx",
    "quantize_onnx_int8",
    "VENDOR_PACKAGE",
    "rewrite_config",
    "rewrite_names",
    "vendor_package",
    "ExportResult",
    "check_zoo_name",
    "export_zoo",
    "load_bundle_network",
    "mask_dice",
    "predict_masks",
]
