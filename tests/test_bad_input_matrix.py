"""The bad-input matrix, through MONAI's real bundle runner: every case fails in ``initialize`` with a message
naming the file or setting, and an earlier ``models/model.pt`` and ``eval/metrics_summary.json`` stay as they
were, with no other file written into the bundle.

All file-level problems of one datalist are reported together, so one run covers the NIfTI and DICOM cases.
"""

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
from PIL import Image

from qddens_monai.data import check_datalist, write_datalist, write_dicom_series

# subprocess / bundle / server / venv runs: deselect with -m 'not slow' for the edit-test loop
pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
TRAIN_3D = json.dumps(["configs/train.json", "configs/3d.json"])
SMALL_3D = ["--roi_size", "[16,16,16]", "--epochs", "1", "--epochQ", "1"]
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def nifti(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def snapshot(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A bundle root with earlier results, and good 3D volumes to build datalists from."""
    root = tmp_path_factory.mktemp("project")
    (root / "models").mkdir()
    torch.save({"earlier": torch.arange(4.0)}, root / "models" / "model.pt")
    (root / "eval").mkdir()
    (root / "eval" / "metrics_summary.json").write_text('{"summary": {"ensemble": {"dice": 0.71}}}\n')
    good = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    items = []
    for i in range(3):
        label = np.zeros((16, 16, 16), np.uint8)
        label[4:12, 4:12, 4:12] = 1
        items.append(
            {
                "image": nifti(good / f"img{i}.nii.gz", rng.random((16, 16, 16)).astype(np.float32)),
                "label": nifti(good / f"lbl{i}.nii.gz", label),
            }
        )
    return root, good, items


def run_failing(root, *args, config=TRAIN_3D):
    before = snapshot(root)
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        config,
        "--bundle_root",
        str(root),
        *args,
    ]
    proc = subprocess.run(
        cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert snapshot(root) == before  # nothing lost, overwritten or added
    return proc.stdout + proc.stderr


def test_every_bad_file_of_a_datalist_is_named_in_one_error(project, tmp_path):
    root, good, items = project
    img, lbl = items[0]["image"], items[0]["label"]
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    data.mkdir()
    volume = rng.random((16, 16, 16)).astype(np.float32)
    blob = Path(img).read_bytes()
    (data / "truncated.nii.gz").write_bytes(blob[: len(blob) // 2])
    (data / "wrong_extension.png").write_bytes(blob)  # a NIfTI named .png
    nifti(data / "four_d.nii.gz", rng.random((16, 16, 16, 2)).astype(np.float32))
    nifti(data / "short_label.nii.gz", np.zeros((16, 16, 12), np.uint8))
    shifted = AFFINE.copy()
    shifted[:3, 3] = (5.0, 0.0, 0.0)
    nifti(data / "shifted_label.nii.gz", np.asarray(nib.load(lbl).dataobj), shifted)
    nan = volume.copy()
    nan[0, 0, :3] = np.nan
    nan[1, 1, 0] = np.inf
    nifti(data / "nan_image.nii.gz", nan)
    five = np.asarray(nib.load(lbl).dataobj).copy()
    five[0, 0, 0] = 5
    nifti(data / "label_five.nii.gz", five)
    write_dicom_series(
        volume * 1000,
        spacing=(1.5, 1.5, 2.0),
        out_dir=str(data / "two_series"),
        series_uid="1.2.826.0.1.3680043.2.11",
        series_number=1,
    )
    write_dicom_series(
        volume * 1000,
        spacing=(1.5, 1.5, 2.0),
        out_dir=str(data / "tmp_series"),
        series_uid="1.2.826.0.1.3680043.2.12",
        series_number=2,
    )
    for f in sorted((data / "tmp_series").iterdir()):
        os.replace(f, data / "two_series" / f"b_{f.name}")
    write_dicom_series(volume * 1000, spacing=(1.5, 1.5, 2.0), out_dir=str(data / "gap_series"))
    os.remove(data / "gap_series" / "slice_0007.dcm")  # InstanceNumber 8 of 16
    training = items + [
        {"image": str(data / "truncated.nii.gz"), "label": lbl},
        {"image": str(data / "wrong_extension.png"), "label": lbl},
        {"image": str(data / "four_d.nii.gz"), "label": lbl},
        {"image": img, "label": str(data / "short_label.nii.gz")},
        {"image": img, "label": str(data / "shifted_label.nii.gz")},
        {"image": str(data / "nan_image.nii.gz"), "label": lbl},
        {"image": img, "label": str(data / "label_five.nii.gz")},
        {"image": str(data / "two_series"), "label": lbl},
        {"image": str(data / "gap_series"), "label": lbl},
        {"image": str(data / "missing.nii.gz"), "label": lbl},
    ]
    write_datalist(str(data / "dataset.json"), training, val_fraction=0.0)
    log = run_failing(root, "--dataset_dir", str(data), "--val_fraction", "0.0", *SMALL_3D)
    assert "DataValidationError" in log
    expected = {
        "truncated.nii.gz": "cannot be read",
        "wrong_extension.png": "cannot be read",
        "four_d.nii.gz": (
            "has 2 channels, the network expects in_channels=1 (a 4D NIfTI: its last axis is read as channels)"
        ),
        "short_label.nii.gz": "label shape (16, 16, 12) differs from image",
        "shifted_label.nii.gz": "label affine differs from image",
        "nan_image.nii.gz": "image contains 3 NaN and 1 infinite values",
        "label_five.nii.gz": "label values [5] do not fit num_classes=2",
        "two_series": "holds 2 DICOM series (",
        "gap_series": "unevenly spaced (usual spacing 2 mm; 4 mm between InstanceNumber 7 and 9",
        "missing.nii.gz": "image file does not exist",
    }
    for name, text in expected.items():
        lines = [line for line in log.splitlines() if f"{data}/{name}:" in line]
        assert lines and any(text in line for line in lines), (name, lines or log[-3000:])
    two = next(line for line in log.splitlines() if f"{data}/two_series:" in line)
    assert "1.2.826.0.1.3680043.2.11 (16 files)" in two and "1.2.826.0.1.3680043.2.12 (16 files)" in two


def test_wrong_channel_count_in_2d(project, tmp_path):
    root, _, _ = project
    grey = np.random.default_rng(2).integers(0, 255, (32, 32), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(((grey > 128) * 255).astype(np.uint8)).save(tmp_path / "label.png")
    write_datalist(
        str(tmp_path / "dataset.json"),
        [{"image": str(tmp_path / "grey.png"), "label": str(tmp_path / "label.png")}] * 2,
    )
    # "auto" would plan 1 channel for these images: the user's in_channels wins, and the check names the file
    args = ["--dataset_dir", str(tmp_path), "--roi_size", "[16,16]", "--in_channels", "3"]
    log = run_failing(root, *args, config="configs/train.json")
    assert f"{tmp_path}/grey.png: has 1 channels, the network expects in_channels=3" in log


def test_empty_label_is_a_warning_naming_the_file(project, caplog):
    _, good, items = project
    empty = nifti(good / "empty_label.nii.gz", np.zeros((16, 16, 16), np.uint8))
    check_datalist([{"image": items[0]["image"], "label": empty}], spatial_dims=3, in_channels=1, num_classes=2)
    assert f"{empty}: empty label (background only)" in caplog.text


@pytest.mark.parametrize("case", ["empty", "missing", "file", "broken_json", "files_without_datalist"])
def test_unusable_dataset_dir(project, tmp_path, case):
    root, _, _ = project
    target = tmp_path / "dataset"
    expected = {
        "empty": "is empty: point it at a folder with a dataset.json",
        "missing": "does not exist: point it at a folder with a dataset.json",
        "file": "is a file, not a folder",
        "broken_json": "dataset.json: not valid JSON",
        "files_without_datalist": "holds files but no dataset.json",
    }[case]
    if case == "empty":
        target.mkdir()
    elif case == "file":
        target.write_text("not a folder")
    elif case == "broken_json":
        target.mkdir()
        (target / "dataset.json").write_text('{"training": [')
    elif case == "files_without_datalist":
        target.mkdir()
        (target / "case1.nii.gz").write_bytes(b"")
    log = run_failing(root, "--dataset_dir", str(target), *SMALL_3D)
    assert f"{target}" in log and expected in log, log[-3000:]


def test_overrides_of_the_wrong_type_are_all_named(project):
    root, _, items = project
    log = run_failing(root, "--epochs", "abc", "--roi_size", "16", "--learning_rate", "fast", "--portions", "[0.5,0.4]")
    assert "SettingsError: 4 invalid setting(s)" in log
    assert "--epochs: must be an integer >= 0; got 'abc' (str)" in log
    assert (
        "--roi_size: must be a list of 3 positive integers, e.g. [64, 64, 64], or 'auto' (planned from the data); "
        "got 16 (int)" in log
    )
    assert "--learning_rate: must be a number in (0.0, inf); got 'fast' (str)" in log
    assert "--portions: must be a list of strictly increasing accumulated portions" in log


def test_resume_from_a_missing_or_unresumable_file(project, tmp_path):
    root, good, _ = project
    log = run_failing(root, "--resume_from", str(tmp_path / "checkpoint_epoch=9.pt"), *SMALL_3D)
    assert f"resume_from {tmp_path}/checkpoint_epoch=9.pt: no such checkpoint file" in log
    log = run_failing(root, "--resume_from", str(root / "models" / "model.pt"), *SMALL_3D)
    assert f"resume_from {root}/models/model.pt: is not a resumable training checkpoint" in log
