"""POST /infer/{model}: a 400 instead of MONAI Label's 500 for the two requests it cannot parse.

MONAI Label 0.8.5's endpoint does two things before it calls the app, so the app's own validation
(lib/infers/request.py) never sees these requests:

* it runs `json.loads(params)` on the `params` form field; a field that is not JSON, or JSON that
  is not an object (`[1, 2]`, `3`), ends in an unhandled exception, i.e. a plain-text 500;
* a request with no `image`, no `file` and no `session_id` gets `HTTPException(500)`.

It also answers `output=dicom_seg` up front: outside a DICOMweb datastore MONAI Label runs the
inference and then answers 500, and without `label_info` in params it runs it and then answers
404. Both are a 400 here, before any work.

It also keeps every path-like value a plain name (lib/guards/paths.py): the `image` id and the
`session_id` (400 for `../x`, `/etc/x`, NUL, encoded forms), the uploaded files' names, and
`params` may not name another image or session (`{"image": "/some/file.nii.gz"}` replaced the id
and MONAI Label read that file). Uploaded images must have a header within `--conf max_voxels`,
and a request carries at most MAX_CLICKS points (lib/guards/limits.py).

The guard route has the same path, parameters and RBAC dependency, checks these things, and
hands every other request unchanged to MONAI Label's own `run_inference`.

It runs that function in a worker thread. MONAI Label's route is `async` and calls the inference
directly, so while one inference runs the event loop is blocked and every other request waits:
/info, datastore calls, and the clicks of every other annotator, for as long as a MedSAM box takes
(about a minute on a 2-core CPU). In a thread, other requests are answered meanwhile; the engines
serialise their own work with locks, and a DICOMweb series is fetched by one caller at a time
(lib/datastore.py, serialise_dicomweb_fetches).
"""
from typing import Any, Optional

from fastapi import HTTPException

from .common import insert_first, parse_params_field
from .limits import check_clicks
from .paths import check_optional_name, check_text, upload_name

ROUTE_NAME = "sammed3d_infer_guard"


def require_input(image: str, file: Any, session_id: str) -> None:
    """MONAI Label needs one of them; without any it answers 500. Here: 400 naming the three."""
    if not image and not file and not session_id:
        raise HTTPException(status_code=400,
                            detail="no input image: give the `image` id (query), an uploaded `file`, or a `session_id`")


def check_request_paths(image: str, session_id: str, params: dict, file: Any, label: Any) -> None:
    """400 for any path-like value: ids, upload names, params that would replace the image."""
    check_optional_name(image, "image")
    check_optional_name(session_id, "session_id")
    for key in ("image", "session"):
        if key in params and not (key == "image" and params[key] == image):
            raise HTTPException(status_code=400, detail=(
                f"params.{key} is not accepted: give the image id as the `image` query parameter "
                "(or upload the file, or pass session_id)"))
    check_text(params.get("label"), "label")
    check_clicks(params)
    for upload in (file, label):
        if upload is not None and not isinstance(upload, str):
            upload_name(getattr(upload, "filename", None))


def check_uploaded_image(file: Any) -> None:
    from .datastore import IMAGE_FORMATS, _checked_upload, _suffix, check_image_file

    if file is not None and not isinstance(file, str) and _suffix(file.filename).lower().endswith(IMAGE_FORMATS):
        _checked_upload(file, check_image_file)


def check_dicom_seg_output(datastore, params: dict) -> None:
    from monailabel.datastore.dicom import DICOMWebDatastore

    if not isinstance(datastore, DICOMWebDatastore):
        raise HTTPException(status_code=400, detail="output=dicom_seg needs a DICOMweb datastore (--studies http://...)")
    if params.get("label_info") is None:
        raise HTTPException(status_code=400, detail="output=dicom_seg needs label_info in params (segment names)")


def infer_route():
    from fastapi import Depends, File, Form, UploadFile
    from fastapi.background import BackgroundTasks
    from fastapi.routing import APIRoute
    from monailabel.config import settings
    from monailabel.endpoints import infer as ml_infer
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.utils.app import app_instance
    from starlette.concurrency import run_in_threadpool

    # Same signature as MONAI Label's api_run_inference: clients cannot tell the routes apart.
    async def sammed3d_infer_guard(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: Optional[ml_infer.ResultType] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        p = parse_params_field(params)
        require_input(image, file, session_id)
        check_request_paths(image, session_id, p, file, label)
        check_uploaded_image(file)
        if output == ml_infer.ResultType.dicom_seg:
            check_dicom_seg_output(app_instance().datastore(), p)
        return await run_in_threadpool(ml_infer.run_inference, background_tasks, model, image, session_id, params,
                                       file, label, output)

    return APIRoute(f"{settings.MONAI_LABEL_API_STR}/infer/{{model}}", sammed3d_infer_guard, methods=["POST"],
                    name=ROUTE_NAME, summary="Run inference (SAM-Med3D app: malformed params get a 400; runs off the event loop)")


def install_infer_guard(fastapi_app) -> bool:
    return insert_first(fastapi_app, infer_route())
