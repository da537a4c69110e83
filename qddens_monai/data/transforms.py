"""Thin builders of the MONAI transform chains the bundle's configs share.

They return lists so that configs can concatenate them::

    "transforms": "$[monai.transforms.LoadImaged(keys=['image', 'label', 'mask'], image_only=True, allow_missing_keys=True),
                     monai.transforms.EnsureChannelFirstd(keys=['image', 'label', 'mask'], allow_missing_keys=True)]
                   + qddens_monai.data.label_transform('label', num_classes=@num_classes)
                   + qddens_monai.data.label_transform('mask', num_classes=2, allow_missing_keys=True)
                   + qddens_monai.data.intensity_normalization(@modality)"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

from monai.transforms import (
    AsDiscreted,
    CastToTyped,
    MapTransform,
    NormalizeIntensityd,
    ScaleIntensityd,
    ScaleIntensityRanged,
)

__all__ = ["MODALITIES", "MODALITY_ALIASES", "intensity_normalization", "label_transform"]

#: Intensity normalizations: CT window, MR z-score, 8-bit RGB, RGB min-max per channel, none.
MODALITIES = ("ct", "mr", "rgb", "rgb_minmax", "none")
#: Other accepted names (case-insensitive), e.g. the ``modality`` values of MSD ``dataset.json`` files.
MODALITY_ALIASES = {"mri": "mr", "t1": "mr", "t2": "mr", "flair": "mr", "fundus": "rgb"}

KeysType = Union[str, Sequence[str]]


def intensity_normalization(
    modality: str,
    keys: KeysType = ("image",),
    ct_window: Sequence[float] = (-175.0, 250.0),
    allow_missing_keys: bool = False,
) -> list[MapTransform]:
    """The intensity normalization of ``modality`` as a list of MONAI dictionary transforms.

    Args:
        modality: one of :data:`MODALITIES` (or an alias in :data:`MODALITY_ALIASES`):

            - ``"ct"``: :class:`~monai.transforms.ScaleIntensityRanged` from the HU window
              ``ct_window`` to [0, 1], clipped (-175..250 is the soft-tissue window of MSD tasks);
            - ``"mr"``: :class:`~monai.transforms.NormalizeIntensityd`, z-score over the non-zero
              voxels, per channel (MR intensities have no absolute scale);
            - ``"rgb"``: 8-bit colour, the fixed range 0..255 scaled to [0, 1]
              (:class:`~monai.transforms.ScaleIntensityRanged`): every image keeps its own brightness
              and contrast, which carry information in fundus photographs; the shipped weights use it;
            - ``"rgb_minmax"``: :class:`~monai.transforms.ScaleIntensityd` min-max to [0, 1] per
              channel and image (evens out exposure differences between cameras);
            - ``"none"``: nothing.
        keys: the image keys.
        ct_window: the CT window ``(low, high)`` in Hounsfield units.
        allow_missing_keys: skip keys a sample does not have.
    """
    name = str(modality).lower()
    name = MODALITY_ALIASES.get(name, name)
    kw = {"allow_missing_keys": allow_missing_keys}
    if name == "ct":
        low, high = (float(v) for v in ct_window)
        return [ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True, **kw)]
    if name == "mr":
        return [NormalizeIntensityd(keys, nonzero=True, channel_wise=True, **kw)]
    if name == "rgb":
        return [ScaleIntensityRanged(keys, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True, **kw)]
    if name == "rgb_minmax":
        return [ScaleIntensityd(keys, minv=0.0, maxv=1.0, channel_wise=True, **kw)]
    if name == "none":
        return []
    raise ValueError(f"Unknown modality {modality!r}; choose one of {list(MODALITIES)} (or {sorted(MODALITY_ALIASES)}).")


def label_transform(
    keys: KeysType = ("label",), num_classes: int = 2, allow_missing_keys: bool = False
) -> list[MapTransform]:
    """Label maps to class indices: binary labels and masks stored as 0/1 or 0/255 (PNG) become 0/1.

    Args:
        keys: the label (or FOV mask) keys.
        num_classes: classes including the background. 2: a binary map, thresholded at 0.5 by
            :class:`~monai.transforms.AsDiscreted`, so 0/255 fundus PNGs and 0/1 NIfTI labels both give
            0/1. More: the values are class indices already and are only cast to float32.
        allow_missing_keys: skip keys a sample does not have (e.g. an optional FOV mask).
    """
    if num_classes == 2:
        return [AsDiscreted(keys, threshold=0.5, allow_missing_keys=allow_missing_keys)]
    return [CastToTyped(keys, dtype="float32", allow_missing_keys=allow_missing_keys)]
