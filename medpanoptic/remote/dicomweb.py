"""A DICOMweb node through `dicomweb-client`: QIDO-RS to find, WADO-RS to retrieve, STOW-RS to store.

Library and HTTP faults become `TransientFault` (retried: connection refused, timeout, 5xx,
429) or `RemoteError` (401/403: the credentials; other 4xx: the request or object rejected).
Messages are written here from status codes, never copied from responses or URLs that could
carry a secret.
"""

from __future__ import annotations

from typing import Callable, Iterator, TypeVar

import pydicom

from ..errors import RemoteError
from .auth import Settings
from .cache import checked_uid
from .node import SeriesRef
from .retry import TransientFault, with_retries
from .urls import NodeAddress

T = TypeVar("T")
TAG = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "SOPInstanceUID": "00080018",
       "Modality": "00080060"}


def _value(item: dict, keyword: str) -> str:
    values = item.get(TAG[keyword], {}).get("Value") or [""]
    return str(values[0])


class DicomWebNode:
    """One DICOMweb service root, with its credentials, CA file, timeout and retry count."""

    def __init__(self, address: NodeAddress, settings: Settings) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.address, self.settings = address, settings
        session = requests.Session()
        session.auth = settings.http_auth()
        if settings.ca_file:
            session.verify = settings.ca_file
        self._session = session
        self._client = DICOMwebClient(address.http_url, session=session, timeout=settings.timeout_s)
        self._client.set_http_retry_params(retry=False)  # ours: the same backoff for every protocol

    def close(self) -> None:
        """Close the session's pooled connections."""
        self._session.close()

    def _call(self, what: str, call: Callable[[], T]) -> T:
        return with_retries(lambda: self._classified(what, call), self.address.key, what, self.settings.retries)

    def _classified(self, what: str, call: Callable[[], T]) -> T:
        import requests

        try:
            return call()
        except requests.exceptions.HTTPError as e:
            status = e.response.status_code if e.response is not None else 0
            if status in (401, 403):
                raise RemoteError(self.address.key, f"{what}: the node refused the credentials (HTTP {status}); "
                                                    "check MEDPANOPTIC_PACS_USER/_PASSWORD/_TOKEN") from None
            if status == 429 or status >= 500:
                raise TransientFault(f"the node failed (HTTP {status})") from None
            raise RemoteError(self.address.key, f"{what}: the node rejected the request (HTTP {status})") from None
        except requests.exceptions.SSLError:
            raise RemoteError(self.address.key, f"{what}: TLS verification failed (check the CA file)") from None
        except requests.exceptions.Timeout:
            raise TransientFault(f"no answer within {self.settings.timeout_s:g} s") from None
        except requests.exceptions.ConnectionError:
            raise TransientFault("cannot connect (is the node running?)") from None

    def find_studies(self, patient: str | None, since: str | None) -> list[str]:
        filters = {k: v for k, v in (("PatientID", patient), ("StudyDate", f"{since}-" if since else None)) if v}
        found = self._call("QIDO-RS study search", lambda: self._client.search_for_studies(
            search_filters=filters, get_remaining=True))
        return sorted({checked_uid(_value(s, "StudyInstanceUID"), "Study Instance UID", self.address.key)
                       for s in found})

    def find_series(self, study_uid: str, modality: str | None, series_uid: str | None) -> list[SeriesRef]:
        filters = {k: v for k, v in (("Modality", modality), ("SeriesInstanceUID", series_uid)) if v}
        found = self._call(f"QIDO-RS series search in study {study_uid}", lambda: self._client.search_for_series(
            study_instance_uid=study_uid, search_filters=filters, get_remaining=True))
        return [SeriesRef(study_uid, checked_uid(_value(s, "SeriesInstanceUID"), "Series Instance UID",
                                                 self.address.key), _value(s, "Modality")) for s in found]

    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]:
        found = self._call(f"QIDO-RS instance search in series {series_uid}", lambda: self._client.search_for_instances(
            study_instance_uid=study_uid, series_instance_uid=series_uid, get_remaining=True))
        return sorted({checked_uid(_value(i, "SOPInstanceUID"), "SOP Instance UID", self.address.key) for i in found})

    def retrieve(self, ref: SeriesRef) -> Iterator[pydicom.Dataset]:
        return iter(self._call(f"WADO-RS retrieve of series {ref.series_uid}", lambda: self._client.retrieve_series(
            ref.study_uid, ref.series_uid)))

    def has_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        found = self._call(f"QIDO-RS search for instance {sop_uid}", lambda: self._client.search_for_instances(
            study_instance_uid=study_uid, search_filters={"SOPInstanceUID": sop_uid}))
        return any(_value(i, "SOPInstanceUID") == sop_uid for i in found)

    def store(self, dataset: pydicom.Dataset) -> None:
        what = f"STOW-RS of {dataset.SOPInstanceUID}"
        response = self._call(what, lambda: self._client.store_instances([dataset], str(dataset.StudyInstanceUID)))
        failed = getattr(response, "FailedSOPSequence", None) if response is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "")
            raise RemoteError(self.address.key, f"{what}: the node rejected the object (failure reason {reason})")
