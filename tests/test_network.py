"""Targets -> post-processing round trip, the network's single output, and a real 2D training run on CPU."""

import numpy as np
import pytest
import torch

from medpanoptic.metrics import panoptic_quality
from medpanoptic.nets import HeadLayout, PanopticNet
from medpanoptic.postprocess import PostprocessConfig, component_instances, group_instances
from medpanoptic.synthetic import ct_phantom, nuclei_phantom, oblique_direction
from medpanoptic.targets import pack_targets, panoptic_targets

NUCLEI_SPACING = (0.0005, 0.0005)


def ideal_heads(phantom, spacing, sigma_mm):
    targets = panoptic_targets(phantom.pair, phantom.label_set, spacing, sigma_mm)
    logits = torch.nn.functional.one_hot(targets["semantic"][0], phantom.label_set.max_id + 1).movedim(-1, 0).float() * 10
    return logits, targets["center"], targets["offset"]


@pytest.mark.parametrize("case", ["ct-oblique-anisotropic", "nuclei"])
def test_ideal_heads_give_perfect_pq(case):
    """Ideal heads computed from the truth, touching things included, come back as the truth (PQ = 1)."""
    if case == "nuclei":
        phantom, spacing, sigma, nms = nuclei_phantom(n_nuclei=30, touching_fraction=0.5, seed=2), NUCLEI_SPACING, 0.001, 0.003
    else:
        spacing = (0.8, 0.9, 2.5)
        phantom = ct_phantom(shape=(80, 80, 40), spacing=spacing, direction=oblique_direction().ravel(), n_lesions=10,
                             touching_fraction=0.4, seed=4)
        sigma, nms = 2.0, 4.0
    heads = ideal_heads(phantom, spacing, sigma)
    pair, scores = group_instances(*heads, phantom.label_set, spacing, PostprocessConfig(center_threshold=0.5, nms_mm=nms))
    quality = panoptic_quality(pair, phantom.pair, phantom.label_set)
    assert quality.summary()["pq"] == pytest.approx(1.0)
    assert sorted(scores) == list(range(1, phantom.n_instances + 1))
    assert all(0 < s <= 1 for s in scores.values())
    # connected components of the same (perfect) semantics merge the touching pairs
    components = panoptic_quality(component_instances(heads[0], phantom.label_set), phantom.pair, phantom.label_set)
    assert components.summary()["pq_things"] < 0.9


def test_chunked_assignment_is_exact(monkeypatch):
    import medpanoptic.postprocess as post

    phantom = nuclei_phantom(shape=(96, 96), n_nuclei=10, seed=3)
    heads = ideal_heads(phantom, NUCLEI_SPACING, 0.001)
    config = PostprocessConfig(center_threshold=0.5, nms_mm=0.003)
    whole, _ = group_instances(*heads, phantom.label_set, NUCLEI_SPACING, config)
    monkeypatch.setattr(post, "CHUNK", 97)
    chunked, _ = post._group_with_torch(*heads, phantom.label_set, NUCLEI_SPACING, config)
    assert torch.equal(whole, chunked)


