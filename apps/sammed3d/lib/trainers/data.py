"""Training targets from final labels, and their crop variants (jitter + flips) with an embedding cache.

A *target* is one connected component (26-connectivity) of one label value of one labelled image:
the thing a user would click on. Its crops come from lib.session.extract_training_crop (the
session's own RAS 1.5 mm preprocessing), centred on the component's bounding-box centre, as
SAM-Med3D trains. A target has `variants` fixed crop variants: variant 0 is centred and unflipped,
the others are shifted by up to `jitter` grid voxels per axis and flipped along random axes. Each
epoch draws one variant per target, so with a frozen encoder every embedding is computed once.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

from lib.session import extract_training_crop, load_volume
from lib.session.io import read_label
from lib.session.volume import file_key

logger = logging.getLogger(__name__)
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class Target:
    case: str  # image id (file name without extension)
    image: str  # image path
    label: str  # label path
    value: int  # label value
    component: int  # 0 = largest component of that value
    centre: Tuple[float, float, float]  # stored (i, j, k) bounding-box centre
    voxels: int

    @property
    def name(self) -> str:
        return f"{self.case}:{self.value}:{self.component}"


@dataclass(frozen=True)
class Variant:
    offset: Tuple[int, int, int]  # grid voxels added to the crop origin
    flips: Tuple[int, ...]  # crop axes (0, 1, 2) flipped


def case_id(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    for ext in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def read_label_array(path: str) -> np.ndarray:
    """Label as stored (i, j, k), integer."""
    return read_label(path)[0].astype(np.int32, copy=False)


def components(label: np.ndarray, value: int, max_components: int, min_voxels: int):
    """[(component mask (stored order, bool), bbox centre, voxels)] largest first."""
    lab, n = ndimage.label(label == value, structure=_STRUCTURE)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    order = [int(i) for i in np.argsort(-sizes) if sizes[i] >= min_voxels][:max_components]
    out = []
    boxes = ndimage.find_objects(lab)
    for i in order:
        box = boxes[i - 1]
        centre = tuple((s.start + s.stop - 1) / 2.0 for s in box)
        out.append((lab == i, centre, int(sizes[i])))
    return out


def segment_names(datastore) -> Optional[List[str]]:
    """The segment names of the datastore's final labels (the ones the task trains on), from each label's
    label_info ([{"name", "idx"}], as 3D Slicer saves a label); None when any label has none (OHIF, a script, a
    DICOMweb datastore) or the datastore cannot say: a version trained on them then answers every segment
    (lib.model.segments). Reads only the datastore's records (no label file is fetched)."""
    names = set()
    try:
        for image_id in datastore.get_labeled_images():
            entries = (datastore.get_label_info(image_id, "final") or {}).get("label_info")
            if not isinstance(entries, list) or not entries:
                return None
            for e in entries:
                name = e.get("name") if isinstance(e, dict) else None
                if not isinstance(name, str) or not name.strip():
                    return None
                names.add(name.strip())
    except Exception as e:  # a datastore whose label ids are not its image ids (DICOMweb SEG series), a fake
        logger.info(f"segment names not read from the datastore ({type(e).__name__}: {e}): every segment")
        return None
    return sorted(names) or None


def find_targets(samples: Sequence[Dict], max_components: int = 2, min_voxels: int = 50) -> List[Target]:
    """Targets of every {"image", "label"} sample (MONAI Label datalist entries), in sample order."""
    targets = []
    for s in samples:
        lab = read_label_array(s["label"])
        values = [int(v) for v in np.unique(lab) if v != 0]
        if not values:
            logger.warning(f"label {s['label']} is empty: skipped")
        for v in values:
            for c, (_, centre, voxels) in enumerate(components(lab, v, max_components, min_voxels)):
                targets.append(Target(case_id(s["image"]), s["image"], s["label"], v, c, centre, voxels))
    return targets


def make_variants(n: int, jitter: int, flip: bool, rs: np.random.Generator) -> List[Variant]:
    out = [Variant((0, 0, 0), ())]
    for _ in range(max(n, 1) - 1):
        offset = tuple(int(x) for x in rs.integers(-jitter, jitter + 1, size=3)) if jitter > 0 else (0, 0, 0)
        flips = tuple(a for a in range(3) if flip and rs.random() < 0.5)
        out.append(Variant(offset, flips))
    return out


