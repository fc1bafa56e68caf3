"""A MONAI bundle folder generated from a plan (`plan.json`, see `medpanoptic.planning.plan`).

    configs/inference.json  train.json  multi_gpu_train.json  evaluate.json  postprocess.json
            metadata.json  labels.json  logging.conf  splits.json  fingerprint.json
    docs/README.md          the plan with its reasons, the cross-validation table
    models/fold_K/          checkpoint.pt (each epoch), model.pt (best by validation PQ), curves
    models/model.pt         the chosen fold's weights, what inference loads

The configs say everything the plan decided, in MONAI's own terms (Spacingd, RandZoomd, ...), so
`python -m monai.bundle run` and `medpanoptic segment --bundle` run them with no plan at hand, and
`medpanoptic train` runs the generated `train.json` itself: the bundle records exactly what ran.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from .._version import __version__
from ..io.atomic import atomic_write_json, atomic_write_text
from ..labels import LabelSet

SPLITS_FILE = "splits.json"
FINGERPRINT_FILE = "fingerprint.json"
PLAN_FINGERPRINT_KEY = "plan_fingerprint"  # the plan's dataset fingerprint, beside the domain one (`domain`)
KEY_METRIC = "val_pq"
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def decision(plan: dict, name: str):
    """The value the plan decided for `name` (each decision is {"value", "reason"})."""
    return plan["decisions"][name]["value"]


def optional_decision(plan: dict, name: str):
    """The value of a decision that plans made before it lack (None there)."""
    return plan["decisions"].get(name, {}).get("value")


def bundle_name(plan: dict) -> str:
    from ..io.paths import safe_component

    return safe_component(plan["dataset"].get("name", "dataset"), "dataset").lower().replace(" ", "_")


def write_bundle(plan: dict, out: str | os.PathLike, splits: dict, seed: int = 0,
                 fingerprint: dict | None = None) -> Path:
    """Write the bundle folder of `plan` to `out`, with its cross-validation `splits` (the document
    of `train.splits_document`) and training `seed`; returns the folder. `models/` is left as it is."""
    out = Path(out)
    configs = out / "configs"
    documents = {
        "labels.json": plan["label_set"],
        "postprocess.json": postprocess_config(plan, default_postprocess(plan)),
        "inference.json": inference_config(plan),
        "train.json": train_config(plan, seed),
        "multi_gpu_train.json": multi_gpu_config(),
        "evaluate.json": evaluate_config(),
        "metadata.json": metadata(plan),
        SPLITS_FILE: splits,
        FINGERPRINT_FILE: {PLAN_FINGERPRINT_KEY: plan.get("fingerprint", {}), **(fingerprint or {})},
    }
    for name, document in documents.items():
        atomic_write_json(configs / name, document)
    atomic_write_text(configs / "logging.conf", LOGGING_CONF)
    write_readme(out, plan)
    (out / "models").mkdir(exist_ok=True)
    return out


# -- shared pieces ------------------------------------------------------------------------
def _spatial_dims(plan: dict) -> int:
    return int(plan["dataset"]["spatial_dims"])


def _interpolation(plan: dict) -> str:
    return "trilinear" if _spatial_dims(plan) == 3 else "bilinear"


def in_pixels(plan: dict) -> bool:
    """Pictures (microscopy, and every 2D dataset) work on the images' own pixel grid: no resampling,
    sizes in mm through the planned pixel size (`pixel_size_mm`), as a PNG states none; the
    Segmenter rescales an image whose file states another pixel size, or estimates it."""
    return plan["dataset"]["layout"] == "microscopy" or _spatial_dims(plan) == 2


def network_def(plan: dict) -> dict:
    """PanopticNet with the planned topology."""
    net = decision(plan, "network")
    return {"_target_": "medpanoptic.nets.PanopticNet", "spatial_dims": _spatial_dims(plan),
            "in_channels": len(plan["dataset"]["channels"]), "n_classes": "@n_classes",
            "backbone": net.get("backbone", "dynunet"), "filters": list(net["filters"]),
            "kernel_size": [list(k) for k in net["kernel_size"]], "strides": [list(s) for s in net["strides"]]}


def normalisation(plan: dict) -> list[dict]:
    """The planned per-channel normalisation."""
    return [{"_target_": "medpanoptic.planning.transforms.NormalizeChannelsd", "keys": "image",
             "normalisation": decision(plan, "normalisation")}]


IMPORTS = ["$import os", "$import torch", "$from medpanoptic.labels import LabelSet"]
TRAIN_IMPORTS = IMPORTS + ["$from medpanoptic.planning.train import fold_datalist"]


def _common(plan: dict) -> dict:
    """What inference and training share: labels, device, grid, patch, network, post-processing."""
    keys = ("center_threshold", "nms_mm", "min_size_mm", "vote_sigma_mm", "vote_min", "vote_gap_mm", "mode")
    return {
        "imports": IMPORTS,
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": plan["dataset"]["root"],
        "label_set": "$LabelSet.load(@bundle_root + '/configs/labels.json')",
        "n_classes": "$@label_set.max_id + 1",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "pixdim": [float(v) for v in decision(plan, "target_spacing_mm")],
        "pixel_size_mm": "@pixdim" if in_pixels(plan) else None,
        "roi_size": [int(v) for v in decision(plan, "patch_size")],
        "sw_batch_size": 2,
        "overlap": 0.25,
        **{k: f"%configs/postprocess.json#{k}" for k in keys},
        "num_workers": 0,
        "network_def": network_def(plan),
        "network": "$@network_def.to(@device)",
    }


def _sliding_window() -> dict:
    return {"_target_": "SlidingWindowInferer", "roi_size": "@roi_size", "sw_batch_size": "@sw_batch_size",
            "overlap": "@overlap", "mode": "gaussian"}


def _grey_to_channels(plan: dict) -> list[dict]:
    """A grey picture given to a network of several channels (RGB) is repeated to them; any other
    channel count is refused by name (`RepeatToChannelsd`)."""
    channels = len(plan["dataset"]["channels"])
    if not in_pixels(plan) or channels == 1:
        return []
    return [{"_target_": "medpanoptic.transforms.RepeatToChannelsd", "keys": "image", "channels": channels}]


def _resample(plan: dict, keys: Sequence[str]) -> list[dict]:
    if in_pixels(plan):
        return []
    return [{"_target_": "Spacingd", "keys": list(keys), "pixdim": "@pixdim",
             "mode": ["bilinear" if k == "image" else "nearest" for k in keys]}]


# -- postprocess.json ---------------------------------------------------------------------
def default_postprocess(plan: dict) -> dict:
    """The plan's post-processing values, before tuning on the out-of-fold outputs."""
    return {"center_threshold": float(decision(plan, "center_threshold")), "nms_mm": float(decision(plan, "nms_mm")),
            "min_size_mm": float(decision(plan, "min_size_mm")), "vote_sigma_mm": 0.0, "vote_min": 10.0,
            "vote_gap_mm": 5.0, "mode": "grouping"}


