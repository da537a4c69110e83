"""The ensemble contract in one place: the training-mode output, the learners' stacking order and the
disagreement between learners. Networks produce it, losses, handlers, evaluation and active learning read it."""

from qddens_monai.ensemble.disagreement import (
    DISAGREEMENT_MEASURES,
    PAIR_MEASURES,
    learner_disagreement,
    learner_pairs,
    max_disagreement,
)
from qddens_monai.ensemble.learners import learner_names, merge_learners, split_learners, unwrap_network
from qddens_monai.ensemble.output import EnsembleOutput, is_ensemble_output

__all__ = [
    "EnsembleOutput",
    "is_ensemble_output",
    "learner_names",
    "merge_learners",
    "split_learners",
    "unwrap_network",
    "DISAGREEMENT_MEASURES",
    "PAIR_MEASURES",
    "learner_disagreement",
    "learner_pairs",
    "max_disagreement",
]
