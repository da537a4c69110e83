"""MONAI Label's datastore on a PACS over DICOMweb, labels back as DICOM SEG (highdicom).

:class:`PacsDatastore` replaces MONAI Label 0.8.5's ``DICOMWebDatastore``, whose SEG path needs
``pydicom-seg`` (broken by pydicom 3) and downloads ``dcmqi``. It is a
:class:`~qddens_monai.label.datastore.CheckedDatastore` on a local cache folder, so the same rules
hold as for local studies:

- **images** are the PACS's series (QIDO-RS, filtered by MONAI Label's
  ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``, SEG series never listed); an image id is a series instance
  UID (digits and dots; anything else, e.g. ``../x``, is refused with 400, an unknown UID with 404);
- a series is fetched (WADO-RS) the first time it is needed into ``<cache>/<uid>/`` (file names chosen
  here, never taken from the PACS), screened like a local DICOM series folder (slice gaps, several
  series, one slice for a 3D model ...: reported in ``/info/`` under ``refused_studies``, skipped by
  the strategies, 422 on infer, never fatal), then converted once to ``<cache>/<uid>.nii.gz``;
- a **label** saved with tag ``final`` is checked against its image (422 naming the problem), stored
  in the cache and sent to the PACS (STOW-RS) as a DICOM SEG referencing the source series, one
  segment per class of the bundle; the image then counts as labeled;
- for training, the ``final`` labels are the PACS's SEG series (the newest per image), fetched and
  converted back to NIfTI on the image's grid.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from ..data.dicom_seg import write_dicom_seg
from .confine import RequestRefused, check_image_id, confined
from .datastore import CheckedDatastore
from .screening import StudyScreen
from .studies import convert_dicom_series

__all__ = ["PacsDatastore", "check_series_uid", "read_dicom_seg"]

logger = logging.getLogger(__name__)

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_QIDO = {
    "SeriesInstanceUID": "0020000E",
    "StudyInstanceUID": "0020000D",
    "Modality": "00080060",
    "PatientID": "00100020",
    "StudyDate": "00080020",
    "SeriesDescription": "0008103E",
}


def check_series_uid(image_id: Optional[str]) -> str:
    """``image_id`` if it is a DICOM UID (digits and dots, at most 64 characters), else 400."""
    text = check_image_id(image_id)
    if len(text) > 64 or not _UID.fullmatch(text):
        raise RequestRefused(400, f"image id {text!r} is not a DICOM series instance UID (digits and dots)")
    return text


def _value(item: Mapping[str, Any], name: str) -> str:
    values = item.get(_QIDO[name], {}).get("Value") or [""]
    return str(values[0])


def _created(ds: Dataset) -> str:
    """When a SEG was made, as a sortable string: its content date and time (highdicom writes them to
    the microsecond), else its instance creation or series date and time."""
    for date, clock in (
        ("ContentDate", "ContentTime"),
        ("InstanceCreationDate", "InstanceCreationTime"),
        ("SeriesDate", "SeriesTime"),
    ):
        if ds.get(date):
            return f"{ds.get(date)}{ds.get(clock) or ''}"
    return ""


def read_dicom_seg(seg: Dataset, source_folder: str) -> np.ndarray:
    """The label map (x, y, z), as MONAI reads the series in ``source_folder``, of a DICOM SEG whose
    frames reference that series' instances; segment ``n`` becomes label value ``n``."""
    import highdicom as hd

    from ..data.dicom_seg import _source_slices

    slices = _source_slices(source_folder)
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    numbers = [int(n) for n in segmentation.segment_numbers]
    frames = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(s.SOPInstanceUID) for s in slices],
        segment_numbers=numbers,
        combine_segments=True,
        relabel=False,
        skip_overlap_checks=True,
    )  # frames not in the SEG: 0
    return np.transpose(np.asarray(frames), (2, 1, 0)).astype(np.uint8)  # (slices, rows, cols) -> (x, y, z)


