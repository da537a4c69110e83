"""The ensemble contract: one train-mode output type, one unwrapper, one disagreement function for every user."""

import math

import pytest
import torch
from monai.inferers import SlidingWindowInferer

import qddens_monai.ensemble as ens
from qddens_monai import evaluation, handlers
from qddens_monai.evaluation import disagreement_matrices
from qddens_monai.handlers import OverlayHandler
from qddens_monai.label.selection import voxel_disagreement
from qddens_monai.networks import QMENet


def _probs(k=4, c=3, spatial=(5, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(k, c, *spatial, generator=g) * 3, dim=1)


def test_one_definition_everywhere():
    assert handlers.learner_disagreement is ens.learner_disagreement
    assert handlers.max_disagreement is ens.max_disagreement
    assert evaluation.unwrap_network is ens.unwrap_network
    assert evaluation.merge_learners is ens.merge_learners and evaluation.split_learners is ens.split_learners
    assert not hasattr(evaluation, "learner_disagreement")  # the (K, K) matrices have their own name


def test_measures_match_their_formulas():
    p = _probs()
    k = p.shape[0]
    pairs = ens.learner_pairs(k)
    assert len(pairs) == k * (k - 1) // 2 and pairs[0] == (0, 1)
    fg = 1 - p[:, 0]
    pairwise = sum((fg[i] - fg[j]).abs() for i, j in pairs) / len(pairs)
    assert torch.allclose(ens.learner_disagreement(p, "pairwise"), pairwise)
    assert torch.allclose(ens.learner_disagreement(p, "variance"), fg.var(0, unbiased=False))
    assert torch.allclose(ens.learner_disagreement(p, "std"), fg.var(0, unbiased=False).sqrt())
    assert torch.allclose(ens.learner_disagreement(p, "class_variance"), p.var(0, unbiased=False).sum(0))
    mean = p.mean(0)
    assert torch.allclose(ens.learner_disagreement(p, "entropy"), -(mean * mean.log()).sum(0))
    labels = p.argmax(1)
    label = sum((labels[i] != labels[j]).float() for i, j in pairs) / len(pairs)
    assert torch.allclose(ens.learner_disagreement(p, "label"), label)
    per_pair = ens.learner_disagreement(p, "pairwise", foreground=2, per_pair=True)
    assert per_pair.shape == (len(pairs), 5, 6)
    assert torch.allclose(per_pair[1], (p[0, 2] - p[2, 2]).abs())
    # label selection's kinds are measures of the same function
    assert torch.equal(voxel_disagreement(p, "variance"), ens.learner_disagreement(p, "class_variance"))
    assert torch.equal(voxel_disagreement(p, "entropy"), ens.learner_disagreement(p, "entropy"))


def test_matrices_are_the_pair_maps_averaged():
    p = _probs()
    inside = torch.rand(5, 6) > 0.3
    agree, diff = disagreement_matrices(p, inside)
    labels = ens.learner_disagreement(p, "label", per_pair=True)
    diffs = ens.learner_disagreement(p, "pairwise", foreground="classes", per_pair=True)
    for n, (i, j) in enumerate(ens.learner_pairs(4)):
        assert agree[i, j] == agree[j, i] == pytest.approx(float(labels[n][inside].mean()))
        assert diff[i, j] == pytest.approx(float(diffs[n][inside].mean()))
    assert (agree.diagonal() == 0).all()


def test_bounds_and_errors():
    fg = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(4, 1, 1)
    p = torch.stack([1 - fg, fg], dim=1)
    for measure in ("pairwise", "std", "variance", "class_variance", "label"):
        assert float(ens.learner_disagreement(p, measure)) == pytest.approx(ens.max_disagreement(4, measure))
    assert float(ens.learner_disagreement(p, "entropy")) == pytest.approx(math.log(2))
    assert float(ens.learner_disagreement(p[:1], "pairwise")) == 0.0
    sig = torch.sigmoid(torch.randn(3, 2, 4, 4))
    assert ens.learner_disagreement(sig, "label", activation="sigmoid").shape == (4, 4)
    with pytest.raises(ValueError, match="measure"):
        ens.learner_disagreement(p, "kl")
    with pytest.raises(ValueError, match="per_pair"):
        ens.learner_disagreement(p, "std", per_pair=True)
    with pytest.raises(ValueError, match="foreground"):
        ens.learner_disagreement(p, "pairwise", foreground="all")


def test_train_output_is_the_typed_contract():
    net = QMENet(
        2,
        1,
        2,
        backbone_kwargs={"channels": (4, 8, 16, 16), "layers": (1, 1, 1, 1)},
        quantization="float",
        probe_size=32,
    )
    out = net(torch.randn(2, 1, 32, 32))
    assert ens.is_ensemble_output(out) and not ens.is_ensemble_output(out["logits"][0])
    assert set(out) == set(ens.EnsembleOutput.__annotations__)
    assert ens.unwrap_network(torch.nn.DataParallel(net)) is net


def test_overlay_handler_uses_learner_probabilities(tmp_path):
    net = QMENet(
        2,
        1,
        2,
        backbone_kwargs={"channels": (4, 8, 16, 16), "layers": (1, 1, 1, 1)},
        quantization="float",
        probe_size=32,
    )
    image = torch.randn(1, 48, 40)
    with torch.no_grad():
        expected = net.eval().probabilities(image[None])[:, 0]
    net.train()
    plain = OverlayHandler(tmp_path, network=net).learner_probabilities(image)
    windows = OverlayHandler(tmp_path, network=net, inferer=SlidingWindowInferer((48, 40))).learner_probabilities(image)
    assert torch.allclose(plain, expected, atol=1e-6) and torch.allclose(windows, expected, atol=1e-6)
    assert net.training  # the mode is restored
