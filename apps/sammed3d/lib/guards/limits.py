"""Size limits checked before anything is allocated: request bodies, image headers, clicks, archives.

* `UploadLimit`: an ASGI wrapper that answers 413 to a request body over `--conf max_upload_mb`
  (default 2048) from its Content-Length, before a byte is read; a chunked body is counted as it
  arrives and cut off at the limit. MONAI Label copies every upload to a temp file first, so
  without it a client could fill the disk.
* `check_voxels`: a NIfTI/NRRD/DICOM header may claim 10^5 voxels per side (10^15 voxels); the
  guards read headers only (SimpleITK ReadImageInformation, pydicom stop_before_pixels) and refuse
  more than `--conf max_voxels` (default 2^30, e.g. 1024^3) before any voxel array exists.
* `check_clicks`: at most MAX_CLICKS points per request (a million-point list is refused while
  parsing; starlette already caps a form field at 1 MB).
* `check_archive`: a zip/tar a session is asked to uncompress: members must be plain relative
  names (no `..`, no absolute path, no links) and the unpacked total at most `max_upload_mb`, with
  a compression ratio below MAX_RATIO (zip bombs).
* `check_dicom`: a DICOM (SEG) upload: a deflated data set is inflated in bounded steps and
  refused when it grows past the limit; Rows x Columns x NumberOfFrames must be within max_voxels.
"""
import json
import logging
import os
import tarfile
import zipfile
import zlib
from typing import Optional

from fastapi import HTTPException

from .paths import name_problem

logger = logging.getLogger(__name__)

MAX_CLICKS = 10000
MAX_RATIO = 1000  # uncompressed / compressed; real images compress 2-20x, zip bombs 1000x and more
LIMITS = {"max_upload_mb": 2048.0, "max_voxels": float(1 << 30)}


def configure(conf=None) -> dict:
    """Read --conf max_upload_mb / max_voxels (positive numbers); ValueError for a bad value."""
    for key in LIMITS:
        if conf and key in conf:
            try:
                value = float(conf[key])
            except (TypeError, ValueError):
                value = -1
            if not value > 0:
                raise ValueError(f"--conf {key} must be a positive number, got {conf[key]!r}")
            LIMITS[key] = value
    return dict(LIMITS)


def max_upload_bytes() -> int:
    return int(LIMITS["max_upload_mb"] * (1 << 20))


def _mb(n: float) -> str:
    return f"{n / (1 << 20):.1f} MB"


# ------------------------------------------------------------------------------------ bodies


