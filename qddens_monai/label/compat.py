"""Importing MONAI Label 0.8.5 next to pydicom 3 and without torchvision.

Two of MONAI Label's modules cannot be imported in this environment, although the server never
uses what breaks in them:

- ``monailabel.datastore.utils.convert`` imports ``pydicom_seg`` 0.4.1, which imports
  ``pydicom._storage_sopclass_uids`` (removed in pydicom 3). It is only used to convert DICOM SEG
  objects of a DICOMweb datastore; local studies never reach it.
- ``monailabel.transform.post`` imports ``torchvision.utils`` at module level for one 2D debug
  transform (``DumpImagePrediction2Dd``); the bundle infer task needs the module for ``Restored``.

:func:`import_monailabel` imports exactly those two modules with stand-ins present only during that
import, then removes the stand-ins, so nothing else sees a fake ``torchvision``. The stand-in
functions raise a clear ``ImportError`` if the debug transform is ever called.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

from monai.utils import optional_import

__all__ = ["import_monailabel", "monailabel_available"]

_DONE = False


def monailabel_available() -> bool:
    """Whether the ``label`` extra (``monailabel``) is installed."""
    return importlib.util.find_spec("monailabel") is not None


def _missing_torchvision(*args: Any, **kwargs: Any) -> Any:
    raise ImportError(
        "torchvision is not installed: MONAI Label's 2D debug image dump needs it "
        "(`pip install torchvision` matching your torch build)."
    )


def _stand_ins() -> dict[str, types.ModuleType]:
    mods: dict[str, types.ModuleType] = {}
    if importlib.util.find_spec("torchvision") is None:
        tv = types.ModuleType("torchvision")
        tv_utils = types.ModuleType("torchvision.utils")
        tv_utils.make_grid = _missing_torchvision  # type: ignore[attr-defined]
        tv_utils.save_image = _missing_torchvision  # type: ignore[attr-defined]
        tv.utils = tv_utils  # type: ignore[attr-defined]
        mods.update({"torchvision": tv, "torchvision.utils": tv_utils})
    _, has_old_uids = optional_import("pydicom._storage_sopclass_uids")
    if not has_old_uids:  # pydicom >= 3 moved the SOP class UIDs to pydicom.uid
        import pydicom.uid

        uids = types.ModuleType("pydicom._storage_sopclass_uids")
        uids.__dict__.update({k: v for k, v in vars(pydicom.uid).items() if k.endswith("Storage")})
        mods["pydicom._storage_sopclass_uids"] = uids
    return mods


def import_monailabel() -> None:
    """Import MONAI Label's modules that fail here (see the module docstring); idempotent.

    Raises:
        ImportError: MONAI Label is not installed, with the install command.
    """
    global _DONE
    if _DONE:
        return
    if not monailabel_available():
        raise ImportError(
            "MONAI Label is not installed. Install the label extra: "
            "pip install --no-deps monailabel==0.8.5 pydicom-seg==0.4.1 && pip install -e '.[label]'"
        )
    stand_ins = {k: v for k, v in _stand_ins().items() if k not in sys.modules}
    sys.modules.update(stand_ins)
    try:
        importlib.import_module("monailabel.datastore.utils.convert")
        importlib.import_module("monailabel.transform.post")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    _DONE = True
