"""Weight parametrizations (``torch.nn.utils.parametrize``) that quantize a layer's weight.

Registered on a conv / transposed-conv / linear layer's ``weight`` by
:func:`qddens_monai.quantization.quantize_network`; the layer class is left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .partition import select_weights_to_freeze, step_generator
from .quantizers import Quantizer

__all__ = ["IncrementalQuantization", "StraightThroughQuantization"]


class IncrementalQuantization(nn.Module):
    """Incremental network quantization (INQ / D2ED2Q) of one weight tensor.

    The effective weight is ``where(mask, frozen, latent)``: frozen entries come from a
    buffer the optimizer never sees, so momentum or weight decay cannot move them (they
    also receive a zero gradient), while the free entries keep training. Each call of
    :meth:`advance` quantizes a further share of the free weights so that the frozen
    fraction reaches the next accumulated portion; after the last portion (1.0) the whole
    tensor lies on the quantizer's level set.

    State, all in buffers so that it is checkpointed and restored with ``state_dict``:
    ``mask`` (bool, weight shape), ``frozen`` (weight shape), ``params`` (the level set's
    scale, fixed at the first step so every step shares one grid), ``step`` (steps done),
    ``seed`` (for the random partitions) and ``portions`` (float64, the schedule itself). A
    checkpoint therefore describes its own schedule: loading one trained with other portions
    (another number of steps) adopts them, so "step 2 of 2" stays complete whatever
    ``portions`` the network was built with. Checkpoints written before ``portions`` was
    recorded load as before (the built portions are kept).

    Args:
        quantizer: the level set.
        weight: the weight tensor the parametrization is registered on (for shapes and dtype).
        channel_dim: the output-channel dimension of ``weight`` (1 for transposed convs).
        portions: accumulated portions, strictly increasing, ending at 1.0.
        partition: ``"magnitude"``, ``"random"`` or ``"two_stage"``.
        seed: seed of this tensor's random partitions.
    """

    def __init__(
        self,
        quantizer: Quantizer,
        weight: torch.Tensor,
        channel_dim: int,
        portions: Sequence[float],
        partition: str,
        seed: int,
    ) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.channel_dim = channel_dim
        self.partition = partition
        kw = {"device": weight.device}
        self.register_buffer("portions", torch.tensor([float(p) for p in portions], dtype=torch.float64, **kw))
        self.register_buffer("mask", torch.zeros(weight.shape, dtype=torch.bool, **kw))
        self.register_buffer("frozen", torch.zeros(weight.shape, dtype=weight.dtype, **kw))
        self.register_buffer(
            "params", torch.zeros(quantizer.param_shape(weight.shape, channel_dim), dtype=weight.dtype, **kw)
        )
        self.register_buffer("step", torch.zeros((), dtype=torch.long, **kw))
        self.register_buffer("seed", torch.tensor(int(seed), dtype=torch.long, **kw))

    @property
    def num_steps(self) -> int:
        return int(self.portions.numel())

    @property
    def portion_values(self) -> tuple[float, ...]:
        """The accumulated portions as Python floats (rounded to 1e-6: safe from a cast of the buffer to float32)."""
        return tuple(round(float(p), 6) for p in self.portions)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        key = prefix + "portions"
        incoming = state_dict.get(key)
        if isinstance(incoming, torch.Tensor) and incoming.shape != self.portions.shape:
            # another number of steps: take the checkpoint's schedule (the copy below fills it)
            self.portions = torch.zeros(incoming.shape, dtype=self.portions.dtype, device=self.portions.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if incoming is None and key in missing_keys:  # written before the schedule was recorded
            missing_keys.remove(key)

    @property
    def complete(self) -> bool:
        return int(self.step) >= self.num_steps

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, self.frozen, latent)

    @torch.no_grad()
    def advance(self, latent: torch.Tensor) -> int:
        """Quantize and freeze the next share of the free weights; returns how many were frozen."""
        step = int(self.step)
        if step >= self.num_steps:
            return 0
        if step == 0:
            self.params.copy_(self.quantizer.calibrate(latent, self.channel_dim))
        total = self.mask.numel()
        target = total if step == self.num_steps - 1 else int(math.floor(self.portion_values[step] * total + 0.5))
        count = target - int(self.mask.sum())
        idx = select_weights_to_freeze(
            latent, self.mask, count, self.partition, step_generator(int(self.seed), step)
        ).to(latent.device)
        quantized = self.quantizer.quantize(latent, self.params, self.channel_dim)
        self.frozen.view(-1)[idx] = quantized.reshape(-1)[idx]
        self.mask.view(-1)[idx] = True
        self.step.add_(1)
        return int(idx.numel())

    def extra_repr(self) -> str:
        return f"{self.quantizer}, portions={self.portion_values}, partition={self.partition!r}"


class StraightThroughQuantization(nn.Module):
    """Quantize the latent float weight in every forward; straight-through gradient.

    The DoReFa, TWN and uniform baselines: the scale is recomputed from the latent weight
    each time, the forward sees the quantized values exactly, and the backward passes the
    gradient of the quantizer's surrogate (identity, or DoReFa's ``tanh`` normalisation).

    Args:
        quantizer: the level set.
        channel_dim: the output-channel dimension of the weight (1 for transposed convs).
    """

    def __init__(self, quantizer: Quantizer, channel_dim: int) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.channel_dim = channel_dim

    complete = True

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        params = self.quantizer.calibrate(latent, self.channel_dim)
        return self.quantizer.straight_through(latent, params, self.channel_dim)

    def extra_repr(self) -> str:
        return f"{self.quantizer}"
