from qddens_monai.handlers.incremental_quantization import IncrementalQuantizationHandler

__all__ = ["IncrementalQuantizationHandler"]