@pytest.mark.parametrize("dims, seed, vote_sigma_mm", [(3, 4, 0.0), (3, 5, 0.0), (3, 4, 1.0), (2, 3, 0.0), (2, 3, 0.0005)])
def test_compiled_cpu_grouping_equals_the_torch_grouping(dims, seed, vote_sigma_mm):
    """backend="compiled" (one numba pass) and backend="torch" give the same pair and scores on
    noisy heads of oblique, anisotropic volumes and of images, both run here on the CPU."""
    if dims == 3:
        spacing, sigma, nms, min_size = (0.8, 0.9, 2.5), 2.0, 4.0, 40.0
        phantom = ct_phantom(shape=(64, 64, 32), spacing=spacing, direction=oblique_direction().ravel(), n_lesions=8,
                             touching_fraction=0.5, seed=seed)
    else:
        spacing, sigma, nms, min_size = NUCLEI_SPACING, 0.001, 0.003, 20 * 0.0005**2
        phantom = nuclei_phantom(shape=(96, 96), n_nuclei=12, touching_fraction=0.5, seed=seed)
    logits, center, offset = ideal_heads(phantom, spacing, sigma)
    generator = torch.Generator().manual_seed(seed)
    logits = logits + 8 * torch.randn(logits.shape, generator=generator)  # ragged, misclassified voxels
    offset = offset + torch.randn(offset.shape, generator=generator)
    config = PostprocessConfig(center_threshold=0.5, nms_mm=nms, min_size_mm=min_size, vote_sigma_mm=vote_sigma_mm)
    compiled, compiled_scores = group_instances(logits, center, offset, phantom.label_set, spacing, config, backend="compiled")
    reference, reference_scores = group_instances(logits, center, offset, phantom.label_set, spacing, config, backend="torch")
    assert compiled.dtype == reference.dtype == torch.int32
    assert int(reference[1].max()) >= 3  # instances were found (and some dropped: see min_size)
    assert torch.equal(compiled, reference)
    assert compiled_scores.keys() == reference_scores.keys()
    for k in compiled_scores:
        assert compiled_scores[k] == pytest.approx(reference_scores[k], rel=1e-4)
    auto, _ = group_instances(logits, center, offset, phantom.label_set, spacing, config)  # "auto" on the CPU: compiled
    assert torch.equal(auto, compiled)


@pytest.mark.parametrize("shape, spacing", [((120, 90), (0.0005, 0.0005)), ((40, 36, 12), (0.7, 0.9, 2.5))])
def test_nearest_center_search_in_cells_equals_every_center(shape, spacing):
    """The compiled pass looks for each voxel's center in rings of cells; it must pick the very
    center a search over every center picks (the first of equals), with offsets that point far
    off the grid and centers clustered in a corner as well as spread."""
    from medpanoptic._kernels import assign_to_centers

    rng = np.random.default_rng(7)
    n = int(np.prod(shape))
    logits = rng.normal(size=(2, *shape)).astype(np.float32)
    logits[1] += 1.0  # most voxels of the thing class
    offsets = (rng.normal(scale=6.0, size=(len(shape), *shape))).astype(np.float32)
    offsets[:, ::7] *= 20  # some point far outside the grid
    scale = np.asarray(spacing, np.float32)
    spread = rng.integers(0, shape, size=(300, len(shape)))
    cluster = rng.integers(0, 4, size=(40, len(shape)))
    for centers in (spread, cluster, np.vstack([spread[:5], spread[:5]])):  # duplicates: ties go to the first
        semantic, owner, _, _ = assign_to_centers(logits, offsets, centers.astype(np.float32), scale,
                                                  np.array([False, True]))
        coords = np.stack(np.unravel_index(np.arange(n), shape), 1).astype(np.float32)
        pointed = (coords + offsets.reshape(len(shape), n).T) * scale
        d = (((pointed[:, None, :] - centers[None].astype(np.float32) * scale) ** 2)).sum(-1)
        expected = np.where(semantic == 1, d.argmin(1) + 1, 0)
        assert semantic.sum() > n // 2
        assert np.mean(owner == expected) > 0.99999, np.flatnonzero(owner != expected)[:5]  # float rounding of near ties at most


def test_grouping_backend_is_checked():
    phantom = nuclei_phantom(shape=(48, 48), n_nuclei=2, seed=1)
    heads = ideal_heads(phantom, NUCLEI_SPACING, 0.001)
    with pytest.raises(ValueError, match="unknown backend 'numba' \\(expected one of auto, torch, compiled\\)"):
        group_instances(*heads, phantom.label_set, NUCLEI_SPACING, backend="numba")


def test_postprocess_config_takes_keywords_only_and_the_old_size_name_warns():
    """Seven floats in a row went into the wrong slots by position: only keywords now. The old name
    `min_volume_mm3` (an area in 2D) still works, as `min_size_mm`, with a DeprecationWarning."""
    with pytest.raises(TypeError, match="positional"):
        PostprocessConfig(10.0, 5.0)
    with pytest.warns(DeprecationWarning, match="min_volume_mm3 is deprecated: use min_size_mm"):
        old = PostprocessConfig(center_threshold=0.4, min_volume_mm3=12.5)
    assert old == PostprocessConfig(center_threshold=0.4, min_size_mm=12.5)
    assert old.min_size_mm == 12.5


