"""Does the method deliver? QME-Net variants against plain MONAI baselines, same data, splits, seeds, budget.

Seven variants are trained and evaluated on a hard 2D vessel set (the demo generator at
``difficulty`` 0.7: thin, faint, branching vessels, noise, uneven illumination, FOV mask) and a
hard 3D set (MONAI's synthetic spheres at ``difficulty`` 0.7: more and smaller spheres, noise
overlapping their intensity, a bias field), for several seeds:

1. ``unet``: one float MONAI ``UNet`` trained with ``DiceCELoss`` (what a MONAI user has today);
2. ``uniform_ensemble``: K = 4 such UNets trained independently (seeds ``s, s+1000, ...``; the first
   is variant 1's network), probabilities averaged with MONAI's ``MeanEnsemble``;
3. ``qmenet_float``: QME-Net, float, alpha = 0;
4. ``qmenet_quant``: + diverse quantization (``"qme_net"`` preset: base learners 4/5/6 bits, meta 16 bits,
   incremental schedule);
5. ``qmenet_quant_div``: + deep diversity loss, faithful form (alpha 0.005, the public code's value), and
   ``qmenet_quant_div_bounded``: the bounded cosine form (alpha 0.05, not tuned);
6. ``student``: one UNet distilled from variant 5 (faithful) with ``EnsembleDistillationLoss``;
7. ``unet_5bit``: variant 1's network quantized at 5 bits with the same incremental schedule;
8. ``qmenet_cenet``: for reference, variant 5 with the bundle's default learners (CE-Net, channels 8..64).

Every QME-Net learner of variants 3-5 is the *same* MONAI ``UNet`` as the baseline (the bundle's default
CE-Net learners did not train at this budget in an earlier run; variant 8 measures them). Every variant gets
the same optimizer (Adam, lr 0.005), the same number of epochs and the same learning-rate halving at the epochs where
the quantized variants take their quantization steps, the same augmentation, and the final weights
are evaluated (no model selection). Training goes through MONAI's ``SupervisedTrainer`` with the
package's ``EnsembleLoss`` / ``DeepDiversityLoss`` / ``IncrementalQuantizationHandler`` /
``DistillationNetwork`` / ``EnsembleDistillationLoss``; metrics are the package's
``segmentation_metrics`` / ``disagreement_matrices`` (Dice, HD95 and AUC inside the FOV in 2D).

Per run: Dice, HD95, AUC, pairwise learner disagreement (fraction of voxels whose labels differ;
QME-Net: between its 3 base learners; uniform ensemble: between its 4 members), training time,
inference time per image, parameter count and stored size (float: ``torch.save`` of the state dict;
quantized: ``save_packed`` at the learners' bit widths). Output in ``--out`` (default
``runs/results``, gitignored): one JSON per (data set, seed) as soon as it finishes (a rerun skips
finished ones), ``results.json`` (all runs + mean and sd over seeds), ``results.md``, plots and the
README section via :mod:`results_doc`.

Usage::

    python benchmarks/results_benchmark.py            # the full comparison (about 40 min on 2 CPU cores)
    python benchmarks/results_benchmark.py --quick    # checks the harness in a few minutes, not the science
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

#: Variants in the order of the table (name, label in plots / tables).
VARIANTS: list[tuple[str, str]] = [
    ("unet", "1 UNet (float)"),
    ("uniform_ensemble", "2 uniform ensemble (4 UNets)"),
    ("qmenet_float", "3 QME-Net float, alpha 0"),
    ("qmenet_quant", "4 + diverse quantization"),
    ("qmenet_quant_div", "5 + diversity loss (faithful)"),
    ("qmenet_quant_div_bounded", "5b + diversity loss (bounded)"),
    ("student", "6 distilled student of 5"),
    ("unet_5bit", "7 UNet 5-bit"),
    ("qmenet_cenet", "8 bundle default (5 with CE-Nets)"),
]
#: Variants that need no other variant's network: a finished job file lacking them gets them added.
INDEPENDENT_VARIANTS = ("qmenet_cenet",)

#: Data and schedule per setting and data set. ``fp_epochs + len(portions) * epochs_per_step`` epochs for all.
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "seeds": [0, 1, 2],
        "2d": {
            "num_train": 16,
            "num_test": 6,
            "size": 96,
            "difficulty": 0.7,
            "batch_size": 4,
            "fp_epochs": 18,
            "epochs_per_step": 3,
            "portions": [0.3, 0.6, 0.8, 1.0],
        },
        "3d": {
            "num_train": 8,
            "num_test": 4,
            "size": 32,
            "difficulty": 0.7,
            "batch_size": 2,
            "fp_epochs": 18,
            "epochs_per_step": 3,
            "portions": [0.3, 0.6, 0.8, 1.0],
        },
    },
    "quick": {
        "seeds": [0, 1],
        "2d": {
            "num_train": 4,
            "num_test": 2,
            "size": 64,
            "difficulty": 0.7,
            "batch_size": 2,
            "fp_epochs": 1,
            "epochs_per_step": 1,
            "portions": [0.5, 1.0],
        },
        "3d": {
            "num_train": 2,
            "num_test": 1,
            "size": 32,
            "difficulty": 0.7,
            "batch_size": 2,
            "fp_epochs": 1,
            "epochs_per_step": 1,
            "portions": [0.5, 1.0],
        },
    },
}
COMMON = {
    "learning_rate": 0.005,
    "lr_decay_per_step": 0.5,
    "num_learners": 4,
    "unet": {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1},
    "cenet": {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]},  # the bundle's default learners
    "alpha_faithful": 0.005,
    "alpha_bounded": 0.05,
    "distill_alpha": 0.5,
    "temperature": 1.0,
    "unet_bits": 5,
    "data_seed": 0,
}


def _setup_threads() -> None:
    # One torch thread per worker: the machine's cores are shared.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------- data


def make_dataset(dims: int, cfg: dict[str, Any], root: Path, data_seed: int) -> str:
    """Generate (once) the hard 2D or 3D set under ``root``; return its dataset.json."""
    from qddens_monai.data import write_demo_2d, write_demo_3d

    out = root / f"data_{dims}d_{cfg['size']}_{cfg['num_train']}_{cfg['num_test']}_d{cfg['difficulty']}"
    datalist = out / "dataset.json"
    if datalist.is_file():
        return str(datalist)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=root))
    kw = {k: cfg[k] for k in ("num_train", "num_test", "size", "difficulty")}
    (write_demo_2d if dims == 2 else write_demo_3d)(tmp, seed=data_seed, **kw)
    try:
        os.replace(tmp, out)  # atomic: the other worker may have written it meanwhile
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return str(datalist)


def load_cases(dims: int, datalist: str) -> tuple[list[dict], list[dict]]:
    """Training and test cases, read through the bundle's loaders and normalisation, as tensors in memory."""
    from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged

    from qddens_monai.data import check_datalist, intensity_normalization, label_transform, load_datalist

    keys = ["image", "label", "mask"] if dims == 2 else ["image", "label"]
    in_channels = 3 if dims == 2 else 1
    load = Compose(
        [LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)]
        + label_transform(keys[1:])
        + intensity_normalization("rgb" if dims == 2 else "mr")
        + [EnsureTyped(keys, track_meta=False)]
    )
    out = []
    for split in ("training", "test"):
        items = check_datalist(load_datalist(datalist, split), spatial_dims=dims, in_channels=in_channels)
        out.append([load(dict(item)) for item in items])
    return out[0], out[1]


