"""/datastore: a saved label must be readable and on its image's grid; uploads must be images.

MONAI Label 0.8.5 stores whatever file arrives: a corrupt file or a label on another grid is
accepted with a 200 and only breaks later (training, the next viewer load), and an unknown image
id or a `params` field that is not JSON gives a plain 500. The guard route checks those first:

* `params` not a JSON object -> 400; unknown image id -> 404;
* a label file SimpleITK cannot read, or that is not 3D -> 400;
* a label whose size, spacing, origin or direction differ from its image's (when the image is a
  file in the datastore) -> 400 naming the difference.

OHIF's `label.bin` (raw voxels, MONAI Label converts it against the DICOM series) and DICOM SEG
uploads are passed through: their geometry comes from the series. Everything that passes goes,
unchanged, to MONAI Label's own `save_label`.

Image uploads (`PUT /datastore/image`, the deprecated `PUT /datastore/`) with a file name of an
image format must be a readable 3D image (400 otherwise; MONAI Label stores anything), and
removing an image id that does not exist is a 404 (MONAI Label: 500).

Every value that becomes a path is a plain name (lib/guards/paths.py): the image id, the label
tag and the uploaded file's name; `tag=/tmp/x` and `image=../x` wrote outside the studies folder.
Headers may claim at most `--conf max_voxels` voxels and a DICOM upload must not inflate past the
upload limit (lib/guards/limits.py), checked before anything is allocated.
"""
import os
import shutil
import tempfile
from typing import Optional

import numpy as np
from fastapi import HTTPException

from lib.session.io import file_header

from .common import as_4xx, insert_first, known_image, parse_params_field
from .limits import check_dicom, check_voxels
from .paths import check_name, check_optional_name, upload_name

ROUTE_NAME = "sammed3d_save_label_guard"
PASS_THROUGH = (".bin", ".dcm")  # geometry comes from the DICOM series, not from the upload
IMAGE_FORMATS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")  # what an upload is checked as


def check_label_file(label_path: str, image_path: Optional[str], name: str = "label") -> None:
    """HTTPException(400) unless `label_path` is a readable 3D image on `image_path`'s grid.

    `image_path` None or a folder (a DICOM series): only readability and dimension are checked."""
    try:
        label = file_header(label_path)  # header only: cheap even for a large label
    except RuntimeError as e:
        raise HTTPException(status_code=400, detail=f"cannot read {name} file: {str(e).strip().splitlines()[-1]}")
    size = label.size
    check_voxels(size, name)
    if len(size) != 3 and not (len(size) == 4 and size[3] == 1):
        raise HTTPException(status_code=400, detail=f"{name} must be a 3D image, got size {list(size)}")
    if not image_path or not os.path.isfile(image_path):
        return
    try:
        image = file_header(image_path)
    except RuntimeError:
        return  # the image itself is unreadable: the infer task reports that; the label is kept
    checks = [
        ("size", size[:3], image.size[:3], 0, 0),
        ("spacing (mm)", label.spacing[:3], image.spacing[:3], 1e-3, 1e-4),
        ("origin (mm)", label.origin[:3], image.origin[:3], 1e-3, 1e-2 * min(image.spacing[:3])),
        ("direction", label.direction[:9], image.direction[:9], 0, 1e-3),
    ]
    for what, got, want, rtol, atol in checks:
        if len(got) != len(want) or not np.allclose(got, want, rtol=rtol, atol=atol):
            raise HTTPException(
                status_code=400,
                detail=f"{name} is not on the image's grid: {what} {_fmt(got)} != image {_fmt(want)} "
                       "(save the label on the image's geometry)")


def check_image_file(path: str) -> None:
    """HTTPException(400) unless `path` is a readable 3D image (header only)."""
    check_label_file(path, None, name="image")


def _suffix(filename: Optional[str]) -> str:
    """'.nii.gz' for 'a.b.nii.gz'-style names as MONAI Label keys them (all suffixes); default .nii.gz."""
    name = os.path.basename(filename or "upload.nii.gz")
    parts = name.split(".")[1:]
    return "." + ".".join(parts) if parts else ".nii.gz"


def _checked_upload(upload, check) -> None:
    """Copy the upload to a temp file of the same suffix, run `check(path)`, rewind the upload."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "upload" + _suffix(upload.filename))
        with open(path, "wb") as f:
            shutil.copyfileobj(upload.file, f)
        check(path)
    upload.file.seek(0)  # MONAI Label copies the upload again


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def datastore_routes():
    from fastapi import Depends, File, Form, UploadFile
    from fastapi.background import BackgroundTasks
    from fastapi.routing import APIRoute
    from monailabel.config import settings
    from monailabel.endpoints import datastore as ml_datastore
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.datastore import DefaultLabelTag
    from monailabel.interfaces.utils.app import app_instance

    async def sammed3d_save_label_guard(
        background_tasks: BackgroundTasks,
        image: str,
        params: str = Form("{}"),
        tag: str = DefaultLabelTag.FINAL.value,
        label: UploadFile = File(...),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ):
        parse_params_field(params)
        check_name(tag or DefaultLabelTag.FINAL.value, "tag")
        upload_name(label.filename)
        image_path = known_image(app_instance().datastore(), image)
        if _suffix(label.filename).lower().endswith(".dcm"):
            _checked_upload(label, check_dicom)
        elif not _suffix(label.filename).lower().endswith(PASS_THROUGH):
            _checked_upload(label, lambda path: check_label_file(path, image_path))
        with as_4xx():
            return ml_datastore.save_label(background_tasks, image, params, tag, label, user.username)

    async def sammed3d_add_image_guard(
        background_tasks: BackgroundTasks,
        image: Optional[str] = None,
        params: str = Form("{}"),
        file: UploadFile = File(...),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ):
        parse_params_field(params)
        check_optional_name(image, "image")
        upload_name(file.filename)
        if not image:  # MONAI Label takes the id from the file name
            check_name(os.path.basename(file.filename or "upload.nii.gz").split(".")[0], "image",
                       "name the file like 'case_001.nii.gz' or pass ?image=case_001")
        suffix = _suffix(file.filename).lower()
        if suffix.endswith(IMAGE_FORMATS):
            _checked_upload(file, check_image_file)
        elif suffix.endswith(".dcm"):
            _checked_upload(file, check_dicom)
        with as_4xx():
            return ml_datastore.add_image(background_tasks, image, params, file, user.username)

    async def sammed3d_remove_image_guard(id: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        check_name(id, "image")
        if id not in app_instance().datastore().list_images():
            raise HTTPException(status_code=404, detail=f"image {id!r} not found in the datastore")
        with as_4xx():
            return ml_datastore.remove_image(id, user.username)

    api = f"{settings.MONAI_LABEL_API_STR}/datastore"
    routes = [APIRoute(f"{api}/label", sammed3d_save_label_guard, methods=["PUT"], name=ROUTE_NAME,
                       summary="Save a final label (SAM-Med3D app: checked against its image first)")]
    for path in ("/image", "/"):  # MONAI Label serves both (the second is deprecated)
        routes.append(APIRoute(f"{api}{path}", sammed3d_add_image_guard, methods=["PUT"],
                               name=f"sammed3d_add_image_guard{path}", summary="Upload an image (checked first)"))
        routes.append(APIRoute(f"{api}{path}", sammed3d_remove_image_guard, methods=["DELETE"],
                               name=f"sammed3d_remove_image_guard{path}", summary="Remove an image (404 if unknown)"))
    return routes


def install_datastore_guards(fastapi_app) -> bool:
    return all(insert_first(fastapi_app, route) for route in datastore_routes())
