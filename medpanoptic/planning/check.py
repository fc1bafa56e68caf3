"""The full dataset check: every problem at once, by file, before anything is planned or trained.

A user with 200 cases wants the list of what is wrong, not the first traceback of a run that
dies after an hour. `dataset_problems` reads every file once and collects: missing and
unreadable files, 4D where 3D is meant, channel files or label maps off the image's grid,
classes in a label map outside the label set, instance masks without their class, channel
counts that differ between cases, thing classes with no voxel in the whole dataset.
`check_dataset` raises one `InputError(root, ...)` listing them all, one line per problem.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..io.geometry import same_grid
from .datasets import Dataset, read_class_table
from .transforms import _read_channels, grid_difference

UNREAD = "unread labels"  # a key of the voxel counter: cases whose truth could not be read


@dataclass(frozen=True)
class Problem:
    """One problem of one file (`where` relative to the dataset root; "dataset" for the whole dataset)."""

    where: str
    problem: str


@dataclass
class _Grid:
    shape: tuple
    affine: np.ndarray
    path: str


def dataset_problems(dataset: Dataset) -> list[Problem]:
    """Every problem of `dataset`, in case order, then those of the dataset as a whole."""
    problems: list[Problem] = []
    channel_counts: dict[str, int] = {}
    thing_voxels: Counter = Counter()
    if not dataset.cases:
        problems.append(Problem("dataset", "no training cases found"))
    if not dataset.label_set.thing_ids:
        problems.append(Problem("dataset", "no thing class declared: add \"things\": [names] to dataset.json "
                                           "or pass --things a,b (panoptic training needs countable objects)"))
    for entry in dataset.cases:
        count = _check_case(dataset, entry, problems, thing_voxels)
        if count is not None:
            channel_counts[entry["case"]] = count
    problems += _channel_count_problems(dataset, channel_counts)
    unread = thing_voxels.pop(UNREAD, 0) > 0
    for class_id in dataset.label_set.thing_ids if dataset.cases else []:
        if thing_voxels[class_id] == 0:
            name = dataset.label_set[class_id].name
            problems.append(Problem("dataset", f"thing class '{name}' (id {class_id}) is empty: no voxel in any "
                                               f"{'readable ' if unread else ''}case"))
    return problems


def check_dataset(dataset: Dataset) -> None:
    """Raise one `InputError(root, ...)` listing every problem of the dataset by file; return if there is none."""
    problems = dataset_problems(dataset)
    if problems:
        raise InputError(dataset.root, format_problems(problems))


def format_problems(problems: list[Problem]) -> str:
    """'N problem(s) in the dataset:' then one line per problem, grouped by file in order of appearance."""
    by_file: dict[str, list[str]] = defaultdict(list)
    for p in problems:
        by_file[p.where].append(p.problem)
    lines = [f"  {where}: {problem}" for where, items in by_file.items() for problem in items]
    return f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in the dataset:\n" + "\n".join(lines)


def _check_case(dataset: Dataset, entry: dict, problems: list[Problem], thing_voxels: Counter) -> int | None:
    """Check one case's files; returns its channel count when all its images could be read."""
    image_grid, channels, readable = None, 0, True
    for relative in entry["image"]:
        read = _read_file(dataset, relative, problems, "image")
        if read is None:
            readable = False
            continue
        array, affine = read
        if image_grid is None:
            image_grid = _Grid(array.shape[1:], affine, relative)
        elif not same_grid(image_grid.shape, image_grid.affine, array.shape[1:], affine):
            problems.append(Problem(relative, f"not on the grid of the case's first channel {image_grid.path}"))
        channels += array.shape[0]
    label = _read_label(dataset, entry, problems)
    if label is not None and image_grid is not None:
        values, affine = label
        if not same_grid(image_grid.shape, image_grid.affine, values.shape, affine):
            problems.append(Problem(entry["label"], f"not on the grid of its image {image_grid.path} "
                                                    f"({grid_difference(values.shape, image_grid.shape)})"))
    if label is None:
        thing_voxels[UNREAD] += 1
    else:
        ids, counts = np.unique(label[0], return_counts=True)
        for class_id, count in zip(ids.tolist(), counts.tolist()):
            thing_voxels[class_id] += count
    return channels if readable and image_grid is not None else None


