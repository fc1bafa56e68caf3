"""A training dataset in one of three layouts, read into one description the planner works from.

    msd         dataset.json with `training` (Medical Segmentation Decathlon; instancesTr/ optional)
    nnunet_v2   dataset.json with `channel_names`, `labels`, `file_ending`; imagesTr/<case>_0000<ending>...
    microscopy  images/<case>.tif|png, masks/<case>.tif|png (instance ids), optional classes/<case>.csv|json

Which classes are things is declared, never guessed: the medpanoptic label set of an MSD
dataset, a `"things": [names]` list in dataset.json, or the `things` argument (`--things a,b`).
Reading the description opens no image: missing or bad files are `check`'s business, which
reports them all at once. Every path in an entry is relative to the root and checked to stay
inside it (a dataset.json is untrusted).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError, LabelSetError
from ..io.paths import inside
from ..labels import (
    PALETTE,
    SCT_LESION,
    SCT_MORPHOLOGICALLY_ABNORMAL,
    SCT_TISSUE,
    LabelClass,
    LabelSet,
)

PICTURE_SUFFIXES = (".tif", ".tiff", ".png")
MR_CHANNEL_WORDS = ("MR", "T1", "T2", "FLAIR", "ADC", "DWI", "PD", "DCE", "SWI", "HBV")
DEFAULT_NUCLEUS = "nucleus"


@dataclass
class Dataset:
    """What the planner knows of a dataset before reading any voxel (see the module docstring)."""

    root: Path
    layout: str
    name: str
    spatial_dims: int
    channels: list[str]
    modality: str
    label_set: LabelSet
    cases: list[dict] = field(default_factory=list)

    def path(self, relative: str) -> Path:
        """An entry's path, absolute (it was checked to lie inside the root when the entry was made)."""
        return self.root / relative

    def describe(self) -> dict:
        """The plan's `dataset` section."""
        return {"root": str(self.root), "layout": self.layout, "name": self.name, "spatial_dims": self.spatial_dims,
                "channels": list(self.channels), "modality": self.modality, "n_cases": len(self.cases)}


def parse_things(text: str | Sequence[str] | None) -> list[str] | None:
    """`--things a,b` (or a list) as class names; None when not given."""
    if text is None:
        return None
    names = text.split(",") if isinstance(text, str) else list(text)
    return [n.strip() for n in names if n.strip()]


def detect_layout(root: Path) -> str:
    """Which layout a folder holds, from its dataset.json or its folders."""
    document = _read_json(root / "dataset.json") if (root / "dataset.json").is_file() else None
    if document is not None and {"channel_names", "file_ending"} <= set(document):
        return "nnunet_v2"
    if document is not None and "training" in document:
        return "msd"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "microscopy"
    raise InputError(root, "not a dataset: expected a dataset.json (MSD with 'training', or nnU-Net v2 with "
                           "'channel_names' and 'file_ending') or the folders images/ and masks/ (microscopy)")


