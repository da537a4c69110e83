"""Export a trained bundle as a self-contained MONAI Model Zoo bundle folder and zip, with low-bit artifacts.

The exported folder runs with only MONAI, PyTorch and the readers installed: the package is
vendored into ``scripts/qddens_monai`` and the configs point there. It is built in a hidden
temporary folder inside ``out`` and renamed into place only when complete and verified
(``verify_net_in_out`` run from the exported folder), so a failed export leaves nothing behind.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from monai.bundle import ConfigParser
from monai.data import save_net_with_metadata
from monai.inferers import sliding_window_inference
from monai.transforms import RandSpatialCropSamples, SpatialPad
from torch import nn

from ..config import REPOSITORY
from ..config import bundle_dir as repository_bundle_dir
from ..config import load_bundle_configs
from ..networks.distillation import load_checkpoint
from ..quantization import freeze, is_quantization_complete, quantization_progress, quantized_layers, save_packed
from .dependencies import bundle_dependencies
from .metadata import build_metadata
from .onnx import OnnxRuntimeNetwork, export_onnx, quantize_onnx_int8
from .readme import zoo_readme
from .vendor import rewrite_config, vendor_package
from .weights import LARGE_FILE_BYTES, check_weights_url, large_files, split_weights

__all__ = [
    "ZOO_NAME",
    "LARGE_FILE_BYTES",
    "ExportResult",
    "check_zoo_name",
    "export_zoo",
    "load_bundle_network",
    "mask_dice",
    "predict_masks",
]

PathLike = Union[str, os.PathLike]
#: Model Zoo bundle names: words joined by underscores, e.g. ``retinal_vessel_fundus_segmentation``.
ZOO_NAME = re.compile(r"^[a-z][a-zA-Z0-9]*(_[a-zA-Z0-9]+){2,}$")
_FIGURES = ("training_curves.png", "overlay.png")


@dataclass
class ExportResult:
    """What :func:`export_zoo` wrote: the bundle folder, its zip, each artifact's size and the ONNX agreement."""

    folder: Path
    zip_path: Path
    sizes: dict[str, int] = field(default_factory=dict)
    onnx_dice_vs_pytorch: dict[str, float] = field(default_factory=dict)
    #: with ``weights_url``: the folder of weight files to upload (they are listed in ``large_files.yml``).
    weights: Optional[Path] = None
    #: the ``large_files.yml`` entries (``path``, ``url``, ``hash_val``, ``hash_type``).
    large_files: list = field(default_factory=list)


def check_zoo_name(name: str) -> str:
    """Return ``name`` if it is a valid Model Zoo bundle name (``task_datatype_segmentation`` style), else raise."""
    if not isinstance(name, str) or not ZOO_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a valid Model Zoo bundle name: use at least three words of letters and digits "
            "joined by underscores, starting with a lower-case letter, e.g. 'retinal_vessel_fundus_segmentation'."
        )
    return name


def _source_configs(bundle_dir: Path, student: bool) -> list[Path]:
    names = ["inference.json"] + (["inference_student.json"] if student else [])
    files = [bundle_dir / "configs" / n for n in names]
    for f in files + [bundle_dir / "configs" / "metadata.json"]:
        if not f.is_file():
            raise FileNotFoundError(f"{f} does not exist: {bundle_dir} is not a qddens-monai bundle folder.")
    return files


def load_bundle_network(
    bundle_dir: PathLike, checkpoint: PathLike, student: bool = False, overrides: Optional[dict] = None
) -> tuple[nn.Module, ConfigParser]:
    """Build ``network_def`` of ``bundle_dir``'s inference config and load ``checkpoint`` into it, checked.

    Args:
        bundle_dir: the source bundle folder (with ``configs/``).
        checkpoint: the weights (a state dict, or a checkpoint with a ``model`` entry); their settings
            (in_channels, num_classes, modality, roi_size) are read from the ``plan.json`` beside them, else from
            ``bundle_dir/models/plan.json``, unless ``overrides`` give them.
        student: use the distilled student's network (``configs/inference_student.json`` merged in).
        overrides: config overrides (e.g. ``{"dataset_dir": ...}``).

    Raises:
        FileNotFoundError: the bundle or the checkpoint does not exist.
        RuntimeError: the checkpoint's keys do not match ``network_def``, or its quantization
            schedule has not finished (an unfrozen / untrained checkpoint).
    """
    bundle_dir = Path(bundle_dir)
    parser = ConfigParser()
    parser.read_config(load_bundle_configs(_source_configs(bundle_dir, student), bundle_dir))
    # the settings the checkpoint was trained with: the plan.json its training wrote beside it, else the bundle's
    plan = Path(checkpoint).parent / "plan.json"
    plan = plan if plan.is_file() else bundle_dir / "models" / "plan.json"
    parser.update(
        {"bundle_root": str(bundle_dir), "device": "$torch.device('cpu')", "plan_file": str(plan), **(overrides or {})}
    )
    network = parser.get_parsed_content("network_def")
    load_checkpoint(network, checkpoint)
    if any(True for _ in quantized_layers(network)) and not is_quantization_complete(network):
        done, total = quantization_progress(network)
        raise RuntimeError(
            f"checkpoint {checkpoint} is not fully quantized (the incremental schedule is at step {done} of "
            f"{total}): it is unfrozen or untrained. Export the final model.pt of a finished training run."
        )
    return network.eval(), parser


