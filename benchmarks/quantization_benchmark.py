"""Quantization overhead and storage, measured in one run.

1. Training step time (forward + backward + Adam step) of a quantized MONAI ``UNet`` over
   the same float ``UNet``, per method, 2D 256x256 and 3D 64^3, batch 2. Float and quantized
   steps are interleaved and the medians compared, so machine noise hits both alike.
   Targets: <= 1.15 for the incremental methods, <= 1.3 for the straight-through ones.
2. Packed size of the quantized tensors vs their float32 size at 2..8 bits, fixed-width
   and entropy-coded. Target: >= 0.95 x 32/b fixed-width; entropy-coded beyond 32/b.

Usage: ``python benchmarks/quantization_benchmark.py [--quick] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.networks.nets import UNet

from qddens_monai.quantization import (
    QUANTIZERS,
    is_quantization_complete,
    quantization_step,
    quantize_network,
    save_packed,
)


def make_unet(dims: int, channels: tuple[int, ...]) -> UNet:
    torch.manual_seed(0)
    return UNet(dims, 1, 2, channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=2)


def step_time_ratio(dims: int, size: int, channels: tuple[int, ...], method: str, reps: int) -> dict:
    bits = 2 if method == "ternary" else 5
    nets = {"float": make_unet(dims, channels), "quantized": make_unet(dims, channels)}
    quantize_network(nets["quantized"], method, bits, partition="two_stage")
    if QUANTIZERS[method].incremental:
        quantization_step(nets["quantized"])
        quantization_step(nets["quantized"])  # mid-schedule: 60 % frozen, 40 % still training
    optimizers = {k: torch.optim.Adam(n.parameters(), lr=1e-3) for k, n in nets.items()}
    x = torch.randn(2, 1, *([size] * dims))
    y = torch.randint(0, 2, (2, *([size] * dims)))
    times: dict[str, list[float]] = {"float": [], "quantized": []}
    for rep in range(reps + 1):
        for key in ("float", "quantized") if rep % 2 else ("quantized", "float"):
            start = time.perf_counter()
            optimizers[key].zero_grad()
            torch.nn.functional.cross_entropy(nets[key](x), y).backward()
            optimizers[key].step()
            if rep > 0:  # the first round warms up
                times[key].append(time.perf_counter() - start)
    f, q = statistics.median(times["float"]), statistics.median(times["quantized"])
    return {"dims": dims, "size": size, "method": method, "bits": bits, "float_s": f, "quantized_s": q, "ratio": q / f}


def packed_sizes(method: str, bits: int, channels: tuple[int, ...]) -> dict:
    net = quantize_network(make_unet(3, channels), method, bits, partition="magnitude")
    while not is_quantization_complete(net):
        quantization_step(net)
    with tempfile.TemporaryDirectory() as d:
        fixed = save_packed(net, Path(d) / "a.qdd")
        coded = save_packed(net, Path(d) / "b.qdd", entropy_coding=True)
    float_bytes = 4 * fixed.quantized_params
    return {
        "method": method,
        "bits": bits,
        "params": fixed.quantized_params,
        "ratio_fixed": float_bytes / fixed.quantized_bytes,
        "ratio_entropy": float_bytes / coded.quantized_bytes,
        "ideal": 32 / bits,
        "bits_per_weight_entropy": coded.bits_per_quantized_weight,
        "file_bytes_fixed": fixed.file_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (checks the harness)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared machine's noise low)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    channels = (8, 16, 32) if args.quick else (16, 32, 64, 128, 256)
    cases = [(2, 64, 3), (3, 32, 3)] if args.quick else [(2, 256, 7), (3, 64, 5)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; UNet channels {channels}, batch 2\n")

    print("1. Training step time, quantized / float (median of interleaved steps)")
    print(f"{'input':>10} {'method':<13} {'float s':>8} {'quant s':>8} {'ratio':>6} {'target':>6}")
    timings = []
    for dims, size, reps in cases:
        for method in QUANTIZERS:
            r = step_time_ratio(dims, size, channels, method, reps)
            target = 1.15 if QUANTIZERS[method].incremental else 1.3
            r["target"] = target
            timings.append(r)
            flag = "ok" if r["ratio"] <= target else "MISS"
            print(
                f"{'x'.join([str(size)] * dims):>10} {method:<13} {r['float_s']:8.3f} {r['quantized_s']:8.3f} "
                f"{r['ratio']:6.3f} {target:>6} {flag}",
                flush=True,
            )

    print("\n2. Packed size of the quantized tensors, float32 / packed (3D UNet)")
    print(
        f"{'method':<13} {'bits':>4} {'params':>9} {'fixed':>7} "
        f"{'0.95x32/b':>9} {'lzma':>7} {'32/b':>6} {'lzma bits/w':>11}"
    )
    sizes = []
    for method in ("power_of_two", "uniform"):
        for bits in range(2, 9):
            s = packed_sizes(method, bits, channels)
            sizes.append(s)
            flag = "ok" if s["ratio_fixed"] >= 0.95 * s["ideal"] else "MISS"
            print(
                f"{method:<13} {bits:>4} {s['params']:>9,} {s['ratio_fixed']:7.2f} {0.95 * s['ideal']:9.2f} "
                f"{s['ratio_entropy']:7.2f} {s['ideal']:6.2f} {s['bits_per_weight_entropy']:11.2f} {flag}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"step_time": timings, "packed_size": sizes}, indent=2))


if __name__ == "__main__":
    main()
