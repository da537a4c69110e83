"""The label server at its edges: real servers on 127.0.0.1 driven by MONAI Label's own client.

The pool mixes good 32^3 volumes with files nobody here wrote: nibabel's ``example4d.nii.gz`` (4D)
and ``resampled_anat_moved.nii`` (NaN voxels), pydicom's one-slice ``MR_small.dcm`` / ``CT_small.dcm``
(each a series folder) and its ``dicomdirtests/77654033/CT2`` series (a 202 mm slice gap), plus a
generated two-channel volume. Each call is checked for its status code and that its message names
the problem; nothing may be written outside the studies folder.
"""

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qddens_monai.label.compat import monailabel_available

if not monailabel_available():
    if os.environ.get("CI"):
        raise RuntimeError("CI: MONAI Label is not installed; the CI installs it (see .ci/run).")
    pytest.skip("MONAI Label is not installed (pip install the label extra, see README)", allow_module_level=True)

import requests  # noqa: E402  (label extra)

from qddens_monai.label.compat import import_monailabel  # noqa: E402
from qddens_monai.label.server import LabelServerProcess  # noqa: E402

import_monailabel()
from monailabel.client import MONAILabelClient  # noqa: E402

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
GOOD = ["good0", "good1", "good2"]
BAD = {  # study id -> words its refusal must contain
    "example4d": "channels",
    "nan_anat": "NaN",
    "mr_small": "spatial dimensions",
    "ct_small": "spatial dimensions",
    "ct2_gap": "unevenly spaced",
    "two_channel": "channels",
}
SERVER_ARGS = ["--override", "roi_size=[32,32,32]"]


def _status(fn, *args, **kwargs):
    """(HTTP status, response text or value) of a MONAILabelClient call (it raises on non-200)."""
    try:
        return 200, fn(*args, **kwargs)
    except Exception as e:  # MONAILabelClientException: "Status: 404; Response: {...}"
        m = re.search(r"Status: (\d+); Response: (.*)", str(getattr(e, "msg", e)), re.S)
        assert m, f"not an HTTP error: {e!r}"
        return int(m.group(1)), m.group(2)


