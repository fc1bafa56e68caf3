"""Segment a cohort: many scans, one bundle, outputs per case, a summary per cohort.

- Each case is written into `out/<case>/` through a temporary folder renamed at the end, with
  a `done.json` that fingerprints the input (paths, sizes, modification times), the bundle
  and the formats. A re-run skips every case whose fingerprint still matches: resumable.
- A case that fails (unreadable, wrong dimensionality, ...) leaves no files; its one-line
  reason goes to `errors.csv` and the run goes on; the exit code says something failed.
- Reading the next scan (retrieving it first, for a series on a DICOM node) and writing the
  previous case's files run on worker threads while the network works on the current one.
- Under `torchrun`, rank r takes cases r, r + W, ...; rank 0 waits for the others and writes
  the cohort files: `instances.csv` (one row per instance, with the case id), `cases.csv`,
  `errors.csv` and `cohort_overview.png`.
- One run at a time per output folder: the run (rank 0 under `torchrun`) holds an exclusive
  lock on `out/.medpanoptic.lock`; a second run refuses, naming the first one's pid. Holding
  it, the run removes the `.<case>.tmp-XXXXXXXX` folders a killed run left behind.
- Case ids are safe path components (see `io.inputs`), and every path written or removed is
  checked to lie inside `out` first (`io.paths.inside`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import shutil
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import InputError, MedPanopticError
from .io.inputs import ScanInput, find_scans
from .io.paths import inside, safe_component
from .io.table import table_paths
from .remote.pull import node_cases

DONE = "done.json"
LOCK = ".medpanoptic.lock"
_CASE_TEMPORARY = re.compile(r"\.[A-Za-z0-9._+@-]+\.tmp-[0-9a-f]{8}")  # what `_write_case` names its folder
PACS_CACHE = ".pacs-cache"  # series retrieved from DICOM nodes (see medpanoptic.remote)


@dataclass
class CohortReport:
    """What a cohort run did: cases segmented now, skipped as already done, and failed (with reasons)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _files_of(scan: ScanInput) -> list[Path]:
    if scan.channel_files:
        return [p for p in scan.channel_files if p.exists()]
    path = scan.path
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.exists() else []


def fingerprint(scan: ScanInput, bundle: Path, formats: Sequence[str], weights: Sequence[Path] | None = None,
                options: str = "") -> str:
    """A hash of the input files' names, sizes and modification times (for a series on a DICOM node, of
    the instances it lists), the weights inference uses (default: the bundle's `models/model.pt`), the
    inference `options` (folds, flips) and the formats."""
    h = hashlib.sha256()
    if scan.remote is not None:  # a node's series, retrieved or not: what the node lists
        h.update(f"{scan.remote.identity}\n".encode())
    else:
        for p in _files_of(scan):
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for path in [bundle / "models" / "model.pt"] if weights is None else weights:
        if path.exists():
            st = path.stat()
            h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(f"{options}\n".encode() if options else b"")
    h.update(f"{scan.series_uid}|{','.join(sorted(formats))}".encode())
    return h.hexdigest()


def is_done(case_dir: Path, stamp: str) -> bool:
    marker = case_dir / DONE
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return record.get("fingerprint") == stamp and all((case_dir / f).exists() for f in record.get("files", []))


def _one_line(error: BaseException) -> str:
    text = str(error) if isinstance(error, MedPanopticError) else f"{type(error).__name__}: {error}"
    return " ".join(text.split()) or type(error).__name__


def case_folder(out: Path, case: str) -> Path:
    """`out/<case>`, refused unless `case` is one safe path component whose folder lies inside `out`."""
    if case != safe_component(case):
        raise InputError(case, "a case id must be one safe path component (see medpanoptic.io.paths)")
    inside(out, out / case)
    return out / case


