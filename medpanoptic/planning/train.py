"""`medpanoptic train PLAN --fold K|all`: cross-validated training of the bundle generated from a plan.

The work is the generated `configs/train.json`, run with MONAI's ConfigParser (`fold` set), so what
the bundle says is what ran. Around it: stratified k-fold splits (`configs/splits.json`), a checkpoint
each epoch that resumes exactly (`TrainingCheckpoint`), the best weights by validation PQ, training
curves, and after training the out-of-fold network outputs cached for post-processing tuning.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..io.atomic import atomic_paths, atomic_write_json
from ..io.paths import inside, safe_component
from ..labels import LabelSet
from .bundle import (KEY_METRIC, SPLITS_FILE, decision, default_postprocess, in_pixels, write_bundle, write_postprocess,
                     write_readme)
from .plan import load_plan

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "model.pt"
HISTORY = "history.json"
CURVE = "training_curve.png"
CASE_PATH_KEYS = ("image", "label", "instance", "classes")


# -- the plan -----------------------------------------------------------------------------
# -- splits -------------------------------------------------------------------------------
def case_has_things(entry: dict, root: str | os.PathLike, label_set: LabelSet) -> bool:
    """Whether a case holds a thing instance (read as training reads it, `LoadCased`)."""
    from .transforms import load_case

    _, pair = load_case(entry, label_set, root)
    return bool((pair[1] > 0).any())


def make_splits(names: Sequence[str], with_things: Sequence[bool], folds: int, seed: int = 0) -> list[dict]:
    """`folds` {"train", "val"} lists of case names: every case validated once, the cases with
    things dealt out first so that every validation fold has some; deterministic from `seed`."""
    if folds < 2:
        raise InputError(None, f"cross-validation needs at least 2 folds, the plan asks for {folds}")
    if len(names) < folds:
        raise InputError(None, f"{len(names)} case(s) cannot make {folds} folds")
    n_things = sum(with_things)
    if n_things < folds:
        raise InputError(None, f"only {n_things} case(s) hold things: {folds} folds would leave a validation "
                               "fold without things (lower 'folds' in the plan)")
    rng = random.Random(seed)
    ordered = [n for n, t in zip(names, with_things) if t], [n for n, t in zip(names, with_things) if not t]
    val: list[list[str]] = [[] for _ in range(folds)]
    dealt = 0
    for group in ordered:
        group = sorted(group)
        rng.shuffle(group)
        for name in group:
            val[dealt % folds].append(name)
            dealt += 1
    return [{"train": [n for n in names if n not in fold], "val": sorted(fold)} for fold in val]


def splits_document(plan: dict, seed: int = 0) -> dict:
    """configs/splits.json of a plan: the seed, the folds and each case's entry (paths relative to the
    dataset root)."""
    root, label_set = plan["dataset"]["root"], LabelSet.from_dict(plan["label_set"])
    names = [c["case"] for c in plan["cases"]]
    with_things = [case_has_things(c, root, label_set) for c in plan["cases"]]
    folds = make_splits(names, with_things, int(decision(plan, "folds")), seed)
    return {"seed": seed, "folds": folds, "cases": {c["case"]: c for c in plan["cases"]}}


def fold_datalist(splits_file: str | os.PathLike, root: str | os.PathLike, fold: int, part: str) -> list[dict]:
    """The `part` ("train" or "val") entries of `fold` as `LoadCased` takes them (relative to `root`;
    a path that climbs out of the dataset is refused)."""
    document = json.loads(Path(splits_file).read_text(encoding="utf-8"))
    if not _splits_fit(document, root):
        document = _split_again(document, root)
    folds = document["folds"]
    if not 0 <= int(fold) < len(folds):
        raise InputError(splits_file, f"fold {fold} does not exist (folds 0..{len(folds) - 1})")
    entries = []
    for name in folds[int(fold)][part]:
        entry = {k: v for k, v in document["cases"][name].items() if v is not None}  # None does not collate
        for key in CASE_PATH_KEYS:
            for value in entry[key] if isinstance(entry.get(key), list) else [entry.get(key)]:
                if value:
                    inside(root, Path(root) / value)
        entries.append(entry)
    return entries


def _splits_fit(document: dict, root: str | os.PathLike) -> bool:
    """Whether the cases the splits name are the ones at `root` (their image files are there)."""
    return all((Path(root) / path).exists() for entry in document["cases"].values() for path in entry["image"])


def _split_again(document: dict, root: str | os.PathLike) -> dict:
    """The splits of another dataset given to the bundle's train.json (`--dataset_dir`): the same seed and
    number of folds (fewer where fewer cases hold things) over the cases at `root`, every validation fold
    with things."""
    from .datasets import load_dataset

    dataset = load_dataset(root)
    names = [c["case"] for c in dataset.cases]
    with_things = [case_has_things(c, root, dataset.label_set) for c in dataset.cases]
    n_folds = max(2, min(len(document["folds"]), sum(with_things)))  # fewer where few cases hold things
    log.info("%s holds other cases than configs/splits.json names: split them again into %d folds", root, n_folds)
    folds = make_splits(names, with_things, n_folds, int(document.get("seed", 0)))
    return {"seed": document.get("seed", 0), "folds": folds, "cases": {c["case"]: dict(c) for c in dataset.cases}}


# -- the bundle's training fingerprint -----------------------------------------------------
def bundle_fingerprint(plan: dict) -> dict:
    """What configs/fingerprint.json keeps of the training images for the domain check at inference:
    `domain.domain_fingerprint` of the images and, for pictures (microscopy works in pixels), the
    typical instance size that the scale estimate reads (`scale.instance_sizes`, at the planned pixel
    size)."""
    from ..domain import domain_fingerprint
    from ..scale import instance_sizes
    from .transforms import load_case

    root, label_set = plan["dataset"]["root"], LabelSet.from_dict(plan["label_set"])
    pictures = in_pixels(plan)
    pairs = []

    def images():
        for entry in plan["cases"]:
            image, pair = load_case(entry, label_set, root)
            if pictures:
                pairs.append(pair)
            yield image[:1] if pictures and _is_grey(image) else image

    document = domain_fingerprint(images(), modality=plan["dataset"].get("modality"))
    if pictures:
        document["instances"] = instance_sizes(pairs, label_set.thing_ids, decision(plan, "target_spacing_mm"))
    return document


def _is_grey(image: torch.Tensor) -> bool:
    """A picture whose channels are all equal is a grey one stored as RGB: at inference grey pictures
    come with one channel (the bundle repeats them), so the domain check must have seen them so."""
    return image.shape[0] > 1 and bool((image == image[:1]).all())


# -- exact resume -------------------------------------------------------------------------
def _random_states(obj, found: list, seen: set) -> list:
    """Every numpy RandomState reachable from a transform (MONAI's randomizable transforms keep one
    each, also inside wrapped array transforms), in a fixed order."""
    from monai.transforms import Transform

    if id(obj) in seen:
        return found
    seen.add(id(obj))
    if isinstance(obj, np.random.RandomState):
        found.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _random_states(item, found, seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            _random_states(item, found, seen)
    elif isinstance(obj, Transform) or hasattr(obj, "set_random_state"):
        for item in vars(obj).values():
            _random_states(item, found, seen)
    return found


def _state_of(generator: np.random.RandomState) -> dict:
    state = generator.get_state(legacy=False)
    return {**state, "state": {"key": torch.from_numpy(state["state"]["key"].astype(np.int64)),
                               "pos": int(state["state"]["pos"])}}


def _restore(generator: np.random.RandomState, state: dict) -> None:
    key = state["state"]["key"].numpy().astype(np.uint32)
    generator.set_state({**state, "state": {"key": key, "pos": state["state"]["pos"]}})


def rng_states(datasets: Iterable) -> dict:
    """The random states a training epoch draws from: torch (CPU, CUDA), numpy, python, the
    dataloader order (torch's global generator) and each randomizable transform of `datasets`."""
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _state_of_global(),
        "python": [py[0], list(py[1]), py[2]],
        "transforms": [_state_of(g) for d in datasets for g in _random_states(d.transform, [], set())],
    }


