"""The results benchmark's harness: ``--quick`` really trains every variant on real files and writes the report.

This checks the harness (every variant trained and evaluated on both data sets and seeds, JSON, markdown,
figures, README section), not the science: 3 epochs on a few tiny images.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import results_benchmark  # noqa: E402
import results_doc  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    repo = tmp_path_factory.mktemp("repo")
    (repo / "README.md").write_text("# project\n\nintro\n\n## License\n\nApache-2.0\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "results_benchmark.py"), "--quick", "--out", str(out), "--docs", str(repo)],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, repo, proc.stdout


@pytest.mark.slow
def test_quick_run_trains_and_evaluates_every_variant(quick_run):
    out, _, stdout = quick_run
    payload = json.loads((out / "results.json").read_text())
    assert payload["complete"] and payload["setting"] == "quick"
    seeds = results_benchmark.SETTINGS["quick"]["seeds"]
    assert sorted((r["dims"], r["seed"]) for r in payload["runs"]) == sorted((d, s) for d in (2, 3) for s in seeds)
    names = [n for n, _ in results_benchmark.VARIANTS]
    for run in payload["runs"]:
        assert list(run["variants"]) == names
        for name, v in run["variants"].items():
            assert 0.0 <= v["dice"] <= 1.0 and 0.0 <= v["auc"] <= 1.0, (name, v)
            assert v["train_s"] > 0 and v["infer_ms"] > 0 and v["params"] > 0 and v["stored_bytes"] > 0
            assert len(v["per_image"]) == results_benchmark.SETTINGS["quick"][f"{run['dims']}d"]["num_test"]
        ens = run["variants"]
        # ensembles report their learners' disagreement and QME-Net its meta learner; singles do not
        for name in ("uniform_ensemble", "qmenet_float", "qmenet_quant", "qmenet_quant_div", "qmenet_cenet"):
            assert 0.0 <= ens[name]["disagreement"] <= 1.0
        assert "disagreement" not in ens["unet"] and "meta_dice" in ens["qmenet_quant"]
        # sizes follow from the architectures: 4 UNets, and quantization shrinks what is stored
        assert ens["uniform_ensemble"]["params"] == 4 * ens["unet"]["params"]
        assert ens["unet_5bit"]["params"] == ens["unet"]["params"] == ens["student"]["params"]
        assert ens["unet_5bit"]["stored_bytes"] < ens["unet"]["stored_bytes"] / 4
        assert ens["qmenet_quant"]["stored_bytes"] < ens["qmenet_float"]["stored_bytes"] / 2
    summary = payload["summary"]["2d"]["unet"]["dice"]
    assert summary["n"] == len(seeds) and math.isfinite(summary["sd"])
    assert "done in" in stdout  # progress is printed per job


@pytest.mark.slow
def test_quick_run_writes_report_figures_and_readme_section(quick_run):
    out, repo, _ = quick_run
    md = (out / "results.md").read_text()
    for _, label in results_benchmark.VARIANTS:
        assert label in md
    for fig in results_doc.FIGURES:
        assert (out / fig).stat().st_size > 1000
        assert (repo / "docs" / "images" / fig).stat().st_size < 300_000  # small enough for the repository
    readme = (repo / "README.md").read_text()
    assert readme.index(results_doc.START) < readme.index("## License")  # inserted before the License section
    assert "python benchmarks/results_benchmark.py --quick" in readme and "(docs/results.md)" in readme
    # regenerating replaces the section instead of adding a second one
    results_doc.write_report(out / "results.json", out, repo)
    assert (repo / "README.md").read_text().count(results_doc.START) == 1


@pytest.mark.slow
def test_a_finished_job_is_not_recomputed(quick_run, tmp_path):
    out, _, _ = quick_run
    job = json.loads((out / "runs" / "2d_seed0.json").read_text())
    again = results_benchmark.run_job(2, 0, "quick", str(out))  # returns the stored job, trains nothing
    assert again == job


@pytest.mark.slow
def test_a_variant_added_later_is_computed_alone_and_merged(quick_run, tmp_path):
    import shutil

    import numpy as np

    out, _, _ = quick_run
    copy = tmp_path / "results"
    shutil.copytree(out, copy)
    job_file = copy / "runs" / "3d_seed0.json"
    job = json.loads(job_file.read_text())
    del job["variants"]["qmenet_cenet"]  # as written before that variant existed
    job_file.write_text(json.dumps(job))
    merged = results_benchmark.run_job(3, 0, "quick", str(copy))
    assert list(merged["variants"]) == [n for n, _ in results_benchmark.VARIANTS]
    assert all(merged["variants"][k] == v for k, v in job["variants"].items())  # the others are kept as they were
    assert 0.0 <= merged["variants"]["qmenet_cenet"]["dice"] <= 1.0
    assert "qmenet_cenet" in np.load(copy / "runs" / "3d_seed0_overlay.npz").files


def test_claim_verdicts_need_a_difference_beyond_one_sd():
    assert results_doc.verdict((0.02, 0.01, 3), "gain") == "yes"
    assert results_doc.verdict((0.02, 0.03, 3), "gain").startswith("within noise")
    assert results_doc.verdict((-0.02, 0.01, 3), "gain") == "no"
    assert results_doc.verdict((-0.02, 0.03, 3), "no_loss") == "yes"
    assert results_doc.verdict((-0.05, 0.01, 3), "no_loss") == "no"


def test_3d_demo_difficulty_overlaps_noise_and_spheres_and_default_is_unchanged(tmp_path):
    import nibabel as nib
    import numpy as np

    from qddens_monai.data import load_datalist, write_demo_3d

    def volumes(**kw):
        path = write_demo_3d(
            tmp_path / str(len(list(tmp_path.iterdir()))), num_train=2, num_test=0, size=32, seed=3, **kw
        )
        items = load_datalist(path, "training")
        return [(nib.load(i["image"]).get_fdata(), nib.load(i["label"]).get_fdata() > 0) for i in items]

    default, zero, hard = volumes(), volumes(difficulty=0.0), volumes(difficulty=0.7)
    for (a, la), (b, lb) in zip(default, zero):
        assert np.array_equal(a, b) and np.array_equal(la, lb)
    for (easy, le), (img, lab) in zip(default, hard):
        # easy: every sphere voxel is brighter than the background's 99th percentile; hard: not so
        assert easy[le].min() > np.percentile(easy[~le], 99)
        assert (img[lab] < np.percentile(img[~lab], 99)).mean() > 0.05
    with pytest.raises(ValueError, match="difficulty"):
        write_demo_3d(tmp_path / "bad", num_train=1, num_test=0, size=32, difficulty=1.5)
