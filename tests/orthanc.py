"""A throw-away Orthanc PACS (Debian packages ``orthanc`` and ``orthanc-dicomweb``) for the tests.

:class:`OrthancProcess` writes a configuration into a temporary folder (storage there too, free HTTP
port, remote access refused, no authentication, the DICOM (DIMSE) server disabled, the DICOMweb
plugin loaded), starts ``Orthanc``, waits (bounded) until ``/system`` answers and stops it.
:func:`orthanc_binary` finds the binary and plugin; :func:`need_orthanc` skips a test without them,
unless ``CI`` is set (then it fails: the CI installs them, see ``.ci/run``).

Orthanc 1.10 has no option to choose its listening address: with ``RemoteAccessAllowed`` false it
answers requests from this machine only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional, Union

import pytest

from qddens_monai.label.server import LoggedProcess

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


def orthanc_binary() -> tuple[Optional[str], Optional[str]]:
    """``(Orthanc binary, DICOMweb plugin)``, each ``None`` when not installed."""
    candidates = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
    binary = shutil.which("Orthanc") or next((p for p in candidates if os.path.isfile(p)), None)
    plugin = None
    for folder in PLUGIN_DIRS:
        found = sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if os.path.isdir(folder) else []
        if found:
            plugin = str(found[0])
            break
    return binary, plugin


def need_orthanc() -> tuple[str, str]:
    """The binary and plugin, or skip the test (fail under ``CI``) naming what is missing."""
    binary, plugin = orthanc_binary()
    if binary and plugin:
        return binary, plugin
    missing = " and ".join(n for n, p in (("the Orthanc binary", binary), ("its DICOMweb plugin", plugin)) if not p)
    message = f"{missing} not installed (apt-get install orthanc orthanc-dicomweb)"
    if os.environ.get("CI"):
        pytest.fail(f"CI: {message}; .ci/run installs them", pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancProcess(LoggedProcess):
    """Orthanc on a free port of 127.0.0.1 with its DICOMweb plugin, storage under ``folder``.

    Args:
        folder: receives ``orthanc.json``, the storage (``db``) and the log (``orthanc.log``).
        binary / plugin: from :func:`orthanc_binary`.
        timeout: seconds to wait for ``/system``.
    """

    def __init__(self, folder: Union[str, os.PathLike], binary: str, plugin: str, timeout: float = 60.0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        config = {
            "Name": "qddens-test",
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "DicomPort": _free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config, indent=1))
        self.log_path = self.folder / "orthanc.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, str(self.folder / "orthanc.json")], stdout=self._log, stderr=subprocess.STDOUT, cwd=self.folder
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if self.get("/system").get("Version"):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Orthanc did not answer within {timeout} s:\n{self.tail()}")
            time.sleep(0.3)

    def get(self, path: str) -> Any:
        """``GET path`` on the REST API, decoded JSON."""
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def upload(self, files: list[Union[str, os.PathLike]]) -> list[dict]:
        """``POST /instances`` for each DICOM file; Orthanc's answers (``ID``, ``ParentSeries``, ``Status``)."""
        answers = []
        for f in files:
            request = urllib.request.Request(
                self.url + "/instances",
                data=Path(f).read_bytes(),
                method="POST",
                headers={"Content-Type": "application/dicom"},
            )
            with urllib.request.urlopen(request, timeout=60) as r:
                answers.append(json.loads(r.read()))
        return answers
