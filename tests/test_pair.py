import numpy as np
import pytest
import torch

from medpanoptic.errors import PanopticError
from medpanoptic.labels import ct_lesion_labels
from medpanoptic.pair import (
    check_pair, decode_panoptic, encode_panoptic, instances_from_semantic, make_pair,
    relabel_sequential,
)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (20, 30))
    instance = np.where(label == 3, rng.integers(1, 999, (20, 30)), 0)
    pair = make_pair(label, instance)
    assert torch.equal(decode_panoptic(encode_panoptic(pair)), pair.as_tensor().long())
    assert int(encode_panoptic(pair)[label == 2][0]) == 2000


def test_encoding_refuses_to_wrap():
    """1,200 nuclei in one image do not fit the default divisor: refuse, never wrap."""
    label = np.full((40, 40), 2)
    instance = np.arange(1, 1601).reshape(40, 40)
    pair = make_pair(label, instance)
    with pytest.raises(PanopticError, match="does not fit divisor 1000"):
        encode_panoptic(pair)
    ids = encode_panoptic(pair, divisor=10000)
    assert len(torch.unique(ids)) == 1600


@pytest.mark.parametrize(
    "label, instance, message",
    [
        ([[0, 1]], [[2, 0]], "on background"),
        ([[1, 1]], [[0, 1]], "stuff classes must carry instance 0"),
        ([[3, 3]], [[0, 1]], "thing voxels with instance 0"),
        ([[9, 0]], [[0, 0]], "not in the label set"),
        ([[3, 3]], [[-1, 1]], "negative"),
    ],
)
def test_check_pair_refuses(label, instance, message):
    with pytest.raises(PanopticError, match=message):
        check_pair(make_pair(label, instance), ct_lesion_labels())


def test_instance_spanning_two_classes_is_refused():
    from medpanoptic.labels import LabelSet

    labels = LabelSet.from_names(things=["a", "b"])
    with pytest.raises(PanopticError, match="span more than one class"):
        check_pair(make_pair([[1, 2]], [[5, 5]]), labels)


def test_instance_table_against_direct_computation(oblique_ct):
    from medpanoptic.io.table import instance_table

    summary = instance_table(oblique_ct.pair, oblique_ct.label_set, affine=oblique_ct.pair.affine.numpy())
    arr = oblique_ct.pair.numpy()
    affine = oblique_ct.pair.affine.numpy()
    voxel_mm3 = abs(np.linalg.det(affine[:3, :3]))
    assert [s["instance"] for s in summary] == list(range(1, arr[1].max() + 1))
    for s in summary:
        ijk = np.argwhere(arr[1] == s["instance"])
        assert s["voxels"] == len(ijk)
        assert s["class"] == "lesion"
        assert s["volume_mm3"] == pytest.approx(len(ijk) * voxel_mm3)
        ras = affine[:3, :3] @ ijk.mean(0) + affine[:3, 3]
        np.testing.assert_allclose(s["centroid_ras_mm"], ras, atol=1e-6)
        np.testing.assert_allclose(s["centroid_lps_mm"], ras * [-1, -1, 1], atol=1e-6)


def test_components_from_semantic():
    label = np.zeros((10, 10), int)
    label[1:3, 1:3] = 3
    label[3, 3] = 3  # touches the first block only at a corner
    label[6:8, 6:8] = 3
    label[0:2, 7:9] = 2  # a stuff class never becomes an instance
    assert instances_from_semantic(label, [3]).max() == 2
    assert instances_from_semantic(label, [3], connectivity=4).max() == 3
    assert instances_from_semantic(label, [3])[label == 2].max() == 0


def test_relabel_sequential():
    out = relabel_sequential(np.array([[0, 7, 7], [3, 0, 9]]))
    assert out.tolist() == [[0, 1, 1], [2, 0, 3]]


PAIR_RULES = [
    (np.zeros((3, 4, 4), np.int32), "expected shape \\(2, \\*spatial\\) with 2 or 3 spatial axes, got \\(3, 4, 4\\)"),
    (np.zeros((2, 4), np.int32), "expected shape \\(2, \\*spatial\\)"),
    (np.zeros((2, 3, 3), np.float32), "expected an integer dtype, got torch.float32"),
    (np.array([[[3, 3]], [[0, 1]]]), "thing voxels with instance 0"),
    (np.array([[[0, 1]], [[2, 0]]]), "instance ids on background \\(label 0\\) voxels"),
    (np.array([[[1, 1]], [[0, 1]]]), "stuff classes must carry instance 0"),
    (np.array([[[9, 0]], [[0, 0]]]), "label ids \\[9\\] are not in the label set \\[1, 2, 3\\]"),
    (np.array([[[3, 3]], [[-1, 1]]]), "negative label or instance ids"),
]


@pytest.mark.parametrize("array, message", PAIR_RULES)
@pytest.mark.parametrize("backend", ["compiled", "torch"])
def test_both_check_backends_refuse_every_rule_alike(array, message, backend):
    """The compiled pass and the torch checks (the GPU path, run here on the CPU) refuse the same pairs,
    each with the same one-line message naming the source."""
    with pytest.raises(PanopticError, match=f"^case_7: {message}"):
        check_pair(torch.as_tensor(array), ct_lesion_labels(), source="case_7", backend=backend)


@pytest.mark.parametrize("backend", ["compiled", "torch"])
def test_both_check_backends_refuse_an_id_across_classes_and_pass_a_good_pair(backend, oblique_ct):
    from medpanoptic.labels import LabelSet

    labels = LabelSet.from_names(things=["a", "b"])
    with pytest.raises(PanopticError, match=r"^x: instance ids \[5\] span more than one class"):
        check_pair(make_pair([[1, 2]], [[5, 5]]), labels, source="x", backend=backend)
    stats = check_pair(oblique_ct.pair, oblique_ct.label_set, backend=backend)
    assert (stats is None) == (backend == "torch")
    if stats is not None:
        assert stats.ids.tolist() == sorted(set(oblique_ct.pair[1].unique().tolist()) - {0})


def test_check_backend_is_checked():
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        check_pair(make_pair([[0]], [[0]]), backend="gpu")


@pytest.mark.parametrize("values", [torch.tensor([[[2.0, 0.9999]], [[1.0000001, 0.0]]]),
                                    torch.tensor([[[2, 1]], [[1, 0]]], dtype=torch.int64)])
def test_integer_pair_rounds_back_to_int32(values):
    from monai.data import MetaTensor

    from medpanoptic.pair import integer_pair

    out = integer_pair(MetaTensor(values))
    assert type(out) is torch.Tensor and out.dtype == torch.int32
    assert out.tolist() == [[[2, 1]], [[1, 0]]]
