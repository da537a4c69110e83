"""Evaluation of ensembles: every learner's probabilities through any inferer, and per-member metrics."""

from .._lazy import lazy_exports

# Imported on first use (qddens_monai._lazy): importing one component does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".handler": ["EnsembleMetrics"],
        ".inferer": [
            "EnsembleMemberd",
            "LearnerProbabilities",
            "learner_names",
            "member_names",
            "member_probabilities",
            "merge_learners",
            "split_learners",
            "unwrap_network",
        ],
        ".metrics": ["ALL_METRICS", "disagreement_matrices", "image_metrics", "segmentation_metrics", "summarize"],
    },
)
