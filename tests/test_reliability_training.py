"""Interrupted training and determinism, through MONAI's real bundle runner in subprocesses.

A tiny QME-Net (CE-Net channels 4..32) on the 64 px demo set, 5 epochs of 7 iterations: 1 epoch at full
precision, then 4 quantization steps of 1 epoch each.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from qddens_monai.handlers import find_checkpoint

# subprocess / bundle / server / venv runs: deselect with -m 'not slow' for the edit-test loop
pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
CONFIGS = BUNDLE / "configs"
TINY = [
    "--epochs",
    "1",
    "--epochQ",
    "1",
    "--val_interval",
    "5",
    "--demo_size",
    "64",
    "--roi_size",
    "[32,32]",
    "--network_def#backbone_kwargs#channels",
    "[4,8,16,32]",
    "--network_def#meta_kwargs#channels",
    "[4,8,16,32]",
]
ITERATIONS_PER_EPOCH = 7  # 13 training images of the 16 (val_fraction 0.2), batch 2
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def bundle(run_id, configs, root, *args, timeout=300):
    config_arg = json.dumps([str(c) for c in configs]) if len(configs) > 1 else str(configs[0])
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        run_id,
        "--config_file",
        config_arg,
        "--bundle_root",
        str(root),
        *args,
    ]
    return subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=timeout, env=ENV)


def ok(proc):
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def step_buffers(state):
    return {k: int(v) for k, v in state.items() if k.endswith(".step")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run (seed 0); its data folder is shared by the other runs."""
    root = tmp_path_factory.mktemp("straight")
    ok(bundle("training", [CONFIGS / "train.json"], root, *TINY))
    return root


def test_sigkill_mid_epoch_during_quantization_then_resume_latest_gives_identical_weights(straight, tmp_path):
    data = ["--dataset_dir", str(straight / "data" / "demo_2d")]
    kill_at = 3 * ITERATIONS_PER_EPOCH + 3  # epoch 4 of 5, iteration 3: quantization step 3 is active
    # the shipped "training" run with one more expression: SIGKILL this process at that iteration
    training = json.loads((CONFIGS / "train.json").read_text())["training"]
    kill = (
        f"$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once={kill_at}), "
        "lambda e: os.kill(os.getpid(), signal.SIGKILL))"
    )
    (tmp_path / "kill.json").write_text(
        json.dumps({"training": ["$import ignite", "$import signal"] + training[:-1] + [kill, training[-1]]})
    )
    root = tmp_path / "run"
    proc = bundle("training", [CONFIGS / "train.json", tmp_path / "kill.json"], root, *TINY, *data)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (root / "models" / "model.pt").exists()
    checkpoints = sorted(p.name for p in (root / "eval" / "checkpoints").glob("*.pt"))
    assert checkpoints == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]  # n_saved=2
    latest = weights(root / "eval" / "checkpoints" / "checkpoint_epoch=3.pt")
    assert latest["trainer"]["iteration"] == 3 * ITERATIONS_PER_EPOCH
    assert set(step_buffers(latest["model"]).values()) == {3}  # masks and step of quantization step 3

    resumed = ok(bundle("training", [CONFIGS / "train.json"], root, *TINY, *data, "--resume_from", "latest"))
    log = resumed.stdout + resumed.stderr
    assert "Epoch: 4/5, Iter: 1/" in log and "Epoch: 1/5" not in log
    assert_same_state(weights(root / "models" / "model.pt"), weights(straight / "models" / "model.pt"))


def test_same_seed_same_weights_and_metrics_bit_for_bit(straight, tmp_path):
    data = ["--dataset_dir", str(straight / "data" / "demo_2d")]
    again, other = tmp_path / "again", tmp_path / "seed1"
    ok(bundle("training", [CONFIGS / "train.json"], again, *TINY, *data))
    ok(bundle("training", [CONFIGS / "train.json"], other, *TINY, *data, "--seed", "1"))
    first = weights(straight / "models" / "model.pt")
    assert_same_state(weights(again / "models" / "model.pt"), first)
    different = weights(other / "models" / "model.pt")
    assert any(not torch.equal(first[k], different[k]) for k in first)

    summaries = []
    for root in (straight, again):
        ok(bundle("evaluating", [CONFIGS / "train.json", CONFIGS / "evaluate.json"], root, *TINY, *data))
        summaries.append(json.loads((root / "eval" / "metrics_summary.json").read_text()))
    assert summaries[0] == summaries[1]
    assert summaries[0]["summary"]["ensemble"]


def test_kill_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    """torch.save writes half a file and SIGKILLs its process while saving epoch 3."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        from ignite.engine import Engine
        from qddens_monai.handlers import AtomicCheckpointSaver

        net = torch.nn.Linear(2, 2)
        engine = Engine(lambda e, b: None)
        real_save = torch.save

        def dying_save(obj, f, **kw):
            if engine.state.epoch == 3:
                f.write(b"PK\\x03\\x04 half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, f, **kw)

        torch.save = dying_save
        AtomicCheckpointSaver({str(tmp_path)!r}, {{"model": net, "trainer": engine}}, save_interval=1, n_saved=2,
                              save_final=True, final_filename="model.pt").attach(engine)
        engine.run([0, 1], max_epochs=5)
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    named = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert named == ["checkpoint_epoch=2.pt"]  # epoch 1 removed by n_saved=2, epoch 3 never got its name
    assert weights(tmp_path / "checkpoint_epoch=2.pt")["trainer"]["iteration"] == 2 * 2
    assert find_checkpoint("latest", str(tmp_path), keys=("model", "trainer")) == str(
        tmp_path / "checkpoint_epoch=2.pt"
    )


def test_resume_from_checks_the_file_first(tmp_path):
    good = tmp_path / "checkpoint_epoch=2.pt"
    torch.save({"model": {}, "optimizer": {}, "trainer": {"epoch": 2}}, good)
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(good.read_bytes()[:100])  # truncated newest
    with pytest.warns(UserWarning, match=r"skipping .*checkpoint_epoch=3.pt"):
        assert find_checkpoint("latest", str(tmp_path)) == str(good)
    assert find_checkpoint("", str(tmp_path)) == ""
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        find_checkpoint(str(tmp_path / "nope.pt"), str(tmp_path))
    with pytest.raises(ValueError, match=r"checkpoint_epoch=3.pt: cannot be loaded"):
        find_checkpoint(str(tmp_path / "checkpoint_epoch=3.pt"), str(tmp_path))
    torch.save({"a": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="not a resumable training checkpoint"):
        find_checkpoint(str(tmp_path / "model.pt"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no loadable checkpoint"):
        find_checkpoint("latest", str(tmp_path / "empty"))
