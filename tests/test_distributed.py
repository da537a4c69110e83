"""Multi-process training with real ``torchrun`` (2 CPU processes, gloo) and ``multi_gpu_train.json``: the same
quality as one process, and a killed rank ends the whole run quickly with a clear message."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# subprocess / bundle / server / venv runs: deselect with -m 'not slow' for the edit-test loop
pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
CONFIGS = BUNDLE / "configs"
# 6 full-precision epochs + 4 quantization steps of 1 epoch, tiny learners, 64 px demo images, 32 px crops
TINY = [
    "--epochs",
    "6",
    "--epochQ",
    "1",
    "--val_interval",
    "10",
    "--demo_size",
    "64",
    "--roi_size",
    "[32,32]",
    "--network_def#backbone_kwargs#channels",
    "[4,8,16,32]",
    "--network_def#meta_kwargs#channels",
    "[4,8,16,32]",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--nproc_per_node=2",
    "-m",
    "monai.bundle",
    "run",
    "training",
]
MULTI = json.dumps(["configs/train.json", "configs/multi_gpu_train.json"])


def run(cmd, timeout=600):
    return subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=timeout, env=ENV)


def ok(proc):
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def ensemble_metrics(root, data):
    ok(
        run(
            [
                sys.executable,
                "-m",
                "monai.bundle",
                "run",
                "evaluating",
                "--config_file",
                json.dumps(["configs/train.json", "configs/evaluate.json"]),
                "--bundle_root",
                str(root),
                *TINY,
                *data,
            ]
        )
    )
    return json.loads((root / "eval" / "metrics_summary.json").read_text())["summary"]["ensemble"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process at batch 2: the reference (and the data folder the other runs share)."""
    root = tmp_path_factory.mktemp("single")
    ok(
        run(
            [
                sys.executable,
                "-m",
                "monai.bundle",
                "run",
                "training",
                "--config_file",
                "configs/train.json",
                "--bundle_root",
                str(root),
                *TINY,
                "--batch_size",
                "2",
            ]
        )
    )
    return root


def test_two_processes_train_as_well_as_one(single, tmp_path):
    data = ["--dataset_dir", str(single / "data" / "demo_2d")]
    # each rank sees half the images at batch 1: the same optimizer steps and effective batch as above
    ok(run([*TORCHRUN, "--config_file", MULTI, "--bundle_root", str(tmp_path), *TINY, *data, "--batch_size", "1"]))
    assert (tmp_path / "models" / "model.pt").is_file()
    one, two = ensemble_metrics(single, data), ensemble_metrics(tmp_path, data)
    print(
        f"ensemble on the test images, 1 vs 2 processes: AUC {one['auc']['mean']:.3f} vs {two['auc']['mean']:.3f}, "
        f"Dice {one['dice']['mean']:.3f} vs {two['dice']['mean']:.3f}"
    )
    # 10 short epochs of tiny learners: the Dice threshold is not reached yet, AUC already ranks the vessels.
    # The bound is a judgment: single-process runs of this budget give AUC 0.752 / 0.677 / 0.673 for seeds 0 / 1 / 2.
    assert one["auc"]["mean"] > 0.6 and two["auc"]["mean"] > 0.6
    assert abs(one["auc"]["mean"] - two["auc"]["mean"]) < 0.1


def test_a_killed_rank_fails_the_run_fast(single, tmp_path):
    marker = tmp_path / "killed_at"
    training = json.loads((CONFIGS / "multi_gpu_train.json").read_text())["training"]
    kill = (
        "$dist.get_rank() == 1 and @train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once=10), "
        f"lambda e: (open({str(marker)!r}, 'w').write(repr(time.time())), os.kill(os.getpid(), signal.SIGKILL)))"
    )
    (tmp_path / "kill.json").write_text(
        json.dumps(
            {"training": ["$import ignite", "$import signal", "$import time"] + training[:-1] + [kill, training[-1]]}
        )
    )
    configs = json.dumps(["configs/train.json", "configs/multi_gpu_train.json", str(tmp_path / "kill.json")])
    proc = run(
        [
            *TORCHRUN,
            "--config_file",
            configs,
            "--bundle_root",
            str(tmp_path / "run"),
            *TINY,
            "--dataset_dir",
            str(single / "data" / "demo_2d"),
            "--batch_size",
            "1",
        ],
        timeout=300,
    )
    ended = time.time()
    assert proc.returncode != 0
    delay = ended - float(marker.read_text())
    print(f"torchrun exited {delay:.1f} s after rank 1 was killed")
    assert delay < 60
    assert "ChildFailedError" in proc.stderr and "Signal 9 (SIGKILL)" in proc.stderr
    assert not (tmp_path / "run" / "models" / "model.pt").exists()
