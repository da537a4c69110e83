"""Thin builders of the MONAI transform chains the bundle's configs share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

from monai.transforms import AsDiscreted, CastToTyped, MapTransform, NormalizeIntensityd, ScaleIntensityRanged

__all__ = ["MODALITIES", "intensity_normalization", "label_transform"]

#: Intensity normalizations by modality: CT window, MR z-score, 8-bit RGB, none.
MODALITIES = ("ct", "mr", "rgb", "none")


def intensity_normalization(
    modality: str,
    keys: Union[str, Sequence[str]] = ("image",),
    ct_window: Sequence[float] = (-175.0, 250.0),
) -> list[MapTransform]:
    """The intensity normalization of ``modality`` as a list of MONAI dictionary transforms.

    Args:
        modality: ``"ct"`` (clip to ``ct_window`` HU and scale to [0, 1]), ``"mr"`` (z-score over
            the non-zero voxels, per channel), ``"rgb"`` (8-bit colour scaled to [0, 1]) or ``"none"``.
        keys: the image keys.
        ct_window: the CT window ``(low, high)`` in Hounsfield units.
    """
    modality = modality.lower()
    if modality == "ct":
        low, high = ct_window
        return [ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)]
    if modality == "mr":
        return [NormalizeIntensityd(keys, nonzero=True, channel_wise=True)]
    if modality == "rgb":
        # A fixed 0..255 range, not per-image min-max, so every image keeps its own brightness.
        return [ScaleIntensityRanged(keys, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True)]
    if modality == "none":
        return []
    raise ValueError(f"Unknown modality {modality!r}; choose one of {list(MODALITIES)}.")


def label_transform(
    keys: Union[str, Sequence[str]] = ("label",), num_classes: int = 2, allow_missing_keys: bool = False
) -> list[MapTransform]:
    """Label maps to class indices: binary masks stored as 0/1 or 0/255 (PNG, GIF) become 0/1.

    Args:
        keys: the label (or mask) keys.
        num_classes: classes including the background; 2 means a binary mask whose non-zero
            voxels are foreground, more means the values are already class indices.
        allow_missing_keys: skip keys a sample does not have (e.g. an optional FOV mask).
    """
    if num_classes == 2:
        return [AsDiscreted(keys, threshold=0.5, allow_missing_keys=allow_missing_keys)]
    return [CastToTyped(keys, dtype="float32", allow_missing_keys=allow_missing_keys)]
