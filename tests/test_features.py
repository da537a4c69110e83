import pytest
import torch
import torch.nn as nn
from monai.networks.nets import BasicUNet, SegResNet, UNet
from monai.networks.nets.unet import CheckpointUNet

from qddens_monai.networks import features as F
from qddens_monai.networks.cenet import CENet
from qddens_monai.networks.features import (
    FeatureExtractor,
    FeatureLevel,
    check_feature_compatibility,
    feature_levels,
    feature_module_names,
    feature_shapes,
    register_feature_levels,
)

E, B, D, S = "encoder", "bottleneck", "decoder", "stem"


def _cenet(sd):
    return CENet(sd, 1, 2, channels=(4, 8, 16, 32), layers=(1, 1, 1, 1))


def _basic_unet(sd):
    return BasicUNet(sd, 1, 2, features=(4, 4, 8, 8, 16, 4))


def _unet(sd):
    return UNet(sd, 1, 2, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1)


def _segresnet(sd):
    return SegResNet(sd, init_filters=4, in_channels=1, out_channels=2, norm=("group", {"num_groups": 2}))


U = "model.1.submodule"
# (factory, input size per spatial dim, expected [(name, role, channels, size divisor)]); spatial = input // divisor
CASES = {
    "CENet": (
        _cenet,
        32,
        [
            ("stem", S, 4, 4),
            ("encoder1", E, 4, 4),
            ("encoder2", E, 8, 8),
            ("encoder3", E, 16, 16),
            ("encoder4", E, 32, 32),
            ("bottleneck", B, 36, 32),
            ("decoder4", D, 16, 16),
            ("decoder3", D, 8, 8),
            ("decoder2", D, 4, 4),
            ("decoder1", D, 4, 2),
        ],
    ),
    "BasicUNet": (
        _basic_unet,
        32,  # instance norm needs more than one voxel at 1/16
        [
            ("conv_0", E, 4, 1),
            ("down_1", E, 4, 2),
            ("down_2", E, 8, 4),
            ("down_3", E, 8, 8),
            ("down_4", B, 16, 16),
            ("upcat_4", D, 8, 8),
            ("upcat_3", D, 8, 4),
            ("upcat_2", D, 4, 2),
            ("upcat_1", D, 4, 1),
        ],
    ),
    "UNet": (
        _unet,
        16,
        [
            ("model.0", E, 4, 2),
            (f"{U}.0", E, 8, 4),
            (f"{U}.1.submodule.0", E, 16, 8),
            (f"{U}.1.submodule.1.submodule", B, 32, 8),
            (f"{U}.1.submodule.2", D, 8, 4),
            (f"{U}.2", D, 4, 2),
        ],
    ),
    "SegResNet": (
        _segresnet,
        16,
        [
            ("convInit", S, 4, 1),
            ("down_layers.0", E, 4, 1),
            ("down_layers.1", E, 8, 2),
            ("down_layers.2", E, 16, 4),
            ("down_layers.3", B, 32, 8),
            ("up_layers.0", D, 16, 4),
            ("up_layers.1", D, 8, 2),
            ("up_layers.2", D, 4, 1),
        ],
    ),
}
PARAMS = [pytest.param(k, sd, id=f"{k}-{sd}d") for k in CASES for sd in (2, 3)]


