"""MR-like 2D slices with an organ of one or two tissue classes: a stand-in for real single-channel MRI tasks.

The fundus vessels of :mod:`qddens_monai.data.vessels` are thin, sparse structures in RGB; many MRI tasks
are the opposite: a compact organ of a few thousand pixels, single-channel, low contrast against
its surroundings, with other structures of similar intensity nearby, a coil bias field and Rician
noise. :func:`create_mr_slice_2d` draws such a slice:

- a body: a deformed ellipse of soft-tissue texture, air (about 0) outside;
- an organ: a deformed ellipse inside the body, brighter or darker than the tissue around it by a
  ``contrast`` that falls with ``difficulty``; with ``num_classes=3`` its central zone is a second
  tissue class (label 2) around the outer zone (label 1), as prostate zones or a tumour core;
- distractors: unlabeled blobs of organ-like intensity elsewhere in the body;
- partial-volume blur, a smooth multiplicative bias field and Rician noise.

:func:`write_demo_mr_2d` writes a set of them as 2D NIfTI (``(H, W)`` arrays, 0.8 x 0.8 mm pixels) in
the Decathlon layout of :mod:`qddens_monai.data.demo`, the binary and the 3-class set from the same
images when given the same seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
from scipy import ndimage

from .datalist import write_datalist

__all__ = ["create_mr_slice_2d", "write_demo_mr_2d"]

PathLike = Union[str, os.PathLike]


def _blob(
    shape: tuple[int, int],
    center: Sequence[float],
    radii: Sequence[float],
    rng: np.random.Generator,
    wobble: float = 0.15,
) -> np.ndarray:
    """Boolean mask of an ellipse whose radius varies with the angle by a few random harmonics."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    dy, dx = (yy - center[0]) / radii[0], (xx - center[1]) / radii[1]
    angle = np.arctan2(dy, dx)
    scale = np.ones_like(angle)
    for k in (2, 3, 5):
        scale += wobble / k * rng.uniform(-1, 1) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return np.hypot(dy, dx) <= scale


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return field / (np.abs(field).max() + 1e-12)


