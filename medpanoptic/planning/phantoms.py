"""Phantom datasets with known truth in each layout `datasets` reads: MSD, nnU-Net v2 raw, microscopy.

The anatomy comes from `synthetic` (`ct_phantom`, `nuclei_phantom`) unchanged; this module only
chooses geometry, contrast and size, and writes files. `PRESETS` name the geometries the issue
asks the planner to follow: anisotropic (0.7x0.7x5 mm), CT-like (0.8x0.8x2.5 mm), MR-like
(0.6x0.6x4 mm, two channels of different contrast) and 2D microscopy with nuclei twice the
shipped size.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..io.atomic import atomic_paths, atomic_write_text
from ..io.decathlon import write_case, write_dataset_json
from ..io.nifti import write_nifti
from ..synthetic import Phantom, ct_phantom, nuclei_phantom, oblique_direction

LAYOUTS = ("msd", "nnunet_v2", "microscopy")
SHIPPED_LESION_RADIUS_MM = (4.0, 9.0)
SHIPPED_NUCLEUS_RADIUS_MM = (0.003, 0.006)


@dataclass(frozen=True)
class Geometry:
    """What a phantom dataset looks like: grid, spacing (mm), channels, thing size relative to the shipped phantoms."""

    dims: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    channels: int = 1
    thing_scale: float = 1.0
    n_things: int = 6
    rgb: bool = False
    touching: float = 0.3


PRESETS: dict[str, Geometry] = {
    "ct": Geometry(3, (96, 96, 48), (0.8, 0.8, 2.5)),
    "anisotropic": Geometry(3, (96, 96, 24), (0.7, 0.7, 5.0)),
    "mr": Geometry(3, (112, 112, 30), (0.6, 0.6, 4.0), channels=2, n_things=5),
    "nuclei": Geometry(2, (256, 256), (0.0005, 0.0005), n_things=30),
    "nuclei_large": Geometry(2, (256, 256), (0.0005, 0.0005), thing_scale=2.0, n_things=10),
}


def phantom_case(geometry: Geometry, seed: int, direction: Sequence[float] | None = None) -> Phantom:
    """One phantom of `geometry`: a CT (or two-channel MR) volume in 3D, a nuclei image in 2D."""
    if geometry.dims == 3:
        radius = tuple(r * geometry.thing_scale for r in SHIPPED_LESION_RADIUS_MM)
        ph = ct_phantom(geometry.shape, geometry.spacing, direction, n_lesions=geometry.n_things,
                        touching_fraction=geometry.touching, lesion_radius_mm=radius, seed=seed)
        return _as_mr(ph, seed) if geometry.channels == 2 else ph
    if geometry.channels not in (1, 3):
        raise ValueError(f"2D phantoms have 1 or 3 (RGB) channels, not {geometry.channels}")
    radius = tuple(r * geometry.thing_scale for r in SHIPPED_NUCLEUS_RADIUS_MM)
    return nuclei_phantom(geometry.shape, geometry.spacing, n_nuclei=geometry.n_things,
                          touching_fraction=geometry.touching, nucleus_radius_mm=radius, rgb=geometry.rgb or geometry.channels == 3, seed=seed)


def _as_mr(ph: Phantom, seed: int) -> Phantom:
    """The CT phantom's anatomy as two MR-like channels of different contrast.

    Channel 0 (T2-like) keeps the CT's structure in arbitrary units (lesions bright or dark);
    channel 1 (ADC-like) has its own contrast: every lesion dark (restricted diffusion), the
    liver darker than soft tissue, the air zero. A network that needs both learns from both.
    """
    import torch

    rng = np.random.default_rng(seed + 7919)
    hu = np.asarray(ph.image[0], dtype=np.float32)
    label = np.asarray(ph.pair[0])
    t2 = np.clip(hu + 1000.0, 0.0, None) * 0.4
    adc_by_class = np.array([0.0, 1400.0, 1000.0, 550.0], dtype=np.float32)
    adc = adc_by_class[np.clip(label, 0, 3)]
    adc = ndimage.gaussian_filter(adc, 0.8) + rng.normal(0.0, 40.0, size=adc.shape).astype(np.float32)
    image = ph.image.clone()
    image.set_array(torch.from_numpy(np.stack([t2, np.clip(adc, 0.0, None)]).astype(np.float32)))
    return Phantom(image, ph.pair, ph.label_set)


def write_phantom_dataset(
    root: str | os.PathLike, layout: str = "msd", n_cases: int = 4, geometry: Geometry | str = "ct", *,
    seed: int = 0, oblique: bool = False, image_format: str = "tif", thing_classes: Sequence[str] = ("nucleus",),
) -> Path:
    """Write `n_cases` phantoms of `geometry` (a `Geometry` or a `PRESETS` name) in `layout`; returns the root.

    Case i uses seed + i. `oblique` rotates the 3D grids (geometry tests). Microscopy images are
    `image_format` ("tif", with the pixel size in its resolution tags, or "png", with none);
    several `thing_classes` give each instance one of them, in classes/<case>.csv.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    geometry = PRESETS[geometry] if isinstance(geometry, str) else geometry
    if layout == "microscopy" and geometry.dims != 2:
        raise ValueError("the microscopy phantom layout is 2D (images/ and masks/ of 2D TIFF or PNG)")
    if layout != "microscopy" and geometry.dims != 3:
        raise ValueError(f"the {layout} phantom layout is written for 3D geometries")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    direction = oblique_direction().ravel() if oblique else None
    phantoms = [(f"phantom_{seed + i:04d}", phantom_case(geometry, seed + i, direction)) for i in range(n_cases)]
    if layout == "microscopy":
        _write_microscopy(root, phantoms, geometry, image_format, tuple(thing_classes))
    elif layout == "nnunet_v2":
        _write_nnunet(root, phantoms, geometry)
    else:
        _write_msd(root, phantoms, geometry)
    return root


