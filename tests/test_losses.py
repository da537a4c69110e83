"""Tests of the ensemble losses: deep diversity, ensemble objective, distillation."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from qddens_monai.losses.distillation import EnsembleDistillationLoss
from qddens_monai.losses.diversity import DeepDiversityLoss
from qddens_monai.losses.ensemble import EnsembleLoss


def _const(value: float, shape=(1, 1, 2, 2)) -> torch.Tensor:
    return torch.full(shape, float(value))


# ----------------------------------------------------------------------------------------------------------------
# DeepDiversityLoss
# ----------------------------------------------------------------------------------------------------------------


def test_faithful_hand_computed_two_and_three_learners():
    div = DeepDiversityLoss(form="faithful", max_rms=None)
    # ||0 - 1|| over 4 elements = 2 -> sqrt(2)
    assert div([[_const(0)], [_const(1)]]).item() == pytest.approx(math.sqrt(2.0), rel=1e-6)
    # three learners: pair norms 2, 6, 4 -> mean of their square roots
    expected = (math.sqrt(2) + math.sqrt(6) + 2.0) / 3
    assert div([[_const(0)], [_const(1)], [_const(3)]]).item() == pytest.approx(expected, rel=1e-6)
    # the public code's eps inside the sqrt: identical maps give sqrt(1e-8), with a finite (zero) gradient
    a = torch.rand(1, 2, 3, 3, requires_grad=True)
    value = div([[a], [a.detach().clone()]])
    value.backward()
    assert value.item() == pytest.approx(1e-4, rel=1e-4)
    assert torch.isfinite(a.grad).all()


def test_faithful_level_reduction_sum_and_mean():
    feats = [[_const(0), _const(0, (1, 3, 1, 1))], [_const(1), _const(2, (1, 3, 1, 1))]]
    level0, level1 = math.sqrt(2.0), math.sqrt(math.sqrt(12.0))
    assert DeepDiversityLoss(max_rms=None)(feats).item() == pytest.approx(level0 + level1, rel=1e-6)
    mean = DeepDiversityLoss(max_rms=None, level_reduction="mean")(feats)
    assert mean.item() == pytest.approx((level0 + level1) / 2, rel=1e-6)


def test_faithful_safeguard_values_and_flat_past_cap():
    # N = 4 elements, max_rms = 4 -> cap = 4**0.25 * 2 = 2 sqrt(2); d = sqrt(2) -> u = 0.5
    feats = [[_const(0)], [_const(1)]]
    cap = 2 * math.sqrt(2)
    u = 0.5
    assert DeepDiversityLoss(max_rms=4.0)(feats).item() == pytest.approx(cap * (u - u**3 / 3), rel=1e-6)
    tanh = DeepDiversityLoss(max_rms=4.0, saturation="tanh")(feats)
    assert tanh.item() == pytest.approx(cap * math.tanh(u), rel=1e-6)
    assert DeepDiversityLoss(max_rms=4.0, saturation="clamp")(feats).item() == pytest.approx(math.sqrt(2), rel=1e-6)
    # the cap is per element: the same per-element difference on a 64x bigger tensor saturates identically
    big = [[_const(0, (4, 4, 2, 2))], [_const(1, (4, 4, 2, 2))]]
    ratio = DeepDiversityLoss()(big) / DeepDiversityLoss(max_rms=None)(big)
    assert ratio.item() == pytest.approx(1 - u**2 / 3, rel=1e-6)
    # past the cap (rms difference 9 > max_rms 4) the default saturation is flat: value 2/3 cap, zero gradient
    a = _const(9).requires_grad_(True)
    value = DeepDiversityLoss()([[a], [_const(0)]])
    value.backward()
    assert value.item() == pytest.approx(2 / 3 * cap, rel=1e-6)
    assert torch.all(a.grad == 0)


def test_cosine_bounds_and_invariances():
    div = DeepDiversityLoss(form="cosine")
    x = torch.randn(2, 3, 4, 4)
    assert div([[x], [x.clone()]]).item() == pytest.approx(0.0, abs=1e-6)
    assert div([[x], [-x]]).item() == pytest.approx(2.0, abs=1e-6)
    # orthogonal per sample: disjoint supports
    a, b = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    a[:, :, 0], b[:, :, 1] = 1.0, 1.0
    assert div([[a], [b]]).item() == pytest.approx(1.0, abs=1e-6)
    # invariant to each learner's feature scale (cannot be inflated by norms)
    y = torch.randn(2, 3, 4, 4)
    assert div([[x], [y]]).item() == pytest.approx(div([[100.0 * x], [0.01 * y]]).item(), rel=1e-5)
    for _ in range(5):
        value = div([[torch.randn(2, 3, 4, 4)] for _ in range(4)]).item()
        assert 0.0 <= value <= 2.0
    # non-negative maps that differ only by a per-channel offset look alike once centred
    base = torch.rand(2, 3, 4, 4)
    assert div([[base], [base + 5.0]]).item() > 0.0
    assert DeepDiversityLoss(form="cosine", channel_norm="center")([[base], [base + 5.0]]).item() == pytest.approx(
        0.0, abs=1e-5
    )


def test_ncl_bounds_and_hand_value():
    div = DeepDiversityLoss(form="ncl")
    x = torch.rand(2, 3, 4, 4)
    assert div([[x], [x.clone()], [x.clone()]]).item() == pytest.approx(0.0, abs=1e-6)
    # cancelling features: mean 0 -> spread == energy -> 1
    assert div([[x], [-x]]).item() == pytest.approx(1.0, abs=1e-6)
    # per voxel, scalar features 1 and 0: spread 0.5, energy 1 -> 0.5 = 1 - 1/K
    assert div([[_const(1)], [_const(0)]]).item() == pytest.approx(0.5, abs=1e-6)
    for _ in range(5):
        value = div([[torch.randn(2, 3, 4, 4)] for _ in range(3)]).item()
        assert 0.0 <= value <= 1.0


def test_ambiguity_on_probabilities_hand_values():
    # two base learners, softmax over 2 classes at every voxel: p = (1, 0) and (0, 1) -> mean (0.5, 0.5),
    # per learner ||p_k - mean||^2 = 0.5, so (1/K) sum_k = 0.5; the meta learner's logits are not compared
    big = torch.full((1, 1, 2, 2), 50.0)
    a, b = torch.cat([big, -big], 1), torch.cat([-big, big], 1)
    div = DeepDiversityLoss(form="ambiguity", inputs="probabilities")
    assert div({"logits": [a, b, a]}).item() == pytest.approx(0.5, abs=1e-6)
    assert div({"logits": [a, a.clone(), b]}).item() == pytest.approx(0.0, abs=1e-6)
    assert div({"logits": [a, b]}).item() == 0.0  # one base learner: no pair
    sig = DeepDiversityLoss(form="ambiguity", inputs="probabilities", activation="sigmoid")
    assert sig({"logits": [big, -big, big]}).item() == pytest.approx(0.25, abs=1e-6)  # (1 - 0.5)^2
    with pytest.raises(ValueError, match="logits"):
        div([[a], [b]])
    with pytest.raises(ValueError, match="inputs"):
        DeepDiversityLoss(inputs="logits")


def test_ensemble_loss_with_output_diversity_needs_no_features():
    out = _ensemble_output()
    del out["features"]
    y = torch.randint(0, 3, (2, 1, 6, 6))
    loss_fn = EnsembleLoss(alpha=1.0, diversity=DeepDiversityLoss(form="ambiguity", inputs="probabilities"))
    loss = loss_fn(out, y)
    loss.backward()
    parts = loss_fn.last_parts
    assert set(parts) >= {"diversity", "diversity/output"} and parts["diversity"].item() > 0
    assert parts["total"].item() == pytest.approx(parts["seg"].item() - parts["diversity"].item(), rel=1e-5)
    assert all(x.grad is not None for x in out["logits"][:-1])


def _five_levels(learners: int = 2):
    """Level 2 (bottleneck) differs wildly between learners, the others are identical."""
    shapes = [(1, 2, 8, 8), (1, 4, 4, 4), (1, 8, 2, 2), (1, 4, 4, 4), (1, 2, 8, 8)]
    common = [torch.rand(s) for s in shapes]
    feats = []
    for k in range(learners):
        levels = [c.clone() for c in common]
        levels[2] = levels[2] + 10.0 * k
        feats.append(levels)
    return feats, ["stem", "encoder", "bottleneck", "decoder", "decoder"]


def test_level_selection_by_role_and_index():
    feats, roles = _five_levels()
    div = DeepDiversityLoss(form="cosine")
    # default with roles: encoder and decoder levels only
    assert sorted(div.per_level(feats, roles)) == [1, 3, 4]
    assert div(feats, roles).item() == pytest.approx(0.0, abs=1e-6)
    # the dict input carries its roles
    out = {"logits": [], "features": feats, "roles": roles}
    assert div(out).item() == pytest.approx(0.0, abs=1e-6)
    # explicit role selection picks the bottleneck, which differs
    bott = DeepDiversityLoss(form="faithful", levels=["bottleneck"], max_rms=None)
    assert list(bott.per_level(out)) == [2]
    assert bott(out).item() == pytest.approx(math.sqrt(10.0 * math.sqrt(32)), rel=1e-5)
    # indices, negative ones count from the end; without roles all levels are used
    assert list(DeepDiversityLoss(levels=[0, -1]).per_level(feats)) == [0, 4]
    assert list(DeepDiversityLoss().per_level(feats)) == [0, 1, 2, 3, 4]
    # the default on a network that fuses no encoder or decoder level (fusion_roles ["bottleneck"]): every level
    assert list(DeepDiversityLoss().per_level([[f[2]] for f in feats], ["bottleneck"])) == [0]
    with pytest.raises(ValueError, match="no level has a role"):
        DeepDiversityLoss(levels=["encoder"]).per_level([[f[2]] for f in feats], ["bottleneck"])
    with pytest.raises(ValueError, match="no roles"):
        DeepDiversityLoss(levels=["encoder"])(feats)
    with pytest.raises(IndexError):
        DeepDiversityLoss(levels=[5])(feats)


def test_differing_channel_counts_compare_channel_means():
    a = torch.rand(2, 4, 3, 3)
    b = torch.rand(2, 2, 3, 3)
    ma, mb = a.mean(1, keepdim=True), b.mean(1, keepdim=True)
    faithful = DeepDiversityLoss(max_rms=None)([[a], [b]])
    assert faithful.item() == pytest.approx(math.sqrt(torch.linalg.vector_norm(ma - mb).item() + 1e-8), rel=1e-5)
    cosine = DeepDiversityLoss(form="cosine")([[a], [b]])
    expected = (1 - F.cosine_similarity(ma.flatten(1), mb.flatten(1))).mean()
    assert cosine.item() == pytest.approx(expected.item(), rel=1e-5)
    # a level where channels match keeps the full maps under "auto", and "mean" forces the reduction there too
    c = torch.rand(2, 4, 3, 3)
    full = DeepDiversityLoss(max_rms=None)([[a], [c]]).item()
    assert full == pytest.approx(math.sqrt(torch.linalg.vector_norm(a - c).item()), rel=1e-5)
    assert DeepDiversityLoss(max_rms=None, channel_reduction="mean")([[a], [c]]).item() != pytest.approx(full)
    with pytest.raises(ValueError, match="channel counts differ"):
        DeepDiversityLoss(channel_reduction="none")([[a], [b]])


def test_single_learner_has_no_diversity():
    assert DeepDiversityLoss()([[torch.rand(1, 2, 4, 4)]]).item() == 0.0


class _TinyLearner(nn.Module):
    """Two conv levels without normalisation, so feature norms are free to grow."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        f0 = torch.relu(self.c1(x))
        f1 = torch.relu(self.c2(f0))
        return self.head(f1), [f0, f1]


