"""First-click levers (issue 17): each gives what the previous path gave, array for array.

* lib/session/niftigz.py: a large .nii.gz inflated by libdeflate -> the sitk.Image SimpleITK's
  ReadImage gives (voxels, pixel type, origin, spacing, direction), or None where it does not apply;
* LoadedVolume.intensity_min computed on first use -> SimpleITK's minimum, as before;
* preprocess.normalise with one output tensor -> the previous formula's values, bit for bit.
(A click already resamples only its crop; test_session_prepare compares that with the whole-grid resample.)
"""
from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

import lib.session.niftigz as niftigz
from lib.session.io import read_image
from lib.session.preprocess import CT_RANGE, normalise
from lib.session.volume import is_ct, load_volume

needs_libdeflate = pytest.mark.skipif(not niftigz.available(), reason="no libdeflate on this system")


@pytest.fixture(autouse=True)
def small_files(monkeypatch):
    """Tests use small volumes: let the fast path take them."""
    monkeypatch.setattr(niftigz, "MIN_BYTES", 0)
    monkeypatch.delenv("SAMMED3D_VOLUME_READER", raising=False)


def _nifti(path, data, affine=None, slope=None, big_endian=False) -> str:
    img = nib.Nifti1Image(data, np.diag([-0.8, -0.9, 2.5, 1.0]) if affine is None else affine)
    if slope is not None:
        img.header.set_slope_inter(*slope)
    if big_endian:
        img = nib.Nifti1Image(data, img.affine, img.header.as_byteswapped(">"))
    nib.save(img, str(path))
    return str(path)


def _same(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetPixelID() == b.GetPixelID()
    assert a.GetSize() == b.GetSize()
    assert (a.GetOrigin(), a.GetSpacing(), a.GetDirection()) == (b.GetOrigin(), b.GetSpacing(), b.GetDirection())
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


def _oblique() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    a = np.eye(4)
    a[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.7, 0.8, 3.0])
    a[:3, 3] = (12.5, -40.0, 7.0)
    return a


@needs_libdeflate
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.uint16, np.int32, np.float64, np.int8])
@pytest.mark.parametrize("oblique", [False, True])
def test_fast_read_is_simpleitks_image(tmp_path, dtype, oblique):
    rng = np.random.default_rng(0)
    data = rng.normal(0, 50, (37, 29, 11)).astype(dtype)
    path = _nifti(tmp_path / "v.nii.gz", data, _oblique() if oblique else None)
    fast = niftigz.read_nifti_gz(path)
    assert fast is not None
    _same(fast, sitk.ReadImage(path))


@needs_libdeflate
def test_fast_read_big_endian_and_unit_slope(tmp_path):
    data = np.arange(20 * 13 * 7, dtype=np.int16).reshape(20, 13, 7) - 900
    for name, kw in (("be", {"big_endian": True}), ("one", {"slope": (1.0, 0.0)})):
        path = _nifti(tmp_path / f"{name}.nii.gz", data, **kw)
        fast = niftigz.read_nifti_gz(path)
        assert fast is not None, name
        _same(fast, sitk.ReadImage(path))


@needs_libdeflate
def test_read_image_and_load_volume_take_the_fast_path(tmp_path, monkeypatch):
    data = np.random.default_rng(1).integers(-1024, 1500, (40, 33, 12)).astype(np.int16)
    path = _nifti(tmp_path / "ct.nii.gz", data, _oblique())
    calls = []
    real = niftigz.read_nifti_gz
    monkeypatch.setattr("lib.session.io.read_nifti_gz", lambda p: calls.append(p) or real(p))
    image, modality = read_image(path)
    assert calls == [path] and modality is None
    _same(image, sitk.ReadImage(path))
    vol = load_volume(path)
    assert vol.intensity_min == float(data.min())
    assert is_ct(vol, None)


