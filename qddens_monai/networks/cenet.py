# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""CE-Net (Gu et al., IEEE TMI 2019) for 2D and 3D, built from MONAI blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import ADN, Convolution, UpSample
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_dropout_layer, get_norm_layer
from monai.utils import UpsampleMode, ensure_tuple, look_up_option

from .staged import StagedBackbone

__all__ = ["CENet", "CENetResBlock", "DACBlock", "RMPBlock", "CENetDecoderBlock", "match_spatial_size"]


def match_spatial_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """
    Crop or zero-pad the trailing end of every spatial dimension of ``x`` so that it has the spatial size of ``ref``.

    Every down-sampling step of CE-Net produces ``ceil(n / 2)`` voxels and every up-sampling step exactly doubles,
    so an up-sampled map is at most one voxel larger than its skip/target; both grids are aligned at index 0, so the
    extra voxel is at the end. Padding (never needed by :py:class:`CENet`) is provided for completeness.

    Args:
        x: tensor of shape ``(B, C, *spatial_x)``.
        ref: tensor of shape ``(B', C', *spatial_ref)`` with the same number of spatial dimensions.

    Returns:
        ``x`` itself if the shapes already match, else a tensor of shape ``(B, C, *spatial_ref)``.
    """
    pad: List[int] = []
    changed = False
    # F.pad lists the last dimension first; negative amounts crop.
    for d in range(x.dim() - 1, 1, -1):
        delta = ref.shape[d] - x.shape[d]
        changed = changed or delta != 0
        pad += [0, delta]
    if not changed:
        return x
    return F.pad(x, pad)


def _has_norm(norm: str | tuple | None) -> bool:
    return norm is not None and norm != ""


def _act_not_inplace(act: str | tuple) -> nn.Module:
    """An activation layer with in-place computation switched off (its input is reused elsewhere)."""
    layer = get_act_layer(act)
    if hasattr(layer, "inplace"):
        layer.inplace = False
    return layer


