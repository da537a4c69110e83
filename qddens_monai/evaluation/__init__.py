"""Evaluation of ensembles: every learner's probabilities through any inferer, and per-member metrics."""

from qddens_monai.evaluation.handler import EnsembleMetrics
from qddens_monai.evaluation.inferer import (
    EnsembleMemberd,
    LearnerProbabilities,
    learner_names,
    member_names,
    member_probabilities,
    merge_learners,
    split_learners,
    unwrap_network,
)
from qddens_monai.evaluation.metrics import (
    ALL_METRICS,
    disagreement_matrices,
    image_metrics,
    segmentation_metrics,
    summarize,
)

__all__ = [
    "ALL_METRICS",
    "EnsembleMemberd",
    "EnsembleMetrics",
    "LearnerProbabilities",
    "disagreement_matrices",
    "image_metrics",
    "learner_names",
    "member_names",
    "member_probabilities",
    "merge_learners",
    "segmentation_metrics",
    "split_learners",
    "summarize",
    "unwrap_network",
]
