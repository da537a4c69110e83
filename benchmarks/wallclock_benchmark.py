"""The bundle's defaults against a plain MONAI UNet given the same CPU time, run as a user runs them.

Each bundle variant is trained by the real runner (``python -m monai.bundle run training``) on a
generated data set with only the data-specific flags a user gives (``--dataset_dir``, ``--in_channels``,
``--modality``, ``--num_classes``, the schedule); its CPU time is measured (``getrusage`` of the child,
one torch thread: on an idle core that is its wall-clock, and it is not inflated by other jobs on a
shared machine). Then a plain MONAI ``UNet`` (channels 16..128, strides 2, 2 residual units: about
400k parameters in 2D; ``DiceCELoss``, Adam 2e-3) is trained on the same training split, through the
bundle's own transforms (so the same crops and augmentation), until it has used the same CPU time as
the bundle's default, counted alike: the bundle's from its process start, the UNet's from the CPU a fresh python
takes to import torch and MONAI's training parts, through reading the config and caching the data set, with a
validation pass every ``val_interval`` epochs as the bundle's (results before 2026-12-07 counted the UNet from
its first training step, without validation: 5-10 % more epochs for it); it is also scored when it reaches the
bundle's number of epochs (the equal-epoch view). Every model is scored on the held-out test split by one
function: sliding-window inference with
the bundle's ``roi_size``, argmax, Dice and HD95 per foreground class (final weights, no model selection).

Tasks (data generated once, the same for every variant and seed):

- ``mr2d``: MR-like 2D slices (``qddens_monai.data.phantoms``), 200 x 232 px, one organ, binary;
- ``mr2d_3class``: the same images with the organ's outer and central zones as classes 1 and 2;
- ``mr2d_real_split``: the binary images at the external check's split (113 training images, of which the
  bundle holds out 23 for validation, and 38 test): about 4x the steps per epoch of ``mr2d``;
- ``mr2d_3class_real_split``: the 3-class images at that split (the external check's multi-class run);
- ``spheres3d``: 3D spheres (``write_demo_3d``, difficulty 0.7), 48^3 voxels, binary.

Variants (each defined by its own overrides, so a stored result stays what its name says when the defaults move):

- ``default``: the bundle as shipped (since 0.6.0: one 4-bit base learner 8..64 of plain convolutions, fused
  with a float meta learner the size of the plain UNet, 16..128 with 2 residual units, at the encoder levels and
  the bottleneck; a constant learning rate); ``default_16bit_meta``: the meta learner at 16 bits, frozen step by
  step as QME-Net does; ``default_lr_halving``: the learning rate halved at each quantization step;
- ``default_meta_res1`` / ``default_meta_res0``: the default with a cheaper meta learner, 1 or no residual unit
  per level instead of 2 (a training step 1.13x / 0.87x the plain UNet's instead of 1.4x);
- ``default_residual_fusion``: the fusion blocks add the base learner's features to the meta learner's through
  a gate that starts at zero (the meta learner starts as a plain UNet) instead of replacing them;
  ``default_relu``: every learner with ReLU instead of MONAI's default PReLU (PReLU's backward is slow on the
  CPU: a step 1.18x the plain UNet's instead of 1.38x); ``default_residual_relu``: both; ``default_float_relu``:
  ReLU learners and no quantization; ``default_fusion_instance``: the fusion blocks with instance norm (the
  UNet's) instead of batch norm;
- ``default_fuse_bottleneck``: fused at the bottleneck only (the three encoder fusions are 13 % of the step);
  ``default_lean``: that and a base learner of 4..32 channels (a step 1.15x the plain UNet's instead of 1.4x);
  ``default_batchnorm``: the learners with batch norm instead of MONAI's default instance norm (the fusion
  blocks have batch norm), against ``unet_batchnorm_same_time``, the UNet with batch norm too;
  ``default_meta12``: a meta learner of 12..96 channels (with its 2 residual units: the whole ensemble near one
  UNet step); ``default_schedule``: the default at the bundle's own schedule (60 + 4 x 10 = 100 epochs, not the
  external check's 40), against ``unet_schedule_time``;
- ``default_0.5.0``: the 0.5.0 default (both of the above); ``default_0.5.0_base4``: with a base learner of
  4..32 channels;
- ``default_0.4.0``: the 0.4.0 default (the base learner with a residual unit, fused at every level);
  ``default_0.4.0_float``: that without quantization and without the diversity loss (``--quantization float
  --alpha 0``);
- ``four_learners``: the 0.3.0 default (3 base learners at 4/5/6 bits and a meta learner, all UNets 8..64);
- ``four_learners_float``, ``four_learners_lr_5e-3``, ``four_learners_include_bg``: that network float without the
  diversity loss, at the earlier learning rate, with the background channel in the Dice loss;
- ``old_default``: the 0.1.0 defaults (4 CE-Net learners 8..64, ensemble mean, 64^2 / 48^3 crops, lr 5e-3);
- ``unet_same_time``: the plain UNet at the default's CPU time (and ``unet_same_epochs`` from the same run);
  ``unet_<variant>_time``: at that variant's CPU time.

Output in ``--out`` (default ``runs/wallclock``, gitignored): one JSON per (task, seed), written after
every variant (a rerun continues where it stopped), and ``wallclock.json`` with all runs and the paired
differences, which :func:`write_report` turns into ``docs/results_wallclock.md`` and its figure.

Usage::

    python benchmarks/wallclock_benchmark.py                 # 3 tasks x 3 seeds, 2 workers x 1 thread
    python benchmarks/wallclock_benchmark.py --quick         # checks the harness (1 task, 1 seed, 2 epochs)
    python benchmarks/wallclock_benchmark.py --step-times    # one training step of each network, interleaved
    python benchmarks/wallclock_benchmark.py --tasks mr2d_real_split --variants default unet_same_time default_0.5.0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slices import mean_sd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TASKS: dict[str, dict[str, Any]] = {
    "mr2d": {"dims": 2, "num_classes": 2, "data": "mr", "num_train": 24, "num_test": 12, "difficulty": 0.6},
    "mr2d_3class": {"dims": 2, "num_classes": 3, "data": "mr", "num_train": 24, "num_test": 12, "difficulty": 0.6},
    # the external check's split (about 90 training / 23 validation / 38 test slices) on the same kind of images
    "mr2d_real_split": {"dims": 2, "num_classes": 2, "data": "mr", "num_train": 113, "num_test": 38, "difficulty": 0.6},
    "mr2d_3class_real_split": {
        "dims": 2,
        "num_classes": 3,
        "data": "mr",
        "num_train": 113,
        "num_test": 38,
        "difficulty": 0.6,
    },
    "spheres3d": {
        "dims": 3,
        "num_classes": 2,
        "data": "spheres",
        "num_train": 10,
        "num_test": 4,
        "size": 48,
        "difficulty": 0.7,
    },
}
#: The 0.5.0 default's training: a 16-bit meta learner (frozen step by step with the base learner) and the
#: learning rate halved at each quantization step.
V050 = {"quantization": "qme_net", "lr_decay_per_step": 0.5}
#: The 0.4.0 default's network: its base learner had a residual unit and every level was fused.
V040 = {**V050, "network_def#backbone_kwargs#num_res_units": 1, "network_def#fusion_roles": None}
#: The 0.3.0 default's network: four learners of 8..64 (the meta learner sized as the base learners).
FOUR_LEARNERS = {**V040, "network_def#num_learners": 4, "network_def#meta_kwargs": {}}
#: Config overrides per bundle variant (``#`` paths as in MONAI configs); dims-specific ones by key 2 / 3.
VARIANTS: dict[str, dict[Any, Any]] = {
    "default": {},
    "default_16bit_meta": {"quantization": "qme_net"},
    "default_lr_halving": {"lr_decay_per_step": 0.5},
    "default_meta_res1": {"network_def#meta_kwargs#num_res_units": 1},
    "default_meta_res0": {"network_def#meta_kwargs#num_res_units": 0},
    "default_residual_fusion": {"network_def#fusion_residual": True},
    "default_relu": {"network_def#backbone_kwargs#act": "relu"},
    "default_residual_relu": {"network_def#fusion_residual": True, "network_def#backbone_kwargs#act": "relu"},
    "default_float_relu": {"quantization": "float", "network_def#backbone_kwargs#act": "relu"},
    "default_fusion_instance": {"network_def#norm": "instance"},
    "default_fuse_bottleneck": {"network_def#fusion_roles": ["bottleneck"]},
    "default_lean": {
        "network_def#fusion_roles": ["bottleneck"],
        "network_def#backbone_kwargs#channels": [4, 8, 16, 32],
    },
    "default_batchnorm": {"network_def#backbone_kwargs#norm": "batch"},
    "default_meta12": {"network_def#meta_kwargs#channels": [12, 24, 48, 96]},
    "default_schedule": {"epochs": 60, "epochQ": 10},
    "default_0.5.0": V050,
    "default_0.5.0_base4": {**V050, "network_def#backbone_kwargs#channels": [4, 8, 16, 32]},
    "default_0.4.0": V040,
    "default_0.4.0_float": {**V040, "quantization": "float", "alpha": 0.0},
    "four_learners": FOUR_LEARNERS,
    "four_learners_float": {**FOUR_LEARNERS, "quantization": "float", "alpha": 0.0},
    "four_learners_lr_5e-3": {**FOUR_LEARNERS, "learning_rate": 0.005},
    "four_learners_include_bg": {**FOUR_LEARNERS, "loss#seg_loss#include_background": True},
    "old_default": {
        **FOUR_LEARNERS,
        "learning_rate": 0.005,
        "network_def#backbone": "cenet",
        "network_def#backbone_kwargs": {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]},
        "network_def#output": "mean",
        2: {"roi_size": [64, 64], "num_samples": 4},
        3: {"roi_size": [48, 48, 48], "num_samples": 2},
    },
}
#: The plain UNet's runs: result name -> the bundle variant whose CPU time it is given.
UNET_BUDGETS = {
    "unet_same_time": "default",
    "unet_meta_res1_time": "default_meta_res1",
    "unet_meta_res0_time": "default_meta_res0",
    "unet_residual_fusion_time": "default_residual_fusion",
    "unet_relu_time": "default_relu",
    "unet_residual_relu_time": "default_residual_relu",
    "unet_float_relu_time": "default_float_relu",
    "unet_fuse_bottleneck_time": "default_fuse_bottleneck",
    "unet_lean_time": "default_lean",
    "unet_batchnorm_same_time": "default_batchnorm",
    "unet_meta12_time": "default_meta12",
    "unet_schedule_time": "default_schedule",
    "unet_0.5.0_time": "default_0.5.0",
    "unet_0.5.0_base4_time": "default_0.5.0_base4",
    "unet_0.4.0_time": "default_0.4.0",
    "unet_four_learners_time": "four_learners",
}
#: UNet runs with other arguments than :data:`UNET`'s.
UNET_KWARGS = {"unet_batchnorm_same_time": {"norm": "batch"}}
#: UNet runs whose trajectory is not ``unet_same_time``'s (other arguments or another equal-epoch count): their
#: equal-epoch score is kept under its own name instead of ``unet_same_epochs``.
OWN_SAME_EPOCHS = {
    "unet_batchnorm_same_time": "unet_batchnorm_same_epochs",
    "unet_schedule_time": "unet_schedule_epochs",
}
SCHEDULES = {"full": {"epochs": 24, "epochQ": 4}, "quick": {"epochs": 1, "epochQ": 1}}
#: How a UNet run's CPU time is counted: 2 = start-up, config, caching and validation counted as the bundle's
#: are (results without the key were counted from the first training step, without validation).
ACCOUNTING = 2
UNET = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2, "learning_rate": 2e-3}


def make_data(task: str, root: Path, quick: bool) -> str:
    """Generate the task's data set once (atomically); return its dataset.json."""
    from qddens_monai.data import write_demo_3d, write_demo_mr_2d

    cfg = dict(TASKS[task])
    if quick:
        cfg.update(num_train=6, num_test=2)
    name = f"data_{task}_{cfg['num_train']}_{cfg['num_test']}"
    out = root / name
    if (out / "dataset.json").is_file():
        return str(out / "dataset.json")
    tmp = root / f".{name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if cfg["data"] == "mr":
        write_demo_mr_2d(
            tmp, cfg["num_train"], cfg["num_test"], num_classes=cfg["num_classes"], difficulty=cfg["difficulty"], seed=0
        )
    else:
        write_demo_3d(
            tmp,
            cfg["num_train"],
            cfg["num_test"],
            size=cfg["size"],
            num_classes=cfg["num_classes"],
            difficulty=cfg["difficulty"],
            seed=0,
        )
    # the datalist names absolute paths under tmp: rewrite them for the final folder
    text = (tmp / "dataset.json").read_text().replace(str(tmp), str(out))
    (tmp / "dataset.json").write_text(text)
    try:
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out / "dataset.json")


