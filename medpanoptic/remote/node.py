"""What every DICOM node offers us, whatever its protocol: find, retrieve, check and store instances."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import pydicom

from ..errors import InputError
from .auth import Settings, load_settings
from .urls import NodeAddress

NOT_IMAGES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC", "OT_SR", "PLAN", "FID"}
"""Series that are not scans: never segmented (our own SEGs land in the same study)."""


@dataclass(frozen=True)
class SeriesRef:
    """A series on a node, as its query answered (untrusted until checked)."""

    study_uid: str
    series_uid: str
    modality: str = ""


class Node(Protocol):
    address: NodeAddress
    settings: Settings

    def find_studies(self, patient: str | None, since: str | None) -> list[str]: ...
    def find_series(self, study_uid: str, modality: str | None, series_uid: str | None) -> list[SeriesRef]: ...
    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]: ...
    def retrieve(self, ref: SeriesRef) -> Iterator[pydicom.Dataset]: ...
    def has_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bool: ...
    def store(self, dataset: pydicom.Dataset) -> None: ...
    def close(self) -> None: ...


def open_node(address: NodeAddress, settings: Settings | None = None) -> Node:
    """A client for `address` with its settings (credentials from the environment or config file)."""
    settings = settings or load_settings(address)
    try:
        if address.is_dicomweb:
            from .dicomweb import DicomWebNode

            return DicomWebNode(address, settings)
        from .dimse import DimseNode
    except ImportError as e:
        raise InputError(address.key, f"talking to DICOM nodes needs {e.name}: pip install 'medpanoptic[pacs]'") from None
    return DimseNode(address, settings)


def select_series(node: Node) -> list[SeriesRef]:
    """The image series the node address's query names, in a stable order."""
    query = node.address.query
    studies = [query["study"]] if "study" in query else node.find_studies(query.get("patient"), query.get("since"))
    found: dict[str, SeriesRef] = {}
    for study in studies:
        for ref in node.find_series(study, query.get("modality"), query.get("series")):
            if ref.modality.upper() not in NOT_IMAGES:
                found.setdefault(ref.series_uid, ref)
    return [found[k] for k in sorted(found)]
