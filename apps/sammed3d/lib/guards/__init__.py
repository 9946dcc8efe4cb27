"""Routes placed in front of MONAI Label's own so that user errors get a 4xx, not a 500 or a 200.

MONAI Label 0.8.5 parses some requests before the app sees them (the `params` form field, the
input image) and submits train/scoring requests to a subprocess without looking. Each guard has
the same path, parameters and RBAC dependency as MONAI Label's route, checks what it can cheaply,
and passes valid requests unchanged to MONAI Label's own function. See docs/app.md (Errors).
"""
from .common import image_uri_or_404, parse_params_field, server_app, unknown_task_404
from .datastore import check_image_file, check_label_file, install_datastore_guards
from .datastore_read import install_datastore_read_guards
from .exposure import warn_if_exposed
from .infer import install_infer_guard, require_input
from .limits import configure as configure_limits
from .limits import install_upload_limit
from .session import install_session_guards
from .tasks import check_scoring_request, check_train_request, install_task_guards

__all__ = ["check_image_file", "check_label_file", "check_scoring_request", "check_train_request", "image_uri_or_404",
           "configure_limits", "install_guards", "parse_params_field", "require_input", "unknown_task_404"]


def install_guards(fastapi_app=None, conf=None) -> bool:
    """Install every guard route and the upload limit; False outside the server process (no
    monailabel.app loaded). `conf`: --conf max_upload_mb / max_voxels (lib/guards/limits.py)."""
    configure_limits(conf)
    fastapi_app = server_app(fastapi_app)
    if fastapi_app is None:
        return False
    install_datastore_read_guards(fastapi_app)  # each guard goes in front of every route there already
    install_session_guards(fastapi_app)
    install_infer_guard(fastapi_app)
    install_datastore_guards(fastapi_app)
    install_task_guards(fastapi_app)
    install_upload_limit(fastapi_app)
    warn_if_exposed()
    return True
