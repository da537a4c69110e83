"""How much an ensemble's learners disagree, per voxel: the one definition the handlers, metrics and
active learning use (each picks its ``measure``)."""

from __future__ import annotations

from typing import Union

import torch

__all__ = ["DISAGREEMENT_MEASURES", "PAIR_MEASURES", "learner_disagreement", "learner_pairs", "max_disagreement"]

#: Per-voxel measures of :func:`learner_disagreement`.
DISAGREEMENT_MEASURES = ("pairwise", "std", "variance", "class_variance", "entropy", "label")
#: Measures defined per pair of learners (``per_pair=True`` keeps the pairs apart).
PAIR_MEASURES = ("pairwise", "label")


def learner_pairs(num_learners: int) -> list[tuple[int, int]]:
    """The learner pairs ``(i, j)``, ``i < j``, in the order of ``per_pair`` maps."""
    return [(i, j) for i in range(num_learners) for j in range(i + 1, num_learners)]


def _foreground(p: torch.Tensor, foreground: Union[int, str, None], activation: str) -> torch.Tensor:
    """(K, F, *S) foreground probabilities: one map (F = 1) unless ``foreground="classes"``."""
    if isinstance(foreground, int):
        return p[:, foreground : foreground + 1]
    if foreground == "classes":  # every foreground class: softmax 1..C-1, sigmoid all
        if activation == "softmax" and p.shape[1] < 2:
            raise ValueError("softmax output needs at least 2 channels (background + a class).")
        return p[:, 1:] if activation == "softmax" else p
    if foreground is not None:
        raise ValueError(f"foreground must be a channel, 'classes' or None, got {foreground!r}.")
    if p.shape[1] == 1:
        return p
    if activation == "sigmoid":
        return p.amax(dim=1, keepdim=True)
    return 1.0 - p[:, :1]  # softmax: anything but the background


def _labels(p: torch.Tensor, activation: str, threshold: float) -> torch.Tensor:
    # softmax: (K, *S) argmax; sigmoid: (K, C, *S) thresholded per channel
    return p.argmax(dim=1) if activation == "softmax" else p >= threshold


def learner_disagreement(
    probabilities: torch.Tensor,
    measure: str = "pairwise",
    foreground: Union[int, str, None] = None,
    activation: str = "softmax",
    threshold: float = 0.5,
    per_pair: bool = False,
) -> torch.Tensor:
    """
    Per-voxel disagreement of K learners.

    Measures:

    - ``"pairwise"``: mean over learner pairs of ``|p_i - p_j|``, ``p`` the foreground probability (averaged
      over the foreground channels with ``foreground="classes"``);
    - ``"std"`` / ``"variance"``: standard deviation / variance of the K foreground probabilities;
    - ``"class_variance"``: variance of the K probabilities, summed over all C channels (0 when all agree);
    - ``"entropy"``: entropy (nats) of the learners' mean probability over the C channels;
    - ``"label"``: fraction of learner pairs whose predicted label differs (softmax: argmax; sigmoid:
      ``threshold`` in any channel).

    Args:
        probabilities: ``(K, C, *S)`` every learner's probabilities of one sample (``QMENet.probabilities``).
        measure: one of :data:`DISAGREEMENT_MEASURES`.
        foreground: the foreground probability: a channel index; ``"classes"`` (every foreground channel);
            ``None``: the only channel when ``C == 1``, ``1 - p[0]`` for a softmax head, the maximum over the
            channels for a sigmoid head.
        activation: the heads' activation, ``"softmax"`` or ``"sigmoid"``.
        threshold: sigmoid threshold of ``"label"``.
        per_pair: for ``"pairwise"`` and ``"label"``, one map per learner pair (see :func:`learner_pairs`).

    Returns:
        ``(*S)``, between 0 and :func:`max_disagreement` (``"entropy"``: ``log C``); with ``per_pair``
        ``(K (K - 1) / 2, *S)``.
    """
    if measure not in DISAGREEMENT_MEASURES:
        raise ValueError(f"measure must be one of {DISAGREEMENT_MEASURES}, got {measure!r}.")
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")
    if per_pair and measure not in PAIR_MEASURES:
        raise ValueError(f"per_pair needs a pair measure {PAIR_MEASURES}, got {measure!r}.")
    if probabilities.ndim < 3:
        raise ValueError(f"expected (K, C, *S) probabilities, got shape {tuple(probabilities.shape)}.")
    p = probabilities if probabilities.is_floating_point() else probabilities.float()
    if measure == "class_variance":
        return p.var(dim=0, unbiased=False).sum(dim=0)
    if measure == "entropy":
        mean = p.mean(dim=0)
        return -(mean * torch.log(mean.clamp_min(1e-12))).sum(dim=0)
    k = p.shape[0]
    if measure == "label":
        labels = _labels(p, activation, threshold)
        maps = [labels[i] != labels[j] for i, j in learner_pairs(k)]
        maps = [m.any(0) if activation == "sigmoid" else m for m in maps]
        maps = [m.to(p.dtype) for m in maps]
    else:
        fg = _foreground(p, foreground, activation)
        if measure in ("variance", "std"):
            var = fg.var(dim=0, unbiased=False).mean(dim=0)
            return var if measure == "variance" else var.sqrt()
        maps = [(fg[i] - fg[j]).abs().mean(dim=0) for i, j in learner_pairs(k)]
    if per_pair:
        return torch.stack(maps) if maps else p.new_zeros((0, *p.shape[2:]))
    if not maps:  # one learner agrees with itself
        return p.new_zeros(p.shape[2:])
    total = maps[0]
    for m in maps[1:]:
        total = total + m
    return total / len(maps)


def max_disagreement(num_learners: int, measure: str = "pairwise") -> float:
    """Largest possible value of :func:`learner_disagreement` for ``num_learners`` learners (a colour scale).

    ``"class_variance"`` is given for two classes, ``"entropy"`` is not bounded by K (``log C``): 1.0."""
    k = int(num_learners)
    if measure not in DISAGREEMENT_MEASURES:
        raise ValueError(f"measure must be one of {DISAGREEMENT_MEASURES}, got {measure!r}.")
    if k < 2 or measure == "entropy":
        return 1.0
    if measure == "variance":
        return 0.25
    if measure == "class_variance":
        return 0.5
    if measure == "std":
        return 0.5
    # half the learners say 1, half 0: the most disagreeing pairs
    return (k // 2) * (k - k // 2) / (k * (k - 1) / 2)
