"""Benchmark: the planned bundle against the shipped bundles' hand-tuned recipe, same data, same budget.

    python scripts/bench/planning.py [--geometries ct,mr,nuclei_large] [--train-cases 8] [--test-cases 4]
                                     [--epochs 20] [--device cpu|gpu] [--fold 0] [--work DIR] [--busy N]
    python scripts/bench/planning.py --smoke     # the smallest setting (1 epoch, 1 GB plan): checks that it runs

Three phantom datasets (`planning.phantoms.PRESETS`), each in the layout its users have:

| geometry       | layout     | what                                                        | shipped recipe       |
| ---            | ---        | ---                                                         | ---                  |
| `ct`           | MSD        | CT-like 0.8 x 0.8 x 2.5 mm                                  | ct_lesion_panoptic   |
| `mr`           | nnU-Net v2 | MR-like 0.6 x 0.6 x 4 mm, two channels (T2-like, ADC-like)  | ct_lesion_panoptic   |
| `nuclei_large` | microscopy | 2D nuclei twice the shipped size                            | nuclei_panoptic_2d   |

Per geometry, two bundles are trained by the same path (`medpanoptic.planning.train.train`, one
fold, `--epochs` epochs each: the budget, in epochs over the same training cases; the wall
seconds of each side are printed beside it):

- **planned**: `make_plan` on the dataset, as `medpanoptic plan --device D` writes it (D: `cpu`
  where no GPU is, so a CPU plan: narrower network, 50-step epochs), post-processing tuned on the
  fold's out-of-fold outputs by training;
- **hand-tuned**: the same plan with every decision replaced by the shipped bundle's own settings
  (its `train.json`: spacing, intensity window, patch, network, sigma, learning rate, crops per
  case; its `postprocess.json`: threshold, NMS, minimum size, votes), scored with the shipped
  post-processing. The input channels are the dataset's (the recipe cannot see a second channel
  otherwise); the recipe has no scale augmentation. Its epochs are as long as the planned side's
  (the same steps). Its bundle after training's own tuning is a third column, to tell the
  network's share from the post-processing's.

PQ_things of each on unseen phantoms (seeds the training never saw), on the source grid, summed
over the test cases (dataset-level, as COCO). Goal: planned >= hand-tuned on each geometry, and
planned >= 0.85.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import busy_cores, describe  # noqa: E402

from medpanoptic.metrics import panoptic_quality  # noqa: E402
from medpanoptic.pair import integer_pair  # noqa: E402
from medpanoptic.planning.bundle import optional_decision  # noqa: E402
from medpanoptic.postprocess import PostprocessConfig  # noqa: E402
from medpanoptic.segment import Segmenter, bundle_config, shipped_bundles  # noqa: E402
from medpanoptic.transforms import PanopticPostprocess  # noqa: E402

TEST_SEED = 90_000  # unseen phantoms: far from every training seed
GOAL = 0.85


@dataclass(frozen=True)
class Setting:
    """One geometry of the benchmark: its phantom preset, its dataset layout and the shipped bundle whose recipe it meets."""

    geometry: str
    layout: str
    shipped: str


SETTINGS = {
    "ct": Setting("ct", "msd", "ct_lesion_panoptic"),
    "mr": Setting("mr", "nnunet_v2", "ct_lesion_panoptic"),
    "nuclei_large": Setting("nuclei_large", "microscopy", "nuclei_panoptic_2d"),
}


# -- the two recipes --------------------------------------------------------------------------
def planned_plan(dataset: Path, gpu_memory_gb: float | None, device: str) -> dict:
    """The plan `medpanoptic plan DATASET --device DEVICE` writes."""
    from medpanoptic.planning.plan import make_plan

    return make_plan(dataset, gpu_memory_gb=gpu_memory_gb, device=device)


HAND_WRITTEN_NUCLEI = {
    "train": {"intensity_range": [0.0, 255.0], "pixel_size_mm": [0.0005, 0.0005], "filters": [16, 32, 64, 128],
              "samples_per_volume": 4, "roi_size": [128, 128], "sigma_mm": 0.0015, "learning_rate": 0.002},
    "postprocess": {"center_threshold": 0.3, "nms_mm": 0.003, "min_size_mm": 1e-05},
}
"""nuclei_panoptic_2d 0.1.0's hand-written recipe (its train.json and postprocess.json): the shipped
nuclei bundle is now itself planned (scripts/train_nuclei_bundle.py), so the hand-tuned side keeps
the recipe it replaced."""


def _hand_written(shipped: str) -> tuple[dict, PostprocessConfig]:
    """The hand-tuned training settings and post-processing of `shipped`, as plain values."""
    if shipped == "nuclei_panoptic_2d":
        return HAND_WRITTEN_NUCLEI["train"], PostprocessConfig(**HAND_WRITTEN_NUCLEI["postprocess"])
    root = shipped_bundles() / shipped
    train = bundle_config(root, "train.json")
    values = {"intensity_range": _first(train, "hu_window", "intensity_range"),
              "pixel_size_mm": _first(train, "pixdim") or bundle_config(root, "inference.json").get("pixel_size_mm"),
              "filters": list(train.get("network_def")["filters"])}
    values.update({k: train.get(k) for k in ("samples_per_volume", "roi_size", "sigma_mm", "learning_rate")})
    return values, shipped_postprocess(shipped)


def shipped_recipe(plan: dict, shipped: str) -> dict:
    """`plan` with its decisions replaced by the shipped bundle's hand-tuned settings (see the module notes)."""
    train, post = _hand_written(shipped)
    dims = int(plan["dataset"]["spatial_dims"])
    window = train["intensity_range"]
    spacing = train["pixel_size_mm"]
    filters = list(train["filters"])
    samples = int(train["samples_per_volume"])
    mean, half = (window[0] + window[1]) / 2, (window[1] - window[0]) / 2
    values = {
        "target_spacing_mm": [float(s) for s in spacing][:dims],
        "normalisation": [{"channel": c, "scheme": "ct", "clip": [float(window[0]), float(window[1])],
                           "mean": mean, "std": half} for c in plan["dataset"]["channels"]],
        "patch_size": [int(v) for v in train["roi_size"]],
        "batch_size": samples,  # the shipped loaders take one case at a time, `samples_per_volume` crops of it
        "network": {"backbone": "dynunet", "filters": filters, "kernel_size": [[3] * dims for _ in filters],
                    "strides": [[1] * dims] + [[2] * dims for _ in filters[1:]]},
        "sigma_mm": float(train["sigma_mm"]),
        "nms_mm": post.nms_mm, "min_size_mm": post.min_size_mm, "center_threshold": post.center_threshold,
        "scale_augmentation": [1.0, 1.0],
        "learning_rate": float(train["learning_rate"]),
        "samples_per_case": samples,
    }
    recipe = copy.deepcopy(plan)
    reason = f"the shipped bundle {shipped}'s hand-tuned setting (configs/train.json, postprocess.json)"
    for name, value in values.items():
        recipe["decisions"][name] = {"value": value, "reason": reason}
    return recipe


