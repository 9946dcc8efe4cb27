"""lib.synthetic.chest: the chest CT phantom used as a development case."""
from __future__ import annotations

import numpy as np

from lib.synthetic.chest import CHEST_LABELS, chest_case


def test_chest_phantom_has_dark_lungs_with_vessels_and_a_soft_tissue_heart():
    image, labels, spacing = chest_case(0, shape_mm=(150.0, 240.0, 330.0))
    assert spacing == (10.0, 3.0, 3.0) and image.shape == labels.shape == (15, 80, 110)
    assert set(np.unique(labels)) == {0, *CHEST_LABELS.values()}
    right, left, heart = (labels == CHEST_LABELS[k] for k in ("right lung", "left lung", "heart"))
    for lung in (right, left):
        hu = image[lung]
        assert np.mean(hu < -500) > 0.8  # air-filled parenchyma (partial volume at the 10 mm edges)
        assert np.mean(hu > -300) > 0.005  # ...crossed by vessels, which belong to the lung
    assert abs(np.median(image[heart]) - 45) < 40
    cols = np.nonzero(right.any((0, 1)))[0], np.nonzero(left.any((0, 1)))[0]
    assert cols[0].max() < cols[1].min()  # one lung on each side of the mediastinum
    again, labels2, _ = chest_case(0, shape_mm=(150.0, 240.0, 330.0))
    assert np.array_equal(labels, labels2) and np.allclose(image, again)  # deterministic in the seed
