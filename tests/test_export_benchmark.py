"""The export benchmark's --quick mode runs end to end and prints and saves every figure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# subprocess / bundle / server / venv runs: deselect with -m 'not slow' for the edit-test loop
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "export_benchmark.py"


def test_export_benchmark_quick(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for line in [
        "qme_net (shipped)",
        "qdd_ens 5 bits",
        "Latency 2D",
        "Latency 3D",
        "ONNX Runtime int8",
        "student eager",
        "Dice vs label",
        "Targets: ",
    ]:
        assert line in proc.stdout, line
    results = json.loads((tmp_path / "results.json").read_text())
    for name, s in results["sizes"].items():
        # every format is smaller than float32, and entropy coding beats fixed-width packing
        assert s["ratio_packed"] > 1 and s["ratio_entropy"] > s["ratio_packed"] and s["ratio_zip"] > 1, name
    assert abs(results["sizes"]["qdd_ens 5 bits"]["packed_bits_per_weight"] - 5) < 0.1
    for case in ("2D", "3D"):
        r = results["latency"][case]
        assert set(r["seconds"]) == {
            "eager float",
            "TorchScript traced",
            "TorchScript scripted",
            "ONNX Runtime float",
            "ONNX Runtime int8",
            "student eager",
        }
        assert all(v > 0 for v in r["seconds"].values())
        assert r["mask_dice_vs_eager"]["ONNX Runtime float"] > 0.999
    assert set(results["latency"]["2D"]["dice_vs_label"]) == {"eager float", "ONNX Runtime float", "ONNX Runtime int8"}
    assert not list(tmp_path.glob("tmp*"))  # the work folder (ONNX models, packed files, demo data) is removed
