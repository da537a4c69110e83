"""The annotation benchmark's harness: ``--quick`` really runs the loop (pool, scorers, selection, learner,
oracle) for every strategy, resumes, and writes the report (figure, docs section, README summary).

This checks the harness, not the science: one seed, a 9-image pool of 48 px images, 1-epoch models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import annotation_benchmark as ab  # noqa: E402
import annotation_report  # noqa: E402

# the quick_run tests train a dozen small networks in a subprocess (about 40 s on one core): slow


def _run(out: Path, repo: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "annotation_benchmark.py"),
            "--quick",
            "--out",
            str(out),
            "--docs",
            str(repo),
            *extra,
        ],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("annotation")
    repo = tmp_path_factory.mktemp("repo")
    (repo / "docs").mkdir()
    (repo / "docs" / "results.md").write_text("# Results\n\nother results\n")
    (repo / "README.md").write_text("# project\n\nintro\n\n## License\n\nApache-2.0\n")
    proc = _run(out, repo)
    return out, repo, proc.stdout


@pytest.mark.slow
def test_every_strategy_runs_the_loop(quick_run):
    out, _, _ = quick_run
    cfg = ab.SETTINGS["quick"]
    payload = json.loads((out / "annotation.json").read_text())
    assert payload["complete"] and payload["setting"] == "quick"
    pool_size = cfg["distinct"] + cfg["clusters"] * cfg["cluster_size"] + cfg["ood"]
    jobs = {j["strategy"]: j for j in payload["jobs"]}
    assert set(jobs) == {*ab.STRATEGIES, "full"}
    assert jobs["full"]["labels"] == [pool_size] and 0.0 <= jobs["full"]["dice"][0] <= 1.0
    start = json.loads((out / "runs" / "seed0_start.json").read_text())["labelled"]
    grid = list(range(cfg["start"], cfg["max_labels"] + 1, cfg["batch"]))
    for name in ab.STRATEGIES:
        job = jobs[name]
        assert job["labels"] == grid and len(job["dice"]) == len(grid)
        assert all(0.0 <= d <= 1.0 for d in job["dice"])
        assert job["labelled"][: cfg["start"]] == start  # the same random start set for every strategy
        assert len(set(job["labelled"])) == cfg["max_labels"]  # never the same image twice
        assert all(0 <= i < pool_size for i in job["labelled"])
        assert job["dice"][0] == jobs["random"]["dice"][0]  # the start set's learner is shared
        for rnd in job["rounds"]:
            assert len(rnd["picked"]) == cfg["batch"] and len(rnd["kinds"]) == cfg["batch"]
            # the scorer-driven strategies recorded the pool's uncertainties
            assert (rnd["mean_uncertainty"] is None) == (name == "random")
            if name != "random":
                assert rnd["mean_uncertainty"] >= 0.0


def test_pool_has_near_duplicates_and_outliers():
    cfg = ab.SETTINGS["quick"]
    pool, test = ab.make_pool(cfg, 0)
    kinds = [c["kind"] for c in pool]
    assert kinds.count("ood") == cfg["ood"] and kinds.count("distinct") == cfg["distinct"]
    assert kinds.count("cluster0") == cfg["cluster_size"] and len(test) == cfg["test"]
    a, b = (c for c in pool if c["kind"] == "cluster0")
    # near-duplicates: the same vessels, shifted by at most 3 px
    assert (
        max(
            float((a["label"] - b["label"].roll((dy, dx), dims=(1, 2))).abs().sum() == 0)
            for dy in range(-6, 7)
            for dx in range(-6, 7)
        )
        == 1.0
    )
    assert all(c["image"].shape == (3, cfg["size"], cfg["size"]) and 0 <= float(c["image"].min()) for c in pool)


@pytest.mark.slow
def test_report_tables_figure_and_sections(quick_run):
    out, repo, stdout = quick_run
    payload = json.loads((out / "annotation.json").read_text())
    summary = payload["summary"]
    assert set(summary["strategies"]) == set(ab.STRATEGIES)
    assert set(summary["paired"]) == set(ab.STRATEGIES) - {"random"}
    for name, p in summary["paired"].items():  # paired differences are differences of the per-seed values
        mine, rand = summary["strategies"][name]["per_seed"], summary["strategies"]["random"]["per_seed"]
        assert p["auc"]["values"] == pytest.approx([mine[s]["auc"] - rand[s]["auc"] for s in sorted(mine)])
    assert (repo / "docs" / "images" / annotation_report.FIGURE).stat().st_size > 5000
    results = (repo / "docs" / "results.md").read_text()
    assert results.startswith("# Results\n\nother results") and results.count(annotation_report.START) == 1
    assert "labels to 90 %" in results and "Δ AUC" in results
    readme = (repo / "README.md").read_text()
    assert readme.index(annotation_report.START) < readme.index("## License")
    assert "Labels needed" in stdout


@pytest.mark.slow
def test_rerun_resumes_without_recomputing(quick_run):
    out, repo, _ = quick_run
    before = {p.name: p.read_text() for p in (out / "runs").glob("*.json")}
    proc = _run(out, repo)
    assert " round 1:" not in proc.stdout and "full pool (" not in proc.stdout  # nothing retrained
    assert {p.name: p.read_text() for p in (out / "runs").glob("*.json")} == before
    # the report sections are replaced, not appended
    assert (repo / "docs" / "results.md").read_text().count(annotation_report.START) == 1


def test_curve_measures():
    assert annotation_report.curve_auc([4, 8, 12], [0.2, 0.4, 0.4]) == pytest.approx((0.3 * 4 + 0.4 * 4) / 8)
    assert annotation_report.labels_to_reach([4, 8, 12], [0.2, 0.5, 0.45], 0.45) == 8
    assert annotation_report.labels_to_reach([4, 8], [0.2, 0.3], 0.45) is None
