"""Packed start of inference: load_packed_network, format v2 (compressed header) and v1 files still read."""

import json
import struct
import zlib

import pytest
import torch
from monai.networks.nets import UNet

from qddens_monai.quantization import freeze, load_packed, load_packed_network, quantize_network, save_packed
from qddens_monai.quantization.network import quantization_step


def small_unet(channels=(4, 8, 16)):
    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=channels, strides=(2, 2), num_res_units=0)


def quantized_unet():
    net = quantize_network(small_unet(), method="log_minmax", bits=5, partition="two_stage", portions=(0.5, 1.0))
    quantization_step(net)
    quantization_step(net)
    return net.eval()


@pytest.mark.parametrize("entropy_coding", [False, True])
def test_packed_start_equals_the_frozen_network(tmp_path, entropy_coding):
    net = quantized_unet()
    path = tmp_path / "model_packed.bin"
    save_packed(net, path, entropy_coding=entropy_coding)
    fresh = quantize_network(small_unet(), method="log_minmax", bits=5, partition="two_stage", portions=(0.5, 1.0))
    loaded = load_packed_network(fresh, path).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), freeze(net).eval()(x))
    # a plain (never quantized) network of the same definition loads it as well
    plain = load_packed_network(small_unet(), path).eval()
    with torch.no_grad():
        assert torch.equal(plain(x), loaded(x))


def test_packed_file_of_another_network_is_refused(tmp_path):
    path = tmp_path / "model_packed.bin"
    save_packed(quantized_unet(), path)
    with pytest.raises(
        RuntimeError, match=r"(?s)model_packed.bin does not match UNet \(same network_def\?\): .*size mismatch"
    ):
        load_packed_network(small_unet(channels=(4, 8, 32)), path)


def test_header_is_compressed_and_version_1_files_still_read(tmp_path):
    path = tmp_path / "v2.bin"
    save_packed(quantized_unet(), path, entropy_coding=True)
    data = path.read_bytes()
    prefix = struct.Struct("<8sIQ")
    magic, version, header_len = prefix.unpack_from(data)
    assert version == 2
    header = zlib.decompress(data[prefix.size : prefix.size + header_len])
    assert len(header) > 2 * header_len  # the JSON names every tensor; it compresses well
    assert json.loads(header)["format_version"] == 2
    # the same file as format version 1 wrote it: plain JSON header
    v1 = tmp_path / "v1.bin"
    v1.write_bytes(prefix.pack(magic, 1, len(header)) + header + data[prefix.size + header_len :])
    expected, got = load_packed(path), load_packed(v1)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
