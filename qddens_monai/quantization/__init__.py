"""Low-bit weight quantization of any PyTorch / MONAI network (INQ, D2ED2Q, DoReFa, TWN, uniform)."""

from .._lazy import lazy_exports

# Imported on first use (qddens_monai._lazy): importing one component does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".network": [
            "DEFAULT_PORTIONS",
            "QUANTIZABLE_LAYERS",
            "freeze",
            "is_quantization_complete",
            "quantization_progress",
            "quantization_step",
            "quantize_network",
            "quantized_layers",
            "set_portions",
        ],
        ".packing": ["PACKED_FORMAT_VERSION", "PackedSize", "load_packed", "load_packed_network", "save_packed"],
        ".parametrizations": ["IncrementalQuantization", "StraightThroughQuantization"],
        ".partition": ["PARTITIONS"],
        ".quantizers": [
            "QUANTIZERS",
            "DoReFaQuantizer",
            "LogMinMaxQuantizer",
            "PowerOfTwoQuantizer",
            "Quantizer",
            "TernaryQuantizer",
            "UniformQuantizer",
            "get_quantizer",
        ],
        ".report": ["QuantizationReport", "TensorQuantization", "quantization_report", "write_quantization_report"],
    },
)