def test_vote_peaks_use_vote_min_as_their_threshold():
    """The blurred offset votes are thresholded at `vote_min` votes (as a keyword, not by slot)."""
    from medpanoptic.postprocess import vote_centers

    pointed = torch.tensor([[10.0, 10.0]] * 12 + [[30.0, 30.0]] * 6)  # 12 votes at one place, 6 at another
    none = torch.zeros((0, 2), dtype=torch.long)
    config = PostprocessConfig(vote_sigma_mm=0.5, vote_min=8.0, vote_gap_mm=1.0, nms_mm=2.0)
    assert vote_centers(pointed, (40, 40), none, (1.0, 1.0), config).tolist() == [[10, 10]]
    lower = PostprocessConfig(vote_sigma_mm=0.5, vote_min=4.0, vote_gap_mm=1.0, nms_mm=2.0)
    assert sorted(vote_centers(pointed, (40, 40), none, (1.0, 1.0), lower).tolist()) == [[10, 10], [30, 30]]


@pytest.mark.parametrize("dims", [2, 3])
def test_offset_votes_find_the_center_the_heatmap_lost(dims):
    """A touching thing whose heatmap peak is gone (as when it lies on a larger neighbour's slope) is
    recovered from its voxels' offsets when vote peaks are on, and merged into its neighbour when off."""
    if dims == 3:
        spacing, sigma, nms = (0.8, 0.9, 2.5), 2.0, 4.0
        phantom = ct_phantom(shape=(64, 64, 32), spacing=spacing, direction=oblique_direction().ravel(), n_lesions=6,
                             touching_fraction=0.4, seed=6)
        vote = dict(vote_sigma_mm=1.0, vote_min=10.0, vote_gap_mm=5.0)
    else:
        spacing, sigma, nms = NUCLEI_SPACING, 0.001, 0.003
        phantom = nuclei_phantom(shape=(96, 96), n_nuclei=8, touching_fraction=0.5, seed=3)
        vote = dict(vote_sigma_mm=0.0005, vote_min=5.0, vote_gap_mm=0.002)
    logits, center, offset = ideal_heads(phantom, spacing, sigma)
    label, instance = phantom.pair.numpy()
    touching = [i for i in range(1, phantom.n_instances + 1) if _touches_another(instance, i)]
    assert touching
    lost = min(touching, key=lambda i: (instance == i).sum())  # the smaller one of a touching pair
    mask = torch.from_numpy(instance == lost)
    center = center.clone()
    center[0][mask] = 0.0  # its heatmap blob is gone inside the thing itself
    truth_pq = []
    for settings in ({}, vote):
        config = PostprocessConfig(center_threshold=0.5, nms_mm=nms, **settings)
        pair, _ = group_instances(logits, center, offset, phantom.label_set, spacing, config)
        truth_pq.append(panoptic_quality(pair, phantom.pair, phantom.label_set).summary()["pq_things"])
    assert truth_pq[0] < 0.99
    assert truth_pq[1] == pytest.approx(1.0)


def _touches_another(instance: np.ndarray, i: int) -> bool:
    from scipy import ndimage

    mask = instance == i
    ring = ndimage.binary_dilation(mask) & ~mask
    return bool(np.any(instance[ring] > 0))


def test_small_instances_are_dropped_and_scores_rank_ids():
    phantom = nuclei_phantom(shape=(96, 96), n_nuclei=10, seed=3)
    heads = ideal_heads(phantom, NUCLEI_SPACING, 0.001)
    areas = np.bincount(phantom.pair[1].numpy().ravel())[1:] * 0.0005**2
    limit = float(np.median(areas))
    pair, scores = group_instances(*heads, phantom.label_set, NUCLEI_SPACING,
                                   PostprocessConfig(center_threshold=0.5, nms_mm=0.003, min_size_mm=limit))
    kept = int(pair[1].max())
    assert kept == int((areas >= limit).sum())
    assert list(scores.values()) == sorted(scores.values(), reverse=True)
    assert int(pair[0][pair[1] == 0].eq(2).sum()) == 0  # dropped things leave no orphan thing voxels


