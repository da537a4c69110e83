"""The figure handlers under their former module name: :mod:`qddens_monai.handlers.curves` (training curves),
:mod:`qddens_monai.handlers.overlays` (prediction overlays), drawn by :mod:`qddens_monai.handlers.drawing`."""

from ..ensemble import DISAGREEMENT_MEASURES, learner_disagreement, max_disagreement
from .curves import TrainingCurvesHandler, default_loss_transform
from .overlays import OverlayHandler

__all__ = [
    "TrainingCurvesHandler",
    "OverlayHandler",
    "default_loss_transform",
    "learner_disagreement",
    "max_disagreement",
    "DISAGREEMENT_MEASURES",
]
