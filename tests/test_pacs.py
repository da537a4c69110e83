"""The label server against a real PACS: Orthanc with its DICOMweb plugin on 127.0.0.1 (see ``orthanc.py``).

Orthanc receives, through its REST API (``POST /instances``):

- ``a`` and ``b``: two 32^3 CT series written by :func:`qddens_monai.data.write_dicom_series`;
- ``gap``: pydicom's ``dicomdirtests/77654033/CT2`` series (a 202 mm slice gap: refused, reported);
- ``one``: pydicom's one-slice ``CT_small.dcm`` (2D for the 3D bundle: refused, reported);
- ``mixed``: one series UID holding 32 x 32 and 16 x 16 slices (refused, reported).

The label server runs with ``--studies <orthanc>/dicom-web`` and is driven through
``monailabel.client.MONAILabelClient`` as OHIF's plugin does. The saved label must come back from
Orthanc as a DICOM SEG referencing the source series, its frames equal to the label slice by slice.
"""

import io
import json
import os
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qddens_monai.label.compat import monailabel_available

if not monailabel_available():
    if os.environ.get("CI"):
        raise RuntimeError("CI: MONAI Label is not installed; the CI installs it (see .ci/run).")
    pytest.skip("MONAI Label is not installed (pip install the label extra, see README)", allow_module_level=True)

from orthanc import OrthancProcess, need_orthanc  # noqa: E402

pytestmark = pytest.mark.slow


def _project_series(folder: Path, seed: int) -> list[str]:
    from monai.data.synthetic import create_test_image_3d

    from qddens_monai.data import write_dicom_series

    image, _ = create_test_image_3d(
        32, 32, 32, num_objs=4, rad_max=8, noise_max=0.05, random_state=np.random.RandomState(seed)
    )
    return write_dicom_series(
        image.astype(np.float32) * 1000.0,
        spacing=(1.5, 1.5, 2.0),
        out_dir=str(folder),
        patient_id=f"QDDENS-{seed}",
        series_description=f"qddens test {seed}",
    )


def _mixed_series(folder: Path) -> list[str]:
    from qddens_monai.data import write_dicom_series

    rng = np.random.RandomState(5)
    ids = {
        "series_uid": "1.2.826.0.1.3680043.8.498.16",
        "study_uid": "1.2.826.0.1.3680043.8.498.17",
        "patient_id": "QDDENS-MIXED",
    }
    import pydicom

    big = write_dicom_series(
        rng.rand(32, 32, 8).astype(np.float32) * 1000, spacing=(1.5, 1.5, 2.0), out_dir=str(folder / "big"), **ids
    )
    small = write_dicom_series(
        rng.rand(16, 16, 3).astype(np.float32) * 1000,
        spacing=(1.5, 1.5, 2.0),
        origin=(0, 0, 16),
        out_dir=str(folder / "small"),
        **ids,
    )
    for k, path in enumerate(small):  # instance UIDs of their own (they derive from the series UID and index)
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.18.{k + 1}"
        ds.save_as(path)
    return big + small


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc with the four series; yields ``(orthanc, {name: series UID}, tmp folder)``."""
    import pydicom.data

    binary, plugin = need_orthanc()
    tmp = tmp_path_factory.mktemp("pacs")
    with OrthancProcess(tmp / "orthanc", binary, plugin) as orthanc:
        gap = Path(pydicom.data.get_testdata_file("dicomdirtests/77654033/CT2/17136")).parent
        files = {
            "a": _project_series(tmp / "a", 1),
            "b": _project_series(tmp / "b", 2),
            "gap": sorted(str(f) for f in gap.iterdir() if f.is_file()),
            "one": [pydicom.data.get_testdata_file("CT_small.dcm")],
            "mixed": _mixed_series(tmp / "mixed"),
        }
        uids = {}
        for name, paths in files.items():
            answers = orthanc.upload(paths)
            assert {a["Status"] for a in answers} <= {"Success", "AlreadyStored"}, answers
            uids[name] = orthanc.get(f"/series/{answers[0]['ParentSeries']}")["MainDicomTags"]["SeriesInstanceUID"]
        yield orthanc, uids, tmp


@pytest.fixture(scope="module")
def server(pacs):
    """The label server on Orthanc's DICOMweb root, and a MONAILabelClient on it."""
    from monailabel.client import MONAILabelClient

    from qddens_monai.label.server import LabelServerProcess

    orthanc, uids, tmp = pacs
    env = {
        "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp / "cache"),
        "MONAI_LABEL_DICOMWEB_SEARCH_FILTER": json.dumps({"Modality": "CT"}),
    }
    srv = LabelServerProcess(
        orthanc.dicomweb,
        tmp / "app",
        ["--override", "roi_size=[32,32,32]"],
        log=tmp / "server.log",
        timeout=180,
        env=env,
    )
    try:
        yield srv, MONAILabelClient(srv.url, tmpdir=str(tmp / "client")), orthanc, uids, tmp
    finally:
        srv.stop()


