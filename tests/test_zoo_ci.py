"""The Model Zoo's own CI (``ci/verify_bundle.py -m full``) on the exported bundle, offline, with no exclusion list.

``qddens_monai.export.zoo_ci`` repeats each full-mode step with the MONAI call the zoo makes (the step names
below are the zoo's functions): verify_bundle_directory, verify_version_changes, verify_metadata_format
(``verify_metadata`` against ``tests/data/meta_schema_20240725.json``), verify_bundle_properties (plus the
unit tests' ``check_properties`` for train and inference), verify_data_shape (``verify_net_in_out``) and
verify_torchscript (``ckpt_export``: ``torch.jit.script`` of ``network_def``, then ``torch.jit.load`` of
``models/model.ts``). It runs in a subprocess from a model-zoo-shaped tree, as the zoo's runner does.
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from qddens_monai.data import ensure_demo_data
from qddens_monai.export import export_zoo
from qddens_monai.export.weights import LARGE_FILE_BYTES, sha256
from qddens_monai.export.zoo_ci import ZOO_SCHEMA, assemble_zoo_tree

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NAME = "retinal_vessel_fundus_segmentation"
URL = "https://github.com/example/qddens-monai/releases/download/v0.1.0"


def zoo_ci(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "qddens_monai.export.zoo_ci", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "demo_2d"
    ensure_demo_data(data, spatial_dims=2)
    return export_zoo(NAME, tmp_path_factory.mktemp("out"), dataset_dir=data, onnx=False, weights_url=URL + "/")


@pytest.fixture(scope="module")
def full_mode(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("model-zoo")
    proc = zoo_ci("--bundle", exported.folder, "--weights", exported.weights, "--root", root, "--style", cwd=root)
    return root / "models" / NAME, proc


def test_schema_is_the_zoos():
    schema = json.loads(ZOO_SCHEMA.read_text())
    assert schema["$schema"].endswith("draft/2019-09/schema")
    assert "required_packages_version" in schema["required"] and "network_data_format" in schema["required"]


def test_full_mode_passes_with_no_exclusion(full_mode):
    folder, proc = full_mode
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for step in [
        "style (flake8, black, isort, pre-commit file hooks)",
        "verify_bundle_directory",
        "verify_version_changes",
        "verify_metadata_format",
        "check_properties (train, inference)",
        "verify_data_shape",
        "verify_torchscript",
    ]:
        assert step in proc.stdout, proc.stdout
    assert (folder / "models" / "verify_model.ts").is_file()
    assert (folder.parents[1] / "ci" / "unit_tests" / f"test_{NAME}.py").is_file()  # the zoo unit test to submit


def test_scripted_checkpoint_equals_eager(full_mode):
    # ckpt_export scripts network_def: the scripted ensemble must compute what the eager one does
    folder, _ = full_mode
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser.update({"bundle_root": str(folder)})
    sys.path.insert(0, str(folder))
    try:
        net = parser.get_parsed_content("network_def")
        net.load_state_dict(torch.load(folder / "models" / "model.pt", map_location="cpu", weights_only=True))
        shape = (1, int(parser.get_parsed_content("plan#in_channels")), *parser.get_parsed_content("plan#roi_size"))
    finally:  # the vendored package must not stay imported as 'scripts' for other tests
        sys.path.remove(str(folder))
        for mod in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[mod]
    scripted = torch.jit.load(str(folder / "models" / "verify_model.ts"), map_location="cpu")
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted.eval()(x), net.eval()(x), rtol=1e-4, atol=1e-5)


def test_pull_request_folder_has_no_file_over_1mb_and_lists_the_weights(exported):
    folder, weights = exported.folder, exported.weights
    sizes = {f.relative_to(folder).as_posix(): f.stat().st_size for f in folder.rglob("*") if f.is_file()}
    assert max(sizes.values()) <= LARGE_FILE_BYTES, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    moved = sorted(f.relative_to(weights).as_posix() for f in weights.rglob("*") if f.is_file())
    assert "models/model.pt" in moved and "models/model.ts" in moved
    listed = ConfigParser.load_config_file(str(folder / "large_files.yml"))["large_files"]
    assert sorted(e["path"] for e in listed) == moved
    for e in listed:
        assert e["url"] == f"{URL}/{Path(e['path']).name}" and e["hash_type"] == "sha256"
        assert e["hash_val"] == sha256(weights / e["path"])
    with zipfile.ZipFile(exported.zip_path) as z:  # the release zip still holds everything
        assert f"{NAME}/models/model.pt" in z.namelist()


@pytest.mark.parametrize("url", ["", "  ", "models/", "file:///tmp/w"])
def test_an_empty_or_local_weights_url_is_refused_before_exporting(url, tmp_path):
    with pytest.raises(ValueError, match="weights url"):
        export_zoo(NAME, tmp_path / "out", weights_url=url)
    assert not (tmp_path / "out").exists()


def test_a_weight_with_a_wrong_hash_fails_as_in_the_zoo(exported, tmp_path):
    folder = assemble_zoo_tree(exported.folder, tmp_path)
    (folder / "large_files.yml").write_text(
        'large_files:\n  - path: "models/model.pt"\n    url: "https://example.org/model.pt"\n'
        f'    hash_val: "{"0" * 64}"\n    hash_type: "sha256"\n'
    )
    proc = zoo_ci("--models-path", folder.parent, "--name", NAME, cwd=tmp_path)
    assert proc.returncode != 0 and "Download large files" in proc.stderr, proc.stderr[-3000:]


def test_packages_follow_what_each_config_imports(exported):
    # what the workflows the zoo creates and unit-tests (inference, train, evaluate) import is required: fire for the
    # command line, ignite for the engines, the image readers, TensorBoard / tqdm / matplotlib for training's
    # handlers; ONNX Runtime and DICOM SEG writing are extra
    meta = json.loads((exported.folder / "configs" / "metadata.json").read_text())
    required, optional = meta["required_packages_version"], meta["extra_packages_version"]
    assert "optional_packages_version" not in meta  # MONAI renames it to required_packages_version
    assert {"fire", "pytorch-ignite", "nibabel", "pillow", "tensorboard", "tqdm", "matplotlib"} <= set(required)
    assert {"highdicom", "onnxruntime"} <= set(optional)  # dicom_seg.json, inference_onnx.json
    assert not set(required) & set(optional)
    assert not {"torch", "monai", "numpy", "qddens-monai"} & (set(required) | set(optional))


def test_vendored_code_is_what_the_configs_import(exported):
    from qddens_monai.export.vendor import vendored_modules

    scripts = exported.folder / "scripts" / "qddens_monai"
    files = {f.relative_to(scripts).as_posix() for f in scripts.rglob("*.py")}
    configs = [json.loads(f.read_text()) for f in (exported.folder / "configs").glob("*.json")]
    assert len(files) == len(vendored_modules(configs))
    assert "networks/qmenet.py" in files and "export/onnx.py" in files  # network_def, inference_onnx.json
    assert not {"cli.py", "demo.py", "export/zoo.py", "data/drive.py"} & files and not any(
        f.startswith("label/") for f in files
    )
    # a vendored package __init__ exports only vendored modules
    assert '".zoo"' not in (scripts / "export" / "__init__.py").read_text()


def test_fresh_venv_with_exactly_the_required_packages(exported, tmp_path_factory):
    # torch, monai, numpy and required_packages_version only (no qddens_monai): command-line inference,
    # check_properties (train, inference), the zoo unit test (inference, train + evaluate) and the full mode
    from qddens_monai.export.fresh_venv import VenvError, check_fresh_venv, create_venv

    meta = json.loads((exported.folder / "configs" / "metadata.json").read_text())
    work = tmp_path_factory.mktemp("fresh_venv")
    try:
        python = create_venv(work / "venv", meta)
    except (VenvError, OSError, subprocess.TimeoutExpired) as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot create a virtual environment with the bundle's packages here: {e}")
    seconds = check_fresh_venv(exported.folder, exported.weights, work, python)
    assert any(k.startswith("inference") for k in seconds) and "zoo unit test: train + evaluate" in seconds
    assert any((work / "predictions").rglob("*.*"))


def test_onnx_config_needs_onnxruntime(tmp_path):
    from qddens_monai.export.dependencies import config_dependencies

    scripts = REPO / "qddens_monai"  # the same layout as the vendored copy, under another root name
    config = {"network_def": {"_target_": "scripts.qddens_monai.export.onnx.OnnxRuntimeNetwork"}}
    vendored = tmp_path / "scripts" / "qddens_monai"
    vendored.parent.mkdir()
    vendored.symlink_to(scripts, target_is_directory=True)
    required, _ = config_dependencies(config, vendored)
    assert "onnxruntime" in required


def test_metrics_config_needs_scipy_asked_for_with_optional_import(tmp_path):
    """EnsembleMetrics asks for scipy (HD95) through optional_import in its body: a config naming it needs scipy."""
    from qddens_monai.export.dependencies import config_dependencies

    config = {"metric": {"_target_": "scripts.qddens_monai.evaluation.EnsembleMetrics", "metrics": ["dice", "hd95"]}}
    vendored = tmp_path / "scripts" / "qddens_monai"
    vendored.parent.mkdir()
    vendored.symlink_to(REPO / "qddens_monai", target_is_directory=True)
    required, _ = config_dependencies(config, vendored)
    assert "scipy" in required


def test_onnx_float_and_int8_write_to_different_folders(exported):
    folder = exported.folder
    outputs = {}
    for onnx_file in ("models/model.onnx", "models/model_int8.onnx"):
        parser = ConfigParser()
        parser.read_config(
            [str(folder / "configs" / "inference.json"), str(folder / "configs" / "inference_onnx.json")]
        )
        parser.update({"bundle_root": str(folder), "onnx_file": onnx_file})
        outputs[onnx_file] = parser.get_parsed_content("output_dir")
    assert outputs["models/model.onnx"].endswith("/eval/predictions_onnx_model")
    assert outputs["models/model_int8.onnx"].endswith("/eval/predictions_onnx_model_int8")


def test_readme_has_the_zoo_templates_sections(exported):
    readme = (exported.folder / "docs" / "README.md").read_text()
    for heading in [
        "### **Authors**",
        "### **Tags**",
        "## Model Overview",
        "## Data",
        "## Performance",
        "## MONAI Bundle Commands",
        "execute multi-GPU training",
        "#### TorchScript and TensorRT",
        "## System Configuration",
        "## Limitations",
        "## Citation Info",
        "## References",
        "## License",
    ]:
        assert heading in readme
    if "qddens-monai prepare-drive" in readme:  # the package's command, which the export does not ship
        assert "not part of this bundle" in readme
