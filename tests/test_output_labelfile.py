"""The fast label-file writer (lib.session.labelfile) against SimpleITK's own writer.

Every file must be what SimpleITK writes for the same mask and reference: the same header bytes,
the same voxel bytes once decompressed, a valid gzip member (CRC-32 and length checked by Python's
gzip), and the same voxels and grid when read back by SimpleITK and nibabel.
"""
import gzip
import os
import zlib

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from lib.infers.output import write_label
from lib.infers.request import DTYPES, parse_request
from lib.session import SegmentationResult, labelfile
from lib.session.labelfile import CHUNK, crc32_zeros, nonzero_box, write_label_file

FORMATS = [(".nii.gz", True), (".nii", False), (".nrrd", False), (".nrrd", True), (".seg.nrrd", True)]


def _reference(tmp_path, shape, oblique=True, name="ref.nii.gz"):
    img = sitk.GetImageFromArray(np.zeros(shape[::-1], np.int16))
    img.SetSpacing((0.7, 0.9, 5.0))
    img.SetOrigin((-12.5, 30.25, 7.0))
    if oblique:
        a = np.deg2rad(17.0)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.diag([-1, 1, 1])
        img.SetDirection(tuple(rot.ravel()))
    path = str(tmp_path / name)
    sitk.WriteImage(img, path)
    return path, sitk.ReadImage(path)  # the grid as stored in the file (NIfTI keeps float32)


def _geometry(img):
    return img.GetOrigin(), img.GetSpacing(), img.GetDirection()