def _status(srv, method, path, **kwargs):
    import httpx

    with httpx.Client(base_url=srv.url, timeout=300) as c:
        r = c.request(method, path, **kwargs)
    return r.status_code, r.text


def _cached(tmp: Path, uid: str) -> Path:
    found = list((tmp / "cache").glob(f"*/{uid}.nii.gz"))
    assert len(found) == 1, found
    return found[0]


def _segs(orthanc) -> list[dict]:
    return [
        s
        for s in (orthanc.get(f"/series/{i}") for i in orthanc.get("/series"))
        if s["MainDicomTags"].get("Modality") == "SEG"
    ]


def test_lists_the_pacs_series(server):
    srv, client, _, uids, _ = server
    objects = client.datastore()["objects"]
    assert set(uids.values()) <= set(objects), (uids, list(objects))
    # The OHIF that MONAI Label serves at /ohif/ reads the PACS through the server's DICOMweb proxy.
    status, text = _status(srv, "GET", "/proxy/dicom/qido/series", params={"Modality": "CT"})
    assert status == 200, text
    assert set(uids.values()) <= {s["0020000E"]["Value"][0] for s in json.loads(text)}


def test_strategies_choose_servable_series_and_report_the_bad_ones(server):
    srv, client, _, uids, _ = server
    good = {uids["a"], uids["b"]}
    for strategy in ("first", "random", "uncertainty", "suggestive"):
        sample = client.next_sample(strategy, {"device": "cpu", "wait_for_scores": True})
        assert sample["id"] in good, (strategy, sample, srv.tail())
    refused = client.info()["refused_studies"]
    assert "gap" in refused.get(uids["gap"], "") or "spac" in refused.get(uids["gap"], ""), refused
    one = [v for k, v in refused.items() if k.startswith(uids["one"])]  # the series, or its converted volume
    assert one and "2 spatial dimensions" in one[0], refused
    assert "different sizes" in refused.get(uids["mixed"], ""), refused


def test_ids_are_confined_and_bad_series_refused(server):
    srv, _, _, uids, _ = server
    for bad in ("../x", "1.2/../..", "..", "abc"):
        status, text = _status(srv, "GET", "/datastore/image/info", params={"image": bad})
        assert status == 400, (bad, status, text)
    status, text = _status(srv, "GET", "/datastore/image/info", params={"image": "1.2.3.4"})
    assert status == 404, text
    # The DICOMweb proxy (OHIF's way to the PACS) does not leave the DICOMweb root for Orthanc's REST API.
    import http.client

    for path in (
        "/proxy/dicom/../system",
        "/proxy/dicom/%2e%2e/system",
        "/proxy/dicom/qido/..%2F..%2Fsystem",
        "/proxy/dicom/wado/%2E%2E/%2E%2E/tools/now",
    ):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            conn.request("GET", path)  # sent as written (an HTTP library would resolve the dots first)
            answer = conn.getresponse()
            assert answer.status == 400, (path, answer.status, answer.read()[:200])
        finally:
            conn.close()
    status, text = _status(
        srv, "POST", "/infer/qddens", params={"image": uids["gap"], "output": "json"}, json={"device": "cpu"}
    )
    assert status == 422 and uids["gap"] in text, text


