"""
Staged adapters (see :mod:`qddens_monai.networks.staged`) over MONAI's ``UNet`` and ``BasicUNet``.

An adapter registers the network's own submodules under their own names, so its ``state_dict`` keys and
values are the network's (checkpoints of a plain ``UNet`` load into the adapter and back), and runs them
level by level exactly as the network's ``forward`` does. The levels are those the hook registry of
:mod:`qddens_monai.networks.features` gives the same networks.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
from monai.networks.blocks.activation_checkpointing import ActivationCheckpointWrapper
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import BasicUNet, UNet

from .staged import BOTTLENECK, DECODER, ENCODER, StagedBackbone, StageView, register_staged_adapter

__all__ = ["StagedUNet", "StagedBasicUNet"]


def _unwrap(prefix: str, module: nn.Module) -> tuple[str, nn.Module]:
    # CheckpointUNet wraps its connection blocks in ActivationCheckpointWrapper(module=...).
    while isinstance(module, ActivationCheckpointWrapper):
        prefix, module = f"{prefix}.module", module.module
    return prefix, module


class StagedUNet(StagedBackbone):
    """
    MONAI ``UNet`` run level by level.

    ``UNet.model`` nests ``Sequential(down_i, SkipConnection(inner), up_i)``: ``up_i`` sees
    ``cat([down_i output, inner output])``. With ``D = len(channels) - 1`` down layers the levels are
    ``down_0 .. down_{D-1}`` (encoder), the innermost layer (bottleneck) and ``up_{D-1} .. up_1`` (decoder);
    ``up_0`` is the head. Use :meth:`from_unet`, which returns ``None`` for a structure it does not know.

    Args:
        net: the ``UNet`` (or ``CheckpointUNet``); its ``model`` is shared, not copied.

    Shapes:
        as ``net``: ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)``.
    """

    def __init__(self, net: UNet) -> None:
        super().__init__()
        stages = self._stages(net)
        if stages is None:
            raise ValueError(f"unexpected structure of {type(net).__name__}.model: cannot run it level by level.")
        downs, bottom, ups = stages
        self.backbone_name = type(net).__name__
        self.spatial_dims = int(net.dimensions)
        self.in_channels = int(net.in_channels)
        self.out_channels = int(net.out_channels)
        self.model = net.model  # the real registration: state dict keys stay "model. ..."
        self.num_down = len(downs)
        self.num_levels = 2 * self.num_down
        self.feature_modules = tuple(n for n, _ in downs) + (bottom[0],) + tuple(n for n, _ in reversed(ups[1:]))
        self.feature_roles = (ENCODER,) * self.num_down + (BOTTLENECK,) + (DECODER,) * (self.num_down - 1)
        # level order: down_0 .. down_{D-1}, bottom, up_{D-1} .. up_1; then the head up_0.
        self.levels = StageView([m for _, m in downs] + [bottom[1]] + [m for _, m in reversed(ups[1:])])
        self.head = StageView([ups[0][1]])

    @staticmethod
    def _stages(net: UNet) -> Optional[tuple[list, tuple, list]]:
        downs, ups = [], []
        prefix, node = "model", net.model
        while True:
            inner_prefix, inner = _unwrap(prefix, node)
            if not (isinstance(inner, nn.Sequential) and len(inner) == 3 and isinstance(inner[1], SkipConnection)):
                break
            if inner[1].mode != "cat" or inner[1].dim != 1:
                return None
            downs.append((f"{inner_prefix}.0", inner[0]))
            ups.append((f"{inner_prefix}.2", inner[2]))
            prefix, node = f"{inner_prefix}.1.submodule", inner[1].submodule
        return (downs, (prefix, node), ups) if downs else None

    @classmethod
    def from_unet(cls, net: UNet) -> Optional[StagedUNet]:
        """The adapter, or ``None`` if ``net.model`` is not UNet's nested structure (then use hooks)."""
        return cls(net) if cls._stages(net) is not None else None

    def forward_level(self, index: int, features: List[torch.Tensor]) -> torch.Tensor:
        # features = [input, level 0, ...]: down_j / bottom read the previous level, features[j];
        # the decoder level j is up_i with i = 2D - j, reading cat([down_i output, previous level]).
        for j, module in enumerate(self.levels):
            if j == index:
                if j <= self.num_down:
                    return module(features[j])
                return module(torch.cat([features[2 * self.num_down - j + 1], features[j]], dim=1))
        raise IndexError("level index out of range")

    def forward_head(self, features: List[torch.Tensor]) -> torch.Tensor:
        for module in self.head:
            return module(torch.cat([features[1], features[-1]], dim=1))
        raise RuntimeError("no head")


class StagedBasicUNet(StagedBackbone):
    """
    MONAI ``BasicUNet`` run level by level: ``conv_0``, ``down_1..3`` (encoder, each feeds a skip),
    ``down_4`` (bottleneck), ``upcat_4..1`` (decoder); ``final_conv`` is the head.

    Args:
        net: the ``BasicUNet``; its submodules are shared, not copied.

    Shapes:
        as ``net``: ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)``.
    """

    feature_modules = ("conv_0", "down_1", "down_2", "down_3", "down_4", "upcat_4", "upcat_3", "upcat_2", "upcat_1")
    feature_roles = (ENCODER,) * 4 + (BOTTLENECK,) + (DECODER,) * 4

    def __init__(self, net: BasicUNet) -> None:
        super().__init__()
        self.backbone_name = type(net).__name__
        self.num_levels = len(self.feature_modules)
        for name in self.feature_modules + ("final_conv",):  # BasicUNet's own order: same state dict
            self.add_module(name, getattr(net, name))

    def forward_level(self, index: int, features: List[torch.Tensor]) -> torch.Tensor:
        if index == 0:
            return self.conv_0(features[0])
        if index == 1:
            return self.down_1(features[1])
        if index == 2:
            return self.down_2(features[2])
        if index == 3:
            return self.down_3(features[3])
        if index == 4:
            return self.down_4(features[4])
        if index == 5:
            return self.upcat_4(features[5], features[4])
        if index == 6:
            return self.upcat_3(features[6], features[3])
        if index == 7:
            return self.upcat_2(features[7], features[2])
        if index == 8:
            return self.upcat_1(features[8], features[1])
        raise IndexError("level index out of range")

    def forward_head(self, features: List[torch.Tensor]) -> torch.Tensor:
        return self.final_conv(features[9])


register_staged_adapter(UNet, StagedUNet.from_unet)
register_staged_adapter(BasicUNet, StagedBasicUNet)
