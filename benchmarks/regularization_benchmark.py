"""Is low-bit quantization a regularizer? Float against quantized networks where float over-fits.

The QNT paper (Xu et al. 2018) trains FCNs with incremental 5-bit quantization to *reduce over-fitting*
on a small training set and reports higher accuracy than float. This benchmark builds the regime where
that could show: few training images (default 6 MR-like 2D slices, ``qddens_monai.data.phantoms``, flips
only), a long schedule (``fp_epochs + 4 x epochs_per_step``, default 250 epochs), and the test Dice on 38
held-out slices recorded every ``--eval_every`` epochs, so the curves show whether the float model's test
Dice falls and whether the quantized ones hold it.

Variants (the same data, seeds, epochs, Adam lr 2e-3 and lr halvings at the same epochs for all):

- ``unet_float``: a plain MONAI ``UNet`` (channels 16..128, 2 residual units: the bundle default's meta
  learner and the wall-clock benchmark's opponent);
- ``unet_inq5``: the same network quantized at 5 bits, power-of-two weights, incremental (INQ) schedule
  (``quantize_network(method="power_of_two", bits=5)``): the QNT setting;
- ``qmenet``: the bundle's 0.4.0 default ensemble network (``bundle/configs/train.json#network_def`` with
  :data:`NETWORK_0_4_0`: one 4-bit base learner 8..64 with a residual unit, a 16-bit meta learner 16..128, fused
  at every level) with its loss;
- ``qmenet_float``: the same without quantization and without the diversity term.

Every network is scored by one function: whole-slice inference, argmax, Dice of the foreground (the meta
learner's output for QME-Net), on the test slices and on the training slices (the over-fitting gap).

Output in ``--out`` (default ``runs/regularization``, gitignored): one JSON per (variant, seed) as it finishes
(a rerun skips finished ones), ``regularization.json`` with all curves and paired differences, and with
``--docs`` the page ``results_regularization.md`` and the figure ``images/regularization.png``.

Usage::

    python benchmarks/regularization_benchmark.py --docs docs     # 4 variants x 3 seeds, 2 workers x 1 thread
    python benchmarks/regularization_benchmark.py --quick         # checks the harness (tiny data, 4 epochs)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slices import PORTIONS, collect, load_slices, mean_sd, run_jobs, slice_data, slice_trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["unet_float", "unet_inq5", "qmenet", "qmenet_float"]
LABELS = {
    "unet_float": "plain UNet 16..128, float",
    "unet_inq5": "same UNet, 5-bit INQ (QNT)",
    "qmenet": "0.4.0 default QME-Net (4-bit base, 16-bit meta)",
    "qmenet_float": "same QME-Net, float, no diversity term",
}
SETTINGS = {
    "full": {
        "num_train": 6,
        "num_test": 38,
        "shape": [200, 232],
        "fp_epochs": 150,
        "epochs_per_step": 25,
        "eval_every": 10,
    },
    "quick": {"num_train": 2, "num_test": 2, "shape": [64, 64], "fp_epochs": 2, "epochs_per_step": 1, "eval_every": 2},
}
#: The network measured (the 0.4.0 default), pinned so a rerun measures it whatever the current default is.
NETWORK_0_4_0 = {"network_def#backbone_kwargs#num_res_units": 1, "network_def#fusion_roles": None}
LEARNING_RATE, LR_DECAY, BATCH_SIZE, DIFFICULTY = 2e-3, 0.5, 2, 0.6


def make_network(variant: str):
    """The variant's network and its training loss."""
    from monai.bundle import ConfigParser
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from qddens_monai.config import load_bundle_configs
    from qddens_monai.quantization import quantize_network

    if variant.startswith("unet"):
        net = UNet(2, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2)
        if variant == "unet_inq5":
            quantize_network(net, method="power_of_two", bits=5, portions=PORTIONS)
        return net, DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    parser = ConfigParser()
    parser.read_config(load_bundle_configs([REPO / "bundle" / "configs" / "train.json"]))
    parser["in_channels"], parser["num_classes"], parser["portions"] = 1, 2, PORTIONS
    parser["dataset_json"], parser["datalist"] = None, []  # the settings are given: no data set to plan from
    for key, value in NETWORK_0_4_0.items():
        parser[key] = value
    if variant == "qmenet_float":
        parser["quantization"], parser["alpha"] = "float", 0.0
    return parser.get_parsed_content("network_def"), parser.get_parsed_content("loss")


