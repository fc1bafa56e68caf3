"""`medpanoptic listen`: a small DICOM C-STORE receiver that segments each complete series and sends the SEG back.

For research use, in the spirit of MONAI Deploy's informatics gateway. Received instances go
to `OUT/.pacs-incoming/<study>/<series>/<instance>.dcm` (names from checked UIDs). DIMSE has no
"series complete" message, so a series counts as complete once nothing arrived for it for
`idle_s` seconds; then it is segmented like any DICOM folder (a gap in the slices is that
case's error in `errors.csv`) and, with `store`, its SEG goes to the node once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Sequence

from ..errors import InputError, MedPanopticError
from ..io.paths import inside
from .cache import checked_uid, instance_file, series_folder
from .urls import _AET

log = logging.getLogger(__name__)
INCOMING = ".pacs-incoming"
FAILURE = 0xC000  # "cannot understand": an instance we refuse to keep


class ArrivalBook:
    """When each series last received an instance; which ones have been quiet for long enough."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[Path, float] = {}

    def arrived(self, folder: Path) -> None:
        with self._lock:
            self._last[folder] = time.monotonic()

    def quiet(self, idle_s: float) -> list[Path]:
        """The series quiet for `idle_s` seconds, removed from the book."""
        now = time.monotonic()
        with self._lock:
            ready = sorted(f for f, t in self._last.items() if now - t >= idle_s)
            for f in ready:
                del self._last[f]
        return ready


def receive(event, incoming: Path, book: ArrivalBook) -> int:
    """Keep one C-STORE'd instance in its series folder (written beside it, then renamed); a DIMSE status."""
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
        where = f"C-STORE from {event.assoc.requestor.ae_title}"
        study = checked_uid(ds.get("StudyInstanceUID"), "Study Instance UID", where)
        series = checked_uid(ds.get("SeriesInstanceUID"), "Series Instance UID", where)
        sop = checked_uid(ds.get("SOPInstanceUID"), "SOP Instance UID", where)
        folder = series_folder(incoming, study, series)
        folder.mkdir(parents=True, exist_ok=True)
        target = inside(incoming, instance_file(folder, sop))
        tmp = folder.with_name(f".{sop[-40:]}.tmp-{uuid.uuid4().hex[:8]}")
        ds.save_as(tmp, enforce_file_format=True)
        tmp.replace(target)
        book.arrived(folder)
        return 0x0000
    except (MedPanopticError, OSError, ValueError, AttributeError) as e:
        log.warning("refused an instance: %s", " ".join(str(e).split()))
        return FAILURE


def listen(port: int, bundle: str | Path, out: str | Path, *, store: str | None = None,
           formats: Sequence[str] = ("nifti", "table", "dicom-seg"), host: str = "127.0.0.1",
           aet: str = "MEDPANOPTIC", idle_s: float = 5.0, device: str | None = None, segmenter=None,
           max_series: int | None = None, stop: threading.Event | None = None) -> int:
    """Receive, segment and store until `stop` is set (or `max_series` series are done); the number done."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    from ..cohort import segment_cohort
    from ..segment import Segmenter

    if not _AET.match(aet):
        raise InputError(None, f"--aet must be 1-16 printable characters without a backslash, got {aet!r}")
    if store:
        from .urls import parse_node

        parse_node(store, require_query=False)  # a bad address fails now, not after the first series
    out = Path(out)
    incoming = out / INCOMING
    incoming.mkdir(parents=True, exist_ok=True)
    segmenter = segmenter or Segmenter.from_bundle(bundle, device=device)
    book, stop = ArrivalBook(), stop or threading.Event()
    ae = AE(ae_title=aet)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    handlers = [(evt.EVT_C_STORE, lambda event: receive(event, incoming, book))]
    try:
        server = ae.start_server((host, port), block=False, evt_handlers=handlers)
    except OSError as e:
        raise InputError(None, f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    log.warning("listening as %s on %s:%d; results in %s", aet, host, port, out)
    done: list[Path] = []
    try:
        while not stop.is_set() and (max_series is None or len(done) < max_series):
            ready = book.quiet(idle_s)
            if not ready:
                stop.wait(min(0.25, idle_s / 4))
                continue
            done += [f for f in ready if f not in done]
            report = segment_cohort([str(f) for f in done], bundle, out, formats, progress=False,
                                    segmenter=segmenter, store=store)
            for failure in report.failed:
                log.warning("case %s: %s", failure["case"], failure["error"])
    finally:
        server.shutdown()
    return len(done)
