"""Does suggestive annotation save labels? A simulated annotation loop with an oracle (issue 15).

Data (generated per seed, in memory, 2D, ``size`` x ``size``): the hard vessels of the results
benchmark (:func:`~qddens_monai.data.vessels.create_vessel_image_2d`, difficulty 0.7), scaled 0..255 ->
0..1 as the bundle's ``rgb`` normalization does. The unlabelled pool is built with the redundancy and
outliers real pools have:

- ``distinct`` images, each from its own generator seed;
- ``clusters`` x ``cluster_size`` near-duplicates: one generated image per cluster, each copy shifted
  by up to 3 px (image, label and FOV alike) with its own faint noise (sd 0.02), like repeated
  captures of one eye;
- ``ood`` out-of-distribution images: generated images captured badly (defocus: Gaussian blur sd
  1.5 px; over-exposure: gamma 0.5; sensor noise sd 0.1), their vessel labels unchanged.

The held-out test set is ``test`` further distinct, in-distribution images. The oracle is the
generator's label.

Loop, per seed and strategy: ``start`` random pool images are labelled (the same for every
strategy of a seed); each round the strategy picks ``batch`` more, until ``max_labels``. After every
round the *learner* (one MONAI UNet, channels 8..64, the results benchmark's) is trained from
scratch on the labelled set and its Dice (inside the FOV) on the test set recorded. The learner's
schedule is the same for every strategy and every labelled-set size: Adam, lr ``learner_lr``,
``learner_epochs`` epochs of ``samples_per_epoch`` images drawn from the labelled set (so every model
gets the same number of optimizer steps), batch 4, flips / 90-degree rotations, final weights.

Strategies:

- ``random``: ``batch`` unlabelled images at random;
- ``uncertainty``: the ``batch`` most uncertain (float scorer);
- ``suggestive``: the ``top_n`` most uncertain, then ``batch`` of them by greedy max-cover on the
  descriptors (float scorer), through the label app's own selection code
  (:func:`qddens_monai.label.selection.select_batch` with a
  :class:`~qddens_monai.label.selection.SuggestiveConfig`: variance disagreement, no ``cover_labeled``);
- ``suggestive_quantized``: the same with the diversely quantized scorer (the QSA variant);
- ``full``: the learner trained on the whole pool (the ceiling).

The scorer of a round is a QME-Net (4 UNet learners 8..64; ``float``, or ``qme_net``: base learners
at 4/5/6 bits with the incremental schedule) trained from scratch on the current labelled set with
the same budget for both; its member probabilities and descriptors (the deepest encoder maps) come from
:func:`qddens_monai.label.scoring.member_scores`, the label app's scoring code.

Output in ``--out`` (default ``runs/annotation``, gitignored): one JSON per (seed, strategy), rewritten
after every round (a rerun resumes at the next round), ``annotation.json`` (the summary), and with
``--docs`` the figure ``docs/images/annotation_curves.png``, the section of ``docs/results.md`` and the
README summary (between ``<!-- annotation:start -->`` / ``<!-- annotation:end -->`` markers).

Usage::

    python benchmarks/annotation_benchmark.py --docs .   # the full run (3 seeds, 1 process, 1 thread)
    python benchmarks/annotation_benchmark.py --quick    # checks the harness in about 2 min, not the science
    python benchmarks/annotation_benchmark.py --report --docs .   # rewrite the report from --out
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import annotation_report  # noqa: E402

STRATEGIES = ("random", "uncertainty", "suggestive", "suggestive_quantized")

SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "seeds": [0, 1, 2],
        "size": 96,
        "difficulty": 0.7,
        "distinct": 20,
        "clusters": 5,
        "cluster_size": 4,
        "ood": 4,
        "test": 8,
        "start": 4,
        "batch": 4,
        "max_labels": 20,
        "top_n": 8,
        "learner_epochs": 25,
        "samples_per_epoch": 32,
        "learner_lr": 0.005,
        "scorer": {"fp_epochs": 6, "epochs_per_step": 1, "portions": [0.3, 0.6, 0.8, 1.0]},
    },
    "quick": {
        "seeds": [0],
        "size": 48,
        "difficulty": 0.7,
        "distinct": 4,
        "clusters": 2,
        "cluster_size": 2,
        "ood": 1,
        "test": 2,
        "start": 2,
        "batch": 2,
        "max_labels": 4,
        "top_n": 3,
        "learner_epochs": 1,
        "samples_per_epoch": 8,
        "learner_lr": 0.005,
        "scorer": {"fp_epochs": 1, "epochs_per_step": 1, "portions": [0.5, 1.0]},
    },
}
SCORER_BATCH = 4
LEARNER_BATCH = 4


def _setup_threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------- data


def _case(image: np.ndarray, label: np.ndarray, fov: np.ndarray, kind: str) -> dict[str, Any]:
    import torch

    img = np.moveaxis(image.astype(np.float32), -1, 0)  # (3, H, W) in [0, 1]
    return {
        "image": torch.from_numpy(np.ascontiguousarray(img)),
        "label": torch.from_numpy(label[None].astype(np.float32)),
        "mask": torch.from_numpy(fov[None].astype(np.float32)),
        "kind": kind,
    }


_POOLS: dict[tuple[str, int], tuple[list[dict], list[dict]]] = {}


def make_pool(cfg: dict[str, Any], seed: int) -> tuple[list[dict], list[dict]]:
    """The unlabelled pool (distinct, near-duplicate clusters, out-of-distribution) and the test set
    (generated once per process and seed)."""
    key = (json.dumps(cfg, sort_keys=True), seed)
    if key not in _POOLS:
        _POOLS[key] = _generate(cfg, seed)
    return _POOLS[key]


def _generate(cfg: dict[str, Any], seed: int) -> tuple[list[dict], list[dict]]:
    from scipy.ndimage import gaussian_filter

    from qddens_monai.data.vessels import create_vessel_image_2d

    rng = np.random.default_rng([seed, 15])

    def gen(stream: int, i: int):
        image, label, fov = create_vessel_image_2d(
            cfg["size"], cfg["difficulty"], random_state=10_000 * seed + 1000 * stream + i
        )
        return image.astype(np.float32) / 255.0, label, fov

    pool = [_case(*gen(0, i), kind="distinct") for i in range(cfg["distinct"])]
    for c in range(cfg["clusters"]):
        image, label, fov = gen(1, c)
        for _ in range(cfg["cluster_size"]):
            dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
            shifted = [np.roll(a, (dy, dx), axis=(0, 1)) for a in (image, label, fov)]
            noisy = np.clip(shifted[0] + rng.normal(0, 0.02, image.shape), 0, 1)
            pool.append(_case(noisy, shifted[1], shifted[2], kind=f"cluster{c}"))
    for i in range(cfg["ood"]):
        image, label, fov = gen(2, i)
        blurred = np.stack([gaussian_filter(image[..., ch], 1.5) for ch in range(3)], -1)
        bad = np.clip(np.clip(blurred, 0, 1) ** 0.5 + rng.normal(0, 0.1, image.shape), 0, 1)
        pool.append(_case(bad, label, fov, kind="ood"))
    test = [_case(*gen(3, i), kind="test") for i in range(cfg["test"])]
    return pool, test


def loader(cases: list[dict], samples: int, seed: int, batch_size: int):
    """``samples`` images per epoch drawn (cycling, shuffled) from ``cases``, flips and 90-degree rotations."""
    import torch
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, RandFlipd, RandRotate90d

    keys = ["image", "label"]
    aug = Compose(
        [RandFlipd(keys, prob=0.5, spatial_axis=0), RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=(0, 1))]
    )
    aug.set_random_state(seed)
    data = [{"image": c["image"], "label": c["label"]} for c in cases]
    data = (data * (samples // len(data) + 1))[:samples]
    return DataLoader(
        Dataset(data, aug),
        batch_size=batch_size,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )


# ----------------------------------------------------------------------------------------------- models


def train_learner(cases: list[dict], cfg: dict[str, Any], seed: int):
    """The learner (one UNet) trained from scratch on ``cases`` with the fixed schedule."""
    import torch
    from monai.engines import SupervisedTrainer
    from monai.utils import set_determinism

    import results_benchmark as rb

    set_determinism(seed)
    net = rb.make_unet(2)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["learner_lr"])
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=cfg["learner_epochs"],
        train_data_loader=loader(cases, cfg["samples_per_epoch"], seed, LEARNER_BATCH),
        network=net,
        optimizer=opt,
        loss_function=rb.seg_loss(),
        decollate=False,
    )
    trainer.run()
    return net.eval()


def train_scorer(cases: list[dict], cfg: dict[str, Any], seed: int, quantized: bool):
    """The scorer: a QME-Net (float or diversely quantized) trained from scratch on ``cases``."""
    from monai.utils import set_determinism

    import results_benchmark as rb
    from qddens_monai.losses import DeepDiversityLoss, EnsembleLoss

    sc = cfg["scorer"]
    set_determinism(seed)
    net = rb.make_qmenet(2, "qme_net" if quantized else "float", sc["portions"], cfg["size"])
    loss = EnsembleLoss(seg_loss=rb.seg_loss(), alpha=0.0, diversity=DeepDiversityLoss())
    rb.train(net, loss, loader(cases, cfg["samples_per_epoch"], seed, SCORER_BATCH), sc, quantized=quantized)
    return net.eval()


def test_dice(net, test: list[dict]) -> float:
    """Mean Dice (inside the FOV) of ``net`` on the test set."""
    import torch

    from qddens_monai.evaluation import segmentation_metrics
    from qddens_monai.evaluation.metrics import inside_mask, label_one_hot

    dice = []
    with torch.no_grad():
        for c in test:
            prob = torch.softmax(net(c["image"][None]), dim=1)[0]
            inside = inside_mask(c["mask"], prob.shape[1:])
            dice.append(
                segmentation_metrics(prob, label_one_hot(c["label"], 2, "softmax"), inside, metrics=("dice",))["dice"]
            )
    return float(np.mean(dice))


def strategy_config(strategy: str, cfg: dict[str, Any]):
    """The label app's :class:`~qddens_monai.label.selection.SuggestiveConfig` of a (non-random) strategy."""
    from qddens_monai.label.selection import SuggestiveConfig

    return SuggestiveConfig(
        batch_size=cfg["batch"],
        top_n=cfg["top_n"],
        disagreement=cfg.get("disagreement", "variance"),
        representativeness=strategy != "uncertainty",
        quantized_scorers=strategy == "suggestive_quantized",
        cover_labeled=bool(cfg.get("cover_labeled", False)),
    )


