"""Label files written fast: the same file contents as SimpleITK writes, without compressing zeros.

A click's mask is zero outside a small box of a large volume (512x512x61 CT: 16 MB of voxels, the
structure in a few MB of them). SimpleITK's writer transposes the whole array into file order and
gzips all of it; that took 0.16 s of a 0.2 s repeat click. Here:

* The header comes from SimpleITK itself: it writes a 2x2x2 image with the reference's exact
  origin, spacing, direction and pixel type, and only the size fields are set to the mask's
  (NIfTI dim[1..3]; NRRD `sizes:`). Cached per reference file, size, dtype and format.
  tests/test_output_labelfile.py checks the headers equal the ones SimpleITK writes for the full
  image, byte for byte.
* The voxel data (file order: i fastest, then j, then k) is laid out in a zero buffer in chunks
  of CHUNK bytes; only the bounding box of the mask's non-zero voxels is copied (transposed) in.
* Compressed files (.nii.gz; .nrrd / .seg.nrrd with `encoding: gzip`) are one gzip member whose
  deflate stream is a sequence of byte-aligned pieces, each from its own compressor ended by a
  full flush (no back-reference crosses a piece): an all-zero chunk is a cached piece (computed
  once per length), a chunk with mask voxels is compressed (zlib, run-length strategy: binary
  masks are runs; two threads). The CRC-32 of the zero chunks is advanced arithmetically
  (zlib's crc32_combine algebra), the others by zlib.crc32. The file decompresses to exactly the
  bytes SimpleITK's file decompresses to; only the compressed bytes differ.
* Uncompressed files (.nii, raw .nrrd) are written with holes where whole chunks are zero
  (the file system returns zeros there), so only the box's chunks are written.

Formats and dtypes it does not handle (e.g. a NIfTI over 32767 voxels on an axis) go through
SimpleITK's writer, as does everything when SAMMED3D_LABEL_WRITER=sitk (for benchmarks).
"""
from __future__ import annotations

import os
import re
import struct
import tempfile
import threading
import zlib
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..util import process_threads

CHUNK = 1 << 15  # bytes of file-order voxel data per deflate piece / zero test
_LEVEL = 6  # with Z_RLE the level changes little; 6 is zlib's default
_STRATEGY = zlib.Z_RLE  # binary masks: runs of 0 and 1; ~4x faster than the default strategy, same size as level 6
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"  # deflate, no name, mtime 0, OS unix (as zlib's gzwrite)
_FINAL_BLOCK = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15).flush()  # an empty last block (b"\x03\x00")
_NIFTI_MAX_DIM = 32767


class UnsupportedLabelFile(Exception):
    """This writer does not handle the requested file; the caller falls back to SimpleITK."""


# ----------------------------------------------------------------------------- CRC-32 algebra
# zlib's crc32_combine (crc32.c, 1.2.12+): polynomials over GF(2) in reflected bit order.
_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC-32 polynomial."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> List[int]:
    t = [1 << 30]  # x^1
    for _ in range(31):
        t.append(_multmodp(t[-1], t[-1]))
    return t


_X2N = _x2n_table()
_SHIFT_CACHE: "OrderedDict[int, int]" = OrderedDict()


def _x8n(n: int) -> int:
    """x^(8 n) modulo the polynomial: the operator that appends n zero bytes (cached)."""
    p = _SHIFT_CACHE.get(n)
    if p is None:
        p, k, m = 1 << 31, 3, n
        while m:
            if m & 1:
                p = _multmodp(_X2N[k & 31], p)
            m >>= 1
            k += 1
        _SHIFT_CACHE[n] = p
        if len(_SHIFT_CACHE) > 256:
            _SHIFT_CACHE.popitem(last=False)
    return p


def crc32_zeros(n: int, crc: int = 0) -> int:
    """zlib.crc32(bytes(n), crc) without reading n bytes."""
    if n <= 0:
        return crc
    return _multmodp(_x8n(n), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


# ----------------------------------------------------------------------------- deflate pieces
_ZERO_PIECES: Dict[int, bytes] = {}
_ZERO_LOCK = threading.Lock()


def _deflate_piece(data) -> bytes:
    """Raw deflate of `data` from a fresh compressor, ended byte-aligned and not final."""
    c = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15, 9, _STRATEGY)
    return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)


def _zero_piece(n: int) -> bytes:
    piece = _ZERO_PIECES.get(n)
    if piece is None:
        piece = _deflate_piece(bytes(n))
        with _ZERO_LOCK:
            if len(_ZERO_PIECES) > 64:
                _ZERO_PIECES.clear()
            _ZERO_PIECES[n] = piece
    return piece


def _compress_runs(buf: memoryview, runs: Sequence[Tuple[int, int]]) -> List[bytes]:
    return [_deflate_piece(buf[a:b]) for a, b in runs]


# ----------------------------------------------------------------------------- headers
_HEADERS: "OrderedDict[tuple, bytes]" = OrderedDict()
_HEADER_LOCK = threading.Lock()