class PacsDatastore(CheckedDatastore):
    """See the module doc.

    Args:
        client: a ``dicomweb_client.DICOMwebClient`` on the PACS's DICOMweb root.
        screen: checks studies and labels against the served bundle.
        cache_path: the local cache folder (created).
        classes: ``{label value: name}`` of the bundle's foreground classes: the SEG's segments.
        search_filter: QIDO-RS filter of the series to serve (default: MONAI Label's setting).
        list_ttl: seconds a series listing is reused.
    """

    def __init__(
        self,
        client: Any,
        screen: StudyScreen,
        cache_path: str,
        classes: Mapping[int, str],
        search_filter: Optional[Mapping[str, Any]] = None,
        list_ttl: float = 10.0,
    ) -> None:
        self._client = client
        self._classes = {int(k): str(v) for k, v in classes.items()}
        self._filter = dict(search_filter or {})
        self._ttl = list_ttl
        self._listing: tuple[float, dict[str, str]] = (0.0, {})
        self._segs: tuple[float, dict[str, tuple[str, str]]] = (0.0, {})
        self._fetch_lock = threading.RLock()
        self._failed: dict[str, tuple[float, str]] = {}
        os.makedirs(cache_path, exist_ok=True)
        super().__init__(cache_path, screen, extensions=["*.nii.gz"], auto_reload=False, read_only=False)

    def name(self) -> str:
        return str(self._client.base_url)

    # -- the PACS's series ------------------------------------------------------------------------
    def _series(self) -> dict[str, str]:
        """``{series UID: study UID}`` of the served series (not SEG), listed at most every ``list_ttl`` s."""
        stamp, series = self._listing
        if time.monotonic() - stamp > self._ttl:
            series = {}
            for item in self._ask(
                "list the series", self._client.search_for_series, search_filters=self._filter or None
            ):
                uid, study = _value(item, "SeriesInstanceUID"), _value(item, "StudyInstanceUID")
                if _value(item, "Modality") != "SEG" and _UID.fullmatch(uid) and _UID.fullmatch(study):
                    series[uid] = study
            self._listing = (time.monotonic(), series)
        return series

    def _seg_series(self) -> dict[str, tuple[str, str]]:
        """``{referenced image series UID: (study UID, SEG series UID)}``, the newest SEG per image."""
        stamp, segs = self._segs
        if time.monotonic() - stamp <= self._ttl:
            return segs
        found: dict[str, tuple[str, str, str]] = {}
        listed = self._ask("list the SEG series", self._client.search_for_series, search_filters={"Modality": "SEG"})
        for item in listed:
            study, seg_uid = _value(item, "StudyInstanceUID"), _value(item, "SeriesInstanceUID")
            if not (_UID.fullmatch(study) and _UID.fullmatch(seg_uid)):
                continue
            for meta in self._ask("read a SEG's metadata", self._client.retrieve_series_metadata, study, seg_uid):
                ds = Dataset.from_json(meta)
                for ref in ds.get("ReferencedSeriesSequence", []):
                    ref_uid = str(ref.get("SeriesInstanceUID", ""))
                    when = _created(ds)
                    if ref_uid and (ref_uid not in found or when >= found[ref_uid][2]):
                        found[ref_uid] = (study, seg_uid, when)
        segs = {k: (v[0], v[1]) for k, v in found.items()}
        self._segs = (time.monotonic(), segs)
        return segs

    def _ask(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)`` on the PACS; a failure is a 502 naming the PACS and what was asked."""
        try:
            return call(*args, **kwargs)
        except RequestRefused:
            raise
        except Exception as e:
            raise RequestRefused(502, f"the PACS {self.name()} did not {what}: {type(e).__name__}: {e}") from e

    def _forget_listings(self) -> None:
        self._listing, self._segs = (0.0, {}), (0.0, {})

    def list_images(self) -> list[str]:
        return sorted(self._series())

    def _listed(self, image_id: str) -> str:
        uid = check_series_uid(image_id)
        if uid not in self._series() and uid not in self._datastore.objects:
            raise RequestRefused(404, f"series {uid!r} is not in the PACS")
        return uid

    # -- fetch, screen, convert -------------------------------------------------------------------
    def _fetch(self, uid: str) -> Optional[str]:
        """Fetch series ``uid`` into the cache once, screen it and convert it once; why it cannot be
        served, or ``None``."""
        root = Path(self._datastore_path)
        folder = confined(root, uid)
        with self._fetch_lock:
            failed = self._failed.get(uid)
            if failed and time.monotonic() - failed[0] < self._ttl:
                return failed[1]  # not tried again before the listing is
            if not folder.is_dir():
                study = self._series().get(uid)
                if study is None:
                    raise RequestRefused(404, f"series {uid!r} is not in the PACS")
                start = time.monotonic()
                part = confined(root, f".{uid}.part")
                shutil.rmtree(part, ignore_errors=True)
                part.mkdir()
                try:
                    count = 0
                    for count, instance in enumerate(self._client.retrieve_series(study, uid), 1):
                        instance.save_as(str(part / f"{count:05d}.dcm"))  # names chosen here, not by the PACS
                except Exception as e:  # reported, not fatal: the other series are served
                    shutil.rmtree(part, ignore_errors=True)
                    return self._refuse(uid, f"cannot be fetched from the PACS ({type(e).__name__}: {e})")
                os.replace(part, folder)
                logger.info(f"fetched series {uid} ({count} instances) in {time.monotonic() - start:.1f} s")
            problem = self.screen.study_problem(folder)
            if problem:
                return problem
            if uid not in self._datastore.objects or not (root / f"{uid}.nii.gz").is_file():
                start = time.monotonic()
                tmp = Path(tempfile.mkdtemp()) / f"{uid}.nii.gz"
                try:
                    convert_dicom_series(folder, tmp)
                    super(CheckedDatastore, self).add_image(
                        uid, str(tmp), {"SeriesInstanceUID": uid, "StudyInstanceUID": self._series().get(uid, "")}
                    )
                except Exception as e:
                    return self._refuse(uid, f"cannot be converted ({type(e).__name__}: {e})")
                finally:
                    shutil.rmtree(tmp.parent, ignore_errors=True)
                logger.info(f"converted series {uid} in {time.monotonic() - start:.1f} s")
            self._failed.pop(uid, None)
        return None

    def _refuse(self, uid: str, problem: str) -> str:
        """Log and remember (for ``/info/`` ``refused_studies``) why series ``uid`` cannot be served."""
        problem = f"{uid}: {problem}"
        logger.warning(f"study refused: {problem}")
        self._failed[uid] = (time.monotonic(), problem)
        self.screen.refuse(Path(self._datastore_path) / uid, problem)
        return problem

    def _known(self, image_id: str) -> str:
        uid = self._listed(image_id)
        problem = self._fetch(uid)
        if problem:
            raise RequestRefused(422, f"study {uid!r} cannot be served: {problem}")
        return uid

    def study_problem(self, image_id: str) -> Optional[str]:
        uid = self._listed(image_id)
        return self._fetch(uid) or self.screen.study_problem(self.get_image_uri(uid))

    def get_image_uri(self, image_id: str) -> str:
        return super().get_image_uri(self._known(image_id))

    # -- labeled / unlabeled ----------------------------------------------------------------------
    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[list[str]] = None) -> list[str]:
        local = super().get_labeled_images(label_tag, labels)
        if label_tag not in (None, DefaultLabelTag.FINAL.value, DefaultLabelTag.FINAL):
            return local
        series = self._series()
        return sorted(set(local) | {uid for uid in self._seg_series() if uid in series})

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[list[str]] = None) -> list[str]:
        labeled = set(self.get_labeled_images(label_tag, labels))
        return self.servable([uid for uid in self.list_images() if uid not in labeled])

    def json(self) -> dict:
        """The cache's datastore, plus every PACS series not fetched yet (``info.cached`` false)."""
        out = super().json()
        objects = out.setdefault("objects", {})
        for uid, study in self._series().items():
            objects.setdefault(
                uid,
                {
                    "image": {
                        "ext": "",
                        "info": {"SeriesInstanceUID": uid, "StudyInstanceUID": study, "cached": False},
                    },
                    "labels": {},
                },
            )
        return out

    # -- writes -----------------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        raise RequestRefused(405, "studies are added to the PACS, not through the label server")

    def remove_image(self, image_id: str) -> None:
        raise RequestRefused(405, "studies are removed in the PACS, not through the label server")

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Check and store the label (a label file, or OHIF's ``label.bin``); a ``final`` label also goes to
        the PACS as a DICOM SEG (its series UID in the label's info, ``SegSeriesInstanceUID``)."""
        uid = self._known(image_id)
        with tempfile.TemporaryDirectory() as tmp:
            if label_filename.endswith(".bin"):  # OHIF's MONAI Label plugin sends the raw voxels
                label_filename = self._bin_to_nifti(uid, label_filename, Path(tmp) / "label.nii.gz")
            label_id = super().save_label(uid, label_filename, label_tag, label_info)
        if label_tag != DefaultLabelTag.FINAL.value:
            return label_id
        try:
            seg_uid = self._upload_seg(uid, self.get_label_uri(uid, label_tag))
        except Exception:
            super().remove_label(uid, label_tag)
            raise
        self.update_label_info(uid, label_tag, {"SegSeriesInstanceUID": seg_uid})
        self._forget_listings()
        return label_id

    def _bin_to_nifti(self, uid: str, label_filename: str, out: Path) -> str:
        """A ``label.bin`` (uint8 voxels of the image, Fortran order, as MONAI Label's ``binary_to_image``
        reads them) as NIfTI on the image's grid; 422 when its size is not the image's."""
        import nibabel as nib

        image = nib.load(self.get_image_uri(uid))
        shape = tuple(int(n) for n in image.shape[:3])
        voxels = np.fromfile(label_filename, dtype=np.uint8)
        if voxels.size != int(np.prod(shape)):
            raise RequestRefused(
                422,
                f"label for {uid!r} refused: label.bin holds {voxels.size} values, the image "
                f"has {int(np.prod(shape))} voxels {shape}",
            )
        nib.save(nib.Nifti1Image(voxels.reshape(shape, order="F"), image.affine), str(out))
        return str(out)

    def _upload_seg(self, uid: str, label_file: str) -> str:
        import nibabel as nib
        import pydicom

        start = time.monotonic()
        label = np.asarray(nib.load(label_file).dataobj)
        label = label.reshape(label.shape[:3]) if label.ndim > 3 and all(s == 1 for s in label.shape[3:]) else label
        with tempfile.TemporaryDirectory() as tmp:
            seg_file = write_dicom_seg(
                label,
                confined(self._datastore_path, uid),
                Path(tmp) / "seg.dcm",
                self._classes,
                algorithm_type="SEMIAUTOMATIC",
            )
            seg = pydicom.dcmread(seg_file)
        self._client.store_instances([seg])
        logger.info(f"DICOM SEG {seg.SeriesInstanceUID} of series {uid} sent in {time.monotonic() - start:.1f} s")
        return str(seg.SeriesInstanceUID)

    # -- training ---------------------------------------------------------------------------------
    def _pull_labels(self) -> None:
        """Fetch the newest SEG of every labeled, servable series whose cached label is missing or older."""
        series = self._series()
        for uid, (study, seg_uid) in self._seg_series().items():
            if uid not in series or self._fetch(uid):
                continue
            known = self._datastore.label(uid, DefaultLabelTag.FINAL.value)
            if known is not None and known.info.get("SegSeriesInstanceUID") == seg_uid:
                continue
            import nibabel as nib

            try:
                seg = self._client.retrieve_series(study, seg_uid)[0]
                label = read_dicom_seg(seg, str(confined(self._datastore_path, uid)))
                image = nib.load(self.get_image_uri(uid))
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / f"{uid}.nii.gz"
                    nib.save(nib.Nifti1Image(label, image.affine), str(path))
                    CheckedDatastore.save_label(
                        self, uid, str(path), DefaultLabelTag.FINAL.value, {"SegSeriesInstanceUID": seg_uid}
                    )
            except Exception as e:  # one unusable SEG does not stop training on the others
                message = e.message if isinstance(e, RequestRefused) else f"{type(e).__name__}: {e}"
                logger.warning(f"label ignored: SEG {seg_uid} of series {uid}: {message}")

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        self._forget_listings()  # training: the PACS's labels as they are now
        self._pull_labels()
        return super().datalist(full_path)