def pick(
    strategy: str, pool: list[dict], labelled: list[int], cfg: dict[str, Any], seed: int, rnd: int
) -> tuple[list[int], dict[str, Any]]:
    """The next batch of pool indices by ``strategy`` (and what the scorer said about the pool), through the
    label app's scoring (:func:`~qddens_monai.label.scoring.member_scores`) and selection
    (:func:`~qddens_monai.label.selection.select_batch`) code."""
    import torch

    from qddens_monai.label.scoring import member_scores
    from qddens_monai.label.selection import image_uncertainty, select_batch

    unlabelled = [i for i in range(len(pool)) if i not in labelled]
    k = min(cfg["batch"], len(unlabelled))
    if strategy == "random":
        rng = np.random.default_rng([seed, rnd, 7])
        return [int(i) for i in rng.choice(unlabelled, size=k, replace=False)], {}
    config = strategy_config(strategy, cfg)
    scorer = train_scorer([pool[i] for i in labelled], cfg, 1000 * seed + rnd, config.quantized_scorers)
    scored = {}
    for i in unlabelled + (labelled if config.cover_labeled else []):
        probs, d = member_scores(scorer, pool[i]["image"][None])
        scored[i] = (image_uncertainty(probs, config.disagreement), d)
    unc = [scored[i][0] for i in unlabelled]
    desc = torch.stack([scored[i][1] for i in unlabelled])
    covered = torch.stack([scored[i][1] for i in labelled]) if config.cover_labeled else None
    order = select_batch(unc, desc, config, covered)
    return [unlabelled[j] for j in order], {"uncertainty": unc}


