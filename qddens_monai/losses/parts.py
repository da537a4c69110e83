"""A loss that keeps the parts of its last value for logging."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["LossWithParts"]


class LossWithParts(_Loss):
    """Base of the losses made of named parts; ``last_parts`` holds the last call's parts, detached.

    In a trainer, :class:`~qddens_monai.handlers.LossPartsHandler` copies them into ``engine.state.output``
    (``"loss/<part>"``), where handlers read them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_parts: dict[str, torch.Tensor] = {}

    def log_parts(self) -> dict[str, float]:
        """The parts of the last call as python floats."""
        return {name: float(value) for name, value in self.last_parts.items()}