def postprocess_config(plan: dict, values: dict) -> dict:
    """The one post-processing block that inference, validation and evaluation share."""
    keys = ("center_threshold", "nms_mm", "min_size_mm", "vote_sigma_mm", "vote_min", "vote_gap_mm", "mode")
    return {
        "_comment": "The post-processing of this bundle, shared by inference.json, train.json (validation) and "
                    "evaluate.json through MONAI macros. Values: the plan's, then tuned by `medpanoptic train` on "
                    "the out-of-fold network outputs (see docs/README.md). min_size_mm: mm^3 in 3D, mm^2 in 2D.",
        **{k: values[k] for k in keys},
        "panoptic": {"_target_": "medpanoptic.transforms.PanopticPostprocessd", "keys": "pred",
                     "label_set": "@label_set", **{k: f"@{k}" for k in keys}, "spacing": "@pixel_size_mm"},
    }


def write_postprocess(bundle: str | os.PathLike, plan: dict, values: dict) -> Path:
    """Replace the bundle's post-processing values (e.g. with tuned ones)."""
    path = Path(bundle) / "configs" / "postprocess.json"
    atomic_write_json(path, postprocess_config(plan, {**default_postprocess(plan), **values}))
    return path


# -- inference.json -----------------------------------------------------------------------
def channel_files(plan: dict) -> int:
    """Files per case at inference: the channel count where training read one file per channel
    (nnU-Net's `<case>_0000`, `_0001`...), else 1 (one file holds every channel, e.g. RGB)."""
    channels = len(plan["dataset"]["channels"])
    per_channel = channels > 1 and all(isinstance(c["image"], list) and len(c["image"]) == channels
                                       for c in plan["cases"])
    return channels if per_channel else 1


