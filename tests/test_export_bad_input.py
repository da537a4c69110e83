"""Model Zoo export refuses bad input with a clear error and leaves nothing half-written behind."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from qddens_monai.config import load_bundle_configs
from qddens_monai.export import check_zoo_name, export_zoo
from qddens_monai.networks import CENet

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
NAME = "retinal_vessel_fundus_segmentation"
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the subprocesses


def _bundle_copy(root: Path) -> Path:
    """configs/ and docs/ of the repository's bundle, without weights."""
    for part in ("configs", "docs"):
        shutil.copytree(BUNDLE / part, root / part)
    (root / "models").mkdir()
    return root


def _fresh_network():
    parser = ConfigParser()
    parser.read_config(load_bundle_configs(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)  # the shipped model's plan: its in_channels and num_classes
    return parser.get_parsed_content("network_def")


@pytest.mark.parametrize(
    "name",
    [
        "Retinal_vessel_segmentation",
        "spleen",
        "vessel_segmentation",
        "../a_b_c",
        "retinal-vessel_fundus_segmentation",
        "retinal_vessel fundus_segmentation",
    ],
)
def test_invalid_zoo_names_are_refused_before_anything_is_written(tmp_path, name):
    with pytest.raises(ValueError, match="not a valid Model Zoo bundle name"):
        export_zoo(name, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert check_zoo_name("spleen_ct_segmentation") == "spleen_ct_segmentation"


def test_existing_output_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "out"
    (out / NAME).mkdir(parents=True)
    (out / NAME / "keep.txt").write_text("earlier export")
    with pytest.raises(FileExistsError, match=f"{NAME} already exists"):
        export_zoo(NAME, out)
    assert (out / NAME / "keep.txt").read_text() == "earlier export"
    assert sorted(p.name for p in out.iterdir()) == [NAME]
    (out / f"{NAME}.zip").write_bytes(b"zip")
    shutil.rmtree(out / NAME)
    with pytest.raises(FileExistsError, match=f"{NAME}.zip already exists"):
        export_zoo(NAME, out)
    assert (out / f"{NAME}.zip").read_bytes() == b"zip"


def test_untrained_unfrozen_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "untrained.pt"
    torch.save(_fresh_network().state_dict(), ckpt)  # quantization schedule at step 0
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"not fully quantized \(the incremental schedule is at step 0 of 4\)"):
        export_zoo(NAME, out, checkpoint=ckpt, onnx=False)
    assert not out.exists()


def test_checkpoint_of_another_network_is_refused(tmp_path):
    ckpt = tmp_path / "cenet.pt"
    torch.save(CENet(spatial_dims=2, in_channels=3, out_channels=2, channels=(8, 16, 32, 64)).state_dict(), ckpt)
    with pytest.raises(RuntimeError, match=r"cenet.pt does not match QMENet: \d+ missing keys"):
        export_zoo(NAME, tmp_path / "out", checkpoint=ckpt, onnx=False)
    # and the ensemble's weights do not fit the student's network_def
    with pytest.raises(RuntimeError, match="does not match UNet"):
        export_zoo(NAME, tmp_path / "out", checkpoint=BUNDLE / "models" / "model.pt", student=True, onnx=False)
    assert not (tmp_path / "out").exists()


def test_missing_checkpoints_name_the_file(tmp_path):
    bundle = _bundle_copy(tmp_path / "bundle")
    with pytest.raises(FileNotFoundError, match="student.pt does not exist; distil the student first"):
        export_zoo(NAME, tmp_path / "out", bundle_dir=bundle, student=True)
    with pytest.raises(FileNotFoundError, match="model.pt does not exist; train the bundle first"):
        export_zoo(NAME, tmp_path / "out", bundle_dir=bundle)
    assert not (tmp_path / "out").exists()


def test_failure_during_the_build_leaves_nothing_behind(tmp_path):
    # The weights are fine; the calibration images are not there: the export fails half-way through.
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    (out / "other").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no image matches 'imagesTs/\\*'"):
        export_zoo(NAME, out, dataset_dir=data)
    assert sorted(p.name for p in out.iterdir()) == ["other"]  # no hidden temporary folder or zip


@pytest.mark.slow
def test_cli_reports_bad_input_with_exit_code_2(tmp_path):
    cmd = [sys.executable, "-m", "qddens_monai.cli", "export-zoo", "--name", "Bad-Name", "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "export-zoo: 'Bad-Name' is not a valid Model Zoo bundle name" in proc.stderr
    assert not (tmp_path / "o").exists()
