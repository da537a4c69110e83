"""Training curves of a QDD-Ens run: :class:`TrainingCurvesHandler` keeps the per-epoch history (mean training
loss and the ensemble loss's parts, validation metrics, learning rate, quantization step) in a CSV and redraws a
PNG of it (:func:`~qddens_monai.handlers.drawing.draw_training_curves`) at every epoch end; a run resumed from a
checkpoint continues it. In a distributed run only rank 0 writes."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from ..distributed import is_main_process
from ..files import atomic_write
from ..quantization import quantization_progress
from .drawing import CurvePanel, draw_training_curves
from .figures import save_figure, to_float
from .loss_parts import loss_parts_from_output

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from matplotlib.figure import Figure
else:
    Engine, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator"
    )


__all__ = ["TrainingCurvesHandler", "default_loss_transform"]

_PathLike = Union[str, "os.PathLike[str]"]


def default_loss_transform(output: Any) -> Any:
    """The loss in ``engine.state.output``: ``output["loss"]`` of a batch dict (``decollate=False``),
    ``output[0]["loss"]`` of a decollated list, or the output itself when it is already a number."""
    if isinstance(output, Mapping):
        return output.get("loss")
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
        return output[0].get("loss")
    return output


# ----------------------------------------------------------------------------------- training curves


class TrainingCurvesHandler:
    """
    Per-epoch training curves of a run, drawn to a PNG and kept in a CSV, updated at every epoch end.

    Attach it to the trainer (e.g. MONAI ``SupervisedTrainer``). Each epoch adds one row to the history:

    - ``loss``: the mean over the epoch's iterations of ``output_transform(engine.state.output)``;
    - ``loss/<part>``: the epoch means of the parts returned by ``loss_parts(engine.state.output)``, by
      default the output's ``"loss/<part>"`` entries that a
      :class:`~qddens_monai.handlers.LossPartsHandler` puts there (``loss/seg``, ``loss/seg/base_0``, ...,
      ``loss/diversity`` of an ``EnsembleLoss``); the
      loss and its top-level parts are also logged, one line per epoch (``Epoch 3: loss 0.81 (seg 0.62,
      diversity 0.19)``): MONAI's ``StatsHandler`` logs ``engine.state.metrics`` at epoch end and
      ignores its ``output_transform`` there, so it cannot show them;
    - the validation metrics: ``evaluator.state.metrics`` after each run of ``evaluator`` (how MONAI's
      ``ValidationHandler`` runs it at the trainer's ``EPOCH_COMPLETED``), recorded under the trainer's
      epoch, plus the trainer's own metrics (``engine.state.metrics``); ``metric_names`` selects some;
    - ``lr`` (``lr/<i>`` for more param groups): the learning rate of the epoch's last iteration;
    - ``quant_step``: the incremental quantization steps done while the epoch trained
      (:func:`~qddens_monai.quantization.quantization_progress`), when ``network`` is given.

    The figure has a panel for the training loss and its segmentation parts, one for the diversity
    parts (the parts whose name contains ``"diversity"``), one for the metrics (the evaluator's key
    metric's best value is starred) and one for the learning rate; a dashed vertical line between
    epochs ``e - 1`` and ``e`` marks a quantization step taken before epoch ``e`` trained (a step
    taken at the end of epoch ``e`` is already seen by the validation run of epoch ``e`` if the
    quantization handler runs before the ``ValidationHandler``).

    The history is the CSV (``epoch`` first, one column per quantity, empty where not recorded, e.g.
    metrics of epochs without validation). When a run starts (at its first ``EPOCH_STARTED``, so after
    a ``CheckpointLoader`` restored the trainer's epoch, whatever the order of the handlers), the
    existing CSV is read and its rows of epochs not yet completed are dropped: a run resumed from a
    checkpoint of epoch ``N`` continues the history from epoch ``N + 1``, and a new run in the same
    folder (epoch 0) starts a new one. Attaching order with the ``ValidationHandler`` does not matter
    either: when the trainer starts, this handler's ``EPOCH_COMPLETED`` callback is moved after the
    others, so each epoch is written once, with its validation metrics; the metrics of a validation run
    that still comes after it (a handler attached during the run) are merged into that epoch's row and
    the files are written again.

    Usage example (bundle config, ``train#handlers``)::

        {
            "_target_": "qddens_monai.handlers.TrainingCurvesHandler",
            "output_dir": "@output_dir",
            "evaluator": "@validate#evaluator",
            "network": "@network"
        }

    Args:
        output_dir: folder of the PNG and the CSV (created if missing).
        output_transform: maps ``engine.state.output`` to the iteration's loss (a number or a one-element
            tensor). The default reads ``output["loss"]`` of MONAI trainers, decollated or not.
        loss_parts: maps ``engine.state.output`` to a dict of named floats, called at every iteration; the
            default reads the ``"loss/<part>"`` entries (:func:`~qddens_monai.handlers.loss_parts_from_output`).
        evaluator: the validation evaluator whose ``state.metrics`` are recorded after each of its runs.
            Without it only the trainer's ``engine.state.metrics`` are recorded.
        metric_names: record only these metrics (default: every scalar metric).
        optimizer: the optimizer whose learning rate is recorded (default: ``engine.optimizer`` if the
            trainer has one, as MONAI's ``SupervisedTrainer``).
        network: the (quantized) network whose incremental quantization steps are marked.
        filename: name of the PNG in ``output_dir``.
        history_filename: name of the CSV in ``output_dir``.
        resume: continue the CSV found in ``output_dir`` (rows of earlier epochs kept). ``False`` starts an
            empty history at every run.
        title: figure title (default: none).
        dpi: PNG resolution.
        figure_interval: draw the PNG every this many epochs (and after every validation run and when
            training ends); the CSV is written every epoch. Drawing costs about a second of CPU, a
            sizeable share of a small model's epoch.
        name: logger name.
    """

    def __init__(
        self,
        output_dir: _PathLike,
        output_transform: Callable[[Any], Any] = default_loss_transform,
        loss_parts: Callable[[Any], Mapping[str, Any]] = loss_parts_from_output,
        evaluator: Optional[Engine] = None,
        metric_names: Optional[Sequence[str]] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        network: Optional[nn.Module] = None,
        filename: str = "training_curves.png",
        history_filename: str = "training_history.csv",
        resume: bool = True,
        title: Optional[str] = None,
        dpi: int = 100,
        figure_interval: int = 1,
        name: Optional[str] = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_transform = output_transform
        self.loss_parts = loss_parts
        self.evaluator = evaluator
        self.metric_names = None if metric_names is None else [str(m) for m in metric_names]
        self.optimizer = optimizer
        self.network = network
        self.filename = filename
        self.history_filename = history_filename
        self.resume = resume
        self.title = title
        self.dpi = int(dpi)
        if int(figure_interval) < 1:
            raise ValueError(f"figure_interval must be >= 1, got {figure_interval}.")
        self.figure_interval = int(figure_interval)
        self.logger = logging.getLogger(name or __name__)

        self.history: dict[int, dict[str, float]] = {}  # epoch -> {column: value}
        self._columns: list[str] = ["epoch"]
        self._trainer: Optional[Engine] = None
        self._loaded = False  # history of this run read from the CSV
        self._last_written = -1
        self._drawn: Optional[int] = None  # the last epoch the figure showed
        self._reset_epoch()

    @property
    def image_path(self) -> Path:
        return self.output_dir / self.filename

    @property
    def history_path(self) -> Path:
        return self.output_dir / self.history_filename

    # ---- ignite plumbing

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the trainer. The evaluator (if any) gets a ``COMPLETED`` handler too.
        """
        self._trainer = engine
        if not engine.has_event_handler(self._started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
            engine.add_event_handler(Events.COMPLETED, self._completed)
        if self.evaluator is not None and not self.evaluator.has_event_handler(
            self._validation_completed, Events.COMPLETED
        ):
            self.evaluator.add_event_handler(Events.COMPLETED, self._validation_completed)

    def __call__(self, engine: Engine) -> None:
        """Record the epoch that just completed and write the files (what ``EPOCH_COMPLETED`` runs)."""
        self._epoch_completed(engine)

    def _reset_epoch(self) -> None:
        self._loss_sum, self._loss_count = 0.0, 0
        self._part_sums: dict[str, float] = {}
        self._part_counts: dict[str, int] = {}
        self._lrs: list[float] = []
        self._quant_step: Optional[int] = None
        self._quant_total = 0

    def _started(self, engine: Engine) -> None:
        self._loaded = False
        self._reset_epoch()
        # Move the epoch end after the handlers attached since (e.g. a ValidationHandler listed after this
        # handler), so that the epoch's row is written once, with its validation metrics.
        if engine.has_event_handler(self._epoch_completed, Events.EPOCH_COMPLETED):
            engine.remove_event_handler(self._epoch_completed, Events.EPOCH_COMPLETED)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Engine) -> None:
        if not self._loaded:
            self._load_history(current_epoch=engine.state.epoch)
            self._loaded = True
        self._reset_epoch()

    def _iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        loss = to_float(self.output_transform(output))
        if loss is not None:
            self._loss_sum += loss
            self._loss_count += 1
        for key, value in dict(self.loss_parts(output) or {}).items():
            v = to_float(value)
            if v is not None:
                self._part_sums[key] = self._part_sums.get(key, 0.0) + v
                self._part_counts[key] = self._part_counts.get(key, 0) + 1
        optimizer = self.optimizer if self.optimizer is not None else getattr(engine, "optimizer", None)
        if optimizer is not None:
            self._lrs = [float(g["lr"]) for g in optimizer.param_groups]
        if self.network is not None and self._quant_step is None:  # once per epoch, after EPOCH_STARTED handlers
            self._quant_step, self._quant_total = quantization_progress(self.network)

    def _epoch_completed(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        if not self._loaded:  # called directly, without EPOCH_STARTED
            self._load_history(current_epoch=epoch)
            self._loaded = True
        row: dict[str, float] = {}
        if self._loss_count:
            row["loss"] = self._loss_sum / self._loss_count
        for key, total in self._part_sums.items():
            row[f"loss/{key}"] = total / self._part_counts[key]
        row.update(self._metrics(engine.state.metrics, reserved_prefix="train/"))
        for i, lr in enumerate(self._lrs):
            row["lr" if i == 0 else f"lr/{i}"] = lr
        if self.network is not None:
            step, total = self._quant_step, self._quant_total
            if step is None:  # an epoch without iterations
                step, total = quantization_progress(self.network)
            if total > 0:
                row["quant_step"], row["quant_total"] = float(step), float(total)
        self._update(epoch, row)
        self._log(epoch, row)
        self._reset_epoch()
        self._write(figure=epoch % self.figure_interval == 0)
        self._last_written = epoch

    def _log(self, epoch: int, row: Mapping[str, float]) -> None:
        # One line per epoch: the loss and its top-level parts (seg, diversity, kd, ...), as recorded in the CSV.
        parts = {k[5:]: v for k, v in row.items() if k.startswith("loss/") and "/" not in k[5:] and k != "loss/total"}
        if "loss" in row or parts:
            text = ", ".join(f"{k} {v:.4g}" for k, v in parts.items())
            loss = row.get("loss", float("nan"))
            self.logger.info(f"Epoch {epoch}: loss {loss:.4g}" + (f" ({text})" if text else ""))

    def _completed(self, engine: Engine) -> None:
        if self._drawn != self._last_written:  # the last epoch's figure was skipped by figure_interval
            self._write()

    def _validation_completed(self, evaluator: Engine) -> None:
        trainer = self._trainer
        epoch = int(trainer.state.epoch) if trainer is not None and trainer.state.epoch is not None else None
        if epoch is None:
            epoch = int(evaluator.state.epoch)
        self._update(epoch, self._metrics(evaluator.state.metrics, reserved_prefix="val/"))
        # The trainer's row of this epoch is already written (this handler ran before the validation):
        # write again. Otherwise the epoch end writes it; before the history is loaded, never write.
        if self._loaded and epoch <= self._last_written:
            self._write()

    def _metrics(self, metrics: Optional[Mapping[str, Any]], reserved_prefix: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, value in dict(metrics or {}).items():
            if self.metric_names is not None and key not in self.metric_names:
                continue
            v = to_float(value)
            if v is None:
                continue
            reserved = key in ("epoch", "loss", "quant_step", "quant_total") or key.startswith(("loss/", "lr"))
            out[f"{reserved_prefix}{key}" if reserved else key] = v
        return out

    # ---- history

    def _update(self, epoch: int, values: Mapping[str, float]) -> None:
        row = self.history.setdefault(epoch, {})
        row.update(values)
        for key in values:
            if key not in self._columns:
                self._columns.append(key)

    def _load_history(self, current_epoch: int) -> None:
        """Keep the rows of epochs before ``current_epoch``, from the CSV (when resuming) and from memory."""
        keep = {e: r for e, r in self.history.items() if e < current_epoch}
        self.history, self._columns = {}, ["epoch"]
        path = self.history_path
        if self.resume and path.is_file():
            try:
                with open(path, newline="") as f:
                    reader = csv.DictReader(f)
                    for name in reader.fieldnames or []:
                        if name not in self._columns:
                            self._columns.append(name)
                    for record in reader:
                        try:
                            epoch = int(float(record.get("epoch") or ""))
                        except ValueError:
                            continue
                        if epoch >= current_epoch:
                            continue
                        values = {}
                        for k, v in record.items():
                            if k is None or k == "epoch" or v in (None, ""):
                                continue
                            try:
                                values[k] = float(v)
                            except ValueError:
                                pass
                        self._update(epoch, values)
            except OSError as e:
                self.logger.warning(f"could not read the training history {path}: {e}")
        for epoch, row in keep.items():
            self._update(epoch, row)
        if self.history:
            self.logger.info(f"training history continues after epoch {max(self.history)} ({path}).")

    def _ordered_columns(self) -> list[str]:
        cols = [c for c in self._columns if c != "epoch"]
        groups = [
            [c for c in cols if c == "loss"],
            [c for c in cols if c.startswith("loss/")],
            [c for c in cols if not (c.startswith(("loss", "lr")) or c in ("quant_step", "quant_total"))],
            [c for c in cols if c == "lr" or c.startswith("lr/")],
            [c for c in cols if c in ("quant_step", "quant_total")],
        ]
        return ["epoch"] + [c for g in groups for c in g]

    def _write(self, figure: bool = True) -> None:
        if not is_main_process():
            return
        columns = self._ordered_columns()

        def write_csv(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(columns)
                for epoch in sorted(self.history):
                    row = self.history[epoch]
                    writer.writerow([epoch] + [repr(row[c]) if c in row else "" for c in columns[1:]])

        try:
            atomic_write(self.history_path, write_csv)
        except OSError as e:
            self.logger.warning(f"could not write the training history {self.history_path}: {e}")
        if not figure:
            return
        self._drawn = max(self.history) if self.history else None
        try:
            fig = self.figure()
            save_figure(fig, self.image_path, self.dpi)
        except Exception as e:  # a figure must never stop a training run
            self.logger.warning(f"could not draw the training curves {self.image_path}: {e!r}")

    # ---- figure

    def _series(self, column: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for epoch in sorted(self.history):
            v = self.history[epoch].get(column)
            if v is not None and math.isfinite(v):
                xs.append(epoch)
                ys.append(v)
        return xs, ys

    def quantization_steps(self) -> list[tuple[int, int, int]]:
        """``(epoch, step, total)`` of each epoch that trained with more quantization steps than the previous."""
        out, prev = [], None
        for epoch in sorted(self.history):
            row = self.history[epoch]
            if "quant_step" not in row:
                continue
            step = int(row["quant_step"])
            if prev is not None and step > prev:
                out.append((epoch, step, int(row.get("quant_total", 0))))
            prev = step
        return out

    def _key_metric(self) -> tuple[Optional[str], Callable[[float, float], bool]]:
        ev = self.evaluator
        name = getattr(getattr(ev, "state", None), "key_metric_name", None) if ev is not None else None
        cmp = getattr(ev, "metric_cmp_fn", None) or (lambda current, best: current > best)
        return name, cmp

    def figure(self) -> Figure:
        """The figure of the current history (a matplotlib ``Figure`` on an Agg canvas)."""
        columns = self._ordered_columns()[1:]
        loss_cols = [c for c in columns if c == "loss"] + [
            c for c in columns if c.startswith("loss/") and "diversity" not in c and c != "loss/total"
        ]
        diversity_cols = [c for c in columns if c.startswith("loss/") and "diversity" in c]
        lr_cols = [c for c in columns if c == "lr" or c.startswith("lr/")]
        metric_cols = [c for c in columns if not (c.startswith(("loss", "lr")) or c in ("quant_step", "quant_total"))]
        key_name, better = self._key_metric()
        panels = []
        for title, cols in (
            ("Training loss", loss_cols),
            ("Diversity (loss part)", diversity_cols),
            ("Metrics", metric_cols),
            ("Learning rate", lr_cols),
        ):
            series = [(c, *self._series(c)) for c in cols]
            series = [(c, xs, ys) for c, xs, ys in series if xs]
            if not series:
                continue
            best = None
            for col, xs, ys in series:
                if title == "Metrics" and col == key_name:
                    best_i = 0
                    for j in range(1, len(ys)):
                        if better(ys[j], ys[best_i]):
                            best_i = j
                    best = (col, xs[best_i], ys[best_i])
            panels.append(CurvePanel(title, series, best))
        return draw_training_curves(panels, self.quantization_steps(), sorted(self.history), self.title)
