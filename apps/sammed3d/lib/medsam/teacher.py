"""LiteMedSAM as a teacher: pseudo-label volumes with MedSAM's 3D box protocol (issue 8, item 4).

For each volume and each structure, a 3D box (Slicer ROI convention: stored voxel indices
[i_min, i_max, j_min, j_max, k_min, k_max], inclusive) is segmented by MedSAMEngine.segment_box
(lib.medsam.propagate: centre slice, then slice by slice). The boxes come either from

* a label file with known structures (an atlas, a coarse label, a user's final label): only each
  value's bounding box is used, never its voxels (`boxes_from_label`), or
* a JSON of boxes (`read_box_json`): {"<case or file name>": [{"value": 3, "roi": [...],
  "name": "..."}, ...]}, or a plain list of such entries when there is one image.

The pseudo-label file is written on the image's exact grid (size, spacing, origin, direction copied
from the image) with each structure's label value. Structures of one volume share the engine's
per-slice encoder cache, so a slice is encoded once for all structures that cross it. Where two
pseudo-masks overlap, the smaller structure wins (it was written last): a small structure inside a
big one's box is the more specific answer.

    cd apps/sammed3d && python -m lib.medsam.teacher --images IMG_DIR --box-labels LABEL_DIR \
        --out OUT_DIR [--gt box-labels|GT_DIR] [--values 11,12] [--margin 0] [--report OUT/report.json]
    python -m lib.medsam.teacher --images ct.nii.gz --boxes boxes.json --out OUT_DIR
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lib.session.errors import SessionError
from lib.session.io import StoredGrid
from lib.session.io import read_label as read_stored_label
from lib.session.io import write_label

from .engine import MedSAMEngine
from .propagate import BoxError, clamp_roi

logger = logging.getLogger(__name__)
_EXTS = (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".mha", ".mhd")


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two masks, both empty: 1.0 (the definition of lib.evaluation.metrics.dice; lib/medsam sits
    below lib/evaluation, so it keeps its own two lines)."""
    p, g = pred.astype(bool), gt.astype(bool)
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & g).sum()) / denom


class TeacherError(ValueError):
    """Input the teacher cannot use (empty label, missing structure, box JSON it cannot read)."""


@dataclass(frozen=True)
class StructureBox:
    value: int  # label value written for this structure (1..65535)
    roi: Tuple[int, int, int, int, int, int]  # stored voxel indices, inclusive
    name: str = ""


def case_of(path: str) -> str:
    """File name without its image extension (and without an nnU-Net `_0000` suffix)."""
    name = os.path.basename(os.path.normpath(path))
    for ext in _EXTS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name[:-5] if name.endswith("_0000") else name


def read_label(path: str) -> Tuple[np.ndarray, StoredGrid]:
    """(label as stored (ni, nj, nk) int, its stored grid): lib.session.io.read_label; TeacherError
    when the file is unreadable or not a 3D scalar image."""
    try:
        label, grid = read_stored_label(path)
    except SessionError as e:
        raise TeacherError(str(e)) from None
    return label.astype(np.int64, copy=False), grid


def boxes_from_label(label: np.ndarray, values: Optional[Sequence[int]] = None, margin: int = 0,
                     names: Optional[Dict[int, str]] = None) -> List[StructureBox]:
    """Bounding boxes (+ `margin` voxels, clamped) of the label's structures; only extents are used.

    label: (ni, nj, nk) integer array as stored. values: which structures (default: every non-zero
    value). TeacherError when the label is empty or a requested value is absent.
    """
    present = [int(v) for v in np.unique(label) if v != 0]
    if not present:
        raise TeacherError("label has no structure (all voxels are 0): no box to take")
    want = [int(v) for v in values] if values else present
    missing = [v for v in want if v not in present]
    if missing:
        raise TeacherError(f"label values {missing} are absent from the label (present: {present})")
    out = []
    for v in want:
        idx = [np.nonzero((label == v).any(axis=tuple(b for b in range(3) if b != a)))[0] for a in range(3)]
        roi = []
        for a in range(3):
            roi += [max(0, int(idx[a][0]) - margin), min(label.shape[a] - 1, int(idx[a][-1]) + margin)]
        out.append(StructureBox(v, tuple(roi), (names or {}).get(v, "")))
    return out


