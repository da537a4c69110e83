"""What the quantization of a network looks like: per tensor and in total."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Union

import torch
from torch import nn

from ..files import atomic_write_text
from .network import quantized_layers
from .parametrizations import IncrementalQuantization

__all__ = ["TensorQuantization", "QuantizationReport", "quantization_report", "write_quantization_report"]


@dataclass
class TensorQuantization:
    """One quantized weight tensor."""

    name: str
    shape: tuple[int, ...]
    method: str
    bits: int
    schedule: str  # "incremental" or "straight_through"
    numel: int
    levels_used: int  # distinct values among the weights that are on the grid
    fraction_frozen: float  # share of the weights frozen by the incremental schedule
    fraction_quantized: float  # share of the weights the forward sees quantized


@dataclass
class QuantizationReport:
    """Per-tensor quantization of a network, with totals over all quantized tensors."""

    tensors: list[TensorQuantization] = field(default_factory=list)
    float_params: int = 0  # parameters left in float (norms, biases, unquantized layers)

    @property
    def quantized_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def fraction_frozen(self) -> float:
        n = self.quantized_params
        return sum(t.fraction_frozen * t.numel for t in self.tensors) / n if n else 0.0

    @property
    def fraction_quantized(self) -> float:
        n = self.quantized_params
        return sum(t.fraction_quantized * t.numel for t in self.tensors) / n if n else 0.0

    @property
    def quantized_bits(self) -> int:
        """Bits the quantized tensors need at their bit widths."""
        return sum(t.numel * t.bits for t in self.tensors)

    def to_dict(self) -> dict:
        return {
            "tensors": [asdict(t) for t in self.tensors],
            "totals": {
                "quantized_tensors": len(self.tensors),
                "quantized_params": self.quantized_params,
                "float_params": self.float_params,
                "fraction_frozen": self.fraction_frozen,
                "fraction_quantized": self.fraction_quantized,
                "mean_bits": self.quantized_bits / self.quantized_params if self.quantized_params else 0.0,
            },
        }

    def __str__(self) -> str:
        width = max([len("tensor")] + [len(t.name) for t in self.tensors])
        head = (
            f"{'tensor':<{width}}  {'method':<12} {'bits':>4} {'levels':>6} {'frozen':>7} {'quant.':>7} {'params':>9}"
        )
        lines = [head, "-" * len(head)]
        for t in self.tensors:
            lines.append(
                f"{t.name:<{width}}  {t.method:<12} {t.bits:>4} {t.levels_used:>6} "
                f"{t.fraction_frozen:>7.1%} {t.fraction_quantized:>7.1%} {t.numel:>9,}"
            )
        totals = self.to_dict()["totals"]
        lines += [
            "-" * len(head),
            f"{len(self.tensors)} quantized tensors, {self.quantized_params:,} quantized and "
            f"{self.float_params:,} float parameters; {totals['fraction_frozen']:.1%} frozen, "
            f"{totals['fraction_quantized']:.1%} quantized, {totals['mean_bits']:.2f} bits per quantized weight.",
        ]
        return "\n".join(lines)


@torch.no_grad()
def quantization_report(net: nn.Module) -> QuantizationReport:
    """Method, bits, distinct levels used and fraction frozen of every quantized tensor of ``net``."""
    report = QuantizationReport()
    quantized_ids = set()
    for name, layer, q in quantized_layers(net):
        weights = layer.parametrizations["weight"]
        quantized_ids.add(id(weights.original))
        effective = layer.weight
        if isinstance(q, IncrementalQuantization):
            frozen = float(q.mask.float().mean())
            on_grid = effective[q.mask]
            schedule = "incremental"
        else:
            frozen, on_grid, schedule = 0.0, effective, "straight_through"
        report.tensors.append(
            TensorQuantization(
                name=f"{name}.weight" if name else "weight",
                shape=tuple(effective.shape),
                method=q.quantizer.name,
                bits=q.quantizer.bits,
                schedule=schedule,
                numel=effective.numel(),
                levels_used=int(torch.unique(on_grid).numel()),
                fraction_frozen=frozen,
                fraction_quantized=frozen if schedule == "incremental" else 1.0,
            )
        )
    report.float_params = sum(p.numel() for p in net.parameters() if id(p) not in quantized_ids)
    return report


def write_quantization_report(net: nn.Module, output_dir: Union[str, os.PathLike]) -> QuantizationReport:
    """Write ``quantization_report.txt`` and ``.json`` for ``net`` (unwrapping DDP) into ``output_dir``."""
    net = getattr(net, "module", net)
    report = quantization_report(net)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = (
        ("quantization_report.txt", str(report) + "\n"),
        ("quantization_report.json", json.dumps(report.to_dict(), indent=2)),
    )
    for name, text in files:
        atomic_write_text(out / name, text)
    return report
