"""Ignite handler that runs the incremental quantization schedule during training."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from qddens_monai.quantization import quantization_progress, quantization_report, quantization_step

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["IncrementalQuantizationHandler"]


class IncrementalQuantizationHandler:
    """Train ``fp_epochs`` epochs at full precision, then one quantization step every ``epochs_per_step``.

    With portions ``(p_1, ..., p_S)`` step ``i`` is taken after epoch
    ``fp_epochs + (i - 1) * epochs_per_step``, so the schedule spans
    ``fp_epochs + S * epochs_per_step`` epochs (the D2ED2Q ``--epoch`` / ``--epochQ`` flags).
    The step counter lives in the network's buffers; the handler derives from the trainer's
    epoch how many steps are due and takes the missing ones, at ``EPOCH_COMPLETED`` and at
    ``STARTED``, so a run resumed from any checkpoint of trainer and network continues the
    same schedule.

    Args:
        network: the network (or ensemble) quantized by :func:`quantize_network`.
        fp_epochs: epochs at full precision before the first step.
        epochs_per_step: epochs between steps.
        optimizer: the optimizer whose learning rate ``reset_lr`` / ``lr_decay`` act on.
        reset_lr: at each step set every param group's ``lr`` back to its value when the
            handler was attached (its ``initial_lr`` if a scheduler recorded one).
        lr_decay: then multiply it by ``lr_decay ** step`` (e.g. 0.5 halves it at every step).
        steps: for a network *without* quantization (e.g. the bundle's ``quantization: float``): the
            number of schedule steps whose learning-rate changes are still applied, at the same
            epochs, so float and quantized runs share one schedule. Ignored for a quantized network.
        name: logger name.
    """

    def __init__(
        self,
        network: nn.Module,
        fp_epochs: int,
        epochs_per_step: int,
        optimizer: Optional[torch.optim.Optimizer] = None,
        reset_lr: bool = False,
        lr_decay: float = 1.0,
        steps: Optional[int] = None,
        name: Optional[str] = None,
    ) -> None:
        if int(fp_epochs) < 0 or int(epochs_per_step) < 1:
            raise ValueError(f"need fp_epochs >= 0 and epochs_per_step >= 1, got {fp_epochs}, {epochs_per_step}.")
        if (reset_lr or lr_decay != 1.0) and optimizer is None:
            raise ValueError("reset_lr / lr_decay need the optimizer.")
        self.network = network
        self.fp_epochs = int(fp_epochs)
        self.epochs_per_step = int(epochs_per_step)
        self.optimizer = optimizer
        self.reset_lr = reset_lr
        self.lr_decay = float(lr_decay)
        self.logger = logging.getLogger(name or __name__)
        self._base_lrs: list[float] = []
        self.quantized = quantization_progress(network)[1] > 0
        self.num_steps = quantization_progress(network)[1] if self.quantized else int(steps or 0)
        self._lr_steps: Optional[int] = None  # schedule steps applied to the lr of a network without quantization
        if self.num_steps == 0:
            raise ValueError(
                f"{type(network).__name__} has no incremental quantization; call quantize_network first "
                "(or give `steps` to apply the schedule's learning-rate changes alone)."
            )

    def steps_due(self, epoch: int) -> int:
        """How many steps must have been taken once ``epoch`` epochs are complete."""
        if epoch < self.fp_epochs:
            return 0
        return min(self.num_steps, (epoch - self.fp_epochs) // self.epochs_per_step + 1)

    @property
    def total_epochs(self) -> int:
        """Epochs the whole schedule spans, the last step's epochs included."""
        return self.fp_epochs + self.num_steps * self.epochs_per_step

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        if self.optimizer is not None:
            self._base_lrs = [g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups]
        engine.add_event_handler(Events.EPOCH_STARTED, self, completed_epochs_offset=-1)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine, completed_epochs_offset: int = 0) -> None:
        due = self.steps_due(engine.state.epoch + completed_epochs_offset)
        if not self.quantized:
            if self._lr_steps is None:  # first call; a resumed optimizer already carries the earlier steps' lr
                self._lr_steps = 0 if self.reset_lr else due
            while self._lr_steps < due:
                self._lr_steps += 1
                self.logger.info(f"Epoch {engine.state.epoch}: schedule step {self._lr_steps}/{self.num_steps} (no quantization).")
                self._set_lr(self._lr_steps)
            return
        done, total = quantization_progress(self.network)
        while done < due:
            done = quantization_step(self.network)
            report = quantization_report(self.network)
            self.logger.info(
                f"Epoch {engine.state.epoch}: quantization step {done}/{total}: "
                f"{report.fraction_frozen:.1%} of {report.quantized_params:,} weights quantized and frozen."
            )
            self._set_lr(done)

    def _set_lr(self, step: int) -> None:
        if self.optimizer is None:
            return
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            if self.reset_lr:
                group["lr"] = base * self.lr_decay**step
            else:
                group["lr"] *= self.lr_decay