def test_single_output_tensor_and_torchscript():
    net = PanopticNet(3, 1, 4, filters=(8, 16, 32)).eval()
    x = torch.randn(1, 1, 32, 32, 16)
    y = net(x)
    assert y.shape == (1, HeadLayout(4, 3).channels, 32, 32, 16)
    heads = net.layout.split(y)
    assert [heads[k].shape[1] for k in ("semantic", "center", "offset")] == [4, 1, 3]
    scripted = torch.jit.script(net)
    assert torch.allclose(scripted(x), y, atol=1e-5)


@pytest.mark.parametrize("backbone", ["dynunet", "segresnet"])
def test_auxiliary_heads_start_at_zero(backbone):
    """An untrained network predicts no centers and no offsets (so the center loss starts small)."""
    net = PanopticNet(3, 1, 4, backbone=backbone, filters=(8, 16, 32)).eval()
    heads = net.layout.split(net(torch.randn(1, 1, 32, 32, 16)))
    assert heads["semantic"].abs().max() > 0
    assert heads["center"].abs().max() == 0 and heads["offset"].abs().max() == 0


def test_segmenter_infers_on_the_image_grid_and_swaps_the_grouping():
    """The bundle's inference (sliding window, grouping, inversion) lands on the image's grid; a
    script swaps the grouping for one call (`infer(image, postprocess=...)`) without rebuilding it."""
    from medpanoptic.segment import Segmenter
    from medpanoptic.transforms import PanopticPostprocess

    phantom = nuclei_phantom(shape=(96, 80), n_nuclei=6, seed=1)
    seg = Segmenter("nuclei_panoptic_2d", device="cpu")
    image = seg.load(phantom.image)
    grouped = seg.infer(image)
    components = seg.infer(image, postprocess=PanopticPostprocess(seg.label_set, mode="components"))
    for data in (grouped, components):
        assert data["pred"].shape == (2, 96, 80)
        np.testing.assert_allclose(data["pred"].affine.numpy(), phantom.image.affine.numpy(), atol=1e-6)
    assert grouped["pred_scores"] and components["pred_scores"] == {}
    # one network output, two groupings: the same semantic map, except thing voxels the grouping dropped
    # (instances below min_size_mm, which connected components keep)
    g, c = grouped["pred"][0].numpy(), components["pred"][0].numpy()
    differ = g != c
    # only thing pixels the grouping leaves unassigned differ (0.3.0 weights: 2.3% of this 96x80 image, 6 nuclei)
    assert differ.mean() < 0.03 and (g[differ] == 0).all() and np.isin(c[differ], seg.label_set.thing_ids).all()
    from medpanoptic.pair import instances_from_semantic, integer_pair

    semantic = integer_pair(components["pred"])[0].numpy()
    expected = instances_from_semantic(semantic, seg.label_set.thing_ids)
    assert expected.max() >= 3
    np.testing.assert_array_equal(integer_pair(components["pred"])[1].numpy(), expected)
    result = seg(phantom.image, postprocess=PanopticPostprocess(seg.label_set, mode="components"))
    assert result.scores == {} and result.n_instances == int(expected.max())
    # one forward pass grouped twice gives what two whole inferences give, and leaves the output as it was
    output = seg.forward(image)
    before = output["pred"].clone()
    for post in (None, PanopticPostprocess(seg.label_set, mode="components")):
        np.testing.assert_array_equal(seg.group(output, postprocess=post)["pred"].numpy(),
                                      seg.infer(image, postprocess=post)["pred"].numpy())
    assert output["pred"].shape == before.shape and torch.equal(output["pred"], before)


