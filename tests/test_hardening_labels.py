"""Hardening #12: label names and codes survive every viewer format, the bounding box says it is
exclusive, and 2D maps can leave in the source image's own row/column order."""

import dataclasses
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import slicerio

from medpanoptic.errors import LabelSetError
from medpanoptic.io.atomic import atomic_write_json
from medpanoptic.io import read_panoptic, read_scan, write_dicom_series
from medpanoptic.io.dicom_seg import write_dicom_seg
from medpanoptic.export import export
from medpanoptic.io.formats import FORMAT_NAMES
from medpanoptic.io.geometry import LPS_TO_RAS
from medpanoptic.io.labelmap import read_itksnap_labels, read_slicer_color_table
from medpanoptic.io.seg_nrrd import write_seg_nrrd
from medpanoptic.io.segments import segment_map
from medpanoptic.labels import (SCT_LESION, SCT_MORPHOLOGICALLY_ABNORMAL, SCT_TISSUE, Code, LabelClass, LabelSet,
                                ct_lesion_labels)
from medpanoptic.io.table import instance_table, write_instance_table
from medpanoptic.synthetic import ct_phantom, nuclei_phantom

from .conftest import ANISOTROPIC, OBLIQUE

# what a name may hold: quotes, spaces, Slicer's separators, a colon, non-ASCII letters
AWKWARD_NAMES = {1: "O'Brien: soft tissue | fat", 2: "liver^segment 4a", 3: "Läsion ~ 肝 nodule"}

LEFT, RIGHT = Code("7771000", "SCT", "Left"), Code("24028007", "SCT", "Right")
KIDNEY = Code("64033007", "SCT", "Kidney")
ANATOMY = Code("123037004", "SCT", "Anatomical Structure")
MASS = Code("4147007", "SCT", "Mass")
ADRENAL = Code("23451007", "SCT", "Adrenal gland")


@pytest.fixture(scope="module")
def small_ct_dicom(tmp_path_factory):
    """A small oblique, anisotropic CT phantom written as a DICOM series, and the scan read back."""
    phantom = ct_phantom(shape=(48, 40, 16), spacing=ANISOTROPIC, direction=OBLIQUE, n_lesions=2,
                         lesion_radius_mm=(3.0, 4.0), seed=3)
    folder = tmp_path_factory.mktemp("ct")
    write_dicom_series(phantom.image, folder)
    scan = read_scan(folder)
    pair = phantom.pair.clone()
    pair.affine = scan.affine
    return scan, pair, phantom.label_set


def awkward_labels() -> LabelSet:
    return LabelSet(tuple(dataclasses.replace(c, name=AWKWARD_NAMES[c.id]) for c in ct_lesion_labels()))


# -- 1. names ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, rule", [
    ("lesion\nsecond line", "control character U\\+000A"),
    ("tab\there", "control character U\\+0009"),
    ("nul\x00byte", "control character U\\+0000"),
    ("next\x85line", "control character U\\+0085"),
    ("line\u2028separator", "control character U\\+2028"),
    ('the "big" one', "contains '\"': ITK-SNAP"),
    ("back\\slash", "backslash"),
    (" padded", "starts or ends with white space"),
    ("x" * 65, "65 characters, more than 64"),
])
def test_names_that_break_a_viewer_format_are_refused(name, rule):
    with pytest.raises(LabelSetError, match=f"class id 7: .*{rule}"):
        LabelSet((LabelClass(1, "tissue", "stuff"), LabelClass(7, name, "thing")))


