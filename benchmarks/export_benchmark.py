"""Deployment figures of the exported model: artifact sizes and CPU inference latency, in one run.

1. Sizes of the ensemble's weights: float32 state dict (``torch.save`` of the frozen network),
   packed at the trained bit widths (fixed width), packed with entropy coding (LZMA), and the
   float32 state dict zipped (deflate), each as a ratio float32 / that. Two ensembles:
   - the shipped bundle model (``qme_net`` preset: base learners at 4/5/6 bits in order, meta learner 16);
   - the same trained weights re-quantized at the ``qdd_ens`` 5-bit preset (every learner at 5
     bits, quantization schedule run to the end without retraining: a size figure only);
   - the same with the fusion blocks' convolutions also quantized at 5 bits (the presets keep
     them float; an informative variant, not a trained model).
   Target: ``qdd_ens`` packed size <= 1/5 of float32; the physical reference is 32/b = 6.4.
2. Latency of sliding-window inference on one 2D image (the shipped model, ROI 64^2) and one
   3D volume (the bundle's 3D switch, ROI 48^3, ``qme_net`` preset, weights of a fresh network:
   latency does not depend on them): eager PyTorch (frozen), TorchScript (traced, and scripted as the
   Model Zoo's ``ckpt_export`` does), ONNX Runtime
   float and ONNX Runtime int8 (static QDQ, calibrated on patches of the input data), and the
   distilled student's architecture (``inference_student.json``) eager. The methods are run round-robin after a
   warm-up round, medians compared; all ratios are eager ensemble / method.
   Targets: student >= (K - 1)x faster than the ensemble; ONNX Runtime int8 >= 1.5x faster than
   eager float with Dice (vs the label, 2D demo test images) within 0.01 of eager float's.

Threads default to 1 (PyTorch and ONNX Runtime alike) on the shared 2-core machine. Results go
to ``runs/export_benchmark/results.json`` (gitignored) and are printed.

Usage: ``python benchmarks/export_benchmark.py [--quick] [--out DIR] [--threads N] [--reps N] [--sw-batch-size N]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import sliding_window_inference
from monai.transforms import LoadImage
from torch import nn

from qddens_monai.config import load_bundle_configs
from qddens_monai.data import UNTRAINED, ensure_demo_data, label_transform
from qddens_monai.export import OnnxRuntimeNetwork, export_onnx, mask_dice, quantize_onnx_int8
from qddens_monai.export.zoo import load_bundle_network
from qddens_monai.networks import quantization_preset
from qddens_monai.quantization import (
    freeze,
    is_quantization_complete,
    quantization_progress,
    quantization_step,
    quantize_network,
    save_packed,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
SIZE_TARGET = 5.0
INT8_SPEED_TARGET = 1.5
DICE_TOLERANCE = 0.01


def parse(configs: list[str], overrides: dict[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(load_bundle_configs([CONFIGS / c for c in configs]))
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", **overrides})
    return parser


def complete_schedule(net: nn.Module) -> nn.Module:
    """Run every remaining incremental quantization step (no training in between)."""
    done, total = quantization_progress(net)
    for _ in range(total - done):
        quantization_step(net)
    assert is_quantization_complete(net)
    return net


# ---------------------------------------------------------------------------------------------- sizes
def file_sizes(net: nn.Module, work: Path, tag: str) -> dict[str, Any]:
    """float32 / packed / entropy-coded / zip sizes of the quantized ``net`` (bytes and ratios)."""
    float_file = work / f"{tag}_float32.pt"
    torch.save(freeze(copy.deepcopy(net)).state_dict(), float_file)
    packed = save_packed(net, work / f"{tag}_packed.bin")
    entropy = save_packed(net, work / f"{tag}_entropy.bin", entropy_coding=True)
    zipped = work / f"{tag}_float32.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(float_file, float_file.name)
    f32 = float_file.stat().st_size
    return {
        "float32_bytes": f32,
        "packed_bytes": packed.file_bytes,
        "packed_quantized_bytes": packed.quantized_bytes,
        "packed_float_bytes": packed.float_bytes,
        "packed_bits_per_weight": round(packed.bits_per_quantized_weight, 3),
        "entropy_bytes": entropy.file_bytes,
        "entropy_bits_per_weight": round(entropy.bits_per_quantized_weight, 3),
        "zip_float32_bytes": zipped.stat().st_size,
        "ratio_packed": f32 / packed.file_bytes,
        "ratio_entropy": f32 / entropy.file_bytes,
        "ratio_zip": f32 / zipped.stat().st_size,
    }


def size_figures(shipped: nn.Module, work: Path, quick: bool) -> dict[str, Any]:
    results = {"qme_net (shipped)": file_sizes(shipped, work, "qme_net")}

    # The shipped weights at the QDD-Ens preset: a float ensemble of the same architecture gets them,
    # then every learner is quantized at 5 bits and its schedule run to the end.
    trained = freeze(copy.deepcopy(shipped)).state_dict()
    plain = parse(["inference.json"], {"quantization": "float"}).get_parsed_content("network_def")
    plain.load_state_dict(trained)
    learners = [*plain.base_learners, plain.meta_learner]
    for learner, setting in zip(learners, quantization_preset("qdd_ens", len(learners))):
        quantize_network(learner, **setting)
    results["qdd_ens 5 bits"] = file_sizes(complete_schedule(plain), work, "qdd_ens")
    if quick:
        return results
    quantize_network(plain.fusion, method="log_minmax", bits=5, partition="two_stage", seed=99)
    complete_schedule(plain.fusion)
    results["qdd_ens 5 bits + fusion convs 5 bits"] = file_sizes(plain, work, "qdd_ens_fusion")
    return results


# -------------------------------------------------------------------------------------------- latency
def timed_rounds(methods: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median seconds per call of each method; methods interleaved round by round after a warm-up.

    Two warm-up calls each: TorchScript's profiling executor optimizes the graph on the second.
    """
    for fn in methods.values():
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(reps):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        for k in order:
            t = time.perf_counter()
            methods[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def crops(image: torch.Tensor, roi: list[int], n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` random ROI patches (1, C, *roi) of ``image`` (C, *S) for int8 calibration."""
    g = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = [int(g.integers(0, s - r + 1)) for s, r in zip(image.shape[1:], roi)]
        sl = tuple(slice(a, a + r) for a, r in zip(start, roi))
        out.append(image[(slice(None), *sl)][None].numpy())
    return out


def latency_case(
    ensemble: nn.Module,
    student: nn.Module,
    image: torch.Tensor,
    roi: list[int],
    calibration: list[np.ndarray],
    work: Path,
    tag: str,
    reps: int,
    threads: int,
    eval_images: list[tuple[torch.Tensor, torch.Tensor]],
    sw_batch_size: int = 4,
) -> dict[str, Any]:
    """Latency of every deployment path on ``image`` (C, *S); Dice vs the label on ``eval_images`` if given."""
    frozen = freeze(copy.deepcopy(ensemble)).eval()
    example = torch.from_numpy(calibration[0])
    with torch.no_grad():
        traced = torch.jit.trace(frozen, example, check_trace=False)
    scripted = torch.jit.script(copy.deepcopy(frozen))  # what the zoo's ckpt_export makes of network_def
    onnx_float = export_onnx(frozen, work / f"{tag}.onnx", example)
    onnx_int8 = quantize_onnx_int8(onnx_float, work / f"{tag}_int8.onnx", calibration)
    nets = {
        "eager float": frozen,
        "TorchScript traced": traced,
        "TorchScript scripted": scripted,
        "ONNX Runtime float": OnnxRuntimeNetwork(onnx_float, num_threads=threads),
        "ONNX Runtime int8": OnnxRuntimeNetwork(onnx_int8, num_threads=threads),
        "student eager": student.eval(),
    }
    x = image[None]

    def infer(net: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sliding_window_inference(inp, roi, sw_batch_size, net, overlap=0.25)

    seconds = timed_rounds({k: (lambda n=n: infer(n, x)) for k, n in nets.items()}, reps)
    ref = seconds["eager float"]
    result: dict[str, Any] = {
        "input": list(image.shape),
        "roi": roi,
        "sw_batch_size": sw_batch_size,
        "seconds": seconds,
        "speedup_vs_eager_ensemble": {k: ref / v for k, v in seconds.items()},
    }
    masks = {k: [infer(n, x).argmax(1)] for k, n in nets.items() if k != "student eager"}
    result["mask_dice_vs_eager"] = {k: mask_dice(v, masks["eager float"]) for k, v in masks.items()}
    if eval_images:
        dice = {}
        for k in ("eager float", "ONNX Runtime float", "ONNX Runtime int8"):
            preds = [infer(nets[k], img[None]).argmax(1) for img, _ in eval_images]
            dice[k] = mask_dice(preds, [lab for _, lab in eval_images])
        result["dice_vs_label"] = dice
    return result


def latency_figures(
    ensemble: nn.Module, work: Path, quick: bool, reps: int, threads: int, sw_batch_size: int
) -> dict[str, Any]:
    results = {}
    # 2D: the shipped ensemble; the test images of the 2D demo set (at the size it was trained on).
    data2d = work / "demo_2d"
    ensure_demo_data(data2d, spatial_dims=2, size=128)
    p2 = parse(["inference.json"], {"dataset_dir": str(data2d)})
    roi2 = list(p2.get_parsed_content("plan#roi_size"))
    pre = p2.get_parsed_content("preprocessing")
    load_label = LoadImage(image_only=True, ensure_channel_first=True)
    binarize = label_transform("label", num_classes=2)
    test = json.loads((data2d / "dataset.json").read_text())["test"]
    eval_images = []
    for item in test[: 1 if quick else len(test)]:
        img = torch.as_tensor(pre({"image": str(data2d / item["image"])})["image"]).float()
        lab = {"label": load_label(str(data2d / item["label"]))}
        for t in binarize:
            lab = t(lab)
        eval_images.append((img, torch.as_tensor(lab["label"])[None, 0].long()))
    student = parse(["inference.json", "inference_student.json"], {}).get_parsed_content("network_def")
    size2 = roi2[0] if quick else 256
    image2 = torch.nn.functional.interpolate(eval_images[0][0][None], size=(size2, size2), mode="bilinear")[0]
    calib2 = [c for img, _ in eval_images for c in crops(img, roi2, 1 if quick else 4)]
    results["2D"] = latency_case(
        ensemble, student, image2, roi2, calib2, work, "ens2d", reps, threads, eval_images, sw_batch_size
    )

    # 3D: the bundle's 3D switch; a synthetic volume.
    p3 = parse(["inference.json", "3d.json"], {**UNTRAINED, "roi_size": [32, 32, 32] if quick else [48, 48, 48]})
    roi3 = list(p3.get_parsed_content("plan#roi_size"))
    ensemble3 = complete_schedule(p3.get_parsed_content("network_def"))
    student3 = parse(["inference.json", "3d.json", "inference_student.json"], UNTRAINED).get_parsed_content(
        "network_def"
    )
    from monai.data.synthetic import create_test_image_3d

    side = roi3[0] if quick else 96
    vol, _ = create_test_image_3d(
        side,
        side,
        side,
        num_objs=8,
        rad_min=2,
        rad_max=max(4, side // 6),
        noise_max=0.2,
        random_state=np.random.RandomState(0),
    )
    image3 = torch.from_numpy(vol.astype(np.float32))[None]
    calib3 = crops(image3, roi3, 1 if quick else 4)
    results["3D"] = latency_case(
        ensemble3, student3, image3, roi3, calib3, work, "ens3d", reps, threads, [], sw_batch_size
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="one window per case, 1 round, no fusion variant (checks the harness)"
    )
    parser.add_argument("--out", default=str(REPO / "runs" / "export_benchmark"), help="results folder")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch and ONNX Runtime threads (default 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds (default 5, quick 1)")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward (the bundle's inferer: 4)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the 3D ensemble and the students are freshly initialised
    reps = args.reps or (1 if args.quick else 5)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        shipped, _ = load_bundle_network(BUNDLE, BUNDLE / "models" / "model.pt")
        t0 = time.perf_counter()
        sizes = size_figures(shipped, work, args.quick)
        t1 = time.perf_counter()
        latency = latency_figures(shipped, work, args.quick, reps, args.threads, args.sw_batch_size)
        print(f"(sizes took {t1 - t0:.0f} s, latency {time.perf_counter() - t1:.0f} s)")
    num_learners = shipped.num_learners

    print("\nSizes (float32 state dict of the frozen ensemble / each format; physical reference 32/b):")
    print(f"{'model':40s} {'float32':>9s} {'packed':>9s} {'x':>6s} {'entropy':>9s} {'x':>6s} {'zip':>9s} {'x':>6s}")
    for name, s in sizes.items():
        print(
            f"{name:40s} {s['float32_bytes'] / 1e6:8.2f}M {s['packed_bytes'] / 1e6:8.2f}M {s['ratio_packed']:6.2f} "
            f"{s['entropy_bytes'] / 1e6:8.2f}M {s['ratio_entropy']:6.2f} {s['zip_float32_bytes'] / 1e6:8.2f}M "
            f"{s['ratio_zip']:6.2f}"
        )
        print(
            f"{'':40s} packed: {s['packed_quantized_bytes'] / 1e3:.0f} kB codes at {s['packed_bits_per_weight']} "
            f"bits/weight + {s['packed_float_bytes'] / 1e3:.0f} kB float; entropy-coded "
            f"{s['entropy_bits_per_weight']} bits/weight"
        )
    qdd = sizes["qdd_ens 5 bits"]
    verdict = {
        "size_qdd_ens_packed_ge_5x": qdd["ratio_packed"] >= SIZE_TARGET,
        "size_qdd_ens_entropy_ge_5x": qdd["ratio_entropy"] >= SIZE_TARGET,
    }
    for case, r in latency.items():
        print(
            f"\nLatency {case}: input {r['input']}, ROI {r['roi']}, {r['sw_batch_size']} window(s) per forward, "
            f"{reps} round(s), {args.threads} thread(s)"
        )
        for k, sec in r["seconds"].items():
            print(
                f"  {k:22s} {sec * 1e3:9.1f} ms   {r['speedup_vs_eager_ensemble'][k]:5.2f}x vs eager ensemble   "
                f"mask Dice vs eager {r['mask_dice_vs_eager'].get(k, float('nan')):.4f}"
            )
        if "dice_vs_label" in r:
            print("  Dice vs label: " + ", ".join(f"{k} {v:.4f}" for k, v in r["dice_vs_label"].items()))
        sp = r["speedup_vs_eager_ensemble"]
        verdict[f"{case}_student_ge_{num_learners - 1}x"] = sp["student eager"] >= num_learners - 1
        verdict[f"{case}_int8_ge_1.5x"] = sp["ONNX Runtime int8"] >= INT8_SPEED_TARGET
        if "dice_vs_label" in r:
            d = r["dice_vs_label"]
            verdict[f"{case}_int8_dice_within_0.01"] = d["ONNX Runtime int8"] >= d["eager float"] - DICE_TOLERANCE
    print("\nTargets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in verdict.items()))
    results = {
        "quick": args.quick,
        "threads": args.threads,
        "reps": reps,
        "sizes": sizes,
        "latency": latency,
        "targets": verdict,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out / 'results.json'}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
