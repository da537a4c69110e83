"""Distillation as the seed paper does it: does a student that mimics the ensemble beat the same network on labels?

Issue 17, question 4. The seed paper (Noothout et al., "Knowledge distillation with ensembles of convolutional
neural networks for medical image segmentation") trains uniform ensembles (one architecture, several random
seeds) and diverse ensembles, then a single student that mimics the ensemble's class probabilities, on multi-class
tasks, and finds the student better than the same network trained on the reference labels. Here, on MR-like 2D
slices with 3 classes (background, the organ's outer and central zones):

Teachers (per seed, the same schedule: 40 epochs + 4 x 5 with the lr halvings of the incremental schedule):

- ``default``: the bundle's ensemble (``bundle/configs/train.json#network_def``: one 4-bit base learner 8..64 and
  a 16-bit meta learner 16..128, with its loss), the teacher ``bundle/configs/distill.json`` uses;
- ``uniform``: three float MONAI UNets 8..64 (the student's architecture) from seeds ``s``, ``s + 1000``,
  ``s + 2000``, probabilities averaged.

Students (the bundle's ``student_def``: a MONAI UNet 8..64 with 1 residual unit), all for twice the teacher's
epochs (80 + 4 x 10, the same lr halvings), the same data, seeds and Adam 2e-3:

- ``labels``: trained on the labels only (DiceCE);
- ``kd_<teacher>_T<T>_a<a>``: ``EnsembleDistillationLoss(alpha=a, temperature=T)`` against the teacher's
  probabilities, ``a`` weighing the labels; ``a = 0`` is the paper's setting (mimic the probabilities only).

Every network is scored on the test slices by one function (whole slices, argmax, Dice per foreground class).
Output in ``--out`` (default ``runs/distillation``, gitignored): teachers' weights and one JSON per run as it
finishes (a rerun skips finished ones), ``distillation.json`` with paired differences, and with ``--docs`` the
page ``results_distillation.md``.

Usage::

    python benchmarks/distillation_benchmark.py --docs docs     # 2 teachers + 5 students x 3 seeds, 2 workers
    python benchmarks/distillation_benchmark.py --quick         # checks the harness (tiny data, a few epochs)
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
from slices import PORTIONS, collect, load_slices, mean_sd, run_jobs, slice_data, slice_trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEACHERS = ("default", "uniform")
#: student -> (teacher or None, temperature, alpha)
STUDENTS: dict[str, tuple[Optional[str], float, float]] = {
    "labels": (None, 1.0, 1.0),
    "kd_default_T1_a0": ("default", 1.0, 0.0),
    "kd_default_T1_a0.5": ("default", 1.0, 0.5),
    "kd_default_T3_a0.5": ("default", 3.0, 0.5),
    "kd_uniform_T1_a0": ("uniform", 1.0, 0.0),
}
SETTINGS = {
    "full": {"num_train": 24, "num_test": 12, "shape": [160, 160], "teacher": [40, 5], "student": [80, 10]},
    "quick": {"num_train": 2, "num_test": 2, "shape": [64, 64], "teacher": [2, 1], "student": [2, 1]},
}
LEARNING_RATE, LR_DECAY, BATCH_SIZE, DIFFICULTY, NUM_CLASSES, UNIFORM_MEMBERS = 2e-3, 0.5, 4, 0.6, 3, 3


def _parser(distill: bool = False):
    """The bundle's training config (``network_def``, ``loss``), with ``distill.json`` over it when ``distill``
    (whose ``network_def`` is the distillation wrapper: read ``student_def`` from it)."""
    from monai.bundle import ConfigParser

    from qddens_monai.config import load_bundle_configs

    configs = REPO / "bundle" / "configs"
    parser = ConfigParser()
    files = [configs / "train.json"] + ([configs / "distill.json"] if distill else [])
    parser.read_config(load_bundle_configs(files))
    parser["in_channels"], parser["num_classes"], parser["portions"] = 1, NUM_CLASSES, PORTIONS
    parser["dataset_json"], parser["datalist"] = None, []  # the settings are given: no data set to plan from
    return parser


def seg_loss():
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)


class MeanProbability:
    """A uniform ensemble's eval output: the log of its members' mean softmax (its softmax is that mean)."""

    def __init__(self, members: list) -> None:
        self.members = members

    def __call__(self, x):
        import torch

        return torch.log(torch.stack([torch.softmax(m(x), 1) for m in self.members]).mean(0).clamp_min(1e-8))

    def eval(self) -> "MeanProbability":
        for m in self.members:
            m.eval()
        return self

    def requires_grad_(self, flag: bool) -> "MeanProbability":
        for m in self.members:
            m.requires_grad_(flag)
        return self


def train(network, loss, cases: list[dict[str, Any]], schedule: list[int], quantized: bool, seed: int) -> float:
    """:func:`slices.slice_trainer` run to the end, the flips and the learning rate seeded by ``seed``; returns CPU
    seconds."""
    from monai.utils import set_determinism

    set_determinism(seed)
    trainer = slice_trainer(network, loss, cases, tuple(schedule), quantized, seed, LEARNING_RATE, LR_DECAY, BATCH_SIZE)
    t0 = time.process_time()
    trainer.run()
    return time.process_time() - t0


def score(network, cases: list[dict[str, Any]]) -> dict[str, float]:
    """Dice per foreground class and their mean (whole slices, argmax)."""
    import torch

    from qddens_monai.evaluation import segmentation_metrics
    from qddens_monai.evaluation.metrics import label_one_hot

    rows = []
    with torch.no_grad():
        for case in cases:
            prob = torch.softmax(network(case["image"][None])[0], 0)
            truth = label_one_hot(case["label"], NUM_CLASSES, "softmax")
            rows.append(segmentation_metrics(prob, truth, metrics=("dice",)))
    keys = [k for k in rows[0] if k.startswith("dice")]
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


def build_teacher(name: str, out: Path, seed: int, load: bool):
    """The teacher network (loaded from ``out/models`` when ``load``); a uniform one as :class:`MeanProbability`."""
    import torch

    parser = _parser(distill=name != "default")
    path = out / "models" / f"{name}_seed{seed}.pt"
    if name == "default":
        net = parser.get_parsed_content("network_def")
        if load:
            net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval() if load else net
    members = []
    for k in range(UNIFORM_MEMBERS):
        torch.manual_seed(seed + 1000 * k)
        members.append(parser.get_parsed_content("student_def", lazy=False))
    if load:
        for m, state in zip(members, torch.load(path, weights_only=True)):
            m.load_state_dict(state)
    return MeanProbability(members).eval() if load else members


def run_teacher(name: str, seed: int, data_json: str, cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    import torch

    from qddens_monai.files import atomic_write_text

    torch.set_num_threads(1)
    train_cases, test_cases = load_slices(data_json, "training"), load_slices(data_json, "test")
    (out / "models").mkdir(parents=True, exist_ok=True)
    built = build_teacher(name, out, seed, load=False)
    if name == "default":
        cpu = train(built, _parser().get_parsed_content("loss"), train_cases, cfg["teacher"], True, seed)
        state: Any = built.state_dict()
    else:
        cpu = sum(
            train(m, seg_loss(), train_cases, cfg["teacher"], False, seed + 1000 * k) for k, m in enumerate(built)
        )
        state = [m.state_dict() for m in built]
    torch.save(state, out / "models" / f"{name}_seed{seed}.pt")
    result = {
        "run": f"teacher_{name}",
        "seed": seed,
        "cpu_s": cpu,
        **score(build_teacher(name, out, seed, True), test_cases),
    }
    atomic_write_text(out / "runs" / f"teacher_{name}_seed{seed}.json", json.dumps(result, indent=1))
    return result


def run_student(name: str, seed: int, data_json: str, cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    import torch

    from qddens_monai.files import atomic_write_text
    from qddens_monai.losses import EnsembleDistillationLoss
    from qddens_monai.networks import DistillationNetwork

    torch.set_num_threads(1)
    train_cases, test_cases = load_slices(data_json, "training"), load_slices(data_json, "test")
    teacher, temperature, alpha = STUDENTS[name]
    torch.manual_seed(seed)
    student = _parser(distill=True).get_parsed_content("student_def")
    if teacher is None:
        network, loss = student, seg_loss()
    else:
        network = DistillationNetwork(student, build_teacher(teacher, out, seed, load=True))
        loss = EnsembleDistillationLoss(
            alpha=alpha, temperature=temperature, seg_loss=seg_loss(), teacher_is_probability=True
        )
    cpu = train(network, loss, train_cases, cfg["student"], False, seed)
    student.eval()
    result = {"run": name, "seed": seed, "cpu_s": cpu, **score(student, test_cases)}
    atomic_write_text(out / "runs" / f"{name}_seed{seed}.json", json.dumps(result, indent=1))
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd per run name; each distilled student paired with ``labels`` and with its teacher per seed."""
    by = {(r["run"], r["seed"]): r for r in runs}
    names = [f"teacher_{t}" for t in TEACHERS] + list(STUDENTS)
    stats, paired = {}, {}
    for n in names:
        rs = [r for r in runs if r["run"] == n]
        if rs:
            keys = [k for k in rs[0] if k.startswith("dice")] + ["cpu_s"]
            stats[n] = {k: mean_sd([r[k] for r in rs]) for k in keys}
            stats[n]["seeds"] = len(rs)
    for n, (teacher, _, _) in STUDENTS.items():
        if teacher is None:
            continue
        for ref in ("labels", f"teacher_{teacher}"):
            d = [by[(n, s)]["dice"] - by[(ref, s)]["dice"] for (r, s) in by if r == n and (ref, s) in by]
            if d:
                paired[f"{n} - {ref}"] = {**mean_sd(d), "n": len(d)}
    return {"stats": stats, "paired": paired}


