"""medpanoptic: panoptic segmentation for medical images, 2D and 3D, on MONAI and PyTorch.

A result is a (2, *spatial) integer MetaTensor — channel 0 the class label, channel 1 the
instance id — on the scan's own grid, with a `LabelSet` saying which classes are stuff and
which are things.
"""

from .errors import GeometryError, InputError, LabelSetError, MedPanopticError, PanopticError
from .io import read_panoptic, read_scan, write_panoptic
from .labels import Code, LabelClass, LabelSet
from .pair import PANOPTIC_DIVISOR, decode_panoptic, encode_panoptic, make_pair

__version__ = "0.1.0"

__all__ = [
    "Code", "LabelClass", "LabelSet", "make_pair", "encode_panoptic", "decode_panoptic", "PANOPTIC_DIVISOR",
    "read_scan", "read_panoptic", "write_panoptic",
    "MedPanopticError", "InputError", "GeometryError", "LabelSetError", "PanopticError",
]
