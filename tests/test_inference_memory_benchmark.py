"""Smoke test of the inference memory benchmark (``--quick``: 12 volumes of ~32^3 through the bundle's 3D inference)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# subprocess / bundle / server / venv runs: deselect with -m 'not slow' for the edit-test loop
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "inference_memory_benchmark.py"


def test_quick_run_reports_flat_memory_and_plots(tmp_path):
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--plot",
        str(tmp_path / "memory.png"),
        "--json",
        str(tmp_path / "result.json"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["volumes"] == 12 and result["warmup"] == 4
    assert result["rss_after_warmup_mb"] > 100  # torch + MONAI + the network are resident
    assert result["rss_peak_mb"] >= result["rss_end_mb"] and abs(result["growth_mb"]) <= result["bound_mb"]
    assert (tmp_path / "memory.png").stat().st_size > 1000
