"""The whole-slide and volume phantoms: pyramid, metadata, truth that matches the pixels, nuclei on tile borders."""

from __future__ import annotations

import csv
import tracemalloc

import numpy as np
import pytest
import zarr

from medpanoptic.wsi.phantom import (
    HE_COLOURS,
    TILE,
    _halve,
    write_volume_phantom,
    write_wsi_phantom,
)
from medpanoptic.wsi.readers import open_slide
from tests.wsi_cases import LABELS, PIXEL_2D, ideal_grouping, instance_sets

SIZE = 2304  # 4.5 tiles: partial tiles at the right and bottom edges, three pyramid levels


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_wsi_phantom(tmp_path_factory.mktemp("wsi"), SIZE, seed=3, compression="deflate")


@pytest.fixture(scope="module")
def truth(phantom):
    root = zarr.open_group(phantom.truth, mode="r")
    return np.asarray(root["label/0"][:]), np.asarray(root["instance/0"][:])


def _nuclei_rows(phantom):
    with open(phantom.nuclei, newline="") as f:
        return list(csv.DictReader(f))


def test_pyramid_levels_tiles_and_pixel_size(phantom):
    import tifffile

    with tifffile.TiffFile(phantom.image) as tif:
        series = tif.series[0]
        assert tif.is_ome and series.axes == "YXS"
        assert [lv.shape for lv in series.levels] == [(2304, 2304, 3), (1152, 1152, 3), (576, 576, 3)]
        page = series.levels[0].pages[0]
        assert (page.tilelength, page.tilewidth) == (TILE, TILE)
        assert page.compression == tifffile.COMPRESSION.DEFLATE
    with open_slide(phantom.image) as slide:
        assert slide.pixel_size_mm == (0.0005, 0.0005)
        level0 = slide.read((slice(0, SIZE), slice(0, SIZE)), 0)
        level1 = slide.read((slice(0, 1152), slice(0, 1152)), 1)
        level2 = slide.read((slice(0, 576), slice(0, 576)), 2)
    np.testing.assert_array_equal(level1, _halve(level0))
    np.testing.assert_array_equal(level2, _halve(level1))


def test_truth_is_ngff_with_the_pixel_size(phantom):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    for name in ("label", "instance"):
        node = list(Reader(parse_url(str(phantom.truth / name)))())[0]
        assert node.data[0].shape == (SIZE, SIZE)
        axes = node.metadata["axes"]
        assert [(a["name"], a["type"], a["unit"]) for a in axes] == [("y", "space", "micrometer"), ("x", "space", "micrometer")]
        assert node.metadata["coordinateTransformations"][0] == [{"type": "scale", "scale": [0.5, 0.5]}]
    with open_slide(phantom.truth / "instance") as instance:
        assert instance.pixel_size_mm == (0.0005, 0.0005) and instance.dtype == np.int32


def test_truth_matches_the_image(phantom, truth):
    label, instance = truth
    ids = np.unique(instance)
    assert ids[0] == 0 and len(ids) - 1 == phantom.n_nuclei == int(instance.max())
    assert np.all(label[instance > 0] == 2) and np.all(instance[label == 2] > 0)
    with open_slide(phantom.image) as slide:
        image = slide.read((slice(0, SIZE), slice(0, SIZE))).astype(float)
    means = {k: image[label == k].mean(0) for k in (0, 1, 2)}
    for k, colour in HE_COLOURS.items():
        tolerance = 25 if k == 2 else 8  # nuclei are shaded by 0.8-1.0 and blurred at their rims
        np.testing.assert_allclose(means[k], colour, atol=tolerance)
    assert 0.3 < (label > 0).mean() < 0.9  # tissue with blank glass around it
    for row in _nuclei_rows(phantom):
        r, c = round(float(row["center_row"])), round(float(row["center_col"]))
        assert instance[r, c] == int(row["id"])


