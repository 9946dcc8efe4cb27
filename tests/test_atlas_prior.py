"""lib.session.atlas_prior: a registered brain atlas answers a brain MR click in a deep grey nucleus; later clicks
move the boundary in a band around it. The brain here is the shipped template itself at 2 mm, moved by a known
shift and rotation (the fit must find them), so the atlas's own nuclei are the ground truth."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lib.session.atlas_fit import AtlasFits, BrainAtlas
from lib.session.atlas_band import LOCAL_MM, band_region
from lib.session.atlas_prior import AtlasParams, AtlasPrior, Nucleus
from lib.session.plain_region import PlainRegion, resolve_region
from lib.session.volume import load_volume

L_THALAMUS, L_PUTAMEN = 35, 37


def _moved(atlas: BrainAtlas, image, interpolator=sitk.sitkNearestNeighbor):
    """An image on the template grid, moved by a known shift and rotation onto a 2 mm grid (the test brain's)."""
    t = atlas.template
    ref = sitk.Image([int(n) // 2 for n in t.GetSize()], sitk.sitkFloat32)
    ref.SetSpacing([2.0, 2.0, 2.0])
    ref.SetOrigin(t.GetOrigin())
    ref.SetDirection(t.GetDirection())
    centre = t.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t.GetSize()])
    move = sitk.Euler3DTransform(centre, 0.0, 0.0, np.deg2rad(5.0), (6.0, -4.0, 3.0))  # subject -> template
    return sitk.Resample(image, ref, move, interpolator, 0.0)


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    """(path of a moved 2 mm copy of the template, its atlas ids (i, j, k), a shared AtlasFits)."""
    atlas = BrainAtlas()
    image = sitk.Cast(_moved(atlas, atlas.template, sitk.sitkLinear), sitk.sitkInt16)
    ids = sitk.GetArrayFromImage(_moved(atlas, atlas.ids)).transpose(2, 1, 0)
    path = str(tmp_path_factory.mktemp("atlas") / "brain.nii.gz")
    sitk.WriteImage(image, path)
    return path, ids, AtlasFits()


def _deepest(mask: np.ndarray):
    from scipy import ndimage

    return [int(v) for v in np.unravel_index(np.argmax(ndimage.distance_transform_edt(mask)), mask.shape)]


def _full(nucleus, shape) -> np.ndarray:
    """A nucleus (its box's piece, the box) on the whole grid."""
    out = np.zeros(shape, np.uint8)
    out[nucleus[1]] = nucleus[0]
    return out


def _dice(a, b) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


def _negated(fits: AtlasFits) -> AtlasFits:
    """`fits` whose fits correlate negatively with the template (as a T2 may, which `min_ncc`'s absolute value keeps)."""
    import dataclasses

    class Negated(AtlasFits):
        def fit(self, volume, wait):
            found = fits.fit(volume, wait)
            return None if found is None else dataclasses.replace(found, ncc=-found.ncc)

    return Negated()


def test_a_click_in_a_nucleus_gets_that_nucleus(brain):
    path, ids, fits = brain
    volume, prior = load_volume(path), AtlasPrior(AtlasParams(wait=True), fits)
    fit = fits.fit(volume, wait=True)
    assert fit.ncc > 0.9
    for ident in (L_THALAMUS, L_PUTAMEN):
        piece, box = prior.nucleus(volume, False, _deepest(ids == ident))[:2]
        assert piece.dtype == np.uint8 and piece.shape == tuple(b.stop - b.start for b in box)
        assert _dice(_full((piece, box), ids.shape), ids == ident) > 0.85


def test_no_answer_for_ct_white_matter_a_lesion_or_a_volume_that_is_not_a_brain(brain, tmp_path):
    path, ids, fits = brain
    volume, prior = load_volume(path), AtlasPrior(AtlasParams(wait=True), fits)
    click = _deepest(ids == L_THALAMUS)
    assert prior.nucleus(volume, True, click) is None  # CT: the atlas is a T1's
    data = sitk.GetArrayFromImage(volume.image).transpose(2, 1, 0)
    white = np.argwhere((ids == 0) & (data > np.percentile(data[data > 0], 90)))[0]
    assert prior.nucleus(volume, False, white.tolist()) is None  # not a deep nucleus
    # a bright lesion where the thalamus is: the click's tissue is not the nucleus's, the served answer stands
    lesion = data.copy()
    lo = np.array(click) - 3
    lesion[lo[0]:lo[0] + 7, lo[1]:lo[1] + 7, lo[2]:lo[2] + 7] = data.max()
    img = sitk.GetImageFromArray(lesion.transpose(2, 1, 0))
    img.CopyInformation(volume.image)
    sitk.WriteImage(img, str(tmp_path / "lesion.nii.gz"))
    assert prior.nucleus(load_volume(str(tmp_path / "lesion.nii.gz")), False, click) is None
    # noise is no brain: the fit's correlation is under min_ncc
    noise = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 200, (48, 48, 48)).astype(np.int16))
    noise.SetSpacing([2.0] * 3)
    sitk.WriteImage(noise, str(tmp_path / "noise.nii.gz"))
    other = load_volume(str(tmp_path / "noise.nii.gz"))
    assert prior.nucleus(other, False, [24, 24, 24]) is None and abs(fits.fit(other, True).ncc) < 0.5
    # a volume the registration cannot take (three slices): no atlas, no error, and the failure is kept
    thin = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 200, (3, 64, 64)).astype(np.int16))
    thin.SetSpacing([0.5, 0.5, 5.0])
    sitk.WriteImage(thin, str(tmp_path / "thin.nii.gz"))
    thin_volume = load_volume(str(tmp_path / "thin.nii.gz"))
    assert prior.nucleus(thin_volume, False, [32, 32, 1]) is None
    assert fits.fit(thin_volume, True).transform is None


