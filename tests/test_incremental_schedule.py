"""The incremental schedule: portions, partitions, frozen weights, what is (not) quantized."""

import math

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from qddens_monai.quantization import (
    IncrementalQuantization,
    StraightThroughQuantization,
    is_quantization_complete,
    quantization_progress,
    quantization_step,
    quantize_network,
    quantized_layers,
)


def small_unet(spatial_dims=2):
    torch.manual_seed(0)
    return UNet(spatial_dims, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


def masks(net):
    return {name: q.mask.clone() for name, _, q in quantized_layers(net)}


@pytest.mark.parametrize("partition", ["magnitude", "random", "two_stage"])
def test_portions_met_per_tensor(partition):
    net = quantize_network(small_unet(), "power_of_two", 5, partition=partition, portions=(0.3, 0.6, 0.8, 1.0))
    for step, portion in enumerate((0.3, 0.6, 0.8, 1.0), start=1):
        assert quantization_step(net) == step
        for name, _, q in quantized_layers(net):
            n = q.mask.numel()
            assert int(q.mask.sum()) == math.floor(portion * n + 0.5), name
    assert is_quantization_complete(net)
    assert quantization_step(net) == 4  # nothing left to do


def test_only_conv_linear_weights_are_quantized():
    net = small_unet(3)
    quantize_network(net, "power_of_two", 4)
    names = {n for n, _, _ in quantized_layers(net)}
    convs = {n for n, m in net.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    assert names == convs
    for name, module in net.named_modules():
        if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.PReLU)):
            assert not hasattr(module, "parametrizations"), name
    # biases stay plain float parameters
    biases = [n for n, _ in net.named_parameters() if n.endswith("bias")]
    assert biases and all("parametrizations" not in n for n in biases)


def test_magnitude_freezes_largest_first():
    net = quantize_network(small_unet(), "power_of_two", 5, partition="magnitude")
    latents = {n: l.parametrizations["weight"].original.detach().clone() for n, l, _ in quantized_layers(net)}
    quantization_step(net)
    for name, _, q in quantized_layers(net):
        a = latents[name].abs()
        assert a[q.mask].min() >= a[~q.mask].max()


def test_two_stage_reproducible_per_seed_and_differs_across_seeds():
    def run(seed):
        net = quantize_network(small_unet(), "power_of_two", 5, partition="two_stage", seed=seed)
        latents = {n: l.parametrizations["weight"].original.detach().clone() for n, l, _ in quantized_layers(net)}
        quantization_step(net)
        return net, latents

    (a, latents), (b, _), (c, _) = run(1), run(1), run(2)
    ma, mb, mc = masks(a), masks(b), masks(c)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert any(not torch.equal(ma[k], mc[k]) for k in ma)
    # Stage one: only weights among the 2k largest (k = 30%) are candidates.
    for name, m in ma.items():
        flat = latents[name].abs().reshape(-1)
        k = int(m.sum())
        candidates = torch.sort(flat, descending=True, stable=True).indices[: 2 * k]
        assert set(torch.nonzero(m.reshape(-1)).reshape(-1).tolist()) <= set(candidates.tolist())


def test_random_partition_differs_from_magnitude():
    mag = quantize_network(small_unet(), "power_of_two", 5, partition="magnitude")
    rnd = quantize_network(small_unet(), "power_of_two", 5, partition="random", seed=3)
    quantization_step(mag)
    quantization_step(rnd)
    assert any(not torch.equal(x, y) for x, y in zip(masks(mag).values(), masks(rnd).values()))


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
    ],
    ids=["adam", "adamw", "sgd_momentum"],
)
def test_frozen_weights_stay_bit_identical_under_optimizers(make_optimizer):
    net = quantize_network(small_unet(), "power_of_two", 5, partition="random", seed=0)
    opt = make_optimizer(net.parameters())
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 32, 32))

    def train(steps):
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

    train(3)  # build momentum before the first step
    quantization_step(net)
    frozen = {n: (l.weight.detach().clone(), q.mask.clone()) for n, l, q in quantized_layers(net)}
    train(60)
    moved = 0
    for name, layer, _ in quantized_layers(net):
        before, mask = frozen[name]
        after = layer.weight.detach()
        assert torch.equal(after[mask], before[mask]), name
        moved += int((after[~mask] != before[~mask]).sum())
    assert moved > 0  # the free weights did train