def test_nuclei_on_tile_borders_and_corners_are_cut_by_the_tiles(phantom, truth):
    _, instance = truth
    border = [row for row in _nuclei_rows(phantom) if row["on_border"] == "1"]
    assert len(border) == phantom.n_on_border > 0
    corners = 0
    for row in border:
        r, c = float(row["center_row"]), float(row["center_col"])
        assert r % 256 == 0 and c % 256 == 0 and (r % TILE == 0 or c % TILE == 0)
        rows, cols = np.nonzero(instance == int(row["id"]))
        if r % TILE == 0:
            assert rows.min() < r <= rows.max()  # on both sides of the horizontal tile border
        if c % TILE == 0:
            assert cols.min() < c <= cols.max()
        corners += r % TILE == 0 and c % TILE == 0
    assert corners > 0


def test_its_truth_through_the_tiled_pipeline_gives_back_every_nucleus(phantom, truth, tmp_path):
    """The truth read by region as a slide (`open_truth`), its targets as heads: tiles of 512 px cut the
    border nuclei in two and in four, and the stitched slide still holds exactly the truth's nuclei."""
    from medpanoptic.wsi.infer import segment_slide
    from medpanoptic.wsi.oracle import TruthHeads, open_truth

    with open_truth(phantom.truth) as slide:
        assert slide.shape == (SIZE, SIZE) and slide.channels == 2 and slide.pixel_size_mm == PIXEL_2D
        box = (slice(500, 530), slice(1000, 1100))
        np.testing.assert_array_equal(slide.read(box)[..., 1], truth[1][box])
        run = segment_slide(slide, None, tmp_path, ("zarr", "table"), stem="t", core=512, halo=48, tissue=False,
                            predictor=TruthHeads(LABELS, PIXEL_2D), grouping=ideal_grouping(PIXEL_2D))
    assert run.instances == phantom.n_nuclei
    root = zarr.open_group(tmp_path / "t.ome.zarr", mode="r")
    np.testing.assert_array_equal(np.asarray(root["labels/semantic/0"][:]), truth[0])
    found = np.asarray(root["labels/instance/0"][:])
    assert instance_sets(found) == instance_sets(truth[1])


def test_same_seed_same_slide_other_seed_other_slide(tmp_path):
    a = write_wsi_phantom(tmp_path / "a", 600, seed=1, compression="deflate")
    b = write_wsi_phantom(tmp_path / "b", 600, seed=1, compression="deflate")
    c = write_wsi_phantom(tmp_path / "c", 600, seed=2, compression="deflate")
    box = (slice(0, 600), slice(0, 600))
    with open_slide(a.image) as sa, open_slide(b.image) as sb, open_slide(c.image) as sc:
        np.testing.assert_array_equal(sa.read(box), sb.read(box))
        assert not np.array_equal(sa.read(box), sc.read(box))
    assert a.nuclei.read_text() == b.nuclei.read_text() != c.nuclei.read_text()
    assert sorted(p.name for p in tmp_path.joinpath("a").iterdir()) == ["nuclei.csv", "phantom.ome.tif", "truth.ome.zarr"]


def test_memory_does_not_grow_with_the_slide(tmp_path):
    """Tiles, pyramid and truth are streamed: four times the pixels, about the same peak."""
    peaks = []
    for size in (1024, 2048):
        tracemalloc.start()
        write_wsi_phantom(tmp_path / str(size), size, seed=0, compression="deflate")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], peaks  # a whole level in memory would make it 4 times


