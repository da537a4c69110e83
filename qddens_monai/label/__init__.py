"""MONAI Label integration: suggestive annotation from the ensemble's member disagreement (DESIGN §1.5).

``selection``, ``scoring``, ``bundle`` and ``studies`` need only MONAI; ``app``, ``server`` and ``pacs``
need the ``label`` extra (MONAI Label, see the README) and are imported on demand.
"""

from qddens_monai.label.bundle import bundle_dir, bundle_network, prepare_label_bundle
from qddens_monai.label.compat import import_monailabel, monailabel_available
from qddens_monai.label.scoring import DisagreementMapd, EnsembleScorer, deepest_encoder_level
from qddens_monai.label.selection import (
    DISAGREEMENT_KINDS,
    cosine_similarity_matrix,
    image_uncertainty,
    representativeness,
    suggest,
    voxel_disagreement,
)
from qddens_monai.label.studies import convert_dicom_studies

__all__ = [
    "bundle_dir",
    "bundle_network",
    "prepare_label_bundle",
    "import_monailabel",
    "monailabel_available",
    "DisagreementMapd",
    "EnsembleScorer",
    "deepest_encoder_level",
    "DISAGREEMENT_KINDS",
    "cosine_similarity_matrix",
    "image_uncertainty",
    "representativeness",
    "suggest",
    "voxel_disagreement",
    "convert_dicom_studies",
]
