"""Run the bundle's ensemble on one image: per-voxel member disagreement, image uncertainty, descriptor."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from monai.bundle import ConfigParser
from monai.transforms import MapTransform

from ..config import load_bundle_configs
from ..evaluation import LearnerProbabilities, split_learners, unwrap_network
from ..networks import ENCODER, load_checkpoint
from .selection import defined_descriptor, image_uncertainty, voxel_disagreement

__all__ = ["DisagreementMapd", "EnsembleScorer", "deepest_encoder_level", "member_scores"]


def deepest_encoder_level(roles: list[str]) -> int:
    """Index of the last ``encoder`` level (the deepest encoder feature map) in a network's level roles."""
    idx = [i for i, r in enumerate(roles) if r == ENCODER]
    if not idx:
        raise ValueError(f"the network has no encoder level (levels: {roles}).")
    return idx[-1]


@torch.no_grad()
def member_scores(
    network: torch.nn.Module, x: torch.Tensor, inferer: Any = None, level: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """An ensemble's member probabilities and descriptor of one preprocessed image, in one pass.

    Args:
        network: an ensemble with ``forward_learners`` / ``level_roles`` (e.g. QME-Net), possibly wrapped.
        x: (1, C_in, *S) the preprocessed image.
        inferer: the MONAI inferer to run (``None``: the whole image at once).
        level: the feature level of the descriptor (default: the deepest encoder level).

    Returns:
        member probabilities (K, C, *S) and the descriptor (D + 1,): the base learners' feature maps at
        ``level``, each averaged over space and over the inferer's windows, concatenated, plus the flag
        of :func:`~qddens_monai.label.selection.defined_descriptor` (1 for a constant image).
    """
    net = unwrap_network(network)
    if not hasattr(net, "forward_learners"):
        raise TypeError(f"{type(net).__name__} is not an ensemble (no forward_learners): nothing to disagree.")
    level = deepest_encoder_level(net.level_roles) if level is None else level
    sums: list[torch.Tensor] = []
    probabilities = LearnerProbabilities(inferer)
    original = net.forward_learners

    def forward_learners(inp: torch.Tensor) -> Any:
        # The probabilities go through the inferer; the features are recorded on the way:
        # (B, D) per window batch, every base learner's map at `level`, mean over space.
        logits, features = original(inp)
        sums.append(torch.cat([f[level].flatten(2).mean(2) for f in features], dim=1))
        return logits, features

    net.forward_learners = forward_learners  # type: ignore[method-assign]
    try:
        merged = probabilities(x, net)
    finally:
        del net.forward_learners
    probs = split_learners(merged, num_learners=probabilities.num_learners)[:, 0]
    return probs.cpu(), defined_descriptor(torch.cat(sums).mean(0).cpu())


class DisagreementMapd(MapTransform):
    """Learner-major probabilities (K*C, *S) -> the members' per-voxel disagreement (1, *S), float32.

    Args:
        keys: keys holding the output of :class:`~qddens_monai.evaluation.LearnerProbabilities`
            (decollated, no batch dimension).
        num_classes: C, to split the K*C channels into the K members.
        kind: ``"variance"`` or ``"entropy"`` (see :func:`~qddens_monai.label.selection.voxel_disagreement`).
    """

    def __init__(self, keys: Any, num_classes: int, kind: str = "variance", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.num_classes = int(num_classes)
        self.kind = kind

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            probs = split_learners(torch.as_tensor(d[key]), num_classes=self.num_classes, batched=False)
            out = voxel_disagreement(probs.float(), self.kind)[None].float()
            value = d[key]
            d[key] = value.__class__(out, meta=value.meta) if hasattr(value, "meta") else out
        return d


class EnsembleScorer:
    """The bundle's ensemble applied to single images for suggestive annotation.

    Uses the bundle's own ``network_def``, ``preprocessing`` and ``inferer`` (sliding window) from
    ``configs/inference.json`` and loads ``models/model.pt`` strictly (a mismatch is an error, not
    silently random weights).

    Args:
        bundle: the (label-ready) bundle folder.
        device: torch device for the members.
        kind: per-voxel disagreement, ``"variance"`` or ``"entropy"``.
    """

    def __init__(
        self, bundle: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu", kind: str = "variance"
    ) -> None:
        self.bundle = Path(bundle)
        self.model_path = self.bundle / "models" / "model.pt"
        self.device = torch.device(device)
        self.kind = kind
        parser = ConfigParser()
        parser.read_config(load_bundle_configs(self.bundle / "configs" / "inference.json"))
        parser["bundle_root"] = str(self.bundle)
        parser["device"] = f"$torch.device('{self.device}')"
        self.network = load_checkpoint(parser.get_parsed_content("network_def"), self.model_path).to(self.device)
        self.network.eval()
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        module = unwrap_network(self.network)
        if not hasattr(module, "forward_learners"):
            raise TypeError(f"{type(module).__name__} is not an ensemble (no forward_learners): nothing to disagree.")
        self._level = deepest_encoder_level(module.level_roles)

    @torch.no_grad()
    def members(self, image: Union[str, os.PathLike]) -> tuple[torch.Tensor, torch.Tensor]:
        """Member probabilities (K, C, *S) of ``image`` (a file the bundle's preprocessing reads) and its
        descriptor (D + 1,), see :func:`member_scores`."""
        x = self.preprocessing({"image": str(image)})["image"].as_tensor()[None].to(self.device)
        return member_scores(self.network, x, self.inferer, self._level)

    def __call__(self, image: Union[str, os.PathLike]) -> dict[str, Any]:
        """``{"uncertainty": float, "descriptor": [D + 1 floats]}`` for ``image``."""
        probs, descriptor = self.members(image)
        return {"uncertainty": image_uncertainty(probs, self.kind), "descriptor": descriptor.tolist()}
