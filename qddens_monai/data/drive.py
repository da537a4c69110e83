"""Convert the published DRIVE layout into PNGs and a Decathlon-style ``dataset.json``.

DRIVE (Digital Retinal Images for Vessel Extraction; 20 training + 20 test 584 x 565 RGB images)
is published as::

    DRIVE/training/images/21_training.tif      DRIVE/test/images/01_test.tif
    DRIVE/training/1st_manual/21_manual1.gif   DRIVE/test/1st_manual/01_manual1.gif   (may be absent)
    DRIVE/training/mask/21_training_mask.gif   DRIVE/test/mask/01_test_mask.gif

MONAI's ``LoadImage`` cannot read these annotations: no MONAI reader takes ``.gif`` (``PILReader``
claims png/jpg/jpeg/bmp only; ITK has no GIF reader), and a palette GIF read through PIL gives
palette indices, not 0/255. So everything is converted to PNG: images to RGB, annotations and FOV
masks to 8-bit 0/255 (the convention of the demo data too), in the layout the bundle expects::

    OUT/dataset.json
    OUT/imagesTr/drive_21.png  OUT/labelsTr/drive_21.png  OUT/masksTr/drive_21.png
    OUT/imagesTs/drive_01.png  [OUT/labelsTs/drive_01.png] OUT/masksTs/drive_01.png
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .datalist import write_datalist

__all__ = ["prepare_drive", "DRIVE_SPLITS"]

PathLike = Union[str, os.PathLike]

#: the DRIVE splits and the dataset.json section each becomes
DRIVE_SPLITS = {"training": "training", "test": "test"}
_IMAGE = re.compile(r"^(\d+)_(training|test)\.(tif|tiff|png|jpg|jpeg|bmp)$", re.IGNORECASE)
_ANNOTATION_EXT = (".gif", ".png", ".tif", ".tiff")  # some mirrors re-encode the GIFs


def _find(folder: Path, stem: str) -> Optional[Path]:
    """``folder/stem.<ext>`` for the first annotation extension that exists (case-insensitive)."""
    if not folder.is_dir():
        return None
    for f in sorted(folder.iterdir()):
        if f.stem.lower() == stem.lower() and f.suffix.lower() in _ANNOTATION_EXT:
            return f
    return None


def _binary_png(src: Path, dst: Path) -> tuple[int, int]:
    """Save ``src`` (1-bit, palette or grey GIF/PNG/TIFF) as an 8-bit 0/255 PNG; return its (width, height)."""
    from PIL import Image

    with Image.open(src) as img:
        grey = np.asarray(img.convert("L"))  # palette -> grey levels, not palette indices
    Image.fromarray(((grey >= 128) * 255).astype(np.uint8)).save(dst)
    return grey.shape[1], grey.shape[0]


def prepare_drive(drive_root: PathLike, out_dir: Optional[PathLike] = None) -> str:
    """Convert DRIVE (``training/`` and ``test/`` with ``images``, ``1st_manual``, ``mask``) for the bundle.

    The whole layout is checked before anything is written. Test images without ``1st_manual``
    (the public test set) give test entries without ``label``.

    Args:
        drive_root: the ``DRIVE`` folder, or a folder holding ``DRIVE/``.
        out_dir: output folder; default ``DRIVE_prepared`` beside the ``DRIVE`` folder.

    Returns:
        the path of ``out_dir/dataset.json``.

    Raises:
        FileNotFoundError: listing every missing folder or file of the layout.
    """
    from PIL import Image

    root = Path(drive_root)
    if (root / "DRIVE").is_dir() and not (root / "training").is_dir():
        root = root / "DRIVE"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; expected the DRIVE folder with training/ and test/.")
    expected = (
        "expected DRIVE/{training,test}/images/NN_{training,test}.tif, .../mask/NN_{split}_mask.gif, "
        ".../1st_manual/NN_manual1.gif"
    )

    # pass 1: find every file, and every problem
    missing: list[str] = []
    cases: dict[str, list[tuple[str, Path, Optional[Path], Optional[Path]]]] = {}
    for split in DRIVE_SPLITS:
        images_dir, mask_dir, manual_dir = (root / split / sub for sub in ("images", "mask", "1st_manual"))
        for folder in (images_dir, mask_dir) + ((manual_dir,) if split == "training" else ()):
            if not folder.is_dir():
                missing.append(f"{folder}: missing folder")
        if not images_dir.is_dir():
            continue
        images = sorted((m.group(1), f) for f in images_dir.iterdir() if (m := _IMAGE.match(f.name)))
        if not images:
            missing.append(f"{images_dir}: holds no NN_{split}.tif image")
        cases[split] = []
        for number, image in images:
            mask = _find(mask_dir, f"{number}_{split}_mask")
            if mask is None and mask_dir.is_dir():
                missing.append(f"{mask_dir / f'{number}_{split}_mask.gif'}: missing (FOV mask of {image.name})")
            manual = _find(manual_dir, f"{number}_manual1")
            if manual is None and split == "training" and manual_dir.is_dir():
                missing.append(f"{manual_dir / f'{number}_manual1.gif'}: missing (annotation of {image.name})")
            cases[split].append((number, image, manual, mask))
    if missing:
        raise FileNotFoundError(f"{root} is not a complete DRIVE layout ({expected}):\n  " + "\n  ".join(missing))

    # pass 2: convert
    out = Path(out_dir) if out_dir is not None else root.parent / "DRIVE_prepared"
    sections: dict[str, list[dict]] = {"training": [], "test": []}
    mismatched: list[str] = []
    for split, section in DRIVE_SPLITS.items():
        suffix = "Tr" if section == "training" else "Ts"
        for folder in ("images", "labels", "masks"):
            (out / f"{folder}{suffix}").mkdir(parents=True, exist_ok=True)
        for number, image, manual, mask in cases[split]:
            name = f"drive_{number}.png"
            entry = {
                "image": os.fspath(out / f"images{suffix}" / name),
                "mask": os.fspath(out / f"masks{suffix}" / name),
            }
            with Image.open(image) as img:
                img.convert("RGB").save(entry["image"])
                size = img.size
            sizes = {image.name: size, mask.name: _binary_png(mask, Path(entry["mask"]))}  # type: ignore[union-attr]
            if manual is not None:
                entry["label"] = os.fspath(out / f"labels{suffix}" / name)
                sizes[manual.name] = _binary_png(manual, Path(entry["label"]))
            if len(set(sizes.values())) > 1:
                mismatched.append(f"{image.parent.parent}: sizes differ {sizes}")
            sections[section].append(entry)
    if mismatched:
        raise ValueError("DRIVE images and annotations of different sizes:\n  " + "\n  ".join(mismatched))
    unlabeled = sum("label" not in e for e in sections["test"])
    return write_datalist(
        os.fspath(out / "dataset.json"),
        sections["training"],
        sections["test"],
        name="DRIVE",
        description="Digital Retinal Images for Vessel Extraction, converted by qddens-monai prepare-drive: "
        "RGB PNG images, 0/255 PNG labels (1st_manual) and FOV masks"
        + (f"; {unlabeled} test images without labels" if unlabeled else ""),
        reference="Staal et al., Ridge-based vessel segmentation in color images of the retina, IEEE TMI 2004",
        licence="see https://drive.grand-challenge.org (research use)",
        source=os.fspath(root.resolve()),
        tensorImageSize="2D",
        modality={"0": "R", "1": "G", "2": "B"},
        labels={"0": "background", "1": "vessel"},
    )
