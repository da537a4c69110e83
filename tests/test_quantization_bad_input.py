"""Bad arguments fail with a clear error before any weight is touched."""

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn
from torch.nn.utils import parametrize

from qddens_monai.handlers import IncrementalQuantizationHandler
from qddens_monai.quantization import freeze, quantization_step, quantize_network, quantized_layers


def unet():
    return UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)


def untouched(net, reference):
    assert not any(parametrize.is_parametrized(m) for m in net.modules())
    return all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), reference.values()))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"method": "inq"}, "Unknown quantization method 'inq'"),
        ({"partition": "largest"}, "Unknown partition 'largest'"),
        ({"method": "power_of_two", "bits": 1}, "bits=1 is out of range"),
        ({"method": "ternary", "bits": 4}, "bits=4 is out of range"),
        ({"method": "dorefa", "bits": 33}, "out of range"),
        ({"bits": "5"}, "bits must be an integer"),
        ({"portions": (0.5, 0.3, 1.0)}, "strictly increasing"),
        ({"portions": (0.5, 0.5, 1.0)}, "strictly increasing"),
        ({"portions": (0.3, 0.6, 0.9)}, "must end at 1.0"),
        ({"portions": ()}, "must not be empty"),
        ({"portions": (0.0, 1.0)}, "positive"),
        ({"portions": "abc"}, "sequence of numbers"),
    ],
)
def test_bad_arguments(kwargs, message):
    net = unet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        quantize_network(net, **kwargs)
    assert untouched(net, before)


def test_network_without_quantizable_layers():
    with pytest.raises(ValueError, match="no conv, transposed-conv or linear layer"):
        quantize_network(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)))


def test_quantizing_twice_is_refused():
    net = quantize_network(unet(), "power_of_two", 5)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_network(net, "uniform", 4)
    assert all(q.quantizer.name == "power_of_two" for _, _, q in quantized_layers(net))


def test_freeze_before_schedule_finished_touches_nothing():
    net = quantize_network(unet(), "power_of_two", 5)
    quantization_step(net)
    with pytest.raises(RuntimeError, match="at step 1 of 4"):
        freeze(net)
    assert len(list(quantized_layers(net))) == len(
        [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    )


def test_handler_arguments():
    with pytest.raises(ValueError, match="no incremental quantization"):
        IncrementalQuantizationHandler(unet(), fp_epochs=1, epochs_per_step=1)
    net = quantize_network(unet(), "power_of_two", 5)
    with pytest.raises(ValueError, match="epochs_per_step >= 1"):
        IncrementalQuantizationHandler(net, fp_epochs=1, epochs_per_step=0)
    with pytest.raises(ValueError, match="need the optimizer"):
        IncrementalQuantizationHandler(net, fp_epochs=1, epochs_per_step=1, reset_lr=True)
