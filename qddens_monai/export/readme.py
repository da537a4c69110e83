"""``docs/README.md`` of an exported bundle, with the sections of the Model Zoo's README template."""

from __future__ import annotations

__all__ = ["zoo_readme"]

_ARTIFACTS = {
    "model.pt": "state dict for `network_def` (PyTorch); quantized weights keep their quantization state",
    "model.ts": "TorchScript of the frozen network (traced at the ROI size)",
    "model_packed.bin": "quantized weights at their bit widths, entropy coded; `configs/inference_packed.json`",
    "model.onnx": "ONNX of the frozen network, float32; `configs/inference_onnx.json`",
    "model_int8.onnx": "ONNX Runtime static int8 (QDQ, per channel); `configs/inference_onnx.json` "
    "with `--onnx_file models/model_int8.onnx`",
}


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _commands(student: bool, quantized: bool, onnx: bool) -> str:
    inference = "python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/images"
    if student:
        return f"""#### Execute inference:

```bash
{inference}
```

The student is distilled from the ensemble with the source bundle's `configs/distill.json`; this export
carries its inference only (no training configs)."""
    parts = ["""#### Execute training:

```bash
python -m monai.bundle run training --config_file configs/train.json --dataset_dir /path/to/dataset
```

#### Override the `train` config to execute multi-GPU training:

```bash
torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run training \\
    --config_file "['configs/train.json','configs/multi_gpu_train.json']"
```

#### Override the `train` config to execute evaluation with the trained model:

```bash
python -m monai.bundle run evaluating --config_file "['configs/train.json','configs/evaluate.json']"
```

Multi-GPU evaluation is not provided: evaluation runs in one process.

#### Execute inference:

```bash
""" + inference + "\n```"]
    if quantized:
        parts.append("""#### Execute inference from the packed low-bit weights:

```bash
python -m monai.bundle run --config_file "['configs/inference.json','configs/inference_packed.json']"
```""")
    if onnx:
        parts.append("""#### Execute inference with ONNX Runtime on the CPU, float or int8:

```bash
python -m monai.bundle run --config_file "['configs/inference.json','configs/inference_onnx.json']"
python -m monai.bundle run --config_file "['configs/inference.json','configs/inference_onnx.json']" \\
    --onnx_file models/model_int8.onnx
```

They write to `eval/predictions_onnx_model/` and `eval/predictions_onnx_model_int8/` respectively.""")
    return "\n\n".join(parts)


def zoo_readme(name: str, meta: dict, student: bool, quantized: bool, result, figures: list[str]) -> str:
    """The README of the exported bundle ``name`` (template sections: Authors, Tags, Model Overview, Data, ...)."""
    sizes, dice = result.sizes, result.onnx_dice_vs_pytorch
    fmt_in = meta["network_data_format"]["inputs"]["image"]
    fmt_out = meta["network_data_format"]["outputs"]["pred"]
    rows = "\n".join(f"| `models/{k}` | {_mb(sizes[k])} | {v} |" for k, v in _ARTIFACTS.items() if k in sizes)
    metrics = "\n".join(f"| {k} | {v} |" for k, v in meta.get("eval_metrics", {}).items())
    agreement = "".join(
        f"\n- {k.replace('_', ' ')}: Dice {v:.4f} against the PyTorch model's mask" for k, v in dice.items()
    )
    figs = "".join(f"\n![{f[:-4].replace('_', ' ')}]({f})" for f in figures)
    refs = "\n".join(f"- {r}" for r in meta.get("references", []))
    required = ", ".join(f"{k}=={v}" for k, v in meta.get("required_packages_version", {}).items())
    extra = ", ".join(f"{k}=={v}" for k, v in meta.get("extra_packages_version", {}).items())
    data_source = str(meta.get("data_source", ""))
    if "qddens-monai " in data_source:  # a command of the package, which the exported bundle does not install
        data_source += " (a command of the qddens-monai package, `pip install qddens-monai`; not part of this bundle)"
    tags = "Segmentation, Ensemble, Quantization, Low-bit, " + ("Distillation, " if student else "") + "MONAI, 2D"
    return f"""# {name}

{meta.get('name', name)}, version {meta['version']}.

### **Authors**

{meta.get('authors', '')}

### **Tags**

{tags}

## Model Overview

{meta['description']}

## Data

{data_source}. Data license: `docs/data_license.txt`.

#### Preprocessing

`preprocessing` in `configs/inference.json` (loading, channel-first, intensity normalization); the network
reads the image through a sliding window of {fmt_in['spatial_shape']}.

### Input

`image`: {fmt_in['num_channels']} channels ({meta.get('image_classes', '')}), patches of {fmt_in['spatial_shape']}.

### Output

`pred`: {fmt_out['num_channels']} channels ({meta.get('pred_classes', '')}).

## Performance

| metric | value |
|---|---|
{metrics}
{figs}

## Deployment artifacts

| file | size | what |
|---|---|---|
{rows}
{agreement}

Files listed in `large_files.yml` are hosted outside the Model Zoo repository: `monai.bundle download`
fetches them, or download each `url` to its `path` (its sha256 is `hash_val`).

#### TorchScript and TensorRT

`network_def` scripts with `torch.jit.script` (the Model Zoo's `ckpt_export` check passes with no exclusion);
`models/model.ts` is traced at the ROI size and loads with `torch.jit.load`. TensorRT export has not been
tested (development was CPU-only); no TensorRT config is provided.

## MONAI Bundle Commands

{_commands(student, quantized, bool(dice))}

## System Configuration

Built and tested on the CPU with PyTorch {meta['pytorch_version']}, MONAI {meta['monai_version']}, NumPy
{meta['numpy_version']}. Required packages (inference): {required or 'none'}. Extra packages (training,
evaluation, ONNX, DICOM configs): {extra or 'none'}. The code is in `scripts/` (no other install).

## Limitations

- Trained on generated demo images only; not validated on patient data; research use only.
- `model.ts` and the ONNX models are traced at the ROI size {fmt_in['spatial_shape']}: run them through the
  sliding window (the configs do).
- ONNX Runtime int8 is calibrated on a few patches; check it on your data before relying on it.

## Citation Info

Cite the QDD-Ens reference below and this bundle (name and version).

## References

{refs}

## License

Code: Apache-2.0 (`LICENSE`). Data: `docs/data_license.txt`.
"""