def dice(network, cases: list[dict[str, Any]]) -> float:
    """Mean foreground Dice (:func:`~qddens_monai.evaluation.segmentation_metrics`, argmax) over whole slices."""
    import torch

    from qddens_monai.evaluation import segmentation_metrics
    from qddens_monai.evaluation.metrics import label_one_hot

    network.eval()
    scores = []
    with torch.no_grad():
        for case in cases:
            prob = torch.softmax(network(case["image"][None])[0], 0)
            truth = label_one_hot(case["label"], 2, "softmax")
            scores.append(segmentation_metrics(prob, truth, metrics=("dice",))["dice"])
    network.train()
    return float(np.nanmean(scores))


def run(variant: str, seed: int, data_json: str, cfg: dict[str, Any], out_file: Path) -> dict[str, Any]:
    """Train one variant for one seed; record the test and training Dice every ``eval_every`` epochs."""
    import torch
    from ignite.engine import Events
    from monai.utils import set_determinism

    from qddens_monai.files import atomic_write_text
    from qddens_monai.quantization import is_quantization_complete

    torch.set_num_threads(1)
    set_determinism(seed)
    train_cases, test_cases = load_slices(data_json, "training"), load_slices(data_json, "test")
    network, loss = make_network(variant)
    quantized = variant in ("unet_inq5", "qmenet")
    schedule = (cfg["fp_epochs"], cfg["epochs_per_step"])
    trainer = slice_trainer(network, loss, train_cases, schedule, quantized, seed, LEARNING_RATE, LR_DECAY, BATCH_SIZE)
    curve: dict[str, list] = {"epoch": [], "test_dice": [], "train_dice": []}

    @trainer.on(Events.EPOCH_COMPLETED(every=cfg["eval_every"]))
    def _score(engine) -> None:
        curve["epoch"].append(engine.state.epoch)
        curve["test_dice"].append(dice(network, test_cases))
        curve["train_dice"].append(dice(network, train_cases))

    t0 = time.process_time()
    trainer.run()
    result = {"variant": variant, "seed": seed, "cpu_s": time.process_time() - t0, **curve}
    result["quantization_complete"] = is_quantization_complete(network) if quantized else None
    result.update(final_test_dice=curve["test_dice"][-1], best_test_dice=max(curve["test_dice"]))
    atomic_write_text(out_file, json.dumps(result, indent=1))
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd over seeds of the final and best test Dice, and each variant's final Dice paired with float."""
    out: dict[str, Any] = {}
    for v in VARIANTS:
        rs = [r for r in runs if r["variant"] == v]
        if rs:
            out[v] = {key: mean_sd([r[key] for r in rs]) for key in ("final_test_dice", "best_test_dice", "cpu_s")}
            out[v]["final_gap"] = mean_sd([r["train_dice"][-1] - r["test_dice"][-1] for r in rs])
            out[v]["seeds"] = len(rs)
    paired = {}
    for a, b in (("unet_inq5", "unet_float"), ("qmenet", "qmenet_float"), ("qmenet", "unet_float")):
        d = [
            ra["final_test_dice"] - rb["final_test_dice"]
            for ra in runs
            for rb in runs
            if ra["variant"] == a and rb["variant"] == b and ra["seed"] == rb["seed"]
        ]
        if d:
            paired[f"{a} - {b}"] = {**mean_sd(d), "n": len(d)}
    return {"stats": out, "paired": paired}


