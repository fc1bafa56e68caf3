"""The slide writers read back by the tools people open them with: shapely, ome-zarr, pandas."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from medpanoptic.errors import InputError
from medpanoptic.wsi.infer import segment_slide
from medpanoptic.wsi.oracle import TruthHeads
from medpanoptic.wsi.slide import ArraySlide
from medpanoptic.wsi.writers import check_disk
from tests.wsi_cases import BORDER_CENTRES_2D, LABELS, PIXEL_2D, balls, ideal_grouping, truth_slide

FORMATS = ("zarr", "geojson", "centroids", "table", "parquet")


@pytest.fixture(scope="module")
def slide_outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("slide")
    truth = balls((300, 300), BORDER_CENTRES_2D, 0.005, PIXEL_2D)
    run = segment_slide(truth_slide(truth, PIXEL_2D), None, out, FORMATS, stem="s", core=128, halo=32, tissue=False,
                        predictor=TruthHeads(LABELS, PIXEL_2D), grouping=ideal_grouping(PIXEL_2D), chunk=64,
                        gzip_geojson=True)
    return run, truth


def test_geojson_is_qupath_detections_field_by_field(slide_outputs):
    from shapely.geometry import shape

    run, truth = slide_outputs
    assert run.written["geojson"].name == "s.geojson.gz"
    with gzip.open(run.written["geojson"], "rt", encoding="utf-8") as f:
        collection = json.load(f)
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == len(BORDER_CENTRES_2D)
    assert len({f["id"] for f in features}) == len(features)
    for feature in features:
        assert set(feature) == {"type", "id", "geometry", "properties"} and feature["type"] == "Feature"
        assert uuid.UUID(feature["id"]).version == 5
        polygon = shape(feature["geometry"])
        assert feature["geometry"]["type"] == "Polygon" and polygon.is_valid
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]  # closed, as GeoJSON wants
        props = feature["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"] == {"name": "nucleus", "color": [60, 60, 200]}
        assert set(props["measurements"]) == {"Area µm^2", "Score"}
        # x is the column, y the row, in level-0 pixels: the truth has this instance under the polygon's centre
        x, y = polygon.representative_point().coords[0]
        assert truth[1][int(y), int(x)] > 0
        pixels = int((truth[1] == truth[1][int(y), int(x)]).sum())
        assert props["measurements"]["Area µm^2"] == pytest.approx(pixels * 0.25, rel=1e-6)
        assert polygon.area == pixels  # the ring runs on the pixel corners around the instance


def test_centroid_features_are_points_inside_their_polygons(slide_outputs):
    from shapely.geometry import shape

    run, _ = slide_outputs
    points = json.loads(run.written["centroids"].read_text(encoding="utf-8"))["features"]
    with gzip.open(run.written["geojson"], "rt", encoding="utf-8") as f:
        polygons = {f["id"]: shape(f["geometry"]) for f in json.load(f)["features"]}
    assert len(points) == len(polygons)
    for point in points:
        assert point["geometry"]["type"] == "Point"
        assert polygons[point["id"]].contains(shape(point["geometry"]))


def test_ome_zarr_read_by_ome_zarr_with_the_pixel_size_and_a_pyramid(slide_outputs):
    run, truth = slide_outputs
    node = _label_node(run.written["zarr"] / "labels" / "instance")
    levels = node.data
    assert [tuple(level.shape) for level in levels] == [(300, 300), (150, 150), (75, 75), (38, 38)]
    datasets = node.metadata["coordinateTransformations"]
    assert datasets[0][0] == {"type": "scale", "scale": [0.5, 0.5]}
    assert datasets[1][0] == {"type": "scale", "scale": [1.0, 1.0]}
    assert [a["unit"] for a in node.metadata["axes"]] == ["micrometer", "micrometer"]
    instance = np.asarray(levels[0])
    assert np.array_equal(np.asarray(levels[1]), instance[::2, ::2])
    assert len(np.unique(instance[instance > 0])) == len(BORDER_CENTRES_2D)
    semantic = _label_node(run.written["zarr"] / "labels" / "semantic")
    colours = {c["label-value"]: c["rgba"] for c in semantic.zarr.root_attrs["image-label"]["colors"]}
    assert colours == {1: [230, 159, 200, 255], 2: [60, 60, 200, 255]}
    attrs = json.loads((run.written["zarr"] / "labels" / "instance" / ".zattrs").read_text())
    assert attrs["medpanoptic"]["panoptic_divisor"] > attrs["medpanoptic"]["max_instance_id"]


def _label_node(path):
    """The node of a label image as ome-zarr reads it (the reader also yields the image it labels)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return next(n for n in Reader(parse_url(str(path)))() if n.data)


