"""/session: session ids are the ones PUT /session/ made; uploads are images or checked archives.

MONAI Label 0.8.5 joins the session id into a path (`GET /session/..` looked for meta.info in the
sessions folder's parent, and `DELETE /session/..` runs `shutil.rmtree(<sessions>/..)`), keeps
each uploaded file under its client-given name, and with `uncompress=true` unpacks the upload with
`shutil.unpack_archive` (Python 3.11: tar members with `..` or absolute names are written where
they say, and a zip bomb is unpacked in full). The guard routes:

* session id: a plain name (400, lib/guards/paths.py);
* file names: plain base names; image files: a header within `--conf max_voxels`;
* `uncompress=true`: members are plain relative files, the total is bounded (lib/guards/limits.py).
"""
import os
from typing import List

from .common import insert_first
from .limits import check_archive, check_dicom
from .paths import check_name, upload_name


def _check_upload(upload, uncompress: bool) -> None:
    from .datastore import IMAGE_FORMATS, _checked_upload, _suffix, check_image_file

    upload_name(upload.filename)
    suffix = _suffix(upload.filename).lower()
    if uncompress:
        size = _size(upload)
        _checked_upload(upload, lambda path: check_archive(path, size))
    elif suffix.endswith(IMAGE_FORMATS):
        _checked_upload(upload, check_image_file)
    elif suffix.endswith(".dcm"):
        _checked_upload(upload, check_dicom)


def _size(upload) -> int:
    upload.file.seek(0, os.SEEK_END)
    size = upload.file.tell()
    upload.file.seek(0)
    return size


def session_routes():
    from fastapi import Depends, File, UploadFile
    from fastapi.background import BackgroundTasks
    from fastapi.routing import APIRoute
    from monailabel.config import settings
    from monailabel.endpoints import session as ml
    from monailabel.endpoints.user.auth import RBAC, User

    role = settings.MONAI_LABEL_AUTH_ROLE_USER

    async def get_session(session_id: str, update_ts: bool = False, image: bool = False,
                          user: User = Depends(RBAC(role))):
        check_name(session_id, "session_id")
        return ml.get_session(session_id, update_ts, image)

    async def create_session(background_tasks: BackgroundTasks, uncompress: bool = False, expiry: int = 0,
                             files: List[UploadFile] = File(...), user: User = Depends(RBAC(role))):
        for f in files:
            _check_upload(f, uncompress)
        return ml.create_session(background_tasks, uncompress, expiry, files)

    async def remove_session(session_id: str, user: User = Depends(RBAC(role))):
        check_name(session_id, "session_id")
        return ml.remove_session(session_id)

    api = f"{settings.MONAI_LABEL_API_STR}/session"
    return [
        APIRoute(f"{api}/{{session_id}}", get_session, methods=["GET"], name="sammed3d_get_session_guard",
                 include_in_schema=False),
        APIRoute(f"{api}/", create_session, methods=["PUT"], name="sammed3d_create_session_guard", include_in_schema=False),
        APIRoute(f"{api}/{{session_id}}", remove_session, methods=["DELETE"], name="sammed3d_remove_session_guard",
                 include_in_schema=False),
    ]


def install_session_guards(fastapi_app) -> bool:
    return all(insert_first(fastapi_app, route) for route in session_routes())
