"""The ensemble contract in one place: the training-mode output, the learners' stacking order and the
disagreement between learners. Networks produce it, losses, handlers, evaluation and active learning read it."""

from .._lazy import lazy_exports

# Imported on first use (qddens_monai._lazy): importing one component does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".disagreement": [
            "DISAGREEMENT_MEASURES",
            "PAIR_MEASURES",
            "learner_disagreement",
            "learner_pairs",
            "max_disagreement",
        ],
        ".learners": ["activate", "learner_names", "merge_learners", "split_learners", "unwrap_network"],
        ".output": ["EnsembleOutput", "is_ensemble_output"],
    },
)
