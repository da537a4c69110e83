"""Which diversity term makes the base learners differ, and does it help the fused output?

Issue 17, question 3. The published four-learner QME-Net (3 base learners 8..64 at 4 / 5 / 6 bits, a 16-bit
meta learner 8..64, fused at every level: the bundle's ``network_def`` with :data:`PUBLISHED_SHAPE`) is trained
on MR-like 2D slices with one diversity term per variant, everything else equal (data, seeds, epochs, Adam
2e-3, the incremental quantization schedule with its lr halvings, flips):

- ``none``: alpha 0 (no diversity term);
- ``faithful``: the papers' feature loss, public-code alpha 0.005 (with the saturation safeguard);
- ``cosine``: the bounded feature form, alpha 0.05;
- ``ncl_features``: negative-correlation spread of the features over their energy, alpha 0.05;
- ``ncl_output_<alpha>``: negative correlation learning as the ensemble literature uses it, the ambiguity of the
  base learners' *probabilities* (``DeepDiversityLoss(form="ambiguity", inputs="probabilities")``), alpha 0.5, 2,
  10 and 50 (the ambiguity of learners that mostly agree is small, about 0.01, against a DiceCE of about 0.3 per
  learner).

On the test slices (whole slices, eval mode) every run records the Dice of the meta output, of the mean of the K
learners and of each base learner; how often the base learners' labels disagree (fraction of voxels, mean over
pairs); the ambiguity of their probabilities; and the diversity of their features at every level, measured by one
scale-free yardstick for all variants (the ``ncl`` form: spread over energy, in [0, 1]).

Output in ``--out`` (default ``runs/diversity``, gitignored): one JSON per (variant, seed) as it finishes (a rerun
skips finished ones), ``diversity.json`` with the runs and paired differences against ``none``, and with ``--docs``
the page ``results_diversity.md``.

Usage::

    python benchmarks/diversity_benchmark.py --docs docs     # 8 variants x 3 seeds, 2 workers x 1 thread
    python benchmarks/diversity_benchmark.py --quick         # checks the harness (tiny data, 4 epochs)
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
#: ``network_def`` overrides of the published shape: 4 learners of one size, fused at every level.
PUBLISHED_SHAPE = {
    "network_def#num_learners": 4,
    "network_def#meta_kwargs": {},
    "network_def#backbone_kwargs#num_res_units": 1,
    "network_def#fusion_roles": None,
}
#: variant -> (alpha, DeepDiversityLoss arguments)
VARIANTS: dict[str, tuple[float, dict[str, Any]]] = {
    "none": (0.0, {}),
    "faithful": (0.005, {"form": "faithful"}),
    "cosine": (0.05, {"form": "cosine"}),
    "ncl_features": (0.05, {"form": "ncl"}),
    "ncl_output_0.5": (0.5, {"form": "ambiguity", "inputs": "probabilities"}),
    "ncl_output_2": (2.0, {"form": "ambiguity", "inputs": "probabilities"}),
    "ncl_output_10": (10.0, {"form": "ambiguity", "inputs": "probabilities"}),
    "ncl_output_50": (50.0, {"form": "ambiguity", "inputs": "probabilities"}),
}
SETTINGS = {
    "full": {"num_train": 24, "num_test": 12, "shape": [160, 160], "fp_epochs": 40, "epochs_per_step": 5},
    "quick": {"num_train": 2, "num_test": 2, "shape": [64, 64], "fp_epochs": 2, "epochs_per_step": 1},
}
LEARNING_RATE, LR_DECAY, BATCH_SIZE, DIFFICULTY = 2e-3, 0.5, 4, 0.6


def make_network(variant: str):
    """The four-learner network of the bundle's ``network_def`` and the variant's ``EnsembleLoss``."""
    from monai.bundle import ConfigParser

    from qddens_monai.config import load_bundle_configs

    alpha, div = VARIANTS[variant]
    parser = ConfigParser()
    parser.read_config(load_bundle_configs([REPO / "bundle" / "configs" / "train.json"]))
    parser["in_channels"], parser["num_classes"], parser["portions"] = 1, 2, PORTIONS
    parser["dataset_json"], parser["datalist"] = None, []  # the settings are given: no data set to plan from
    for key, value in PUBLISHED_SHAPE.items():
        parser[key] = value
    parser["alpha"] = alpha
    parser["loss#diversity"] = {"_target_": "qddens_monai.losses.DeepDiversityLoss", **div}
    return parser.get_parsed_content("network_def"), parser.get_parsed_content("loss")


def measure(network, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Dice of every output, base-learner disagreement and per-level feature diversity on whole slices."""
    import torch

    from qddens_monai.ensemble import learner_disagreement
    from qddens_monai.evaluation import segmentation_metrics
    from qddens_monai.evaluation.metrics import label_one_hot
    from qddens_monai.losses import DeepDiversityLoss

    yardstick = DeepDiversityLoss(form="ncl")
    ambiguity = DeepDiversityLoss(form="ambiguity", inputs="probabilities")
    rows: list[dict[str, Any]] = []
    network.eval()
    with torch.no_grad():
        for case in cases:
            logits, features = network.forward_learners(case["image"][None])
            probs = torch.stack([torch.softmax(x[0], 0) for x in logits])  # (K, C, H, W)
            truth = label_one_hot(case["label"], 2, "softmax")

            def dice(p: torch.Tensor) -> float:
                return float(segmentation_metrics(p, truth, metrics=("dice",))["dice"])

            levels = yardstick.per_level(features, levels=list(range(len(features[0]))))
            rows.append(
                {
                    "dice_meta": dice(probs[-1]),
                    "dice_mean": dice(probs.mean(0)),
                    "dice_base": float(np.mean([dice(p) for p in probs[:-1]])),
                    "disagreement": float(learner_disagreement(probs[:-1], measure="label").mean()),
                    "output_ambiguity": float(ambiguity({"logits": logits})),
                    "feature_diversity": [float(levels[i]) for i in sorted(levels)],
                }
            )
    network.train()
    out = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "feature_diversity"}
    out["feature_diversity"] = np.mean([r["feature_diversity"] for r in rows], axis=0).tolist()
    out["roles"] = list(network.level_roles)
    return out


