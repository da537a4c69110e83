"""Training from the label server: checked request, checked data, the bundle's schedule, safe weights.

:class:`CheckedTrainTask` is MONAI Label's :class:`~monailabel.tasks.train.bundle.BundleTrainTask` with:

- **request checked** (:func:`check_train_request`): MONAI Label passes request values into the
  bundle config as overrides, where a string such as ``"$__import__('os')..."`` would be evaluated;
  only the documented keys with their types are accepted, ``run_id`` must be ``run``, the weights
  file must be a ``models/*.pt`` name, and experiment tracking (which writes elsewhere) is off;
- **data checked**: the datastore's datalist goes through the bundle's own
  :func:`qddens_monai.data.check_datalist` before anything is built; the problems, not "Failed to
  instantiate CacheDataset", end the train status;
- **the bundle's schedule** by default: ``max_epochs`` is the bundle's ``max_epochs`` (full
  precision epochs plus the quantization steps), not MONAI Label's 50;
- **weights replaced only by a finished run**: checkpoints go to a staging folder; ``models/model.pt``
  is replaced (atomically) only when the run returns normally, so a failed or refused run leaves it
  byte-identical;
- **train stats**: MONAI Label's ``prepare_stats`` (epoch, times, metrics, best metric) written after
  every epoch and published as ``models/train_stats.json`` with the weights, shown as ``train_stats``
  in ``/info/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

from ..data import DataValidationError, check_datalist
from ..files import atomic_write_text
from .screening import problems_text

__all__ = ["CheckedTrainTask", "TrainingRefused", "TrainStatsWriter", "check_train_request"]

logger = logging.getLogger(__name__)

_BOOLS = ("pretrained", "multi_gpu", "force_multi_gpu")
_DROPPED = ("tracking", "tracking_uri", "tracking_experiment_name", "tracking_run_name")
_PASSED = ("model", "bundle_path", "local_rank", "client_id", "gpus", "device")


class TrainingRefused(RuntimeError):
    """Server training that did not start or did not finish; ``model.pt`` was left as it was."""


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"


def check_train_request(request: dict[str, Any], default_epochs: int, weights: list[str]) -> dict[str, Any]:
    """The train ``request`` with only known keys of the right types (see the module doc).

    Raises:
        TrainingRefused: naming the key and what is wrong with it.
    """
    out: dict[str, Any] = {}
    for key, value in request.items():
        if key in _DROPPED:
            continue
        if key == "max_epochs":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100000:
                raise TrainingRefused(f"max_epochs must be an integer from 1, got {value!r}")
        elif key == "val_split":
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value < 1
                or not math.isfinite(value)
            ):
                raise TrainingRefused(f"val_split must be a number in [0, 1), got {value!r}")
        elif key in _BOOLS:
            if not isinstance(value, bool):
                raise TrainingRefused(f"{key} must be true or false, got {value!r}")
        elif key == "run_id":
            if value != "run":
                raise TrainingRefused(f"run_id must be 'run' (the bundle's training), got {value!r}")
        elif key == "model_filename":
            value = value[0] if isinstance(value, list) and value else value
            if value not in weights:
                raise TrainingRefused(f"model_filename must be one of {weights}, got {value!r}")
        elif key in _PASSED:
            value = value[0] if key == "device" and isinstance(value, list) and value else value
            if not isinstance(value, (str, int)) or (isinstance(value, str) and value[:1] in "$@%"):
                raise TrainingRefused(f"{key} {value!r} is not allowed")
        else:
            raise TrainingRefused(
                f"unknown train option {key!r} (known: max_epochs, val_split, pretrained, "
                "multi_gpu, gpus, device, model_filename)"
            )
        out[key] = value
    out.setdefault("max_epochs", default_epochs)
    out["tracking"] = "None"
    return out


class TrainStatsWriter:
    """Writes MONAI Label's ``prepare_stats`` of the trainer (and evaluator) to ``path`` after every epoch.

    Args:
        path: the JSON file.
        evaluator: the bundle's validation evaluator, if any.
    """

    def __init__(self, path: str, evaluator: Any = None) -> None:
        self.path, self.evaluator, self.start = Path(path), evaluator, time.time()

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        from monailabel.tasks.train.handler import prepare_stats

        stats = prepare_stats(self.start, engine, self.evaluator)
        atomic_write_text(self.path, json.dumps(stats, indent=2, default=str))


class CheckedTrainTask(BundleTrainTask):
    """See the module doc. Args as :class:`BundleTrainTask` (``path``: the label bundle)."""

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        super().__init__(path, conf, **kwargs)
        if self.valid:
            cfg = self.bundle_config
            self.schedule_epochs = int(cfg.get_parsed_content("max_epochs"))
            self.data_args = {k: int(cfg.get_parsed_content(k)) for k in ("spatial_dims", "in_channels", "num_classes")}
        self._staging: Path | None = None

    def _weights(self) -> list[str]:
        return sorted(p.name for p in (Path(self.bundle_path) / "models").glob("*.pt"))

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["max_epochs"] = self.schedule_epochs  # the bundle's schedule, quantization steps included
        for key in _DROPPED:
            config.pop(key, None)
        return config

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        items = list(overrides.get("train#dataset#data") or []) + list(overrides.get("validate#dataset#data") or [])
        try:
            check_datalist(items, **self.data_args)
        except DataValidationError as e:
            raise TrainingRefused(
                f"training refused, model.pt unchanged: the labeled data fails the bundle's "
                f"checks: {problems_text(e)}"
            ) from None
        assert self._staging is not None
        overrides["ckpt_dir"] = str(self._staging)
        evaluator = "@validate#evaluator" if self.bundle_config.get("validate#evaluator") is not None else None
        overrides["train#handlers"] = list(overrides.get("train#handlers") or []) + [
            {
                "_target_": f"{__name__}.TrainStatsWriter",
                "path": str(self._staging / "train_stats.json"),
                "evaluator": evaluator,
            }
        ]
        return overrides

    def stats(self) -> dict[str, Any]:
        """The last finished run's ``train_stats.json`` (``{}`` before any)."""
        path = Path(self.bundle_path) / "models" / "train_stats.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        request = check_train_request(request, self.schedule_epochs, self._weights())
        model = Path(self.bundle_path) / "models" / "model.pt"
        self._staging = Path(self.bundle_path) / f".staging-{uuid.uuid4().hex[:8]}"
        self._staging.mkdir()
        try:
            result = super().__call__(request, datastore)
            trained = self._staging / "model.pt"
            if not trained.is_file():
                raise TrainingRefused("training ended without writing model.pt; the served weights are unchanged")
            for name in ("train_stats.json", "plan.json"):  # the plan: the crop the new weights were trained with
                if (self._staging / name).is_file():
                    os.replace(self._staging / name, model.with_name(name))
            os.replace(trained, model)
            logger.info(f"training finished: {model} replaced")
            return result or {}
        except TrainingRefused:
            raise
        except Exception as e:
            raise TrainingRefused(f"training failed, model.pt unchanged: {_root_cause(e)}") from e
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