def write_report(result: dict[str, Any], docs: Path) -> Path:
    """``results_regularization.md`` and ``images/regularization.png`` from the benchmark's JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (docs / "images").mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, 1, figsize=(7, 4))
    for v in VARIANTS:
        rs = [r for r in result["runs"] if r["variant"] == v]
        if rs:
            test = np.array([r["test_dice"] for r in rs])
            ax.plot(rs[0]["epoch"], test.mean(0), label=LABELS[v])
            ax.fill_between(rs[0]["epoch"], test.min(0), test.max(0), alpha=0.15)
    cfg = result["setting"]
    for e in [cfg["fp_epochs"] + i * cfg["epochs_per_step"] for i in range(len(PORTIONS))]:
        ax.axvline(e, color="grey", lw=0.5, ls=":")
    ax.set(xlabel="epoch", ylabel="test Dice (mean, min-max over seeds)", title="few training slices, long schedule")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(docs / "images" / "regularization.png", dpi=100)
    plt.close(fig)

    s = result["summary"]
    lines = [
        "# Is low-bit quantization a regularizer?",
        "",
        f"Generated by `benchmarks/regularization_benchmark.py` ({result['machine']}). "
        f"{cfg['num_train']} MR-like 2D training slices ({cfg['shape'][0]} x {cfg['shape'][1]}), "
        f"{cfg['num_test']} test slices, {cfg['fp_epochs']} float epochs + {len(PORTIONS)} x {cfg['epochs_per_step']} "
        "(quantization steps or, for float variants, the same lr halvings); Adam 2e-3; test Dice of the "
        "foreground on whole slices. CPU s: training and the scoring every "
        f"{cfg['eval_every']} epochs. Mean ± sd over seeds; differences paired per seed.",
        "",
        "| variant | final test Dice | best test Dice on the way | train − test Dice at the end | CPU s | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for v, st in s["stats"].items():
        cells = [f"{st[k]['mean']:.3f} ± {st[k]['sd']:.3f}" for k in ("final_test_dice", "best_test_dice", "final_gap")]
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + f" | {st['cpu_s']['mean']:.0f} | {st['seeds']} |")
    lines += ["", "| paired difference (final test Dice) | mean ± sd | seeds |", "|---|---|---|"]
    for k, d in s["paired"].items():
        lines.append(f"| {k} | {d['mean']:+.3f} ± {d['sd']:.3f} | {d['n']} |")
    lines += ["", "![test Dice over epochs](images/regularization.png)", ""]
    page = docs / "results_regularization.md"
    page.write_text("\n".join(lines))
    return page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "regularization"))
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny data and 4 epochs: checks the harness only")
    ap.add_argument("--docs", default=None, help="write results_regularization.md and the figure here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = SETTINGS["quick" if args.quick else "full"]
    out = Path(args.out).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    data_json = slice_data(out, cfg, DIFFICULTY)
    t0 = time.time()
    jobs = [(v, s) for s in args.seeds for v in args.variants if not (out / "runs" / f"{v}_seed{s}.json").is_file()]
    files = [(v, s, data_json, cfg, out / "runs" / f"{v}_seed{s}.json") for v, s in jobs]
    run_jobs(
        run,
        files,
        args.workers,
        lambda r: f"{r['variant']} seed {r['seed']}: final test Dice {r['final_test_dice']:.3f}",
    )
    result = collect(out, "regularization.json", cfg, args.workers, t0, summarize)
    if args.docs:
        print(f"wrote {write_report(result, Path(args.docs))}")
    for v, st in result["summary"]["stats"].items():
        print(
            f"  {v:14s} final {st['final_test_dice']['mean']:.3f} ± {st['final_test_dice']['sd']:.3f}"
            f"  best {st['best_test_dice']['mean']:.3f}  gap {st['final_gap']['mean']:+.3f}"
        )
    for k, d in result["summary"]["paired"].items():
        print(f"  {k:26s} {d['mean']:+.3f} ± {d['sd']:.3f}")


if __name__ == "__main__":
    main()
