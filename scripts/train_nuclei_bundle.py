"""Retrain the shipped `nuclei_panoptic_2d` bundle through the planning path: plan -> train -> bundle.

The shipped bundle is an instance of `medpanoptic plan` / `medpanoptic train`, not a special case:
this script writes the training phantoms as a Decathlon-layout 2D dataset, plans it, changes the
few decisions a CPU budget and the bundle's purpose ask for (each with its reason, in the plan),
trains one fold and copies the generated configs and weights into `bundles/nuclei_panoptic_2d`.

    python scripts/train_nuclei_bundle.py --work /tmp/nuclei_plan [--epochs 20] [--install]
    python scripts/train_nuclei_bundle.py --work /tmp/nuclei_plan2 --init /tmp/nuclei_plan/bundle/models/model.pt \
        --epochs 20 --learning-rate 0.001 --install      # a second cosine cycle from the first one's weights

Grey (fluorescence-like) phantoms are stored repeated to RGB, so every case has the channels the
network takes; at inference the generated config repeats a grey picture the same way.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from medpanoptic.io.decathlon import write_case, write_dataset_json
from medpanoptic.planning.datasets import load_dataset
from medpanoptic.planning.memory import estimate_memory_gb
from medpanoptic.planning.plan import make_plan, resampling_augmentation, save_plan
from medpanoptic.planning.train import train
from medpanoptic.synthetic import nuclei_phantom

SHIPPED = Path(__file__).resolve().parents[1] / "bundles" / "nuclei_panoptic_2d"
CPU_BUDGET = "the shipped bundle is trained on 2 CPU cores"


def write_training_set(root: Path, n: int, seed: int) -> Path:
    """`n` nuclei phantoms (256x256 at 0.5 um, 30 nuclei, 30% touching), every other one H&E-like RGB."""
    entries, label_set = [], None
    for i in range(n):
        ph = nuclei_phantom(rgb=bool(i % 2), seed=seed + i)
        image = ph.image if ph.image.shape[0] == 3 else ph.image.repeat(3, 1, 1)
        entries.append(write_case(root, f"nuclei_{i:03d}", image, ph.pair))
        label_set = ph.label_set
    path = write_dataset_json(root, "nuclei_phantoms", label_set, "R", 2, entries)
    document = json.loads(path.read_text())
    document["modality"] = {"0": "R", "1": "G", "2": "B"}
    path.write_text(json.dumps(document, indent=2))
    return root


def _decide(plan: dict, name: str, value, reason: str) -> None:
    plan["decisions"][name] = {"value": value, "reason": reason}


def shipped_plan(dataset_root: Path, epochs: int, learning_rate: float | None = None) -> dict:
    """The data's plan, with the decisions this bundle makes on purpose (stated in the plan)."""
    plan = make_plan(load_dataset(dataset_root), gpu_memory_gb=2.0)
    _decide(plan, "network", {"backbone": "dynunet", "filters": [16, 32, 64, 128], "kernel_size": [[3, 3]] * 4,
                              "strides": [[1, 1], [2, 2], [2, 2], [2, 2]]},
            f"{CPU_BUDGET}: four levels of 16-128 filters see 64 px (5 nucleus radii at 1.6x) and train in minutes")
    _decide(plan, "patch_size", [128, 128], f"{CPU_BUDGET}: 128 px crops hold 15-20 whole nuclei")
    _decide(plan, "batch_size", 4, f"{CPU_BUDGET}: four crops per step")
    _decide(plan, "samples_per_case", 4, "four crops of each 256 px image per epoch")
    _decide(plan, "scale_augmentation", [0.6, 1.7],
            "pictures rarely state their magnification: nuclei 0.6x to 1.7x the training size are seen in training, "
            "so a large nucleus is not cut in two (the scale estimate handles what lies beyond)")
    _decide(plan, "resampling_augmentation", resampling_augmentation(nominal=True)["value"],
            "pictures rarely state their magnification: the scale estimate rescales them, so the network also "
            "sees pictures blurred and down-up resampled as a rescaled one is")
    network, labels = plan["decisions"]["network"]["value"], plan["label_set"]
    n_classes = 1 + max(c["id"] for c in labels["classes"])
    _decide(plan, "estimated_memory_gb", round(estimate_memory_gb([128, 128], 4, network, 2, 3, n_classes), 3),
            "the memory model of the network, patch and batch above")
    _decide(plan, "epochs", epochs, f"{CPU_BUDGET}: the validation PQ has levelled off by then")
    if learning_rate is not None:
        _decide(plan, "learning_rate", learning_rate, "a second cosine cycle, from the first cycle's weights")
    return plan


def install(bundle: Path, shipped: Path = SHIPPED) -> None:
    """The generated configs and the chosen weights into the shipped bundle (docs/LICENSE kept)."""
    generated = json.loads((bundle / "configs" / "inference.json").read_text())["postprocessing"]["transforms"][2]["extra"]["bundle"]
    for name in ("inference.json", "train.json", "multi_gpu_train.json", "evaluate.json", "postprocess.json",
                 "labels.json", "logging.conf", "fingerprint.json", "splits.json"):
        document = (bundle / "configs" / name).read_text()
        if name.endswith(".json") and name not in ("labels.json", "splits.json", "fingerprint.json"):
            config = json.loads(document)
            if "dataset_dir" in config:  # where a user's data go: pictures to segment, or a training set
                config["dataset_dir"] = "/workspace/data/" + ("nuclei_images" if name == "inference.json" else "nuclei_phantoms")
            document = (json.dumps(config, indent=4) + "\n").replace(f'"bundle": "{generated}"', f'"bundle": "{shipped.name}"')
        (shipped / "configs" / name).write_text(document)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    old = json.loads((shipped / "configs" / "metadata.json").read_text())
    kept = ("version", "changelog", "name", "task", "description", "intended_use", "authors", "copyright", "references",
            "data_source", "image_classes", "label_classes", "eval_metrics", "optional_packages_version")
    metadata.update({k: old[k] for k in kept if k in old})  # the words are the shipped bundle's; its tensors the plan's
    (shipped / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4) + "\n")
    shutil.copyfile(bundle / "models" / "model.pt", shipped / "models" / "model.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the dataset, the plan and the bundle")
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, help="instead of the plan's")
    parser.add_argument("--init", type=Path, help="start from these weights (a second training cycle)")
    parser.add_argument("--install", action="store_true", help="copy the result into bundles/nuclei_panoptic_2d")
    args = parser.parse_args()
    data = args.work / "dataset"
    if not (data / "dataset.json").is_file():
        write_training_set(data, args.cases, args.seed)
    plan_path = save_plan(shipped_plan(data, args.epochs, args.learning_rate), args.work / "plan.json")
    overrides = {"pretrained_ckpt": str(args.init.resolve())} if args.init else None
    bundle = train(plan_path, folds=0, out=args.work / "bundle", resume=(args.work / "bundle").exists(),
                   overrides=overrides)
    print(f"trained: {bundle}")
    if args.install:
        install(bundle)
        print(f"installed into {SHIPPED}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
