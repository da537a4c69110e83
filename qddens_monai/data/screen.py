"""Batch inference over many files where some are bad: segment the good ones, report the bad ones.

:class:`InputScreen` checks every input of an inference datalist once with :func:`check_datalist` (one
entry at a time, so one bad file does not stop the others); the bundle's evaluator runs on
:attr:`InputScreen.good`. :meth:`InputScreen.finish` (in ``finalize``) writes ``inference_report.json``
and raises :class:`InferenceInputError` if any input failed, so the process exits non-zero::

    "screen": {"_target_": "qddens_monai.data.InputScreen", "items": "@datalist", "report_path": ...},
    "dataset": {"_target_": "Dataset", "data": "$@screen.good", ...},
    "finalize": ["$@screen.finish()"]

Bad inputs are never passed to the writer, so an earlier prediction under a bad input's name is left as it was.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

from ..files import atomic_write_text
from .checks import DataValidationError, check_datalist

__all__ = ["InputScreen", "InferenceInputError"]

logger = logging.getLogger(__name__)


class InferenceInputError(RuntimeError):
    """Some inputs of a batch inference could not be segmented; the report file lists them."""


class InputScreen:
    """Check every inference input and split them into ``good`` items and ``failed`` ones with reasons.

    Args:
        items: the inference datalist, ``[{"image": path}, ...]``.
        report_path: the JSON report written by :meth:`finish`.
        spatial_dims: spatial dimensions the network expects (e.g. 3: a 4D NIfTI fails).
        in_channels: channels the network expects.
        image_key: the item key of the input file.
    """

    def __init__(
        self,
        items: Sequence[dict],
        report_path: str,
        spatial_dims: int | None = None,
        in_channels: int | None = None,
        image_key: str = "image",
    ) -> None:
        self.items, self.report_path, self.image_key = list(items), os.fspath(report_path), image_key
        self.good: list[dict] = []
        self.failed: list[dict] = []
        try:  # one pass over all inputs (one reader set-up); problems are then assigned to their entries
            check_datalist(self.items, spatial_dims=spatial_dims, in_channels=in_channels, image_key=image_key)
            problems: list[tuple[str, str]] = []
        except DataValidationError as e:
            problems = e.problems
        for n, item in enumerate(self.items):
            names = {f"datalist entry {n}"}
            if isinstance(item, dict) and item.get(image_key):
                files = item[image_key] if isinstance(item[image_key], (list, tuple)) else [item[image_key]]
                names |= {str(f) for f in files}
            mine = [f"{where}: {what}" for where, what in problems if where in names]
            if mine:
                source = item.get(image_key, item) if isinstance(item, dict) else item
                self.failed.append({image_key: str(source), "problems": mine})
                logger.warning(f"skipping {source}: {'; '.join(mine)}")
            else:
                self.good.append(item)
        logger.info(f"{len(self.good)} of {len(self.items)} inputs pass the checks; {len(self.failed)} are skipped.")

    def report(self) -> dict:
        """``{"inputs", "segmented", "failed": [{"image", "problems"}]}``."""
        return {
            "inputs": len(self.items),
            "segmented": [str(i[self.image_key]) for i in self.good],
            "failed": self.failed,
        }

    def finish(self) -> dict:
        """Write the report (atomically) and raise :class:`InferenceInputError` if any input failed."""
        report = self.report()
        path = atomic_write_text(self.report_path, json.dumps(report, indent=2) + "\n")
        if self.failed:
            listed = "\n".join(f"  {f[self.image_key]}: {'; '.join(f['problems'])}" for f in self.failed)
            raise InferenceInputError(
                f"{len(self.failed)} of {report['inputs']} inputs were not segmented (the other "
                f"{len(self.good)} were written); report: {path}\n{listed}"
            )
        return report
