"""`medpanoptic plan` and the layout options of `medpanoptic phantom`; thin layers over the planning API."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..errors import MedPanopticError

LAYOUT_CHOICES = ("msd", "nnunet_v2", "microscopy")
PRESET_CHOICES = ("ct", "anisotropic", "mr", "nuclei", "nuclei_large")


# -- phantom --layout ---------------------------------------------------------------------------
def configure_phantom_layouts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", choices=LAYOUT_CHOICES, default="msd",
                   help="dataset layout: msd (default), nnunet_v2 (imagesTr/<case>_0000...) or microscopy (images/, masks/)")
    p.add_argument("--preset", choices=PRESET_CHOICES,
                   help="geometry: ct (0.8x0.8x2.5 mm), anisotropic (0.7x0.7x5 mm), mr (0.6x0.6x4 mm, two channels), "
                        "nuclei (2D), nuclei_large (2D, nuclei twice the shipped size)")
    p.add_argument("--channels", type=int, choices=(1, 2, 3), help="3D: 2 = two MR-like channels; 2D: 3 = RGB")
    p.add_argument("--thing-scale", type=float, help="thing size relative to the shipped phantoms (e.g. 2 = twice)")
    p.add_argument("--format", choices=("tif", "png"), help="microscopy pictures: tif (with pixel size) or png (none)")
    p.add_argument("--classes", help="microscopy: several thing classes, e.g. 'tumour,lymphocyte' (classes/<case>.csv)")


def run_phantom_layout(args: argparse.Namespace) -> int:
    """`medpanoptic phantom --layout ...`: a phantom dataset of a preset geometry, with the command's overrides."""
    from .phantoms import PRESETS, write_phantom_dataset

    dims = 2 if args.layout == "microscopy" else args.dims
    preset = args.preset or ("nuclei" if dims == 2 else "ct")
    geometry = PRESETS[preset]
    if geometry.dims != dims:
        raise MedPanopticError(f"--preset {preset} is {geometry.dims}D, the {args.layout} layout needs {dims}D")
    if args.thing_scale is not None and not args.thing_scale > 0:
        raise MedPanopticError(f"--thing-scale must be positive, got {args.thing_scale}")
    overrides = {"shape": args.shape, "spacing": args.spacing, "n_things": args.things, "channels": args.channels,
                 "thing_scale": args.thing_scale, "touching": args.touching, "rgb": args.rgb or None}
    geometry = replace(geometry, **{k: v for k, v in overrides.items() if v is not None})
    if len(geometry.shape) != geometry.dims or len(geometry.spacing) != geometry.dims:
        raise MedPanopticError(f"--shape and --spacing need {geometry.dims} values for a {geometry.dims}D phantom")
    classes = tuple(c.strip() for c in args.classes.split(",")) if args.classes else ("nucleus",)
    try:
        root = write_phantom_dataset(args.out, args.layout, args.n, geometry, seed=args.seed, oblique=args.oblique,
                                     image_format=args.format or "tif", thing_classes=classes)
    except ValueError as e:  # a geometry the phantom cannot fill, or options that do not go together
        raise MedPanopticError(f"{args.out}: {e}") from None
    print(f"wrote {args.n} case(s) to {root} ({args.layout} layout, {preset} geometry, "
          f"spacing {'x'.join(f'{s:g}' for s in geometry.spacing)} mm, {geometry.channels} channel(s))")
    return 0


# -- plan ---------------------------------------------------------------------------------------
def configure_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset folder: MSD, nnU-Net v2 raw, or microscopy (images/, masks/)")
    p.add_argument("--out", required=True, help="the plan to write (JSON)")
    p.add_argument("--gpu-memory-gb", type=float,
                   help="memory (GB) one training step's tensors may take, on GPU or CPU alike; "
                        "leave room for the CUDA context (default 24; 0.5 with --device cpu)")
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                   help="what training will run on: 'cpu' plans a narrower network (16-128 filters), a patch of "
                        "about 0.5 GB and epochs of 50 steps, which converge in CPU minutes to hours (default gpu)")
    p.add_argument("--things", help="thing classes by name, e.g. 'lesion,nodule' (overrides dataset.json's list)")


def run_plan(args: argparse.Namespace) -> int:
    """Check (every problem, one line each, exit 2), fingerprint, plan, write, summarise."""
    from .check import dataset_problems, format_problems
    from .datasets import load_dataset
    from .fingerprint import dataset_fingerprint
    from .plan import make_plan, save_plan, summary_lines

    if args.gpu_memory_gb is not None and not args.gpu_memory_gb > 0:
        raise MedPanopticError(f"--gpu-memory-gb must be positive, got {args.gpu_memory_gb}")
    dataset = load_dataset(args.dataset, things=args.things)
    problems = dataset_problems(dataset)
    if problems:  # the one place an error takes several lines: one per problem, by file
        print(f"medpanoptic: error: {dataset.root}: {format_problems(problems)}", file=sys.stderr)
        return 2
    plan = make_plan(dataset, gpu_memory_gb=args.gpu_memory_gb, fingerprint=dataset_fingerprint(dataset),
                     device=args.device)
    path = save_plan(plan, Path(args.out))
    for line in summary_lines(plan):
        print(line)
    print(f"wrote the plan to {path}")
    return 0
