"""QME-Net / QDD-Ens: a deep ensemble whose meta learner fuses the base learners' features at every level."""

# No `from __future__ import annotations`: TorchScript reads the signatures of the @torch.jit.unused methods.
import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, SegResNet, UNet
from torch import nn

from ..ensemble import EnsembleOutput
from ..ensemble.learners import activate
from ..quantization import DEFAULT_PORTIONS, freeze, quantize_network, quantized_layers
from . import staged_monai  # noqa: F401  (registers the UNet / BasicUNet adapters)
from .cenet import CENet
from .features import FeatureExtractor, FeatureLevel, feature_levels, feature_shapes
from .fusion import FeatureFusionBlock, resize_to
from .staged import as_staged

__all__ = ["QMENet", "QUANTIZATION_PRESETS", "BACKBONES", "quantization_preset"]

#: Backbones buildable by name: ``(class, name of its dropout argument)``.
BACKBONES: dict[str, tuple[type[nn.Module], str]] = {
    "cenet": (CENet, "dropout"),
    "basicunet": (BasicUNet, "dropout"),
    "unet": (UNet, "dropout"),
    "segresnet": (SegResNet, "dropout_prob"),
}

#: The published quantization settings, per learner (base learners first, meta learner last).
#: Both use the D2ED2Q public code's log min-max quantizer with its two-stage partition.
QUANTIZATION_PRESETS = ("qme_net", "float_meta", "qdd_ens", "float")


def quantization_preset(name: str, num_learners: int) -> list[Optional[dict[str, Any]]]:
    """Per-learner quantization settings of a published preset.

    - ``"qme_net"``: base learners at 4, 5, 6 bits (cycled), meta learner at 16 bits (QME-Net);
    - ``"float_meta"``: the same base learners, the meta learner in float: the incremental schedule never
      freezes the weights of the learner that makes the prediction;
    - ``"qdd_ens"``: every learner at 5 bits (QDD-Ens / D2ED2Q);
    - ``"float"``: no quantization.
    """
    if name not in QUANTIZATION_PRESETS:
        raise ValueError(f"Unknown quantization preset {name!r}; choose one of {list(QUANTIZATION_PRESETS)}.")
    if name == "float":
        return [None] * num_learners
    bits: list[Optional[int]] = [5] * num_learners
    if name in ("qme_net", "float_meta"):
        bits = [(4, 5, 6)[k % 3] for k in range(num_learners - 1)] + [16 if name == "qme_net" else None]
    return [
        None if b is None else {"method": "log_minmax", "bits": b, "partition": "two_stage", "seed": k}
        for k, b in enumerate(bits)
    ]


def _as_list(value: Any, n: int, what: str) -> list:
    if isinstance(value, (str, Mapping)) or value is None:
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{what}: expected one entry per learner ({n}), got {len(value)}.")
    return value