def run(variant: str, seed: int, data_json: str, cfg: dict[str, Any], out_file: Path) -> dict[str, Any]:
    """Train one variant for one seed with MONAI's ``SupervisedTrainer``; measure it on the test slices."""
    import torch
    from monai.utils import set_determinism

    from qddens_monai.files import atomic_write_text

    torch.set_num_threads(1)
    set_determinism(seed)
    train_cases, test_cases = load_slices(data_json, "training"), load_slices(data_json, "test")
    network, loss = make_network(variant)
    schedule = (cfg["fp_epochs"], cfg["epochs_per_step"])
    trainer = slice_trainer(network, loss, train_cases, schedule, True, seed, LEARNING_RATE, LR_DECAY, BATCH_SIZE)
    t0 = time.process_time()
    trainer.run()
    result = {"variant": variant, "seed": seed, "cpu_s": time.process_time() - t0, **measure(network, test_cases)}
    atomic_write_text(out_file, json.dumps(result, indent=1))
    return result


SCALARS = ("dice_meta", "dice_mean", "dice_base", "disagreement", "output_ambiguity", "cpu_s")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd over seeds per variant, and every variant's difference to ``none`` paired per seed."""
    stats: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    base = {r["seed"]: r for r in runs if r["variant"] == "none"}
    for v in VARIANTS:
        rs = [r for r in runs if r["variant"] == v]
        if not rs:
            continue
        stats[v] = {k: mean_sd([r[k] for r in rs]) for k in SCALARS}
        stats[v]["feature_diversity"] = np.mean([r["feature_diversity"] for r in rs], axis=0).tolist()
        stats[v]["seeds"] = len(rs)
        pairs = [(r, base[r["seed"]]) for r in rs if r["seed"] in base and v != "none"]
        if pairs:
            paired[v] = {k: mean_sd([a[k] - b[k] for a, b in pairs]) for k in SCALARS if k != "cpu_s"}
            paired[v]["n"] = len(pairs)
    return {"stats": stats, "paired": paired}


