"""Shared by the guard routes: the params form field, image lookup, route insertion."""
import json
import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Dict, Optional

from fastapi import HTTPException

from .paths import UnsafePathError, check_name

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
    except RecursionError:
        raise HTTPException(status_code=400, detail="params must be a JSON object; it is nested too deeply to parse")
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        shown = params if len(params) <= 80 else params[:77] + "..."
        raise HTTPException(status_code=400, detail=f"params must be a JSON object; cannot parse {shown!r}: {e}")
    if not isinstance(value, dict):
        raise HTTPException(status_code=400,
                            detail=f"params must be a JSON object ({{...}}), got a JSON {type(value).__name__}")
    return value


def image_uri_or_404(datastore, image: str, allow_path: bool = True) -> str:
    """The datastore's file/folder for image id `image`; HTTPException(404) when there is none.

    MONAI Label 0.8.5 answers an unknown id with a plain 500 (LocalDatastore raises, DICOMweb
    lookups fail); clients need a 404. A path that exists (an uploaded file) is returned as is."""
    if allow_path and isinstance(image, str) and os.path.isabs(image) and os.path.exists(image):
        return image  # set by MONAI Label itself (an uploaded file, a session); the routes refuse paths
    try:
        uri = datastore.get_image_uri(image)
    except Exception as e:  # e.g. a DICOMweb lookup of a series that does not exist
        logger.info(f"image {image!r} lookup failed: {e}")
        uri = None
    if not uri:
        link = getattr(datastore, "link_out", lambda *a: None)(image)
        if link:
            raise HTTPException(status_code=403, detail=f"image {image!r} is a link pointing outside the studies folder "
                                                        "(the server does not follow it): copy the file into the studies folder")
        raise HTTPException(status_code=404, detail=f"image {image!r} not found in the datastore")
    return uri


def known_image(datastore, image) -> str:
    """The file of datastore image id `image`: 400 for an id that is not a plain name (a path,
    `..`, NUL, ...), 403 for a link pointing out of the studies folder, 404 for an unknown id."""
    check_name(image, "image")
    return image_uri_or_404(datastore, image, allow_path=False)


@contextmanager
def as_4xx():
    """Datastore refusals as client errors: unsafe paths 400/403, unknown image or label 404; a full
    disk is 507 (Insufficient Storage) saying that nothing saved before was lost."""
    import errno

    from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException

    try:
        yield
    except UnsafePathError as e:
        raise HTTPException(status_code=getattr(e, "status_code", 400), detail=str(e))
    except (ImageNotFoundException, LabelNotFoundException) as e:
        raise HTTPException(status_code=404, detail=str(e))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        logger.error(f"disk full while saving: {e}")
        raise HTTPException(status_code=507, detail=(
            "the server's disk is full: this save was not stored; every label saved before is intact. "
            "Free space on the studies folder's disk, then save again"))


def unknown_task_404(kind: str, name: Any, available) -> HTTPException:
    return HTTPException(status_code=404, detail=f"unknown {kind} {name!r}; available: {sorted(available)}")
