import json

import pytest
from pydicom.sr.codedict import codes

from medpanoptic.errors import LabelSetError
from medpanoptic.io.atomic import atomic_write_json
from medpanoptic.labels import LabelClass, LabelSet, ct_lesion_labels, nuclei_labels


def test_round_trip_json(tmp_path):
    labels = ct_lesion_labels()
    path = tmp_path / "labels.json"
    atomic_write_json(path, labels.to_dict())
    assert LabelSet.load(path) == labels
    assert json.loads(path.read_text())["classes"][2]["kind"] == "thing"


def test_lookup_and_kinds():
    labels = ct_lesion_labels()
    assert labels.thing_ids == [3] and labels.stuff_ids == [1, 2]
    assert labels[2].name == "liver" and labels.by_name("lesion").id == 3
    assert 3 in labels and 4 not in labels
    with pytest.raises(LabelSetError, match="not in the label set"):
        labels[4]


@pytest.mark.parametrize(
    "classes, message",
    [
        ([LabelClass(0, "bg", "stuff")], "reserved for background"),
        ([LabelClass(1, "a", "stuff"), LabelClass(1, "b", "thing")], "duplicate class id 1"),
        ([LabelClass(1, "a", "stuff"), LabelClass(2, "a", "thing")], "duplicate class name"),
        ([LabelClass(1, "a", "blob")], "unknown kind 'blob'"),
        ([LabelClass(1, "a", "stuff", (0, 0, 300))], "color"),
        ([LabelClass(70000, "a", "stuff")], "outside 1..65535"),
        ([], "at least one class"),
    ],
)
def test_invalid_sets_are_refused(classes, message):
    with pytest.raises(LabelSetError, match=message):
        LabelSet(tuple(classes))


def test_load_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"classes": [{"id": 0, "name": "x", "kind": "stuff"}]}))
    with pytest.raises(LabelSetError, match="bad.json.*reserved"):
        LabelSet.load(path)


def test_builtin_codes_are_real_snomed_concepts():
    """Every code of the built-in sets matches pydicom's SNOMED CT dictionary (an independent source)."""
    known = {}
    for keyword in ("Tissue", "AnatomicalStructure", "SoftTissue", "Liver", "Lesion", "Nucleus"):
        code = getattr(codes.SCT, keyword)
        known[code.value] = code.meaning
    known["49755003"] = codes.cid7150.MorphologicallyAbnormalStructure.meaning
    for labels in (ct_lesion_labels(), nuclei_labels()):
        for c in labels:
            for code in (c.category, c.type):
                assert code.scheme == "SCT"
                assert known[code.value].lower() == code.meaning.lower()


def test_from_names():
    labels = LabelSet.from_names(stuff=["tissue"], things=["nucleus", "mitosis"])
    assert labels.ids == [1, 2, 3] and labels.thing_ids == [2, 3]