def inference_config(plan: dict) -> dict:
    """Scans in (any grid), pairs out on each scan's own grid (Invertd)."""
    common = _common(plan)
    common["imports"] = common["imports"] + ["$from medpanoptic.io.inputs import find_scans"]
    return {
        **common,
        "channel_files": channel_files(plan),
        "datalist": "$[s.as_dict() for s in find_scans([@dataset_dir], channels=@channel_files)]",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "medpanoptic.transforms.LoadScand", "keys": "image"},
            *_grey_to_channels(plan),
            *_resample(plan, ["image"]),
            *normalisation(plan),
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": "@num_workers"},
        "inferer": _sliding_window(),
        "panoptic": "%configs/postprocess.json#panoptic",
        "invert": {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                   "nearest_interp": True, "to_tensor": True},
        "postprocessing": {"_target_": "Compose", "transforms": [
            "@panoptic", "@invert",
            {"_target_": "medpanoptic.transforms.SavePanopticd", "keys": "pred", "output_dir": "@output_dir",
             "label_set": "@label_set", "extra": {"bundle": bundle_name(plan)}},
        ]},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
             "load_dict": {"model": "@network"}, "map_location": "@device"},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": "$torch.cuda.is_available()"},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


# -- train.json ---------------------------------------------------------------------------
def _augmentation(plan: dict) -> list[dict]:
    """Crops with things, planned scale augmentation, flips, intensity jitter, then the targets."""
    dims = _spatial_dims(plan)
    zoom_lo, zoom_hi = (float(v) for v in decision(plan, "scale_augmentation"))
    keys = ["image", "label"]
    return [
        {"_target_": "SpatialPadd", "keys": keys, "spatial_size": "@roi_size"},
        {"_target_": "medpanoptic.transforms.ThingIndicesd", "keys": "label", "label_set": "@label_set"},
        {"_target_": "RandCropByPosNegLabeld", "keys": keys, "label_key": "label", "spatial_size": "@roi_size",
         "pos": "@thing_crop_ratio", "neg": 1, "num_samples": "@samples_per_case",
         "fg_indices_key": "label_thing_indices", "bg_indices_key": "label_other_indices"},
        {"_target_": "RandZoomd", "keys": keys, "prob": "@zoom_prob", "min_zoom": zoom_lo, "max_zoom": zoom_hi,
         "mode": [_interpolation(plan), "nearest"], "padding_mode": "edge", "keep_size": True},
        *({"_target_": "RandFlipd", "keys": keys, "prob": 0.5, "spatial_axis": axis} for axis in range(dims)),
        {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.5},
        {"_target_": "RandShiftIntensityd", "keys": "image", "offsets": 0.1, "prob": 0.5},
        *_resampling_augmentation(plan),
        {"_target_": "medpanoptic.transforms.PanopticTargetsd", "keys": "label", "label_set": "@label_set",
         "sigma_mm": "@sigma_mm", "sigma_fraction": "@sigma_fraction", "spacing": "@pixel_size_mm"},
        {"_target_": "EnsureTyped", "keys": keys, "track_meta": False},
        {"_target_": "DeleteItemsd", "keys": ["label_thing_indices", "label_other_indices"]},
    ]


