"""Copy the code a bundle needs into the bundle folder (``scripts/``), so it runs without ``qddens_monai`` installed."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

__all__ = [
    "VENDOR_PACKAGE", "VENDOR_EXCLUDE", "format_like_the_zoo", "vendor_package", "rewrite_names", "rewrite_config"
]

#: Where the package lives inside an exported bundle: the Model Zoo's ``scripts`` convention
#: (``python -m monai.bundle run`` puts the bundle folder on ``sys.path``).
VENDOR_PACKAGE = "scripts.qddens_monai"
#: Package files (or folders, ending in ``/``) an exported bundle does not need: the command line,
#: the demo command, the MONAI Label app (it has its own extra) and the exporter itself (the
#: vendored ``export`` package keeps only the ONNX Runtime wrapper).
VENDOR_EXCLUDE = ("__main__.py", "cli.py", "demo.py", "label/", "export/zoo.py", "export/zoo_ci.py", "export/vendor.py",
                  "export/readme.py", "export/weights.py", "export/dependencies.py",
                  "export/metadata.py")

_NAME = re.compile(r"(?<![\w.])qddens_monai\b")
_EXPORT_INIT = '''"""ONNX Runtime inference (vendored by qddens-monai export-zoo)."""

from {package}.export.onnx import OnnxRuntimeNetwork, export_onnx, quantize_onnx_int8

__all__ = ["OnnxRuntimeNetwork", "export_onnx", "quantize_onnx_int8"]
'''


def rewrite_names(value: Any, package: str = VENDOR_PACKAGE) -> Any:
    """``value`` (a config: dicts, lists, strings) with every ``qddens_monai`` module name pointing at ``package``."""
    if isinstance(value, str):
        return _NAME.sub(package, value)
    if isinstance(value, dict):
        return {k: rewrite_names(v, package) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_names(v, package) for v in value]
    return value


def rewrite_config(config: dict, package: str = VENDOR_PACKAGE) -> dict:
    """A bundle config with its ``qddens_monai`` names pointing at the vendored ``package`` (see :func:`rewrite_names`).

    MONAI's config parser binds ``$import a.b`` under the name ``"a.b"``, not ``a``, so the top-level
    package of ``package`` gets its own import in ``imports``, for expressions like ``$scripts.qddens_monai...``.
    """
    config = rewrite_names(config, package)
    imports = config.get("imports")
    root = f"$import {package.split('.')[0]}"
    if isinstance(imports, list) and root not in imports and any(str(i).startswith(f"$import {package}") for i in imports):
        config["imports"] = [root, *imports]
    return config


def vendor_package(bundle_dir: Union[str, os.PathLike], exclude: Sequence[str] = VENDOR_EXCLUDE) -> Path:
    """Copy the ``qddens_monai`` sources into ``bundle_dir/scripts/qddens_monai`` with imports rewritten.

    Every ``qddens_monai`` module reference becomes ``scripts.qddens_monai``, so the copy does
    not collide with (or silently use) an installed ``qddens_monai``. Only ``.py`` files are copied.

    Args:
        bundle_dir: the bundle folder being exported.
        exclude: package-relative files, or folders ending in ``/``, left out.

    Returns:
        The vendored package folder.
    """
    source = Path(__file__).resolve().parents[1]
    scripts = Path(bundle_dir) / "scripts"
    target = scripts / "qddens_monai"
    if target.exists():
        shutil.rmtree(target)
    scripts.mkdir(parents=True, exist_ok=True)
    (scripts / "__init__.py").write_text('"""Code of this bundle (the Model Zoo scripts/ convention)."""\n')
    for file in sorted(source.rglob("*.py")):
        rel = file.relative_to(source).as_posix()
        if rel in exclude or any(rel.startswith(e) for e in exclude if e.endswith("/")) or "__pycache__" in rel:
            continue
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel == "export/__init__.py":
            out.write_text(_EXPORT_INIT.format(package=VENDOR_PACKAGE))
        else:
            out.write_text(rewrite_names(file.read_text()))
    format_like_the_zoo(scripts)
    return target


def format_like_the_zoo(folder: Union[str, os.PathLike]) -> bool:
    """Format the ``.py`` files under ``folder`` as the Model Zoo's style checks want them; False if unavailable.

    isort (profile black, line length 120), then black (line length 120, ``--skip-magic-trailing-comma``),
    then one newline at the end (pre-commit's ``end-of-file-fixer``): the zoo's ``setup.cfg`` and
    ``.pre-commit-config.yaml`` settings. Renaming ``qddens_monai`` to ``scripts.qddens_monai`` moves
    imports between isort's sections, so the vendored copy is formatted after the rewrite. Needs
    ``black`` and ``isort`` (the ``test`` extra); without them the copy is left as written.
    """
    try:
        import black
        import isort
    except ImportError:
        return False
    mode = black.Mode(line_length=120, magic_trailing_comma=False)
    # ``scripts`` is third party from the zoo's root (no top-level scripts/ there), whatever the current folder
    config = isort.Config(profile="black", line_length=120, known_first_party=["models"], known_third_party=["scripts"])
    for file in sorted(Path(folder).rglob("*.py")):
        text = isort.code(file.read_text(), config=config)
        try:
            text = black.format_file_contents(text, fast=False, mode=mode)
        except black.NothingChanged:
            pass
        file.write_text(text.rstrip("\n") + "\n")
    return True
