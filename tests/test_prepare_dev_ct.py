"""scripts/prepare_dev_ct.py: the HU-derived labels of the head-CT development case."""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from prepare_dev_ct import NAMES, head_labels  # noqa: E402


def _phantom_head(n=64):
    """Air, a scalp shell (40 HU), a skull shell (1000 HU), brain inside (30 HU), and a bright head rest
    (a separate, smaller bone-like slab the skull label must not take)."""
    z, y, x = np.mgrid[:n, :n, :n] - n / 2 + 0.5
    r = np.sqrt(x * x + y * y + z * z)
    ct = np.full((n, n, n), -1000, np.int16)
    ct[r < 28] = 40
    ct[r < 24] = 1000
    ct[r < 20] = 30
    ct[2:4, 10:54, 10:30] = 900  # head rest: bright, disconnected, smaller than the skull
    return ct, r


def test_head_labels_find_brain_skull_and_scalp():
    ct, r = _phantom_head()
    lab = head_labels(ct)
    brain, skull, scalp = (lab == NAMES[k] for k in ("intracranial contents", "skull", "scalp and face soft tissue"))
    assert brain[r < 19].all() and not brain[r > 21].any()
    assert skull[(r > 21) & (r < 23.5)].all() and not skull[2:4, 10:54, 10:30].any()
    assert scalp[(r > 24.5) & (r < 27.5)].all() and not scalp[r < 23].any()
    assert set(np.unique(lab)) == {0, *NAMES.values()}


def test_add_lesions_paints_separate_lesions_inside_the_tissue_only():
    from prepare_dev_ct import add_lesions

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps", "sammed3d"))
    ct, r = _phantom_head(96)
    brain = head_labels(ct) == NAMES["intracranial contents"]
    ct[brain] += np.random.default_rng(0).normal(0, 8, int(brain.sum())).round().astype(np.int16)  # tissue texture
    image, labels = add_lesions(ct, brain, ("hypo", "hyper"), seed=3)
    assert image.dtype == ct.dtype and set(np.unique(labels)) == {0, 1, 2}
    from scipy import ndimage

    for v in (1, 2):  # each lesion centred in the tissue (its edge may reach past it: labels are exact)
        assert (labels == v).sum() >= 8 and brain[tuple(int(round(c)) for c in ndimage.center_of_mass(labels == v))]
    near = ndimage.binary_dilation(labels > 0, iterations=4)
    assert np.array_equal(image[~near], ct[~near])  # nothing else changed
    inside = lambda v: image[(labels == v) & brain].mean()  # noqa: E731
    assert inside(1) < ct[brain].mean() < inside(2)  # hypo- and hyperdense against the tissue
