"""Ignite handler / metric that evaluates an ensemble, each of its members and their disagreement."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from ignite.engine import Events
from ignite.metrics import Metric
from ignite.metrics.metric import EpochWise, MetricUsage
from monai.data import MetaTensor, decollate_batch
from monai.handlers import from_engine
from monai.utils import CommonKeys as Keys
from monai.utils import optional_import

from ..distributed import rank_and_world_size
from ..files import atomic_write, atomic_write_text
from .inferer import learner_names, member_names, split_learners
from .metrics import ALL_METRICS, image_metrics, summarize

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["EnsembleMetrics"]

_DISAGREEMENT_KINDS = ("disagreement", "prob_difference")


def _items(x: Any) -> list:
    """Decollated items of a batch: a list stays as it is, a batched tensor is split (keeping meta)."""
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return decollate_batch(x, detach=True)
    return list(x)


def _lookup(container: Any, key: str, n: int) -> list:
    """``key`` of every item of a decollated (list of dicts) or batched (dict) engine state, or Nones."""
    if (
        isinstance(container, Sequence)
        and not isinstance(container, str)
        and container
        and isinstance(container[0], Mapping)
    ):
        return [item.get(key) if isinstance(item, Mapping) else None for item in container][:n]
    if isinstance(container, Mapping) and container.get(key) is not None:
        values = _items(container[key])
        return values[:n] if len(values) >= n else [None] * n
    return [None] * n


def _filename(*candidates: Any) -> Optional[str]:
    for x in candidates:
        meta = x.meta if isinstance(x, MetaTensor) else x if isinstance(x, Mapping) else None
        if meta:
            name = meta.get("filename_or_obj")
            if isinstance(name, (list, tuple)) and len(name) == 1:
                name = name[0]
            if isinstance(name, (str, os.PathLike)) and str(name):
                return str(name)
    return None


def _json_safe(x: Any) -> Any:
    # Strict JSON has no NaN / Infinity: they become null (the "nan" counts say how many).
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _file_writer(write: Callable[[Any], None], binary: bool = False) -> Callable[[str], None]:
    """``write(file object)`` as a writer of a path, for :func:`~qddens_monai.files.atomic_write`."""

    def to_path(tmp: str) -> None:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": "", "encoding": "utf-8"})) as f:
            write(f)

    return to_path


class EnsembleMetrics(Metric):
    """Per-image and aggregated metrics of an ensemble, its meta learner and each learner, plus the
    learners' pairwise disagreement; optionally restricted to a field-of-view mask (DRIVE style).

    Pair it with :class:`~qddens_monai.evaluation.LearnerProbabilities` as the evaluator's inferer, so
    ``pred`` holds every learner's probabilities, (K*C, *S) per decollated item (learner-major).
    Members (see :func:`~qddens_monai.evaluation.member_names`): ``ensemble`` = mean of the K
    learners' probabilities, ``meta`` = the meta learner, ``base_i`` = each base learner (a plain
    network, K = 1, gives only ``ensemble``). For each: Dice and HD95 (MONAI, per foreground class
    and their mean), sensitivity and specificity (MONAI confusion matrix), ROC AUC (foreground
    probability vs label; one-vs-rest per class for multi-class).

    With a mask (``mask_key`` found in the engine's output or batch, (1, *S), nonzero inside), Dice
    and HD95 use (pred AND mask, label AND mask) and the voxel-wise rates and AUC see only voxels
    inside the mask: voxels outside are not true negatives.

    It is an ignite :class:`~ignite.metrics.Metric`, so it works both as a handler
    (``attach(engine)``, e.g. in ``val_handlers``; the value goes into
    ``engine.state.metrics[metric_name]``) and as the evaluator's ``key_metric`` entry (then
    MONAI attaches it under the dict key, and best-metric tracking / checkpointing see it at
    ``EPOCH_COMPLETED``). The value is the nan-mean over images of ``key_column`` (default: the
    ensemble's mean foreground Dice).

    At ``COMPLETED`` it writes into ``output_dir`` (each file through a temporary file and
    ``os.replace``; an earlier evaluation's files are replaced):

    - ``metrics_per_image.csv``: ``image`` (``filename_or_obj`` from the meta data, else
      ``image_<n>``), ``masked``, ``voxels`` (voxels evaluated), then ``<member>/<metric>`` columns
      (``dice``, ``hd95``, ``sensitivity``, ``specificity``, ``auc``, and ``<metric>_<class>`` when
      there are several foreground classes), then ``disagreement/<a>-<b>`` and
      ``prob_difference/<a>-<b>`` for each learner pair and their ``base_mean`` / ``pairs_mean`` (and
      ``prob_difference/pairs_mean_<class>`` per foreground class when there are several);
    - ``metrics_summary.json``: mean, std, median, min, max, ``n`` and ``nan`` count of every
      column per member, the K x K disagreement matrices and the key metric;
    - ``metrics_summary.csv``: the same statistics, one row per (member, metric);
    - ``dice_comparison.png``: Dice mean ± std per member.

    Under ``torch.distributed`` every rank's rows are gathered (``all_gather_object``) at
    ``EPOCH_COMPLETED`` so all ranks hold the same value; only ``save_rank`` writes.

    Args:
        output_dir: folder for the files (created); ``None`` writes nothing.
        num_learners: K, to split ``pred``'s channels; or give ``num_classes``; if neither, read
            from the engine's :class:`LearnerProbabilities` inferer after each forward.
        num_classes: C (network output channels).
        activation: ``"softmax"`` or ``"sigmoid"``, as in the network.
        metrics: subset of ``("dice", "hd95", "sensitivity", "specificity", "auc")``.
        members: members to evaluate (default: ``ensemble``, ``meta``, every ``base_i``); also
            ``base_mean`` and ``learner_i``.
        disagreement: compute the pairwise learner disagreement.
        mask_key: key of the field-of-view mask in ``engine.state.output`` or ``engine.state.batch``
            items; ``None`` ignores masks. Items without it are evaluated on the whole image.
        require_mask: raise if an item has no mask.
        output_transform: takes ``engine.state.output`` to ``(preds, labels)`` or
            ``(preds, labels, masks)`` (lists of decollated items, or batched tensors).
        metric_name: name in ``engine.state.metrics`` when attached with :meth:`attach` without a name.
        key_column: the per-image column whose nan-mean is the metric's value.
        publish_all: also put every column's mean into ``engine.state.metrics`` (``<member>/<metric>``),
            e.g. for a stats or TensorBoard handler.
        threshold: sigmoid threshold.
        ignore_empty: Dice of a class absent from the label is NaN (MONAI's default).
        spacing: HD95 voxel spacing: ``None`` (voxel units), numbers, or ``"meta"`` (the label's /
            prediction's ``pixdim``).
        class_names: foreground class names for the per-class columns (default: channel indices).
        per_image_filename / summary_filename / summary_csv_filename / plot_filename: file names
            (``plot_filename=None`` skips the plot).
        save_rank: the rank that writes.
        name: logger name.
    """

    def __init__(
        self,
        output_dir: Union[str, os.PathLike, None] = None,
        num_learners: Optional[int] = None,
        num_classes: Optional[int] = None,
        activation: str = "softmax",
        metrics: Sequence[str] = ALL_METRICS,
        members: Optional[Sequence[str]] = None,
        disagreement: bool = True,
        mask_key: Optional[str] = "mask",
        require_mask: bool = False,
        output_transform: Callable = from_engine([Keys.PRED, Keys.LABEL]),  # noqa: B008 (ignite's convention)
        metric_name: str = "ensemble_mean_dice",
        key_column: str = "ensemble/dice",
        publish_all: bool = False,
        threshold: float = 0.5,
        ignore_empty: bool = True,
        spacing: Union[float, Sequence[float], str, None] = None,
        class_names: Optional[Sequence[str]] = None,
        per_image_filename: str = "metrics_per_image.csv",
        summary_filename: str = "metrics_summary.json",
        summary_csv_filename: str = "metrics_summary.csv",
        plot_filename: Optional[str] = "dice_comparison.png",
        save_rank: int = 0,
        name: Optional[str] = None,
    ) -> None:
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")
        unknown = set(metrics) - set(ALL_METRICS)
        if unknown:
            raise ValueError(f"Unknown metrics {sorted(unknown)}; choose from {list(ALL_METRICS)}.")
        if "hd95" in metrics:
            _, has_scipy = optional_import("scipy.ndimage")  # MONAI's surface distances: fail here, not later
            if not has_scipy:
                raise ImportError("HD95 needs scipy (`pip install scipy`), or leave 'hd95' out of `metrics`.")
        if isinstance(spacing, str) and spacing != "meta":
            raise ValueError(f"spacing must be numbers, None or 'meta', got {spacing!r}.")
        head, _, tail = key_column.partition("/")
        if tail and head not in _DISAGREEMENT_KINDS and tail.split("_", 1)[0] not in metrics:
            raise ValueError(f"key_column {key_column!r} names a metric that is not computed ({list(metrics)}).")
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        self.num_learners = num_learners
        self.num_classes = num_classes
        self.activation = activation
        self.metrics = tuple(metrics)
        self.members = None if members is None else tuple(members)
        self.disagreement = disagreement
        self.mask_key = mask_key
        self.require_mask = require_mask
        self.metric_name = metric_name
        self.key_column = key_column
        self.publish_all = publish_all
        self.threshold = threshold
        self.ignore_empty = ignore_empty
        self.spacing = spacing
        self.class_names = class_names
        self.per_image_filename = per_image_filename
        self.summary_filename = summary_filename
        self.summary_csv_filename = summary_csv_filename
        self.plot_filename = plot_filename
        self.save_rank = save_rank
        self.logger = logging.getLogger(name or __name__)
        self._inferer: Any = None
        self._seen_learners: Optional[int] = None
        self.rows: list[dict[str, Any]] = []
        self.summary: Optional[dict[str, Any]] = None
        # Metric.__init__ calls reset(), so every attribute it touches exists by now.
        super().__init__(output_transform=output_transform)

    # ---- ignite Metric API ---------------------------------------------------------------
    def reset(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self.rows = []
        self.summary = None

    def _split(self, pred: torch.Tensor) -> torch.Tensor:
        k, c = self.num_learners, self.num_classes
        if k is None and c is None and self._inferer is not None:
            k = getattr(self._inferer, "num_learners", None)
        if k is None and c is None:
            raise ValueError(
                "EnsembleMetrics cannot tell learners from classes in `pred`: give num_learners or num_classes, "
                "or use LearnerProbabilities as the evaluator's inferer."
            )
        return split_learners(pred, k, c, batched=False)

    def update(self, output: Sequence[Any]) -> None:
        """Add one row per item.

        Args:
            output: ``(preds, labels[, masks[, names]])``: lists of decollated items or batched
                tensors; preds (K*C, *S) learner-major probabilities, labels (1, *S) class indices,
                masks (1, *S) or ``None``, names strings or ``None``.
        """
        preds, labels = _items(output[0]), _items(output[1])
        if len(preds) != len(labels):
            raise ValueError(f"got {len(preds)} predictions but {len(labels)} labels.")
        masks = _items(output[2]) if len(output) > 2 and output[2] is not None else [None] * len(preds)
        names = list(output[3]) if len(output) > 3 and output[3] is not None else [None] * len(preds)
        rank, world = rank_and_world_size()
        for pred, label, mask, name in zip(preds, labels, masks, names):
            if mask is None and self.require_mask:
                raise ValueError(f"no {self.mask_key!r} mask for image {name or len(self._rows)} (require_mask=True).")
            probs = self._split(pred)
            self._seen_learners = int(probs.shape[0])
            spacing = self.spacing
            if spacing == "meta":
                src = label if isinstance(label, MetaTensor) else pred if isinstance(pred, MetaTensor) else None
                spacing = None if src is None else [float(s) for s in src.pixdim]
            fallback = f"image_{len(self._rows)}" if world == 1 else f"rank{rank}_image_{len(self._rows)}"
            row: dict[str, Any] = {"image": name or _filename(pred, label) or fallback}
            row.update(
                image_metrics(
                    probs,
                    label,
                    mask,
                    self.activation,
                    self.members,
                    self.metrics,
                    self.disagreement,
                    self.threshold,
                    self.ignore_empty,
                    spacing,
                    self.class_names,
                )
            )
            self._rows.append(row)

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        """Read ``engine.state.output`` (and the mask / file name from the output or ``engine.state.batch``)."""
        self._inferer = getattr(engine, "inferer", None)
        out = self._output_transform(engine.state.output)
        if isinstance(out, Mapping):
            out = (out[Keys.PRED], out[Keys.LABEL], out.get(self.mask_key) if self.mask_key else None)
        out = tuple(out)
        preds = _items(out[0])
        n = len(preds)
        masks = _items(out[2]) if len(out) > 2 and out[2] is not None else None
        if masks is None and self.mask_key is not None:
            # Batch keys that are not model inputs stay in engine.state.batch; post transforms may copy them.
            from_out = _lookup(engine.state.output, self.mask_key, n)
            from_batch = _lookup(engine.state.batch, self.mask_key, n)
            masks = [o if o is not None else b for o, b in zip(from_out, from_batch)]
        labels = _items(out[1])
        images_out = _lookup(engine.state.output, Keys.IMAGE, n)
        images_batch = _lookup(engine.state.batch, Keys.IMAGE, n)
        meta_out = _lookup(engine.state.output, f"{Keys.IMAGE}_meta_dict", n)
        meta_batch = _lookup(engine.state.batch, f"{Keys.IMAGE}_meta_dict", n)
        names = [
            _filename(
                preds[i],
                images_out[i],
                images_batch[i],
                meta_out[i],
                meta_batch[i],
                labels[i] if i < len(labels) else None,
            )
            for i in range(n)
        ]
        self.update((preds, labels, masks, names))

    def compute(self) -> float:
        """Gather the rows of every rank, summarize them, and return the nan-mean of ``key_column``."""
        rows = list(self._rows)
        rank, world = rank_and_world_size()
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
            learners = [None] * world
            torch.distributed.all_gather_object(learners, self._seen_learners)
            self._seen_learners = next((k for k in learners if k is not None), None)
        self.rows = rows
        self.summary = self._summarize(rows)
        return self.summary["key_metric"]["value"]

    def completed(self, engine: Engine, name: str) -> None:
        value = self.compute()
        engine.state.metrics[name] = value
        if self.publish_all and self.summary is not None:
            for col, stats in self.summary["columns"].items():
                if col != name:  # never shadow the key value
                    engine.state.metrics[col] = stats["mean"]

    def attach(
        self, engine: Engine, name: Optional[str] = None, usage: Union[str, MetricUsage] = EpochWise.usage_name
    ) -> None:
        """Attach as a metric (``name`` defaults to ``metric_name``) and write the files at ``COMPLETED``."""
        super().attach(engine, name or self.metric_name, usage)
        if self.output_dir is not None and not engine.has_event_handler(self.write, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.write)

    # ---- results ---------------------------------------------------------------------------
    def _summarize(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        columns = summarize(rows, skip=("image",))
        k = self._seen_learners or self.num_learners
        members = list(self.members) if self.members is not None else (member_names(k) if k else [])
        learners = learner_names(k) if k else []
        per_member: dict[str, dict[str, Any]] = {}
        for col, stats in columns.items():
            if "/" in col and col.split("/", 1)[0] not in _DISAGREEMENT_KINDS:
                member, metric = col.split("/", 1)
                per_member.setdefault(member, {})[metric] = stats
        disagreement: dict[str, Any] = {"learners": learners}
        for kind in _DISAGREEMENT_KINDS:
            if not any(c.startswith(kind + "/") for c in columns):
                continue
            mean = [[0.0 if i == j else float("nan") for j in range(len(learners))] for i in range(len(learners))]
            std = [[0.0 if i == j else float("nan") for j in range(len(learners))] for i in range(len(learners))]
            for i, a in enumerate(learners):
                for j, b in enumerate(learners):
                    stats = columns.get(f"{kind}/{a}-{b}") or columns.get(f"{kind}/{b}-{a}")
                    if i != j and stats is not None:
                        mean[i][j], std[i][j] = stats["mean"], stats["std"]
            disagreement[kind] = {
                "mean": mean,
                "std": std,
                "base_mean": columns.get(f"{kind}/base_mean"),
                "pairs_mean": columns.get(f"{kind}/pairs_mean"),
            }
            per_class = {
                c.rsplit("/pairs_mean_", 1)[1]: v for c, v in columns.items() if c.startswith(f"{kind}/pairs_mean_")
            }
            if per_class:  # several foreground classes: the pairs' mean per class
                disagreement[kind]["pairs_mean_per_class"] = per_class
        key = columns.get(self.key_column)
        return {
            "num_images": len(rows),
            "masked_images": int(sum(float(r.get("masked", 0.0)) for r in rows)),
            "activation": self.activation,
            "metrics": list(self.metrics),
            "members": members,
            "key_metric": {
                "name": self.metric_name,
                "column": self.key_column,
                "value": key["mean"] if key else float("nan"),
            },
            "summary": per_member,
            "disagreement": disagreement,
            "voxels": columns.get("voxels"),
            "columns": columns,
        }

    def write(self, engine: Optional[Engine] = None) -> None:
        """Write the CSV / JSON / PNG files (on ``save_rank`` only); computes the summary if needed."""
        if self.output_dir is None:
            return
        if self.summary is None:
            self.compute()
        if rank_and_world_size()[0] != self.save_rank:
            return
        summary = self.summary
        assert summary is not None
        os.makedirs(self.output_dir, exist_ok=True)
        header: list[str] = []
        for row in self.rows:
            header.extend(c for c in row if c not in header)

        def _per_image(f: Any) -> None:
            w = csv.writer(f)
            w.writerow(header)
            for row in self.rows:
                w.writerow([row.get(c, "") if c == "image" else repr(float(row.get(c, float("nan")))) for c in header])

        def _summary_csv(f: Any) -> None:
            w = csv.writer(f)
            fields = ["mean", "std", "median", "min", "max", "n", "nan"]
            w.writerow(["member", "metric", *fields])
            for col, stats in summary["columns"].items():
                member, metric = col.split("/", 1) if "/" in col else ("image", col)
                w.writerow([member, metric, *[stats[x] for x in fields]])

        public = {k: v for k, v in summary.items() if k != "columns"}
        atomic_write(os.path.join(self.output_dir, self.per_image_filename), _file_writer(_per_image))
        atomic_write(os.path.join(self.output_dir, self.summary_csv_filename), _file_writer(_summary_csv))
        atomic_write_text(
            os.path.join(self.output_dir, self.summary_filename),
            json.dumps(_json_safe(public), indent=2, allow_nan=False),
        )
        if self.plot_filename and "dice" in self.metrics:
            atomic_write(os.path.join(self.output_dir, self.plot_filename), _file_writer(self._plot, binary=True))
        key = summary["key_metric"]
        self.logger.info(
            f"{self.metric_name}: {key['value']:.4f} over {summary['num_images']} images "
            f"({summary['masked_images']} masked); results in {self.output_dir}"
        )

    def _plot(self, f: Any) -> None:
        # Figure + Agg canvas directly: no pyplot global state, no display backend needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        assert self.summary is not None
        members = [m for m in self.summary["members"] if "dice" in self.summary["summary"].get(m, {})]
        means = [self.summary["summary"][m]["dice"]["mean"] for m in members]
        stds = [self.summary["summary"][m]["dice"]["std"] for m in members]
        fig = Figure(figsize=(max(4.0, 0.9 * len(members) + 2), 3.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        colors = ["tab:red" if m == "ensemble" else "tab:purple" if m == "meta" else "tab:blue" for m in members]
        ax.bar(
            range(len(members)),
            [0.0 if math.isnan(v) else v for v in means],
            yerr=[0.0 if math.isnan(s) else s for s in stds],
            color=colors,
            capsize=4,
        )
        for x, (v, sd) in enumerate(zip(means, stds)):
            top = (0.0 if math.isnan(v) else v) + (0.0 if math.isnan(sd) else sd)
            ax.text(
                x, min(top + 0.01, 0.98), "n/a" if math.isnan(v) else f"{v:.3f}", ha="center", va="bottom", fontsize=8
            )
        ax.set_xticks(range(len(members)))
        ax.set_xticklabels(members, rotation=30, ha="right")
        ax.set_ylim(0.0, 1.05)
        ax.set_ylabel("Dice (mean ± std)")
        masked = " in mask" if self.summary["masked_images"] else ""
        ax.set_title(f"Dice per member{masked}, {self.summary['num_images']} images")
        fig.tight_layout()
        fig.savefig(f, format="png")
