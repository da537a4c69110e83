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
    parser.update({"dataset_json": mr_set, "datalist": items, "output_dir": str(tmp_path)})
    reads.clear()
    assert parser.get_parsed_content("plan#roi_size") == [128, 128]
    assert parser.get_parsed_content("plan#num_samples") == 3
    assert parser.get_parsed_content("plan#in_channels") == 1  # planned: the set's single-channel NIfTI
    assert parser.get_parsed_content("plan#num_classes") == 2  # its dataset.json's two labels
    assert parser.get_parsed_content("plan#modality") == "mr"  # its dataset.json's modality "MR"
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


def _png_set(root, labels, mode="RGB", meta=None):
    """PNG images with the given label arrays and a dataset.json holding only ``meta`` besides the training list."""
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i, label in enumerate(labels):
        image = np.zeros(label.shape + ((len(mode),) if len(mode) > 1 else ()), np.uint8)
        Image.fromarray(image, mode).save(root / f"img{i}.png")
        Image.fromarray(label.astype(np.uint8)).save(root / f"lab{i}.png")
        items.append({"image": f"img{i}.png", "label": f"lab{i}.png"})
    (root / "dataset.json").write_text(json.dumps({"training": items, **(meta or {})}))
    return str(root / "dataset.json")


def test_channels_classes_and_modality_are_planned_from_the_data(tmp_path, mr_set):
    from qddens_monai.data import plan_in_channels, plan_modality, plan_num_classes, write_dicom_series

    three = np.zeros((32, 40), np.uint8)
    three[4:10, 4:10], three[20:30, 20:30] = 1, 2
    rgb = _png_set(tmp_path / "rgb", [three, three, three])  # no "labels", no "modality"
    items = load_datalist(rgb, "training")
    assert plan_in_channels(items) == 3 and plan_num_classes(rgb, items) == 3 and plan_modality(rgb, items) == "rgb"
    Image.fromarray(np.zeros((32, 40, 4), np.uint8), "RGBA").save(tmp_path / "rgb" / "img0.png")
    assert plan_in_channels(items) == 3  # the most common count: check_datalist then names the RGBA file
    masks = _png_set(tmp_path / "masks", [three.astype(bool) * 255] * 2, mode="L")
    masks_items = load_datalist(masks, "training")
    assert plan_num_classes(masks, masks_items) == 2 and plan_in_channels(masks_items) == 1  # 0/255: binary
    assert plan_modality(masks, masks_items) == "rgb"  # 8-bit files: the fixed 0..255 range

    mr = load_datalist(mr_set, "training")
    assert plan_in_channels(mr) == 1 and plan_num_classes(mr_set, mr) == 2 and plan_modality(mr_set, mr) == "mr"
    for names, expected in [({"0": "CT"}, "ct"), ({"0": "T2", "1": "ADC"}, "mr"), ({"0": "CT", "1": "PET"}, "mr")]:
        content = json.loads(open(mr_set).read())
        (tmp_path / "named.json").write_text(json.dumps({**content, "modality": names}))
        assert plan_modality(tmp_path / "named.json", mr) == expected, names
    (tmp_path / "ct" / "s").mkdir(parents=True)
    write_dicom_series(np.zeros((16, 16, 4), np.float32), out_dir=str(tmp_path / "ct" / "s"))  # Modality CT
    assert plan_modality(None, [{"image": str(tmp_path / "ct" / "s")}]) == "ct"


def test_a_trained_models_settings_come_from_its_plan(tmp_path):
    from qddens_monai.data import planned

    plan_file = tmp_path / "plan.json"
    with pytest.raises(FileNotFoundError, match=r"plan.json: not found.*Give --in_channels"):
        planned(plan_file, "in_channels")
    assert planned(plan_file, "roi_size", default=[128, 128]) == [128, 128]
    write_plan(tmp_path, {"spatial_dims": 2, "in_channels": 1, "num_classes": 3, "modality": "mr"})
    assert planned(plan_file, "num_classes", spatial_dims=2) == 3
    assert planned(plan_file, "num_classes", 4) == 4  # the user's value wins
    with pytest.raises(ValueError, match=r"has no 'roi_size' setting.*Give --roi_size"):
        planned(plan_file, "roi_size")
    with pytest.raises(ValueError, match=r"the model beside it is 2D, the config is 3D"):
        planned(plan_file, "in_channels", spatial_dims=3)

    # the bundle's inference config: network, normalization and window of the model, without a flag
    from monai.bundle import ConfigParser

    from qddens_monai.config import bundle_dir, load_bundle_configs

    (tmp_path / "models").mkdir()
    write_plan(
        tmp_path / "models",
        {"spatial_dims": 2, "in_channels": 1, "num_classes": 3, "modality": "mr", "roi_size": [96, 96]},
    )
    parser = ConfigParser(load_bundle_configs(bundle_dir() / "configs" / "inference.json"))
    parser["bundle_root"] = str(tmp_path)
    net = parser.get_parsed_content("network_def")
    x = np.zeros((1, 1, 32, 32), np.float32)
    import torch

    assert tuple(net.eval()(torch.as_tensor(x)).shape) == (1, 3, 32, 32)
    assert parser.get_parsed_content("plan") == {
        "in_channels": 1,
        "num_classes": 3,
        "modality": "mr",
        "roi_size": [96, 96],
    }
    parser["roi_size"] = [64, 64]
    assert parser.get_parsed_content("plan#roi_size") == [64, 64]


def test_a_stray_label_value_does_not_plan_more_classes(tmp_path):
    from qddens_monai.data import check_datalist, plan_num_classes

    binary = np.zeros((16, 16), np.uint8)
    binary[4:8, 4:8] = 1
    stray = binary.copy()
    stray[0, 0] = 5
    data = _png_set(tmp_path / "stray", [binary, stray], mode="L")
    items = load_datalist(data, "training")
    assert plan_num_classes(data, items) == 2  # 0 and 1 occur; 5 follows a gap
    with pytest.raises(ValueError, match=r"lab1.png: label values \[5\] do not fit num_classes=2"):
        check_datalist(items, spatial_dims=2, in_channels=1, num_classes=2)


def test_the_plan_is_written_with_each_checkpoint_and_only_then(tmp_path):
    import torch
    from ignite.engine import Engine, Events

    from qddens_monai.data import plan_record
    from qddens_monai.handlers import AtomicCheckpointSaver

    net = torch.nn.Linear(2, 2)
    record = plan_record({"spatial_dims": 2, "in_channels": 1, "device": object()})
    saver = AtomicCheckpointSaver(
        str(tmp_path), {"model": net}, save_final=True, final_filename="model.pt", beside={"plan.json": record}
    )
    engine = Engine(lambda engine, batch: None)
    seen = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append((tmp_path / "plan.json").exists()))
    saver.attach(engine)
    engine.run([0], max_epochs=2)
    assert seen == [False, False]  # not written while no model is: an interrupted run leaves the old pair
    assert json.loads((tmp_path / "plan.json").read_text()) == {"settings": {"spatial_dims": 2, "in_channels": 1}}
    assert (tmp_path / "model.pt").is_file()
