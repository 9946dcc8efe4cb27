"""Which checkpoint is live: the one place that decides, so /info, the log and the tests agree.

Order (first that applies wins):
  1. ``--conf checkpoint PATH``              -> that file (missing file = start-up error, no fallback:
                                                a user who names weights must get those weights)
  2. ``apps/sammed3d/model/sam_med3d_turbo.pth`` already present -> the released weights
  3. download of the released file            -> saved as (2); skipped with ``--conf download false``
  4. the embedded default model in ``model/default/``
  5. nothing                                  -> start-up error, unless ``allow_random_weights`` is set,
                                                in which case the caller serves random weights and
                                                says so loudly in /info

This module never imports MONAI Label or torch: it only finds, fetches and verifies files.
"""
import glob
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Dict, List, Optional, Tuple

from .util import parse_bool, sha256_file

logger = logging.getLogger(__name__)

RELEASED_URL = "https://huggingface.co/blueyo0/SAM-Med3D/resolve/main/sam_med3d_turbo.pth"
RELEASED_NAME = "sam_med3d_turbo.pth"
DEFAULT_SUBDIR = "default"
CHECKPOINT_PATTERNS = ("*.pt", "*.pth")


class WeightsError(RuntimeError):
    """No usable checkpoint; the message says what was tried and what to do."""


class IncompleteDownload(OSError):
    """The connection delivered less than announced: treated like being offline (fall back)."""


@dataclass
class WeightsChoice:
    path: Optional[str]  # None only for source == "random"
    source: str  # "conf" | "released" | "downloaded" | "default" | "random"
    sha256: Optional[str] = None
    tried: List[str] = field(default_factory=list)

    @property
    def is_random(self) -> bool:
        return self.source == "random"

    def describe(self) -> str:
        if self.is_random:
            return "RANDOM WEIGHTS (allow_random_weights is set): masks are meaningless"
        return f"{self.source}: {self.path} (sha256 {self.sha256[:12] if self.sha256 else '?'})"


@dataclass(frozen=True)
class ServedWeights:
    """What a model serves, as /info shows it (lib.configs builds one per model).

    Frozen: a hot swap (lib.versions.LiveModelWatcher) makes a new one with dataclasses.replace, so
    a description handed out never changes under its reader."""

    source: str  # "conf" | "released" | "downloaded" | "default" | "random" | "version" | MedSAM's
    path: Optional[str]
    sha256: Optional[str]
    model_version: str  # what the engine and every result name: "<name>@<sha12>"
    device: str = "cpu"

    INFO_HIDDEN: ClassVar[Tuple[str, ...]] = ()  # fields /info does not show

    @property
    def is_random(self) -> bool:
        return self.source == "random"

    def info(self) -> Dict[str, Any]:
        """The dict /info shows: the fields in order (tuples as lists), less INFO_HIDDEN."""
        out = {}
        for f in fields(self):
            if f.name not in self.INFO_HIDDEN:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class SAMMed3DWeights(ServedWeights):
    precision: str = "fp32"  # the --conf value as given (lower case)
    click_mode: str = "newest"
    tried: Tuple[str, ...] = ()  # where lib.weights looked
    version_name: Optional[str] = None  # "vNNNN" when a published fine-tuned version is served
    versions_dir: Optional[str] = None
    refine: str = "none"  # the mask post-processing (lib.session.refine), in words
    prior_flood: str = "none"  # the prior's flood for large structures (lib.model.flood_region), in words
    prior_fine: str = "none"  # a small walled structure's 1.5 mm region (lib.session.fine_region), in words
    local_update: str = "none"  # a later click changes only its piece of the mask (lib.session.local_update)
    plain_region: str = "none"  # the stored-grid region for plain box answers (lib.session.plain_region), in words


@dataclass(frozen=True)
class MedSAMWeights(ServedWeights):
    encoder: str = "fp32"  # fp32 | int8 (quantised Linear layers)

    INFO_HIDDEN: ClassVar[Tuple[str, ...]] = ("device",)  # /info has always shown the five others


def find_default_checkpoint(model_dir: str) -> Optional[str]:
    """The embedded default lives alone in model/default/; several candidates would be ambiguous."""
    folder = os.path.join(model_dir, DEFAULT_SUBDIR)
    found = sorted({p for pat in CHECKPOINT_PATTERNS for p in glob.glob(os.path.join(folder, pat))})
    if len(found) > 1:
        raise WeightsError(f"{folder} holds several checkpoints {found}; keep one or pass --conf checkpoint PATH")
    return found[0] if found else None


