from qddens_monai.losses.distillation import EnsembleDistillationLoss
from qddens_monai.losses.diversity import DeepDiversityLoss
from qddens_monai.losses.ensemble import EnsembleLoss

__all__ = ["DeepDiversityLoss", "EnsembleLoss", "EnsembleDistillationLoss"]