class CENetResBlock(nn.Module):
    """
    ResNet basic block (two 3x3 convolutions + identity or projected shortcut), written without in-place
    operations so that forward hooks that record or replace features are safe.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: number of input channels.
        out_channels: number of output channels.
        stride: stride of the first convolution (and of the projection shortcut).
        act: activation type and arguments.
        norm: feature normalization type and arguments.

    Shapes:
        ``(B, in_channels, *S)`` -> ``(B, out_channels, *ceil(S / stride))``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
    ) -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        bias = not _has_norm(norm)
        self.conv1 = conv_type(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=bias)
        self.norm1 = get_norm_layer(name=norm or "", spatial_dims=spatial_dims, channels=out_channels)
        self.act1 = get_act_layer(act)
        self.conv2 = conv_type(out_channels, out_channels, kernel_size=3, padding=1, bias=bias)
        self.norm2 = get_norm_layer(name=norm or "", spatial_dims=spatial_dims, channels=out_channels)
        self.act2 = get_act_layer(act)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv_type(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias),
                get_norm_layer(name=norm or "", spatial_dims=spatial_dims, channels=out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class DACBlock(nn.Module):
    """
    Dense Atrous Convolution block of CE-Net: four cascaded branches of 3x3 atrous convolutions with receptive
    fields 3, 7, 9 and 19 (dilations 1 | 3 | 1,3 | 1,3,5, each but the first followed by a 1x1 convolution), summed
    with the input. As in the authors' public implementation the atrous and 1x1 convolutions are shared between
    branches and carry a bias instead of a normalization layer.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: number of input (= output) channels.
        act: activation type and arguments, applied to every branch output. In-place computation is switched off
            because the first atrous output is both activated and fed to the next atrous convolution.

    Shapes:
        ``(B, channels, *S)`` -> ``(B, channels, *S)``.
    """

    def __init__(self, spatial_dims: int, channels: int, act: str | tuple = "relu") -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.dilate1 = conv_type(channels, channels, kernel_size=3, dilation=1, padding=1)
        self.dilate3 = conv_type(channels, channels, kernel_size=3, dilation=3, padding=3)
        self.dilate5 = conv_type(channels, channels, kernel_size=3, dilation=5, padding=5)
        self.conv1x1 = conv_type(channels, channels, kernel_size=1)
        self.act1 = _act_not_inplace(act)
        self.act2 = _act_not_inplace(act)
        self.act3 = _act_not_inplace(act)
        self.act4 = _act_not_inplace(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.dilate1(x)
        d13 = self.dilate3(d1)
        b1 = self.act1(d1)
        b2 = self.act2(self.conv1x1(self.dilate3(x)))
        b3 = self.act3(self.conv1x1(d13))
        b4 = self.act4(self.conv1x1(self.dilate5(d13)))
        return x + b1 + b2 + b3 + b4


class RMPBlock(nn.Module):
    """
    Residual Multi-kernel Pooling block of CE-Net: max pooling with kernel = stride = 2, 3, 5 and 6, each followed
    by a shared 1x1 convolution to one channel (as in the authors' code) and interpolated back to the input size;
    the four maps are concatenated in front of the input.

    Small inputs: the kernel (and stride) of each pooling is clamped per dimension to the input size, i.e.
    ``k_d = min(k, size_d)``. At the paper's input (448^2 -> 14^2) nothing changes; for a 2^3 bottleneck (3D 64^3
    input) all four poolings become a global max pooling, and on a size-1 dimension pooling is the identity,
    so the block never fails. Remainders that do not fill a window are dropped (floor mode, as in the paper).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels.
        kernel_sizes: pooling kernel sizes, default ``(2, 3, 5, 6)``.

    Shapes:
        ``(B, in_channels, *S)`` -> ``(B, in_channels + len(kernel_sizes), *S)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, kernel_sizes: Sequence[int] = (2, 3, 5, 6)) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.kernel_sizes: List[int] = [int(k) for k in kernel_sizes]
        self.out_channels = in_channels + len(self.kernel_sizes)
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, 1, kernel_size=1)
        self.interp_mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def _max_pool(self, x: torch.Tensor, kernel: List[int]) -> torch.Tensor:
        if self.spatial_dims == 2:
            return F.max_pool2d(x, kernel_size=kernel, stride=kernel)
        return F.max_pool3d(x, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size: List[int] = [int(s) for s in x.shape[2:]]
        outs: List[torch.Tensor] = []
        for k in self.kernel_sizes:
            kernel = [min(k, s) for s in size]
            y = self.conv(self._max_pool(x, kernel))
            outs.append(F.interpolate(y, size=size, mode=self.interp_mode, align_corners=False))
        outs.append(x)
        return torch.cat(outs, dim=1)


class CENetDecoderBlock(nn.Module):
    """
    CE-Net decoder block: 1x1 conv (C -> C/4), x2 up-sampling, 1x1 conv (C/4 -> out), each with norm + act,
    followed by the addition of the encoder skip (``d4 = decoder4(e5) + e3`` in CE-Net). Including the addition in
    the block makes its output exactly the tensor fed to the next decoder block, which is what feature fusion
    replaces. The up-sampled map is cropped to the skip's spatial size so that odd sizes line up.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: number of input channels.
        out_channels: number of output channels (= channels of the skip, if any).
        act: activation type and arguments.
        norm: feature normalization type and arguments.
        dropout: dropout ratio applied after the last convolution (before the skip addition).
        upsample: ``"deconv"`` (3x3 transposed convolution, stride 2, as in the paper), ``"nontrainable"``
            (linear interpolation) or ``"pixelshuffle"``.

    Shapes:
        ``x``: ``(B, in_channels, *S)``; ``skip``: ``(B, out_channels, *S_skip)`` or ``None``;
        output: ``(B, out_channels, *S_skip)`` with a skip, else ``(B, out_channels, *(2 * S))``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        mid = max(in_channels // 4, 1)
        bias = not _has_norm(norm)
        self.conv1 = Convolution(spatial_dims, in_channels, mid, kernel_size=1, act=act, norm=norm, bias=bias)
        mode = look_up_option(upsample, UpsampleMode)
        self.up: nn.Module
        if mode == UpsampleMode.DECONV:
            self.up = Convolution(
                spatial_dims, mid, mid, strides=2, kernel_size=3, act=act, norm=norm, bias=bias, is_transposed=True
            )
        else:
            self.up = nn.Sequential(
                UpSample(spatial_dims, mid, mid, scale_factor=2, mode=mode, interp_mode="linear", align_corners=False),
                ADN(ordering="NA", in_channels=mid, act=act, norm=norm, norm_dim=spatial_dims),
            )
        self.conv3 = Convolution(
            spatial_dims,
            mid,
            out_channels,
            kernel_size=1,
            act=act,
            norm=norm,
            bias=bias,
            dropout=dropout if dropout > 0 else None,
        )

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.conv3(self.up(self.conv1(x)))
        if skip is not None:
            x = match_spatial_size(x, skip) + skip
        return x


class CENet(StagedBackbone):
    """
    CE-Net: Context Encoder Network for medical image segmentation, for 2D and 3D inputs.

    Based on: Gu et al., "CE-Net: Context Encoder Network for 2D Medical Image Segmentation", IEEE TMI 38(10),
    2019, https://arxiv.org/abs/1903.02740, and the authors' public code. The encoder is a ResNet-34 (trained from
    scratch here), the context extractor is a DAC block followed by an RMP block, the decoder adds the encoder
    features (skip by addition).

    A staged backbone (:mod:`qddens_monai.networks.staged`): :py:meth:`forward_level` runs one resolution level,
    :py:meth:`forward_head` the head. Every level is one named submodule whose output is exactly the tensor passed
    on (to the next stage *and* to the skip connection), so replacing it changes everything downstream (also
    through a forward hook). :py:attr:`feature_modules` lists these submodules and :py:attr:`feature_roles` their
    roles. For an input of spatial size ``S`` the levels are (paper channels in brackets):

    ==============  ==========  =====================  ============
    module          role        channels               spatial size
    ==============  ==========  =====================  ============
    ``stem``        stem        channels[0] (64)       S / 4
    ``encoder1``    encoder     channels[0] (64)       S / 4
    ``encoder2``    encoder     channels[1] (128)      S / 8
    ``encoder3``    encoder     channels[2] (256)      S / 16
    ``encoder4``    encoder     channels[3] (512)      S / 32
    ``bottleneck``  bottleneck  channels[3] + 4 (516)  S / 32
    ``decoder4``    decoder     channels[2] (256)      S / 16
    ``decoder3``    decoder     channels[1] (128)      S / 8
    ``decoder2``    decoder     channels[0] (64)       S / 4
    ``decoder1``    decoder     channels[0] (64)       2 * (S / 4)
    ==============  ==========  =====================  ============

    Sizes use ``ceil`` division for odd sizes (every down-sampling gives ``ceil(n / 2)``). ``stem`` is the 7x7
    stride-2 convolution + norm + act + 3x3 stride-2 max pooling (its output feeds ``encoder1``, as in the QME-Net
    code); ``decoder4..2`` include the skip addition; ``decoder1`` has no skip. The head (``final_up``,
    ``final_conv``) up-samples x2, crops to the input size and maps to ``out_channels``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3. Defaults to 2.
        in_channels: number of input channels. Defaults to 1.
        out_channels: number of output channels (logits). Defaults to 2.
        channels: output channels of the four encoder stages; ``channels[0]`` is also the stem width.
            Defaults to ResNet-34's ``(64, 128, 256, 512)``.
        layers: number of residual blocks per encoder stage. Defaults to ResNet-34's ``(3, 4, 6, 3)``.
            ``channels=(8, 16, 32, 64), layers=(1, 1, 1, 1)`` gives a tiny CPU model.
        act: activation type and arguments. Defaults to ``"relu"``. In-place activations are allowed: they are
            only applied to fresh tensors, never to a level output or a tensor reused elsewhere.
        norm: feature normalization type and arguments, e.g. ``"batch"`` (default) or
            ``("instance", {"affine": True})``. Not used in the DAC/RMP blocks and the head (as in the paper).
        dropout: dropout ratio, applied at the end of every decoder block and before the last convolution.
            Defaults to 0 (no dropout layers are created).
        upsample: up-sampling mode of the decoder and head: ``"deconv"`` (transposed convolutions, as in the
            paper), ``"nontrainable"`` or ``"pixelshuffle"``. Defaults to ``"deconv"``.
        rmp_kernel_sizes: pooling sizes of the RMP block. Defaults to ``(2, 3, 5, 6)``.

    Shapes:
        input ``(B, in_channels, *S)`` with any spatial size ``S`` (odd sizes included);
        output ``(B, out_channels, *S)`` logits.

    Examples::

        # paper size, 2D
        >>> net = CENet(spatial_dims=2, in_channels=3, out_channels=2)
        # tiny 3D model for CPU tests
        >>> net = CENet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32, 64), layers=(1, 1, 1, 1))
    """

    feature_modules: tuple[str, ...] = (
        "stem",
        "encoder1",
        "encoder2",
        "encoder3",
        "encoder4",
        "bottleneck",
        "decoder4",
        "decoder3",
        "decoder2",
        "decoder1",
    )
    feature_roles: tuple[str, ...] = ("stem",) + ("encoder",) * 4 + ("bottleneck",) + ("decoder",) * 4

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (3, 4, 6, 3),
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        upsample: str = "deconv",
        rmp_kernel_sizes: Sequence[int] = (2, 3, 5, 6),
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        channels, layers = ensure_tuple(channels), ensure_tuple(layers)
        if len(channels) != 4 or len(layers) != 4:
            raise ValueError(f"channels and layers must have 4 entries each, got {channels} and {layers}.")
        if any(int(n) < 1 for n in layers):
            raise ValueError(f"every encoder stage needs at least one block, got layers={layers}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.spatial_dims = spatial_dims
        self.num_levels = len(self.feature_modules)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = tuple(int(c) for c in channels)
        self.layers = tuple(int(n) for n in layers)
        bias = not _has_norm(norm)
        c0 = self.channels[0]

        self.stem = nn.Sequential()
        self.stem.add_module(
            "conv", Convolution(spatial_dims, in_channels, c0, strides=2, kernel_size=7, act=act, norm=norm, bias=bias)
        )
        self.stem.add_module("pool", Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1))

        # ResNet stages: the first keeps the resolution (the stem pooled already), the others halve it.
        self.encoder1 = self._make_stage(spatial_dims, c0, self.channels[0], self.layers[0], 1, act, norm)
        self.encoder2 = self._make_stage(spatial_dims, self.channels[0], self.channels[1], self.layers[1], 2, act, norm)
        self.encoder3 = self._make_stage(spatial_dims, self.channels[1], self.channels[2], self.layers[2], 2, act, norm)
        self.encoder4 = self._make_stage(spatial_dims, self.channels[2], self.channels[3], self.layers[3], 2, act, norm)

        rmp = RMPBlock(spatial_dims, self.channels[3], rmp_kernel_sizes)
        self.bottleneck = nn.Sequential()
        self.bottleneck.add_module("dac", DACBlock(spatial_dims, self.channels[3], act=act))
        self.bottleneck.add_module("rmp", rmp)

        dec_kw = {"act": act, "norm": norm, "dropout": dropout, "upsample": upsample}
        self.decoder4 = CENetDecoderBlock(spatial_dims, rmp.out_channels, self.channels[2], **dec_kw)  # type: ignore
        self.decoder3 = CENetDecoderBlock(spatial_dims, self.channels[2], self.channels[1], **dec_kw)  # type: ignore
        self.decoder2 = CENetDecoderBlock(spatial_dims, self.channels[1], self.channels[0], **dec_kw)  # type: ignore
        self.decoder1 = CENetDecoderBlock(spatial_dims, self.channels[0], self.channels[0], **dec_kw)  # type: ignore

        # head: x2 up-sampling (4x4 transposed conv in the paper), 3x3 conv, 3x3 conv to the logits, no norm.
        head_channels = max(c0 // 2, 1)
        mode = look_up_option(upsample, UpsampleMode)
        final_up: nn.Module
        if mode == UpsampleMode.DECONV:
            final_up = Conv[Conv.CONVTRANS, spatial_dims](c0, head_channels, kernel_size=4, stride=2, padding=1)
        else:
            final_up = UpSample(
                spatial_dims, c0, head_channels, scale_factor=2, mode=mode, interp_mode="linear", align_corners=False
            )
        self.final_up = nn.Sequential(final_up, get_act_layer(act))
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.final_conv = nn.Sequential(
            conv_type(head_channels, head_channels, kernel_size=3, padding=1),
            get_act_layer(act),
            get_dropout_layer(dropout, 1) if dropout > 0 else nn.Identity(),
            conv_type(head_channels, out_channels, kernel_size=3, padding=1),
        )

        self._init_weights()

    @staticmethod
    def _make_stage(
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        blocks: int,
        stride: int,
        act: str | tuple,
        norm: str | tuple | None,
    ) -> nn.Sequential:
        stage = [CENetResBlock(spatial_dims, in_channels, out_channels, stride, act, norm)]
        stage += [CENetResBlock(spatial_dims, out_channels, out_channels, 1, act, norm) for _ in range(blocks - 1)]
        return nn.Sequential(*stage)

    def _init_weights(self) -> None:
        # trained from scratch: He initialisation as in torchvision's ResNet, zero biases as in CE-Net's code.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_level(self, index: int, features: List[torch.Tensor]) -> torch.Tensor:
        """
        Level ``index`` (see the table above) from ``features = [x, stem, encoder1, ...]`` up to level
        ``index - 1``; the decoder levels add the encoder skip ``decoder4(b) + e3`` etc.
        """
        # features: [x, s, e1, e2, e3, e4, b, d4, d3, d2, d1]
        if index == 0:
            return self.stem(features[0])
        if index == 1:
            return self.encoder1(features[1])
        if index == 2:
            return self.encoder2(features[2])
        if index == 3:
            return self.encoder3(features[3])
        if index == 4:
            return self.encoder4(features[4])
        if index == 5:
            return self.bottleneck(features[5])
        if index == 6:
            return self.decoder4(features[6], features[4])
        if index == 7:
            return self.decoder3(features[7], features[3])
        if index == 8:
            return self.decoder2(features[8], features[2])
        if index == 9:
            return self.decoder1(features[9], None)
        raise IndexError("CE-Net has 10 levels")

    def forward_head(self, features: List[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: ``[x, every level]``; ``x`` of shape ``(B, in_channels, *S)``, any spatial size.

        Returns:
            logits of shape ``(B, out_channels, *S)``.
        """
        out = match_spatial_size(self.final_up(features[10]), features[0])
        return self.final_conv(out)
