"""Does the ensemble's disagreement point at its errors? The 2D bundle (shipped trained weights) served
by the real MONAI Label server, on generated fundus-like images of increasing difficulty.

Starts ``qddens-monai label-server --dims 2`` on 127.0.0.1 over a temporary studies folder, asks it for
the segmentation, the per-voxel disagreement map and the stored uncertainty of every image, and the
``uncertainty`` / ``suggestive`` picks; compares with the ground truth it generated. Prints a table and
writes ``docs/images/label_disagreement.png`` (``--figure ''`` to skip). About a minute on 1 thread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from qddens_monai.data import write_demo_2d
from qddens_monai.label.server import LabelServerProcess


def _post(url: str, body: dict) -> bytes:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.read()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument(
        "--figure", default=str(Path(__file__).resolve().parents[1] / "docs/images/label_disagreement.png")
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        studies = tmp / "studies"
        studies.mkdir()
        truth = {}
        for i, difficulty in enumerate(np.linspace(0.0, 1.0, args.images)):
            # one image per difficulty level (the generator's 0 = clear wide vessels .. 1 = thin, faint, noisy)
            write_demo_2d(
                tmp / f"d{i}", num_train=0, num_test=1, size=args.size, seed=100 + i, difficulty=float(difficulty)
            )
            name = f"img{i}_difficulty{difficulty:.2f}"
            (tmp / f"d{i}/imagesTs/vessel_test_000.png").rename(studies / f"{name}.png")
            truth[name] = (
                np.array(Image.open(tmp / f"d{i}/labelsTs/vessel_test_000.png")) > 0,
                np.array(Image.open(tmp / f"d{i}/masksTs/vessel_test_000.png")) > 0,
            )
        t0 = time.monotonic()
        with LabelServerProcess(studies, tmp / "app", ["--dims", "2"], log=tmp / "server.log") as server:
            print(f"server up in {time.monotonic() - t0:.1f} s at {server.url}")
            rows, maps = [], {}
            for name, (label, fov) in truth.items():
                t = time.monotonic()
                pred_png = _post(f"{server.url}/infer/qddens?image={name}&output=image", {"device": "cpu"})
                seconds = time.monotonic() - t
                (tmp / "pred.png").write_bytes(pred_png)
                pred = np.array(Image.open(tmp / "pred.png")) > 0
                dis_nii = _post(f"{server.url}/infer/qddens_disagreement?image={name}&output=image", {"device": "cpu"})
                (tmp / "dis.nii.gz").write_bytes(dis_nii)
                dis = np.asarray(nib.load(str(tmp / "dis.nii.gz")).dataobj).T  # NIfTI (W, H) -> image (H, W)
                maps[name] = (np.array(Image.open(studies / f"{name}.png")), pred, label, dis)
                p, g = pred[fov], label[fov]
                dice = 2 * (p & g).sum() / max(1, p.sum() + g.sum())
                err = (pred != label)[fov]
                top = dis[fov] >= np.quantile(dis[fov], 0.9)  # the 10 % most disputed pixels
                rows.append(
                    {
                        "image": name,
                        "dice": float(dice),
                        "error_rate": float(err.mean()),
                        "error_rate_top10": float(err[top].mean()),
                        "infer_s": seconds,
                    }
                )
            _post(f"{server.url}/activelearning/uncertainty", {"device": "cpu"})  # scores every image
            for r in rows:
                r["uncertainty"] = _get(f"{server.url}/datastore/image/info?image={r['image']}")["qdd_ens"][
                    "uncertainty"
                ]
            pick_u = json.loads(_post(f"{server.url}/activelearning/uncertainty", {"device": "cpu"}))["id"]
            pick_s = json.loads(_post(f"{server.url}/activelearning/suggestive", {"device": "cpu"}))["id"]

    print(f"{'image':28s} {'Dice(FOV)':>9s} {'uncert.':>9s} {'err%':>6s} {'err% top10':>10s} {'infer s':>7s}")
    for r in rows:
        print(
            f"{r['image']:28s} {r['dice']:9.3f} {r['uncertainty']:9.5f} {100 * r['error_rate']:6.2f} "
            f"{100 * r['error_rate_top10']:10.2f} {r['infer_s']:7.2f}"
        )
    u = np.array([r["uncertainty"] for r in rows])
    d = np.array([r["dice"] for r in rows])
    lift = np.mean([r["error_rate_top10"] / max(r["error_rate"], 1e-9) for r in rows])
    print(f"Spearman(uncertainty, 1 - Dice) = {_spearman(u, 1 - d):.2f} over {len(rows)} images")
    print(f"error rate in the 10 % most disputed pixels / overall error rate (mean over images) = {lift:.1f}x")
    print(f"uncertainty strategy picks {pick_u}; suggestive (top 4, max-cover) picks {pick_s}")

    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [rows[0]["image"], rows[len(rows) // 2]["image"], rows[-1]["image"]]
        fig, axes = plt.subplots(len(names), 3, figsize=(7.5, 2.5 * len(names)))
        for row, name in zip(axes, names):
            image, pred, label, dis = maps[name]
            row[0].imshow(image)
            row[0].set_ylabel(name.replace("_", "\n"), fontsize=8)
            overlay = np.zeros((*pred.shape, 3))
            overlay[pred & label] = (1, 1, 1)
            overlay[pred & ~label] = (1, 0.2, 0.2)
            overlay[~pred & label] = (0.2, 0.6, 1)
            row[1].imshow(overlay)
            row[2].imshow(dis, cmap="magma")
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0][0].set_title("study", fontsize=9)
        axes[0][1].set_title("ensemble label\n(red: false +, blue: missed)", fontsize=9)
        axes[0][2].set_title("member disagreement\n(variance)", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.figure, dpi=64)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
