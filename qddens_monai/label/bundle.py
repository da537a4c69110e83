"""A MONAI Label-ready copy of the bundle.

MONAI Label's bundle tasks read ``configs/inference.json`` (and ``configs/train.json``) alone, with no
config merging, take the dimension from ``metadata.json``'s input ``spatial_shape``, and skip a bundle
without ``models/model.pt``. :func:`prepare_label_bundle` therefore writes, into a folder outside
the repository, a copy of the bundle whose ``inference.json`` / ``train.json`` already contain the
3D switch (``3d.json``) and any overrides, whose metadata matches, and which has a ``model.pt`` for
that network (the shipped one in 2D; freshly initialised weights in 3D, where no weights ship).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from monai.bundle import ConfigParser

from ..config import bundle_dir, load_bundle_configs
from ..data.plan import UNTRAINED, planned
from ..files import atomic_write

__all__ = ["bundle_dir", "prepare_label_bundle", "bundle_network"]

PathLike = Union[str, os.PathLike]


def _merged(configs: PathLike, names: list[str], overrides: Mapping[str, Any]) -> dict:
    parser = ConfigParser()
    parser.read_config(load_bundle_configs([Path(configs) / n for n in names]))
    for key, value in overrides.items():
        parser[key] = value
    return parser.config  # type: ignore[return-value]


def _network(config: Mapping[str, Any], root: PathLike) -> torch.nn.Module:
    parser = ConfigParser(copy.deepcopy(dict(config)))
    parser["bundle_root"] = str(root)
    return parser.get_parsed_content("network_def", instantiate=True)


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    # the recorded quantization schedule (``...portions``) is adopted on loading, whatever its length
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith(".portions")}


def bundle_network(bundle: PathLike) -> torch.nn.Module:
    """The network of ``bundle``'s ``configs/inference.json`` (``network_def``), on the CPU."""
    return _network(load_bundle_configs(Path(bundle) / "configs" / "inference.json"), bundle)


def prepare_label_bundle(
    dst: PathLike,
    spatial_dims: int = 3,
    overrides: Optional[Mapping[str, Any]] = None,
    src: Optional[PathLike] = None,
    seed: int = 0,
) -> Path:
    """Write (or refresh) a MONAI Label-ready bundle at ``dst``; returns ``dst``.

    Args:
        dst: output folder (e.g. ``<app>/model/qddens``); never inside the source bundle.
        spatial_dims: 2 (the shipped 2D bundle) or 3 (``3d.json`` merged in).
        overrides: config values set in both ``inference.json`` and ``train.json`` (e.g.
            ``{"roi_size": [32, 32, 32]}``).
        src: the source bundle (default :func:`bundle_dir`).
        seed: seed of the initial weights written when no ``model.pt`` fits (3D).

    An existing ``dst/models/model.pt`` (weights trained from MONAI Label) is kept when it matches
    the network; one that does not match raises a ``ValueError`` naming it instead of being
    overwritten.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    src = Path(src) if src is not None else bundle_dir()
    dst = Path(dst)
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ValueError(f"the label bundle {dst} must be outside the source bundle {src}.")
    overrides = dict(overrides or {})
    shipped, shipped_plan = src / "models" / "model.pt", src / "models" / "plan.json"
    use_shipped = spatial_dims == 2 and shipped.is_file() and not overrides
    # The network is fixed when the label bundle is written: both configs name its in_channels, num_classes
    # and modality, so training on the first (partial) annotations cannot re-plan the classes of a trained model.
    fixed = {
        k: overrides.get(k, planned(shipped_plan, k, default=untrained) if spatial_dims == 2 else untrained)
        for k, untrained in UNTRAINED.items()
    }
    extra = ["3d.json"] if spatial_dims == 3 else []
    infer = _merged(src / "configs", ["inference.json", *extra], {**overrides, **fixed})
    train = _merged(src / "configs", ["train.json", *extra], {**overrides, **fixed})

    meta = json.loads((src / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    parser = ConfigParser(copy.deepcopy(infer))
    plan = dst / "models" / "plan.json"  # written by training from MONAI Label, or the shipped one copied below
    parser["plan_file"] = str(shipped_plan if use_shipped and not plan.is_file() else plan)
    roi = list(parser.get_parsed_content("plan#roi_size"))
    in_channels = fixed["in_channels"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    image["spatial_shape"] = pred["spatial_shape"] = roi
    if in_channels != image["num_channels"]:
        image["num_channels"] = in_channels
        image["modality"] = str(fixed["modality"]).upper()
        image["channel_def"] = {str(i): f"channel {i}" for i in range(in_channels)}
    if spatial_dims == 3:
        pred["channel_def"] = (
            {"0": "background", "1": "foreground"}
            if len(pred["channel_def"]) == 2
            else {"0": "background", **{str(i): f"class {i}" for i in range(1, len(pred["channel_def"]))}}
        )
        meta["data_type"] = "nibabel"

    # Check existing weights before writing anything, so a refused start leaves the folder as it was.
    model = dst / "models" / "model.pt"
    torch.manual_seed(seed)
    net = _network(infer, dst)
    if model.is_file():
        state = torch.load(model, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        expected = _shapes(net.state_dict())
        if _shapes(state) != expected:
            raise ValueError(
                f"{model} does not fit the label bundle's network ({spatial_dims}D, overrides {overrides}); "
                "move it away or start with the settings it was trained with."
            )

    (dst / "configs").mkdir(parents=True, exist_ok=True)
    (dst / "models").mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "configs" / "logging.conf", dst / "configs" / "logging.conf")
    if (src / "docs").is_dir():
        shutil.copytree(src / "docs", dst / "docs", dirs_exist_ok=True)
    for name, config in (("inference.json", infer), ("train.json", train), ("metadata.json", meta)):
        (dst / "configs" / name).write_text(json.dumps(config, indent=4))
    if model.is_file():
        return dst
    if use_shipped:
        shutil.copy2(shipped, model)
        if shipped_plan.is_file():  # the crop and window the shipped weights were trained with
            shutil.copy2(shipped_plan, dst / "models" / "plan.json")
    else:
        atomic_write(model, lambda tmp: torch.save(net.state_dict(), tmp))  # a crash never leaves half a model.pt
    return dst
