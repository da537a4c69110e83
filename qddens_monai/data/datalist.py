"""Medical Segmentation Decathlon style datalists: load, split and write them.

A datalist is what MONAI's datasets take: a plain list of dicts such as
``{"image": "/abs/img.nii.gz", "label": "/abs/lbl.nii.gz"}`` (2D fundus data adds ``"mask"``, the
field-of-view mask). Files on disk follow the MSD ``dataset.json`` format, which
:func:`monai.data.load_decathlon_datalist` reads; :func:`load_datalist` wraps it.

Config use (bundle)::

    "datalist": "$qddens_monai.data.load_datalist(@dataset_dir + '/dataset.json', 'training')",
    "split": "$qddens_monai.data.split_datalist(@datalist, 0.2, 0)",
    "train#dataset#data": "$@split[0]",
    "validate#dataset#data": "$@split[1]"
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist, partition_dataset

from ..files import atomic_write_text

__all__ = ["PATH_KEYS", "load_datalist", "split_datalist", "write_datalist"]

#: item keys whose values are file paths (resolved against the datalist's folder)
PATH_KEYS: tuple[str, ...] = ("image", "label", "mask")


def _resolve(value, base: str):
    if isinstance(value, (str, os.PathLike)):
        return os.path.normpath(os.path.join(base, value))  # join leaves absolute paths unchanged
    if isinstance(value, (list, tuple)):
        return [_resolve(v, base) for v in value]
    return value


def load_datalist(
    dataset_json: str, key: str = "training", base_dir: str | None = None, path_keys: Sequence[str] = PATH_KEYS
) -> list[dict]:
    """Read the ``key`` list of an MSD-style ``dataset.json`` with absolute paths.

    Wraps :func:`monai.data.load_decathlon_datalist` and fixes what it leaves open for this
    project: every ``path_keys`` value is made absolute even when the file does not exist (MONAI
    only joins non-image/label keys that exist, so a missing ``mask`` would stay relative and
    :func:`check_datalist` could not name it); an empty list is returned as ``[]``; bare image
    paths (``["imagesTs/a.nii.gz", ...]``) are accepted in every list, not only in ``"test"``.

    Args:
        dataset_json: the ``dataset.json`` file, or the folder that holds it.
        key: the list to read: ``"training"``, ``"validation"``, ``"test"`` ...
        base_dir: folder relative paths are relative to; default: the json file's folder.
        path_keys: item keys holding file paths.

    Raises:
        FileNotFoundError: no such json file.
        ValueError: the file is not valid JSON, or has no ``key`` list (the message names the file
            and the lists it has).
    """
    path = Path(dataset_json)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such datalist file.")
    try:
        content = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from None
    if key not in content:
        lists = sorted(k for k, v in content.items() if isinstance(v, list))
        raise ValueError(f"{path}: has no {key!r} section (its lists: {lists}).")
    if not content[key]:
        return []  # load_decathlon_datalist indexes [0] of the "test" list
    # absolute, so that a path MONAI has already joined is not joined to a relative base again
    base = os.path.abspath(base_dir if base_dir is not None else path.parent)
    if key == "test" or all(isinstance(i, dict) for i in content[key]):
        items = load_decathlon_datalist(path, is_segmentation=True, data_list_key=key, base_dir=base)
    else:  # MONAI takes bare image paths only in "test"; accept them in any list
        items = [dict(i) if isinstance(i, dict) else {"image": i} for i in content[key]]
    for item in items:
        for k in path_keys:
            if k in item:
                item[k] = _resolve(item[k], base)
    return items


def split_datalist(
    items: Sequence[dict], val_fraction: float = 0.2, seed: int = 0, num_folds: int | None = None, fold: int = 0
) -> tuple[list[dict], list[dict]]:
    """Split ``items`` into ``(train, val)`` deterministically for a ``seed``.

    - With ``num_folds``: cross-validation by :func:`monai.data.partition_dataset` (shuffled by
      ``seed``); fold ``fold`` is the validation part, the other folds the training part.
    - Otherwise: ``round(len(items) * val_fraction)`` random items go to validation, at least one
      (and never all) when there are two or more items and ``val_fraction > 0``.

    Both parts keep the original order of ``items``; the dicts are copies.
    """
    items = [copy.deepcopy(dict(i)) for i in items]
    n = len(items)
    if num_folds is not None:
        if num_folds < 2 or not 0 <= fold < num_folds:
            raise ValueError(f"need num_folds >= 2 and 0 <= fold < num_folds, got {num_folds=}, {fold=}.")
        if n < num_folds:
            raise ValueError(f"{n} items cannot be split into {num_folds} folds.")
        parts = partition_dataset(list(range(n)), num_partitions=num_folds, shuffle=True, seed=seed)
        val_idx = set(parts[fold])
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        n_val = int(round(n * val_fraction))
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        order = np.random.default_rng(seed).permutation(n)
        val_idx = set(order[:n_val].tolist())
    train = [it for i, it in enumerate(items) if i not in val_idx]
    val = [it for i, it in enumerate(items) if i in val_idx]
    return train, val


def _relative(value, base: Path):
    if isinstance(value, (str, os.PathLike)):
        rel = os.path.relpath(os.path.realpath(value), base)  # realpath on both sides: symlinked folders
        return "./" + Path(rel).as_posix() if not rel.startswith("..") else os.path.abspath(value)
    if isinstance(value, (list, tuple)):
        return [_relative(v, base) for v in value]
    return value


def write_datalist(
    dataset_json: str,
    training: Sequence[dict],
    test: Sequence[dict] = (),
    path_keys: Sequence[str] = PATH_KEYS,
    **metadata,
) -> str:
    """Write an MSD-style ``dataset.json`` (``metadata`` first, then ``numTraining``, ``numTest``,
    ``training``, ``test``); paths under the json's folder are stored relative (``./...``), so the
    data folder can be moved. Returns the path written."""
    path = Path(dataset_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = Path(os.path.realpath(path.parent))

    def rel(items):
        return [{k: (_relative(v, base) if k in path_keys else v) for k, v in it.items()} for it in items]

    content = dict(metadata)
    content.update(numTraining=len(training), numTest=len(test), training=rel(training), test=rel(test))
    atomic_write_text(path, json.dumps(content, indent=2) + "\n")  # a dataset.json that exists is complete
    return os.fspath(path)
