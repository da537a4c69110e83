"""Overhead of a QME-Net ensemble (fusion at every level) over its members run alone.

A K = 4 CE-Net ensemble (``QMENet``), 2D 256x256 and 3D 64^3, batch 2, with
``quantization="float"`` and the ``"qme_net"`` preset (base learners 4/5/6 bits, meta 16
bits, incremental schedule at mid-run: 2 of 4 steps done). Measured in one run:

1. Training-step time: forward + backward (``--optimizer`` adds the Adam step) of the
   ensemble with ``EnsembleLoss(alpha=0.005)``, i.e. fusion blocks, the level-by-level run
   (staged CE-Nets; no hooks since issue 13) and the diversity term included, over the *sum* of
   the 4 learners' forward + backward run alone with ``DiceCELoss`` (no fusion). The members
   are the ensemble's own learner modules, called directly (same weights, same quantization;
   the meta learner then runs without fusion). Ensemble and
   member steps are interleaved round by round (order alternating) after a warm-up round;
   medians are compared. Target: ensemble / sum(members) <= 1.25.
2. Peak memory of one step, in fresh subprocesses: peak RSS (``VmHWM``, reset after a warm-up
   step) minus the RSS just before the step, i.e. activations, gradients and temporaries on
   top of the resident model and inputs. glibc is told to ``mmap`` every block >= 64 KiB
   and trimmed before the step, so freed memory is not counted as resident. Reported: the
   ensemble vs the largest member (what training the members one after the other needs) and
   vs the sum of the members' peaks (four separate steps added up).
3. Where the overhead goes, measured in isolation: the fusion blocks' forward + backward, the
   diversity term's forward + backward, and the Python cost of the per-forward
   ``FeatureExtractor`` construction / hook attach / remove on the hook path of
   ``QMENet.forward_learners`` (0 for staged learners, which need no hooks).

Threads default to 1: on the shared 2-core machine, 2 OpenMP threads competing with other
jobs made single steps swing by up to 10x; pass ``--threads 2`` to use both cores.

Usage: ``python benchmarks/ensemble_benchmark.py [--quick] [--json PATH] [--threads N] [--optimizer]
[--reps N] [--skip-memory] [--isolate-memory]``
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceCELoss
from torch import nn

from qddens_monai.losses import EnsembleLoss
from qddens_monai.losses.diversity import DeepDiversityLoss
from qddens_monai.networks import FeatureExtractor, QMENet, feature_shapes
from qddens_monai.quantization import quantization_step

TARGET = 1.25
NUM_LEARNERS = 4
BATCH = 2
QUANTIZATIONS = ("float", "qme_net")
MEMBER_NAMES = tuple(f"base_{k}" for k in range(NUM_LEARNERS - 1)) + ("meta",)


# ---- building blocks -----------------------------------------------------------------------------


def build_ensemble(dims: int, quantization: str, channels: Sequence[int], layers: Sequence[int]) -> QMENet:
    """The K = 4 CE-Net ensemble, in train mode; quantized presets are advanced to mid-schedule."""
    torch.manual_seed(0)
    net = QMENet(
        dims,
        1,
        2,
        num_learners=NUM_LEARNERS,
        backbone="cenet",
        backbone_kwargs={"channels": tuple(channels), "layers": tuple(layers)},
        quantization=quantization,
    )
    if quantization != "float":
        quantization_step(net)
        quantization_step(net)  # 60 % of each tensor frozen, 40 % still training
    return net.train()


def learners_of(net: QMENet) -> list[nn.Module]:
    """The ensemble's K learners, base learners first, meta learner last."""
    return [*net.base_learners, net.meta_learner]


