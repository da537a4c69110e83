"""The report of :mod:`results_benchmark` from its ``results.json``: markdown tables, verdicts, plots.

Everything here is computed from the JSON the benchmark wrote; nothing is typed in by hand. Writes
``results.md`` and ``results_metrics.png`` / ``results_size.png`` / ``results_overlay.png`` next to
the JSON; with ``--repo ROOT`` also ``ROOT/docs/results.md``, the figures in ``ROOT/docs/images/``
and the README's Results section (between ``<!-- results:start -->`` and ``<!-- results:end -->``).

Usage: ``python benchmarks/results_doc.py runs/results/results.json [--repo .]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

START, END = "<!-- results:start -->", "<!-- results:end -->"
ANNOTATION = ("<!-- annotation:start -->", "<!-- annotation:end -->")  # annotation_report.py's section
FIGURES = ("results_metrics.png", "results_size.png", "results_overlay.png")
DATASET_TITLES = {"2d": "2D vessels (inside the FOV)", "3d": "3D spheres"}
#: The command that writes the report from the JSON, as the report quotes it.
REGENERATE = (
    "python benchmarks/results_doc.py runs/results/results.json --repo . --summary benchmarks/results_reading.md"
)

#: The papers' claims as paired comparisons ``(claim, better variant / metric, reference variant / metric, kind)``.
#: kind ``"gain"``: the claim holds if the first is higher; ``"no_loss"``: if it is not clearly lower.
CLAIMS: list[tuple[str, tuple[str, str], tuple[str, str], str]] = [
    ("QME-Net (float) beats the single UNet", ("qmenet_float", "dice"), ("unet", "dice"), "gain"),
    (
        "QME-Net (float) beats the uniform ensemble of 4 UNets",
        ("qmenet_float", "dice"),
        ("uniform_ensemble", "dice"),
        "gain",
    ),
    (
        "the full method (5) beats the uniform ensemble",
        ("qmenet_quant_div", "dice"),
        ("uniform_ensemble", "dice"),
        "gain",
    ),
    (
        "the full method (5) beats its best member",
        ("qmenet_quant_div", "dice"),
        ("qmenet_quant_div", "best_member"),
        "gain",
    ),
    ("diverse quantization loses no accuracy (4 vs 3)", ("qmenet_quant", "dice"), ("qmenet_float", "dice"), "no_loss"),
    ("5-bit quantization loses no accuracy on a UNet (7 vs 1)", ("unet_5bit", "dice"), ("unet", "dice"), "no_loss"),
    ("the faithful diversity loss helps (5 vs 4)", ("qmenet_quant_div", "dice"), ("qmenet_quant", "dice"), "gain"),
    (
        "the bounded diversity loss helps (5b vs 4)",
        ("qmenet_quant_div_bounded", "dice"),
        ("qmenet_quant", "dice"),
        "gain",
    ),
    (
        "the faithful diversity loss makes the base learners disagree more",
        ("qmenet_quant_div", "disagreement"),
        ("qmenet_quant", "disagreement"),
        "gain",
    ),
    (
        "the ensemble mean (the bundle's output) beats the meta learner alone (5)",
        ("qmenet_quant_div", "dice"),
        ("qmenet_quant_div", "meta_dice"),
        "gain",
    ),
    (
        "the distilled student keeps the ensemble's accuracy (6 vs 5)",
        ("student", "dice"),
        ("qmenet_quant_div", "dice"),
        "no_loss",
    ),
    ("the distilled student beats the UNet trained on labels (6 vs 1)", ("student", "dice"), ("unet", "dice"), "gain"),
    (
        "the bundle's default CE-Net learners do as well as UNet learners (8 vs 5)",
        ("qmenet_cenet", "dice"),
        ("qmenet_quant_div", "dice"),
        "no_loss",
    ),
]


def _values(payload: dict, ds: str, variant: str, metric: str) -> dict[int, float]:
    """Per seed, one variant's metric (``best_member``: the best base learner or the meta learner)."""
    out = {}
    for run in payload["runs"]:
        if f"{run['dims']}d" != ds or variant not in run["variants"]:
            continue
        v = run["variants"][variant]
        if metric == "best_member":
            members = [v.get(k) for k in ("base_0_dice", "base_1_dice", "base_2_dice", "meta_dice")]
            members = [m for m in members if m is not None]
            if members:
                out[run["seed"]] = max(members)
        elif v.get(metric) is not None:
            out[run["seed"]] = float(v[metric])
    return out