def _resampling_augmentation(plan: dict) -> list[dict]:
    """The plan's blur and down-up resampling of the image alone (plans before it, or scans with a
    pixel size: none). Down by area, up by linear interpolation: as the scale estimate's rescaling."""
    value = optional_decision(plan, "resampling_augmentation")
    if not value:
        return []
    dims = _spatial_dims(plan)
    sigma = [float(v) for v in value["blur_sigma_px"]]
    return [
        {"_target_": "RandGaussianSmoothd", "keys": "image", "prob": value["prob"],
         **{f"sigma_{axis}": sigma for axis in "xyz"[:dims]}},
        {"_target_": "RandSimulateLowResolutiond", "keys": "image", "prob": value["prob"], "downsample_mode": "area",
         "upsample_mode": "bilinear" if dims == 2 else "trilinear",
         "zoom_range": [float(v) for v in value["low_resolution_zoom"]]},
    ]


def _validation_metric(name: str) -> dict:
    return {"_target_": "IgniteMetricHandler",
            "metric_fn": {"_target_": "medpanoptic.metrics.CumulativePanopticQuality", "label_set": "@label_set",
                          "metric_name": name},
            "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}


def train_config(plan: dict, seed: int = 0) -> dict:
    """One fold of the cross-validation (`fold`, the splits in configs/splits.json), with a checkpoint
    each epoch that resumes exactly (`resume`), the best weights by validation PQ and the curves."""
    samples = int(decision(plan, "samples_per_case"))
    common = {**_common(plan), "imports": TRAIN_IMPORTS}
    load = [
        {"_target_": "medpanoptic.planning.transforms.LoadCased", "keys": ["image", "label"],
         "label_set": "@label_set", "root": "@dataset_dir"},
        *_grey_to_channels(plan),
        *_resample(plan, ["image", "label"]),
        *normalisation(plan),
    ]
    return {
        **common,
        "fold": 0,
        "seed": seed,
        "resume": False,
        "ckpt_dir": "$@bundle_root + '/models/fold_' + str(@fold)",
        "splits_file": "$@bundle_root + '/configs/splits.json'",
        "train_datalist": "$fold_datalist(@splits_file, @dataset_dir, @fold, 'train')",
        "val_datalist": "$fold_datalist(@splits_file, @dataset_dir, @fold, 'val')",
        "learning_rate": float(decision(plan, "learning_rate")),
        "max_epochs": int(decision(plan, "epochs")),
        "val_interval": 1,
        "batch_size": max(1, int(decision(plan, "batch_size")) // samples),
        "steps_per_epoch": optional_decision(plan, "steps_per_epoch"),  # None: one pass
        "samples_per_case": samples,
        "thing_crop_ratio": 2,
        "zoom_prob": 0.5,
        "sigma_mm": float(decision(plan, "sigma_mm")),
        "sigma_fraction": optional_decision(plan, "sigma_fraction"),  # None: a fixed sigma
        "center_loss_weight": 200.0,
        "offset_loss_weight": 0.01,
        "pretrained_ckpt": "",
        "loss": {"_target_": "medpanoptic.losses.PanopticLoss", "layout": "$@network_def.layout",
                 "center_weight": "@center_loss_weight", "offset_weight": "@offset_loss_weight"},
        "optimizer": {"_target_": "torch.optim.AdamW", "params": "$@network.parameters()", "lr": "@learning_rate",
                      "weight_decay": 1e-05},
        "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "optimizer": "@optimizer",
                         "T_max": "@max_epochs", "eta_min": 1e-05},
        "load_transforms": load,
        "train": {
            "preprocessing": {"_target_": "Compose", "transforms": "$@load_transforms + @train#augmentation"},
            "augmentation": _augmentation(plan),
            "dataset": {"_target_": "CacheDataset", "data": "@train_datalist", "transform": "@train#preprocessing",
                        "cache_rate": 1.0, "num_workers": "@num_workers"},
            # a plan's fixed-length epochs draw the cases with replacement (under torchrun, the
            # distributed sampler shares one pass over them between the ranks instead)
            "sampler": ("$None if @steps_per_epoch is None else torch.utils.data.RandomSampler(@train#dataset, "
                        "replacement=True, num_samples=@steps_per_epoch * @batch_size)"),
            "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": "@batch_size",
                           "shuffle": "$@steps_per_epoch is None", "sampler": "@train#sampler",
                           "num_workers": "@num_workers"},
            "inferer": {"_target_": "SimpleInferer"},
            "checkpoint": {"_target_": "medpanoptic.planning.train.TrainingCheckpoint", "ckpt_dir": "@ckpt_dir",
                           "network": "@network_def", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler",
                           "validator": "@validate#evaluator", "key_metric": KEY_METRIC,
                           "datasets": ["@train#dataset"], "resume": "@resume"},
            "handlers": [
                {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": False},
                {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True,
                 "interval": "@val_interval"},
                "@train#checkpoint",
                {"_target_": "StatsHandler", "tag_name": "train_loss",
                 "iteration_log": "$lambda engine, event: engine.state.iteration % 50 == 0",
                 "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
                {"_target_": "ignite.handlers.ProgressBar", "persist": True},
            ],
            "trainer": {"_target_": "SupervisedTrainer", "max_epochs": "@max_epochs", "device": "@device",
                        "train_data_loader": "@train#dataloader", "network": "@network", "loss_function": "@loss",
                        "optimizer": "@optimizer", "inferer": "@train#inferer", "train_handlers": "@train#handlers",
                        "amp": "$torch.cuda.is_available()"},
        },
        "validate": {
            "preprocessing": {"_target_": "Compose",
                              "transforms": "$@load_transforms + [monai.transforms.EnsureTyped(keys=['image', 'label'])]"},
            "dataset": {"_target_": "CacheDataset", "data": "@val_datalist", "transform": "@validate#preprocessing",
                        "cache_rate": 1.0, "num_workers": "@num_workers"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1, "shuffle": False,
                           "num_workers": "@num_workers"},
            "inferer": _sliding_window(),
            "postprocessing": "%configs/postprocess.json#panoptic",
            "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
            "key_metric": {KEY_METRIC: _validation_metric("pq")},
            "additional_metrics": {"val_pq_things": _validation_metric("pq_things"),
                                   "val_pq_stuff": _validation_metric("pq_stuff")},
            "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@validate#dataloader",
                          "network": "@network", "inferer": "@validate#inferer",
                          "postprocessing": "@validate#postprocessing", "key_val_metric": "@validate#key_metric",
                          "additional_metrics": "@validate#additional_metrics", "val_handlers": "@validate#handlers",
                          "amp": "$torch.cuda.is_available()"},
        },
        "initialize": [
            "$monai.utils.set_determinism(seed=@seed)",
            ("$@network_def.load_state_dict(torch.load(@pretrained_ckpt, map_location='cpu', weights_only=True)) "
             "if @pretrained_ckpt else None"),
            "$os.makedirs(@ckpt_dir, exist_ok=True)",
        ],
        "run": ["$@train#trainer.run()"],
    }


def multi_gpu_config() -> dict:
    """The overrides of train.json under torchrun: DDP network, distributed samplers, logging on rank 0
    (its `imports` replace train.json's, so they repeat them)."""
    return {
        "imports": TRAIN_IMPORTS + ["$import torch.distributed as dist"],
        "backend": "$'nccl' if torch.cuda.is_available() else 'gloo'",
        "device": "$torch.device('cuda:' + os.environ['LOCAL_RANK']) if torch.cuda.is_available() else torch.device('cpu')",
        "network": {"_target_": "torch.nn.parallel.DistributedDataParallel", "module": "$@network_def.to(@device)",
                    "device_ids": "$[@device] if torch.cuda.is_available() else None"},
        "train#sampler": {"_target_": "DistributedSampler", "dataset": "@train#dataset", "even_divisible": True,
                          "shuffle": True},
        "train#dataloader#sampler": "@train#sampler",
        "train#dataloader#shuffle": False,
        "train#trainer#train_handlers": "$@train#handlers[: -2 if dist.get_rank() > 0 else None]",
        "validate#sampler": {"_target_": "DistributedSampler", "dataset": "@validate#dataset", "even_divisible": False,
                             "shuffle": False},
        "validate#dataloader#sampler": "@validate#sampler",
        "validate#evaluator#val_handlers": "$None if dist.get_rank() > 0 else @validate#handlers",
        "initialize": [
            "$dist.is_initialized() or dist.init_process_group(backend=@backend)",
            "$torch.cuda.set_device(@device) if torch.cuda.is_available() else None",
            "$monai.utils.set_determinism(seed=@seed)",
            "$os.makedirs(@ckpt_dir, exist_ok=True)",
        ],
        "run": ["$@train#trainer.run()"],
        "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
    }


def evaluate_config() -> dict:
    """With train.json: the fold's best weights on its validation cases, predictions and CSVs in eval/."""
    return {
        "validate#postprocessing": {"_target_": "Compose", "transforms": [
            "%configs/postprocess.json#panoptic",
            {"_target_": "Invertd", "keys": ["pred", "label"], "transform": "@validate#preprocessing",
             "orig_keys": "label", "nearest_interp": True, "to_tensor": True},
            {"_target_": "medpanoptic.transforms.SavePanopticd", "keys": "pred",
             "output_dir": "$@output_dir + '/predictions'", "label_set": "@label_set"},
        ]},
        "validate#handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@ckpt_dir + '/model.pt'", "load_dict": {"model": "@network"},
             "map_location": "@device"},
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "medpanoptic.handlers.PanopticReportHandler", "pred_dir": "$@output_dir + '/predictions'",
             "gt_dir": "@dataset_dir", "output_csv": "$@output_dir + '/evaluation.csv'", "label_set": "@label_set"},
        ],
        "run": ["$@validate#evaluator.run()"],
    }