def _state_of_global() -> dict:
    generator = np.random.RandomState()
    generator.set_state(np.random.get_state())
    return _state_of(generator)


def restore_rng_states(states: dict, datasets: Iterable) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    generator = np.random.RandomState()
    _restore(generator, states["numpy"])
    np.random.set_state(generator.get_state())
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    generators = [g for d in datasets for g in _random_states(d.transform, [], set())]
    if len(generators) != len(states["transforms"]):
        raise InputError(None, f"the checkpoint holds {len(states['transforms'])} transform random states, the "
                               f"training pipeline has {len(generators)}: it was made by another train.json")
    for g, state in zip(generators, states["transforms"]):
        _restore(g, state)


def _is_rank_zero() -> bool:
    """Whether this process writes (under torchrun, rank 0 alone; the others only train)."""
    return int(os.environ.get("RANK", "0")) == 0


class TrainingCheckpoint:
    """The fold's training record, kept in `ckpt_dir` each epoch (after validation):

    - `checkpoint.pt`: model, optimiser, scheduler, AMP scaler, trainer state, every random state
      (`rng_states`), the best validation figure and the history; with `resume`, loaded when the
      trainer starts, so a run killed mid-epoch continues from its last epoch to the same weights
      as a run never stopped;
    - `model.pt`: the network's weights at the best `key_metric` (validation PQ) so far;
    - `history.json` and `training_curve.png`: mean loss per epoch, validation PQ_things / PQ_stuff.
    """

    def __init__(self, ckpt_dir: str | os.PathLike, network: torch.nn.Module, optimizer, lr_scheduler, validator,
                 key_metric: str = KEY_METRIC, datasets: Sequence = (), resume: bool = False) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.network, self.optimizer, self.lr_scheduler = network, optimizer, lr_scheduler
        self.validator, self.key_metric, self.datasets, self.resume = validator, key_metric, list(datasets), resume
        self.history: list[dict] = []
        self.best: dict = {"metric": -1.0, "epoch": 0}
        self._losses: list[float] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_STARTED, self._new_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def _new_epoch(self, engine) -> None:
        self._losses = []

    def _record_loss(self, engine) -> None:
        from monai.handlers import from_engine

        loss = from_engine(["loss"], first=True)(engine.state.output)
        self._losses.append(float(loss[0] if isinstance(loss, (list, tuple)) else loss))

    def load(self, engine) -> None:
        path = self.ckpt_dir / CHECKPOINT
        if not self.resume or not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if getattr(engine, "scaler", None) is not None and state.get("scaler"):
            engine.scaler.load_state_dict(state["scaler"])
        max_epochs = engine.state.max_epochs
        engine.load_state_dict(state["trainer"])
        engine.state.max_epochs = max(max_epochs, engine.state.epoch)
        restore_rng_states(state["rng"], self.datasets)
        self.best, self.history = dict(state["best"]), list(state["history"])
        log.info("resumed %s at epoch %d", self.ckpt_dir, engine.state.epoch)

    def save(self, engine) -> None:
        record = {"epoch": engine.state.epoch, "steps": len(self._losses),
                  "loss": float(np.mean(self._losses)) if self._losses else float("nan")}
        validated = self.validator is not None and self.validator.state.epoch == engine.state.epoch
        if validated:
            metrics = self.validator.state.metrics
            record.update({k: float(v) for k, v in metrics.items() if k.startswith("val_")})
        self.history.append(record)
        if not _is_rank_zero():
            return
        if validated and record.get(self.key_metric, -1.0) > self.best["metric"]:
            self.best = {"metric": record[self.key_metric], "epoch": engine.state.epoch}
            self._write(self.ckpt_dir / BEST, self.network.state_dict())
        self._write(self.ckpt_dir / CHECKPOINT, self._state(engine))
        atomic_write_json(self.ckpt_dir / HISTORY, {"best": self.best, "epochs": self.history})
        plot_history(self.history, self.ckpt_dir / CURVE, self.key_metric)

    def _state(self, engine) -> dict:
        scaler = getattr(engine, "scaler", None)
        return {"model": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                "trainer": dict(engine.state_dict()), "rng": rng_states(self.datasets), "best": self.best,
                "history": self.history}

    @staticmethod
    def _write(path: Path, state: dict) -> None:
        with atomic_paths(path) as (tmp,):
            torch.save(state, tmp)