def paired(payload: dict, ds: str, a: tuple[str, str], b: tuple[str, str]) -> Optional[tuple[float, float, int]]:
    """Mean and sample sd over seeds of the per-seed difference ``a - b``, and the number of seeds."""
    va, vb = _values(payload, ds, *a), _values(payload, ds, *b)
    diffs = [va[s] - vb[s] for s in va if s in vb and math.isfinite(va[s]) and math.isfinite(vb[s])]
    if not diffs:
        return None
    return float(np.mean(diffs)), float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float("nan"), len(diffs)


def verdict(diff: tuple[float, float, int], kind: str) -> str:
    """``yes`` / ``no`` / ``within noise``: a difference counts only beyond one sd of the paired differences."""
    mean, sd, _ = diff
    sd = 0.0 if not math.isfinite(sd) else sd
    if kind == "gain":
        return "yes" if mean - sd > 0 else ("no" if mean + sd < 0 else "within noise (no)")
    return "yes" if mean + sd >= 0 else "no"


def _fmt(stat: Optional[dict], digits: int = 3, scale: float = 1.0) -> str:
    if not stat:
        return "–"
    mean, sd = stat["mean"] * scale, stat["sd"] * scale
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if math.isfinite(sd) else f"{mean:.{digits}f}"


def tables(payload: dict) -> str:
    """One markdown table per data set: mean ± sd over seeds."""
    lines = []
    labels = payload["variants"]
    for ds, per in payload["summary"].items():
        ref = per.get("unet", {}).get("stored_bytes", {}).get("mean")
        lines += [
            f"**{DATASET_TITLES.get(ds, ds)}** ({_nseeds(per)} seeds)",
            "",
            "| variant | Dice | HD95 (px) | AUC | disagreement | meta alone | train (s) | infer (ms/img) "
            "| params | stored (kB) | size vs UNet |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, stats in per.items():
            if not stats:
                continue
            size = stats.get("stored_bytes", {}).get("mean")
            ratio = f"{size / ref:.2f}x" if size and ref else "–"
            lines.append(
                f"| {labels.get(name, name)} | {_fmt(stats.get('dice'))} | {_fmt(stats.get('hd95'), 1)} | "
                f"{_fmt(stats.get('auc'))} | {_fmt(stats.get('disagreement'), 3)} | {_fmt(stats.get('meta_dice'))} | "
                f"{_fmt(stats.get('train_s'), 0)} | {_fmt(stats.get('infer_ms'), 1)} | "
                f"{int(stats['params']['mean']):,} | {stats['stored_bytes']['mean'] / 1024:.0f} | {ratio} |"
            )
        lines.append("")
    return "\n".join(lines)


def _nseeds(per: dict) -> int:
    return max((s.get("dice", {}).get("n", 0) for s in per.values()), default=0)


def claims(payload: dict) -> str:
    lines = [
        "| claim | " + " | ".join(f"{ds}: Δ (paired, mean ± sd) | holds?" for ds in payload["summary"]) + " |",
        "|---|" + "---|---|" * len(payload["summary"]),
    ]
    for text, a, b, kind in CLAIMS:
        cells = []
        for ds in payload["summary"]:
            d = paired(payload, ds, a, b)
            if d is None:
                cells += ["–", "–"]
                continue
            sd = f" ± {d[1]:.3f}" if math.isfinite(d[1]) else ""
            cells += [f"{d[0]:+.3f}{sd}", verdict(d, kind)]
        lines.append(f"| {text} ({a[1]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- figures


def plot_metrics(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("dice", "Dice ↑"), ("hd95", "HD95 (px) ↓"), ("auc", "AUC ↑"), ("disagreement", "disagreement")]
    datasets = list(payload["summary"])
    fig, axes = plt.subplots(
        len(datasets), len(metrics), figsize=(3.2 * len(metrics), 3.0 * len(datasets)), squeeze=False
    )
    names = list(payload["variants"])
    colors = plt.cm.tab10(np.arange(len(names)) % 10)
    for r, ds in enumerate(datasets):
        per = payload["summary"][ds]
        for c, (m, title) in enumerate(metrics):
            ax = axes[r][c]
            means = [per.get(n, {}).get(m, {}).get("mean", np.nan) for n in names]
            sds = [per.get(n, {}).get(m, {}).get("sd", np.nan) for n in names]
            ax.bar(range(len(names)), means, yerr=np.nan_to_num(sds), color=colors, capsize=2)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels([payload["variants"][n].split(" ")[0] for n in names], fontsize=7)
            ax.set_title(f"{ds}: {title}", fontsize=9)
            ax.tick_params(labelsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i]) for i in range(len(names))]
    fig.legend(handles, [payload["variants"][n] for n in names], loc="lower center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_size(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(payload["summary"])
    names = list(payload["variants"])
    colors = plt.cm.tab10(np.arange(len(names)) % 10)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        per = payload["summary"][ds]
        for i, n in enumerate(names):
            if "dice" not in per.get(n, {}):
                continue
            ax.errorbar(
                per[n]["stored_bytes"]["mean"] / 1024,
                per[n]["dice"]["mean"],
                yerr=np.nan_to_num(per[n]["dice"]["sd"]),
                fmt="o",
                color=colors[i],
                capsize=3,
                label=payload["variants"][n],
            )
        ax.set_xscale("log")
        ax.set_xlabel("stored size (kB, log)", fontsize=8)
        ax.set_ylabel("Dice", fontsize=8)
        ax.set_title(DATASET_TITLES.get(ds, ds), fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_overlay(payload: dict, runs_dir: Path, path: Path) -> bool:
    """Seed 0's first test image per data set: image, label, each variant's prediction (green: correct vessel,
    red: false positive, blue: missed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(payload["variants"])
    panels = []
    for ds in payload["summary"]:
        seeds = sorted(r["seed"] for r in payload["runs"] if f"{r['dims']}d" == ds)
        f = runs_dir / f"{ds}_seed{seeds[0]}_overlay.npz" if seeds else None
        if f is not None and f.is_file():
            panels.append((ds, np.load(f)))
    if not panels:
        return False
    fig, axes = plt.subplots(
        len(panels), len(names) + 2, figsize=(1.6 * (len(names) + 2), 1.8 * len(panels)), squeeze=False
    )
    for r, (ds, data) in enumerate(panels):
        img = data["image"].astype(np.float32)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
        label = data["label"] > 0.5
        axes[r][0].imshow(img if img.ndim == 3 else img, cmap=None if img.ndim == 3 else "gray")
        axes[r][0].set_title(f"{ds} image", fontsize=7)
        axes[r][1].imshow(label, cmap="gray")
        axes[r][1].set_title("label", fontsize=7)
        for c, n in enumerate(names):
            ax = axes[r][c + 2]
            if n not in data:
                ax.axis("off")
                continue
            pred = data[n].astype(np.float32) > 0.5
            rgb = np.zeros(label.shape + (3,))
            rgb[..., 1] = pred & label
            rgb[..., 0] = pred & ~label
            rgb[..., 2] = ~pred & label
            ax.imshow(rgb)
            ax.set_title(payload["variants"][n].split(" ", 1)[1][:22], fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------- documents


def _machine_line(payload: dict) -> str:
    m = payload["machine"]
    status = "" if payload.get("complete") else " **(incomplete run: only the finished jobs are shown)**"
    job_minutes = sum(r.get("seconds", 0.0) for r in payload["runs"]) / 60
    return (
        f"{m['cpu_count']} CPU cores shared with other jobs ({m['processor']}), {payload['workers']} worker "
        f"processes x 1 torch thread, torch {m['torch']}, MONAI {m['monai']}; {job_minutes:.0f} min of job time "
        f"in {payload['workers']} parallel workers (a job: all variants of one data set and seed; the last "
        f"invocation's wall-clock {payload['wall_seconds'] / 60:.0f} min){status}"
    )


def _setup(payload: dict) -> str:
    s, c = payload["settings"], payload["common"]
    lines = []
    for ds in ("2d", "3d"):
        if ds not in s:
            continue
        d = s[ds]
        epochs = d["fp_epochs"] + len(d["portions"]) * d["epochs_per_step"]
        kind = "fundus-like vessel images" if ds == "2d" else "synthetic sphere volumes"
        lines.append(
            f"- {ds.upper()}: {d['num_train']} training / {d['num_test']} test {kind} of {d['size']} px, "
            f"difficulty {d['difficulty']}; batch {d['batch_size']}, {epochs} epochs "
            f"({d['fp_epochs']} float, then {len(d['portions'])} quantization steps of "
            f"{d['epochs_per_step']} epochs, portions {d['portions']})."
        )
    u = c["unet"]
    cenet = c.get("cenet", {})
    lines.append(
        f"- Every network, and every QME-Net learner of variants 3-5, is MONAI's `UNet` with channels "
        f"{u['channels']}, strides {u['strides']}, {u['num_res_units']} residual unit (variant 8: the bundle's "
        f"CE-Net, channels {cenet.get('channels')}, layers {cenet.get('layers')}); K = {c['num_learners']} "
        "learners. "
        f"Adam lr {c['learning_rate']} for all, halved ({c['lr_decay_per_step']}) at the same epochs for "
        "all; seeds " + ", ".join(str(x) for x in s["seeds"]) + "; final weights evaluated."
    )
    lines.append(
        f"- Diversity: faithful alpha {c['alpha_faithful']} (public code), bounded cosine form alpha "
        f"{c['alpha_bounded']} (not tuned); distillation a = {c['distill_alpha']}, T = {c['temperature']}; "
        f"variant 7 is the UNet with `log_minmax` {c['unet_bits']}-bit weights on the same schedule."
    )
    lines.append(
        "- Dice and HD95 of the thresholded (0.5) output, AUC of its probability, per test image and "
        "averaged; disagreement: fraction of voxels where two learners' labels differ, mean over pairs "
        "(QME-Net: its 3 base learners; uniform ensemble: its 4 UNets). Stored size: `torch.save` of the "
        "float state dict, or `save_packed` (codes at the learners' bit widths) for quantized variants. "
        "Times are wall-clock on shared cores: compare them only within a table."
    )
    return "\n".join(lines)


#: Where this page stands among the results (the defaults moved after these runs).
SCOPE = (
    "Scope: these ablations are the method's parts at the 0.1.0-0.3.0 settings (four learners, 30 epochs, whole "
    "images); the shipped defaults have moved since (one 4-bit base learner, a float meta learner the size of a plain "
    "UNet, random crops). The shipped defaults against a plain MONAI UNet at the same CPU time are in "
    "[results_wallclock.md](results_wallclock.md)."
)


def report_markdown(payload: dict, figures_prefix: str, title_level: str = "#") -> str:
    figs = "\n".join(f"![{f}]({figures_prefix}{f})" for f in FIGURES)
    return f"""{title_level} Results: QME-Net against plain MONAI baselines

{SCOPE}

Reproduce: `{payload['command']}` (then `{REGENERATE}`
writes this page, the figures and the README section from the JSON; the reading above the tables is written by hand;
`--quick` checks the harness, not the science, in a few minutes).
Machine: {_machine_line(payload)}.

{_setup(payload)}

{tables(payload)}
Do the papers' claims hold here? Differences are paired per seed (same data, same seed), mean ± sd over
seeds; "yes" only when the difference is beyond one sd.

{claims(payload)}

{figs}
"""


def readme_section(payload: dict, summary_text: str = "") -> str:
    """The README's Results section: the command, the machine, the tables, the claims and the figures."""
    body = report_markdown(payload, "docs/images/", title_level="##")
    body = body.replace(
        "## Results: QME-Net against plain MONAI baselines",
        (
            "## Results: QME-Net against plain MONAI baselines\n\n" + summary_text
            if summary_text
            else "## Results: QME-Net against plain MONAI baselines"
        ),
    )
    body = body.replace("(results_wallclock.md)", "(docs/results_wallclock.md)")
    body += "\nFull report with the per-seed values: [docs/results.md](docs/results.md).\n"
    return f"{START}\n{body}{END}"


def per_seed(payload: dict) -> str:
    lines = [
        "| data | seed | " + " | ".join(payload["variants"]) + " |",
        "|---|---|" + "---|" * len(payload["variants"]),
    ]
    for run in payload["runs"]:
        cells = [f"{run['variants'][n]['dice']:.3f}" if n in run["variants"] else "–" for n in payload["variants"]]
        lines.append(f"| {run['dims']}d | {run['seed']} | " + " | ".join(cells) + " |")
    return "Dice per seed:\n\n" + "\n".join(lines) + "\n"


def write_report(
    json_path: os.PathLike, out_dir: os.PathLike, repo_root: Optional[os.PathLike] = None, summary_text: str = ""
) -> None:
    """Write the markdown and figures next to the JSON, and into the repository's docs and README if asked."""
    payload = json.loads(Path(json_path).read_text())
    out = Path(out_dir)
    plot_metrics(payload, out / FIGURES[0])
    plot_size(payload, out / FIGURES[1])
    have_overlay = plot_overlay(payload, out / "runs", out / FIGURES[2])
    (out / "results.md").write_text(report_markdown(payload, "") + "\n" + per_seed(payload))
    print(f"wrote {out / 'results.md'} and the figures", flush=True)
    if repo_root is None:
        return
    root = Path(repo_root)
    (root / "docs" / "images").mkdir(parents=True, exist_ok=True)
    for f in FIGURES if have_overlay else FIGURES[:2]:
        shutil.copyfile(out / f, root / "docs" / "images" / f)
    results_md = root / "docs" / "results.md"
    # keep the annotation benchmark's section (annotation_report.py writes it between its markers)
    old = results_md.read_text() if results_md.is_file() else ""
    kept = (
        old[old.index(ANNOTATION[0]) : old.index(ANNOTATION[1]) + len(ANNOTATION[1])]
        if all(m in old for m in ANNOTATION)
        else ""
    )
    results_md.write_text(
        report_markdown(payload, "images/")
        + "\n"
        + (summary_text + "\n\n" if summary_text else "")
        + per_seed(payload)
        + ("\n\n" + kept + "\n" if kept else "")
    )
    readme = root / "README.md"
    text = readme.read_text()
    section = readme_section(payload, summary_text)
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:  # first time: before the License section
        anchor = "## License"
        text = text.replace(anchor, section + "\n\n" + anchor, 1) if anchor in text else text + "\n" + section + "\n"
    readme.write_text(text)
    print(f"wrote {root / 'docs' / 'results.md'}, docs/images/results_*.png and the README section", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", help="results.json written by results_benchmark.py")
    parser.add_argument("--repo", default=None, help="repository root: also write docs/ and the README section")
    parser.add_argument("--summary", default="", help="a file whose text opens the README section (the reading)")
    args = parser.parse_args()
    summary = Path(args.summary).read_text().strip() if args.summary else ""
    write_report(args.json, Path(args.json).parent, args.repo, summary)


if __name__ == "__main__":
    main()
