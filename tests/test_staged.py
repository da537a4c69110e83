"""Staged backbones: same outputs and state dict as the networks themselves, fusion without hooks, TorchScript."""

import copy
import io
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet, SegResNet, UNet
from monai.networks.nets.unet import CheckpointUNet

from qddens_monai.config import load_bundle_configs
from qddens_monai.networks import CENet, QMENet, StagedUNet, StageView, as_staged, is_staged
from qddens_monai.networks.distillation import load_checkpoint
from qddens_monai.quantization import freeze, is_quantization_complete, quantization_step, quantized_layers

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
TINY = {"channels": (4, 8, 16, 16), "layers": (1, 1, 1, 1)}
BACKBONE_KWARGS = {
    "cenet": TINY,
    "unet": {"channels": (4, 8, 16, 16), "strides": (2, 2, 2), "num_res_units": 1},
    "basicunet": {"features": (4, 4, 8, 8, 16, 4)},
}
SIZES = {2: (32, 40), 3: (32, 24, 16)}


def _networks(dims):
    return {
        "cenet": CENet(dims, 1, 2, **TINY),
        "unet": UNet(dims, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=2),
        "unet_plain": UNet(dims, 1, 3, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=0),
        "checkpoint_unet": CheckpointUNet(dims, 1, 2, channels=(4, 8, 16), strides=(2, 2)),
        "basicunet": BasicUNet(dims, 1, 2, features=(4, 4, 8, 8, 16, 4)),
    }


@pytest.mark.parametrize("dims", [2, 3])
def test_adapters_keep_outputs_and_state_dict(dims):
    x = torch.randn(2, 1, *SIZES[dims])
    for name, net in _networks(dims).items():
        net.eval()
        staged = as_staged(net)
        assert is_staged(staged), name
        assert list(staged.state_dict()) == list(net.state_dict()), name
        assert [n for n, _ in staged.named_parameters()] == [n for n, _ in net.named_parameters()], name
        fresh = type(net)(**_init_args(net)) if name != "cenet" else CENet(dims, 1, 2, **TINY)
        as_staged(fresh).load_state_dict(net.state_dict(), strict=True)  # both ways, strictly
        net.load_state_dict(as_staged(fresh).state_dict(), strict=True)
        with torch.no_grad():
            logits, feats = staged.forward_features(x)
            assert torch.equal(logits, net(x)), name
            assert torch.equal(staged(x), logits), name
        assert len(feats) == len(staged.feature_roles) == len(staged.feature_modules) == staged.num_levels


def _init_args(net):
    if isinstance(net, UNet):
        return {
            "spatial_dims": net.dimensions,
            "in_channels": net.in_channels,
            "out_channels": net.out_channels,
            "channels": net.channels,
            "strides": net.strides,
            "num_res_units": net.num_res_units,
        }
    return {
        "spatial_dims": net.final_conv.weight.dim() - 2,
        "in_channels": 1,
        "out_channels": 2,
        "features": (4, 4, 8, 8, 16, 4),
    }


def test_stage_view_owns_no_state():
    net = UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2))
    staged = StagedUNet(net)
    assert isinstance(staged.levels, StageView) and len(staged.levels) == 4
    assert not any(k.startswith(("levels.", "head.")) for k in staged.state_dict())
    # the real paths name the modules; the views only add themselves
    assert {n for n, _ in staged.named_modules() if n and not n.startswith("model")} == {"levels", "head"}
    staged.to(torch.float64)  # once per parameter, through the real path
    assert all(p.dtype == torch.float64 for p in net.parameters())
    assert "StageView(" in repr(staged)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("backbone", ["cenet", "unet", "basicunet"])
def test_staged_ensemble_equals_the_hook_path(dims, backbone):
    net = QMENet(
        dims, 1, 2, backbone=backbone, backbone_kwargs=BACKBONE_KWARGS[backbone], quantization="qme_net", probe_size=32
    )
    assert net.staged and all(is_staged(m) for m in [*net.base_learners, net.meta_learner])
    x = torch.randn(2, 1, *SIZES[dims])
    with torch.no_grad():
        for mode in (True, False):
            net.train(mode)
            logits, feats = net.forward_learners(x)
            hooked_logits, hooked_feats = net._forward_hooked(x)  # the same learners, run whole with hooks
            assert all(torch.equal(a, b) for a, b in zip(logits, hooked_logits))
            assert all(torch.equal(a, b) for fa, fb in zip(feats, hooked_feats) for a, b in zip(fa, fb))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_foreign_backbones_and_explicit_levels_use_hooks():
    net = QMENet(
        2, 1, 2, backbone="segresnet", backbone_kwargs={"init_filters": 8}, quantization="float", probe_size=32
    )
    assert not net.staged and isinstance(net.meta_learner, SegResNet)
    with pytest.raises(RuntimeError, match="forward_level"):  # TorchScript needs staged learners
        torch.jit.script(net.eval())
    learners = [CENet(2, 1, 2, **TINY) for _ in range(2)]
    levels = [list(CENet.feature_modules)] * 2
    assert not QMENet(2, learners=learners, levels=levels, quantization="float", probe_size=32).staged