def test_cli_writes_the_wsi_phantom(tmp_path, capsys):
    from medpanoptic.cli import main

    assert main(["phantom", "--wsi", "--size", "700", "--seed", "4", "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote a 700 x 700 slide at 0.5 µm/px to ") and "centred on tile borders" in out
    with open_slide(tmp_path / "p" / "phantom.ome.tif") as slide:
        assert slide.shape == (700, 700) and slide.pixel_size_mm == (0.0005, 0.0005)
    assert main(["phantom", "--wsi", "--size", "10", "--out", str(tmp_path / "q")]) == 2
    assert "medpanoptic: error: --size must be at least 64 pixels, got 10" in capsys.readouterr().err


def test_volume_phantom_nuclei_on_chunk_faces(tmp_path):
    path = tmp_path / "volume.ome.zarr"
    nuclei = write_volume_phantom(path, shape=(128, 192, 192), chunks=(64, 128, 128), seed=2)
    with open_slide(path) as slide:
        assert slide.shape == (128, 192, 192) and slide.pixel_size_mm == (0.001, 0.001, 0.001)
        image = slide.read((slice(0, 128), slice(0, 192), slice(0, 192)))[..., 0]
    root = zarr.open_group(path, mode="r")
    assert root["0"].chunks == (64, 128, 128)
    instance = np.asarray(root["labels/instance/0"][:])
    label = np.asarray(root["labels/label/0"][:])
    assert int(instance.max()) == len(nuclei) == len(np.unique(instance)) - 1
    assert image[instance > 0].mean() > 100
    assert 50 > image[label == 1].mean() > image[label == 0].mean()
    on_face = np.flatnonzero(nuclei.on_border)
    assert len(on_face) > 0 and (~nuclei.on_border).sum() > 0  # on chunk faces and inside chunks
    for i in on_face:
        center = nuclei.centers[i]
        voxels = np.argwhere(instance == i + 1)
        for axis, chunk in enumerate((64, 128, 128)):
            if center[axis] % chunk == 0:
                assert voxels[:, axis].min() < center[axis] <= voxels[:, axis].max()


def test_the_shipped_nuclei_bundle_segments_the_phantom(phantom, truth):
    """The slide looks like what the bundle was trained on: its real weights find the nuclei.

    On tissue, that is: the bundle never saw a field of bare glass in training and invents
    tissue and nuclei there (a crop that is 60 % glass scores PQ_things 0.45), which is what
    tissue detection is for.
    """
    from medpanoptic.io.scan import make_meta_tensor
    from medpanoptic.labels import nuclei_labels
    from medpanoptic.metrics.quality import panoptic_quality
    from medpanoptic.segment import Segmenter
    from medpanoptic.synthetic import grid_affine

    box = (slice(1500, 2012), slice(300, 812))
    with open_slide(phantom.image) as slide:
        rgb = slide.read(box).astype(np.float32)
    label, instance = (t[box].astype(np.int32) for t in truth)
    assert (label == 0).mean() < 0.1  # a crop of tissue
    instance = np.unique(instance, return_inverse=True)[1].reshape(instance.shape).astype(np.int32)
    affine = grid_affine((512, 512), (0.0005, 0.0005))  # medpanoptic's 2D grids are (column, row)
    image = make_meta_tensor(np.ascontiguousarray(rgb.transpose(2, 1, 0)), affine, {"source_format": "phantom"})
    expected = make_meta_tensor(np.stack([label.T, instance.T]), affine, {})
    result = Segmenter("nuclei_panoptic_2d")(image)
    quality = panoptic_quality(result.pair, expected, nuclei_labels()).summary()
    assert quality["pq_things"] > 0.8 and quality["pq_stuff"] > 0.8, quality


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(ValueError, match=r"COMPRESSION: invalid argument .NOTACODEC."):  # tifffile, mid-write
        write_wsi_phantom(tmp_path, 600, compression="notacodec")
    assert list(tmp_path.iterdir()) == []


def test_worker_processes_write_the_same_slide(tmp_path):
    one = write_wsi_phantom(tmp_path / "one", 1100, seed=6, compression="deflate")
    two = write_wsi_phantom(tmp_path / "two", 1100, seed=6, compression="deflate", workers=2)
    box = (slice(0, 1100), slice(0, 1100))
    with open_slide(one.image) as a, open_slide(two.image) as b:
        np.testing.assert_array_equal(a.read(box), b.read(box))
        np.testing.assert_array_equal(a.read((slice(0, 550), slice(0, 550)), 1), b.read((slice(0, 550), slice(0, 550)), 1))
    for name in ("label/0", "instance/0"):
        np.testing.assert_array_equal(zarr.open_group(one.truth, mode="r")[name][:], zarr.open_group(two.truth, mode="r")[name][:])
