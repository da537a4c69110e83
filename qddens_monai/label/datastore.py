"""MONAI Label's local datastore, confined to its studies folder, screening what comes in.

:class:`CheckedDatastore` is MONAI Label's :class:`~monailabel.datastore.local.LocalDatastore` with:

- every image id and label tag checked (:mod:`qddens_monai.label.confine`) and every written path
  confined to the studies folder: ``../x``, absolute paths and separators in tags are refused (400);
- studies screened (:class:`~qddens_monai.label.screening.StudyScreen`): an uploaded study that the
  model cannot serve is refused (422, nothing stored); a study dropped into the folder is listed, and
  :meth:`CheckedDatastore.study_problem` tells why it cannot be served; a DICOM series folder added
  while the server runs is converted when its id is first asked for;
- labels checked against their image on save (422 naming the problem; nothing stored); a new label
  replaces the image's label of that tag whatever its format (no PNG and NIfTI label side by side);
- only finite numbers in ``datastore_v2.json`` and in what the API returns: a NaN or infinity is
  stored as ``null`` (also when loading a file written before).
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any, Optional

from monailabel.datastore.local import LocalDatastore

from .confine import RequestRefused, check_image_id, check_tag, confined
from .screening import StudyScreen
from .studies import convert_dicom_studies

__all__ = ["CheckedDatastore", "finite"]

logger = logging.getLogger(__name__)


def finite(value: Any) -> Any:
    """``value`` with every NaN / infinite float (in nested dicts and lists) replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class CheckedDatastore(LocalDatastore):
    """See the module doc.

    Args:
        datastore_path: the studies folder.
        screen: checks studies and labels against the served bundle.
        kwargs: :class:`LocalDatastore`'s (``extensions``, ``auto_reload``, ``read_only``).
    """

    def __init__(self, datastore_path: str, screen: StudyScreen, **kwargs: Any) -> None:
        self.screen = screen
        self._write_lock = threading.RLock()  # the background scoring thread writes too
        super().__init__(datastore_path, **kwargs)
        self._clean_loaded()

    # -- finite numbers only ---------------------------------------------------------------------
    def _clean_loaded(self) -> None:
        for obj in self._datastore.objects.values():
            obj.image.info = finite(obj.image.info)
            for label in obj.labels.values():
                label.info = finite(label.info)

    def _init_from_datastore_file(self, throw_exception: bool = False) -> None:
        super()._init_from_datastore_file(throw_exception)
        if hasattr(self, "screen"):
            self._clean_loaded()

    def _update_datastore_file(self, lock: bool = True) -> None:
        with self._write_lock:
            self._clean_loaded()
            super()._update_datastore_file(lock)

    def json(self) -> dict:
        with self._write_lock:
            return finite(super().json())

    # -- ids, tags, paths -------------------------------------------------------------------------
    def _known(self, image_id: str) -> str:
        check_image_id(image_id)
        if image_id not in self._datastore.objects and (Path(self._datastore_path) / image_id).is_dir():
            # a DICOM series folder added while the server runs (the file watcher sees files only)
            convert_dicom_studies(self._datastore_path, check=self.screen.study_problem)
            self.refresh()
        if image_id not in self._datastore.objects:
            refused = self.screen.refused().get(str(Path(self._datastore_path) / image_id))
            if refused:  # a DICOM series folder that was not converted
                raise RequestRefused(422, f"study {image_id!r} cannot be served: {refused}")
            raise RequestRefused(404, f"image {image_id!r} is not in the datastore")
        return image_id

    def study_problem(self, image_id: str) -> Optional[str]:
        """Why study ``image_id`` cannot be served (its file, or the DICOM series folder it was converted
        from, fails the bundle's checks); ``None`` if it can. Unknown ids are refused (404)."""
        self._known(image_id)
        source = Path(self._datastore_path) / image_id
        if source.is_dir():  # a DICOM series folder converted to <id>.nii.gz: its slice geometry counts
            problem = self.screen.study_problem(source)
            if problem:
                return problem
        return self.screen.study_problem(self.get_image_uri(image_id))

    def servable(self, images: list[str]) -> list[str]:
        """The ``images`` that pass the screen (the others are logged and skipped)."""
        return [i for i in images if not self.study_problem(i)]

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[list[str]] = None) -> list[str]:
        """The unlabeled images that can be served: what every strategy (``random`` and ``first`` too)
        chooses from, so a study the model cannot run on is never suggested."""
        return self.servable(super().get_unlabeled_images(label_tag, labels))

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        info = finite(super().get_image_info(self._known(image_id)))
        problem = self.study_problem(image_id)
        if problem:
            info["problem"] = problem
        return info

    def get_image_uri(self, image_id: str) -> str:
        return super().get_image_uri(check_image_id(image_id))

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        return super().get_label_uri(check_image_id(label_id, "label id"), check_tag(label_tag))

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        return finite(super().get_label_info(check_image_id(label_id, "label id"), check_tag(label_tag)))

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        with self._write_lock:
            super().update_image_info(self._known(image_id), finite(info))

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        super().update_label_info(check_image_id(label_id, "label id"), check_tag(label_tag), finite(info))

    def remove_image(self, image_id: str) -> None:
        super().remove_image(self._known(image_id))

    def remove_label(self, label_id: str, label_tag: str) -> None:
        super().remove_label(check_image_id(label_id, "label id"), check_tag(label_tag))

    # -- writes -----------------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        derived, ext = self._to_id(os.path.basename(image_filename))
        image_id = check_image_id(image_id or derived)
        confined(self._datastore.image_path(), self._filename(image_id, ext))
        if not any(fnmatch.fnmatch(image_id + ext, e) for e in self._extensions):
            raise RequestRefused(
                415, f"{ext or 'files without extension'} is not a study format here ({', '.join(self._extensions)})"
            )
        problem = self.screen.study_problem(image_filename)
        if problem:
            problem = problem.replace(Path(image_filename).name, image_id + ext)
            raise RequestRefused(422, f"study {image_id!r} refused: {problem}")
        return super().add_image(image_id, image_filename, finite(image_info))

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        self._known(image_id)
        tag = check_tag(label_tag)
        _, ext = self._to_id(os.path.basename(label_filename))
        confined(self._datastore.label_path(tag), self._filename(image_id, ext))
        problem = self.screen.label_problem(self.get_image_uri(image_id), label_filename, "uploaded label")
        if problem:
            raise RequestRefused(422, f"label for {image_id!r} refused: {problem}")
        old = self._datastore.label(image_id, tag)
        if old is not None and old.ext != ext:  # one label per image and tag, whatever its format
            old_file = Path(self._datastore.label_path(tag)) / self._filename(image_id, old.ext)
            old_file.unlink(missing_ok=True)
        return super().save_label(image_id, label_filename, tag, finite(label_info))
