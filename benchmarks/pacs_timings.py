"""How long does the label server take on a PACS series? Fetch, first infer and DICOM SEG upload.

Starts a throw-away Orthanc with its DICOMweb plugin on 127.0.0.1 (``tests/orthanc.py``; needs the
Debian packages ``orthanc`` and ``orthanc-dicomweb``), uploads one generated CT series
(:func:`qddens_monai.data.write_dicom_series`, default 256 x 256 x 100) through Orthanc's REST API,
starts ``qddens-monai label-server --studies <orthanc>/dicom-web`` (background scoring off, so
nothing is fetched before it is timed) and times, through ``MONAILabelClient``:

- **fetch**: the first request naming the series (WADO-RS download, screening, conversion to NIfTI);
- **first infer** / **second infer**: ``/infer/qddens`` on it (the untrained 3D ensemble, sliding window);
- **SEG upload**: ``PUT /datastore/label`` of a label (checked, written as DICOM SEG with highdicom,
  sent with STOW-RS).

The server's own log lines (``fetched ... in``, ``converted ... in``, ``DICOM SEG ... sent in``) give the
split. Prints a JSON record. Everything is stopped at the end.

Usage::

    python benchmarks/pacs_timings.py                 # 256 x 256 x 100
    python benchmarks/pacs_timings.py --size 64 64 32 # quick
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from orthanc import OrthancProcess, orthanc_binary  # noqa: E402
from qddens_monai.data import write_dicom_series  # noqa: E402
from qddens_monai.label.server import LabelServerProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=[256, 256, 100], metavar=("X", "Y", "SLICES"))
    parser.add_argument("--roi", type=int, default=96, help="the bundle's sliding-window size")
    args = parser.parse_args()
    binary, plugin = orthanc_binary()
    if not (binary and plugin):
        raise SystemExit("Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")

    from monai.data.synthetic import create_test_image_3d
    from monailabel.client import MONAILabelClient

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        x, y, z = args.size
        image, _ = create_test_image_3d(
            x,
            y,
            z,
            num_objs=8,
            rad_max=max(8, min(x, y, z) // 6),
            noise_max=0.05,
            random_state=np.random.RandomState(0),
        )
        files = write_dicom_series(image.astype(np.float32) * 1000.0, spacing=(0.8, 0.8, 2.0), out_dir=str(tmp / "ct"))
        record: dict = {"series": f"{x} x {y} x {z}", "roi": args.roi}
        with OrthancProcess(tmp / "orthanc", binary, plugin) as orthanc:
            start = time.monotonic()
            answers = orthanc.upload(files)
            record["orthanc_upload_s"] = round(time.monotonic() - start, 2)
            uid = orthanc.get(f"/series/{answers[0]['ParentSeries']}")["MainDicomTags"]["SeriesInstanceUID"]
            env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp / "cache")}
            srv = LabelServerProcess(
                orthanc.dicomweb,
                tmp / "app",
                ["--override", f"roi_size=[{args.roi},{args.roi},{args.roi}]", "--conf", "background_scoring", "false"],
                log=tmp / "server.log",
                timeout=300,
                env=env,
            )
            try:
                client = MONAILabelClient(srv.url, tmpdir=str(tmp / "client"))
                start = time.monotonic()
                with urllib.request.urlopen(f"{srv.url}/datastore/image/info?image={uid}", timeout=600) as r:
                    assert r.status == 200
                record["fetch_s"] = round(time.monotonic() - start, 2)
                for name in ("first_infer_s", "second_infer_s"):
                    start = time.monotonic()
                    out, _ = client.infer("qddens", uid, {"device": "cpu"})
                    record[name] = round(time.monotonic() - start, 2)
                cached = next((tmp / "cache").glob(f"*/{uid}.nii.gz"))
                volume = nib.load(str(cached))
                label = (np.asarray(volume.dataobj) > np.median(np.asarray(volume.dataobj))).astype(np.uint8)
                label_file = tmp / "label.nii.gz"
                nib.save(nib.Nifti1Image(label, volume.affine), str(label_file))
                start = time.monotonic()
                client.save_label(uid, str(label_file), tag="final")
                record["seg_upload_s"] = round(time.monotonic() - start, 2)
                log = srv.tail(10**7)
            finally:
                srv.stop()
        for key, pattern in (
            ("server_fetch_s", r"fetched series \S+ \(\d+ instances\) in ([0-9.]+) s"),
            ("server_convert_s", r"converted series \S+ in ([0-9.]+) s"),
            ("server_seg_write_and_stow_s", r"DICOM SEG \S+ of series \S+ sent in ([0-9.]+) s"),
        ):
            found = re.findall(pattern, log)
            record[key] = float(found[0]) if found else None
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
