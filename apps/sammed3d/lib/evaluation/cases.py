"""The evaluation's cases: image/label pairs matched by file name, their label volumes, the targets
(one per label value present) and structure names.

A data folder holds images/ and labels/ (or imagesTr/ and labelsTr/, imagesTs/ and labelsTs/) with
matching file names (an nnU-Net `_0000` image suffix is ignored); --images/--labels of the command
name the two folders directly. A labels.json ({case: {name: value}}) beside the label files names
the structures.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lib.session.io import read_label as read_stored_label

_EXTS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _stem(name: str) -> Optional[str]:
    for ext in _EXTS:
        if name.lower().endswith(ext):
            stem = name[: -len(ext)]
            return stem[:-5] if stem.endswith("_0000") else stem
    return None


def find_pairs(data: Optional[str] = None, images: Optional[str] = None, labels: Optional[str] = None) -> List[Tuple[str, str, str]]:
    """[(case id, image path, label path)] matched by file name, sorted by case id."""
    if data:
        for im, lb in (("images", "labels"), ("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
            if os.path.isdir(os.path.join(data, im)) and os.path.isdir(os.path.join(data, lb)):
                images, labels = os.path.join(data, im), os.path.join(data, lb)
                break
        else:
            raise SystemExit(f"{data}: expected images/ + labels/ (or imagesTr/ + labelsTr/) folders")
    if not images or not labels:
        raise SystemExit("give --data DIR or both --images DIR and --labels DIR")
    label_files = {_stem(f): os.path.join(labels, f) for f in os.listdir(labels) if _stem(f)}
    pairs = []
    for f in sorted(os.listdir(images)):
        stem = _stem(f)
        if stem and stem in label_files:
            pairs.append((stem, os.path.join(images, f), label_files[stem]))
    if not pairs:
        raise SystemExit(f"no image/label pairs with matching names in {images} and {labels}")
    return pairs


def read_label(path: str) -> np.ndarray:
    """Label volume as stored (i, j, k) -- the same index order the engine returns masks in
    (lib.session.io.read_label; SessionError, a ValueError, when it is not 3D)."""
    return read_stored_label(path)[0]


def iter_targets(pairs, values: Optional[Sequence[int]], log=print):
    """Yield (case, image_path, value, binary target) for every requested label present in each pair."""
    for case, image_path, label_path in pairs:
        lab = read_label(label_path)
        for value in values if values else [int(v) for v in np.unique(lab) if v != 0]:
            gt = lab == value
            if not gt.any():
                log(f"  {case}: label {value} absent, skipped")
                continue
            yield case, image_path, int(value), gt


def load_names(pairs) -> Dict[Tuple[str, int], str]:
    """{(case, value): structure name} from a labels.json ({case: {name: value}}) beside the label files."""
    names: Dict[Tuple[str, int], str] = {}
    for folder in sorted({os.path.dirname(p[2]) for p in pairs}):
        path = os.path.join(folder, "labels.json")
        if os.path.isfile(path):
            with open(path) as f:
                for case, table in json.load(f).items():
                    for name, value in table.items():
                        names[(case, int(value))] = name
    return names
