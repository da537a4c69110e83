"""Suggestive annotation in the label server: the pool's scores, kept current in the background, and the strategies.

:class:`EnsembleScoring` stores ``{"uncertainty", "model", "kind"}`` under image info ``qdd_ens`` per
image, for the ``model.pt`` version that computed it, and the image's descriptor in a
:class:`~qddens_monai.label.descriptors.DescriptorStore` beside the bundle (not in image info, which
MONAI Label's ``/activelearning`` reply carries whole). In the server a background
thread scores the pool when the server starts and whenever ``model.pt`` changes (one image at a time,
progress in ``/info/`` ``scoring_progress`` and in every strategy answer); meanwhile the strategies
answer from the scores already stored (the previous model's where the current one has none yet), so
no HTTP request waits for the whole pool. A request with ``"wait_for_scores": true``, or a process
without the background thread (MONAI Label's train / scoring subprocesses), scores what is missing
inline. Studies that fail the screen, fail to score or score non-finite numbers are skipped.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.utils.others.generic import strtobool

from .datastore import CheckedDatastore
from .descriptors import DescriptorStore
from .scoring import EnsembleScorer
from .selection import SuggestiveConfig, select_batch

__all__ = ["SCORE_KEY", "EnsembleScoring", "UncertaintyStrategy", "SuggestiveStrategy"]

logger = logging.getLogger(__name__)

SCORE_KEY = "qdd_ens"  # image info key of the stored scores


def _model_stamp(path: Path) -> str:
    s = path.stat()
    return f"{s.st_mtime_ns}:{s.st_size}"


class EnsembleScoring(ScoringMethod):
    """The ``qdd_ens`` scores of the pool (see the module doc).

    Args:
        bundle: the label bundle folder.
        kind: ``"variance"`` or ``"entropy"``.
    """

    def __init__(self, bundle: str, kind: str = "variance") -> None:
        super().__init__(f"QDD-Ens member disagreement ({kind}) and deepest-encoder descriptor")
        self.bundle = Path(bundle)
        self.kind = kind
        self.descriptors = DescriptorStore(self.bundle / "descriptors")
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._scorer: Optional[tuple[str, str, EnsembleScorer]] = None  # (model stamp, device, scorer)
        self._score_lock = threading.Lock()  # one image at a time: the scorer hooks its network
        self.background = False  # set by the app in the server process
        self.progress: dict[str, Any] = {"done": 0, "total": 0, "running": False, "model": None}

    def _stamp(self) -> str:
        return _model_stamp(self.bundle / "models" / "model.pt")

    def _stored(self, datastore: Datastore, image: str) -> Optional[dict]:
        """The stored scores of ``image`` with its descriptor, or ``None`` if either is missing."""
        info = datastore.get_image_info(image).get(SCORE_KEY)
        ok = (
            isinstance(info, dict)
            and info.get("kind") == self.kind
            and isinstance(info.get("uncertainty"), float)
            and math.isfinite(info["uncertainty"])
        )
        descriptor = self.descriptors.get(image, str(info.get("model")), self.kind) if ok else None
        return {**info, "descriptor": descriptor} if descriptor else None

    def score(self, datastore: Datastore, images: Sequence[str], device: str = "cpu") -> dict[str, dict]:
        """The current scores of the servable ``images``, computing (and storing) what is missing or was
        computed by an older ``model.pt``: studies that fail the screen, or whose scoring fails or gives
        non-finite numbers, are logged and left out."""
        stamp = self._stamp()
        scores = {}
        servable = datastore.servable(list(images)) if isinstance(datastore, CheckedDatastore) else list(images)
        for image in servable:
            info = self._stored(datastore, image)
            if not info or info.get("model") != stamp:
                try:
                    info = {
                        **self._score_one(datastore.get_image_uri(image), stamp, device),
                        "model": stamp,
                        "kind": self.kind,
                    }
                except Exception as e:  # one study the model cannot run on must not take down the pool
                    logger.warning(f"{SCORE_KEY}: {image} skipped, scoring failed: {type(e).__name__}: {e}")
                    continue
                if not math.isfinite(info["uncertainty"]) or not all(map(math.isfinite, info["descriptor"])):
                    logger.warning(f"{SCORE_KEY}: {image} skipped, its scores are not finite")
                    continue
                self.descriptors.put(image, stamp, self.kind, info["descriptor"])
                datastore.update_image_info(image, {SCORE_KEY: {k: v for k, v in info.items() if k != "descriptor"}})
                logger.info(f"{SCORE_KEY}: {image} uncertainty {info['uncertainty']:.6f}")
            scores[image] = info
        return scores

    def _score_one(self, path: str, stamp: str, device: str) -> dict[str, Any]:
        with self._score_lock:
            if self._scorer is None or self._scorer[:2] != (stamp, device):  # the network of this model.pt
                self._scorer = (stamp, device, EnsembleScorer(self.bundle, device=device, kind=self.kind))
            return self._scorer[2](path)

    def start(self, datastore: Datastore, device: str = "cpu") -> None:
        """Score the pool in a background thread, unless one is running."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run, args=(datastore, device), name="qdd-ens-scoring", daemon=True
            )
            self._thread.start()

    def _run(self, datastore: Datastore, device: str) -> None:
        images = datastore.get_unlabeled_images() + datastore.get_labeled_images()
        stamp = self._stamp()
        self.progress = {"done": 0, "total": len(images), "running": True, "model": stamp}
        try:
            for image in images:
                self.score(datastore, [image], device)
                self.progress["done"] += 1
        except Exception as e:
            logger.error(f"{SCORE_KEY}: background scoring stopped: {type(e).__name__}: {e}")
        finally:
            self.progress["running"] = False
            logger.info(f"{SCORE_KEY}: background scoring done ({self.progress['done']}/{len(images)})")

    def scores_for(self, datastore: Datastore, images: Sequence[str], request: dict[str, Any]) -> dict[str, dict]:
        """What a strategy ranks ``images`` by: inline current scores (``wait_for_scores`` or no background
        thread), else the stored ones (current or previous model) while the background thread updates them."""
        device = request.get("device", "cpu")
        if not self.background or strtobool(str(request.get("wait_for_scores", "false"))):
            return self.score(datastore, images, device)
        servable = datastore.servable(list(images)) if isinstance(datastore, CheckedDatastore) else list(images)
        stored = {i: info for i in servable if (info := self._stored(datastore, i))}
        stamp = self._stamp()
        if len(stored) < len(servable) or any(v.get("model") != stamp for v in stored.values()):
            self.start(datastore, device)
        return stored

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        images = datastore.get_unlabeled_images() + datastore.get_labeled_images()
        scores = self.score(datastore, images, request.get("device", "cpu"))
        return {"scored": len(scores), "skipped": len(images) - len(scores)}