def test_names_are_checked_when_a_label_set_is_loaded(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text('{"classes": [{"id": 2, "name": "a\\r\\nb", "kind": "stuff"}]}')
    with pytest.raises(LabelSetError, match="labels.json: class id 2: the name contains the control character U\\+000D"):
        LabelSet.load(path)


@pytest.mark.parametrize("code, rule", [
    (Code("123^4", "SCT", "Kidney"), "value '123\\^4' contains '\\^'"),
    (Code("64033007", "SCT", "Kidney ~ left"), "meaning 'Kidney ~ left' contains '~'"),
    (Code("64033007", "SC|T", "Kidney"), "scheme 'SC\\|T' contains '\\|'"),
    (Code("64033007", "SCT", ""), "meaning is empty"),
])
def test_codes_that_break_slicer_terminology_are_refused(code, rule):
    with pytest.raises(LabelSetError, match=f"class id 1 \\('kidney'\\): type_modifier code: its {rule}"):
        LabelSet((LabelClass(1, "kidney", "stuff", type=KIDNEY, type_modifier=code),))


def test_awkward_names_survive_seg_nrrd(oblique_ct, tmp_path):
    labels = awkward_labels()
    path = write_seg_nrrd(oblique_ct.pair, labels, tmp_path / "case.seg.nrrd")
    names = {s["name"] for s in slicerio.read_segmentation(str(path), skip_voxels=True)["segments"]}
    # NRRD headers are ASCII: what is not ASCII is percent-encoded, what is stays as it is
    assert {"O'Brien: soft tissue | fat", "Liver^segment 4a", "L%C3%A4sion ~ %E8%82%9D nodule 1"} <= names
    back, _ = read_panoptic(path, label_set=labels)
    np.testing.assert_array_equal(back.numpy(), oblique_ct.pair.numpy())
    inferred = read_panoptic(path)[1]  # the label set the file describes, from its tags and names
    assert [(c.id, c.kind) for c in inferred] == [(1, "stuff"), (2, "stuff"), (3, "thing")]
    assert inferred[1].name == "O'Brien: soft tissue | fat" and inferred[3].name == "Läsion ~ 肝 nodule"


def test_awkward_names_survive_the_labelmap_files(oblique_ct, tmp_path):
    labels = awkward_labels()
    written = export(oblique_ct.pair, labels, tmp_path / "case", ["labelmap"])
    _, segments = segment_map(oblique_ct.pair, labels)
    expected = {s.number: s.name for s in segments}
    # an independent parse, the way ITK-SNAP reads it: the label is what lies between the first two quotes
    text = written["itksnap"].read_text(encoding="utf-8")
    independent = {int(line.split()[0]): line.split('"')[1] for line in text.splitlines()
                   if line.strip() and not line.startswith("#") and int(line.split()[0])}
    assert independent == expected
    assert {k: v[0] for k, v in read_itksnap_labels(written["itksnap"]).items()} == expected
    # Slicer's colour table: one whitespace-free token per name (spaces as '_'), back to spaces when read
    ctbl = written["slicer"].read_text(encoding="utf-8").splitlines()
    assert all(len(line.split(" ")) == 6 for line in ctbl if not line.startswith("#"))
    assert "3 Läsion_~_肝_nodule_1" in {" ".join(line.split(" ")[:2]) for line in ctbl}
    assert {k: v[0] for k, v in read_slicer_color_table(written["slicer"]).items()} == expected
    assert read_slicer_color_table(written["slicer"])[1][1] == labels[1].color


def test_segment_names_keep_the_class_names_case():
    labels = LabelSet((LabelClass(1, "CT-visible lesion", "thing"), LabelClass(2, "iMRI region", "stuff")))
    pair = np.stack([np.array([[1, 1, 2]]), np.array([[4, 4, 0]])])
    assert [s.name for s in segment_map(pair, labels)[1]] == ["IMRI region", "CT-visible lesion 4"]


def test_awkward_names_survive_dicom_seg(small_ct_dicom, tmp_path):
    scan, pair, _ = small_ct_dicom
    labels = awkward_labels()
    path = write_dicom_seg(pair, labels, scan, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(path)
    _, segments = segment_map(pair, labels)
    assert [str(item.SegmentLabel) for item in ds.SegmentSequence] == [s.name for s in segments]
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    back, _ = read_panoptic(path, label_set=labels)
    np.testing.assert_array_equal(back.numpy(), pair.numpy())


# -- 2. codes ------------------------------------------------------------------------------

def _slicer_seg_nrrd(scan, path):
    """A segmentation as Slicer writes it (no medpanoptic tags): left and right kidney (type
    modifiers) and two adrenal masses (anatomic region with a modifier), on the scan's grid."""
    voxels = np.zeros(scan.shape[1:], np.uint8)
    voxels[2:8, 3:9, 2:6] = 1
    voxels[16:22, 3:9, 2:6] = 2
    voxels[5:9, 14:18, 5:8] = 3
    voxels[18:22, 14:18, 5:8] = 4

    def entry(category, type_, modifier=None, region=None, region_modifier=None):
        term = {"contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
                "category": [category.scheme, category.value, category.meaning], "type": [type_.scheme, type_.value, type_.meaning]}
        for key, code in (("typeModifier", modifier), ("anatomicRegion", region), ("anatomicRegionModifier", region_modifier)):
            if code is not None:
                term[key] = [code.scheme, code.value, code.meaning]
        if region is not None:
            term["anatomicContextName"] = "Anatomic codes - DICOM master list"
        return term

    mass = entry(SCT_MORPHOLOGICALLY_ABNORMAL, MASS, region=ADRENAL, region_modifier=RIGHT)
    segments = [
        {"id": "Segment_1", "labelValue": 1, "layer": 0, "name": "Left kidney", "color": [0.8, 0.4, 0.3],
         "terminology": entry(ANATOMY, KIDNEY, LEFT)},
        {"id": "Segment_2", "labelValue": 2, "layer": 0, "name": "Right kidney", "color": [0.8, 0.5, 0.3],
         "terminology": entry(ANATOMY, KIDNEY, RIGHT)},
        {"id": "Segment_3", "labelValue": 3, "layer": 0, "name": "Adrenal mass 1", "color": [0.2, 0.6, 0.9], "terminology": mass},
        {"id": "Segment_4", "labelValue": 4, "layer": 0, "name": "Adrenal mass 2", "color": [0.2, 0.6, 0.9], "terminology": mass},
    ]
    ijk_to_lps = LPS_TO_RAS @ scan.affine.numpy()
    slicerio.write_segmentation(str(path), {"voxels": voxels, "ijkToLPS": ijk_to_lps, "segments": segments,
                                            "containedRepresentationNames": ["Binary labelmap"]})
    return voxels


def _codes(labels):
    return [(c.name, c.kind, c.codes) for c in labels]


EXPECTED_CODES = [
    ("Left kidney", "stuff", {"category": ANATOMY, "type": KIDNEY, "type_modifier": LEFT}),
    ("Right kidney", "stuff", {"category": ANATOMY, "type": KIDNEY, "type_modifier": RIGHT}),
    ("Adrenal mass", "thing", {"category": SCT_MORPHOLOGICALLY_ABNORMAL, "type": MASS, "anatomic_region": ADRENAL,
                               "anatomic_region_modifier": RIGHT}),
]


def test_slicer_terminology_is_read_and_written_back(small_ct_dicom, tmp_path):
    scan, _, _ = small_ct_dicom
    voxels = _slicer_seg_nrrd(scan, tmp_path / "slicer.seg.nrrd")
    pair, labels = read_panoptic(tmp_path / "slicer.seg.nrrd")
    assert _codes(labels) == EXPECTED_CODES
    assert sorted(np.unique(pair[1].numpy()[voxels >= 3]).tolist()) == [1, 2]  # two mass instances
    ours = write_seg_nrrd(pair, labels, tmp_path / "ours.seg.nrrd")
    terminology = {s["name"]: s["terminology"] for s in slicerio.read_segmentation(str(ours), skip_voxels=True)["segments"]}
    assert terminology["Left kidney"]["typeModifier"] == ["SCT", "7771000", "Left"]
    assert terminology["Adrenal mass 2"]["anatomicRegion"] == ["SCT", "23451007", "Adrenal gland"]
    assert terminology["Adrenal mass 2"]["anatomicRegionModifier"] == ["SCT", "24028007", "Right"]
    again, labels_again = read_panoptic(ours)
    assert _codes(labels_again) == EXPECTED_CODES
    np.testing.assert_array_equal(again.numpy(), pair.numpy())


def test_codes_survive_dicom_seg(small_ct_dicom, tmp_path):
    scan, _, _ = small_ct_dicom
    _slicer_seg_nrrd(scan, tmp_path / "slicer.seg.nrrd")
    pair, labels = read_panoptic(tmp_path / "slicer.seg.nrrd")
    # LABELMAP keeps every frame, so the SEG's volume is the scan's whole grid (BINARY omits empty frames)
    path = write_dicom_seg(pair, labels, scan, tmp_path / "seg.dcm", segmentation_type="LABELMAP")
    ds = pydicom.dcmread(path)
    left = next(item for item in ds.SegmentSequence if item.SegmentLabel == "Left kidney")
    assert left.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
    mass = next(item for item in ds.SegmentSequence if item.SegmentLabel == "Adrenal mass 1")
    assert mass.AnatomicRegionSequence[0].CodeValue == "23451007"
    assert mass.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].CodeMeaning == "Right"
    back, labels_back = read_panoptic(path)
    assert _codes(labels_back) == EXPECTED_CODES
    np.testing.assert_array_equal(back.numpy(), pair.numpy())
    # with the label set given, left and right kidney (one type) are told apart by their modifier
    renamed = LabelSet(tuple(dataclasses.replace(c, name=f"class {c.id}") for c in labels))
    mapped, _ = read_panoptic(path, label_set=renamed)
    np.testing.assert_array_equal(mapped.numpy(), pair.numpy())


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy is not installed")
def test_dicom_seg_with_modifiers_is_valid(small_ct_dicom, tmp_path):
    scan, _, _ = small_ct_dicom
    _slicer_seg_nrrd(scan, tmp_path / "slicer.seg.nrrd")
    pair, labels = read_panoptic(tmp_path / "slicer.seg.nrrd")
    path = write_dicom_seg(pair, labels, scan, tmp_path / "seg.dcm")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    assert [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")] == []


def test_label_set_json_keeps_the_optional_codes(tmp_path):
    labels = LabelSet((LabelClass(1, "left kidney", "stuff", (200, 100, 80), ANATOMY, KIDNEY, LEFT),
                       LabelClass(2, "adrenal mass", "thing", category=SCT_MORPHOLOGICALLY_ABNORMAL, type=MASS,
                                  anatomic_region=ADRENAL, anatomic_region_modifier=RIGHT)))
    atomic_write_json(tmp_path / "labels.json", labels.to_dict())
    assert LabelSet.load(tmp_path / "labels.json") == labels


def test_from_names_codes_things_as_lesions_not_as_their_category():
    labels = LabelSet.from_names(stuff=["tissue"], things=["nodule"])
    assert (labels[1].category, labels[1].type) == (SCT_TISSUE, SCT_TISSUE)
    assert labels[2].category == SCT_MORPHOLOGICALLY_ABNORMAL and labels[2].category.value == "49755003"
    assert labels[2].type == SCT_LESION and labels[2].type.value == "52988006"


# -- 3. bounding box -----------------------------------------------------------------------

def test_bounding_box_is_a_slice_and_says_so(tmp_path):
    labels = LabelSet.from_names(things=["cell"])
    pair = np.zeros((2, 6, 5), np.int32)
    pair[:, 1:4, 2:3] = 1
    from monai.data import MetaTensor

    rows = instance_table(MetaTensor(pair, affine=np.eye(4)), labels)
    assert rows[0]["bbox_min_voxel"] == [1, 2] and rows[0]["bbox_stop_voxel"] == [4, 3]
    assert "bbox_max_voxel" not in rows[0]
    box = tuple(slice(a, b) for a, b in zip(rows[0]["bbox_min_voxel"], rows[0]["bbox_stop_voxel"]))
    assert pair[1][box].all() and pair[1][box].sum() == pair[1].sum()
    header = write_instance_table(rows, tmp_path / "t")["csv"].read_text().splitlines()[0].split(",")
    assert {"bbox_min_voxel_i", "bbox_min_voxel_j", "bbox_stop_voxel_i", "bbox_stop_voxel_j"} <= set(header)


# -- 4. TIFF in the image's own order ------------------------------------------------------

def test_tiff_maps_line_up_with_the_source_png(tmp_path):
    import tifffile
    from PIL import Image

    from medpanoptic.segment import PanopticResult

    assert "tiff" in FORMAT_NAMES
    phantom = nuclei_phantom(shape=(72, 104), n_nuclei=8, seed=2)  # not square: a transpose cannot hide
    image = phantom.image[0].numpy()
    pixels = np.round(255 * (image - image.min()) / np.ptp(image)).astype(np.uint8)
    Image.fromarray(pixels.T).save(tmp_path / "nuclei.png")  # the PNG's rows are our j axis
    truth_rows_cols = phantom.pair[1].numpy().T  # the mask as a microscopist holds it: rows x columns
    scan = read_scan(tmp_path / "nuclei.png")
    png = np.asarray(Image.open(tmp_path / "nuclei.png"))
    assert png.shape == (104, 72) and scan.shape[1:] == (72, 104)
    np.testing.assert_array_equal(scan[0].numpy().T, png)  # the documented transpose
    pair = phantom.pair.clone()
    pair.affine = scan.affine
    written = PanopticResult(pair, phantom.label_set, source=scan, case="nuclei").save(tmp_path / "out" / "nuclei", ["tiff"])
    instance = tifffile.imread(written["tiff_instance"])
    label = np.asarray(Image.open(written["tiff_label"]))
    assert instance.shape == png.shape and instance.dtype == np.uint16
    np.testing.assert_array_equal(instance, truth_rows_cols)
    np.testing.assert_array_equal(label, phantom.pair[0].numpy().T)


def test_tiff_instance_map_widens_past_16_bits(tmp_path):
    import tifffile

    from medpanoptic.io.panoptic import write_tiff_maps

    pair = np.zeros((2, 3, 2), np.int64)
    pair[0, 1, 1], pair[1, 1, 1] = 1, 70000
    paths = write_tiff_maps(pair, tmp_path / "big")
    instance = tifffile.imread(paths["instance"])
    assert instance.dtype == np.uint32 and instance[1, 1] == 70000 and instance.shape == (2, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_instance.tif", "big_label.tif"]
