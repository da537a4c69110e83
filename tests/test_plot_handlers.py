"""TrainingCurvesHandler and OverlayHandler with MONAI's SupervisedTrainer / SupervisedEvaluator on tiny data."""

import csv
import math
import os

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointLoader, CheckpointSaver, MeanDice, ValidationHandler, from_engine
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import Activationsd, AsDiscreted, Compose

from qddens_monai.data.vessels import create_vessel_image_2d
from qddens_monai.handlers import IncrementalQuantizationHandler, LossPartsHandler
from qddens_monai.handlers.plots import OverlayHandler, TrainingCurvesHandler, learner_disagreement, max_disagreement
from qddens_monai.losses import EnsembleLoss
from qddens_monai.networks import QMENet

TINY = {"channels": (4, 8, 16, 16), "layers": (1, 1, 1, 1)}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine 2 threads spin-wait: up to 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_net(spatial_dims=2, in_channels=1, quantization="float", probe_size=32):
    return QMENet(spatial_dims, in_channels, 2, backbone_kwargs=TINY, quantization=quantization, probe_size=probe_size)


def make_data(n, in_channels=1, size=32, seed=0, names=True):
    """Fundus-like vessel images (RGB, or their green channel), as MetaTensors with file names when ``names``
    (plain tensors otherwise: MetaTensors make every op of a network slow, the bundle's training drops them)."""
    data = []
    for i in range(n):
        image, label, _ = create_vessel_image_2d(size, random_state=seed + i)
        img = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)
        img = img if in_channels == 3 else img[1:2]
        lab = torch.from_numpy(label > 0)[None].float()
        if names:
            img, lab = MetaTensor(img, meta={"filename_or_obj": f"/data/case_{seed + i:03d}.png"}), MetaTensor(lab)
        data.append({"image": img, "label": lab})
    return data


def make_run(
    tmp_path,
    max_epochs,
    in_channels=1,
    curves_first=True,
    ensemble=True,
    quantize=False,
    seed=0,
    overlay=True,
    n_train=2,
    n_val=2,
    **curves_kw,
):
    """A SupervisedTrainer (batch dict output) + SupervisedEvaluator run by a ValidationHandler every epoch.

    ``ensemble=False`` swaps the tiny QMENet / EnsembleLoss for a tinier UNet / DiceCELoss, for the
    tests of the history's mechanics (a CPU-fast run).
    """
    torch.manual_seed(seed)
    if ensemble:
        net = tiny_net(in_channels=in_channels, quantization="qdd_ens" if quantize else "float")
        loss = EnsembleLoss()
    else:
        net = UNet(2, in_channels, 2, channels=(4, 8), strides=(2,), num_res_units=0)
        loss = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    val_handlers = []
    if overlay:
        val_handlers.append(OverlayHandler(tmp_path / "overlays", network=net, num_images=2, epochs=[max_epochs]))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(make_data(n_val, in_channels, seed=100), batch_size=2, num_workers=0),
        network=net,
        postprocessing=Compose(
            [Activationsd("pred", softmax=True), AsDiscreted(["pred", "label"], argmax=[True, False], to_onehot=2)]
        ),
        key_val_metric={
            "val_mean_dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))
        },
        val_handlers=val_handlers,
    )
    curves = TrainingCurvesHandler(tmp_path, evaluator=evaluator, network=net, **curves_kw)
    validation = ValidationHandler(interval=1, validator=evaluator)
    handlers = [curves, validation] if curves_first else [validation, curves]
    if ensemble:  # the parts reach the curves through the trainer's output, as in the bundle
        handlers.append(LossPartsHandler(loss))
    if quantize:
        handlers.insert(
            0,
            IncrementalQuantizationHandler(
                net, fp_epochs=1, epochs_per_step=1, optimizer=optimizer, reset_lr=True, lr_decay=0.5
            ),
        )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=DataLoader(
            make_data(n_train, in_channels, names=False), batch_size=2, shuffle=False, num_workers=0
        ),
        network=net,
        optimizer=optimizer,
        loss_function=loss,
        decollate=False,
        train_handlers=handlers,
    )
    return trainer, evaluator, curves, net, optimizer


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def check_png(path, min_size=100):
    assert path.is_file(), path
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[0] >= min_size and img.shape[1] >= min_size
    assert img[..., :3].std() > 0.01  # not one colour
    return img