@pytest.mark.slow
def test_training_on_cpu_beats_connected_components():
    """A small 2D PanopticNet trained for a fixed number of steps on nuclei phantoms (half of them in
    touching pairs) reaches PQ_things >= 0.8 on unseen phantoms; connected components of the same
    network's semantic output stay clearly lower."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = [nuclei_phantom(shape=(128, 128), n_nuclei=14, touching_fraction=0.5, seed=s) for s in range(40)]

    def batch(size=4):
        images, targets = [], []
        for _ in range(size):
            ph = train[rng.integers(len(train))]
            image, pair = ph.image.numpy(), ph.pair.numpy()
            for axis in (1, 2):
                if rng.random() < 0.5:
                    image, pair = np.flip(image, axis), np.flip(pair, axis)
            if rng.random() < 0.5:
                image, pair = image.transpose(0, 2, 1), pair.transpose(0, 2, 1)
            images.append(torch.from_numpy((np.ascontiguousarray(image) - 60) / 60).float())
            targets.append(pack_targets(panoptic_targets(np.ascontiguousarray(pair), ph.label_set, NUCLEI_SPACING, 0.0015)))
        return torch.stack(images), torch.stack(targets)

    from medpanoptic.losses import PanopticLoss

    net = PanopticNet(2, 1, 3, filters=(16, 32, 64, 128))
    loss_fn = PanopticLoss(net.layout)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(300):
        x, t = batch()
        loss = loss_fn(net(x), t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    config = PostprocessConfig(center_threshold=0.3, nms_mm=0.003)
    grouped = components = None
    with torch.no_grad():
        for seed in range(100, 106):
            ph = nuclei_phantom(shape=(128, 128), n_nuclei=14, touching_fraction=0.5, seed=seed)
            heads = net.layout.split(net(((ph.image - 60) / 60).float()[None].as_subclass(torch.Tensor))[0])
            pair, _ = group_instances(heads["semantic"], heads["center"], heads["offset"], ph.label_set, NUCLEI_SPACING, config)
            g = panoptic_quality(pair, ph.pair, ph.label_set)
            c = panoptic_quality(component_instances(heads["semantic"], ph.label_set), ph.pair, ph.label_set)
            grouped = g if grouped is None else grouped + g
            components = c if components is None else components + c
    pq_grouping, pq_components = grouped.summary()["pq_things"], components.summary()["pq_things"]
    assert pq_grouping >= 0.8, (pq_grouping, pq_components)
    assert pq_grouping - pq_components >= 0.1, (pq_grouping, pq_components)


@pytest.mark.parametrize("threshold", [0.3, 0.995])  # most voxels candidates (separable max-pool), few (gathered windows)
@pytest.mark.parametrize("spacing, nms_mm", [((1.0, 1.0, 1.0), 3.0), ((0.7, 0.9, 2.5), 5.0), ((0.5, 0.5), 2.0),
                                             ((0.8, 0.8, 5.0), 4.0)])
def test_peak_finding_equals_a_dense_max_pool(spacing, nms_mm, threshold):
    import torch.nn.functional as F

    from medpanoptic.postprocess import find_centers

    torch.manual_seed(0)
    shape = (40, 36, 20)[: len(spacing)]
    heat = torch.rand(shape)
    config = PostprocessConfig(center_threshold=threshold, nms_mm=nms_mm, top_k=10_000)
    window = [2 * max(1, int(round(nms_mm / (2 * s)))) + 1 for s in spacing]  # never narrower than 3 voxels
    assert min(window) >= 3
    pool = F.max_pool3d if len(shape) == 3 else F.max_pool2d
    pooled = pool(heat[None, None], kernel_size=window, stride=1, padding=[w // 2 for w in window])[0, 0]
    dense = torch.nonzero((heat == pooled) & (heat > threshold))
    assert len(dense) > 0
    sparse = find_centers(heat[None], spacing, config)
    assert sorted(map(tuple, sparse.tolist())) == sorted(map(tuple, dense.tolist()))
    values = heat[tuple(sparse.T)]
    assert torch.all(values[:-1] >= values[1:])  # strongest first
