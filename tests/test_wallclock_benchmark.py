"""The wall-clock benchmark's harness: ``--quick`` trains bundle variants through the real runner, the plain UNet
to a reference variant's CPU time, and writes the report. Checks the harness, not the science (2-epoch schedule)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the real bundle runner, in subprocesses


def test_quick_run_scores_every_variant_at_matched_cpu_time(tmp_path):
    out, docs = tmp_path / "out", tmp_path / "docs"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "wallclock_benchmark.py"),
            "--quick",
            "--workers",
            "1",
            "--out",
            str(out),
            "--docs",
            str(docs),
            "--variants",
            "default",
            "unet_same_time",
            "four_learners",
            "unet_four_learners_time",
            "old_default",
        ],
        cwd=str(ROOT),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import wallclock_benchmark

    result = json.loads((out / "wallclock.json").read_text())
    (job,) = result["jobs"]
    variants = job["variants"]
    assert set(variants) == {
        "default",
        "four_learners",
        "old_default",
        "unet_same_time",
        "unet_four_learners_time",
        "unet_same_epochs",
    }
    # the default's meta learner has the plain UNet's size: more parameters than the 0.3.0 default's four learners
    assert variants["default"]["params"] > variants["four_learners"]["params"]
    for name, r in variants.items():
        assert 0.0 <= r["dice"] <= 1.0, name
    assert variants["default"]["output"] == "meta" and "mean_dice" in variants["default"]
    assert (
        variants["old_default"]["output"] == "mean"
        and variants["old_default"]["params"] > variants["four_learners"]["params"]
    )
    # the UNet stops at the default's CPU time (within one training step), after more epochs than the bundle's 5;
    # its count starts, as the bundle's, with the start-up (the imports, reading the config, caching the data)
    for unet, reference in (("unet_same_time", "default"), ("unet_four_learners_time", "four_learners")):
        budget, used = variants[reference]["cpu_s"], variants[unet]["cpu_s"]
        assert budget <= used <= budget * 1.2 + 2.0, unet
        assert variants[unet]["accounting"] == wallclock_benchmark.ACCOUNTING == 2
    assert variants["unet_same_time"]["epochs"] >= variants["default"]["epochs"] == 5
    assert "default - unet_same_time" in result["summary"]["mr2d"]["paired"]
    page = (docs / "results_wallclock.md").read_text()
    assert "plain MONAI UNet, the default's CPU time" in page and (docs / "images" / "wallclock.png").is_file()
    # the bundle's own configs are snapshotted for the run: later edits of the repository's configs change nothing
    assert (out / "bundle" / "configs" / "train.json").read_text() == (
        ROOT / "bundle" / "configs" / "train.json"
    ).read_text()


@pytest.mark.filterwarnings("ignore")
def test_step_times_interleave_every_network_against_the_unet():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import wallclock_benchmark

    times = wallclock_benchmark.step_times(["default", "default_meta_res0"], reps=3, batch=2, size=32)
    assert set(times) == {"default", "default_meta_res0", "unet"}
    assert times["unet"]["ratio"] == pytest.approx(1.0)
    for name, t in times.items():
        assert t["ms"] > 0 and t["ratio"] > 0, name
