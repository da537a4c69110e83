"""Inference that keeps every learner's probabilities, so MONAI inferers and engines can carry them."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, Optional, Union

import torch
from monai.config import KeysCollection
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

# the learners' stacking order lives in the ensemble contract; re-exported here where inference uses it
from ..ensemble.learners import activate, learner_names, merge_learners, split_learners, unwrap_network

__all__ = [
    "LearnerProbabilities",
    "split_learners",
    "merge_learners",
    "unwrap_network",
    "learner_names",
    "member_names",
    "member_probabilities",
    "EnsembleMemberd",
]


def member_names(num_learners: int) -> list[str]:
    """Evaluated members by default: ``ensemble`` (mean of all K), ``meta`` and every base learner.

    A single network (K = 1) has only ``ensemble``. ``base_mean`` (mean of the base learners) is
    available on request (see :func:`member_probabilities`).
    """
    if num_learners == 1:
        return ["ensemble"]
    return ["ensemble", "meta"] + [f"base_{i}" for i in range(num_learners - 1)]


def member_probabilities(probs: torch.Tensor, member: Union[str, int]) -> torch.Tensor:
    """One member's probabilities from all learners' ``probs`` (K, ...) -> (...).

    ``member``: ``"ensemble"`` (mean of the K learners, what :class:`~qddens_monai.networks.QMENet`
    with ``output="mean"`` predicts), ``"meta"`` (the last learner), ``"base_mean"`` (mean of the
    K - 1 base learners), ``"base_i"`` / ``"learner_i"`` or an integer (learner ``i``).
    """
    k = probs.shape[0]
    if isinstance(member, int):
        return probs[member]
    if member == "ensemble":
        return probs.mean(0)
    if member == "meta":
        if k < 2:
            raise ValueError("'meta' needs an ensemble (at least 2 learners).")
        return probs[-1]
    if member == "base_mean":
        if k < 2:
            raise ValueError("'base_mean' needs an ensemble (at least 2 learners).")
        return probs[:-1].mean(0)
    for prefix, limit in (("base_", k - 1), ("learner_", k)):
        if member.startswith(prefix) and member[len(prefix) :].isdigit():
            i = int(member[len(prefix) :])
            if i >= limit:
                raise ValueError(f"{member!r}: there are only {limit} such learners.")
            return probs[i]
    raise ValueError(f"Unknown ensemble member {member!r}.")


class LearnerProbabilities(Inferer):
    """Run any MONAI inferer on *every learner's probabilities* instead of the network's output.

    The wrapped ``inferer`` (default :class:`~monai.inferers.SimpleInferer`; typically a
    :class:`~monai.inferers.SlidingWindowInferer`) receives a predictor that returns
    ``network.probabilities(x)`` (K, B, C, *S) merged learner-major into (B, K*C, *S), so
    windows are blended per learner and engines, decollation and post transforms see an
    ordinary channel-first tensor. :func:`split_learners` restores (K, B, C, *S).

    - Wrapped networks (``DistributedDataParallel`` / ``DataParallel`` ``.module``,
      ``torch.compile``) are unwrapped to reach ``probabilities``; evaluation needs no gradient
      synchronisation, so bypassing the wrapper's ``forward`` is safe.
    - A network without ``probabilities`` is one learner (K = 1): its output goes through
      ``activation`` (softmax over channels, or sigmoid).

    Sliding windows average *probabilities* (not logits) over overlapping windows; for
    QME-Net ``output="mean"`` the mean of the K learners is then exactly what blending the
    ensemble's own output in probability space gives.

    Args:
        inferer: the inferer to run (``None``: call the predictor on the whole input).
        activation: ``"softmax"`` or ``"sigmoid"``, for networks without ``probabilities``.

    Attributes:
        num_learners / num_classes: K and C of the last call (``None`` before the first), read by
            :class:`~qddens_monai.evaluation.EnsembleMetrics` when it is not told K or C.
    """

    def __init__(self, inferer: Optional[Union[Inferer, Callable]] = None, activation: str = "softmax") -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.activation = activation
        self.num_learners: Optional[int] = None
        self.num_classes: Optional[int] = None

    def predictor(self, network: Callable) -> Callable[..., torch.Tensor]:
        """The callable handed to the wrapped inferer: input (B, ...) -> (B, K*C, *S) probabilities."""
        module = unwrap_network(network)
        probabilities = getattr(module, "probabilities", None)

        def _learners(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if callable(probabilities):
                probs = probabilities(x, *args, **kwargs)
            else:
                out = network(x, *args, **kwargs)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"{type(module).__name__} has no `probabilities` and returned {type(out).__name__}, "
                        "not a tensor: put it in eval mode, or give it a `probabilities(x)` method."
                    )
                probs = activate(out, self.activation)[None]
            self.num_learners, self.num_classes = int(probs.shape[0]), int(probs.shape[2])
            return merge_learners(probs)

        return _learners

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """
        Args:
            inputs: (B, C_in, *S).
            network: the ensemble (or any segmentation network), possibly wrapped.

        Returns:
            (B, K*C, *S) learner-major probabilities.
        """
        return self.inferer(inputs, self.predictor(network), *args, **kwargs)


class EnsembleMemberd(MapTransform):
    """Post transform: one member's probabilities out of the learner-major (K*C, *S) item.

    For saving or post-processing the ensemble's prediction in an evaluation config whose
    inferer is :class:`LearnerProbabilities`. Write to a new key (``output_keys``) when
    :class:`~qddens_monai.evaluation.EnsembleMetrics` still needs every learner under ``pred``.

    Args:
        keys: keys of (K*C, *S) items (decollated, no batch dimension).
        num_learners: K; or give ``num_classes``.
        num_classes: C; or give ``num_learners``.
        member: see :func:`member_probabilities` (default ``"ensemble"``, the mean).
        output_keys: where to write each result (default: replace in place).
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_learners: Optional[int] = None,
        num_classes: Optional[int] = None,
        member: Union[str, int] = "ensemble",
        output_keys: Optional[KeysCollection] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_learners is None and num_classes is None:
            raise ValueError("give num_learners or num_classes to split the learners' channels.")
        self.num_learners = num_learners
        self.num_classes = num_classes
        self.member = member
        self.output_keys = self.keys if output_keys is None else ensure_tuple(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError("output_keys must have one entry per key.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            probs = split_learners(d[key], self.num_learners, self.num_classes, batched=False)
            d[out_key] = member_probabilities(probs, self.member)
        return d