def test_parquet_read_by_pandas_equals_the_csv(slide_outputs):
    import pandas as pd

    run, _ = slide_outputs
    table = pd.read_parquet(run.written["parquet"])
    csv = pd.read_csv(run.written["table"])
    assert list(table.columns) == list(csv.columns)
    assert list(table.columns[:6]) == ["instance", "label", "class", "voxels", "volume_mm3", "area_um2"]
    pd.testing.assert_frame_equal(table, csv, check_dtype=False)
    assert table["instance"].is_unique and (table["class"] == "nucleus").all()
    assert np.allclose(table["area_um2"], table["voxels"] * 0.25)


def test_registry_writes_a_result_as_geojson_zarr_and_parquet(nuclei, tmp_path):
    from shapely.geometry import shape

    from medpanoptic.segment import PanopticResult

    result = PanopticResult(nuclei.pair, nuclei.label_set, {}, None, "n")
    written = result.save(tmp_path / "n", ["geojson", "centroids", "zarr", "parquet"])
    features = json.loads(written["geojson"].read_text(encoding="utf-8"))["features"]
    assert len(features) == nuclei.n_instances
    assert all(shape(f["geometry"]).is_valid for f in features)
    assert written["zarr"].name == "n.ome.zarr" and written["parquet"].name == "n_instances.parquet"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written.values())


def test_a_3d_volume_is_refused_as_geojson(tmp_path):
    from tests.wsi_cases import VOXEL_3D

    slide = ArraySlide(np.zeros((8, 16, 16, 2), np.float32), VOXEL_3D)
    with pytest.raises(InputError, match="GeoJSON holds 2D contours"):
        segment_slide(slide, None, tmp_path, ("geojson",), predictor=TruthHeads(LABELS, VOXEL_3D),
                      grouping=ideal_grouping(VOXEL_3D), tissue=False)
    assert not any(tmp_path.iterdir())


def test_outputs_larger_than_the_free_disk_are_refused_before_anything_is_written(tmp_path):
    huge = ArraySlide(np.broadcast_to(np.zeros((1, 1, 2), np.float32), (300_000, 300_000, 2)), PIXEL_2D)
    with pytest.raises(InputError, match=r"the outputs need about [\d.]+ GB, the disk has [\d.]+ GB free"):
        segment_slide(huge, None, tmp_path / "out", ("zarr", "geojson"), predictor=TruthHeads(LABELS, PIXEL_2D),
                      grouping=ideal_grouping(PIXEL_2D), tissue=False, core=2048)
    assert not (tmp_path / "out").exists()
    check_disk(tmp_path, 1)  # a small output passes


