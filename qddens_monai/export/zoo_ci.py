"""Run the checks of the Model Zoo's ``ci/verify_bundle.py`` in **full** mode on an exported bundle, offline.

The zoo's script cannot be run here as is: it downloads the metadata schema and the ``large_files.yml``
weights from the internet, and imports the zoo's ``ci/`` helpers (``bundle_custom_data``, ``utils``).
This module repeats its full mode step by step with the same MONAI calls and arguments (each function
names the zoo function it mirrors; Project-MONAI/model-zoo ``ci/verify_bundle.py`` and ``ci/utils.py``),
on a model-zoo-shaped tree (``<root>/models/<name>/``) assembled by :func:`assemble_zoo_tree`:

- the schema is a local copy (``tests/data/meta_schema_20240725.json``, see ``tests/data/README.md``)
  placed where the zoo's ``ci/prepare_schema.py`` puts it (``eval/schema.json``);
- ``large_files.yml`` is processed by the same ``monai.apps.download_url`` call the zoo's
  ``download_large_files`` makes, with the weight files already in place: ``download_url`` then only
  checks their hash (a missing file or a wrong hash fails as in the zoo);
- the bundle is not on any of the zoo's exclusion lists (``bundle_custom_data.py``): nothing is skipped.

On top of the zoo's ``verify_bundle_properties`` (which only checks ``supported_apps`` properties), the
train and inference workflows are created and their properties checked, as the zoo's
``ci/unit_tests/test_<bundle>.py`` do (``ConfigWorkflow`` + ``check_properties``).

Command line (from the repository; runs in a fresh process so the vendored package is imported
from the assembled folder only)::

    python -m qddens_monai.export.zoo_ci --bundle OUT/retinal_vessel_fundus_segmentation [--weights DIR] [--style]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Union

__all__ = ["ZOO_SCHEMA", "ZOO_STYLE", "assemble_zoo_tree", "check_style", "verify_full", "main"]

PathLike = Union[str, os.PathLike]
#: The metadata schema the zoo's ``prepare_schema`` downloads for ``meta_schema_20240725.json`` (a copy).
ZOO_SCHEMA = Path(__file__).resolve().parents[2] / "tests" / "data" / "meta_schema_20240725.json"
#: The zoo's style settings (its ``setup.cfg`` [flake8] / [isort] values, written into the assembled root).
ZOO_STYLE = """[flake8]
select = B,C,E,F,N,P,T4,W,B9
max_line_length = 120
ignore = E203,E501,E741,W503,W504,C408,N812,B023,B905,B028,B907,C419
per_file_ignores = __init__.py: F401, __main__.py: F401

