"""Who can reach the server: the bound address and the CORS policy, said in the log at start.

`monailabel start_server` binds 0.0.0.0 (every interface) unless `--host` is given, with no
authentication and CORS open to any origin (MONAI_LABEL_CORS_ORIGINS empty means "*", with
credentials). scripts/serve.sh binds 127.0.0.1 and limits CORS to the server's own origin; any
other address gets a warning here that says how to protect it (README, Security).
"""
import logging
import sys
from typing import List, Optional

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def bound_host(argv: Optional[List[str]] = None) -> Optional[str]:
    """The --host/-i of a `start_server` command line (MONAI Label's default 0.0.0.0); None otherwise."""
    argv = list(sys.argv if argv is None else argv)
    if "start_server" not in argv:
        return None
    host = "0.0.0.0"
    for i, a in enumerate(argv):
        if a in ("--host", "-i") and i + 1 < len(argv):
            host = argv[i + 1]
        elif a.startswith("--host="):
            host = a.split("=", 1)[1]
    return host


def cors_policy() -> str:
    from monailabel.config import settings

    origins = [str(o) for o in (settings.MONAI_LABEL_CORS_ORIGINS or [])]
    return f"CORS allows {origins}" if origins else "CORS allows ANY origin (with credentials; MONAI_LABEL_CORS_ORIGINS unset)"


def warn_if_exposed(argv: Optional[List[str]] = None) -> Optional[str]:
    """Log the bind address and CORS policy; a warning when not loopback-only. Returns the message."""
    host = bound_host(argv)
    if host is None:
        return None
    from monailabel.config import settings

    auth = "on" if settings.MONAI_LABEL_AUTH_ENABLE else "OFF"
    if host in LOOPBACK:
        msg = f"listening on {host} only (this machine); authentication {auth}; {cors_policy()}"
        logger.info(msg)
        return msg
    msg = (f"SERVER EXPOSED: listening on {host}, authentication {auth}, {cors_policy()}: anyone who can reach this "
           "port can read, upload and delete studies and labels. Bind 127.0.0.1 (scripts/serve.sh does) and put it "
           "behind MONAI Label authentication (MONAI_LABEL_AUTH_ENABLE=true) or a TLS reverse proxy; see README, Security")
    logger.warning(msg)
    return msg
