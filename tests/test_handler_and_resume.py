"""The ignite handler in MONAI's SupervisedTrainer, and resume equivalence (in-process and in a new process)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from qddens_monai.handlers import IncrementalQuantizationHandler
from qddens_monai.quantization import is_quantization_complete, quantization_progress, quantize_network

HERE = Path(__file__).parent


def make_trainer(max_epochs, handlers_before=(), seed=0, quantize=True):
    torch.manual_seed(seed)
    net = UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    if quantize:
        quantize_network(net, "power_of_two", 5, partition="two_stage", seed=7)
    gen = torch.Generator().manual_seed(1)
    data = [
        {"image": torch.randn(1, 32, 32, generator=gen), "label": (torch.rand(1, 32, 32, generator=gen) > 0.5).float()}
        for _ in range(4)
    ]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    handler = IncrementalQuantizationHandler(
        net, fp_epochs=2, epochs_per_step=1, optimizer=optimizer, reset_lr=True, lr_decay=0.5, steps=4
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=DataLoader(data, batch_size=2, shuffle=False, num_workers=0),
        network=net,
        optimizer=optimizer,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        train_handlers=[*handlers_before, handler],
    )
    return trainer, net, optimizer, handler


def test_schedule_follows_epochs_and_lr_is_reset():
    trainer, net, optimizer, handler = make_trainer(max_epochs=6)
    seen = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: seen.append((quantization_progress(net)[0], optimizer.param_groups[0]["lr"]))
    )
    assert handler.total_epochs == 6
    trainer.run()
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4, 4]
    assert [lr for _, lr in seen] == [1e-2, 1e-2 * 0.5, 1e-2 * 0.25, 1e-2 * 0.125, 1e-2 * 0.0625, 1e-2 * 0.0625]
    assert is_quantization_complete(net)


def test_float_network_gets_the_same_lr_schedule_with_steps():
    """The bundle's ``quantization: float`` keeps the schedule's lr changes at the same epochs, quantizing nothing."""
    trainer, net, optimizer, handler = make_trainer(max_epochs=6, quantize=False)
    seen = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(optimizer.param_groups[0]["lr"]))
    assert handler.total_epochs == 6 and not handler.quantized
    trainer.run()
    assert seen == [1e-2, 1e-2 * 0.5, 1e-2 * 0.25, 1e-2 * 0.125, 1e-2 * 0.0625, 1e-2 * 0.0625]
    assert quantization_progress(net) == (0, 0)
    with pytest.raises(ValueError, match="no incremental quantization"):
        IncrementalQuantizationHandler(net, fp_epochs=2, epochs_per_step=1)  # no steps: nothing to schedule


def test_resume_from_checkpoint_mid_schedule_equals_uninterrupted(tmp_path):
    full, full_net, _, _ = make_trainer(max_epochs=6)
    full.run()

    first, net, optimizer, _ = make_trainer(max_epochs=3)
    CheckpointSaver(
        str(tmp_path), {"network": net, "optimizer": optimizer, "trainer": first}, save_interval=1, epoch_level=True
    ).attach(first)
    first.run()
    ckpt = tmp_path / "checkpoint_epoch=3.pt"
    assert ckpt.exists() and quantization_progress(net)[0] == 2

    resumed, resumed_net, resumed_opt, _ = make_trainer(
        max_epochs=6, seed=123
    )  # different init: all comes from the checkpoint
    loader = CheckpointLoader(str(ckpt), {"network": resumed_net, "optimizer": resumed_opt, "trainer": resumed})
    loader.attach(resumed)  # attached after the quantization handler: the order must not matter
    resumed.run()
    assert resumed.state.epoch == 6
    a, b = full_net.state_dict(), resumed_net.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_resume_in_a_new_process_equals_never_stopping(tmp_path):
    job = [sys.executable, str(HERE / "quantization_resume_job.py")]
    subprocess.run([*job, "--stop", "12", "--out", str(tmp_path / "mid.pt")], check=True)
    subprocess.run([*job, "--resume", str(tmp_path / "mid.pt"), "--out", str(tmp_path / "resumed.pt")], check=True)
    subprocess.run([*job, "--out", str(tmp_path / "straight.pt")], check=True)
    mid = torch.load(tmp_path / "mid.pt")
    resumed, straight = torch.load(tmp_path / "resumed.pt"), torch.load(tmp_path / "straight.pt")
    assert (
        mid["iteration"] == 12 and 0 < int(mid["network"]["model.0.conv.unit0.conv.parametrizations.weight.0.step"]) < 4
    )
    for k in straight["network"]:
        assert torch.equal(resumed["network"][k], straight["network"][k]), k
