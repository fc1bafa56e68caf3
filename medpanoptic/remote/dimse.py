"""A DIMSE node through `pynetdicom`: C-FIND to find, C-GET to retrieve, C-STORE to store (Study Root).

One association per node, opened as our AE title (settings `calling_aet`) to the node's (the
address's AET) and reused by every operation: opening one costs a round trip or two (and a TLS
handshake for `dimses://`), several per case. It is opened again when the node dropped it (an
idle timeout, a restart) or when an operation needs a presentation context it lacks (a series of
a SOP class not seen before). A refused or dropped association and a timeout are transient
(retried); a rejected association (unknown AE title) and a failed status are not.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Callable, Iterator, TypeVar

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..errors import InputError, RemoteError
from .auth import Settings
from .cache import checked_uid
from .node import SeriesRef
from .retry import TransientFault, with_retries
from .urls import NodeAddress

log = logging.getLogger(__name__)
T = TypeVar("T")
FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
GET = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve Information Model - GET
PENDING = (0xFF00, 0xFF01)
RETRIEVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_RETRIEVE_CLASSES = 100  # of the 128 presentation contexts an association may propose
REFUSED = 0xC000  # our C-STORE status for an instance that arrives outside a C-GET


def _identifier(level: str, **keys: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def tls_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context that checks the node's certificate (against `ca_file`, else the system's CAs)
    and presents ours when `tls_cert` (and `tls_key`) are set: DICOM TLS nodes usually ask for one."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file or None)
    except (ssl.SSLError, OSError):
        raise InputError(settings.ca_file, "cannot load the CA file (PEM certificates expected)") from None
    if settings.tls_cert:
        try:
            context.load_cert_chain(settings.tls_cert, settings.tls_key or None, password=b"")  # never prompt
        except (ssl.SSLError, OSError):
            raise InputError(settings.tls_cert, "cannot load our TLS certificate and key (PEM, unencrypted key "
                                                "expected)") from None
    return context


class DimseNode:
    """One DIMSE peer (AE title, host, port), with our AE title, timeout and retry count, and the one
    association to it. Safe to share between threads: operations take turns on the association."""

    def __init__(self, address: NodeAddress, settings: Settings) -> None:
        self.address, self.settings = address, settings
        self.associations_opened = 0
        self._sop_classes: dict[str, list[str]] = {}  # per series, from its instance C-FIND: what C-GET must accept
        self._retrieve_classes: set[str] = set()  # contexts the association needs, grown as operations need them
        self._store_contexts: set[tuple[str, str]] = set()  # (SOP class, transfer syntax)
        self._lock = threading.RLock()
        self._assoc = None
        self._proposed: tuple[frozenset, frozenset] = (frozenset(), frozenset())
        self._received: list[pydicom.Dataset] | None = None  # the C-GET under way collects here
        self._tls = tls_context(settings) if address.uses_tls else None

    # -- the association ---------------------------------------------------------------------
    def close(self) -> None:
        """Release the association (a later operation opens a new one)."""
        with self._lock:
            if self._assoc is not None and self._assoc.is_established:
                self._assoc.release()
            self._assoc = None

    def _abort(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.abort()
        self._assoc = None

    def _needed(self) -> tuple[frozenset, frozenset]:
        return frozenset(sorted(self._retrieve_classes)[:MAX_RETRIEVE_CLASSES]), frozenset(self._store_contexts)

    def _associated(self, what: str):
        """The open association, opened (again) if there is none, the node dropped it, or it lacks a context."""
        retrieve, store = needed = self._needed()
        if (self._assoc is not None and self._assoc.is_established
                and retrieve <= self._proposed[0] and store <= self._proposed[1]):
            return self._assoc
        if self._assoc is not None:
            self.close()
        assoc = self._open(what, retrieve, store)
        self._assoc, self._proposed = assoc, needed
        self.associations_opened += 1
        log.debug("%s: association %d opened", self.address.key, self.associations_opened)
        return assoc

    def _open(self, what: str, retrieve: frozenset, store: frozenset):
        from pynetdicom import AE, evt
        from pynetdicom.presentation import build_role

        ae = AE(ae_title=self.settings.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = self.settings.timeout_s
        ae.add_requested_context(FIND)
        ae.add_requested_context(GET)
        sending = {sop_class for sop_class, _ in store}
        for sop_class in sorted(retrieve | sending):
            syntaxes = list(RETRIEVE_SYNTAXES) if sop_class in retrieve else []
            syntaxes += sorted(ts for c, ts in store if c == sop_class and ts not in syntaxes)
            ae.add_requested_context(sop_class, syntaxes)
        roles = [build_role(c, scu_role=c in sending, scp_role=True) for c in sorted(retrieve)]
        assoc = ae.associate(self.address.host, self.address.port, ae_title=self.address.aet, ext_neg=roles,
                             evt_handlers=[(evt.EVT_C_STORE, self._on_c_store)],
                             tls_args=(self._tls, self.address.host) if self._tls else None)
        if assoc.is_rejected:
            raise RemoteError(self.address.key, f"{what}: the node rejected our association (is our AE title "
                                                f"{self.settings.calling_aet!r} known to it?)")
        if not assoc.is_established:
            if self._tls:
                raise TransientFault("cannot associate over TLS (is the node running, and does its certificate "
                                     "verify against the CA file and ours against its trust list?)")
            raise TransientFault("cannot associate (is the node running?)")
        return assoc

    def _on_c_store(self, event) -> int:
        """An instance the node sends while we C-GET: kept for the retrieve under way."""
        if self._received is None:
            return REFUSED
        ds = event.dataset
        ds.file_meta = event.file_meta
        self._received.append(ds)
        return 0x0000

    def _run(self, what: str, operation: Callable[..., T]) -> T:
        """`operation(association)`, retried on transient faults; a fault drops the association, so the
        next attempt opens a fresh one."""
        def once() -> T:
            with self._lock:
                assoc = self._associated(what)
                try:
                    return operation(assoc)
                except TransientFault:
                    self._abort()
                    raise
                except RuntimeError:  # pynetdicom: the association ended between our check and the request
                    self._abort()
                    raise TransientFault("the node dropped the association") from None

        return with_retries(once, self.address.key, what, self.settings.retries)

    @staticmethod
    def _answered(status) -> int:
        if not status:  # no status: the association was aborted or timed out
            raise TransientFault("the node dropped the association or did not answer in time")
        return int(status.Status)

    # -- operations ------------------------------------------------------------------------
    def _find(self, what: str, identifier: pydicom.Dataset) -> list[pydicom.Dataset]:
        def find(assoc) -> list[pydicom.Dataset]:
            found = []
            for status, answer in assoc.send_c_find(identifier, FIND):
                code = self._answered(status)
                if code in PENDING and answer is not None:
                    found.append(answer)
                elif code != 0x0000:
                    raise RemoteError(self.address.key, f"{what}: C-FIND failed (status 0x{code:04X})")
            return found

        return self._run(what, find)

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
        what = f"C-GET of series {ref.series_uid}"
        if ref.series_uid not in self._sop_classes:
            self.instance_uids(ref.study_uid, ref.series_uid)
        identifier = _identifier("SERIES", StudyInstanceUID=ref.study_uid, SeriesInstanceUID=ref.series_uid)

        def get(assoc) -> list[pydicom.Dataset]:
            self._received = []
            try:
                for status, _ in assoc.send_c_get(identifier, GET):
                    code = self._answered(status)
                    if code not in PENDING and code not in (0x0000, 0xB000):
                        raise RemoteError(self.address.key, f"{what}: C-GET failed (status 0x{code:04X})")
                return self._received
            finally:
                self._received = None

        with self._lock:
            self._retrieve_classes.update(self._sop_classes[ref.series_uid])
            return iter(self._run(what, get))

    def store(self, dataset: pydicom.Dataset) -> None:
        what = f"C-STORE of {dataset.SOPInstanceUID}"

        def send(assoc) -> None:
            try:
                status = assoc.send_c_store(dataset)
            except ValueError:  # pynetdicom: no accepted presentation context for this SOP class and syntax
                raise RemoteError(self.address.key, f"{what}: the node accepts no {dataset.SOPClassUID} objects "
                                                    f"in transfer syntax {dataset.file_meta.TransferSyntaxUID}") from None
            code = self._answered(status)
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise RemoteError(self.address.key, f"{what}: the node rejected the object (status 0x{code:04X})")

        with self._lock:
            self._store_contexts.add((str(dataset.SOPClassUID), str(dataset.file_meta.TransferSyntaxUID)))
            self._run(what, send)
