"""Demo data: real files read back through MONAI's loaders exactly as the bundle reads them."""

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image

from qddens_monai.data import (
    check_datalist,
    create_vessel_image_2d,
    ensure_demo_data,
    intensity_normalization,
    label_transform,
    load_datalist,
    write_demo_2d,
    write_demo_3d,
)

KEYS = ["image", "label", "mask"]


def load(item):
    keys = [k for k in KEYS if k in item]
    return Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)])(item)


def digest(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo3d(tmp_path_factory):
    return write_demo_3d(tmp_path_factory.mktemp("d3") / "set", num_train=3, num_test=1, size=32, seed=5)


def test_3d_nifti_shape_affine_and_msd_datalist(demo3d):
    content = json.loads(Path(demo3d).read_text())
    assert content["tensorImageSize"] == "3D" and content["numTraining"] == 3 and content["numTest"] == 1
    assert content["training"][0]["image"].startswith("./imagesTr/") and content["training"][0]["label"].startswith(
        "./labelsTr/"
    )
    assert set(content["labels"]) == {"0", "1"} and content["modality"] == {"0": "MR"}
    # MONAI's own datalist reader takes it as is
    items = load_decathlon_datalist(demo3d, data_list_key="training")
    assert len(items) == 3 and all(Path(i["image"]).is_file() and Path(i["label"]).is_file() for i in items)
    assert len(load_decathlon_datalist(demo3d, data_list_key="test")) == 1

    data = load(items[0])
    expected = np.diag([1.5, 1.5, 2.0, 1.0])
    expected[:3, 3] = (-48.0, -48.0, -64.0)
    for key in ("image", "label"):
        assert data[key].shape == (1, 32, 32, 32)
        np.testing.assert_allclose(np.asarray(data[key].affine), expected, atol=1e-5)
    assert set(torch.unique(data["label"]).tolist()) == {0.0, 1.0}
    # the label is where the spheres are: brighter than the background on average
    image, label = data["image"][0].numpy(), data["label"][0].numpy() > 0
    assert image[label].mean() > image[~label].mean() + 0.3
    check_datalist(items, spatial_dims=3, in_channels=1, num_classes=2)


def test_3d_multiclass_and_ct(tmp_path):
    path = write_demo_3d(tmp_path / "mc", num_train=2, num_test=0, size=32, seed=1, num_classes=4, modality="CT")
    items = load_datalist(path)
    values = set()
    for item in items:
        data = load(item)
        values |= set(torch.unique(data["label"]).tolist())
        hu = data["image"].numpy()
        assert -100.5 <= hu.min() and hu.max() <= 150.5  # inside the default CT window
    assert values <= {0.0, 1.0, 2.0, 3.0} and len(values) >= 3
    assert json.loads(Path(path).read_text())["labels"]["3"] == "class_3"
    check_datalist(items, spatial_dims=3, in_channels=1, num_classes=4)
    ct = Compose(intensity_normalization("ct"))(load(items[0]))
    assert 0.0 <= float(ct["image"].min()) and float(ct["image"].max()) <= 1.0


def test_2d_png_rgb_label_and_fov_mask(tmp_path):
    path = write_demo_2d(tmp_path / "d2", num_train=2, num_test=1, size=96, seed=3)
    content = json.loads(Path(path).read_text())
    assert content["tensorImageSize"] == "2D" and set(content["training"][0]) == {"image", "label", "mask"}
    assert "label" in content["test"][0] and content["test"][0]["mask"].startswith("./masksTs/")
    item = load_datalist(path)[0]
    # on disk: RGB PNG, 0/255 grey label and mask
    assert Image.open(item["image"]).mode == "RGB"
    assert set(np.unique(np.asarray(Image.open(item["label"])))) == {0, 255}
    data = load(item)
    assert data["image"].shape == (3, 96, 96) and data["label"].shape == data["mask"].shape == (1, 96, 96)
    data = Compose(label_transform(["label", "mask"]) + intensity_normalization("rgb"))(data)
    assert set(torch.unique(data["label"]).tolist()) == {0.0, 1.0} and set(torch.unique(data["mask"]).tolist()) == {
        0.0,
        1.0,
    }
    mask, label = data["mask"][0].bool(), data["label"][0].bool()
    assert not (label & ~mask).any()  # vessels only inside the field of view
    assert 0.6 < float(mask.float().mean()) < 0.75  # a disc of radius 0.47 * size covers ~69%
    image = data["image"]
    # black outside the FOV (but for its anti-aliased rim)
    assert float(image[:, ~mask].mean()) < 0.03 and float(image[:, :3, :3].max()) < 0.05
    # vessels are darker than the background inside the FOV, most in the green channel
    inside = mask & ~label
    drop = [float(image[c][inside].mean() - image[c][label].mean()) for c in range(3)]
    assert min(drop) > 0 and drop[1] == max(drop)
    check_datalist(load_datalist(path, "test"), spatial_dims=2, in_channels=3, num_classes=2)


def test_2d_nifti_option_equals_png(tmp_path):
    png = load(load_datalist(write_demo_2d(tmp_path / "png", 1, 0, size=64, seed=2))[0])
    nii_items = load_datalist(write_demo_2d(tmp_path / "nii", 1, 0, size=64, seed=2, file_format="nifti"))
    assert nii_items[0]["image"].endswith(".nii.gz")
    nii = load(nii_items[0])
    assert nii["image"].shape == (1, 64, 64)
    np.testing.assert_array_equal(nii["image"][0].numpy(), png["image"][1].numpy())  # the green channel
    np.testing.assert_array_equal(nii["label"].numpy() * 255, png["label"].numpy())
    np.testing.assert_array_equal(nii["mask"].numpy() * 255, png["mask"].numpy())
    check_datalist(nii_items, spatial_dims=2, in_channels=1, num_classes=2)


def test_ensure_demo_data_generates_once_deterministically(tmp_path, capsys, caplog):
    start = time.time()
    first = ensure_demo_data(str(tmp_path / "a"), 2, seed=7)  # the bundle's default sizes
    elapsed = time.time() - start
    assert elapsed < 10, elapsed
    assert "generating the 2D demo set" in capsys.readouterr().out
    assert any("generating the 2D demo set" in r.getMessage() for r in caplog.records)
    assert first == str(tmp_path / "a" / "dataset.json")
    content = json.loads(Path(first).read_text())
    assert content["numTraining"] == 16 and content["numTest"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary folder left behind

    # idempotent: data that is there is left alone, nothing is printed
    before = digest(tmp_path / "a")
    mtime = Path(first).stat().st_mtime_ns
    assert ensure_demo_data(str(tmp_path / "a"), 2, seed=99, size=32) == first
    assert digest(tmp_path / "a") == before and Path(first).stat().st_mtime_ns == mtime
    assert "generating" not in capsys.readouterr().out

    # deterministic: the same seed gives byte-identical files, another seed other images
    (tmp_path / "b").mkdir()  # an existing empty folder is filled too
    ensure_demo_data(str(tmp_path / "b"), 2, seed=7)
    assert digest(tmp_path / "b") == before
    ensure_demo_data(str(tmp_path / "c"), 2, seed=8)
    other = digest(tmp_path / "c")
    assert (
        other.keys() == before.keys()
        and other["imagesTr/vessel_training_000.png"] != before["imagesTr/vessel_training_000.png"]
    )


def test_ensure_demo_data_3d_is_byte_deterministic(tmp_path):
    a = ensure_demo_data(str(tmp_path / "a"), 3, num_train=2, num_test=1, size=24, seed=1)
    b = ensure_demo_data(str(tmp_path / "b"), 3, num_train=2, num_test=1, size=24, seed=1)
    assert digest(Path(a).parent) == digest(Path(b).parent)
    assert len(load_datalist(a)) == 2 and len(load_datalist(a, "test")) == 1
    # item i depends on (seed, i) only: a larger set starts with the same cases
    c = ensure_demo_data(str(tmp_path / "c"), 3, num_train=3, num_test=1, size=24, seed=1)
    name = "imagesTr/spheres_training_001.nii.gz"
    assert digest(Path(c).parent)[name] == digest(Path(a).parent)[name]


def test_ensure_demo_data_refuses_user_folders(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "21_training.tif").write_bytes(b"user data")
    with pytest.raises(FileNotFoundError, match="holds files but no dataset.json"):
        ensure_demo_data(str(tmp_path / "raw"), 2)
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["21_training.tif"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        ensure_demo_data(str(tmp_path / "file"), 2)
    with pytest.raises(ValueError, match="spatial_dims"):
        ensure_demo_data(str(tmp_path / "new"), 4)


def test_vessel_difficulty_makes_vessels_thinner_and_fainter():
    def local_contrast(image, label, fov):
        # vessel pixels against the mean of the non-vessel FOV pixels around them (9 x 9 window)
        g = image[..., 1].astype(float)
        bg = ((label == 0) & (fov == 1)).astype(float)
        k = 9

        def box(a):
            c = np.pad(np.pad(a, k // 2, mode="edge").cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]

        n = box(bg)
        local = box(g * bg) / np.maximum(n, 1e-9)
        sel = (label == 1) & (n > 5)
        return float(np.mean((local[sel] - g[sel]) / np.maximum(local[sel], 1)))

    stats = {}
    for d in (0.0, 1.0):
        contrast, width = [], []
        for seed in range(3):
            image, label, fov = create_vessel_image_2d(128, d, random_state=seed)
            assert image.dtype == np.uint8 and image.shape == (128, 128, 3) and set(np.unique(label)) == {0, 1}
            contrast.append(local_contrast(image, label, fov))
            # mean vessel width: vessel pixels per vertical vessel edge
            edges = (label[1:] != label[:-1]).sum() / 2
            width.append(label.sum() / max(edges, 1))
        stats[d] = (np.mean(contrast), np.mean(width))
    assert stats[0.0][0] > 0.2 and stats[1.0][0] < 0.5 * stats[0.0][0]
    assert stats[1.0][1] < stats[0.0][1]
    # a pure function of the seed
    a, b = create_vessel_image_2d((70, 60), 0.3, random_state=4), create_vessel_image_2d((70, 60), 0.3, random_state=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and a[0].shape == (70, 60, 3)


def test_concurrent_callers_get_one_complete_set(tmp_path):
    # e.g. one process per GPU calling ensure_demo_data on the same dataset_dir at once
    from concurrent.futures import ThreadPoolExecutor

    target = str(tmp_path / "shared")
    with ThreadPoolExecutor(3) as pool:
        paths = list(
            pool.map(lambda _: ensure_demo_data(target, 3, num_train=2, num_test=1, size=16, seed=0), range(3))
        )
    assert paths == [str(tmp_path / "shared" / "dataset.json")] * 3
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]
    reference = ensure_demo_data(str(tmp_path / "ref"), 3, num_train=2, num_test=1, size=16, seed=0)
    assert digest(tmp_path / "shared") == digest(Path(reference).parent)


def test_generated_folder_is_readable_by_others(tmp_path):
    path = Path(ensure_demo_data(str(tmp_path / "d"), 2, num_train=1, num_test=1, size=32))
    assert path.parent.stat().st_mode & 0o755 == 0o755