def test_without_waiting_a_first_click_goes_on_and_the_fit_runs_behind_it(brain):
    path, ids, _ = brain
    volume, fits = load_volume(path), AtlasFits()
    prior = AtlasPrior(AtlasParams(wait=False), fits)
    assert prior.nucleus(volume, False, _deepest(ids == L_THALAMUS)) is None  # not fitted yet: started
    assert fits.fit(volume, wait=True).ncc > 0.9
    assert prior.nucleus(volume, False, _deepest(ids == L_THALAMUS)) is not None


def _ball_scene(tmp_path):
    """An MR ball of radius 8 voxels (1 mm) and a 'nucleus' prior: the same ball shifted by 3 voxels along i."""
    z, y, x = np.mgrid[:48, :48, :48]
    ball = (z - 24) ** 2 + (y - 24) ** 2 + (x - 24) ** 2 <= 64
    img = sitk.GetImageFromArray(np.where(ball, 600, 300).astype(np.int16).transpose(2, 1, 0))
    sitk.WriteImage(img, str(tmp_path / "ball.nii.gz"))
    prior = np.zeros(ball.shape, np.uint8)
    prior[3:, :, :] = ball[:-3]
    return load_volume(str(tmp_path / "ball.nii.gz")), ball, Nucleus(prior, (slice(0, 48),) * 3, (35,), 1)


def test_a_later_click_moves_the_nucleus_boundary_to_the_image_edge_where_it_was_placed(tmp_path):
    volume, ball, nucleus = _ball_scene(tmp_path)
    params = AtlasParams()
    first = [[27, 24, 24]]
    # include at the ball's edge the prior missed (i = 17..19): that side snaps to the ball's edge
    mask, box = band_region(volume, False, nucleus, first + [[18, 24, 24]], [], params)
    assert mask[17, 24, 24] and _dice(mask, ball) > _dice(nucleus[0], ball)
    # exclude where the prior leaked past the ball (i = 33..35): that part goes
    mask, _ = band_region(volume, False, nucleus, first, [[34, 24, 24]], params)
    assert not mask[34, 24, 24] and _dice(mask, ball) > _dice(nucleus[0], ball)
    # and the nucleus itself is the first click's answer
    mask, box = AtlasPrior(params).answer(volume, False, first, [], nucleus)
    np.testing.assert_array_equal(mask, nucleus[0])