def make_data(dims: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random image (B, 1, *S) and binary label map (B, 1, *S)."""
    g = torch.Generator().manual_seed(1)
    shape = (BATCH, 1, *([size] * dims))
    return torch.randn(shape, generator=g), torch.randint(0, 2, shape, generator=g)


def make_steps(net: QMENet, x: torch.Tensor, y: torch.Tensor, optimizer: bool) -> dict[str, Callable[[], None]]:
    """One training step per side: ``"ensemble"`` and each member (``MEMBER_NAMES``)."""
    ens_loss = EnsembleLoss(alpha=0.005)
    seg_loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def ensemble_step() -> None:
        net.zero_grad(set_to_none=True)
        ens_loss(net(x), y).backward()
        if ens_opt is not None:
            ens_opt.step()

    def member_step(learner: nn.Module, opt: torch.optim.Optimizer | None) -> Callable[[], None]:
        def step() -> None:
            learner.zero_grad(set_to_none=True)
            seg_loss(learner(x), y).backward()
            if opt is not None:
                opt.step()

        return step

    ens_opt = torch.optim.Adam(net.parameters(), lr=1e-5) if optimizer else None
    steps: dict[str, Callable[[], None]] = {"ensemble": ensemble_step}
    for name, learner in zip(MEMBER_NAMES, learners_of(net)):
        opt = torch.optim.Adam(learner.parameters(), lr=1e-5) if optimizer else None
        steps[name] = member_step(learner, opt)
    return steps


def count_hooks(net: QMENet) -> int:
    """Forward (pre-)hooks left on the learners: must be 0 outside the ensemble's forward."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for lr in learners_of(net) for m in lr.modules())


# ---- 1. step time --------------------------------------------------------------------------------


def step_times(net: QMENet, x: torch.Tensor, y: torch.Tensor, reps: int, optimizer: bool) -> dict[str, Any]:
    """Interleaved rounds of one ensemble step and one step of each member; the first round warms up."""
    steps = make_steps(net, x, y, optimizer)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for rep in range(reps + 1):
        order = list(steps) if rep % 2 == 0 else list(steps)[1:] + ["ensemble"]  # alternate who goes first
        for key in order:
            start = time.perf_counter()
            steps[key]()
            elapsed = time.perf_counter() - start
            if rep > 0:
                times[key].append(elapsed)
        if count_hooks(net):
            raise RuntimeError("hooks left on the learners after the ensemble's forward: members would not run alone.")
    sums = [sum(times[m][r] for m in MEMBER_NAMES) for r in range(reps)]
    ens = statistics.median(times["ensemble"])
    members = statistics.median(sums)
    return {
        "ensemble_s": ens,
        "members_sum_s": members,
        "member_s": {m: statistics.median(times[m]) for m in MEMBER_NAMES},
        "ratio": ens / members,
        "paired_ratio": statistics.median(e / s for e, s in zip(times["ensemble"], sums)),
        "ensemble_all_s": times["ensemble"],
        "members_sum_all_s": sums,
    }


# ---- 2. peak memory (subprocess worker) ----------------------------------------------------------


def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M).group(1))  # type: ignore[union-attr]


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: peak RSS growth of one step of each side in ``spec["sides"]``, one after another."""
    torch.set_num_threads(spec["threads"])
    net = build_ensemble(spec["dims"], spec["quantization"], spec["channels"], spec["layers"])
    x, y = make_data(spec["dims"], spec["size"])
    steps = make_steps(net, x, y, spec["optimizer"])
    out: dict[str, Any] = {}
    for side in spec["sides"]:
        steps[side]()  # warm-up: one-off allocations (optimizer state, kernels' scratch) land in the baseline
        net.zero_grad(set_to_none=True)
        _trim()
        if _reset_peak():
            base = _status_kib("VmRSS")
            steps[side]()
            peak, method = _status_kib("VmHWM"), "VmHWM"
        else:  # high-water mark of the whole process: only honest for the first side in a fresh process
            base = _status_kib("VmRSS")
            steps[side]()
            peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
        out[side] = {"peak_growth_mib": (peak - base) / 1024, "resident_mib": base / 1024, "method": method}
        net.zero_grad(set_to_none=True)
    del net, steps
    _trim()
    return out


def run_memory_workers(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``memory_worker`` on each job, all jobs in one fresh subprocess (one after another)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}
    args = [sys.executable, __file__, "--memory-worker", json.dumps(jobs)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize_memory(out: dict[str, Any]) -> dict[str, Any]:
    """Ensemble vs largest member and vs sum of members."""
    ens = out["ensemble"]["peak_growth_mib"]
    members = [out[m]["peak_growth_mib"] for m in MEMBER_NAMES]
    return {
        "ensemble_mib": ens,
        "member_mib": dict(zip(MEMBER_NAMES, members)),
        "max_member_mib": max(members),
        "sum_members_mib": sum(members),
        "ratio_to_max": ens / max(members),
        "ratio_to_sum": ens / sum(members),
        "resident_mib": out["ensemble"]["resident_mib"],
        "method": out["ensemble"]["method"],
    }


# ---- 3. overhead breakdown -----------------------------------------------------------------------


def _median_time(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def overhead_breakdown(net: QMENet, x: torch.Tensor, reps: int) -> dict[str, Any]:
    """Fusion blocks and diversity term (fwd + bwd, random inputs of the real shapes) and hook set-up cost."""
    learners = learners_of(net)
    levels = net._levels  # the ensemble's per-learner FeatureLevel lists
    shapes = [feature_shapes(m, tuple(x.shape), lv) for m, lv in zip(learners, levels)]
    net.train()  # feature_shapes restores the mode, but be explicit
    g = torch.Generator().manual_seed(2)

    def rand(c: int, s: tuple[int, ...]) -> torch.Tensor:
        return torch.rand((BATCH, c, *s), generator=g).requires_grad_()

    base = [[rand(c, s) for c, s in sh] for sh in shapes[:-1]]
    meta = [rand(c, s) for c, s in shapes[-1]]

    def fusion_fwd_bwd() -> None:
        net.fusion.zero_grad(set_to_none=True)
        total = sum(blk([b[i] for b in base], meta[i]).sum() for i, blk in enumerate(net.fusion))
        total.backward()  # type: ignore[union-attr]

    diversity = DeepDiversityLoss()
    pred = {"features": base, "roles": net.level_roles}

    def diversity_fwd_bwd() -> None:
        diversity(pred).backward()

    def extractor_setup() -> None:  # what forward_learners does per forward, minus running the learners
        for learner, lv in zip(learners, levels):
            FeatureExtractor(learner, lv).attach().remove()

    def named_modules_once() -> None:
        _ = dict(learners[-1].named_modules())  # timed: the dict is built and dropped

    n_py = max(50, reps * 10)
    return {
        "fusion_fwd_bwd_s": _median_time(fusion_fwd_bwd, reps),
        "diversity_fwd_bwd_s": _median_time(diversity_fwd_bwd, reps),
        # staged learners run level by level without hooks: no per-forward set-up to measure
        "extractor_setup_ms": 0.0 if net.staged else 1e3 * _median_time(extractor_setup, n_py),
        "named_modules_ms": 1e3 * _median_time(named_modules_once, n_py),
        "modules_per_learner": sum(1 for _ in learners[-1].modules()),
        # FeatureExtractor.__init__ and .attach, per learner, on the hook path only
        "named_modules_calls_per_forward": 0 if net.staged else 2 * len(learners),
    }


# ---- driver --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds (checks the harness, < 1 min)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see the docstring)")
    parser.add_argument("--optimizer", action="store_true", help="include the Adam step on both sides")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds per case (after 1 warm-up round)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--isolate-memory", action="store_true", help="a fresh subprocess per case and side")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker is not None:
        print(json.dumps([memory_worker(job) for job in json.loads(args.memory_worker)]))
        return

    torch.set_num_threads(args.threads)
    if args.quick:
        channels, layers = (8, 16, 32, 64), (1, 1, 1, 1)
        cases = [(2, 64, args.reps or 2), (3, 32, args.reps or 2)]
    else:
        channels, layers = (16, 32, 64, 128), (1, 1, 1, 1)
        cases = [(2, 256, args.reps or 15), (3, 64, args.reps or 5)]
    what = "forward + backward + Adam step" if args.optimizer else "forward + backward (no optimizer step)"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (of {os.cpu_count()} CPUs)")
    print(
        f"QMENet: K = {NUM_LEARNERS} CE-Net learners, channels {channels}, layers {layers}, 1 -> 2 classes, "
        f"batch {BATCH}, fusion at all levels; EnsembleLoss(alpha=0.005) vs DiceCELoss per member"
    )
    print(f"step = {what}; quantized presets at step 2 of 4 of their schedule\n")

    results: list[dict[str, Any]] = []
    print(f"1. Step time, ensemble / sum of the 4 members alone (median of interleaved rounds; target <= {TARGET})")
    head = f"{'input':>9} {'quant':<8} {'rounds':>6} {'ens s':>7} {'sum s':>7} {'members s (b0 b1 b2 meta)':>27}"
    print(f"{head} {'ratio':>6} {'paired':>6}")
    for dims, size, reps in cases:
        x, y = make_data(dims, size)
        for quant in QUANTIZATIONS:
            net = build_ensemble(dims, quant, channels, layers)
            t = step_times(net, x, y, reps, args.optimizer)
            r = {"dims": dims, "size": size, "quantization": quant, "rounds": reps, "time": t, "net": net}
            results.append(r)
            flag = "PASS" if t["ratio"] <= TARGET else "MISS"
            m = " ".join(f"{v:6.3f}" for v in t["member_s"].values())
            print(
                f"{'x'.join([str(size)] * dims):>9} {quant:<8} {reps:>6} {t['ensemble_s']:7.3f} "
                f"{t['members_sum_s']:7.3f} {m:>27} {t['ratio']:6.3f} {t['paired_ratio']:6.3f} {flag}",
                flush=True,
            )

    print("\n2. Peak memory of one step: peak RSS growth over the resident model + inputs, MiB")
    if args.skip_memory:
        print("   (skipped)")
    else:
        sides = ["ensemble", *MEMBER_NAMES]
        specs = [
            {
                "dims": r["dims"],
                "size": r["size"],
                "quantization": r["quantization"],
                "channels": channels,
                "layers": layers,
                "threads": args.threads,
                "optimizer": args.optimizer,
            }
            for r in results
        ]
        if args.isolate_memory:  # a fresh process per case and side
            where = "one fresh subprocess per case and side"
            groups = [[{**sp, "sides": [side]}] for sp in specs for side in sides]
        elif args.quick:  # the cases one after another in one process (saves the imports)
            where = "one subprocess, cases and sides one after another"
            groups = [[{**sp, "sides": sides} for sp in specs]]
        else:
            where = "one fresh subprocess per case, sides one after another"
            groups = [[{**sp, "sides": sides}] for sp in specs]
        print(f"   ({where}; VmHWM reset before each measured step)")
        print(
            f"{'input':>9} {'quant':<8} {'resident':>8} {'ensemble':>8} {'members (b0 b1 b2 meta)':>27} "
            f"{'max':>7} {'sum':>7} {'ens/max':>7} {'ens/sum':>7}"
        )
        raw: list[dict[str, Any]] = [{} for _ in results]
        for group in groups:
            for job, out in zip(group, run_memory_workers(group)):
                raw[specs.index({k: v for k, v in job.items() if k != "sides"})].update(out)
        for r, out in zip(results, raw):
            mem = summarize_memory(out)
            r["memory"] = mem
            m = " ".join(f"{v:6.1f}" for v in mem["member_mib"].values())
            print(
                f"{'x'.join([str(r['size'])] * r['dims']):>9} {r['quantization']:<8} {mem['resident_mib']:8.1f} "
                f"{mem['ensemble_mib']:8.1f} {m:>27} {mem['max_member_mib']:7.1f} {mem['sum_members_mib']:7.1f} "
                f"{mem['ratio_to_max']:7.2f} {mem['ratio_to_sum']:7.2f}",
                flush=True,
            )
        print("   resident: RSS before the ensemble's step (libraries, 4 learners, fusion, inputs)")

    print("\n3. Where the ensemble's extra time goes (isolated, medians)")
    print(
        f"{'input':>9} {'quant':<8} {'ens-sum s':>9} {'fusion s':>8} {'divers. s':>9} "
        f"{'hooks ms':>8} {'rest s':>7} {'n_mod ms':>8} {'modules':>7}"
    )
    for r in results:
        x, _ = make_data(r["dims"], r["size"])
        b = overhead_breakdown(r["net"], x, 3 if args.quick else 7)
        extra = r["time"]["ensemble_s"] - r["time"]["members_sum_s"]
        rest = extra - b["fusion_fwd_bwd_s"] - b["diversity_fwd_bwd_s"] - b["extractor_setup_ms"] / 1e3
        r["breakdown"] = {**b, "ensemble_minus_sum_s": extra, "rest_s": rest}
        print(
            f"{'x'.join([str(r['size'])] * r['dims']):>9} {r['quantization']:<8} {extra:9.3f} "
            f"{b['fusion_fwd_bwd_s']:8.3f} {b['diversity_fwd_bwd_s']:9.3f} {b['extractor_setup_ms']:8.2f} "
            f"{rest:7.3f} {b['named_modules_ms']:8.3f} {b['modules_per_learner']:>7}",
            flush=True,
        )
    print(
        "   fusion: all fusion blocks, forward + backward; divers.: DeepDiversityLoss (faithful, 8 levels, 3 pairs);\n"
        "   hooks: FeatureExtractor construction + attach + remove for the 4 learners (per ensemble forward);\n"
        "   rest: ens-sum minus those three (gradient accumulation at the tapped maps, cache effects of a 4x larger\n"
        "   working set, noise); n_mod: one dict(named_modules()) of a learner (FeatureExtractor does 2 per learner\n"
        "   per forward); modules: modules per learner (parametrizations included)."
    )

    misses = [r for r in results if r["time"]["ratio"] > TARGET]
    print(
        f"\nTarget ensemble / sum(members) <= {TARGET}: {'MET' if not misses else 'MISSED'} "
        f"({len(results) - len(misses)}/{len(results)} cases)"
    )

    if args.json:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "channels": channels,
            "layers": layers,
            "batch": BATCH,
            "num_learners": NUM_LEARNERS,
            "step": what,
            "target": TARGET,
        }
        rows = [{k: v for k, v in r.items() if k != "net"} for r in results]
        Path(args.json).write_text(json.dumps({"config": meta, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
