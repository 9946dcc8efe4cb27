"""What the OHIF v3 viewer bundled with MONAI Label 0.8.5 needs from this app.

1. Segment names in /info. The viewer's "Point Prompts" tab lists the model's `labels` (plus the
   app's top-level `labels`) as the segments a user can click for; with an empty list it offers only
   "background", and a foreground click cannot be placed at all. SAM-Med3D is class-agnostic, so the
   names are just choices for the user: any name works, each keeps its own click history. They come
   from `--conf ohif_labels "name1,name2,..."` or DEFAULT_OHIF_SEGMENTS.
   (3D Slicer shows these names too; they do not restrict what Slicer may send.)

2. Nested assets under /ohif/. MONAI Label's /ohif/{path} route turns "assets/x.png" into
   "assets:x.png" (os.pathsep) and answers index.html for every nested file. In the bundled build
   only favicons are nested, so the viewer works; install_ohif_asset_route() puts a route in front
   that serves nested files as they are (and still answers index.html for viewer routes such as
   /ohif/monai-label). The same files are always correct at /static/ohif/<path>.
"""
import logging
import mimetypes
import os
import sys
from typing import Dict, Iterable, List, Optional

logger = logging.getLogger(__name__)

DEFAULT_OHIF_SEGMENTS = ("lesion", "organ", "tumor", "vessel", "bone")
CONF_KEY = "ohif_labels"


def ohif_segment_names(conf: Optional[Dict[str, str]] = None) -> List[str]:
    """Segment names to advertise: `--conf ohif_labels "a,b,c"` or the defaults.

    Names are stripped, empty ones dropped, duplicates removed (first kept). "background" is
    refused: the viewer uses that name for exclude clicks."""
    raw = (conf or {}).get(CONF_KEY)
    names = DEFAULT_OHIF_SEGMENTS if raw is None else [n.strip() for n in str(raw).split(",")]
    out: List[str] = []
    for name in names:
        if not name or name in out:
            continue
        if name.lower() == "background":
            raise ValueError(f"--conf {CONF_KEY}: 'background' is reserved for exclude clicks in OHIF")
        out.append(name)
    if not out:
        raise ValueError(f"--conf {CONF_KEY} {raw!r} names no segment")
    return out


def advertise_segments(infer_task, names: Iterable[str]) -> None:
    """Make /info list `names` as the model's labels (the model itself stays class-agnostic).

    A list (not a dict): OHIF then maps name i to value i+1, but for a `deepgrow` model it paints
    any non-zero voxel of the returned mask with the chosen segment, so the app's 0/1 mask works."""
    infer_task.labels = list(names)


# ------------------------------------------------------------------------------------------------


def ohif_static_dir() -> str:
    import monailabel.endpoints

    return os.path.join(os.path.dirname(os.path.realpath(monailabel.endpoints.__file__)), "static", "ohif")


def resolve_ohif_file(path: str, root: Optional[str] = None) -> str:
    """The file to answer for /ohif/<path>: the file itself when it exists inside the OHIF folder,
    otherwise index.html (the viewer's own routes, e.g. monai-label?StudyInstanceUIDs=...)."""
    root = os.path.realpath(root or ohif_static_dir())
    index = os.path.join(root, "index.html")
    if path:
        candidate = os.path.realpath(os.path.join(root, *[p for p in path.split("/") if p]))
        if candidate.startswith(root + os.sep) and os.path.isfile(candidate):
            return candidate
    return index


def install_ohif_asset_route(fastapi_app=None) -> bool:
    """Put a correct GET /ohif/{path} in front of MONAI Label's (see module doc, item 2).

    Only in the server process (where monailabel.app is loaded); returns whether it was installed.
    Safe to call more than once."""
    if fastapi_app is None:
        module = sys.modules.get("monailabel.app")
        fastapi_app = getattr(module, "app", None)
        if fastapi_app is None:
            return False
    from fastapi.responses import FileResponse
    from fastapi.routing import APIRoute

    routes = fastapi_app.router.routes
    if any(getattr(r, "name", "") == "sammed3d_ohif_files" for r in routes):
        return True

    async def sammed3d_ohif_files(path: str):
        file = resolve_ohif_file(path)
        media_type = mimetypes.guess_type(file)[0] or "application/octet-stream"
        return FileResponse(file, media_type=media_type)

    route = APIRoute("/ohif/{path:path}", sammed3d_ohif_files, methods=["GET"], include_in_schema=False,
                     name="sammed3d_ohif_files")
    routes.insert(0, route)
    logger.info("OHIF: nested /ohif/ assets served as files (MONAI Label's route mangles them)")
    return True
