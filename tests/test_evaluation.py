"""Evaluation: learners' probabilities through MONAI inferers, per-member metrics, disagreement, files."""

from __future__ import annotations

import csv
import json
import math
import os
import socket

import numpy as np
import pytest
import torch
from torch import nn

from qddens_monai.evaluation import (
    EnsembleMemberd,
    EnsembleMetrics,
    LearnerProbabilities,
    disagreement_matrices,
    image_metrics,
    member_names,
    merge_learners,
    split_learners,
)

try:
    import scipy  # noqa: F401

    METRICS = ("dice", "hd95", "sensitivity", "specificity", "auc")
except ImportError:  # HD95 (MONAI surface distances) needs scipy
    METRICS = ("dice", "sensitivity", "specificity", "auc")


def _square_label(size=16, lo=4, hi=10):
    lab = torch.zeros(1, size, size)
    lab[0, lo:hi, lo:hi] = 1
    return lab


def _probs_from_mask(fg, confidence=0.9):
    """Binary softmax probabilities (2, *S) whose argmax is ``fg``, with a ranking that follows it."""
    p1 = torch.where(fg.bool(), torch.tensor(confidence), torch.tensor(1 - confidence))
    return torch.stack([1 - p1, p1])


def _tiny_qmenet(spatial_dims=2):
    from qddens_monai.networks import QMENet

    net = QMENet(
        spatial_dims,
        1,
        2,
        backbone_kwargs={"channels": (4, 8, 16, 16), "layers": (1, 1, 1, 1)},
        quantization="float",
        probe_size=32,
    )
    return net.eval()


# ---------------------------------------------------------------- channel layout helpers
def test_split_merge_roundtrip():
    probs = torch.rand(3, 2, 4, 5, 6)  # K, B, C, H, W
    merged = merge_learners(probs)
    assert merged.shape == (2, 12, 5, 6)
    assert torch.equal(merged[1, 4:8], probs[1, 1])  # learner-major
    assert torch.equal(split_learners(merged, num_learners=3), probs)
    assert torch.equal(split_learners(merged, num_classes=4), probs)
    assert torch.equal(split_learners(merged[0], num_learners=3, batched=False), probs[:, 0])
    with pytest.raises(ValueError):
        split_learners(merged, num_learners=5)
    with pytest.raises(ValueError):
        split_learners(merged)


def test_member_transform():
    probs = torch.rand(3, 2, 8, 8)
    item = merge_learners(probs[:, None])[0]
    out = EnsembleMemberd("pred", num_learners=3, output_keys="mean")({"pred": item})
    assert torch.allclose(out["mean"], probs.mean(0)) and torch.equal(out["pred"], item)
    meta = EnsembleMemberd("pred", num_classes=2, member="meta")({"pred": item})
    assert torch.equal(meta["pred"], probs[-1])


# ---------------------------------------------------------------- hand-made metric cases
def test_perfect_prediction():
    lab = _square_label()
    p = _probs_from_mask(lab[0])
    row = image_metrics(torch.stack([p, p, p]), lab, metrics=METRICS)
    assert member_names(3) == ["ensemble", "meta", "base_0", "base_1"]
    for m in member_names(3):
        assert row[f"{m}/dice"] == pytest.approx(1.0)
        assert row[f"{m}/sensitivity"] == pytest.approx(1.0)
        assert row[f"{m}/specificity"] == pytest.approx(1.0)
        assert row[f"{m}/auc"] == pytest.approx(1.0)
        if "hd95" in METRICS:
            assert row[f"{m}/hd95"] == pytest.approx(0.0)
    assert row["masked"] == 0.0 and row["voxels"] == 256
    assert row["disagreement/base_0-base_1"] == 0.0 and row["prob_difference/pairs_mean"] == 0.0


