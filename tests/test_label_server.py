"""MONAI Label with the bundle: real servers on 127.0.0.1, started and stopped here (needs the label extra).

The project's app (``python -m qddens_monai label-server``) serves a pool of 32^3 studies:

- ``lab``: a sphere volume, labeled through the datastore API before the strategies run;
- ``dup``: ``lab`` plus faint noise, a near-duplicate of a labeled image;
- ``s0`` .. ``s3`` and ``ct_series``: five scans of one other sphere volume, each with its own faint
  noise (the bulk of the unlabeled pool: one kind of anatomy scanned five times); ``ct_series`` is a
  DICOM series folder (converted to ``ct_series.nii.gz`` by the app);
- ``ood``: a smooth wave pattern, out of distribution.

No 3D weights ship, so the ensemble is untrained: the tests check the method's construction on the
scores the server stores, not a learned effect (e.g. that ``ood`` is the most uncertain).
"""

import hashlib
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from qddens_monai.label.compat import monailabel_available

if not monailabel_available():
    if os.environ.get("CI"):
        raise RuntimeError("CI: MONAI Label is not installed; the CI installs it (see .ci/run).")
    pytest.skip("MONAI Label is not installed (pip install the label extra, see README)", allow_module_level=True)

import httpx  # noqa: E402  (label extra)

from qddens_monai.data import write_dicom_series  # noqa: E402
from qddens_monai.label.descriptors import DescriptorStore  # noqa: E402
from qddens_monai.label.selection import SuggestiveConfig, select_batch  # noqa: E402
from qddens_monai.label.server import LabelServerProcess  # noqa: E402

# subprocess / bundle / server / venv runs: deselect with -m 'not slow' for the edit-test loop
pytestmark = pytest.mark.slow

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
POOL = ["dup", "s0", "s1", "s2", "s3", "ood", "ct_series"]  # unlabeled after `lab` is labeled
START_TIMEOUT = 120


def _spheres(seed):
    from monai.data.synthetic import create_test_image_3d

    image, label = create_test_image_3d(
        32, 32, 32, num_objs=4, rad_max=8, noise_max=0.05, random_state=np.random.RandomState(seed)
    )
    return image.astype(np.float32), (label > 0).astype(np.uint8)


def _noise(seed, std):
    return np.random.RandomState(seed).normal(0, std, (32, 32, 32)).astype(np.float32)


def _write_studies(root: Path):
    root.mkdir()
    image, label = _spheres(100)
    nib.save(nib.Nifti1Image(image, AFFINE), str(root / "lab.nii.gz"))
    nib.save(nib.Nifti1Image(image + _noise(1, 0.005), AFFINE), str(root / "dup.nii.gz"))
    scan = _spheres(0)[0]
    for i in range(4):
        nib.save(nib.Nifti1Image(scan + _noise(10 + i, 0.02), AFFINE), str(root / f"s{i}.nii.gz"))
    x, y, z = np.meshgrid(*[np.arange(32.0)] * 3, indexing="ij")
    wave = (0.5 + 0.5 * np.sin(x / 1.5) * np.cos(y / 2.5) * np.sin(z / 3.5)).astype(np.float32)
    nib.save(nib.Nifti1Image(wave, AFFINE), str(root / "ood.nii.gz"))
    series = (scan + _noise(20, 0.02)) * 1000.0
    write_dicom_series(series, spacing=(1.5, 1.5, 2.0), out_dir=str(root / "ct_series"))
    return label


class Server(LabelServerProcess):
    """The label server in a subprocess (bounded start-up wait) with an HTTP client and helpers."""

    def __init__(self, tmp: Path, studies: Path, *extra: str):
        super().__init__(
            studies,
            tmp / "app",
            ["--override", "roi_size=[32,32,32]", *extra],
            log=tmp / "server.log",
            timeout=START_TIMEOUT,
        )
        self.app = self.app_dir
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def stop(self):
        if hasattr(self, "client"):
            self.client.close()
        super().stop()

    def infer(self, model, image, out: Path):
        r = self.client.post(f"/infer/{model}", params={"image": image, "output": "image"}, json={"device": "cpu"})
        assert r.status_code == 200, r.text
        out.write_bytes(r.content)
        return nib.load(str(out))

    def next(self, strategy, **request):
        # wait_for_scores: rank by the current model's scores of the whole pool, not the ones the
        # background scoring has stored so far
        r = self.client.post(f"/activelearning/{strategy}", json={"device": "cpu", "wait_for_scores": True, **request})
        assert r.status_code == 200, r.text
        assert "descriptor" not in r.text  # the reply carries the image info, but no descriptor dump
        return r.json()

    def scores(self, images):
        """The stored scores: image info (no descriptor) plus the descriptor kept beside the bundle."""
        store = DescriptorStore(self.app / "model" / "qddens" / "descriptors")
        out = {}
        for image in images:
            r = self.client.get("/datastore/image/info", params={"image": image})
            assert r.status_code == 200, r.text
            info = r.json()["qdd_ens"]
            assert "descriptor" not in info
            descriptor = store.get(image, info["model"], info["kind"])
            assert descriptor, image
            out[image] = {**info, "descriptor": descriptor}
        return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("label")
    label = _write_studies(tmp / "studies")
    nib.save(nib.Nifti1Image(label, AFFINE), str(tmp / "lab_label.nii.gz"))
    srv = Server(tmp, tmp / "studies")
    try:
        # The annotator saves a label for `lab`: from now on `dup` is a near-duplicate of a labeled image.
        with open(tmp / "lab_label.nii.gz", "rb") as f:
            r = srv.client.put("/datastore/label", params={"image": "lab", "tag": "final"}, files={"label": f})
        assert r.status_code == 200, r.text
        yield srv, tmp
    finally:
        srv.stop()


