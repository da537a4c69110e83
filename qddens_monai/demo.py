"""A small end-to-end demonstration of incremental quantization with MONAI's SupervisedTrainer.

Trains a MONAI ``UNet`` on generated 2D images (``monai.data.synthetic``), runs the
incremental power-of-two schedule with :class:`IncrementalQuantizationHandler`, and writes
to ``out_dir``: the training curve (PNG), the quantization report (text and JSON), the
frozen network's state dict and its packed low-bit files, with the validation Dice of the
float and the quantized network.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.data import DataLoader, create_test_image_2d
from monai.engines import SupervisedTrainer
from monai.handlers import StatsHandler
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet

from .handlers import IncrementalQuantizationHandler
from .quantization import freeze, quantization_report, quantize_network, save_packed

__all__ = ["run_quantization_demo"]


def _dataset(n: int, size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    rng = np.random.RandomState(seed)
    items = []
    for _ in range(n):
        image, label = create_test_image_2d(size, size, num_objs=6, rad_max=size // 8, noise_max=0.5, random_state=rng)
        items.append(
            {"image": torch.from_numpy(image[None]).float(), "label": torch.from_numpy(label[None] > 0).float()}
        )
    return items


@torch.no_grad()
def _dice(net: torch.nn.Module, data: list[dict[str, torch.Tensor]]) -> float:
    net.eval()
    metric = DiceMetric(include_background=False)
    for item in data:
        pred = net(item["image"][None]).argmax(1, keepdim=True)
        metric(pred.float(), item["label"][None])
    return float(metric.aggregate())


def run_quantization_demo(
    out_dir: str = "runs/quantization_demo",
    method: str = "power_of_two",
    bits: int = 5,
    fp_epochs: int = 6,
    epochs_per_step: int = 2,
    size: int = 64,
    seed: int = 0,
) -> dict:
    """Train, quantize incrementally, evaluate and pack a small UNet; returns the summary it writes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(seed)
    train, val = _dataset(24, size, seed), _dataset(8, size, seed + 1)
    net = UNet(2, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)
    quantize_network(net, method=method, bits=bits, partition="two_stage", seed=seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    handler = IncrementalQuantizationHandler(net, fp_epochs, epochs_per_step, optimizer=optimizer, reset_lr=True)
    total_epochs = handler.total_epochs
    recorder = _Recorder(val, fp_epochs)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=total_epochs,
        train_data_loader=DataLoader(train, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(seed)),
        network=net,
        optimizer=optimizer,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        # the recorder goes first: it measures the float network before the first step
        train_handlers=[
            recorder,
            handler,
            StatsHandler(tag_name="train_loss", output_transform=lambda x: x[0]["loss"]),
        ],
    )
    trainer.run()
    report = quantization_report(net)
    quantized_dice = _dice(net, val)
    (out / "quantization_report.txt").write_text(str(report) + "\n")
    sizes = {
        "packed": save_packed(net, out / "model_packed.qdd"),
        "entropy_coded": save_packed(net, out / "model_packed_lzma.qdd", entropy_coding=True),
    }
    torch.save(freeze(net).state_dict(), out / "model_frozen.pt")
    float_bytes = 4 * report.quantized_params
    summary = {
        "method": method,
        "bits": bits,
        "epochs": total_epochs,
        "val_dice_float_before_quantization": recorder.float_dice,
        "val_dice_quantized": quantized_dice,
        "quantized_params": report.quantized_params,
        "float32_bytes_of_quantized_weights": float_bytes,
        "packed_bytes_of_quantized_weights": sizes["packed"].quantized_bytes,
        "entropy_coded_bytes_of_quantized_weights": sizes["entropy_coded"].quantized_bytes,
        "compression_packed": float_bytes / sizes["packed"].quantized_bytes,
        "compression_entropy_coded": float_bytes / sizes["entropy_coded"].quantized_bytes,
    }
    (out / "summary.json").write_text(json.dumps({**summary, "report": report.to_dict()["totals"]}, indent=2))
    _plot_losses(recorder.losses, fp_epochs, epochs_per_step, out / "training_loss.png")
    print(report)
    print(json.dumps(summary, indent=2))
    print(f"Outputs written to {out.resolve()}")
    return summary


class _Recorder:
    """Per-epoch training loss, and the validation Dice once the float epochs are done."""

    def __init__(self, val: list[dict[str, torch.Tensor]], fp_epochs: int) -> None:
        self.val, self.fp_epochs = val, fp_epochs
        self.losses: list[float] = []
        self.float_dice: float | None = None

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        self.losses.append(float(engine.state.output[0]["loss"]))
        if engine.state.epoch == self.fp_epochs:
            self.float_dice = _dice(engine.network, self.val)
            engine.network.train()


def _plot_losses(losses: list[float], fp_epochs: int, epochs_per_step: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = np.arange(1, len(losses) + 1)
    ax.plot(epochs, losses, marker="o")
    for e in range(fp_epochs, len(losses), epochs_per_step):
        ax.axvline(e + 0.5, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("epoch (dashed: quantization steps)")
    ax.set_ylabel("DiceCE loss (last batch)")
    ax.set_title("Incremental quantization during training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
