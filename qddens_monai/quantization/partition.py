"""Weight partition strategies of the incremental (INQ-style) schedule.

At each step a strategy picks which of a tensor's still-free weights are quantized and
frozen. Every strategy takes exactly the number of weights the accumulated portion asks
for, so the portions are met per tensor up to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["PARTITIONS", "select_weights_to_freeze", "step_generator", "check_portions"]

PARTITIONS = ("magnitude", "random", "two_stage")


def check_portions(portions: Sequence[float]) -> tuple[float, ...]:
    """Validate accumulated portions: strictly increasing in (0, 1], ending at 1.0."""
    try:
        values = tuple(float(p) for p in portions)
    except (TypeError, ValueError):
        raise ValueError(f"portions must be a sequence of numbers, got {portions!r}.") from None
    if not values:
        raise ValueError("portions must not be empty; e.g. (0.3, 0.6, 0.8, 1.0).")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"portions must be strictly increasing, got {list(values)}.")
    if values[0] <= 0.0:
        raise ValueError(f"portions must be positive, got {list(values)}.")
    if values[-1] != 1.0:
        raise ValueError(f"portions must end at 1.0 (every weight quantized), got {list(values)}.")
    return values


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, step), so a resumed run draws the same."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) * 7_919) % (2**63 - 1))


def _descending_magnitude(w: torch.Tensor, free_idx: torch.Tensor) -> torch.Tensor:
    order = torch.sort(w.reshape(-1)[free_idx].abs(), descending=True, stable=True).indices
    return free_idx[order]


def select_weights_to_freeze(
    w: torch.Tensor, mask: torch.Tensor, count: int, partition: str, generator: torch.Generator
) -> torch.Tensor:
    """Flat indices of ``count`` free weights of ``w`` to quantize and freeze now.

    Args:
        w: the current (latent) weight tensor.
        mask: bool tensor, same shape as ``w``; True where a weight is already frozen.
        count: how many free weights to take.
        partition: ``"magnitude"`` (INQ: the largest free weights first), ``"random"``
            (INQ-random: uniformly among the free weights) or ``"two_stage"`` (D2ED2Q: the
            ``2 * count`` largest free weights are preselected, a random half of them taken).
        generator: CPU random generator for the random strategies.
    """
    free_idx = torch.nonzero(~mask.reshape(-1), as_tuple=False).reshape(-1).cpu()
    count = min(int(count), free_idx.numel())
    if count <= 0:
        return free_idx[:0]
    if count == free_idx.numel():
        return free_idx
    w = w.detach().cpu()
    if partition == "magnitude":
        return _descending_magnitude(w, free_idx)[:count]
    if partition == "random":
        return free_idx[torch.randperm(free_idx.numel(), generator=generator)[:count]]
    if partition == "two_stage":
        candidates = _descending_magnitude(w, free_idx)[: min(2 * count, free_idx.numel())]
        # The public code draws Bernoulli(0.5) over the candidates; an exact random half
        # keeps the accumulated portions exact.
        return candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
    raise ValueError(f"Unknown partition {partition!r}; choose one of {list(PARTITIONS)}.")