# ----------------------------------------------------------------------------------------------- jobs


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def run_strategy(strategy: str, seed: int, setting: str, out: Path, log) -> dict[str, Any]:
    """One curve (or the ceiling); resumes at the next round of a partial job file."""
    cfg = SETTINGS[setting]
    path = out / "runs" / f"seed{seed}_{strategy}.json"
    job = json.loads(path.read_text()) if path.is_file() else None
    if job and job.get("done"):
        return job
    pool, test = make_pool(cfg, seed)
    kinds = [c["kind"] for c in pool]
    if strategy == "full":
        t0 = time.perf_counter()
        dice = test_dice(train_learner(pool, cfg, seed), test)
        job = {
            "seed": seed,
            "strategy": "full",
            "labels": [len(pool)],
            "dice": [dice],
            "done": True,
            "seconds": time.perf_counter() - t0,
        }
        _write(path, job)
        log(f"full pool ({len(pool)}): dice {dice:.3f}")
        return job
    if job is None:
        start = json.loads((out / "runs" / f"seed{seed}_start.json").read_text())
        job = {
            "seed": seed,
            "strategy": strategy,
            "labels": [len(start["labelled"])],
            "dice": [start["dice"]],
            "labelled": list(start["labelled"]),
            "rounds": [],
            "done": False,
            "seconds": 0.0,
        }
    while len(job["labelled"]) < cfg["max_labels"]:
        t0 = time.perf_counter()
        rnd = len(job["rounds"]) + 1
        new, info = pick(strategy, pool, job["labelled"], cfg, seed, rnd)
        clusters_before = {kinds[i] for i in job["labelled"] if kinds[i].startswith("cluster")}
        job["labelled"] += new
        dice = test_dice(train_learner([pool[i] for i in job["labelled"]], cfg, seed), test)
        job["labels"].append(len(job["labelled"]))
        job["dice"].append(dice)
        seen, redundant = set(clusters_before), 0
        for i in new:  # a pick is redundant when its near-duplicate cluster already has a label
            redundant += kinds[i] in seen
            seen.add(kinds[i]) if kinds[i].startswith("cluster") else None
        job["rounds"].append(
            {
                "picked": new,
                "kinds": [kinds[i] for i in new],
                "redundant": redundant,
                "ood": sum(kinds[i] == "ood" for i in new),
                "seconds": time.perf_counter() - t0,
                "mean_uncertainty": float(np.mean(info["uncertainty"])) if info else None,
            }
        )
        job["seconds"] += time.perf_counter() - t0
        job["done"] = len(job["labelled"]) >= cfg["max_labels"]
        _write(path, job)
        log(
            f"{strategy} round {rnd}: {len(job['labelled'])} labels, dice {dice:.3f}, "
            f"picked {job['rounds'][-1]['kinds']}"
            f" ({job['rounds'][-1]['seconds']:.0f}s)"
        )
    return job


