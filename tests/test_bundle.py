"""The MONAI Bundle, run for real with MONAI's bundle runner: train, resume, evaluate, infer, distill, 2D/3D, DICOM."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from qddens_monai.config import load_bundle_configs
from qddens_monai.data import write_dicom_series

# subprocess / bundle / server / venv runs: deselect with -m 'not slow' for the edit-test loop
pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
CONFIGS = BUNDLE / "configs"
FAST = ["--epochs", "1", "--epochQ", "1", "--val_interval", "5"]  # 1 + 4 x 1 = 5 epochs


def run_bundle(run_id, configs, bundle_root, *args, timeout=900):
    files = [f"configs/{c}" for c in configs]
    config_arg = files[0] if len(files) == 1 else json.dumps(files)
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        run_id,
        "--config_file",
        config_arg,
        "--bundle_root",
        str(bundle_root),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained_2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle2d")
    log = run_bundle("training", ["train.json"], root, *FAST, "--demo_size", "64")
    return root, log


def test_metadata_is_complete():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    for key in (
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
    ):
        assert meta.get(key), key
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    train = ConfigParser.load_config_file(str(CONFIGS / "train.json"))
    infer = ConfigParser.load_config_file(str(CONFIGS / "inference.json"))
    shipped = json.loads((BUNDLE / "models" / "plan.json").read_text())["settings"]  # the shipped weights' plan
    assert image["num_channels"] == shipped["in_channels"] == len(image["channel_def"])
    assert pred["num_channels"] == shipped["num_classes"] == len(pred["channel_def"])
    assert image["modality"].lower() == shipped["modality"]
    for config in (train, infer):
        assert config["in_channels"] == config["num_classes"] == config["modality"] == "auto"  # planned
        assert len(image["spatial_shape"]) == config["spatial_dims"] == shipped["spatial_dims"]
    for field in ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data"):
        assert field in image and field in pred, field


@pytest.mark.parametrize("workflow_type,configs", [("train", ["train.json"]), ("infer", ["inference.json"])])
def test_check_properties(tmp_path, monkeypatch, workflow_type, configs):
    monkeypatch.chdir(
        BUNDLE
    )  # as the bundle runs: inference.json's "%configs/train.json#network_def" is read from here
    files = [str(CONFIGS / c) for c in configs]
    (tmp_path / "models").mkdir()  # inference runs a trained model: its settings are in the plan beside it
    (tmp_path / "models" / "plan.json").write_bytes((BUNDLE / "models" / "plan.json").read_bytes())
    workflow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(tmp_path),
    )
    workflow.initialize()
    assert not workflow.check_properties()


def test_train_resume_evaluate_infer_2d(trained_2d):
    root, log = trained_2d
    assert "generating the 2D demo set" in log
    model = root / "models" / "model.pt"
    assert model.is_file()
    assert (root / "eval" / "training_curves.png").is_file()
    assert (root / "eval" / "quantization_report.txt").read_text().count("100.0%") > 0
    assert list((root / "eval" / "overlays").glob("*.png"))
    ckpt = root / "eval" / "checkpoints" / "checkpoint_epoch=5.pt"
    assert ckpt.is_file()

    # resume the schedule-complete checkpoint for 4 more epochs (epochQ 2: 1 + 4 x 2 = 9)
    log = run_bundle(
        "training",
        ["train.json"],
        root,
        "--epochs",
        "1",
        "--epochQ",
        "2",
        "--val_interval",
        "5",
        "--demo_size",
        "64",
        "--resume_from",
        str(ckpt),
    )
    assert "Epoch: 9/9" in log and "Epoch: 5/9" not in log

    run_bundle("evaluating", ["train.json", "evaluate.json"], root, "--demo_size", "64")
    summary = json.loads((root / "eval" / "metrics_summary.json").read_text())
    # every member of the default's K = 2 learners, and their mean
    assert set(summary["summary"]) >= {"ensemble", "meta", "base_0"} and "base_1" not in summary["summary"]
    # the key metric is the Dice of the output the network gives (the meta learner's by default)
    assert summary["key_metric"]["name"] == "mean_dice" and summary["key_metric"]["column"] == "meta/dice"
    assert (root / "eval" / "metrics_per_image.csv").read_text().count("\n") == 1 + 4  # header + 4 test images

    run_bundle("run", ["inference.json"], root)
    for src in sorted((root / "data" / "demo_2d" / "imagesTs").glob("*.png")):
        seg = Image.open(root / "eval" / "predictions" / f"{src.stem}_seg.png")
        assert seg.size == Image.open(src).size
        assert set(np.unique(np.asarray(seg))) <= {0, 255}


def test_shipped_or_trained_checkpoint_matches_network_def_exactly(trained_2d):
    root, _ = trained_2d
    config = ConfigParser(load_bundle_configs(CONFIGS / "inference.json"))  # network_def from train.json
    config["bundle_root"] = str(root)  # in_channels / num_classes from the plan the training wrote
    net = config.get_parsed_content("network_def")
    for path in (root / "models" / "model.pt", BUNDLE / "models" / "model.pt"):
        assert path.is_file(), f"{path} is missing"  # both must exist: the trained and the shipped weights
        missing, unexpected = net.load_state_dict(torch.load(path, map_location="cpu"), strict=False)
        assert not missing and not unexpected, path


def test_distill_and_student_inference(trained_2d):
    root, _ = trained_2d
    run_bundle(
        "training",
        ["train.json", "distill.json"],
        root,
        "--student_epochs",
        "2",
        "--val_interval",
        "1",
        "--demo_size",
        "64",
    )
    assert (root / "models" / "student.pt").is_file()
    # the distillation loss's parts reach the curves through the trainer's output (LossPartsHandler)
    header = (root / "eval" / "distill" / "training_history.csv").read_text().splitlines()[0].split(",")
    assert {"loss/seg", "loss/kd"} <= set(header), header
    run_bundle("run", ["inference.json", "inference_student.json"], root)
    assert len(list((root / "eval" / "predictions_student").glob("*_seg.png"))) == 4


def test_3d_multiclass_end_to_end(tmp_path):
    """3 classes in 3D, given only the data: training plans 1 channel, 3 classes, MR normalization and the crop,
    evaluation (per-class Dice in the summary) and inference (labels 0..2) read that plan back."""
    from qddens_monai.data import write_demo_3d

    data = tmp_path / "spheres3"
    write_demo_3d(data, num_train=6, num_test=2, size=32, num_classes=3, seed=3)
    flags = ["--dataset_dir", str(data)]
    run_bundle("training", ["train.json", "3d.json"], tmp_path, *FAST, *flags)
    plan = json.loads((tmp_path / "models" / "plan.json").read_text())["settings"]
    assert (plan["in_channels"], plan["num_classes"], plan["modality"], plan["roi_size"]) == (1, 3, "mr", [32] * 3)
    run_bundle("evaluating", ["train.json", "3d.json", "evaluate.json"], tmp_path, *flags)
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    meta = summary["summary"]["meta"]
    assert {"dice", "dice_1", "dice_2", "hd95_1", "hd95_2"} <= set(meta), sorted(meta)
    assert set(summary["disagreement"]["prob_difference"]["pairs_mean_per_class"]) == {"1", "2"}
    run_bundle("run", ["inference.json", "3d.json"], tmp_path, *flags, "--image_glob", "imagesTs/*")
    preds = sorted((tmp_path / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert len(preds) == 2
    for p in preds:
        assert set(np.unique(np.asarray(nib.load(str(p)).dataobj))) <= {0, 1, 2}


def test_train_and_infer_3d_nifti_and_dicom(tmp_path):
    run_bundle("training", ["train.json", "3d.json"], tmp_path, *FAST, "--demo_size", "32", "--roi_size", "[32,32,32]")
    src = sorted((tmp_path / "data" / "demo_3d" / "imagesTs").glob("*.nii.gz"))[0]
    # a DICOM series beside the NIfTI test volumes
    volume = nib.load(str(src)).get_fdata().astype(np.float32) * 1000.0
    write_dicom_series(
        volume, spacing=(1.5, 1.5, 2.0), out_dir=str(tmp_path / "data" / "demo_3d" / "imagesTs" / "ct_series")
    )
    run_bundle("run", ["inference.json", "3d.json"], tmp_path, "--roi_size", "[32,32,32]", "--image_glob", "imagesTs/*")
    out = tmp_path / "eval" / "predictions"
    pred = nib.load(str(out / src.name.replace(".nii.gz", "_seg.nii.gz")))
    image = nib.load(str(src))
    assert pred.shape == image.shape
    assert np.allclose(pred.affine, image.affine, atol=1e-4)
    dicom_pred = nib.load(str(out / "ct_series_seg.nii.gz"))
    assert dicom_pred.shape == volume.shape

    # DICOM SEG on request: the same labels, frame by frame, referencing the source series
    run_bundle(
        "run",
        ["inference.json", "3d.json", "dicom_seg.json"],
        tmp_path,
        "--roi_size",
        "[32,32,32]",
        "--image_glob",
        "imagesTs/ct_series",
        "--output_dir",
        str(tmp_path / "seg"),
    )
    seg = pydicom.dcmread(str(tmp_path / "seg" / "ct_series_seg.dcm"))
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "foreground"
    frames = np.zeros(volume.shape[::-1], np.uint8)  # (slices, rows, columns)
    for i, frame in enumerate(seg.pixel_array.reshape(-1, *volume.shape[1::-1])):
        position = seg.PerFrameFunctionalGroupsSequence[i].PlanePositionSequence[0].ImagePositionPatient
        frames[int(round(float(position[2]) / 2.0))] = frame
    assert np.array_equal(frames, np.transpose(np.asarray(dicom_pred.dataobj), (2, 1, 0)))


def test_multi_process_training_with_torchrun(tmp_path):
    configs = json.dumps(["configs/train.json", "configs/multi_gpu_train.json"])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        configs,
        "--bundle_root",
        str(tmp_path),
        *FAST,
        "--demo_size",
        "64",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert (tmp_path / "models" / "model.pt").is_file()


def test_verify_net_in_out_and_ckpt_export(trained_2d, tmp_path):
    root, _ = trained_2d
    common = [
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--bundle_root",
        str(root),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", *common, "--device", "cpu"],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "ckpt_export",
            "network_def",
            "--filepath",
            str(tmp_path / "model.ts"),
            "--ckpt_file",
            str(root / "models" / "model.pt"),
            *common,
        ],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scripted = torch.jit.load(str(tmp_path / "model.ts"), map_location="cpu")  # scripted, as the README shows
    config = ConfigParser(load_bundle_configs(CONFIGS / "inference.json"))
    config["bundle_root"] = str(root)
    net = config.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu"))
    x = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted.eval()(x), net.eval()(x), rtol=1e-4, atol=1e-5)