def train_loader(cases: list[dict], dims: int, batch_size: int, seed: int):
    """Whole images / volumes, random flips and 90-degree rotations (the bundle's augmentation, no crop)."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, RandFlipd, RandRotate90d

    keys = ["image", "label"]
    aug = Compose(
        [RandFlipd(keys, prob=0.5, spatial_axis=0), RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=(0, 1))]
    )
    aug.set_random_state(seed)
    data = [{"image": c["image"], "label": c["label"]} for c in cases]
    import torch

    gen = torch.Generator().manual_seed(seed)
    return DataLoader(Dataset(data, aug), batch_size=batch_size, shuffle=True, num_workers=0, generator=gen)


# ----------------------------------------------------------------------------------------------- networks


def make_unet(dims: int):
    from monai.networks.nets import UNet

    c = COMMON["unet"]
    return UNet(
        dims, 3 if dims == 2 else 1, 2, channels=c["channels"], strides=c["strides"], num_res_units=c["num_res_units"]
    )


def make_qmenet(dims: int, quantization: str, portions: list[float], probe: int, backbone: str = "unet"):
    from qddens_monai.networks import QMENet

    return QMENet(
        spatial_dims=dims,
        in_channels=3 if dims == 2 else 1,
        out_channels=2,
        num_learners=COMMON["num_learners"],
        backbone=backbone,
        backbone_kwargs=dict(COMMON[backbone]),
        quantization=quantization,
        portions=portions,
        output="mean",
        probe_size=probe,
    )


def seg_loss():
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)


# ----------------------------------------------------------------------------------------------- training


def schedule_handler(
    network, optimizer, fp_epochs: int, epochs_per_step: int, steps: int, quantized: bool, lr_decay: float
):
    """The trainer handler of the incremental schedule: quantization steps with lr resets and decays for a
    quantized network, or for a float one the same lr decays at the same epochs (like with like)."""
    import torch
    from monai.handlers import LrScheduleHandler

    from qddens_monai.handlers import IncrementalQuantizationHandler

    if quantized:  # the quantization steps come with the lr halvings
        return IncrementalQuantizationHandler(
            network, fp_epochs, epochs_per_step, optimizer=optimizer, reset_lr=True, lr_decay=lr_decay
        )
    milestones = [fp_epochs + i * epochs_per_step for i in range(steps)]
    return LrScheduleHandler(torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, lr_decay), print_lr=False)


def train(network, loss, loader, cfg: dict[str, Any], quantized: bool) -> float:
    """Train with MONAI's SupervisedTrainer; the same epochs and lr halvings for every variant. Returns seconds."""
    import torch
    from monai.engines import SupervisedTrainer

    trainable = [p for p in network.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=COMMON["learning_rate"])
    steps = len(cfg["portions"])
    epochs = cfg["fp_epochs"] + steps * cfg["epochs_per_step"]
    handler = schedule_handler(
        network, opt, cfg["fp_epochs"], cfg["epochs_per_step"], steps, quantized, COMMON["lr_decay_per_step"]
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=opt,
        loss_function=loss,
        decollate=False,
        train_handlers=[handler],
    )
    t0 = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t0
    loss_value = float(trainer.state.output["loss"])
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"training diverged: final loss {loss_value}")
    return seconds


