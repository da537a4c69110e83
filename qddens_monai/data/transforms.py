"""The two data-dependent steps of the bundle's preprocessing, as named MONAI dictionary transforms.

- :class:`ClassIndicesd`: label maps to class indices (0/255 PNG and 0/1 NIfTI binary labels both give 0/1);
- :class:`NormalizeModalityd`: the intensity normalization of the image's modality (CT window, MR z-score, 8-bit RGB).

The configs list them by ``_target_`` beside MONAI's own transforms, so a chain reads top to bottom::

    {"_target_": "LoadImaged", "keys": ["image", "label"], "image_only": true},
    {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"]},
    {"_target_": "qddens_monai.data.ClassIndicesd", "keys": "label", "num_classes": "@num_classes"},
    {"_target_": "qddens_monai.data.NormalizeModalityd", "keys": "image", "modality": "@modality"}

Each runs the MONAI transform(s) that :func:`label_transform` / :func:`intensity_normalization` return (the
same objects, in the same order), so the two forms give identical data; the functions stay for Python use.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Union

from monai.transforms import (
    AsDiscreted,
    CastToTyped,
    MapTransform,
    NormalizeIntensityd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Transform,
)

__all__ = [
    "MODALITIES",
    "MODALITY_ALIASES",
    "intensity_normalization",
    "modality_name",
    "label_transform",
    "ClassIndicesd",
    "NormalizeModalityd",
]

#: Intensity normalizations: CT window, MR z-score, 8-bit RGB, RGB min-max per channel, none.
MODALITIES = ("ct", "mr", "rgb", "rgb_minmax", "none")
#: Other accepted names (case-insensitive), e.g. the ``modality`` values of MSD ``dataset.json`` files.
MODALITY_ALIASES = {"mri": "mr", "t1": "mr", "t2": "mr", "flair": "mr", "fundus": "rgb"}

KeysType = Union[str, Sequence[str]]


def modality_name(modality: str) -> Union[str, None]:
    """The :data:`MODALITIES` entry ``modality`` names (case-insensitive, :data:`MODALITY_ALIASES` resolved), or
    ``None``."""
    name = str(modality).lower()
    name = MODALITY_ALIASES.get(name, name)
    return name if name in MODALITIES else None


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
    name = modality_name(modality)
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
    raise ValueError(
        f"Unknown modality {modality!r}; choose one of {list(MODALITIES)} (or {sorted(MODALITY_ALIASES)})."
    )


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


class _Steps(Transform):
    """A named dictionary transform made of a fixed list of MONAI dictionary transforms, applied in order."""

    def __init__(self, steps: list[MapTransform]) -> None:
        self.steps = steps

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for step in self.steps:
            d = step(d)
        return d


class ClassIndicesd(_Steps):
    """Label maps to class indices, a bundle preprocessing step (:func:`label_transform` as one transform).

    ``num_classes`` 2: thresholded at 0.5 (:class:`~monai.transforms.AsDiscreted`), so 0/255 PNG labels and
    0/1 NIfTI labels both give 0/1; more classes: the values are class indices already, cast to float32.

    Args:
        keys: the label (or FOV mask) keys.
        num_classes: classes including the background.
        allow_missing_keys: skip keys a sample does not have (e.g. an optional FOV mask).
    """

    def __init__(self, keys: KeysType = ("label",), num_classes: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(label_transform(keys, num_classes=num_classes, allow_missing_keys=allow_missing_keys))


class NormalizeModalityd(_Steps):
    """The intensity normalization of ``modality``, a bundle preprocessing step (:func:`intensity_normalization`).

    Args:
        keys: the image keys.
        modality: one of :data:`MODALITIES` or an alias (:data:`MODALITY_ALIASES`); unknown ones raise a ``ValueError``.
        ct_window: the CT window ``(low, high)`` in Hounsfield units.
        allow_missing_keys: skip keys a sample does not have.
    """

    def __init__(
        self,
        keys: KeysType = ("image",),
        modality: str = "none",
        ct_window: Sequence[float] = (-175.0, 250.0),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(intensity_normalization(modality, keys, ct_window, allow_missing_keys))