def _write_case(result, out: Path, scan: ScanInput, formats: Sequence[str], stamp: str) -> None:
    """All of a case's files in a temporary folder, then one rename: all or nothing."""
    case_dir = case_folder(out, scan.case)
    tmp = out / f".{scan.case}.tmp-{uuid.uuid4().hex[:8]}"
    inside(out, tmp)
    try:
        written = result.save(tmp / scan.case, formats)
        record = {"case": scan.case, "input": str(scan.path), "series_uid": scan.series_uid, "fingerprint": stamp,
                  "n_instances": result.n_instances, "files": sorted(p.name for p in written.values()),
                  "domain": result.domain, "scale": result.scale}
        (tmp / DONE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        if case_dir.is_symlink():  # replacing it would remove what it points to
            raise InputError(case_dir, "a link where a case folder belongs; refusing to replace it")
        if case_dir.exists():
            shutil.rmtree(inside(out, case_dir))
        os.replace(tmp, case_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove the `.<case>.tmp-XXXXXXXX` folders that a killed run left directly in `out`.

    Only real folders of exactly that name are removed (never a file or a link that looks like
    one); call it only while holding the output lock, or it would take a running case's folder."""
    removed = []
    with os.scandir(out) as entries:
        for entry in entries:
            if _CASE_TEMPORARY.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(inside(out, entry.path))
                removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[Path]:
    """Hold `out/.medpanoptic.lock` exclusively for the block: two runs on one folder would overwrite
    each other's cohort files. Refuses at once (an `InputError` naming the other run's pid)."""
    path = out / LOCK
    inside(out, path)
    fd = _acquire_lock(path)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # before closing: a run that opens the file after this locks a new one
        os.close(fd)


def _acquire_lock(path: Path) -> int:
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise InputError(path.parent, f"another medpanoptic segment run (pid {holder}) is writing to this "
                                          f"output folder; wait for it to finish or choose another --out") from None
        if _same_file(fd, path):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the previous holder removed the file between our open and our lock: lock the new one


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino)


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def segment_cohort(
    inputs: Iterable[str | os.PathLike],
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    formats: Sequence[str] = ("nifti", "table", "png"),
    device: str | None = None,
    resume: bool = True,
    progress: bool = True,
    segmenter=None,
    store: str | None = None,
    strict_domain: bool = False,
    pixel_size: float | Sequence[float] | None = None,
    tta: bool | Sequence[int] = False,
    folds: str | Sequence[int] | None = None,
) -> CohortReport:
    """Segment every case named by `inputs` (files, folders, DICOM studies, CSV manifests, DICOM node
    addresses); see the module docstring. `store`: a DICOM node that gets each case's DICOM SEG;
    `strict_domain`, `pixel_size`, `tta`, `folds`: as `Segmenter`'s (a scan refused as out of domain is a
    failed case; a case done with other weights, flips or pixel size is done again)."""
    from tqdm import tqdm

    from .segment import Segmenter, bundle_path

    rank, world = _rank_world()
    distributed = world > 1
    if distributed:
        import torch
        import torch.distributed as dist

        if device is None and torch.cuda.is_available():
            device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device and device.startswith("cuda") else "gloo")
    out, bundle = Path(out), bundle_path(bundle)
    with _output_folder(out), _claimed(out, rank, distributed):
        segmenter = segmenter or Segmenter.from_bundle(bundle, device=device, tta=tta, folds=folds,
                                                       strict_domain=strict_domain, pixel_size=pixel_size)
        scans = find_scans(inputs, node_cases(out / PACS_CACHE), channels=getattr(segmenter, "channel_files", 1))
        mine = scans[rank::world]
        report = CohortReport()
        weights, options = getattr(segmenter, "weights", None), getattr(segmenter, "inference_options", "")
        if pixel_size:
            options += f"|pixel_size={pixel_size}"
        todo = []
        for scan in mine:
            stamp = fingerprint(scan, bundle, formats, weights, options)
            if resume and is_done(out / scan.case, stamp):  # only reads: a case folder is checked before it is written
                report.skipped.append(scan.case)
            else:
                todo.append((scan, stamp))

        def load(scan: ScanInput):
            from .remote.cache import raise_if_failed

            if scan.remote is not None:
                scan.remote.fetch()  # a node's series is retrieved here, on the reader thread
            raise_if_failed(scan.path)  # a query or listing a DICOM node did not answer fails with its reason
            if scan.channel_files:
                return segmenter.load(list(scan.channel_files), case=scan.case)
            return segmenter.load(scan.path, scan.series_uid or None)

        with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as writer:
            pending_read: Future | None = reader.submit(load, todo[0][0]) if todo else None
            writes: list[tuple[ScanInput, Future]] = []
            bar = tqdm(total=len(todo), desc=f"segmenting (rank {rank})" if distributed else "segmenting", unit="case",
                       disable=not progress or None)
            for i, (scan, stamp) in enumerate(todo):
                current = pending_read
                pending_read = reader.submit(load, todo[i + 1][0]) if i + 1 < len(todo) else None
                try:
                    image = current.result()
                    result = segmenter(image, case=scan.case)
                    writes.append((scan, writer.submit(_write_case, result, out, scan, formats, stamp)))
                except Exception as e:  # one bad case must not stop a cohort
                    report.failed.append({"case": scan.case, "input": str(scan.path), "error": _one_line(e)})
                bar.update(1)
            for scan, job in writes:
                try:
                    job.result()
                    report.done.append(scan.case)
                except Exception as e:
                    report.failed.append({"case": scan.case, "input": str(scan.path), "error": _one_line(e)})
            bar.close()
        _release_nodes(scans)
        if store:
            from .remote.push import store_cases

            report = store_cases(out, report, store)

        _write_json(out / f".rank{rank}.json",
                    {"done": report.done, "skipped": report.skipped, "failed": report.failed})
        if distributed:
            import torch.distributed as dist

            dist.barrier()
        if rank == 0:
            report = _merge_ranks(out, world)
            write_cohort_summary(out, [s.case for s in scans], report, segmenter.label_set)
        if distributed:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
        return report


