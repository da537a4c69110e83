"""Prediction overlays of a QDD-Ens run: :class:`OverlayHandler` saves, for the first samples of an evaluator's
run, a PNG with the input, the label and the prediction overlaid, and the map of the learners' disagreement.

This module prepares what is drawn (slices, class maps, Dice, disagreement) as an :class:`OverlayPanels`;
:func:`~qddens_monai.handlers.drawing.draw_overlay` draws it."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from ..distributed import is_main_process
from ..ensemble import DISAGREEMENT_MEASURES, learner_disagreement, max_disagreement, unwrap_network
from ..evaluation.inferer import LearnerProbabilities, split_learners
from .drawing import OverlayPanels, draw_overlay
from .figures import save_figure

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator"
    )


__all__ = ["OverlayHandler"]

_PathLike = Union[str, "os.PathLike[str]"]

#: what the disagreement panel's title says each measure is
_MEASURE_TITLES = {
    "pairwise": "mean |p_i - p_j|",
    "std": "std of p",
    "variance": "variance of p",
    "class_variance": "variance, summed over classes",
    "entropy": "entropy of the mean",
    "label": "pairs with other labels",
}


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
    When ``pred`` is missing (or ``pred_key`` is ``None``) the prediction is the argmax of the ensemble's own output:
    the meta learner's probability if its ``output`` is ``"meta"``, else the learners' mean probability.

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
        pred_key: Optional[str] = "pred",
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
        if self._count >= self.num_images or not is_main_process():
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
                for ext in (
                    ".nii.gz",
                    ".nii",
                    ".mha",
                    ".mhd",
                    ".nrrd",
                    ".png",
                    ".jpg",
                    ".jpeg",
                    ".tif",
                    ".tiff",
                    ".npy",
                    ".npz",
                    ".dcm",
                    ".gz",
                ):
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

    def prediction(self, pred: Optional[torch.Tensor], probs: Optional[torch.Tensor]) -> Optional[np.ndarray]:
        """The class map drawn: ``pred`` (``(C, *S)`` or a label map) if given, else the ensemble's own output
        from its learners' probabilities ``probs`` ``(K, C, *S)``: the meta learner's (last) if the network's
        ``output`` is ``"meta"``, else the learners' mean."""
        if pred is not None:
            return _class_map(pred)
        if probs is None:
            return None
        return _class_map(probs[-1] if getattr(self._ensemble(), "output", "mean") == "meta" else probs.mean(0))

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
        pred = self.prediction(pred_t, probs)

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
        channel = f" (channel {min(self.image_channel, img.shape[0] - 1)})" if img.shape[0] > 1 else ""
        base = orient(base)
        label_s = orient(take(label, channel_first=False))
        pred_s = orient(take(pred, channel_first=False))
        dis = None
        if probs is not None:
            p_slice = probs.numpy() if axis is None else np.take(probs.numpy(), slice_index, axis=axis + 2)
            activation = getattr(self._ensemble(), "activation", "softmax")
            dis = orient(
                learner_disagreement(
                    torch.from_numpy(np.ascontiguousarray(p_slice)), self.disagreement, self.foreground, activation
                ).numpy()
            )

        name = self._sample_name(item, batch_item)
        header = name if name != "sample" else f"sample {index}"
        if epoch is not None:
            header += f" - epoch {epoch}"
        if axis is not None:
            header += f" - slice {slice_index}/{image.shape[1 + axis] - 1} of spatial axis {axis}"
        binary = max(int(label.max()) if label is not None else 0, int(pred.max()) if pred is not None else 0) <= 1
        panels = OverlayPanels(
            base=base,
            input_title="Input" + (" (RGB)" if rgb else channel),
            label=label_s,
            pred=pred_s,
            binary=binary,
            dice=_dice(pred, label) if label is not None and pred is not None else None,
            whole_volume=axis is not None,
            disagreement=dis,
            disagreement_vmax=(
                (self.disagreement_vmax or max_disagreement(probs.shape[0], self.disagreement))
                if probs is not None
                else 1.0
            ),
            disagreement_title=f"{_MEASURE_TITLES[self.disagreement]}, K={probs.shape[0]}" if probs is not None else "",
            header=header,
        )
        fig = draw_overlay(panels, self.alpha)
        stem = f"{self.prefix}_epoch{int(epoch or 0):04d}_" if self.keep_epochs else f"{self.prefix}_"
        path = self.output_dir / f"{stem}{index:02d}_{name}.png"
        save_figure(fig, path, self.dpi)
        self.saved.append(path)
        return path
