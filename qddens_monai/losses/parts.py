"""A loss that keeps the parts of its last value for logging."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["LossWithParts"]


class LossWithParts(_Loss):
    """Base of the losses made of named parts; ``last_parts`` holds the last call's parts, detached."""

    def __init__(self) -> None:
        super().__init__()
        self.last_parts: dict[str, torch.Tensor] = {}

    def log_parts(self, output: Any = None) -> dict[str, float]:
        """
        The parts of the last call as python floats, for logging.

        Args:
            output: ignored; present so that this method can be passed as an ignite/MONAI
                ``output_transform`` (which is called with ``engine.state.output``).

        """
        return {name: float(value) for name, value in self.last_parts.items()}
