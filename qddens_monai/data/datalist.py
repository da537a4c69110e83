"""Datalists: Medical Segmentation Decathlon ``dataset.json`` files and deterministic splits."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
from monai.data import load_decathlon_datalist

__all__ = ["load_datalist", "split_datalist"]

PathLike = Union[str, os.PathLike]


def load_datalist(dataset_json: PathLike, key: str = "training", base_dir: Optional[PathLike] = None) -> list[dict]:
    """The ``key`` section of a Decathlon-style ``dataset.json``, with paths made absolute.

    Wraps :func:`monai.data.load_decathlon_datalist`; relative paths are resolved against
    ``base_dir`` (default: the folder of ``dataset_json``).

    Raises:
        ValueError: the file is not valid JSON or has no ``key`` section (the message names the file).
    """
    path = Path(dataset_json)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such datalist file.")
    try:
        sections = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from None
    if key not in sections:
        raise ValueError(f"{path}: has no {key!r} section (it has {sorted(sections)}).")
    if not sections[key]:
        return []
    return load_decathlon_datalist(str(path), data_list_key=key, base_dir=str(base_dir or path.parent))


def split_datalist(
    items: Sequence[dict], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Shuffle ``items`` with ``seed`` and split off ``val_fraction`` of them for validation.

    At least one item goes to validation (and one stays for training) when there are two or more.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    items = list(items)
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = int(round(val_fraction * len(items)))
    if len(items) >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), len(items) - 1)
    val = [items[i] for i in sorted(order[:n_val])]
    train = [items[i] for i in sorted(order[n_val:])]
    return train, val
