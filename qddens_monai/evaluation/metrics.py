"""Per-image metrics of an ensemble, its members and its learners' disagreement, built on MONAI's metrics.

Everything here works on *one* image: learner probabilities (K, C, *S), a label and an optional
field-of-view mask. Dice, HD95, sensitivity / specificity and ROC AUC are MONAI's
(:class:`~monai.metrics.DiceMetric`, :class:`~monai.metrics.HausdorffDistanceMetric`,
:class:`~monai.metrics.ConfusionMatrixMetric`, :func:`~monai.metrics.compute_roc_auc`); this module
only decides *what* they are fed: which member's probabilities, which channels, which voxels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
from monai.metrics import ConfusionMatrixMetric, DiceMetric, HausdorffDistanceMetric, compute_roc_auc
from monai.utils import convert_to_tensor

from ..ensemble import learner_disagreement, learner_pairs
from .inferer import learner_names, member_names, member_probabilities

__all__ = ["ALL_METRICS", "image_metrics", "segmentation_metrics", "disagreement_matrices", "summarize", "nan_mean"]

#: Metrics computed per member by default.
ALL_METRICS = ("dice", "hd95", "sensitivity", "specificity", "auc")

Spacing = Union[float, Sequence[float], None]


def nan_mean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values; NaN if there are none (without numpy's empty-slice warning)."""
    kept = [float(v) for v in values if not math.isnan(float(v))]
    return float(sum(kept) / len(kept)) if kept else float("nan")


def _plain(x: Any) -> torch.Tensor:
    # MetaTensor arithmetic drags metadata along and is slower; metrics need plain tensors.
    return convert_to_tensor(x, track_meta=False)


def foreground_channels(num_classes: int, activation: str) -> list[int]:
    """Softmax: channel 0 is the background, 1..C-1 the foreground classes; sigmoid: every channel."""
    if activation == "softmax":
        if num_classes < 2:
            raise ValueError("softmax output needs at least 2 channels (background + a class).")
        return list(range(1, num_classes))
    if activation == "sigmoid":
        return list(range(num_classes))
    raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")


def label_one_hot(label: torch.Tensor, num_classes: int, activation: str) -> torch.Tensor:
    """(1, *S) class indices, or (C, *S) one-/multi-hot -> bool (C, *S)."""
    label = _plain(label)
    if label.shape[0] == num_classes and num_classes > 1:  # already one-hot / multi-hot
        return label > 0
    if label.shape[0] != 1:
        raise ValueError(f"label must have 1 channel (class indices) or {num_classes} (one-hot), got {label.shape[0]}.")
    if activation == "sigmoid":
        if num_classes != 1:
            raise ValueError(
                f"sigmoid output with {num_classes} channels needs a {num_classes}-channel (multi-hot) label."
            )
        return label > 0
    classes = label[0].round().long()
    lo, hi = int(classes.min()), int(classes.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"label values must be class indices in [0, {num_classes - 1}], found [{lo}, {hi}] "
            "(a 0/255 mask needs scaling to 0/1)."
        )
    return torch.stack([classes == c for c in range(num_classes)])


def discretize(prob: torch.Tensor, activation: str, threshold: float = 0.5) -> torch.Tensor:
    """(C, *S) probabilities -> bool (C, *S): one-hot argmax (softmax) or ``prob >= threshold`` (sigmoid)."""
    if activation == "softmax":
        idx = prob.argmax(0)
        return torch.stack([idx == c for c in range(prob.shape[0])])
    return prob >= threshold


