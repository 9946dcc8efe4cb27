"""Standard-library helpers every layer may use (layer 0: no torch, no other `lib` import).

`parse_bool`: the app's one true/false parser (--conf values, request parameters, train options).
`sha256_file`: the app's one file hash (weights, model versions, LiteMedSAM weights).
"""
import hashlib
from typing import Any, Optional, Type

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_bool(value: Any, name: str, default: Optional[bool] = None, error: Type[Exception] = ValueError) -> bool:
    """True or False for `value`, else `error("<name> must be true or false, got <value>")`.

    Accepted: True/False; the numbers 1 and 0; the strings true/1/yes/on and false/0/no/off (any
    case, surrounding spaces ignored). None and "" give `default`, and are errors when it is None.
    """
    if isinstance(value, bool):
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        if default is not None:
            return default
    elif isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    elif isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise error(f"{name} must be true or false, got {value!r:.40}")


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
