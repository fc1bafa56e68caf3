"""Reading scans and panoptic results, and writing results, all in the scan's physical space.

Names are imported on first use, so that reading a header (`medpanoptic info`) does not wait for PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "read_scan": "scan", "read_panoptic": "panoptic", "write_panoptic": "panoptic", "panoptic_paths": "panoptic",
    "write_dicom_series": "dicom_write",
}

__all__ = ["read_scan", "read_panoptic", "write_panoptic", "panoptic_paths", "write_dicom_series"]

if TYPE_CHECKING:  # for type checkers and IDEs
    from .dicom_write import write_dicom_series
    from .panoptic import panoptic_paths, read_panoptic, write_panoptic
    from .scan import read_scan


__getattr__ = lazy_exports(__name__, _EXPORTS)
