"""Copy the code a bundle needs into the bundle folder (``scripts/``), so it runs without ``qddens_monai`` installed."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional, Union

from monai.utils import optional_import

from .imports import config_references, module_closure, resolve

__all__ = [
    "VENDOR_PACKAGE",
    "format_like_the_zoo",
    "vendor_package",
    "vendored_modules",
    "rewrite_names",
    "rewrite_config",
]

#: Where the package lives inside an exported bundle: the Model Zoo's ``scripts`` convention
#: (``python -m monai.bundle run`` puts the bundle folder on ``sys.path``).
VENDOR_PACKAGE = "scripts.qddens_monai"
_SOURCE = Path(__file__).resolve().parents[1]
_NAME = re.compile(r"(?<![\w.])qddens_monai\b")


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
    if (
        isinstance(imports, list)
        and root not in imports
        and any(str(i).startswith(f"$import {package}") for i in imports)
    ):
        config["imports"] = [root, *imports]
    return config


def vendored_modules(configs: Iterable[Any]) -> dict[str, Path]:
    """The package modules ``configs`` (parsed bundle configs, with either module prefix) need: module -> source file.

    The transitive closure of the package imports, from the names the configs mention (``_target_`` s,
    ``$import`` s, expressions) through the package's lazy exports (:func:`.imports.module_closure`).
    """
    references = set()
    for config in configs:
        references |= config_references(config, "qddens_monai")
        references |= {"qddens_monai" + r[len(VENDOR_PACKAGE) :] for r in config_references(config, VENDOR_PACKAGE)}
    return module_closure(_SOURCE, "qddens_monai", references)


def vendor_package(bundle_dir: Union[str, os.PathLike], configs: Optional[Iterable[Any]] = None) -> Path:
    """Copy the ``qddens_monai`` modules the bundle's configs need into ``bundle_dir/scripts/qddens_monai``.

    Only the modules the configs import, directly or through other modules (:func:`vendored_modules`), are
    copied, as they are (the package's imports are relative); the lazy export tables of the copied package
    ``__init__`` files keep only the copied modules. The configs name the copy ``scripts.qddens_monai``
    (:func:`rewrite_config`), so it does not collide with (or silently use) an installed ``qddens_monai``.

    Args:
        bundle_dir: the bundle folder being exported.
        configs: the configs to serve (parsed); default: every ``configs/*.json`` of ``bundle_dir`` but the metadata.

    Returns:
        The vendored package folder.
    """
    bundle_dir = Path(bundle_dir)
    if configs is None:
        files = sorted(f for f in (bundle_dir / "configs").glob("*.json") if f.name != "metadata.json")
        configs = [json.loads(f.read_text()) for f in files]
    modules = vendored_modules(configs)
    scripts = bundle_dir / "scripts"
    target = scripts / "qddens_monai"
    if target.exists():
        shutil.rmtree(target)
    scripts.mkdir(parents=True, exist_ok=True)
    (scripts / "__init__.py").write_text('"""Code of this bundle (the Model Zoo scripts/ convention)."""\n')
    for name, file in sorted(modules.items()):
        out = target / file.relative_to(_SOURCE)
        out.parent.mkdir(parents=True, exist_ok=True)
        text = file.read_text()
        if file.name == "__init__.py":
            text = _keep_exports(text, name, set(modules))
        out.write_text(text)  # the package imports itself relatively: the copy is the code as it is
    format_like_the_zoo(scripts)
    return target


def _keep_exports(text: str, package: str, modules: set[str]) -> str:
    """``text`` of a package ``__init__`` with its ``lazy_exports`` table reduced to the modules in ``modules``."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports" and len(node.args) == 2:
            table = ast.literal_eval(node.args[1])
            kept = {m: names for m, names in table.items() if resolve(m, package) in modules}
            segment = ast.get_source_segment(text, node.args[1])
            return text.replace(segment, repr(kept), 1)
    return text


def format_like_the_zoo(folder: Union[str, os.PathLike]) -> bool:
    """Format the ``.py`` files under ``folder`` as the Model Zoo's style checks want them; False if unavailable.

    isort (profile black, line length 120), then black (line length 120, ``--skip-magic-trailing-comma``),
    then one newline at the end (pre-commit's ``end-of-file-fixer``): the zoo's ``setup.cfg`` and
    ``.pre-commit-config.yaml`` settings, which differ from the package's own (e.g. no magic trailing comma), so
    the vendored copy is formatted with them. Needs ``black`` and ``isort`` (the ``test`` extra); without them the
    copy is left as written.
    """
    black, has_black = optional_import("black")
    isort, has_isort = optional_import("isort")
    if not (has_black and has_isort):
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
