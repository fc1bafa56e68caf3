"""A real Orthanc on loopback for the PACS tests and benchmark: fresh storage, free ports, DICOMweb, a user.

Not a test module: `tests/test_pacs.py` and `scripts/bench/pacs.py` start it through `Orthanc`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

USER, PASSWORD = "radiologist", "s3cret-pw-for-tests"
ORTHANC_AET = "ORTHANC"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc")


def dicomweb_plugin() -> str | None:
    for folder in PLUGIN_DIRS:
        found = sorted(Path(folder).glob("libOrthancDicomWeb.so*"))
        if found:
            return str(found[0])
    return None


class TlsFiles:
    """A throw-away CA, a certificate for 127.0.0.1 signed by it (the node's) and one for us (the client's),
    made with the `openssl` command: PEM files in `root`."""

    def __init__(self, root: Path, name: str = "ca") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca, self.ca_key = self.root / f"{name}.crt", self.root / f"{name}.key"
        self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=medpanoptic test {name}",
                      "-keyout", self.ca_key, "-out", self.ca)
        self.server, self.server_key = self._signed("server", "subjectAltName=IP:127.0.0.1,DNS:localhost")
        self.client, self.client_key = self._signed("client", "extendedKeyUsage=clientAuth")

    def _openssl(self, *args) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    def _signed(self, who: str, extension: str) -> tuple[Path, Path]:
        key, request, cert = (self.root / f"{who}.{s}" for s in ("key", "csr", "crt"))
        extensions = self.root / f"{who}.ext"
        extensions.write_text(extension + "\n")
        self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=medpanoptic test {who}",
                      "-keyout", key, "-out", request)
        self._openssl("x509", "-req", "-in", request, "-CA", self.ca, "-CAkey", self.ca_key, "-CAcreateserial",
                      "-days", "2", "-extfile", extensions, "-out", cert)
        return cert, key

    def orthanc_options(self) -> dict:
        """DICOM TLS on Orthanc's DICOM port, asking clients for a certificate signed by our CA."""
        return {"DicomTlsEnabled": True, "DicomTlsCertificate": str(self.server),
                "DicomTlsPrivateKey": str(self.server_key), "DicomTlsTrustedCertificates": str(self.ca),
                "DicomTlsRemoteCertificateRequired": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process: `start()`, `stop()`, and REST helpers (authenticated) for the checks."""

    def __init__(self, root: Path, our_aet: str = "MEDPANOPTIC", our_port: int | None = None,
                 tls: "TlsFiles | None" = None) -> None:
        self.root = Path(root)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.our_aet, self.our_port = our_aet, our_port or free_port()
        self.process: subprocess.Popen | None = None
        self.config = self.root / "orthanc.json"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps({
            "Name": "medpanoptic-test", "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AET, "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD}, "DicomCheckCalledAet": True,
            "DicomModalities": {"medpanoptic": [our_aet, "127.0.0.1", self.our_port]},
            "Plugins": [dicomweb_plugin()], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1, "ConcurrentJobs": 2, "HttpThreadsCount": 8,
            "DicomScpTimeout": 10,  # idle associations dropped after 10 s (a stop waits for them)
            **(tls.orthanc_options() if tls else {}),
        }, indent=1))
        self.scheme = "dimses" if tls else "dimse"

    @property
    def dicomweb(self) -> str:
        return f"dicomweb://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"{self.scheme}://{ORTHANC_AET}@127.0.0.1:{self.dicom_port}"

    def start(self) -> "Orthanc":
        log = open(self.root / "orthanc.log", "ab")
        self.process = subprocess.Popen([orthanc_binary(), str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        for _ in range(300):  # up to 30 s for the first start (index creation)
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: see {self.root / 'orthanc.log'}")
            try:
                if self.get("/system").ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError("Orthanc did not answer /system")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.http_port}{path}", auth=(USER, PASSWORD), timeout=30, **kwargs)

    def upload(self, files) -> list[str]:
        """POST each file to /instances; the Orthanc ids."""
        ids = []
        for f in files:
            r = requests.post(f"http://127.0.0.1:{self.http_port}/instances", data=Path(f).read_bytes(),
                              auth=(USER, PASSWORD), timeout=30)
            r.raise_for_status()
            ids.append(r.json()["ID"])
        return ids

    def series_of_study(self, study_uid: str, modality: str | None = None) -> list[dict]:
        """Orthanc's series (with MainDicomTags) of a study, optionally of one modality."""
        r = requests.post(f"http://127.0.0.1:{self.http_port}/tools/find", auth=(USER, PASSWORD), timeout=30,
                          json={"Level": "Series", "Expand": True,
                                "Query": {"StudyInstanceUID": study_uid, **({"Modality": modality} if modality else {})}})
        r.raise_for_status()
        return r.json()

    def instance_file(self, series: dict) -> bytes:
        return self.get(f"/instances/{series['Instances'][0]}/file").content
