"""Remote inputs: a node address with a query becomes cases whose scans are series on the node, retrieved
into the cache only when the cohort reads them (on its reader thread, while the network works on the
previous case), and not at all when the case is already done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import MedPanopticError, RemoteError
from ..io.inputs import Resolver, ScanInput
from ..io.paths import safe_component
from .cache import clear_failed, fill_series, mark_failed, missing, series_folder
from .node import Node, SeriesRef, open_node, select_series
from . import is_remote
from .urls import parse_node


def default_cache() -> Path:
    """Where retrieved series are kept when no cache folder is given: $MEDPANOPTIC_CACHE or ~/.cache/medpanoptic."""
    return Path(os.environ.get("MEDPANOPTIC_CACHE") or Path.home() / ".cache" / "medpanoptic") / "pacs"


def node_cases(cache: str | os.PathLike | None = None) -> Resolver:
    """For `io.inputs.find_scans`: a DICOM node address becomes its cases, retrieved into `cache`."""
    folder = Path(cache) if cache else default_cache()
    return lambda item: remote_scans(str(item), folder) if is_remote(item) else None


def fetch_series(node: Node, ref: SeriesRef, folder: Path, expected: list[str]) -> None:
    """Make `folder` hold the instances `expected` (the node's listing), retrieving only when some are missing."""
    if expected and not missing(folder, expected) and len(list(folder.glob("*.dcm"))) == len(expected):
        clear_failed(folder)
        return
    fill_series(folder, node.retrieve(ref), ref.study_uid, ref.series_uid, expected, node.address.key)


@dataclass(frozen=True, eq=False)
class RemoteSeries:
    """A series the node listed, to be retrieved into `folder` when its case is read."""

    node: Node
    ref: SeriesRef
    folder: Path
    instances: tuple[str, ...]  # the SOP Instance UIDs the node lists, sorted

    @property
    def identity(self) -> str:
        """What the series holds, for the cohort's fingerprint: an instance UID names one content, so the
        same listing is the same input whether it has been retrieved yet or not."""
        return f"{self.ref.study_uid}|{self.ref.series_uid}|{','.join(self.instances)}"

    def fetch(self) -> Path:
        """The series folder, retrieved now if incomplete; a `RemoteError` naming the node if it cannot be."""
        fetch_series(self.node, self.ref, self.folder, list(self.instances))
        return self.folder


def remote_scans(text: str, cache: Path) -> list[ScanInput]:
    """The cases `text` (a `dicomweb://` or `dimse://` address with a query) names, with their series
    listed (not retrieved: see `RemoteSeries.fetch`) and their folders in `cache`.

    A query the node does not answer, or a series whose instances it does not list, is still a
    case: its folder keeps the reason, and reading it fails with that reason (see
    `cache.raise_if_failed`).
    """
    address = parse_node(text)
    try:
        node = open_node(address)
        refs = select_series(node)
        if not refs:
            raise RemoteError(address.key, f"no image series matches {dict(address.query)}")
    except MedPanopticError as e:
        folder = cache / safe_component(f"{address.host}_{address.port}", "node") / "query"
        mark_failed(folder, str(e))
        return [ScanInput(safe_component(f"{address.host}_{address.port}_query", "query"), folder)]
    scans = []
    for ref in refs:
        folder = series_folder(cache, ref.study_uid, ref.series_uid)
        case = safe_component(ref.series_uid, "series")
        try:
            listed = tuple(sorted(node.instance_uids(ref.study_uid, ref.series_uid)))
        except MedPanopticError as e:
            mark_failed(folder, str(e))
            scans.append(ScanInput(case, folder, ref.series_uid))
            continue
        scans.append(ScanInput(case, folder, ref.series_uid, remote=RemoteSeries(node, ref, folder, listed)))
    return scans


def close_nodes(scans: Iterable[ScanInput]) -> None:
    """Release the connections of the nodes that `scans` come from (each node once)."""
    nodes = {id(s.remote.node): s.remote.node for s in scans if isinstance(s.remote, RemoteSeries)}
    for node in nodes.values():
        node.close()