def test_straight_through_keeps_latent_float_and_quantizes_every_forward():
    net = quantize_network(small_unet(), "dorefa", 3)
    assert quantization_progress(net) == (0, 0) and is_quantization_complete(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x = torch.randn(2, 1, 32, 32)
    name, layer, q = next(iter(quantized_layers(net)))
    assert isinstance(q, StraightThroughQuantization)
    before = layer.parametrizations["weight"].original.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    assert not torch.equal(before, layer.parametrizations["weight"].original)
    assert layer.weight.unique().numel() <= 2**3


def test_incremental_flag_overrides_method_default():
    net = quantize_network(small_unet(), "uniform", 4, incremental=True)
    assert all(isinstance(q, IncrementalQuantization) for _, _, q in quantized_layers(net))
    net = quantize_network(small_unet(), "power_of_two", 4, incremental=False)
    assert all(isinstance(q, StraightThroughQuantization) for _, _, q in quantized_layers(net))


def test_exclude_leaves_layers_in_float():
    net = small_unet()
    quantize_network(net, "power_of_two", 5, exclude=["model.2*"])
    names = [n for n, _, _ in quantized_layers(net)]
    assert names and not any(n.startswith("model.2") for n in names)


def test_state_round_trips_through_state_dict_mid_schedule():
    a = quantize_network(small_unet(), "log_minmax", 4, partition="two_stage", seed=5)
    quantization_step(a)
    quantization_step(a)
    b = quantize_network(
        UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
        "log_minmax",
        4,
        partition="two_stage",
        seed=5,
    )
    b.load_state_dict(a.state_dict())
    assert quantization_progress(b) == (2, 4)
    quantization_step(a)
    quantization_step(b)
    for (n, la, qa), (_, lb, qb) in zip(quantized_layers(a), quantized_layers(b)):
        assert torch.equal(qa.mask, qb.mask) and torch.equal(la.weight, lb.weight), n


@pytest.mark.parametrize("scheduler", ["torch", "monai", "ignite"])
def test_a_learning_rate_scheduler_is_refused_when_the_handler_sets_the_lr(scheduler):
    from ignite.engine import Engine, Events
    from ignite.handlers import LinearCyclicalScheduler
    from monai.handlers import LrScheduleHandler

    from qddens_monai.handlers import IncrementalQuantizationHandler

    def run(reset_lr, lr_decay):
        net = quantize_network(nn.Sequential(nn.Conv2d(1, 2, 3)), bits=5)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        engine = Engine(lambda e, b: None)
        IncrementalQuantizationHandler(net, 1, 1, optimizer=opt, reset_lr=reset_lr, lr_decay=lr_decay).attach(engine)
        if scheduler == "torch":  # a plain PyTorch scheduler stepped by the user's own code
            torch.optim.lr_scheduler.StepLR(opt, step_size=1)
        elif scheduler == "monai":
            LrScheduleHandler(torch.optim.lr_scheduler.StepLR(opt, step_size=1)).attach(engine)
        else:
            engine.add_event_handler(Events.ITERATION_STARTED, LinearCyclicalScheduler(opt, "lr", 0.1, 0.01, 4))
        engine.run([0, 1], max_epochs=2)
        return opt

    with pytest.raises(RuntimeError, match="would fight the learning-rate scheduler"):
        run(True, 1.0)
    with pytest.raises(RuntimeError, match="lr_decay=0.5"):
        run(False, 0.5)
    run(False, 1.0)  # the handler leaves the learning rate alone: the scheduler owns it


def test_the_schedule_is_state_set_before_the_first_step_and_carried_by_the_state_dict():
    from qddens_monai.quantization import set_portions

    net = quantize_network(small_unet(), bits=5)
    assert quantization_progress(net) == (0, 4)
    set_portions(net, [0.5, 1.0])
    quantization_step(net)
    assert quantization_progress(net) == (1, 2)
    set_portions(net, (0.5, 1.0))  # the same schedule: accepted
    with pytest.raises(ValueError, match=r"at step 1 of the schedule \[0.5, 1.0\]"):
        set_portions(net, [0.3, 0.6, 0.8, 1.0])
    fresh = quantize_network(small_unet(), bits=5)  # built with the default 4 portions
    fresh.load_state_dict(net.state_dict())
    assert quantization_progress(fresh) == (1, 2)
    quantization_step(fresh)
    assert is_quantization_complete(fresh)