def test_curves_and_overlays_in_a_real_run(tmp_path):
    """Tiny quantized QMENet + EnsembleLoss; one quantization step after epoch 1."""
    trainer, evaluator, curves, net, _ = make_run(tmp_path, max_epochs=2, quantize=True)
    trainer.run()
    columns, rows = read_csv(tmp_path / "training_history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert columns[:2] == ["epoch", "loss"] and columns[-2:] == ["quant_step", "quant_total"]
    for col in ("loss/seg", "loss/seg/base_0", "loss/seg/meta", "loss/diversity", "val_mean_dice", "lr"):
        assert col in columns, col
    for r in rows:
        assert math.isfinite(float(r["loss"])) and 0.0 <= float(r["val_mean_dice"]) <= 1.0
    # the last epoch's metric is the evaluator's; the loss is the mean of the loss's "total" parts
    assert float(rows[-1]["val_mean_dice"]) == pytest.approx(evaluator.state.metrics["val_mean_dice"])
    assert float(rows[0]["loss"]) == pytest.approx(float(rows[0]["loss/total"]), rel=1e-5)
    # epoch 2 trained with the step taken after epoch 1, at the learning rate reset by the quantization handler
    assert [float(r["quant_step"]) for r in rows] == [0.0, 1.0]
    assert [float(r["lr"]) for r in rows] == [1e-2, 5e-3]
    assert [(e, s) for e, s, _ in curves.quantization_steps()] == [(2, 1)]
    curves_png = check_png(tmp_path / "training_curves.png", min_size=300)
    assert curves_png.shape[1] > curves_png.shape[0]  # 2 x 2 panels, wider than tall

    overlays = sorted((tmp_path / "overlays").glob("*.png"))
    assert [p.name for p in overlays] == [f"overlay_{i:02d}_case_{100 + i:03d}.png" for i in range(2)]
    for p in overlays:
        img = check_png(p)
        assert img.shape[1] > 3 * img.shape[0]  # 4 panels side by side
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "training_history.csv").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("curves_first", [True, False])
def test_validation_handler_before_or_after(tmp_path, curves_first):
    trainer, _, curves, _, _ = make_run(
        tmp_path, max_epochs=2, curves_first=curves_first, ensemble=False, overlay=False
    )
    writes = []
    original = curves._write
    curves._write = lambda figure=True: (writes.append(trainer.state.epoch), original(figure))
    trainer.run()
    columns, rows = read_csv(tmp_path / "training_history.csv")
    assert columns == ["epoch", "loss", "val_mean_dice", "lr"]
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(r["val_mean_dice"] for r in rows)
    assert writes == [1, 2]  # once per epoch, after the validation