def load_dataset(root: str | os.PathLike, things: str | Sequence[str] | None = None) -> Dataset:
    """The description of the dataset at `root`, whatever its layout; `things` overrides dataset.json's list."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(root, "no such dataset folder")
    layout = detect_layout(root)
    reader = {"msd": _msd, "nnunet_v2": _nnunet, "microscopy": _microscopy}[layout]
    return reader(root, parse_things(things))


# -- shared ---------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read the dataset description ({e})") from None
    if not isinstance(document, dict):
        raise InputError(path, "the dataset description must be a JSON object")
    return document


def _relative(root: Path, value: object, source: Path) -> str:
    """A path from a dataset description, relative to the root; refused if it is not a string or climbs out."""
    if not isinstance(value, str) or not value:
        raise InputError(source, f"a case path must be a non-empty string, got {value!r}")
    resolved = inside(root, root / value)
    return resolved.relative_to(root).as_posix()


def _label_set(names: dict[int, str], things: Iterable[str], source: Path, name: str) -> LabelSet:
    """A label set from {id: name} and the names of the thing classes (the others are stuff)."""
    things = list(things)
    unknown = [t for t in things if t not in names.values()]
    if unknown:
        raise InputError(source, f"thing class(es) {unknown} are not among the labels {sorted(names.values())}")
    classes = []
    for i, (class_id, class_name) in enumerate(sorted(names.items())):
        thing = class_name in things
        category, type_ = (SCT_MORPHOLOGICALLY_ABNORMAL, SCT_LESION) if thing else (SCT_TISSUE, SCT_TISSUE)
        classes.append(LabelClass(class_id, class_name, "thing" if thing else "stuff", PALETTE[i % len(PALETTE)],
                                  category, type_))
    try:
        return LabelSet(tuple(classes), name=name)
    except LabelSetError as e:
        raise InputError(source, f"its labels do not make a label set: {e}") from None


def _modality(channels: Sequence[str], declared: str = "") -> str:
    words = " ".join([declared, *channels]).upper()
    if "CT" in words.split() or words.strip() == "CT":
        return "CT"
    if any(w in words.replace("-", " ").split() for w in MR_CHANNEL_WORDS) or "MRI" in words:
        return "MR"
    if "MICROSCOP" in words:
        return "microscopy"
    return "other"


def _entry(case: str, image: list[str], label: str, instance: str | None = None, classes: str | None = None) -> dict:
    return {"case": case, "image": image, "label": label, "instance": instance, "classes": classes}


# -- Medical Segmentation Decathlon -----------------------------------------------------------
def _msd(root: Path, things: list[str] | None) -> Dataset:
    source = root / "dataset.json"
    document = _read_json(source)
    modality_map = document.get("modality") or {"0": "other"}
    channels = [str(modality_map[k]) for k in sorted(modality_map, key=lambda k: int(k))]
    label_set = _msd_label_set(document, things, source)
    cases = []
    for i, item in enumerate(document.get("training") or []):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise InputError(source, f"training entry {i} needs 'image' and 'label' paths")
        image = _relative(root, item["image"], source)
        instance = _relative(root, item["instance"], source) if item.get("instance") else None
        case = Path(image).name.split(".")[0]
        cases.append(_entry(case, [image], _relative(root, item["label"], source), instance))
    dims = 2 if str(document.get("tensorImageSize", "3D")).upper().startswith("2") else 3
    return Dataset(root, "msd", str(document.get("name", root.name)), dims, channels,
                   _modality(channels), label_set, cases)


def _msd_label_set(document: dict, things: list[str] | None, source: Path) -> LabelSet:
    stored = (document.get("medpanoptic") or {}).get("label_set")
    if stored is not None and things is None:
        try:
            return LabelSet.from_dict(stored)
        except (LabelSetError, TypeError, KeyError) as e:
            raise InputError(source, f"its medpanoptic label set is invalid: {e}") from None
    labels = document.get("labels")
    if not isinstance(labels, dict):
        raise InputError(source, "no 'labels' object ({\"0\": \"background\", \"1\": name, ...})")
    try:
        names = {int(k): str(v) for k, v in labels.items() if int(k) != 0}
    except ValueError:
        raise InputError(source, "MSD 'labels' keys must be integer ids") from None
    declared = things if things is not None else document.get("things", [])
    return _label_set(names, declared, source, str(document.get("name", "")))


# -- nnU-Net v2 raw ---------------------------------------------------------------------------
def _nnunet(root: Path, things: list[str] | None) -> Dataset:
    source = root / "dataset.json"
    document = _read_json(source)
    ending = document["file_ending"]
    if not isinstance(ending, str) or not ending.startswith(".") or "/" in ending:
        raise InputError(source, f"'file_ending' must be a suffix such as '.nii.gz', got {ending!r}")
    channels = [str(document["channel_names"][k]) for k in sorted(document["channel_names"], key=int)]
    labels = document.get("labels")
    if not isinstance(labels, dict):
        raise InputError(source, "no 'labels' object ({\"background\": 0, name: id, ...})")
    names = {}
    for name, value in labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(source, f"label '{name}': region-based labels ({value!r}) are not supported, "
                                     "give one integer id per class")
        if value != 0:
            names[value] = str(name)
    label_set = _label_set(names, things if things is not None else document.get("things", []), source,
                           str(document.get("name", root.name)))
    cases = []
    for case in _nnunet_cases(root, ending):
        images = [f"imagesTr/{case}_{c:04d}{ending}" for c in range(len(channels))]
        cases.append(_entry(case, images, f"labelsTr/{case}{ending}"))
    dims = 2 if ending.lower() in PICTURE_SUFFIXES else 3
    return Dataset(root, "nnunet_v2", str(document.get("name", root.name)), dims, channels,
                   _modality(channels), label_set, cases)


def _nnunet_cases(root: Path, ending: str) -> list[str]:
    """Case ids: those with a label, plus those with only images (so that `check` reports their missing label)."""
    labelled = {p.name[: -len(ending)] for p in (root / "labelsTr").glob(f"*{ending}") if not p.name.startswith(".")}
    imaged = {p.name[: -len(ending) - 5] for p in (root / "imagesTr").glob(f"*_[0-9][0-9][0-9][0-9]{ending}")
              if not p.name.startswith(".")}
    return sorted(labelled | imaged)


# -- microscopy (StarDist / Cellpose) -------------------------------------------------------------
def _microscopy(root: Path, things: list[str] | None) -> Dataset:
    images = _pictures(root / "images")
    masks = _pictures(root / "masks")
    names = sorted(set(images) | set(masks))
    cases = []
    class_names: set[str] = set()
    for case in names:
        table = next((f"classes/{case}{s}" for s in (".csv", ".json") if (root / "classes" / f"{case}{s}").is_file()), None)
        if table is not None:
            class_names |= set(read_class_table(root / table).values())
        image = images.get(case, f"images/{case}.tif")
        mask = masks.get(case, f"masks/{case}.tif")
        cases.append(_entry(case, [image], mask, mask, table))
    declared = things if things is not None else sorted(class_names) or [DEFAULT_NUCLEUS]
    all_names = sorted(set(declared) | class_names)
    stuff = [n for n in all_names if n not in declared]
    label_set = _label_set({i: n for i, n in enumerate(stuff + declared, start=1)}, declared, root, root.name)
    dims = _picture_dims(root / cases[0]["image"][0]) if cases else 2
    channels = _picture_channels(root / cases[0]["image"][0]) if cases else ["grey"]
    return Dataset(root, "microscopy", root.name, dims, channels, "microscopy", label_set, cases)


def _pictures(folder: Path) -> dict[str, str]:
    found = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in PICTURE_SUFFIXES and not p.name.startswith("."):
                found[p.stem] = f"{folder.name}/{p.name}"
    return found


def read_class_table(path: Path) -> dict[int, str]:
    """{instance id: class name} of a classes/<case>.csv (columns instance, class) or .json ({"id": name})."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError("expected an object {instance id: class name}")
            pairs = raw.items()
        else:
            import csv

            rows = list(csv.DictReader(text.splitlines()))
            if rows and not {"instance", "class"} <= set(rows[0]):
                raise ValueError("expected the columns 'instance' and 'class'")
            pairs = ((r["instance"], r["class"]) for r in rows)
        table = {int(k): str(v).strip() for k, v in pairs}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read the class table ({e})") from None
    if any(k <= 0 for k in table):
        raise InputError(path, "instance ids in a class table start at 1 (0 is background)")
    return table


def _picture_dims(path: Path) -> int:
    """2 for a picture, 3 for a multi-page TIFF stack (a z-stack of 2D planes); unreadable ones count as 2."""
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return 2
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes.replace("S", "")
            return 3 if len([a for a in axes if a in "ZQIYX"]) >= 3 and len(series.pages) > 1 else 2
    except Exception:  # check reports it as unreadable, with the reader's own words
        return 2


def _picture_channels(path: Path) -> list[str]:
    try:
        from PIL import Image

        with Image.open(path) as im:
            bands = im.getbands()
    except Exception:  # check reports it as unreadable
        return ["grey"]
    return ["R", "G", "B"] if len(bands) >= 3 else ["grey"]
