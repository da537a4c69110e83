"""Packed low-bit storage of a quantized network.

Each quantized weight tensor is stored as its level codes packed at ``bits`` bits per
weight, plus the few numbers of its level set; everything else of the state dict (norms,
biases, running statistics, float layers) is stored as it is. With ``entropy_coding=True``
the codes are written one per byte (two above 8 bits) and compressed with LZMA, whose
adaptive range coder goes below ``bits`` per weight when the levels are unevenly used.

File layout (little endian)::

    b"QDDPACK\\n" | uint32 format version | uint64 header length | header | payload

The header is JSON, zlib-compressed since format version 2 (it names every tensor, which for
an ensemble is a sizeable share of a small file); version 1 files (plain JSON) are still read.
The header lists every tensor with its offset in the payload, and the payload's size and
CRC-32, so a truncated or altered file is refused before anything is returned.
:func:`load_packed` returns the state dict of the *frozen* network (plain ``weight`` keys),
bit-identical to ``freeze(net).state_dict()``.
"""

from __future__ import annotations

import copy
import json
import lzma
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn

from ..files import atomic_write
from .network import freeze, quantized_layers
from .parametrizations import IncrementalQuantization
from .quantizers import get_quantizer

__all__ = ["PACKED_FORMAT_VERSION", "PackedSize", "save_packed", "load_packed", "load_packed_network"]

PACKED_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_MAGIC = b"QDDPACK\n"
_PREFIX = struct.Struct("<8sIQ")


