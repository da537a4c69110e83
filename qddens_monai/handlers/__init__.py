from qddens_monai.handlers.checkpoint import AtomicCheckpointSaver, EpochSeedHandler, find_checkpoint
from qddens_monai.handlers.incremental_quantization import IncrementalQuantizationHandler
from qddens_monai.ensemble import learner_disagreement, max_disagreement
from qddens_monai.handlers.curves import TrainingCurvesHandler
from qddens_monai.handlers.overlays import OverlayHandler

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