def _masks(shape, seed=0):
    rng = np.random.default_rng(seed)
    out = {"empty": np.zeros(shape, np.uint8), "full": np.ones(shape, np.uint8)}
    corners = np.zeros(shape, np.uint8)
    corners[0, 0, 0] = corners[-1, -1, -1] = 1
    out["corners"] = corners
    blob = np.zeros(shape, np.uint8)
    sl = tuple(slice(n // 4, max(n // 4 + 1, 3 * n // 4)) for n in shape)
    blob[sl] = rng.random(blob[sl].shape) < 0.6
    out["blob"] = blob
    sparse = (rng.random(shape) < 0.001).astype(np.uint8)
    out["sparse"] = sparse
    return out


def _sitk_file(mask, path, ref, dtype, compress):
    """The previous path: SimpleITK writes the uint8 mask on the reference's header grid (what the
    session's write_mask did before it used the fast writer), then the dtype cast output.py did."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(ref)
    reader.ReadImageInformation()
    img = sitk.GetImageFromArray(np.ascontiguousarray(mask.astype(np.uint8, copy=False).transpose(2, 1, 0)))
    img.SetOrigin(reader.GetOrigin())
    img.SetSpacing(reader.GetSpacing())
    img.SetDirection(reader.GetDirection())
    sitk.WriteImage(img, path, compress and not path.lower().endswith(".nii"))
    if np.dtype(dtype) != np.uint8:
        img = sitk.ReadImage(path)
        cast = sitk.GetImageFromArray(sitk.GetArrayFromImage(img).astype(dtype))
        cast.CopyInformation(img)
        sitk.WriteImage(cast, path, compress and not path.endswith(".nii"))
    return path


def _split(raw: bytes, ext: str, compress: bool):
    """(header, voxel bytes) of a file, decompressing (and so CRC-checking) what is gzipped."""
    if ext == ".nii.gz":
        data = gzip.decompress(raw)
        vox = int(np.frombuffer(data[108:112], "<f4")[0])
        return data[:vox], data[vox:]
    if ext == ".nii":
        vox = int(np.frombuffer(raw[108:112], "<f4")[0])
        return raw[:vox], raw[vox:]
    end = raw.index(b"\n\n") + 2
    return raw[:end], (gzip.decompress(raw[end:]) if compress else raw[end:])


@pytest.mark.parametrize("shape", [(67, 45, 13), (128, 96, 9)])
@pytest.mark.parametrize("ext, compress", FORMATS)
def test_same_file_contents_as_simpleitk(tmp_path, shape, ext, compress):
    ref, img = _reference(tmp_path, shape)
    for name, mask in _masks(shape).items():
        a = _sitk_file(mask, str(tmp_path / f"old_{name}{ext}"), ref, np.uint8, compress)
        b = write_label_file(mask, str(tmp_path / f"new_{name}{ext}"), _geometry(img), compress=compress)
        ha, da = _split(open(a, "rb").read(), ext, compress)
        hb, db = _split(open(b, "rb").read(), ext, compress)
        assert hb == ha, f"{name}: header differs"
        assert db == da, f"{name}: voxel bytes differ"
        back, old = sitk.ReadImage(b), sitk.ReadImage(a)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back).transpose(2, 1, 0), mask)
        assert back.GetPixelID() == sitk.sitkUInt8
        assert (back.GetOrigin(), back.GetSpacing(), back.GetDirection()) == \
            (old.GetOrigin(), old.GetSpacing(), old.GetDirection())
        np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-6)  # the reference grid
        np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-6)
        if ext.startswith(".nii"):
            n = nib.load(b)
            np.testing.assert_array_equal(np.asarray(n.dataobj), mask)
            np.testing.assert_array_equal(n.affine, nib.load(a).affine)
            assert n.header.binaryblock == nib.load(a).header.binaryblock


@pytest.mark.parametrize("dtype", ["int16", "float32", "uint32"])
@pytest.mark.parametrize("ext, compress", [(".nii.gz", True), (".nrrd", False), (".seg.nrrd", True)])
def test_other_dtypes_as_before(tmp_path, dtype, ext, compress):
    shape = (40, 33, 7)
    ref, img = _reference(tmp_path, shape, oblique=False)
    mask = _masks(shape, seed=3)["blob"]
    b = write_label_file(mask, str(tmp_path / f"new{ext}"), _geometry(img), dtype=DTYPES[dtype], compress=compress)
    # SimpleITK writing the cast mask on the reference grid: the same file contents
    direct = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(DTYPES[dtype]))
    direct.CopyInformation(img)
    a = str(tmp_path / f"direct{ext}")
    sitk.WriteImage(direct, a, compress and ext != ".nii")
    assert _split(open(a, "rb").read(), ext, compress) == _split(open(b, "rb").read(), ext, compress)
    back = sitk.ReadImage(b)
    assert sitk.GetArrayFromImage(back).dtype == np.dtype(dtype)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back).transpose(2, 1, 0), mask)
    # the previous path (uint8 file, read back, cast, rewritten): same voxels; its NRRD text round
    # trip moved the spacing in the 17th digit, the new file keeps the reference's value exactly
    old = sitk.ReadImage(_sitk_file(mask, str(tmp_path / f"old{ext}"), ref, DTYPES[dtype], compress))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(old), sitk.GetArrayFromImage(back))
    assert old.GetPixelID() == back.GetPixelID()
    np.testing.assert_allclose(old.GetSpacing(), back.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(old.GetOrigin(), back.GetOrigin(), rtol=1e-12)
    assert back.GetSpacing() == img.GetSpacing() and back.GetOrigin() == img.GetOrigin()


def test_large_volume_spans_many_chunks(tmp_path):
    """A CT-sized grid: the mask box crosses chunk boundaries, most chunks are spliced zero pieces."""
    shape = (256, 256, 40)
    ref, img = _reference(tmp_path, shape)
    mask = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(7)
    mask[70:190, 60:200, 5:31] = rng.random((120, 140, 26)) < 0.5
    assert shape[0] * shape[1] * shape[2] > 40 * CHUNK
    for ext, compress in FORMATS:
        a = _sitk_file(mask, str(tmp_path / f"old{ext}"), ref, np.uint8, compress)
        b = write_label_file(mask, str(tmp_path / f"new{ext}"), _geometry(img), compress=compress)
        assert _split(open(a, "rb").read(), ext, compress) == _split(open(b, "rb").read(), ext, compress), ext
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(b)).transpose(2, 1, 0), mask)
    raw = open(str(tmp_path / "new.nii.gz"), "rb").read()
    assert zlib.decompressobj(31).decompress(raw) == gzip.decompress(raw)  # one member, zlib agrees


def test_a_wrong_voxel_would_be_caught(tmp_path):
    """The comparison above is not vacuous: one flipped voxel changes the decompressed bytes."""
    shape = (30, 20, 6)
    ref, img = _reference(tmp_path, shape)
    mask = _masks(shape)["blob"]
    a = _sitk_file(mask, str(tmp_path / "old.nii.gz"), ref, np.uint8, True)
    flipped = mask.copy()
    flipped[5, 6, 1] ^= 1
    b = write_label_file(flipped, str(tmp_path / "new.nii.gz"), _geometry(img))
    assert _split(open(a, "rb").read(), ".nii.gz", True)[1] != _split(open(b, "rb").read(), ".nii.gz", True)[1]


def test_crc32_of_zeros_matches_zlib():
    rng = np.random.default_rng(1)
    for n in [1, 2, 7, 255, 256, 4096, CHUNK - 1, CHUNK, 3 * CHUNK + 5, 1 << 20]:
        for crc in [0, 0xFFFFFFFF, int(rng.integers(0, 1 << 32))]:
            assert crc32_zeros(n, crc) == zlib.crc32(bytes(n), crc), (n, crc)
    assert crc32_zeros(0, 1234) == 1234


def test_nonzero_box():
    m = np.zeros((9, 8, 7), np.uint8)
    assert nonzero_box(m) is None
    m[2, 3, 4] = m[5, 1, 6] = 1
    assert nonzero_box(m) == (slice(2, 6), slice(1, 4), slice(4, 7))
    assert nonzero_box(m.astype(bool)) == (slice(2, 6), slice(1, 4), slice(4, 7))


def test_write_label_uses_the_fast_writer_and_the_switch(tmp_path, monkeypatch):
    shape = (48, 40, 10)
    ref, img = _reference(tmp_path, shape)
    mask = _masks(shape)["blob"]
    res = SegmentationResult(mask=mask, affine=np.eye(4))
    calls = []
    real = labelfile.write_label_file
    monkeypatch.setattr("lib.session.io.write_label_file", lambda *a, **k: calls.append(1) or real(*a, **k))
    outs = {}
    for writer in ("", "sitk"):
        monkeypatch.setenv("SAMMED3D_LABEL_WRITER", writer)
        for fmt in ({}, {"result_extension": ".nrrd", "result_compress": False}, {"result_dtype": "int16"}):
            opts = parse_request(dict({"image": ref}, **fmt))
            path = write_label(res, opts, ref)
            back = sitk.ReadImage(path)
            outs[(writer, str(fmt))] = (sitk.GetArrayFromImage(back), back.GetOrigin(), back.GetSpacing(),
                                        back.GetDirection(), back.GetPixelID())
            os.remove(path)
    assert len(calls) == 3  # the fast writer served every request without the switch, none with it
    for fmt in ({}, {"result_extension": ".nrrd", "result_compress": False}, {"result_dtype": "int16"}):
        new, old = outs[("", str(fmt))], outs[("sitk", str(fmt))]
        np.testing.assert_array_equal(new[0], old[0])
        assert new[1:] == old[1:]
