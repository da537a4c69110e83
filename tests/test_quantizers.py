"""Each quantizer against small hand-computed cases."""

import math

import pytest
import torch

from qddens_monai.quantization import (
    QUANTIZERS,
    DoReFaQuantizer,
    LogMinMaxQuantizer,
    PowerOfTwoQuantizer,
    TernaryQuantizer,
    UniformQuantizer,
    get_quantizer,
)


def _quantize(q, w, channel_dim=0):
    return q.quantize(w, q.calibrate(w, channel_dim), channel_dim)


def test_power_of_two_levels_5_bits():
    q = PowerOfTwoQuantizer(5)
    w = torch.tensor([0.9, -0.3, 0.05, 0.001, -0.6, 0.2])
    params = q.calibrate(w, 0)
    # s = 0.9: n1 = floor(log2(1.2)) = 0, n2 = n1 + 1 - 2**3 = -7.
    assert q.exponents(params) == (0, -7)
    expected = torch.tensor([1.0, -0.25, 0.0625, 0.0, -0.5, 0.25])
    assert torch.equal(q.quantize(w, params), expected)


def test_power_of_two_level_set_and_thresholds():
    q = PowerOfTwoQuantizer(3)
    w = torch.tensor([0.9, 0.3, 0.2, -0.26, 0.05])
    # n1 = 0, n2 = -1: levels {0, ±0.5, ±1}; zero below 0.25, 0.5 on [0.25, 0.75).
    assert torch.equal(_quantize(q, w), torch.tensor([1.0, 0.5, 0.0, -0.5, 0.0]))
    # 2**(b-1) + 1 = 5 levels: 0, ±0.5, ±1.
    levels = q.decode(torch.arange(2 ** (3 - 1) + 1), q.calibrate(w, 0), 0).unique()
    assert set(levels.tolist()) == {0.0, 0.5, -0.5, 1.0, -1.0}


def test_power_of_two_values_are_powers_of_two():
    q = PowerOfTwoQuantizer(4)
    w = torch.randn(1000)
    wq = _quantize(q, w)
    nz = wq[wq != 0].abs()
    assert torch.equal(torch.exp2(torch.log2(nz).round()), nz)
    n1, n2 = q.exponents(q.calibrate(w, 0))
    assert n1 == math.floor(math.log2(4 * w.abs().max().item() / 3)) and n2 == n1 + 1 - 4
    assert nz.max() == 2.0 ** n1 and nz.min() >= 2.0**n2


def test_log_minmax_hand_case():
    q = LogMinMaxQuantizer(3)  # sign + 2 bits: 4 magnitudes between min and max of ln|w|
    w = torch.tensor([1.0, -0.2, 0.01, 0.05], dtype=torch.float64)
    expected = torch.tensor([1.0, -(10 ** (-2 / 3)), 0.01, 10 ** (-4 / 3)], dtype=torch.float64)
    assert torch.allclose(_quantize(q, w), expected, rtol=1e-12)


def test_dorefa_hand_cases():
    q = DoReFaQuantizer(2)
    w = torch.tensor([0.1, 0.5, -1.0, 2.0], dtype=torch.float64)
    # tanh / (2 max|tanh|) + 0.5 = [0.552, 0.740, 0.105, 1.0]; x3 and round: [2, 2, 0, 3].
    expected = torch.tensor([1 / 3, 1 / 3, -1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(_quantize(q, w), expected, atol=1e-12)
    q1 = DoReFaQuantizer(1)
    w1 = torch.tensor([0.5, -1.5, 1.0])
    assert torch.equal(_quantize(q1, w1), torch.tensor([1.0, -1.0, 1.0]))


def test_ternary_per_channel_threshold_and_scale():
    q = TernaryQuantizer()
    w = torch.tensor([[1.0, -0.5, 0.1, 0.0], [0.2, 0.2, -0.2, 0.2]])
    params = q.calibrate(w, 0)
    # channel 0: delta = 0.7 * 0.4 = 0.28, alpha = mean(1.0, 0.5); channel 1: delta = 0.14, alpha = 0.2
    assert torch.allclose(params, torch.tensor([[0.28, 0.75], [0.14, 0.2]]))
    assert torch.allclose(q.quantize(w, params), torch.tensor([[0.75, -0.75, 0.0, 0.0], [0.2, 0.2, -0.2, 0.2]]))


def test_ternary_transposed_conv_uses_output_channel_dim():
    q = TernaryQuantizer()
    w = torch.randn(3, 5, 2, 2)  # ConvTranspose: (in, out, k, k)
    params = q.calibrate(w, 1)
    assert params.shape == (5, 2)
    wq = q.quantize(w, params, 1)
    for c in range(5):
        assert wq[:, c].abs().unique().numel() <= 2  # {0, alpha_c}


def test_uniform_hand_case():
    q = UniformQuantizer(3)  # 7 levels: step s / 3
    w = torch.tensor([0.9, -0.44, 0.1, 0.16])
    assert torch.allclose(_quantize(q, w), torch.tensor([0.9, -0.3, 0.0, 0.3]))


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_codes_fit_in_bits_and_decode_is_exact(method):
    for bits in range(QUANTIZERS[method].min_bits, min(QUANTIZERS[method].max_bits, 8) + 1):
        q = get_quantizer(method, bits)
        w = torch.randn(16, 8, 3, 3)
        params = q.calibrate(w, 0)
        codes = q.encode(w, params, 0)
        assert codes.min() >= 0 and codes.max() < 2**bits
        wq = q.quantize(w, params, 0)
        assert torch.equal(q.index(wq, params, 0), codes)
        per_channel = [wq[c].unique().numel() for c in range(wq.shape[0])]
        assert max(per_channel) <= 2**bits


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_straight_through_forward_is_exact_and_gradient_flows(method):
    q = get_quantizer(method, 2 if method == "ternary" else 4)
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    params = q.calibrate(w, 0)
    out = q.straight_through(w, params, 0)
    assert torch.equal(out.detach(), q.quantize(w, params, 0))
    out.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "method,bits",
    [("power_of_two", 1), ("power_of_two", 17), ("ternary", 3), ("dorefa", 0), ("uniform", 1), ("log_minmax", 2.5)],
)
def test_bits_out_of_range(method, bits):
    with pytest.raises(ValueError, match="bits"):
        get_quantizer(method, bits)


def test_unknown_method():
    with pytest.raises(ValueError, match="Unknown quantization method 'inq'"):
        get_quantizer("inq", 5)
