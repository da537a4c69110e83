"""Drawing only: the training-curve and overlay figures from data the handlers prepared (no engine, no files)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .figures import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CurvePanel", "draw_training_curves", "OverlayPanels", "draw_overlay"]


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
_TP, _FP, _FN = np.array([1.0, 0.9, 0.1]), np.array([1.0, 0.15, 0.15]), np.array([0.15, 0.55, 1.0])


def _class_color(c: int) -> np.ndarray:
    return _CLASS_COLORS[1 + (c - 1) % (len(_CLASS_COLORS) - 1)] if c > 0 else _CLASS_COLORS[0]


def _blend(base: np.ndarray, mask: np.ndarray, color: np.ndarray, alpha: float) -> None:
    base[mask] = (1.0 - alpha) * base[mask] + alpha * color


@dataclass
class CurvePanel:
    """One panel of the training curves.

    Attributes:
        title: the panel's title (``"Training loss"``, ``"Metrics"``, ``"Learning rate"``, ...).
        series: ``(column, epochs, values)`` of each curve, non-empty.
        best: ``(column, epoch, value)`` of the key metric's best epoch, marked with a star.
    """

    title: str
    series: list[tuple[str, list[int], list[float]]]
    best: Optional[tuple[str, int, float]] = None


def _curve_style(col: str) -> dict[str, Any]:
    label = col[len("loss/") :] if col.startswith("loss/") else col
    if label.startswith("diversity/"):
        label = label[len("diversity/") :]
    style: dict[str, Any] = {"marker": "o", "markersize": 3}
    if col == "loss":
        style.update(color="black", linewidth=2.2, label="loss (epoch mean)")
    elif col.endswith("/meta") or col == "loss/diversity":
        style.update(linewidth=1.8, label=label)
    elif col.startswith("loss/"):
        style.update(linewidth=1.0, alpha=0.8, label=label)
    else:
        style.update(linewidth=1.6, label=label)
    return style


def draw_training_curves(
    panels: Sequence[CurvePanel],
    quantization_steps: Sequence[tuple[int, int, int]] = (),
    epochs: Sequence[int] = (),
    title: Optional[str] = None,
) -> Figure:
    """
    The training-curve figure: one axes per panel, two columns, the quantization steps as dashed lines.

    Args:
        panels: what to draw, see :class:`CurvePanel`.
        quantization_steps: ``(epoch, step, total)`` of the epochs that started a quantization step.
        epochs: every epoch of the history (the x range).
        title: the figure's title.
    """
    from matplotlib.ticker import MaxNLocator

    n = max(len(panels), 1)
    ncols = 1 if n == 1 else 2
    nrows = math.ceil(n / ncols)
    fig = new_figure(6.4 * ncols, 3.9 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels):
        for col, xs, ys in panel.series:
            ax.plot(xs, ys, **_curve_style(col))
            if panel.best is not None and panel.best[0] == col:
                _, x, y = panel.best
                ax.plot(
                    [x],
                    [y],
                    marker="*",
                    markersize=14,
                    color="gold",
                    markeredgecolor="black",
                    linestyle="none",
                    label=f"best {y:.4g} (epoch {x})",
                )
        if panel.title == "Learning rate":
            lrs = [v for _, _, ys in panel.series for v in ys]
            if lrs and min(lrs) > 0 and max(lrs) / min(lrs) >= 10:
                ax.set_yscale("log")
            else:
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        for k, (epoch, step, total) in enumerate(quantization_steps):
            ax.axvline(
                epoch - 0.5,
                color="tab:purple",
                linestyle="--",
                linewidth=1.0,
                alpha=0.7,
                label="quantization step" if k == 0 else None,
            )
            ax.text(
                epoch - 0.5,
                0.99,
                f" Q{step}" + (f"/{total}" if total else ""),
                transform=ax.get_xaxis_transform(),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
                color="tab:purple",
            )
        ax.set_title(panel.title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs:
            ax.set_xlim(min(epochs) - 0.6, max(epochs) + 0.6)
        ax.grid(True, alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize="small", ncol=2 if len(handles) > 5 else 1, framealpha=0.8)
    if not panels:
        axes[0].text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@dataclass
class OverlayPanels:
    """What one overlay figure shows, prepared by :class:`~qddens_monai.handlers.OverlayHandler`.

    Attributes:
        base: ``(H, W, 3)`` RGB input in [0, 1].
        input_title: title of the input panel.
        label: ``(H, W)`` integer classes, or ``None`` (no label panel).
        pred: ``(H, W)`` integer classes, or ``None``.
        binary: label and prediction have at most one class: draw true/false positives and false negatives.
        dice: the sample's Dice (``None``: not known).
        whole_volume: the Dice is of the whole volume (a 3D sample, one slice drawn).
        disagreement: ``(H, W)`` map, or ``None`` (no disagreement panel).
        disagreement_vmax: top of its colour scale.
        disagreement_title: what the map measures.
        header: the figure's title.
    """

    base: np.ndarray
    input_title: str
    label: Optional[np.ndarray]
    pred: Optional[np.ndarray]
    binary: bool
    dice: Optional[float]
    whole_volume: bool
    disagreement: Optional[np.ndarray]
    disagreement_vmax: float
    disagreement_title: str
    header: str


def draw_overlay(panels: OverlayPanels, alpha: float = 0.55) -> Figure:
    """Input, label, prediction and disagreement side by side; overlays blended with opacity ``alpha``."""
    from matplotlib.patches import Patch

    base, label_s, pred_s, dis = panels.base, panels.label, panels.pred, panels.disagreement
    count = 2 + (label_s is not None) + (dis is not None)
    fig = new_figure(4.2 * count, 4.6)
    axes = fig.subplots(1, count, squeeze=False)[0]
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].imshow(base, interpolation="nearest")
    axes[0].set_title(panels.input_title)
    k = 1
    if label_s is not None:
        over = base.copy()
        classes = [c for c in np.unique(label_s).tolist() if c > 0]
        for c in classes:
            _blend(over, label_s == c, _class_color(c), alpha)
        axes[k].imshow(over, interpolation="nearest")
        axes[k].set_title("Label")
        if classes:
            axes[k].legend(
                handles=[Patch(color=_class_color(c), label=f"class {c}") for c in classes],
                loc="lower right",
                fontsize="x-small",
                framealpha=0.7,
            )
        k += 1
    over = base.copy()
    title = "Prediction"
    handles = []
    if pred_s is not None:
        if panels.binary and label_s is not None:
            tp, fp, fn = (pred_s > 0) & (label_s > 0), (pred_s > 0) & (label_s == 0), (pred_s == 0) & (label_s > 0)
            for mask, color, text in (
                (tp, _TP, "true positive"),
                (fp, _FP, "false positive"),
                (fn, _FN, "false negative"),
            ):
                _blend(over, mask, color, alpha)
                handles.append(Patch(color=color, label=text))
        else:
            for c in [c for c in np.unique(pred_s).tolist() if c > 0]:
                _blend(over, pred_s == c, _class_color(c), alpha)
                handles.append(Patch(color=_class_color(c), label=f"class {c}"))
        if panels.dice is not None:
            title += f" (Dice {panels.dice:.3f}" + (", whole volume)" if panels.whole_volume else ")")
    else:
        title += " (none)"
    axes[k].imshow(over, interpolation="nearest")
    axes[k].set_title(title)
    if handles:
        axes[k].legend(handles=handles, loc="lower right", fontsize="x-small", framealpha=0.7)
    k += 1
    if dis is not None:
        im = axes[k].imshow(dis, cmap="magma", vmin=0.0, vmax=panels.disagreement_vmax, interpolation="nearest")
        axes[k].set_title(
            f"Learner disagreement\n{panels.disagreement_title} (max {float(dis.max()):.2f})", fontsize="medium"
        )
        fig.colorbar(im, ax=axes[k], fraction=0.046, pad=0.03)
    fig.suptitle(panels.header)
    fig.tight_layout()
    return fig