def _reply(
    picked: list[str], scores: dict[str, dict], config: SuggestiveConfig, scoring: EnsembleScoring, **extra: Any
) -> dict[str, Any]:
    """The strategy's answer: the first pick as ``id``, all of them as ``batch`` (no descriptors)."""
    return {
        "id": picked[0],
        "uncertainty": scores[picked[0]]["uncertainty"],
        "batch": picked,
        "batch_uncertainty": [scores[i]["uncertainty"] for i in picked],
        **extra,
        "config": config.as_dict(),
        "scoring": dict(scoring.progress),
    }


class UncertaintyStrategy(Strategy):
    """The ``batch_size`` unlabeled images the ensemble's members disagree on most (the first is the answer's
    ``id``).

    Request keys: ``batch_size`` (default: the app's, see :class:`~qddens_monai.label.selection.SuggestiveConfig`).
    """

    def __init__(self, scoring: EnsembleScoring, config: Optional[SuggestiveConfig] = None) -> None:
        super().__init__("Most uncertain image(s) (QDD-Ens member disagreement)")
        self.scoring = scoring
        self.config = config or SuggestiveConfig(disagreement=scoring.kind)

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "config": {"batch_size": self.config.batch_size, "disagreement": self.config.disagreement},
        }

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> Optional[dict[str, Any]]:
        config = replace(self.config.with_request({"batch_size": request.get("batch_size")}), representativeness=False)
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        scores = self.scoring.scores_for(datastore, images, request)
        if not scores:
            return None
        names = list(scores)
        picked = [names[i] for i in select_batch([scores[n]["uncertainty"] for n in names], None, config)]
        return _reply(picked, scores, config, self.scoring)


class SuggestiveStrategy(Strategy):
    """QSA suggestive annotation: the ``top_n`` most uncertain unlabeled images, then the ``batch_size`` of them
    that greedily maximize cosine max-cover representativeness over the whole unlabeled pool (the first is
    the answer's ``id``); with ``representativeness`` off, the ``batch_size`` most uncertain.

    Request keys: ``batch_size``, ``top_n``, ``representativeness``, ``cover_labeled`` (labeled images
    also count as covering the pool, so near-duplicates of labeled images gain little); defaults: the
    app's (see :class:`~qddens_monai.label.selection.SuggestiveConfig`).
    """

    def __init__(self, scoring: EnsembleScoring, config: Optional[SuggestiveConfig] = None) -> None:
        super().__init__("Suggestive annotation: top-N uncertain, then most representative (QSA)")
        self.scoring = scoring
        self.config = config or SuggestiveConfig(disagreement=scoring.kind)

    @property
    def top_n(self) -> int:
        return self.config.top_n

    def info(self) -> dict[str, Any]:
        return {**super().info(), "config": self.config.as_dict()}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> Optional[dict[str, Any]]:
        config = self.config.with_request(request)
        unlabeled = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        scores = self.scoring.scores_for(datastore, unlabeled, request)
        images = list(scores)  # the servable unlabeled images
        if not images:
            return None
        descriptors = torch.tensor([scores[i]["descriptor"] for i in images])
        covered = None
        if config.representativeness and config.cover_labeled:
            labeled = self.scoring.scores_for(datastore, datastore.get_labeled_images(), request)
            covered = torch.tensor([v["descriptor"] for v in labeled.values()]) if labeled else None
        picked = [
            images[i] for i in select_batch([scores[i]["uncertainty"] for i in images], descriptors, config, covered)
        ]
        return _reply(picked, scores, config, self.scoring, top_n=max(config.top_n, config.batch_size))
