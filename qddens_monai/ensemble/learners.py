"""Every learner's probabilities in one tensor: stacking order, merging into channels and back, unwrapping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

__all__ = ["activate", "unwrap_network", "merge_learners", "split_learners", "learner_names"]


def activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """A learner's probabilities from its logits (B, C, *S): ``"softmax"`` over the channels, else ``"sigmoid"``."""
    return torch.softmax(logits, dim=1) if activation == "softmax" else torch.sigmoid(logits)


def unwrap_network(network: Callable) -> Callable:
    """The module under ``DistributedDataParallel`` / ``DataParallel`` (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, so methods other than ``forward`` (``probabilities``) can be reached."""
    seen = 0
    while seen < 8:  # wrappers can nest (compiled DDP); the bound only guards against cycles
        seen += 1
        if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            network = network.module
        elif isinstance(network, nn.Module) and isinstance(getattr(network, "_orig_mod", None), nn.Module):
            network = network._orig_mod
        else:
            break
    return network


def merge_learners(probs: torch.Tensor) -> torch.Tensor:
    """(K, B, C, *S) -> (B, K*C, *S), learner-major: channels ``k*C .. k*C + C - 1`` are learner ``k``'s."""
    if probs.ndim < 3:
        raise ValueError(f"expected (K, B, C, *S) learner probabilities, got shape {tuple(probs.shape)}.")
    k, b, c = probs.shape[:3]
    return probs.transpose(0, 1).reshape(b, k * c, *probs.shape[3:])


def _split_counts(channels: int, num_learners: Optional[int], num_classes: Optional[int]) -> tuple[int, int]:
    if num_learners is None and num_classes is None:
        raise ValueError("give num_learners or num_classes to split the learners' channels.")
    if num_learners is not None:
        k = int(num_learners)
        if k < 1 or channels % k:
            raise ValueError(f"{channels} channels cannot hold {k} learners.")
        c = channels // k
        if num_classes is not None and int(num_classes) != c:
            raise ValueError(f"{channels} channels are not {k} learners x {num_classes} classes.")
        return k, c
    c = int(num_classes)  # type: ignore[arg-type]
    if c < 1 or channels % c:
        raise ValueError(f"{channels} channels are not a multiple of {c} classes.")
    return channels // c, c


def split_learners(
    pred: torch.Tensor, num_learners: Optional[int] = None, num_classes: Optional[int] = None, batched: bool = True
) -> torch.Tensor:
    """Inverse of :func:`merge_learners`.

    Args:
        pred: (B, K*C, *S) if ``batched`` else (K*C, *S) (one decollated item).
        num_learners: K; or give ``num_classes``.
        num_classes: C; or give ``num_learners``.
        batched: whether ``pred`` has the batch dimension.

    Returns:
        (K, B, C, *S) if ``batched`` else (K, C, *S).
    """
    if not batched:
        return split_learners(pred[None], num_learners, num_classes, batched=True)[:, 0]
    if pred.ndim < 2:
        raise ValueError(f"expected (B, K*C, *S), got shape {tuple(pred.shape)}.")
    k, c = _split_counts(pred.shape[1], num_learners, num_classes)
    return pred.reshape(pred.shape[0], k, c, *pred.shape[2:]).transpose(0, 1)


def learner_names(num_learners: int) -> list[str]:
    """Names of the K learners in stacking order: ``base_0 .. base_{K-2}, meta`` (one learner: ``learner_0``)."""
    if num_learners < 1:
        raise ValueError(f"num_learners must be positive, got {num_learners}.")
    if num_learners == 1:
        return ["learner_0"]
    return [f"base_{i}" for i in range(num_learners - 1)] + ["meta"]