def shipped_postprocess(shipped: str) -> PostprocessConfig:
    """The shipped bundle's post-processing (its `configs/postprocess.json`)."""
    values = json.loads((shipped_bundles() / shipped / "configs" / "postprocess.json").read_text(encoding="utf-8"))
    knobs = ("center_threshold", "nms_mm", "top_k", "min_size_mm", "vote_sigma_mm", "vote_min", "vote_gap_mm")
    return PostprocessConfig(**{k: values[k] for k in knobs if k in values})


def _first(parser, *ids: str):
    for key in ids:
        if key in parser.get():
            return parser.get_parsed_content(key)
    return None


# -- training and scoring -----------------------------------------------------------------
def train_bundle(plan: dict, work: Path, name: str, fold: int, epochs: int) -> tuple[Path, float]:
    """Save the plan and train one fold of its bundle; returns the bundle and the wall seconds."""
    from medpanoptic.planning.plan import save_plan
    from medpanoptic.planning.train import train

    plan["decisions"]["epochs"] = {"value": int(epochs), "reason": "the benchmark's budget, the same on both sides"}
    plan_path = save_plan(plan, work / f"{name}.plan.json")
    start = time.perf_counter()
    bundle = train(plan_path, folds=fold, epochs=epochs, out=work / f"{name}_bundle")
    return Path(bundle), time.perf_counter() - start


def pq_things(bundle: Path, setting: Setting, n_cases: int, postprocess: PostprocessConfig | None = None) -> float:
    """Dataset-level PQ_things of `bundle` on unseen phantoms, on their own grids (`postprocess`: another grouping)."""
    from medpanoptic.planning.phantoms import PRESETS, phantom_case

    seg = Segmenter.from_bundle(bundle, device="cpu")
    grouping = None if postprocess is None else PanopticPostprocess(seg.label_set, postprocess)
    total = None
    for i in range(n_cases):
        phantom = phantom_case(PRESETS[setting.geometry], TEST_SEED + i)
        pair = integer_pair(seg(phantom.image, case=f"test_{i}", postprocess=grouping).pair)
        q = panoptic_quality(pair, truth_as_trained(phantom, seg.label_set), seg.label_set)
        total = q if total is None else total + q
    return total.summary()["pq_things"]


