"""The label set: which classes a panoptic result speaks of, stuff or thing, and how to show and code them.

A `LabelSet` travels with every panoptic pair. Viewers need the colours, DICOM SEG needs the
coded concepts (SNOMED CT property category and type), evaluation needs to know which
classes are things (counted instance by instance) and which are stuff (one segment each).
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal, Mapping, Sequence

from .errors import LabelSetError

Kind = Literal["stuff", "thing"]
KINDS: tuple[str, ...] = ("stuff", "thing")

BACKGROUND_ID = 0
"""Label 0 is background / unlabeled in every label set; no class may use it."""


@dataclass(frozen=True)
class Code:
    """A coded concept (DICOM code sequence item): value, coding scheme and meaning."""

    value: str
    scheme: str
    meaning: str

    def to_dict(self) -> dict[str, str]:
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> "Code":
        try:
            return cls(str(d["value"]), str(d["scheme"]), str(d["meaning"]))
        except KeyError as missing:
            raise LabelSetError(f"a code needs value, scheme and meaning; {missing} is missing in {dict(d)}") from None


# SNOMED CT concepts used by the built-in label sets (DICOM CID 7150 categories).
SCT_TISSUE = Code("85756007", "SCT", "Tissue")
SCT_ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
SCT_MORPHOLOGICALLY_ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")
SCT_SOFT_TISSUE = Code("87784001", "SCT", "Soft tissue")
SCT_LIVER = Code("10200004", "SCT", "Liver")
SCT_LESION = Code("52988006", "SCT", "Lesion")
SCT_NUCLEUS = Code("84640000", "SCT", "Nucleus")
SCT_CELL = Code("4421005", "SCT", "Cell")

MAX_NAME_LENGTH = 64
"""Characters in a class name: DICOM's LO (Segment Label) holds 64."""
FORBIDDEN_IN_NAME = {'"': "ITK-SNAP's label file ends a name at a double quote",
                     "\\": "DICOM splits values at a backslash"}
FORBIDDEN_IN_CODE = {"^": "Slicer separates a code's parts with '^'", "~": "Slicer separates terminology fields with '~'",
                     "|": "Slicer separates segment tags with '|'", "\\": "DICOM splits values at a backslash"}