def _train_tiny_ensemble(diversity: DeepDiversityLoss, alpha: float, steps: int = 200) -> dict:
    torch.manual_seed(0)
    nets = nn.ModuleList([_TinyLearner(), _TinyLearner()])
    x = torch.rand(2, 1, 12, 12)
    y = (x > 0.5).long()
    loss_fn = EnsembleLoss(alpha=alpha, diversity=diversity)
    opt = torch.optim.Adam(nets.parameters(), lr=1e-2)
    record = {"loss": [], "feature_rms": []}
    for _ in range(steps):
        outs = [n(x) for n in nets]
        loss = loss_fn({"logits": [o[0] for o in outs], "features": [o[1] for o in outs]}, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        record["loss"].append(loss.item())
        record["feature_rms"].append(max(f.detach().pow(2).mean().sqrt().item() for o in outs for f in o[1]))
    record["div"] = loss_fn.last_parts["diversity"].item()
    return record


@pytest.fixture
def _one_thread():
    # tiny convolutions: intra-op threads only add overhead, and oversubscribe shared CPUs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_faithful_safeguard_keeps_training_bounded(_one_thread):
    """alpha = 1 (200x the default) so that the diversity term dominates the segmentation loss."""
    protected = _train_tiny_ensemble(DeepDiversityLoss(), alpha=1.0)
    unprotected = _train_tiny_ensemble(DeepDiversityLoss(max_rms=None), alpha=1.0)
    rms_p, rms_u = protected["feature_rms"], unprotected["feature_rms"]
    assert all(math.isfinite(v) for v in protected["loss"] + rms_p)
    # the protected diversity reaches its ceiling: 2 levels x 2/3 cap, cap = N**0.25 * sqrt(4)
    cap = (2 * 4 * 12 * 12) ** 0.25 * 2.0
    assert protected["div"] <= 2 * 2 / 3 * cap + 1e-4
    # features start at rms ~0.2. Protected, they grow to O(max_rms) and level off (measured 4.6, 6.6, 7.9, 8.8 at
    # steps 50, 100, 150, 200); unprotected, they grow ever faster (measured 30, 136, 302, 506)
    assert rms_p[-1] < 20.0
    assert rms_p[-1] - rms_p[149] < 0.5 * (rms_p[99] - rms_p[49])
    assert rms_u[-1] > 20 * rms_p[-1]
    assert rms_u[-1] - rms_u[149] > rms_u[99] - rms_u[49]
    # and the unprotected objective is unbounded below while the protected one levels off
    assert unprotected["loss"][-1] < 5 * protected["loss"][-1] < 0


# ----------------------------------------------------------------------------------------------------------------
# EnsembleLoss
# ----------------------------------------------------------------------------------------------------------------


def _ensemble_output(k: int = 3, classes: int = 3, spatial=(6, 6), grad: bool = True, roles: bool = False) -> dict:
    logits = [torch.randn(2, classes, *spatial, requires_grad=grad) for _ in range(k)]
    features = [
        [
            torch.rand(2, 4, *spatial, requires_grad=grad),
            torch.rand(2, 8, *[s // 2 for s in spatial], requires_grad=grad),
        ]
        for _ in range(k - 1)
    ]
    out = {"logits": logits, "features": features}
    if roles:
        out["roles"] = ["encoder", "decoder"]
    return out


def test_ensemble_loss_value_and_gradients():
    out = _ensemble_output()
    y = torch.randint(0, 3, (2, 1, 6, 6))
    alpha = 0.1
    loss_fn = EnsembleLoss(alpha=alpha, diversity=DeepDiversityLoss(max_rms=None))
    loss = loss_fn(out, y)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    seg = sum(dice_ce(t, y) for t in out["logits"])
    div = 0.0
    for level in range(2):
        fa, fb = out["features"][0][level], out["features"][1][level]
        div += math.sqrt(torch.linalg.vector_norm(fa - fb).item() + 1e-8)
    assert loss.item() == pytest.approx(seg.item() - alpha * div, rel=1e-5)
    loss.backward()
    for t in out["logits"] + [f for learner in out["features"] for f in learner]:
        assert t.grad is not None and t.grad.abs().sum() > 0
    # parts, consistent with the total
    parts = loss_fn.log_parts()
    assert set(parts) == {
        "seg/base_0",
        "seg/base_1",
        "seg/meta",
        "seg",
        "diversity",
        "diversity/level_0",
        "diversity/level_1",
        "total",
    }
    assert parts["seg/meta"] == pytest.approx(dice_ce(out["logits"][2], y).item(), rel=1e-6)
    assert parts["total"] == pytest.approx(parts["seg"] - alpha * parts["diversity"], rel=1e-6)
    assert parts["diversity"] == pytest.approx(parts["diversity/level_0"] + parts["diversity/level_1"], rel=1e-6)
    assert all(isinstance(v, float) for v in parts.values())


def test_ensemble_loss_weights_alpha_zero_and_plain_tensor():
    out = _ensemble_output(grad=False)
    y = torch.randint(0, 3, (2, 1, 6, 6))
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    per = [dice_ce(t, y).item() for t in out["logits"]]
    no_div = EnsembleLoss(alpha=0.0, weights=[0.5, 0.5, 2.0])
    # alpha = 0 does not need features
    value = no_div({"logits": out["logits"]}, y)
    assert value.item() == pytest.approx(0.5 * per[0] + 0.5 * per[1] + 2.0 * per[2], rel=1e-6)
    assert "diversity" not in no_div.last_parts
    with pytest.raises(ValueError, match="weights"):
        EnsembleLoss(weights=[1.0, 1.0])(out, y)
    with pytest.raises(ValueError, match="features"):
        EnsembleLoss()({"logits": out["logits"]}, y)
    # eval-mode output: just the segmentation loss
    loss_fn = EnsembleLoss()
    assert loss_fn(out["logits"][2], y).item() == pytest.approx(per[2], rel=1e-6)
    assert loss_fn.log_parts() == {"seg": pytest.approx(per[2]), "total": pytest.approx(per[2])}


def test_ensemble_loss_sigmoid_bce_and_injected_loss():
    out = _ensemble_output(classes=1, grad=False)
    y = torch.randint(0, 2, (2, 1, 6, 6))  # integer mask: cast to float for BCE
    bce = nn.BCEWithLogitsLoss()
    expected = sum(bce(t, y.float()) for t in out["logits"]).item()
    assert EnsembleLoss(sigmoid=True, alpha=0.0)(out, y).item() == pytest.approx(expected, rel=1e-6)
    assert isinstance(EnsembleLoss(sigmoid=True).seg_loss, nn.BCEWithLogitsLoss)
    # any loss module can be injected
    dice_sig = DiceCELoss(sigmoid=True)
    expected = sum(dice_sig(t, y) for t in out["logits"]).item()
    assert EnsembleLoss(seg_loss=dice_sig, sigmoid=True, alpha=0.0)(out, y).item() == pytest.approx(expected, rel=1e-6)


def test_ensemble_loss_roles_and_log_all_levels():
    out = _ensemble_output(roles=True)
    out["roles"] = ["bottleneck", "decoder"]
    y = torch.randint(0, 3, (2, 1, 6, 6))
    loss_fn = EnsembleLoss(log_all_levels=True)
    loss = loss_fn(out, y)
    parts = loss_fn.last_parts
    # only the decoder level is optimised, the bottleneck is logged without gradient
    assert parts["diversity"].item() == pytest.approx(parts["diversity/level_1"].item())
    assert "diversity/level_0" in parts
    loss.backward()
    assert out["features"][0][0].grad is None
    assert out["features"][0][1].grad is not None


def test_ensemble_loss_3d():
    out = _ensemble_output(spatial=(4, 4, 4))
    y = torch.randint(0, 3, (2, 1, 4, 4, 4))
    loss = EnsembleLoss(diversity=DeepDiversityLoss(form="ncl"))(out, y)
    loss.backward()
    assert torch.isfinite(loss) and out["features"][1][1].grad is not None


# ----------------------------------------------------------------------------------------------------------------
# EnsembleDistillationLoss
# ----------------------------------------------------------------------------------------------------------------


def test_distillation_zero_kl_alpha_one_and_no_teacher_gradient():
    s = torch.randn(2, 3, 5, 5, requires_grad=True)
    y = torch.randint(0, 3, (2, 1, 5, 5))
    seg = DiceCELoss(to_onehot_y=True, softmax=True)(s, y).item()
    loss_fn = EnsembleDistillationLoss(alpha=0.3, temperature=2.0)
    assert loss_fn.kd(s, s.detach().clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert loss_fn(s, y, s.detach().clone()).item() == pytest.approx(0.3 * seg, rel=1e-5)
    # alpha = 1: plain segmentation loss, with or without teacher
    assert EnsembleDistillationLoss(alpha=1.0)(s, y, torch.randn(2, 3, 5, 5)).item() == pytest.approx(seg, rel=1e-6)
    # the teacher never receives gradients
    t = torch.randn(2, 3, 5, 5, requires_grad=True)
    loss_fn(s, y, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_distillation_temperature_scaling():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for temp in (1.0, 3.0):
        p_t = F.softmax(t / temp, 1)
        kl = (p_t * (F.log_softmax(t / temp, 1) - F.log_softmax(s / temp, 1))).sum(1).mean()
        kd = EnsembleDistillationLoss(temperature=temp).kd(s, t)
        assert kd.item() == pytest.approx(temp**2 * kl.item(), rel=1e-5)
    # T**2 keeps the gradient scale: for large T it tends to (s - t) / (C * voxels) with zero-mean logits
    s0, t0 = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    s0.requires_grad_(True)
    EnsembleDistillationLoss(temperature=1000.0).kd(s0, t0).backward()
    voxels = 2 * 4 * 4
    torch.testing.assert_close(s0.grad, (s0 - t0).detach() / (3 * voxels), rtol=1e-2, atol=1e-5)


def test_distillation_probability_teacher_and_binary_head():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 1, 4, 4))
    by_logits = EnsembleDistillationLoss(temperature=2.0)(s, y, t)
    by_prob = EnsembleDistillationLoss(temperature=2.0, teacher_is_probability=True)(s, y, F.softmax(t, 1))
    assert by_prob.item() == pytest.approx(by_logits.item(), rel=1e-5)
    # one channel = Bernoulli: same as the explicit two-class [0, x] logits
    s1, t1 = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    two = lambda x: torch.cat([torch.zeros_like(x), x], 1)  # noqa: E731
    kd1 = EnsembleDistillationLoss(temperature=2.0, sigmoid=True).kd(s1, t1)
    assert kd1.item() == pytest.approx(EnsembleDistillationLoss(temperature=2.0).kd(two(s1), two(t1)).item(), rel=1e-5)
    by_prob1 = EnsembleDistillationLoss(temperature=2.0, sigmoid=True, teacher_is_probability=True)
    kd1p = by_prob1.kd(s1, torch.sigmoid(t1))
    assert kd1p.item() == pytest.approx(kd1.item(), rel=1e-4)
    # binary head end to end: BCE on an integer mask + KD
    yb = torch.randint(0, 2, (2, 1, 4, 4))
    loss_fn = EnsembleDistillationLoss(alpha=0.5, temperature=2.0, sigmoid=True)
    expected = 0.5 * nn.BCEWithLogitsLoss()(s1, yb.float()) + 0.5 * kd1
    assert loss_fn(s1, yb, t1).item() == pytest.approx(expected.item(), rel=1e-5)


def test_distillation_dict_pred_and_eval_path():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 1, 4, 4))
    loss_fn = EnsembleDistillationLoss()
    assert loss_fn({"student": s, "teacher": t}, y).item() == pytest.approx(loss_fn(s, y, t).item(), rel=1e-6)
    assert set(loss_fn.log_parts()) == {"seg", "kd", "total"}
    with pytest.raises(ValueError, match="both"):
        loss_fn({"student": s, "teacher": t}, y, t)
    with pytest.raises(ValueError, match="teacher"):
        loss_fn({"student": s}, y)
    seg = DiceCELoss(to_onehot_y=True, softmax=True)(s, y).item()
    assert loss_fn(s, y).item() == pytest.approx(seg, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# MONAI SupervisedTrainer plug-in contract
# ----------------------------------------------------------------------------------------------------------------


class _FakeEnsemble(nn.Module):
    """Returns the train-mode dict, and the meta learner's logits in eval mode."""

    def __init__(self, base: int = 2) -> None:
        super().__init__()
        self.learners = nn.ModuleList([_TinyLearner() for _ in range(base + 1)])

    def forward(self, x):
        outs = [learner(x) for learner in self.learners]
        if not self.training:
            return outs[-1][0]
        return {"logits": [o[0] for o in outs], "features": [o[1] for o in outs[:-1]], "roles": ["encoder", "decoder"]}


class _Distiller(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.student, self.teacher = _TinyLearner(), _TinyLearner().eval()

    def forward(self, x):
        s = self.student(x)[0]
        if not self.training:
            return s
        with torch.no_grad():
            t = F.softmax(self.teacher(x)[0], 1)
        return {"student": s, "teacher": t}


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _run_trainer(net: nn.Module, loss_fn) -> tuple[list, str]:
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer
    from monai.handlers import StatsHandler

    from qddens_monai.handlers import LossPartsHandler, loss_parts_from_output

    data = [{"image": torch.rand(2, 1, 8, 8), "label": torch.randint(0, 2, (2, 1, 8, 8))} for _ in range(2)]
    seen = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=loss_fn,
        train_handlers=[
            LossPartsHandler(loss_fn),
            StatsHandler(name="qddens_parts", output_transform=loss_parts_from_output, epoch_log=False),
        ],
    )
    # StatsHandler's logger does not propagate to the root logger: listen to it directly
    logger, listener = logging.getLogger("qddens_parts"), _ListHandler()
    logger.addHandler(listener)
    # after the trainer decollated its output: the parts are in each sample's dict
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: seen.append(loss_parts_from_output(engine.state.output))
    )
    before = [p.detach().clone() for p in net.parameters()]
    try:
        trainer.run()
    finally:
        logger.removeHandler(listener)
    assert trainer.state.iteration == 2
    assert math.isfinite(float(trainer.state.output[0]["loss"]))  # decollated: one entry per sample
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    return seen, "\n".join(listener.messages)


def test_supervised_trainer_runs_ensemble_loss():
    loss_fn = EnsembleLoss(diversity=DeepDiversityLoss(form="cosine"), alpha=0.01)
    seen, log = _run_trainer(_FakeEnsemble(), loss_fn)
    assert len(seen) == 2 and {"seg/base_0", "seg/base_1", "seg/meta", "diversity", "total"} <= set(seen[0])
    assert log.count("diversity/level_1") == 2 and "seg/meta" in log
    # the same loss validates eval-mode output
    net = _FakeEnsemble().eval()
    assert torch.isfinite(loss_fn(net(torch.rand(1, 1, 8, 8)), torch.randint(0, 2, (1, 1, 8, 8))))


def test_supervised_trainer_runs_distillation():
    net = _Distiller()
    loss_fn = EnsembleDistillationLoss(alpha=0.5, temperature=2.0, teacher_is_probability=True)
    seen, log = _run_trainer(net, loss_fn)
    assert set(seen[-1]) == {"seg", "kd", "total"} and seen[-1]["kd"] > 0
    assert log.count("kd:") == 2