# -- metadata.json ------------------------------------------------------------------------
def _divisors(plan: dict) -> list[int]:
    """Per spatial axis, the product of the network's strides: the patch sizes it takes are multiples."""
    strides = decision(plan, "network")["strides"]
    return [math.prod(int(s[axis]) for s in strides) for axis in range(_spatial_dims(plan))]


def metadata(plan: dict) -> dict:
    """MONAI bundle metadata (passes `verify_metadata` against bundles/meta_schema.json)."""
    import monai
    import numpy
    import torch

    label_set = LabelSet.from_dict(plan["label_set"])
    dataset, dims = plan["dataset"], _spatial_dims(plan)
    channels = list(dataset["channels"])
    shape = [f"{d}*n" for d in _divisors(plan)]
    axes = "zyx"[-dims:] if dims == 3 else "yx"
    outputs = {str(i): f"logit: {'background' if i == 0 else (label_set[i].name if i in label_set else 'unused')}"
               for i in range(label_set.max_id + 1)}
    outputs[str(label_set.max_id + 1)] = "thing center heatmap"
    for axis in range(dims):
        outputs[str(label_set.max_id + 2 + axis)] = f"offset to center along axis {axis} (voxels, {axes[axis]})"
    classes = ", ".join(f"{c.id} {c.name} ({c.kind})" for c in label_set)
    spacing = " x ".join(f"{v:g}" for v in decision(plan, "target_spacing_mm"))
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"generated by medpanoptic {__version__} from the plan of dataset {dataset['name']}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "optional_packages_version": {"medpanoptic": __version__},
        "name": f"{dataset['name']} panoptic segmentation (planned)",
        "task": f"Panoptic segmentation of {dataset.get('modality', 'other')} {dims}D images: {classes}",
        "description": f"A {dims}D PanopticNet planned by medpanoptic from the dataset's fingerprint (see docs/README.md): "
                       f"{label_set.max_id + 1} semantic logits, a thing-centre heatmap and {dims} offset channels in one "
                       "output tensor; things from centre peaks and offset voting.",
        "intended_use": "Research; not a medical device, not for diagnosis.",
        "authors": "generated by medpanoptic",
        "copyright": "the dataset's owners",
        "data_source": f"{dataset['name']} ({dataset['layout']} layout, {dataset['n_cases']} cases)",
        "data_type": "nifti, dicom, nrrd, tiff or png",
        "image_classes": (f"{len(channels)} channel(s) ({', '.join(channels)}), "
                          + (f"taken at {spacing} mm per pixel (grey pictures repeated to every channel)"
                             if in_pixels(plan) else f"resampled to {spacing} mm") + ", normalised as planned"),
        "label_classes": f"0 background, {classes}; full label set in configs/labels.json",
        "pred_classes": "semantic logits (channel index = class id), centre heatmap, offsets in voxels",
        "eval_metrics": {},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": dataset.get("modality", "other"),
                                 "num_channels": len(channels), "spatial_shape": shape, "dtype": "float32",
                                 "value_range": [None, None], "is_patch_data": True,
                                 "channel_def": {str(i): name for i, name in enumerate(channels)}}},
            "outputs": {"pred": {"type": "tensor", "format": "panoptic-heads", "num_channels": len(outputs),
                                 "spatial_shape": shape, "dtype": "float32", "value_range": [None, None],
                                 "is_patch_data": True, "channel_def": outputs}},
        },
    }