class UploadLimit:
    """ASGI wrapper: 413 for a body over the limit (Content-Length first, then counted)."""

    def __init__(self, app, limit_bytes=None):
        self.app = app
        self.limit_bytes = limit_bytes

    def limit(self) -> int:
        return self.limit_bytes if self.limit_bytes is not None else max_upload_bytes()

    async def _answer(self, send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        limit = self.limit()
        too_big = (f"request body is over this server's upload limit of {_mb(limit)} "
                   "(--conf max_upload_mb); send a smaller file")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await self._answer(send, 400, f"Content-Length {length[:40]!r} is not a number")
            if n > limit:
                logger.warning(f"refused a {_mb(n)} request body to {scope.get('path')} (limit {_mb(limit)})")
                return await self._answer(send, 413, f"request body is {_mb(n)}, " + too_big[len("request body is "):])
        state = {"received": 0, "refused": False, "started": False}

        async def counted_receive():
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message.get("type") == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["refused"] = True
                    if not state["started"]:
                        await self._answer(send, 413, too_big)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if state["refused"]:
                return
            if message.get("type") == "http.response.start":
                state["started"] = True
            await send(message)

        return await self.app(scope, counted_receive, guarded_send)


def install_upload_limit(fastapi_app) -> bool:
    """Wrap the app's ASGI stack once (it is already built when the MONAI Label app starts)."""
    if getattr(fastapi_app, "_sammed3d_upload_limit", False):
        return True
    if fastapi_app.middleware_stack is None:
        fastapi_app.add_middleware(UploadLimit)
    else:
        fastapi_app.middleware_stack = UploadLimit(fastapi_app.middleware_stack)
    fastapi_app._sammed3d_upload_limit = True
    return True


# ----------------------------------------------------------------------------------- headers


def check_voxels(size, what: str) -> None:
    """HTTPException(400) when a header's size is over --conf max_voxels (nothing allocated yet)."""
    count = 1
    for s in size:
        count *= max(int(s), 0)
    if count > LIMITS["max_voxels"]:
        raise HTTPException(status_code=400, detail=(
            f"{what} header claims {' x '.join(str(int(s)) for s in size)} = {count:.3g} voxels, over this server's "
            f"limit of {LIMITS['max_voxels']:.3g} (--conf max_voxels); crop or resample the image"))


def check_clicks(params: dict) -> None:
    for key in ("foreground", "background", "points", "point_labels"):
        value = params.get(key)
        if isinstance(value, (list, tuple)) and len(value) > MAX_CLICKS:
            raise HTTPException(status_code=400, detail=(
                f"{key} has {len(value)} points; at most {MAX_CLICKS} per request are accepted "
                "(send the clicks placed so far, not a voxel list)"))


# ---------------------------------------------------------------------------------- archives


def _bad_member(name: str) -> Optional[str]:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    for part in name.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        problem = name_problem(part) if part == ".." or "\x00" in part else None
        if problem:
            return problem
    return None


def check_archive(path: str, compressed_size: Optional[int] = None) -> None:
    """HTTPException(400) for a zip/tar that would write outside its folder or unpack too much."""
    limit = max_upload_bytes()
    compressed_size = compressed_size or os.path.getsize(path)
    members = []  # (name, size, is_link)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for i in z.infolist():
                    is_link = (i.external_attr >> 16) & 0o170000 == 0o120000
                    members.append((i.filename, i.file_size, is_link))
        elif tarfile.is_tarfile(path):
            with tarfile.open(path) as t:
                for m in t:
                    if len(members) > 100000:
                        break
                    members.append((m.name, m.size, not (m.isfile() or m.isdir())))
        else:
            raise HTTPException(status_code=400, detail="uncompress=true needs a .zip or .tar(.gz) file")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise HTTPException(status_code=400, detail=f"cannot read the archive: {e}")
    total = 0
    for name, size, is_link in members:
        problem = "is a link or device, not a file" if is_link else _bad_member(name)
        if problem:
            raise HTTPException(status_code=400, detail=f"archive member {name[:80]!r} {problem}; "
                                                        "put only plain files (and folders) in the archive")
        total += max(int(size), 0)
    if total > limit or total > MAX_RATIO * max(compressed_size, 1):
        raise HTTPException(status_code=400, detail=(
            f"archive unpacks to {_mb(total)} from {_mb(compressed_size)}: over the limit of {_mb(limit)} "
            f"or {MAX_RATIO}x compression (--conf max_upload_mb); send the image itself"))


# ------------------------------------------------------------------------------------- DICOM

DEFLATED = "1.2.840.10008.1.2.1.99"


def check_dicom(path: str) -> None:
    """HTTPException(400) for a DICOM file that would inflate past the limits (header only)."""
    from pydicom import dcmread
    from pydicom.filereader import _read_file_meta_info, read_preamble

    limit = max_upload_bytes()
    try:
        with open(path, "rb") as f:
            read_preamble(f, False)
            meta = _read_file_meta_info(f)
            start = f.tell()
        if str(getattr(meta, "TransferSyntaxUID", "")) == DEFLATED:
            _bounded_inflate(path, start, limit)  # dcmread inflates the whole data set at once
        ds = dcmread(path, stop_before_pixels=True)
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except HTTPException:
        raise
    except Exception as e:  # pydicom raises many kinds for a broken file
        raise HTTPException(status_code=400, detail=f"cannot read DICOM file: {str(e)[:200]}")
    check_voxels((cols, rows, frames), "DICOM")


def _bounded_inflate(path: str, start: int, limit: int) -> None:
    """Inflate a deflated DICOM data set in 1 MB steps; 400 once it passes `limit` bytes or MAX_RATIO."""
    size = os.path.getsize(path)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            chunk = f.read(1 << 20)
            while chunk:
                out = inflater.decompress(chunk, 1 << 20)
                total += len(out)
                if total > limit or total > MAX_RATIO * max(size, 1):
                    raise HTTPException(status_code=400, detail=(
                        f"deflated DICOM data set inflates past {_mb(total)} from {_mb(size)} (limit {_mb(limit)} "
                        f"or {MAX_RATIO}x, --conf max_upload_mb): a compression bomb; send it uncompressed"))
                chunk = inflater.unconsumed_tail
            if f.tell() >= size or inflater.eof:
                return
