"""Tiled inference and stitching: the stitched slide equals untiled inference of the same image."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from medpanoptic.errors import InputError, PanopticError
from medpanoptic.wsi.infer import segment_slide
from medpanoptic.wsi.oracle import TruthHeads
from medpanoptic.wsi.stitch import id_dtype, merge_tile, own_instances, panoptic_divisor
from medpanoptic.wsi.tiles import tile_grid
from tests.wsi_cases import (
    BORDER_CENTRES_2D, LABELS, PIXEL_2D, VOXEL_3D, balls, ideal_grouping, instance_sets, matched_agreement,
    truth_slide,
)


def _stitched(out, stem="s"):
    root = zarr.open_group(str(out / f"{stem}.ome.zarr"), mode="r")
    return np.asarray(root["labels/semantic/0"]), np.asarray(root["labels/instance/0"])


def _untiled(predictor, grouping, pixels_channel_first):
    heads = predictor.forward(predictor.prepare(pixels_channel_first)[None])[0]
    return grouping(heads)[0]


def test_ideal_heads_2d_nuclei_on_tile_borders_and_corners(tmp_path):
    truth = balls((300, 300), BORDER_CENTRES_2D, 0.005, PIXEL_2D)
    slide, predictor, grouping = truth_slide(truth, PIXEL_2D), TruthHeads(LABELS, PIXEL_2D), ideal_grouping(PIXEL_2D)
    run = segment_slide(slide, None, tmp_path, ("zarr",), stem="s", core=128, halo=32, tissue=False,
                        predictor=predictor, grouping=grouping)
    assert len(run.grid.tiles) == 9 and run.resumed_tiles == 0
    label, instance = _stitched(tmp_path)
    untiled = _untiled(predictor, grouping, truth.astype(np.float32))
    assert instance_sets(instance) == instance_sets(untiled[1]) == instance_sets(truth[1])
    assert np.array_equal(label, untiled[0])
    ids = np.unique(instance[instance > 0])
    assert len(ids) == len(BORDER_CENTRES_2D)  # none split, none duplicated
    assert instance.dtype == np.int32


def test_ideal_heads_3d_balls_on_chunk_faces(tmp_path):
    shape = (40, 64, 64)
    centres = [(20, 32, 32), (20, 10, 32), (10, 32, 10), (20, 32, 50), (30, 50, 50), (8, 8, 8)]  # faces at z 20, y/x 32
    truth = balls(shape, centres, 0.006, VOXEL_3D)
    slide, predictor, grouping = truth_slide(truth, VOXEL_3D), TruthHeads(LABELS, VOXEL_3D, 0.003), ideal_grouping(VOXEL_3D, 0.004)
    run = segment_slide(slide, None, tmp_path, ("zarr", "table"), stem="v", core=(20, 32, 32), halo=(8, 12, 12),
                        tissue=False, predictor=predictor, grouping=grouping)
    assert len(run.grid.tiles) == 8
    label, instance = _stitched(tmp_path, "v")
    untiled = _untiled(predictor, grouping, truth.astype(np.float32))
    assert instance_sets(instance) == instance_sets(untiled[1]) == instance_sets(truth[1])
    assert np.array_equal(label, untiled[0])
    rows = (tmp_path / "v_instances.csv").read_text().splitlines()
    assert len(rows) == 1 + len(centres) and rows[0].split(",")[5] == "volume_um3"


def test_real_bundle_stitched_equals_untiled(tmp_path):
    from medpanoptic.segment import Segmenter
    from medpanoptic.wsi.infer import BundlePredictor, bundle_grouping

    rng = np.random.default_rng(3)
    truth = balls((320, 320), BORDER_CENTRES_2D + [(96, 200), (220, 40)], 0.0045, PIXEL_2D)
    colours = np.array([[242, 240, 244], [228, 150, 190], [95, 60, 160]], np.float32)
    image = colours[truth[0]] + rng.normal(0, 5, (320, 320, 3)).astype(np.float32)
    image = np.clip(image, 0, 255)
    seg = Segmenter("nuclei_panoptic_2d", "cpu")
    predictor, grouping = BundlePredictor(seg), bundle_grouping(seg)
    from medpanoptic.wsi.slide import ArraySlide

    run = segment_slide(ArraySlide(image, PIXEL_2D), seg, tmp_path, ("zarr",), stem="r", core=128, halo=64,
                        tissue=False)
    assert len(run.grid.tiles) == 9
    label, instance = _stitched(tmp_path, "r")
    untiled = _untiled(predictor, grouping, np.moveaxis(image, -1, 0))
    found, expected = instance_sets(instance), instance_sets(untiled[1])
    assert found == expected and len(found) == len(BORDER_CENTRES_2D) + 2  # the same instances, none split or lost
    assert matched_agreement(untiled[1], instance) >= 0.999
    assert (label == untiled[0]).mean() >= 0.999


def test_merge_order_does_not_matter_and_a_repeated_tile_changes_nothing():
    truth = balls((300, 300), BORDER_CENTRES_2D, 0.006, PIXEL_2D)
    predictor, grouping = TruthHeads(LABELS, PIXEL_2D), ideal_grouping(PIXEL_2D)
    grid = tile_grid(truth_slide(truth, PIXEL_2D), PIXEL_2D, 128, 32)
    parts = []
    for tile in grid.tiles:
        box = (slice(None),) + tile.box
        pair, scores = grouping(predictor.prepare(truth[box].astype(np.float32)))
        parts.append(own_instances(tile, pair, scores, grouping.stride))
    canvases = []
    for order in (parts, parts[::-1], parts + parts[:3]):
        label, instance = np.zeros((300, 300), np.uint8), np.zeros((300, 300), np.int32)
        for part in order:
            merge_tile(part, label, instance, LABELS)
        canvases.append((label, instance))
    for label, instance in canvases[1:]:
        assert np.array_equal(label, canvases[0][0]) and np.array_equal(instance, canvases[0][1])
    owners = [gid for part in parts for gid in part.owned]
    assert len(owners) == len(set(owners)) == len(BORDER_CENTRES_2D)


def test_ids_are_int64_where_int32_would_overflow_and_the_divisor_grows():
    assert id_dtype(1000, 1024) == np.int32
    assert id_dtype(3_000_000, 1024) == np.int64  # 3e9 > 2**31
    assert panoptic_divisor(999) == 1000
    assert panoptic_divisor(1000) == 10_000
    assert panoptic_divisor(3_000_000_123) == 10_000_000_000
    with pytest.raises(PanopticError, match="leave no room for a label"):
        panoptic_divisor(2**62)


def test_a_tile_with_more_instances_than_its_stride_is_refused():
    truth = balls((64, 64), [(10, 10), (30, 30), (50, 50)], 0.002, PIXEL_2D)
    grid = tile_grid(truth_slide(truth, PIXEL_2D), PIXEL_2D, 64, 0)
    with pytest.raises(PanopticError, match="tile 0: 3 instances, more than the 2 a tile may hold"):
        own_instances(grid.tiles[0], truth, {}, stride=3)


def test_roi_outside_the_slide_is_refused(tmp_path):
    slide = truth_slide(balls((100, 120), [(50, 50)], 0.004, PIXEL_2D), PIXEL_2D)
    with pytest.raises(InputError, match=r"--roi 100,0,40,50 lies outside the slide \(120 x 100 pixels"):
        tile_grid(slide, PIXEL_2D, 64, 16, roi=(100, 0, 40, 50))
    with pytest.raises(InputError, match="--roi needs 4 numbers"):
        tile_grid(slide, PIXEL_2D, 64, 16, roi=(1, 2, 3))
    assert not list(tmp_path.iterdir())


def test_roi_segments_only_the_region_and_keeps_level0_coordinates(tmp_path):
    truth = balls((300, 300), BORDER_CENTRES_2D, 0.005, PIXEL_2D)
    slide, predictor, grouping = truth_slide(truth, PIXEL_2D), TruthHeads(LABELS, PIXEL_2D), ideal_grouping(PIXEL_2D)
    run = segment_slide(slide, None, tmp_path, ("zarr", "table"), stem="roi", roi=(100, 100, 120, 80), core=64,
                        halo=32, tissue=False, predictor=predictor, grouping=grouping)
    label, instance = _stitched(tmp_path, "roi")
    assert instance.shape == (80, 120)
    rows = (tmp_path / "roi_instances.csv").read_text().splitlines()[1:]
    xs = [float(r.split(",")[8]) for r in rows]
    ys = [float(r.split(",")[9]) for r in rows]
    assert all(100 <= x < 220 for x in xs) and all(100 <= y < 180 for y in ys)
    assert run.grid.region == (slice(100, 180), slice(100, 220))


def test_tissue_mask_skips_background_tiles(tmp_path):
    truth = balls((256, 256), [(60, 60)], 0.005, PIXEL_2D)
    mask = np.zeros((16, 16), bool)
    mask[:6, :6] = True  # tissue only in the top-left core (mask at 16x downsample)
    grid = tile_grid(truth_slide(truth, PIXEL_2D), PIXEL_2D, 128, 16, tissue=(mask, (16.0, 16.0)))
    assert [t.core for t in grid.tiles] == [(slice(0, 128), slice(0, 128))]
    assert grid.n_cores == 4


def test_a_killed_run_resumes_and_gives_the_same_outputs(tmp_path):
    truth = balls((300, 300), BORDER_CENTRES_2D, 0.005, PIXEL_2D)
    slide, grouping = truth_slide(truth, PIXEL_2D), ideal_grouping(PIXEL_2D)
    formats = ("zarr", "geojson", "table")

    class Dies(TruthHeads):
        calls = 0

        def forward(self, batch):
            Dies.calls += 1
            if Dies.calls == 3:
                raise KeyboardInterrupt  # what a kill looks like to the pipeline
            return batch

    kwargs = dict(stem="k", core=128, halo=32, tissue=False, grouping=grouping, batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        segment_slide(slide, None, tmp_path / "a", formats, predictor=Dies(LABELS, PIXEL_2D), **kwargs)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [".k.partial"]  # nothing under a final name
    run = segment_slide(slide, None, tmp_path / "a", formats, predictor=TruthHeads(LABELS, PIXEL_2D), **kwargs)
    assert run.resumed_tiles == 4
    clean = segment_slide(slide, None, tmp_path / "b", formats, predictor=TruthHeads(LABELS, PIXEL_2D), **kwargs)
    for name in ("k_instances.csv", "k.geojson"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert all(np.array_equal(x, y) for x, y in zip(_stitched(tmp_path / "a", "k"), _stitched(tmp_path / "b", "k")))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(run.written[f].name for f in formats)
    assert clean.resumed_tiles == 0


KILLED_RUN = """
import os, sys, time
from pathlib import Path
from medpanoptic.wsi.infer import segment_slide
from medpanoptic.wsi.oracle import TruthHeads
from tests.wsi_cases import BORDER_CENTRES_2D, LABELS, PIXEL_2D, balls, ideal_grouping, truth_slide

