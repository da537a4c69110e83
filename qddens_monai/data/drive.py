"""Convert the published DRIVE layout into PNGs and a Decathlon-style ``dataset.json``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

__all__ = ["prepare_drive"]

PathLike = Union[str, os.PathLike]


def _find(folder: Path, pattern: str, number: str) -> Optional[Path]:
    for f in sorted(folder.glob(pattern.format(n=number))):
        return f
    return None


def prepare_drive(drive_root: PathLike, out_dir: Optional[PathLike] = None) -> str:
    """Convert DRIVE (``training/`` and ``test/`` with ``images``, ``1st_manual``, ``mask``) for the bundle.

    Images (TIFF) become RGB PNGs, manual annotations and FOV masks (GIF) become 0/255 PNGs, in
    ``out_dir`` (default: ``drive_root/../DRIVE_prepared``) under ``imagesTr``, ``labelsTr``,
    ``masksTr`` and ``imagesTs``, ``labelsTs``, ``masksTs``. The public test set without
    ``1st_manual`` gives test entries without labels. Returns the path of the ``dataset.json``.

    Raises:
        FileNotFoundError: naming the missing folder or file of the DRIVE layout.
    """
    root = Path(drive_root)
    if (root / "DRIVE").is_dir() and not (root / "training").is_dir():
        root = root / "DRIVE"
    out = Path(out_dir) if out_dir is not None else root.parent / "DRIVE_prepared"
    sections: dict[str, list[dict]] = {"training": [], "test": []}
    for split, section, suffix in (("training", "training", "Tr"), ("test", "test", "Ts")):
        images = root / split / "images"
        if not images.is_dir():
            raise FileNotFoundError(f"{images}: missing; expected the DRIVE layout {split}/images, {split}/mask, {split}/1st_manual.")
        files = sorted(f for f in images.iterdir() if f.suffix.lower() in (".tif", ".tiff"))
        if not files:
            raise FileNotFoundError(f"{images}: holds no .tif image.")
        for folder in ("images", "labels", "masks"):
            (out / f"{folder}{suffix}").mkdir(parents=True, exist_ok=True)
        for f in files:
            number = re.match(r"(\d+)", f.name)
            if number is None:
                raise FileNotFoundError(f"{f}: not a DRIVE image name (NN_{split}.tif).")
            n = number.group(1)
            mask = _find(root / split / "mask", "{n}_*mask.gif", n)
            if mask is None:
                raise FileNotFoundError(f"{root / split / 'mask'}: no FOV mask {n}_{split}_mask.gif for {f.name}.")
            manual = _find(root / split / "1st_manual", "{n}_manual1.gif", n)
            if manual is None and split == "training":
                raise FileNotFoundError(f"{root / split / '1st_manual'}: no annotation {n}_manual1.gif for {f.name}.")
            name = f"drive_{n}.png"
            Image.open(f).convert("RGB").save(out / f"images{suffix}" / name)
            Image.fromarray((np.asarray(Image.open(mask).convert("L")) > 0).astype(np.uint8) * 255).save(
                out / f"masks{suffix}" / name
            )
            entry = {"image": f"./images{suffix}/{name}", "mask": f"./masks{suffix}/{name}"}
            if manual is not None:
                Image.fromarray((np.asarray(Image.open(manual).convert("L")) > 0).astype(np.uint8) * 255).save(
                    out / f"labels{suffix}" / name
                )
                entry["label"] = f"./labels{suffix}/{name}"
            sections[section].append(entry)
    meta = {
        "name": "DRIVE",
        "description": "Digital Retinal Images for Vessel Extraction, converted by qddens-monai prepare-drive",
        "reference": "Staal et al., Ridge-based vessel segmentation in color images of the retina, IEEE TMI 2004",
        "tensorImageSize": "2D",
        "modality": {"0": "R", "1": "G", "2": "B"},
        "labels": {"0": "background", "1": "vessel"},
        "numTraining": len(sections["training"]),
        "numTest": len(sections["test"]),
    }
    path = out / "dataset.json"
    path.write_text(json.dumps({**meta, **sections}, indent=2))
    return str(path)
