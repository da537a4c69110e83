"""PacsDatastore without a server: a DICOMweb client stand-in serving generated series from memory.

What a real PACS rarely does on demand: a series that fails to download, a PACS that does not answer,
instance UIDs that would make path names. (The end-to-end tests with a real Orthanc: test_pacs.py.)
"""

import os
from pathlib import Path

import numpy as np
import pytest

from qddens_monai.label.compat import monailabel_available

if not monailabel_available():
    if os.environ.get("CI"):
        raise RuntimeError("CI: MONAI Label is not installed; the CI installs it (see .ci/run).")
    pytest.skip("MONAI Label is not installed (pip install the label extra, see README)", allow_module_level=True)

from qddens_monai.label.compat import import_monailabel  # noqa: E402

import_monailabel()

from qddens_monai.label.confine import RequestRefused  # noqa: E402
from qddens_monai.label.pacs import PacsDatastore, check_series_uid  # noqa: E402
from qddens_monai.label.screening import StudyScreen  # noqa: E402

GOOD, BROKEN, STUDY = "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102", "1.2.826.0.1.3680043.8.498.100"


class FakeClient:
    """The part of ``dicomweb_client.DICOMwebClient`` the datastore uses, on files in memory."""

    base_url = "http://pacs.invalid/dicom-web"

    def __init__(self, files: dict[str, list[str]]) -> None:
        self.files, self.down, self.retrieved = files, False, []

    def search_for_series(self, search_filters=None):
        if self.down:
            raise ConnectionError("connection refused")
        if (search_filters or {}).get("Modality") == "SEG":
            return []
        return [
            {
                "0020000E": {"vr": "UI", "Value": [uid]},
                "0020000D": {"vr": "UI", "Value": [STUDY]},
                "00080060": {"vr": "CS", "Value": ["CT"]},
            }
            for uid in self.files
        ]

    def retrieve_series(self, study, series):
        import pydicom

        self.retrieved.append(series)
        if series == BROKEN:
            raise ConnectionError("reset by peer")
        out = []
        for k, path in enumerate(self.files[series]):
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = f"../../escape{k}"  # a hostile PACS: never used as a file name
            out.append(ds)
        return out


@pytest.fixture
def store(tmp_path):
    from qddens_monai.data import write_dicom_series

    files = write_dicom_series(
        np.random.RandomState(0).rand(16, 16, 8).astype(np.float32) * 1000,
        spacing=(1.0, 1.0, 2.0),
        out_dir=str(tmp_path / "src"),
        series_uid=GOOD,
    )
    client = FakeClient({GOOD: files, BROKEN: files})
    return PacsDatastore(client, StudyScreen(3, 1, 2), str(tmp_path / "cache"), {1: "foreground"}, list_ttl=60), client


def test_ids_are_series_uids():
    assert check_series_uid("1.2.3") == "1.2.3"
    for bad in ("../x", "1.2/3", "..", "abc", "1..2", "1" * 65, ""):
        with pytest.raises(RequestRefused) as e:
            check_series_uid(bad)
        assert e.value.status == 400, bad


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_fetch_once_names_chosen_here_and_a_broken_series_is_reported(store, tmp_path):
    ds, client = store
    assert ds.list_images() == sorted([GOOD, BROKEN])
    uri = Path(ds.get_image_uri(GOOD))
    assert uri.name == f"{GOOD}.nii.gz" and uri.is_file()
    assert sorted(p.name for p in (uri.parent / GOOD).iterdir()) == [f"{k:05d}.dcm" for k in range(1, 9)]
    assert not list(tmp_path.rglob("escape*"))
    ds.get_image_uri(GOOD)
    assert client.retrieved.count(GOOD) == 1  # cached

    problem = ds.study_problem(BROKEN)
    assert "cannot be fetched from the PACS" in problem and "reset by peer" in problem
    assert ds.get_unlabeled_images() == [GOOD]  # reported, not fatal
    assert ds.screen.refused()[str(Path(ds._datastore_path) / BROKEN)] == problem
    ds.study_problem(BROKEN)
    assert client.retrieved.count(BROKEN) == 1  # not asked again within the listing's lifetime
    with pytest.raises(RequestRefused) as e:
        ds.get_image_uri(BROKEN)
    assert e.value.status == 422
    for call, status in (
        (lambda: ds.get_image_info("1.2.3"), 404),
        (lambda: ds.get_image_uri("../x"), 400),
        (lambda: ds.add_image("", str(uri), {}), 405),
        (lambda: ds.remove_image(GOOD), 405),
    ):
        with pytest.raises(RequestRefused) as e:
            call()
        assert e.value.status == status


def test_a_pacs_that_does_not_answer_is_a_502(store):
    ds, client = store
    client.down = True
    with pytest.raises(RequestRefused) as e:
        ds.list_images()
    assert e.value.status == 502 and "did not list the series" in e.value.message