def test_a_cortical_parcel_answers_when_asked_and_later_clicks_in_other_parcels_add_them(brain):
    from lib.session.state import LabelState

    path, ids, fits = brain
    volume = load_volume(path)
    superior_temporal, inferior_temporal, insula = 29, 8, 34  # left parcels (model/atlas/desikan_killiany.csv)
    first = _deepest(ids == superior_temporal)
    assert AtlasPrior(AtlasParams(wait=True), fits).nucleus(volume, False, first) is None  # nuclei only by default
    prior = AtlasPrior(AtlasParams(wait=True, cortex=True, grow_mm=3.0), fits)
    parcel = prior.nucleus(volume, False, first)
    assert parcel.ids == (superior_temporal,) and parcel.seen == 1
    assert _dice(_full(parcel, ids.shape), ids == superior_temporal) > 0.8
    # a later include click deep in another parcel adds it; one on the shown parcel's edge only corrects the edge
    from scipy import ndimage

    far = _deepest(ids == inferior_temporal)
    shown = _full(parcel, ids.shape).astype(bool)
    beside = ndimage.binary_dilation(shown) & ~shown & (ids >= 1) & (ids <= 34) & (ids != superior_temporal)
    edge = np.argwhere(beside)[0].tolist()  # another parcel's voxel, 2 mm from the shown one
    region, state = PlainRegion(atlas=prior), LabelState((), "v", path)
    state.fg = [first, edge]
    assert region.atlas_for(volume, False, state).ids == (superior_temporal,)
    state.fg = [first, edge, far]
    grown = region.atlas_for(volume, False, state)
    assert grown.ids == (superior_temporal, inferior_temporal) and grown.seen == 3
    assert _dice(_full(grown, ids.shape), np.isin(ids, grown.ids)) > 0.8
    # a click outside the cortex adds nothing; fewer clicks (a new label's) start again from the first
    state.fg = [first, edge, far, _deepest(ids == L_THALAMUS)]
    assert region.atlas_for(volume, False, state).ids == grown.ids
    state.fg = [first]
    assert region.atlas_for(volume, False, state).ids == (superior_temporal,)
    # without grow_mm, the parcel stays one parcel
    state = LabelState((), "v", path)
    state.fg = [first, far]
    assert PlainRegion(atlas=AtlasPrior(AtlasParams(wait=True, cortex=True), fits)).atlas_for(
        volume, False, state).ids == (superior_temporal,)
    assert insula in BrainAtlas().cortex and L_THALAMUS not in BrainAtlas().cortex
    # whole_after parcels clicked: the whole cortex of their hemisphere (the 34 left parcels), the clicked one last
    whole = PlainRegion(atlas=AtlasPrior(AtlasParams(wait=True, cortex=True, grow_mm=3.0, whole_after=2), fits))
    state = LabelState((), "v", path)
    state.fg = [first, far]
    grown = whole.atlas_for(volume, False, state)
    assert sorted(grown.ids) == list(range(1, 35)) and grown.ids[-1] == inferior_temporal
    assert _dice(_full(grown, ids.shape), (ids >= 1) & (ids <= 34)) > 0.8


def test_a_tumour_filling_a_nucleus_is_not_answered_by_the_nucleus(brain, tmp_path):
    """A dark tumour (0.45 of the white matter) over the thalamus: the intensity guard alone lets the click through
    (the warped nucleus's spread is then the tumour's); the lesion check (the default) does not."""
    path, ids, fits = brain
    image = sitk.ReadImage(path)
    t1 = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    click = _deepest(ids == L_THALAMUS)
    ball = np.sqrt(((np.indices(t1.shape) - np.array(click)[:, None, None, None]) ** 2).sum(0)) <= 6  # 12 mm
    white = np.median(t1[t1 > np.percentile(t1[t1 > 0], 60)])
    out = sitk.GetImageFromArray(np.where(ball, 0.45 * white, t1).transpose(2, 1, 0).astype(np.int16))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(tmp_path / "tumour.nii.gz"))
    tumour = load_volume(str(tmp_path / "tumour.nii.gz"))
    assert AtlasParams().lesion_wm > 0
    assert AtlasPrior(AtlasParams(wait=True, lesion_wm=0.0), fits).nucleus(tumour, False, click) is not None
    assert AtlasPrior(AtlasParams(wait=True), fits).nucleus(tumour, False, click) is None
    assert AtlasPrior(AtlasParams(wait=True), fits).nucleus(load_volume(path), False, click) is not None