PEAK_RSS = """
import resource, sys, numpy as np, torch
from medpanoptic.wsi.infer import segment_slide, Grouping
from medpanoptic.wsi.slide import ArraySlide
from tests.wsi_cases import LABELS, PIXEL_2D, ideal_grouping

class Background:
    device = torch.device("cpu")
    def prepare(self, pixels):
        return torch.from_numpy(pixels)
    def forward(self, batch):
        heads = torch.zeros((batch.shape[0], 6) + tuple(batch.shape[2:]))
        heads[:, 1] = 5.0  # tissue everywhere, no centres
        return heads

n = int(sys.argv[1])
slide = ArraySlide(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (n, n, 3)), PIXEL_2D)
segment_slide(slide, None, sys.argv[2], ("zarr", "table"), predictor=Background(), grouping=ideal_grouping(PIXEL_2D),
              tissue=False, core=512, halo=32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_peak_memory_stays_flat_from_a_small_to_a_9x_larger_slide(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    peaks = []
    for n in (1024, 3072):
        done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(n), str(tmp_path / str(n))], capture_output=True,
                              text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)), check=True)
        peaks.append(int(done.stdout.split()[-1]))
    assert peaks[1] <= 1.15 * peaks[0], peaks


# -- the command ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_slide(tmp_path_factory):
    from medpanoptic.wsi.phantom import write_wsi_phantom

    return write_wsi_phantom(tmp_path_factory.mktemp("phantom"), 1536, seed=2, compression="deflate")


def _cli(*argv):
    from medpanoptic.cli import main

    return main([str(a) for a in argv])


def test_segment_takes_the_tiled_path_for_a_pyramidal_slide(phantom_slide, tmp_path, capsys):
    import csv as csv_module

    from shapely.geometry import Point, shape

    out = tmp_path / "out"
    code = _cli("segment", phantom_slide.image, "--bundle", "nuclei_panoptic_2d", "--out", out, "--device", "cpu",
                "--to", "geojson,zarr,table", "--roi", "400,500,600,600")  # ~50 nuclei: a count that means something
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["phantom.geojson", "phantom.ome.zarr", "phantom_instances.csv"]
    assert "tiles" in capsys.readouterr().err  # the progress bar
    polygons = [shape(f["geometry"]) for f in json.loads((out / "phantom.geojson").read_text(encoding="utf-8"))["features"]]
    with open(phantom_slide.nuclei, newline="") as f:
        truth = [(float(r["center_col"]), float(r["center_row"])) for r in csv_module.DictReader(f)]
    inner = [Point(x, y) for x, y in truth if 420 <= x < 980 and 520 <= y < 1080]
    assert inner and all(380 <= p.centroid.x < 1020 and 480 <= p.centroid.y < 1120 for p in polygons)  # owned: centre in the ROI
    found = sum(any(poly.contains(p) for poly in polygons) for p in inner)
    assert found >= 0.8 * len(inner)


def test_segment_refuses_bad_slides_in_one_line_and_leaves_nothing(phantom_slide, tmp_path, capsys):
    truncated = tmp_path / "cut.ome.tif"
    data = phantom_slide.image.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    cases = [
        ((truncated,), "cut.ome.tif"),
        ((phantom_slide.image, "--roi", "1500,0,100,100"), "--roi 1500,0,100,100 lies outside the slide (1536 x 1536 pixels"),
        ((phantom_slide.image, "--to", "nifti"), "a whole slide is written as zarr, geojson, centroids, table, parquet, not nifti"),
        ((phantom_slide.image, "--to", "dicom-seg"), "not dicom-seg: highdicom's Segmentation (tile_pixel_array=True) takes"),
        ((phantom_slide.image, "--tta", "--folds", "all"), "--tta, --folds: the tiled path runs the bundle's one network"),
    ]
    for argv, message in cases:
        out = tmp_path / "out"
        code = _cli("segment", *argv, "--bundle", "nuclei_panoptic_2d", "--out", out, "--device", "cpu")
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("medpanoptic: error: ") and message in err[0], err
        assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith(".")), list(out.iterdir())


def test_the_tiled_path_shares_its_malloc_arenas_on_glibc_and_keeps_a_users_setting(monkeypatch):
    """Without them, resident memory grew +47% from an 8k² to a 32k² slide (`wsi._malloc`)."""
    import platform

    from medpanoptic.wsi import _malloc

    monkeypatch.setattr(_malloc, "_done", False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert _malloc.share_malloc_arenas() is False and _malloc._done is False  # the user's choice stands
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert _malloc.share_malloc_arenas() is (platform.libc_ver()[0] == "glibc")
    assert _malloc.share_malloc_arenas() is _malloc._done  # once
    trimmer = _malloc.HeapTrimmer(every=3)
    for _ in range(7):
        trimmer.tick()
    assert trimmer.trims == (2 if platform.libc_ver()[0] == "glibc" else 0)
