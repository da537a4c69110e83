"""What the benchmarks that train on whole MR-like 2D slices share (regularization, diversity, distillation).

The generated data set, its slices as tensors, one MONAI ``SupervisedTrainer`` over them (flips, Adam, the
incremental schedule's quantization steps or, for a float network, the same learning-rate halvings) and the
mean ± sd of a statistic over seeds.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from results_benchmark import schedule_handler

#: The incremental schedule's accumulated portions: its number of steps is the number of lr halvings.
PORTIONS = [0.3, 0.6, 0.8, 1.0]


def slice_data(out: Path, cfg: dict[str, Any], difficulty: float, num_classes: int = 2) -> str:
    """Generate the MR-like slices of ``cfg`` (``num_train``, ``num_test``, ``shape``) under ``out`` once; return
    their dataset.json."""
    from qddens_monai.data import write_demo_mr_2d

    data = out / f"data_{cfg['num_train']}_{cfg['num_test']}_{cfg['shape'][0]}x{cfg['shape'][1]}"
    if not (data / "dataset.json").is_file():
        sizes = {"shape": cfg["shape"], "num_classes": num_classes, "difficulty": difficulty, "seed": 0}
        write_demo_mr_2d(data, cfg["num_train"], cfg["num_test"], **sizes)
    return str(data / "dataset.json")


def load_slices(data_json: str, split: str) -> list[dict[str, Any]]:
    """Every slice of a split as ``{"image": (1, H, W) z-scored, "label": (1, H, W)}`` float tensors."""
    import nibabel as nib
    import torch

    root = Path(data_json).parent
    cases = []
    for item in json.loads(Path(data_json).read_text())[split]:
        image = np.asarray(nib.load(str(root / item["image"])).dataobj, dtype=np.float32).squeeze()
        label = np.asarray(nib.load(str(root / item["label"])).dataobj, dtype=np.float32).squeeze()
        image = (image - image.mean()) / max(float(image.std()), 1e-6)
        cases.append({"image": torch.from_numpy(image)[None], "label": torch.from_numpy(label)[None]})
    return cases


def slice_trainer(
    network,
    loss,
    cases: list[dict[str, Any]],
    schedule: tuple[int, int],
    quantized: bool,
    seed: int,
    learning_rate: float,
    lr_decay: float,
    batch_size: int,
):
    """A ``SupervisedTrainer`` over ``cases`` with random flips: ``schedule = (float epochs, epochs per step)`` and
    :data:`PORTIONS` steps, quantization steps for a ``quantized`` network or the same lr halvings for a float one.

    Seeds the flips and the shuffling with ``seed``; the caller seeds the network (``set_determinism``)."""
    import torch
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.transforms import Compose, RandFlipd

    aug = Compose([RandFlipd(["image", "label"], prob=0.5, spatial_axis=a) for a in (0, 1)])
    aug.set_random_state(seed)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(Dataset(cases, aug), batch_size=batch_size, shuffle=True, num_workers=0, generator=generator)
    optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=learning_rate)
    fp, per_step = schedule
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=fp + len(PORTIONS) * per_step,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss,
        decollate=False,
        train_handlers=[schedule_handler(network, optimizer, fp, per_step, len(PORTIONS), quantized, lr_decay)],
    )


def mean_sd(values: list[float]) -> dict[str, float]:
    """Mean and sample sd (0 for one value)."""
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def run_jobs(fn: Callable[..., dict], jobs: list[tuple], workers: int, report: Callable[[dict], str]) -> None:
    """``fn(*job)`` for every job in ``workers`` processes; prints ``report(result)`` as each one finishes."""
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in as_completed([pool.submit(fn, *job) for job in jobs]):
            print(report(future.result()), flush=True)


def collect(out: Path, name: str, cfg: dict[str, Any], workers: int, t0: float, summarize: Callable) -> dict[str, Any]:
    """Every run's JSON in ``out/runs`` (earlier invocations' included) and their ``summarize``, written to
    ``out/name``; returns that result."""
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    result = {
        "machine": f"{os.cpu_count()} cores, 1 torch thread per job, {workers} worker process(es)",
        "wall_s": time.time() - t0,
        "setting": cfg,
        "runs": runs,
        "summary": summarize(runs),
    }
    (out / name).write_text(json.dumps(result, indent=1))
    return result
