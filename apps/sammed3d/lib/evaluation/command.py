"""Click-simulation evaluation of the interactive models and their comparison rows (issues 3, 8, 14).

    cd apps/sammed3d && python -m lib.evaluation --data DIR [--labels-values 1,2] \
        [--model sammed3d medsam random_walker geodesic] [--checkpoint ckpt.pth] [--model-name NAME] \
        [--clicks 10] [--click-mode all newest] [--reuse-rows OLD/per_target.csv] --out results/ [--device cuda]

For every image/label pair (lib.evaluation.cases) and every target label value, the SAME simulated
annotator (lib.evaluation.clicks: the first click at the centre of the target, each next one at the
centre of the largest error region) drives each model (lib.evaluation.loop):

* `sammed3d`: the model of --checkpoint (or --random-weights) through the SegmentationEngine the
  server uses, on the image's stored grid, once per --click-mode; rows "<click mode>", or
  "<--model-name>:<click mode>";
* `random_walker`, `geodesic`: the classical comparison rows (lib.evaluation.classical; parameters
  tuned once on development cases, lib.evaluation.tune; --classical-params overrides them);
* `medsam`: LiteMedSAM's box protocol, a box counting as 2 clicks (lib.evaluation.medsam).

Per click: Dice, NSD at 2 mm at the report points (lib.evaluation.metrics), process CPU seconds and
wall seconds of the segmentation call. Outputs (lib.evaluation.report, lib.evaluation.plots):
per_target.csv, summary.csv, per_structure.csv/.md and dice_vs_clicks.png in --out, and the summary
table on stdout. `--reuse-rows` adds the rows of earlier runs for modes not run now (re-run the model
rows only, keep stored classical rows); with no model (an empty --model) it only merges them.

The older spellings still work: `--method model random_walker geodesic` (model = sammed3d) and
`--medsam` (adds medsam). DIR holds images/ and labels/ (or imagesTr/ and labelsTr/) with matching
file names; --images/--labels name the two folders, --image/--label one pair.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from typing import Dict, List

from lib.session.classical_region import METHODS as CLASSICAL_METHODS

from .cases import find_pairs, load_names
from .loop import evaluate, evaluate_method
from .plots import modes
from .report import markdown, read_rows, summarise, write_outputs

MODELS = ("sammed3d", "medsam", *CLASSICAL_METHODS)


def build_engine(args):
    """The model (checkpoint, or random weights of a config) wrapped in a SegmentationEngine."""
    import torch

    from lib.model import build_sam_med3d, load_checkpoint
    from lib.session import SegmentationEngine

    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint)
        version = args.model_version or str(meta.get("version") or os.path.basename(args.checkpoint))
    elif args.random_weights:
        torch.manual_seed(args.seed)
        config = json.loads(args.model_config) if args.model_config else None
        model = build_sam_med3d(config)
        version = args.model_version or f"random-seed{args.seed}"
    else:
        raise SystemExit("give --checkpoint PATH, or --random-weights (geometry/speed checks only)")
    from lib.model import model_refine
    from lib.model.flood_region import switch_flood
    from lib.session.fine_region import resolve_fine
    from lib.session.local_update import resolve_local
    from lib.session.plain_region import resolve_region
    from lib.session.refine import resolve_refine

    try:  # the server's rules (--conf refine, --conf prior_flood): auto = what the model's config asks for
        switch_flood(model, args.prior_flood)
        fine = resolve_fine(args.prior_fine, getattr(model, "config", None))
        local = resolve_local(args.local_update, getattr(model, "config", None))
        region = resolve_region(args.plain_region, getattr(model, "config", None),
                                getattr(model, "prior", None) is not None, args.plain_region_merge, args.atlas_prior)
        refine = resolve_refine(args.refine, model_refine(model), band=args.refine_band, gamma=args.refine_gamma,
                                factor=args.refine_factor, fine_band=args.refine_fine_band,
                                full_res_max_voxels=args.refine_full_res_max_voxels)
    except ValueError as e:
        raise SystemExit(f"--{e}") from None
    return SegmentationEngine(
        model, version, device=args.device, cache_bytes=int(args.cache_gb * (1 << 30)), modality=args.modality,
        precision=args.precision, max_crops=args.max_crops, refine=refine,
        fine=fine, local=local, region=region,
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m lib.evaluation", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="folder with images/ and labels/ (or imagesTr/ and labelsTr/)")
    p.add_argument("--refine", choices=("auto", "none", "geodesic"), default="auto",
                   help="sammed3d: image-aware refinement of the mask at twice the logits' resolution "
                        "(lib.session.refine), as the server's --conf refine: auto (default) = what the model's "
                        "config asks for (default-v5: geodesic band 6 gamma 60, at 1.5 mm up to 150000 voxels), "
                        "none, or geodesic")
    p.add_argument("--refine-band", type=float, default=None,
                   help="refinement: |logit| below this is re-decided (default: the model's, else 2)")
    p.add_argument("--refine-gamma", type=float, default=None,
                   help="refinement: gradient weight of the cost (default: the model's, else 20)")
    p.add_argument("--refine-factor", type=int, default=None,
                   help="refinement grid = crop / factor, 1, 2 or 4 (default: the model's, else 2)")
    p.add_argument("--refine-fine-band", type=float, default=None,
                   help="refinement: second stage at the crop's resolution within this of the first stage's "
                        "edge, 0 = none (default: the model's, else 0)")
    p.add_argument("--refine-full-res-max-voxels", type=int, default=None,
                   help="refinement: decide the band at the crop's own resolution when its bounding box there "
                        "holds at most this many voxels, 0 = never (default: the model's, else 0)")
    p.add_argument("--prior-flood", choices=("auto", "on", "off"), default="auto",
                   help="sammed3d with a geodesic prior (the embedded default): the walled region of the clicked "
                        "intensity (lib.model.flood_region), as the server's --conf prior_flood: auto (default) = "
                        "what the model's config asks for (default-v6: off), on, off")
    p.add_argument("--prior-fine", choices=("auto", "on", "off"), default="auto",
                   help="sammed3d: a click in a small walled structure takes its 1.5 mm region (lib.session.fine_region), "
                        "as the server's --conf prior_fine: auto (default) = what the model's config asks for")
    p.add_argument("--plain-region", choices=("auto", "on", "off"), default="auto",
                   help="sammed3d with a geodesic prior: where a click's decodes are all the prior's plain box "
                        "competition, the classical geodesic region on the stored grid (lib.session.plain_region), "
                        "as the server's --conf plain_region: auto (default) = what the model's config asks for")
    p.add_argument("--plain-region-merge", choices=("auto", "on", "off"), default="auto",
                   help="the plain region merged into the shown mask by the click update (on) or replacing it (off), "
                        "as the server's --conf plain_region_merge: auto (default) = the model's config")
    p.add_argument("--atlas-prior", choices=("auto", "off"), default="auto",
                   help="a brain MR click in a deep nucleus answered by the registered atlas (lib.session.atlas_prior), "
                        "as the server's --conf atlas_prior; here a first click waits for its volume's fit")
    p.add_argument("--local-update", choices=("auto", "off", "monotone", "piece"), default="auto",
                   help="a later click's change to the mask (lib.session.local_update), as the server's --conf "
                        "local_update: auto (default) = what the model's config asks for, off = the model's "
                        "proposal, monotone = an include only adds and an exclude only removes, piece = only the "
                        "connected piece the click lies in")
    p.add_argument("--prior-flood-min-ml", type=float, default=None,
                   help="sammed3d: the simulated annotator turns prior_flood on (per click request, as Slicer's "
                        "task option) for targets of at least this many ml, e.g. 1000 for lungs and liver")
    p.add_argument("--images", help="image folder (with --labels)")
    p.add_argument("--labels", help="label folder (with --images)")
    p.add_argument("--image", help="one image file (with --label)")
    p.add_argument("--label", help="its label file (with --image)")
    p.add_argument("--labels-values", default="", help="comma-separated label values (default: every non-zero value)")
    p.add_argument("--clicks", type=int, default=10, help="clicks (user actions) per target (default 10)")
    p.add_argument("--report-at", default="1,3,5,10", help="click counts to summarise")
    p.add_argument("--model", nargs="*", default=None, choices=MODELS,
                   help="models to run on the same cases and clicks, in this order: sammed3d (SegmentationEngine), "
                        "medsam (box row), the classical comparison rows random_walker / geodesic; default: "
                        "sammed3d; none (an empty --model) with --reuse-rows only merges earlier runs")
    p.add_argument("--method", nargs="*", default=None, choices=["model", *CLASSICAL_METHODS],
                   help="older spelling of --model (model = sammed3d), run after the --model ones")
    p.add_argument("--medsam", action="store_true", help="older spelling of --model ... medsam (run last)")
    p.add_argument("--classical-params", default=None,
                   help='JSON overriding the tuned classical parameters, e.g. \'{"random_walker": {"beta": 500}}\'')
    p.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    p.add_argument("--no-nsd", action="store_true", help="skip the NSD (surface Dice) at the report points")
    p.add_argument("--click-mode", nargs="+", default=["all"], choices=["all", "newest"],
                   help="sammed3d: one or both click modes")
    p.add_argument("--checkpoint", help="sammed3d: model checkpoint (.pth)")
    p.add_argument("--random-weights", action="store_true",
                   help="sammed3d: random weights (geometry/speed checks only)")
    p.add_argument("--model-config", help="sammed3d: JSON model config for --random-weights (default: released size)")
    p.add_argument("--model-name", default=None,
                   help="label the sammed3d rows '<name>:<click mode>' (e.g. default-v1) instead of the click "
                        "mode alone")
    p.add_argument("--margin-mm", type=float, default=5.0, help="medsam: box margin around the target (mm)")
    p.add_argument("--weights", default=None, help="medsam: lite_medsam.pth (default: lib.medsam.weights.locate)")
    p.add_argument("--reuse-rows", nargs="+", default=None,
                   help="per_target.csv files from earlier runs: their rows of modes not run now are added to the "
                        "outputs, in the order given (re-run only the model rows and keep the stored classical rows)")
    p.add_argument("--title", default=None, help="title of the PNG plot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-version", default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default=None, choices=[None, "bf16", "fp16"], help="sammed3d: encoder autocast")
    p.add_argument("--modality", default=None, help="CT / MR / auto (default: from DICOM tag or intensities)")
    p.add_argument("--max-crops", type=int, default=8)
    p.add_argument("--cache-gb", type=float, default=2.0)
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N cases")
    p.add_argument("--trace", action="store_true",
                   help="log every click: include/exclude, its voxel, the mask's voxels and how many lie in the target "
                        "(model and classical rows; e.g. with --image/--label/--labels-values for one target)")
    p.add_argument("--segment", default=None,
                   help="sammed3d: the segment name of every click request (a fine-tuned version answers with its "
                        "residual only for the segments it learnt, lib.model.segments); default eval-<label value>")
    p.add_argument("--out", default="eval_results", help="output folder for CSV/PNG")
    return p.parse_args(argv)


def selected_models(args) -> List[str]:
    """--model in its order, then --method (model = sammed3d, first), then --medsam; sammed3d without them."""
    if args.model is None and args.method is None:
        chosen = ["sammed3d"]
    else:
        method = args.method or []
        chosen = list(args.model or []) + (["sammed3d"] if "model" in method else [])
        chosen += [m for m in method if m != "model"]
    if args.medsam:
        chosen.append("medsam")
    return list(dict.fromkeys(chosen))


def _pairs(args):
    if args.image and args.label:
        return [(os.path.basename(args.image).split(".")[0], args.image, args.label)]
    return find_pairs(args.data, args.images, args.labels)


def run_model(name: str, args, pairs, values, num_clicks: int, nsd_at, names) -> List[Dict]:
    """Rows of one model on the pairs."""
    if name == "sammed3d":
        engine = build_engine(args)
        print(f"{len(pairs)} case(s), {num_clicks} clicks, modes {args.click_mode}, device {args.device}, "
              f"model {engine.model_version}, torch threads {_torch_threads()}")
        return evaluate(engine, pairs, values, num_clicks, args.click_mode, nsd_at=nsd_at,
                        nsd_tolerance_mm=args.nsd_tolerance, names=names, model_name=args.model_name,
                        flood_min_ml=args.prior_flood_min_ml, trace=args.trace, segment=args.segment)
    if name == "medsam":
        from ..medsam.engine import build_medsam_engine
        from .medsam import evaluate_medsam

        return evaluate_medsam(build_medsam_engine(args.device, args.weights), pairs, values, num_clicks,
                               args.margin_mm, modality=args.modality)
    from lib.session.classical_region import TUNED

    from .classical import ClassicalSegmenter

    overrides = json.loads(args.classical_params) if args.classical_params else {}
    params = replace(TUNED[name], **overrides.get(name, {}))
    print(f"{len(pairs)} case(s), {num_clicks} clicks, {name} {params}")
    return evaluate_method(ClassicalSegmenter(name, params, args.modality), name, pairs, values,
                           num_clicks, nsd_at, args.nsd_tolerance, names, trace=args.trace)


def reuse_rows(rows: List[Dict], paths) -> List[Dict]:
    """Rows of the stored per_target.csv files whose modes were not run now (the first file wins on duplicates)."""
    run_modes = {r["mode"] for r in rows}  # modes run now win over stored rows of the same mode
    seen = {(r["mode"], r["case"], int(r["value"]), int(r["clicks"])) for r in rows}
    out: List[Dict] = []
    for path in paths or []:
        kept = []
        for r in read_rows(path):
            key = (r["mode"], r["case"], r["value"], r["clicks"])
            if r["mode"] not in run_modes and key not in seen:
                seen.add(key)
                kept.append(r)
        print(f"reused {len(kept)} rows of modes {modes(kept)} from {path}")
        out += kept
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    pairs = _pairs(args)
    if args.limit:
        pairs = pairs[: args.limit]
    values = [int(v) for v in args.labels_values.split(",") if v.strip()]
    report_at = [int(v) for v in args.report_at.split(",") if v.strip()]
    num_clicks = max(args.clicks, 1)
    nsd_at = () if args.no_nsd else tuple(n for n in report_at if n <= num_clicks)
    names = load_names(pairs)
    rows: List[Dict] = []
    for name in selected_models(args):
        rows += run_model(name, args, pairs, values, num_clicks, nsd_at, names)
    rows += reuse_rows(rows, args.reuse_rows)
    if not rows:
        print("no targets found")
        return 1
    summary = summarise(rows, [n for n in report_at if n <= num_clicks])
    for path in write_outputs(rows, summary, args.out, report_at, args.title):
        print("wrote", path)
    print(markdown(summary, rows))
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