def run_seed_start(seed: int, setting: str, out: Path, log) -> None:
    """The shared random start set of a seed and its learner's Dice."""
    path = out / "runs" / f"seed{seed}_start.json"
    if path.is_file():
        return
    cfg = SETTINGS[setting]
    pool, test = make_pool(cfg, seed)
    rng = np.random.default_rng([seed, 0, 7])
    labelled = [int(i) for i in rng.choice(len(pool), size=cfg["start"], replace=False)]
    dice = test_dice(train_learner([pool[i] for i in labelled], cfg, seed), test)
    _write(path, {"seed": seed, "labelled": labelled, "kinds": [pool[i]["kind"] for i in labelled], "dice": dice})
    log(f"start set {[pool[i]['kind'] for i in labelled]}: dice {dice:.3f}")


def collect(out: Path, setting: str) -> dict[str, Any]:
    """``annotation.json``: the settings, every job file found, and the summary."""
    jobs = [
        json.loads(p.read_text())
        for p in sorted((out / "runs").glob("seed*_*.json"))
        if not p.name.endswith("_start.json")
    ]
    payload = {
        "command": "python benchmarks/annotation_benchmark.py" + (" --quick" if setting == "quick" else ""),
        "setting": setting,
        "settings": SETTINGS[setting],
        "strategies": list(STRATEGIES),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": 1, "processes": 1},
        "jobs": jobs,
        "summary": annotation_report.summarize(jobs, SETTINGS[setting]),
    }
    payload["complete"] = all(
        any(j["seed"] == s and j["strategy"] == st and j.get("done") for j in jobs)
        for s in SETTINGS[setting]["seeds"]
        for st in (*STRATEGIES, "full")
    )
    return payload


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny pool, 1 seed, 1 epoch: checks the harness only")
    ap.add_argument("--out", default=None, help="output folder (default runs/annotation[_quick], gitignored)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the setting's)")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    ap.add_argument(
        "--docs",
        default=None,
        help="repository root: write the figure, docs/results.md section and README summary there",
    )
    ap.add_argument("--report", action="store_true", help="only rewrite the summary / report from --out")
    ap.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="change the setting for a probe (e.g. batch=2 top_n=4, cover_labeled=true, clusters=0 "
        "distinct=40); use its own --out",
    )
    ap.add_argument(
        "--reading",
        default=str(Path(__file__).with_name("annotation_reading.md")),
        help="a file whose text opens the docs section and README summary (if it exists)",
    )
    args = ap.parse_args(argv)
    setting = "quick" if args.quick else "full"
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in SETTINGS[setting] and key not in ("cover_labeled", "disagreement"):
            ap.error(f"--set: unknown key {key!r}")
        SETTINGS[setting][key] = json.loads(value) if value not in ("variance", "entropy") else value
    out = Path(args.out or f"runs/annotation{'_quick' if args.quick else ''}").resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    stamp = out / "settings.json"  # a folder's job files all come from one setting
    if stamp.is_file() and json.loads(stamp.read_text()) != SETTINGS[setting]:
        ap.error(f"{out} holds a run with other settings ({stamp}): use another --out")
    _write(stamp, SETTINGS[setting])
    t_all = time.perf_counter()
    if not args.report:
        _setup_threads()
        for seed in args.seeds or SETTINGS[setting]["seeds"]:

            def log(msg: str, seed: int = seed) -> None:
                print(f"[seed {seed} {time.perf_counter() - t_all:6.0f}s] {msg}", flush=True)

            run_seed_start(seed, setting, out, log)
            run_strategy("full", seed, setting, out, log)
            for strategy in args.strategies:
                run_strategy(strategy, seed, setting, out, log)
                _write(out / "annotation.json", collect(out, setting))
    payload = collect(out, setting)
    _write(out / "annotation.json", payload)
    print(annotation_report.markdown(payload), flush=True)
    if args.docs:
        reading = Path(args.reading).read_text() if Path(args.reading).is_file() and not args.quick else ""
        annotation_report.write_docs(payload, Path(args.docs).resolve(), reading)
    print(f"done in {time.perf_counter() - t_all:.0f}s, output {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