def test_inverted_prediction():
    lab = _square_label()
    p = _probs_from_mask(1 - lab[0])
    row = image_metrics(p[None], lab, metrics=METRICS)
    assert list(k.split("/")[0] for k in row if "/" in k) == ["ensemble"] * len(METRICS)  # K=1: no meta
    assert row["ensemble/dice"] == pytest.approx(0.0)
    assert row["ensemble/sensitivity"] == pytest.approx(0.0)
    assert row["ensemble/specificity"] == pytest.approx(0.0)
    assert row["ensemble/auc"] == pytest.approx(0.0)


def test_mask_excludes_errors():
    lab = _square_label()
    pred = lab[0].clone()
    pred[12:15, 12:15] = 1  # false positives...
    pred[5, 5] = 0  # ...and a false negative, all outside the field of view
    mask = torch.ones(1, 16, 16)
    mask[0, 12:, 12:] = 0
    mask[0, 5, 5] = 0
    p = _probs_from_mask(pred)[None]
    inside = image_metrics(p, lab, mask, metrics=METRICS)
    whole = image_metrics(p, lab, None, metrics=METRICS)
    assert inside["masked"] == 1.0 and inside["voxels"] == 256 - 16 - 1
    for metric in ("dice", "sensitivity", "specificity", "auc"):
        assert inside[f"ensemble/{metric}"] == pytest.approx(1.0), metric
        assert whole[f"ensemble/{metric}"] < 1.0, metric
    assert whole["ensemble/dice"] == pytest.approx(2 * 35 / (44 + 36))
    if "hd95" in METRICS:
        assert inside["ensemble/hd95"] == pytest.approx(0.0) and whole["ensemble/hd95"] > 0


def test_true_negatives_outside_mask_not_counted():
    lab = torch.zeros(1, 10, 10)
    lab[0, 0, :4] = 1  # 4 vessel pixels
    pred = lab[0].clone()
    pred[1, :2] = 1  # 2 false positives inside the mask
    mask = torch.zeros(1, 10, 10)
    mask[0, :2, :] = 1  # field of view: 20 pixels, 16 of them negative
    row = image_metrics(_probs_from_mask(pred)[None], lab, mask, metrics=("sensitivity", "specificity"))
    assert row["ensemble/sensitivity"] == pytest.approx(1.0)
    assert row["ensemble/specificity"] == pytest.approx(14 / 16)  # not (96 - 2) / 96
    whole = image_metrics(_probs_from_mask(pred)[None], lab, None, metrics=("specificity",))
    assert whole["ensemble/specificity"] == pytest.approx(94 / 96)
    # AUC sees only in-mask pixels: a confident wrong score outside the mask changes nothing.
    p = _probs_from_mask(lab[0])
    p_bad = p.clone()
    p_bad[1, 9, 9], p_bad[0, 9, 9] = 0.99, 0.01  # a confident false positive outside the mask
    assert image_metrics(p_bad[None], lab, mask, metrics=("auc",))["ensemble/auc"] == pytest.approx(1.0)
    assert image_metrics(p_bad[None], lab, None, metrics=("auc",))["ensemble/auc"] < 1.0


def test_empty_mask_and_empty_label_give_nan():
    lab = torch.zeros(1, 8, 8)
    p = _probs_from_mask(torch.zeros(8, 8))[None]
    row = image_metrics(p, lab, metrics=METRICS)
    assert math.isnan(row["ensemble/dice"]) and math.isnan(row["ensemble/sensitivity"])  # no foreground
    assert row["ensemble/specificity"] == pytest.approx(1.0)
    if "hd95" in METRICS:
        assert math.isnan(row["ensemble/hd95"])
    row = image_metrics(p, _square_label(8, 2, 4), torch.zeros(1, 8, 8), metrics=METRICS)
    assert all(math.isnan(v) for k, v in row.items() if "/" in k) and row["voxels"] == 0


