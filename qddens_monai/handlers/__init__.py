from .._lazy import lazy_exports

# Imported on first use (qddens_monai._lazy): importing one component does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".checkpoint": ["AtomicCheckpointSaver", "EpochSeedHandler", "find_checkpoint"],
        ".incremental_quantization": ["IncrementalQuantizationHandler"],
        "..ensemble": ["learner_disagreement", "max_disagreement"],
        ".curves": ["TrainingCurvesHandler"],
        ".loss_parts": ["LossPartsHandler", "loss_parts_from_output"],
        ".overlays": ["OverlayHandler"],
    },
)
