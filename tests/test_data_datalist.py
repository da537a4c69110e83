"""Datalists: MSD dataset.json reading through MONAI, path resolution, deterministic splits."""

import json
import os

import pytest
from monai.data import load_decathlon_datalist

from qddens_monai.data import load_datalist, split_datalist, write_datalist


@pytest.fixture
def dataset(tmp_path):
    content = {
        "name": "t",
        "labels": {"0": "background", "1": "vessel"},
        "training": [
            {"image": "./imagesTr/a.png", "label": "./labelsTr/a.png", "mask": "./masksTr/a.png"},
            {"image": "imagesTr/b.png", "label": "labelsTr/b.png", "mask": "/elsewhere/b_mask.png"},
        ],
        "test": [],
        "validation": ["imagesTs/c.png"],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    return tmp_path


def test_paths_resolved_like_monai_and_masks_too(dataset):
    items = load_datalist(str(dataset / "dataset.json"))
    assert items[0] == {
        "image": str(dataset / "imagesTr" / "a.png"),
        "label": str(dataset / "labelsTr" / "a.png"),
        # MONAI leaves other keys relative when the file does not exist: a missing mask must still be absolute
        "mask": str(dataset / "masksTr" / "a.png"),
    }
    assert items[1]["mask"] == "/elsewhere/b_mask.png"
    monai_items = load_decathlon_datalist(str(dataset / "dataset.json"))
    assert [i["image"] for i in monai_items] == [i["image"] for i in items]
    assert monai_items[0]["mask"] == "./masksTr/a.png"  # the MONAI behaviour load_datalist fixes
    # the folder works as well as the file, and base_dir moves the data
    assert load_datalist(str(dataset)) == items
    assert load_datalist(str(dataset), base_dir="/data")[0]["image"] == "/data/imagesTr/a.png"


def test_empty_missing_and_broken_sections(dataset):
    assert load_datalist(str(dataset), "test") == []  # MONAI's reader fails on an empty test list
    with pytest.raises(IndexError):
        load_decathlon_datalist(str(dataset / "dataset.json"), data_list_key="test")
    assert load_datalist(str(dataset), "validation") == [{"image": str(dataset / "imagesTs" / "c.png")}]
    with pytest.raises(ValueError, match=r"has no 'training_set' section.*'test', 'training', 'validation'"):
        load_datalist(str(dataset), "training_set")
    with pytest.raises(FileNotFoundError, match="no such datalist"):
        load_datalist(str(dataset / "other.json"))
    (dataset / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_datalist(str(dataset / "bad.json"))


def test_write_datalist_round_trip(tmp_path):
    training = [
        {"image": str(tmp_path / "imagesTr" / "x.nii.gz"), "label": str(tmp_path / "labelsTr" / "x.nii.gz"), "fold": 1}
    ]
    test = [{"image": "/abs/elsewhere/y.nii.gz"}]
    path = write_datalist(str(tmp_path / "dataset.json"), training, test, name="demo", tensorImageSize="3D")
    content = json.loads(open(path).read())
    assert content["training"][0] == {"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz", "fold": 1}
    assert content["test"][0]["image"] == "/abs/elsewhere/y.nii.gz"  # outside the folder: kept absolute
    assert content["numTraining"] == 1 and content["numTest"] == 1 and content["name"] == "demo"
    assert load_datalist(path) == training and load_datalist(path, "test") == test
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # the temporary file is gone


def test_split_is_deterministic_disjoint_and_keeps_validation():
    items = [{"image": f"{i}.png"} for i in range(10)]
    train, val = split_datalist(items, 0.3, seed=1)
    assert len(train) == 7 and len(val) == 3
    assert sorted(i["image"] for i in train + val) == sorted(i["image"] for i in items)
    assert split_datalist(items, 0.3, seed=1) == (train, val)
    assert split_datalist(items, 0.3, seed=2)[1] != val
    assert train == sorted(train, key=lambda i: int(i["image"][:-4]))  # original order kept
    train[0]["image"] = "changed"
    assert items[0]["image"] == "0.png"  # copies: the caller's list is untouched
    for n in (2, 3):
        train, val = split_datalist(items[:n], 0.05)
        assert len(val) == 1 and len(train) == n - 1
    assert split_datalist(items[:1], 0.5) == ([items[0]], [])
    assert split_datalist(items, 0.0) == (items, [])
    with pytest.raises(ValueError):
        split_datalist(items, 1.0)


def test_cross_validation_folds():
    items = [{"image": f"{i}.png"} for i in range(10)]
    folds = [split_datalist(items, seed=0, num_folds=5, fold=f)[1] for f in range(5)]
    assert all(len(v) == 2 for v in folds)
    assert sorted(i["image"] for v in folds for i in v) == sorted(i["image"] for i in items)
    train, val = split_datalist(items, seed=0, num_folds=5, fold=3)
    assert len(train) == 8 and not {i["image"] for i in train} & {i["image"] for i in val}
    with pytest.raises(ValueError):
        split_datalist(items, num_folds=5, fold=5)


def test_relative_datalist_path_is_joined_once(dataset, monkeypatch):
    # the bundle's default dataset_dir is relative ("./data/demo_2d"): paths must not be joined twice
    monkeypatch.chdir(dataset.parent)
    items = load_datalist(os.path.join(".", dataset.name, "dataset.json"))
    assert items[0]["image"] == str(dataset / "imagesTr" / "a.png")
    assert items[0]["mask"] == str(dataset / "masksTr" / "a.png")