def test_disagreement_known_fraction():
    a = torch.zeros(8, 8)
    a[:, :4] = 1  # learner 0: left half
    b = torch.zeros(8, 8)
    b[:, :6] = 1  # learner 1: 16 more pixels
    pa, pb = _probs_from_mask(a, 1.0), _probs_from_mask(b, 1.0)
    agree, diff = disagreement_matrices(torch.stack([pa, pa]))
    assert agree[0, 1] == 0 and diff[0, 1] == 0
    agree, diff = disagreement_matrices(torch.stack([pa, pb, pa]))
    assert agree[0, 1] == pytest.approx(16 / 64) and agree[1, 0] == agree[0, 1] and agree[0, 2] == 0
    assert diff[0, 1] == pytest.approx(16 / 64)  # |1 - 0| on the 16 pixels
    mask = torch.zeros(1, 8, 8)
    mask[0, :, 2:6] = 1  # 32 pixels, 16 of them disputed
    agree, _ = disagreement_matrices(torch.stack([pa, pb]), mask[0].bool())
    assert agree[0, 1] == pytest.approx(0.5)
    lab = a[None]
    row = image_metrics(torch.stack([pa, pb, pb, pa]), lab, mask, metrics=("dice",))
    assert row["disagreement/base_0-base_1"] == pytest.approx(0.5)
    assert row["disagreement/base_1-base_2"] == 0.0
    assert row["disagreement/base_mean"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert row["disagreement/pairs_mean"] == pytest.approx(4 * 0.5 / 6)  # pairs 01, 02, 13, 23 differ
    assert row["meta/dice"] == pytest.approx(1.0) and row["base_1/dice"] < 1.0


def test_multiclass_and_sigmoid():
    lab = torch.zeros(1, 12, 12, dtype=torch.long)
    lab[0, 1:5, 1:5] = 1
    lab[0, 6:10, 6:10] = 2
    oh = torch.stack([lab[0] == c for c in range(3)]).float()
    probs = (0.8 * oh + 0.1)[None]
    row = image_metrics(probs, lab, metrics=METRICS)
    for metric in METRICS:
        assert f"ensemble/{metric}_1" in row and f"ensemble/{metric}_2" in row
    assert row["ensemble/dice_1"] == pytest.approx(1.0) and row["ensemble/auc_2"] == pytest.approx(1.0)
    swapped = probs[:, [0, 2, 1]]  # classes 1 and 2 exchanged
    row = image_metrics(swapped, lab, metrics=("dice", "auc"), class_names=["a", "b"])
    assert row["ensemble/dice_a"] == pytest.approx(0.0) and row["ensemble/auc_b"] < 0.5
    # sigmoid, one channel: foreground probability thresholded at 0.5
    sig = (lab > 0).float() * 0.8 + 0.1
    row = image_metrics(sig[None], (lab > 0).float(), activation="sigmoid", metrics=("dice", "auc"))
    assert row["ensemble/dice"] == pytest.approx(1.0) and row["ensemble/auc"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="class indices"):
        image_metrics(probs[:, :2], lab * 255, metrics=("dice",))


def test_per_class_disagreement():
    """Two learners that agree on class 1 and disagree on class 2: the per-class columns say which."""
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    lab[0, :4] = 1
    lab[0, 4:, :4] = 2
    oh = torch.stack([lab[0] == c for c in range(3)]).float()
    a = oh.clone()
    b = oh.clone()
    b[:, 4:, :4] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]  # learner b calls class 2 background
    row = image_metrics(torch.stack([a, b]), lab, metrics=("dice",), class_names=["liver", "spleen"])
    assert row["prob_difference/pairs_mean_liver"] == pytest.approx(0.0)
    assert row["prob_difference/pairs_mean_spleen"] == pytest.approx(16 / 64)
    binary = image_metrics(torch.stack([a[:2], b[:2]]), (lab == 1).long(), metrics=("dice",))
    assert not any(k.startswith("prob_difference/pairs_mean_") for k in binary)  # one class: no per-class columns


