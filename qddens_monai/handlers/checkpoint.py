"""Checkpoints that survive a kill, and per-epoch seeding so that a resumed run equals an uninterrupted one.

- :class:`AtomicCheckpointSaver` is MONAI's ``CheckpointSaver`` with ignite's atomic writes (a temporary
  file in the same folder, then ``os.replace``): a process killed while saving leaves the previous file
  under the checkpoint's name intact. MONAI turns atomic writes off because ignite's temporary files
  used to be private to the user; ignite now adds group/other read permission after the move.
- :func:`find_checkpoint` resolves ``--resume_from``: a file (checked before training starts) or
  ``latest``, the newest checkpoint of a folder that loads (a damaged one is skipped with a warning).
- :class:`EpochSeedHandler` reseeds torch / NumPy / ``random`` and the dataset's random transforms from
  ``(seed, epoch, rank)`` at every epoch start. The random streams then depend only on the epoch, so a
  run resumed at epoch ``e`` draws the same crops, flips and shuffles as the run that was interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from ..distributed import rank_and_world_size
from ..files import atomic_write_text

__all__ = ["AtomicCheckpointSaver", "EpochSeedHandler", "find_checkpoint", "RESUME_KEYS"]

logger = logging.getLogger(__name__)

#: what a resumable training checkpoint holds (the bundle's ``checkpoint_saver#save_dict``)
RESUME_KEYS: tuple[str, ...] = ("model", "optimizer", "trainer")


class _AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` with ``atomic=True``, like MONAI's an optional fixed file name, and JSON files
    written (atomically, on rank 0) before every checkpoint."""

    def __init__(self, dirname: str, filename: str | None = None, beside: Mapping[str, Any] | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename, self.beside = filename, dict(beside or {})

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if self.beside and rank_and_world_size()[0] == 0:
            for name, content in self.beside.items():
                atomic_write_text(os.path.join(self.dirname, name), json.dumps(content, indent=2))
        super().__call__(checkpoint, self.filename or filename, metadata)

    def remove(self, filename: str) -> None:
        super().remove(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's :class:`~monai.handlers.CheckpointSaver` whose every file (interval, final, best) is written
    atomically. Same arguments as ``CheckpointSaver``, and:

    Args:
        beside: ``{file name: JSON-serializable content}`` written into ``save_dir`` just before every
            checkpoint, e.g. ``{"plan.json": ...}``, the settings the weights were trained with: a reader never
            finds weights next to the settings of another run (a run killed before its first save leaves both
            as they were).

    ignite removes the oldest interval checkpoint *before* writing the new one, so with ``n_saved=1`` a
    kill during a save leaves no checkpoint at all; keep ``n_saved >= 2`` for resumable checkpoints.
    """

    def __init__(self, save_dir: str, save_dict: dict, beside: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(
                    self.save_dir, getattr(checkpoint.save_handler, "filename", None), beside
                )


_NUMBER = re.compile(r"(?:epoch|iteration)=(\d+)")


def _check_loadable(path: Path, keys: Sequence[str]) -> str | None:
    """``None`` if ``path`` is a checkpoint holding ``keys``, else what is wrong with it."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, not a torch file, ...
        return (
            f"cannot be loaded ({type(e).__name__}: {str(e).strip().splitlines()[-1][:160] if str(e).strip() else ''})"
        )
    if not isinstance(content, dict):
        return f"holds a {type(content).__name__}, not a checkpoint dict"
    missing = [k for k in keys if k not in content]
    if missing:
        return (
            f"is not a resumable training checkpoint: no {missing} (it has {sorted(content)[:8]}); "
            "use a checkpoint from eval/checkpoints"
        )
    return None


def find_checkpoint(resume_from: str, checkpoint_dir: str, keys: Sequence[str] = RESUME_KEYS) -> str:
    """The checkpoint file to resume from, checked before anything runs.

    Args:
        resume_from: ``""`` (no resume: returns ``""``), ``"latest"`` (the newest checkpoint in
            ``checkpoint_dir`` that loads, by the epoch/iteration number in its name), or a file path.
        checkpoint_dir: the folder of the interval checkpoints (``output_dir/checkpoints``).
        keys: entries a resumable checkpoint must have.

    Raises:
        FileNotFoundError: the file does not exist, or ``latest`` finds no loadable checkpoint.
        ValueError: the file is damaged or is not a training checkpoint (e.g. ``models/model.pt``).
    """
    if not isinstance(resume_from, (str, os.PathLike)):
        raise TypeError(
            f"resume_from must be a file path or 'latest', got {resume_from!r} ({type(resume_from).__name__})."
        )
    resume_from = os.fspath(resume_from)
    if not resume_from:
        return ""
    if resume_from != "latest":
        path = Path(resume_from)
        if not path.is_file():
            raise FileNotFoundError(
                f"resume_from {path}: no such checkpoint file (use 'latest' for the newest in {checkpoint_dir})."
            )
        problem = _check_loadable(path, keys)
        if problem:
            raise ValueError(f"resume_from {path}: {problem}.")
        return str(path)
    folder = Path(checkpoint_dir)
    candidates = (
        [(int(m.group(1)), p) for p in folder.glob("*.pt") if (m := _NUMBER.search(p.name))] if folder.is_dir() else []
    )
    for _, path in sorted(candidates, reverse=True):
        problem = _check_loadable(path, keys)
        if problem is None:
            logger.info(f"resume_from latest: {path}")
            return str(path)
        warnings.warn(f"resume_from latest: skipping {path}, it {problem}.", stacklevel=2)
    raise FileNotFoundError(
        f"resume_from latest: no loadable checkpoint in {folder} (found {len(candidates)} candidate(s))."
    )


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0])


class EpochSeedHandler:
    """Reseed every random stream of a training at each ``EPOCH_STARTED`` from ``(seed, epoch, rank)``.

    Without it the streams run on from start-up, so a run resumed at epoch ``e`` would draw other crops
    and shuffles than the uninterrupted run did at epoch ``e``. With it, epoch ``e`` is the same either way.

    Args:
        seed: the run's seed (the bundle's ``seed``).
        transforms: the training dataset's transform (a ``Compose``) or any ``Randomizable``; its random
            transforms get their own ``RandomState`` reseeded too. ``None``: only the global generators.
    """

    def __init__(self, seed: int, transforms: Any = None) -> None:
        self.seed, self.transforms = int(seed), transforms

    def attach(self, engine: Engine) -> None:
        # list it first in ``train_handlers``: later EPOCH_STARTED handlers then see the new state
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from monai.utils import set_determinism

        rank = rank_and_world_size()[0]
        seed = _epoch_seed(self.seed, engine.state.epoch, rank)
        set_determinism(seed=seed)
        if self.transforms is not None and hasattr(self.transforms, "set_random_state"):
            self.transforms.set_random_state(seed=seed)
