"""MONAI Label integration: suggestive annotation from the ensemble's member disagreement (DESIGN §1.5).

``selection``, ``scoring``, ``bundle`` and ``studies`` need only MONAI; ``app``, ``server`` and ``pacs``
need the ``label`` extra (MONAI Label, see the README) and are imported on demand.
"""

from .._lazy import lazy_exports

# Imported on first use (qddens_monai._lazy): importing one component does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".bundle": ["bundle_dir", "bundle_network", "prepare_label_bundle"],
        ".compat": ["import_monailabel", "monailabel_available"],
        ".scoring": ["DisagreementMapd", "EnsembleScorer", "deepest_encoder_level"],
        ".selection": [
            "DISAGREEMENT_KINDS",
            "cosine_similarity_matrix",
            "image_uncertainty",
            "representativeness",
            "suggest",
            "voxel_disagreement",
        ],
        ".studies": ["convert_dicom_studies"],
    },
)
