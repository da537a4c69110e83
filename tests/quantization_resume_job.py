"""A tiny quantized training job for the resume test: run straight, stop at an iteration, or resume.

A quantization step is taken every 5 iterations; ``--stop N`` saves network and optimizer
state after N iterations and exits, ``--resume FILE`` continues from such a file.
"""

import argparse

import torch
from monai.networks.nets import UNet

from qddens_monai.quantization import quantization_step, quantize_network

TOTAL_ITERATIONS = 25
STEP_EVERY = 5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stop", type=int, default=TOTAL_ITERATIONS)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    quantize_network(net, "power_of_two", 4, partition="two_stage", seed=3)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=1e-2)
    start = 0
    if args.resume:
        state = torch.load(args.resume)
        net.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["iteration"]
    for it in range(start, args.stop):
        if it > 0 and it % STEP_EVERY == 0:
            quantization_step(net)
        gen = torch.Generator().manual_seed(it)
        x = torch.randn(2, 1, 32, 32, generator=gen)
        y = (x > 0.3).long().squeeze(1)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    torch.save({"network": net.state_dict(), "optimizer": optimizer.state_dict(), "iteration": args.stop}, args.out)


if __name__ == "__main__":
    main()
