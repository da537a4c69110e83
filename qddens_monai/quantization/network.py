"""Quantize, step and freeze the weights of any network."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from typing import Optional, Union

from torch import nn
from torch.nn.utils import parametrize

from .parametrizations import IncrementalQuantization, StraightThroughQuantization
from .partition import PARTITIONS, check_portions
from .quantizers import get_quantizer

__all__ = [
    "DEFAULT_PORTIONS",
    "QUANTIZABLE_LAYERS",
    "quantize_network",
    "quantized_layers",
    "quantization_step",
    "quantization_progress",
    "set_portions",
    "is_quantization_complete",
    "freeze",
]

DEFAULT_PORTIONS = (0.3, 0.6, 0.8, 1.0)
#: The layers whose weights are quantized; norms, running statistics and biases never are.
QUANTIZABLE_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)

WeightQuantization = Union[IncrementalQuantization, StraightThroughQuantization]


def _channel_dim(layer: nn.Module) -> int:
    # Transposed convs store weights as (in, out / groups, *kernel).
    return 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0


def _weight_quantization(layer: nn.Module) -> Optional[WeightQuantization]:
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    for p in layer.parametrizations["weight"]:
        if isinstance(p, (IncrementalQuantization, StraightThroughQuantization)):
            return p
    return None


def quantized_layers(net: nn.Module) -> Iterator[tuple[str, nn.Module, WeightQuantization]]:
    """``(name, layer, parametrization)`` for every quantized weight of ``net``, in module order."""
    for name, layer in net.named_modules():
        q = _weight_quantization(layer)
        if q is not None:
            yield name, layer, q


def quantize_network(
    net: nn.Module,
    method: str = "power_of_two",
    bits: int = 5,
    partition: str = "magnitude",
    portions: Sequence[float] = DEFAULT_PORTIONS,
    seed: int = 0,
    incremental: Optional[bool] = None,
    exclude: Sequence[str] = (),
) -> nn.Module:
    """Quantize the conv, transposed-conv and linear weights of ``net`` in place.

    Works on any architecture (MONAI ``UNet``, ``BasicUNet``, ``SegResNet``, CE-Net, ...) in
    1D/2D/3D: a parametrization is registered on each such layer's ``weight``; norm layers,
    running statistics and biases are left in float. Everything is validated before any
    layer is touched.

    Args:
        net: the network, modified in place and returned.
        method: ``"power_of_two"`` (INQ), ``"log_minmax"`` (D2ED2Q), ``"dorefa"``,
            ``"ternary"`` (TWN) or ``"uniform"``.
        bits: storage bits per weight, sign included (ternary: 2).
        partition: how the incremental schedule picks weights to freeze: ``"magnitude"``,
            ``"random"`` or ``"two_stage"``.
        portions: accumulated portions of each tensor quantized after each step; strictly
            increasing, ending at 1.0.
        seed: seed of the random partitions; each tensor derives its own from it.
        incremental: ``True`` for the INQ-style schedule (frozen partitions, advanced by
            :func:`quantization_step`), ``False`` for straight-through quantization in every
            forward; ``None`` takes the method's published schedule (incremental for
            ``power_of_two`` and ``log_minmax``).
        exclude: ``fnmatch`` patterns of module names to leave in float, e.g. ``["*.final_conv*"]``.

    Raises:
        ValueError: unknown method or partition, bits out of range, bad portions, no
            quantizable layer, or a layer that is already quantized.
    """
    quantizer = get_quantizer(method, bits)
    if partition not in PARTITIONS:
        raise ValueError(f"Unknown partition {partition!r}; choose one of {list(PARTITIONS)}.")
    portions = check_portions(portions)
    if incremental is None:
        incremental = quantizer.incremental
    targets = [(n, m) for n, m in net.named_modules() if isinstance(m, QUANTIZABLE_LAYERS)]
    targets = [(n, m) for n, m in targets if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not targets:
        raise ValueError(f"{type(net).__name__} has no conv, transposed-conv or linear layer to quantize.")
    already = [n for n, m in targets if _weight_quantization(m) is not None]
    if already:
        raise ValueError(f"Layers already quantized: {already[:5]}{' ...' if len(already) > 5 else ''}.")
    for index, (_, layer) in enumerate(targets):
        channel_dim = _channel_dim(layer)
        if incremental:
            q: nn.Module = IncrementalQuantization(
                quantizer, layer.weight, channel_dim, portions, partition, seed=int(seed) * 100_003 + index
            )
        else:
            q = StraightThroughQuantization(quantizer, channel_dim)
        parametrize.register_parametrization(layer, "weight", q)
    return net


def quantization_progress(net: nn.Module) -> tuple[int, int]:
    """``(steps done, steps in the schedule)`` of the incremental quantization in ``net``.

    Straight-through layers have no steps; a net with none of either returns ``(0, 0)``.
    """
    steps = [(int(q.step), q.num_steps) for _, _, q in quantized_layers(net) if isinstance(q, IncrementalQuantization)]
    if not steps:
        return 0, 0
    return max(s for s, _ in steps), max(n for _, n in steps)


def is_quantization_complete(net: nn.Module) -> bool:
    """True when every quantized weight of ``net`` lies entirely on its level set."""
    return all(q.complete for _, _, q in quantized_layers(net))


def set_portions(net: nn.Module, portions: Sequence[float]) -> tuple[float, ...]:
    """Give every incremental quantization in ``net`` the schedule ``portions`` (before its first step).

    The schedule is part of each layer's state (a buffer), so a checkpoint carries it; this sets it on a
    freshly built network, e.g. from a training config, without rebuilding the network.

    Raises:
        ValueError: bad portions, or a layer already stepped on another schedule (changing the portions
            mid-schedule would change which share of the weights the remaining steps freeze).
    """
    portions = check_portions(portions)
    for name, _, q in quantized_layers(net):
        if not isinstance(q, IncrementalQuantization):
            continue
        if int(q.step) > 0 and q.portion_values != tuple(round(p, 6) for p in portions):
            raise ValueError(
                f"{name or 'the network'} is at step {int(q.step)} of the schedule {list(q.portion_values)}; "
                f"it cannot continue on {list(portions)}. Resume with the portions it was trained with."
            )
        q.portions = q.portions.new_tensor(portions)
    return portions


def quantization_step(net: nn.Module) -> int:
    """Advance every incremental quantization in ``net`` by one step; returns the steps done.

    Each tensor freezes the share of its free weights that its next portion asks for. The
    choice depends only on the weights, the tensor's seed and the step, so the same step
    after a resume freezes the same weights.
    """
    for _name, layer, q in quantized_layers(net):
        if isinstance(q, IncrementalQuantization):
            q.advance(layer.parametrizations["weight"].original)
    return quantization_progress(net)[0]


def freeze(net: nn.Module, require_complete: bool = True) -> nn.Module:
    """Turn a quantized ``net`` into plain layers whose float weights lie on the level sets.

    No parametrization is left, so the result is ``torch.jit.script``-able and its state dict
    has the plain ``weight`` keys; outputs equal the quantized network's.

    Args:
        net: the quantized network, modified in place and returned.
        require_complete: refuse to freeze while an incremental schedule still has free
            (float) weights. ``False`` strips the parametrizations anyway, e.g. to load a
            packed or frozen state dict into a freshly built quantized network.

    Raises:
        RuntimeError: the schedule has not finished (checked before any layer is changed).
    """
    layers = list(quantized_layers(net))
    if require_complete:
        pending = [name for name, _, q in layers if not q.complete]
        if pending:
            done, total = quantization_progress(net)
            raise RuntimeError(
                f"Cannot freeze: the incremental quantization schedule is at step {done} of {total}; "
                f"{len(pending)} tensors (e.g. {pending[0]!r}) still have float weights. "
                "Run the remaining quantization steps first."
            )
    for _, layer, _ in layers:
        _detach_parametrized_class(layer)
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return net


def _detach_parametrized_class(layer: nn.Module) -> None:
    # parametrize gives each layer a generated class holding the ``weight`` property, and
    # deepcopy shares that class between copies; removing the property from it would break
    # every copy. A private sibling class keeps the removal local to this layer.
    cls = layer.__class__
    namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    layer.__class__ = type(cls.__name__, cls.__bases__, namespace)
