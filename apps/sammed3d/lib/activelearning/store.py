"""Scores in the MONAI Label datastore (image info), tagged with the model version.

Keys in each image's info (datastore.update_image_info):
    sammed3d_uncertainty  {"score", "model_version", "prompts", "n_prompts", "ts", "seconds"}
    sammed3d_features     {"model_version", "dim", "f16" (base64 float16), "crops", "ts"}
    sammed3d_diversity    {"score", "model_version", "labelled" (count), "labelled_hash", "ts"}
    sammed3d_combined     {"score", "model_version", "weight", "rule", "ts"}

Scoring runs in a MONAI Label subprocess with its own copy of the datastore, and the server may
write the same JSON file meanwhile (saved labels, strategy time stamps). Both sides therefore
re-read the datastore file right before they read or write scores (`reload`): a LocalDatastore
reloads only when the file's mtime changed, so this is one stat when nothing happened.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Dict, Iterable, List, Optional

logger = logging.getLogger(__name__)

KEY_UNCERTAINTY = "sammed3d_uncertainty"
KEY_FEATURES = "sammed3d_features"
KEY_DIVERSITY = "sammed3d_diversity"
KEY_COMBINED = "sammed3d_combined"
SCORE_KEYS = {"uncertainty": KEY_UNCERTAINTY, "diversity": KEY_DIVERSITY, "combined": KEY_COMBINED}


def reload(datastore) -> None:
    """Pick up what another process wrote to the datastore file (LocalDatastore and subclasses)."""
    fn = getattr(datastore, "_init_from_datastore_file", None)
    if callable(fn):
        try:
            fn()
        except Exception as e:  # never fail a request because of a reload
            logger.warning(f"datastore reload failed: {e}")


def write_info(datastore, image_id: str, info: Dict[str, Any]) -> None:
    """Reload, then update: narrows the window in which a concurrent writer's change is lost."""
    reload(datastore)
    datastore.update_image_info(image_id, info)


def current(entry: Optional[Dict[str, Any]], version: str) -> bool:
    return bool(entry) and entry.get("model_version") == version and entry.get("score", entry.get("f16")) is not None


def labelled_hash(ids: Iterable[str]) -> str:
    return hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def handed_out(info: Dict[str, Any], now: Optional[float] = None, timeout: float = 3600.0) -> List[Dict[str, Any]]:
    """Hand-outs of this image still running: MONAI Label's /activelearning endpoint records
    {"strategy": {name: {"ts", "client_id"}}} for every image it returns."""
    now = time.time() if now is None else now
    out = []
    for name, rec in (info.get("strategy") or {}).items():
        if isinstance(rec, dict) and now - float(rec.get("ts", 0) or 0) < timeout:
            out.append({"strategy": name, "ts": float(rec.get("ts", 0) or 0), "client_id": rec.get("client_id")})
    return out


def busy_with_other(info: Dict[str, Any], client_id: Optional[str], now: Optional[float] = None,
                    timeout: float = 3600.0) -> bool:
    """Handed out within `timeout` to someone else. Anonymous requests (no client id) cannot be
    told apart, so any recent hand-out counts as someone else's."""
    for rec in handed_out(info, now, timeout):
        if client_id is None or rec["client_id"] != client_id:
            return True
    return False


def last_served(info: Dict[str, Any]) -> float:
    return max([float(r.get("ts", 0) or 0) for r in (info.get("strategy") or {}).values() if isinstance(r, dict)] or [0.0])
