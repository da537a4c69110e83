"""The package's import graph, read with ``ast`` (nothing is imported): which modules a bundle config needs.

Works on the package's source (``qddens_monai``) and on a vendored copy (``scripts.qddens_monai``) alike:
``root`` is the package's folder and ``package`` its dotted name. Package ``__init__`` files export lazily
(:func:`qddens_monai._lazy.lazy_exports`); a name such as ``qddens_monai.networks.QMENet`` is followed through
that table to the module defining it.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Optional

__all__ = [
    "resolve",
    "module_file",
    "lazy_table",
    "defining_module",
    "module_imports",
    "definition_imports",
    "config_references",
    "module_closure",
]


def module_file(root: Path, package: str, dotted: str) -> tuple[Optional[str], Optional[Path]]:
    """The module ``dotted`` names (or its longest prefix that is a module) and its file; ``(None, None)`` if none.

    ``root`` is the folder of the package ``package``; ``dotted`` starts with ``package``.
    """
    if dotted != package and not dotted.startswith(package + "."):
        return None, None
    parts = dotted[len(package) :].lstrip(".").split(".") if dotted != package else []
    while True:
        base = root.joinpath(*parts)
        for f in (base / "__init__.py", base.with_suffix(".py") if parts else None):
            if f is not None and f.is_file():
                return ".".join([package, *parts]), f
        if not parts:
            return None, None
        parts.pop()


def resolve(relative: str, package: str) -> str:
    """``relative`` (``".cenet"``, ``"..ensemble"``) as an absolute name, relative to the package ``package``."""
    level = len(relative) - len(relative.lstrip("."))
    base = package.split(".")[: len(package.split(".")) - level + 1]
    rest = relative[level:]
    return ".".join(base + ([rest] if rest else []))


@lru_cache(maxsize=None)
def _parse(file: Path) -> ast.Module:
    return ast.parse(file.read_text())


def lazy_table(init: Path, package: str) -> dict[str, str]:
    """Name -> absolute module of the ``lazy_exports(__name__, {...})`` call in the package ``__init__`` ``init``."""
    for node in ast.walk(_parse(init)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports" and len(node.args) == 2:
            table = ast.literal_eval(node.args[1])
            return {name: resolve(module, package) for module, names in table.items() for name in names}
    return {}


def defining_module(root: Path, package: str, dotted: str) -> tuple[Optional[str], Optional[Path]]:
    """The module that defines what ``dotted`` names, following the lazy exports of packages (and re-exports)."""
    for _ in range(10):  # a re-export of a re-export ...
        name, file = module_file(root, package, dotted)
        if name is None or name == dotted or file.name != "__init__.py":
            return name, file
        attr = dotted[len(name) + 1 :].split(".")[0]
        target = lazy_table(file, name).get(attr)
        if target is None:
            return name, file
        dotted = f"{target}.{attr}"
    return module_file(root, package, dotted)


def _optional_import_name(node: ast.AST) -> str:
    """The module named by a ``optional_import("name", ...)`` call, else ``""``."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "optional_import" and node.args:
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return ""


def module_imports(file: Path, module: str) -> tuple[set[str], set[str]]:
    """(module-level, in-function) absolute module names imported by ``file`` (the module ``module``).

    Names imported with ``from a import b`` appear as ``a`` and ``a.b`` (``b`` may be a submodule); names
    given to ``monai.utils.optional_import`` count as in-function (they never fail at import time)."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    hard: set[str] = set()
    lazy: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = resolve("." * child.level + (child.module or ""), package) if child.level else child.module
                names = [base] + [f"{base}.{a.name}" for a in child.names]
            elif optional := _optional_import_name(child):
                lazy.add(optional)
            (lazy if inner else hard).update(names)
            visit(child, inner)

    visit(_parse(file), False)
    return hard, lazy


def definition_imports(file: Path, module: str, name: str) -> set[str]:
    """Absolute module names imported inside the top-level function or class ``name`` of ``file``, and inside the
    top-level functions and classes of the same module it names (transitively): what calling it may import
    (``optional_import("x")`` included: the code that asks for ``x`` needs it)."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    definitions = {
        node.name: node
        for node in _parse(file).body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    found: set[str] = set()
    todo, seen = [name], set()
    while todo:
        node = definitions.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        for child in ast.walk(node):
            if isinstance(child, ast.Import):
                found |= {a.name for a in child.names}
            elif isinstance(child, ast.ImportFrom):
                found.add(resolve("." * child.level + (child.module or ""), package) if child.level else child.module)
            elif optional := _optional_import_name(child):  # the body needs it when it runs, as a plain import would
                found.add(optional)
            elif isinstance(child, ast.Name) and child.id in definitions:
                todo.append(child.id)
    return found


def config_references(config: object, package: str) -> set[str]:
    """The dotted names under ``package`` that a config (dicts, lists, strings) mentions."""
    pattern = re.compile(rf"(?<![\w.])({re.escape(package)}(?:\.\w+)*)")
    return set(pattern.findall(json.dumps(config)))


def module_closure(root: Path, package: str, references: Iterable[str], in_functions: bool = True) -> dict[str, Path]:
    """Every module of the package that importing and using ``references`` can import: module -> file.

    Starts from the modules defining the referenced names (and their parent packages), then follows every
    import inside the package at module level, and with ``in_functions`` inside functions too (a function
    the config calls may run it).
    """
    todo: list[str] = []
    for ref in references:
        todo.append(ref)
        name, _ = defining_module(root, package, ref)
        if name is not None:
            todo.append(name)
    found: dict[str, Path] = {}
    while todo:
        name, file = module_file(root, package, todo.pop())
        if name is None or name in found:
            continue
        found[name] = file
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(len(package.split(".")), len(parts))]  # parent __init__s
        hard, lazy = module_imports(file, name)
        for imported in hard | lazy if in_functions else hard:
            if imported == package or imported.startswith(package + "."):
                todo.append(imported)
                todo.append(defining_module(root, package, imported)[0] or imported)
    return found