# ----------------------------------------------------------------------------------------------- evaluation


def stored_bytes(network, quantized: bool) -> int:
    """Bytes on disk: packed codes at the learners' bit widths if quantized, else the float state dict."""
    import torch

    from qddens_monai.quantization import save_packed

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model")
        if quantized:
            return save_packed(network, path).file_bytes
        torch.save(network.state_dict(), path)
        return os.path.getsize(path)


def parameter_count(network, quantized: bool) -> int:
    from qddens_monai.quantization import freeze

    net = freeze(copy.deepcopy(network)) if quantized else network
    return int(sum(p.numel() for p in net.parameters()))


def evaluate(
    predict: Callable, infer: Callable, cases: list[dict], dims: int
) -> tuple[dict[str, float], list[dict], Any]:
    """Metrics of ``predict(image) -> (output prob (C, *S), learner probs (K, C, *S) or None, extra members)``.

    ``infer(image)`` is what a user runs (the network's or the ensemble's output only): it is what is timed.
    Returns the per-image means, the per-image rows and the first case's probability map (for the overlay).
    """
    import torch

    from qddens_monai.evaluation import disagreement_matrices, segmentation_metrics
    from qddens_monai.evaluation.metrics import inside_mask, label_one_hot

    rows, first, times = [], None, []
    for case in cases:
        x = case["image"][None]
        with torch.no_grad():
            t0 = time.perf_counter()
            infer(x)
            times.append(time.perf_counter() - t0)
            prob, learners, extra = predict(x)
        label_oh = label_one_hot(case["label"], 2, "softmax")
        inside = inside_mask(case["mask"], prob.shape[1:]) if "mask" in case else None
        row = segmentation_metrics(prob, label_oh, inside, metrics=("dice", "hd95", "auc"))
        for name, p in (extra or {}).items():
            row[f"{name}_dice"] = segmentation_metrics(p, label_oh, inside, metrics=("dice",))["dice"]
        if learners is not None:
            agree, _ = disagreement_matrices(learners, inside)
            k = agree.shape[0]
            row["disagreement"] = float(np.mean([agree[i, j] for i in range(k) for j in range(i + 1, k)]))
        rows.append(row)
        if first is None:
            first = prob[1].float().numpy() if dims == 2 else prob[1, :, :, prob.shape[-1] // 2].float().numpy()
    means = {k: float(np.nanmean([r.get(k, float("nan")) for r in rows])) for k in rows[0]}
    means["infer_ms"] = 1000.0 * float(np.median(times))
    return means, rows, first


def softmax(z):
    import torch

    return torch.softmax(z, dim=1)


# ----------------------------------------------------------------------------------------------- one job


def run_job(dims: int, seed: int, setting: str, out_dir: str) -> dict[str, Any]:
    """All variants on one data set for one seed; writes and returns ``{variant: metrics}``.

    A finished job is not recomputed; one that lacks only :data:`INDEPENDENT_VARIANTS` (added later) gets them.
    """
    _setup_threads()
    from monai.utils import set_determinism

    from qddens_monai.losses import DeepDiversityLoss, EnsembleLoss

    out = Path(out_dir).resolve()
    job_file = out / "runs" / f"{dims}d_seed{seed}.json"
    overlay_file = out / "runs" / f"{dims}d_seed{seed}_overlay.npz"
    names = [n for n, _ in VARIANTS]
    existing = json.loads(job_file.read_text()) if job_file.is_file() else None
    if existing is not None and all(n in existing["variants"] for n in names):
        return existing
    cfg = SETTINGS[setting][f"{dims}d"]
    datalist = make_dataset(dims, cfg, out, COMMON["data_seed"])
    train_cases, test_cases = load_cases(dims, datalist)
    t_job = time.perf_counter()
    results: dict[str, Any] = {}
    overlays: dict[str, np.ndarray] = {}

    def log(msg: str) -> None:
        print(f"[{dims}d seed {seed} {time.perf_counter() - t_job:6.0f}s] {msg}", flush=True)

    def loader(s: int):
        return train_loader(train_cases, dims, cfg["batch_size"], s)

    def record(
        name: str,
        network,
        quantized: bool,
        seconds: float,
        predict: Callable,
        params: int,
        size: int,
        infer: Optional[Callable] = None,
    ):
        network.eval()
        means, rows, first = evaluate(predict, infer or network, test_cases, dims)
        results[name] = {**means, "train_s": seconds, "params": params, "stored_bytes": size, "per_image": rows}
        overlays[name] = first
        log(f"{name}: dice {means['dice']:.3f} auc {means['auc']:.3f} train {seconds:.0f}s")

    def single(net):
        return lambda x: (softmax(net(x))[0], None, None)

    if existing is None:
        core_variants(seed, cfg, dims, loader, record, single)
    # 8: the bundle's default learners (CE-Net 8..64), otherwise variant 5.
    if "qmenet_cenet" not in (existing or {}).get("variants", {}):
        set_determinism(seed)
        net_q = make_qmenet(dims, "qme_net", cfg["portions"], cfg["size"], backbone="cenet")
        loss = EnsembleLoss(seg_loss=seg_loss(), alpha=COMMON["alpha_faithful"], diversity=DeepDiversityLoss())
        seconds = train(net_q, loss, loader(seed), cfg, quantized=True)
        record(
            "qmenet_cenet",
            net_q,
            True,
            seconds,
            qme_predictor(net_q),
            parameter_count(net_q, True),
            stored_bytes(net_q, True),
        )

    if existing is not None:  # add the new variants to the finished job
        results.update(existing["variants"])
        with np.load(overlay_file) as old:
            overlays.update({k: old[k] for k in old.files if k not in ("image", "label")})
    results = {n: results[n] for n in names if n in results}
    seconds_total = time.perf_counter() - t_job + (existing or {}).get("seconds", 0.0)
    job = {"dims": dims, "seed": seed, "seconds": seconds_total, "variants": results}
    job_file.parent.mkdir(parents=True, exist_ok=True)
    tmp_npz = overlay_file.with_name(overlay_file.stem + ".tmp.npz")
    np.savez_compressed(
        tmp_npz,
        image=_overlay_image(test_cases[0], dims),
        label=_overlay_label(test_cases[0], dims),
        **{k: v.astype(np.float16) for k, v in overlays.items()},
    )
    os.replace(tmp_npz, overlay_file)
    tmp = job_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(job, indent=1))
    os.replace(tmp, job_file)  # a finished job only: partial writes never look finished
    log(f"done in {job['seconds']:.0f}s")
    return job