def overrides_for(task: str, variant: str, seed: int, data_json: str, run_dir: Path, schedule: dict) -> dict[str, Any]:
    cfg = TASKS[task]
    over: dict[str, Any] = {
        "dataset_dir": str(Path(data_json).parent),
        "demo_dir": str(run_dir / "no_demo"),
        "output_dir": str(run_dir / "eval"),
        "ckpt_dir": str(run_dir / "models"),
        "in_channels": 1,
        "modality": "mr",
        "num_classes": cfg["num_classes"],
        "seed": seed,
        **schedule,
    }
    for k, v in VARIANTS.get(variant, {}).items():
        if isinstance(k, int):
            if k == cfg["dims"]:
                over.update(v)
        else:
            over[k] = v
    if schedule == SCHEDULES["quick"]:  # the harness check keeps its 2-epoch schedule for every variant
        over.update(schedule)
    return over


def config_files(bundle: Path, dims: int) -> list[str]:
    files = [str(bundle / "configs" / "train.json")]
    return files + [str(bundle / "configs" / "3d.json")] if dims == 3 else files


def run_child(cmd: list[str], **kwargs: Any) -> tuple[int, float]:
    """Run ``cmd`` at one torch thread; return its exit code and CPU seconds (user + system)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, **kwargs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc.returncode, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def train_bundle(bundle: Path, dims: int, over: dict[str, Any], log_file: Path) -> float:
    """Run the real bundle runner; return the child's CPU seconds (user + system)."""
    override_file = log_file.with_suffix(".overrides.json")
    override_file.write_text(json.dumps(over, indent=1))
    files = config_files(bundle, dims) + [str(override_file)]
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        json.dumps(files),
        "--bundle_root",
        str(bundle),
    ]
    with open(log_file, "w") as log:
        returncode, cpu = run_child(cmd, cwd=bundle, stdout=log, stderr=subprocess.STDOUT)
    if returncode != 0:
        raise RuntimeError(f"bundle training failed ({returncode}); see {log_file}")
    return cpu


