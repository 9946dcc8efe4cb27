"""Standard-library helpers every layer may use (layer 0: no torch, no other `lib` import).

`parse_bool`: the app's one true/false parser (--conf values, request parameters, train options).
`sha256_file`: the app's one file hash (weights, model versions, LiteMedSAM weights).
`process_threads`: a named thread pool of this process (the plain region, the label writer; lib.model keeps its
own, layer 0 importing no other lib package).
"""
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Optional, Tuple, Type

_THREADS: Dict[str, Tuple[int, ThreadPoolExecutor]] = {}

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


def process_threads(name: str, workers: int) -> ThreadPoolExecutor:
    """The thread pool `name` of this process, made on first use with `workers` threads. Per process id: a forked
    child (a data loader worker) inherits the parent's pool object but none of its threads, so it makes its own."""
    found = _THREADS.get(name)
    if found is None or found[0] != os.getpid():
        found = _THREADS[name] = (os.getpid(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name))
    return found[1]
