"""Ignite handlers that draw figures of a QDD-Ens run: training curves and prediction overlays.

- :class:`TrainingCurvesHandler` (on the trainer) keeps a per-epoch history (mean training loss and
  the ensemble loss's parts, validation metrics, learning rate, quantization step) in a CSV and
  redraws a PNG of the curves at every epoch end; a run resumed from a checkpoint continues it.
- :class:`OverlayHandler` (on a validation or inference evaluator) saves, for the first samples of
  a run, a PNG with the input, the label and the prediction overlaid, and the map of the learners'
  disagreement (from ``network.probabilities``).

Figures are drawn with matplotlib's Agg canvas (no pyplot state, no display needed) and written
atomically (a temporary file in the same folder, then ``os.replace``), so a reader never sees half
a file. In a distributed run only rank 0 writes.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch
from monai.utils import IgniteInfo, is_scalar, min_version, optional_import
from torch import nn

from qddens_monai.ensemble import DISAGREEMENT_MEASURES, learner_disagreement, max_disagreement, unwrap_network
from qddens_monai.evaluation.inferer import LearnerProbabilities, split_learners
from qddens_monai.quantization import quantization_progress

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from matplotlib.figure import Figure
else:
    Engine, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator"
    )

__all__ = ["TrainingCurvesHandler", "OverlayHandler", "learner_disagreement", "max_disagreement", "DISAGREEMENT_MEASURES"]


_PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------- helpers


def _is_main_process() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas, independent of pyplot and of the interactive backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` for a temporary file next to ``path``, then move it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _save_figure(fig: Figure, path: Path, dpi: int) -> None:
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def _to_float(value: Any) -> Optional[float]:
    """A python float from a number or a one-element tensor/array, else ``None``."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean()) if value.numel() == 1 else None
    if isinstance(value, np.ndarray):
        return float(value.reshape(-1)[0]) if value.size == 1 else None
    if isinstance(value, bool):
        return float(value)
    if is_scalar(value):
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    return None


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
    - ``loss/<part>``: the epoch means of the parts returned by ``loss_parts(engine.state.output)``,
      e.g. ``EnsembleLoss.log_parts`` (``loss/seg``, ``loss/seg/base_0``, ..., ``loss/diversity``);
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
            "loss_parts": "@loss.log_parts",
            "evaluator": "@validate#evaluator",
            "network": "@network"
        }

    Args:
        output_dir: folder of the PNG and the CSV (created if missing).
        output_transform: maps ``engine.state.output`` to the iteration's loss (a number or a one-element
            tensor). The default reads ``output["loss"]`` of MONAI trainers, decollated or not.
        loss_parts: optional callable mapping ``engine.state.output`` to a dict of named floats, called at
            every iteration, e.g. ``EnsembleLoss.log_parts`` (``"@loss.log_parts"`` in a bundle).
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
        name: logger name.
    """

    def __init__(
        self,
        output_dir: _PathLike,
        output_transform: Callable[[Any], Any] = default_loss_transform,
        loss_parts: Optional[Callable[[Any], Mapping[str, Any]]] = None,
        evaluator: Optional[Engine] = None,
        metric_names: Optional[Sequence[str]] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        network: Optional[nn.Module] = None,
        filename: str = "training_curves.png",
        history_filename: str = "training_history.csv",
        resume: bool = True,
        title: Optional[str] = None,
        dpi: int = 100,
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
        self.logger = logging.getLogger(name or __name__)

        self.history: dict[int, dict[str, float]] = {}  # epoch -> {column: value}
        self._columns: list[str] = ["epoch"]
        self._trainer: Optional[Engine] = None
        self._loaded = False  # history of this run read from the CSV
        self._last_written = -1
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
        loss = _to_float(self.output_transform(output))
        if loss is not None:
            self._loss_sum += loss
            self._loss_count += 1
        if self.loss_parts is not None:
            for key, value in dict(self.loss_parts(output) or {}).items():
                v = _to_float(value)
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
        self._reset_epoch()
        self._write()
        self._last_written = epoch

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
            v = _to_float(value)
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

    def _write(self) -> None:
        if not _is_main_process():
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
            _atomic_write(self.history_path, write_csv)
        except OSError as e:
            self.logger.warning(f"could not write the training history {self.history_path}: {e}")
        try:
            fig = self.figure()
            _save_figure(fig, self.image_path, self.dpi)
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
        from matplotlib.ticker import MaxNLocator

        columns = self._ordered_columns()[1:]
        loss_cols = [c for c in columns if c == "loss"] + [
            c for c in columns if c.startswith("loss/") and "diversity" not in c and c != "loss/total"
        ]
        diversity_cols = [c for c in columns if c.startswith("loss/") and "diversity" in c]
        lr_cols = [c for c in columns if c == "lr" or c.startswith("lr/")]
        metric_cols = [
            c for c in columns if not (c.startswith(("loss", "lr")) or c in ("quant_step", "quant_total"))
        ]
        panels = [
            (title, cols)
            for title, cols in (
                ("Training loss", loss_cols),
                ("Diversity (loss part)", diversity_cols),
                ("Metrics", metric_cols),
                ("Learning rate", lr_cols),
            )
            if any(self._series(c)[0] for c in cols)
        ]
        n = max(len(panels), 1)
        ncols = 1 if n == 1 else 2
        nrows = math.ceil(n / ncols)
        fig = _new_figure(6.4 * ncols, 3.9 * nrows)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in axes[n:]:
            ax.set_visible(False)
        steps = self.quantization_steps()
        key_name, cmp = self._key_metric()
        epochs = sorted(self.history)

        for i, (ax, (title, cols)) in enumerate(zip(axes, panels)):
            for col in cols:
                xs, ys = self._series(col)
                if not xs:
                    continue
                label = col[len("loss/"):] if col.startswith("loss/") else col
                if label.startswith("diversity/"):
                    label = label[len("diversity/"):]
                style: dict[str, Any] = {"marker": "o", "markersize": 3}
                if col == "loss":
                    style.update(color="black", linewidth=2.2, label="loss (epoch mean)")
                elif col.endswith("/meta") or col == "loss/diversity":
                    style.update(linewidth=1.8, label=label)
                elif col.startswith("loss/"):
                    style.update(linewidth=1.0, alpha=0.8, label=label)
                else:
                    style.update(linewidth=1.6, label=label)
                ax.plot(xs, ys, **style)
                if title == "Metrics" and col == key_name:
                    best_i = 0
                    for j in range(1, len(ys)):
                        if cmp(ys[j], ys[best_i]):
                            best_i = j
                    ax.plot(
                        [xs[best_i]], [ys[best_i]], marker="*", markersize=14, color="gold",
                        markeredgecolor="black", linestyle="none",
                        label=f"best {ys[best_i]:.4g} (epoch {xs[best_i]})",
                    )
            if title == "Learning rate":
                lrs = [v for c in cols for v in self._series(c)[1]]
                if lrs and min(lrs) > 0 and max(lrs) / min(lrs) >= 10:
                    ax.set_yscale("log")
                else:
                    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            for k, (epoch, step, total) in enumerate(steps):
                ax.axvline(
                    epoch - 0.5, color="tab:purple", linestyle="--", linewidth=1.0, alpha=0.7,
                    label="quantization step" if k == 0 else None,
                )
                ax.text(
                    epoch - 0.5, 0.99, f" Q{step}" + (f"/{total}" if total else ""), transform=ax.get_xaxis_transform(),
                    rotation=90, va="top", ha="right", fontsize=7, color="tab:purple",
                )
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if epochs:
                ax.set_xlim(min(epochs) - 0.6, max(epochs) + 0.6)
            ax.grid(True, alpha=0.3)
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                ax.legend(fontsize="small", ncol=2 if len(handles) > 5 else 1, framealpha=0.8)
        if not panels:
            axes[0].text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axes[0].transAxes)
            axes[0].set_axis_off()
        if self.title:
            fig.suptitle(self.title)
        fig.tight_layout()
        return fig


# ------------------------------------------------------------------------------------------ overlays


# class colours of the label / prediction overlays (class 0, the background, is not drawn)
_CLASS_COLORS = np.array(
    [
        [0.00, 0.00, 0.00],
        [0.10, 0.85, 0.25],
        [0.95, 0.25, 0.20],
        [0.20, 0.50, 1.00],
        [1.00, 0.85, 0.10],
        [0.85, 0.30, 0.95],
        [0.10, 0.90, 0.90],
        [1.00, 0.55, 0.10],
    ]
)
_MEASURE_TITLES = {
    "pairwise": "mean |p_i - p_j|",
    "std": "std of p",
    "variance": "variance of p",
    "class_variance": "variance, summed over classes",
    "entropy": "entropy of the mean",
    "label": "pairs with other labels",
}
_TP, _FP, _FN = np.array([1.0, 0.9, 0.1]), np.array([1.0, 0.15, 0.15]), np.array([0.15, 0.55, 1.0])


def _class_color(c: int) -> np.ndarray:
    return _CLASS_COLORS[1 + (c - 1) % (len(_CLASS_COLORS) - 1)] if c > 0 else _CLASS_COLORS[0]


def _plain(x: Any) -> Optional[torch.Tensor]:
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        return None
    as_tensor = getattr(x, "as_tensor", None)  # MetaTensor -> torch.Tensor
    return (as_tensor() if callable(as_tensor) else x).detach()


def _class_map(x: torch.Tensor) -> np.ndarray:
    """``(*S)`` integer classes of a ``(C, *S)`` label/prediction: argmax of several channels (one-hot,
    probabilities or logits), else the label map itself, thresholded when it is a non-integer float."""
    x = x.detach().cpu()
    if x.shape[0] > 1:
        return x.float().argmax(0).numpy().astype(np.int64)
    x = x[0]
    if torch.is_floating_point(x):
        if not torch.equal(x, x.round()):
            threshold = 0.0 if float(x.min()) < 0.0 or float(x.max()) > 1.0 else 0.5  # logits or probabilities
            return (x > threshold).numpy().astype(np.int64)
        x = x.round()
    return x.numpy().astype(np.int64)


def _dice(pred: np.ndarray, label: np.ndarray) -> Optional[float]:
    """Mean Dice over the foreground classes present in label or prediction (``None`` if there are none)."""
    classes = sorted((set(np.unique(label).tolist()) | set(np.unique(pred).tolist())) - {0})
    if not classes:
        return None
    scores = []
    for c in classes:
        p, t = pred == c, label == c
        denom = p.sum() + t.sum()
        scores.append(2.0 * np.logical_and(p, t).sum() / denom if denom else 1.0)
    return float(np.mean(scores))


def _display_range(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] between the 0.5 and 99.5 percentiles (robust to outliers and to any normalization)."""
    x = x.astype(np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.zeros_like(x)
    lo, hi = np.percentile(finite, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((np.nan_to_num(x, nan=lo) - lo) / (hi - lo), 0.0, 1.0)


def _blend(base: np.ndarray, mask: np.ndarray, color: np.ndarray, alpha: float) -> None:
    base[mask] = (1.0 - alpha) * base[mask] + alpha * color


class OverlayHandler:
    """
    Saves, for the first ``num_images`` samples of an evaluator's run, one PNG each with the input, the label
    and the prediction overlaid on it, and the map of the ensemble learners' disagreement.

    Attach it to the validation evaluator (MONAI ``SupervisedEvaluator``, decollated output) or to an inference
    evaluator. At ``ITERATION_COMPLETED`` it reads ``engine.state.output`` (a list of per-sample dicts after the
    post transforms, or a batch dict) and, for the first ``num_images`` samples of the run, draws:

    1. the input: RGB when it has 3 channels and 2 spatial dims, else channel ``image_channel`` in grey,
       scaled between its 0.5 and 99.5 percentiles;
    2. the label (classes in colour) over the input;
    3. the prediction over the input: with a binary label, true positives yellow, false positives red,
       false negatives blue; else classes in colour; with the sample's Dice in the title;
    4. the learners' disagreement (:func:`learner_disagreement`) on a fixed colour scale from 0 to its largest
       possible value, from ``network.probabilities(image)`` (all K learners, computed again for these samples
       only, in eval mode and without gradients; the mode is restored after). Omitted when the network has no
       ``probabilities`` method (or ``network`` is ``None``).

    Labels and predictions may be label maps ``(1, *S)`` or one-hot/probabilities/logits ``(C, *S)`` (argmax);
    a 1-channel non-integer prediction is thresholded at 0.5 (at 0 if it has values outside [0, 1], logits).
    When ``pred`` is missing the prediction is the argmax of the learners' mean probability.

    For 3D samples ``(C, *S)`` the panels show one slice along spatial axis ``slice_axis``: the one with the
    most label voxels (``slice_mode="label"``, the middle one if the label is missing or empty) or the middle
    one (``slice_mode="middle"``). The disagreement needs the learners' probabilities of the whole sample:
    give ``inferer`` (e.g. the evaluator's ``SlidingWindowInferer``) for samples too large for one forward
    pass. ``network.probabilities`` returns ``(K, B, C, *S)``, which an inferer cannot stitch, so it is run
    as ``inferer(image, f)`` with ``f`` returning ``(B, K * C, *S)``, reshaped back after.

    Files: ``{prefix}_{index:02d}_{name}.png`` in ``output_dir``, overwritten by each run (with
    ``keep_epochs=True``: ``{prefix}_epoch{epoch:04d}_{index:02d}_{name}.png``), ``name`` being the image file
    name from its metadata (``filename_or_obj``, extensions removed) or ``sample``.

    Usage example (bundle config, ``validate#handlers``)::

        {
            "_target_": "qddens_monai.handlers.OverlayHandler",
            "output_dir": "$@output_dir + '/overlays'",
            "network": "@network",
            "inferer": "@validate#inferer",
            "num_images": 4
        }

    Args:
        output_dir: folder of the PNGs (created if missing).
        network: the ensemble (``QMENet``, possibly wrapped in ``DistributedDataParallel``); ``None`` omits
            the disagreement panel.
        num_images: samples drawn per run (the first ones, in loader order).
        every_n_epochs: draw at the runs whose epoch (the evaluator's ``state.epoch``, which is the trainer's
            epoch when MONAI's ``ValidationHandler`` runs it; 1 for a standalone run) is a multiple of it.
        epochs: draw only at these epochs instead (e.g. ``"$[@max_epochs]"`` for the last validation only).
        inferer: optional MONAI inferer for ``network.probabilities`` (default: one forward pass).
        image_key: key of the input in the output dicts.
        label_key: key of the label (optional in the data).
        pred_key: key of the prediction (optional in the data).
        slice_mode: ``"label"`` or ``"middle"``, for 3D samples.
        slice_axis: spatial axis of the 3D slices (``-1``: the last, axial in MONAI's RAS convention).
        image_channel: channel drawn in grey when the input is not RGB.
        rgb: draw a 3-channel input as RGB (default: when it is 2D).
        transpose: draw the slices transposed (e.g. for images read by MONAI's ``PILReader``, which gives
            ``(W, H)`` arrays).
        disagreement: a measure of :func:`~qddens_monai.ensemble.learner_disagreement`: ``"pairwise"``
            (default), ``"std"``, ``"variance"``, ...
        disagreement_vmax: top of the disagreement colour scale (default: the measure's largest possible value,
            :func:`max_disagreement`, the same for every image and epoch).
        foreground: channel of the foreground probability for the disagreement (see there).
        alpha: opacity of the overlays.
        keep_epochs: one file per epoch instead of overwriting.
        prefix: file name prefix.
        dpi: PNG resolution.
        name: logger name.
    """

    def __init__(
        self,
        output_dir: _PathLike,
        network: Optional[nn.Module] = None,
        num_images: int = 4,
        every_n_epochs: int = 1,
        epochs: Optional[Sequence[int]] = None,
        inferer: Optional[Callable[..., Any]] = None,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
        slice_mode: str = "label",
        slice_axis: int = -1,
        image_channel: int = 0,
        rgb: Optional[bool] = None,
        transpose: bool = False,
        disagreement: str = "pairwise",
        disagreement_vmax: Optional[float] = None,
        foreground: Optional[int] = None,
        alpha: float = 0.55,
        keep_epochs: bool = False,
        prefix: str = "overlay",
        dpi: int = 100,
        name: Optional[str] = None,
    ) -> None:
        if slice_mode not in ("label", "middle"):
            raise ValueError(f"slice_mode must be 'label' or 'middle', got {slice_mode!r}.")
        if disagreement not in DISAGREEMENT_MEASURES:
            raise ValueError(f"disagreement must be one of {DISAGREEMENT_MEASURES}, got {disagreement!r}.")
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}.")
        self.output_dir = Path(output_dir)
        self.network = network
        self.num_images = int(num_images)
        self.every_n_epochs = int(every_n_epochs)
        self.epochs = None if epochs is None else {int(e) for e in epochs}
        self.inferer = inferer
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self.slice_mode = slice_mode
        self.slice_axis = int(slice_axis)
        self.image_channel = int(image_channel)
        self.rgb = rgb
        self.transpose = transpose
        self.disagreement = disagreement
        self.disagreement_vmax = disagreement_vmax
        self.foreground = foreground
        self.alpha = float(alpha)
        self.keep_epochs = keep_epochs
        self.prefix = prefix
        self.dpi = int(dpi)
        self.logger = logging.getLogger(name or __name__)
        self._count = 0
        self.saved: list[Path] = []  # files written by the last run

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the evaluator.
        """
        if not engine.has_event_handler(self._started, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self._started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._count = 0
        self.saved = []

    def _active(self, epoch: int) -> bool:
        if self.epochs is not None:
            return epoch in self.epochs
        return epoch % self.every_n_epochs == 0

    def __call__(self, engine: Engine) -> None:
        """Draw the samples of this iteration that are among the run's first ``num_images``."""
        if self._count >= self.num_images or not _is_main_process():
            return
        epoch = int(engine.state.epoch or 0)
        if not self._active(epoch):
            return
        output, batch = engine.state.output, engine.state.batch
        if isinstance(output, Mapping):
            from monai.data import decollate_batch

            output = decollate_batch(output, detach=True)
        if isinstance(batch, Mapping):
            from monai.data import decollate_batch

            batch = decollate_batch(batch, detach=True)
        if not isinstance(output, (list, tuple)):
            return
        for i, item in enumerate(output):
            if self._count >= self.num_images:
                break
            if not isinstance(item, Mapping) or item.get(self.image_key) is None:
                continue
            batch_item = batch[i] if isinstance(batch, (list, tuple)) and i < len(batch) else None
            try:
                self.save(item, index=self._count, epoch=epoch, batch_item=batch_item)
            except Exception as e:  # a figure must never stop an evaluation
                self.logger.warning(f"could not draw overlay {self._count}: {e!r}")
            self._count += 1

    # ---- one sample

    def _sample_name(self, item: Mapping[str, Any], batch_item: Any) -> str:
        candidates = [item.get(self.image_key), item.get(f"{self.image_key}_meta_dict")]
        if isinstance(batch_item, Mapping):
            candidates += [batch_item.get(self.image_key), batch_item.get(f"{self.image_key}_meta_dict")]
        for c in candidates:
            meta = getattr(c, "meta", c)
            source = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
            if isinstance(source, (list, tuple)) and source:
                source = source[0]
            if isinstance(source, (str, os.PathLike)) and str(source):
                base = os.path.basename(os.path.normpath(str(source)))
                for ext in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
                            ".npy", ".npz", ".dcm", ".gz"):
                    if base.lower().endswith(ext):
                        base = base[: -len(ext)]
                        break
                base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")
                if base:
                    return base[:80]
        return "sample"

    def _ensemble(self) -> Optional[nn.Module]:
        net = unwrap_network(self.network) if self.network is not None else None
        return net if callable(getattr(net, "probabilities", None)) else None  # type: ignore[return-value]

    def learner_probabilities(self, image: torch.Tensor) -> Optional[torch.Tensor]:
        """Every learner's probabilities ``(K, C, *S)`` of one ``(C_in, *S)`` image (on the CPU), or ``None``."""
        net = self._ensemble()
        if net is None:
            return None
        try:
            device = next(net.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        x = image[None].to(device=device, dtype=torch.float32)
        probabilities = LearnerProbabilities(self.inferer)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                merged = _plain(probabilities(x, net))  # (1, K * C, *S), windows blended per learner
        finally:
            net.train(was_training)
        probs = split_learners(merged, num_learners=probabilities.num_learners)[:, 0]
        return probs.float().cpu()

    def save(
        self, item: Mapping[str, Any], index: int = 0, epoch: Optional[int] = None, batch_item: Any = None
    ) -> Path:
        """Draw one sample (a dict with the image and optionally label and prediction) and write its PNG."""
        image = _plain(item[self.image_key])
        if image is None:
            raise ValueError(f"no image tensor under {self.image_key!r}.")
        image = image.float().cpu()
        spatial_dims = image.ndim - 1
        if spatial_dims not in (2, 3):
            raise ValueError(f"expected a channel-first 2D or 3D image, got shape {tuple(image.shape)}.")
        label_t, pred_t = _plain(item.get(self.label_key)), _plain(item.get(self.pred_key))
        spatial = tuple(image.shape[1:])

        def matching(t: Optional[torch.Tensor], what: str) -> Optional[torch.Tensor]:
            if t is not None and tuple(t.shape[1:]) != spatial:  # e.g. inverted to the original space
                self.logger.warning(f"{what} of shape {tuple(t.shape)} does not match the image {tuple(image.shape)}.")
                return None
            return t

        label_t, pred_t = matching(label_t, "label"), matching(pred_t, "prediction")
        label = _class_map(label_t) if label_t is not None else None
        probs = self.learner_probabilities(image)
        if pred_t is not None:
            pred = _class_map(pred_t)
        elif probs is not None:
            pred = _class_map(probs.mean(0))
        else:
            pred = None

        # the slice drawn
        axis = self.slice_axis % spatial_dims if spatial_dims == 3 else None
        slice_index = None
        if axis is not None:
            depth = image.shape[1 + axis]
            slice_index = depth // 2
            if self.slice_mode == "label" and label is not None:
                counts = (label > 0).sum(axis=tuple(a for a in range(3) if a != axis))
                if counts.max() > 0:
                    slice_index = int(counts.argmax())

        def take(x: Any, channel_first: bool) -> Any:
            if axis is None or x is None:
                return x
            return np.take(x, slice_index, axis=axis + (1 if channel_first else 0))

        def orient(x: Any) -> Any:
            if x is None or not self.transpose:
                return x
            return np.swapaxes(x, 0, 1)

        img = take(image.numpy(), channel_first=True)  # (C, H, W)
        rgb = self.rgb if self.rgb is not None else (img.shape[0] == 3 and spatial_dims == 2)
        if rgb and img.shape[0] >= 3:
            base = _display_range(np.moveaxis(img[:3], 0, -1))
        else:
            grey = _display_range(img[min(self.image_channel, img.shape[0] - 1)])
            base = np.repeat(grey[..., None], 3, axis=-1)
        base = orient(base)
        label_s = orient(take(label, channel_first=False))
        pred_s = orient(take(pred, channel_first=False))
        dis = None
        if probs is not None:
            p_slice = probs.numpy() if axis is None else np.take(probs.numpy(), slice_index, axis=axis + 2)
            activation = getattr(self._ensemble(), "activation", "softmax")
            dis = orient(
                learner_disagreement(torch.from_numpy(np.ascontiguousarray(p_slice)), self.disagreement,
                                     self.foreground, activation).numpy()
            )

        from matplotlib.patches import Patch

        panels = 2 + (label_s is not None) + (dis is not None)
        fig = _new_figure(4.2 * panels, 4.6)
        axes = fig.subplots(1, panels, squeeze=False)[0]
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0].imshow(base, interpolation="nearest")
        channel = f" (channel {min(self.image_channel, img.shape[0] - 1)})" if img.shape[0] > 1 else ""
        axes[0].set_title("Input" + (" (RGB)" if rgb else channel))
        k = 1
        binary = max(int(label.max()) if label is not None else 0, int(pred.max()) if pred is not None else 0) <= 1
        if label_s is not None:
            over = base.copy()
            classes = [c for c in np.unique(label_s).tolist() if c > 0]
            for c in classes:
                _blend(over, label_s == c, _class_color(c), self.alpha)
            axes[k].imshow(over, interpolation="nearest")
            axes[k].set_title("Label")
            if classes:
                axes[k].legend(handles=[Patch(color=_class_color(c), label=f"class {c}") for c in classes],
                               loc="lower right", fontsize="x-small", framealpha=0.7)
            k += 1
        over = base.copy()
        title = "Prediction"
        handles = []
        if pred_s is not None:
            if binary and label_s is not None:
                tp, fp, fn = (pred_s > 0) & (label_s > 0), (pred_s > 0) & (label_s == 0), (pred_s == 0) & (label_s > 0)
                for mask, color, text in ((tp, _TP, "true positive"), (fp, _FP, "false positive"),
                                          (fn, _FN, "false negative")):
                    _blend(over, mask, color, self.alpha)
                    handles.append(Patch(color=color, label=text))
            else:
                for c in [c for c in np.unique(pred_s).tolist() if c > 0]:
                    _blend(over, pred_s == c, _class_color(c), self.alpha)
                    handles.append(Patch(color=_class_color(c), label=f"class {c}"))
            if label is not None and pred is not None:
                dice = _dice(pred, label)
                if dice is not None:
                    title += f" (Dice {dice:.3f}" + (", whole volume)" if axis is not None else ")")
        else:
            title += " (none)"
        axes[k].imshow(over, interpolation="nearest")
        axes[k].set_title(title)
        if handles:
            axes[k].legend(handles=handles, loc="lower right", fontsize="x-small", framealpha=0.7)
        k += 1
        if dis is not None:
            vmax = self.disagreement_vmax or max_disagreement(probs.shape[0], self.disagreement)
            im = axes[k].imshow(dis, cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
            what = _MEASURE_TITLES[self.disagreement]
            axes[k].set_title(f"Learner disagreement\n{what}, K={probs.shape[0]} (max {float(dis.max()):.2f})",
                              fontsize="medium")
            fig.colorbar(im, ax=axes[k], fraction=0.046, pad=0.03)

        name = self._sample_name(item, batch_item)
        header = name if name != "sample" else f"sample {index}"
        if epoch is not None:
            header += f" - epoch {epoch}"
        if axis is not None:
            header += f" - slice {slice_index}/{image.shape[1 + axis] - 1} of spatial axis {axis}"
        fig.suptitle(header)
        fig.tight_layout()
        stem = f"{self.prefix}_epoch{int(epoch or 0):04d}_" if self.keep_epochs else f"{self.prefix}_"
        path = self.output_dir / f"{stem}{index:02d}_{name}.png"
        _save_figure(fig, path, self.dpi)
        self.saved.append(path)
        return path
