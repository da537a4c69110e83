"""Transform builders: intensity normalization by modality, binary label maps to 0/1."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from qddens_monai.data import MODALITIES, intensity_normalization, label_transform


def run(transforms, **data):
    return Compose(transforms)({k: MetaTensor(torch.as_tensor(v, dtype=torch.float32)) for k, v in data.items()})


def test_ct_window():
    hu = np.array([[[-1000.0, -175.0, 37.5, 250.0, 3000.0]]])
    out = run(intensity_normalization("CT"), image=hu)["image"]
    np.testing.assert_allclose(out.numpy(), [[[0.0, 0.0, 0.5, 1.0, 1.0]]], atol=1e-6)
    out = run(intensity_normalization("ct", ct_window=(0, 100)), image=np.array([[[50.0]]]))["image"]
    assert float(out) == pytest.approx(0.5)


def test_mr_zscore_over_nonzero_voxels_per_channel():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 16, 16))
    image[0, 4:12, 4:12] = rng.normal(500, 50, (8, 8))
    image[1, 4:12, 4:12] = rng.normal(10, 2, (8, 8))
    out = run(intensity_normalization("MRI"), image=image)["image"].numpy()
    for c in range(2):
        inside = out[c, 4:12, 4:12]
        assert abs(inside.mean()) < 1e-4 and inside.std() == pytest.approx(1.0, abs=1e-3)
        assert np.all(out[c, :4] == 0)  # the background stays 0


def test_rgb_fixed_range_and_minmax():
    image = np.stack([np.full((4, 4), 100.0), np.full((4, 4), 50.0), np.linspace(20, 60, 16).reshape(4, 4)])
    fixed = run(intensity_normalization("rgb"), image=image)["image"].numpy()
    np.testing.assert_allclose(fixed, image / 255.0, atol=1e-6)  # each image keeps its brightness
    minmax = run(intensity_normalization("rgb_minmax"), image=image)["image"].numpy()
    assert minmax[2].min() == 0.0 and minmax[2].max() == pytest.approx(1.0)  # per channel
    assert intensity_normalization("none") == [] and set(MODALITIES) >= {"ct", "mr", "rgb", "none"}
    with pytest.raises(ValueError, match="Unknown modality 'pet'"):
        intensity_normalization("pet")


def test_label_transform_binary_and_multiclass():
    png_label = np.array([[[0.0, 255.0], [255.0, 0.0]]])
    nifti_label = np.array([[[0.0, 1.0], [1.0, 0.0]]])
    out = run(label_transform(["label", "mask"]), label=png_label, mask=nifti_label)
    assert torch.equal(out["label"], out["mask"]) and set(torch.unique(out["label"]).tolist()) == {0.0, 1.0}
    # optional FOV masks: missing keys are skipped only when asked
    run(label_transform("mask", allow_missing_keys=True), label=png_label)
    with pytest.raises(RuntimeError) as missing:  # MONAI's apply_transform wraps the transform's error
        run(label_transform("mask"), label=png_label)
    assert isinstance(missing.value.__cause__, KeyError)
    multi = np.array([[[0.0, 1.0, 2.0, 3.0]]])
    out = run(label_transform("label", num_classes=4), label=multi)["label"]
    assert out.dtype == torch.float32 and out.tolist() == multi.tolist()


@pytest.mark.parametrize("modality", ["ct", "MRI", "rgb", "rgb_minmax", "none"])
@pytest.mark.parametrize("num_classes", [2, 4])
def test_named_config_steps_equal_the_builders(modality, num_classes):
    from qddens_monai.data import ClassIndicesd, NormalizeModalityd

    rng = np.random.default_rng(1)
    image, label = rng.normal(100, 80, (2, 6, 5)), rng.integers(0, num_classes, (1, 6, 5)).astype(float)
    if num_classes == 2:
        label *= 255.0  # a 0/255 PNG label
    built = label_transform("label", num_classes=num_classes) + intensity_normalization(modality)
    named = [ClassIndicesd("label", num_classes=num_classes), NormalizeModalityd("image", modality)]
    built, named = run(built, image=image, label=label), run(named, image=image, label=label)
    for key in ("image", "label"):
        assert named[key].dtype == built[key].dtype and torch.equal(named[key], built[key]), key
    with pytest.raises(ValueError, match="Unknown modality 'pet'"):
        NormalizeModalityd("image", "pet")
    run([ClassIndicesd("mask", allow_missing_keys=True)], label=label)  # an optional FOV mask
