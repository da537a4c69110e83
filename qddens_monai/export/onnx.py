"""CPU deployment with ONNX Runtime: export a frozen network to ONNX, quantize it to int8, run it in MONAI."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn

from ..files import atomic_write

__all__ = ["export_onnx", "quantize_onnx_int8", "OnnxRuntimeNetwork"]

PathLike = Union[str, os.PathLike]


@torch.no_grad()
def export_onnx(
    net: nn.Module, path: PathLike, example: torch.Tensor, opset_version: int = 17, atol: float = 1e-3
) -> Path:
    """Export ``net`` (frozen, eval mode) to ONNX with a dynamic batch axis, and check it against PyTorch.

    The TorchScript-based exporter is used: it traces, so QME-Net's forward hooks are followed
    (the ``torch.export`` one does not follow them); the spatial size is fixed to ``example``'s,
    which is what a sliding-window inferer feeds.

    Args:
        net: the network; it must not be quantized any more (:func:`~qddens_monai.quantization.freeze` it).
        path: the ``.onnx`` file, written to a temporary name first.
        example: an input (B, C_in, *roi_size) of the size the model will be run at.
        opset_version: ONNX opset.
        atol: the largest accepted difference between ONNX Runtime's and PyTorch's output on ``example``.

    Raises:
        RuntimeError: ONNX Runtime's output differs from PyTorch's by more than ``atol``.
    """
    import onnxruntime as ort

    net = net.eval()

    def export_and_check(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (example,),
                tmp,
                dynamo=False,
                input_names=["image"],
                output_names=["pred"],
                dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}},
                opset_version=opset_version,
            )
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": example.cpu().numpy()})[0]
        diff = float(np.abs(got - net(example).cpu().numpy()).max())
        if diff > atol:
            raise RuntimeError(f"ONNX export of {type(net).__name__} differs from PyTorch by {diff:.2e} (> {atol}).")

    return atomic_write(path, export_and_check, suffix=".onnx")


def quantize_onnx_int8(model_path: PathLike, path: PathLike, calibration: Iterable[np.ndarray]) -> Path:
    """Static int8 quantization of an ONNX model with ONNX Runtime's own tools (QDQ, per channel).

    Activations are calibrated (min-max) on ``calibration``; weights are int8 per output channel,
    activations uint8.

    Args:
        model_path: the float ONNX model (:func:`export_onnx`).
        path: the int8 model to write.
        calibration: inputs (1, C_in, *roi_size) float32, representative of the data (a few patches).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    batches = [{"image": np.ascontiguousarray(x, dtype=np.float32)} for x in calibration]
    if not batches:
        raise ValueError("quantize_onnx_int8 needs at least one calibration input.")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):  # noqa: ANN201 (ONNX Runtime's interface)
            return next(self._it, None)

    # ONNX Runtime's quantizer warns on the root logger for every 1-D tensor it leaves alone.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return atomic_write(
            path,
            lambda tmp: quantize_static(
                str(model_path),
                tmp,
                _Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            ),
            suffix=".onnx",
        )
    finally:
        root.setLevel(level)


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX model run by ONNX Runtime behind the ``nn.Module`` interface, for MONAI inferers and evaluators.

    ``forward`` takes (B, C_in, *roi_size) and returns (B, C_out, *roi_size) on the input's device,
    so ``SlidingWindowInferer`` and ``SupervisedEvaluator`` use it unchanged.

    Args:
        path: the ``.onnx`` file (float or int8).
        num_threads: ONNX Runtime intra-op threads (0: its default).
    """

    def __init__(self, path: PathLike, num_threads: int = 0) -> None:
        super().__init__()
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"ONNX model {path} does not exist; export it first (qddens-monai export-zoo --onnx)."
            )
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape: Sequence = self.session.get_inputs()[0].shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().numpy().astype(np.float32, copy=False)
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(out).to(x.device)