def _channel_names(geometry: Geometry) -> list[str]:
    return ["T2", "ADC"] if geometry.channels == 2 else ["CT"]


def _write_msd(root: Path, phantoms: list[tuple[str, Phantom]], geometry: Geometry) -> None:
    training = [write_case(root, case, ph.image, ph.pair) for case, ph in phantoms]
    modality = "MR" if geometry.channels == 2 else "CT"
    write_dataset_json(root, "medpanoptic phantoms (MSD)", phantoms[0][1].label_set, modality, 3, training)
    if geometry.channels == 2:  # MSD names the channels of a multi-channel image in `modality`
        path = root / "dataset.json"
        document = json.loads(path.read_text(encoding="utf-8"))
        document["modality"] = dict(enumerate(_channel_names(geometry)))
        atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def _write_nnunet(root: Path, phantoms: list[tuple[str, Phantom]], geometry: Geometry) -> None:
    """imagesTr/<case>_0000.nii.gz (one file per channel), labelsTr/<case>.nii.gz, dataset.json with `things`."""
    for case, ph in phantoms:
        affine = np.asarray(ph.image.affine, dtype=float)
        image = np.asarray(ph.image, dtype=np.float32)
        paths = [root / "imagesTr" / f"{case}_{c:04d}.nii.gz" for c in range(image.shape[0])]
        with atomic_paths(*paths, root / "labelsTr" / f"{case}.nii.gz") as temps:
            for c, tmp in enumerate(temps[:-1]):
                write_nifti(tmp, image[c], affine)
            write_nifti(temps[-1], np.asarray(ph.pair[0]).astype(np.uint8), affine)
    label_set = phantoms[0][1].label_set
    document = {
        "name": "medpanoptic phantoms (nnU-Net v2)",
        "channel_names": {str(c): n for c, n in enumerate(_channel_names(geometry))},
        "labels": {"background": 0, **{c.name: c.id for c in label_set}},
        "things": [c.name for c in label_set if c.is_thing],
        "numTraining": len(phantoms),
        "file_ending": ".nii.gz",
    }
    atomic_write_text(root / "dataset.json", json.dumps(document, indent=2) + "\n")


def _write_microscopy(root: Path, phantoms: list[tuple[str, Phantom]], geometry: Geometry, image_format: str,
                      thing_classes: tuple[str, ...]) -> None:
    """images/<case>.<fmt> (channels last for RGB), masks/<case>.<fmt> with instance ids, classes/<case>.csv."""
    if image_format not in ("tif", "png"):
        raise ValueError(f"image_format must be 'tif' or 'png', not {image_format!r}")
    for case, ph in phantoms:
        image = np.asarray(ph.image)
        mask = np.asarray(ph.pair[1])
        targets = [root / "images" / f"{case}.{image_format}", root / "masks" / f"{case}.{image_format}"]
        with atomic_paths(*targets) as (image_tmp, mask_tmp):
            picture = np.clip(image, 0, 255).round().astype(np.uint8)
            picture = picture[0].T if picture.shape[0] == 1 else np.moveaxis(picture, 0, -1).transpose(1, 0, 2)
            _write_picture(image_tmp, picture, geometry.spacing[0], image_format)
            _write_picture(mask_tmp, mask.T.astype(np.uint16), geometry.spacing[0], image_format)
        if len(thing_classes) > 1:
            rows = io.StringIO()
            writer = csv.writer(rows)
            writer.writerow(["instance", "class"])
            for inst in range(1, int(mask.max()) + 1):
                writer.writerow([inst, thing_classes[inst % len(thing_classes)]])
            atomic_write_text(root / "classes" / f"{case}.csv", rows.getvalue())


def _write_picture(path: Path, array: np.ndarray, pixel_mm: float, image_format: str) -> None:
    """A (rows, columns[, 3]) picture; TIFF carries the pixel size in its resolution tags (pixels per cm)."""
    if image_format == "tif":
        import tifffile

        per_cm = 10.0 / pixel_mm
        tifffile.imwrite(path, array, resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
                         photometric="rgb" if array.ndim == 3 else "minisblack")
    else:
        from PIL import Image

        Image.fromarray(array if array.dtype == np.uint8 or array.ndim == 3 else array.astype(np.uint16)).save(path)
