"""The Python API: load a bundle once, segment scans one after another.

    seg = Segmenter.from_bundle("bundles/ct_lesion_panoptic")
    result = seg("scan_dicom_folder/")            # or a NIfTI path, or a MetaTensor image
    result.save("out/patient1", formats=("nifti", "dicom-seg", "table", "png"))   # see io.formats
    df = result.table()                            # one row per lesion

`Segmenter` builds the bundle's own `inference.json` pieces (pre-processing, network, inferer,
grouping, inversion), so a script gets exactly what `python -m monai.bundle run` writes.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from monai.data import MetaTensor

from .ensemble import model_weights, parse_tta
from .errors import InputError, PanopticError
from .io.formats import WRITERS, check_formats, write_formats
from .io.segments import Numbering, segment_map
from .io.table import instance_table
from .labels import LabelSet
from .pair import PairStats, check_pair

if TYPE_CHECKING:
    from .domain import DomainCheck
    from .scale import ScaleEstimate
    from .transforms import PanopticPostprocess

log = logging.getLogger(__name__)

BUNDLES_ENV = "MEDPANOPTIC_BUNDLES"


_BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def shipped_bundles() -> Path:
    """The folder of the bundles that ship with medpanoptic: `medpanoptic/_bundles` in an installed
    wheel, the checkout's top-level `bundles/` in a source tree or an editable install."""
    packaged = Path(__file__).resolve().parent / "_bundles"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "bundles"


def bundle_path(name_or_path: str | os.PathLike) -> Path:
    """The bundle folder that `name_or_path` names.

    A bundle is code (MONAI evaluates the `$` expressions of its configs), so a local folder is
    only ever taken when asked for by path (`./mine`, `/opt/b`, anything with a path separator);
    a bare name (`ct_lesion_panoptic`) means a shipped bundle or one in $MEDPANOPTIC_BUNDLES,
    never a folder of that name in the current directory."""
    text = os.fspath(name_or_path)
    if _is_path(text):
        if not Path(text).is_dir():
            raise InputError(text, "no such bundle folder")
        return Path(text)
    if not _BUNDLE_NAME.fullmatch(text):
        raise InputError(text, "not a bundle name (letters, digits, '.', '_', '-'); "
                               "give a local bundle folder as a path, e.g. ./NAME")
    roots = [Path(p) for p in os.environ.get(BUNDLES_ENV, "").split(os.pathsep) if p] + [shipped_bundles()]
    for root in roots:
        if (root / text / "configs").is_dir():
            return root / text
    raise InputError(text, f"no shipped bundle of that name (looked in {', '.join(map(str, roots))}); "
                           f"give a local bundle folder as a path, e.g. ./{text}")


def bundle_config(bundle: str | os.PathLike, *names: str):
    """A `ConfigParser` of the bundle's `configs/<names>` (merged in order, as `--config_file "[...]"`
    merges them), usable from any working directory: `bundle_root` is the folder, and the macros
    into the bundle's own files (`%configs/postprocess.json#panoptic`) are anchored to it, where
    MONAI would read them relative to the current directory."""
    from monai.bundle import ConfigParser

    root = Path(bundle).resolve()
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / name) for name in names])
    parser.set(_anchor_macros(parser.get(), root))
    parser["bundle_root"] = str(root)
    return parser


