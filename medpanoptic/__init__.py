"""medpanoptic: panoptic segmentation for medical images, 2D and 3D, on MONAI and PyTorch.

A result is a (2, *spatial) integer MetaTensor — channel 0 the class label, channel 1 the
instance id — on the scan's own grid, with a `LabelSet` saying which classes are stuff and
which are things.

Names are imported lazily, so that `medpanoptic --help` does not wait for PyTorch and MONAI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

from ._version import __version__

_EXPORTS = {
    "Code": "labels", "LabelClass": "labels", "LabelSet": "labels",
    "make_pair": "pair", "encode_panoptic": "pair", "decode_panoptic": "pair", "PANOPTIC_DIVISOR": "pair",
    "read_scan": "io", "read_panoptic": "io", "write_panoptic": "io",
    "MedPanopticError": "errors", "InputError": "errors", "GeometryError": "errors",
    "LabelSetError": "errors", "PanopticError": "errors",
    "Segmenter": "segment", "PanopticResult": "segment",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs
    from .errors import GeometryError, InputError, LabelSetError, MedPanopticError, PanopticError
    from .io import read_panoptic, read_scan, write_panoptic
    from .labels import Code, LabelClass, LabelSet
    from .pair import PANOPTIC_DIVISOR, decode_panoptic, encode_panoptic, make_pair
    from .segment import PanopticResult, Segmenter


__getattr__ = lazy_exports(__name__, _EXPORTS)