def _write_studies(root: Path) -> None:
    import pydicom.data

    root.mkdir(parents=True)
    rs = np.random.RandomState(0)
    for name in GOOD:
        nib.save(nib.Nifti1Image(rs.rand(32, 32, 32).astype(np.float32), AFFINE), str(root / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(rs.rand(32, 32, 32, 2).astype(np.float32), AFFINE), str(root / "two_channel.nii.gz"))
    nib_data = Path(nib.__file__).parent / "tests" / "data"
    shutil.copy(nib_data / "example4d.nii.gz", root / "example4d.nii.gz")
    shutil.copy(nib_data / "resampled_anat_moved.nii", root / "nan_anat.nii")
    for name in ("MR_small", "CT_small"):
        (root / name.lower()).mkdir()
        shutil.copy(pydicom.data.get_testdata_file(f"{name}.dcm"), root / name.lower())
    gap = Path(pydicom.data.get_testdata_file("dicomdirtests/77654033/CT2/17136")).parent
    shutil.copytree(gap, root / "ct2_gap")


def _tree(path: Path) -> set:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    _write_studies(tmp / "studies")
    srv = LabelServerProcess(tmp / "studies", tmp / "app", SERVER_ARGS, log=tmp / "server.log", timeout=180)
    try:
        yield srv, MONAILabelClient(srv.url, tmpdir=str(tmp / "client")), tmp
    finally:
        srv.stop()


def _wait_until_scored(client, timeout: float = 180.0) -> None:
    """Until the server's background scoring round is over: it writes descriptors into the app folder itself."""
    deadline = time.monotonic() + timeout
    while True:  # a round that has not started yet reports running False too: wait for every good study scored
        progress = client.info()["scoring_progress"]
        if not progress["running"] and progress["done"] == progress["total"] >= len(GOOD):
            return
        assert time.monotonic() < deadline, f"background scoring not finished after {timeout:.0f} s: {progress}"
        time.sleep(1)


def _label(path: Path, data=None, affine=AFFINE, raw=None) -> str:
    if raw is not None:
        path.write_bytes(raw)
    else:
        nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


@pytest.mark.slow
def test_ids_and_tags_confined(server):
    srv, client, tmp = server
    outside = tmp / "outside"
    outside.mkdir()
    label = _label(tmp / "ok_label.nii.gz", (np.random.rand(32, 32, 32) > 0.5).astype(np.uint8))
    _wait_until_scored(client)  # the server's own descriptor files are not what this test is about
    before_tmp, before_app = _tree(tmp), _tree(tmp / "app")
    calls = {
        "tag ../": (client.save_label, "good0", label, "../../x"),
        "tag absolute": (client.save_label, "good0", label, str(outside)),
        "tag with separator": (client.save_label, "good0", label, "a/b"),
        "image ../": (client.save_label, "../good0", label),
        "upload id ../": (client.upload_image, label, "../x"),
        "upload id absolute": (client.upload_image, label, str(outside / "x")),
        "upload id into the app": (client.upload_image, label, "../app/model/qddens/configs/train"),
        "infer on an absolute path": (client.infer, "qddens", str(tmp / "studies" / "good0.nii.gz"), {}),
        "infer on a ../ path": (client.infer, "qddens", "../studies/good0.nii.gz", {}),
    }
    for name, (fn, *args) in calls.items():
        status, text = _status(fn, *args)
        assert status == 400, (name, status, text)
        assert "tag" in text or "id" in text, (name, text)
    assert _tree(outside) == set() and _tree(tmp / "app") == before_app
    new = _tree(tmp) - before_tmp
    assert all(p.startswith(("studies/labels", "studies/.", "client")) or p == "client" for p in new), new
    assert not list((tmp / "studies").glob("x*"))
    # The bundle is read-only through the API.
    r = requests.put(f"{srv.url}/model/qddens", files={"file": ("model.pt", b"not weights")})
    assert r.status_code == 403 and "read-only" in r.json()["detail"]


@pytest.mark.slow
def test_unknown_names_answer_404(server):
    srv, client, _ = server
    for fn, args, words in [
        (client.infer, ("nosuch_model", "good0", {}), "model"),
        (client.infer, ("qddens", "nosuch_image", {}), "not in the datastore"),
        (client.next_sample, ("nosuch_strategy", {}), "strategy"),
        (client.train_start, ("nosuch_model", {}), "trainer"),
    ]:
        status, text = _status(fn, *args)
        assert status == 404 and words in text, (fn.__name__, status, text)


@pytest.mark.slow
def test_bad_studies_listed_skipped_and_refused(server):
    srv, client, tmp = server
    info = client.info()
    assert info["models"]["qddens_disagreement"]["type"] == "others"  # a float map, not a segmentation
    assert info["models"]["qddens_disagreement"]["labels"] == {}
    refused = info["refused_studies"]
    for study, words in BAD.items():
        reason = next((v for k, v in refused.items() if k.startswith(study)), None)
        assert reason and words in reason, (study, refused)
    # every strategy answers, and never with a study the model cannot run on
    for strategy in ("uncertainty", "suggestive"):  # while the pool is scored in the background
        status, pick = _status(client.next_sample, strategy, {"device": "cpu"})
        assert status == 200 and pick.get("id", GOOD[0]) in GOOD, (strategy, pick)
    for strategy in ("random", "first", "uncertainty", "suggestive"):
        status, pick = _status(client.next_sample, strategy, {"device": "cpu", "wait_for_scores": True})
        assert status == 200 and pick["id"] in GOOD, (strategy, pick)
    for study, words in BAD.items():
        status, text = _status(client.infer, "qddens", study, {"device": "cpu"})
        assert status == 422 and words in text, (study, status, text)
    # the datastore listing and image info keep working; no NaN reaches datastore_v2.json
    listing = client.datastore()
    assert set(GOOD) <= set(listing["objects"])
    info = requests.get(f"{srv.url}/datastore/image/info", params={"image": "nan_anat"}).json()
    assert "NaN" in info["problem"]
    r = requests.put(
        f"{srv.url}/datastore/image/info", params={"image": "good0"}, data={"info": '{"x": NaN, "y": [Infinity]}'}
    )
    assert r.status_code == 200, r.text
    assert client.datastore()["objects"]["good0"]["image"]["info"]["x"] is None

    def no_constants(name):
        raise AssertionError(f"datastore_v2.json holds {name}")

    json.loads((tmp / "studies" / "datastore_v2.json").read_text(), parse_constant=no_constants)
    # a bad study uploaded is refused and not stored
    shutil.copy(Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz", tmp / "upload4d.nii.gz")
    status, text = _status(client.upload_image, str(tmp / "upload4d.nii.gz"), "upload4d")
    assert status == 422 and "channels" in text
    assert not (tmp / "studies" / "upload4d.nii.gz").exists()


@pytest.mark.slow
def test_labels_checked_on_save(server):
    srv, client, tmp = server
    ok = (np.random.RandomState(1).rand(32, 32, 32) > 0.5).astype(np.uint8)
    good = Path(_label(tmp / "good_label.nii.gz", ok))
    bad = {
        "random bytes": (_label(tmp / "rnd.nii.gz", raw=os.urandom(4000)), "cannot be read"),
        "text": (_label(tmp / "text.txt", raw=b"a label\n"), "cannot be read"),
        "empty file": (_label(tmp / "empty.nii.gz", raw=b""), "cannot be read"),
        "truncated": (
            _label(tmp / "trunc.nii.gz", raw=good.read_bytes()[: good.stat().st_size // 2]),
            "cannot be read",
        ),
        "another shape": (_label(tmp / "small.nii.gz", ok[:10, :10, :10]), "shape (10, 10, 10) differs"),
        "4D": (_label(tmp / "fourd.nii.gz", np.stack([ok, ok], -1)), "2 channels"),
        "value 7": (_label(tmp / "seven.nii.gz", ok * 7), "values [7]"),
        "wrong affine": (_label(tmp / "affine.nii.gz", ok, np.diag([3.0, 3.0, 3.0, 1.0])), "affine differs"),
    }
    for name, (path, words) in bad.items():
        status, text = _status(client.save_label, "good1", path)
        assert status == 422 and words in text, (name, status, text)
        assert str(tmp) not in text, f"{name}: the message shows a server path: {text}"
    assert not list((tmp / "studies" / "labels" / "final").glob("good1*"))
    status, result = _status(client.save_label, "good2", str(good))
    assert status == 200 and result["label"] == "good2"
    # a label in another format replaces it: one label per image and tag
    nrrd = tmp / "good_label.nrrd"
    import SimpleITK as sitk  # noqa: N813 (SimpleITK's own convention)

    sitk.WriteImage(sitk.ReadImage(str(good)), str(nrrd))
    status, result = _status(client.save_label, "good2", str(nrrd))
    assert status == 200, result
    assert sorted(p.name for p in (tmp / "studies" / "labels" / "final").glob("good2*")) == ["good2.nrrd"]


def _train(srv, request):
    r = requests.post(f"{srv.url}/train/qddens", json=request)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 300
    while True:
        task = requests.get(f"{srv.url}/train/", params={"check_if_running": "false"}).json()
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            return task
        assert time.monotonic() < deadline, f"training still {task.get('status')} after 300 s"
        time.sleep(2)


@pytest.mark.slow
def test_dicom_series_added_while_running(server):
    import pydicom.data

    srv, client, tmp = server
    for name in ("late_series", "late_gap"):
        assert _status(client.infer, "qddens", name, {})[0] == 404
    from qddens_monai.data import write_dicom_series

    write_dicom_series(
        np.random.RandomState(3).rand(32, 32, 32).astype(np.float32) * 1000,
        spacing=(1.5, 1.5, 2.0),
        out_dir=str(tmp / "studies" / "late_series"),
    )
    gap = Path(pydicom.data.get_testdata_file("dicomdirtests/77654033/CT2/17136")).parent
    shutil.copytree(gap, tmp / "studies" / "late_gap")
    image, params = client.infer("qddens", "late_series", {"device": "cpu"})
    assert nib.load(image).shape == (32, 32, 32)
    status, text = _status(client.infer, "qddens", "late_gap", {})
    assert status == 422 and "unevenly spaced" in text


@pytest.mark.slow
def test_training_on_bad_data_keeps_the_model(server):
    srv, client, tmp = server
    model = tmp / "app" / "model" / "qddens" / "models" / "model.pt"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    # A request value is never evaluated as a config expression.
    task = _train(srv, {"max_epochs": f"$open({str(tmp / 'pwned')!r}, 'w')", "device": "cpu"})
    assert task["status"] == "ERROR" and "max_epochs" in task["details"][-1]
    assert not (tmp / "pwned").exists()
    # A misfit label put into the labels folder by hand (not through the API): training refuses,
    # names it, and model.pt stays byte-identical.
    labels = tmp / "studies" / "labels" / "final"
    labels.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), AFFINE), str(labels / "good0.nii.gz"))
    time.sleep(2)  # the datastore's file watcher
    task = _train(srv, {"max_epochs": 1, "device": "cpu", "multi_gpu": False, "val_split": 0.0})
    assert task["status"] == "ERROR"
    assert "model.pt unchanged" in task["details"][-1] and "good0.nii.gz" in task["details"][-1], task["details"][-3:]
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest


@pytest.mark.slow
def test_token_and_cors_allow_list(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    nib.save(nib.Nifti1Image(np.random.rand(32, 32, 32).astype(np.float32), AFFINE), str(studies / "a.nii.gz"))
    viewer, token = "https://viewer.example.org", "s3cret-token"
    srv = LabelServerProcess(
        studies,
        tmp_path / "app",
        [*SERVER_ARGS, "--cors-origins", viewer],
        log=tmp_path / "server.log",
        timeout=180,
        token=token,
    )
    try:
        client = MONAILabelClient(srv.url, tmpdir=str(tmp_path / "client"))
        status, text = _status(client.info)
        assert status == 401 and "token" in text
        client.update_auth({"token_type": "Bearer", "access_token": "wrong"})
        assert _status(client.info)[0] == 401
        client.update_auth({"token_type": "Bearer", "access_token": token})
        assert "qddens" in client.info()["models"]
        assert client.next_sample("random", {})["id"] == "a"
        # the allow-listed origin gets CORS headers (no credentials); any other origin is refused
        pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        r = requests.options(f"{srv.url}/info/", headers={"Origin": viewer, **pre})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == viewer
        assert "access-control-allow-credentials" not in r.headers
        r = requests.options(f"{srv.url}/info/", headers={"Origin": "https://evil.example", **pre})
        assert "access-control-allow-origin" not in r.headers
        auth = {"Authorization": f"Bearer {token}"}
        r = requests.post(f"{srv.url}/train/qddens", headers={"Origin": "https://evil.example", **auth})
        assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
        r = requests.get(f"{srv.url}/info/", headers={"Origin": viewer, **auth})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == viewer
    finally:
        srv.stop()


@pytest.mark.slow
def test_background_scoring_serves_the_last_scores(server):
    srv, client, _ = server
    deadline = time.monotonic() + 120
    while True:  # a study an earlier test added (a late DICOM folder) is scored in one more background round
        assert time.monotonic() < deadline, "background scoring still running after 120 s"
        if not client.info()["scoring_progress"]["running"]:
            progress = client.info()["scoring_progress"]
            assert progress["done"] == progress["total"] >= len(GOOD)
            start = time.monotonic()
            pick = client.next_sample("uncertainty", {"device": "cpu"})
            took = time.monotonic() - start
            if pick["scoring"]["running"] is False:
                break
        time.sleep(1)
    assert took < 5 and pick["id"] in GOOD
    stored = {
        i: requests.get(f"{srv.url}/datastore/image/info", params={"image": i}).json().get("qdd_ens") for i in GOOD
    }
    objects = client.datastore()["objects"]
    unlabeled = [i for i in GOOD if not objects[i]["labels"].get("final")]
    assert pick["id"] == max(unlabeled, key=lambda i: stored[i]["uncertainty"])


@pytest.mark.slow
def test_no_cors_by_default(server):
    srv, _, _ = server
    pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"}
    r = requests.options(f"{srv.url}/datastore/label", headers=pre)
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = requests.get(f"{srv.url}/info/", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_exposed_bind_warns_and_folders_must_not_overlap(tmp_path, capsys):
    from qddens_monai.label.server import check_separate, warn_exposed

    warn_exposed("0.0.0.0", None)
    assert "WITHOUT a token" in capsys.readouterr().err
    for quiet in (("127.0.0.1", None), ("localhost", None), ("0.0.0.0", "token"), ("::1", None)):
        warn_exposed(*quiet)
        assert capsys.readouterr().err == "", quiet
    check_separate(tmp_path / "app", tmp_path / "studies")
    for app, studies in (
        (tmp_path / "s" / "app", tmp_path / "s"),
        (tmp_path / "a", tmp_path / "a" / "studies"),
        (tmp_path, tmp_path),
    ):
        with pytest.raises(ValueError, match="overlap"):
            check_separate(app, studies)


def test_train_request_checked():
    from qddens_monai.label.training import TrainingRefused, check_train_request

    ok = check_train_request(
        {
            "model": "qddens",
            "max_epochs": 2,
            "val_split": 0.2,
            "device": ["cpu", "cuda"],
            "multi_gpu": False,
            "tracking": "mlflow",
            "tracking_uri": "/x",
        },
        100,
        ["model.pt"],
    )
    assert ok["max_epochs"] == 2 and ok["device"] == "cpu" and ok["tracking"] == "None" and "tracking_uri" not in ok
    assert check_train_request({}, 100, ["model.pt"])["max_epochs"] == 100  # the bundle's schedule
    for bad in (
        {"max_epochs": "$print(1)"},
        {"max_epochs": 0},
        {"val_split": 1.5},
        {"run_id": "network_def"},
        {"model_filename": "../x.pt"},
        {"device": "$__import__('os')"},
        {"pretrained": "yes"},
        {"train#trainer#max_epochs": 3},
    ):
        with pytest.raises(TrainingRefused):
            check_train_request(bad, 100, ["model.pt"])