def _lzma_filters(raw_bytes: int) -> list[dict]:
    # A dictionary as large as the data: the same stream as preset 9's 64 MiB one, without
    # allocating 64 MiB per tensor (which made packing an ensemble take about a minute).
    return [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": max(4096, raw_bytes)}]


PathLike = Union[str, os.PathLike]


@dataclass
class PackedSize:
    """Sizes in bytes of a packed file and of its parts."""

    file_bytes: int
    quantized_params: int
    quantized_bytes: int  # codes and level-set numbers of the quantized tensors
    float_bytes: int  # everything stored as it is

    @property
    def bits_per_quantized_weight(self) -> float:
        return 8.0 * self.quantized_bytes / self.quantized_params if self.quantized_params else 0.0


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _tensor_from_bytes(buf: bytes, dtype: str, shape: list[int]) -> torch.Tensor:
    torch_dtype = getattr(torch, dtype.replace("torch.", ""))
    return torch.frombuffer(bytearray(buf), dtype=torch_dtype).reshape(shape).clone()


def _pack_codes(codes: np.ndarray, bits: int, entropy_coding: bool) -> bytes:
    if entropy_coding:
        symbols = codes.astype(np.uint8 if bits <= 8 else np.uint16).tobytes()
        return lzma.compress(symbols, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(symbols)))
    planes = (codes[:, None] >> np.arange(bits, dtype=np.int64)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def _unpack_codes(buf: bytes, bits: int, count: int, entropy_coding: bool) -> np.ndarray:
    if entropy_coding:
        dtype = np.uint8 if bits <= 8 else np.uint16
        raw = lzma.decompress(buf, format=lzma.FORMAT_RAW, filters=_lzma_filters(count * np.dtype(dtype).itemsize))
        return np.frombuffer(raw, dtype=dtype).astype(np.int64)
    flat = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), count=count * bits, bitorder="little")
    return (flat.reshape(count, bits).astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(axis=1)


@torch.no_grad()
def save_packed(net: nn.Module, path: PathLike, entropy_coding: bool = False) -> PackedSize:
    """Write the quantized ``net`` to ``path`` with its quantized weights packed at their bit widths.

    Args:
        net: a network quantized by :func:`quantize_network` whose schedule has finished.
        path: the file to write; written to a temporary file first and moved into place,
            so an existing file is never left half-written.
        entropy_coding: LZMA-code the level codes instead of fixed-width bit packing.

    Raises:
        RuntimeError: the network has no quantized weight, or its schedule has not finished.
    """
    layers = list(quantized_layers(net))
    if not layers:
        raise RuntimeError(f"{type(net).__name__} has no quantized weights; call quantize_network first.")
    pending = [name for name, _, q in layers if not q.complete]
    if pending:
        raise RuntimeError(f"Cannot pack: {len(pending)} tensors (e.g. {pending[0]!r}) still have float weights.")

    codes_of: dict[str, tuple] = {}
    for name, layer, q in layers:
        latent = layer.parametrizations["weight"].original
        effective = layer.weight
        if isinstance(q, IncrementalQuantization):
            params, codes = q.params, q.quantizer.index(effective, q.params, q.channel_dim)
        else:
            params = q.quantizer.calibrate(latent, q.channel_dim)
            codes = q.quantizer.encode(latent, params, q.channel_dim)
        if not torch.equal(q.quantizer.decode(codes, params, q.channel_dim).to(effective.dtype), effective):
            raise RuntimeError(f"{name}.weight does not lie on its {q.quantizer.name} level set; cannot pack it.")
        codes_of[f"{name}.weight" if name else "weight"] = (q, codes, params)

    state = freeze(copy.deepcopy(net)).state_dict()
    entries, chunks, offset = [], [], 0
    sizes = {"quantized": 0, "float": 0, "params": 0}

    def add(buf: bytes) -> dict:
        nonlocal offset
        chunks.append(buf)
        offset += len(buf)
        return {"offset": offset - len(buf), "nbytes": len(buf)}

    for key, value in state.items():
        entry = {"key": key, "dtype": str(value.dtype), "shape": list(value.shape)}
        if key in codes_of:
            q, codes, params = codes_of[key]
            bits = q.quantizer.bits
            entry |= {"kind": "quantized", "method": q.quantizer.name, "bits": bits, "channel_dim": q.channel_dim}
            entry |= add(_pack_codes(codes.cpu().numpy().reshape(-1), bits, entropy_coding))
            params_buf = _tensor_bytes(params)
            entry["params"] = {"dtype": str(params.dtype), "shape": list(params.shape)} | add(params_buf)
            sizes["quantized"] += entry["nbytes"] + len(params_buf)
            sizes["params"] += value.numel()
        else:
            entry |= {"kind": "raw"} | add(_tensor_bytes(value))
            sizes["float"] += entry["nbytes"]
        entries.append(entry)

    payload = b"".join(chunks)
    header = json.dumps(
        {
            "format": "qddens-monai packed weights",
            "format_version": PACKED_FORMAT_VERSION,
            "entropy_coding": "lzma" if entropy_coding else "none",
            "payload_bytes": len(payload),
            "payload_crc32": zlib.crc32(payload),
            "entries": entries,
        }
    ).encode("utf-8")
    header = zlib.compress(header, 9)
    path = atomic_write(
        path,
        lambda tmp: Path(tmp).write_bytes(_PREFIX.pack(_MAGIC, PACKED_FORMAT_VERSION, len(header)) + header + payload),
    )
    return PackedSize(path.stat().st_size, sizes["params"], sizes["quantized"], sizes["float"])


def load_packed(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_packed`: the frozen network's state dict, bit-identical.

    Load it into the frozen network, e.g. ``freeze(net, require_complete=False).load_state_dict(load_packed(p))``.

    Raises:
        ValueError: not a packed file, another format version, truncated or corrupted.
    """
    data = Path(path).read_bytes()
    if len(data) < _PREFIX.size or data[:8] != _MAGIC:
        raise ValueError(f"{path}: not a qddens-monai packed weights file (bad magic bytes).")
    _, version, header_len = _PREFIX.unpack_from(data)
    if version not in _READABLE_VERSIONS:
        raise ValueError(
            f"{path}: packed format version {version}; this qddens-monai reads versions {list(_READABLE_VERSIONS)}."
        )
    if _PREFIX.size + header_len > len(data):
        raise ValueError(f"{path}: truncated (the header is cut off).")
    try:
        raw = data[_PREFIX.size : _PREFIX.size + header_len]
        header = json.loads(zlib.decompress(raw) if version >= 2 else raw)
    except (ValueError, zlib.error) as e:
        raise ValueError(f"{path}: corrupted header ({e}).") from None
    payload = data[_PREFIX.size + header_len :]
    if len(payload) != header["payload_bytes"]:
        raise ValueError(f"{path}: truncated: payload has {len(payload)} of {header['payload_bytes']} bytes.")
    if zlib.crc32(payload) != header["payload_crc32"]:
        raise ValueError(f"{path}: corrupted: the payload checksum does not match.")
    entropy_coding = header["entropy_coding"] == "lzma"

    def chunk(e: dict) -> bytes:
        return payload[e["offset"] : e["offset"] + e["nbytes"]]

    state: dict[str, torch.Tensor] = {}
    for e in header["entries"]:
        if e["kind"] == "raw":
            state[e["key"]] = _tensor_from_bytes(chunk(e), e["dtype"], e["shape"])
            continue
        quantizer = get_quantizer(e["method"], e["bits"])
        params = _tensor_from_bytes(chunk(e["params"]), e["params"]["dtype"], e["params"]["shape"])
        count = int(np.prod(e["shape"], dtype=np.int64))
        codes = torch.from_numpy(_unpack_codes(chunk(e), e["bits"], count, entropy_coding)).reshape(e["shape"])
        dtype = getattr(torch, e["dtype"].replace("torch.", ""))
        state[e["key"]] = quantizer.decode(codes, params, e["channel_dim"]).to(dtype)
    return state


def load_packed_network(network: nn.Module, path: PathLike) -> nn.Module:
    """``network`` (as built by its ``network_def``, quantized or not) frozen and filled from a packed file.

    This is how inference starts from ``model_packed.bin`` instead of ``model.pt``: the
    quantization parametrizations are stripped (:func:`freeze` with ``require_complete=False``)
    and the decoded weights loaded strictly, so the outputs equal those of the frozen network
    that was packed.

    Args:
        network: the freshly built network, modified in place and returned.
        path: a file written by :func:`save_packed`.

    Raises:
        ValueError: ``path`` is not a readable packed file (see :func:`load_packed`).
        RuntimeError: its tensors do not match ``network`` (another ``network_def``).
    """
    state = load_packed(path)
    net = freeze(network, require_complete=False)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise RuntimeError(f"{path} does not match {type(net).__name__} (same network_def?): {e}") from None
    if missing or unexpected:
        raise RuntimeError(
            f"{path} does not match {type(net).__name__}: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). Was it packed from the same network_def?"
        )
    return net
