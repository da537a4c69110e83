"""Data layer: demo sets as real files, datalists, up-front checks naming the file, DRIVE conversion, DICOM."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image

from qddens_monai.cli import main as cli
from qddens_monai.data import (
    DataValidationError,
    check_datalist,
    ensure_demo_data,
    find_images,
    intensity_normalization,
    label_transform,
    load_datalist,
    prepare_drive,
    split_datalist,
    write_demo_3d,
    write_dicom_series,
)


@pytest.fixture(scope="module")
def demo2d(tmp_path_factory):
    return ensure_demo_data(tmp_path_factory.mktemp("d2") / "demo", 2, num_train=3, num_test=1, size=64, seed=1)


@pytest.fixture(scope="module")
def demo3d(tmp_path_factory):
    return str(write_demo_3d(tmp_path_factory.mktemp("d3"), num_train=3, num_test=1, size=32, seed=1))


def load(item, keys=("image", "label")):
    return Compose([LoadImaged(list(keys), image_only=True), EnsureChannelFirstd(list(keys))])(item)


def test_demo_2d_files_read_back_through_monai(demo2d):
    items = load_datalist(demo2d, "training")
    assert len(items) == 3 and len(load_decathlon_datalist(demo2d, data_list_key="test")) == 1
    data = load(items[0], ("image", "label", "mask"))
    assert data["image"].shape == (3, 64, 64) and data["label"].shape == (1, 64, 64)
    data = Compose(label_transform(["label", "mask"]) + intensity_normalization("rgb"))(data)
    assert set(torch.unique(data["label"]).tolist()) == {0.0, 1.0}
    assert 0.0 <= float(data["image"].min()) and float(data["image"].max()) <= 1.0
    assert float(data["mask"].mean()) > 0.5  # the circular field of view


def test_demo_is_deterministic_and_idempotent(tmp_path, demo2d):
    again = ensure_demo_data(tmp_path / "x", 2, num_train=3, num_test=1, size=64, seed=1)
    a = np.asarray(Image.open(load_datalist(demo2d)[0]["image"]))
    b = np.asarray(Image.open(load_datalist(again)[0]["image"]))
    assert np.array_equal(a, b)
    before = (tmp_path / "x" / "dataset.json").stat().st_mtime_ns
    assert ensure_demo_data(tmp_path / "x", 2) == again
    assert (tmp_path / "x" / "dataset.json").stat().st_mtime_ns == before


def test_user_data_without_datalist_is_not_overwritten(tmp_path):
    (tmp_path / "case.nii.gz").write_bytes(b"user data")
    with pytest.raises(FileNotFoundError, match="holds files but no dataset.json"):
        ensure_demo_data(tmp_path, 3)
    assert (tmp_path / "case.nii.gz").read_bytes() == b"user data"
    with pytest.raises(FileNotFoundError, match="no image matches"):
        find_images(tmp_path, "imagesTs/*")


def test_demo_3d_nifti_geometry(demo3d):
    item = load_datalist(demo3d)[0]
    data = load(item)
    assert data["image"].shape == (1, 32, 32, 32)
    assert np.allclose(np.asarray(data["image"].affine)[:3, :3], np.diag([1.5, 1.5, 2.0]))
    check_datalist(load_datalist(demo3d), spatial_dims=3, in_channels=1, num_classes=2)


def test_split_is_deterministic_and_keeps_one_for_validation():
    items = [{"image": str(i)} for i in range(10)]
    train, val = split_datalist(items, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8 and split_datalist(items, 0.2, seed=3) == (train, val)
    train, val = split_datalist(items[:2], 0.1)
    assert len(train) == 1 and len(val) == 1


def _nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def test_check_datalist_reports_every_problem_with_its_file(tmp_path):
    good = _nifti(tmp_path / "img.nii.gz", np.zeros((8, 8, 8), np.float32))
    lab = _nifti(tmp_path / "lab.nii.gz", np.zeros((8, 8, 8), np.uint8))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(open(good, "rb").read()[:40])
    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 1, 1] = np.nan
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    bad_values = np.zeros((8, 8, 8), np.uint8)
    bad_values[0, 0, :3] = [1, 2, 3]
    items = [
        {"image": str(tmp_path / "missing.nii.gz"), "label": lab},
        {"image": str(corrupt), "label": lab},
        {"image": good, "label": _nifti(tmp_path / "small.nii.gz", np.zeros((8, 8, 4), np.uint8))},
        {"image": good, "label": _nifti(tmp_path / "shifted.nii.gz", np.zeros((8, 8, 8), np.uint8), shifted)},
        {"image": good, "label": _nifti(tmp_path / "values.nii.gz", bad_values)},
        {"image": _nifti(tmp_path / "nan.nii.gz", nan), "label": lab},
        {"image": _nifti(tmp_path / "four_d.nii.gz", np.zeros((8, 8, 8, 2, 2), np.float32)), "label": lab},
    ]
    with pytest.raises(DataValidationError) as err:
        check_datalist(items, spatial_dims=3, in_channels=1, num_classes=2)
    message = str(err.value)
    for name, what in [
        ("missing.nii.gz", "does not exist"),
        ("corrupt.nii.gz", "cannot be read"),
        ("small.nii.gz", "shape"),
        ("shifted.nii.gz", "affine differs"),
        ("values.nii.gz", "do not fit num_classes=2"),
        ("nan.nii.gz", "NaN"),
        ("four_d.nii.gz", "spatial dimensions"),
    ]:
        assert any(name in where and what in problem for where, problem in err.value.problems), (name, message)
    with pytest.raises(DataValidationError, match="empty"):
        check_datalist([])
    with pytest.raises(DataValidationError, match="expected 2"):
        check_datalist([{"image": good}], spatial_dims=2)


def test_dicom_series_read_back_and_two_series_refused(tmp_path):
    volume = np.random.default_rng(0).uniform(-200, 400, (24, 20, 6)).astype(np.float32)
    write_dicom_series(volume, spacing=(0.7, 0.7, 2.5), origin=(1, 2, 3), out_dir=str(tmp_path / "ct"))
    image = load({"image": str(tmp_path / "ct")}, ("image",))["image"]
    assert image.shape == (1, 24, 20, 6)
    assert np.allclose(np.abs(np.diag(np.asarray(image.affine))[:3]), (0.7, 0.7, 2.5))
    assert np.abs(image[0].numpy() - volume).max() <= 0.5  # int16 storage rounding
    check_datalist([{"image": str(tmp_path / "ct")}], spatial_dims=3, in_channels=1)
    for f in write_dicom_series(volume, out_dir=str(tmp_path / "other"), series_uid="1.2.3.4.5", series_number=2):
        os.replace(f, tmp_path / "ct" / ("other_" + os.path.basename(f)))
    with pytest.raises(DataValidationError, match="holds 2 DICOM series"):
        check_datalist([{"image": str(tmp_path / "ct")}], spatial_dims=3, in_channels=1)


def _fake_drive(root, with_test_labels=True):
    rng = np.random.default_rng(0)
    for split, numbers in (("training", (21, 22)), ("test", (1,))):
        for sub in ("images", "1st_manual", "mask"):
            (root / split / sub).mkdir(parents=True)
        for n in numbers:
            Image.fromarray(rng.integers(0, 255, (58, 56, 3), dtype=np.uint8)).save(
                root / split / "images" / f"{n:02d}_{split}.tif"
            )
            Image.fromarray((rng.random((58, 56)) > 0.5).astype(np.uint8) * 255).convert("P").save(
                root / split / "mask" / f"{n:02d}_{split}_mask.gif"
            )
            if split == "training" or with_test_labels:
                Image.fromarray((rng.random((58, 56)) > 0.8).astype(np.uint8) * 255).convert("1").save(
                    root / split / "1st_manual" / f"{n:02d}_manual1.gif"
                )


def test_prepare_drive(tmp_path, capsys):
    _fake_drive(tmp_path / "DRIVE", with_test_labels=False)
    assert cli(["prepare-drive", str(tmp_path / "DRIVE"), "--out", str(tmp_path / "prepared")]) == 0
    datalist = tmp_path / "prepared" / "dataset.json"
    assert "Train with" in capsys.readouterr().out
    sections = json.loads(datalist.read_text())
    assert len(sections["training"]) == 2 and "label" not in sections["test"][0]
    items = load_datalist(datalist)
    data = load(items[0], ("image", "label", "mask"))
    assert data["image"].shape == (3, 56, 58) and set(np.unique(data["label"].numpy())) <= {0.0, 255.0}
    check_datalist(items, spatial_dims=2, in_channels=3, num_classes=2)


def test_prepare_drive_names_what_is_missing(tmp_path):
    _fake_drive(tmp_path / "DRIVE")
    (tmp_path / "DRIVE" / "training" / "mask" / "22_training_mask.gif").unlink()
    with pytest.raises(FileNotFoundError, match="22_training_mask.gif"):
        prepare_drive(tmp_path / "DRIVE", tmp_path / "out")
    with pytest.raises(SystemExit):
        cli(["prepare-drive", str(tmp_path / "nothing")])
