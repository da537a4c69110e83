"""QMENet: shapes, gradients, fusion replacing (or adding to) meta features, eval outputs, diversity, TorchScript,
training."""

import numpy as np
import pytest
import torch
from monai.data import create_test_image_2d
from monai.engines import SupervisedTrainer
from monai.networks.nets import BasicUNet

from qddens_monai.handlers import IncrementalQuantizationHandler
from qddens_monai.losses import DeepDiversityLoss, EnsembleLoss
from qddens_monai.networks import CENet, QMENet, quantization_preset
from qddens_monai.quantization import freeze, is_quantization_complete, quantization_step, quantized_layers

TINY = {"channels": (4, 8, 16, 16), "layers": (1, 1, 1, 1)}


def tiny_ensemble(dims=2, **kw):
    kw.setdefault("quantization", "float")
    return QMENet(dims, 1, 2, backbone_kwargs=TINY, probe_size=32, **kw)


@pytest.mark.parametrize("dims,size", [(2, (65, 47)), (2, (32, 32)), (3, (33, 20, 27)), (3, (32, 32, 32))])
def test_output_shapes_train_and_eval(dims, size):
    net = tiny_ensemble(dims, quantization="qme_net")
    x = torch.randn(2, 1, *size)
    out = net(x)
    assert len(out["logits"]) == 4 and all(z.shape == (2, 2, *size) for z in out["logits"])
    assert len(out["features"]) == 3 and all(len(f) == len(out["roles"]) == 10 for f in out["features"])
    assert out["roles"] == ["stem"] + ["encoder"] * 4 + ["bottleneck"] + ["decoder"] * 4
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 2, *size)


def test_gradients_reach_every_learner_and_fusion_block():
    net = tiny_ensemble(quantization="qdd_ens")
    loss = EnsembleLoss(alpha=0.005)(net(torch.randn(2, 1, 32, 32)), torch.randint(0, 2, (2, 1, 32, 32)))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for block in net.fusion:
        assert all(p.grad.abs().sum() > 0 for p in block.project.parameters() if p.dim() > 1)
    for learner in [*net.base_learners, net.meta_learner]:
        assert sum(float(p.grad.abs().sum()) for p in learner.parameters()) > 0


def test_fusion_replaces_the_meta_learners_features():
    torch.manual_seed(0)
    net = tiny_ensemble().eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        fused_meta = net.forward_learners(x)[0][-1]
        plain_meta = net.meta_learner(x)  # the same learner without fusion
        for block in net.fusion:
            block.merge.conv.weight.zero_()  # fused map = norm/act of zeros: must change the meta output
        zeroed_meta = net.forward_learners(x)[0][-1]
    assert not torch.allclose(fused_meta, plain_meta)
    assert not torch.allclose(fused_meta, zeroed_meta)


def test_residual_fusion_starts_as_the_plain_meta_learner_and_learns_its_gate():
    torch.manual_seed(0)
    net = tiny_ensemble(fusion_residual=True)
    x = torch.randn(2, 1, 32, 32)
    EnsembleLoss()(net(x), torch.randint(0, 2, (2, 1, 32, 32))).backward()
    assert all(block.gate.grad.abs().sum() > 0 for block in net.fusion)  # the zero gates do learn
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net.forward_learners(x)[0][-1], net.meta_learner(x), atol=1e-6)
        for block in net.fusion:
            block.gate.fill_(0.5)
        assert not torch.allclose(net.forward_learners(x)[0][-1], net.meta_learner(x), atol=1e-3)
        assert torch.allclose(torch.jit.script(net)(x), net(x), atol=1e-5)
    # the replacing fusion (QME-Net's) has no gate: its state dict, and so older checkpoints, are unchanged
    plain = tiny_ensemble()
    assert all(block.gate is None for block in plain.fusion)
    assert set(net.state_dict()) - set(plain.state_dict()) == {f"fusion.{i}.gate" for i in range(len(net.fusion))}


