"""prepare_drive on a DRIVE tree in the published layout (584 x 565 RGB TIFF, 1-bit / palette GIFs)."""

import json

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged
from PIL import Image

from qddens_monai.data import (
    check_datalist,
    create_vessel_image_2d,
    intensity_normalization,
    label_transform,
    load_datalist,
    prepare_drive,
)

H, W = 584, 565


def fake_drive(root, train=(21, 22), test=(1, 2), test_labels=True, size=(H, W)):
    """The published DRIVE tree, with the published file types: RGB TIFF, 1-bit GIF labels, palette GIF masks."""
    truth = {}
    for split, numbers in (("training", train), ("test", test)):
        for sub in ("images", "1st_manual", "mask"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for n in numbers:
            image, label, fov = create_vessel_image_2d(size, random_state=n)
            Image.fromarray(image).save(root / split / "images" / f"{n:02d}_{split}.tif")
            Image.fromarray(fov * np.uint8(255)).save(root / split / "mask" / f"{n:02d}_{split}_mask.gif")
            if split == "training" or test_labels:
                Image.fromarray(label * np.uint8(255)).convert("1").save(
                    root / split / "1st_manual" / f"{n:02d}_manual1.gif"
                )
            truth[(split, n)] = (image, label, fov)
    return truth


def test_the_original_files_are_not_loadable_by_monai(tmp_path):
    fake_drive(tmp_path / "DRIVE", train=(21,), test=(1,), size=64)
    gif = tmp_path / "DRIVE" / "training" / "mask" / "21_training_mask.gif"
    with pytest.raises(RuntimeError):
        LoadImage(image_only=True)(str(gif))  # why prepare_drive converts to PNG
    # and through PIL (PILReader) a palette GIF gives its palette indices, not 0/255
    assert Image.open(gif).mode == "P" and set(np.unique(np.asarray(Image.open(gif)))) == {0, 1}


def test_prepare_drive_converts_to_loadable_pngs(tmp_path):
    truth = fake_drive(tmp_path / "DRIVE", test_labels=False)
    path = prepare_drive(str(tmp_path / "DRIVE"))  # default output beside the DRIVE folder
    assert path == str(tmp_path / "DRIVE_prepared" / "dataset.json")
    content = json.loads(open(path).read())
    assert content["numTraining"] == 2 and content["numTest"] == 2 and content["tensorImageSize"] == "2D"
    assert content["training"][0] == {
        "image": "./imagesTr/drive_21.png",
        "mask": "./masksTr/drive_21.png",
        "label": "./labelsTr/drive_21.png",
    }
    assert all("label" not in e for e in content["test"]) and "2 test images without labels" in content["description"]

    items = load_datalist(path)
    check_datalist(items, spatial_dims=2, in_channels=3, num_classes=2)
    check_datalist(load_datalist(path, "test"), spatial_dims=2, in_channels=3)
    keys = ["image", "label", "mask"]
    data = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)])(items[1])
    image, label, fov = truth[("training", 22)]
    assert data["image"].shape == (3, W, H)  # PILReader: (channels, width, height)
    np.testing.assert_array_equal(data["image"].numpy(), image.transpose(2, 1, 0))  # lossless TIFF -> PNG
    np.testing.assert_array_equal(data["label"][0].numpy(), label.T * 255.0)  # 1-bit GIF -> 0/255
    np.testing.assert_array_equal(data["mask"][0].numpy(), fov.T * 255.0)  # palette GIF -> 0/255
    data = Compose(label_transform(["label", "mask"]) + intensity_normalization("rgb"))(data)
    assert set(torch.unique(data["label"]).tolist()) == {0.0, 1.0} and float(data["image"].max()) <= 1.0


def test_parent_folder_and_test_labels(tmp_path):
    fake_drive(tmp_path / "data" / "DRIVE", train=(21,), test=(1,), size=64)
    path = prepare_drive(str(tmp_path / "data"), str(tmp_path / "out"))  # the folder holding DRIVE/
    test = load_datalist(path, "test")
    assert set(test[0]) == {"image", "label", "mask"} and test[0]["label"].endswith("labelsTs/drive_01.png")


def test_broken_layout_lists_everything_missing(tmp_path):
    root = tmp_path / "DRIVE"
    fake_drive(root, train=(21, 22, 23), test=(1,), size=64)
    (root / "training" / "mask" / "22_training_mask.gif").unlink()
    (root / "training" / "1st_manual" / "23_manual1.gif").unlink()
    for f in (root / "test" / "mask").iterdir():
        f.unlink()
    (root / "test" / "mask").rmdir()
    with pytest.raises(FileNotFoundError) as err:
        prepare_drive(str(root), str(tmp_path / "out"))
    message = str(err.value)
    assert "22_training_mask.gif: missing (FOV mask of 22_training.tif)" in message
    assert "23_manual1.gif: missing (annotation of 23_training.tif)" in message
    assert f"{root / 'test' / 'mask'}: missing folder" in message
    assert not (tmp_path / "out").exists()  # nothing written before the layout is complete

    with pytest.raises(FileNotFoundError, match="no such folder"):
        prepare_drive(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "training" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        prepare_drive(str(tmp_path / "empty"))
    assert "holds no NN_training.tif image" in str(err.value) and "test/images: missing folder" in str(err.value)
