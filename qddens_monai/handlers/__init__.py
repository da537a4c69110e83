from qddens_monai.handlers.checkpoint import AtomicCheckpointSaver, EpochSeedHandler, find_checkpoint
from qddens_monai.handlers.incremental_quantization import IncrementalQuantizationHandler
from qddens_monai.handlers.plots import OverlayHandler, TrainingCurvesHandler, learner_disagreement, max_disagreement

__all__ = [
    "AtomicCheckpointSaver",
    "EpochSeedHandler",
    "find_checkpoint",
    "IncrementalQuantizationHandler",
    "TrainingCurvesHandler",
    "OverlayHandler",
    "learner_disagreement",
    "max_disagreement",
]