def plot_history(history: list[dict], path: str | os.PathLike, key_metric: str = KEY_METRIC) -> Path:
    """The training curves: mean loss per epoch (left), validation PQ, PQ_things, PQ_stuff (right)."""
    from ..io.qc import _figure, _save_png

    fig = _figure(2)
    loss_ax, pq_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    loss_ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker=".")
    loss_ax.set(xlabel="epoch", ylabel="training loss", yscale="log" if all(h["loss"] > 0 for h in history) else "linear")
    for name in (key_metric, "val_pq_things", "val_pq_stuff"):
        points = [(h["epoch"], h[name]) for h in history if name in h and np.isfinite(h[name])]
        if points:
            pq_ax.plot(*zip(*points), marker="o", label=name)
    pq_ax.set(xlabel="epoch", ylabel="validation", ylim=(0.0, 1.0))
    if pq_ax.get_legend_handles_labels()[0]:
        pq_ax.legend()
    return _save_png(fig, path)


# -- running the bundle's train.json ------------------------------------------------------
def fold_parser(bundle: str | os.PathLike, fold: int, epochs: int | None = None, resume: bool = False,
                overrides: dict | None = None):
    """The ConfigParser of the bundle's train.json for `fold` (what `--fold K` on the command line does)."""
    from ..segment import bundle_config

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # under torchrun: the bundle's DDP overrides too
    parser = bundle_config(bundle, "train.json", *(["multi_gpu_train.json"] if distributed else []))
    parser["fold"], parser["resume"] = int(fold), bool(resume)
    if epochs is not None:
        parser["max_epochs"] = int(epochs)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def train_fold(bundle: str | os.PathLike, fold: int, epochs: int | None = None, resume: bool = False,
               overrides: dict | None = None, handlers: Sequence = ()) -> dict | None:
    """Run the bundle's train.json for one fold (`handlers`: more ignite handlers for the trainer);
    returns the fold's best validation figures (None on the other ranks under torchrun)."""
    parser = fold_parser(bundle, fold, epochs, resume, overrides)
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    for handler in handlers:
        handler.attach(trainer)
    try:
        parser.get_parsed_content("run")
    except RuntimeError as e:  # MONAI wraps what the expression raised in "Failed to evaluate": give the cause
        if e.__cause__ is None:
            raise
        raise e.__cause__ from None
    finally:
        if "finalize" in parser:
            parser.get_parsed_content("finalize")
    return fold_summary(bundle, fold) if _is_rank_zero() else None


