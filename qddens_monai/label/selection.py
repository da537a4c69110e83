"""Suggestive annotation with an ensemble (DESIGN §1.5, the QSA method): plain tensor math.

- uncertainty of an image = the members' per-voxel disagreement, averaged over the image;
- descriptor of an image = the spatial mean of the deepest encoder feature map;
- among the ``top_n`` most uncertain unlabeled images, greedily pick ``k`` maximizing the
  representativeness ``F(S) = sum_{x in pool} max_{i in S} cos(d_i, d_x)`` (a max-cover).

Nothing here imports MONAI Label: the app only stores and reads these numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

import torch

from ..ensemble import learner_disagreement

__all__ = [
    "DISAGREEMENT_KINDS",
    "voxel_disagreement",
    "image_uncertainty",
    "cosine_similarity_matrix",
    "representativeness",
    "suggest",
    "SuggestiveConfig",
    "select_batch",
    "defined_descriptor",
    "CONSTANT_FEATURE_TOL",
]

DISAGREEMENT_KINDS = ("variance", "entropy")

#: Largest absolute feature mean of an image counted as "no feature at all" (see :func:`defined_descriptor`).
CONSTANT_FEATURE_TOL = 1e-4


def defined_descriptor(features: torch.Tensor, tol: float = CONSTANT_FEATURE_TOL) -> torch.Tensor:
    """The descriptor of an image from its (D,) mean features: the features plus one flag coordinate.

    A constant image (e.g. a binary mask after z-scoring, which is all zeros) gives all-zero features
    (instance normalization zeroes every constant map), whose cosine similarity is undefined: it would
    cover nothing, not even an identical image. The flag is 1 for such an image (features all within
    ``tol`` of 0, which are then set to 0) and 0 otherwise, so constant images are identical to each
    other (cosine 1) and orthogonal to every other image, while the cosines between ordinary images
    are unchanged. Returns (D + 1,).
    """
    features = features.flatten()
    constant = bool(features.abs().max() <= tol) if features.numel() else True
    flag = features.new_ones(1) if constant else features.new_zeros(1)
    return torch.cat([torch.zeros_like(features) if constant else features, flag])


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
        gains = [
            (float(torch.maximum(cover, sim[i]).sum() - cover.sum()), -pos, i)
            for pos, i in enumerate(short)
            if i not in picked
        ]
        _, _, best = max(gains)
        picked.append(best)
        cover = torch.maximum(cover, sim[best])
    return picked


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"expected true or false, got {value!r}.")
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


@dataclass(frozen=True)
class SuggestiveConfig:
    """What a user sets for suggestive annotation (MONAI Label app ``--conf`` keys of the same names,
    the annotation benchmark's strategies); the defaults are the app's.

    Attributes:
        batch_size: N, images suggested per request (default 1: the next image; the reply's ``batch``
            lists all N, in the order they were picked).
        top_n: the short list of most uncertain images that representativeness ranks (default 4; at
            least ``batch_size`` is used).
        disagreement: the uncertainty measure, ``"variance"`` (default) or ``"entropy"`` of the
            members' per-voxel probabilities, averaged over the image.
        representativeness: ``True`` (default): greedy cosine max-cover among the short list (QSA);
            ``False``: simply the ``batch_size`` most uncertain.
        quantized_scorers: ``True`` (default): the ensemble's base learners are diversely quantized
            (the bundle's ``quantization`` ``"qme_net"``, the QSA variant); ``False``: float
            learners (``"float"``). A property of the served bundle, fixed when the server starts.
        cover_labeled: labeled images count as already covering the pool (default ``False``, the
            method as published).
    """

    batch_size: int = 1
    top_n: int = 4
    disagreement: str = "variance"
    representativeness: bool = True
    quantized_scorers: bool = True
    cover_labeled: bool = False

    #: Keys a single request may change (the rest are the server's).
    REQUEST_KEYS = ("batch_size", "top_n", "representativeness", "cover_labeled")

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.top_n < 1:
            raise ValueError(f"batch_size and top_n must be positive, got {self.batch_size}, {self.top_n}.")
        if self.disagreement not in DISAGREEMENT_KINDS:
            raise ValueError(f"disagreement must be one of {DISAGREEMENT_KINDS}, got {self.disagreement!r}.")

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> "SuggestiveConfig":
        """From string-valued ``--conf`` pairs (missing keys keep the defaults)."""
        return cls()._updated(conf, [f for f in cls.__dataclass_fields__])

    def with_request(self, request: Mapping[str, Any]) -> "SuggestiveConfig":
        """This configuration with a request's :attr:`REQUEST_KEYS` applied."""
        return self._updated(request, self.REQUEST_KEYS)

    def _updated(self, values: Mapping[str, Any], keys: Sequence[str]) -> "SuggestiveConfig":
        kw: dict[str, Any] = {}
        for key in keys:
            if key in values and values[key] is not None:
                default = getattr(self, key)
                kw[key] = _flag(values[key]) if isinstance(default, bool) else type(default)(values[key])
        return replace(self, **kw) if kw else self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_batch(
    uncertainty: Sequence[float],
    descriptors: Optional[torch.Tensor],
    config: SuggestiveConfig,
    covered: Optional[torch.Tensor] = None,
) -> list[int]:
    """The ``config.batch_size`` images to annotate next (indices, in the order picked): with
    representativeness, :func:`suggest` on the ``max(top_n, batch_size)`` most uncertain; without, the most
    uncertain (ties: the lower index)."""
    n = len(uncertainty)
    k = min(config.batch_size, n)
    if not config.representativeness:
        return sorted(range(n), key=lambda i: (-float(uncertainty[i]), i))[:k]
    if descriptors is None:
        raise ValueError("representativeness needs the images' descriptors.")
    return suggest(uncertainty, descriptors, max(config.top_n, k), k, covered if config.cover_labeled else None)
