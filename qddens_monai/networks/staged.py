"""
The staged backbone contract: an encoder-decoder network that runs one resolution level at a time.

An ensemble that fuses its learners' features at every level (:class:`~qddens_monai.networks.QMENet`) needs
to stop each learner after a level, look at (and for the meta learner replace) that level's map, and go on.
A *staged backbone* makes this plain code, which ``torch.jit.script`` accepts:

- ``feature_roles``: the role of each level, in order: ``"stem"``, ``"encoder"`` (shallow to deep),
  ``"bottleneck"``, ``"decoder"`` (deep to shallow). The head producing the logits is not a level.
- ``feature_modules``: the dotted name of the submodule whose output is each level's map (so the hook
  adapter of :mod:`qddens_monai.networks.features` finds the same levels).
- ``forward_level(index, features)``: level ``index``'s map, from ``features = [input, level 0, ...,
  level index-1]`` (skips are earlier entries of the list).
- ``forward_head(features)``: the logits, from ``[input, every level]``.

Running ``forward_level`` for every level and then ``forward_head`` gives the same output as the
network's own ``forward``; a map replaced in ``features`` feeds everything downstream (next level and skips).

:class:`~qddens_monai.networks.CENet` implements the contract itself; MONAI's ``UNet`` and ``BasicUNet``
get adapters over their own submodules (:mod:`qddens_monai.networks.staged_monai`), registered here so
:func:`as_staged` finds them. Other networks run through forward hooks (not scriptable; export by tracing).
"""

# No `from __future__ import annotations`: TorchScript reads the class annotations (num_levels: int).
from collections.abc import Callable, Iterable
from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = [
    "STEM",
    "ENCODER",
    "BOTTLENECK",
    "DECODER",
    "UNSPECIFIED",
    "FEATURE_ROLES",
    "StagedBackbone",
    "StageView",
    "is_staged",
    "as_staged",
    "register_staged_adapter",
]

STEM = "stem"
ENCODER = "encoder"
BOTTLENECK = "bottleneck"
DECODER = "decoder"
UNSPECIFIED = "unspecified"
FEATURE_ROLES: tuple[str, ...] = (STEM, ENCODER, BOTTLENECK, DECODER, UNSPECIFIED)


class StagedBackbone(nn.Module):
    """
    Base class of the staged backbones: ``forward`` runs the levels in order, then the head.

    Subclasses set ``feature_modules``, ``feature_roles`` and ``num_levels`` (an ``int`` attribute, for
    TorchScript) and implement :meth:`forward_level` and :meth:`forward_head`.

    Shapes:
        input ``(B, in_channels, *S)``; level ``i`` ``(B, C_i, *S_i)``; output ``(B, out_channels, *S)``.
    """

    feature_modules: tuple[str, ...] = ()
    feature_roles: tuple[str, ...] = ()
    num_levels: int = 0
    # descriptions for Python (level matching, hooks); scripted code needs only num_levels
    __jit_ignored_attributes__ = ["feature_modules", "feature_roles", "backbone_name"]

    def forward_level(self, index: int, features: List[torch.Tensor]) -> torch.Tensor:
        """Level ``index``'s map from ``features = [input, level 0, ..., level index-1]``."""
        raise NotImplementedError

    def forward_head(self, features: List[torch.Tensor]) -> torch.Tensor:
        """The logits from ``features = [input, level 0, ..., last level]``."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """``(logits, [level 0, ..., last level])`` of one forward."""
        features: List[torch.Tensor] = [x]
        for i in range(self.num_levels):
            features.append(self.forward_level(i, features))
        return self.forward_head(features), features[1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


class StageView(nn.ModuleList):
    """
    Modules that are registered elsewhere in the same network, listed again in stage order.

    TorchScript can only iterate registered submodules; a nested network (MONAI's ``UNet``) has no flat list
    of its stages. The view registers them a second time, but owns no state: it adds nothing to
    ``state_dict`` (keys stay those of the wrapped network), ignores the keys it would miss on loading,
    and leaves ``.to()`` / ``apply`` to the modules' real place. List it *after* the real modules, so
    ``named_modules`` and ``named_parameters`` name them by their real path.
    """

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        super().__init__(modules)
        self._prefix = ""
        self.register_load_state_dict_post_hook(StageView._ignore_own_missing_keys)

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        return {} if destination is None else destination

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        self._prefix = prefix  # the modules' values are loaded through their real path

    @staticmethod
    def _ignore_own_missing_keys(module: nn.Module, incompatible: Any) -> None:
        prefix = module._prefix  # type: ignore[union-attr]
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith(prefix)]

    def _apply(self, fn: Callable, recurse: bool = True) -> "StageView":  # type: ignore[override]
        return self

    def apply(self, fn: Callable[[nn.Module], None]) -> "StageView":  # type: ignore[override]
        return self

    def __repr__(self) -> str:
        return f"StageView({', '.join(type(m).__name__ for m in self)})"


def is_staged(net: nn.Module) -> bool:
    """Whether ``net`` follows the staged backbone contract."""
    return all(hasattr(net, a) for a in ("forward_level", "forward_head", "feature_modules", "feature_roles"))


_ADAPTERS: dict[type, Callable[[nn.Module], Optional[nn.Module]]] = {}


def register_staged_adapter(net_type: type, adapter: Callable[[nn.Module], Optional[nn.Module]]) -> None:
    """Make :func:`as_staged` wrap instances of ``net_type`` (and subclasses) with ``adapter(net)``.

    The adapter must keep the network's state dict keys (register the network's own submodules under their
    own names) and may return ``None`` for instances it cannot stage (they fall back to hooks)."""
    _ADAPTERS[net_type] = adapter


def as_staged(net: nn.Module) -> Optional[nn.Module]:
    """``net`` itself if it is staged, a staged adapter over its submodules if one is registered for its
    class, else ``None`` (the network can only be run through forward hooks)."""
    if is_staged(net):
        return net
    from . import staged_monai  # noqa: F401  (registers the MONAI UNet / BasicUNet adapters)

    adapter = next((_ADAPTERS[t] for t in type(net).__mro__ if t in _ADAPTERS), None)
    return None if adapter is None else adapter(net)