def _anchor_macros(node, root: Path):
    """`node` with every relative macro file (`%path.json#id`) made a path inside `root`."""
    from monai.bundle import ConfigParser

    if isinstance(node, dict):
        return {k: _anchor_macros(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_anchor_macros(v, root) for v in node]
    if isinstance(node, str) and node.startswith("%"):
        path, ids = ConfigParser.split_path_id(node[1:])
        if path and not Path(path).is_absolute():
            return f"%{root / path}#{ids}"
    return node


def _is_path(text: str) -> bool:
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return text in (".", "..") or any(sep in text for sep in separators)


@dataclass
class PanopticResult:
    """A panoptic result on the source scan's grid, with what is needed to export and report it.

    What is derived from the pair (`pair_stats`, `segment_map`, `instance_table`) is computed on
    first use and kept, so that writing every format passes over the voxels once for statistics
    and once for segment numbering. A result is therefore not to be changed once made: build a
    new one for another pair.
    """

    pair: MetaTensor  # (2, *spatial) int32: label, instance
    label_set: LabelSet
    scores: dict[int, float] | None = field(default_factory=dict)  # None: the result's maker gave no scores
    source: MetaTensor | None = None  # the scan as read: DICOM identity for SEG, intensities for the table
    case: str = "case"
    dropped_instances: int = 0  # found on the network's grid, but with no voxel left on the source grid
    domain: dict | None = None  # {"ok", "reasons"}: the scan against the bundle's training fingerprint; None: not checked
    scale: dict | None = None  # how a 2D image was rescaled to the bundle's scale (`scale.ScaleEstimate.to_dict`)

    @property
    def label(self) -> torch.Tensor:
        return self.pair[0]

    @property
    def instance(self) -> torch.Tensor:
        return self.pair[1]

    @property
    def is_dicom(self) -> bool:
        """Whether the source scan was DICOM (what a DICOM SEG export needs)."""
        return self.source is not None and str(self.source.meta.get("source_format", "")).startswith("dicom")

    @cached_property
    def pair_stats(self) -> PairStats:
        """The pair's statistics (`pair.pair_stats`), gathered while it is held to the rules of
        `pair.check_pair` (a malformed pair raises `PanopticError` naming the case)."""
        stats = check_pair(self.pair.detach().cpu(), self.label_set, source=f"case {self.case}")
        if stats is None:
            raise PanopticError(f"case {self.case}: the result has no voxels")
        return stats

    @cached_property
    def segment_map(self) -> Numbering:
        """The viewer segment numbering (`io.segments.segment_map`) that every viewer export shares."""
        return segment_map(self.pair, self.label_set, stats=self.pair_stats)

    @cached_property
    def instance_table(self) -> list[dict]:
        """The instance table (`io.table`: one schema, units in the column names), with the source's
        intensities when it is on the result's grid and a score column when the result has scores."""
        on_grid = self.source is not None and tuple(self.source.shape[1:]) == tuple(self.pair.shape[1:])
        return instance_table(self.pair, self.label_set, self.source if on_grid else None, self.scores,
                              stats=self.pair_stats)

    @property
    def n_instances(self) -> int:
        """How many instances the pair holds (distinct ids > 0), not the largest id."""
        return int(self.pair_stats.ids.size)

    def rows(self) -> list[dict]:
        """The instance table as dictionaries (copies: changing them leaves the result's table as it is)."""
        return copy.deepcopy(self.instance_table)

    def table(self):
        """The instance table as a pandas DataFrame (a list of dicts when pandas is not installed)."""
        rows = self.rows()
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows)

    def to_dicom_seg(self, path: str | os.PathLike, segmentation_type: str = "BINARY") -> Path:
        """Write a DICOM SEG referencing the source series (the scan must have been DICOM)."""
        from .io.dicom_seg import write_dicom_seg

        if self.source is None:
            raise InputError(None, "a DICOM SEG needs the source scan; this result has none")
        return write_dicom_seg(self.pair, self.label_set, self.source, path, segmentation_type=segmentation_type,
                               numbering=self.segment_map)

    def save(self, stem: str | os.PathLike, formats: Iterable[str] = ("nifti", "table")) -> dict[str, Path]:
        """Write the chosen formats beside `stem` (the names of `io.formats.WRITERS`: `nifti`, label +
        instance maps and JSON; the viewer exports; `table`; `png`, the QC montage). DICOM SEG is
        written only for DICOM sources, GeoJSON only for 2D results. Returns every path by name."""
        formats = check_formats(formats)
        if not self.is_dicom:  # a DICOM SEG references DICOM source slices: NIfTI and other sources have none
            formats = [f for f in formats if not WRITERS[f].needs_dicom]
        formats = [f for f in formats if self.pair.ndim - 1 in WRITERS[f].spatial_dims]  # GeoJSON: 2D only
        Path(stem).parent.mkdir(parents=True, exist_ok=True)
        return write_formats(self, stem, formats)


