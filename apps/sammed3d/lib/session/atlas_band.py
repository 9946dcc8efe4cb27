"""The band region around an atlas structure: a label's later clicks on a structure the atlas prior answered
(lib.session.atlas_prior) move its boundary by a geodesic competition between the structure's core and what lies past
its shell, each click's neighbourhood left to the click; a large structure's click is solved near it only.
`nucleus` is a lib.session.atlas_prior.Nucleus (piece, box, ids, ...), `params` its AtlasParams (core_mm, shell_mm,
clear_mm, margin_mm); not imported here: atlas_prior imports this module.

    band_region(volume, ct, nucleus, fg, bg, params, previous=None, click=None) -> (uint8 mask, box)
    prefetch_seeds(volume, ct, nucleus, fg, bg, params)   its seeds made on a background thread (a large structure)
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Tuple

import numpy as np
from scipy import ndimage

from ..util import process_threads
from .local_update import union_box
from .classical_region import TUNED, _ball_offsets, normalise_roi, region_score, roi_box, seed_labels
from .points import voxel_indices

LOCAL_MM = 20.0  # a large structure's later click is solved within this distance of it


_SEEDS: "OrderedDict[tuple, tuple]" = OrderedDict()  # the last bands' seeds: a label's later clicks reuse them
_SEEDS_LOCK = threading.Lock()


def _band_seeds(nucleus, box, spacing, params, image, ct: bool, sigma_mm: float):
    """(prior, core, shell, data) on `box`: the nucleus there, eroded by core_mm, the outside of it dilated by
    shell_mm (bool), and the box's intensities normalised as the geodesic reads them. Two distance transforms of the
    box: 1.1 s of a whole cortex's 1.5 s click (dev_atlas_cortex), the same for every click whose box is the same, so
    the newest two are kept (copies of core and shell handed out: callers edit them), as futures: a caller finds
    them made, or being made (by AtlasPrior.answer's prefetch after a large piece's first answer), or makes them."""
    key = (nucleus.ids, tuple((b.start, b.stop) for b in nucleus.box), tuple((b.start, b.stop) for b in box),
           spacing, params.core_mm, params.shell_mm)
    with _SEEDS_LOCK:
        hit = _SEEDS.get(key)
        mine = hit is None or hit[0] is not nucleus.piece  # a refit of the volume warps a new piece
        if mine:
            hit = _SEEDS[key] = (nucleus.piece, Future())
            while len(_SEEDS) > 2:
                _SEEDS.popitem(last=False)
    if mine:
        try:
            prior = np.zeros(tuple(b.stop - b.start for b in box), dtype=bool)
            inner = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(nucleus.box, box))
            if all(s.stop > s.start for s in inner):
                prior[tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inner, box))] = \
                    nucleus.piece[tuple(slice(s.start - a.start, s.stop - a.start) for s, a in zip(inner, nucleus.box))]
            core = ndimage.distance_transform_edt(prior, sampling=spacing) > params.core_mm
            shell = ndimage.distance_transform_edt(~prior, sampling=spacing) > params.shell_mm
            hit[1].set_result((prior, core, shell, normalise_roi(image[box], ct, spacing, sigma_mm)))
        except BaseException as e:
            hit[1].set_exception(e)
            with _SEEDS_LOCK:
                if _SEEDS.get(key) is hit:
                    del _SEEDS[key]
            raise
    prior, core, shell, data = hit[1].result()
    return prior, core.copy(), shell.copy(), data


def _band_box(volume, nucleus, fg, bg, params):
    """(box, faces) of the band for these clicks: the clicks and the nucleus's extent plus margin_mm."""
    spacing = tuple(float(s) for s in volume.image.GetSpacing())
    inside = np.argwhere(nucleus[0]) + np.array([b.start for b in nucleus[1]])
    return roi_box(voxel_indices(fg) + voxel_indices(bg) + [inside.min(0).tolist(), inside.max(0).tolist()],
                   volume.shape, spacing, params.margin_mm)


