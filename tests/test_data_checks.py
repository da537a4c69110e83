"""check_datalist: every problem found up front, each naming its file, all in one DataValidationError."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from qddens_monai.data import DataValidationError, check_datalist, read_header, write_dicom_series


def nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def problems_of(items, **kwargs):
    with pytest.raises(DataValidationError) as err:
        check_datalist(items, **kwargs)
    return err.value


def problem_for(error, filename):
    """The problems reported for ``filename``, and a check that the message names it."""
    found = [what for where, what in error.problems if os.path.basename(where) == filename]
    assert found and filename in str(error), (filename, str(error))
    return " | ".join(found)


@pytest.fixture
def volumes(tmp_path):
    image = nifti(tmp_path / "img.nii.gz", np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    label = nifti(tmp_path / "lab.nii.gz", (np.arange(512).reshape(8, 8, 8) % 2).astype(np.uint8))
    return tmp_path, image, label


def test_valid_items_are_returned_unchanged(volumes):
    _, image, label = volumes
    items = [{"image": image, "label": label, "extra": 1}]
    assert check_datalist(items, spatial_dims=3, in_channels=1, num_classes=2) == items
    assert check_datalist(items, check_values=False) == items


def test_all_problems_of_a_3d_datalist_in_one_error(volumes):
    tmp, image, label = volumes
    whole = open(image, "rb").read()
    (tmp / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])  # header fine, data cut off
    (tmp / "garbage.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 3))
    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    shifted = np.eye(4)
    shifted[:3, 3] = (0.0, 0.0, 2.0)
    three = np.zeros((8, 8, 8), np.uint8)
    three[0, 0, 0] = 3
    items = [
        {"image": str(tmp / "missing.nii.gz"), "label": label},
        {"image": str(tmp / "truncated.nii.gz"), "label": label},
        {"image": str(tmp / "garbage.nii.gz"), "label": label},
        {"image": image, "label": nifti(tmp / "small.nii.gz", np.zeros((8, 8, 4), np.uint8))},
        {"image": image, "label": nifti(tmp / "shifted.nii.gz", np.zeros((8, 8, 8), np.uint8), shifted)},
        {"image": image, "label": nifti(tmp / "three.nii.gz", three)},
        {"image": nifti(tmp / "nan.nii.gz", nan), "label": label},
        {"image": nifti(tmp / "four_d.nii.gz", np.zeros((8, 8, 8, 2), np.float32)), "label": label},
        {"image": nifti(tmp / "five_d.nii.gz", np.zeros((8, 8, 8, 2, 2), np.float32)), "label": label},
        {"image": nifti(tmp / "flat.nii.gz", np.zeros((8, 8), np.float32))},
        {"label": label},
    ]
    error = problems_of(items, spatial_dims=3, in_channels=1, num_classes=2)
    assert isinstance(error, ValueError)
    assert "does not exist" in problem_for(error, "missing.nii.gz")
    assert "cannot be read" in problem_for(error, "truncated.nii.gz")
    assert "cannot be read" in problem_for(error, "garbage.nii.gz")
    assert "shape (8, 8, 4) differs from image" in problem_for(error, "small.nii.gz")
    assert "affine differs" in problem_for(error, "shifted.nii.gz")
    assert "values [3] do not fit num_classes=2" in problem_for(error, "three.nii.gz")
    assert "1 NaN" in problem_for(error, "nan.nii.gz")
    assert "has 2 channels, the network expects in_channels=1" in problem_for(error, "four_d.nii.gz")
    assert "4 spatial dimensions" in problem_for(error, "five_d.nii.gz")
    assert "2 spatial dimensions (8, 8), expected 3" in problem_for(error, "flat.nii.gz")
    assert any(where == "datalist entry 10" and "no 'image'" in what for where, what in error.problems)
    assert len(error.problems) == 11  # every problem once; the good files are not blamed
    assert all(os.path.basename(where) not in ("img.nii.gz", "lab.nii.gz") for where, _ in error.problems)
    # a 4D image is fine when the network takes its channels
    check_datalist([{"image": str(tmp / "four_d.nii.gz"), "label": label}], spatial_dims=3, in_channels=2)


def test_headers_only_mode(volumes):
    tmp, image, label = volumes
    nan = np.zeros((8, 8, 8), np.float32)
    nan[0, 0, 0] = np.nan
    raw = nifti(tmp / "raw.nii", np.zeros((8, 8, 8), np.float32))
    whole = open(raw, "rb").read()
    (tmp / "cut.nii").write_bytes(whole[:-100])  # an uncompressed file: truncation shows in its size
    items = [
        {"image": nifti(tmp / "nan.nii.gz", nan), "label": label},
        {"image": image, "label": nifti(tmp / "small.nii.gz", np.zeros((8, 8, 4), np.uint8))},
        {"image": str(tmp / "cut.nii"), "label": label},
    ]
    error = problems_of(items, check_values=False)
    assert "shape" in problem_for(error, "small.nii.gz") and "truncated" in problem_for(error, "cut.nii")
    assert not any("nan.nii.gz" in where for where, _ in error.problems)  # values are not read
    assert "NaN" in problem_for(problems_of(items[:1]), "nan.nii.gz")


def test_affine_tolerance(volumes):
    tmp, image, _ = volumes
    nudged = np.eye(4)
    nudged[0, 3] = 1e-4
    item = [{"image": image, "label": nifti(tmp / "nudged.nii.gz", np.zeros((8, 8, 8), np.uint8), nudged)}]
    check_datalist(item)  # below the default tolerance of 1e-3 mm
    assert "affine differs" in problem_for(problems_of(item, affine_tolerance=1e-5), "nudged.nii.gz")


def test_label_values(volumes):
    tmp, image, _ = volumes
    multi = (np.arange(512).reshape(8, 8, 8) % 4).astype(np.uint8)
    items = [{"image": image, "label": nifti(tmp / "multi.nii.gz", multi)}]
    check_datalist(items, num_classes=4)
    error = problems_of(items, num_classes=3)
    assert "values [3] do not fit num_classes=3" in problem_for(error, "multi.nii.gz")
    frac = nifti(tmp / "frac.nii.gz", np.full((8, 8, 8), 0.5, np.float32))
    assert "non-integer" in problem_for(problems_of([{"image": image, "label": frac}]), "frac.nii.gz")
    neg = nifti(tmp / "neg.nii.gz", -np.ones((8, 8, 8), np.int16))
    assert "negative" in problem_for(problems_of([{"image": image, "label": neg}]), "neg.nii.gz")


def test_two_dicom_series_in_one_folder_are_named(tmp_path):
    volume = np.zeros((8, 8, 3), np.float32)
    write_dicom_series(volume, out_dir=str(tmp_path / "ct"), series_uid="1.2.826.0.1.3680043.2.1", series_number=1)
    item = [{"image": str(tmp_path / "ct")}]
    check_datalist(item, spatial_dims=3, in_channels=1)
    assert read_header(str(tmp_path / "ct")).shape == (1, 8, 8, 3)
    write_dicom_series(volume, out_dir=str(tmp_path / "ct2"), series_uid="1.2.826.0.1.3680043.2.2", series_number=2)
    for f in sorted((tmp_path / "ct2").iterdir()):
        os.replace(f, tmp_path / "ct" / f"b_{f.name}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no DICOM here")
    error = problems_of(item + [{"image": str(tmp_path / "empty")}], spatial_dims=3)
    text = problem_for(error, "ct")
    assert "holds 2 DICOM series" in text
    assert "1.2.826.0.1.3680043.2.1 (3 files)" in text and "1.2.826.0.1.3680043.2.2 (3 files)" in text
    assert "without DICOM files" in problem_for(error, "empty")


def test_empty_datalist_and_entries_that_are_not_dicts():
    with pytest.raises(DataValidationError, match="empty"):
        check_datalist([])
    error = problems_of(["just/a/path.png"])
    assert error.problems[0][0] == "datalist entry 0" and "expected a dict" in error.problems[0][1]


def test_2d_png_problems(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    binary = np.zeros((20, 30), np.uint8)
    binary[5:8] = 255
    image, label, mask = (
        png(tmp_path / "img.png", rgb),
        png(tmp_path / "lab.png", binary),
        png(tmp_path / "fov.png", binary),
    )
    ok = {"image": image, "label": label, "mask": mask}
    check_datalist([ok], spatial_dims=2, in_channels=3, num_classes=2)  # 0/255 labels and masks are binary
    grey = binary.copy()
    grey[0, 0] = 128
    Image.fromarray(binary).save(tmp_path / "lab.gif")
    whole = open(image, "rb").read()
    (tmp_path / "broken.png").write_bytes(whole[:-30])
    items = [
        {**ok, "label": png(tmp_path / "rgb_label.png", rgb)},
        {**ok, "label": png(tmp_path / "tall.png", np.zeros((30, 20), np.uint8))},
        {**ok, "mask": png(tmp_path / "grey_mask.png", grey)},
        {**ok, "label": str(tmp_path / "lab.gif")},
        {**ok, "image": png(tmp_path / "grey_image.png", binary)},
        {**ok, "image": str(tmp_path / "broken.png")},
        {**ok, "mask": str(tmp_path / "no_mask.png")},
    ]
    error = problems_of(items, spatial_dims=2, in_channels=3, num_classes=2)
    assert "label has 3 channels" in problem_for(error, "rgb_label.png")
    assert "shape (20, 30) differs from image" in problem_for(error, "tall.png")  # PIL (width, height)
    assert "mask is not binary" in problem_for(error, "grey_mask.png")
    assert "GIF" in problem_for(error, "lab.gif")
    assert "has 1 channels, the network expects in_channels=3" in problem_for(error, "grey_image.png")
    assert "cannot be read" in problem_for(error, "broken.png")
    assert "does not exist" in problem_for(error, "no_mask.png")
    assert "expected 3" in problem_for(problems_of([ok], spatial_dims=3), "img.png")


def test_multi_file_images_count_channels(volumes):
    tmp, image, label = volumes
    second = nifti(tmp / "t2.nii.gz", np.ones((8, 8, 8), np.float32))
    item = [{"image": [image, second], "label": label}]
    check_datalist(item, spatial_dims=3, in_channels=2, num_classes=2)
    assert "has 2 channels" in problem_for(problems_of(item, in_channels=1), "img.nii.gz")


def test_missing_label_only_when_required(volumes):
    _, image, _ = volumes
    check_datalist([{"image": image}])
    error = problems_of([{"image": image}], require_label=True)
    assert error.problems == [("datalist entry 0", "has no 'label' key (keys: ['image'])")]


def test_the_error_survives_pickling_with_its_problems():
    # it crosses process boundaries (DataLoader workers, torchrun ranks): rebuilt from its problems, not its text
    import pickle

    error = DataValidationError([("a.nii.gz", "label values [7] do not fit num_classes=2")], header="1 bad file:")
    again = pickle.loads(pickle.dumps(error))
    assert again.problems == error.problems and str(again) == str(error) and again.header == "1 bad file:"
