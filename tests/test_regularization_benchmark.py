"""The regularization benchmark's harness: ``--quick`` trains every variant, records test and training Dice
curves at the configured epochs and writes the report. Checks the harness, not the science."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # trains 4 networks in a subprocess


def test_quick_run_records_curves_for_every_variant(tmp_path):
    out, docs = tmp_path / "out", tmp_path / "docs"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "regularization_benchmark.py"), "--quick", "--workers", "1"]
    proc = subprocess.run(
        [*cmd, "--seeds", "0", "--out", str(out), "--docs", str(docs)],
        cwd=str(ROOT),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "regularization.json").read_text())
    runs = {r["variant"]: r for r in result["runs"]}
    assert set(runs) == {"unet_float", "unet_inq5", "qmenet", "qmenet_float"}
    for name, r in runs.items():
        # quick: 2 float epochs + 4 steps x 1 epoch, scored every 2 epochs
        assert r["epoch"] == [2, 4, 6], name
        assert all(0.0 <= d <= 1.0 for d in r["test_dice"] + r["train_dice"]), name
        assert r["final_test_dice"] == r["test_dice"][-1] and r["best_test_dice"] == max(r["test_dice"])
    # the quantized variants end fully on their level sets; the float ones are not quantized at all
    assert runs["unet_inq5"]["quantization_complete"] is True and runs["qmenet"]["quantization_complete"] is True
    assert runs["unet_float"]["quantization_complete"] is None
    assert set(result["summary"]["paired"]) == {
        "unet_inq5 - unet_float",
        "qmenet - qmenet_float",
        "qmenet - unet_float",
    }
    assert "5-bit INQ" in (docs / "results_regularization.md").read_text()
    assert (docs / "images" / "regularization.png").is_file()
    # a rerun skips the finished runs
    again = subprocess.run(
        [*cmd, "--seeds", "0", "--out", str(out)],
        cwd=str(ROOT),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and "final test Dice" not in again.stdout