def test_infer_fetches_once_and_labels_go_back_as_dicom_seg(server):
    import highdicom as hd
    import pydicom

    srv, client, orthanc, uids, tmp = server
    uid = uids["a"]
    out, _ = client.infer("qddens", uid, {"device": "cpu"})
    image_file = _cached(tmp, uid)
    image = nib.load(str(image_file))
    assert nib.load(out).shape == image.shape == (32, 32, 32)
    folder = image_file.parent / uid
    stamp = (folder.stat().st_mtime_ns, image_file.stat().st_mtime_ns)
    client.infer("qddens", uid, {"device": "cpu"})
    assert (folder.stat().st_mtime_ns, image_file.stat().st_mtime_ns) == stamp  # fetched and converted once

    # A label that says where each voxel is: above the median intensity (never equal: integer HU + 0.5).
    volume = np.asarray(image.dataobj, dtype=np.float32)
    threshold = float(np.median(volume)) + 0.5
    label = (volume > threshold).astype(np.uint8)
    label_file = tmp / "label_a.nii.gz"
    nib.save(nib.Nifti1Image(label, image.affine), str(label_file))

    # A label of the wrong shape is refused and nothing reaches the PACS.
    wrong = tmp / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(label[:, :, :10], image.affine), str(wrong))
    status, text = _status(
        srv,
        "PUT",
        "/datastore/label",
        params={"image": uid, "tag": "final"},
        files={"label": ("wrong.nii.gz", wrong.read_bytes())},
    )
    assert status == 422, text
    assert not _segs(orthanc)

    def check_seg(series_id, above):
        instance = orthanc.get(f"/series/{series_id}")["Instances"][0]
        with urllib.request.urlopen(f"{orthanc.url}/instances/{instance}/file", timeout=30) as r:
            seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(r.read())))
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
        metadata = json.loads((srv.app_dir / "model" / "qddens" / "configs" / "metadata.json").read_text())
        classes = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
        assert [d.SegmentLabel for d in seg.SegmentSequence] == [classes["1"]]  # the served bundle's class
        sources = [pydicom.dcmread(str(f)) for f in sorted(folder.iterdir())]
        frames = seg.get_pixels_by_source_instance(
            [str(s.SOPInstanceUID) for s in sources], segment_numbers=[1], combine_segments=True
        )
        for source, frame in zip(sources, frames):
            hu = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
            expected = (hu > threshold) if above else (hu <= threshold)
            np.testing.assert_array_equal(frame, expected.astype(frame.dtype), err_msg=str(source.InstanceNumber))
        return int(np.sum(frames))

    client.save_label(uid, str(label_file), tag="final")
    segs = _segs(orthanc)
    assert len(segs) == 1, segs
    assert check_seg(segs[0]["ID"], above=True) == int(label.sum()) > 0

    # OHIF's plugin saves the raw voxels as label.bin (uint8, Fortran order); the wrong size is refused.
    status, text = _status(
        srv, "PUT", "/datastore/label", params={"image": uid}, files={"label": ("label.bin", bytes(100))}
    )
    assert status == 422 and "label.bin holds 100 values" in text, text
    inverse = (1 - label).astype(np.uint8)
    status, text = _status(
        srv,
        "PUT",
        "/datastore/label",
        params={"image": uid},
        files={"label": ("label.bin", inverse.tobytes(order="F"))},
    )
    assert status == 200, text
    new = [s for s in _segs(orthanc) if s["ID"] != segs[0]["ID"]]
    assert len(new) == 1, new
    assert check_seg(new[0]["ID"], above=False) == int(inverse.sum())

    # Labeled now: the strategies choose the other series.
    for strategy in ("first", "random", "uncertainty", "suggestive"):
        assert client.next_sample(strategy, {"device": "cpu", "wait_for_scores": True})["id"] == uids["b"], strategy


def test_training_on_labels_in_the_pacs(server):
    """A SEG made elsewhere (here: written for series ``b`` and sent to Orthanc) is a training label: the
    train datalist pulls it back onto the image's grid, and training from the server changes the weights."""
    import hashlib

    from qddens_monai.data.dicom_seg import write_dicom_seg

    srv, client, orthanc, uids, tmp = server
    import pydicom

    sources = [pydicom.dcmread(str(f)) for f in sorted((tmp / "b").iterdir())]
    hu = np.stack([s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in sources], axis=-1)
    label = (np.transpose(hu, (1, 0, 2)) > float(np.median(hu)) + 0.5).astype(np.uint8)  # (x, y, z)
    seg = write_dicom_seg(label, tmp / "b", tmp / "seg_b.dcm", {1: "foreground"})
    orthanc.upload([seg])

    status, text = _status(srv, "GET", "/datastore/", params={"output": "train"})
    assert status == 200, text
    pairs = {Path(item["image"]).name.split(".nii")[0]: item["label"] for item in json.loads(text)}
    assert uids["b"] in pairs and set(pairs) <= {uids["a"], uids["b"]}, pairs  # (a: labeled in the test above)
    if uids["a"] in pairs:  # the newest of a's two SEGs: the inverse label saved as OHIF does
        volume = np.asarray(nib.load(str(_cached(tmp, uids["a"]))).dataobj, dtype=np.float32)
        expected = (volume <= float(np.median(volume)) + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(nib.load(pairs[uids["a"]]).dataobj), expected)
    pulled = nib.load(pairs[uids["b"]])
    np.testing.assert_array_equal(np.asarray(pulled.dataobj), label)
    np.testing.assert_allclose(pulled.affine, nib.load(str(_cached(tmp, uids["b"]))).affine, atol=1e-4)

    model = srv.app_dir / "model" / "qddens" / "models" / "model.pt"
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    status, text = _status(
        srv, "POST", "/train/qddens", json={"max_epochs": 1, "device": "cpu", "multi_gpu": False, "val_split": 0.5}
    )
    assert status == 200, text
    deadline = time.monotonic() + 300
    while True:
        task = json.loads(_status(srv, "GET", "/train/", params={"check_if_running": "false"})[1])
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        assert time.monotonic() < deadline, f"training still {task.get('status')} after 300 s"
        time.sleep(2)
    assert task["status"] == "DONE", task.get("details")
    assert hashlib.sha256(model.read_bytes()).hexdigest() != before