def truth_as_trained(phantom, label_set) -> torch.Tensor:
    """The phantom's truth in the bundle's label set, class by name, as its dataset wrote it: the
    microscopy layout keeps only the nuclei (its masks hold instance ids), so tissue becomes background."""
    label, instance = integer_pair(phantom.pair)
    out_label, out_instance = torch.zeros_like(label), torch.zeros_like(instance)
    trained = {c.name for c in label_set}
    for cls in phantom.label_set:
        if cls.name in trained:
            where = label == cls.id
            out_label[where] = label_set.by_name(cls.name).id
            out_instance[where] = instance[where]
    return torch.stack([out_label, out_instance])


def run_setting(setting: Setting, args: argparse.Namespace, work: Path) -> dict:
    """Both recipes on one geometry: a row of the table."""
    from medpanoptic.planning.phantoms import write_phantom_dataset

    work.mkdir(parents=True, exist_ok=True)
    dataset = write_phantom_dataset(work / "dataset", setting.layout, args.train_cases, setting.geometry, seed=0)
    plan = planned_plan(dataset, args.gpu_memory_gb, args.device)
    recipe = shipped_recipe(plan, setting.shipped)
    planned_bundle, planned_s = train_bundle(plan, work, "planned", args.fold, args.epochs)
    recipe_bundle, recipe_s = train_bundle(recipe, work, "hand_tuned", args.fold, args.epochs)
    return {
        "geometry": setting.geometry, "layout": setting.layout, "shipped": setting.shipped,
        "planned": pq_things(planned_bundle, setting, args.test_cases),
        "hand_tuned": pq_things(recipe_bundle, setting, args.test_cases, _hand_written(setting.shipped)[1]),
        "hand_tuned_retuned": pq_things(recipe_bundle, setting, args.test_cases),
        "planned_s": planned_s, "hand_tuned_s": recipe_s,
        "steps_per_epoch": optional_decision(plan, "steps_per_epoch"),
    }


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    steps = rows[0].get("steps_per_epoch") if rows else None
    length = f" of {steps} steps" if steps else " (one pass over the cases each)"
    print(f"budget: {args.epochs} epoch(s){length} of fold {args.fold} on {args.train_cases} training phantoms per side "
          f"({args.device} plan); "
          f"PQ_things on {args.test_cases} unseen phantoms per geometry, dataset level")
    print(f"{'geometry':14}{'layout':12}{'planned':>9}{'hand-tuned':>12}{'(retuned)':>11}{'ratio':>8}"
          f"{'planned s':>11}{'hand s':>9}{'  goal: planned >= hand-tuned and >= 0.85'}")
    for r in rows:
        ratio = f"{r['planned'] / r['hand_tuned']:8.2f}" if r["hand_tuned"] > 0 else f"{'n/a':>8}"
        met = r["planned"] >= r["hand_tuned"] and r["planned"] >= GOAL
        print(f"{r['geometry']:14}{r['layout']:12}{r['planned']:9.3f}{r['hand_tuned']:12.3f}{r['hand_tuned_retuned']:11.3f}"
              f"{ratio}{r['planned_s']:11.0f}{r['hand_tuned_s']:9.0f}  {'met' if met else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometries", default=",".join(SETTINGS), help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--train-cases", type=int, default=8, help="training phantoms per geometry")
    parser.add_argument("--test-cases", type=int, default=4, help="unseen phantoms per geometry")
    parser.add_argument("--epochs", type=int, default=20, help="the budget: epochs per side")
    parser.add_argument("--fold", type=int, default=0, help="the fold trained on each side")
    parser.add_argument("--gpu-memory-gb", type=float, help="memory budget given to the planner (default: the plan's "
                                                               "for the device, 24 GPU / 0.5 CPU; --smoke: 1)")
    parser.add_argument("--device", choices=("cpu", "gpu"), help="what the plans are for (default: gpu where CUDA is)")
    parser.add_argument("--work", help="folder for datasets and bundles (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="the smallest setting (1 epoch, few cases): checks it runs")
    parser.add_argument("--busy", type=int, default=0, help="background CPU-burning processes during the run")
    args = parser.parse_args()
    if args.smoke:  # one epoch of small patches: minutes on a CPU
        args.train_cases, args.test_cases, args.epochs = 5, 1, 1
    if args.device is None:
        args.device = "gpu" if torch.cuda.is_available() else "cpu"
    if args.gpu_memory_gb is None and args.smoke:
        args.gpu_memory_gb = 1.0
    names = [g.strip() for g in args.geometries.split(",") if g.strip()]
    unknown = [g for g in names if g not in SETTINGS]
    if unknown:
        parser.error(f"unknown geometries {unknown} (expected some of {', '.join(SETTINGS)})")
    with tempfile.TemporaryDirectory() as scratch, busy_cores(args.busy):
        print(describe(args.busy))
        work = Path(args.work or scratch)
        rows = []
        for g in names:  # the table so far after each geometry: a long run shows its rows as they come
            rows.append(run_setting(SETTINGS[g], args, work / g))
            print_table(rows, args)


if __name__ == "__main__":
    main()
