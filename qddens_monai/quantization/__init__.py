"""Low-bit weight quantization of any PyTorch / MONAI network (INQ, D2ED2Q, DoReFa, TWN, uniform)."""

from qddens_monai.quantization.network import (
    DEFAULT_PORTIONS,
    QUANTIZABLE_LAYERS,
    freeze,
    is_quantization_complete,
    quantization_progress,
    quantization_step,
    quantize_network,
    quantized_layers,
    set_portions,
)
from qddens_monai.quantization.packing import PACKED_FORMAT_VERSION, PackedSize, load_packed, load_packed_network, save_packed
from qddens_monai.quantization.parametrizations import IncrementalQuantization, StraightThroughQuantization
from qddens_monai.quantization.partition import PARTITIONS
from qddens_monai.quantization.quantizers import (
    QUANTIZERS,
    DoReFaQuantizer,
    LogMinMaxQuantizer,
    PowerOfTwoQuantizer,
    Quantizer,
    TernaryQuantizer,
    UniformQuantizer,
    get_quantizer,
)
from qddens_monai.quantization.report import (
    QuantizationReport,
    TensorQuantization,
    quantization_report,
    write_quantization_report,
)

__all__ = [
    "DEFAULT_PORTIONS",
    "QUANTIZABLE_LAYERS",
    "PARTITIONS",
    "QUANTIZERS",
    "PACKED_FORMAT_VERSION",
    "Quantizer",
    "PowerOfTwoQuantizer",
    "LogMinMaxQuantizer",
    "DoReFaQuantizer",
    "TernaryQuantizer",
    "UniformQuantizer",
    "get_quantizer",
    "IncrementalQuantization",
    "StraightThroughQuantization",
    "quantize_network",
    "quantized_layers",
    "set_portions",
    "quantization_step",
    "quantization_progress",
    "is_quantization_complete",
    "freeze",
    "QuantizationReport",
    "TensorQuantization",
    "quantization_report",
    "write_quantization_report",
    "PackedSize",
    "save_packed",
    "load_packed",
    "load_packed_network",
]
