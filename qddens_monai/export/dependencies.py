"""The packages each exported config needs, from what it imports: ``required_packages_version`` and extra ones.

A config needs (1) the third-party modules its ``imports`` and expressions name, (2) what the vendored
modules it references import when imported (module-level imports of those modules and of every module
they import in turn, package ``__init__`` files included), (3) what the MONAI components it names load
lazily (a small table: ignite engines and handlers, TensorBoard, the image readers / writers), and
(4) ``fire`` for ``python -m monai.bundle run``. Imports made inside functions are needed only when that
code runs: they are optional. MONAI, PyTorch and NumPy are the zoo's base requirements and not listed.

Overlay configs (``inference_onnx.json`` over ``inference.json``, ``evaluate.json`` over ``train.json``, ...)
need their base's packages too: see :data:`OVERLAYS`.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Union

__all__ = ["BASE", "OVERLAYS", "MONAI_EXTRAS", "config_dependencies", "bundle_dependencies"]

#: The zoo's base requirements (``monai_version``, ``pytorch_version``, ``numpy_version``).
BASE = {"monai", "torch", "numpy"}
#: Configs run merged onto another one (``--config_file "['configs/BASE','configs/OVERLAY']"``).
OVERLAYS = {
    "inference_onnx.json": "inference.json",
    "inference_packed.json": "inference.json",
    "dicom_seg.json": "inference.json",
    "evaluate.json": "train.json",
    "distill.json": "train.json",
    "multi_gpu_train.json": "train.json",
    "3d.json": "train.json",
}
#: MONAI component names (regular expressions on config strings) -> packages MONAI imports for them lazily.
MONAI_EXTRAS = {
    r"\b(Supervised(Trainer|Evaluator)|CheckpointLoader|StatsHandler|ValidationHandler|MeanDice)\b|\bignite\b": [
        "pytorch-ignite"
    ],
    r"\bTensorBoard\w*Handler\b": ["tensorboard"],
    r"\bProgressBar\b": ["tqdm"],
    r"\b(LoadImaged?|SaveImaged?)\b": ["nibabel", "pillow"],
}
_MODULE_NAMES = re.compile(r"\b(scripts\.qddens_monai(?:\.\w+)*)")
_IMPORT_LINE = re.compile(r"^\$\s*(?:import|from)\s+([\w.]+)")


def _distribution(module: str) -> str:
    dists = importlib_metadata.packages_distributions().get(module)
    return dists[0] if dists else module


def _module_file(scripts_root: Path, dotted: str):
    """The file of the vendored module ``dotted`` (``scripts.qddens_monai...``), or of its longest existing prefix."""
    parts = dotted.split(".")
    while parts:
        base = scripts_root.parent.parent.joinpath(*parts)
        for f in (base / "__init__.py", base.with_suffix(".py")):
            if f.is_file():
                return ".".join(parts), f
        parts.pop()
    return None, None


def _defining_module(scripts_root: Path, dotted: str) -> tuple:
    """The vendored module that defines the object ``dotted`` names (following a package's re-exports)."""
    name, file = _module_file(scripts_root, dotted)
    attr = dotted[len(name) + 1 :].split(".")[0] if name and dotted != name else ""
    if attr and file.name == "__init__.py":
        for node in ast.parse(file.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and any(a.asname or a.name == attr for a in node.names):
                if any((a.asname or a.name) == attr for a in node.names):
                    return _module_file(scripts_root, node.module)
    return name, file


def _imports(file: Path, module: str) -> tuple[set[str], set[str]]:
    """(module-level, in-function) absolute names imported by ``file`` (the module ``module``)."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    hard, lazy = set(), set()

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in child.names]
            elif isinstance(child, ast.Call) and getattr(child.func, "id", None) == "optional_import" and child.args:
                arg = child.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    lazy.add(arg.value)  # optional_import never fails on import: optional
            (lazy if inner else hard).update(names)
            visit(child, inner)

    visit(ast.parse(file.read_text()), False)
    return hard, lazy


def config_dependencies(config: dict, scripts_root: Path) -> tuple[set[str], set[str]]:
    """(required, optional) distributions of one config (not merged with its base), excluding :data:`BASE`."""
    text = json.dumps(config)
    external: set[str] = set()
    for line in config.get("imports", []) if isinstance(config.get("imports"), list) else []:
        m = _IMPORT_LINE.match(str(line))
        if m:
            external.add(m.group(1).split(".")[0])
    required = {p for pattern, pkgs in MONAI_EXTRAS.items() if re.search(pattern, text) for p in pkgs}
    lazy: set[str] = set()
    todo = list(_MODULE_NAMES.findall(text))
    for ref in set(todo):  # what the config calls: the in-function imports of its defining module are needed too
        name, file = _defining_module(scripts_root, ref)
        if name is not None:
            todo.append(name)
            external |= {n.split(".")[0] for n in _imports(file, name)[1] if not n.startswith("scripts")}
    seen: set[str] = set()
    while todo:
        name, file = _module_file(scripts_root, todo.pop())
        if name is None or name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # importing a.b.c runs a.b's __init__
        hard, soft = _imports(file, name)
        for n in hard:
            if n.startswith("scripts.qddens_monai"):
                todo.append(n)
            elif not n.startswith("scripts"):
                external.add(n.split(".")[0])
        lazy |= {n.split(".")[0] for n in soft if not n.startswith("scripts.")}
    stdlib = set(sys.stdlib_module_names) | {"scripts", "__future__"}
    required |= {_distribution(m) for m in external - stdlib}
    optional = {_distribution(m) for m in lazy - stdlib - external}
    return required - BASE, optional - BASE - required


def bundle_dependencies(bundle: Union[str, Path]) -> dict[str, set[str]]:
    """Required distributions per config of the exported ``bundle`` folder (overlays include their base's).

    Returns ``{config name: required}`` plus the key ``"*optional"``: packages only imported inside functions.
    """
    bundle = Path(bundle)
    scripts_root = bundle / "scripts" / "qddens_monai"
    own, optional = {}, set()
    for f in sorted((bundle / "configs").glob("*.json")):
        if f.name == "metadata.json":
            continue
        own[f.name], lazy = config_dependencies(json.loads(f.read_text()), scripts_root)
        optional |= lazy
    result = {name: deps | own.get(OVERLAYS.get(name, ""), set()) | {"fire"} for name, deps in own.items()}
    result["*optional"] = optional - set().union(*result.values())
    return result