def qme_predictor(net) -> Callable:
    """QME-Net's output (the mean of its K learners), its base learners (for the disagreement) and each member."""

    def predict(x):
        learners = net.probabilities(x)[:, 0]  # (K, C, *S)
        prob = softmax(net(x))[0]  # the network's own eval output
        extra = {"meta": learners[-1], "base_mean": learners[:-1].mean(0)}
        extra.update({f"base_{i}": p for i, p in enumerate(learners[:-1])})
        return prob, learners[:-1], extra

    return predict


def core_variants(seed: int, cfg: dict, dims: int, loader: Callable, record: Callable, single: Callable) -> None:
    """Variants 1-7 (the student needs variant 5's network, so they run together)."""
    import torch
    from monai.transforms import MeanEnsemble
    from monai.utils import set_determinism

    from qddens_monai.losses import DeepDiversityLoss, EnsembleDistillationLoss, EnsembleLoss
    from qddens_monai.networks import DistillationNetwork
    from qddens_monai.quantization import quantize_network

    # 1 + 2: four independently trained float UNets; the first is the single baseline.
    members, member_s = [], []
    for k in range(COMMON["num_learners"]):
        set_determinism(seed + 1000 * k)
        net = make_unet(dims)
        member_s.append(train(net, seg_loss(), loader(seed + 1000 * k), cfg, quantized=False))
        members.append(net.eval())
        if k == 0:
            record("unet", net, False, member_s[0], single(net), parameter_count(net, False), stored_bytes(net, False))
    mean_ensemble = MeanEnsemble()

    def uniform(x):
        probs = [softmax(m(x))[0] for m in members]
        return mean_ensemble(probs), torch.stack(probs), None

    record(
        "uniform_ensemble",
        members[0],
        False,
        sum(member_s),
        uniform,
        sum(parameter_count(m, False) for m in members),
        sum(stored_bytes(m, False) for m in members),
        infer=lambda x: mean_ensemble([softmax(m(x)) for m in members]),
    )

    # 3-5: QME-Net with UNet learners.
    qme_specs = [
        ("qmenet_float", "float", 0.0, "faithful"),
        ("qmenet_quant", "qme_net", 0.0, "faithful"),
        ("qmenet_quant_div", "qme_net", COMMON["alpha_faithful"], "faithful"),
        ("qmenet_quant_div_bounded", "qme_net", COMMON["alpha_bounded"], "cosine"),
    ]
    teacher = None
    for name, quantization, alpha, form in qme_specs:
        set_determinism(seed)
        net_q = make_qmenet(dims, quantization, cfg["portions"], cfg["size"])
        loss = EnsembleLoss(seg_loss=seg_loss(), alpha=alpha, diversity=DeepDiversityLoss(form=form))
        quantized = quantization != "float"
        seconds = train(net_q, loss, loader(seed), cfg, quantized=quantized)
        record(
            name,
            net_q,
            quantized,
            seconds,
            qme_predictor(net_q),
            parameter_count(net_q, quantized),
            stored_bytes(net_q, quantized),
        )
        if name == "qmenet_quant_div":
            teacher = net_q

    # 6: a UNet distilled from variant 5 (faithful diversity).
    set_determinism(seed)
    student = make_unet(dims)
    distill = DistillationNetwork(student, teacher)
    kd = EnsembleDistillationLoss(
        seg_loss=seg_loss(),
        alpha=COMMON["distill_alpha"],
        temperature=COMMON["temperature"],
        teacher_is_probability=True,
    )
    seconds = train(distill, kd, loader(seed), cfg, quantized=False)
    record(
        "student",
        student,
        False,
        seconds,
        single(student),
        parameter_count(student, False),
        stored_bytes(student, False),
    )

    # 7: the baseline UNet quantized at 5 bits with the same incremental schedule and epochs.
    set_determinism(seed)
    net7 = make_unet(dims)
    quantize_network(
        net7, method="log_minmax", bits=COMMON["unet_bits"], partition="two_stage", portions=cfg["portions"], seed=seed
    )
    seconds = train(net7, seg_loss(), loader(seed), cfg, quantized=True)
    record("unet_5bit", net7, True, seconds, single(net7), parameter_count(net7, True), stored_bytes(net7, True))