# -- docs/README.md -----------------------------------------------------------------------
def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_readme(bundle: str | os.PathLike, plan: dict, folds: list[dict] | None = None,
                 postprocess: dict | None = None) -> Path:
    """docs/README.md: the plan's decisions with their reasons, the cross-validation table (one row per
    trained fold) and the post-processing values in use."""
    dataset = plan["dataset"]
    lines = [f"# {bundle_name(plan)}: panoptic segmentation planned from {dataset['name']}", "",
             (f"Generated by `medpanoptic train` (medpanoptic {__version__}) from the plan of `{dataset['root']}` "
              f"({dataset['layout']} layout, {dataset['n_cases']} cases, {dataset['spatial_dims']}D, "
              f"channels: {', '.join(dataset['channels'])})."), "",
             "## The plan", "", "| decision | value | reason |", "| --- | --- | --- |"]
    lines += [f"| {name} | `{_cell(d['value'])}` | {_cell(d.get('reason', ''))} |" for name, d in plan["decisions"].items()]
    lines += ["", "## Cross-validation", ""]
    if folds:
        lines += ["| fold | train cases | validation cases | best epoch | val PQ | val PQ_things | val PQ_stuff |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {f['fold']} | {f['n_train']} | {f['n_val']} | {f['best_epoch']} | {f['pq']:.3f} | "
                  f"{f['pq_things']:.3f} | {f['pq_stuff']:.3f} |" for f in folds]
    else:
        lines += ["Not trained yet: `medpanoptic train PLAN --fold all --out THIS_FOLDER`."]
    values = postprocess or default_postprocess(plan)
    lines += ["", "## Post-processing (configs/postprocess.json)", "",
              "Tuned on the out-of-fold network outputs (`cache/`) when trained; the plan's values otherwise.", "",
              "| knob | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in values.items()]
    lines += ["", "## Commands (from this folder)", "", "```bash",
              "python -m monai.bundle run --config_file configs/inference.json --dataset_dir /data/scans --output_dir out",
              "medpanoptic segment /data/scans --bundle ./THIS_FOLDER --out out",
              "python -m monai.bundle run --config_file configs/train.json --fold 0",
              "```", ""]
    path = Path(bundle) / "docs" / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path
