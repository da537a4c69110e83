"""An exported bundle in a new virtual environment holding exactly the packages its metadata names.

What a Model Zoo user (and the zoo's CI) installs for a bundle is ``torch``, ``monai`` and ``numpy`` at the
metadata's ``pytorch_version`` / ``monai_version`` / ``numpy_version`` plus ``required_packages_version``: no
``qddens_monai`` (the bundle vendors its code in ``scripts/``), nothing else. In such an environment, from a
model-zoo-shaped tree (:func:`qddens_monai.export.zoo_ci.assemble_zoo_tree`), this runs:

1. command-line inference, ``python -m monai.bundle run --config_file configs/inference.json``, on the demo
   images the bundle generates itself, with the shipped weights;
2. ``check_properties`` of the train and inference workflows (as the zoo's ``verify_bundle_properties`` and
   unit tests do; :mod:`qddens_monai.export.zoo_ci` run as a file: it imports only the standard library and
   MONAI);
3. the zoo unit test of the bundle (:mod:`qddens_monai.export.zoo_unit`): the inference case;
4. the zoo's full-mode checks (:mod:`qddens_monai.export.zoo_ci`), after adding what the zoo's CI harness itself
   needs (:data:`ZOO_HARNESS`: ``large_files.yml`` is read with PyYAML, the schema checked with jsonschema; the
   zoo installs them from its ``requirements-dev.txt``, not from the bundle's metadata);
5. with ``train``: the packages ``train.json`` / ``evaluate.json`` need beyond the required ones (at their
   ``extra_packages_version`` versions) are added, then the unit test's training and evaluation case runs.

Command line (``--venv`` reuses an environment made before)::

    python -m qddens_monai.export.fresh_venv --bundle OUT/NAME --weights OUT/NAME_weights [--work DIR] [--no-train]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

from . import zoo_ci
from .metadata import installed_version

__all__ = ["ZOO_HARNESS", "VenvError", "requirements", "create_venv", "train_packages", "check_fresh_venv", "main"]

PathLike = Union[str, os.PathLike]
#: Packages the zoo's CI scripts need themselves (its requirements-dev.txt), not the bundle.
ZOO_HARNESS = ("pyyaml", "jsonschema")


class VenvError(RuntimeError):
    """The virtual environment could not be created or its packages not installed."""


def requirements(meta: Mapping[str, Any], extra: Iterable[str] = ()) -> list[str]:
    """Pinned requirements of the metadata ``meta`` but PyTorch: MONAI, NumPy, ``required_packages_version``
    and the packages ``extra`` at their ``extra_packages_version``."""
    extras = meta.get("extra_packages_version", {})
    reqs = [f"monai=={meta['monai_version']}", f"numpy=={meta['numpy_version']}"]
    reqs += [f"{name}=={version}" for name, version in meta.get("required_packages_version", {}).items()]
    return reqs + [f"{name}=={extras[name]}" for name in sorted(extra)]


def _pip(python: Path, args: list[str], timeout: float) -> None:
    cmd = [str(python), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_clean_env())
    except subprocess.TimeoutExpired as e:
        raise VenvError(f"pip install {' '.join(args)} took over {timeout:.0f} s") from e
    if proc.returncode != 0:
        raise VenvError(f"pip install {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")


def create_venv(venv: PathLike, meta: Mapping[str, Any], timeout: float = 900) -> Path:
    """A new virtual environment at ``venv`` with exactly the packages of ``meta``; returns its python.

    PyTorch is installed on its own first (``torch==pytorch_version``), so pip never resolves another build.

    Raises:
        VenvError: the environment or a package could not be installed.
    """
    venv = Path(venv)
    proc = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    python = venv / "bin" / "python"
    if proc.returncode != 0 or not python.exists():
        raise VenvError(f"python -m venv {venv} failed:\n{proc.stderr[-2000:]}")
    _pip(python, [f"torch=={meta['pytorch_version']}"], timeout)
    _pip(python, requirements(meta), timeout)
    return python


def train_packages(bundle: PathLike) -> set[str]:
    """What ``train.json`` and ``evaluate.json`` of ``bundle`` need beyond ``required_packages_version``."""
    from .dependencies import bundle_dependencies

    meta = json.loads((Path(bundle) / "configs" / "metadata.json").read_text())
    deps = bundle_dependencies(bundle)
    needed = deps.get("train.json", set()) | deps.get("evaluate.json", set())
    return needed - set(meta.get("required_packages_version", {}))


def _clean_env(pythonpath: Optional[Path] = None) -> dict[str, str]:
    """This process's environment without its Python settings (the repository must not be importable)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.setdefault("OMP_NUM_THREADS", "1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def _run(cmd: list[str], cwd: Path, what: str, timeout: float, pythonpath: Optional[Path] = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_clean_env(pythonpath))
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed in the fresh venv:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def check_fresh_venv(
    bundle: PathLike,
    weights: Optional[PathLike] = None,
    work: Optional[PathLike] = None,
    python: Optional[PathLike] = None,
    train: bool = True,
    timeout: float = 900,
) -> dict[str, float]:
    """Run the checks of the module docstring on the exported ``bundle``; returns the seconds each step took.

    Args:
        bundle: the exported bundle folder.
        weights: its weights folder (``--weights-url`` exports), placed as ``large_files.yml`` says.
        work: where the model-zoo tree (and the venv) go; default a new temporary folder (kept).
        python: the python of an environment made by :func:`create_venv` (default: create one in ``work``).
        train: also install the training packages and run the unit test's training and evaluation.
        timeout: seconds allowed per step.

    Raises:
        VenvError: the environment could not be made; RuntimeError: a check failed.
    """
    bundle = Path(bundle)
    work = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="fresh_venv_"))
    root = work / "model-zoo"
    target = zoo_ci.assemble_zoo_tree(bundle, root, weights)
    name = target.name
    unit_test = f"ci/unit_tests/test_{name}.py"  # written by assemble_zoo_tree
    meta = json.loads((target / "configs" / "metadata.json").read_text())
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    python = Path(python) if python is not None else create_venv(work / "venv", meta, timeout)
    seconds["create venv (torch, monai, numpy, required_packages_version)"] = time.perf_counter() - t
    installed = _run([str(python), "-m", "pip", "freeze"], root, "pip freeze", timeout)
    if "qddens" in installed.lower():
        raise RuntimeError(f"the fresh venv holds qddens-monai:\n{installed}")
    _run(
        [str(python), "-P", "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('qddens_monai') is not None)"],
        root,
        "checking that qddens_monai is not importable",
        timeout,
    )

    def step(what: str, cmd: list[str], cwd: Path, pythonpath: Optional[Path] = None) -> str:
        t = time.perf_counter()
        out = _run(cmd, cwd, what, timeout, pythonpath)
        seconds[what] = time.perf_counter() - t
        return out

    predictions = work / "predictions"
    step(
        "inference (python -m monai.bundle run)",
        [
            str(python),
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            "--bundle_root",
            ".",
            "--output_dir",
            str(predictions),
        ],
        target,
    )
    if not any(predictions.rglob("*.*")):
        raise RuntimeError(f"inference in the fresh venv wrote no prediction to {predictions}")
    step(
        "check_properties (train, inference)",
        [
            str(python),
            "-P",
            zoo_ci.__file__,
            "--models-path",
            str(root / "models"),
            "--name",
            name,
            "--properties-only",
        ],
        root,
    )
    step(
        "zoo unit test: inference",
        [str(python), "-P", "-m", "unittest", unit_test, "-k", "test_infer_config"],
        root,
        pythonpath=root,
    )
    t = time.perf_counter()
    _pip(python, [f"{p}=={installed_version(p)}" for p in ZOO_HARNESS], timeout)
    seconds[f"install the zoo CI's own packages ({', '.join(ZOO_HARNESS)})"] = time.perf_counter() - t
    step(
        "zoo full mode (verify_bundle.py -m full emulation)",
        [str(python), "-P", zoo_ci.__file__, "--models-path", str(root / "models"), "--name", name],
        root,
    )
    if train:
        extra = train_packages(target)
        t = time.perf_counter()
        if extra:
            _pip(python, requirements(meta, extra), timeout)
        seconds[f"install training packages ({', '.join(sorted(extra))})"] = time.perf_counter() - t
        step(
            "zoo unit test: train + evaluate",
            [str(python), "-P", "-m", "unittest", unit_test, "-k", "test_train_eval_config"],
            root,
            pythonpath=root,
        )
    return seconds


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, help="an exported bundle folder")
    parser.add_argument("--weights", help="the exported weights folder (what large_files.yml points at)")
    parser.add_argument("--work", help="folder for the model-zoo tree and the venv (default: a temporary folder)")
    parser.add_argument("--venv-python", help="reuse the python of a venv made before by this command")
    parser.add_argument("--no-train", action="store_true", help="skip the training packages and the training test")
    args = parser.parse_args(argv)
    try:
        seconds = check_fresh_venv(args.bundle, args.weights, args.work, args.venv_python, not args.no_train)
    except (VenvError, RuntimeError) as e:
        print(e, file=sys.stderr)
        return 1
    for what, s in seconds.items():
        print(f"passed: {what} ({s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
