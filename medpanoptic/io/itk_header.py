"""NRRD and MetaImage (MHA/MHD) headers, read as text before ITK allocates or guesses anything.

ITK fills a missing spacing with 1.0, mirrors a negative one silently, reads a truncated
compressed MetaImage as zeros and opens whatever data file a header names. The header is
untrusted, so these rules are checked here first, each refusal naming the field.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GeometryError, InputError
from .formats import SCAN_FORMAT_OF
from .geometry import check_spacing
from .limits import truncated
from .paths import inside

logger = logging.getLogger("medpanoptic")

MAX_HEADER_BYTES = 1 << 20
"""A text header longer than this is not a header."""

NRRD_SPATIAL_KINDS = {"domain", "space"}


@dataclass
class TextHeader:
    """The fields of a NRRD or MetaImage header (keys lower-case) and where its voxel data lies."""

    path: Path
    fields: dict[str, str]
    data_offset: int | None
    """Byte offset of voxel data attached to the header file; None when the data lies in another file."""
    data_file: Path | None
    """The detached data file, checked to lie in the header's folder; None when attached."""
    compressed: bool


def _lines(path: Path) -> tuple[list[bytes], bytes]:
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    return head.split(b"\n"), head


def _detached(path: Path, name: str, field: str) -> Path:
    if name.upper().startswith("LIST") or "%" in name or " " in name.strip():
        raise InputError(path, f"{field} '{name}' names several data files: multi-file data is not supported")
    try:
        return inside(path.parent, path.parent / name)
    except InputError:
        raise InputError(path, f"{field} '{name}' points outside the header's folder: refused") from None


def read_nrrd_header(path: Path) -> TextHeader:
    lines, head = _lines(path)
    if not lines[0].startswith(b"NRRD"):
        raise InputError(path, "not a NRRD file (no 'NRRD000x' magic line)")
    fields, offset = {}, None
    position = len(lines[0]) + 1
    for line in lines[1:]:
        position += len(line) + 1
        text = line.decode("latin-1").rstrip("\r")
        if not text:
            offset = position
            break
        if text.startswith("#"):
            continue
        key, sep, value = text.partition(":")
        if sep and not value.startswith("="):
            fields[key.strip().lower()] = value.strip()
    data_name = fields.get("data file") or fields.get("datafile")
    data_file = _detached(path, data_name, "data file") if data_name else None
    if data_file is None and offset is None:
        offset = len(head)  # header without data: ITK reports that
    encoding = fields.get("encoding", "raw").lower()
    return TextHeader(path, fields, None if data_file else offset, data_file, encoding in ("gzip", "gz"))


def read_meta_header(path: Path) -> TextHeader:
    lines, _ = _lines(path)
    fields, position = {}, 0
    for line in lines:
        position += len(line) + 1
        key, sep, value = line.decode("latin-1").rstrip("\r").partition("=")
        if not sep:
            continue
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            break
    name = fields.get("elementdatafile")
    if name is None:
        raise InputError(path, "not a MetaImage header (no ElementDataFile field)")
    local = name.upper() == "LOCAL"
    data_file = None if local else _detached(path, name, "ElementDataFile")
    compressed = fields.get("compresseddata", "false").lower() == "true"
    return TextHeader(path, fields, position if local else None, data_file, compressed)


def read_text_header(path: Path, suffix: str) -> TextHeader:
    """The header of a .nrrd/.nhdr or .mha/.mhd file."""
    return read_nrrd_header(path) if SCAN_FORMAT_OF[suffix].name == "nrrd" else read_meta_header(path)


def _numbers(path: Path, field: str, text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise GeometryError(path, f"{field} is not a list of numbers: {text!r}") from None


def _nrrd_spacing(header: TextHeader) -> list[float] | None:
    """Voxel sizes of the spatial axes of a NRRD header, or None when it gives none."""
    kinds = header.fields.get("kinds", "").lower().split()
    spatial = [k in NRRD_SPATIAL_KINDS for k in kinds] if kinds else None
    if "space directions" in header.fields:
        tokens = re.findall(r"\([^)]*\)|none", header.fields["space directions"], flags=re.IGNORECASE)
        vectors = [None if t.lower() == "none" else _numbers(header.path, "space directions", t.strip("()")) for t in tokens]
        return [float(np.linalg.norm(v)) if all(np.isfinite(v)) else float("nan") for v in vectors if v is not None]
    if "spacings" in header.fields:
        values = header.fields["spacings"].split()
        spatial = spatial or [True] * len(values)
        return [_numbers(header.path, "spacings", v)[0] if v.lower() != "nan" else float("nan")
                for v, keep in zip(values, spatial) if keep]
    return None


def _meta_spacing(header: TextHeader) -> list[float] | None:
    for field in ("elementspacing", "elementsize"):
        if field in header.fields:
            return _numbers(header.path, "ElementSpacing" if field == "elementspacing" else "ElementSize",
                            header.fields[field])
    return None


def check_header_geometry(header: TextHeader, suffix: str, allow_guessed_geometry: bool = False) -> None:
    """Refuse a zero, negative or non-finite voxel size; a missing one only with a logged override."""
    nrrd = SCAN_FORMAT_OF[suffix].name == "nrrd"
    spacing = _nrrd_spacing(header) if nrrd else _meta_spacing(header)
    field = ("space directions" if "space directions" in header.fields else "spacings") if nrrd else "ElementSpacing"
    if spacing is None:
        problem = f"the header gives no voxel size ({'spacings / space directions' if nrrd else 'ElementSpacing'})"
        if not allow_guessed_geometry:
            raise GeometryError(header.path, f"{problem}: ITK would guess 1 mm (pass allow_guessed_geometry=True to accept that)")
        logger.warning("%s: %s; accepting ITK's guess of 1 mm because allow_guessed_geometry=True", header.path, problem)
        return
    check_spacing(spacing, os.fspath(header.path), field)


def check_payload(header: TextHeader, needed: int) -> None:
    """Refuse a file that holds fewer voxel bytes than the header declares (raw or zlib/gzip data)."""
    source = header.data_file or header.path
    offset = header.data_offset or 0
    if header.data_file is not None and ("byte skip" in header.fields or "line skip" in header.fields):
        return  # a skip we would have to interpret like ITK; ITK checks the length itself
    if not source.is_file():
        raise InputError(header.path, f"its data file {source.name} does not exist")
    if not header.compressed:
        present = max(0, source.stat().st_size - offset)
        if present < needed:
            raise truncated(source, needed, present)
        return
    present = _inflated_size(source, offset, needed)
    if present < needed:
        raise truncated(source, needed, present)


def _inflated_size(source: Path, offset: int, needed: int) -> int:
    """How many bytes a zlib or gzip stream unpacks to (stops counting once `needed` is reached)."""
    inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip, told apart by the stream
    total = 0
    with open(source, "rb") as f:
        f.seek(offset)
        while total < needed:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            try:
                total += len(inflate.decompress(chunk, needed - total + 1))
                while inflate.unconsumed_tail and total < needed:
                    total += len(inflate.decompress(inflate.unconsumed_tail, needed - total + 1))
            except zlib.error:
                break
            if inflate.eof:
                break
    return total
