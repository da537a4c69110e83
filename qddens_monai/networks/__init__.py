from .._lazy import lazy_exports

# Imported on first use (qddens_monai._lazy): importing one component does not import the others.
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".cenet": ["CENet", "CENetDecoderBlock", "CENetResBlock", "DACBlock", "RMPBlock", "match_spatial_size"],
        ".features": [
            "BOTTLENECK",
            "DECODER",
            "ENCODER",
            "FEATURE_ROLES",
            "STEM",
            "UNSPECIFIED",
            "FeatureExtractor",
            "FeatureLevel",
            "check_feature_compatibility",
            "feature_levels",
            "feature_module_names",
            "feature_shapes",
            "register_feature_levels",
        ],
        ".fusion": ["FeatureFusionBlock", "resize_to"],
        ".staged": ["StagedBackbone", "StageView", "as_staged", "is_staged", "register_staged_adapter"],
        ".staged_monai": ["StagedBasicUNet", "StagedUNet"],
        ".distillation": ["DistillationNetwork", "load_checkpoint"],
        ".qmenet": ["BACKBONES", "QUANTIZATION_PRESETS", "QMENet", "quantization_preset"],
    },
)