def prefetch_seeds(volume, ct: bool, nucleus, fg, bg, params) -> Future:
    """The band seeds a large piece's next click (inside its extent) needs, made on a background thread while the
    annotator looks at the piece (a hemisphere's white matter: 1.1 s, the next click then 0.06 s)."""
    import SimpleITK as sitk

    image = sitk.GetArrayViewFromImage(volume.image).transpose(2, 1, 0)
    spacing = tuple(float(s) for s in volume.image.GetSpacing())
    box = _band_box(volume, nucleus, fg, bg, params)[0]
    return process_threads("atlas-band", 1).submit(_band_seeds, nucleus, box, spacing, params, image, ct,
                                                   TUNED["geodesic"].sigma_mm)


def band_region(volume, ct: bool, nucleus, fg, bg, params, previous=None,
                click=None) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """The geodesic competition in a band around the nucleus (see the module doc) -> (uint8 mask, box). With
    `previous` (the (piece, box) answered to the clicks before `click`), only the box of `click` + LOCAL_MM is solved,
    its faces held at the previous answer, and pasted into it: a click moves a large structure's edge near it
    (geodesic seeds lie within a few mm of every band voxel), so the rest need not be solved again (a whole cortex:
    0.6 s a click; docs/default_model.md, "Twenty-second run")."""
    import SimpleITK as sitk

    solver = TUNED["geodesic"]
    image = sitk.GetArrayViewFromImage(volume.image).transpose(2, 1, 0)  # stored (i, j, k), no copy
    spacing = tuple(float(s) for s in volume.image.GetSpacing())
    box, faces = _band_box(volume, nucleus, fg, bg, params)
    lo = np.array([b.start for b in box])
    local = lambda pts: [tuple(int(v) for v in np.asarray(p) - lo) for p in voxel_indices(pts)]  # noqa: E731
    prior, core, shell, data = _band_seeds(nucleus, box, spacing, params, image, ct, solver.sigma_mm)
    offsets = _ball_offsets(params.clear_mm, spacing)
    for points, seeds in ((bg, core), (fg, shell)):  # a click's own neighbourhood is the click's to decide
        for p in local(points):
            q = offsets + np.asarray(p)[None]
            q = q[((q >= 0) & (q < np.asarray(prior.shape))).all(1)]
            seeds[q[:, 0], q[:, 1], q[:, 2]] = False
    part = tuple(slice(0, n) for n in prior.shape)  # the solved part of the box, box-local
    if previous is not None:
        part, part_faces = roi_box(local([click]), prior.shape, spacing, LOCAL_MM)
    shift = np.array([b.start for b in part])
    inner = [tuple(int(v) for v in np.asarray(p) - shift) for p in local(fg) + local(bg)]
    keep = [all(0 <= v < b.stop - b.start for v, b in zip(p, part)) for p in inner]
    labels = seed_labels(tuple(b.stop - b.start for b in part), [p for p, k in zip(inner[:len(fg)], keep) if k],
                         [p for p, k in zip(inner[len(fg):], keep[len(fg):]) if k],
                         faces if previous is None else None, spacing, solver.seed_radius_mm)
    labels[(labels == 0) & core[part]] = 1
    labels[(labels == 0) & shell[part]] = 2
    mask = np.zeros(image.shape, dtype=np.uint8)
    if previous is not None:  # the faces inside the box keep the previous answer
        mask[previous[1]] = previous[0]
        before = mask[box][part]
        for a, (low, high) in enumerate(part_faces):
            for side, inner_face in ((0, low), (-1, high)):
                if inner_face:
                    face = tuple(side if d == a else slice(None) for d in range(3))
                    free = labels[face] == 0
                    labels[face][free] = np.where(before[face][free] > 0, 1, 2)
    region = region_score("geodesic", data[part], labels, spacing, solver) > 0
    region[labels == 1], region[labels == 2] = True, False
    mask[tuple(slice(b.start + p.start, b.start + p.stop) for b, p in zip(box, part))] = region
    return mask, box if previous is None else union_box([box, previous[1]])