def _overlay_image(case: dict, dims: int) -> np.ndarray:
    img = case["image"].float().numpy()
    return np.moveaxis(img, 0, -1) if dims == 2 else img[0, :, :, img.shape[-1] // 2]


def _overlay_label(case: dict, dims: int) -> np.ndarray:
    lab = case["label"][0].numpy()
    return lab if dims == 2 else lab[:, :, lab.shape[-1] // 2]


# ----------------------------------------------------------------------------------------------- summary

SUMMARY_METRICS = (
    "dice",
    "hd95",
    "auc",
    "disagreement",
    "meta_dice",
    "base_mean_dice",
    "base_0_dice",
    "base_1_dice",
    "base_2_dice",
    "train_s",
    "infer_ms",
    "params",
    "stored_bytes",
)


def summarize(jobs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{dataset: {variant: {metric: {"mean", "sd", "n", "values"}}}}`` over seeds (sd: sample sd, ddof 1)."""
    out: dict[str, Any] = {}
    for dims in sorted({j["dims"] for j in jobs}):
        ds = out.setdefault(f"{dims}d", {})
        for name, _ in VARIANTS:
            per = ds.setdefault(name, {})
            for metric in SUMMARY_METRICS:
                vals = [j["variants"][name].get(metric) for j in jobs if j["dims"] == dims and name in j["variants"]]
                vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
                if vals:
                    per[metric] = {
                        "mean": float(np.mean(vals)),
                        "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan"),
                        "n": len(vals),
                        "values": vals,
                    }
    return out


def machine() -> dict[str, Any]:
    import monai
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "torch_threads_per_worker": 1,
        "python": platform.python_version(),
    }


def write_results(out: Path, setting: str, jobs: list[dict], workers: int, wall: float, complete: bool) -> Path:
    jobs = sorted(jobs, key=lambda j: (j["dims"], j["seed"]))
    payload = {
        "command": "python benchmarks/results_benchmark.py" + (" --quick" if setting == "quick" else ""),
        "setting": setting,
        "complete": complete,
        "machine": machine(),
        "workers": workers,
        "wall_seconds": wall,
        "settings": SETTINGS[setting],
        "common": COMMON,
        "variants": dict(VARIANTS),
        "summary": summarize(jobs),
        "runs": [{k: v for k, v in j.items()} for j in jobs],
    }
    path = out / "results.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and 3 epochs: checks the harness only")
    parser.add_argument("--out", default="runs/results", help="output folder (default runs/results, gitignored)")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes, 1 torch thread each")
    parser.add_argument("--dims", default="2,3", help="data sets to run: 2, 3 or 2,3")
    parser.add_argument(
        "--docs",
        default=None,
        help=(
            "also write docs/results.md, figures and the README section into this repository root "
            "(see results_doc.py)"
        ),
    )
    args = parser.parse_args(argv)
    setting = "quick" if args.quick else "full"
    out = Path(args.out).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    dims_list = [int(d) for d in args.dims.split(",")]
    tasks = [(d, s) for s in SETTINGS[setting]["seeds"] for d in dims_list]
    print(f"{len(tasks)} jobs ({setting}), {args.workers} workers, output {out}", flush=True)
    t0 = time.perf_counter()
    jobs, failed = [], []
    ctx = __import__("multiprocessing").get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        futures = {pool.submit(run_job, d, s, setting, str(out)): (d, s) for d, s in tasks}
        for fut in as_completed(futures):
            d, s = futures[fut]
            try:
                jobs.append(fut.result())
            except Exception as e:  # report it, keep the other jobs' results
                failed.append((d, s, repr(e)))
                print(f"job {d}d seed {s} FAILED: {e!r}", flush=True)
            write_results(out, setting, jobs, args.workers, time.perf_counter() - t0, complete=False)
    path = write_results(out, setting, jobs, args.workers, time.perf_counter() - t0, complete=not failed)
    print(f"wrote {path} ({len(jobs)}/{len(tasks)} jobs, {time.perf_counter() - t0:.0f}s)", flush=True)
    sys.path.insert(0, str(Path(__file__).parent))
    import results_doc

    results_doc.write_report(path, out, repo_root=args.docs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
