"""Why did the old default's CE-Net learners predict nothing? Learning curves of one learner, CE-Net against UNet.

One learner of each backbone (the sizes the bundle used: CE-Net channels 8..64 with one residual block
per stage, 857k parameters as 4 learners; MONAI UNet channels 8..64 with one residual unit) is trained
alone on whole images with ``DiceCELoss`` and Adam, and after every epoch scored on the test images:
Dice (argmax), and the mean foreground probability on foreground pixels (a network that "predicts
nothing" keeps it below 0.5). Two data sets separate the suspects:

- ``vessels``: the results benchmark's hard 2D vessels (96 px, difficulty 0.7): structures 1-3 px wide;
- ``mr``: MR-like slices (:mod:`qddens_monai.data.phantoms`, 128 x 144 px): a compact organ of ~1,000 px.

CE-Net's stem reduces the input 4x (7x7 stride-2 convolution, then 3x3 stride-2 max pooling) and its
decoder has no full-resolution skip, as in the paper (built for 448 px fundus photographs with an
ImageNet encoder). If the failure is resolution, CE-Net trains on the organ and fails on the vessels at
any learning rate; if it is optimisation, a lower learning rate or the background term fixes it. Runs:
``unet`` (lr 5e-3, the bundle's), ``cenet`` (lr 5e-3), ``cenet_lr1e-3``, ``cenet_bg`` (DiceCE with the
background class included).

Usage::

    python benchmarks/backbone_diagnosis.py              # 2 data sets x 4 runs x 3 seeds, 30 epochs
    python benchmarks/backbone_diagnosis.py --quick      # the harness, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "unet": {"backbone": "unet", "lr": 5e-3, "include_background": False},
    "cenet": {"backbone": "cenet", "lr": 5e-3, "include_background": False},
    "cenet_lr1e-3": {"backbone": "cenet", "lr": 1e-3, "include_background": False},
    "cenet_bg": {"backbone": "cenet", "lr": 5e-3, "include_background": True},
}


def load(data: str, root: Path, quick: bool) -> tuple[list[dict], list[dict]]:
    import torch

    from qddens_monai.data import create_mr_slice_2d, create_vessel_image_2d

    n_train, n_test = (4, 2) if quick else (16, 6)
    out = []
    for stream, n in ((0, n_train), (1, n_test)):
        cases = []
        for i in range(n):
            seed = int(np.random.SeedSequence([0, stream, i]).generate_state(1)[0])
            if data == "vessels":
                image, label, _ = create_vessel_image_2d(96, 0.7, random_state=seed)
                image = image.transpose(2, 0, 1).astype(np.float32) / 255.0  # (3, H, W) in [0, 1], as rgb
                image = image[1:2]  # the green channel: one input channel for both data sets
            else:
                image, label = create_mr_slice_2d((128, 144), 2, 0.6, random_state=seed)
                image = ((image - image[image > 0].mean()) / image[image > 0].std())[None]
            cases.append(
                {
                    "image": torch.as_tensor(image, dtype=torch.float32),
                    "label": torch.as_tensor(label[None] > 0, dtype=torch.float32),
                }
            )
        out.append(cases)
    return out[0], out[1]


def make(backbone: str):
    from monai.networks.nets import UNet

    from qddens_monai.networks import CENet

    if backbone == "unet":
        return UNet(2, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)
    return CENet(2, 1, 2, channels=(8, 16, 32, 64), layers=(1, 1, 1, 1))


def run(data: str, name: str, seed: int, epochs: int, train: list[dict], test: list[dict]) -> dict[str, Any]:
    import torch
    from monai.losses import DiceCELoss

    from qddens_monai.evaluation import segmentation_metrics
    from qddens_monai.evaluation.metrics import label_one_hot

    cfg = RUNS[name]
    torch.manual_seed(seed)
    net = make(cfg["backbone"])
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=cfg["include_background"])
    gen = torch.Generator().manual_seed(seed)
    curve = []
    t0 = time.process_time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train), generator=gen).tolist()
        losses = []
        for b in range(0, len(order), 4):
            batch = [train[i] for i in order[b : b + 4]]
            x = torch.stack([c["image"] for c in batch])
            y = torch.stack([c["label"] for c in batch])
            flip = bool(torch.rand(1, generator=gen) < 0.5)
            if flip:
                x, y = x.flip(-1), y.flip(-1)
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss))
        net.eval()
        dice, fg_prob = [], []
        with torch.no_grad():
            for c in test:
                prob = torch.softmax(net(c["image"][None]), 1)[0]
                dice.append(
                    segmentation_metrics(prob, label_one_hot(c["label"], 2, "softmax"), metrics=("dice",))["dice"]
                )
                fg_prob.append(float(prob[1][c["label"][0] > 0].mean()))
        curve.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "dice": float(np.nanmean(dice)),
                "fg_prob": float(np.mean(fg_prob)),
            }
        )
    return {
        "data": data,
        "run": name,
        "seed": seed,
        "curve": curve,
        "cpu_s": time.process_time() - t0,
        "params": int(sum(p.numel() for p in net.parameters())),
    }


def report(results: list[dict], docs: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datas = sorted({r["data"] for r in results}, reverse=True)
    fig, axes = plt.subplots(2, len(datas), figsize=(5.5 * len(datas), 7), squeeze=False)
    lines = ["| data | run | final Dice | final fg prob | epochs to Dice 0.5 | CPU s |", "|---|---|---|---|---|---|"]
    for col, data in enumerate(datas):
        for i, name in enumerate(RUNS):
            rs = [r for r in results if r["data"] == data and r["run"] == name]
            if not rs:
                continue
            dice = np.array([[p["dice"] for p in r["curve"]] for r in rs])
            prob = np.array([[p["fg_prob"] for p in r["curve"]] for r in rs])
            ep = np.arange(1, dice.shape[1] + 1)
            for row, (vals, what) in enumerate(((dice, "test Dice"), (prob, "mean P(fg) on fg pixels"))):
                ax = axes[row][col]
                ax.plot(ep, vals.mean(0), label=name, color=f"C{i}")
                ax.fill_between(ep, vals.min(0), vals.max(0), color=f"C{i}", alpha=0.15)
                ax.set_title(f"{data}: {what}")
                ax.set_xlabel("epoch")
                ax.grid(alpha=0.3)
            reach = [int(np.argmax(d >= 0.5)) + 1 if (d >= 0.5).any() else None for d in dice]
            reach_s = (
                "never" if all(r is None for r in reach) else ", ".join("–" if r is None else str(r) for r in reach)
            )
            lines.append(
                f"| {data} | {name} | {dice[:, -1].mean():.3f} ± {dice[:, -1].std(ddof=1) if len(rs) > 1 else 0:.3f} | "
                f"{prob[:, -1].mean():.2f} | {reach_s} | {np.mean([r['cpu_s'] for r in rs]):.0f} |"
            )
    axes[0][0].legend()
    fig.tight_layout()
    (docs / "images").mkdir(parents=True, exist_ok=True)
    fig.savefig(docs / "images" / "backbone_diagnosis.png", dpi=80)
    page = docs / "backbone_diagnosis.md"
    page.write_text("\n".join(lines) + "\n\n![learning curves](images/backbone_diagnosis.png)\n")
    return page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "backbone"))
    ap.add_argument("--docs", default=str(REPO / "docs"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs, seeds = (2, [0]) if args.quick else (30, [0, 1, 2])
    results = []
    for data in ("vessels", "mr"):
        train, test = load(data, out, args.quick)
        for seed in seeds:
            for name in RUNS:
                f = out / f"{data}_{name}_seed{seed}.json"
                if f.is_file() and not args.quick:
                    results.append(json.loads(f.read_text()))
                    continue
                r = run(data, name, seed, epochs, train, test)
                f.write_text(json.dumps(r))
                results.append(r)
                print(
                    f"{data} {name} seed {seed}: Dice {r['curve'][-1]['dice']:.3f}, "
                    f"P(fg) {r['curve'][-1]['fg_prob']:.2f}",
                    flush=True,
                )
    print(f"wrote {report(results, Path(args.docs))}")


if __name__ == "__main__":
    main()