def test_info_lists_model_strategies_and_scoring(server):
    srv, _ = server
    info = srv.client.get("/info/").json()
    assert {"qddens", "qddens_disagreement"} <= set(info["models"])
    assert info["models"]["qddens"]["dimension"] == 3 and info["labels"] == ["foreground"]
    assert "qddens" in info["trainers"]
    assert info["trainers"]["qddens"]["config"]["max_epochs"] == 100  # the bundle's 60 + 4 x 10 schedule
    assert {"suggestive", "uncertainty", "random", "first"} <= set(info["strategies"])
    assert "qdd_ens" in info["scoring"]
    images = srv.client.get("/datastore/", params={"output": "all"}).json()["objects"]
    assert set(images) == {"lab", *POOL}  # the DICOM series is a study like the NIfTI files


def test_infer_nifti_keeps_shape_and_affine_and_disagreement_map(server):
    srv, tmp = server
    study = nib.load(str(tmp / "studies" / "s0.nii.gz"))
    pred = srv.infer("qddens", "s0", tmp / "s0_pred.nii.gz")
    assert pred.shape == study.shape
    assert np.allclose(pred.affine, study.affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
    dis = srv.infer("qddens_disagreement", "s0", tmp / "s0_dis.nii.gz")
    values = np.asarray(dis.dataobj)
    assert dis.shape == study.shape and np.allclose(dis.affine, study.affine, atol=1e-4)
    assert values.dtype == np.float32 and values.min() >= 0 and values.max() > 0  # untrained members disagree


def test_infer_dicom_series(server):
    from monai.transforms import LoadImage

    srv, tmp = server
    series = LoadImage(image_only=True)(str(tmp / "studies" / "ct_series"))
    pred = srv.infer("qddens", "ct_series", tmp / "ct_pred.nii.gz")
    assert pred.shape == tuple(series.shape)
    assert np.allclose(pred.affine, series.affine.numpy(), atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}


def _cosines(scores, names):
    d = torch.nn.functional.normalize(
        torch.tensor([scores[n]["descriptor"] for n in names], dtype=torch.float64), dim=1
    )
    return d @ d.T


def test_strategies_follow_the_method(server):
    srv, _ = server
    # uncertainty: the unlabeled image with the largest stored member disagreement
    picked = srv.next("uncertainty")["id"]
    scores = srv.scores(POOL)
    assert picked == max(POOL, key=lambda n: scores[n]["uncertainty"])
    assert picked != "lab"  # labeled images are never suggested

    # With cover_labeled the labeled images are scored too; ask for that pick first, check it below.
    pick_covered = srv.next("suggestive", top_n=len(POOL), cover_labeled=True)["id"]
    labeled = srv.scores(["lab"])
    sim = _cosines({**scores, **labeled}, POOL + ["lab"])
    assert sim[POOL.index("dup"), -1] > 0.99  # dup really is a near-duplicate of the labeled image
    coverage = sim[:-1, :-1].sum(1)  # F({i}) over the unlabeled pool
    # The four noisy scans of one volume resemble each other more than the out-of-distribution volume resembles
    # any of them. (The untrained network's descriptors are all alike, cosines above 0.99, so how badly `ood`
    # covers the pool is not something its scores can show.)
    scans = [POOL.index(n) for n in ("s0", "s1", "s2", "s3")]
    assert sim[scans][:, scans].min() > sim[POOL.index("ood"), scans].max()

    # Whole pool as short list: the pick is the image of largest F({i}) = summed cosine, which is one
    # of the five scans of the same anatomy (it represents five images), never `ood`.
    pick = srv.next("suggestive", top_n=len(POOL))["id"]
    assert pick == POOL[int(coverage.argmax())]
    assert pick in {"s0", "s1", "s2", "s3", "ct_series"}

    # Default short list (top 4 uncertain): the most representative of those four.
    top4 = sorted(POOL, key=lambda n: -scores[n]["uncertainty"])[:4]
    pick = srv.next("suggestive")["id"]
    assert pick == max(top4, key=lambda n: float(coverage[POOL.index(n)]))

    # cover_labeled: the labeled image already covers its near-duplicate's neighbourhood, so the pick
    # maximizes sum_x max(cos(lab, x), cos(i, x)) and the near-duplicate gains least of the spheres.
    cover = sim[-1, :-1].clamp_min(0)
    gain = torch.maximum(sim[:-1, :-1], cover).sum(1) - cover.sum()
    assert pick_covered == POOL[int(gain.argmax())] and pick_covered != "dup"


def test_strategy_config_batch_and_representativeness(server):
    srv, _ = server
    info = srv.client.get("/info/").json()
    assert info["suggestive_annotation"] == SuggestiveConfig().as_dict()  # the documented defaults
    assert info["strategies"]["suggestive"]["config"]["top_n"] == 4
    scores = srv.scores(POOL)
    unc = [scores[n]["uncertainty"] for n in POOL]
    desc = torch.tensor([scores[n]["descriptor"] for n in POOL])
    # a batch of 3: the label app's select_batch on the stored scores; id is its first image
    reply = srv.next("suggestive", batch_size=3, top_n=len(POOL))
    expected = [POOL[i] for i in select_batch(unc, desc, SuggestiveConfig(batch_size=3, top_n=len(POOL)))]
    assert reply["batch"] == expected and reply["id"] == expected[0] and len(set(expected)) == 3
    assert reply["config"]["batch_size"] == 3
    assert reply["batch_uncertainty"] == [scores[n]["uncertainty"] for n in expected]
    # representativeness off: the most uncertain, as the uncertainty strategy answers
    top = sorted(POOL, key=lambda n: -scores[n]["uncertainty"])[:2]
    assert srv.next("suggestive", batch_size=2, representativeness=False)["batch"] == top
    assert srv.next("uncertainty", batch_size=2)["batch"] == top


def test_label_then_train_updates_model(server):
    srv, _ = server
    model = srv.app / "model" / "qddens" / "models" / "model.pt"
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    r = srv.client.post("/train/qddens", json={"max_epochs": 1, "device": "cpu", "multi_gpu": False, "val_split": 0.2})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 240
    while True:
        task = srv.client.get("/train/", params={"check_if_running": "false"}).json()
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        assert time.monotonic() < deadline, f"training still {task.get('status')} after 240 s"
        time.sleep(2)
    assert task["status"] == "DONE", task.get("details")
    assert hashlib.sha256(model.read_bytes()).hexdigest() != before
    stats = srv.client.get("/info/").json()["train_stats"]["qddens"]
    assert stats["epoch"] == 1 and "total_time" in stats  # MONAI Label's train stats of the run
    # The server keeps serving, with the new weights.
    assert srv.next("uncertainty")["id"] in POOL


def test_stock_monaibundle_app(tmp_path):
    """MONAI Label's own monaibundle sample app, unchanged, on the label-ready bundle: /info and one infer."""
    studies = tmp_path / "studies"
    studies.mkdir()
    image, _ = _spheres(3)
    nib.save(nib.Nifti1Image(image, AFFINE), str(studies / "a.nii.gz"))
    srv = Server(tmp_path, studies, "--stock-app")
    try:
        info = srv.client.get("/info/").json()
        assert "qddens" in info["models"] and "qddens" in info["trainers"]
        assert set(info["strategies"]) == {"random", "first"}
        pred = srv.infer("qddens", "a", tmp_path / "a_pred.nii.gz")
        assert pred.shape == image.shape and np.allclose(pred.affine, AFFINE, atol=1e-4)
    finally:
        srv.stop()


def test_2d_png_study_label_and_disagreement(tmp_path):
    """The 2D bundle (shipped weights) through the app's infer tasks in-process: a PNG study gets a
    uint8 PNG label of its own size (MONAI Label's stock task writes float32, which PNG cannot hold,
    and keeps a channel in 2D), and a float NIfTI disagreement map."""
    from PIL import Image

    from qddens_monai.data import write_demo_2d
    from qddens_monai.label.app import DisagreementInferTask, LabelInferTask
    from qddens_monai.label.bundle import prepare_label_bundle

    bundle = str(prepare_label_bundle(tmp_path / "qddens", 2))
    write_demo_2d(tmp_path / "demo", num_train=0, num_test=1, size=(48, 64), seed=1)
    study = str(tmp_path / "demo" / "imagesTs" / "vessel_test_000.png")
    label_file, _ = LabelInferTask(bundle, {})({"image": study, "device": "cpu"})
    label = np.array(Image.open(label_file))
    assert label.shape == (48, 64) and label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}
    dis_file, _ = DisagreementInferTask(bundle, {})({"image": study, "device": "cpu"})
    dis = nib.load(dis_file)
    assert dis_file.endswith(".nii.gz") and dis.shape == (64, 48)  # MONAI's (W, H) for a PNG
    assert np.asarray(dis.dataobj).dtype == np.float32 and float(np.asarray(dis.dataobj).max()) > 0