def _line_breaking(text: str) -> str | None:
    """The first control or line/paragraph-separator character of `text` (what breaks one-line formats), if any."""
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            return ch
    return None


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a class name (every viewer format must hold it intact), or None."""
    if not name.strip():
        return "the name is empty"
    bad = _line_breaking(name)
    if bad is not None:
        return f"the name contains the control character U+{ord(bad):04X}: names are one line of printable text"
    if name != name.strip():
        return "the name starts or ends with white space, which DICOM and Slicer drop"
    if len(name) > MAX_NAME_LENGTH:
        return f"the name has {len(name)} characters, more than {MAX_NAME_LENGTH} (DICOM LO)"
    for ch, why in FORBIDDEN_IN_NAME.items():
        if ch in name:
            return f"the name contains {ch!r}: {why}"
    return None


def code_problem(code: "Code") -> str | None:
    """Why `code` cannot be written into Slicer terminology and DICOM code items, or None."""
    for part, text in (("value", code.value), ("scheme", code.scheme), ("meaning", code.meaning)):
        if not text.strip():
            return f"its {part} is empty"
        bad = _line_breaking(text)
        if bad is not None:
            return f"its {part} {text!r} contains the control character U+{ord(bad):04X}"
        for ch, why in FORBIDDEN_IN_CODE.items():
            if ch in text:
                return f"its {part} {text!r} contains {ch!r}: {why}"
    return None


@dataclass(frozen=True)
class LabelClass:
    """One class: its id in the label channel, name, kind, display colour (RGB 0-255) and codes.

    `category` and `type` are the segmented property category and type (DICOM CID 7150/7151);
    `type_modifier` qualifies the type (e.g. SCT 7771000 "Left" of a kidney); `anatomic_region`
    says where a type that is not itself anatomy lies (a mass in the adrenal gland), and
    `anatomic_region_modifier` qualifies the region. These are what Slicer's terminology and a
    DICOM SEG segment description carry.
    """

    id: int
    name: str
    kind: Kind
    color: tuple[int, int, int] = (128, 128, 128)
    category: Code = SCT_TISSUE
    type: Code = SCT_TISSUE
    type_modifier: Code | None = None
    anatomic_region: Code | None = None
    anatomic_region_modifier: Code | None = None

    @property
    def codes(self) -> dict[str, Code]:
        """Every code this class carries, by field name (the optional ones only when set)."""
        named = {key: getattr(self, key) for key in CODE_FIELDS}
        return {key: code for key, code in named.items() if code is not None}

    @property
    def is_thing(self) -> bool:
        return self.kind == "thing"

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "color": list(self.color),
            **{key: code.to_dict() for key, code in self.codes.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "LabelClass":
        for key in ("id", "name", "kind"):
            if key not in d:
                raise LabelSetError(f"a class needs '{key}': {dict(d)}")
        color = tuple(int(c) for c in d.get("color", (128, 128, 128)))
        return cls(
            id=_as_int(d["id"], "id"),
            name=str(d["name"]),
            kind=d["kind"],
            color=color,  # type: ignore[arg-type]
            category=Code.from_dict(d["category"]) if "category" in d else SCT_TISSUE,
            type=Code.from_dict(d["type"]) if "type" in d else SCT_TISSUE,
            **{key: Code.from_dict(d[key]) for key in OPTIONAL_CODE_FIELDS if d.get(key) is not None},
        )


OPTIONAL_CODE_FIELDS = ("type_modifier", "anatomic_region", "anatomic_region_modifier")
CODE_FIELDS = ("category", "type", *OPTIONAL_CODE_FIELDS)


def _as_int(value, what: str) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise LabelSetError(f"class {what} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LabelSet:
    """An ordered, validated set of classes; construction refuses an invalid set.

    Rules: ids are unique integers in 1..65535 (0 is background), names are unique and
    survive every viewer format (`name_problem`: one line, no control characters, at most 64
    characters, no double quote or backslash), kind is 'stuff' or 'thing', colours are three
    integers in 0..255, codes have no Slicer or DICOM separators (`code_problem`).
    """

    classes: tuple[LabelClass, ...]
    name: str = ""
    _by_id: dict[int, LabelClass] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        by_id: dict[int, LabelClass] = {}
        names: set[str] = set()
        for c in self.classes:
            if not isinstance(c, LabelClass):
                raise LabelSetError(f"label set entries must be LabelClass, got {type(c).__name__}")
            if c.id == BACKGROUND_ID:
                raise LabelSetError(f"class '{c.name}': id 0 is reserved for background")
            if not 0 < c.id <= 65535:
                raise LabelSetError(f"class '{c.name}': id {c.id} is outside 1..65535")
            if c.id in by_id:
                raise LabelSetError(f"duplicate class id {c.id} ('{by_id[c.id].name}' and '{c.name}')")
            problem = name_problem(c.name) if isinstance(c.name, str) else "the name is not text"
            if problem:
                raise LabelSetError(f"class id {c.id}: {problem}")
            for key, code in c.codes.items():
                problem = code_problem(code) if isinstance(code, Code) else f"it is a {type(code).__name__}, not a Code"
                if problem:
                    raise LabelSetError(f"class id {c.id} ('{c.name}'): {key} code: {problem}")
            if c.name in names:
                raise LabelSetError(f"duplicate class name '{c.name}'")
            if c.kind not in KINDS:
                raise LabelSetError(f"class '{c.name}': unknown kind '{c.kind}' (expected 'stuff' or 'thing')")
            if len(c.color) != 3 or any(not 0 <= v <= 255 for v in c.color):
                raise LabelSetError(f"class '{c.name}': color must be three integers 0..255, got {c.color}")
            by_id[c.id] = c
            names.add(c.name)
        if not by_id:
            raise LabelSetError("a label set needs at least one class")
        object.__setattr__(self, "_by_id", by_id)

    # -- lookup ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[LabelClass]:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    def __contains__(self, class_id: object) -> bool:
        return class_id in self._by_id

    def __getitem__(self, class_id: int) -> LabelClass:
        try:
            return self._by_id[int(class_id)]
        except KeyError:
            raise LabelSetError(f"class id {class_id} is not in the label set {sorted(self._by_id)}") from None

    def by_name(self, name: str) -> LabelClass:
        for c in self.classes:
            if c.name == name:
                return c
        raise LabelSetError(f"no class named '{name}' (known: {[c.name for c in self.classes]})")

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.classes]

    @property
    def thing_ids(self) -> list[int]:
        return [c.id for c in self.classes if c.kind == "thing"]

    @property
    def stuff_ids(self) -> list[int]:
        return [c.id for c in self.classes if c.kind == "stuff"]

    @property
    def max_id(self) -> int:
        return max(self._by_id)

    # -- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "classes": [c.to_dict() for c in self.classes]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "LabelSet":
        if "classes" not in d or not isinstance(d["classes"], Sequence):
            raise LabelSetError("a label set needs a 'classes' list")
        return cls(tuple(LabelClass.from_dict(c) for c in d["classes"]), name=str(d.get("name", "")))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LabelSet":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise LabelSetError(f"{os.fspath(path)}: cannot read label set: {e}") from None
        try:
            return cls.from_dict(data)
        except LabelSetError as e:
            raise LabelSetError(f"{os.fspath(path)}: {e}") from None

    @classmethod
    def from_names(cls, stuff: Iterable[str] = (), things: Iterable[str] = (), name: str = "") -> "LabelSet":
        """A quick label set: stuff classes first, then things, ids from 1, colours from a palette.

        Stuff is coded as tissue (category and type SCT "Tissue"); things as lesions (category
        "Morphologically Abnormal Structure", type "Lesion"): a type, never the category again.
        """
        entries = [(n, "stuff") for n in stuff] + [(n, "thing") for n in things]
        classes = []
        for i, (n, kind) in enumerate(entries, start=1):
            category, type_ = (SCT_MORPHOLOGICALLY_ABNORMAL, SCT_LESION) if kind == "thing" else (SCT_TISSUE, SCT_TISSUE)
            classes.append(LabelClass(i, n, kind, PALETTE[(i - 1) % len(PALETTE)], category, type_))  # type: ignore[arg-type]
        return cls(tuple(classes), name=name)


PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
    (0, 114, 178), (213, 94, 0), (204, 121, 167), (120, 120, 120),
)
"""Colour-blind-safe default colours (Okabe-Ito)."""


def ct_lesion_labels() -> LabelSet:
    """The 3D CT label set of the phantoms and the CT lesion bundle."""
    return LabelSet(
        (
            LabelClass(1, "soft tissue", "stuff", (177, 122, 101), SCT_TISSUE, SCT_SOFT_TISSUE),
            LabelClass(2, "liver", "stuff", (221, 130, 101), SCT_ANATOMICAL_STRUCTURE, SCT_LIVER),
            LabelClass(3, "lesion", "thing", (241, 214, 145), SCT_MORPHOLOGICALLY_ABNORMAL, SCT_LESION),
        ),
        name="ct_lesion",
    )


def nuclei_labels() -> LabelSet:
    """The 2D microscopy label set of the phantoms and the nuclei bundle."""
    return LabelSet(
        (
            LabelClass(1, "tissue", "stuff", (230, 159, 200), SCT_TISSUE, SCT_TISSUE),
            LabelClass(2, "nucleus", "thing", (60, 60, 200), SCT_ANATOMICAL_STRUCTURE, SCT_NUCLEUS),
        ),
        name="nuclei",
    )