def test_eval_output_mean_probability_and_meta():
    net = tiny_ensemble().eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        probs = net.probabilities(x)
        mean = net(x)
        net.output = "meta"
        meta = net(x)
    assert torch.allclose(torch.softmax(mean, 1), probs.mean(0), atol=1e-6)
    assert torch.allclose(torch.softmax(meta, 1), probs[-1], atol=1e-6)


def test_sigmoid_heads_mean_probability():
    net = QMENet(2, 1, 1, backbone_kwargs=TINY, quantization="float", activation="sigmoid", probe_size=32).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(net(x)), net.probabilities(x).mean(0), atol=1e-6)


def test_presets_and_quantization_settings():
    assert [s["bits"] for s in quantization_preset("qme_net", 4)] == [4, 5, 6, 16]
    assert [s["bits"] for s in quantization_preset("qdd_ens", 4)] == [5, 5, 5, 5]
    net = tiny_ensemble(quantization="qme_net")
    bits = {}
    for name, _, q in quantized_layers(net):
        bits.setdefault(name.split(".")[0] + name.split(".")[1] if name.startswith("base") else "meta", set()).add(
            q.quantizer.bits
        )
    assert bits == {"base_learners0": {4}, "base_learners1": {5}, "base_learners2": {6}, "meta": {16}}
    assert not any(name.startswith("fusion") for name, _, _ in quantized_layers(net))
    # float_meta: the same base learners, no quantized layer in the meta learner (the bundle's default)
    float_meta = tiny_ensemble(quantization="float_meta")
    names = [name for name, _, _ in quantized_layers(float_meta)]
    assert names and all(name.startswith("base_learners") for name in names)
    assert quantization_preset("float_meta", 4)[:3] == quantization_preset("qme_net", 4)[:3]
    assert quantization_preset("float_meta", 4)[3] is None
    custom = tiny_ensemble(
        num_learners=3, quantization=[{"method": "dorefa", "bits": 3}, None, {"method": "ternary", "bits": 2}]
    )
    assert {q.quantizer.name for _, _, q in quantized_layers(custom)} == {"dorefa", "ternary"}
    with pytest.raises(ValueError, match="Unknown quantization preset"):
        tiny_ensemble(quantization="int8")


def test_dropout_is_accepted_and_active_in_train_mode():
    net = tiny_ensemble(dropout=0.5)
    assert any(isinstance(m, torch.nn.Dropout) for m in net.modules())
    x = torch.randn(2, 1, 32, 32)
    torch.manual_seed(1)
    a = net(x)["logits"][-1]
    torch.manual_seed(2)
    b = net(x)["logits"][-1]
    assert not torch.allclose(a, b)


def test_mixed_backbones():
    learners = [
        BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, 4)),
        CENet(2, 1, 2, **TINY),
        CENet(2, 1, 2, channels=(8, 8, 16, 32), layers=(1, 1, 1, 1)),  # other channels: projected
    ]
    net = QMENet(
        2, learners=learners, fusion_roles=("encoder", "bottleneck", "decoder"), quantization="qdd_ens", probe_size=32
    )
    out = net(torch.randn(2, 1, 32, 32))
    assert len(out["logits"]) == 3 and len(out["roles"]) == 9
    assert all(a.shape[2:] == b.shape[2:] for a, b in zip(out["features"][0], out["features"][1]))
    EnsembleLoss()(out, torch.randint(0, 2, (2, 1, 32, 32))).backward()


