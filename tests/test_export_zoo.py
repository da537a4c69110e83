"""Model Zoo export for real: the exported folder runs in a fresh venv without qddens_monai; the artifacts
reproduce the eager network."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import load_net_with_metadata

from qddens_monai.config import load_bundle_configs
from qddens_monai.data import MAX_ROI_SIZE, ensure_demo_data
from qddens_monai.export import OnnxRuntimeNetwork, check_metadata, export_zoo, load_bundle_network
from qddens_monai.export.metadata import installed_version
from qddens_monai.quantization import freeze, load_packed_network

# subprocess / bundle / server / venv runs: deselect with -m 'not slow' for the edit-test loop
pytestmark = pytest.mark.slow

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the subprocesses
BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
NAME = "retinal_vessel_fundus_segmentation"
STUDENT = "retinal_vessel_fundus_student_segmentation"
ARTIFACTS = ["model.onnx", "model.pt", "model.ts", "model_int8.onnx", "model_packed.bin"]


def run(cmd, cwd, python=sys.executable, timeout=900, env=None):
    proc = subprocess.run([str(python), *cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def infer(folder, configs, python=sys.executable, env=None, *args):
    config_arg = json.dumps([f"configs/{c}" for c in configs]) if len(configs) > 1 else f"configs/{configs[0]}"
    return run(["-m", "monai.bundle", "run", "--config_file", config_arg, *args], folder, python, env=env)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # the bundle generates demo data only into its own demo_dir: a user folder must hold a dataset.json
    path = tmp_path_factory.mktemp("data") / "demo_2d"
    ensure_demo_data(path, spatial_dims=2)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("zoo")
    return export_zoo(NAME, out, dataset_dir=data_dir)


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory, exported):
    """A new venv with exactly what the Model Zoo CI installs for inference (the metadata's pins): no qddens_monai."""
    meta = json.loads((exported.folder / "configs" / "metadata.json").read_text())
    env_dir = tmp_path_factory.mktemp("venv") / "fresh"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pins = [f"torch=={meta['pytorch_version']}", f"monai=={meta['monai_version']}"]
    pins += [f"{k}=={v}" for k, v in meta["required_packages_version"].items()]  # fire included
    run(
        ["-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
        env_dir,
        python,
        timeout=900,
        env=clean_env(),
    )
    return python


def clean_env():
    # The fresh venv must not see this checkout through PYTHONPATH.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def test_layout_zip_and_metadata(exported):
    folder = exported.folder
    for rel in [
        "LICENSE",
        "large_files.yml",
        "docs/README.md",
        "docs/data_license.txt",
        "configs/inference.json",
        "configs/inference_packed.json",
        "configs/inference_onnx.json",
        "configs/train.json",
        "configs/evaluate.json",
        "configs/metadata.json",
        "configs/logging.conf",
        "scripts/__init__.py",
        "scripts/qddens_monai/networks/qmenet.py",
        "scripts/qddens_monai/export/onnx.py",
    ]:
        assert (folder / rel).is_file(), rel
    assert sorted(p.name for p in (folder / "models").iterdir()) == sorted(ARTIFACTS + ["plan.json"])
    assert json.loads((folder / "models" / "plan.json").read_bytes()) == json.loads(
        (BUNDLE / "models" / "plan.json").read_bytes()
    )  # the model's settings, which evaluate.json reads beside it
    for left_out in ["cli.py", "demo.py", "label", "export/zoo.py", "export/vendor.py"]:
        assert not (folder / "scripts" / "qddens_monai" / left_out).exists(), left_out
    # the code is copied as it is and imports itself relatively: no import of the installed package is left
    for f in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not any(n == "qddens_monai" or n.startswith("qddens_monai.") for n in names), (f, names)
    for rel in ("networks/qmenet.py", "losses/ensemble.py"):  # the same code, formatted as the zoo wants it
        copied, source = folder / "scripts" / "qddens_monai" / rel, BUNDLE.parent / "qddens_monai" / rel
        assert ast.dump(ast.parse(copied.read_text())) == ast.dump(ast.parse(source.read_text())), rel
    # and the configs name the copy, never the installed package (metadata.json is prose)
    for f in [f for f in (folder / "configs").glob("*.json") if f.name != "metadata.json"]:
        assert not re.search(r"(?<![\w.])qddens_monai\b", f.read_text()), f

    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with zipfile.ZipFile(exported.zip_path) as z:
        zipped = {n[len(NAME) + 1 :]: z.read(n) for n in z.namelist()}
        assert all(n.startswith(f"{NAME}/") for n in z.namelist())
    assert zipped == files

    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    check_metadata(meta)
    assert meta["version"] in meta["changelog"] and "Model Zoo export" in meta["changelog"][meta["version"]]
    assert meta["monai_version"] == installed_version("monai")
    assert meta["pytorch_version"] == installed_version("torch")
    assert meta["numpy_version"] == installed_version("numpy")
    assert meta["required_packages_version"]["pytorch-ignite"] == installed_version("pytorch-ignite")
    assert "qddens-monai" not in meta["required_packages_version"]
    assert (folder / "large_files.yml").read_text() == "large_files: []\n"  # no --weights-url: weights kept

    readme = (folder / "docs" / "README.md").read_text()
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
    ]:
        assert heading in readme
    for artifact in ARTIFACTS:
        size = (folder / "models" / artifact).stat().st_size
        assert f"`models/{artifact}` | {size / 1e6:.2f} MB" in readme
    assert re.search(r"onnxruntime int8: Dice 0\.9\d+ against the PyTorch model", readme)
    assert "Incremental Network Quantization" in readme


def test_torchscript_and_packed_start_reproduce_the_eager_model(exported):
    net, _ = load_bundle_network(BUNDLE, BUNDLE / "models" / "model.pt")
    frozen = freeze(net).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = frozen(x)
        ts, meta, _ = load_net_with_metadata(str(exported.folder / "models" / "model.ts"))
        torch.testing.assert_close(ts(x), expected, atol=1e-5, rtol=1e-5)
        parser = ConfigParser()
        parser.read_config(load_bundle_configs(BUNDLE / "configs" / "inference.json"))
        parser["bundle_root"] = str(BUNDLE)
        packed = load_packed_network(
            parser.get_parsed_content("network_def"), exported.folder / "models" / "model_packed.bin"
        )
        assert torch.equal(packed.eval()(x), expected)  # bit-identical weights
    assert meta["version"] == json.loads((exported.folder / "configs" / "metadata.json").read_text())["version"]


def test_onnx_runtime_float_and_int8_agree_with_pytorch(exported, data_dir):
    assert exported.onnx_dice_vs_pytorch["onnxruntime_float"] > 0.999
    assert exported.onnx_dice_vs_pytorch["onnxruntime_int8"] > 0.9
    net, _ = load_bundle_network(BUNDLE, BUNDLE / "models" / "model.pt")
    # another batch size than the export's example (the batch axis is dynamic), at the inference roi (fixed)
    x = torch.rand(3, 3, *[MAX_ROI_SIZE[2]] * 2)
    with torch.no_grad():
        expected = freeze(net).eval()(x)
    torch.testing.assert_close(
        OnnxRuntimeNetwork(exported.folder / "models" / "model.onnx")(x), expected, atol=1e-3, rtol=1e-3
    )
    # the int8 model through the bundle's own ONNX config, from the exported folder
    infer(
        exported.folder,
        ["inference.json", "inference_onnx.json"],
        sys.executable,
        None,
        "--dataset_dir",
        str(data_dir),
        "--onnx_file",
        "models/model_int8.onnx",
    )
    assert len(list((exported.folder / "eval" / "predictions_onnx_model_int8").glob("*_seg.png"))) == 4


def test_exported_bundle_runs_in_a_fresh_venv_without_qddens_monai(exported, fresh_python, data_dir, tmp_path):
    folder = exported.folder
    env = clean_env()
    proc = subprocess.run(
        [str(fresh_python), "-c", "import qddens_monai"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0 and "No module named 'qddens_monai'" in proc.stderr
    infer(folder, ["inference.json"], fresh_python, env, "--dataset_dir", str(data_dir))
    infer(folder, ["inference.json", "inference_packed.json"], fresh_python, env, "--dataset_dir", str(data_dir))
    plain = sorted((folder / "eval" / "predictions").glob("*_seg.png"))
    assert len(plain) == 4
    for f in plain:
        assert f.read_bytes() == (folder / "eval" / "predictions_packed" / f.name).read_bytes(), f.name
    # the same run with the installed package (this checkout) writes the same files
    reference = tmp_path / "reference"
    infer(
        folder, ["inference.json"], sys.executable, None, "--dataset_dir", str(data_dir), "--output_dir", str(reference)
    )
    for f in plain:
        assert f.read_bytes() == (reference / f.name).read_bytes(), f.name

    # monai.bundle.load-style use, and MONAI's own check of network_data_format
    code = (
        "import torch, monai.bundle\n"
        f"net = monai.bundle.load(name={NAME!r}, bundle_dir='..', workflow_type='inference', device='cpu')\n"
        "net.eval()\n"
        "print(type(net).__module__, type(net).__name__, tuple(net(torch.rand(1, 3, 64, 64)).shape))\n"
    )
    out = run(["-c", code], folder, fresh_python, env=env)
    assert "scripts.qddens_monai.networks.qmenet QMENet (1, 2, 64, 64)" in out
    run(
        [
            "-m",
            "monai.bundle",
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            "configs/metadata.json",
            "--config_file",
            "configs/inference.json",
            "--device",
            "cpu",
        ],
        folder,
        fresh_python,
        env=env,
    )


@pytest.fixture(scope="module")
def distilled_bundle(tmp_path_factory):
    """A copy of the bundle with the shipped ensemble, and a student really distilled from it (1 epoch)."""
    root = tmp_path_factory.mktemp("distill")
    for part in ("configs", "docs"):
        shutil.copytree(BUNDLE / part, root / part)
    (root / "models").mkdir()
    for name in ("model.pt", "plan.json"):  # the shipped ensemble and the settings it was trained with
        shutil.copy2(BUNDLE / "models" / name, root / "models" / name)
    run(
        [
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            '["configs/train.json","configs/distill.json"]',
            "--bundle_root",
            str(root),
            "--student_epochs",
            "1",
            "--val_interval",
            "1",
            "--demo_size",
            "64",
        ],
        root,
    )
    assert (root / "models" / "student.pt").is_file()
    return root


def test_student_export_runs_in_the_fresh_venv(distilled_bundle, fresh_python, tmp_path):
    result = export_zoo(
        STUDENT,
        tmp_path / "out",
        bundle_dir=distilled_bundle,
        student=True,
        dataset_dir=distilled_bundle / "data" / "demo_2d",
    )
    folder = result.folder
    assert sorted(p.name for p in (folder / "models").iterdir()) == [
        "model.onnx",
        "model.pt",
        "model.ts",
        "model_int8.onnx",
        "plan.json",
    ]  # a float student: no packed file
    inference = json.loads((folder / "configs" / "inference.json").read_text())
    assert inference["network_def"]["_target_"] == "UNet"  # MONAI's own UNet: nothing to vendor for it
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    check_metadata(meta)
    assert "student" in meta["name"]
    assert result.onnx_dice_vs_pytorch["onnxruntime_float"] > 0.999

    student, _ = load_bundle_network(distilled_bundle, distilled_bundle / "models" / "student.pt", student=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ts, _, _ = load_net_with_metadata(str(folder / "models" / "model.ts"))
        torch.testing.assert_close(ts(x), student(x), atol=1e-5, rtol=1e-5)
    infer(
        folder,
        ["inference.json"],
        fresh_python,
        clean_env(),
        "--dataset_dir",
        str(distilled_bundle / "data" / "demo_2d"),
    )
    assert len(list((folder / "eval" / "predictions").glob("*_seg.png"))) == 4
