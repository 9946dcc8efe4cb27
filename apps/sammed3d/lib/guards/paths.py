"""Every request value that becomes part of a file path: one name check, one containment test.

Image ids, label tags, uploaded file names and session ids end up in `os.path.join(folder, value)`
in MONAI Label 0.8.5 (LocalDatastore, Sessions) with no check at all: `PUT /datastore/label` with
`tag=/tmp/x` wrote the label to /tmp/x, `PUT /datastore/image?image=../x` wrote the image beside
the studies folder, and `DELETE /session/..` would remove the sessions folder's parent. Here:

* `name_problem(value)` says why a value cannot be a single file name, in every form a file system
  or a later decoding step could see: as sent, URL-decoded (up to three times: `%2e%2e%2f`,
  `%252e...`), and NFKC-normalised (fullwidth `．．／` is `../`). Refused: empty, longer than
  MAX_NAME_BYTES, control characters (NUL, newline), `/`, `\\` and slash look-alikes, and a leading
  `.` (`.`, `..`, hidden names such as the label folder's `.history`).
* `check_name` turns that into a 400 that names the value and says what a valid one looks like.
* `inside(path, root)` is the containment test on resolved paths: a symlink inside the studies
  folder that points out of it is outside (lib/datastore.py refuses to read or write through it).
"""
import os
import unicodedata
from typing import Optional
from urllib.parse import unquote

from fastapi import HTTPException

MAX_NAME_BYTES = 200  # below every file system's 255-byte limit once an extension is added
# characters that look like or act as a path separator somewhere (NFKC keeps some of them)
SLASH_LIKE = "\u2215\u2044\uff0f\u29f8\u2571\uff3c\ufe68\u2216\u29f5\u29f9"

HINTS = {
    "image": "an image id is a file name without folders, e.g. 'case_001' (as listed by GET /datastore/?output=all)",
    "tag": "a label tag is a plain name such as 'final' or 'original'",
    "file name": "upload the file under a plain name such as 'case_001.nii.gz'",
    "session_id": "a session id is the one PUT /session/ returned",
    "label": "a segment name is plain text such as 'liver'",
}


class UnsafePathError(ValueError):
    """A value would make the server read or write outside its folders (lib/datastore.py raises it)."""

    status_code = 400


def _forms(value: str):
    forms, current = {value}, value
    for _ in range(3):  # %2e%2e%2f, %252e%252e%252f, ...
        decoded = unquote(current)
        if decoded == current:
            break
        forms.add(decoded)
        current = decoded
    return forms | {unicodedata.normalize("NFKC", f) for f in forms}


def control_problem(value: str) -> Optional[str]:
    for c in value:
        if unicodedata.category(c) in ("Cc", "Cf", "Cs"):
            return f"contains the control character U+{ord(c):04X} (NUL, newline, zero-width, ...)"
    return None


def name_problem(value) -> Optional[str]:
    """Why `value` cannot be used as one file name (None when it can)."""
    if not isinstance(value, str) or not value:
        return "is empty"
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    for form in sorted(_forms(value)):
        problem = control_problem(form)
        if problem:
            return problem
        if "/" in form or "\\" in form or any(c in SLASH_LIKE for c in form):
            return "contains a path separator ('/', '\\', or an encoded or look-alike form)"
        if form.startswith("."):
            return "starts with '.' ('..', '.', or a hidden name)"
    return None


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_name(value, what: str, hint: Optional[str] = None) -> str:
    """`value` unchanged, or HTTPException(400) saying what is wrong and what a valid one is."""
    problem = name_problem(value)
    if problem:
        raise HTTPException(status_code=400, detail=f"{what} {_shown(value)} {problem}: {hint or HINTS.get(what, '')}".rstrip(": "))
    return value


def check_optional_name(value, what: str, hint: Optional[str] = None):
    return value if value in (None, "") else check_name(value, what, hint)


def check_text(value, what: str, max_bytes: int = MAX_NAME_BYTES) -> None:
    """A value that is not a path but is logged or stored (segment names): no control characters, bounded."""
    if not isinstance(value, str):
        return
    problem = control_problem(value)
    if not problem and len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        problem = f"is longer than {max_bytes} bytes"
    if problem:
        raise HTTPException(status_code=400, detail=f"{what} {_shown(value)} {problem}: {HINTS.get(what, '')}".rstrip(": "))


def upload_name(filename: Optional[str]) -> Optional[str]:
    """The base name of an uploaded file, checked (400) when the client sent one.

    Clients send whole local paths (MONAILabelClient sends `/tmp/.../label.nii.gz`); MONAI Label
    keeps only the base name, so only that is checked: it must be a plain name."""
    if not filename:
        return filename
    problem = control_problem(filename)
    if problem:
        raise HTTPException(status_code=400, detail=f"file name {_shown(filename)} {problem}: {HINTS['file name']}")
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return check_name(base, "file name")


def inside(path: str, root: str) -> bool:
    """True when `path`, with every symlink resolved, is `root` or lies under it."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)