def _script_equals_eager(net, shapes, in_channels=1, freeze_first=True, save_load=False, optimized=False):
    """Script once, check both eval outputs (``output`` is an attribute of the script too) on every shape.

    ``optimized``: TorchScript's default executor, each input run 3 times (it profiles, then optimizes);
    else without its profiling / fusion passes (the same kernels, much faster to compile for a test)."""
    while not is_quantization_complete(net):
        quantization_step(net)
    net = freeze(copy.deepcopy(net)).eval() if freeze_first else net.eval()
    net.output = "mean"
    scripts = [torch.jit.script(net)]
    if save_load:
        buffer = io.BytesIO()
        torch.jit.save(scripts[0], buffer)
        buffer.seek(0)
        scripts.append(torch.jit.load(buffer))
    worst = 0.0
    with torch.no_grad(), torch.jit.optimized_execution(optimized):
        for output in ("mean", "meta"):
            net.output = output
            for shape in shapes:
                x = torch.randn(2, in_channels, *shape)
                expected = net(x)
                for scripted in scripts:
                    scripted.output = output
                    for _ in range(3 if optimized else 1):
                        worst = max(worst, float((scripted(x) - expected).abs().max()))
    assert worst <= 1e-5, worst
    return worst


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("backbone", ["cenet", "unet", "basicunet"])
def test_torchscript_equals_eager(dims, backbone):
    net = QMENet(
        dims, 1, 2, backbone=backbone, backbone_kwargs=BACKBONE_KWARGS[backbone], quantization="qme_net", probe_size=32
    )
    shapes = [SIZES[dims]] + ([(40, 24)] if dims == 2 else [(24, 16, 32)])
    _script_equals_eager(net, shapes)


def test_mixed_backbones_script():
    learners = [
        BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, 4)),
        CENet(2, 1, 2, **TINY),
        UNet(2, 1, 2, (4, 8, 16, 16, 32), (2,) * 4),
    ]
    # UNet has one decoder level fewer: fuse the encoders and the bottleneck only, the rest runs unfused
    net = QMENet(2, learners=learners, fusion_roles=("encoder", "bottleneck"), quantization="qdd_ens", probe_size=32)
    assert net.staged and net.level_roles == ["encoder"] * 4 + ["bottleneck"]
    _script_equals_eager(net, [(32, 48)])


@pytest.mark.parametrize("overrides", [[], ["3d.json"]])
def test_bundle_network_scripts(overrides):
    parser = ConfigParser(load_bundle_configs([BUNDLE / "configs" / f for f in ["inference.json", *overrides]]))
    parser["bundle_root"] = str(BUNDLE)  # the shipped weights' plan.json: in_channels, num_classes
    if overrides:  # no 3D weights ship: an untrained 3D network
        parser.update({"in_channels": 1, "num_classes": 2})
    net = parser.get_parsed_content("network_def")
    dims, in_channels = parser.get_parsed_content("spatial_dims"), parser.get_parsed_content("plan#in_channels")
    assert net.staged
    if dims == 2:  # the shipped weights, strictly
        load_checkpoint(net, BUNDLE / "models" / "model.pt")
        shapes = [(64, 64), (48, 80)]
    else:
        shapes = [(32, 32, 32)]
    # network_def as the bundle builds it, quantization parametrizations included (scripted as a frozen copy)
    _script_equals_eager(net, shapes, in_channels, freeze_first=False, save_load=True, optimized=dims == 2)
    assert any(True for _ in quantized_layers(net))


def test_script_of_a_quantized_ensemble_mid_schedule():
    net = QMENet(2, 1, 2, backbone_kwargs=TINY, quantization="qme_net", probe_size=32)
    quantization_step(net)  # 1 of 4 steps: float weights left
    net.eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 1, 32, 40)
    with torch.no_grad():
        assert float((scripted(x) - net(x)).abs().max()) <= 1e-5
    assert not is_quantization_complete(net) and any(True for _ in quantized_layers(net))  # left as it was
