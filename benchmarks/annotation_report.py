"""Summary, tables and figure of :mod:`annotation_benchmark` (Dice vs number of labels per strategy).

Per seed and strategy: the area under the Dice-vs-labels curve (trapezoids, divided by the label range:
the curve's mean Dice), the number of labels after which the learner first reaches 90 % / 95 % of the
full-pool Dice of the same seed (``None``: not within the budget), the final Dice, and how many picks
were out-of-distribution or redundant (a near-duplicate of an image already labelled). Paired
differences against ``random`` are taken per seed, then averaged.

``write_docs`` writes ``docs/images/annotation_curves.png``, the section of ``docs/results.md`` and the
README summary between ``<!-- annotation:start -->`` / ``<!-- annotation:end -->`` markers (appended the
first time; the results benchmark's report keeps the section, see ``results_doc.py``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

START, END = "<!-- annotation:start -->", "<!-- annotation:end -->"
LABELS = {
    "random": "random",
    "uncertainty": "uncertainty (top-N, float scorer)",
    "suggestive": "suggestive (float scorer)",
    "suggestive_quantized": "suggestive, quantized scorer (QSA)",
}
FRACTIONS = (0.9, 0.95)
FIGURE = "annotation_curves.png"


def _ms(values: list[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return {
        "mean": float(np.mean(vals)) if vals else float("nan"),
        "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan"),
        "n": len(vals),
        "values": vals,
    }


def labels_to_reach(labels: list[int], dice: list[float], target: float) -> Optional[int]:
    """The first number of labels whose Dice reaches ``target`` (``None`` within the budget: not reached)."""
    return next((n for n, d in zip(labels, dice) if d >= target), None)


def curve_auc(labels: list[int], dice: list[float]) -> float:
    """Mean Dice over the label range (trapezoids / range)."""
    if len(labels) < 2:
        return float(dice[0]) if dice else float("nan")
    area = sum((b - a) * (da + db) / 2 for a, b, da, db in zip(labels, labels[1:], dice, dice[1:]))
    return float(area / (labels[-1] - labels[0]))


def summarize(jobs: list[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    """``{"full", "strategies": {name: {"curve", "per_seed", ...}}, "paired": {name: ...}}`` over finished curves."""
    full = {j["seed"]: j["dice"][0] for j in jobs if j["strategy"] == "full" and j.get("done")}
    out: dict[str, Any] = {"full": _ms(list(full.values())), "strategies": {}, "paired": {}}
    curves = [j for j in jobs if j["strategy"] != "full" and j.get("done")]
    for name in LABELS:
        mine = sorted((j for j in curves if j["strategy"] == name), key=lambda j: j["seed"])
        if not mine:
            continue
        grid = mine[0]["labels"]
        per_seed = {}
        for j in mine:
            row = {
                "auc": curve_auc(j["labels"], j["dice"]),
                "final": j["dice"][-1],
                "ood": sum(r["ood"] for r in j["rounds"]),
                "redundant": sum(r["redundant"] for r in j["rounds"]),
            }
            for f in FRACTIONS:
                row[f"to_{round(100 * f)}"] = (
                    labels_to_reach(j["labels"], j["dice"], f * full[j["seed"]]) if j["seed"] in full else None
                )
            per_seed[j["seed"]] = row
        out["strategies"][name] = {
            "labels": grid,
            "curve": [_ms([j["dice"][i] for j in mine]) for i in range(len(grid))],
            "per_seed": per_seed,
            **{k: _ms([r[k] for r in per_seed.values()]) for k in ("auc", "final", "ood", "redundant")},
        }
    rand = out["strategies"].get("random")
    for name, s in out["strategies"].items():
        if name == "random" or rand is None:
            continue
        seeds = sorted(set(s["per_seed"]) & set(rand["per_seed"]))
        diff = {k: [s["per_seed"][x][k] - rand["per_seed"][x][k] for x in seeds] for k in ("auc", "final")}
        out["paired"][name] = {
            "seeds": seeds,
            **{k: _ms(v) for k, v in diff.items()},
            "wins_auc": sum(d > 0 for d in diff["auc"]),
        }
    return out


def _f(m: dict[str, Any], digits: int = 3) -> str:
    if not m.get("n"):
        return "–"
    sd = "" if math.isnan(m["sd"]) else f" ± {m['sd']:.{digits}f}"
    return f"{m['mean']:.{digits}f}{sd}"


def _reach(per_seed: dict, key: str, budget: int) -> str:
    vals = [per_seed[s][key] for s in sorted(per_seed)]
    return ", ".join(str(v) if v is not None else f">{budget}" for v in vals)


def markdown(payload: dict[str, Any], images: str = "images/") -> str:
    """The tables (and the figure link with ``images``) of one run."""
    s, cfg = payload["summary"], payload["settings"]
    st = s.get("strategies", {})
    if not st:
        return "No finished curve yet.\n"
    budget = cfg["max_labels"]
    seeds = sorted({x for v in st.values() for x in v["per_seed"]})
    state = "complete" if payload.get("complete") else "**partial** (not every seed / strategy finished)"
    lines = [f"Run: `{payload['command']}` ({state}; seeds {seeds}; full-pool Dice {_f(s['full'])}).", ""]
    if images:
        lines += [f"![Dice vs number of labelled images]({images}{FIGURE})", ""]
    grid = next(iter(st.values()))["labels"]
    lines += [
        "Test Dice (mean ± sd over seeds) after each round:",
        "",
        "| strategy | " + " | ".join(f"{n} labels" for n in grid) + " |",
        "|---|" + "---|" * len(grid),
    ]
    for name, v in st.items():
        lines.append(f"| {LABELS[name]} | " + " | ".join(_f(c) for c in v["curve"]) + " |")
    lines += [
        "",
        "Labels needed (per seed) to reach 90 % / 95 % of the same seed's full-pool Dice, the area under "
        "the curve (mean Dice over the label range), the picks that were out-of-distribution or redundant "
        "(a near-duplicate of an image already labelled):",
        "",
        "| strategy | labels to 90 % | labels to 95 % | AUC | final Dice | OOD picks | redundant picks |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in st.items():
        lines.append(
            f"| {LABELS[name]} | {_reach(v['per_seed'], 'to_90', budget)} | "
            f"{_reach(v['per_seed'], 'to_95', budget)} | {_f(v['auc'])} | {_f(v['final'])} | "
            f"{_f(v['ood'], 1)} | {_f(v['redundant'], 1)} |"
        )
    if s.get("paired"):
        lines += [
            "",
            "Paired differences against random (same seed: same pool, start set and learner seed), "
            "mean ± sd over seeds, and the per-seed values:",
            "",
            "| strategy | Δ AUC | per seed | Δ final Dice | per seed | seeds beating random (AUC) |",
            "|---|---|---|---|---|---|",
        ]
        for name, p in s["paired"].items():
            lines.append(
                f"| {LABELS[name]} | {_f(p['auc'])} | {', '.join(f'{x:+.3f}' for x in p['auc']['values'])} | "
                f"{_f(p['final'])} | {', '.join(f'{x:+.3f}' for x in p['final']['values'])} | "
                f"{p['wins_auc']} / {len(p['seeds'])} |"
            )
    return "\n".join(lines) + "\n"


def plot(payload: dict[str, Any], path: Path) -> None:
    """Dice vs labels per strategy (mean ± sd bands), the full-pool Dice and its 90 % line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = payload["summary"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for name, v in s["strategies"].items():
        mean = np.array([c["mean"] for c in v["curve"]])
        sd = np.nan_to_num(np.array([c["sd"] for c in v["curve"]]))
        ax.plot(v["labels"], mean, marker="o", label=LABELS[name])
        ax.fill_between(v["labels"], mean - sd, mean + sd, alpha=0.15)
    if s["full"]["n"]:
        full = s["full"]["mean"]
        ax.axhline(full, color="k", lw=1, label=f"full pool ({_pool_size(payload)} labels)")
        ax.axhline(0.9 * full, color="k", lw=0.8, ls="--", label="90 % of full")
    ax.set_xlabel("labelled images")
    ax.set_ylabel("test Dice")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Simulated annotation, 2D vessels ({len(s['full']['values'])} seed(s))", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _pool_size(payload: dict[str, Any]) -> int:
    c = payload["settings"]
    return c["distinct"] + c["clusters"] * c["cluster_size"] + c["ood"]


def _replace(text: str, section: str, anchor: Optional[str] = None) -> str:
    if START in text and END in text:
        return text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    if anchor and anchor in text:
        return text.replace(anchor, section + "\n\n" + anchor, 1)
    return text.rstrip("\n") + "\n\n" + section + "\n"


def write_docs(payload: dict[str, Any], root: Path, reading: str = "") -> None:
    """The figure, the ``docs/results.md`` section and the README summary (``reading``: the text that opens both)."""
    plot(payload, root / "docs" / "images" / FIGURE)
    intro = (
        "## Suggestive annotation: labels saved (simulated loop with an oracle)\n\n"
        "`benchmarks/annotation_benchmark.py` (see its docstring for the pool, the learner and the scorers).\n\n"
    )
    body = intro + (reading.strip() + "\n\n" if reading.strip() else "") + markdown(payload, "images/")
    results = root / "docs" / "results.md"
    results.write_text(_replace(results.read_text(), f"{START}\n{body}{END}"))
    readme = root / "README.md"
    short = (
        f"{START}\n## Results: does suggestive annotation save labels?\n\n"
        + (reading.strip() + "\n\n" if reading.strip() else "")
        + markdown(payload, "docs/images/").split("\n\nLabels needed")[0]
        + "\n\nLabels-to-90 %, AUC and paired differences: [docs/results.md](docs/results.md#suggestive-annotation"
        "-labels-saved-simulated-loop-with-an-oracle).\n" + END
    )
    readme.write_text(_replace(readme.read_text(), short, "## License"))
    print(f"wrote {root / 'docs' / 'images' / FIGURE}, the docs/results.md section and the README summary", flush=True)
