# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
Multi-scale feature maps of any encoder-decoder network, recorded (and optionally replaced) with forward hooks.

The hook adapter for *foreign* backbones: networks that follow the staged contract
(:mod:`qddens_monai.networks.staged`: CE-Net, and MONAI's UNet / BasicUNet through adapters) are run level by
level in plain, scriptable code; everything else (e.g. SegResNet) is run whole with hooks here, which
``torch.jit.script`` cannot follow (export such ensembles by tracing).

A *level* is a submodule, named by its dotted path in the network, whose output is one resolution level's
feature map, together with a *role*:

- ``"stem"``: input layers before the first encoder stage that feed no skip connection;
- ``"encoder"``: down-path stages (QDD-Ens' deep diversity loss uses these ...);
- ``"bottleneck"``: the deepest level, between encoder and decoder (only logged by QDD-Ens);
- ``"decoder"``: up-path stages (... and these). The output layer producing the logits is never a level.
- ``"unspecified"``: levels given by bare names without a role.

Levels are ordered stem, encoder (shallow to deep), bottleneck, decoder (deep to shallow), so two networks of the
same family and depth give maps at the same resolutions in the same order: the ensemble fuses level ``i`` of every
learner. Defaults are registered for :py:class:`~qddens_monai.networks.cenet.CENet` (through its
``feature_modules`` / ``feature_roles`` attributes, a protocol any network can follow) and MONAI's ``BasicUNet``,
``UNet`` and ``SegResNet`` (and their subclasses); see :py:func:`register_feature_levels` for others.

Example::

    extractor = FeatureExtractor(net, roles=("encoder", "decoder"))
    with extractor:
        logits = net(x)
    feats = extractor.features  # list of tensors, one per level, with gradients

    # replacing the meta learner's features by fused ones (the hook's output feeds the rest of the network)
    with FeatureExtractor(meta_net, replace_fn=lambda i, f: fusion[i](base_feats[i], f)):
        meta_logits = meta_net(x)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Tuple, Union

import torch
import torch.nn as nn
from monai.networks.blocks.activation_checkpointing import ActivationCheckpointWrapper
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import BasicUNet, SegResNet, UNet

from .staged import BOTTLENECK, DECODER, ENCODER, FEATURE_ROLES, STEM, UNSPECIFIED

__all__ = [
    "STEM",
    "ENCODER",
    "BOTTLENECK",
    "DECODER",
    "UNSPECIFIED",
    "FEATURE_ROLES",
    "FeatureLevel",
    "register_feature_levels",
    "feature_levels",
    "feature_module_names",
    "FeatureExtractor",
    "feature_shapes",
    "check_feature_compatibility",
]


class FeatureLevel(NamedTuple):
    """One feature level: the dotted submodule path whose output is the feature map, and its role."""

    name: str
    role: str


LevelSpec = Union[str, FeatureLevel, Tuple[str, str]]
LevelsFn = Callable[[nn.Module], Sequence[LevelSpec]]
ReplaceFn = Callable[[int, torch.Tensor], torch.Tensor]

_REGISTRY: dict[type, LevelsFn] = {}


def register_feature_levels(net_type: type, fn: LevelsFn | None = None, overwrite: bool = False) -> Any:
    """
    Register the default feature levels of a network class (subclasses inherit them).

    Args:
        net_type: the network class.
        fn: callable ``fn(net) -> [(name, role), ...]`` returning the levels of an instance, in order
            (stem, encoder shallow to deep, bottleneck, decoder deep to shallow). If omitted, returns a decorator.
        overwrite: replace an existing registration of ``net_type`` instead of raising ``ValueError``.

    Example::

        @register_feature_levels(MyNet)
        def _my_levels(net):
            return [("enc1", "encoder"), ("enc2", "encoder"), ("mid", "bottleneck"), ("dec2", "decoder")]
    """

    def _register(f: LevelsFn) -> LevelsFn:
        if net_type in _REGISTRY and not overwrite:
            raise ValueError(f"feature levels of {net_type.__name__} are already registered, use overwrite=True.")
        _REGISTRY[net_type] = f
        return f

    return _register if fn is None else _register(fn)


def _to_level(spec: LevelSpec) -> FeatureLevel:
    if isinstance(spec, str):
        return FeatureLevel(spec, UNSPECIFIED)
    name, role = spec
    if role not in FEATURE_ROLES:
        raise ValueError(f"unknown role {role!r} of level {name!r}, expected one of {FEATURE_ROLES}.")
    return FeatureLevel(str(name), role)


def _check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    roles = (roles,) if isinstance(roles, str) else tuple(roles)
    for r in roles:
        if r not in FEATURE_ROLES:
            raise ValueError(f"unknown role {r!r}, expected one of {FEATURE_ROLES}.")
    return roles


def feature_levels(
    net: nn.Module, levels: Sequence[LevelSpec] | None = None, roles: Iterable[str] | None = None
) -> list[FeatureLevel]:
    """
    The feature levels of ``net``, in order.

    Resolution order: explicit ``levels``; the registry (by class, subclasses included); the network's own
    ``feature_modules`` attribute (with ``feature_roles`` if present). Every name is checked to exist in ``net``.

    Args:
        net: the network.
        levels: explicit levels, as dotted names (role ``"unspecified"``) or ``(name, role)`` pairs.
        roles: keep only the levels with these roles, e.g. ``("encoder", "decoder")``; ``None`` keeps all.

    Raises:
        ValueError: if the levels of ``net`` are unknown (the message names its class), a name does not exist
            in ``net``, or a role is unknown.
    """
    if levels is not None:
        specs: Sequence[LevelSpec] = levels
    else:
        fn = next((_REGISTRY[t] for t in type(net).__mro__ if t in _REGISTRY), None)
        if fn is not None:
            specs = fn(net)
        elif hasattr(net, "feature_modules"):
            names = tuple(net.feature_modules)
            net_roles = tuple(getattr(net, "feature_roles", (UNSPECIFIED,) * len(names)))
            if len(net_roles) != len(names):
                raise ValueError(f"{type(net).__name__}.feature_roles and .feature_modules differ in length.")
            specs = list(zip(names, net_roles))
        else:
            raise ValueError(
                f"no feature levels known for network class {type(net).__name__}: pass explicit level names, "
                "register them with register_feature_levels, or give the class a `feature_modules` attribute."
            )
    out = [_to_level(s) for s in specs]
    known = dict(net.named_modules())
    for lv in out:
        if lv.name not in known:
            raise ValueError(f"{type(net).__name__} has no submodule named {lv.name!r}.")
    if len({lv.name for lv in out}) != len(out):
        raise ValueError(f"duplicate level names for {type(net).__name__}: {[lv.name for lv in out]}.")
    if roles is not None:
        keep = _check_roles(roles)
        out = [lv for lv in out if lv.role in keep]
    return out


def feature_module_names(
    net: nn.Module, levels: Sequence[LevelSpec] | None = None, roles: Iterable[str] | None = None
) -> list[str]:
    """The dotted submodule names of :py:func:`feature_levels`, in order."""
    return [lv.name for lv in feature_levels(net, levels, roles)]


class FeatureExtractor:
    """
    Records the outputs of a network's feature levels during its forward passes, and optionally replaces them.

    Hooks are plain ``register_forward_hook`` hooks on the level modules (MONAI's networks are not modified);
    they are active between :py:meth:`attach` and :py:meth:`remove`, or inside a ``with`` block. A forward
    pre-hook on ``net`` clears the records at the start of every forward, so :py:attr:`features` always
    belongs to the latest forward.

    Replacement: if ``replace_fn(level_index, feature) -> tensor`` is set, the returned tensor (same shape)
    becomes the module's output, so it feeds the next stage and the skip connections; the recorded feature is
    the replaced one. ``level_index`` indexes :py:attr:`levels` (i.e. after role selection).

    Args:
        net: the network.
        levels: explicit levels (dotted names or ``(name, role)`` pairs); default: see :py:func:`feature_levels`.
        roles: keep only the levels with these roles.
        replace_fn: optional ``(level_index, tensor) -> tensor`` callback; can also be set later.
        detach: record detached tensors (for logging; no gradients through :py:attr:`features`).
    """

    def __init__(
        self,
        net: nn.Module,
        levels: Sequence[LevelSpec] | None = None,
        roles: Iterable[str] | None = None,
        replace_fn: ReplaceFn | None = None,
        detach: bool = False,
    ) -> None:
        self.net = net
        self.levels: list[FeatureLevel] = feature_levels(net, levels, roles)
        self.replace_fn = replace_fn
        self.detach = detach
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._records: list[torch.Tensor | None] = [None] * len(self.levels)
        self._versions: list[int] = [0] * len(self.levels)

    @property
    def names(self) -> list[str]:
        return [lv.name for lv in self.levels]

    @property
    def roles(self) -> list[str]:
        return [lv.role for lv in self.levels]

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> FeatureExtractor:
        """Register the hooks (idempotent). Returns ``self``."""
        if self._handles:
            return self
        modules = dict(self.net.named_modules())
        self._handles.append(self.net.register_forward_pre_hook(self._on_forward_start))
        for i, lv in enumerate(self.levels):
            self._handles.append(modules[lv.name].register_forward_hook(functools.partial(self._hook, i)))
        return self

    def remove(self) -> None:
        """Remove the hooks; the last records stay readable."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FeatureExtractor:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def clear(self) -> None:
        """Forget the recorded features (frees their memory)."""
        self._records = [None] * len(self.levels)

    def _on_forward_start(self, module: nn.Module, args: Any) -> None:
        self.clear()

    def _hook(self, index: int, module: nn.Module, args: Any, output: Any) -> torch.Tensor | None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"feature level {self.levels[index].name!r} of {type(self.net).__name__} returned "
                f"{type(output).__name__}, expected a tensor."
            )
        new = None
        if self.replace_fn is not None:
            new = self.replace_fn(index, output)
            if not isinstance(new, torch.Tensor) or new.shape != output.shape:
                got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise ValueError(
                    f"replace_fn must return a tensor of shape {tuple(output.shape)} for level "
                    f"{self.levels[index].name!r}, got {got}."
                )
            output = new
        # a module called again (e.g. recomputation by activation checkpointing) overwrites its record.
        self._records[index] = output.detach() if self.detach else output
        self._versions[index] = _version(output)
        return new

    @property
    def features(self) -> list[torch.Tensor]:
        """
        The level outputs of the latest forward, in level order, shapes ``(B, C_i, *S_i)``.

        Raises:
            RuntimeError: if a level was not reached in the latest forward, or its output was modified in place
                afterwards (the recorded values would be wrong; use non-inplace activations after that level).
        """
        out = []
        for i, (lv, t) in enumerate(zip(self.levels, self._records)):
            if t is None:
                raise RuntimeError(
                    f"feature level {lv.name!r} of {type(self.net).__name__} was not recorded: run a forward with "
                    "the extractor attached first."
                )
            if _version(t) != self._versions[i]:
                raise RuntimeError(
                    f"the output of level {lv.name!r} of {type(self.net).__name__} was modified in place after it "
                    "was recorded."
                )
            out.append(t)
        return out

    def named_features(self) -> dict[str, torch.Tensor]:
        """``{level name: feature}`` of the latest forward, in level order."""
        return dict(zip(self.names, self.features))

    def select(self, roles: Iterable[str]) -> list[torch.Tensor]:
        """The recorded features whose level role is in ``roles``, in level order."""
        keep = _check_roles(roles)
        return [f for f, r in zip(self.features, self.roles) if r in keep]

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, list[torch.Tensor]]:
        """Run ``net(*args, **kwargs)`` with the hooks attached; return ``(output, features)``."""
        was_attached = self.attached
        self.attach()
        try:
            output = self.net(*args, **kwargs)
        finally:
            if not was_attached:
                self.remove()
        return output, self.features


def _version(t: torch.Tensor) -> int:
    # inference-mode tensors have no version counter (and cannot be modified in place outside inference mode).
    return -1 if t.is_inference() else int(t._version)


def _param_device(net: nn.Module) -> torch.device:
    p = next(iter(net.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def feature_shapes(
    net: nn.Module,
    input_shape: Sequence[int],
    levels: Sequence[LevelSpec] | None = None,
    roles: Iterable[str] | None = None,
) -> list[tuple[int, tuple[int, ...]]]:
    """
    ``(channels, spatial shape)`` of every feature level, from one forward of a zero input in eval mode without
    gradients (the training mode is restored afterwards).

    Args:
        net: the network.
        input_shape: full input shape ``(B, C_in, *S)``.
        levels: explicit levels, see :py:func:`feature_levels`.
        roles: keep only the levels with these roles.
    """
    x = torch.zeros(tuple(int(s) for s in input_shape), device=_param_device(net))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            _, feats = FeatureExtractor(net, levels, roles, detach=True)(x)
    finally:
        net.train(was_training)
    return [(int(f.shape[1]), tuple(int(s) for s in f.shape[2:])) for f in feats]


def check_feature_compatibility(
    nets: Sequence[nn.Module],
    input_shape: Sequence[int],
    levels: Sequence[Sequence[LevelSpec] | None] | None = None,
    roles: Iterable[str] | None = None,
    same_channels: bool = False,
) -> list[list[tuple[int, tuple[int, ...]]]]:
    """
    Check that networks give feature levels that can be fused level by level: the same number of levels, the same
    roles and spatial shapes (and channels if ``same_channels``) at every level, for an input of ``input_shape``.

    Args:
        nets: the networks (e.g. the learners of an ensemble).
        input_shape: full input shape ``(B, C_in, *S)``.
        levels: optional explicit levels per network (``None`` entries use the defaults).
        roles: keep only the levels with these roles.
        same_channels: also require equal channels per level (not needed when projections are built).

    Returns:
        per network, the ``(channels, spatial shape)`` of its levels.

    Raises:
        ValueError: describing the first mismatch.
    """
    per_net_levels = list(levels) if levels is not None else [None] * len(nets)
    if len(per_net_levels) != len(nets):
        raise ValueError(f"got {len(per_net_levels)} level lists for {len(nets)} networks.")
    all_levels = [feature_levels(n, lv, roles) for n, lv in zip(nets, per_net_levels)]
    shapes = [feature_shapes(n, input_shape, lv, None) for n, lv in zip(nets, all_levels)]
    ref_net, ref_lv, ref_sh = type(nets[0]).__name__, all_levels[0], shapes[0]
    for k in range(1, len(nets)):
        name = f"network {k} ({type(nets[k]).__name__})"
        if len(all_levels[k]) != len(ref_lv):
            raise ValueError(f"{name} has {len(all_levels[k])} levels, network 0 ({ref_net}) has {len(ref_lv)}.")
        for i, (lv, r_lv, sh, r_sh) in enumerate(zip(all_levels[k], ref_lv, shapes[k], ref_sh)):
            if lv.role != r_lv.role or sh[1] != r_sh[1] or (same_channels and sh[0] != r_sh[0]):
                raise ValueError(
                    f"level {i} differs: {name} {lv.name!r} ({lv.role}, channels {sh[0]}, spatial {sh[1]}) vs "
                    f"network 0 ({ref_net}) {r_lv.name!r} ({r_lv.role}, channels {r_sh[0]}, spatial {r_sh[1]})."
                )
    return shapes


# ---- defaults for MONAI networks -----------------------------------------------------------------------------


@register_feature_levels(BasicUNet)
def _basic_unet_levels(net: nn.Module) -> list[FeatureLevel]:
    """
    ``conv_0`` (full resolution, fea[0]) and ``down_1..3`` are the encoder (each feeds a skip), ``down_4`` the
    bottleneck (1/16, fea[4]), ``upcat_4..1`` the decoder (fea[3], fea[2], fea[1], fea[5]). ``final_conv`` is the head.
    """
    enc = [FeatureLevel(n, ENCODER) for n in ("conv_0", "down_1", "down_2", "down_3")]
    dec = [FeatureLevel(n, DECODER) for n in ("upcat_4", "upcat_3", "upcat_2", "upcat_1")]
    return enc + [FeatureLevel("down_4", BOTTLENECK)] + dec


def _unwrap(prefix: str, module: nn.Module) -> tuple[str, nn.Module]:
    # CheckpointUNet wraps sub-blocks in ActivationCheckpointWrapper(module=...).
    while isinstance(module, ActivationCheckpointWrapper):
        prefix, module = f"{prefix}.module", module.module
    return prefix, module


@register_feature_levels(UNet)
def _unet_levels(net: nn.Module) -> list[FeatureLevel]:
    """
    MONAI's ``UNet`` nests ``Sequential(down, SkipConnection(sub), up)`` blocks: ``model.0``, ``model.1.submodule.0``,
    ... are the down layers (encoder, channels[0..n-2], 1/2, 1/4, ... with stride 2), the innermost
    ``SkipConnection.submodule`` is the bottom layer (bottleneck, channels[-1], at the deepest encoder's
    resolution), and the up layers ``....2`` from the inside out are the decoder (channels[n-3..0]). The outermost
    up layer ``model.2`` produces the logits and is not a level, so there are n-1 encoder and n-2 decoder levels.
    For ``CheckpointUNet`` the levels are the checkpoint wrappers (same outputs).
    """
    down, up = [], []
    prefix, node = "model", net.model
    while True:
        inner_prefix, inner = _unwrap(prefix, node)  # type: ignore[arg-type]
        if not (isinstance(inner, nn.Sequential) and len(inner) == 3 and isinstance(inner[1], SkipConnection)):
            break
        down.append(f"{inner_prefix}.0")
        up.append(f"{inner_prefix}.2")
        prefix, node = f"{inner_prefix}.1.submodule", inner[1].submodule
    if not down:
        raise ValueError(f"unexpected structure of {type(net).__name__}.model, pass explicit level names.")
    enc = [FeatureLevel(n, ENCODER) for n in down]
    dec = [FeatureLevel(n, DECODER) for n in reversed(up[1:])]  # up[0] is the output layer
    return enc + [FeatureLevel(prefix, BOTTLENECK)] + dec


@register_feature_levels(SegResNet)
def _segresnet_levels(net: nn.Module) -> list[FeatureLevel]:
    """
    ``convInit`` is the stem (full resolution, init_filters; ``down_layers.0`` at the same resolution feeds the skip),
    ``down_layers.0..n-2`` the encoder (init_filters * 2**i at 1/2**i), ``down_layers.{n-1}`` the bottleneck, and
    ``up_layers.0..m-1`` (after up-sampling and skip addition) the decoder, deep to shallow.
    """
    n_down, n_up = len(net.down_layers), len(net.up_layers)  # type: ignore[arg-type]
    enc = [FeatureLevel(f"down_layers.{i}", ENCODER) for i in range(n_down - 1)]
    dec = [FeatureLevel(f"up_layers.{i}", DECODER) for i in range(n_up)]
    return [FeatureLevel("convInit", STEM)] + enc + [FeatureLevel(f"down_layers.{n_down - 1}", BOTTLENECK)] + dec
