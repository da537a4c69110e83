# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Training objective of a deep diversified ensemble: deep-supervised segmentation minus deep diversity."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.losses import DiceCELoss

from ..ensemble import EnsembleOutput, is_ensemble_output
from .diversity import DeepDiversityLoss
from .parts import LossWithParts

__all__ = ["EnsembleLoss"]


class EnsembleLoss(LossWithParts):
    """
    Objective of a deep diversified ensemble (QME-Net / QDD-Ens / D2ED2Q)::

        L = sum_k w_k * seg_loss(logits_k, y)  -  alpha * diversity(features)

    Every learner's output, the K-1 base learners' and the meta learner's, gets the segmentation loss (deep
    supervision), and the base learners' internal features are pushed apart by a ``DeepDiversityLoss``.

    ``forward(pred, target)`` takes the ensemble's train-mode output dict as ``pred``, so the loss plugs into
    ``monai.engines.SupervisedTrainer`` unchanged (the trainer calls ``loss_function(pred, target).mean()``);
    a plain tensor ``pred`` (eval-mode output) gives just ``seg_loss(pred, target)``, so validation code can
    reuse the same object.

    The parts of the last call are kept, detached, in ``self.last_parts`` (``"seg/base_<i>"``, ``"seg/meta"``,
    ``"seg"`` (weighted sum), ``"diversity/level_<l>"`` (``"diversity/output"`` on probabilities),
    ``"diversity"`` (reduced over levels, before ``alpha``) and ``"total"``). In a trainer,
    :class:`~qddens_monai.handlers.LossPartsHandler` copies them into ``engine.state.output`` as
    ``"loss/<part>"``, where MONAI's stats handlers read them::

        loss = EnsembleLoss()
        LossPartsHandler(loss)  # in the trainer's handlers
        StatsHandler(name="train_parts", output_transform=loss_parts_from_output)

    Example::

        loss = EnsembleLoss(alpha=0.005, diversity=DeepDiversityLoss(form="cosine"))
        out = net(image)  # train mode: {"logits": [t_1, ..., t_meta], "features": [[...], ...], "roles": [...]}
        loss(out, label).backward()

    """

    def __init__(
        self,
        seg_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        sigmoid: bool = False,
        alpha: float = 0.005,
        diversity: DeepDiversityLoss | None = None,
        weights: Sequence[float] | None = None,
        log_all_levels: bool = False,
    ) -> None:
        """
        Args:
            seg_loss: segmentation loss applied to every learner's logits ``(B, C, *spatial)`` and the target,
                any MONAI or PyTorch loss module (or callable) returning a scalar. Defaults to
                ``DiceCELoss(to_onehot_y=True, softmax=True)`` for label maps ``(B, 1, *spatial)`` of integer
                classes, or ``torch.nn.BCEWithLogitsLoss()`` when ``sigmoid=True``.
            sigmoid: ``True`` for a sigmoid head (binary/multi-label logits, the public code's setting): the
                default ``seg_loss`` becomes BCE and integer targets are cast to the logits' float dtype (BCE
                needs float targets). ``False`` (default) for a softmax head.
            alpha: weight of the diversity term, which is subtracted. Defaults to ``0.005`` (public code).
                ``0`` skips the diversity computation (then ``pred`` needs no ``"features"``).
            diversity: the diversity measure. Defaults to ``DeepDiversityLoss()`` (faithful form with its
                saturation safeguard).
            weights: per-learner weights ``w_k``, K values in the order of ``pred["logits"]`` (base learners,
                then meta learner). Defaults to ``1`` for every learner.
            log_all_levels: if ``True``, also compute (without gradient) the diversity of the levels the
                diversity loss does not optimise, e.g. stem and bottleneck, and log them in ``last_parts``.
                Defaults to ``False``.

        """
        super().__init__()
        self.sigmoid = sigmoid
        if seg_loss is None:
            seg_loss = torch.nn.BCEWithLogitsLoss() if sigmoid else DiceCELoss(to_onehot_y=True, softmax=True)
        self.seg_loss = seg_loss
        self.alpha = float(alpha)
        self.diversity = DeepDiversityLoss() if diversity is None else diversity
        self.weights = None if weights is None else [float(w) for w in weights]
        self.log_all_levels = log_all_levels

    def _seg(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # losses in full precision under AMP, as monai's DeepSupervisionLoss does
        if self.sigmoid and not torch.is_floating_point(target):
            target = target.to(logits.dtype)
        return self.seg_loss(logits, target)  # type: ignore[no-any-return]

    def forward(  # type: ignore[override]
        self, pred: torch.Tensor | EnsembleOutput | Mapping[str, Any], target: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            pred: either the ensemble's train-mode output (:class:`~qddens_monai.ensemble.EnsembleOutput`):
                ``"logits"``, a list of K tensors
                ``(B, C, *spatial)`` (base learners, then the meta learner); ``"features"``, one list per base
                learner of per-level maps ``(B, C_l, *spatial_l)``; optionally ``"roles"``, one role per level.
                Or a single logits tensor ``(B, C, *spatial)`` (eval-mode output): then only the
                segmentation loss is returned.
            target: ``(B, 1, *spatial)`` label map or ``(B, C, *spatial)`` one-hot/binary target, as
                ``seg_loss`` expects.

        Returns:
            scalar tensor.

        Raises:
            ValueError: when ``pred`` has no logits, the number of weights does not match the number of
                learners, or ``alpha > 0`` and ``pred`` has no ``"features"``.

        """
        if isinstance(pred, torch.Tensor):
            seg = self._seg(pred, target)
            self.last_parts = {"seg": seg.detach(), "total": seg.detach()}
            return seg
        if not is_ensemble_output(pred):
            raise ValueError("pred must be a logits tensor or the ensemble's train-mode dict with 'logits'.")
        logits = list(pred["logits"])
        if not logits:
            raise ValueError("pred['logits'] is empty.")
        weights = [1.0] * len(logits) if self.weights is None else self.weights
        if len(weights) != len(logits):
            raise ValueError(f"got {len(weights)} weights for {len(logits)} learners.")

        parts: dict[str, torch.Tensor] = {}
        seg_total = torch.zeros((), dtype=torch.float, device=logits[0].device)
        for k, (w, x) in enumerate(zip(weights, logits)):
            seg_k = self._seg(x, target)
            parts["seg/meta" if k == len(logits) - 1 else f"seg/base_{k}"] = seg_k.detach()
            seg_total = seg_total + w * seg_k
        parts["seg"] = seg_total.detach()
        total = seg_total

        if self.alpha != 0.0:
            if self.diversity.inputs == "features" and "features" not in pred:
                raise ValueError("alpha > 0 needs the base learners' 'features' in pred (train-mode output).")
            levels = self.diversity.per_level(pred)
            div = self.diversity.reduce_levels(levels)
            total = total - self.alpha * div
            parts["diversity"] = div.detach()
            for level, value in levels.items():
                name = "output" if self.diversity.inputs == "probabilities" else f"level_{level}"
                parts[f"diversity/{name}"] = value.detach()
            if self.log_all_levels and self.diversity.inputs == "features":
                num_levels = len(pred["features"][0])
                others = [i for i in range(num_levels) if i not in levels]
                if others:
                    with torch.no_grad():
                        for level, value in self.diversity.per_level(pred, levels=others).items():
                            parts[f"diversity/level_{level}"] = value
        parts["total"] = total.detach()
        self.last_parts = parts
        return total
