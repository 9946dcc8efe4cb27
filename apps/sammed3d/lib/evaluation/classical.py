"""The classical comparison rows of the evaluation (issue 14): `ClassicalSegmenter` loads a volume as the engine
does and segments it with one of the classical methods of lib.session.classical_region (random walker,
geodesic region; their parameters, chosen on development cases, are its `TUNED`). The methods live in
lib.session because the server also serves the geodesic region (lib.session.plain_region).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from lib.session.classical_region import METHODS, TUNED, ClassicalParams, segment_array


class ClassicalSegmenter:
    """Loads volumes like the engine (lib.session.volume) and segments them with one classical method.

    `segment(image_path, fg, bg)` returns a boolean (i, j, k) mask on the stored grid; `spacing(path)`
    is the stored voxel size. The last volume is kept (one image at a time in the evaluation).
    """

    def __init__(self, method: str, params: Optional[ClassicalParams] = None, modality: Optional[str] = None):
        if method not in METHODS:
            raise ValueError(f"unknown classical method {method!r}; choose from {METHODS}")
        self.method = method
        self.params = params or TUNED[method]
        self.modality = modality
        self._key = None
        self._cached = None

    def load(self, image_path: str):
        """(the image as a stored (i, j, k) array, whether it is CT, its spacing), the last one kept."""
        import SimpleITK as sitk

        from lib.session.volume import file_key, is_ct, load_volume

        key = file_key(image_path)
        if key != self._key:
            vol = load_volume(image_path)
            arr = sitk.GetArrayFromImage(vol.image).transpose(2, 1, 0)  # stored (i, j, k)
            self._cached = (arr, bool(is_ct(vol, self.modality)), tuple(float(s) for s in vol.image.GetSpacing()))
            self._key = key
        return self._cached

    def spacing(self, image_path: str) -> Tuple[float, float, float]:
        return self.load(image_path)[2]

    def segment(self, image_path: str, fg, bg) -> np.ndarray:
        arr, ct, spacing = self.load(image_path)
        return segment_array(self.method, arr, ct, spacing, fg, bg, self.params)