@pytest.mark.parametrize("dims", [2, 3])
def test_meta_kwargs_give_a_wider_meta_learner_that_scripts(dims):
    small = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
    net = QMENet(dims, 1, 2, num_learners=2, backbone="unet", backbone_kwargs=small, quantization="float",
                 output="meta", probe_size=16, meta_kwargs={"channels": [8, 16, 32], "num_res_units": 2})  # fmt: skip
    base, meta = net.base_learners[0], net.meta_learner
    assert sum(p.numel() for p in meta.parameters()) > 2 * sum(p.numel() for p in base.parameters())
    x = torch.randn(1, 1, *([16] * dims))
    out = net(x)
    assert [t.shape for t in out["logits"]] == [(1, 2, *x.shape[2:])] * 2
    net.eval()
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(net)(x), net(x), atol=1e-5)


def test_learners_with_different_levels_are_a_clear_error():
    learners = [BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, 4)), CENet(2, 1, 2, **TINY)]
    with pytest.raises(ValueError, match=r"base learner 0 \(BasicUNet\) has levels .* meta learner \(CENet\)"):
        QMENet(2, learners=learners, quantization="float", probe_size=32)
    with pytest.raises(ValueError, match="Unknown backbone 'resnet'"):
        QMENet(2, backbone="resnet", quantization="float")
    with pytest.raises(ValueError, match="one entry per learner"):
        QMENet(2, backbone=["cenet", "cenet"], backbone_kwargs=TINY, quantization="float")


def test_frozen_ensemble_torchscript_matches_eager():
    net = tiny_ensemble(quantization="qme_net")
    while not is_quantization_complete(net):
        quantization_step(net)
    net = freeze(net).eval()
    x = torch.randn(1, 1, 48, 40)
    with torch.no_grad():
        expected = net(x)
        traced = torch.jit.trace(net, x)
        other = torch.randn(1, 1, 48, 40)
        assert torch.allclose(traced(x), expected, atol=1e-5)
        assert torch.allclose(traced(other), net(other), atol=1e-5)


def _vessel_batch(n=6, size=48):
    rng = np.random.RandomState(0)
    imgs, labels = zip(
        *[
            create_test_image_2d(size, size, num_objs=5, rad_max=size // 5, noise_max=0.3, random_state=rng)
            for _ in range(n)
        ]
    )
    return torch.tensor(np.stack(imgs))[:, None].float(), (torch.tensor(np.stack(labels))[:, None] > 0).long()


def _base_disagreement(net, x):
    net.eval()
    with torch.no_grad():
        p = net.probabilities(x)[:-1, :, 1]
    net.train()
    k = p.shape[0]
    return float(torch.stack([(p[i] - p[j]).abs().mean() for i in range(k) for j in range(i + 1, k)]).mean())


def test_diversity_loss_separates_learners_and_stays_finite():
    # Big enough for the heads to follow the features apart; on smaller nets and fewer steps the output
    # disagreement does not reliably rise (see the README's results).
    x, y = _vessel_batch(n=8, size=64)
    results = {}
    for alpha in (0.0, 0.5):
        torch.manual_seed(0)
        net = QMENet(
            2,
            1,
            2,
            backbone_kwargs={"channels": (8, 16, 32, 64), "layers": (1, 1, 1, 1)},
            quantization="float",
            probe_size=32,
        )
        loss_fn = EnsembleLoss(alpha=alpha, diversity=DeepDiversityLoss(form="faithful"))
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        for _ in range(60):
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            assert torch.isfinite(loss)
        results[alpha] = _base_disagreement(net, x)
    assert results[0.5] > 1.2 * results[0.0], results


def test_supervised_trainer_with_quantization_schedule():
    x, y = _vessel_batch(n=4, size=32)
    data = [{"image": x[i], "label": y[i]} for i in range(4)]
    net = tiny_ensemble(quantization="qme_net")
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    handler = IncrementalQuantizationHandler(net, fp_epochs=1, epochs_per_step=1, optimizer=opt)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=handler.total_epochs,
        train_data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        network=net,
        optimizer=opt,
        loss_function=EnsembleLoss(),
        train_handlers=[handler],
    )
    trainer.run()
    assert is_quantization_complete(net) and np.isfinite(float(trainer.state.output[0]["loss"]))
