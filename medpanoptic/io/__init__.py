"""Reading scans and panoptic results, and writing results, all in the scan's physical space."""

from .dicom_write import write_dicom_series
from .panoptic import panoptic_paths, read_panoptic, write_panoptic
from .scan import read_scan

__all__ = ["read_scan", "read_panoptic", "write_panoptic", "panoptic_paths", "write_dicom_series"]