def write_report(result: dict[str, Any], docs: Path) -> Path:
    """``results_distillation.md`` from the benchmark's JSON."""
    docs.mkdir(parents=True, exist_ok=True)
    s, cfg = result["summary"], result["setting"]
    t, st_ = cfg["teacher"], cfg["student"]
    lines = [
        "# Distillation: a student that mimics the ensemble, against the same network on labels",
        "",
        f"Generated by `benchmarks/distillation_benchmark.py` ({result['machine']}). {cfg['num_train']} MR-like 2D "
        f"training slices ({cfg['shape'][0]} x {cfg['shape'][1]}, {NUM_CLASSES} classes), {cfg['num_test']} test "
        f"slices; teachers {t[0]} + 4 x {t[1]} epochs, students {st_[0]} + 4 x {st_[1]} epochs (the same lr halvings "
        "for all), Adam 2e-3, flips. Student: the bundle's `student_def` (MONAI UNet 8..64, 1 residual unit). "
        "Dice: mean over the foreground classes on whole test slices; mean ± sd over seeds, differences paired per "
        "seed. A student's CPU s include its teacher's forward passes.",
        "",
        "| run | Dice | " + " | ".join(f"class {c}" for c in range(1, NUM_CLASSES)) + " | CPU s | seeds |",
        "|---|---|" + "---|" * (NUM_CLASSES - 1) + "---|---|",
    ]
    for n, st in s["stats"].items():
        per_class = [k for k in st if k.startswith("dice_")]
        cells = [f"{st['dice']['mean']:.3f} ± {st['dice']['sd']:.3f}"] + [f"{st[k]['mean']:.3f}" for k in per_class]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {st['cpu_s']['mean']:.0f} | {st['seeds']} |")
    lines += ["", "| paired difference (Dice) | mean ± sd | seeds |", "|---|---|---|"]
    for k, d in s["paired"].items():
        lines.append(f"| {k} | {d['mean']:+.3f} ± {d['sd']:.3f} | {d['n']} |")
    page = docs / "results_distillation.md"
    page.write_text("\n".join(lines) + "\n")
    return page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "distillation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny data and a few epochs: checks the harness only")
    ap.add_argument("--docs", default=None, help="write results_distillation.md here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = SETTINGS["quick" if args.quick else "full"]
    out = Path(args.out).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    data_json = slice_data(out, cfg, DIFFICULTY, NUM_CLASSES)
    t0 = time.time()

    def todo(names, prefix: str = "") -> list[tuple[str, int]]:
        return [(n, s) for s in args.seeds for n in names if not (out / "runs" / f"{prefix}{n}_seed{s}.json").is_file()]

    def report(r: dict[str, Any]) -> str:
        return f"{r['run']} seed {r['seed']}: Dice {r['dice']:.3f} in {r['cpu_s']:.0f} CPU s"

    run_jobs(run_teacher, [(*j, data_json, cfg, out) for j in todo(TEACHERS, "teacher_")], args.workers, report)
    run_jobs(run_student, [(*j, data_json, cfg, out) for j in todo(STUDENTS)], args.workers, report)
    result = collect(out, "distillation.json", cfg, args.workers, t0, summarize)
    if args.docs:
        print(f"wrote {write_report(result, Path(args.docs))}")
    for k, d in result["summary"]["paired"].items():
        print(f"  {k:40s} {d['mean']:+.3f} ± {d['sd']:.3f}")


if __name__ == "__main__":
    main()
