"""Units of the reliability layer: settings checks, DICOM slice gaps, demo data only into ``demo_dir``."""

import os

import numpy as np
import pytest

from qddens_monai.config import SettingsError, check_settings
from qddens_monai.data import check_datalist, ensure_demo_data, read_header, write_dicom_series
from qddens_monai.data.checks import DataValidationError


def test_check_settings_names_every_wrong_value():
    good = {
        "spatial_dims": 2,
        "roi_size": [64, 64],
        "epochs": 0,
        "portions": [0.3, 1.0],
        "learning_rate": 1e-3,
        "val_fraction": 0.0,
        "dataset_dir": "/data",
        "custom": object(),
    }
    assert check_settings(good) == good
    with pytest.raises(SettingsError) as e:
        check_settings(
            {
                "spatial_dims": 3,
                "roi_size": [64, 64],
                "epochs": True,
                "portions": [0.5, 0.4],
                "learning_rate": float("nan"),
                "val_fraction": 1.0,
                "batch_size": 2.0,
                "dataset_dir": 5,
            }
        )
    names = [name for name, _ in e.value.problems]
    assert names == ["roi_size", "epochs", "portions", "learning_rate", "val_fraction", "batch_size", "dataset_dir"]
    assert "--roi_size: must be a list of 3 positive integers" in str(e.value)
    assert "got True (bool)" in str(e.value)


def test_dicom_missing_slice_and_duplicate_positions(tmp_path):
    volume = np.zeros((8, 8, 6), np.float32)
    write_dicom_series(volume, spacing=(1.0, 1.0, 2.5), out_dir=str(tmp_path / "ok"))
    assert read_header(str(tmp_path / "ok")).shape == (1, 8, 8, 6)
    write_dicom_series(volume, spacing=(1.0, 1.0, 2.5), out_dir=str(tmp_path / "gap"))
    os.remove(tmp_path / "gap" / "slice_0002.dcm")
    with pytest.raises(DataValidationError, match=r"usual spacing 2.5 mm; 5 mm between InstanceNumber 2 and 4"):
        check_datalist([{"image": str(tmp_path / "gap")}], spatial_dims=3)
    write_dicom_series(volume, spacing=(1.0, 1.0, 2.5), out_dir=str(tmp_path / "dup"))
    os.replace(tmp_path / "ok" / "slice_0003.dcm", tmp_path / "dup" / "copy_0003.dcm")
    with pytest.raises(DataValidationError, match="share a position"):
        check_datalist([{"image": str(tmp_path / "dup")}], spatial_dims=3)


def test_demo_data_only_into_demo_dir(tmp_path):
    demo = tmp_path / "demo"
    with pytest.raises(FileNotFoundError, match=r"does not exist: point it at a folder with a dataset.json"):
        ensure_demo_data(tmp_path / "typo", spatial_dims=2, size=32, num_train=2, num_test=1, demo_dir=demo)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is empty"):
        ensure_demo_data(tmp_path / "empty", spatial_dims=2, size=32, num_train=2, num_test=1, demo_dir=demo)
    assert not any((tmp_path / "empty").iterdir()) and not (tmp_path / "typo").exists()
    path = ensure_demo_data(demo, spatial_dims=2, size=32, num_train=2, num_test=1, demo_dir=demo)
    assert os.path.isfile(path)
    assert ensure_demo_data(demo, spatial_dims=2, demo_dir=tmp_path / "elsewhere") == path  # a dataset.json: used as is
