"""Memory of the bundle's inference path over many consecutive volumes: it must stay flat.

Runs the bundle's 3D inference (``configs/inference.json`` + ``configs/3d.json``, the real
``ConfigWorkflow`` in this process: input screening, ``LoadImaged``, sliding window, ``SaveImaged``) over
``--volumes`` generated NIfTI volumes of varying shape around ``--size``^3, and records the resident set
size (RSS, from ``/proc/self/status``) after every volume. Reports the RSS after ``--warmup`` volumes, at
the end and at its peak, the growth (end - after warm-up, and the peak of the last ``--warmup`` volumes -
the peak of the first ``--warmup`` after the warm-up) against ``--bound`` MB, and the slope of a
least-squares line through the post-warm-up samples; plots RSS per volume. Exit status 1 if a growth
exceeds the bound.

The model has random weights (memory does not depend on them). Data and predictions go to a temporary
folder that is removed at the end.

    python benchmarks/inference_memory_benchmark.py              # 200 volumes of 56-72 voxels per axis, 48^3 windows
    python benchmarks/inference_memory_benchmark.py --quick      # 12 volumes ~32^3: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux ``/proc``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def write_volumes(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """``count`` MR-like volumes, each dimension drawn in ``[size - size/8, size + size/8]``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    for i in range(count):
        shape = tuple(int(s) for s in rng.integers(size - size // 8, size + size // 8 + 1, 3))
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
        volume = (np.linalg.norm(grid - rng.uniform(-0.3, 0.3, (3, 1, 1, 1)), axis=0) < 0.5).astype(np.float32)
        volume += 0.2 * rng.standard_normal(shape).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, affine), str(folder / f"vol_{i:04d}.nii.gz"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--roi", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--bound", type=float, default=64.0, help="allowed RSS growth after warm-up, MB")
    parser.add_argument("--plot", default="runs/inference_memory/inference_memory.png")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="12 volumes of ~32^3, 32^3 windows, warm-up 4")
    args = parser.parse_args(argv)
    if args.quick:
        args.volumes, args.size, args.roi, args.warmup = 12, 32, 32, 4
    if not 0 < 2 * args.warmup <= args.volumes:
        parser.error("need 0 < 2 x --warmup <= --volumes")
    torch.set_num_threads(1)
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from qddens_monai.data import UNTRAINED

    work = Path(tempfile.mkdtemp(prefix="qddens_memory_"))
    try:
        write_volumes(work / "data" / "imagesTs", args.volumes, args.size)
        overrides = {
            "roi_size": [args.roi] * 3,
            **UNTRAINED,  # an untrained 3D network: no plan.json beside its weights
            "dataset_dir": str(work / "data"),
            "output_dir": str(work / "pred"),
            "image_glob": "imagesTs/*.nii.gz",
            "device": torch.device("cpu"),
        }
        # as the bundle runs: inference.json's "%configs/train.json#network_def" is read from the bundle folder
        args.plot, args.json = (os.path.abspath(a) if a else a for a in (args.plot, args.json))
        os.chdir(BUNDLE)
        workflow = ConfigWorkflow(
            config_file=[str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "3d.json")],
            workflow_type="infer",
            bundle_root=str(work),
            **overrides,
        )
        (work / "models").mkdir()
        torch.save(workflow.parser.get_parsed_content("network_def").state_dict(), work / "models" / "model.pt")
        workflow.parser["save_prediction#print_log"] = False
        workflow.initialize()
        samples: list[float] = []
        evaluator = workflow.parser.get_parsed_content("evaluator")
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: samples.append(rss_mb()))
        start = time.perf_counter()
        workflow.run()
        workflow.finalize()
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(samples) != args.volumes:
        raise RuntimeError(f"recorded {len(samples)} samples for {args.volumes} volumes")
    rss = np.asarray(samples)
    after = rss[args.warmup - 1]
    x = np.arange(args.warmup, args.volumes)
    slope = float(np.polyfit(x, rss[args.warmup :], 1)[0]) * 100 if len(x) > 1 else 0.0
    swings = rss[args.warmup :] - np.polyval(np.polyfit(x, rss[args.warmup :], 1), x) if len(x) > 1 else np.zeros(1)
    # per-volume swings (buffers of different sizes freed to the OS or kept) hide in single samples:
    # compare the peaks of the first and the last window of `warmup` volumes after the warm-up, too
    first_peak, last_peak = rss[args.warmup : 2 * args.warmup].max(), rss[-args.warmup :].max()
    result = {
        "volumes": args.volumes,
        "size": args.size,
        "roi": args.roi,
        "warmup": args.warmup,
        "rss_after_warmup_mb": round(float(after), 1),
        "rss_end_mb": round(float(rss[-1]), 1),
        "rss_peak_mb": round(float(rss.max()), 1),
        "growth_mb": round(float(rss[-1] - after), 1),
        "window_peak_growth_mb": round(float(last_peak - first_peak), 1),
        "slope_mb_per_100_volumes": round(slope, 1),
        "max_swing_mb": round(float(np.abs(swings).max()), 1),
        "bound_mb": args.bound,
        "seconds_per_volume": round(seconds / args.volumes, 3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "rss_mb": [round(float(v), 2) for v in rss]}, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
        ax.plot(np.arange(1, args.volumes + 1), rss, lw=1)
        ax.axvline(args.warmup, color="grey", ls=":", lw=1)
        ax.axhline(after + args.bound, color="red", ls="--", lw=1, label=f"bound: +{args.bound:.0f} MB after warm-up")
        ax.set_xlabel("volumes inferred")
        ax.set_ylabel("RSS (MB)")
        ax.set_title(
            f"3D inference, {args.volumes} volumes ~{args.size}³: growth {result['growth_mb']:+.1f} MB", fontsize=9
        )
        ax.legend(fontsize=8, loc="center right")
        fig.tight_layout()
        fig.savefig(args.plot)
        plt.close(fig)
    return 0 if max(result["growth_mb"], result["window_peak_growth_mb"]) <= args.bound else 1


if __name__ == "__main__":
    sys.exit(main())
