"""The ``qddens-monai`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from .quantization import QUANTIZERS


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
    drive = commands.add_parser("prepare-drive", help="convert the published DRIVE layout into the bundle's inputs")
    drive.add_argument("path", help="the DRIVE folder (with training/ and test/)")
    drive.add_argument("--out", default=None, help="output folder (default: DRIVE_prepared beside PATH)")
    label = commands.add_parser(
        "label-server", help="start a MONAI Label server with the bundle (needs the label extra)"
    )
    label.add_argument("--studies", required=True, help="studies folder (NIfTI/NRRD files, DICOM series folders)")
    label.add_argument("--app-dir", default=None, help="app folder (default ~/.cache/qddens-monai/label-app-<n>d)")
    label.add_argument("--dims", type=int, default=3, choices=(2, 3), help="spatial dimensions of the studies")
    label.add_argument("--host", default="127.0.0.1")
    label.add_argument("--port", type=int, default=8000)
    label.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="bundle config value, e.g. roi_size=[96,96,96]",
    )
    label.add_argument(
        "--conf",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="MONAI Label app conf, e.g. --conf disagreement entropy",
    )
    label.add_argument("--stock-app", action="store_true", help="serve MONAI Label's stock monaibundle app instead")
    label.add_argument("--dryrun", action="store_true", help="prepare the app and check, without starting")
    label.add_argument(
        "--auth-token",
        default=None,
        help="shared token every request must send as 'Authorization: Bearer TOKEN' "
        "(better: the QDDENS_LABEL_AUTH_TOKEN environment variable; default: none)",
    )
    label.add_argument(
        "--cors-origins",
        nargs="+",
        default=[],
        metavar="ORIGIN",
        help="origins allowed cross-origin access, e.g. https://viewer.example.org (default: none)",
    )
    zoo = commands.add_parser(
        "export-zoo", help="export the trained bundle as a self-contained MONAI Model Zoo bundle folder and zip"
    )
    zoo.add_argument("--name", required=True, help="Model Zoo bundle name, e.g. retinal_vessel_fundus_segmentation")
    zoo.add_argument("--out", required=True, help="folder the bundle folder NAME and NAME.zip are written into")
    zoo.add_argument(
        "--bundle", default=None, help="the trained source bundle folder (default: the repository's bundle/)"
    )
    zoo.add_argument("--checkpoint", default=None, help="weights (default: BUNDLE/models/model.pt, or student.pt)")
    zoo.add_argument("--student", action="store_true", help="export the distilled student instead of the ensemble")
    zoo.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX float / int8 models")
    zoo.add_argument("--dataset-dir", default=None, help="images for int8 calibration and the ONNX Dice check")
    zoo.add_argument("--version", default=None, help="version of the exported bundle (default: the source's)")
    zoo.add_argument(
        "--weights-url",
        default=None,
        help="write a Model Zoo pull-request folder: files over 1 MB go to OUT/NAME_weights/ (upload "
        "them to this base address) and large_files.yml lists them with their url and sha256",
    )
    args = parser.parse_args(argv)

    if args.command == "quantization-demo":
        from .demo import run_quantization_demo

        run_quantization_demo(args.out, args.method, args.bits, args.fp_epochs, args.epochs_per_step, seed=args.seed)
    elif args.command == "prepare-drive":
        from .data import prepare_drive

        try:
            datalist = prepare_drive(args.path, args.out)
        except FileNotFoundError as e:
            parser.exit(2, f"qddens-monai prepare-drive: {e}\n")
        print(f"DRIVE converted; datalist: {datalist}")
        print(
            "Train with: python -m monai.bundle run training --config_file configs/train.json "
            f"--dataset_dir {Path(datalist).parent}"
        )
    elif args.command == "label-server":
        from .label.server import parse_overrides, start_label_server

        try:
            overrides = parse_overrides(args.override)
            start_label_server(
                args.studies,
                args.app_dir,
                args.dims,
                args.host,
                args.port,
                overrides,
                [tuple(c) for c in args.conf],
                args.stock_app,
                args.dryrun,
                args.auth_token,
                args.cors_origins,
            )
        except (ImportError, ValueError, FileNotFoundError) as e:
            parser.exit(2, f"qddens-monai label-server: {e}\n")
    elif args.command == "export-zoo":
        from .export import export_zoo

        try:
            result = export_zoo(
                args.name,
                args.out,
                bundle_dir=args.bundle,
                checkpoint=args.checkpoint,
                student=args.student,
                onnx=args.onnx,
                dataset_dir=args.dataset_dir,
                version=args.version,
                weights_url=args.weights_url,
            )
        except (ValueError, FileExistsError, FileNotFoundError, RuntimeError, KeyError) as e:
            parser.exit(2, f"qddens-monai export-zoo: {e}\n")
        print(f"exported {result.folder} and {result.zip_path}")
        if result.weights is not None:
            print(f"  upload the files of {result.weights} to {args.weights_url} (listed in large_files.yml)")
        for artifact, size in result.sizes.items():
            print(f"  {artifact}: {size / 1e6:.2f} MB")
        for kind, dice in result.onnx_dice_vs_pytorch.items():
            print(f"  {kind}: Dice {dice:.4f} vs the PyTorch model")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
