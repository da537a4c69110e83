"""Probe of the annotation benchmark: do the scorer's descriptors and uncertainties see the pool's structure?

For each seed, the round-1 scorers of :mod:`annotation_benchmark` (float and diversely quantized QME-Net,
trained on the seed's random start set) score the whole pool with the label app's code
(:func:`~qddens_monai.label.scoring.member_scores`). Reported per scorer:

- cosine similarity of the descriptors (the deepest encoder maps, averaged), mean over pairs of: two
  near-duplicates of one cluster, two distinct images, an out-of-distribution and an in-distribution
  image; and the same after centring the descriptors on the pool mean (a descriptor choice the
  max-cover could use instead);
- near-duplicate retrieval: the fraction of cluster images whose most similar other image is in
  their own cluster (raw and centred);
- mean image uncertainty of the distinct, near-duplicate and out-of-distribution images.

Usage::

    python benchmarks/annotation_descriptors.py --out runs/annotation   # next to the benchmark's run files
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import annotation_benchmark as ab  # noqa: E402


def pool_structure(desc, kinds: list[str]) -> dict[str, float]:
    """Mean pairwise cosines by pair type and near-duplicate retrieval of (N, D) descriptors."""
    from qddens_monai.label.selection import cosine_similarity_matrix

    sim = cosine_similarity_matrix(desc).numpy()
    n = len(kinds)
    pairs: dict[str, list[float]] = {"cluster": [], "distinct": [], "ood_vs_in": []}
    for i in range(n):
        for j in range(i + 1, n):
            a, b = kinds[i], kinds[j]
            if a == b and a.startswith("cluster"):
                pairs["cluster"].append(sim[i, j])
            elif a == b == "distinct":
                pairs["distinct"].append(sim[i, j])
            elif (a == "ood") != (b == "ood"):
                pairs["ood_vs_in"].append(sim[i, j])
    np.fill_diagonal(sim, -np.inf)
    members = [i for i in range(n) if kinds[i].startswith("cluster")]
    hits = [kinds[int(np.argmax(sim[i]))] == kinds[i] for i in members]
    out = {f"cos_{k}": float(np.mean(v)) for k, v in pairs.items() if v}
    out["duplicate_retrieval"] = float(np.mean(hits)) if hits else float("nan")
    return out


def probe_seed(seed: int, setting: str) -> dict[str, Any]:
    import torch

    from qddens_monai.label.scoring import member_scores
    from qddens_monai.label.selection import image_uncertainty

    cfg = ab.SETTINGS[setting]
    pool, _ = ab.make_pool(cfg, seed)
    kinds = [c["kind"] for c in pool]
    rng = np.random.default_rng([seed, 0, 7])  # the benchmark's start set of this seed
    start = [int(i) for i in rng.choice(len(pool), size=cfg["start"], replace=False)]
    result: dict[str, Any] = {"seed": seed, "start": start}
    for quantized in (False, True):
        scorer = ab.train_scorer([pool[i] for i in start], cfg, 1000 * seed + 1, quantized)
        unc, desc = [], []
        for c in pool:
            probs, d = member_scores(scorer, c["image"][None])
            unc.append(image_uncertainty(probs, "variance"))
            desc.append(d)
        desc_t = torch.stack(desc)
        groups = {"distinct": "distinct", "ood": "ood"}
        row = {
            "raw": pool_structure(desc_t, kinds),
            "centred": pool_structure(desc_t - desc_t.mean(0), kinds),
            "uncertainty": {g: float(np.mean([u for u, k in zip(unc, kinds) if k == g])) for g in groups},
        }
        row["uncertainty"]["cluster"] = float(np.mean([u for u, k in zip(unc, kinds) if k.startswith("cluster")]))
        result["quantized" if quantized else "float"] = row
        print(f"seed {seed} {'quantized' if quantized else 'float'}: {json.dumps(row)}", flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/annotation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    ab._setup_threads()
    setting = "quick" if args.quick else "full"
    path = Path(args.out) / "descriptors.json"
    done = json.loads(path.read_text()) if path.is_file() else []
    for seed in args.seeds:
        if any(r["seed"] == seed for r in done):
            continue
        done.append(probe_seed(seed, setting))
        ab._write(path, done)  # type: ignore[arg-type]
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
