"""The figure handlers under their former module name: :mod:`qddens_monai.handlers.curves` (training curves),
:mod:`qddens_monai.handlers.overlays` (prediction overlays), drawn by :mod:`qddens_monai.handlers.drawing`."""

from qddens_monai.ensemble import DISAGREEMENT_MEASURES, learner_disagreement, max_disagreement
from qddens_monai.handlers.curves import TrainingCurvesHandler, default_loss_transform
from qddens_monai.handlers.overlays import OverlayHandler

__all__ = [
    "TrainingCurvesHandler",
    "OverlayHandler",
    "default_loss_transform",
    "learner_disagreement",
    "max_disagreement",
    "DISAGREEMENT_MEASURES",
]
