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
    f = [representativeness(d[i:i + 1], d) for i in range(5)]
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


def _volume(seed, size=32):
    from monai.data.synthetic import create_test_image_3d

    image, _ = create_test_image_3d(size, size, size, num_objs=4, rad_max=8, noise_max=0.05,
                                    random_state=np.random.RandomState(seed))
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
    assert probs.shape == (4, 2, 32, 32, 32)
    assert torch.allclose(probs.sum(1), torch.ones(()), atol=1e-5)
    # 3 base learners x 32 channels of the deepest encoder level (UNet learners 8..64: 64 is the bottleneck)
    assert descriptor.shape == (3 * 32,)
    score = scorer(tmp_path / "a.nii.gz")
    assert score["uncertainty"] == pytest.approx(image_uncertainty(probs)) and score["uncertainty"] > 0


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