def inside_mask(mask: Optional[torch.Tensor], spatial_shape: Sequence[int]) -> Optional[torch.Tensor]:
    """(M, *S) mask (nonzero inside; any channel counts) -> bool (*S), or ``None``."""
    if mask is None:
        return None
    mask = _plain(mask)
    if mask.ndim == len(spatial_shape):
        mask = mask[None]
    if tuple(mask.shape[1:]) != tuple(spatial_shape):
        raise ValueError(f"mask spatial shape {tuple(mask.shape[1:])} differs from the image's {tuple(spatial_shape)}.")
    return (mask != 0).any(0)


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    # Empty classes make MONAI warn for every image and member; NaN already says it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _per_class(name: str, values: Sequence[float], class_names: Sequence[str], out: dict[str, float]) -> None:
    values = [float("nan") if math.isinf(float(v)) else float(v) for v in values]
    out[name] = nan_mean(values)
    if len(values) > 1:  # per-class columns only when there is more than one foreground class
        for cname, v in zip(class_names, values):
            out[f"{name}_{cname}"] = v


def segmentation_metrics(
    prob: torch.Tensor,
    label_oh: torch.Tensor,
    inside: Optional[torch.Tensor] = None,
    activation: str = "softmax",
    metrics: Sequence[str] = ALL_METRICS,
    threshold: float = 0.5,
    ignore_empty: bool = True,
    spacing: Spacing = None,
    class_names: Optional[Sequence[str]] = None,
) -> dict[str, float]:
    """Metrics of one member on one image, for its foreground classes.

    Args:
        prob: (C, *S) probabilities.
        label_oh: bool (C, *S) one-hot / multi-hot label (:func:`label_one_hot`).
        inside: bool (*S) region of interest, or ``None`` for the whole image. Dice and HD95 are
            computed on (pred AND roi, label AND roi); sensitivity, specificity and AUC only over
            voxels inside it, so voxels outside are never true negatives.
        activation: ``"softmax"`` (channel 0 is background) or ``"sigmoid"``.
        metrics: any of ``"dice"``, ``"hd95"``, ``"sensitivity"``, ``"specificity"``, ``"auc"``.
        threshold: sigmoid threshold.
        ignore_empty: Dice of a class absent from the label is NaN (MONAI's default) instead of
            1 / 0 by whether the prediction is empty too.
        spacing: voxel spacing for HD95 (``None``: voxel units).
        class_names: names of the foreground classes (default: channel indices).

    Returns:
        ``{metric: mean over foreground classes}`` (NaN-aware) and, with several foreground
        classes, ``{f"{metric}_{class}": value}``. HD95 of an empty prediction or label is NaN.
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"Unknown metrics {sorted(unknown)}; choose from {list(ALL_METRICS)}.")
    prob = _plain(prob).float()
    fg = foreground_channels(prob.shape[0], activation)
    names = [str(c) for c in fg] if class_names is None else [str(n) for n in class_names]
    if len(names) != len(fg):
        raise ValueError(f"class_names: expected {len(fg)} foreground names, got {len(names)}.")
    label_oh = label_oh.to(prob.device)
    pred = discretize(prob, activation, threshold)[fg]
    lab = label_oh[fg]
    out: dict[str, float] = {}
    nan = [float("nan")] * len(fg)
    empty = inside is not None and not bool(inside.any())

    if inside is not None:
        inside = inside.to(prob.device)
        pred_roi, lab_roi = pred & inside, lab & inside
    else:
        pred_roi, lab_roi = pred, lab
    if "dice" in metrics:
        dice = (
            nan
            if empty
            else _quiet(
                DiceMetric(include_background=True, reduction="none", ignore_empty=ignore_empty),
                pred_roi[None].float(),
                lab_roi[None].float(),
            )[0].tolist()
        )
        _per_class("dice", dice, names, out)
    if "hd95" in metrics:
        hd = (
            nan
            if empty
            else _quiet(
                HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none"),
                pred_roi[None].float(),
                lab_roi[None].float(),
                spacing=spacing,
            )[0].tolist()
        )
        _per_class("hd95", hd, names, out)

    # Voxel-wise rates: only voxels inside the roi exist, flattened to (1, n_fg, N).
    if inside is not None:
        pred_v, lab_v, prob_v = pred[:, inside], lab[:, inside], prob[fg][:, inside]
    else:
        pred_v, lab_v, prob_v = pred.flatten(1), lab.flatten(1), prob[fg].flatten(1)
    rates = [m for m in ("sensitivity", "specificity") if m in metrics]
    if rates:
        if empty:
            values = [nan] * len(rates)
        else:
            cm = ConfusionMatrixMetric(include_background=True, metric_name=rates, reduction="none")
            _quiet(cm, pred_v[None].float(), lab_v[None].float())
            values = [v[0].tolist() for v in _quiet(cm.aggregate)]
        for m, v in zip(rates, values):
            _per_class(m, v, names, out)
    if "auc" in metrics:
        # One-vs-rest per foreground class: that class's probability against its label.
        auc = nan if empty else [float(_quiet(compute_roc_auc, prob_v[i], lab_v[i].float())) for i in range(len(fg))]
        _per_class("auc", auc, names, out)
    return out


def disagreement_matrices(
    probs: torch.Tensor, inside: Optional[torch.Tensor] = None, activation: str = "softmax", threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise disagreement of K learners on one image, per learner pair.

    Args:
        probs: (K, C, *S) probabilities.
        inside: bool (*S) voxels that count (``None``: all).
        activation: softmax (labels by argmax) or sigmoid (labels by ``threshold``, per channel).
        threshold: sigmoid threshold.

    Returns:
        Two symmetric (K, K) arrays with zero diagonals: the fraction of voxels whose predicted
        label differs (sigmoid: in any channel), and the mean absolute difference of the
        foreground probabilities (averaged over foreground channels and voxels); the per-voxel
        maps are :func:`~qddens_monai.ensemble.learner_disagreement`'s ``"label"`` and
        ``"pairwise"`` measures.
    """
    probs = _plain(probs).float()
    k = probs.shape[0]
    foreground_channels(probs.shape[1], activation)  # checks the channels and the activation
    kw = {"activation": activation, "threshold": threshold, "per_pair": True}
    labels = learner_disagreement(probs, "label", **kw)  # (P, *S)
    diffs = learner_disagreement(probs, "pairwise", foreground="classes", **kw)
    sel = None if inside is None else inside.to(probs.device)
    agree = np.zeros((k, k))
    diff = np.zeros((k, k))

    def _mean(x: torch.Tensor) -> float:
        x = x if sel is None else x[sel]
        return float(x.float().mean()) if x.numel() else float("nan")

    for n, (i, j) in enumerate(learner_pairs(k)):
        agree[i, j] = agree[j, i] = _mean(labels[n])
        diff[i, j] = diff[j, i] = _mean(diffs[n])
    return agree, diff