def _read_images(parser: ConfigParser, num_images: int) -> list[torch.Tensor]:
    """The first ``num_images`` images of the bundle's inference datalist, preprocessed: each (C_in, *S)."""
    preprocessing = parser.get_parsed_content("preprocessing")
    try:
        items = parser.get_parsed_content("datalist")[:num_images]
    except RuntimeError as e:  # MONAI wraps the error of a config expression; the cause names the file
        if isinstance(e.__cause__, (FileNotFoundError, ValueError)):
            raise e.__cause__ from None
        raise
    return [torch.as_tensor(preprocessing(dict(item))["image"]).float() for item in items]


def _calibration(images: list[torch.Tensor], roi: list[int], num_patches: int) -> list:
    """Random ROI patches (1, C_in, *roi) of ``images``, for ONNX Runtime's int8 calibration.

    Images smaller than ``roi`` are zero-padded to it first, as the sliding window pads them: the ONNX
    model's input size is fixed at ``roi``."""
    pad = SpatialPad(roi)
    crop = RandSpatialCropSamples(roi, num_samples=num_patches, random_size=False)
    crop.set_random_state(0)
    return [torch.as_tensor(p)[None].numpy() for img in images for p in crop(pad(img))]


def mask_dice(masks: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Foreground Dice of the label maps ``masks`` against ``reference``, pooled over all of them."""
    inter = sum(float(((a > 0) & (b > 0)).sum()) for a, b in zip(masks, reference))
    total = sum(float((a > 0).sum() + (b > 0).sum()) for a, b in zip(masks, reference))
    return 2 * inter / total if total else 1.0


def predict_masks(net: nn.Module, images: list[torch.Tensor], roi: list[int]) -> list[torch.Tensor]:
    """Argmax label maps of ``net`` on ``images`` (each (C_in, *S)) through a sliding window of ``roi``."""
    with torch.no_grad():
        return [sliding_window_inference(i[None], roi, 4, net, overlap=0.25).argmax(1) for i in images]


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=4) + "\n")


def _verify_net_in_out(folder: Path, timeout: float) -> None:
    # Run from the exported folder with the vendored code only: the same check the Model Zoo CI does.
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"verify_net_in_out failed in the exported bundle:\n{proc.stderr[-3000:]}")


def export_zoo(
    name: str,
    out: PathLike,
    bundle_dir: Optional[PathLike] = None,
    checkpoint: Optional[PathLike] = None,
    student: bool = False,
    onnx: bool = True,
    dataset_dir: Optional[PathLike] = None,
    version: Optional[str] = None,
    calibration_images: int = 2,
    calibration_patches: int = 4,
    verify_timeout: float = 600.0,
    weights_url: Optional[str] = None,
) -> ExportResult:
    """Export ``bundle_dir``'s trained model as the Model Zoo bundle ``out/name`` and ``out/name.zip``.

    Writes ``configs/`` (inference, ``inference_packed.json`` for the packed start,
    ``inference_onnx.json`` for ONNX Runtime, train / evaluate / distill for the ensemble),
    ``models/model.pt`` (the checked state dict), ``models/model.ts`` (TorchScript of the frozen
    network, traced), ``models/model_packed.bin`` (quantized weights at their bit widths,
    entropy coded), ``models/model.onnx`` and ``models/model_int8.onnx`` (ONNX Runtime static
    int8), ``scripts/qddens_monai`` (the vendored code), ``docs/README.md`` (Model Zoo layout),
    ``docs/data_license.txt``, ``LICENSE``, ``large_files.yml`` and ``configs/metadata.json``.

    Args:
        name: the bundle name (:func:`check_zoo_name`).
        out: the folder the bundle folder and zip are written into (created if missing).
        bundle_dir: the trained source bundle (default: the repository's ``bundle/``).
        checkpoint: the weights; default ``bundle_dir/models/model.pt`` (``student.pt`` with ``student``).
        student: export the distilled student (a single MONAI UNet, learner-sized) instead of the ensemble.
        onnx: also write the ONNX float and int8 models (needs ``onnx`` and ``onnxruntime``).
        dataset_dir: images for int8 calibration and the ONNX-vs-PyTorch Dice (default: the
            bundle's ``dataset_dir``; its demo set is generated there when it is empty).
        version: the exported bundle's version (default: the source metadata's).
        calibration_images: images read for calibration and the Dice check.
        calibration_patches: random ROI patches per image for calibration.
        verify_timeout: seconds allowed for ``verify_net_in_out``.
        weights_url: write a Model Zoo pull-request folder: files over 1 MB (the zoo's pre-commit limit)
            move to ``out/name_weights/`` (to upload to this base address) and ``large_files.yml``
            lists them (``url`` = ``weights_url/<file name>``, sha256). Default: keep them in the folder
            (a bundle to run locally; ``large_files.yml`` is empty). The zip always holds everything.

    Raises:
        ValueError: invalid name, or an empty / non-http ``weights_url``.
        FileExistsError: ``out/name`` or ``out/name.zip`` exists (nothing is overwritten).
        FileNotFoundError: missing bundle or checkpoint.
        RuntimeError: checkpoint not matching ``network_def`` or not fully quantized; a failed check.
    """
    check_zoo_name(name)
    bundle_dir = Path(bundle_dir).resolve() if bundle_dir is not None else repository_bundle_dir()
    out = Path(out).resolve()
    folder, zip_path, weights = out / name, out / f"{name}.zip", out / f"{name}_weights"
    if weights_url is not None:
        weights_url = check_weights_url(weights_url)
    for existing in (folder, zip_path) + ((weights,) if weights_url is not None else ()):
        if existing.exists():
            raise FileExistsError(f"{existing} already exists; choose another --out or remove it first.")
    checkpoint = Path(checkpoint) if checkpoint else bundle_dir / "models" / ("student.pt" if student else "model.pt")
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"checkpoint {checkpoint} does not exist; "
            + ("distil the student first (configs/distill.json)." if student else "train the bundle first.")
        )
    overrides = {"dataset_dir": str(dataset_dir)} if dataset_dir else {}
    network, parser = load_bundle_network(bundle_dir, checkpoint, student, overrides)
    quantized = any(True for _ in quantized_layers(network))

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{name}.tmp{os.getpid()}"
    tmp_zip = out / f".{name}.zip.tmp{os.getpid()}"
    tmp_weights = out / f".{name}_weights.tmp{os.getpid()}"
    try:
        result = _build(
            name,
            tmp,
            bundle_dir,
            network,
            parser,
            student,
            quantized,
            onnx,
            version,
            calibration_images,
            calibration_patches,
            verify_timeout,
        )
        _write_zip(tmp, tmp_zip, name)
        if weights_url is not None:
            result.large_files = split_weights(tmp, tmp_weights, weights_url)
            too_large = large_files(tmp)
            if too_large:  # split_weights moved every one of them; guard the pull request's 1 MB limit anyway
                raise RuntimeError(f"files over {LARGE_FILE_BYTES} bytes left in the pull-request folder: {too_large}")
            os.replace(tmp_weights, weights)
            result.weights = weights
        os.replace(tmp, folder)
        os.replace(tmp_zip, zip_path)
    except BaseException:
        if weights_url is not None and not folder.exists():  # the weights were placed, the folder not
            shutil.rmtree(weights, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp_weights, ignore_errors=True)
        tmp_zip.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed export into a new folder leaves no empty folder either
    result.folder, result.zip_path = folder, zip_path
    result.sizes["zip"] = zip_path.stat().st_size
    return result


def _write_zip(folder: Path, target: Path, name: str) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                z.write(f, (Path(name) / f.relative_to(folder)).as_posix())


def _build(
    name: str,
    tmp: Path,
    bundle_dir: Path,
    network: nn.Module,
    parser: ConfigParser,
    student: bool,
    quantized: bool,
    onnx: bool,
    version: Optional[str],
    calibration_images: int,
    calibration_patches: int,
    verify_timeout: float,
) -> ExportResult:
    configs, models, docs = tmp / "configs", tmp / "models", tmp / "docs"
    for d in (configs, models, docs):
        d.mkdir(parents=True)
    result = ExportResult(tmp, tmp)

    # Configs: the bundle's own, with module names pointing at the vendored package and the file macros
    # ("%configs/train.json#network_def") inlined: the Model Zoo's CI reads them from its repository's root.
    src = bundle_dir / "configs"
    inference = load_bundle_configs(_source_configs(bundle_dir, student), bundle_dir)
    # the source model's planned settings, written out: the zoo bundle runs without the plan file beside it
    plan = dict(parser.get_parsed_content("plan"))
    inference.update(plan)
    inference["model_path"] = "$@bundle_root + '/models/model.pt'"
    inference["output_dir"] = "$@bundle_root + '/eval/predictions'"
    _write_json(configs / "inference.json", rewrite_config(inference))
    shutil.copy2(src / "logging.conf", configs / "logging.conf")
    if not student:
        for f in sorted(src.glob("*.json")):
            if f.name not in ("inference.json", "metadata.json", "inference_student.json"):
                _write_json(configs / f.name, rewrite_config(load_bundle_configs(f, bundle_dir, merge=False)))
    for extra, wanted in (("inference_packed.json", quantized), ("inference_onnx.json", onnx)):
        if wanted:
            _write_json(configs / extra, rewrite_config(load_bundle_configs(src / extra, bundle_dir, merge=False)))
    vendor_package(tmp)  # only the modules the written configs import

    # Weights: the checked state dict, TorchScript of the frozen network, packed low-bit weights.
    torch.save(network.state_dict(), models / "model.pt")
    # evaluate.json and distill.json read the plan beside the model; written as the zoo's pre-commit formats JSON
    source_plan = Path(parser.get_parsed_content("plan_file"))
    trained = json.loads(source_plan.read_text()) if source_plan.is_file() else {}
    _write_json(models / "plan.json", {**trained, "settings": {**trained.get("settings", {}), **plan}})
    roi = list(plan["roi_size"])
    example = torch.rand(1, int(plan["in_channels"]), *roi, generator=torch.Generator().manual_seed(0))
    if quantized:
        save_packed(network, models / "model_packed.bin", entropy_coding=True)
    frozen = freeze(copy.deepcopy(network)).eval()

    meta_base = json.loads((src / "metadata.json").read_text())
    what = "distilled UNet student" if student else "QDD-Ens ensemble"
    overrides = {"name": f"{meta_base.get('name', name)} ({'student' if student else 'ensemble'})"}
    if student:
        overrides["description"] = (
            "A single MONAI UNet distilled from the QDD-Ens ensemble (knowledge distillation: DiceCE on the labels "
            "plus KL to the ensemble's mean probability); about 1/K of the ensemble's cost. "
            + meta_base.get("description", "")
        )
    artifacts = ["TorchScript"] + (["packed low-bit"] if quantized else []) + (["ONNX float / int8"] if onnx else [])
    change = f"Model Zoo export of the {what} with {', '.join(artifacts)} artifacts; code vendored in scripts/"
    deps = bundle_dependencies(tmp)  # what each written config imports, through the vendored code
    # the workflows the zoo's CI creates and its unit tests run (inference, train, evaluate) need theirs installed
    required = set().union(*(deps.get(c, set()) for c in ("inference.json", "train.json", "evaluate.json")))
    optional = set().union(*deps.values()) - required  # -> metadata "extra_packages_version"
    meta = build_metadata(
        meta_base, change, version, packages=tuple(required), overrides=overrides, optional_packages=tuple(optional)
    )
    _write_json(configs / "metadata.json", meta)

    with torch.no_grad():
        traced = torch.jit.trace(frozen, example, check_trace=False)
    extra = {"inference.json": json.dumps(rewrite_config(inference)).encode()}
    save_net_with_metadata(
        traced,
        str(models / "model.ts"),
        include_config_vals=False,
        append_timestamp=False,
        meta_values=meta,
        more_extra_files=extra,
    )

    onnx_paths: dict[str, Path] = {}
    if onnx:
        onnx_paths["onnxruntime_float"] = export_onnx(frozen, models / "model.onnx", example)
        images = _read_images(parser, calibration_images)
        onnx_paths["onnxruntime_int8"] = quantize_onnx_int8(
            onnx_paths["onnxruntime_float"], models / "model_int8.onnx", _calibration(images, roi, calibration_patches)
        )
        reference = predict_masks(frozen, images, roi)
        result.onnx_dice_vs_pytorch = {
            k: mask_dice(predict_masks(OnnxRuntimeNetwork(p), images, roi), reference) for k, p in onnx_paths.items()
        }

    # Documents.
    shutil.copy2(bundle_dir / "docs" / "data_license.txt", docs / "data_license.txt")
    license_file = REPOSITORY / "LICENSE"
    if license_file.is_file():
        shutil.copy2(license_file, tmp / "LICENSE")
    figures = [f for f in _FIGURES if (REPOSITORY / "docs" / "images" / f).is_file()]
    for f in figures:
        shutil.copy2(REPOSITORY / "docs" / "images" / f, docs / f)
    result.sizes = {p.name: p.stat().st_size for p in sorted(models.iterdir())}
    (docs / "README.md").write_text(zoo_readme(name, meta, student, quantized, result, figures))
    (tmp / "large_files.yml").write_text("large_files: []\n")  # split_weights lists the weights, if asked
    _verify_net_in_out(tmp, verify_timeout)
    return result