def parser_for(bundle: Path, dims: int, over: dict[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files(bundle, dims))
    parser.update({"bundle_root": str(bundle), **over})
    return parser


def step_times(variants: list[str], reps: int = 12, batch: int = 6, size: int = 128) -> dict[str, dict[str, float]]:
    """Training-step time (forward, loss, backward, Adam) of each bundle variant's network and loss and of the
    plain UNet, interleaved in one process at one thread (so drift of the machine's speed hits all alike).

    2D binary, a batch of ``batch`` crops of ``size``^2 as the default plans for the MR-like tasks. Returns per
    name the median step in ms and its ratio to the UNet's (the first two repetitions are warm-up)."""
    import statistics

    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.set_num_threads(1)
    models = {}
    for v in variants:
        over = overrides_for("mr2d", v, 0, "unused.json", REPO, SCHEDULES["full"])
        # no data: the settings the network needs are given, so the plan reads none
        parser = parser_for(REPO / "bundle", 2, {**over, "dataset_json": None, "datalist": []})
        models[v] = (parser.get_parsed_content("network_def"), parser.get_parsed_content("loss"))
    unet = UNet(2, 1, 2, channels=UNET["channels"], strides=UNET["strides"], num_res_units=UNET["num_res_units"])
    models["unet"] = (unet, DiceCELoss(to_onehot_y=True, softmax=True))
    torch.manual_seed(0)
    x, y = torch.randn(batch, 1, size, size), (torch.rand(batch, 1, size, size) > 0.7).float()
    optimizers = {k: torch.optim.Adam(net.parameters(), lr=UNET["learning_rate"]) for k, (net, _) in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(reps):
        for k, (net, loss) in models.items():
            net.train()
            t = time.perf_counter()
            optimizers[k].zero_grad()
            loss(net(x), y).backward()
            optimizers[k].step()
            times[k].append(time.perf_counter() - t)
    median = {k: statistics.median(v[2:]) for k, v in times.items()}
    return {k: {"ms": 1000 * m, "ratio": m / median["unet"]} for k, m in median.items()}


def evaluate(
    network, parser, data_json: str, num_classes: int, items: Optional[list] = None, metrics=("dice", "hd95")
) -> dict[str, float]:
    """Dice / HD95 per foreground class on the test split (or ``items``): sliding window at the bundle's
    roi_size, argmax."""
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import Compose, EnsureTyped

    from qddens_monai.data import load_datalist
    from qddens_monai.evaluation import segmentation_metrics
    from qddens_monai.evaluation.metrics import label_one_hot

    prep = Compose(
        parser.get_parsed_content("train#deterministic_transforms")
        + [EnsureTyped(keys=["image", "label"], track_meta=False)]
    )
    roi = parser.get_parsed_content("plan#roi_size" if "plan" in parser.config else "roi_size")
    inferer = SlidingWindowInferer(roi, sw_batch_size=4, overlap=0.25)
    rows = []
    network.eval()
    with torch.no_grad():
        for item in load_datalist(data_json, "test") if items is None else items:
            d = prep(dict(item))
            prob = torch.softmax(inferer(d["image"][None], network), dim=1)[0]
            rows.append(segmentation_metrics(prob, label_one_hot(d["label"], num_classes, "softmax"), metrics=metrics))
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def score_bundle(bundle: Path, dims: int, over: dict[str, Any], data_json: str, num_classes: int) -> dict[str, Any]:
    """The trained bundle's final model.pt, scored with its configured output and (QME-Net) the other one."""
    import torch

    parser = parser_for(bundle, dims, over)
    net = parser.get_parsed_content("network_def")
    state = torch.load(Path(over["ckpt_dir"]) / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state) if isinstance(state, dict) and "model" in state else state)
    out: dict[str, Any] = {"params": int(sum(p.numel() for p in net.parameters()))}
    configured = getattr(net, "output", None)
    out.update(evaluate(net, parser, data_json, num_classes))
    if configured is not None:
        other = "mean" if configured == "meta" else "meta"
        net.output = other
        out.update({f"{other}_{k}": v for k, v in evaluate(net, parser, data_json, num_classes).items()})
        net.output = configured
        out["output"] = configured
    return out


def startup_cpu() -> float:
    """CPU seconds of a fresh python importing what a plain MONAI UNet training script imports."""
    code = (
        "import torch, ignite, monai; from monai.engines import SupervisedTrainer; from monai.networks.nets import UNet"
    )
    return run_child([sys.executable, "-c", code], check=True)[1]


def train_unet(
    bundle: Path,
    dims: int,
    over: dict[str, Any],
    data_json: str,
    num_classes: int,
    budget: float,
    equal_epochs: int,
    unet_kwargs: Optional[dict[str, Any]] = None,
) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """A plain MONAI UNet through the bundle's transforms, until ``budget`` CPU seconds.

    Counted as the bundle's run is: from reading the config, through caching the data set, to the end of
    training, with a validation pass (sliding window, Dice) on the bundle's validation split every
    ``val_interval`` epochs as a MONAI training script does, plus the CPU time a fresh python takes to import
    torch and MONAI's training parts (:func:`startup_cpu`). Returns its scores then, and when it completed
    ``equal_epochs`` (``None`` if it did not get that far). ``unet_kwargs`` are further ``UNet`` arguments
    (e.g. ``{"norm": "batch"}``)."""
    import torch
    from ignite.engine import Events
    from monai.data import CacheDataset, DataLoader
    from monai.engines import SupervisedTrainer
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.utils import set_determinism

    t0 = time.process_time() - startup_cpu()
    parser = parser_for(bundle, dims, over)
    set_determinism(seed=int(over["seed"]))
    val_items, val_interval = parser.get_parsed_content("val_datalist"), parser.get_parsed_content("val_interval")
    ds = CacheDataset(
        parser.get_parsed_content("train_datalist"),
        parser.get_parsed_content("train#preprocessing"),
        cache_rate=1.0,
        num_workers=0,
        progress=False,
    )
    loader = DataLoader(ds, batch_size=parser.get_parsed_content("batch_size"), shuffle=True, num_workers=0)
    net = UNet(
        dims,
        1,
        num_classes,
        channels=UNET["channels"],
        strides=UNET["strides"],
        num_res_units=UNET["num_res_units"],
        **(unet_kwargs or {}),
    )
    opt = torch.optim.Adam(net.parameters(), lr=UNET["learning_rate"])
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=10**6,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
    )
    state: dict[str, Any] = {"eval_cpu": 0.0}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _budget(engine) -> None:
        if time.process_time() - t0 - state["eval_cpu"] >= budget:
            engine.terminate()

    @trainer.on(Events.EPOCH_COMPLETED(every=val_interval))
    def _validate(engine) -> None:  # counted: the bundle validates at the same interval
        evaluate(net, parser, data_json, num_classes, items=val_items, metrics=("dice",))
        net.train()

    @trainer.on(Events.EPOCH_COMPLETED)
    def _equal_epochs(engine) -> None:
        if engine.state.epoch == equal_epochs:
            t = time.process_time()
            state["same_epochs"] = evaluate(net, parser, data_json, num_classes)
            state["same_epochs"].update(cpu_s=t - t0 - state["eval_cpu"], accounting=ACCOUNTING)
            state["eval_cpu"] += time.process_time() - t
            net.train()

    trainer.run()
    result = evaluate(net, parser, data_json, num_classes)
    result.update(
        cpu_s=time.process_time() - t0 - state["eval_cpu"],
        epochs=trainer.state.epoch,
        params=int(sum(p.numel() for p in net.parameters())),
        accounting=ACCOUNTING,
    )
    return result, state.get("same_epochs")