def fold_summary(bundle: str | os.PathLike, fold: int) -> dict:
    """The best epoch's figures of a trained fold (from its history.json)."""
    folder = Path(bundle) / "models" / f"fold_{fold}"
    record = json.loads((folder / HISTORY).read_text(encoding="utf-8"))
    splits = json.loads((Path(bundle) / "configs" / SPLITS_FILE).read_text(encoding="utf-8"))["folds"][fold]
    best = next((h for h in record["epochs"] if h["epoch"] == record["best"]["epoch"]), {})
    return {"fold": fold, "n_train": len(splits["train"]), "n_val": len(splits["val"]),
            "best_epoch": record["best"]["epoch"], "pq": best.get(KEY_METRIC, float("nan")),
            "pq_things": best.get("val_pq_things", float("nan")), "pq_stuff": best.get("val_pq_stuff", float("nan"))}


def _plain(tensor) -> torch.Tensor:
    """A tensor without MONAI's meta (what `torch.load(weights_only=True)` reads back)."""
    from monai.data import MetaTensor

    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else torch.as_tensor(tensor)


def cache_fold_outputs(bundle: str | os.PathLike, fold: int) -> list[Path]:
    """The fold's best network on each of its validation cases, on the planned grid, saved as
    `cache/fold_K/<case>.pt` (`pred` float16 heads, `label` the true pair, `affine`, `case`): what
    post-processing tuning groups again and again without running the network."""
    parser = fold_parser(bundle, fold)
    network = parser.get_parsed_content("network_def").to(parser.get_parsed_content("device"))
    weights = Path(bundle) / "models" / f"fold_{fold}" / BEST
    network.load_state_dict(torch.load(weights, map_location=next(network.parameters()).device, weights_only=True))
    network.eval()
    inferer = parser.get_parsed_content("validate#inferer")
    dataset = parser.get_parsed_content("validate#dataset")
    names = json.loads((Path(bundle) / "configs" / SPLITS_FILE).read_text(encoding="utf-8"))["folds"][fold]["val"]
    written = []
    for name, item in zip(names, dataset):
        image = item["image"]
        with torch.no_grad():
            pred = inferer(image[None].to(next(network.parameters()).device), network)[0]
        path = Path(bundle) / "cache" / f"fold_{fold}" / f"{safe_component(name)}.pt"
        with atomic_paths(path) as (tmp,):
            torch.save({"case": name, "pred": _plain(pred).half().cpu(),
                        "label": _plain(item["label"]).round().to(torch.int32),
                        "affine": _plain(image.affine).to(torch.float64)}, tmp)
        written.append(path)
    return written