class Segmenter:
    """A bundle's inference, loaded once: call it on scans to get `PanopticResult`s.

    `folds` picks the weights (`model_weights`: one model, or a fold ensemble whose outputs are
    averaged); `tta` flips the input along every subset of the spatial axes (True) or of the axes
    listed, and averages the outputs (`ensemble.FlipAveraged`). Both average logits, centres and
    offsets before grouping.
    """

    def __init__(self, bundle: str | os.PathLike, device: str | torch.device | None = None, *,
                 tta: bool | str | Iterable[int] = False, folds: str | Iterable[int] | None = None,
                 strict_domain: bool = False, pixel_size: float | Sequence[float] | None = None,
                 estimate_scale: bool = True, **overrides) -> None:
        """`strict_domain`: refuse (InputError) a scan far outside the bundle's training fingerprint,
        instead of a warning. `pixel_size` (mm) replaces a 2D image's own (or missing) pixel size;
        `estimate_scale` False turns off the object-size estimate for 2D images without one.
        `overrides` set config values (e.g. `nms_mm=5.0`)."""
        self.bundle = bundle_path(bundle)
        config = self.bundle / "configs" / "inference.json"
        if not config.is_file():
            raise InputError(config, "missing: not a medpanoptic bundle folder")
        self.weights = model_weights(self.bundle, folds)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        parser = bundle_config(self.bundle, config.name)
        parser["device"] = f"$torch.device('{self.device}')"
        if "min_volume_mm3" in overrides:
            from .postprocess import deprecated_min_size

            overrides["min_size_mm"] = deprecated_min_size(overrides.pop("min_volume_mm3"))
        for key, value in overrides.items():
            parser[key] = value
        self.label_set: LabelSet = parser.get_parsed_content("label_set")
        template = parser.get_parsed_content("network_def")
        self.networks = [self._load_network(copy.deepcopy(template), weights) for weights in self.weights]
        self.spatial_dims = self.networks[0].layout.spatial_dims
        self.channel_files = int(parser.get_parsed_content("channel_files")) if "channel_files" in parser else 1
        """Files per case: > 1 where the bundle reads one file per channel (`find_scans(channels=...)`)."""
        self.tta = parse_tta(tta) if isinstance(tta, str) else tta if isinstance(tta, bool) else sorted({int(a) for a in tta})
        self.network = self._inference_network()
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        self.panoptic = parser.get_parsed_content("panoptic")
        self.invert = parser.get_parsed_content("invert")
        self._init_domain_and_scale(parser, strict_domain, pixel_size, estimate_scale)

    def _init_domain_and_scale(self, parser, strict_domain: bool, pixel_size, estimate_scale: bool) -> None:
        from .domain import load_fingerprint

        self.strict_domain = strict_domain
        self.fingerprint = load_fingerprint(self.bundle)
        if self.fingerprint is None:
            log.warning("bundle %s has no configs/fingerprint.json: scans are not checked against its training domain",
                        self.bundle.name)
        native = parser.get_parsed_content("pixel_size_mm") if "pixel_size_mm" in parser else None
        self.native_pixel_size_mm = None if native is None else float(native[0])  # 2D bundles: the scale they expect
        self.pixel_size = None if pixel_size is None else _pixel_size(pixel_size, self.spatial_dims)
        if self.pixel_size is not None and self.native_pixel_size_mm is None:
            raise InputError(self.bundle, "a pixel size is only taken by 2D bundles that state theirs (pixel_size_mm)")
        self.target_diameter_px = _target_diameter_px(self.fingerprint)
        self.estimate_scale = estimate_scale and self.target_diameter_px is not None

    def _load_network(self, network: torch.nn.Module, weights: Path) -> torch.nn.Module:
        """`network` (a fresh copy of the bundle's `network_def`) with `weights`, on the device, in eval mode."""
        network = network.to(self.device)
        network.load_state_dict(torch.load(weights, map_location=self.device, weights_only=True))
        return network.eval()

    def _inference_network(self) -> torch.nn.Module:
        """The loaded network, or the mean of the folds, flip-averaged when `tta` asks (`ensemble.averaged`)."""
        from .ensemble import averaged

        if self.tta and not isinstance(self.tta, bool):
            outside = [a for a in self.tta if a >= self.spatial_dims]
            if outside:
                raise InputError(None, f"tta axes {outside}: the bundle {self.bundle.name} segments "
                                       f"{self.spatial_dims}D images (spatial axes 0..{self.spatial_dims - 1})")
        return averaged(self.networks, self.tta).eval()

    @property
    def inference_options(self) -> str:
        """The weights and flips inference averages, in words (the cohort's resume stamp takes them in)."""
        flips = "all axes" if self.tta is True else (",".join(map(str, self.tta)) if self.tta else "off")
        return f"weights={','.join(str(w.relative_to(self.bundle)) for w in self.weights)} tta={flips}"

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, device: str | torch.device | None = None, **overrides) -> "Segmenter":
        """Load `path`'s inference config and weights; `overrides` set config values (e.g. `nms_mm=5.0`),
        and `tta=` / `folds=` choose the averaging (see the class)."""
        return cls(path, device, **overrides)

    def load(self, scan: str | os.PathLike | Sequence[str | os.PathLike] | MetaTensor, series_uid: str | None = None,
             case: str | None = None) -> MetaTensor:
        """Read a scan (or its channel files, a list; or take an image MetaTensor) and check that it fits the bundle."""
        from .io.scan import read_scan, read_scan_channels

        if isinstance(scan, (list, tuple)):
            image = read_scan_channels(scan, case)
        else:
            image = scan if isinstance(scan, torch.Tensor) else read_scan(scan, series_uid)
        if not isinstance(image, MetaTensor):
            raise InputError(None, "an image tensor needs its geometry: pass a MetaTensor with an affine")
        source = image.meta.get("filename_or_obj", "image")
        if image.ndim - 1 != self.spatial_dims:
            raise InputError(source, f"a {image.ndim - 1}D image; the bundle {self.bundle.name} segments "
                                     f"{self.spatial_dims}D {'volumes' if self.spatial_dims == 3 else 'images'}")
        if min(image.shape[1:]) < 2:
            raise InputError(source, f"a grid of {tuple(image.shape[1:])} voxels is too small to segment")
        if self.channel_files > 1 and image.shape[0] != self.channel_files:
            last = f"_{self.channel_files - 1:04d}"
            raise InputError(source, f"{image.shape[0]} channel(s); the bundle {self.bundle.name} takes "
                                     f"{self.channel_files}, one file per channel (<case>_0000 .. <case>{last})")
        return image

    def forward(self, image: MetaTensor) -> dict:
        """Pre-process and run the network on one loaded image: the dictionary `group` takes, whose
        `pred` is the network's output tensor on the pre-processed grid."""
        data = self.preprocessing({"image": image.clone()})
        x = data["image"][None].to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            output = self.inferer(x, self.network)
        data["pred"] = output[0].float()
        return data

    def group(self, data: dict, postprocess: "PanopticPostprocess | None" = None) -> dict:
        """Group the instances of a `forward` output and invert them onto the scan's grid.

        `postprocess` replaces the bundle's grouping for this call (e.g. connected components,
        `PanopticPostprocess(seg.label_set, mode="components")`, or other knobs). `data` is left
        as it was, so one network output can be grouped several ways."""
        from .transforms import PanopticPostprocessd

        grouping = self.panoptic if postprocess is None else PanopticPostprocessd("pred", postprocess=postprocess)
        return self.invert(grouping(dict(data)))

    def infer(self, image: MetaTensor, postprocess: "PanopticPostprocess | None" = None) -> dict:
        """The bundle's inference on one loaded image (`forward`, then `group`): `data["pred"]` is
        the pair on the scan's grid."""
        return self.group(self.forward(image), postprocess)

    def __call__(self, scan: str | os.PathLike | Sequence[str | os.PathLike] | MetaTensor, series_uid: str | None = None,
                 case: str | None = None, postprocess: "PanopticPostprocess | None" = None) -> PanopticResult:
        """Segment one scan (a path, or an image MetaTensor); `postprocess` as in `infer`."""
        from .io.inputs import case_name
        from .io.panoptic import source_identity

        image = self.load(scan, series_uid, case)
        domain = self.check_domain(image)
        values, scores, dropped, scale = self._segment(image, postprocess)
        if values.shape[1:] != image.shape[1:]:
            raise InputError(image.meta.get("filename_or_obj"), "the inverted result is not on the scan's grid")
        pair = MetaTensor(values, affine=image.affine.clone(),
                          meta={"filename_or_obj": image.meta.get("filename_or_obj"), **source_identity(image.meta)})
        name = case or image.meta.get("case") or case_name(image.meta.get("filename_or_obj", "case"))
        return PanopticResult(pair, self.label_set, scores, image, name, dropped_instances=len(dropped),
                              domain=domain.to_dict() if domain.checked else None,
                              scale=None if scale is None else scale.to_dict())

    def check_domain(self, image: MetaTensor) -> "DomainCheck":
        """The scan against the bundle's training fingerprint (`domain.check_domain`): a scan far
        outside it is logged as a warning naming it and the reasons, or refused with `strict_domain`."""
        from .domain import domain_check

        check = domain_check(self.fingerprint, image, self.pixel_size)
        if check.ok:
            return check
        source = image.meta.get("filename_or_obj", "image")
        if self.strict_domain:
            raise InputError(source, f"outside the training domain of bundle {self.bundle.name}: {check.summary()} "
                                     "(refused: --strict-domain)")
        log.warning("%s: outside the training domain of bundle %s: %s", source, self.bundle.name, check.summary())
        return check

    def _segment(self, image: MetaTensor, postprocess) -> tuple[torch.Tensor, dict, list, "ScaleEstimate | None"]:
        """The pair on the source grid, scores, dropped ids and how the image was rescaled: a 2D
        image goes to the network at the bundle's pixel size, from the pixel size given, the
        file's, or the estimate from its objects (`scale`); 3D scans as the bundle resamples them."""
        from .io.scan import PIXEL_SIZE_KNOWN
        from .scale import ScaleEstimate, clamp_factor, estimate_and_segment, segment_scaled

        def segment(work: MetaTensor) -> dict:
            return self.infer(work, postprocess)

        if self.native_pixel_size_mm is None:
            return (*segment_scaled(segment, image, 1.0, self.label_set.thing_ids)[:3], None)
        if self.pixel_size is not None or image.meta.get(PIXEL_SIZE_KNOWN, True):
            method = "given" if self.pixel_size is not None else "file"
            size = float(self.pixel_size[0]) if self.pixel_size is not None else float(_image_pixel_size(image))
            factor = clamp_factor(size / self.native_pixel_size_mm)
            factor = 1.0 if math.isclose(factor, 1.0, rel_tol=1e-6) else factor
            return (*segment_scaled(segment, image, factor, self.label_set.thing_ids)[:3],
                    ScaleEstimate(factor, method, pixel_size_mm=size))
        if not self.estimate_scale:
            return (*segment_scaled(segment, image, 1.0, self.label_set.thing_ids)[:3], ScaleEstimate(1.0, "none"))
        instances = (self.fingerprint or {}).get("instances") or {}
        values, scores, dropped, estimate = estimate_and_segment(segment, image, self.label_set.thing_ids,
                                                                 self.target_diameter_px,
                                                                 instances.get("predicted_instance_diameter_px"))
        report = log.warning if estimate.factor != 1.0 else log.info
        report("%s: no pixel size in the file; objects about %.1f px wide, rescaled by %.3g to the bundle's "
               "%.1f px (give --pixel-size to override)", image.meta.get("filename_or_obj", "image"),
               estimate.estimated_diameter_px or float("nan"), estimate.factor, self.target_diameter_px)
        return values, scores, dropped, estimate


def _pixel_size(value: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    """A pixel size in mm, one value or one per axis, all equal (the scale path rescales isotropically)."""
    values = [value] if isinstance(value, (int, float)) else list(value)
    sizes = tuple(float(v) for v in values) * (ndim if len(values) == 1 else 1)  # one value: every axis
    if len(sizes) != ndim or not all(math.isfinite(v) and v > 0 for v in sizes) or len(set(sizes)) > 1:
        raise InputError(None, f"pixel size {value!r}: expected one positive number of mm (or {ndim} equal ones)")
    return sizes


def _target_diameter_px(fingerprint: dict | None) -> float | None:
    """The object diameter (px) the scale estimate rescales to: as measured on the bundle's own output
    at its native scale when the fingerprint has it (like compared with like), else on the training truth."""
    instances = (fingerprint or {}).get("instances") or {}
    if instances.get("predicted_typical_diameter_px"):
        return float(instances["predicted_typical_diameter_px"])
    typical = instances.get("typical_diameter_px")
    return float(typical[0]) if typical else None


def _image_pixel_size(image: MetaTensor) -> float:
    from .io.geometry import spacing_from_affine

    return float(spacing_from_affine(image.affine.numpy(), image.ndim - 1).mean())
