"""Keep the weights out of a Model Zoo pull request: move large files aside and list them in ``large_files.yml``.

The Model Zoo's pre-commit refuses files over 1 MB (``check-added-large-files --maxkb=1024``); weights
are hosted elsewhere and listed in the bundle's ``large_files.yml`` (``path``, ``url``, ``hash_val``,
``hash_type``), which the zoo's CI downloads with ``monai.apps.download_url`` before checking the bundle.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Union
from urllib.parse import urlparse

__all__ = ["LARGE_FILE_BYTES", "check_weights_url", "large_files", "large_files_yml", "sha256", "split_weights"]

PathLike = Union[str, os.PathLike]
#: The zoo's pre-commit ``check-added-large-files --maxkb=1024``: larger files cannot be in the pull request.
LARGE_FILE_BYTES = 1024 * 1024


def sha256(path: PathLike) -> str:
    """The sha256 hex digest of the file ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_weights_url(url: str) -> str:
    """``url`` without a trailing ``/`` if it is an http(s) or ftp base address, else raise ``ValueError``.

    An empty url would be written as ``url: ""``, which the zoo's ``download_large_files`` fails on
    (``unknown url type: ''``); it is refused here instead.
    """
    parsed = urlparse(str(url or "").strip())
    if parsed.scheme not in ("http", "https", "ftp") or not parsed.netloc:
        raise ValueError(
            f"weights url {url!r} is not an http(s) address: give the base address the weight files will be "
            "uploaded to (e.g. a GitHub release: https://github.com/OWNER/REPO/releases/download/TAG)."
        )
    return parsed.geturl().rstrip("/")


def large_files(folder: PathLike, limit: int = LARGE_FILE_BYTES) -> list[Path]:
    """The files under ``folder`` larger than ``limit`` bytes, sorted (``__pycache__`` ignored)."""
    return sorted(
        p for p in Path(folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.stat().st_size > limit
    )


def large_files_yml(entries: list[dict]) -> str:
    """``large_files.yml`` text for ``entries`` (each ``path``, ``url``, ``hash_val``, ``hash_type``)."""
    if not entries:
        return "large_files: []\n"
    lines = ["large_files:"]
    for e in entries:
        if not e.get("url"):
            raise ValueError(f"large file {e.get('path')!r} has no url: the zoo could not download it.")
        lines += [
            f'  - path: "{e["path"]}"',
            f'    url: "{e["url"]}"',
            f'    hash_val: "{e["hash_val"]}"',
            f'    hash_type: "{e["hash_type"]}"',
        ]
    return "\n".join(lines) + "\n"


def split_weights(
    folder: PathLike, weights_dir: PathLike, weights_url: str, limit: int = LARGE_FILE_BYTES
) -> list[dict]:
    """Move ``folder``'s files over ``limit`` bytes to ``weights_dir`` (same relative paths); list them.

    Writes ``folder/large_files.yml`` with each moved file's ``url`` (``weights_url/<file name>``), sha256
    and relative ``path``; the files in ``weights_dir`` are the ones to upload to ``weights_url``.
    Returns the entries. Raises ``ValueError`` for an empty / non-http ``weights_url`` or two large
    files with the same name (their urls would collide).
    """
    base = check_weights_url(weights_url)
    folder, weights_dir = Path(folder), Path(weights_dir)
    entries, names = [], set()
    for f in large_files(folder, limit):
        rel = f.relative_to(folder).as_posix()
        if f.name in names:
            raise ValueError(f"two large files are named {f.name}: their urls under {base} would collide.")
        names.add(f.name)
        entries.append({"path": rel, "url": f"{base}/{f.name}", "hash_val": sha256(f), "hash_type": "sha256"})
        dest = weights_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(f), dest)
    (folder / "large_files.yml").write_text(large_files_yml(entries))
    return entries