def _kind(path: str) -> str:
    lower = path.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    if lower.endswith(".nii"):
        return ".nii"
    if lower.endswith(".nrrd"):  # .seg.nrrd too: SimpleITK writes the same NRRD
        return ".seg.nrrd" if lower.endswith(".seg.nrrd") else ".nrrd"
    raise UnsupportedLabelFile(f"no fast writer for {os.path.basename(path)}")


def _tiny_header(kind: str, compress: bool, dtype: np.dtype, geometry) -> bytes:
    """The header SimpleITK writes for a 2x2x2 image of this geometry and pixel type."""
    origin, spacing, direction = geometry
    img = sitk.GetImageFromArray(np.zeros((2, 2, 2), dtype=dtype))
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    fd, tmp = tempfile.mkstemp(suffix=kind, prefix="sammed3d-header-")
    os.close(fd)
    try:
        sitk.WriteImage(img, tmp, compress and kind != ".nii")
        with open(tmp, "rb") as f:
            raw = f.read()
    finally:
        os.remove(tmp)
    if kind.startswith(".nii"):
        if kind == ".nii.gz":
            raw = zlib.decompress(raw, 16 + zlib.MAX_WBITS)
        if struct.unpack_from("<i", raw, 0)[0] != 348 or raw[344:348] != b"n+1\x00":
            raise UnsupportedLabelFile("SimpleITK wrote a NIfTI header this writer does not know")
        vox_offset = int(struct.unpack_from("<f", raw, 108)[0])
        if struct.unpack_from("<8h", raw, 40)[:4] != (3, 2, 2, 2) or len(raw) != vox_offset + 8 * dtype.itemsize:
            raise UnsupportedLabelFile("unexpected NIfTI layout from SimpleITK")
        return raw[:vox_offset]
    end = raw.find(b"\n\n")
    if end < 0 or not raw.startswith(b"NRRD"):
        raise UnsupportedLabelFile("SimpleITK wrote an NRRD header this writer does not know")
    header = raw[: end + 2]
    encoding = re.search(rb"^encoding: *(\S+)", header, re.M)
    if encoding is None or encoding.group(1) != (b"gzip" if compress else b"raw"):
        raise UnsupportedLabelFile("unexpected NRRD encoding from SimpleITK")
    if b"data file" in header or re.search(rb"^sizes: *2 2 2$", header, re.M) is None:
        raise UnsupportedLabelFile("unexpected NRRD header from SimpleITK")
    return header


def label_header(kind: str, compress: bool, dtype, size: Tuple[int, int, int], geometry) -> bytes:
    """Header bytes (NIfTI: the first vox_offset bytes; NRRD: up to the blank line) for the full image."""
    dtype = np.dtype(dtype)
    key = (kind, bool(compress), dtype.str, tuple(size), tuple(geometry[0]), tuple(geometry[1]), tuple(geometry[2]))
    with _HEADER_LOCK:
        header = _HEADERS.get(key)
        if header is not None:
            _HEADERS.move_to_end(key)
            return header
    tiny = _tiny_header(kind, compress, dtype, geometry)
    if kind.startswith(".nii"):
        if max(size) > _NIFTI_MAX_DIM:
            raise UnsupportedLabelFile("NIfTI-1 dims above 32767")
        header = bytearray(tiny)
        struct.pack_into("<3h", header, 42, *size)
        header = bytes(header)
    else:
        header = re.sub(rb"^sizes: *2 2 2$", b"sizes: %d %d %d" % tuple(size), tiny, count=1, flags=re.M)
    with _HEADER_LOCK:
        _HEADERS[key] = header
        while len(_HEADERS) > 64:
            _HEADERS.popitem(last=False)
    return header


# ----------------------------------------------------------------------------- voxel data
def nonzero_box(mask: np.ndarray) -> Optional[Tuple[slice, slice, slice]]:
    """Bounding box of the non-zero voxels as slices of (i, j, k); None when the mask is empty."""
    m = mask.view(np.uint8) if mask.dtype == np.bool_ else mask
    if m.dtype != np.uint8:
        m = (m != 0).view(np.uint8)
    ni = m.shape[0]
    along_i = np.flatnonzero(m.reshape(ni, -1).max(axis=1))
    if along_i.size == 0:
        return None
    i0, i1 = int(along_i[0]), int(along_i[-1]) + 1
    proj = m[i0:i1].max(axis=0)  # (nj, nk)
    jj = np.flatnonzero(proj.max(axis=1))
    kk = np.flatnonzero(proj.max(axis=0))
    return slice(i0, i1), slice(int(jj[0]), int(jj[-1]) + 1), slice(int(kk[0]), int(kk[-1]) + 1)


