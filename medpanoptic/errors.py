"""Exception types: every error names the file (or object) and the rule it broke."""

from __future__ import annotations

import os


class MedPanopticError(Exception):
    """Base class of every error this toolkit raises on purpose."""


class LabelSetError(MedPanopticError, ValueError):
    """A label set breaks a rule (duplicate id, reserved id 0, unknown kind, ...)."""


class InputError(MedPanopticError, ValueError):
    """An input file or folder cannot be used; the message says which and why."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{self.path}: {problem}")


class GeometryError(InputError):
    """Voxels would land at the wrong place in the patient: refused, never guessed."""


class PanopticError(MedPanopticError, ValueError):
    """A panoptic pair is malformed (shape, dtype, instance ids, divisor overflow)."""


class RemoteError(InputError):
    """A DICOM node (DICOMweb or DIMSE) refused, failed or timed out; the message names the node, never a secret."""
