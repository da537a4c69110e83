"""The diversity and distillation benchmarks' harnesses (issue 17, questions 3 and 4): ``--quick`` trains every
variant on tiny data, records what the report needs and writes it; a rerun skips finished runs. Checks the
harness, not the science."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # trains networks in a subprocess


def _run(script: str, out: Path, docs: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--workers", "1", "--seeds", "0"]
    cmd += ["--out", str(out)] + (["--docs", str(docs)] if docs else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_diversity_benchmark_measures_every_variant(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from diversity_benchmark import VARIANTS

    out, docs = tmp_path / "out", tmp_path / "docs"
    _run("diversity_benchmark.py", out, docs)
    result = json.loads((out / "diversity.json").read_text())
    runs = {r["variant"]: r for r in result["runs"]}
    assert set(runs) == set(VARIANTS)
    for name, r in runs.items():
        for key in ("dice_meta", "dice_mean", "dice_base", "disagreement"):
            assert 0.0 <= r[key] <= 1.0, (name, key)
        assert 0.0 <= r["output_ambiguity"] <= 2.0
        # one yardstick value per level of the four-learner network, each in [0, 1]
        assert len(r["feature_diversity"]) == len(r["roles"]) >= 4
        assert all(0.0 <= x <= 1.0 for x in r["feature_diversity"])
    assert set(result["summary"]["paired"]) == set(VARIANTS) - {"none"}
    assert "ncl_output_2" in (docs / "results_diversity.md").read_text()
    assert "seed 0:" not in _run("diversity_benchmark.py", out).stdout  # nothing retrained


def test_distillation_benchmark_trains_teachers_then_students(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from distillation_benchmark import STUDENTS, TEACHERS

    out, docs = tmp_path / "out", tmp_path / "docs"
    _run("distillation_benchmark.py", out, docs)
    result = json.loads((out / "distillation.json").read_text())
    names = {r["run"] for r in result["runs"]}
    assert names == {f"teacher_{t}" for t in TEACHERS} | set(STUDENTS)
    for t in TEACHERS:
        assert (out / "models" / f"{t}_seed0.pt").is_file()
    for r in result["runs"]:  # 3 classes: the mean and one Dice per foreground class
        assert {"dice", "dice_1", "dice_2"} <= set(r) and 0.0 <= r["dice"] <= 1.0, r["run"]
    # every distilled student against the labels-only student and against its own teacher
    expected = {f"{n} - labels" for n, (t, _, _) in STUDENTS.items() if t}
    expected |= {f"{n} - teacher_{t}" for n, (t, _, _) in STUDENTS.items() if t}
    assert set(result["summary"]["paired"]) == expected
    assert "kd_uniform_T1_a0" in (docs / "results_distillation.md").read_text()
    assert "seed 0:" not in _run("distillation_benchmark.py", out).stdout  # nothing retrained