def file_order_data(mask: np.ndarray, dtype) -> Tuple[np.ndarray, int, np.ndarray]:
    """(buffer, data bytes, chunk flags): the voxels in file order (i fastest) as bytes, padded to
    whole CHUNKs with zeros; flags[c] is True when chunk c holds a non-zero byte."""
    dtype = np.dtype(dtype)
    ni, nj, nk = mask.shape
    nbytes = ni * nj * nk * dtype.itemsize
    nchunks = max(1, -(-nbytes // CHUNK))
    buf = np.zeros(nchunks * CHUNK, dtype=np.uint8)  # calloc: untouched pages cost nothing
    flags = np.zeros(nchunks, dtype=bool)
    box = nonzero_box(mask)
    if box is None:
        return buf, nbytes, flags
    bi, bj, bk = box
    sub = mask[bi, bj, bk]
    if sub.dtype != np.uint8:  # as SimpleITK's path: the mask as uint8, then the requested dtype
        sub = sub.astype(np.uint8)
    data = buf[:nbytes].view(dtype).reshape(nk, nj, ni)
    target = data[bk, bj, bi]
    target[...] = sub.transpose(2, 1, 0)  # only the box is transposed (numpy: no thread pool to wake)
    first = (bk.start * nj * ni + bj.start * ni + bi.start) * dtype.itemsize
    last = ((bk.stop - 1) * nj * ni + (bj.stop - 1) * ni + bi.stop) * dtype.itemsize
    c0, c1 = first // CHUNK, (last - 1) // CHUNK + 1
    flags[c0:c1] = buf[c0 * CHUNK:c1 * CHUNK].view(np.uint64).reshape(c1 - c0, CHUNK // 8).any(axis=1)
    return buf, nbytes, flags


def _runs(flags: np.ndarray, nbytes: int):
    """[(start byte, stop byte, non-zero?)] of maximal runs of equal chunk flags, clipped to nbytes."""
    edges = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
    starts = np.concatenate(([0], edges))
    stops = np.concatenate((edges, [flags.size]))
    out = []
    for s, e in zip(starts.tolist(), stops.tolist()):
        a, b = s * CHUNK, min(e * CHUNK, nbytes)
        if a < b:
            out.append((a, b, bool(flags[s])))
    return out


def _gzip_stream(prefix: bytes, buf: np.ndarray, nbytes: int, flags: np.ndarray) -> List[bytes]:
    """The gzip member of prefix + buf[:nbytes], as a list of byte strings to write in order."""
    runs = _runs(flags, nbytes)
    mv = memoryview(buf)
    work = [(a, b) for a, b, nz in runs if nz]
    # two workers, each a contiguous share of the non-zero bytes
    total = sum(b - a for a, b in work)
    split, acc = len(work), 0
    for n, (a, b) in enumerate(work):
        if acc >= total / 2:
            split = n
            break
        acc += b - a
    futures = [process_threads("labelfile", 2).submit(_compress_runs, mv, part) for part in (work[:split], work[split:]) if part]
    crc = zlib.crc32(prefix)
    for a, b, nz in runs:  # meanwhile the CRC (zlib.crc32 releases the GIL on large buffers)
        crc = zlib.crc32(mv[a:b], crc) if nz else crc32_zeros(b - a, crc)
    pieces = iter([p for f in futures for p in f.result()])
    out = [_GZIP_HEADER, _deflate_piece(prefix) if prefix else b""]
    for a, b, nz in runs:
        if nz:
            out.append(next(pieces))
        else:
            full, rest = divmod(b - a, CHUNK)
            out.extend([_zero_piece(CHUNK)] * full)
            if rest:
                out.append(_zero_piece(rest))
    out += [_FINAL_BLOCK, struct.pack("<II", crc & 0xFFFFFFFF, (len(prefix) + nbytes) & 0xFFFFFFFF)]
    return out


def write_label_file(mask: np.ndarray, path: str, geometry, dtype=np.uint8, compress: bool = True) -> str:
    """Write `mask` ((ni, nj, nk), stored index order) to `path` with the reference `geometry`
    (origin, spacing, direction as SimpleITK gives them), as SimpleITK would for this extension:
    .nii.gz always compressed, .nii never, .nrrd / .seg.nrrd raw or gzip per `compress`.
    Raises UnsupportedLabelFile for what it cannot write exactly (the caller uses SimpleITK)."""
    if mask.ndim != 3:
        raise UnsupportedLabelFile("mask is not 3D")
    kind = _kind(path)
    gz = kind == ".nii.gz" or (kind.endswith(".nrrd") and compress)
    header = label_header(kind, gz, dtype, tuple(int(s) for s in mask.shape), geometry)
    buf, nbytes, flags = file_order_data(mask, dtype)
    with open(path, "wb") as f:
        if gz:
            if kind == ".nii.gz":
                parts = _gzip_stream(header, buf, nbytes, flags)
            else:  # NRRD: the text header, then the gzip stream of the voxels
                parts = [header] + _gzip_stream(b"", buf, nbytes, flags)
            f.writelines(parts)
        else:
            f.write(header)
            mv = memoryview(buf)
            for a, b, nz in _runs(flags, nbytes):
                if nz:
                    f.write(mv[a:b])
                else:
                    f.seek(b - a, os.SEEK_CUR)  # a hole: reads back as zeros
            f.truncate(len(header) + nbytes)
    return path