def parse_boxes(entries, shape: Sequence[int], where: str = "boxes") -> List[StructureBox]:
    """JSON entries [{"value": v, "roi": [6 ints], "name": ...}] -> validated StructureBoxes.

    A missing value numbers the structures 1, 2, ... in order. BoxError for a box that is
    malformed or lies outside the volume (lib.session.roi.clamp_roi's rules); TeacherError for
    bad values.
    """
    if not isinstance(entries, list) or not entries:
        raise TeacherError(f"{where}: expected a non-empty list of {{'value', 'roi'}} entries")
    out, seen = [], set()
    for n, e in enumerate(entries):
        if not isinstance(e, dict) or "roi" not in e:
            raise TeacherError(f"{where}[{n}]: expected an object with a 'roi' [i_min, i_max, j_min, j_max, k_min, k_max]")
        v = e.get("value", n + 1)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 65536:
            raise TeacherError(f"{where}[{n}]: value must be an integer in 1..65535, got {v!r}")
        if v in seen:
            raise TeacherError(f"{where}[{n}]: value {v} given twice")
        seen.add(v)
        try:
            roi = clamp_roi(e["roi"], shape)
        except BoxError as err:
            raise BoxError(f"{where}[{n}] (value {v}): {err}") from None
        out.append(StructureBox(int(v), roi, str(e.get("name", ""))))
    return out