def test_a_large_structures_later_click_is_solved_near_it_and_agrees_with_the_whole_solve(brain, monkeypatch):
    import lib.session.atlas_prior as ap

    path, ids, fits = brain
    volume = load_volume(path)
    monkeypatch.setattr(ap, "LOCAL_ABOVE", 0)  # the 2 mm test brain's cortex is under the served 1e6-voxel bar
    prior = AtlasPrior(AtlasParams(wait=True, cortex=True, grow_mm=3.0, whole_after=2), fits)
    fg = [_deepest(ids == 29), _deepest(ids == 8)]  # superior then inferior temporal: the whole left cortex
    cortex = prior.grow(volume, False, prior.nucleus(volume, False, fg[0]), fg)
    assert len(cortex.ids) == 34
    before, _ = prior.answer(volume, False, fg, [], cortex)  # the whole band, kept for the next click
    third = [fg + [_deepest(ids == 22)], []], [fg, [_deepest(ids == 24)]]  # an include click, or an exclude click
    for clicks_fg, clicks_bg in third:
        click = (clicks_fg + clicks_bg)[-1] if clicks_bg else clicks_fg[-1]
        local, box = prior.answer(volume, False, clicks_fg, clicks_bg, cortex)
        whole, _ = band_region(volume, False, cortex, clicks_fg, clicks_bg, prior.params)
        near = np.zeros(ids.shape, bool)
        reach = int(np.ceil(LOCAL_MM / 2.0))  # 2 mm voxels
        near[tuple(slice(max(c - reach, 0), c + reach + 1) for c in click)] = True
        np.testing.assert_array_equal(local[~near], before[~near])  # only the click's box is solved again
        assert _dice(local[near], whole[near]) > 0.95  # and there it is the whole solve's answer
        assert not np.array_equal(local, before)


def test_a_lesion_by_the_cortex_is_not_answered_by_a_parcel(brain, tmp_path):
    """Oedema (0.72 of the white matter's intensity, like cortex on a T1) painted over white matter beside a parcel:
    without the lesion check the click snaps to the parcel; with it, the atlas does not answer."""
    from scipy import ndimage

    path, ids, fits = brain
    image = sitk.ReadImage(path)
    t1 = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    cortex = (ids >= 1) & (ids <= 34)
    white = (t1 > np.percentile(t1[t1 > 0], 60)) & (ids == 0)
    deep_white = ndimage.binary_erosion(white, iterations=3)  # a click with white matter all around (2 mm voxels)
    beside = deep_white & ndimage.binary_dilation(cortex, iterations=4)  # ... and a parcel within 8 mm
    click = np.argwhere(beside)[len(np.argwhere(beside)) // 2].tolist()
    params = dict(wait=True, cortex=True, snap_mm=10.0, guard=1e6)  # the intensity guard aside: the check alone
    volume = load_volume(path)
    assert AtlasPrior(AtlasParams(**params), fits).nucleus(volume, False, click) is not None  # snapped: no lesion
    ball = np.sqrt(((np.indices(t1.shape) - np.array(click)[:, None, None, None]) ** 2).sum(0)) <= 6  # 12 mm
    painted = np.where(ball, 0.72 * np.median(t1[white]), t1)
    out = sitk.GetImageFromArray(painted.transpose(2, 1, 0).astype(np.int16))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(tmp_path / "oedema.nii.gz"))
    oedema = load_volume(str(tmp_path / "oedema.nii.gz"))
    assert AtlasPrior(AtlasParams(**params, lesion_wm=0.0), fits).nucleus(oedema, False, click) is not None  # no check
    assert AtlasPrior(AtlasParams(**params, lesion_wm=0.3), fits).nucleus(oedema, False, click) is None
    assert AtlasPrior(AtlasParams(**params, lesion_wm=0.3), fits).nucleus(volume, False, click) is not None