@pytest.mark.parametrize("key, sd", PARAMS)
def test_levels_names_roles_shapes(key, sd):
    factory, size, expected = CASES[key]
    net = factory(sd)
    levels = feature_levels(net)
    assert levels == [FeatureLevel(n, r) for n, r, _, _ in expected]
    assert feature_module_names(net) == [n for n, *_ in expected]
    net.train()
    shapes = feature_shapes(net, (1, 1) + (size,) * sd)
    assert net.training  # mode restored
    assert shapes == [(c, (size // div,) * sd) for _, _, c, div in expected]


@pytest.mark.parametrize("key", list(CASES))
def test_role_selection(key):
    factory, _, expected = CASES[key]
    net = factory(2)
    names = feature_module_names(net, roles=("encoder", "decoder"))
    assert names == [n for n, r, *_ in expected if r in (E, D)]
    assert [lv.role for lv in feature_levels(net, roles="bottleneck")] == [B]
    with pytest.raises(ValueError, match="unknown role"):
        feature_levels(net, roles=("middle",))


def test_cenet_and_basic_unet_have_four_encoder_and_four_decoder_levels():
    for net in (_cenet(2), _basic_unet(2)):
        roles = [lv.role for lv in feature_levels(net)]
        assert roles.count(E) == 4 and roles.count(D) == 4 and roles.count(B) == 1


@pytest.mark.parametrize("key, sd", PARAMS)
def test_replacement_changes_output_and_gradients_flow(key, sd):
    factory, size, _ = CASES[key]
    net = factory(sd).eval()  # eval: deterministic, so any change comes from the replacement
    x = torch.randn(2, 1, *((size,) * sd))
    with torch.no_grad():
        ref = net(x)
    n_levels = len(feature_levels(net))
    scales = torch.ones(n_levels, requires_grad=True)

    extractor = FeatureExtractor(net, replace_fn=lambda i, f: f * scales[i])
    with extractor:
        y = net(x)
        feats = extractor.features
    assert torch.allclose(y, ref, atol=1e-5)  # scaling by 1 is the identity ...
    assert len(feats) == n_levels and all(f.requires_grad for f in feats)
    # ... but the hooks are in the graph: every level's scale receives a gradient from the output.
    (y.square().mean() + sum(f.mean() for f in feats)).backward()
    assert scales.grad is not None
    assert (scales.grad != 0).all(), scales.grad
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())

    # zeroing any single level changes the final output
    for i in range(n_levels):
        with FeatureExtractor(net, replace_fn=lambda j, f, i=i: torch.zeros_like(f) if j == i else f), torch.no_grad():
            assert not torch.allclose(net(x), ref), feature_levels(net)[i].name


def test_diversity_style_loss_backpropagates_into_learners():
    nets = [_cenet(2), _cenet(2)]
    extractors = [FeatureExtractor(n, roles=(E, D)).attach() for n in nets]
    x = torch.randn(2, 1, 32, 32)
    for n in nets:
        n(x)
    div = sum(torch.sqrt(torch.norm(a - b) + 1e-8) for a, b in zip(extractors[0].features, extractors[1].features))
    div.backward()
    for n in nets:
        assert n.encoder1[0].conv1.weight.grad.abs().sum() > 0
        assert n.final_conv[0].weight.grad is None  # the head is downstream of every level
    for e in extractors:
        e.remove()


def test_unknown_network_needs_explicit_names():
    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Conv2d(1, 4, 3, stride=2, padding=1)
            self.mid = nn.Conv2d(4, 4, 3, padding=1)
            self.dec = nn.ConvTranspose2d(4, 2, 2, stride=2)

        def forward(self, x):
            return self.dec(self.mid(self.enc(x)))

    net = TinyNet()
    with pytest.raises(ValueError, match="TinyNet"):
        feature_levels(net)
    with pytest.raises(ValueError, match="TinyNet"):
        FeatureExtractor(net)
    # bare names get the role "unspecified"; pairs keep their roles
    bare = feature_levels(net, ["enc", "mid"])
    assert bare == [FeatureLevel("enc", "unspecified"), FeatureLevel("mid", "unspecified")]
    levels = [("enc", E), ("mid", B)]
    assert feature_shapes(net, (1, 1, 8, 8), levels) == [(4, (4, 4)), (4, (4, 4))]
    out, feats = FeatureExtractor(net, levels, replace_fn=lambda i, f: f * 0)(torch.randn(1, 1, 8, 8))
    assert torch.allclose(out, net.dec.bias.view(1, 2, 1, 1).expand_as(out))  # mid zeroed -> only the bias left
    with pytest.raises(ValueError, match="no submodule named 'nope'"):
        feature_levels(net, ["nope"])
    with pytest.raises(ValueError, match="unknown role"):
        feature_levels(net, [("enc", "middle")])


def test_registry_and_feature_modules_protocol(monkeypatch):
    monkeypatch.setattr(F, "_REGISTRY", dict(F._REGISTRY))

    class Declared(nn.Sequential):
        feature_modules = ("0", "1")
        feature_roles = (E, D)

    class Registered(nn.Sequential):
        pass

    class SubRegistered(Registered):
        pass

    assert feature_levels(Declared(nn.Identity(), nn.Identity())) == [FeatureLevel("0", E), FeatureLevel("1", D)]

    @register_feature_levels(Registered)
    def _levels(net):
        return [("0", E), ("1", B)]

    assert feature_module_names(SubRegistered(nn.Identity(), nn.Identity())) == ["0", "1"]
    with pytest.raises(ValueError, match="already registered"):
        register_feature_levels(Registered, _levels)
    register_feature_levels(Registered, lambda n: [("1", D)], overwrite=True)
    assert feature_levels(Registered(nn.Identity(), nn.Identity())) == [FeatureLevel("1", D)]


def test_check_feature_compatibility():
    shapes = check_feature_compatibility([_cenet(2), _cenet(2)], (1, 1, 32, 32))
    assert shapes[0] == shapes[1] and len(shapes[0]) == 10
    wider = CENet(2, 1, 2, channels=(8, 16, 32, 64), layers=(2, 1, 1, 1))
    assert len(check_feature_compatibility([_cenet(2), wider], (1, 1, 32, 32))) == 2
    with pytest.raises(ValueError, match="channels"):
        check_feature_compatibility([_cenet(2), wider], (1, 1, 32, 32), same_channels=True)
    # UNet (no full-resolution level) and BasicUNet have different level lists
    with pytest.raises(ValueError, match="levels|level 0"):
        check_feature_compatibility([_basic_unet(2), _unet(2)], (1, 1, 32, 32))


def test_extractor_lifecycle_and_errors():
    net = _cenet(2).eval()  # eval: batch norm accepts the batch-1 forward below
    x = torch.randn(2, 1, 32, 32)
    extractor = FeatureExtractor(net)
    with pytest.raises(RuntimeError, match="not recorded"):
        extractor.features
    with extractor:
        assert extractor.attached
        net(x)
        first = extractor.named_features()
        assert list(first) == list(net.feature_modules)
        assert [f.shape[1] for f in extractor.select(["bottleneck"])] == [36]
        net(x[:1])  # a new forward replaces the records
        assert extractor.features[0].shape[0] == 1
    assert not extractor.attached
    net(x)  # hooks removed: records untouched
    assert extractor.features[0].shape[0] == 1

    extractor.replace_fn = lambda i, f: f[:, :1]
    with extractor, pytest.raises(ValueError, match="shape"):
        net(x)
    assert not net._forward_hooks and not net.stem._forward_hooks  # removed even after an error


def test_detach_and_inplace_detection():
    net = _cenet(2)
    with FeatureExtractor(net, detach=True) as ex:
        net(torch.randn(2, 1, 32, 32))
    assert not any(f.requires_grad for f in ex.features)

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return torch.relu_(self.conv(x))  # modifies the recorded level output in place

    net2 = InPlace()
    ex2 = FeatureExtractor(net2, ["conv"])
    with ex2:
        net2(torch.randn(1, 1, 4, 4))
    with pytest.raises(RuntimeError, match="in place"):
        ex2.features


def test_checkpoint_unet_levels_and_backward():
    net = CheckpointUNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2))
    names = feature_module_names(net)
    inner = "model.1.submodule.module"
    assert names == ["model.0", f"{inner}.0", f"{inner}.1.submodule", f"{inner}.2"]
    extractor = FeatureExtractor(net, replace_fn=lambda i, f: f * 1.0)
    out, feats = extractor(torch.randn(2, 1, 16, 16))
    (out.mean() + sum(f.mean() for f in feats)).backward()
    assert net.model[0].module.conv.weight.grad.abs().sum() > 0
