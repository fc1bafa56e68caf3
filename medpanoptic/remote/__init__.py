"""DICOM nodes as inputs and outputs: DICOMweb (QIDO/WADO/STOW-RS) and DIMSE (C-FIND, C-GET, C-STORE).

A remote series is retrieved into a cache folder and then read like any local DICOM folder;
a result goes back as a DICOM SEG into the study it came from. Nothing a server says becomes
a path unchecked, and no credential ever reaches a command line, a log, an error or `done.json`.
"""

from __future__ import annotations

SCHEMES = ("dicomweb", "dicomwebs", "dimse", "dimses")


def is_remote(text: object) -> bool:
    """Whether `text` names a DICOM node (`dicomweb://`, `dicomwebs://`, `dimse://`, `dimses://`) rather than a file."""
    return isinstance(text, str) and text.split("://", 1)[0].lower() in SCHEMES and "://" in text
