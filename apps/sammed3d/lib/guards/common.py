"""Shared by the guard routes: the params form field, image lookup, route insertion."""
import json
import logging
import os
import sys
from typing import Any, Dict, Optional

from fastapi import HTTPException

logger = logging.getLogger(__name__)


def server_app(fastapi_app=None):
    """The FastAPI app of `monailabel start_server` (None outside the server process)."""
    if fastapi_app is not None:
        return fastapi_app
    return getattr(sys.modules.get("monailabel.app"), "app", None)


def insert_first(fastapi_app, route) -> bool:
    """Put `route` before every other route (so it wins over MONAI Label's); once per name."""
    routes = fastapi_app.router.routes
    if not any(getattr(r, "name", "") == route.name for r in routes):
        routes.insert(0, route)
    return True


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


def image_uri_or_404(datastore, image: str) -> str:
    """The datastore's file/folder for image id `image`; HTTPException(404) when there is none.

    MONAI Label 0.8.5 answers an unknown id with a plain 500 (LocalDatastore raises, DICOMweb
    lookups fail); clients need a 404. A path that exists (an uploaded file) is returned as is."""
    if isinstance(image, str) and os.path.exists(image):
        return image
    try:
        uri = datastore.get_image_uri(image)
    except Exception as e:  # e.g. a DICOMweb lookup of a series that does not exist
        logger.info(f"image {image!r} lookup failed: {e}")
        uri = None
    if not uri:
        raise HTTPException(status_code=404, detail=f"image {image!r} not found in the datastore")
    return uri


def unknown_task_404(kind: str, name: Any, available) -> HTTPException:
    return HTTPException(status_code=404, detail=f"unknown {kind} {name!r}; available: {sorted(available)}")
