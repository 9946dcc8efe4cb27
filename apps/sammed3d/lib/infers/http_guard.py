"""A 4xx instead of MONAI Label's 500 for the two malformed /infer requests it cannot parse.

MONAI Label 0.8.5's `POST /infer/{model}` endpoint does two things before it calls the app, so the
app's own validation (lib/infers/request.py) never sees these requests:

* it runs `json.loads(params)` on the `params` form field; a field that is not JSON, or JSON that
  is not an object (`[1, 2]`, `3`), ends in an unhandled exception, i.e. a plain-text 500;
* a request with no `image`, no `file` and no `session_id` gets `HTTPException(500)`.

Neither is a server fault. `install_infer_guard` puts a route with the same path, parameters and
RBAC dependency in front of MONAI Label's, checks exactly these two things (400 with a message
that names the problem), and hands every other request unchanged to MONAI Label's own
`run_inference`, so what a valid request gets is byte-for-byte what it got before.
"""

import json
import logging
import sys
from typing import Any, Dict, Optional

from fastapi import HTTPException

logger = logging.getLogger(__name__)

ROUTE_NAME = "sammed3d_infer_guard"


def parse_params_field(params: Optional[str]) -> Dict[str, Any]:
    """The `params` form field as MONAI Label reads it (empty -> {}), or HTTPException(400).

    >>> parse_params_field('{"foreground": [[1, 2, 3]]}')
    {'foreground': [[1, 2, 3]]}
    """
    if not params:
        return {}
    try:
        value = json.loads(params)
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        shown = params if len(params) <= 80 else params[:77] + "..."
        raise HTTPException(status_code=400, detail=f"params must be a JSON object; cannot parse {shown!r}: {e}")
    if not isinstance(value, dict):
        raise HTTPException(status_code=400,
                            detail=f"params must be a JSON object ({{...}}), got a JSON {type(value).__name__}")
    return value


def require_input(image: str, file: Any, session_id: str) -> None:
    """MONAI Label needs one of them; without any it answers 500. Here: 400 naming the three."""
    if not image and not file and not session_id:
        raise HTTPException(status_code=400,
                            detail="no input image: give the `image` id (query), an uploaded `file`, or a `session_id`")


def install_infer_guard(fastapi_app=None) -> bool:
    """Insert the guarded POST /infer/{model} in front of MONAI Label's route.

    Only in the server process (where monailabel.app is loaded); returns whether it is installed.
    Safe to call more than once."""
    if fastapi_app is None:
        fastapi_app = getattr(sys.modules.get("monailabel.app"), "app", None)
        if fastapi_app is None:
            return False
    routes = fastapi_app.router.routes
    if any(getattr(r, "name", "") == ROUTE_NAME for r in routes):
        return True

    from fastapi import Depends, File, Form, UploadFile
    from fastapi.background import BackgroundTasks
    from fastapi.routing import APIRoute
    from monailabel.config import settings
    from monailabel.endpoints import infer as ml_infer
    from monailabel.endpoints.user.auth import RBAC, User

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
        parse_params_field(params)
        require_input(image, file, session_id)
        return ml_infer.run_inference(background_tasks, model, image, session_id, params, file, label, output)

    path = f"{settings.MONAI_LABEL_API_STR}/infer/{{model}}"
    route = APIRoute(path, sammed3d_infer_guard, methods=["POST"], name=ROUTE_NAME,
                     summary="Run inference (SAM-Med3D app: malformed params get a 400)")
    routes.insert(0, route)
    logger.info("/infer: malformed params or a missing image get a 400 (MONAI Label answers 500)")
    return True