def _read_file(dataset: Dataset, relative: str, problems: list[Problem], what: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(channel-first array, affine) of a file of the right dimension, or None with its problem recorded."""
    path = dataset.root / relative
    if not path.is_file():
        problems.append(Problem(relative, f"missing ({what})"))
        return None
    try:
        array, affine = _read_channels(path)
    except InputError as e:
        text = e.problem
        problems.append(Problem(relative, f"{'4D where 3D is meant: ' if '4D' in text else 'unreadable: '}{text}"))
        return None
    dims = dataset.spatial_dims
    if array.ndim - 1 != dims:
        problems.append(Problem(relative, f"{array.ndim - 1}D where {dims}D is meant (shape {tuple(array.shape[1:])})"))
        return None
    return array, affine


def _read_label(dataset: Dataset, entry: dict, problems: list[Problem]) -> tuple[np.ndarray, np.ndarray] | None:
    """(class ids per voxel, affine) of the case's truth, or None with its problems recorded."""
    relative = entry["label"]
    read = _read_file(dataset, relative, problems, "label")
    if read is None:
        return None
    array, affine = read
    if array.shape[0] != 1:
        problems.append(Problem(relative, f"a label map has one channel, found {array.shape[0]}"))
        return None
    values = array[0]
    if np.issubdtype(values.dtype, np.floating) and not np.all(values == np.round(values)):
        problems.append(Problem(relative, "a label or instance map must hold whole numbers"))
        return None
    values = values.astype(np.int64)
    if entry.get("instance") == relative:  # a microscopy instance mask: classes come from its table
        return _mask_classes(dataset, entry, values, problems), affine
    if entry.get("instance"):
        inst = _read_file(dataset, entry["instance"], problems, "instance map")
        if inst is not None and not same_grid(values.shape, affine, inst[0].shape[1:], inst[1]):
            problems.append(Problem(entry["instance"], f"not on the grid of its label map {relative}"))
        elif inst is not None:
            problems += _uncovered_things(dataset, entry["instance"], values, inst[0][0])
    unknown = sorted(set(np.unique(values).tolist()) - {0, *dataset.label_set.ids})
    if unknown:
        problems.append(Problem(relative, f"class id(s) {unknown[:10]} outside the labels {dataset.label_set.ids}"))
    return values, affine


def _uncovered_things(dataset: Dataset, where: str, label: np.ndarray, instance: np.ndarray) -> list[Problem]:
    """Thing classes whose voxels have no instance in the instance map (e.g. a class declared a thing by --things)."""
    uncovered = np.unique(label[(instance == 0) & np.isin(label, dataset.label_set.thing_ids)]).tolist()
    return [Problem(where, f"thing class '{dataset.label_set[c].name}' has voxels without an instance id "
                           "(the instance map does not cover it)") for c in uncovered]


def _mask_classes(dataset: Dataset, entry: dict, instance: np.ndarray, problems: list[Problem]) -> np.ndarray:
    """Class ids per pixel of an instance mask (instances without a class recorded as problems)."""
    if instance.min() < 0:
        problems.append(Problem(entry["label"], "an instance mask cannot hold negative ids"))
        return np.zeros_like(instance)
    present = np.unique(instance[instance > 0])
    lookup = np.zeros(int(instance.max()) + 1, dtype=np.int64)
    if not entry.get("classes"):
        things = dataset.label_set.thing_ids
        if len(things) != 1:
            problems.append(Problem(entry["label"], f"no classes/{entry['case']}.csv, and there are "
                                                    f"{len(things)} thing classes to choose from"))
        lookup[1:] = things[0] if things else 0
        return lookup[instance]
    try:
        table = read_class_table(dataset.root / entry["classes"])
    except InputError as e:
        problems.append(Problem(entry["classes"], f"unreadable: {e.problem}"))
        return np.zeros_like(instance)
    names = {c.name: c.id for c in dataset.label_set}
    unknown = sorted({n for n in table.values() if n not in names})
    if unknown:
        problems.append(Problem(entry["classes"], f"class(es) {unknown} outside the labels {sorted(names)}"))
    missing = [int(i) for i in present if int(i) not in table]
    if missing:
        problems.append(Problem(entry["classes"], f"no class for instance(s) {missing[:10]} of {entry['label']}"))
    for inst in present.tolist():
        lookup[inst] = names.get(table.get(inst, ""), 0)
    return lookup[instance]


def _channel_count_problems(dataset: Dataset, counts: dict[str, int]) -> list[Problem]:
    """Cases whose channel count differs from the dataset's (the declared one, else the most common)."""
    if not counts:
        return []
    expected = len(dataset.channels) if dataset.layout != "microscopy" else Counter(counts.values()).most_common(1)[0][0]
    problems = []
    for entry in dataset.cases:
        n = counts.get(entry["case"])
        if n is not None and n != expected:
            problems.append(Problem(entry["image"][0], f"{n} channel(s), where the dataset has {expected} "
                                                       f"({', '.join(dataset.channels)})"))
    return problems