def write_report(result: dict[str, Any], docs: Path) -> Path:
    """``results_diversity.md`` from the benchmark's JSON."""
    docs.mkdir(parents=True, exist_ok=True)
    s, cfg = result["summary"], result["setting"]
    roles = result["runs"][0]["roles"]
    lines = [
        "# Diversity: which term makes the base learners differ, and does it help?",
        "",
        f"Generated by `benchmarks/diversity_benchmark.py` ({result['machine']}). The published four-learner "
        f"QME-Net (3 base learners at 4 / 5 / 6 bits, meta 16 bits, UNets 8..64) on {cfg['num_train']} MR-like 2D "
        f"training slices ({cfg['shape'][0]} x {cfg['shape'][1]}), {cfg['num_test']} test slices; "
        f"{cfg['fp_epochs']} float epochs + {len(PORTIONS)} x {cfg['epochs_per_step']} quantization steps, Adam 2e-3, "
        "the same for every variant; mean ± sd over seeds, differences to `none` paired per seed. "
        "Disagreement: fraction of test voxels on which two base learners' labels differ (mean over pairs); "
        "output ambiguity: `(1/K) sum_k ||p_k - p_mean||^2` of the base learners' probabilities; feature diversity: "
        "the `ncl` yardstick (spread over energy, 0 = identical) per level, the same measure for every variant.",
        "",
        "| variant (alpha) | meta Dice | mean Dice | base Dice | disagreement | output ambiguity | CPU s | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, st in s["stats"].items():
        cells = [f"{st[k]['mean']:.3f} ± {st[k]['sd']:.3f}" for k in SCALARS[:3]]
        cells += [f"{st[k]['mean']:.4f} ± {st[k]['sd']:.4f}" for k in SCALARS[3:5]]
        lines.append(
            f"| {v} ({VARIANTS[v][0]:g}) | " + " | ".join(cells) + f" | {st['cpu_s']['mean']:.0f} | {st['seeds']} |"
        )
    lines += [
        "",
        "| variant − none | meta Dice | mean Dice | base Dice | disagreement | output ambiguity | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for v, d in s["paired"].items():
        cells = [f"{d[k]['mean']:+.3f} ± {d[k]['sd']:.3f}" for k in SCALARS[:3]]
        cells += [f"{d[k]['mean']:+.4f} ± {d[k]['sd']:.4f}" for k in SCALARS[3:5]]
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {d['n']} |")
    lines += [
        "",
        "Feature diversity per level (`ncl` yardstick, mean over seeds):",
        "",
        "| variant | " + " | ".join(f"{i}: {r}" for i, r in enumerate(roles)) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for v, st in s["stats"].items():
        lines.append(f"| {v} | " + " | ".join(f"{x:.3f}" for x in st["feature_diversity"]) + " |")
    page = docs / "results_diversity.md"
    page.write_text("\n".join(lines) + "\n")
    return page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "diversity"))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny data and 6 epochs: checks the harness only")
    ap.add_argument("--docs", default=None, help="write results_diversity.md here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = SETTINGS["quick" if args.quick else "full"]
    out = Path(args.out).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    data_json = slice_data(out, cfg, DIFFICULTY)
    t0 = time.time()
    jobs = [(v, s) for s in args.seeds for v in args.variants if not (out / "runs" / f"{v}_seed{s}.json").is_file()]
    files = [(v, s, data_json, cfg, out / "runs" / f"{v}_seed{s}.json") for v, s in jobs]
    run_jobs(run, files, args.workers, lambda r: f"{r['variant']} seed {r['seed']}: meta Dice {r['dice_meta']:.3f}")
    result = collect(out, "diversity.json", cfg, args.workers, t0, summarize)
    if args.docs:
        print(f"wrote {write_report(result, Path(args.docs))}")
    for v, d in result["summary"]["paired"].items():
        print(
            f"  {v:15s} meta Dice {d['dice_meta']['mean']:+.3f} ± {d['dice_meta']['sd']:.3f}"
            f"  disagreement {d['disagreement']['mean']:+.4f} ± {d['disagreement']['sd']:.4f}"
        )


if __name__ == "__main__":
    main()
