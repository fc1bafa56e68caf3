"""Write the training fingerprint (`configs/fingerprint.json`) of a shipped bundle.

The shipped bundles were trained on phantoms (see each bundle's docs/README.md); this script
makes phantoms of the same kind again, from seeds of the same ranges, and summarises them with
`medpanoptic.domain.domain_fingerprint`, plus the typical thing size for the scale estimate
(`medpanoptic.scale.instance_sizes`, at the bundle's own pixel size; for 2D bundles also as
measured on the bundle's own output, `predicted_typical_diameter_px`, the estimate's target).

    python scripts/fingerprint_bundle.py ct_lesion_panoptic
    python scripts/fingerprint_bundle.py nuclei_panoptic_2d
    python scripts/fingerprint_bundle.py all --n 24
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from medpanoptic.domain import FINGERPRINT_FILE, domain_fingerprint
from medpanoptic.io.atomic import atomic_write_text
from medpanoptic.scale import instance_sizes, thing_mask, typical_diameter_px
from medpanoptic.segment import Segmenter, bundle_path
from medpanoptic.synthetic import Phantom, ct_phantom, nuclei_phantom, oblique_direction


def ct_training_phantoms(n: int) -> Iterator[Phantom]:
    """As ct_lesion_panoptic's stages were trained: 96x96x48 at 1x1x2.5 mm, half of the grids rotated
    by up to 25 degrees per axis, 8 to 14 lesions, 30-60% of them touching."""
    for i in range(n):
        seed = 1000 + 1000 * (i % 5) + i
        angles = np.random.default_rng(seed).uniform(-25.0, 25.0, size=3)
        direction = oblique_direction(angles).ravel() if i % 2 else None
        things, touching = ((8, 0.3), (12, 0.5), (14, 0.6))[i % 3]
        yield ct_phantom(direction=direction, n_lesions=things, touching_fraction=touching, seed=seed)


def nuclei_training_phantoms(n: int) -> Iterator[Phantom]:
    """As nuclei_panoptic_2d was trained: 256x256 at 0.5 um, 30 nuclei, 30% touching, half RGB."""
    for i in range(n):
        yield nuclei_phantom(rgb=bool(i % 2), seed=1000 + i)


RECIPES = {
    "ct_lesion_panoptic": (ct_training_phantoms, "CT", (1.0, 1.0, 2.5),
                           "ct_phantom as in docs/README.md (stages 1-7: axial and rotated grids, 8-14 lesions)"),
    "nuclei_panoptic_2d": (nuclei_training_phantoms, "microscopy", (0.0005, 0.0005),
                           "nuclei_phantom as in docs/README.md (256x256, 30 nuclei, half of them RGB)"),
}


def predicted_diameter_px(name: str, phantoms: list[Phantom]) -> float:
    """The typical diameter the scale estimate measures on the bundle's own output for images of its
    training kind at its native scale: the target it compares like with like (the predicted thing
    mask is a little tighter than the truth, by a pixel or so)."""
    seg = Segmenter(name, device="cpu", estimate_scale=False)
    thing_ids = seg.label_set.thing_ids
    measured = [typical_diameter_px(thing_mask(seg(p.image).pair, thing_ids)) for p in phantoms]
    return round(float(np.median([m for m in measured if m is not None])), 3)


def bundle_fingerprint(name: str, n: int) -> dict:
    """The fingerprint document of shipped bundle `name`, from `n` phantoms of its training kind."""
    make, modality, spacing, recipe = RECIPES[name]
    phantoms = list(make(n))
    fingerprint = domain_fingerprint((p.image for p in phantoms), modality=modality)
    fingerprint["instances"] = instance_sizes([p.pair for p in phantoms], phantoms[0].label_set.thing_ids, spacing)
    if len(spacing) == 2:  # the scale estimate is for 2D images without a pixel size
        fingerprint["instances"]["predicted_typical_diameter_px"] = predicted_diameter_px(name, phantoms)
    fingerprint["made_from"] = f"{n} phantoms: {recipe} (scripts/fingerprint_bundle.py)"
    return fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", choices=[*RECIPES, "all"])
    parser.add_argument("--n", type=int, default=16, help="phantoms per bundle (default 16)")
    args = parser.parse_args()
    for name in RECIPES if args.bundle == "all" else [args.bundle]:
        path = Path(bundle_path(name)) / "configs" / FINGERPRINT_FILE
        atomic_write_text(path, json.dumps(bundle_fingerprint(name, args.n), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
