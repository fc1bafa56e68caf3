"""Remote inputs: a node address with a query becomes cases whose scans are cached series folders."""

from __future__ import annotations

import os
from pathlib import Path

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


def fetch_series(node: Node, ref: SeriesRef, folder: Path) -> None:
    """Make `folder` hold every instance the node lists for the series (retrieving only when some are missing)."""
    expected = node.instance_uids(ref.study_uid, ref.series_uid)
    if expected and not missing(folder, expected) and len(list(folder.glob("*.dcm"))) == len(expected):
        clear_failed(folder)
        return
    fill_series(folder, node.retrieve(ref), ref.study_uid, ref.series_uid, expected, node.address.key)


def remote_scans(text: str, cache: Path) -> list[ScanInput]:
    """The cases `text` (a `dicomweb://` or `dimse://` address with a query) names, each retrieved into `cache`.

    A series that cannot be retrieved, or a query the node does not answer, is still a case:
    its folder keeps the reason, and reading it fails with that reason (see `cache.raise_if_failed`).
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
        try:
            fetch_series(node, ref, folder)
        except MedPanopticError as e:
            mark_failed(folder, str(e))
        scans.append(ScanInput(safe_component(ref.series_uid, "series"), folder, ref.series_uid))
    return scans
