"""A student network trained to match a frozen ensemble teacher (knowledge distillation)."""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import torch
from torch import nn

from ..ensemble.learners import activate

__all__ = ["DistillationNetwork", "load_checkpoint"]


def load_checkpoint(network: nn.Module, path: Union[str, os.PathLike], key: Optional[str] = None) -> nn.Module:
    """Load ``path`` into ``network`` strictly, with an error naming the file when it does not fit.

    Args:
        network: the network to fill.
        path: a state dict saved by ``torch.save``, or a checkpoint dict holding one under ``key``
            (MONAI's ``CheckpointSaver`` with several objects).
        key: the checkpoint entry to load (e.g. ``"model"``); ``None`` takes the file as the state dict,
            or its single network entry.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; train the model first.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if key is not None:
        if key not in state:
            raise KeyError(f"checkpoint {path} has no entry {key!r}; it has {sorted(state)[:8]}.")
        state = state[key]
    elif isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches: name the file
        raise RuntimeError(f"checkpoint {path} does not match {type(network).__name__}: {e}") from None
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not match {type(network).__name__}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). "
            "Was it trained with the same network_def?"
        )
    return network


class DistillationNetwork(nn.Module):
    """Wraps a student and a frozen teacher so MONAI's ``SupervisedTrainer`` can distill unchanged.

    Training mode returns ``{"student": student logits, "teacher": teacher probabilities}`` for
    :class:`~qddens_monai.losses.EnsembleDistillationLoss` (``teacher_is_probability=True``); eval
    mode returns the student's logits, so validation and inference see a plain network. The
    teacher always runs in eval mode without gradients, and its parameters are frozen. For a
    :class:`~qddens_monai.networks.QMENet` teacher the probability is the ensemble's mean.

    Args:
        student: the network being trained, (B, C_in, *S) -> (B, C, *S) logits.
        teacher: the trained ensemble (eval output: logits whose softmax / sigmoid is its probability).
        teacher_checkpoint: optional state dict file to load into the teacher (strictly).
        activation: ``"softmax"`` or ``"sigmoid"``: how the teacher's output becomes a probability.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        teacher_checkpoint: Optional[Union[str, os.PathLike]] = None,
        activation: str = "softmax",
    ) -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")
        self.student = student
        if teacher_checkpoint is not None:
            load_checkpoint(teacher, teacher_checkpoint)
        # Kept out of the module tree (state_dict, optimizer, DDP): only the student is trained and saved.
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)
        self.activation = activation

    def to(self, *args: Any, **kwargs: Any) -> DistillationNetwork:
        self.teacher.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, dict[str, torch.Tensor]]:
        student = self.student(x)
        if not self.training:
            return student
        with torch.no_grad():
            t = self.teacher.eval()(x)
            teacher = activate(t, self.activation)
        return {"student": student, "teacher": teacher}