class QMENet(nn.Module):
    """Deep ensemble with a meta learner that fuses the base learners' features at every level.

    ``K - 1`` base learners and one meta learner, each an encoder-decoder network. At every
    feature level (stem, encoder stages, bottleneck, decoder stages; see
    :mod:`qddens_monai.networks.features`) a :class:`FeatureFusionBlock` combines the base
    learners' maps with the meta learner's, and its output *replaces* the meta learner's map,
    feeding its next stage and skip connections. Each learner can be quantized with its own
    method and bit width (the "diverse quantization" of QDD-Ens); the fusion blocks stay float.

    Training mode returns what :class:`qddens_monai.losses.EnsembleLoss` needs, an
    :class:`~qddens_monai.ensemble.EnsembleOutput`::

        {"logits": [base_1, ..., base_{K-1}, meta],        # each (B, out_channels, *S)
         "features": [[level maps of base_1], ...],         # K-1 lists of (B, C_l, *S_l)
         "roles": ["stem", "encoder", ..., "decoder"]}      # role of each level

    Eval mode returns one tensor (B, out_channels, *S), so MONAI inferers, post transforms and
    metrics work unchanged: with ``output="mean"`` the log of the mean of the K learners'
    probabilities (softmax or sigmoid of it *is* the ensemble's mean probability), with
    ``output="meta"`` the meta learner's logits.

    Staged learners (:mod:`qddens_monai.networks.staged`: CE-Net, and MONAI's ``UNet`` and
    ``BasicUNet`` through adapters that keep their state dict keys) run level by level in plain
    code: each base learner records its level maps, then the meta learner runs with every fused
    level replaced. This is what ``torch.jit.script`` compiles (of a frozen copy when quantized, see
    ``__prepare_scriptable__``; the script runs the eval-mode output). Other
    backbones (e.g. SegResNet), or explicit ``levels``, run through forward hooks instead
    (:mod:`qddens_monai.networks.features`; export by ``torch.jit.trace``). Backbones can be mixed:
    levels are matched by role and order, and maps of another spatial size are resampled.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels.
        out_channels: output channels (classes).
        num_learners: K, the meta learner included (published: 4).
        backbone: ``"cenet"``, ``"basicunet"``, ``"unet"`` or ``"segresnet"``, or one name per learner.
        backbone_kwargs: extra constructor arguments of the backbone (e.g. CE-Net ``channels`` and
            ``layers``), or one dict per learner.
        learners: already built learners (base learners then the meta learner); replaces
            ``backbone`` / ``num_learners``. MONAI ``UNet`` / ``BasicUNet`` are held through their staged
            adapters, which share (not copy) their submodules.
        levels: explicit feature levels per learner (``None`` entries use the defaults); any
            explicit entry makes the ensemble run through hooks.
        fusion_roles: roles of the levels that are fused (default: every level).
        fusion_residual: the fusion blocks add the base learners' features to the meta learner's through
            a gate that starts at zero (the meta learner starts as its plain backbone) instead of
            replacing them (QME-Net); see :class:`FeatureFusionBlock`.
        quantization: a preset name (``"qme_net"``, ``"float_meta"``, ``"qdd_ens"``, ``"float"``) or one dict of
            :func:`~qddens_monai.quantization.quantize_network` arguments (or ``None``) per learner.
        portions: accumulated portions of the incremental schedule, for learners whose
            settings do not give their own.
        output: eval-mode output, ``"mean"`` (all K learners) or ``"meta"``.
        activation: the heads' activation, ``"softmax"`` or ``"sigmoid"``.
        reduction: squeeze-excitation reduction ratio of the fusion blocks.
        norm: normalization of the fusion blocks.
        dropout: dropout of the learners (where built by name) and of the fusion outputs.
        probe_size: spatial size of the zero input used once at construction to find the levels'
            shapes (default 64 in every dimension).
        meta_kwargs: arguments that replace ``backbone_kwargs`` entries for the meta learner only, e.g.
            ``{"channels": [16, 32, 64, 128], "num_res_units": 2}`` for a meta learner wider than the base
            learners (``--network_def#backbone_kwargs#channels`` then still sizes the base learners).
            Ignored when ``learners`` are given.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        num_learners: int = 4,
        backbone: Union[str, Sequence[str]] = "cenet",
        backbone_kwargs: Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None] = None,
        learners: Optional[Sequence[nn.Module]] = None,
        levels: Optional[Sequence[Optional[Sequence[Any]]]] = None,
        fusion_roles: Optional[Sequence[str]] = None,
        fusion_residual: bool = False,
        quantization: Union[str, Sequence[Optional[Mapping[str, Any]]], None] = "qme_net",
        portions: Sequence[float] = DEFAULT_PORTIONS,
        output: str = "mean",
        activation: str = "softmax",
        reduction: int = 16,
        norm: Union[str, tuple] = "batch",
        dropout: float = 0.0,
        probe_size: Union[int, Sequence[int], None] = None,
        meta_kwargs: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        if output not in ("mean", "meta"):
            raise ValueError(f"output must be 'mean' or 'meta', got {output!r}.")
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")
        if learners is None:
            if int(num_learners) < 2:
                raise ValueError(f"num_learners must be at least 2 (a base learner and the meta), got {num_learners}.")
            names = _as_list(backbone, num_learners, "backbone")
            kwargs = _as_list(backbone_kwargs, num_learners, "backbone_kwargs")
            if meta_kwargs:  # the meta learner's own size, over the shared backbone_kwargs
                kwargs[-1] = {**(kwargs[-1] or {}), **meta_kwargs}
            learners = [
                self._build(n, spatial_dims, in_channels, out_channels, dropout, kw) for n, kw in zip(names, kwargs)
            ]
        learners = list(learners)
        num_learners = len(learners)
        if num_learners < 2:
            raise ValueError("an ensemble needs at least one base learner and a meta learner.")
        settings = quantization_preset(quantization, num_learners) if isinstance(quantization, str) else quantization
        settings = _as_list(settings, num_learners, "quantization")
        levels = _as_list(levels, num_learners, "levels")
        # Staged when every learner is (explicit level names need hooks): adapters share the learners'
        # submodules under their own names, so the state dict is the same either way.
        staged = [as_staged(m) if lv is None else None for m, lv in zip(learners, levels)]
        self.staged = all(m is not None for m in staged)
        if self.staged:
            learners = staged  # type: ignore[assignment]

        self.spatial_dims = spatial_dims
        self.out_channels = out_channels
        self.output = output
        self.activation = activation
        self.base_learners = nn.ModuleList(learners[:-1])
        self.meta_learner = learners[-1]
        self._levels = self._match_levels(learners, levels, fusion_roles)
        # For the staged forward (TorchScript reads these): per learner, its number of levels and the
        # index of each fused level among them.
        self._num_levels: List[int] = [int(getattr(m, "num_levels", 0)) for m in learners]
        self._fused_index: List[List[int]] = [
            [list(getattr(m, "feature_modules", ())).index(lv.name) for lv in lvs] if self.staged else []
            for m, lvs in zip(learners, self._levels)
        ]

        if probe_size is None or isinstance(probe_size, int):
            probe = (probe_size or 64,) * spatial_dims
        else:
            probe = tuple(probe_size)
        shapes = [self._probe(m, k, (1, in_channels, *probe)) for k, m in enumerate(learners)]
        self.fusion = nn.ModuleList(
            FeatureFusionBlock(
                spatial_dims,
                [s[i][0] for s in shapes[:-1]],
                shapes[-1][i][0],
                reduction=reduction,
                norm=norm,
                dropout=dropout,
                residual=fusion_residual,
            )
            for i in range(len(self._levels[-1]))
        )
        # Quantize last, so the probe ran in float and the fusion blocks stay float.
        for learner, setting in zip(learners, settings):
            if setting is not None:
                quantize_network(learner, **{"portions": portions, **dict(setting)})

    __jit_unused_properties__ = ["num_learners", "level_roles"]

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles: a frozen copy when learners are quantized (weight
        parametrizations cannot run in TorchScript). The copy's weights are the effective weights of
        now, whole schedule done or not, so the script equals eager; this network is left as it is."""
        if not any(True for _ in quantized_layers(self)):
            return self
        return freeze(copy.deepcopy(self), require_complete=False)

    @staticmethod
    def _build(name: str, spatial_dims: int, in_ch: int, out_ch: int, dropout: float, kwargs: Any) -> nn.Module:
        if name not in BACKBONES:
            raise ValueError(f"Unknown backbone {name!r}; choose one of {sorted(BACKBONES)} or pass `learners`.")
        cls, dropout_arg = BACKBONES[name]
        return cls(
            spatial_dims=spatial_dims,
            in_channels=in_ch,
            out_channels=out_ch,
            **{dropout_arg: dropout},
            **dict(kwargs or {}),
        )

    @staticmethod
    def _match_levels(
        learners: Sequence[nn.Module], levels: Sequence[Any], roles: Optional[Sequence[str]]
    ) -> list[list[FeatureLevel]]:
        per_learner = [feature_levels(m, lv, roles) for m, lv in zip(learners, levels)]
        meta_roles = [lv.role for lv in per_learner[-1]]
        if not meta_roles:
            raise ValueError("the meta learner has no feature level to fuse (check fusion_roles / levels).")
        for k, lv in enumerate(per_learner[:-1]):
            if [x.role for x in lv] != meta_roles:
                raise ValueError(
                    f"base learner {k} ({_name(learners[k])}) has levels {[x.role for x in lv]} but the meta "
                    f"learner ({_name(learners[-1])}) has {meta_roles}: every learner needs the same levels "
                    "in the same order; restrict them with `fusion_roles` or give explicit `levels`."
                )
        return per_learner

    def _probe(self, learner: nn.Module, k: int, input_shape: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
        """``(channels, spatial shape)`` of learner ``k``'s fused levels, from one zero input in eval mode."""
        if not self.staged:
            return feature_shapes(learner, input_shape, self._levels[k])
        p = next(iter(learner.parameters()), None)
        x = torch.zeros(input_shape, device=p.device if p is not None else None)
        was_training = learner.training
        learner.eval()
        try:
            with torch.no_grad():
                _, feats = learner.forward_features(x)  # type: ignore[operator]
        finally:
            learner.train(was_training)
        return [(int(feats[i].shape[1]), tuple(int(d) for d in feats[i].shape[2:])) for i in self._fused_index[k]]

    @property
    def num_learners(self) -> int:
        return len(self.base_learners) + 1

    @property
    def level_roles(self) -> list[str]:
        return [lv.role for lv in self._levels[-1]]

    def forward_learners(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[List[torch.Tensor]]]:
        """All K learners' logits (base learners first, meta last) and the base learners' fused-level maps."""
        if self.staged:
            return self._forward_staged(x)
        return self._forward_hooked(x)

    def _forward_staged(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[List[torch.Tensor]]]:
        logits: List[torch.Tensor] = []
        features: List[List[torch.Tensor]] = []
        for k, learner in enumerate(self.base_learners):
            maps: List[torch.Tensor] = [x]  # [input, level 0, level 1, ...]
            for i in range(self._num_levels[k]):
                maps.append(learner.forward_level(i, maps))
            logits.append(learner.forward_head(maps))
            features.append([maps[i + 1] for i in self._fused_index[k]])
        meta = self.meta_learner
        meta_index = self._fused_index[-1]
        maps = [x]
        for b, block in enumerate(self.fusion):
            level = meta_index[b]
            while len(maps) < level + 1:  # levels that are not fused
                maps.append(meta.forward_level(len(maps) - 1, maps))
            # the fused map replaces the meta learner's: it feeds the next level and the skips
            maps.append(block([f[b] for f in features], meta.forward_level(level, maps)))
        while len(maps) < self._num_levels[-1] + 1:
            maps.append(meta.forward_level(len(maps) - 1, maps))
        logits.append(meta.forward_head(maps))
        return logits, features

    @torch.jit.unused
    def _forward_hooked(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[List[torch.Tensor]]]:
        logits, features = [], []
        for learner, lv in zip(self.base_learners, self._levels):
            out, feats = FeatureExtractor(learner, lv)(x)
            logits.append(out)
            features.append(feats)

        def fuse(i: int, meta_feature: torch.Tensor) -> torch.Tensor:
            return self.fusion[i]([f[i] for f in features], meta_feature)

        meta_out, _ = FeatureExtractor(self.meta_learner, self._levels[-1], replace_fn=fuse)(x)
        logits.append(meta_out)
        return logits, features

    def combine(self, logits: List[torch.Tensor]) -> torch.Tensor:
        """Eval-mode output from the K learners' logits (see the class docstring)."""
        if self.output == "meta":
            return logits[-1]
        log_k = math.log(len(logits))
        if self.activation == "softmax":
            return torch.logsumexp(torch.stack([F.log_softmax(z, dim=1) for z in logits]), dim=0) - log_k
        log_p = torch.logsumexp(torch.stack([F.logsigmoid(z) for z in logits]), dim=0) - log_k
        log_q = torch.logsumexp(torch.stack([F.logsigmoid(-z) for z in logits]), dim=0) - log_k
        return log_p - log_q

    @torch.jit.unused
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Every learner's probabilities, (K, B, out_channels, *S): for per-learner metrics and disagreement."""
        logits, _ = self.forward_learners(x)
        return torch.stack([activate(z, self.activation) for z in logits])

    @torch.jit.unused
    def _train_output(self, logits: List[torch.Tensor], features: List[List[torch.Tensor]]) -> Dict[str, Any]:
        # Base learners of other backbones may differ in spatial size at a level: align to the first.
        features = [[resize_to(f, ref.shape[2:]) for f, ref in zip(feats, features[0])] for feats in features]
        return EnsembleOutput(logits=logits, features=features, roles=self.level_roles)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Dict[str, Any]]:
        """
        Args:
            x: (B, in_channels, *S).

        Returns:
            eval mode: (B, out_channels, *S), see the class docstring; training mode:
            ``{"logits", "features", "roles"}`` (not available in TorchScript, which is for inference).
        """
        logits, features = self.forward_learners(x)
        if not self.training:
            return self.combine(logits)
        return self._train_output(logits, features)


def _name(learner: nn.Module) -> str:
    """The learner's class name (the wrapped network's, for staged adapters)."""
    return str(getattr(learner, "backbone_name", type(learner).__name__))
