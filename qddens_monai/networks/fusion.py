"""The QME-Net fusion block: combines the base learners' features at one level with the meta learner's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import List

import torch
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer, Convolution
from torch import nn

__all__ = ["FeatureFusionBlock", "resize_to"]


def resize_to(x: torch.Tensor, spatial_shape: List[int]) -> torch.Tensor:
    """``x`` (B, C, *S) resampled to ``spatial_shape`` by area averaging (identity when the shapes agree).

    ``spatial_shape`` is typed ``List[int]`` for TorchScript; a ``torch.Size`` or tuple works in Python."""
    size = [int(s) for s in spatial_shape]
    if [int(s) for s in x.shape[2:]] == size:
        return x
    return F.interpolate(x, size=size, mode="area")


class FeatureFusionBlock(nn.Module):
    """Fuse the base learners' feature maps at one level into the meta learner's feature map.

    ``concat(base features) -> 1x1 conv + norm + ReLU -> squeeze-excitation -> concat(meta feature)
    -> 1x1 conv + norm + ReLU``, as in QME-Net. The output has the meta feature's shape and replaces
    it downstream. With ``residual=True`` the output is ``meta + gate * (1x1 conv + norm)`` instead, with a
    per-channel ``gate`` that starts at zero (ReZero, Bachlechner et al. 2020): at initialisation the
    block passes the meta feature through unchanged, so the meta learner starts as its plain backbone
    and learns how much of the base learners' features to add. Base features of another spatial size
    (learners of other backbones) are resampled to the meta feature's size first; differing channel
    counts are absorbed by the first 1x1 projection.

    Args:
        spatial_dims: number of spatial dimensions.
        base_channels: channels of each base learner's feature at this level.
        channels: channels of the meta learner's feature at this level (and of the output).
        reduction: squeeze-excitation reduction ratio (capped so at least one hidden unit remains).
        norm: normalization of the 1x1 convolutions, MONAI style.
        dropout: dropout on the fused output (MONAI Label's epistemic scoring sets it).
        residual: add the merged features to the meta feature (zero at initialisation) instead of
            replacing it.

    Shapes:
        ``base``: list of (B, base_channels[k], *S_k); ``meta``: (B, channels, *S); output (B, channels, *S).
    """

    def __init__(
        self,
        spatial_dims: int,
        base_channels: Sequence[int],
        channels: int,
        reduction: int = 16,
        norm: str | tuple = "batch",
        dropout: float = 0.0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.project = Convolution(spatial_dims, sum(base_channels), channels, kernel_size=1, act="relu", norm=norm)
        self.attention = ChannelSELayer(spatial_dims, channels, r=max(1, min(reduction, channels)))
        self.merge = Convolution(
            spatial_dims,
            2 * channels,
            channels,
            kernel_size=1,
            act=None if residual else "relu",
            norm=norm,
            dropout=dropout or None,
        )
        self.gate: nn.Parameter | None = nn.Parameter(torch.zeros(channels)) if residual else None

    def forward(self, base: List[torch.Tensor], meta: torch.Tensor) -> torch.Tensor:
        spatial: List[int] = [int(s) for s in meta.shape[2:]]
        fused = self.attention(self.project(torch.cat([resize_to(f, spatial) for f in base], dim=1)))
        merged = self.merge(torch.cat([fused, meta], dim=1))
        gate = self.gate
        if gate is None:
            return merged
        return meta + gate.view([1, -1] + [1] * len(spatial)) * merged
