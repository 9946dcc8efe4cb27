"""--conf parsing shared by the configs and main.py: a bad value stops start-up with one clear message."""
from __future__ import annotations

import logging
from typing import Dict

import torch

from lib.session.cache import LRUCache
from lib.session.volume_cache import VolumeCache

logger = logging.getLogger(__name__)

CANNOT_START = "SAM-Med3D app cannot start"


def stop_startup(error: Exception) -> RuntimeError:
    """The RuntimeError that stops start-up (logged), for `raise stop_startup(e) from None`."""
    msg = f"{CANNOT_START}: {error}"
    logger.error(msg)
    return RuntimeError(msg)


def startup_check(fn, *args):
    """Run a --conf parser; a bad value stops start-up with the same clear message as the weights."""
    try:
        return fn(*args)
    except ValueError as e:
        raise stop_startup(e) from None


def shared_volumes(conf: Dict[str, str]) -> VolumeCache:
    """The app's one volume cache: --conf cache_mb bounds the volumes of both engines and the
    SAM-Med3D embeddings together (one LRU)."""
    return VolumeCache(LRUCache(int(number(conf, "cache_mb", 2048) * (1 << 20))))


def al_combine(conf: Dict[str, str]):
    from lib.activelearning.select import COMBINE_RULES

    value = conf.get("al_combine")
    if value is not None and value not in COMBINE_RULES:
        raise ValueError(f"--conf al_combine must be one of {list(COMBINE_RULES)}, got {value!r}")
    return value


def refine(conf: Dict[str, str], model_default):
    """--conf refine none | geodesic | auto (default: what the model's config asks for, lib.model.model_refine),
    refine_band / refine_gamma / refine_factor / refine_fine_band / refine_full_res_max_voxels override its
    numbers -> GeodesicRefine or None."""
    from lib.session.refine import resolve_refine

    overrides = {key: number(conf, f"refine_{key}", 0)
                 for key in ("band", "gamma", "factor", "fine_band", "full_res_max_voxels") if f"refine_{key}" in conf}
    try:
        return resolve_refine(conf.get("refine", "auto"), model_default, **overrides)
    except ValueError as e:
        raise ValueError(f"--conf {e}") from None


def device(value: str) -> str:
    value = (value or "auto").strip().lower()
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--conf device {value}: CUDA is not available on this machine")
    if value != "cpu" and not value.startswith("cuda"):
        raise ValueError(f"--conf device must be auto, cpu or cuda[:N], got {value!r}")
    return value


def number(conf: Dict[str, str], key: str, default: float) -> float:
    value = conf.get(key, default)
    try:
        number_ = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--conf {key} must be a number, got {value!r}") from None
    if number_ <= 0:
        raise ValueError(f"--conf {key} must be positive, got {value!r}")
    return number_


def none_if_auto(value):
    return None if value is None or value.strip().lower() in ("", "auto") else value.strip()
