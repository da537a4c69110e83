"""Batch inference over many files where some are bad, through MONAI's real bundle runner: the good inputs are
all segmented, the bad ones listed in ``inference_report.json``, and the exit status says that some failed."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from qddens_monai.config import load_bundle_configs
from qddens_monai.data import write_dicom_series, write_plan

# subprocess / bundle / server / venv runs: deselect with -m 'not slow' for the edit-test loop
pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
TINY = {
    "network_def#backbone_kwargs#channels": [4, 8, 16, 32],
    "network_def#meta_kwargs#channels": [4, 8, 16, 32],
    "roi_size": [16, 16, 16],
}


def tiny_network(parser, tmp_path):
    """A config file holding the tiny ``network_def``: inference.json's network_def is a file macro
    (``%configs/train.json#network_def``), so its nested keys cannot be overridden on the command line."""
    path = tmp_path / "tiny_network.json"
    path.write_text(json.dumps({"network_def": parser["network_def"]}))
    return str(path)


def test_good_inputs_are_written_bad_ones_reported_and_the_run_fails(tmp_path):
    parser = ConfigParser()
    parser.read_config(load_bundle_configs([BUNDLE / "configs" / "inference.json", BUNDLE / "configs" / "3d.json"]))
    for key, value in TINY.items():
        parser[key] = value
    (tmp_path / "models").mkdir()
    # a trained model's folder: its weights and the plan its training wrote (1-channel MR, 2 classes)
    write_plan(tmp_path / "models", {"spatial_dims": 3, "in_channels": 1, "num_classes": 2, "modality": "mr"})
    parser["bundle_root"] = str(tmp_path)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")

    images = tmp_path / "data" / "imagesTs"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    good = {}
    for name, shape in {"case_a": (24, 20, 16), "case_b": (16, 16, 16), "case_c": (20, 24, 18)}.items():
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), affine), str(images / f"{name}.nii.gz"))
        good[f"{name}_seg.nii.gz"] = shape
    volume = (rng.random((20, 20, 12)) * 1000).astype(np.float32)
    write_dicom_series(volume, spacing=(1.5, 1.5, 2.0), out_dir=str(images / "ct_good"))
    good["ct_good_seg.nii.gz"] = volume.shape
    nib.save(nib.Nifti1Image(rng.random((16, 16, 16, 2)).astype(np.float32), affine), str(images / "four_d.nii.gz"))
    nan = rng.random((16, 16, 16)).astype(np.float32)
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, affine), str(images / "nan.nii.gz"))
    blob = (images / "case_b.nii.gz").read_bytes()
    (images / "truncated.nii.gz").write_bytes(blob[: len(blob) // 2])
    write_dicom_series(volume, out_dir=str(images / "two_series"), series_uid="1.2.826.0.1.3680043.2.21")
    write_dicom_series(volume, out_dir=str(tmp_path / "other"), series_uid="1.2.826.0.1.3680043.2.22")
    for f in (tmp_path / "other").iterdir():
        os.replace(f, images / "two_series" / f"b_{f.name}")
    write_dicom_series(volume, spacing=(1.5, 1.5, 2.0), out_dir=str(images / "gap_series"))
    os.remove(images / "gap_series" / "slice_0005.dcm")
    bad = {"four_d.nii.gz", "nan.nii.gz", "truncated.nii.gz", "two_series", "gap_series"}

    out = tmp_path / "eval" / "predictions"
    out.mkdir(parents=True)
    (out / "nan_seg.nii.gz").write_bytes(b"an earlier prediction")  # must survive: nan.nii.gz is skipped
    earlier = hashlib.sha256((out / "nan_seg.nii.gz").read_bytes()).hexdigest()

    configs = json.dumps(["configs/inference.json", "configs/3d.json", tiny_network(parser, tmp_path)])
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        str(tmp_path / "data"),
        "--image_glob",
        "imagesTs/*",
        "--roi_size",
        "[16,16,16]",
    ]
    proc = subprocess.run(
        cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert "InferenceInputError: 5 of 9 inputs were not segmented (the other 4 were written)" in log

    for name, shape in good.items():
        assert nib.load(str(out / name)).shape == shape, name
    assert hashlib.sha256((out / "nan_seg.nii.gz").read_bytes()).hexdigest() == earlier
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == sorted(set(good) | {"nan_seg.nii.gz"})

    report = json.loads((out / "inference_report.json").read_text())
    assert report["inputs"] == 9
    assert sorted(Path(p).name for p in report["segmented"]) == [
        "case_a.nii.gz",
        "case_b.nii.gz",
        "case_c.nii.gz",
        "ct_good",
    ]
    failed = {Path(f["image"]).name: " ".join(f["problems"]) for f in report["failed"]}
    assert set(failed) == bad
    assert "channels" in failed["four_d.nii.gz"] and "NaN" in failed["nan.nii.gz"]
    assert "cannot be read" in failed["truncated.nii.gz"]
    assert "holds 2 DICOM series" in failed["two_series"] and "unevenly spaced" in failed["gap_series"]


def _run_2d_inference(tmp_path, images, num_classes):
    parser = ConfigParser()
    parser.read_config(load_bundle_configs(BUNDLE / "configs" / "inference.json"))
    tiny = {
        "network_def#backbone_kwargs#channels": [4, 8, 16, 32],
        "network_def#meta_kwargs#channels": [4, 8, 16, 32],
        "in_channels": 1,
        "modality": "mr",
        "num_classes": num_classes,
        "roi_size": [32, 32],
    }
    for key, value in tiny.items():
        parser[key] = value
    (tmp_path / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")
    configs = json.dumps(["configs/inference.json", tiny_network(parser, tmp_path)])
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        str(images.parent),
        "--image_glob",
        "imagesTs/*",
    ]
    for key, value in tiny.items():
        if not key.startswith("network_def#"):
            cmd += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(
        cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return tmp_path / "eval" / "predictions"


def test_2d_nifti_in_gives_nifti_out_with_its_geometry_and_class_values(tmp_path):
    """A 2D NIfTI keeps its affine in the prediction (not a PNG), and 3 classes are written as 0..2, not scaled."""
    images = tmp_path / "data" / "imagesTs"
    images.mkdir(parents=True)
    affine = np.diag([0.8, 0.7, 3.0, 1.0])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((40, 48)).astype(np.float32), affine), str(images / "slice.nii.gz"))
    out = _run_2d_inference(tmp_path, images, num_classes=3)
    assert sorted(p.name for p in out.glob("*_seg*")) == ["slice_seg.nii.gz"]
    seg = nib.load(str(out / "slice_seg.nii.gz"))
    assert seg.shape[:2] == (40, 48) and int(np.prod(seg.shape[2:])) == 1
    np.testing.assert_allclose(seg.affine, affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}


def test_2d_png_in_gives_a_viewable_binary_png_out(tmp_path):
    from PIL import Image

    images = tmp_path / "data" / "imagesTs"
    images.mkdir(parents=True)
    Image.fromarray((np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8)).save(images / "photo.png")
    out = _run_2d_inference(tmp_path, images, num_classes=2)
    assert sorted(p.name for p in out.glob("*_seg*")) == ["photo_seg.png"]
    seg = np.asarray(Image.open(out / "photo_seg.png"))
    assert seg.shape == (40, 48) and set(np.unique(seg)) <= {0, 255}