# ---------------------------------------------------------------- inferer wrapper
def test_learner_probabilities_qmenet_and_wrappers():
    from monai.inferers import SlidingWindowInferer

    net = _tiny_qmenet()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        direct = net.probabilities(x)
        inferer = LearnerProbabilities(SlidingWindowInferer(roi_size=(32, 32)))
        out = inferer(x, net)
        assert out.shape == (1, net.num_learners * 2, 32, 32)
        assert inferer.num_learners == net.num_learners and inferer.num_classes == 2
        assert torch.allclose(split_learners(out, net.num_learners), direct, atol=1e-5)
        # the ensemble's own output is the log of the mean probability
        assert torch.allclose(split_learners(out, num_classes=2).mean(0), torch.softmax(net(x), 1), atol=1e-5)
        # a wrapper (DataParallel here; DistributedDataParallel has the same `.module`) is unwrapped
        wrapped = LearnerProbabilities()(x, nn.DataParallel(net))
        assert torch.allclose(wrapped, merge_learners(direct), atol=1e-6)
        # sliding windows on a larger image keep the channel layout
        big = LearnerProbabilities(SlidingWindowInferer(roi_size=(32, 32), overlap=0.5))(torch.randn(1, 1, 40, 48), net)
        assert big.shape == (1, net.num_learners * 2, 40, 48)
        assert torch.allclose(split_learners(big, net.num_learners).sum(2), torch.ones(1), atol=1e-5)


def test_learner_probabilities_plain_network():
    conv = nn.Conv2d(1, 3, 1)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        soft = LearnerProbabilities()(x, conv)
        assert soft.shape == (2, 3, 8, 8) and torch.allclose(soft, torch.softmax(conv(x), 1))
        sig = LearnerProbabilities(activation="sigmoid")(x, conv)
        assert torch.allclose(sig, torch.sigmoid(conv(x)))
    with pytest.raises(ValueError):
        LearnerProbabilities(activation="relu")