@pytest.mark.parametrize("case", ["scaled", "offset", "4d", "nii", "two_members", "small", "env", "corrupt"])
def test_fast_read_declines(tmp_path, monkeypatch, case):
    """Where SimpleITK's reader must decide, the fast path returns None (read_image still reads it)."""
    data = np.arange(16 * 12 * 6, dtype=np.int16).reshape(16, 12, 6)
    path = str(tmp_path / ("v.nii" if case == "nii" else "v.nii.gz"))
    if case == "scaled":
        _nifti(path, data, slope=(2.0, 0.0))
    elif case == "offset":
        _nifti(path, data, slope=(1.0, -1024.0))
    elif case == "4d":
        _nifti(path, data[..., None].repeat(2, axis=3))
    else:
        _nifti(path, data)
    if case == "two_members":
        raw = gzip.decompress(open(path, "rb").read())
        with open(path, "wb") as f:
            f.write(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    if case == "small":
        monkeypatch.setattr(niftigz, "MIN_BYTES", os.path.getsize(path) + 1)
    if case == "env":
        monkeypatch.setenv("SAMMED3D_VOLUME_READER", "sitk")
    if case == "corrupt":
        raw = bytearray(open(path, "rb").read())
        raw[-8] ^= 0xFF  # CRC-32 of the gzip member
        open(path, "wb").write(bytes(raw))
    assert niftigz.read_nifti_gz(path) is None
    if case != "corrupt":
        _same(read_image(path)[0], sitk.ReadImage(path))


def test_lazy_intensity_min_is_simpleitks_minimum(tmp_path):
    data = np.random.default_rng(2).normal(-200, 300, (30, 20, 9)).astype(np.float32)
    vol = load_volume(_nifti(tmp_path / "f.nii.gz", data))
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(sitk.ReadImage(str(tmp_path / "f.nii.gz")))
    assert vol.intensity_min == float(stats.GetMinimum()) == float(data.min())


def _normalise_before(crop: np.ndarray, ct: bool) -> torch.Tensor:
    """preprocess.normalise as it was before issue 17 (the formula, line for line)."""
    t = torch.from_numpy(crop)
    if ct:
        t = t.clamp(*CT_RANGE)
    fg = t[t > 0]
    if fg.numel() < 2:
        fg = t.reshape(-1)
    mean = fg.mean()
    std = fg.std()
    if not torch.isfinite(std) or std < 1e-8:
        std = torch.ones((), dtype=t.dtype)
    return ((t - mean) / std)[None, None].contiguous()


@pytest.mark.parametrize("ct", [True, False])
@pytest.mark.parametrize("kind", ["ct", "positive", "air", "constant"])
def test_normalise_bit_for_bit(ct, kind):
    rng = np.random.default_rng(3)
    crop = {"ct": rng.normal(0, 700, (32, 24, 16)), "positive": rng.uniform(1, 5000, (32, 24, 16)),
            "air": np.full((32, 24, 16), -1000.0), "constant": np.full((32, 24, 16), 40.0)}[kind].astype(np.float32)
    keep = crop.copy()
    got, want = normalise(crop, ct), _normalise_before(crop.copy(), ct)
    assert np.array_equal(crop, keep)  # the caller's array is not changed
    assert got.shape == want.shape and got.dtype == want.dtype and got.is_contiguous()
    assert torch.equal(got, want)



def _quirk_bias_before(t1, t2, t3, real, last=None):
    """rel_pos.quirk_bias before issue 17, with attention3d's concatenation of the padded keys' column."""
    s = real
    bias = (t1[:, :, :, :, None, None, :s] + t2[:, :, :, None, :s, None, :s]
            + t3[:, :, :, None, None, :s, :s]).reshape(t1.shape[0], s**3, s**3)
    return bias if last is None else torch.cat([bias, last[..., None]], dim=-1)


@pytest.mark.parametrize("img_size", [64, 96])
def test_encoder_rel_pos_bias_without_copies_is_bit_for_bit(monkeypatch, img_size):
    """The fast encoder writes its rel-pos bias into one tensor: the embedding is the previous one, bit for bit
    (windowed blocks with padded keys and global blocks)."""
    import lib.model.attention3d as attention3d
    from lib.model.image_encoder import ImageEncoderViT3D

    torch.manual_seed(0)
    enc = ImageEncoderViT3D(img_size=img_size, embed_dim=96, depth=4, num_heads=4, out_chans=32, window_size=7,
                            global_attn_indexes=(1, 3)).eval()
    for blk in enc.blocks:  # zero-initialised tables would hide the bias
        for t in (blk.attn.rel_pos_d, blk.attn.rel_pos_h, blk.attn.rel_pos_w):
            torch.nn.init.normal_(t, std=0.5)
    x = torch.randn(1, 1, img_size, img_size, img_size)
    with torch.inference_mode():
        got = enc(x)
        monkeypatch.setattr(attention3d, "quirk_bias", _quirk_bias_before)
        want = enc(x)
    assert torch.equal(got, want)