def create_mr_slice_2d(
    shape: Sequence[int] = (200, 232),
    num_classes: int = 2,
    difficulty: float = 0.5,
    random_state: Union[int, np.random.Generator, None] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One MR-like slice and its label.

    Args:
        shape: ``(H, W)`` of the slice.
        num_classes: 2 (background / organ) or 3 (background / outer zone / central zone).
        difficulty: 0 (clear organ, little noise) .. 1 (organ contrast about the noise level, strong bias).
        random_state: seed or generator.

    Returns:
        ``image`` float32 ``(H, W)`` in about [0, 1] (air near 0) and ``label`` uint8 ``(H, W)`` in
        ``0..num_classes-1``. The same seed draws the same image for 2 and 3 classes.
    """
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes}.")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}.")
    rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
    h, w = (int(s) for s in shape)
    d = float(difficulty)
    body = _blob(
        (h, w),
        (h / 2 + rng.uniform(-4, 4), w / 2 + rng.uniform(-4, 4)),
        (h * rng.uniform(0.40, 0.46), w * rng.uniform(0.40, 0.46)),
        rng,
        wobble=0.1,
    )
    tissue = 0.45 + 0.08 * _smooth_noise((h, w), 6.0, rng) + 0.05 * _smooth_noise((h, w), 2.0, rng)
    image = np.where(body, tissue, 0.0)
    # the organ, well inside the body
    radii = (h * rng.uniform(0.09, 0.15), w * rng.uniform(0.09, 0.15))
    center = (h / 2 + rng.uniform(-0.12, 0.12) * h, w / 2 + rng.uniform(-0.12, 0.12) * w)
    organ = _blob((h, w), center, radii, rng) & body
    core = (
        _blob(
            (h, w),
            (center[0] + rng.uniform(-0.15, 0.15) * radii[0], center[1] + rng.uniform(-0.15, 0.15) * radii[1]),
            (radii[0] * rng.uniform(0.45, 0.65), radii[1] * rng.uniform(0.45, 0.65)),
            rng,
        )
        & organ
    )
    contrast = (0.30 - 0.20 * d) * rng.choice([-1.0, 1.0])
    image = np.where(organ, image + contrast, image)
    image = np.where(core, image + 0.6 * abs(contrast) * rng.choice([-1.0, 1.0]), image)
    # distractors: organ-like intensity, no label
    for _ in range(int(rng.integers(2, 5))):
        c = (rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w)
        blob = _blob((h, w), c, (rng.uniform(5, 14), rng.uniform(5, 14)), rng)
        blob = blob & body & ~ndimage.binary_dilation(organ, iterations=3)
        image = np.where(blob, image + contrast * rng.uniform(0.6, 1.0), image)
    image = ndimage.gaussian_filter(image, 0.8)  # partial volume
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    phase = 2 * np.pi * (rng.uniform(0.3, 0.8) * yy + rng.uniform(0.3, 0.8) * xx)
    bias = 1.0 + (0.1 + 0.4 * d) * np.cos(phase + rng.uniform(0, 6.3))
    sigma = 0.03 + 0.09 * d
    image = np.hypot(image * bias + rng.normal(0, sigma, (h, w)), rng.normal(0, sigma, (h, w)))  # Rician
    label = organ.astype(np.uint8)
    if num_classes == 3:
        label[core] = 2
    return image.astype(np.float32), label


def write_demo_mr_2d(
    out_dir: PathLike,
    num_train: int = 24,
    num_test: int = 12,
    shape: Sequence[int] = (200, 232),
    num_classes: int = 2,
    difficulty: float = 0.5,
    seed: int = 0,
    spacing: Sequence[float] = (0.8, 0.8),
) -> str:
    """Write a set of :func:`create_mr_slice_2d` slices (2D NIfTI, Decathlon layout); return its dataset.json.

    Args:
        out_dir: target folder (created).
        num_train, num_test: training and (labeled) test slices.
        shape: ``(H, W)`` of every slice.
        num_classes: 2 or 3 (see :func:`create_mr_slice_2d`).
        difficulty: see :func:`create_mr_slice_2d`.
        seed: random seed; slice ``i`` of a split depends only on the seed, the split and ``i``.
        spacing: pixel size (mm), written in the affine.
    """
    import nibabel as nib

    out = Path(out_dir)
    affine = np.diag([float(spacing[0]), float(spacing[1]), 3.0, 1.0])
    lists: dict[str, list[dict]] = {"training": [], "test": []}
    for stream, (split, count) in enumerate((("training", num_train), ("test", num_test))):
        suffix = "Tr" if split == "training" else "Ts"
        for i in range(count):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), stream, i]))
            image, label = create_mr_slice_2d(shape, num_classes, difficulty, rng)
            entry = {}
            for key, array in (("image", image), ("label", label)):
                folder = out / f"{key}s{suffix}"
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"mr_{split}_{i:03d}.nii.gz"
                nib.save(nib.Nifti1Image(array, affine), os.fspath(path))
                entry[key] = os.fspath(path)
            lists[split].append(entry)
    labels = (
        {"0": "background", "1": "organ"}
        if num_classes == 2
        else {"0": "background", "1": "outer zone", "2": "central zone"}
    )
    return write_datalist(
        os.fspath(out / "dataset.json"),
        lists["training"],
        lists["test"],
        name="qddens-monai MR-like slices (generated)",
        description="Single-channel MR-like 2D slices with an organ label, generated by qddens_monai.data.phantoms; "
        "test cases are labeled.",
        reference="qddens_monai.data.phantoms.write_demo_mr_2d",
        license="CC0 (generated data)",
        tensorImageSize="2D",
        modality={"0": "MR"},
        labels=labels,
        generator={
            "spatial_dims": 2,
            "seed": seed,
            "shape": [int(s) for s in shape],
            "num_classes": num_classes,
            "difficulty": difficulty,
        },
    )
