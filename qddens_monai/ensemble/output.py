"""The ensemble's training-mode output: what the losses and handlers read from an ensemble's forward."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, List, TypedDict

import torch

__all__ = ["EnsembleOutput", "is_ensemble_output"]


class EnsembleOutput(TypedDict):
    """
    Training-mode output of an ensemble (:class:`~qddens_monai.networks.QMENet`); a plain ``dict`` at run time,
    so MONAI engines carry it as ``engine.state.output["pred"]`` unchanged.

    Keys:
        logits: K tensors ``(B, out_channels, *S)``: the base learners' in order, then the meta learner's.
        features: one list per *base* learner of its fused-level maps ``(B, C_l, *S_l)``, level ``l`` of every
            learner resampled to the same spatial size (what :class:`~qddens_monai.losses.DeepDiversityLoss`
            compares).
        roles: the role of each level (``"stem"``, ``"encoder"``, ``"bottleneck"``, ``"decoder"``; see
            :mod:`qddens_monai.networks.staged`).

    Eval mode returns one tensor instead (see ``QMENet``).
    """

    logits: List[torch.Tensor]
    features: List[List[torch.Tensor]]
    roles: List[str]


def is_ensemble_output(value: Any) -> bool:
    """Whether ``value`` is an ensemble's training-mode output (a mapping with ``"logits"``), not a tensor."""
    return isinstance(value, Mapping) and "logits" in value