def test_resume_continues_the_history(tmp_path):
    trainer, _, _, net, optimizer = make_run(tmp_path, max_epochs=2, ensemble=False, overlay=False)
    CheckpointSaver(
        str(tmp_path / "ckpt"),
        {"network": net, "optimizer": optimizer, "trainer": trainer},
        save_interval=1,
        n_saved=None,
        epoch_level=True,
    ).attach(trainer)
    trainer.run()
    _, first_rows = read_csv(tmp_path / "training_history.csv")
    assert len(first_rows) == 2
    # a stale row of a crashed longer run, to be dropped by a resume from epoch 1
    with open(tmp_path / "training_history.csv", "a", newline="") as f:
        csv.writer(f).writerow([5] + ["999"] * (len(first_rows[0]) - 1))

    resumed, _, _, rnet, ropt = make_run(tmp_path, max_epochs=3, ensemble=False, overlay=False, seed=123)
    # attached after the curves handler: it restores the epoch after the curves handler's STARTED
    CheckpointLoader(
        str(tmp_path / "ckpt" / "checkpoint_epoch=1.pt"), {"network": rnet, "optimizer": ropt, "trainer": resumed}
    ).attach(resumed)
    resumed.run()
    assert resumed.state.epoch == 3
    _, rows = read_csv(tmp_path / "training_history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert rows[0] == first_rows[0]  # the epoch before the checkpoint is kept as it was
    assert float(rows[1]["loss"]) == pytest.approx(float(first_rows[1]["loss"]), rel=1e-4)  # the same epoch again
    assert all(float(r["loss"]) < 100 for r in rows)
    check_png(tmp_path / "training_curves.png", min_size=300)

    # a new run (from epoch 0) in the same folder starts a new history
    fresh, _, _, _, _ = make_run(tmp_path, max_epochs=1, ensemble=False, overlay=False)
    fresh.run()
    _, rows = read_csv(tmp_path / "training_history.csv")
    assert [int(r["epoch"]) for r in rows] == [1]


def test_rgb_overlay_in_an_evaluator_with_sliding_window(tmp_path):
    torch.manual_seed(0)
    net = tiny_net(in_channels=3)
    net.train()
    inferer = SlidingWindowInferer(roi_size=32, sw_batch_size=2)
    handler = OverlayHandler(tmp_path, network=net, num_images=1, inferer=inferer)
    evaluator = SupervisedEvaluator(  # no post transforms: "pred" holds the raw logits
        device=torch.device("cpu"),
        val_data_loader=DataLoader(make_data(2, in_channels=3, size=32, seed=7), batch_size=2, num_workers=0),
        network=net,
        inferer=inferer,
        val_handlers=[handler],
    )
    evaluator.run()
    assert [p.name for p in handler.saved] == ["overlay_00_case_007.png"]  # num_images=1
    img = check_png(handler.saved[0])
    assert img.shape[1] > 3 * img.shape[0]
    assert net.training  # MONAI's evaluator and the handler both restore the mode


def test_overlay_restores_mode_and_omits_the_disagreement_without_probabilities(tmp_path):
    item = make_data(1, in_channels=3, size=32)[0]
    item["pred"] = item["label"].clone()
    net = tiny_net(in_channels=3)
    net.train()
    full = OverlayHandler(tmp_path, network=net, prefix="ens").save(item)
    assert net.training
    plain = OverlayHandler(tmp_path, network=UNet(2, 3, 2, channels=(4, 8), strides=(2,)), prefix="unet").save(item)
    w_full, w_plain = mpimg.imread(str(full)).shape[1], mpimg.imread(str(plain)).shape[1]
    assert w_plain < w_full  # 3 panels instead of 4
    nolabel = OverlayHandler(tmp_path, network=None, prefix="nolabel").save({"image": item["image"]})
    check_png(nolabel)
    # a label of another size (e.g. inverted to the original image space) is left out, not an error
    other = OverlayHandler(tmp_path, network=None, prefix="other").save({**item, "label": torch.zeros(1, 40, 40)})
    assert mpimg.imread(str(other)).shape[1] == mpimg.imread(str(nolabel)).shape[1]


def test_3d_overlay_with_and_without_inferer(tmp_path):
    torch.manual_seed(0)
    net = tiny_net(spatial_dims=3, probe_size=16)
    image = torch.rand(1, 16, 16, 12)
    label = torch.zeros(1, 16, 16, 12)
    label[:, 4:12, 5:11, 7] = 1  # the slice with the most label: 7
    label[:, 6:8, 6:8, 3] = 1
    item = {
        "image": MetaTensor(image, meta={"filename_or_obj": "vol.nii.gz"}),
        "label": label,
        "pred": torch.stack([1 - label[0], label[0]]),
    }
    handler = OverlayHandler(tmp_path, network=net, inferer=SlidingWindowInferer(roi_size=(16, 16, 12)))
    path = handler.save(item, index=0, epoch=3)
    assert path.name == "overlay_00_vol.png"
    check_png(path)
    direct = OverlayHandler(tmp_path, network=net).learner_probabilities(image)
    stitched = handler.learner_probabilities(image)
    assert direct.shape == stitched.shape == (4, 2, 16, 16, 12)
    torch.testing.assert_close(direct, stitched, atol=1e-5, rtol=1e-4)
    # the same volume through a smaller window: same shape, probabilities still in [0, 1] and summing to 1
    windowed = OverlayHandler(tmp_path, network=net, inferer=SlidingWindowInferer((16, 16, 8), 2, overlap=0.5))
    p = windowed.learner_probabilities(image)
    assert p.shape == direct.shape
    torch.testing.assert_close(p.sum(1), torch.ones(4, 16, 16, 12), atol=1e-5, rtol=1e-5)
    middle = OverlayHandler(tmp_path, network=None, slice_mode="middle", keep_epochs=True).save(item, index=1, epoch=3)
    assert middle.name == "overlay_epoch0003_01_vol.png"


def test_learner_disagreement_values():
    # 4 learners, 1 pixel: foreground probabilities 0, 0, 1, 1 -> 4 of 6 pairs disagree fully
    fg = torch.tensor([0.0, 0.0, 1.0, 1.0]).view(4, 1, 1)
    probs = torch.stack([1 - fg, fg], dim=1)  # (K, C=2, 1, 1)
    assert float(learner_disagreement(probs, "pairwise")) == pytest.approx(4 / 6)
    assert float(learner_disagreement(probs, "pairwise")) == pytest.approx(max_disagreement(4, "pairwise"))
    assert float(learner_disagreement(probs, "std")) == pytest.approx(0.5)
    assert float(learner_disagreement(probs, "variance")) == pytest.approx(0.25)
    same = torch.full((3, 1, 5, 5), 0.3)
    assert float(learner_disagreement(same).abs().max()) == 0.0
    with pytest.raises(ValueError):
        learner_disagreement(probs, "kl")


@pytest.mark.parametrize("output", ["meta", "mean"])
def test_overlay_without_pred_draws_the_ensembles_own_output(tmp_path, output):
    """Evaluation engines carry every learner's probabilities as ``pred`` (K * C channels): with ``pred_key=None``
    the overlay draws the network's configured output instead of an argmax over K * C channels."""
    net = QMENet(
        2,
        1,
        2,
        num_learners=3,
        backbone="unet",
        backbone_kwargs={"channels": (4, 8), "strides": (2,), "num_res_units": 0},
        quantization="float",
        output=output,
    )
    handler = OverlayHandler(tmp_path, network=net, pred_key=None)
    probs = torch.zeros(3, 2, 4, 4)
    probs[:, 0] = 1.0
    probs[-1, :, :2] = torch.tensor([0.0, 1.0])[:, None, None]  # the meta learner alone says class 1 in the top half
    drawn = handler.prediction(None, probs)
    expected = np.zeros((4, 4), dtype=drawn.dtype)
    if output == "meta":
        expected[:2] = 1  # the mean (1/3) stays background
    np.testing.assert_array_equal(drawn, expected)
    np.testing.assert_array_equal(handler.prediction(torch.ones(1, 4, 4), probs), np.ones((4, 4)))  # a given pred wins


def test_figure_interval_draws_less_often_but_always_at_the_end(tmp_path, monkeypatch):
    import qddens_monai.handlers.curves as curves_module

    drawn = []
    real = curves_module.save_figure
    monkeypatch.setattr(curves_module, "save_figure", lambda fig, path, dpi: (drawn.append(path), real(fig, path, dpi)))
    trainer, _, curves, _, _ = make_run(tmp_path, max_epochs=4, ensemble=False, overlay=False, figure_interval=3)
    trainer.run()
    _, rows = read_csv(tmp_path / "training_history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]  # the CSV every epoch
    assert len(drawn) == 2  # the PNG at epoch 3 and when training completed (epoch 4)
    check_png(tmp_path / "training_curves.png")
    with pytest.raises(ValueError, match="figure_interval"):
        TrainingCurvesHandler(tmp_path, figure_interval=0)