# ---------------------------------------------------------------- engine runs
def _dataset(n, shape, with_mask=True, seed=0):
    from monai.data import MetaTensor

    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        lab = torch.zeros(1, *shape)
        sl = tuple(slice(s // 4, s // 4 + s // 3) for s in shape)
        lab[(0, *sl)] = 1
        img = lab + 0.3 * torch.randn(1, *shape, generator=g)
        item = {
            "image": MetaTensor(img, meta={"filename_or_obj": f"/data/case_{i}.nii.gz"}),
            "label": MetaTensor(lab, meta={"filename_or_obj": f"/data/case_{i}_seg.nii.gz"}),
        }
        if with_mask:
            mask = torch.ones(1, *shape)
            mask[(0, *(slice(0, 2) for _ in shape))] = 0
            item["mask"] = MetaTensor(mask)
        items.append(item)
    return items


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_supervised_evaluator_2d(tmp_path):
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.inferers import SlidingWindowInferer

    net = _tiny_qmenet()
    k = net.num_learners
    handler = EnsembleMetrics(output_dir=tmp_path / "eval", metrics=METRICS, publish_all=True)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(_dataset(3, (40, 36))), batch_size=1),
        network=net,
        inferer=LearnerProbabilities(SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=2)),
        val_handlers=[handler],
    )
    evaluator.run()
    out = tmp_path / "eval"
    assert sorted(os.listdir(out)) == [
        "dice_comparison.png",
        "metrics_per_image.csv",
        "metrics_summary.csv",
        "metrics_summary.json",
    ]
    rows = _read_csv(out / "metrics_per_image.csv")
    assert [r["image"] for r in rows] == [f"/data/case_{i}.nii.gz" for i in range(3)]
    header = list(rows[0])
    assert header[:3] == ["image", "masked", "voxels"]
    members = member_names(k)
    for m in members:
        for metric in METRICS:
            assert f"{m}/{metric}" in header
    assert "disagreement/base_0-meta" in header and "prob_difference/base_mean" in header
    assert all(float(r["masked"]) == 1.0 and float(r["voxels"]) == 40 * 36 - 4 for r in rows)
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_images"] == 3 and summary["masked_images"] == 3
    assert summary["members"] == members
    mean_dice = np.nanmean([float(r["ensemble/dice"]) for r in rows])
    assert summary["summary"]["ensemble"]["dice"]["mean"] == pytest.approx(mean_dice)
    assert summary["summary"]["ensemble"]["dice"]["n"] + summary["summary"]["ensemble"]["dice"]["nan"] == 3
    assert evaluator.state.metrics["ensemble_mean_dice"] == pytest.approx(mean_dice)
    assert evaluator.state.metrics["meta/auc"] == pytest.approx(summary["summary"]["meta"]["auc"]["mean"], nan_ok=True)
    mat = np.array(summary["disagreement"]["disagreement"]["mean"], dtype=float)
    assert mat.shape == (k, k) and np.allclose(np.diag(mat), 0) and np.allclose(mat, mat.T)
    assert summary["disagreement"]["learners"] == [f"base_{i}" for i in range(k - 1)] + ["meta"]
    summary_rows = {(r["member"], r["metric"]): r for r in _read_csv(out / "metrics_summary.csv")}
    assert float(summary_rows[("ensemble", "dice")]["mean"]) == pytest.approx(mean_dice)
    assert ("disagreement", "base_mean") in summary_rows and ("image", "voxels") in summary_rows
    png = (out / "dice_comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    # a second run replaces the files (through temporary files, none left behind)
    (out / "metrics_summary.json").write_text("stale")
    evaluator.run()
    assert json.loads((out / "metrics_summary.json").read_text())["num_images"] == 3
    assert len(os.listdir(out)) == 4


def test_supervised_evaluator_3d_key_metric(tmp_path):
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.inferers import SlidingWindowInferer

    net = _tiny_qmenet(3)
    metric = EnsembleMetrics(
        output_dir=tmp_path,
        metrics=("dice", "sensitivity", "specificity", "auc"),
        members=("ensemble", "meta", "base_mean"),
        plot_filename=None,
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(_dataset(2, (20, 16, 16), with_mask=False)), batch_size=1),
        network=net,
        inferer=LearnerProbabilities(SlidingWindowInferer(roi_size=(16, 16, 16))),
        key_val_metric={"val_ens_dice": metric},
    )
    evaluator.run()
    assert evaluator.state.best_metric == pytest.approx(evaluator.state.metrics["val_ens_dice"], nan_ok=True)
    rows = _read_csv(tmp_path / "metrics_per_image.csv")
    assert len(rows) == 2 and all(float(r["masked"]) == 0 for r in rows)
    assert "base_mean/dice" in rows[0] and "base_0/dice" not in rows[0]
    assert not (tmp_path / "dice_comparison.png").exists()
    assert 0.0 <= float(rows[0]["ensemble/specificity"]) <= 1.0


# ---------------------------------------------------------------- distributed gather
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        lab = _square_label()
        good, bad = _probs_from_mask(lab[0]), _probs_from_mask(1 - lab[0])
        m = EnsembleMetrics(output_dir=out_dir, metrics=("dice",), plot_filename=None, num_classes=2)
        m.update(
            ([merge_learners(torch.stack([good if rank == 0 else bad] * 2)[:, None])[0]], [lab], None, [f"img{rank}"])
        )
        value = m.compute()
        assert value == pytest.approx(0.5), value  # both ranks see both images
        m.write()
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_gather(tmp_path):
    # fork: the workers need no fresh interpreter (spawn re-imports torch and MONAI, ~15 s)
    torch.multiprocessing.start_processes(
        _dist_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork"
    )
    rows = _read_csv(tmp_path / "metrics_per_image.csv")
    assert sorted(r["image"] for r in rows) == ["img0", "img1"]
