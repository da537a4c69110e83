"""freeze(): plain, scriptable, same outputs; packed storage: exact round trip, checked on load."""

import copy
import struct

import pytest
import torch
from monai.networks.nets import BasicUNet, SegResNet, UNet
from torch.nn.utils import parametrize

from qddens_monai.quantization import (
    PACKED_FORMAT_VERSION,
    QUANTIZERS,
    freeze,
    is_quantization_complete,
    load_packed,
    quantization_step,
    quantize_network,
    quantized_layers,
    save_packed,
)

NETS = {
    "unet2d": lambda: UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
    "unet3d": lambda: UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
    "basicunet2d": lambda: BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, 4)),
    "basicunet3d": lambda: BasicUNet(3, 1, 2, features=(4, 4, 8, 8, 16, 4)),
    "segresnet2d": lambda: SegResNet(
        2, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1, 1), blocks_up=(1, 1)
    ),
    "segresnet3d": lambda: SegResNet(
        3, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1, 1), blocks_up=(1, 1)
    ),
}


def finished(net, method="power_of_two", bits=5, **kw):
    quantize_network(net, method, bits, **kw)
    while not is_quantization_complete(net):
        quantization_step(net)
    return net.eval()


@pytest.mark.parametrize("name", sorted(NETS))
def test_freeze_plain_scriptable_same_output(name):
    torch.manual_seed(0)
    net = finished(NETS[name](), "power_of_two", 4, partition="two_stage", seed=2)
    dims = 3 if name.endswith("3d") else 2
    x = torch.randn(1, 1, *([32] * dims))
    with torch.no_grad():
        expected = net(x)
    freeze(net)
    assert not any(parametrize.is_parametrized(m) for m in net.modules())
    assert not any("parametrizations" in k for k in net.state_dict())
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert torch.equal(net(x), expected)
        assert torch.allclose(scripted(x), expected, atol=1e-5)


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_frozen_weights_lie_on_the_grid(method):
    bits = 2 if method == "ternary" else 3
    net = finished(NETS["unet2d"](), method, bits)
    grids = {n: l.weight.detach().clone() for n, l, _ in quantized_layers(net)}
    freeze(net)
    for name, w in grids.items():
        layer = net.get_submodule(name)
        assert torch.equal(layer.weight.detach(), w)
        out_dim = 1 if isinstance(layer, torch.nn.modules.conv._ConvTransposeNd) else 0
        by_channel = layer.weight.detach().transpose(0, out_dim)
        per_channel = max(by_channel[c].unique().numel() for c in range(by_channel.shape[0]))
        assert per_channel <= 2**bits


def test_freeze_of_a_copy_leaves_the_original_quantized():
    net = finished(NETS["unet2d"]())
    frozen = freeze(copy.deepcopy(net))
    assert list(quantized_layers(net)) and not list(quantized_layers(frozen))
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), frozen(x))


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
@pytest.mark.parametrize("entropy_coding", [False, True])
def test_packed_round_trip_is_bit_identical(tmp_path, method, entropy_coding):
    bits = 2 if method == "ternary" else 5
    net = finished(NETS["segresnet3d"](), method, bits, partition="random", seed=1)
    expected = freeze(copy.deepcopy(net)).state_dict()
    size = save_packed(net, tmp_path / "w.qdd", entropy_coding=entropy_coding)
    state = load_packed(tmp_path / "w.qdd")
    assert state.keys() == expected.keys()
    for k in expected:
        assert state[k].dtype == expected[k].dtype and torch.equal(state[k], expected[k]), k
    assert size.file_bytes == (tmp_path / "w.qdd").stat().st_size
    plain = freeze(quantize_network(NETS["segresnet3d"](), method, bits), require_complete=False)
    plain.load_state_dict(state)  # strict: every key matches the frozen network


def test_fixed_width_packing_stores_b_bits_per_weight(tmp_path):
    for bits in (2, 4, 8):
        net = finished(NETS["unet3d"](), "uniform", bits)
        size = save_packed(net, tmp_path / "w.qdd")
        n_tensors = len(list(quantized_layers(net)))
        # codes at b bits, plus per tensor one float scale and at most one padding byte
        assert size.quantized_bytes <= size.quantized_params * bits / 8 + n_tensors * 5


def test_entropy_coding_beats_fixed_width_on_power_of_two(tmp_path):
    net = finished(NETS["unet3d"](), "power_of_two", 6)
    fixed = save_packed(net, tmp_path / "a.qdd")
    coded = save_packed(net, tmp_path / "b.qdd", entropy_coding=True)
    assert coded.bits_per_quantized_weight < fixed.bits_per_quantized_weight < 6.1


def test_packed_file_checks(tmp_path):
    net = finished(NETS["unet2d"]())
    path = tmp_path / "w.qdd"
    save_packed(net, path)
    data = path.read_bytes()

    (tmp_path / "trunc.qdd").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_packed(tmp_path / "trunc.qdd")
    (tmp_path / "cut.qdd").write_bytes(data[:30])
    with pytest.raises(ValueError, match="truncated"):
        load_packed(tmp_path / "cut.qdd")

    other = bytearray(data)
    struct.pack_into("<I", other, 8, PACKED_FORMAT_VERSION + 1)
    (tmp_path / "v2.qdd").write_bytes(bytes(other))
    with pytest.raises(ValueError, match=f"version {PACKED_FORMAT_VERSION + 1}"):
        load_packed(tmp_path / "v2.qdd")

    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    (tmp_path / "bad.qdd").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupted"):
        load_packed(tmp_path / "bad.qdd")

    torch.save(net.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match="not a qddens-monai packed"):
        load_packed(tmp_path / "model.pt")


def test_save_packed_refuses_unfinished_schedule_and_keeps_existing_file(tmp_path):
    path = tmp_path / "w.qdd"
    save_packed(finished(NETS["unet2d"]()), path)
    before = path.read_bytes()
    net = quantize_network(NETS["unet2d"](), "power_of_two", 5)
    quantization_step(net)
    with pytest.raises(RuntimeError, match="still have float weights"):
        save_packed(net, path)
    with pytest.raises(RuntimeError, match="no quantized weights"):
        save_packed(NETS["unet2d"](), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.qdd"]