def download(url: str, dest: str, timeout: float = 10.0, sha256: Optional[str] = None, progress: bool = True) -> str:
    """Fetch ``url`` to ``dest`` through a temp file in the same folder, then rename atomically.

    A partial or corrupt download never appears under ``dest``: the size must equal Content-Length
    (when the server sends one) and the SHA-256 must match when one is given. Returns the SHA-256.
    Raises OSError (URLError, timeouts, IncompleteDownload) or http.client.HTTPException for network
    trouble, and WeightsError for a complete file whose SHA-256 is wrong (never silently replaced).
    """
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    req = urllib.request.Request(url, headers={"User-Agent": "sammed3d-monailabel-app"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        expected = resp.headers.get("Content-Length")
        expected = int(expected) if expected and expected.isdigit() else None
        fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=os.path.dirname(os.path.abspath(dest)))
        h = hashlib.sha256()
        got = 0
        try:
            bar = _progress_bar(expected, os.path.basename(dest), progress)
            with os.fdopen(fd, "wb") as out:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    h.update(block)
                    got += len(block)
                    bar.update(len(block))
            bar.close()
            if expected is not None and got != expected:
                raise IncompleteDownload(f"download of {url} is truncated: {got} of {expected} bytes")
            if got == 0:
                raise IncompleteDownload(f"download of {url} is empty")
            digest = h.hexdigest()
            if sha256 and digest.lower() != sha256.strip().lower():
                raise WeightsError(f"SHA-256 of {url} is {digest}, expected {sha256.strip().lower()}: file rejected")
            os.replace(tmp, dest)
            return digest
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _progress_bar(total, name, enabled):
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {name}",
                    disable=not enabled, mininterval=1.0)
    except ImportError:  # tqdm comes with monai; the bare fallback keeps this module usable without it
        class _Null:
            def update(self, n):
                pass

            def close(self):
                pass

        return _Null()


def resolve_weights(conf: Dict[str, str], model_dir: str) -> WeightsChoice:
    """Pick the live checkpoint from ``--conf`` settings; see the module docstring for the order."""
    tried: List[str] = []
    want_sha = conf.get("checkpoint_sha256") or None

    path = conf.get("checkpoint")
    if path:
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise WeightsError(f"--conf checkpoint {path}: no such file")
        return _verified(WeightsChoice(path, "conf", tried=[f"conf checkpoint {path}"]), want_sha)

    released = os.path.join(model_dir, RELEASED_NAME)
    tried.append(f"released file {released}")
    if os.path.isfile(released):
        return _verified(WeightsChoice(released, "released", tried=tried), want_sha)

    url = conf.get("weights_url", RELEASED_URL)
    # absent: download; "" stays "no" as it always was
    if parse_bool(conf.get("download", True), "--conf download", default=False, error=WeightsError):
        tried.append(f"download {url}")
        timeout = float(conf.get("download_timeout", 10))
        logger.info(f"Weights: no {RELEASED_NAME} in {model_dir}; downloading {url} (timeout {timeout:g} s)")
        try:
            digest = download(url, released, timeout=timeout, sha256=want_sha)
            logger.info(f"Weights: downloaded {released} (sha256 {digest})")
            return WeightsChoice(released, "downloaded", sha256=digest, tried=tried)
        except (OSError, ValueError, http.client.HTTPException) as e:  # offline, refused, 404, cut off
            logger.warning(f"Weights: download not possible ({e}); offline? falling back to the embedded default")
    else:
        tried.append("download (skipped: --conf download false)")

    default = find_default_checkpoint(model_dir)
    tried.append(f"embedded default in {os.path.join(model_dir, DEFAULT_SUBDIR)}")
    if default:
        return _verified(WeightsChoice(default, "default", tried=tried), None)

    if parse_bool(conf.get("allow_random_weights"), "--conf allow_random_weights", default=False, error=WeightsError):
        logger.warning("Weights: NONE FOUND; serving RANDOM WEIGHTS because allow_random_weights is set")
        return WeightsChoice(None, "random", tried=tried)

    raise WeightsError(
        "no SAM-Med3D weights found. Tried: " + "; ".join(tried) + ". "
        f"Put {RELEASED_NAME} in {model_dir}, pass --conf checkpoint PATH, or (for testing only) "
        "--conf allow_random_weights true."
    )


def _verified(choice: WeightsChoice, want_sha: Optional[str]) -> WeightsChoice:
    choice.sha256 = sha256_file(choice.path)
    if want_sha and choice.sha256 != want_sha.strip().lower():
        raise WeightsError(f"SHA-256 of {choice.path} is {choice.sha256}, expected {want_sha.strip().lower()}")
    return choice