class CropSource:
    """Builds (image crop, target crop) for (target, variant) through the session; keeps a few
    volumes and labelled components in memory so the variants of a target share one load."""

    def __init__(self, modality: Optional[str] = None, keep: int = 4):
        self.modality = modality
        self._volumes: "OrderedDict[str, object]" = OrderedDict()
        self._labels: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self.keep = keep
        self.built = 0

    def _get(self, store, key, make):
        if key in store:
            store.move_to_end(key)
            return store[key]
        value = store[key] = make()
        while len(store) > self.keep:
            store.popitem(last=False)
        return value

    def component_mask(self, t: Target) -> np.ndarray:
        lab = self._get(self._labels, t.label, lambda: read_label_array(t.label))
        comps = components(lab, t.value, t.component + 1, 1)  # same order as find_targets
        return comps[t.component][0] if t.component < len(comps) else np.zeros_like(lab, dtype=bool)

    def build(self, t: Target, v: Variant) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> image (1, 1, C, C, C) float32, target (1, 1, C, C, C) float32 0/1, flipped per variant."""
        volume = self._get(self._volumes, t.image, lambda: load_volume(t.image))
        key = ("comp", t.label, t.value, t.component)
        mask = self._get(self._labels, key, lambda: self.component_mask(t))
        crop = extract_training_crop(volume, mask, t.centre, v.offset, modality=self.modality)
        img, tgt = crop.image, crop.target[None, None].float()
        if v.flips:
            dims = [d + 2 for d in v.flips]
            img, tgt = img.flip(dims), tgt.flip(dims)
        self.built += 1
        return img.contiguous(), tgt.contiguous()


def cache_key(t: Target, v: Variant, encoder_sha: str, modality: Optional[str]) -> str:
    """Hex key of (image file, label file, component, variant, encoder version, modality)."""
    parts = (file_key(t.image), file_key(t.label), t.value, t.component, v.offset, v.flips, encoder_sha, modality)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


class EmbeddingCache:
    """Embeddings (and target crops) of training crop variants for a frozen encoder.

    In memory, and on disk when `folder` is given (so the next train request starts warm). Keys
    include the encoder fingerprint: a changed encoder never reads a stale embedding, and
    `prune(encoder_sha)` deletes files of other encoders.
    """

    def __init__(self, folder: Optional[str] = None):
        self.folder = folder
        self._mem: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = self.disk_hits = 0
        if folder:
            os.makedirs(folder, exist_ok=True)

    def _file(self, key: str) -> str:
        return os.path.join(self.folder, f"{key}.pt")

    def get(self, key: str) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        item = self._mem.get(key)
        if item is None and self.folder and os.path.exists(self._file(key)):
            try:
                d = torch.load(self._file(key), map_location="cpu", weights_only=True)
                shape = tuple(d["shape"].tolist())
                tgt = torch.from_numpy(np.unpackbits(d["target"].numpy())[: int(np.prod(shape))].reshape(shape))
                item = (d["emb"], tgt.float())
                self._mem[key] = item
                self.disk_hits += 1
            except Exception as e:  # unreadable file: recompute
                logger.warning(f"embedding cache file {self._file(key)} unreadable ({e}); recomputing")
                item = None
        if item is None:
            self.misses += 1
        else:
            self.hits += 1
        return item

    def put(self, key: str, emb: torch.Tensor, target: torch.Tensor) -> None:
        emb = emb.detach().float().cpu().contiguous()
        target = target.detach().cpu()
        self._mem[key] = (emb, target.float())
        if self.folder:
            packed = torch.from_numpy(np.packbits(target.numpy().astype(bool).ravel()))
            tmp = self._file(key) + f".tmp{os.getpid()}"
            torch.save({"emb": emb, "target": packed, "shape": torch.tensor(target.shape)}, tmp)
            os.replace(tmp, self._file(key))

    def __len__(self) -> int:
        return len(self._mem)

    def stats(self) -> Dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "disk_hits": self.disk_hits, "entries": len(self._mem)}

    @staticmethod
    def index_path(folder: str) -> str:
        return os.path.join(folder, "ENCODER")

    def bind_encoder(self, encoder_sha: str) -> int:
        """Record which encoder the disk cache is for; drop every file when it changed. -> files dropped."""
        if not self.folder:
            return 0
        idx = self.index_path(self.folder)
        try:
            with open(idx) as f:
                old = f.read().strip()
        except OSError:
            old = None
        dropped = 0
        if old != encoder_sha:
            for name in os.listdir(self.folder):
                if name.endswith(".pt"):
                    os.remove(os.path.join(self.folder, name))
                    dropped += 1
            self._mem.clear()
            with open(idx, "w") as f:
                f.write(encoder_sha)
            if dropped:
                logger.info(f"embedding cache: encoder changed, {dropped} cached embeddings dropped")
        return dropped
