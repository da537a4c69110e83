"""Ignite handler that runs the incremental quantization schedule during training."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from ..quantization import (
    IncrementalQuantization,
    quantization_progress,
    quantization_report,
    quantization_step,
    quantized_layers,
    set_portions,
)

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
            handler was attached.
        lr_decay: then multiply it by ``lr_decay ** step`` (e.g. 0.5 halves it at every step).
            With ``reset_lr`` or ``lr_decay != 1`` this handler owns the learning rate: a learning-rate
            scheduler on the same optimizer (a PyTorch ``LRScheduler``, MONAI's ``LrScheduleHandler``, an
            ignite ``ParamScheduler``) would be overwritten at every step, or overwrite it, so the run is
            refused when it starts (``RuntimeError``). Leave the learning rate to the scheduler with
            ``reset_lr=False, lr_decay=1.0``.
        portions: the schedule's accumulated portions, set on every incremental layer of ``network``
            (:func:`~qddens_monai.quantization.set_portions`; ``None``: the network's own). The schedule is
            then in the network's state, so a checkpoint carries it to inference. For a network without
            quantization (the bundle's ``quantization: float``) ``len(portions)`` is the number of schedule
            steps whose learning-rate changes are still applied, so float and quantized runs share one
            schedule. A run resumed from a checkpoint of other portions is refused when it starts.
        steps: the number of steps for a network without quantization, when ``portions`` is not given.
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
        portions: Optional[Sequence[float]] = None,
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
        self.portions = set_portions(network, portions) if portions is not None and self.quantized else None
        if portions is not None and not self.quantized:
            steps = len(portions)
        self.num_steps = quantization_progress(network)[1] if self.quantized else int(steps or 0)
        self._portions_checked = False
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
            self._base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        engine.add_event_handler(Events.STARTED, self._refuse_schedulers)
        engine.add_event_handler(Events.EPOCH_STARTED, self, completed_epochs_offset=-1)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine, completed_epochs_offset: int = 0) -> None:
        if not self._portions_checked:
            self._check_portions()
        due = self.steps_due(engine.state.epoch + completed_epochs_offset)
        if not self.quantized:
            if self._lr_steps is None:  # first call; a resumed optimizer already carries the earlier steps' lr
                self._lr_steps = 0 if self.reset_lr else due
            while self._lr_steps < due:
                self._lr_steps += 1
                self.logger.info(
                    f"Epoch {engine.state.epoch}: schedule step {self._lr_steps}/{self.num_steps} (no quantization)."
                )
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

    @property
    def owns_lr(self) -> bool:
        """Whether the handler sets the learning rate (``reset_lr`` or ``lr_decay != 1``)."""
        return self.optimizer is not None and (self.reset_lr or self.lr_decay != 1.0)

    def _check_portions(self) -> None:
        # At the first EPOCH_STARTED a resumed checkpoint (loaded at STARTED) has brought its own schedule.
        self._portions_checked = True
        if self.portions is None:
            return
        rounded = tuple(round(p, 6) for p in self.portions)
        layers = [q for _, _, q in quantized_layers(self.network) if isinstance(q, IncrementalQuantization)]
        other = {q.portion_values for q in layers}
        other.discard(rounded)
        if other:
            raise RuntimeError(
                f"the network's quantization schedule {list(other.pop())} (from the resumed checkpoint) is not "
                f"the configured portions {list(self.portions)}: resume with the portions it was trained with."
            )

    def _refuse_schedulers(self, engine: Engine) -> None:
        # At STARTED every handler is attached and every scheduler built, whatever the config's order.
        if not self.owns_lr:
            return
        found = []
        for handlers in getattr(engine, "_event_handlers", {}).values():
            for handler, *_ in handlers:
                target = getattr(handler, "__self__", handler)
                name = type(target).__name__
                if name.endswith(("Scheduler", "LrScheduleHandler")) or hasattr(target, "lr_scheduler"):
                    found.append(name)
        if any("initial_lr" in g for g in self.optimizer.param_groups):  # set by every PyTorch LRScheduler
            found.append("a PyTorch LRScheduler on the optimizer")
        if found:
            raise RuntimeError(
                f"IncrementalQuantizationHandler sets the learning rate at each quantization step (reset_lr="
                f"{self.reset_lr}, lr_decay={self.lr_decay}) and would fight the learning-rate scheduler "
                f"({', '.join(sorted(set(found)))}). Either remove the scheduler, or leave the learning rate to it: "
                'reset_lr=False and lr_decay=1.0 (in the bundle: --lr_decay_per_step 1.0 and "reset_lr": false in '
                "the handler's entry of train#handlers)."
            )

    def _set_lr(self, step: int) -> None:
        if self.optimizer is None:
            return
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            if self.reset_lr:
                group["lr"] = base * self.lr_decay**step
            else:
                group["lr"] *= self.lr_decay
