"""The packages each exported config needs, from what it imports: ``required_packages_version`` and extra ones.

A config needs (1) the third-party modules its ``imports`` and expressions name, (2) what the vendored
modules it references import when imported (module-level imports of those modules and of every module
they import in turn, package ``__init__`` files included; names are followed through the packages' lazy
exports, see :mod:`qddens_monai.export.imports`), (3) what the functions and classes it names import inside
their bodies, and inside the functions and classes of the same module those name in turn (calling them may run
it), (4) what the MONAI components it names load lazily (a small table: ignite engines and handlers,
TensorBoard, the image readers / writers), and (5) ``fire`` for ``python -m monai.bundle run``. Other imports
made inside functions are needed only when that code runs: they are optional. MONAI, PyTorch and NumPy are
the zoo's base requirements and not listed.

Overlay configs (``inference_onnx.json`` over ``inference.json``, ``evaluate.json`` over ``train.json``, ...)
need their base's packages too: see :data:`OVERLAYS`.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Union

from .imports import config_references, defining_module, definition_imports, module_closure, module_file, module_imports

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
_IMPORT_LINE = re.compile(r"^\$\s*(?:import|from)\s+([\w.]+)")


def _distribution(module: str) -> str:
    dists = importlib_metadata.packages_distributions().get(module)
    return dists[0] if dists else module


def config_dependencies(config: dict, scripts_root: Path) -> tuple[set[str], set[str]]:
    """(required, optional) distributions of one config (not merged with its base), excluding :data:`BASE`.

    ``scripts_root`` is the vendored package's folder (``<bundle>/scripts/qddens_monai``)."""
    package = f"{scripts_root.parent.name}.{scripts_root.name}"
    text = json.dumps(config)
    external: set[str] = set()
    for line in config.get("imports", []) if isinstance(config.get("imports"), list) else []:
        m = _IMPORT_LINE.match(str(line))
        if m:
            external.add(m.group(1).split(".")[0])
    required = {p for pattern, pkgs in MONAI_EXTRAS.items() if re.search(pattern, text) for p in pkgs}
    references = config_references(config, package)
    start = set(references)
    for ref in references:  # what the config calls: the imports inside that function / class are needed too
        module, _ = module_file(scripts_root, package, ref)
        attr = ref[len(module) + 1 :].split(".")[0] if module is not None and ref != module else ""
        name, file = defining_module(scripts_root, package, ref)
        if name is not None and attr:
            calls = definition_imports(file, name, attr)
            external |= {n.split(".")[0] for n in calls if not n.startswith(package)}
            start |= {n for n in calls if n.startswith(package)}
    lazy: set[str] = set()
    for name, file in module_closure(scripts_root, package, start, in_functions=False).items():
        hard, soft = module_imports(file, name)  # importing the module runs its module-level imports
        external |= {n.split(".")[0] for n in hard if not n.startswith(package)}
        lazy |= {n.split(".")[0] for n in soft if not n.startswith(package)}
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
