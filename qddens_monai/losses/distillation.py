# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Knowledge distillation of a segmentation ensemble into a single student network."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from .parts import LossWithParts

__all__ = ["EnsembleDistillationLoss"]


class EnsembleDistillationLoss(LossWithParts):
    """
    Per-voxel knowledge distillation from an ensemble (teacher) into one student network::

        L = a * seg_loss(s, y)  +  (1 - a) * T**2 * KL(softmax(t / T) || softmax(s / T))

    with the KL divergence summed over classes and averaged over batch and voxels. ``T**2`` keeps the soft
    term's gradient scale independent of the temperature (Hinton et al., 2015). The teacher is given either
    as logits ``t`` or, as for an ensemble, as its mean class probability ``p``
    (``teacher_is_probability=True``); then ``log(clip(p))`` plays the role of the logits, i.e. the teacher
    distribution is ``softmax(log(p) / T)``, which equals ``softmax(t / T)`` when ``p = softmax(t)``. The
    teacher never receives gradients (it is detached).

    One-channel (sigmoid, binary) heads are treated as a two-class Bernoulli distribution: logits ``s``
    become ``[0, s]`` (``softmax([0, s] / T) = [1 - sigmoid(s / T), sigmoid(s / T)]``) and a probability
    ``p`` becomes ``[1 - p, p]``.

    Inputs: ``loss(student_logits, target, teacher)``, or, because ``monai.engines.SupervisedTrainer`` only
    passes ``(pred, target)``, ``loss({"student": s, "teacher": t}, target)`` for a wrapper network that returns
    both in train mode. A plain ``pred`` tensor without teacher (eval-mode output) gives ``seg_loss(pred, y)``.
    The parts of the last call are kept detached in ``self.last_parts`` (``"seg"``, ``"kd"`` (the
    ``T**2``-scaled KL), ``"total"``); a :class:`~qddens_monai.handlers.LossPartsHandler` copies
    them into the trainer's output.

    Example::

        loss = EnsembleDistillationLoss(alpha=0.5, temperature=2.0, teacher_is_probability=True)
        with torch.no_grad():
            p_teacher = ensemble(image)  # eval mode: mean probability (B, C, *spatial)
        loss(student(image), label, p_teacher).backward()

    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 1.0,
        seg_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        sigmoid: bool = False,
        teacher_is_probability: bool = False,
        eps: float = 1e-6,
    ) -> None:
        """
        Args:
            alpha: weight ``a`` of the segmentation loss on the labels, in ``[0, 1]``; ``1 - a`` weighs the
                distillation term. ``1`` is plain supervised training (the teacher is then not needed).
                Defaults to ``0.5``.
            temperature: softmax temperature ``T > 0`` of both distributions. Defaults to ``1.0``, i.e. the
                student mimics the teacher's class probabilities as they are (the setting of the seed
                paper); ``T > 1`` softens both distributions.
            seg_loss: loss of the student's logits ``(B, C, *spatial)`` against the labels, any MONAI or
                PyTorch loss returning a scalar. Defaults to ``DiceCELoss(to_onehot_y=True, softmax=True)``
                (label maps ``(B, 1, *spatial)`` of integer classes), or ``torch.nn.BCEWithLogitsLoss()`` when
                ``sigmoid=True``.
            sigmoid: ``True`` for a one-channel sigmoid student: selects the BCE default ``seg_loss`` and casts
                integer targets to float. Defaults to ``False``.
            teacher_is_probability: ``True`` if the teacher is given as class probabilities ``(B, C, *spatial)``
                (e.g. the ensemble's mean probability; ``(B, 1, *spatial)`` foreground probability for binary
                heads) rather than logits. Defaults to ``False``.
            eps: probabilities are clipped to ``[eps, 1]`` before the log. Defaults to ``1e-6``.

        Raises:
            ValueError: when ``alpha`` is outside ``[0, 1]`` or ``temperature`` is not positive.

        """
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.sigmoid = sigmoid
        if seg_loss is None:
            seg_loss = torch.nn.BCEWithLogitsLoss() if sigmoid else DiceCELoss(to_onehot_y=True, softmax=True)
        self.seg_loss = seg_loss
        self.teacher_is_probability = teacher_is_probability
        self.eps = eps

    def _seg(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.sigmoid and not torch.is_floating_point(target):
            target = target.to(logits.dtype)  # BCE needs float targets
        return self.seg_loss(logits, target)  # type: ignore[no-any-return]

    def _log_probs(self, x: torch.Tensor, is_probability: bool) -> torch.Tensor:
        """Log class probabilities at temperature T, ``(B, C, *spatial)``, two classes for one-channel input."""
        if is_probability:
            p = torch.cat([1.0 - x, x], dim=1) if x.shape[1] == 1 else x
            logits = torch.log(p.clamp(min=self.eps, max=1.0))
        else:
            logits = torch.cat([torch.zeros_like(x), x], dim=1) if x.shape[1] == 1 else x
        return F.log_softmax(logits / self.temperature, dim=1)

    def kd(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """
        The distillation term ``T**2 * KL(teacher || student)``, summed over classes, averaged over batch and
        voxels.

        Args:
            student: student logits ``(B, C, *spatial)``.
            teacher: teacher logits or probabilities (per ``teacher_is_probability``), same shape as
                ``student``; detached here.

        Raises:
            ValueError: when student and teacher shapes differ.

        """
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ.")
        log_s = self._log_probs(student.float(), is_probability=False)
        log_t = self._log_probs(teacher.detach().float(), is_probability=self.teacher_is_probability)
        kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=1)
        return self.temperature**2 * kl.mean()

    def forward(  # type: ignore[override]
        self, pred: torch.Tensor | Mapping[str, torch.Tensor], target: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            pred: student logits ``(B, C, *spatial)``, or a dict ``{"student": logits, "teacher": t}`` (then
                ``teacher`` must not be given).
            target: labels for ``seg_loss``, e.g. ``(B, 1, *spatial)`` integer label map.
            teacher: teacher logits, or probabilities if ``teacher_is_probability``, same shape as the student.
                If ``None`` with a tensor ``pred`` (evaluation), only ``seg_loss(pred, target)`` is returned.

        Returns:
            scalar tensor.

        Raises:
            ValueError: when a teacher is given twice, or a dict ``pred`` lacks ``"student"``/``"teacher"``
                while ``alpha < 1``.

        """
        if isinstance(pred, Mapping):
            if teacher is not None:
                raise ValueError("the teacher is given both in pred and as an argument.")
            if "student" not in pred:
                raise ValueError(f"dict pred needs a 'student' entry, keys: {list(pred)}.")
            student, teacher = pred["student"], pred.get("teacher")
            if teacher is None and self.alpha < 1.0:
                raise ValueError("dict pred needs a 'teacher' entry when alpha < 1.")
        else:
            student = pred
        seg = self._seg(student.float(), target)
        if teacher is None or self.alpha == 1.0:
            # evaluation path (or plain supervision): no teacher needed
            self.last_parts = {"seg": seg.detach(), "total": seg.detach()}
            return seg
        kd = self.kd(student, teacher)
        total = self.alpha * seg + (1.0 - self.alpha) * kd
        self.last_parts = {"seg": seg.detach(), "kd": kd.detach(), "total": total.detach()}
        return total
