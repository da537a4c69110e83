"""Which process of a ``torchrun`` job this is: one answer for every handler and writer of the package."""

from __future__ import annotations

import torch

__all__ = ["rank_and_world_size", "is_main_process"]


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialized ``torch.distributed`` process group, else ``(0, 1)``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 of a distributed run, or the only process: the one that writes shared files."""
    return rank_and_world_size()[0] == 0
