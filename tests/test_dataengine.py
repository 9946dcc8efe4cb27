"""The default model's data engine: supervoxel regions, synthetic lesions, appearance and
orientation randomisation, and the sampler's determinism."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from lib.dataengine import (SupervoxelGraph, TrainingSampler, compute_supervoxels, insert_lesion,
                            randomise_appearance, randomise_orientation)


def _two_tissue_volume(shape=(40, 40, 40)):
    rs = np.random.default_rng(0)
    img = np.full(shape, 100.0) + rs.normal(0, 3, shape)
    img[:, :, shape[2] // 2:] += 200.0  # a sharp boundary between two tissues
    return img.astype(np.float32)


def test_supervoxel_regions_are_connected_and_stay_in_one_tissue():
    img = _two_tissue_volume()
    sv = compute_supervoxels(img, n_segments=60)
    graph = SupervoxelGraph(sv, img)
    for seed in range(10):
        ids = graph.random_region(np.random.default_rng(seed), max_parts=10, tolerance=0.5)
        mask = np.isin(sv, ids)
        assert ndimage.label(mask)[1] == 1
        left = mask[:, :, :20].sum() / mask.sum()
        assert left > 0.9 or left < 0.1  # never spans the 200-unit edge


def test_insert_lesion_marks_a_compact_region_that_changes_the_image():
    img = _two_tissue_volume((48, 48, 48))
    fg = np.zeros(img.shape, bool)
    fg[16:32, 16:32, 16:32] = True
    for seed, kind in enumerate(("nodule", "rim_tumour", "hypo", "hyper")):
        new, mask = insert_lesion(img, fg, np.random.default_rng(seed), is_ct=True, kind=kind)
        assert mask.sum() >= 8 and ndimage.label(mask)[1] >= 1
        assert abs(float(new[mask].mean() - img[mask].mean())) > 5.0
        far = ~ndimage.binary_dilation(mask, iterations=int(new.shape[0]))  # nothing beyond the local box changes
        assert np.array_equal(new[far], img[far])


def test_appearance_is_positive_finite_and_orientation_keeps_pairs_aligned():
    x = torch.from_numpy(_two_tissue_volume((32, 32, 32)))
    t = x > 200
    for seed in range(20):
        rs = np.random.default_rng(seed)
        y = randomise_appearance(x, rs, is_ct=bool(seed % 2))
        # same units: inside the crop's own range (the server's normalisation follows in the sampler)
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert float(y.min()) >= float(x.min()) - 1e-3 and float(y.max()) <= float(x.max()) + 1e-3
        a, b = randomise_orientation(x, t, rs)
        assert torch.equal(a > 200, b)


def test_sampler_is_deterministic_and_returns_normalised_crops(tmp_path):
    img = _two_tissue_volume((60, 60, 60))
    label = np.zeros(img.shape, np.uint8)
    label[20:40, 20:40, 35:50] = 1
    np.savez(tmp_path / "v.npz", image=img.astype(np.int16), label=label, is_ct=np.bool_(False),
             train_values=np.array([1], np.int32))
    s = TrainingSampler(str(tmp_path), crop=32, seed=3, n_segments=80, phantom_size=48, window=48)
    kinds = set()
    for i in range(12):
        x, y, kind = s.sample(i)
        x2, y2, _ = s.sample(i)
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert x.shape == y.shape == (1, 32, 32, 32) and y.sum() >= 20
        assert torch.isfinite(x).all()
        if kind != "phantom":  # an MR volume: z-scored over its voxels > 0 (CT phantoms keep air far below)
            assert abs(float(x[x > x.min()].mean())) < 1.5
        kinds.add(kind)
    # the training crop is the centre of the served window, normalised over the whole window
    x48, _, _ = s.sample(0, crop=48)
    assert torch.allclose(s.sample(0, crop=32)[0][0], x48[0][8:40, 8:40, 8:40], atol=1e-5)
    assert len(kinds) >= 3
