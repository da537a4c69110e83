"""Settings planned from the data set (crop size, crops per image) and the MR-like generated slices."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from qddens_monai.data import (
    create_mr_slice_2d,
    dataset_fingerprint,
    load_datalist,
    plan_num_samples,
    plan_roi_size,
    read_header,
    write_demo_3d,
    write_demo_mr_2d,
    write_plan,
)


@pytest.fixture(scope="module")
def mr_set(tmp_path_factory):
    return write_demo_mr_2d(tmp_path_factory.mktemp("mr"), num_train=3, num_test=1, shape=(200, 232))


def test_fingerprint_reads_sizes_channels_and_spacing_from_headers(mr_set):
    fp = dataset_fingerprint(load_datalist(mr_set, "training"))
    assert fp["num_images"] == 3
    assert fp["channels"] == [1]
    assert fp["median_size"] == [200, 232] == fp["min_size"] == fp["max_size"]
    assert fp["spacing"][:2] == [0.8, 0.8]


def test_roi_is_the_median_size_rounded_to_the_divisor_and_capped(mr_set, tmp_path):
    items = load_datalist(mr_set, "training")
    assert plan_roi_size(items, 2) == [128, 128]  # capped at MAX_ROI_SIZE[2]
    assert plan_roi_size(items, 2, max_size=512) == [192, 224]  # 200 -> 192, 232 -> 224
    assert plan_roi_size(items, 2, max_size=(64, 512)) == [64, 224]
    small = []
    for i, shape in enumerate(((20, 40), (24, 40), (40, 40))):
        path = tmp_path / f"s{i}.png"
        Image.fromarray(np.zeros(shape, np.uint8)).save(path)
        small.append({"image": str(path)})
    # MONAI reads a (rows, cols) PNG as (x, y) = (cols, rows): median (40, 24); never below the divisor
    assert plan_roi_size(small, 2) == [32, 16]


def test_roi_of_a_3d_set(tmp_path):
    items = load_datalist(write_demo_3d(tmp_path / "d3", num_train=2, num_test=1, size=40), "training")
    assert plan_roi_size(items, 3) == [32, 32, 32]


def test_num_samples_counts_crops_per_median_image(mr_set):
    items = load_datalist(mr_set, "training")
    assert plan_num_samples(items, [128, 128]) == 3  # 200*232 / 128^2 = 2.8
    assert plan_num_samples(items, [192, 224]) == 1  # a crop of (almost) the whole image: one sample
    assert plan_num_samples(items, [32, 32]) == 4  # capped
    assert plan_num_samples(items, [32, 32], max_samples=8) == 8


def test_write_plan_keeps_settings_and_fingerprint(mr_set, tmp_path):
    path = write_plan(
        tmp_path / "out", {"roi_size": [128, 128], "epochs": 3, "device": object()}, load_datalist(mr_set, "training")
    )
    plan = json.loads(open(path).read())
    assert plan["settings"] == {"roi_size": [128, 128], "epochs": 3}
    assert plan["fingerprint"]["median_size"] == [200, 232]


def test_the_bundle_reads_the_headers_once_for_its_plan(mr_set, tmp_path, monkeypatch):
    from monai.bundle import ConfigParser

    import qddens_monai.data.plan as plan
    from qddens_monai.config import bundle_dir, load_bundle_configs

    reads = []
    monkeypatch.setattr(plan, "read_header", lambda path: reads.append(path) or read_header(path))
    items = load_datalist(mr_set, "training")
    fingerprint = dataset_fingerprint(items)  # the same, from a fingerprint or from the datalist
    assert plan_roi_size(fingerprint, 2) == plan_roi_size(items, 2) and plan_num_samples(fingerprint, [128, 128]) == 3
    parser = ConfigParser(load_bundle_configs(bundle_dir() / "configs" / "train.json"))
    parser.update({"datalist": items, "output_dir": str(tmp_path), "in_channels": 1})
    reads.clear()
    assert parser.get_parsed_content("plan#roi_size") == [128, 128]
    assert parser.get_parsed_content("plan#num_samples") == 3
    write_plan(tmp_path, parser.get_parsed_content("plan"), parser.get_parsed_content("fingerprint"))
    assert len(reads) == len(items)  # one header read per image for the whole plan
    assert json.loads((tmp_path / "plan.json").read_text())["fingerprint"] == fingerprint


def test_mr_slice_classes_and_determinism():
    image, label = create_mr_slice_2d((120, 140), num_classes=3, difficulty=0.5, random_state=7)
    assert image.shape == label.shape == (120, 140)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2}
    assert np.isfinite(image).all() and image.min() >= 0
    image2, label2 = create_mr_slice_2d((120, 140), num_classes=2, difficulty=0.5, random_state=7)
    np.testing.assert_array_equal(image, image2)  # the same image for 2 and 3 classes
    np.testing.assert_array_equal(label2, (label > 0).astype(np.uint8))
    with pytest.raises(ValueError, match="num_classes"):
        create_mr_slice_2d(num_classes=4)
    with pytest.raises(ValueError, match="difficulty"):
        create_mr_slice_2d(difficulty=2.0)


def test_mr_set_is_2d_nifti_with_geometry(mr_set):
    items = load_datalist(mr_set, "training")
    img = nib.load(items[0]["image"])
    assert img.shape == (200, 232)
    np.testing.assert_allclose(np.diag(img.affine)[:2], [0.8, 0.8])
    assert set(np.unique(np.asarray(nib.load(items[0]["label"]).dataobj))) <= {0, 1}
    assert json.loads(open(mr_set).read())["numTest"] == 1


def test_planning_skips_unreadable_files_so_the_data_check_can_name_them(mr_set, tmp_path):
    items = load_datalist(mr_set, "training")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    bad = items + [{"image": str(tmp_path / "broken.nii.gz")}, {"image": str(tmp_path / "missing.nii.gz")}, "oops"]
    fp = dataset_fingerprint(bad)
    assert fp["num_images"] == 3 and fp["unreadable"] == 3
    assert plan_roi_size(bad, 2) == [128, 128]
    nothing = [{"image": str(tmp_path / "missing.nii.gz")}]
    assert dataset_fingerprint(nothing)["median_size"] is None
    assert plan_roi_size(nothing, 3) == [64, 64, 64] and plan_num_samples(nothing, [64, 64, 64]) == 1
