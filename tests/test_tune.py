"""Post-processing tuning on cached network outputs (`planning.tune`): heads synthesised from the truth
(`targets.panoptic_targets`), degraded as a network degrades them, and tuned back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medpanoptic.errors import InputError
from medpanoptic.metrics import panoptic_quality
from medpanoptic.postprocess import PostprocessConfig, group_instances
from medpanoptic.planning.tune import KNOBS, TuneCase, tune_postprocess
from medpanoptic.synthetic import nuclei_phantom
from medpanoptic.targets import panoptic_targets

SPACING = (0.0005, 0.0005)  # mm: the nuclei phantoms' 0.5 µm pixels
BAD = PostprocessConfig(center_threshold=0.9, nms_mm=0.0005, min_size_mm=0.0)


def _gaussian(shape, centre, sigma_px: float, height: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return height * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma_px ** 2))


def degraded_case(seed: int):
    """Heads of an ideal network on a nuclei phantom, degraded: centres blurred (peaks near 0.7), a weak second
    peak (about 0.4) inside every other nucleus with the offsets of that side pointing at it, noise on every
    head, and a spurious small blob with a strong centre of its own in the background."""
    phantom = nuclei_phantom(shape=(96, 96), n_nuclei=10, seed=seed)
    label_set, pair = phantom.label_set, np.asarray(phantom.pair)
    ideal = panoptic_targets(pair, label_set, SPACING, sigma_mm=0.0015)
    rng = np.random.default_rng(seed)
    label, shape = pair[0].copy(), pair.shape[1:]
    center = ndimage.gaussian_filter(ideal["center"][0].numpy(), 2.0)
    offset = ideal["offset"].numpy().copy()
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for k, inst in enumerate(np.unique(pair[1])[1:]):
        if k % 2:
            continue
        voxels = np.argwhere(pair[1] == inst)
        centroid = voxels.mean(0)
        far = voxels[np.argmax(((voxels - centroid) ** 2).sum(1))]
        second = centroid + 0.8 * (far - centroid)
        side = voxels[((voxels - centroid) @ (far - centroid)) > 0]
        offset[0][tuple(side.T)] = second[0] - side[:, 0]
        offset[1][tuple(side.T)] = second[1] - side[:, 1]
        center = np.maximum(center, _gaussian(shape, second, 1.5, 0.4))
    spot = np.argwhere(ndimage.binary_erosion(label == 0, iterations=4))[0] + 2
    blob = (yy - spot[0]) ** 2 + (xx - spot[1]) ** 2 <= 4
    label[blob] = label_set.thing_ids[0]
    offset[0][blob], offset[1][blob] = (spot[0] - yy)[blob], (spot[1] - xx)[blob]
    center = np.maximum(center, _gaussian(shape, spot, 2.0, 0.8))
    center += rng.normal(0, 0.03, shape)
    offset += rng.normal(0, 0.5, offset.shape)
    logits = 4.0 * np.moveaxis(np.eye(label_set.max_id + 1)[label], -1, 0) + rng.normal(0, 0.5, (label_set.max_id + 1, *shape))
    heads = torch.from_numpy(np.concatenate([logits, center[None], offset]).astype(np.float32))
    return TuneCase(heads, torch.from_numpy(pair), SPACING), label_set


@pytest.fixture(scope="module")
def cases():
    made = [degraded_case(seed) for seed in (3, 4, 5)]
    return [c for c, _ in made], made[0][1]


@pytest.fixture(scope="module")
def tuned(cases):
    data, label_set = cases
    return tune_postprocess(data, label_set, BAD)


def _pq_things(cases, label_set, config) -> float:
    total = None
    for heads, truth, spacing in cases:
        n = label_set.max_id + 1
        pair, _ = group_instances(heads[:n], heads[n:n + 1], heads[n + 1:], label_set, spacing, config)
        q = panoptic_quality(pair, truth, label_set)
        total = q if total is None else total + q
    return total.summary()["pq_things"]


def test_tuned_config_beats_a_bad_start_and_recovers_sensible_knobs(cases, tuned):
    data, label_set = cases
    config, table = tuned
    before, after = _pq_things(data, label_set, BAD), _pq_things(data, label_set, config)
    assert before < 0.1  # threshold 0.9 lies above every centre: no instance at all
    assert after > 0.9 and after > before + 0.8
    # above the weak second peaks (about 0.4), below the blurred true ones (about 0.7)
    assert 0.45 <= config.center_threshold <= 0.65
    blob_mm2 = 13 * SPACING[0] * SPACING[1]  # the spurious blob: 13 pixels
    smallest_mm2 = min(int((np.asarray(t)[1] == i).sum()) for _, t, _ in data for i in np.unique(np.asarray(t)[1])[1:]) * 0.25e-6
    assert blob_mm2 < config.min_size_mm < smallest_mm2
    assert config.nms_mm > BAD.nms_mm
    assert [row for row in table if row["best"]] == [
        {**{k: getattr(config, k) for k in KNOBS}, **{k: row[k] for k in ("pq_things", "pq", "pq_stuff", "sq_things", "rq_things")}, "best": True}
        for row in table if row["best"]]
    assert max(table, key=lambda r: (r["pq_things"], r["pq"]))["pq_things"] == pytest.approx(after)


def test_table_lists_every_point_once_with_the_scores_of_a_real_grouping(cases, tuned):
    data, label_set = cases
    config, table = tuned
    points = [tuple(row[k] for k in KNOBS) for row in table]
    assert len(points) == len(set(points))  # each point once: a revisited point is not grouped again
    assert points[0] == tuple(getattr(BAD, k) for k in KNOBS)  # the search starts from the base
    assert sum(row["best"] for row in table) == 1
    for row in table[::7]:  # rows scored from a reused grouping with its small instances removed
        point = PostprocessConfig(**{k: row[k] for k in KNOBS})
        assert row["pq_things"] == pytest.approx(_pq_things(data, label_set, point), abs=1e-12)


def test_tuning_is_deterministic(cases, tuned):
    data, label_set = cases
    again = tune_postprocess([TuneCase(h.clone(), t.clone(), s) for h, t, s in data], label_set, BAD)
    assert again[0] == tuned[0]
    assert again[1] == tuned[1]


def test_a_given_grid_is_the_whole_search_space(cases):
    data, label_set = cases
    config, table = tune_postprocess(data, label_set, BAD, grid={"center_threshold": [0.2, 0.5]})
    assert {row["center_threshold"] for row in table} == {0.9, 0.2, 0.5}
    assert {(row["nms_mm"], row["min_size_mm"]) for row in table} == {(BAD.nms_mm, BAD.min_size_mm)}
    assert config.center_threshold in (0.2, 0.5)


def test_bad_grids_and_cases_are_refused_by_name(cases):
    data, label_set = cases
    with pytest.raises(InputError, match="tuning grid: unknown knob 'sigma'"):
        tune_postprocess(data, label_set, BAD, grid={"sigma": [1.0]})
    with pytest.raises(InputError, match="tuning grid: 'nms_mm' needs finite values"):
        tune_postprocess(data, label_set, BAD, grid={"nms_mm": [0.0]})
    heads, truth, spacing = data[0]
    with pytest.raises(InputError, match=r"tuning case 1: truth of shape \(2, 95, 96\) is not a pair on the heads' grid"):
        tune_postprocess([data[0], TuneCase(heads, truth[:, 1:], spacing)], label_set, BAD)
    with pytest.raises(InputError, match=r"tuning case 0: heads of shape \(4, 96, 96\)"):
        tune_postprocess([TuneCase(heads[:4], truth, spacing)], label_set, BAD)
    with pytest.raises(InputError, match="needs at least one case"):
        tune_postprocess([], label_set, BAD)


def test_default_grid_follows_the_truth_and_keeps_the_base(cases):
    from medpanoptic.planning.tune import default_grid

    data, label_set = cases
    voting = PostprocessConfig(center_threshold=0.3, nms_mm=0.004, min_size_mm=1e-5, vote_sigma_mm=0.001, vote_min=10.0)
    grid = default_grid(voting, data, label_set)
    sizes = [int((np.asarray(t)[1] == i).sum()) * 0.25e-6 for _, t, _ in data for i in np.unique(np.asarray(t)[1])[1:]]
    assert grid["min_size_mm"] == tuple(sorted({0.0, 1e-5} | {float(f"{min(sizes) * f:.6g}") for f in (0.1, 0.25, 0.5)}))
    diameter = 2 * np.sqrt(np.median(sizes) / np.pi)
    assert max(grid["nms_mm"]) == pytest.approx(diameter, rel=1e-5)
    assert 0.004 in grid["nms_mm"] and 0.3 in grid["center_threshold"]
    assert grid["vote_sigma_mm"] == (0.0, 0.0005, 0.001, 0.002) and grid["vote_min"] == (5.0, 10.0, 20.0)
    assert "vote_sigma_mm" not in default_grid(BAD, data, label_set)  # no votes in the base: none tried


def test_cached_cases_read_trainings_cache_with_spacing_from_an_oblique_affine(cases, tmp_path):
    from medpanoptic.planning.tune import cached_cases
    from medpanoptic.synthetic import grid_affine

    data, label_set = cases
    heads, truth, _ = data[0]
    turn = np.deg2rad(25.0)  # an oblique grid: its voxel sizes stay (0.6, 0.4) mm
    direction = [np.cos(turn), -np.sin(turn), np.sin(turn), np.cos(turn)]
    affine = torch.as_tensor(grid_affine(heads.shape[1:], (0.6, 0.4), direction), dtype=torch.float64)
    assert abs(float(affine[0, 1])) > 0.1
    torch.save({"case": "c0", "pred": heads.half(), "label": truth, "affine": affine}, tmp_path / "c0.pt")
    (read,) = cached_cases([tmp_path / "c0.pt"])
    assert read.spacing == pytest.approx((0.6, 0.4), abs=1e-9)
    assert read.heads.dtype == torch.float16 and torch.equal(read.truth, truth)
    config, table = tune_postprocess([read], label_set, BAD, grid={"center_threshold": [0.5]})
    assert config.center_threshold == 0.5 and len(table) == 2
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=r"broken.pt: not a cached network output"):
        cached_cases([tmp_path / "broken.pt"])
    torch.save({"pred": heads}, tmp_path / "partial.pt")
    with pytest.raises(InputError, match=r"partial.pt: a cached network output needs label, affine"):
        cached_cases([tmp_path / "partial.pt"])
