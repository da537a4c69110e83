"""Suggestive annotation with an ensemble (DESIGN §1.5, the QSA method): plain tensor math.

- uncertainty of an image = the members' per-voxel disagreement, averaged over the image;
- descriptor of an image = the spatial mean of the deepest encoder feature map;
- among the ``top_n`` most uncertain unlabeled images, greedily pick ``k`` maximizing the
  representativeness ``F(S) = sum_{x in pool} max_{i in S} cos(d_i, d_x)`` (a max-cover).

Nothing here imports MONAI Label: the app only stores and reads these numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from qddens_monai.ensemble import learner_disagreement

__all__ = [
    "DISAGREEMENT_KINDS",
    "voxel_disagreement",
    "image_uncertainty",
    "cosine_similarity_matrix",
    "representativeness",
    "suggest",
]

DISAGREEMENT_KINDS = ("variance", "entropy")


def voxel_disagreement(probs: torch.Tensor, kind: str = "variance") -> torch.Tensor:
    """Per-voxel disagreement of K members.

    Args:
        probs: (K, C, *S) member probabilities (softmax over C) of one image.
        kind: ``"variance"``: variance across the K members, summed over the C classes (0 when
            all members agree); ``"entropy"``: entropy of the members' mean (in nats).

    Returns:
        (*S) float tensor.
    """
    if probs.ndim < 3:
        raise ValueError(f"expected (K, C, *S) member probabilities, got shape {tuple(probs.shape)}.")
    if kind not in DISAGREEMENT_KINDS:
        raise ValueError(f"kind must be one of {DISAGREEMENT_KINDS}, got {kind!r}.")
    return learner_disagreement(probs, "class_variance" if kind == "variance" else kind)


def image_uncertainty(probs: torch.Tensor, kind: str = "variance") -> float:
    """The image's uncertainty: :func:`voxel_disagreement` averaged over all voxels."""
    return float(voxel_disagreement(probs, kind).mean())


def cosine_similarity_matrix(a: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, D) and (M, D) descriptors -> (N, M) cosine similarities (``b`` defaults to ``a``)."""
    a = torch.nn.functional.normalize(a.double(), dim=1)
    b = a if b is None else torch.nn.functional.normalize(b.double(), dim=1)
    return a @ b.T


def representativeness(selected: torch.Tensor, pool: torch.Tensor) -> float:
    """``F(S) = sum_{x in pool} max_{i in S} cos(d_i, d_x)``.

    Args:
        selected: (|S|, D) descriptors of the selected images (|S| >= 1).
        pool: (N, D) descriptors of the pool to cover.
    """
    return float(cosine_similarity_matrix(selected, pool).max(dim=0).values.sum())


def suggest(
    uncertainty: Sequence[float],
    descriptors: torch.Tensor,
    top_n: int = 4,
    k: int = 1,
    covered: Optional[torch.Tensor] = None,
) -> list[int]:
    """Indices of the images to annotate next, in the order they were picked.

    Args:
        uncertainty: (N,) uncertainty of every unlabeled image of the pool.
        descriptors: (N, D) their descriptors, same order.
        top_n: size of the short list of most uncertain images (clipped to N).
        k: how many to pick from the short list (clipped to ``top_n``).
        covered: optional (M, D) descriptors that already cover the pool (e.g. labeled images),
            so an image similar to them adds little; ``None`` (the method as published) starts
            from an empty selection.
    """
    n = len(uncertainty)
    if descriptors.ndim != 2 or descriptors.shape[0] != n:
        raise ValueError(f"descriptors must be (N={n}, D), got shape {tuple(descriptors.shape)}.")
    if n == 0:
        return []
    if top_n < 1 or k < 1:
        raise ValueError(f"top_n and k must be positive, got top_n={top_n}, k={k}.")
    order = sorted(range(n), key=lambda i: (-float(uncertainty[i]), i))
    short = order[: min(top_n, n)]
    sim = cosine_similarity_matrix(descriptors)  # (N, N): candidate i covers pool image x by sim[i, x]
    cover = torch.zeros(n, dtype=sim.dtype)  # current max_{s in S} cos(d_s, d_x); 0 for an empty S
    if covered is not None and covered.numel():
        cover = cosine_similarity_matrix(covered, descriptors).max(dim=0).values.clamp_min(0)
    picked: list[int] = []
    for _ in range(min(k, len(short))):
        # Marginal gain of each remaining candidate; ties go to the more uncertain (earlier in `short`).
        gains = [(float(torch.maximum(cover, sim[i]).sum() - cover.sum()), -pos, i)
                 for pos, i in enumerate(short) if i not in picked]
        _, _, best = max(gains)
        picked.append(best)
        cover = torch.maximum(cover, sim[best])
    return picked