def run_job(task: str, seed: int, out_dir: str, quick: bool, variants: list[str]) -> dict[str, Any]:
    """``variants`` of one task and seed; each result is merged into the (task, seed) job file as it finishes."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    out = Path(out_dir)
    bundle = out / "bundle"
    job_file = out / "runs" / f"{task}_seed{seed}.json"
    job = json.loads(job_file.read_text()) if job_file.is_file() else {"task": task, "seed": seed, "variants": {}}
    dims, num_classes = TASKS[task]["dims"], TASKS[task]["num_classes"]
    schedule = SCHEDULES["quick" if quick else "full"]

    def epochs_of(over: dict[str, Any]) -> int:
        return int(over["epochs"]) + 4 * int(over["epochQ"])  # the float phase and 4 quantization steps

    data_json = make_data(task, out, quick)

    def save() -> None:  # another worker may be adding other variants of this task and seed: merge under a lock
        import fcntl

        with open(job_file.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            on_disk = json.loads(job_file.read_text()) if job_file.is_file() else {"variants": {}}
            job["variants"] = {**on_disk["variants"], **job["variants"]}
            tmp = job_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(job, indent=1))
            os.replace(tmp, job_file)

    def run_variant(variant: str) -> None:
        run_dir = out / "work" / f"{task}_seed{seed}_{variant}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        over = overrides_for(task, variant, seed, data_json, run_dir, schedule)
        cpu = train_bundle(bundle, dims, over, run_dir / "train.log")
        result = score_bundle(bundle, dims, over, data_json, num_classes)
        result.update(cpu_s=cpu, epochs=epochs_of(over))
        job["variants"][variant] = result
        save()
        print(f"[{task} seed {seed}] {variant}: dice {result['dice']:.3f} in {cpu:.0f} CPU s", flush=True)
        shutil.rmtree(run_dir / "eval" / "checkpoints", ignore_errors=True)

    def run_unet(name: str) -> None:
        run_dir = out / "work" / f"{task}_seed{seed}_{name}"
        run_dir.mkdir(parents=True, exist_ok=True)
        reference = UNET_BUDGETS[name]
        over = overrides_for(task, reference, seed, data_json, run_dir, schedule)
        budget = job["variants"][reference]["cpu_s"]
        kwargs = UNET_KWARGS.get(name)
        same_time, same_epochs = train_unet(bundle, dims, over, data_json, num_classes, budget, epochs_of(over), kwargs)
        job["variants"][name] = same_time
        if same_epochs is not None and name in OWN_SAME_EPOCHS:
            job["variants"][OWN_SAME_EPOCHS[name]] = same_epochs
        elif same_epochs is not None:  # one seeded trajectory: the same at every budget
            job["variants"].setdefault("unet_same_epochs", same_epochs)
        save()
        print(
            f"[{task} seed {seed}] {name}: dice {same_time['dice']:.3f} in {same_time['cpu_s']:.0f} CPU s, "
            f"{same_time['epochs']} epochs",
            flush=True,
        )

    for variant in variants:
        if variant not in job["variants"]:
            run_unet(variant) if variant in UNET_BUDGETS else run_variant(variant)
    return job


def paired(jobs: list[dict], task: str, a: str, b: str, key: str = "dice") -> dict[str, float]:
    """Mean and sd over seeds of ``a - b`` (same task and seed)."""
    d = [
        j["variants"][a][key] - j["variants"][b][key]
        for j in jobs
        if j["task"] == task and a in j["variants"] and b in j["variants"]
    ]
    return {**mean_sd(d), "n": len(d)} if d else {}


def _cell(st: dict[str, Any], key: str, n: int, f: str = "{:.3f}") -> str:
    """``mean ± sd`` of one statistic of a variant (``–`` when missing; no sd for one seed)."""
    if key not in st:
        return "–"
    return f.format(st[key]["mean"]) + (" ± " + f.format(st[key]["sd"]) if n > 1 else "")


def summarize(jobs: list[dict]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for task in TASKS:
        tj = [j for j in jobs if j["task"] == task]
        if not tj:
            continue
        names = sorted({v for j in tj for v in j["variants"]})
        stats = {}
        for v in names:
            keys = sorted(
                {
                    k
                    for j in tj
                    if v in j["variants"]
                    for k, x in j["variants"][v].items()
                    if isinstance(x, (int, float))
                }
            )
            stats[v] = {k: mean_sd([j["variants"][v][k] for j in tj if k in j["variants"].get(v, {})]) for k in keys}
        diffs = {
            f"{a} - {b}": paired(tj, task, a, b)
            for a, b in (
                ("default", "unet_same_time"),
                ("default", "unet_same_epochs"),
                ("default", "default_0.5.0"),
                ("default", "default_16bit_meta"),
                ("default", "default_lr_halving"),
                ("default_residual_fusion", "unet_residual_fusion_time"),
                ("default_relu", "unet_relu_time"),
                ("default_residual_relu", "unet_residual_relu_time"),
                ("default_float_relu", "unet_float_relu_time"),
                ("default_float_relu", "default_relu"),
                ("default_fusion_instance", "default"),
                ("default_lean", "unet_lean_time"),
                ("default_lean", "default"),
                ("default_fuse_bottleneck", "unet_fuse_bottleneck_time"),
                ("default_fuse_bottleneck", "default"),
                ("default_batchnorm", "unet_same_time"),
                ("default", "unet_batchnorm_same_time"),
                ("default_batchnorm", "unet_batchnorm_same_time"),
                ("default_batchnorm", "unet_batchnorm_same_epochs"),
                ("default_batchnorm", "default"),
                ("unet_batchnorm_same_epochs", "unet_same_epochs"),
                ("default_meta12", "unet_meta12_time"),
                ("default_meta12", "default"),
                ("default_schedule", "unet_schedule_time"),
                ("default_schedule", "unet_schedule_epochs"),
                ("default_residual_fusion", "default"),
                ("default_relu", "default"),
                ("default_residual_relu", "default"),
                ("default_residual_relu", "default_residual_fusion"),
                ("default_meta_res1", "unet_meta_res1_time"),
                ("default_meta_res0", "unet_meta_res0_time"),
                ("default_meta_res1", "default"),
                ("default_meta_res0", "default"),
                ("default_0.5.0", "unet_0.5.0_time"),
                ("default_0.5.0_base4", "unet_0.5.0_base4_time"),
                ("default_0.5.0_base4", "default_0.5.0"),
                ("default_0.5.0", "default_0.4.0"),
                ("default_0.4.0", "unet_0.4.0_time"),
                ("default_0.4.0", "unet_same_epochs"),
                ("default_0.4.0_float", "default_0.4.0"),
                ("four_learners", "unet_four_learners_time"),
                ("four_learners", "old_default"),
                ("four_learners_float", "four_learners"),
                ("four_learners_lr_5e-3", "four_learners"),
                ("four_learners_include_bg", "four_learners"),
            )
        }
        for v in ("default", "default_0.5.0", "default_0.4.0", "four_learners"):
            meta_mean = [
                j["variants"][v]["dice"] - j["variants"][v]["mean_dice"]
                for j in tj
                if "mean_dice" in j["variants"].get(v, {})
            ]
            if meta_mean:
                diffs[f"{v}: meta - mean output"] = {**mean_sd(meta_mean), "n": len(meta_mean)}
        summary[task] = {"stats": stats, "paired": {k: v for k, v in diffs.items() if v}}
    return summary


LABELS = {
    "default": "bundle default (0.6.0: 0.5.0 with a float meta learner and a constant learning rate)",
    "default_16bit_meta": "default with the meta learner at 16 bits, quantized step by step (QME-Net)",
    "default_lr_halving": "default with the learning rate halved at each quantization step",
    "default_residual_fusion": "default with the residual fusion (gate from zero)",
    "default_relu": "default with ReLU learners",
    "default_residual_relu": "default with the residual fusion and ReLU learners",
    "default_float_relu": "default with ReLU learners and no quantization",
    "default_fusion_instance": "default with instance norm in the fusion blocks",
    "default_fuse_bottleneck": "default fused at the bottleneck only",
    "default_lean": "default fused at the bottleneck only, base learner 4..32",
    "default_batchnorm": "default with batch norm in the learners",
    "default_meta12": "default with a meta learner of 12..96 channels",
    "default_schedule": "default at its own schedule (60 + 4 x 10 epochs)",
    "default_meta_res1": "default with a meta learner of 1 residual unit per level",
    "default_meta_res0": "default with a meta learner without residual units",
    "default_0.5.0": "0.5.0 default (16-bit meta learner, learning rate halved at each step)",
    "default_0.5.0_base4": "0.5.0 default with a base learner of 4..32 channels",
    "default_0.4.0": "0.4.0 default (base with a residual unit, fused at every level)",
    "default_0.4.0_float": "0.4.0 default without quantization and diversity loss",
    "four_learners": "0.3.0 default (4 UNet learners 8..64, quantized)",
    "four_learners_float": "0.3.0 default without quantization and diversity loss",
    "four_learners_lr_5e-3": "0.3.0 default at lr 5e-3",
    "four_learners_include_bg": "0.3.0 default with the background channel in the Dice loss",
    "old_default": "0.1.0 default (4 CE-Net learners, mean, small crops)",
    "unet_same_time": "plain MONAI UNet, the default's CPU time",
    "unet_residual_fusion_time": "plain MONAI UNet, default_residual_fusion's CPU time",
    "unet_relu_time": "plain MONAI UNet, default_relu's CPU time",
    "unet_residual_relu_time": "plain MONAI UNet, default_residual_relu's CPU time",
    "unet_float_relu_time": "plain MONAI UNet, default_float_relu's CPU time",
    "unet_fuse_bottleneck_time": "plain MONAI UNet, default_fuse_bottleneck's CPU time",
    "unet_lean_time": "plain MONAI UNet, default_lean's CPU time",
    "unet_batchnorm_same_time": "MONAI UNet with batch norm, default_batchnorm's CPU time",
    "unet_batchnorm_same_epochs": "MONAI UNet with batch norm, same epochs",
    "unet_meta12_time": "plain MONAI UNet, default_meta12's CPU time",
    "unet_schedule_time": "plain MONAI UNet, default_schedule's CPU time",
    "unet_schedule_epochs": "plain MONAI UNet, default_schedule's epochs",
    "unet_meta_res1_time": "plain MONAI UNet, default_meta_res1's CPU time",
    "unet_meta_res0_time": "plain MONAI UNet, default_meta_res0's CPU time",
    "unet_0.5.0_time": "plain MONAI UNet, the 0.5.0 default's CPU time",
    "unet_0.5.0_base4_time": "plain MONAI UNet, default_0.5.0_base4's CPU time",
    "unet_0.4.0_time": "plain MONAI UNet, the 0.4.0 default's CPU time",
    "unet_four_learners_time": "plain MONAI UNet, the 0.3.0 default's CPU time",
    "unet_same_epochs": "plain MONAI UNet, same epochs",
}

#: Variants drawn in colour in the figure (the rest are grey dots).
FIGURE_VARIANTS = (
    "default",
    "unet_same_time",
    "unet_same_epochs",
    "default_schedule",
    "unet_schedule_time",
    "unet_batchnorm_same_time",
)


def write_report(result: dict[str, Any], docs: Path) -> Path:
    """``docs/results_wallclock.md`` and ``docs/images/wallclock.png`` from the benchmark's JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, jobs, sched = result["summary"], result["jobs"], result["schedule"]
    order = [v for v in LABELS if any(v in s["stats"] for s in summary.values())]
    lines = [
        "# Results: the bundle's defaults against a plain MONAI UNet at the same CPU time",
        "",
        "Reproduce: `python benchmarks/wallclock_benchmark.py` (resumable; `--report` rewrites this page from "
        "`runs/wallclock/wallclock.json`). "
        + f"Machine: {result['machine']}"
        + (f"; last invocation {result['wall_s'] / 60:.0f} min." if np.isfinite(result.get("wall_s", np.nan)) else "."),
        "",
        f"Schedule of every bundle variant: `--epochs {sched['epochs']} --epochQ {sched['epochQ']}` "
        f"({sched['epochs'] + 4 * sched['epochQ']} epochs, the external check's budget), except `default_schedule`: "
        "the bundle's own 60 + 4 x 10. The plain UNet "
        f"(channels {result['unet']['channels']}, {result['unet']['num_res_units']} residual units, DiceCE, Adam "
        f"{result['unet']['learning_rate']}) trains through the bundle's own transforms until it has used the "
        "CPU time of its reference: the default's (`unet_same_time`) or another variant's (`unet_<variant>_time`); "
        "`unet_same_epochs` is the same trajectory scored at the bundle's epoch count. Both are counted alike: the "
        "bundle from its process start (imports, config, data caching, validation and its figures), the UNet from "
        "the CPU a fresh python takes to import torch and MONAI, through reading the config and caching the data, "
        "with a validation pass every `val_interval` epochs. Rows marked † are older UNet runs counted from their "
        "first training step, without validation (5-10 % more epochs for the UNet). "
        "Test Dice of the final weights, mean ± sd over seeds; differences paired per seed.",
        "",
    ]
    for task, s in summary.items():
        cfg = result["tasks"][task]
        lines += [
            f"## {task}",
            "",
            f"`{json.dumps(cfg)}`",
            "",
            "| variant | Dice | HD95 | CPU s | epochs | params | seeds |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in order:
            st = s["stats"].get(v)
            if not st:
                continue
            n = sum(1 for j in jobs if j["task"] == task and v in j["variants"])
            per_class = [k for k in st if k.startswith("dice_")]
            dice = _cell(st, "dice", n) + (
                " (" + ", ".join(f"{k[5:]}: {st[k]['mean']:.3f}" for k in per_class) + ")" if per_class else ""
            )
            params = f"{st['params']['mean']:,.0f}" if "params" in st else "–"
            older = v.startswith("unet_") and any(
                j["variants"][v].get("accounting") != ACCOUNTING
                for j in jobs
                if j["task"] == task and v in j["variants"]
            )
            lines.append(
                f"| {LABELS[v]}{' †' if older else ''} | {dice} | {_cell(st, 'hd95', n, '{:.1f}')} | "
                f"{_cell(st, 'cpu_s', n, '{:.0f}')} | "
                f"{_cell(st, 'epochs', n, '{:.0f}')} | {params} | {n} |"
            )
        lines += ["", "| paired difference (Dice) | mean ± sd | seeds |", "|---|---|---|"]
        for k, d in s["paired"].items():
            sd = f" ± {d['sd']:.3f}" if d.get("n", 0) > 1 else ""
            lines.append(f"| {k} | {d['mean']:+.3f}{sd} | {d.get('n', '')} |")
        lines.append("")
    # the default and its opponents in colour, every other variant as a grey dot (their rows are in the tables)
    shown = [v for v in FIGURE_VARIANTS if v in order]
    legend_rows = -(-(len(shown) + 1) // 3)
    height = 4.6 + 0.2 * legend_rows
    fig, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), height), squeeze=False)
    colours = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(shown)}
    for ax, task in zip(axes[0], summary):
        for v in [v for v in order if v not in colours] + shown:
            runs = [j["variants"][v] for j in jobs if j["task"] == task and v in j["variants"]]
            if runs:
                x, y = [r.get("cpu_s", np.nan) for r in runs], [r["dice"] for r in runs]
                if v in colours:
                    ax.scatter(x, y, label=LABELS[v], s=34, color=colours[v], zorder=3)
                else:
                    ax.scatter(x, y, label="other variants (see the tables)", s=10, color="0.75", zorder=2)
        ax.set_title(task)
        ax.set_xlabel("training CPU seconds (1 thread)")
        ax.set_ylabel("test Dice")
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for ax in axes[0] for h in ax.collections}
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, (0.2 * legend_rows + 0.15) / height, 1, 1))
    (docs / "images").mkdir(parents=True, exist_ok=True)
    fig.savefig(docs / "images" / "wallclock.png", dpi=90)
    lines += ["![Dice against CPU time](images/wallclock.png)", ""]
    page = docs / "results_wallclock.md"
    page.write_text("\n".join(lines))
    return page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "wallclock"))
    ap.add_argument("--quick", action="store_true", help="1 task, 1 seed, 2-epoch float phase: checks the harness")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--variants",
        nargs="+",
        default=[*VARIANTS, *UNET_BUDGETS],
        choices=[*VARIANTS, *UNET_BUDGETS],
        help="run only these (a UNet run needs its reference variant's CPU time: run both, or that one first)",
    )
    ap.add_argument(
        "--docs", default=None, help="write results_wallclock.md and the figure here (default: the repo's docs/)"
    )
    ap.add_argument("--report", action="store_true", help="only rewrite the report from --out's wallclock.json")
    ap.add_argument(
        "--step-times",
        nargs="*",
        choices=list(VARIANTS),
        metavar="VARIANT",
        help="only time one training step of these variants (default: the default and the cheaper meta learners) "
        "and of the UNet, interleaved",
    )
    args = ap.parse_args()
    if args.step_times is not None:
        for name, t in step_times(args.step_times or ["default", "default_meta_res1", "default_meta_res0"]).items():
            print(f"{name:20s} {t['ms']:7.1f} ms  {t['ratio']:.2f}x the UNet's step")
        return
    out = Path(args.out).resolve()
    docs = Path(args.docs) if args.docs else REPO / "docs"
    if args.report:  # from the job files written so far (an unfinished run included)
        jobs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
        previous = json.loads((out / "wallclock.json").read_text()) if (out / "wallclock.json").is_file() else {}
        result = {**previous, "jobs": jobs, "summary": summarize(jobs)}
        result.setdefault("machine", f"{platform.machine()}, {os.cpu_count()} cores, 1 torch thread per job")
        result.setdefault("wall_s", float("nan"))
        variants = {k: {str(kk): vv for kk, vv in v.items()} for k, v in VARIANTS.items()}
        result.update(tasks=TASKS, variants=variants, unet=UNET, schedule=SCHEDULES["full"])
        (out / "wallclock.json").write_text(json.dumps(result, indent=1))
        print(f"wrote {write_report(result, docs)}")
        return
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if not (out / "bundle").is_dir():  # a snapshot: editing the repo's configs mid-run changes nothing here
        shutil.copytree(REPO / "bundle" / "configs", out / "bundle" / "configs")
    tasks, seeds = (["mr2d"], [0]) if args.quick else (args.tasks, args.seeds)
    # the default and its equal-time opponent for every task and seed first, then the other variants, one by one
    phases = [
        ["default", "unet_same_time"],
        ["default_residual_fusion", "unet_residual_fusion_time"],
        ["default_residual_relu", "unet_residual_relu_time"],
        ["default_relu", "unet_relu_time"],
        ["default_float_relu", "unet_float_relu_time"],
        ["default_fusion_instance"],
        ["default_lean", "unet_lean_time"],
        ["default_fuse_bottleneck", "unet_fuse_bottleneck_time"],
        ["default_batchnorm", "unet_batchnorm_same_time"],
        ["default_meta12", "unet_meta12_time"],
        ["default_schedule", "unet_schedule_time"],
        ["default_meta_res1", "unet_meta_res1_time"],
        ["default_meta_res0", "unet_meta_res0_time"],
        ["default_16bit_meta"],
        ["default_lr_halving"],
        ["default_0.5.0", "unet_0.5.0_time"],
        ["default_0.5.0_base4", "unet_0.5.0_base4_time"],
        ["default_0.4.0", "unet_0.4.0_time"],
        ["default_0.4.0_float"],
        ["four_learners", "unet_four_learners_time"],
        ["four_learners_float"],
        ["four_learners_lr_5e-3"],
        ["four_learners_include_bg"],
        ["old_default"],
    ]
    phases = [[v for v in phase if v in args.variants] for phase in phases]
    phases = [phase for phase in phases if phase]
    jobs_args = [(t, s, phase) for phase in phases for s in seeds for t in tasks]
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = [pool.submit(run_job, t, s, str(out), args.quick, phase) for t, s, phase in jobs_args]
        for f in as_completed(futures):
            f.result()
    # every job file in --out: earlier invocations' tasks and variants stay in the report
    jobs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1 per job, {args.workers} workers",
        "wall_s": time.time() - t0,
        "quick": args.quick,
        "tasks": {t: TASKS[t] for t in TASKS if any(j["task"] == t for j in jobs)},
        "variants": {k: {str(kk): vv for kk, vv in v.items()} for k, v in VARIANTS.items()},
        "unet": UNET,
        "schedule": SCHEDULES["quick" if args.quick else "full"],
        "jobs": sorted(jobs, key=lambda j: (j["task"], j["seed"])),
        "summary": summarize(jobs),
    }
    (out / "wallclock.json").write_text(json.dumps(result, indent=1))
    if not args.quick or args.docs:
        print(f"wrote {write_report(result, docs)}")
    for task, s in result["summary"].items():
        print(task)
        for v, st in s["stats"].items():
            cpu = st.get("cpu_s", {}).get("mean", float("nan"))
            print(f"  {v:18s} dice {st['dice']['mean']:.3f} ± {st['dice']['sd']:.3f}  cpu {cpu:.0f} s")
        for k, d in s["paired"].items():
            print(f"  {k:32s} {d['mean']:+.3f}" + (f" ± {d['sd']:.3f}" if "sd" in d else ""))
    print(f"wrote {out / 'wallclock.json'} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