[isort]
known_first_party = models
profile = black
line_length = 120
"""
_NECESSARY = ["configs/metadata.json", "LICENSE"]  # verify_bundle.necessary_files_list
_PREFERRED = ["models/model.pt", "configs/inference.json"]  # verify_bundle.preferred_files_list


def assemble_zoo_tree(
    bundle: PathLike, root: PathLike, weights: Optional[PathLike] = None, schema: PathLike = ZOO_SCHEMA
) -> Path:
    """Copy the exported ``bundle`` folder to ``root/models/<name>`` as in a model-zoo checkout; return that path.

    ``weights`` (a folder mirroring the bundle's layout, e.g. ``models/model.pt``) are copied in, as the
    zoo's ``download_large_files`` would download them. ``root/models/model_info.json`` (the zoo's list of
    released versions) is created empty when missing: a new bundle. ``eval/schema.json`` is the schema the
    metadata names, as the zoo's ``prepare_schema`` writes it. The bundle's zoo unit test
    (:mod:`qddens_monai.export.zoo_unit`) is written to ``root/ci/unit_tests/test_<name>.py``.
    """
    bundle, root = Path(bundle), Path(root)
    target = root / "models" / bundle.name
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("__pycache__"))
    if weights is not None:
        for f in Path(weights).rglob("*"):
            if f.is_file():
                dest = target / f.relative_to(weights)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)
    if not (root / "setup.cfg").exists():
        (root / "setup.cfg").write_text(ZOO_STYLE)
    info = root / "models" / "model_info.json"
    if not info.exists():
        info.write_text("{}\n")
    meta = json.loads((target / "configs" / "metadata.json").read_text())
    name = str(meta.get("schema", "")).split("/")[-1]
    if name != Path(schema).name:
        raise ValueError(f"the metadata's schema is {meta.get('schema')!r}; only {Path(schema).name} ships offline.")
    (target / "eval").mkdir(exist_ok=True)
    shutil.copyfile(schema, target / "eval" / "schema.json")
    from .zoo_unit import write_unit_test  # here only: this file also runs without the package

    write_unit_test(root, bundle.name)  # ci/unit_tests/test_<name>.py, to submit with the bundle
    return target


def _bundle_file(folder: Path, stem: str) -> Optional[str]:
    # verify_bundle._find_bundle_file
    found = None
    for suffix in ("json", "yaml", "yml"):
        if f"{stem}.{suffix}" in os.listdir(folder):
            found = f"{stem}.{suffix}"
    return found


def _download_large_files(bundle_path: Path, large_file_name: str) -> None:
    # utils.download_large_files: the same download_url call; with the files present it checks their hash only
    from monai.apps.utils import download_url
    from monai.bundle.config_parser import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_path / large_file_name))
    for lf_data in parser.get("large_files"):
        lf_data["fuzzy"] = True
        if lf_data.get("hash_val", None) == "":
            lf_data.pop("hash_val")
        if lf_data.get("hash_type", None) == "":
            lf_data.pop("hash_type")
        lf_data["filepath"] = str(bundle_path / lf_data["path"])
        lf_data.pop("path", None)
        if not lf_data.get("url"):
            raise ValueError(f"{large_file_name}: empty url for {lf_data['filepath']} (the zoo cannot download it).")
        download_url(**lf_data)


def verify_bundle_directory(models_path: Path, name: str) -> None:
    """verify_bundle.verify_bundle_directory (full mode: large files are never skipped)."""
    bundle_path = models_path / name
    large = _bundle_file(bundle_path, "large_files")
    if large is not None:
        try:
            _download_large_files(bundle_path, large)
        except Exception as e:
            raise ValueError(f"Download large files in {bundle_path} error.") from e
    for f in _NECESSARY:
        if not (bundle_path / f).exists():
            raise ValueError(f"necessary file {f} is not existing.")
    for f in _PREFERRED:
        if f == "configs/inference.json":
            if _bundle_file(bundle_path / "configs", "inference") is None:
                raise ValueError("inference config file is not existing.")
        elif not (bundle_path / f).exists():
            raise ValueError(f"necessary file {f} is not existing.")


def verify_version_changes(models_path: Path, name: str) -> None:
    """verify_bundle.verify_version_changes."""
    meta = json.loads((models_path / name / "configs" / "metadata.json").read_text())
    for key in ("version", "changelog"):
        if key not in meta:
            raise ValueError(f"'{key}' is missing in configs/metadata.json of bundle: {name}.")
    if meta["version"] not in meta["changelog"]:
        raise ValueError(f"version number: {meta['version']} is missing in 'changelog' of bundle: {name}.")
    info = json.loads((models_path / "model_info.json").read_text())
    if f"{name}_v{meta['version']}" in info:
        raise ValueError(f"version number: {meta['version']} is already used of bundle: {name}. Please change it.")


def check_workflow_properties(bundle_path: Path) -> dict[str, list]:
    """Create the train and inference workflows and check their properties (ci/unit_tests/test_<bundle>.py).

    The zoo's ``verify_bundle_properties`` checks the inference workflow's properties per entry of
    ``supported_apps``; its unit tests check train and inference with ``ConfigWorkflow.check_properties``.
    Returns the missing properties per workflow (all lists empty when the bundle passes).
    """
    from monai.bundle import create_workflow

    configs = bundle_path / "configs"
    common = {
        "bundle_root": str(bundle_path),
        "meta_file": str(configs / "metadata.json"),
        "logging_file": str(configs / "logging.conf"),
    }
    missing = {}
    for workflow_type in ("train", "inference"):
        config = configs / _bundle_file(configs, "train" if workflow_type == "train" else "inference")
        workflow = create_workflow(workflow_type=workflow_type, config_file=str(config), **common)
        missing[workflow_type] = list(workflow.check_properties() or [])
    return missing


def verify_full(models_path: PathLike, name: str) -> list[str]:
    """verify_bundle.verify(bundle, models_path, mode="full"), offline.

    Returns the steps passed; raises on a failure.
    """
    from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out

    models_path = Path(models_path)
    bundle_path = models_path / name
    sys.path.insert(0, str(bundle_path))  # verify: "add bundle path to ensure custom code can be used"
    steps = []
    verify_bundle_directory(models_path, name)
    steps.append("verify_bundle_directory (large_files.yml hashes, necessary and preferred files)")
    verify_version_changes(models_path, name)
    steps.append("verify_version_changes")
    # verify_metadata_format
    verify_metadata(
        meta_file=str(bundle_path / "configs/metadata.json"), filepath=str(bundle_path / "eval/schema.json")
    )
    steps.append("verify_metadata_format (meta_schema_20240725.json)")
    missing = check_workflow_properties(bundle_path)
    if any(missing.values()):
        raise ValueError(f"check properties for workflow failed: {missing}")
    steps.append("verify_bundle_properties + unit-test check_properties (train, inference)")
    config_file = os.path.join("configs", _bundle_file(bundle_path / "configs", "inference"))
    # verify_data_shape
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle_path / "configs/metadata.json"),
        config_file=str(bundle_path / config_file),
        bundle_root=str(bundle_path),
    )
    steps.append("verify_data_shape (verify_net_in_out)")
    # verify_torchscript: torch.jit.script of network_def (no exclusion list), then load the shipped model.ts
    ckpt_export(
        net_id="network_def",
        filepath=str(bundle_path / "models/verify_model.ts"),
        ckpt_file=str(bundle_path / "models/model.pt"),
        meta_file=str(bundle_path / "configs/metadata.json"),
        config_file=str(bundle_path / config_file),
        bundle_root=str(bundle_path),
    )
    if (bundle_path / "models/model.ts").exists():
        import torch

        torch.jit.load(str(bundle_path / "models/model.ts"))
    steps.append("verify_torchscript (ckpt_export scripts network_def; models/model.ts loads)")
    return steps


def check_style(models_path: PathLike, name: str, timeout: float = 600) -> list[str]:
    """The zoo's style checks on ``models/<name>`` from the zoo root: flake8 (bugbear, pep8-naming), black, isort
    and the pre-commit hooks that change files (end-of-file-fixer, trailing-whitespace, pretty-format-json with
    ``--indent=4 --no-sort-keys``, check-added-large-files ``--maxkb=1024``). Returns the findings (empty: pass).
    Needs ``flake8``, ``flake8-bugbear``, ``pep8-naming``, ``black`` and ``isort`` installed.
    """
    import subprocess

    models_path = Path(models_path).resolve()
    root, rel = models_path.parent, f"models/{name}"
    paths = [rel] + [p for p in (f"ci/unit_tests/test_{name}.py",) if (root / p).is_file()]  # its unit test too
    commands = {
        "flake8": [sys.executable, "-m", "flake8", *paths],
        "black": [sys.executable, "-m", "black", "--check", "-l", "120", "--skip-magic-trailing-comma", *paths],
        "isort": [sys.executable, "-m", "isort", "--check-only", *paths],
    }
    findings = []
    for tool, cmd in commands.items():
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            findings.append(f"{tool}: {(proc.stdout + proc.stderr).strip()[-3000:]}")
    downloaded = set()  # the weights large_files.yml lists are not in the pull request
    large = _bundle_file(root / rel, "large_files")
    if large is not None:
        from monai.bundle.config_parser import ConfigParser

        downloaded = {e["path"] for e in ConfigParser.load_config_file(str(root / rel / large)).get("large_files", [])}
    for f in sorted((root / rel).rglob("*")):
        if not f.is_file() or "__pycache__" in f.parts or f.relative_to(root / rel).as_posix() in downloaded:
            continue
        where = f.relative_to(root).as_posix()
        if f.stat().st_size > 1024 * 1024:
            findings.append(f"check-added-large-files: {where} is over 1024 kB")
            continue
        if f.suffix not in (".py", ".json", ".md", ".yml", ".yaml", ".txt", ".conf") and f.name != "LICENSE":
            continue
        text = f.read_text()
        if text and (not text.endswith("\n") or text.endswith("\n\n")):
            findings.append(f"end-of-file-fixer: {where}")
        if any(line != line.rstrip() for line in text.splitlines()):
            findings.append(f"trailing-whitespace: {where}")
        if f.suffix == ".json" and text != json.dumps(json.loads(text), indent=4) + "\n":
            findings.append(f"pretty-format-json: {where}")
    return findings


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", help="an exported bundle folder (assembled into --root first)")
    parser.add_argument("--weights", help="the exported weights folder (what large_files.yml points at)")
    parser.add_argument("--root", help="model-zoo-shaped folder to assemble into (default: a temporary folder)")
    parser.add_argument("--models-path", help="verify an already assembled models/ folder instead (with --name)")
    parser.add_argument("--name", help="the bundle name under --models-path")
    parser.add_argument("--style", action="store_true", help="also run the zoo's flake8 / black / isort / pre-commit")
    parser.add_argument(
        "--properties-only",
        action="store_true",
        help="only create the train and inference workflows and check their properties",
    )
    args = parser.parse_args(argv)
    if args.models_path:
        models_path, name = Path(args.models_path), args.name
    else:
        import tempfile

        root = Path(args.root or tempfile.mkdtemp(prefix="zoo_"))
        models_path, name = assemble_zoo_tree(args.bundle, root, args.weights).parent, Path(args.bundle).name
    if args.properties_only:  # needs MONAI and the bundle's packages only (full mode also needs PyYAML, jsonschema)
        sys.path.insert(0, str(models_path / name))  # as verify_full: the configs import scripts/
        missing = check_workflow_properties(models_path / name)
        if any(missing.values()):
            print(f"check properties for workflow failed: {missing}", file=sys.stderr)
            return 1
        print("passed: check_properties (train, inference)")
        return 0
    if args.style:  # pre-commit runs on the pull request as submitted, before the CI writes into the folder
        findings = check_style(models_path, name)
        if findings:
            print("\n".join(findings), file=sys.stderr)
            return 1
        print("passed: style (flake8, black, isort, pre-commit file hooks)")
    for step in verify_full(models_path, name):
        print(f"passed: {step}")
    print(f"{name}: the model zoo's full-mode checks pass ({models_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
