from qddens_monai.handlers.incremental_quantization import IncrementalQuantizationHandler
from qddens_monai.handlers.plots import OverlayHandler, TrainingCurvesHandler, learner_disagreement, max_disagreement

__all__ = [
    "IncrementalQuantizationHandler",
    "TrainingCurvesHandler",
    "OverlayHandler",
    "learner_disagreement",
    "max_disagreement",
]
