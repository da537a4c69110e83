import math

import pytest
import torch
import torch.nn as nn

from qddens_monai.networks.cenet import CENet, RMPBlock, match_spatial_size

TINY = {"channels": (8, 16, 32, 64), "layers": (1, 1, 1, 1)}


def tiny(spatial_dims: int, **kwargs) -> CENet:
    return CENet(spatial_dims=spatial_dims, in_channels=1, out_channels=3, **{**TINY, **kwargs})


@pytest.mark.parametrize(
    "size", [(64, 64), (97, 75), (33, 1 + 2 * 16), (32, 32, 32), (33, 40, 27), (17, 24, 9)], ids=str
)
def test_output_shape_any_size(size):
    net = tiny(len(size))
    x = torch.randn(2, 1, *size)
    y = net(x)
    assert y.shape == (2, 3, *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("upsample", ["nontrainable", "pixelshuffle"])
def test_other_upsample_modes_odd_sizes(upsample):
    for size in [(45, 31), (19, 22, 13)]:
        net = tiny(len(size), upsample=upsample)
        assert net(torch.randn(2, 1, *size)).shape == (2, 3, *size)


def test_level_sizes_follow_ceil_halving():
    net = tiny(2).eval()
    size = (97, 75)
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = output.shape  # returns None: the output is not replaced

        return hook

    hooks = [getattr(net, n).register_forward_hook(record(n)) for n in net.feature_modules]
    net(torch.randn(1, 1, *size))
    for h in hooks:
        h.remove()

    def down(s, k):
        for _ in range(k):
            s = tuple(math.ceil(v / 2) for v in s)
        return s

    expected = {
        "stem": (8, down(size, 2)),
        "encoder1": (8, down(size, 2)),
        "encoder2": (16, down(size, 3)),
        "encoder3": (32, down(size, 4)),
        "encoder4": (64, down(size, 5)),
        "bottleneck": (68, down(size, 5)),
        "decoder4": (32, down(size, 4)),
        "decoder3": (16, down(size, 3)),
        "decoder2": (8, down(size, 2)),
        "decoder1": (8, tuple(2 * v for v in down(size, 2))),
    }
    assert list(seen) == list(net.feature_modules)
    for name, (c, s) in expected.items():
        assert tuple(seen[name]) == (1, c, *s), name


def test_gradients_reach_all_parameters():
    net = tiny(2, dropout=0.1)
    x = torch.randn(2, 1, 40, 36)
    target = torch.randint(0, 3, (2, 40, 36))
    nn.functional.cross_entropy(net(x), target).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_dropout_argument():
    assert not any(isinstance(m, nn.Dropout) for m in tiny(2).modules())
    net = tiny(2, dropout=0.5)
    n_dropout = sum(isinstance(m, nn.Dropout) for m in net.modules())
    assert n_dropout == 5  # one per decoder block + one in the head
    x = torch.randn(2, 1, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    # MC dropout (MONAI Label epistemic scoring): only dropout in train mode gives stochastic outputs.
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.train()
    with torch.no_grad():
        assert not torch.allclose(net(x), net(x))
    with pytest.raises(ValueError):
        tiny(2, dropout=1.0)


@pytest.mark.parametrize(
    "size, norm", [((97, 75), "batch"), ((33, 40, 27), ("instance", {"affine": True}))], ids=["2d-batch", "3d-instance"]
)
def test_torchscript_matches_eager(size, norm):
    net = tiny(len(size), norm=norm)
    net(torch.randn(2, 1, *size))  # one training step of batch-norm statistics, so eval differs from init
    net.eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        expected, actual = net(x), scripted(x)
    assert actual.shape == (2, 3, *size)
    assert torch.allclose(expected, actual, atol=1e-5)


def test_paper_size_constructs_2d():
    net = CENet(spatial_dims=2, in_channels=3, out_channels=1)
    assert [len(getattr(net, f"encoder{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    # stem + encoder are exactly torchvision's ResNet-34 without its classifier: 21,284,672 parameters.
    stages = ("stem", "encoder1", "encoder2", "encoder3", "encoder4")
    encoder = sum(p.numel() for n in stages for p in getattr(net, n).parameters())
    assert encoder == 21_284_672
    # DAC: three 3x3 and one 1x1 512->512 convolutions with bias; RMP: one 512->1 1x1 convolution.
    assert sum(p.numel() for p in net.bottleneck.parameters()) == 3 * (512 * 512 * 9 + 512) + (512 * 512 + 512) + 513
    total = sum(p.numel() for p in net.parameters())
    assert 28_500_000 < total < 29_500_000
    assert net.decoder4.conv1.conv.in_channels == 516


def test_small_3d_input_rmp_does_not_fail():
    net = tiny(3)
    y = net(torch.randn(2, 1, 32, 32, 32))  # bottleneck is 1x1x1
    assert y.shape == (2, 3, 32, 32, 32)
    net.eval()
    assert net(torch.randn(1, 1, 20, 64, 8)).shape == (1, 3, 20, 64, 8)  # anisotropic, bottleneck (1, 2, 1)


@pytest.mark.parametrize("size", [(1, 1), (2, 2, 2), (3, 5), (4, 1, 7), (14, 14)], ids=str)
def test_rmp_block_clamps_kernels(size):
    block = RMPBlock(len(size), 6)
    x = torch.randn(2, 6, *size)
    y = block(x)
    assert y.shape == (2, 10, *size)
    assert torch.equal(y[:, 4:], x)  # the input is concatenated after the four pooled maps


def test_rmp_block_paper_size_unchanged():
    # at 14x14 (448 input) kernels 2, 3, 5, 6 are not clamped: pooled maps of 7, 4, 2, 2.
    block = RMPBlock(2, 4)
    x = torch.randn(1, 4, 14, 14)
    pooled = [torch.nn.functional.max_pool2d(x, k, k) for k in (2, 3, 5, 6)]
    assert [p.shape[-1] for p in pooled] == [7, 4, 2, 2]
    ref = [
        torch.nn.functional.interpolate(block.conv(p), size=(14, 14), mode="bilinear", align_corners=False)
        for p in pooled
    ]
    assert torch.allclose(block(x), torch.cat(ref + [x], dim=1))


def test_match_spatial_size():
    x = torch.randn(1, 2, 8, 6)
    assert match_spatial_size(x, torch.zeros(1, 1, 8, 6)) is x
    assert torch.equal(match_spatial_size(x, torch.zeros(1, 1, 7, 5)), x[:, :, :7, :5])
    padded = match_spatial_size(x, torch.zeros(1, 1, 9, 6))
    assert padded.shape == (1, 2, 9, 6) and torch.equal(padded[:, :, :8], x) and (padded[:, :, 8] == 0).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_level_outputs_are_exactly_what_is_passed_on(spatial_dims):
    """A hook replacing a level's output must feed the next stage AND the skip (same tensor object)."""
    net = tiny(spatial_dims)
    size = (37, 29) if spatial_dims == 2 else (33, 17, 20)
    replaced, received = {}, {}

    def replace(name):
        def hook(module, args, output):
            replaced[name] = output * 0.5
            return replaced[name]

        return hook

    def receive(name):
        def pre_hook(module, args):
            received[name] = args

        return pre_hook

    handles = [getattr(net, n).register_forward_hook(replace(n)) for n in net.feature_modules]
    consumers = list(net.feature_modules[1:]) + ["final_up"]
    handles += [getattr(net, n).register_forward_pre_hook(receive(n)) for n in consumers]
    net(torch.randn(2, 1, *size)).sum().backward()
    for h in handles:
        h.remove()

    # next stage input
    for producer, consumer in zip(net.feature_modules, consumers):
        assert received[consumer][0] is replaced[producer], (producer, consumer)
    # skip connections by addition: decoder4 <- encoder3, decoder3 <- encoder2, decoder2 <- encoder1
    for dec, enc in [("decoder4", "encoder3"), ("decoder3", "encoder2"), ("decoder2", "encoder1")]:
        assert received[dec][1] is replaced[enc]
    assert received["decoder1"][1] is None


def test_hook_replacement_changes_output_and_keeps_grad():
    net = tiny(2)
    x = torch.randn(2, 1, 32, 32)
    ref = net(x).detach()
    h = net.encoder2.register_forward_hook(lambda m, a, o: torch.zeros_like(o))
    zeroed = net(x)
    h.remove()
    assert not torch.allclose(zeroed, ref)

    scale = torch.full((1,), 2.0, requires_grad=True)
    h = net.encoder2.register_forward_hook(lambda m, a, o: o * scale)
    y = net(x)
    y.square().mean().backward()
    h.remove()
    assert not torch.allclose(y, ref)
    assert scale.grad is not None and scale.grad.abs() > 0
    assert net.stem.conv.conv.weight.grad.abs().sum() > 0  # upstream of the hook


def test_inplace_activation_is_safe_with_recording_hooks():
    net = tiny(2, act=("relu", {"inplace": True}))
    recorded = []
    handles = [
        getattr(net, n).register_forward_hook(lambda m, a, o: recorded.append((o, o._version)))
        for n in net.feature_modules
    ]
    net(torch.randn(2, 1, 32, 32)).sum().backward()  # no "modified by an inplace operation" error
    for h in handles:
        h.remove()
    assert len(recorded) == 10
    assert all(o._version == v for o, v in recorded)  # no level output is modified after it is produced


def test_invalid_arguments():
    with pytest.raises(ValueError):
        CENet(spatial_dims=1)
    with pytest.raises(ValueError):
        CENet(spatial_dims=2, channels=(8, 16, 32))
    with pytest.raises(ValueError):
        CENet(spatial_dims=2, layers=(1, 0, 1, 1))


def test_feature_attributes_are_consistent():
    net = tiny(2)
    assert len(net.feature_modules) == len(net.feature_roles) == 10
    assert net.feature_roles.count("encoder") == 4 and net.feature_roles.count("decoder") == 4
    modules = dict(net.named_modules())
    assert all(n in modules for n in net.feature_modules)