def read_box_json(path: str) -> Dict[str, list]:
    """{case or file name: entries} from a box JSON; a top-level list is stored under "*" (any image)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TeacherError(f"cannot read box JSON {path}: {e}") from None
    if isinstance(data, list):
        return {"*": data}
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        return data
    raise TeacherError(f"{path}: expected a list of boxes or an object {{case: [boxes]}}")


class Teacher:
    """Pseudo-labels volumes with one MedSAMEngine (its per-file, per-slice caches are shared)."""

    def __init__(self, engine: MedSAMEngine, window=None, modality: Optional[str] = None,
                 slice_axis: Optional[int] = None):
        self.engine, self.window, self.modality, self.slice_axis = engine, window, modality, slice_axis

    def label_volume(self, image_path: str, boxes: Sequence[StructureBox], out_path: str,
                     gt: Optional[np.ndarray] = None) -> Dict:
        """Segment every box, write the pseudo-label to out_path -> report dict.

        gt: optional (ni, nj, nk) ground-truth label (same grid): Dice per structure is reported.
        """
        if not boxes:
            raise TeacherError(f"{image_path}: no boxes")
        t0 = time.perf_counter()
        vol = self.engine.volume(image_path)
        if gt is not None and tuple(gt.shape) != tuple(vol.shape):
            raise TeacherError(f"ground truth shape {list(gt.shape)} != image shape {list(vol.shape)}")
        masks, rows = {}, []
        for n, b in enumerate(boxes):
            res = self.engine.segment_box(image_path, b.roi, modality=self.modality, window=self.window,
                                          slice_axis=self.slice_axis, clip_to_roi=True)
            masks[b.value] = res.mask.astype(bool)
            rows.append({"value": b.value, "name": b.name, "roi": list(res.roi), "window": res.window,
                         "slice_axis": res.slice_axis, "slices_segmented": len(res.slices),
                         "slices_encoded": res.encoded, "voxels": int(res.mask.sum()),
                         "seconds": {k: round(float(v), 3) for k, v in res.timings.items()}})
            logger.info(f"  {case_of(image_path)} [{n + 1}/{len(boxes)}] value {b.value} {b.name}: "
                        f"{len(res.slices)} slices, {res.encoded} encoded, {rows[-1]['voxels']} voxels, "
                        f"{res.timings['total']:.1f} s")
        # larger structures first, so a smaller one inside them overwrites (the more specific answer)
        out = np.zeros(vol.shape, dtype=np.uint16)
        for v in sorted(masks, key=lambda v: -int(masks[v].sum())):
            out[masks[v]] = v
        out = out.astype(np.uint8) if out.max() < 256 else out
        write_label(out, out_path, vol.grid)
        for r in rows:
            r["voxels_written"] = int((out == r["value"]).sum())
            if gt is not None:
                r["dice_vs_gt"] = round(dice(out == r["value"], gt == r["value"]), 4)
                r["dice_vs_gt_raw"] = round(dice(masks[r["value"]], gt == r["value"]), 4)  # before overlaps
        total = time.perf_counter() - t0
        return {"case": case_of(image_path), "image": image_path, "pseudo_label": out_path,
                "structures": rows, "seconds": round(total, 2),
                "encode_s": round(sum(r["seconds"]["encode"] for r in rows), 2),
                "decode_s": round(sum(r["seconds"]["decode"] for r in rows), 2),
                "slices_encoded": int(sum(r["slices_encoded"] for r in rows))}


def _files(arg: Sequence[str]) -> List[str]:
    """Paths from a list of files and/or folders (image files in a folder, sorted)."""
    out = []
    for p in arg:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(_EXTS))
        elif os.path.exists(p):
            out.append(p)
        else:
            raise TeacherError(f"{p}: no such file or folder")
    return out


def _match(image: str, candidates: List[str], what: str, single: bool) -> str:
    """The candidate named like the image; with one image and one candidate, that one."""
    if single and len(candidates) == 1:
        return candidates[0]
    by_case = {case_of(c): c for c in candidates}
    if case_of(image) not in by_case:
        raise TeacherError(f"no {what} file named like {os.path.basename(image)} (case {case_of(image)!r})")
    return by_case[case_of(image)]


def _out_name(image: str) -> str:
    name = os.path.basename(os.path.normpath(image))
    ext = next((e for e in _EXTS if name.lower().endswith(e)), ".nii.gz")
    return case_of(image) + (".nrrd" if ext == ".seg.nrrd" else ext)


def run(args, engine: Optional[MedSAMEngine] = None) -> Dict:
    """Label every image of args.images (see main for the arguments) -> the report dict."""
    images = _files(args.images)
    if not images:
        raise TeacherError("no images given")
    if bool(args.box_labels) == bool(args.boxes):
        raise TeacherError("give exactly one of --box-labels (label files) or --boxes (JSON)")
    if args.gt == "box-labels" and not args.box_labels:
        raise TeacherError("--gt box-labels scores against the --box-labels files: give them, or a --gt path")
    values = [int(v) for v in str(args.values or "").split(",") if v.strip()]
    window = args.window
    if isinstance(window, str) and window.strip().startswith("["):  # "[level, width]"
        try:
            window = tuple(float(v) for v in json.loads(window))
            if len(window) != 2:
                raise ValueError
        except (ValueError, TypeError):
            raise TeacherError(f"--window {args.window!r}: expected [level, width]") from None
    box_label_files = _files(args.box_labels) if args.box_labels else []
    box_json = read_box_json(args.boxes) if args.boxes else {}
    gt_files = [] if not args.gt or args.gt == "box-labels" else _files([args.gt])
    if engine is None:
        from .engine import build_medsam_engine

        engine = build_medsam_engine(args.device, args.weights, args.cache_gb)
    teacher = Teacher(engine, window, args.modality, args.slice_axis)
    report = {"model_version": engine.model_version, "margin": args.margin, "volumes": []}
    t0 = time.perf_counter()
    try:
        from tqdm import tqdm

        it = tqdm(images, desc="teacher", unit="volume", ascii=True)
    except ImportError:
        it = images
    for image in it:
        vol = engine.volume(image)
        gt = None
        if box_label_files:
            label_path = _match(image, box_label_files, "box label", len(images) == 1)
            label, _ = read_label(label_path)
            if tuple(label.shape) != tuple(vol.shape):
                raise TeacherError(f"{label_path}: shape {list(label.shape)} != image {list(vol.shape)}")
            boxes = boxes_from_label(label, values, args.margin)
            gt = label if args.gt == "box-labels" else None
        else:
            key = next((k for k in (case_of(image), os.path.basename(image), "*") if k in box_json), None)
            if key is None:
                raise TeacherError(f"{args.boxes}: no boxes for {os.path.basename(image)} (keys: {sorted(box_json)})")
            boxes = parse_boxes(box_json[key], vol.shape, f"{args.boxes}:{key}")
            if values:
                missing = [v for v in values if v not in {b.value for b in boxes}]
                if missing:
                    raise TeacherError(f"{args.boxes}: no box with value {missing} for {os.path.basename(image)} "
                                       f"(values: {[b.value for b in boxes]})")
                boxes = [b for b in boxes if b.value in values]
        if gt_files:
            gt_path = _match(image, gt_files, "ground-truth", len(images) == 1)
            gt = read_label(gt_path)[0]
        entry = teacher.label_volume(image, boxes, os.path.join(args.out, _out_name(image)), gt)
        report["volumes"].append(entry)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    dices = [r["dice_vs_gt"] for v in report["volumes"] for r in v["structures"] if "dice_vs_gt" in r]
    if dices:
        report["mean_dice_vs_gt"] = round(float(np.mean(dices)), 4)
    path = args.report or os.path.join(args.out, "teacher_report.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    report["report_path"] = path
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib.medsam.teacher", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--box-labels", nargs="+", help="label files/folders (matched by file name) whose structures' "
                   "bounding boxes are the prompts (voxels are not used)")
    p.add_argument("--boxes", help="JSON: {case: [{value, roi: [i0,i1,j0,j1,k0,k1], name}]} or a list for one image")
    p.add_argument("--values", default="", help="comma-separated label values to label (default: all)")
    p.add_argument("--margin", type=int, default=0, help="voxels added to each box from a label file (default 0)")
    p.add_argument("--gt", default=None, help="ground truth for Dice: a label file/folder, or 'box-labels'")
    p.add_argument("--out", required=True, help="folder for the pseudo-label files")
    p.add_argument("--report", default=None, help="JSON report path (default OUT/teacher_report.json)")
    p.add_argument("--window", default=None, help="auto (default), soft_tissue, lung, bone, brain, percentile or [level, width]")
    p.add_argument("--modality", default=None, help="CT, MR, ... (default: from the image)")
    p.add_argument("--slice-axis", type=int, default=None, help="force the stored slice axis (0, 1, 2)")
    p.add_argument("--weights", default=None, help="lite_medsam.pth (default: lib.medsam.weights.locate)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-gb", type=float, default=2.0, help="slice-embedding cache (4 MiB per slice)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    from lib.model.medsam import CheckpointError
    from lib.session import SessionError

    from .weights import MedSAMWeightsError

    try:
        report = run(args)
    except (TeacherError, BoxError, SessionError, MedSAMWeightsError, CheckpointError) as e:
        print(f"error: {e}")
        return 2
    for v in report["volumes"]:
        for r in v["structures"]:
            d = f", Dice vs GT {r['dice_vs_gt']:.3f}" if "dice_vs_gt" in r else ""
            print(f"{v['case']} value {r['value']} {r['name']}: {r['voxels_written']} voxels{d}")
    print(f"{len(report['volumes'])} volume(s) in {report['seconds']:.1f} s; report {report['report_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