def test_the_engine_answers_a_labels_clicks_with_the_atlas_once_its_first_click_names_a_nucleus(brain):
    from lib.session import SegmentationEngine
    from test_flood_region import _prior_only_model

    path, ids, fits = brain
    volume, atlas = load_volume(path), AtlasPrior(AtlasParams(wait=True), fits)
    engine = SegmentationEngine(_prior_only_model(margin=7), "v", click_mode="all", max_crops=2,
                                region=PlainRegion(atlas=atlas))
    first = [_deepest(ids == L_THALAMUS)]
    nucleus = atlas.nucleus(volume, False, first[0])
    got = engine.segment("b", path, "thalamus", first, [], modality="MR").mask
    np.testing.assert_array_equal(got, _full(nucleus, ids.shape))
    exclude = [[first[0][0] + 4, first[0][1], first[0][2]]]
    got = engine.segment("b", path, "thalamus", first, exclude, modality="MR").mask
    np.testing.assert_array_equal(got, band_region(volume, False, nucleus, first, exclude, atlas.params)[0])
    # the same click served as CT, or a click outside every nucleus: the plain region's answer as before
    plain = PlainRegion()
    assert not np.array_equal(engine.segment("b", path, "ct", first, [], modality="CT").mask, _full(nucleus, ids.shape))
    white = np.argwhere(ids == 0)[len(np.argwhere(ids == 0)) // 2].tolist()
    np.testing.assert_array_equal(
        engine.segment("b", path, "other", [white], [], modality="MR").mask,
        SegmentationEngine(_prior_only_model(margin=7), "v", click_mode="all", max_crops=2,
                           region=plain).segment("b", path, "other", [white], [], modality="MR").mask)


def test_the_switch_and_the_config():
    config = {"plain_region": "geodesic", "atlas_prior": {"guard": 1.5}}
    region = resolve_region("auto", config)
    assert region.atlas.params == AtlasParams(guard=1.5, wait=True)
    assert resolve_region("auto", config, atlas="off").atlas is None
    assert resolve_region("auto", config, atlas_wait=False).atlas.params.wait is False
    with pytest.raises(ValueError, match="atlas_prior must be one of auto, off"):
        resolve_region("auto", config, atlas="on")
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_region("auto", {"plain_region": "geodesic", "atlas_prior": {"gaurd": 1.5}})
    from lib.model import CLICK_UNET_CONFIG, build_model

    with pytest.raises(ValueError, match="needs plain_region"):
        build_model({**CLICK_UNET_CONFIG, "atlas_prior": {}})
    assert build_model({**CLICK_UNET_CONFIG, "plain_region": "geodesic", "atlas_prior": {}}).config["atlas_prior"] == {}


def test_the_next_images_fit_is_started_ahead_for_mr_only(brain):
    from lib.session.atlas_prior import prefit
    from lib.session.volume_cache import VolumeCache

    path, _, _ = brain
    fits, volumes = AtlasFits(), VolumeCache()
    region = PlainRegion(atlas=AtlasPrior(AtlasParams(), fits))
    assert prefit(PlainRegion(), volumes, path) is None  # no atlas prior: nothing to start
    prefit(region, volumes, path, modality="CT").result()
    assert not fits._fits  # a CT is never fitted
    prefit(region, volumes, path).result()
    key = load_volume(path).file_key
    assert key in fits._fits and fits._fits[key].result().ncc > 0.9


def test_through_the_server_a_thalamus_click_gets_the_thalamus_and_info_says_so(brain, tmp_path):
    """A real `monailabel start_server` with the default model (default-v15), driven by the Slicer plugin's client."""
    import os
    import shutil
    import sys

    from monailabel.client import MONAILabelClient

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    from local_server import LocalServer

    path, ids, _ = brain
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(path, studies / "brain.nii.gz")
    click = _deepest(ids == L_THALAMUS)
    with LocalServer(str(studies), {"atlas_wait": "true"}) as server:
        client = MONAILabelClient(server.url)
        weights = client.info()["weights"]
        if weights["source"] != "default":
            pytest.skip("a released SAM-Med3D file is installed: the default model is not served")
        assert "atlas prior" in weights["plain_region"] and "waits" in weights["plain_region"]
        label_file, res = client.infer("sammed3d", "brain", {"label": "thalamus", "foreground": [click]})
        got = sitk.GetArrayFromImage(sitk.ReadImage(label_file)).transpose(2, 1, 0) > 0
        assert _dice(got, ids == L_THALAMUS) > 0.85
        # an exclude click on the same label: the band moves the boundary, the server keeps serving
        inside = np.argwhere(got)
        edge = inside[np.argmax(inside[:, 0])].tolist()
        label_file, res = client.infer("sammed3d", "brain", {"label": "thalamus", "foreground": [click],
                                                              "background": [edge]})
        after = sitk.GetArrayFromImage(sitk.ReadImage(label_file)).transpose(2, 1, 0) > 0
        assert not after[tuple(edge)] and after[tuple(click)] and _dice(after, got) > 0.8
        # default-v14 reads a click deep in white matter as its hemisphere's white matter
        assert "white matter" in weights["plain_region"]
        atlas = BrainAtlas()
        white_image = sitk.GetImageFromArray(atlas.white)
        white_image.CopyInformation(atlas.ids)
        white = sitk.GetArrayFromImage(_moved(atlas, white_image)).transpose(2, 1, 0)
        label_file, _ = client.infer("sammed3d", "brain", {"label": "white matter",
                                                            "foreground": [_deepest(white == 1)]})
        got = sitk.GetArrayFromImage(sitk.ReadImage(label_file)).transpose(2, 1, 0) > 0
        assert _dice(got, white == 1) > 0.8
        # default-v15: a second include click in a cortical parcel apart from the first's gets the hemisphere's cortex
        assert "hemispheres' cortex" in weights["plain_region"]
        names = {name: i for i, name in atlas.cortex.items()}
        first, far = (_deepest(ids == names[n]) for n in ("L superiortemporal", "L inferiortemporal"))
        label_file, _ = client.infer("sammed3d", "brain", {"label": "cortex", "foreground": [first]})
        one = sitk.GetArrayFromImage(sitk.ReadImage(label_file)).transpose(2, 1, 0) > 0
        label_file, _ = client.infer("sammed3d", "brain", {"label": "cortex", "foreground": [first, far]})
        got = sitk.GetArrayFromImage(sitk.ReadImage(label_file)).transpose(2, 1, 0) > 0
        left = np.isin(ids, [i for n, i in names.items() if n.startswith("L")])
        assert got[one].all() and _dice(got, left) > 0.6 > _dice(one, left)


def test_a_click_in_white_matter_gets_its_hemispheres_and_one_in_the_other_hemisphere_adds_that(brain, tmp_path):
    """The white matter reading (off by default): the moved template's own cerebral white matter per side
    (BrainAtlas.white, cerebellum and brainstem apart) is the ground truth; lesions by the click are not answered."""
    from lib.session.state import LabelState
    from lib.session.white_matter import WM_IDS

    path, ids, fits = brain
    atlas, volume = BrainAtlas(), load_volume(path)
    white_image = sitk.GetImageFromArray(atlas.white)
    white_image.CopyInformation(atlas.ids)
    white = sitk.GetArrayFromImage(_moved(atlas, white_image)).transpose(2, 1, 0)
    left, right = _deepest(white == 1), _deepest(white == 2)
    assert AtlasPrior(AtlasParams(wait=True), fits).nucleus(volume, False, left) is None  # off by default
    prior = AtlasPrior(AtlasParams(wait=True, white_matter=True), fits)
    assert prior.nucleus(volume, True, left) is None  # CT
    assert AtlasPrior(AtlasParams(wait=True, white_matter=True), _negated(fits)).nucleus(
        volume, False, left) is None  # not a T1's contrast: the white matter is not the brightest tissue
    first = prior.nucleus(volume, False, left)
    assert first.ids == (WM_IDS[1],) and first.seen == 1
    shown = _full(first, ids.shape).astype(bool)
    assert _dice(shown, white == 1) > 0.8 and (shown & (white == 2)).sum() < 0.01 * shown.sum()  # one side
    nuclei = np.isin(ids, [L_THALAMUS, L_PUTAMEN])
    assert (shown & nuclei).sum() < 0.1 * nuclei.sum()  # deep nuclei are not white matter (an affine fit's edge)
    # a later include click inside changes nothing here (the band moves its edge); one in the other side adds it
    region, state = PlainRegion(atlas=prior), LabelState((), "v", path)
    inside = np.argwhere(shown & (white == 1))[len(np.argwhere(shown)) // 3].tolist()
    state.fg = [left, inside]
    np.testing.assert_array_equal(region.atlas_for(volume, False, state).piece, first.piece)
    job = prior.prefetch_white(volume, False, state.atlas)  # what PlainRegion.ahead starts once an answer is out
    assert job is not None and job.result() is not None  # the other hemisphere's white matter pieces, made ahead
    state.fg = [left, inside, right]
    both = region.atlas_for(volume, False, state)
    assert both.ids == (WM_IDS[1], WM_IDS[2]) and both.seen == 3 and both.as_is == (3, 0)
    assert prior.prefetch_white(volume, False, both) is None  # both sides: nothing more to make
    alone = PlainRegion(atlas=AtlasPrior(AtlasParams(wait=True, white_matter=True), fits)).atlas_for(
        volume, False, LabelState((), "v", path, fg=[left, inside, right]))  # nothing made ahead: the same answer
    np.testing.assert_array_equal(alone.piece, both.piece)
    assert _dice(_full(both, ids.shape), white > 0) > 0.8
    mask, _ = prior.answer(volume, False, state.fg, [], both)  # the growing click: the grown piece itself (no band)
    np.testing.assert_array_equal(mask, _full(both, ids.shape))
    # a bright nodule (1.35 of the white matter) or dark oedema (0.72) under the click: no white matter answer; the
    # white matter's own brightest voxels (its 99.5th percentile, over 2 robust spreads above its median) are answered
    t1 = sitk.GetArrayFromImage(sitk.ReadImage(path)).transpose(2, 1, 0).astype(np.float32)
    ball = np.sqrt(((np.indices(t1.shape) - np.array(left)[:, None, None, None]) ** 2).sum(0)) <= 2  # 4 mm
    values = t1[white == 1]
    level = np.median(values)
    bright = np.percentile(values, 99.5)
    assert bright > level + 2 * 1.4826 * np.median(np.abs(values - level))
    for name, value, answered in (("nodule", 1.35 * level, False), ("oedema", 0.72 * level, False),
                                  ("bright_white", bright, True)):
        out = sitk.GetImageFromArray(np.where(ball, value, t1).transpose(2, 1, 0).astype(np.int16))
        out.CopyInformation(volume.image)
        sitk.WriteImage(out, str(tmp_path / f"{name}.nii.gz"))
        assert (prior.nucleus(load_volume(str(tmp_path / f"{name}.nii.gz")), False, left) is not None) == answered, name


def test_a_large_white_matter_answer_makes_its_band_seeds_ahead_and_its_next_click_is_solved_near_it(brain, monkeypatch):
    """After a large piece's first answer (the hemisphere's white matter), the band's seeds for its next click are made
    on a background thread, and that click is solved within LOCAL_MM of it, the rest kept as first shown."""
    from scipy import ndimage

    import lib.session.atlas_band as band
    import lib.session.atlas_prior as ap
    from lib.util import process_threads

    path, ids, fits = brain
    atlas, volume = BrainAtlas(), load_volume(path)
    monkeypatch.setattr(ap, "LOCAL_ABOVE", 0)  # the 2 mm test brain's hemisphere is under the served 1e6-voxel bar
    white_image = sitk.GetImageFromArray(atlas.white)
    white_image.CopyInformation(atlas.ids)
    white = sitk.GetArrayFromImage(_moved(atlas, white_image)).transpose(2, 1, 0)
    left = _deepest(white == 1)
    prior = AtlasPrior(AtlasParams(wait=True, white_matter=True), fits)
    piece = prior.nucleus(volume, False, left)
    first, _ = prior.answer(volume, False, [left], [], piece)
    np.testing.assert_array_equal(first, _full(piece, ids.shape))
    process_threads("atlas-band", 1).submit(lambda: None).result()  # the prefetch has run
    assert any(hit[0] is piece.piece and hit[1].done() for hit in band._SEEDS.values())
    shown = first.astype(bool)
    edge = np.argwhere(shown & ~ndimage.binary_erosion(shown))[0].tolist()  # an exclude click on its edge
    second, _ = prior.answer(volume, False, [left], [edge], piece)
    near = np.zeros(ids.shape, bool)
    reach = int(np.ceil(LOCAL_MM / 2.0))  # 2 mm voxels
    near[tuple(slice(max(c - reach, 0), c + reach + 1) for c in edge)] = True
    np.testing.assert_array_equal(second[~near], first[~near])
    assert not second[tuple(edge)] and not np.array_equal(second, first)


def test_include_clicks_in_parcels_that_do_not_touch_mean_the_whole_cortex_of_their_hemispheres(brain, tmp_path):
    """The whole cortex reading (`whole_cortex_mm`): a label whose first click the atlas did not answer (a click in
    cortex may mean a gyrus) becomes its hemisphere's cortex, the volume's own grey matter, when a later include click
    lies in a parcel that does not touch the earlier ones'; a click in the other hemisphere's cortex adds that one."""
    from lib.session.state import LabelState

    path, ids, fits = brain
    volume = load_volume(path)
    names = {name: i for i, name in BrainAtlas().cortex.items()}
    first, touching, far, right = (_deepest(ids == names[n]) for n in (
        "L superiortemporal", "L insula", "L inferiortemporal", "R superiortemporal"))
    prior = AtlasPrior(AtlasParams(wait=True, whole_cortex_mm=2.0, snap_mm=3.0), fits)
    region, state = PlainRegion(atlas=prior), LabelState((), "v", path)
    for fg in ([first], [first, touching]):  # one click, or clicks in touching parcels: a gyrus's, the image answers
        state.fg = fg
        assert region.atlas_for(volume, False, state) is None
    state.fg, state.bg = [first, touching, far], [[0, 0, 0]]
    whole = region.atlas_for(volume, False, state)
    left = [i for n, i in names.items() if n.startswith("L")]
    assert sorted(whole.ids) == sorted(left) and whole.seen == 3 and whole.as_is == (3, 1)
    got = _full(whole, ids.shape).astype(bool)
    assert _dice(got, np.isin(ids, left)) > 0.7 and all(got[tuple(p)] for p in (first, far))
    assert (got & np.isin(ids, [i for i in names.values() if i not in left])).sum() < 0.01 * got.sum()  # not the right
    state.fg = [first, touching, far, right]
    both = region.atlas_for(volume, False, state)
    assert sorted(both.ids) == sorted(names.values()) and both.as_is == (4, 1)
    assert _dice(_full(both, ids.shape), np.isin(ids, list(names.values()))) > 0.7
    state.fg = [first, touching]  # an undo: the reading goes with the click that made it
    assert region.atlas_for(volume, False, state) is None
    assert PlainRegion(atlas=AtlasPrior(AtlasParams(wait=True, snap_mm=3.0), fits)).atlas_for(
        volume, False, LabelState((), "v", path, fg=[first, touching, far])) is None  # off by default
    # a fit that correlates negatively (a contrast unlike the template's T1): the grey matter's boundaries do not hold
    inverted = AtlasPrior(AtlasParams(wait=True, whole_cortex_mm=2.0, snap_mm=3.0), _negated(fits))
    assert inverted.whole_cortex(volume, False, [first, far], []) is None and inverted.prefetch_cortex(
        volume, False, first) is None
    # a dark lesion (necrosis) under the far click: not grey matter, no reading
    image = sitk.ReadImage(path)
    t1 = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    ball = np.sqrt(((np.indices(t1.shape) - np.array(far)[:, None, None, None]) ** 2).sum(0)) <= 4
    out = sitk.GetImageFromArray(np.where(ball, 0.3 * np.percentile(t1[t1 > 0], 80), t1).transpose(2, 1, 0).astype(
        np.int16))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(tmp_path / "necrosis.nii.gz"))
    assert PlainRegion(atlas=prior).atlas_for(load_volume(str(tmp_path / "necrosis.nii.gz")), False, LabelState(
        (), "v", path, fg=[first, touching, far])) is None


def test_the_engine_adds_the_whole_cortex_to_the_shown_mask_at_the_click_that_asks_for_it(brain):
    from lib.session import SegmentationEngine
    from lib.session.local_update import LocalUpdate
    from lib.session.state import LabelState
    from test_flood_region import _prior_only_model

    path, ids, fits = brain
    names = {name: i for i, name in BrainAtlas().cortex.items()}
    first, far = (_deepest(ids == names[n]) for n in ("L superiortemporal", "L inferiortemporal"))
    prior = AtlasPrior(AtlasParams(wait=True, whole_cortex_mm=2.0, snap_mm=3.0), fits)
    engine = SegmentationEngine(_prior_only_model(margin=7), "v", click_mode="all", max_crops=2,
                                region=PlainRegion(atlas=prior, merge=True), local=LocalUpdate("piece"))
    one = engine.segment("b", path, "cortex", [first], [], modality="MR").mask.astype(bool)
    jobs = list(prior._pieces._jobs.values())  # the first click's hemisphere's cortex, begun behind its answer
    assert len(jobs) == 1 and jobs[0][1].result() is not None
    two = engine.segment("b", path, "cortex", [first, far], [], modality="MR").mask.astype(bool)
    assert list(prior._pieces._jobs.values()) == jobs  # the click asking for it found it made
    whole = _full(PlainRegion(atlas=prior).atlas_for(load_volume(path), False, LabelState(
        (), "v", path, fg=[first, far])), ids.shape).astype(bool)
    assert two[one].all()  # an include click only adds: the first answer stays
    assert (two & whole).sum() > 0.9 * whole.sum() and two.sum() > 5 * one.sum()  # the cortex's piece at the click
