"""/datastore reads, info updates, label removal and the dataset zip: ids and tags are plain names.

MONAI Label 0.8.5 joins the `image`/`label` id and the `tag` of these routes into a path with no
check (`tag=/etc` resolved to /etc; `DELETE /datastore/label?tag=../..` removed a file beside the
studies folder), answers an unknown id in the info routes with a 500, and a dataset zip of an
empty datastore with a 500 (an assert). The guard routes have MONAI Label's paths, parameters and
RBAC roles, refuse what is not a plain name (400, lib/guards/paths.py), a link pointing outside the
studies folder (403) and an unknown id (404), and hand the rest to MONAI Label's own functions.
"""
from typing import Optional

from fastapi import HTTPException

from .common import as_4xx, insert_first, known_image, parse_params_field
from .paths import check_name


def _label_or_404(datastore, label: str, tag: str) -> None:
    check_name(label, "image", "a label id is its image's id, e.g. 'case_001'")
    check_name(tag, "tag")
    if datastore.__class__.__name__ == "DICOMWebDatastore":
        return
    if not datastore.get_label_uri(label, tag):
        if getattr(datastore, "link_out", lambda *a: None)(label, tag):
            raise HTTPException(status_code=403, detail=f"label {label!r} ({tag}) is a link pointing outside the studies "
                                                        "folder (the server does not follow it)")
        raise HTTPException(status_code=404, detail=f"label {label!r} with tag {tag!r} not found in the datastore")


def datastore_read_routes():
    from fastapi import Depends, Form
    from fastapi.routing import APIRoute
    from monailabel.config import settings
    from monailabel.endpoints import datastore as ml
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.utils.app import app_instance

    def ds():
        return app_instance().datastore()

    user_role, annotator, admin = (settings.MONAI_LABEL_AUTH_ROLE_USER, settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
                                   settings.MONAI_LABEL_AUTH_ROLE_ADMIN)

    async def check_image(image: str, check_sum: Optional[str] = None, user: User = Depends(RBAC(user_role))):
        known_image(ds(), image)
        return ml.download_image(image, check_only=True, check_sum=check_sum)

    async def download_image(image: str, user: User = Depends(RBAC(user_role))):
        known_image(ds(), image)
        return ml.download_image(image)

    async def get_image_info(image: str, user: User = Depends(RBAC(user_role))):
        known_image(ds(), image)
        return ml.get_image_info(image)

    async def put_image_info(image: str, info: str = Form("{}"), user: User = Depends(RBAC(annotator))):
        parse_params_field(info)
        known_image(ds(), image)
        with as_4xx():
            return ml.update_image_info(image, info, user.username)

    async def check_label(image: str, tag: str, user: User = Depends(RBAC(user_role))):
        _label_or_404(ds(), image, tag)
        return ml.download_label(image, tag, check_only=True)

    async def download_label(label: str, tag: str, user: User = Depends(RBAC(user_role))):
        _label_or_404(ds(), label, tag)
        return ml.download_label(label, tag)

    async def get_label_info(label: str, tag: str, user: User = Depends(RBAC(user_role))):
        _label_or_404(ds(), label, tag)
        return ml.get_label_info(label, tag)

    async def put_label_info(label: str, tag: str, info: str = Form("{}"), user: User = Depends(RBAC(annotator))):
        parse_params_field(info)
        _label_or_404(ds(), label, tag)
        with as_4xx():
            return ml.update_label_info(label, tag, info, user.username)

    async def update_label_info(label: str, tag: str, params: str = Form("{}"), user: User = Depends(RBAC(annotator))):
        parse_params_field(params)
        _label_or_404(ds(), label, tag)
        with as_4xx():
            return ml.update_label_info(label, tag, params, user.username)

    async def remove_label(id: str, tag: str, user: User = Depends(RBAC(admin))):
        _label_or_404(ds(), id, tag)
        with as_4xx():
            return ml.remove_label(id, tag, user.username)

    async def download_dataset(limit_cases: Optional[int] = None, user: User = Depends(RBAC(annotator))):
        if limit_cases is not None and limit_cases < 1:
            raise HTTPException(status_code=400, detail=f"limit_cases must be 1 or more, got {limit_cases}")
        if not ds().datalist():
            raise HTTPException(status_code=404, detail="no final labels in the datastore: nothing to put in the zip")
        return ml.download_dataset(limit_cases)

    api = f"{settings.MONAI_LABEL_API_STR}/datastore"
    table = [
        ("/image", check_image, "HEAD"), ("/image", download_image, "GET"),
        ("/image/info", get_image_info, "GET"), ("/image/info", put_image_info, "PUT"),
        ("/label", check_label, "HEAD"), ("/label", download_label, "GET"), ("/label", remove_label, "DELETE"),
        ("/label/info", get_label_info, "GET"), ("/label/info", put_label_info, "PUT"),
        ("/updatelabelinfo", update_label_info, "PUT"), ("/dataset", download_dataset, "GET"),
    ]
    return [APIRoute(f"{api}{path}", fn, methods=[method], name=f"sammed3d_{fn.__name__}_guard", include_in_schema=False)
            for path, fn, method in table]


def install_datastore_read_guards(fastapi_app) -> bool:
    return all(insert_first(fastapi_app, route) for route in datastore_read_routes())
