from qddens_monai.networks.cenet import CENet, CENetDecoderBlock, CENetResBlock, DACBlock, RMPBlock, match_spatial_size
from qddens_monai.networks.features import (
    BOTTLENECK,
    DECODER,
    ENCODER,
    FEATURE_ROLES,
    STEM,
    UNSPECIFIED,
    FeatureExtractor,
    FeatureLevel,
    check_feature_compatibility,
    feature_levels,
    feature_module_names,
    feature_shapes,
    register_feature_levels,
)
from qddens_monai.networks.fusion import FeatureFusionBlock, resize_to
from qddens_monai.networks.staged import StagedBackbone, StageView, as_staged, is_staged, register_staged_adapter
from qddens_monai.networks.staged_monai import StagedBasicUNet, StagedUNet
from qddens_monai.networks.distillation import DistillationNetwork, load_checkpoint
from qddens_monai.networks.qmenet import BACKBONES, QUANTIZATION_PRESETS, QMENet, quantization_preset

__all__ = [
    "CENet",
    "CENetResBlock",
    "CENetDecoderBlock",
    "DACBlock",
    "RMPBlock",
    "match_spatial_size",
    "STEM",
    "ENCODER",
    "BOTTLENECK",
    "DECODER",
    "UNSPECIFIED",
    "FEATURE_ROLES",
    "FeatureLevel",
    "FeatureExtractor",
    "feature_levels",
    "feature_module_names",
    "feature_shapes",
    "check_feature_compatibility",
    "register_feature_levels",
    "StagedBackbone",
    "StageView",
    "StagedUNet",
    "StagedBasicUNet",
    "as_staged",
    "is_staged",
    "register_staged_adapter",
    "FeatureFusionBlock",
    "resize_to",
    "QMENet",
    "BACKBONES",
    "QUANTIZATION_PRESETS",
    "quantization_preset",
    "DistillationNetwork",
    "load_checkpoint",
]