def _release_nodes(scans: Sequence[ScanInput]) -> None:
    if any(scan.remote is not None for scan in scans):
        from .remote.pull import close_nodes

        close_nodes(scans)


@contextlib.contextmanager
def _output_folder(out: Path) -> Iterator[None]:
    """`out`, made if missing; a run that fails before writing anything removes the folder it made."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: nothing a run wrote is ever removed here
        raise


@contextlib.contextmanager
def _claimed(out: Path, rank: int, distributed: bool) -> Iterator[None]:
    """The output folder, held for the run: rank 0 locks it and clears a killed run's leftovers,
    and under torchrun tells the other ranks whether it could (they all stop if not)."""
    with contextlib.ExitStack() as held:
        error: BaseException | None = None
        if rank == 0:
            try:
                held.enter_context(output_lock(out))
                remove_stale_temporaries(out)
            except (MedPanopticError, OSError) as e:
                error = e
        if distributed:
            import torch.distributed as dist

            shared = [_one_line(error) if error else ""]
            dist.broadcast_object_list(shared, src=0)
            if shared[0] and error is None:
                error = InputError(None, shared[0])
        if error is not None:
            raise error
        yield


def _write_json(path: Path, document: dict) -> None:
    from .io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(document) + "\n")


def _merge_ranks(out: Path, world: int) -> CohortReport:
    merged = CohortReport()
    for r in range(world):
        part = out / f".rank{r}.json"
        record = json.loads(part.read_text(encoding="utf-8"))
        merged.done += record["done"]
        merged.skipped += record["skipped"]
        merged.failed += record["failed"]
        part.unlink()
    return merged


def _csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    from .io.atomic import atomic_paths

    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_paths(path) as (tmp,):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def _domain_cell(done: Path) -> str:
    """The `domain` cell of a case: "ok", the reasons the scan lies outside the bundle's training
    domain joined by "; ", or "not checked" (a bundle without a fingerprint, a case done before)."""
    try:
        domain = json.loads(done.read_text(encoding="utf-8")).get("domain")
    except (OSError, json.JSONDecodeError):
        domain = None
    if not isinstance(domain, dict):
        return "not checked"
    return "ok" if domain.get("ok") else "; ".join(str(r) for r in domain.get("reasons", []))


def write_cohort_summary(out: Path, cases: Sequence[str], report: CohortReport, label_set) -> list[Path]:
    """`instances.csv`, `cases.csv`, `errors.csv` and `cohort_overview.png` from the case folders in `out`."""
    from .io.qc import cohort_overview

    failed = {f["case"] for f in report.failed}
    instance_rows, case_rows = [], []
    for case in cases:
        if case in failed:
            continue
        table = table_paths(case_folder(out, case) / case)["csv"]
        if not table.exists():
            continue
        with open(table, newline="", encoding="utf-8") as f:
            rows = [{"case": case, **r} for r in csv.DictReader(f)]
        instance_rows += rows
        row = {"case": case, "n_instances": len(rows),
               "thing_volume_ml": round(sum(float(r["volume_mm3"]) for r in rows) / 1000.0, 4)}
        for c in label_set:
            if c.is_thing:
                row[f"n_{c.name}"] = sum(1 for r in rows if r["class"] == c.name)
        row["domain"] = _domain_cell(case_folder(out, case) / DONE)
        case_rows.append(row)
    paths = [out / "instances.csv", out / "cases.csv", out / "errors.csv"]
    _csv(paths[0], instance_rows, ["case"])
    _csv(paths[1], case_rows, ["case", "n_instances", "thing_volume_ml"])
    _csv(paths[2], report.failed, ["case", "input", "error"])
    if case_rows:
        things = ", ".join(c.name for c in label_set if c.is_thing) or "things"
        paths.append(cohort_overview([r["case"] for r in case_rows], [r["n_instances"] for r in case_rows],
                                     [r["thing_volume_ml"] for r in case_rows], out / "cohort_overview.png", things))
    from .clinical.html import write_report_page

    thumbnails = {c: case_folder(out, c) / f"{c}_qc.png" for c in cases if c not in failed}
    paths.append(write_report_page(out, "medpanoptic segmentation", {"Cases": case_rows, "Instances": instance_rows,
                                   "Errors": report.failed}, {"cohort overview": out / "cohort_overview.png", **thumbnails}))
    return paths