JOURNAL = Path(sys.argv[1]) / ".k.partial" / "journal.jsonl"


class Dies(TruthHeads):
    calls = 0

    def forward(self, batch):
        Dies.calls += 1
        if Dies.calls == int(sys.argv[2]):
            if Dies.calls > 16:  # the writer thread lags (a first tile compiles its kernels): let it journal
                while len(JOURNAL.read_text().splitlines()) < 2:  # the first rows, or hang (the test times out)
                    time.sleep(0.05)
            os._exit(9)  # no finally, no flush: what SIGKILL leaves
        return batch

truth = balls((300, 300), BORDER_CENTRES_2D, 0.005, PIXEL_2D)
segment_slide(truth_slide(truth, PIXEL_2D), None, sys.argv[1], ("zarr", "geojson", "table"), stem="k", core=64,
              halo=32, tissue=False, grouping=ideal_grouping(PIXEL_2D), batch_size=1, chunk=64,
              predictor=Dies(LABELS, PIXEL_2D))
"""


@pytest.mark.parametrize("dies_at", [4, 20])
def test_a_run_killed_outright_journals_only_stored_tiles_and_resumes_to_the_same_outputs(tmp_path, dies_at):
    """Chunks of the label images wait in memory for their last tile: a run killed without a chance to
    store them must not have journaled the tiles whose pixels they held."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path / "a"), str(dies_at)], cwd=root,
                            capture_output=True, text=True, timeout=900)  # a guard against a hang, not a speed limit
    assert killed.returncode == 9, killed.stderr
    journal = (tmp_path / "a" / ".k.partial" / "journal.jsonl").read_text().splitlines()
    assert len(journal) - 1 < dies_at - 1  # (the fingerprint first) not every tile that had been written
    if dies_at > 16:  # past three rows of tiles: the first rows are whole and recorded
        assert len(journal) > 1  # (the run waited for them)
    truth = balls((300, 300), BORDER_CENTRES_2D, 0.005, PIXEL_2D)
    slide, grouping = truth_slide(truth, PIXEL_2D), ideal_grouping(PIXEL_2D)
    kwargs = dict(stem="k", core=64, halo=32, tissue=False, grouping=grouping, batch_size=1, chunk=64)
    formats = ("zarr", "geojson", "table")
    run = segment_slide(slide, None, tmp_path / "a", formats, predictor=TruthHeads(LABELS, PIXEL_2D), **kwargs)
    assert run.resumed_tiles == len(journal) - 1
    segment_slide(slide, None, tmp_path / "b", formats, predictor=TruthHeads(LABELS, PIXEL_2D), **kwargs)
    for name in ("k_instances.csv", "k.geojson"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert all(np.array_equal(x, y) for x, y in zip(_stitched(tmp_path / "a", "k"), _stitched(tmp_path / "b", "k")))


def test_tiles_mapped_on_a_dask_cluster_give_the_same_result(tmp_path):
    from distributed import Client, LocalCluster

    truth = balls((300, 300), BORDER_CENTRES_2D, 0.005, PIXEL_2D)
    slide, grouping = truth_slide(truth, PIXEL_2D), ideal_grouping(PIXEL_2D)
    kwargs = dict(core=128, halo=32, tissue=False, grouping=grouping, predictor=TruthHeads(LABELS, PIXEL_2D))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        segment_slide(slide, None, tmp_path / "d", ("zarr", "table"), stem="s", scheduler=client, **kwargs)
    segment_slide(slide, None, tmp_path / "l", ("zarr", "table"), stem="s", **kwargs)
    for x, y in zip(_stitched(tmp_path / "d"), _stitched(tmp_path / "l")):
        assert np.array_equal(x, y)
    assert sorted((tmp_path / "d" / "s_instances.csv").read_text().splitlines()) == \
        sorted((tmp_path / "l" / "s_instances.csv").read_text().splitlines())


def test_tiles_come_from_the_nearest_finer_level_and_are_resampled_to_the_bundle_pixel_size():
    from medpanoptic.wsi.slide import ArraySlide
    from medpanoptic.wsi.tiles import pick_level, read_tile

    rows, cols = np.mgrid[:256, :320].astype(np.float32)
    ramp = 3.0 * rows + cols  # linear: bilinear resampling at the new pixel centres is exact
    fine = (0.00025, 0.00025)  # 40x: twice as fine as the bundle's 0.5 µm
    assert pick_level(ArraySlide(ramp, fine, n_levels=3), PIXEL_2D) == 1
    assert pick_level(ArraySlide(ramp, (0.001, 0.001), n_levels=2), PIXEL_2D) == 0  # coarser: level 0, upsampled
    slide = ArraySlide(ramp, fine, n_levels=1)
    grid = tile_grid(slide, PIXEL_2D, 64, 8)
    assert grid.extent == (128, 160) and grid.scale == (2.0, 2.0) and grid.level == 0
    tile = grid.tiles[5]
    pixels = read_tile(slide, grid, tile)[0]
    block_means = ramp.reshape(128, 2, 160, 2).mean(axis=(1, 3))[tile.box]
    assert np.allclose(pixels, block_means, atol=1e-3)
    assert np.allclose(grid.to_level0(np.array([[10.0, 20.0]])), [[20.0, 40.0]])


def test_reader_threads_run_no_pytorch(monkeypatch):
    """Resampling and pre-processing happen on the thread that runs the network: a reader thread that
    ran a parallel PyTorch operation keeps an OpenMP team that slowed every forward pass 1.5x."""
    import threading

    import torch

    from medpanoptic.wsi import tiles as tiles_module
    from medpanoptic.wsi.infer import read_ahead
    from medpanoptic.wsi.slide import ArraySlide

    threads = set()
    sample = tiles_module.F.grid_sample

    def recorded(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return sample(*args, **kwargs)

    monkeypatch.setattr(tiles_module.F, "grid_sample", recorded)
    slide = ArraySlide(np.random.default_rng(0).random((256, 320), dtype=np.float32), (0.00025, 0.00025), n_levels=1)
    grid = tile_grid(slide, PIXEL_2D, 64, 8)

    def prepare(pixels):
        threads.add(threading.current_thread().name)
        return torch.from_numpy(pixels)

    got = list(read_ahead(slide, grid, grid.tiles, prepare, workers=2, depth=4))
    assert [t.index for t, _ in got] == [t.index for t in grid.tiles]
    assert threads == {threading.current_thread().name}


def test_the_halo_comes_from_the_largest_trained_instance_not_the_tuned_nms():
    from types import SimpleNamespace

    from medpanoptic.wsi.infer import halo_for, largest_instance_mm

    trained = SimpleNamespace(fingerprint={"instances": {"equivalent_diameter_mm": {"max": 0.0145}}})
    assert largest_instance_mm(trained) == pytest.approx(0.029)
    assert largest_instance_mm(SimpleNamespace(fingerprint=None)) is None
    assert largest_instance_mm(SimpleNamespace(fingerprint={"instances": {}})) is None
    grouping = ideal_grouping(PIXEL_2D, nms_mm=0.0062)  # a tuner's wide NMS: 8 windows would be 100 px
    assert halo_for(grouping) == 128 and halo_for(grouping, largest_instance_mm(trained)) == 80  # 58 px + 16 context