def tune(bundle: str | os.PathLike, plan: dict, cached: list[Path]) -> dict:
    """Post-processing values tuned on the cached out-of-fold outputs (`planning.tune`)."""
    from ..postprocess import PostprocessConfig
    from .tune import cached_cases, tune_postprocess

    base = default_postprocess(plan)
    knobs = {k: v for k, v in base.items() if k != "mode"}
    config, _ = tune_postprocess(cached_cases(cached), LabelSet.from_dict(plan["label_set"]), PostprocessConfig(**knobs))
    return {**base, **{k: getattr(config, k) for k in knobs}}


def _existing_checkpoints(bundle: Path) -> list[Path]:
    return sorted((bundle / "models").glob(f"fold_*/{CHECKPOINT}"))


def train(plan_path: str | os.PathLike, folds: str | int = "all", epochs: int | None = None, resume: bool = False,
          out: str | os.PathLike | None = None, seed: int = 0, overrides: dict | None = None,
          handlers: Sequence = ()) -> Path:
    """Train the plan's bundle: write it (or, with `resume`, take the one at `out` as it is), train
    the folds asked for and cache their out-of-fold outputs; then, over every fold trained so far,
    tune the post-processing on those outputs and choose `models/model.pt` (the fold with the best
    validation PQ). Returns the bundle folder."""
    plan = load_plan(plan_path)
    bundle = Path(out) if out else Path(plan_path).resolve().parent / f"{Path(plan_path).stem}_bundle"
    if resume and (bundle / "configs" / "train.json").is_file():
        log.info("resuming the bundle %s as written", bundle)
    else:
        if _existing_checkpoints(bundle):
            raise InputError(bundle, "holds trained folds already: pass --resume to continue them, or another --out")
        write_bundle(plan, bundle, splits_document(plan, seed), seed, bundle_fingerprint(plan))
    n_folds = len(json.loads((bundle / "configs" / SPLITS_FILE).read_text(encoding="utf-8"))["folds"])
    chosen = list(range(n_folds)) if folds == "all" else [int(folds)]
    for fold in chosen:
        if not 0 <= fold < n_folds:
            raise InputError(plan_path, f"--fold {fold}: the plan has folds 0..{n_folds - 1}")
    for fold in chosen:
        train_fold(bundle, fold, epochs, resume, overrides, handlers)
        if _is_rank_zero():
            cache_fold_outputs(bundle, fold)
    if not _is_rank_zero():
        return bundle
    # every fold trained so far (also by earlier runs, `--fold K` one at a time) takes part
    summaries = [fold_summary(bundle, k) for k in range(n_folds) if (bundle / "models" / f"fold_{k}" / HISTORY).is_file()]
    best = max(summaries, key=lambda s: s["pq"] if np.isfinite(s["pq"]) else -1.0)
    shutil.copyfile(bundle / "models" / f"fold_{best['fold']}" / BEST, bundle / "models" / BEST)
    values = tune(bundle, plan, sorted((bundle / "cache").glob("fold_*/*.pt")))
    write_postprocess(bundle, plan, values)
    write_readme(bundle, plan, summaries, values)
    return bundle


# -- command line (registered in medpanoptic.cli) -----------------------------------------
def _fold(text: str) -> str | int:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a fold number or 'all', got {text!r}") from None


def configure_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", help="plan.json written by `medpanoptic plan`")
    p.add_argument("--fold", type=_fold, default="all", help="fold to train (0..k-1) or 'all' (default)")
    p.add_argument("--epochs", type=int, help="epochs per fold (default: the plan's)")
    p.add_argument("--resume", action="store_true", help="continue each fold from its last checkpoint (exactly)")
    p.add_argument("--out", help="bundle folder to write (default: <plan>_bundle beside the plan)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and the training (default 0)")


def run_cli(args: argparse.Namespace) -> int:
    if args.epochs is not None and args.epochs < 1:
        raise InputError(None, f"--epochs must be at least 1, got {args.epochs}")
    bundle = train(args.plan, args.fold, args.epochs, args.resume, args.out, args.seed)
    if _is_rank_zero():
        print(f"trained {bundle} (models/model.pt; cross-validation in docs/README.md)")
    return 0
