"""Prepare a Medical Segmentation Decathlon task for panoptic training with the bundles.

    python scripts/convert_msd.py Task03_Liver --stuff 1 --things 2 [--names liver,tumour]

MSD tasks ship semantic label maps only (`labelsTr/`). This script writes an instance map per
case into `instancesTr/` (connected components of the thing classes, full connectivity) and
adds the instance entries and a medpanoptic label set to `dataset.json`, in place; the images
and labels are not touched. `train.json` then reads the task with `--dataset_dir Task03_Liver`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medpanoptic.io.atomic import atomic_write_text
from medpanoptic.io.decathlon import INSTANCE_FOLDER
from medpanoptic.io.nifti import read_nifti, write_nifti
from medpanoptic.labels import LabelClass, LabelSet
from medpanoptic.pair import instances_from_semantic


def label_set_of(document: dict, stuff: list[int], things: list[int], names: list[str] | None) -> LabelSet:
    labels = {int(k): v for k, v in document.get("labels", {}).items() if int(k) != 0}
    palette = [(177, 122, 101), (221, 130, 101), (230, 220, 70), (128, 174, 128), (111, 184, 210), (216, 101, 79)]
    classes = []
    for i, class_id in enumerate(sorted(stuff + things)):
        name = names[i] if names else labels.get(class_id, f"class {class_id}")
        kind = "thing" if class_id in things else "stuff"
        classes.append(LabelClass(class_id, name, kind, color=palette[i % len(palette)]))
    return LabelSet(classes, name=document.get("name", "msd"))


def convert(root: Path, stuff: list[int], things: list[int], names: list[str] | None = None) -> int:
    document = json.loads((root / "dataset.json").read_text())
    label_set = label_set_of(document, stuff, things, names)
    n = 0
    (root / INSTANCE_FOLDER).mkdir(exist_ok=True)
    for entry in document["training"]:
        label_path = root / entry["label"]
        instance_rel = f"./{INSTANCE_FOLDER}/{Path(entry['label']).name}"
        label, affine = read_nifti(label_path)
        instance = instances_from_semantic(label[0].astype(np.int32), things)
        write_nifti(root / instance_rel, instance.astype(np.uint16 if instance.max() < 65536 else np.uint32), affine)
        entry["instance"] = instance_rel
        n += 1
    document["medpanoptic"] = {"label_set": label_set.to_dict(), "instances": INSTANCE_FOLDER}
    atomic_write_text(root / "dataset.json", json.dumps(document, indent=2) + "\n")
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", type=Path)
    parser.add_argument("--stuff", default="", help="comma-separated stuff class ids")
    parser.add_argument("--things", required=True, help="comma-separated thing class ids")
    parser.add_argument("--names", help="comma-separated class names, in increasing id order (default: dataset.json's)")
    args = parser.parse_args()
    ids = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    n = convert(args.task, ids(args.stuff), ids(args.things), args.names.split(",") if args.names else None)
    print(f"wrote {n} instance map(s) to {args.task / INSTANCE_FOLDER} and the label set to dataset.json")


if __name__ == "__main__":
    main()
