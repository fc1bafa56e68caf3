"""A DIMSE node through `pynetdicom`: C-FIND to find, C-GET to retrieve, C-STORE to store (Study Root).

Every operation opens its own short association as our AE title (settings `calling_aet`) to
the node's (the address's AET). A refused or dropped association and a timeout are transient
(retried); a rejected association (unknown AE title) and a failed C-STORE status are not.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, TypeVar

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..errors import RemoteError
from .auth import Settings
from .cache import checked_uid
from .node import SeriesRef
from .retry import TransientFault, with_retries
from .urls import NodeAddress

T = TypeVar("T")
FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
GET = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve Information Model - GET
PENDING = (0xFF00, 0xFF01)


def _identifier(level: str, **keys: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


class DimseNode:
    """One DIMSE peer (AE title, host, port), with our AE title, timeout and retry count."""

    def __init__(self, address: NodeAddress, settings: Settings) -> None:
        self.address, self.settings = address, settings
        self._sop_classes: dict[str, list[str]] = {}  # per series, from its instance C-FIND: what C-GET must accept

    def _ae(self):
        from pynetdicom import AE

        ae = AE(ae_title=self.settings.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = self.settings.timeout_s
        return ae

    @contextlib.contextmanager
    def _association(self, what: str, ae, **kwargs):
        assoc = ae.associate(self.address.host, self.address.port, ae_title=self.address.aet, **kwargs)
        if assoc.is_rejected:
            raise RemoteError(self.address.key, f"{what}: the node rejected our association (is our AE title "
                                                f"{self.settings.calling_aet!r} known to it?)")
        if not assoc.is_established:
            raise TransientFault("cannot associate (is the node running?)")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _call(self, what: str, call: Callable[[], T]) -> T:
        return with_retries(call, self.address.key, what, self.settings.retries)

    def _find(self, what: str, identifier: pydicom.Dataset) -> list[pydicom.Dataset]:
        def once() -> list[pydicom.Dataset]:
            ae = self._ae()
            ae.add_requested_context(FIND)
            with self._association(what, ae) as assoc:
                found = []
                for status, answer in assoc.send_c_find(identifier, FIND):
                    if not status:  # no status: the association was aborted or timed out
                        raise TransientFault("the node dropped the association or did not answer in time")
                    code = int(status.Status)
                    if code in PENDING and answer is not None:
                        found.append(answer)
                    elif code != 0x0000:
                        raise RemoteError(self.address.key, f"{what}: C-FIND failed (status 0x{code:04X})")
                return found

        return self._call(what, once)

    def find_studies(self, patient: str | None, since: str | None) -> list[str]:
        query = _identifier("STUDY", StudyInstanceUID="", PatientID=patient or "", StudyDate=f"{since}-" if since else "")
        return sorted({checked_uid(a.get("StudyInstanceUID"), "Study Instance UID", self.address.key)
                       for a in self._find("C-FIND of studies", query)})

    def find_series(self, study_uid: str, modality: str | None, series_uid: str | None) -> list[SeriesRef]:
        query = _identifier("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid or "",
                            Modality=modality or "")
        return [SeriesRef(study_uid, checked_uid(a.get("SeriesInstanceUID"), "Series Instance UID", self.address.key),
                          str(a.get("Modality", ""))) for a in self._find(f"C-FIND of series in study {study_uid}", query)]

    def _instances(self, study_uid: str, series_uid: str, sop_uid: str = "") -> list[pydicom.Dataset]:
        query = _identifier("IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
                            SOPInstanceUID=sop_uid, SOPClassUID="")
        return self._find(f"C-FIND of instances in series {series_uid}", query)

    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]:
        found = self._instances(study_uid, series_uid)
        self._sop_classes[series_uid] = sorted({str(a.get("SOPClassUID", "")) for a in found} - {""})
        return sorted({checked_uid(a.get("SOPInstanceUID"), "SOP Instance UID", self.address.key) for a in found})

    def has_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        return any(str(a.get("SOPInstanceUID", "")) == sop_uid for a in self._instances(study_uid, series_uid, sop_uid))

    def retrieve(self, ref: SeriesRef) -> Iterator[pydicom.Dataset]:
        from pynetdicom import evt
        from pynetdicom.presentation import build_role

        what = f"C-GET of series {ref.series_uid}"
        if ref.series_uid not in self._sop_classes:
            self.instance_uids(ref.study_uid, ref.series_uid)
        classes = self._sop_classes[ref.series_uid]

        def once() -> list[pydicom.Dataset]:
            received: list[pydicom.Dataset] = []

            def on_store(event) -> int:
                ds = event.dataset
                ds.file_meta = event.file_meta
                received.append(ds)
                return 0x0000

            ae = self._ae()
            ae.add_requested_context(GET)
            for sop_class in classes[:100]:
                ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            roles = [build_role(c, scp_role=True) for c in classes[:100]]
            with self._association(what, ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
                for status, _ in assoc.send_c_get(_identifier("SERIES", StudyInstanceUID=ref.study_uid,
                                                              SeriesInstanceUID=ref.series_uid), GET):
                    if not status:
                        raise TransientFault("the node dropped the association or did not answer in time")
                    code = int(status.Status)
                    if code not in PENDING and code not in (0x0000, 0xB000):
                        raise RemoteError(self.address.key, f"{what}: C-GET failed (status 0x{code:04X})")
            return received

        return iter(self._call(what, once))

    def store(self, dataset: pydicom.Dataset) -> None:
        what = f"C-STORE of {dataset.SOPInstanceUID}"
        syntax = str(dataset.file_meta.TransferSyntaxUID)

        def once() -> None:
            ae = self._ae()
            ae.add_requested_context(dataset.SOPClassUID, [syntax])
            with self._association(what, ae) as assoc:
                status = assoc.send_c_store(dataset)
                if not status:
                    raise TransientFault("the node dropped the association or did not answer in time")
                code = int(status.Status)
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise RemoteError(self.address.key, f"{what}: the node rejected the object (status 0x{code:04X})")

        self._call(what, once)
