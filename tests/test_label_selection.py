"""Suggestive-annotation math, the ensemble scorer and the label-ready bundle (no MONAI Label needed)."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from qddens_monai.data import write_dicom_series
from qddens_monai.label import (
    EnsembleScorer,
    convert_dicom_studies,
    image_uncertainty,
    prepare_label_bundle,
    representativeness,
    suggest,
    voxel_disagreement,
)
from qddens_monai.label.descriptors import DescriptorStore
from qddens_monai.label.selection import SuggestiveConfig, defined_descriptor, select_batch
from qddens_monai.label.server import parse_overrides


def test_voxel_disagreement_variance_and_entropy():
    agree = torch.tensor([[0.9, 0.1]] * 3)[..., None]  # (K=3, C=2, S=1): all members say 0.9 / 0.1
    split = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])[..., None]
    assert voxel_disagreement(agree, "variance").item() == pytest.approx(0.0, abs=1e-7)
    # variance of (1, 0, 1) is 2/9 per class, two classes
    assert voxel_disagreement(split, "variance").item() == pytest.approx(4 / 9)
    p = 2 / 3  # mean of the members: (2/3, 1/3)
    assert voxel_disagreement(split, "entropy").item() == pytest.approx(-(p * np.log(p) + (1 - p) * np.log(1 - p)))
    both = torch.cat([agree, split], dim=-1)  # two voxels: the image's uncertainty is their mean
    assert image_uncertainty(both) == pytest.approx(2 / 9)
    with pytest.raises(ValueError, match="kind"):
        voxel_disagreement(split, "std")


def test_suggest_is_top_n_then_greedy_max_cover():
    # Pool: three near-identical images (a cluster), one orthogonal outlier, one off the cluster (cos 0.6).
    d = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.05, 0.0], [0.98, 0.0, 0.05], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]])
    u = [0.1, 0.2, 0.3, 0.9, 0.05]
    # Whole pool as short list: image 2 covers the cluster (3 images at ~1) best; F({2}) is the largest.
    f = [representativeness(d[i : i + 1], d) for i in range(5)]
    assert suggest(u, d, top_n=5, k=1) == [int(np.argmax(f))] == [2]
    # Short list of the 2 most uncertain (3 and 2): the cluster member still beats the outlier.
    assert suggest(u, d, top_n=2, k=1) == [2]
    # Short list of 1: uncertainty alone.
    assert suggest(u, d, top_n=1, k=1) == [3]
    # Greedy: after the cluster, the outlier adds the most cover.
    assert suggest(u, d, top_n=5, k=2) == [2, 3]
    # Labeled images covering the cluster already: the outlier region is what is left to cover.
    assert suggest(u, d, top_n=5, k=1, covered=d[:1]) == [3]
    with pytest.raises(ValueError, match="descriptors"):
        suggest(u, d[:3])


def test_suggestive_config_defaults_conf_and_requests():
    c = SuggestiveConfig()
    assert (c.batch_size, c.top_n, c.disagreement, c.representativeness, c.quantized_scorers, c.cover_labeled) == (
        1,
        4,
        "variance",
        True,
        True,
        False,
    )
    conf = SuggestiveConfig.from_conf(
        {
            "batch_size": "3",
            "representativeness": "false",
            "disagreement": "entropy",
            "quantized_scorers": "false",
            "models": "qddens",
        }
    )
    assert (conf.batch_size, conf.representativeness, conf.disagreement, conf.quantized_scorers) == (
        3,
        False,
        "entropy",
        False,
    )
    # a request changes the per-request keys only, never the scorers
    req = conf.with_request(
        {
            "batch_size": 2,
            "top_n": "8",
            "representativeness": True,
            "quantized_scorers": True,
            "disagreement": "variance",
        }
    )
    assert (req.batch_size, req.top_n, req.representativeness, req.quantized_scorers, req.disagreement) == (
        2,
        8,
        True,
        False,
        "entropy",
    )
    with pytest.raises(ValueError, match="true or false"):
        SuggestiveConfig.from_conf({"representativeness": "maybe"})
    with pytest.raises(ValueError, match="disagreement"):
        SuggestiveConfig.from_conf({"disagreement": "std"})
    with pytest.raises(ValueError, match="positive"):
        SuggestiveConfig(batch_size=0)


def test_select_batch_with_and_without_representativeness():
    d = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.05, 0.0], [0.98, 0.0, 0.05], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]])
    u = [0.1, 0.2, 0.3, 0.9, 0.05]
    # uncertainty only: the N most uncertain, the cluster's two members included
    assert select_batch(u, None, SuggestiveConfig(batch_size=3, representativeness=False)) == [3, 2, 1]
    # representativeness: one of the cluster, then the outlier, then the off-cluster image
    cfg = SuggestiveConfig(batch_size=3, top_n=5)
    assert select_batch(u, d, cfg) == suggest(u, d, 5, 3) and select_batch(u, d, cfg)[:2] == [2, 3]
    # the short list is at least the batch
    assert len(select_batch(u, d, SuggestiveConfig(batch_size=3, top_n=1))) == 3
    # cover_labeled: the labeled cluster member counts as covering
    covered = SuggestiveConfig(batch_size=1, top_n=5, cover_labeled=True)
    assert select_batch(u, d, covered, d[:1]) == [3] and select_batch(u, d, SuggestiveConfig(top_n=5), d[:1]) == [2]
    with pytest.raises(ValueError, match="descriptors"):
        select_batch(u, None, cfg)


def test_defined_descriptor_of_constant_images():
    a = defined_descriptor(torch.tensor([0.5, 0.2, 0.0]))
    assert a.tolist() == pytest.approx([0.5, 0.2, 0.0, 0.0])  # ordinary features: unchanged, flag 0
    z1, z2 = defined_descriptor(torch.zeros(3)), defined_descriptor(torch.full((3,), 1e-6))
    assert z1.tolist() == z2.tolist() == [0.0, 0.0, 0.0, 1.0]
    sim = torch.nn.functional.cosine_similarity
    assert float(sim(z1, z2, dim=0)) == 1.0 and float(sim(z1, a, dim=0)) == 0.0
    # two constant images cover each other: a pool of them is covered by one
    d = torch.stack([z1, z2, a])
    assert representativeness(d[:1], d) == pytest.approx(2.0)


def test_descriptor_store(tmp_path):
    store = DescriptorStore(tmp_path / "descriptors")
    assert store.get("img/1", "m1", "variance") is None
    store.put("img/1", "m1", "variance", [0.5, 1.0])
    assert store.get("img/1", "m1", "variance") == [0.5, 1.0]
    assert store.get("img/1", "m2", "variance") is None and store.get("img/1", "m1", "entropy") is None
    assert DescriptorStore(tmp_path / "descriptors").get("img/1", "m1", "variance") == [0.5, 1.0]  # from disk
    assert [p.suffix for p in (tmp_path / "descriptors").iterdir()] == [".json"]
    store.path("img/2").write_text("not json")
    assert store.get("img/2", "m1", "variance") is None


def _volume(seed, size=32):
    from monai.data.synthetic import create_test_image_3d

    image, _ = create_test_image_3d(
        size, size, size, num_objs=4, rad_max=8, noise_max=0.05, random_state=np.random.RandomState(seed)
    )
    return image.astype(np.float32)


def test_label_bundle_and_scorer(tmp_path):
    bundle = prepare_label_bundle(tmp_path / "b", 3, {"roi_size": [32, 32, 32]})
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["spatial_shape"] == [32, 32, 32] and image["num_channels"] == 1
    infer = json.loads((bundle / "configs" / "inference.json").read_text())
    assert infer["spatial_dims"] == 3 and infer["roi_size"] == [32, 32, 32]  # 3d.json merged in: one file
    weights = (bundle / "models" / "model.pt").read_bytes()
    prepare_label_bundle(tmp_path / "b", 3, {"roi_size": [32, 32, 32]})  # a restart keeps the weights
    assert (bundle / "models" / "model.pt").read_bytes() == weights
    with pytest.raises(ValueError, match="does not fit"):  # 2D settings on 3D weights: refused, file kept
        prepare_label_bundle(tmp_path / "b", 2)
    assert (bundle / "models" / "model.pt").read_bytes() == weights

    nib.save(nib.Nifti1Image(_volume(1), np.diag([1.5, 1.5, 2.0, 1.0])), str(tmp_path / "a.nii.gz"))
    scorer = EnsembleScorer(bundle)
    probs, descriptor = scorer.members(tmp_path / "a.nii.gz")
    assert probs.shape == (2, 2, 32, 32, 32)  # the bundle's K = 2 learners (one base, the meta)
    assert torch.allclose(probs.sum(1), torch.ones(()), atol=1e-5)
    # the base learner's 32 channels of the deepest encoder level (UNet 8..64: 64 is the bottleneck),
    # and the constant-image flag, 0 here
    assert descriptor.shape == (32 + 1,) and descriptor[-1] == 0 and descriptor[:-1].abs().max() > 1e-3
    score = scorer(tmp_path / "a.nii.gz")
    assert score["uncertainty"] == pytest.approx(image_uncertainty(probs)) and score["uncertainty"] > 0
    # A binary mask is all zeros after z-scoring, as an empty volume is: both get the same defined
    # descriptor (the network's response to a zero input here: the batch-normalized layers keep it
    # non-zero; were it all zeros, the constant-image flag alone), never a zero vector.
    mask = (_volume(2) > 0.5).astype(np.float32)
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "mask.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros_like(mask), np.eye(4)), str(tmp_path / "empty.nii.gz"))
    _, constant = scorer.members(tmp_path / "mask.nii.gz")
    _, empty = scorer.members(tmp_path / "empty.nii.gz")
    assert torch.allclose(constant, empty) and bool(torch.isfinite(constant).all()) and float(constant.norm()) > 0
    assert float(torch.nn.functional.cosine_similarity(constant, empty, dim=0)) == pytest.approx(1.0)


def test_dicom_studies_become_nifti_with_their_geometry(tmp_path):
    from monai.transforms import LoadImage

    volume = _volume(2)[:, :30, :28] * 1000.0
    write_dicom_series(volume, spacing=(1.5, 1.5, 2.0), out_dir=str(tmp_path / "ct_series"))
    assert convert_dicom_studies(tmp_path) == [tmp_path / "ct_series.nii.gz"]
    assert convert_dicom_studies(tmp_path) == []  # converted once
    nifti = nib.load(str(tmp_path / "ct_series.nii.gz"))
    series = LoadImage(image_only=True)(str(tmp_path / "ct_series"))
    assert nifti.shape == tuple(series.shape) == volume.shape
    assert np.allclose(nifti.affine, series.affine.numpy(), atol=1e-4)


def test_parse_overrides():
    assert parse_overrides(["roi_size=[32,32,32]", "modality=ct"]) == {"roi_size": [32, 32, 32], "modality": "ct"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["roi_size"])
