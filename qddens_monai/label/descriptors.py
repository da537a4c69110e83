"""The images' descriptors, kept beside the bundle instead of in the datastore's image info.

MONAI Label's ``/activelearning`` reply carries the picked image's whole image info, and
``/datastore/image/info`` returns it: a descriptor (hundreds of floats per image) there would be a
dump of numbers no client needs. Image info keeps the small scores (uncertainty, model, kind);
the descriptors live in ``<bundle>/descriptors/<sha1 of the image id>.json`` with the model stamp and
kind they were computed for, written atomically, cached in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from pathlib import Path
from typing import Optional, Sequence, Union

from ..files import atomic_write_text

__all__ = ["DescriptorStore"]


class DescriptorStore:
    """Descriptors per (image id, model stamp, kind), on disk under ``root``.

    Args:
        root: the folder (created on the first write).
    """

    def __init__(self, root: Union[str, os.PathLike]) -> None:
        self.root = Path(root)
        self._cache: dict[str, tuple[str, str, list[float]]] = {}
        self._lock = threading.Lock()

    def path(self, image: str) -> Path:
        """The file of ``image``'s descriptor."""
        return self.root / f"{hashlib.sha1(image.encode('utf-8')).hexdigest()}.json"

    def get(self, image: str, model: str, kind: str) -> Optional[list[float]]:
        """The stored descriptor of ``image`` for this model stamp and kind, else ``None``."""
        with self._lock:
            entry = self._cache.get(image)
        if entry is None:
            try:
                data = json.loads(self.path(image).read_text())
                entry = (str(data["model"]), str(data["kind"]), [float(v) for v in data["descriptor"]])
            except (OSError, ValueError, KeyError, TypeError):
                return None
            with self._lock:
                self._cache[image] = entry
        ok = entry[:2] == (model, kind) and entry[2] and all(map(math.isfinite, entry[2]))
        return list(entry[2]) if ok else None

    def put(self, image: str, model: str, kind: str, descriptor: Sequence[float]) -> None:
        """Store ``image``'s descriptor (replacing an older one)."""
        values = [float(v) for v in descriptor]
        atomic_write_text(
            self.path(image), json.dumps({"image": image, "model": model, "kind": kind, "descriptor": values})
        )
        with self._lock:
            self._cache[image] = (model, kind, values)
