"""Synthetic phantoms and training crops (CPU, small volumes)."""
import numpy as np
import torch

from lib.training.crops import CropDataset, bbox_centre, crop_or_pad, make_crop, pick_target, znormalise
from lib.training.losses import dice_ce_loss, dice_score
from lib.synthetic.phantoms import generate_phantom


def test_phantom_is_deterministic_and_seed_dependent():
    a_img, a_lab, a_mod = generate_phantom(5, (48, 48, 48))
    b_img, b_lab, b_mod = generate_phantom(5, (48, 48, 48))
    c_img, c_lab, _ = generate_phantom(6, (48, 48, 48))
    assert a_mod == b_mod
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_phantom_content_and_ranges():
    from scipy import ndimage

    visible = 0
    for seed in range(6):
        img, lab, mod = generate_phantom(seed, (48, 48, 48), n_objects=4)
        assert img.dtype == np.float32 and lab.dtype == np.int16 and img.shape == lab.shape == (48, 48, 48)
        assert np.isfinite(img).all()
        values = set(np.unique(lab).tolist()) - {0}
        assert values and values <= {1, 2, 3, 4}
        if mod == "ct":
            assert img.min() < -500  # air or lung-like tissue present
        else:
            assert img.min() >= 0  # Rician magnitude
        # The largest object differs from a thin ring around it: the label is visible in the image.
        obj = lab == max(values, key=lambda v: (lab == v).sum())
        ring = ndimage.binary_dilation(obj, iterations=2) & ~obj
        noise = np.std(img[ring] - ndimage.uniform_filter(img, 3)[ring])
        visible += abs(img[obj].mean() - img[ring].mean()) > noise
    assert visible >= 4


def test_forced_modality():
    _, _, mod = generate_phantom(1, (32, 32, 32), modality="mr")
    assert mod == "mr"


def test_crop_or_pad_places_and_pads():
    vol = torch.arange(10 * 10 * 10, dtype=torch.float32).reshape(10, 10, 10) + 1
    c = crop_or_pad(vol, (1, 5, 8), size=6)  # window starts at (-2, 2, 5)
    assert c.shape == (6, 6, 6)
    assert (c[:2] == 0).all()  # padding above axis-0 start
    assert c[2, 0, 0] == vol[0, 2, 5]
    assert (c[:, :, 5] == 0).all()  # axis-2 runs out at index 10
    assert (crop_or_pad(vol, (40, 5, 5), size=6) == 0).all()


def test_znormalise_uses_positive_voxels():
    x = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0])
    z = znormalise(x)
    assert torch.allclose(z[2:], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(z[:2], torch.tensor([-2.0, -2.0]))


def test_make_crop_centres_target_and_normalises():
    img = torch.full((60, 70, 80), 100.0) + torch.randn(60, 70, 80)
    tgt = torch.zeros(60, 70, 80, dtype=torch.bool)
    tgt[10:20, 30:40, 50:70] = True
    rs = np.random.default_rng(0)
    x, y = make_crop(img, tgt, False, rs, jitter=0, flip=False, size=32)
    assert x.shape == y.shape == (1, 32, 32, 32) and y.dtype == torch.float32
    assert int(y.sum()) == int(tgt.sum())
    assert bbox_centre(y[0] > 0) == [16, 16, 16]
    x2, y2 = make_crop(img, tgt, False, np.random.default_rng(1), jitter=4, flip=True, size=32)
    assert int(y2.sum()) == int(tgt.sum())


def test_pick_target_respects_allowed_and_min_voxels():
    lab = torch.zeros(10, 10, 10, dtype=torch.int16)
    lab[:3] = 1
    lab[5:8] = 2
    lab[9, 0, 0] = 3  # too small
    rs = np.random.default_rng(0)
    assert {pick_target(lab, None, rs) for _ in range(30)} == {1, 2}
    assert pick_target(lab, [2, 3], rs) == 2
    assert pick_target(lab, [3], rs) is None


def test_crop_dataset_item():
    ds = CropDataset(3, seed=2, phantom_shape=(48, 48, 48), size=32)
    x, y = ds[1]
    assert x.shape == y.shape == (1, 32, 32, 32)
    assert y.sum() > 0
    x2, y2 = ds[1]
    assert torch.equal(y, y2) and torch.equal(x, x2)


def test_dice_ce_and_dice_score():
    t = torch.zeros(2, 1, 4, 4, 4)
    t[:, :, :2] = 1
    good = (t * 2 - 1) * 20.0
    bad = -good
    assert dice_ce_loss(good, t) < 0.01
    assert dice_ce_loss(bad, t) > 10
    assert dice_score(good > 0, t > 0).tolist() == [1.0, 1.0]
    assert dice_score(bad > 0, t > 0).tolist() == [0.0, 0.0]
    assert dice_score(torch.zeros(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.bool)).tolist() == [1.0]


def test_lung_lobe_case_radius_range_sets_the_lobes_size():
    """The fine-tuning demo's --radius-mm: larger lobes for a structure wider than the prior's box."""
    from lib.synthetic.cases import lung_lobe_case

    shape = (64, 64, 56)
    img, lab = lung_lobe_case(3, shape)
    img2, lab2 = lung_lobe_case(3, shape, radius_mm=(35.0, 50.0))
    assert np.array_equal(lab, lab2) and np.array_equal(img, img2)  # the default range, unchanged
    small = lung_lobe_case(4, (128, 128, 112), radius_mm=(20.0, 20.0))[1].sum() * 1.5 ** 3
    big = lung_lobe_case(4, (128, 128, 112), radius_mm=(40.0, 40.0))[1].sum() * 1.5 ** 3
    assert 3.0 < big / small < 16.0  # about (40/20)^3 = 8 for a deformed blob
    assert lab.dtype == np.uint8 and img[lab > 0].mean() < -700  # dark, lung-like


def test_lung_lobe_case_mean_hu_sets_the_lobes_intensity():
    """The fine-tuning demo's --lobe-hu: a lobe near soft tissue has a weak wall (default -820, lung-like)."""
    from lib.synthetic.cases import lung_lobe_case

    img, lab = lung_lobe_case(5, (64, 64, 56), radius_mm=(20.0, 20.0))
    weak, lab2 = lung_lobe_case(5, (64, 64, 56), radius_mm=(20.0, 20.0), mean_hu=-100.0)
    assert np.array_equal(lab, lab2) and np.array_equal(img[lab == 0], weak[lab == 0])  # same shape and body
    assert abs(float(np.mean(img[lab > 0])) + 820.0) < 20.0 and abs(float(np.mean(weak[lab > 0])) + 100.0) < 20.0
