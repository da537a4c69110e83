"""The ``qddens-monai`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Optional

from qddens_monai.quantization import QUANTIZERS


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="qddens-monai", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "quantization-demo", help="train, incrementally quantize and pack a small UNet on generated 2D data"
    )
    demo.add_argument("--out", default="runs/quantization_demo", help="output folder")
    demo.add_argument("--method", default="power_of_two", choices=sorted(QUANTIZERS))
    demo.add_argument("--bits", type=int, default=5)
    demo.add_argument("--fp-epochs", type=int, default=6, help="epochs at full precision")
    demo.add_argument("--epochs-per-step", type=int, default=2, help="epochs between quantization steps")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "quantization-demo":
        from qddens_monai.demo import run_quantization_demo

        run_quantization_demo(args.out, args.method, args.bits, args.fp_epochs, args.epochs_per_step, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