def image_metrics(
    probs: torch.Tensor,
    label: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    activation: str = "softmax",
    members: Optional[Sequence[str]] = None,
    metrics: Sequence[str] = ALL_METRICS,
    disagreement: bool = True,
    threshold: float = 0.5,
    ignore_empty: bool = True,
    spacing: Spacing = None,
    class_names: Optional[Sequence[str]] = None,
) -> dict[str, float]:
    """One row of the per-image table: every member's metrics and the learners' disagreement.

    Args:
        probs: (K, C, *S) every learner's probabilities (base learners first, meta last), e.g. one
            item of :class:`~qddens_monai.evaluation.LearnerProbabilities`' output after
            :func:`~qddens_monai.evaluation.split_learners`.
        label: (1, *S) class indices (sigmoid with C = 1: nonzero is foreground) or (C, *S) one-hot.
        mask: (M, *S) region of interest, nonzero inside (any channel), or ``None``.
        activation: ``"softmax"`` or ``"sigmoid"``: how ``probs`` were made.
        members: members to evaluate (default :func:`~qddens_monai.evaluation.member_names`: ``ensemble``,
            ``meta``, ``base_i``; ``base_mean`` and ``learner_i`` are also understood).
        metrics: subset of :data:`ALL_METRICS`.
        disagreement: add the pairwise learner disagreement columns (needs K >= 2).
        threshold, ignore_empty, spacing, class_names: see :func:`segmentation_metrics`.

    Returns:
        ``{"masked": 0 / 1, "voxels": voxels evaluated, f"{member}/{metric}": value, ...,
        f"disagreement/{a}-{b}": ..., f"prob_difference/{a}-{b}": ...,
        "disagreement/base_mean", "disagreement/pairs_mean", (same for prob_difference),
        f"prob_difference/pairs_mean_{class}" per foreground class when there are several}``.
    """
    probs = _plain(probs)
    if probs.ndim < 3:
        raise ValueError(f"probs must be (K, C, *S), got shape {tuple(probs.shape)}.")
    k, c = probs.shape[:2]
    spatial = probs.shape[2:]
    label = _plain(label)
    if tuple(label.shape[1:]) != tuple(spatial):
        raise ValueError(
            f"label spatial shape {tuple(label.shape[1:])} differs from the prediction's {tuple(spatial)}."
        )
    label_oh = label_one_hot(label, c, activation).to(probs.device)
    inside = inside_mask(mask, spatial)
    row: dict[str, float] = {
        "masked": float(inside is not None),
        "voxels": float(inside.sum()) if inside is not None else float(np.prod(spatial)),
    }
    for member in member_names(k) if members is None else members:
        values = segmentation_metrics(
            member_probabilities(probs, member),
            label_oh,
            inside,
            activation,
            metrics,
            threshold,
            ignore_empty,
            spacing,
            class_names,
        )
        row.update({f"{member}/{name}": v for name, v in values.items()})
    if disagreement and k > 1:
        names = learner_names(k)
        agree, diff = disagreement_matrices(probs, inside, activation, threshold)
        for kind, mat in (("disagreement", agree), ("prob_difference", diff)):
            pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
            for i, j in pairs:
                row[f"{kind}/{names[i]}-{names[j]}"] = float(mat[i, j])
            if k - 1 >= 2:  # the base learners' own diversity, the quantity diversity training pushes up
                row[f"{kind}/base_mean"] = nan_mean([mat[i, j] for i, j in pairs if j < k - 1])
            row[f"{kind}/pairs_mean"] = nan_mean([mat[i, j] for i, j in pairs])
        fg = foreground_channels(c, activation)
        if len(fg) > 1:  # where the learners disagree most, class by class
            names_fg = [str(ch) for ch in fg] if class_names is None else [str(n) for n in class_names]
            sel = None if inside is None else inside.to(probs.device)
            for cname, ch in zip(names_fg, fg):
                diff_c = learner_disagreement(probs.float(), "pairwise", foreground=ch, activation=activation)
                diff_c = diff_c if sel is None else diff_c[sel]
                row[f"prob_difference/pairs_mean_{cname}"] = float(diff_c.mean()) if diff_c.numel() else float("nan")
    return row


def summarize(rows: Sequence[Mapping[str, Any]], skip: Sequence[str] = ("image",)) -> dict[str, dict[str, Any]]:
    """Per column of the per-image rows: mean and std (population, NaN-aware), median, min, max,
    ``n`` (non-NaN values) and ``nan`` (NaN count). Columns in ``skip`` are left out."""
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in skip and c not in columns)
    stats: dict[str, dict[str, Any]] = {}
    for col in columns:
        vals = np.asarray([float(r.get(col, float("nan"))) for r in rows], dtype=float)
        ok = vals[~np.isnan(vals)]
        stats[col] = {
            "mean": float(ok.mean()) if ok.size else float("nan"),
            "std": float(ok.std()) if ok.size else float("nan"),
            "median": float(np.median(ok)) if ok.size else float("nan"),
            "min": float(ok.min()) if ok.size else float("nan"),
            "max": float(ok.max()) if ok.size else float("nan"),
            "n": int(ok.size),
            "nan": int(vals.size - ok.size),
        }
    return stats
