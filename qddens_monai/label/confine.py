"""What a request to the label server may name: image ids, label tags, models; refused with a 4xx.

Everything a client sends that becomes part of a file path is checked here, once, so the datastore,
the app and the HTTP layer refuse the same things with the same message:

- an **image id** is a file name without its extension: any printable characters except path
  separators (``/``, ``\\``), NUL and control characters; not ``.`` or ``..``; at most 200
  characters (so ``../x``, ``/etc/passwd``, ``C:\\x`` are refused);
- a **label tag** is a folder name under ``labels/``: letters, digits, ``_``, ``-`` and ``.``, not
  starting with ``.``, at most 64 characters (``final``, ``original``, ``reviewer_2``);
- a resolved path must lie inside its root (symbolic links followed), checked by :func:`confined`.

:class:`RequestRefused` carries the HTTP status; the server answers ``{"detail": message}`` with it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

__all__ = ["RequestRefused", "check_image_id", "check_tag", "confined"]

_TAG = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}")
_ID_MAX = 200


class RequestRefused(Exception):
    """A request the server will not carry out; ``status`` is the HTTP status to answer (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)  # all the arguments: pickle and copy rebuild it from ``args``
        self.status = int(status)
        self.message = message

    def __str__(self) -> str:
        return self.message


def check_image_id(image_id: Optional[str], what: str = "image id") -> str:
    """``image_id`` if it is a plain name (see the module doc), else :class:`RequestRefused` (400)."""
    if image_id is None or not str(image_id).strip():
        raise RequestRefused(400, f"{what} is empty")
    text = str(image_id)
    if len(text) > _ID_MAX:
        raise RequestRefused(400, f"{what} is longer than {_ID_MAX} characters")
    bad = sorted({c for c in text if c in "/\\" or ord(c) < 32 or ord(c) == 127})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise RequestRefused(400, f"{what} {text!r} contains {shown}: ids are file names, without folders")
    if text in (".", ".."):
        raise RequestRefused(400, f"{what} {text!r} is not a file name")
    return text


def check_tag(tag: Optional[str]) -> str:
    """``tag`` if it is a plain folder name (see the module doc), else :class:`RequestRefused` (400)."""
    text = "" if tag is None else str(tag)
    if _TAG.fullmatch(text):
        return text
    if any(c in text for c in "/\\"):
        why = "contains a path separator"
    elif ".." in text or text.startswith("."):
        why = "is a relative path or hidden name"
    elif not text:
        why = "is empty"
    elif len(text) > 64:
        why = "is longer than 64 characters"
    else:
        why = "has characters other than letters, digits, '_', '-', '.'"
    raise RequestRefused(
        400, f"label tag {text!r} {why}: a tag is a folder name (letters, digits, '_', '-', '.'; not starting with '.')"
    )


def confined(root: Union[str, os.PathLike], *parts: str) -> Path:
    """``root / parts``, resolved, if it lies inside ``root`` (resolved); else :class:`RequestRefused` (400)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise RequestRefused(400, f"{'/'.join(parts)!r} resolves outside the studies folder")
    return path
