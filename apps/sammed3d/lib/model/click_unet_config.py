"""ClickUNet3D's configuration: the keys a checkpoint's config may carry, their defaults, and their checks.

One home for what a click_unet config means (lib.model.click_unet builds the model from it; the training
command, the export and the evaluation pass dicts that resolve_click_unet_config merges over the defaults).
"""
from __future__ import annotations

from typing import Optional

from .flood_region import FloodRegion

# the refinement parameters a config may carry (the fields of lib.session.refine.GeodesicRefine)
REFINE_KEYS = frozenset({"band", "gamma", "factor", "fine_band", "full_res_max_voxels"})

CLICK_UNET_CONFIG = {
    "architecture": "click_unet",
    "image_size": 128,
    "encoder_widths": [16, 24, 64, 96],  # at S/2, S/4, S/8, S/16
    "embed_dim": 32,  # embedding channels on the S/4 grid
    "decoder_widths": [16, 32, 64],  # at S/4, S/8, S/16
    "click_sigmas": [1.0, 6.0],  # Gaussian widths of the click maps, in S/4 cells
    # BatchNorm, not GroupNorm: GroupNorm's statistics are taken over the crop, so a model trained on
    # 64^3 crops saw other statistics than the 128^3 crops it serves (measured: Dice 0.25 at 64^3,
    # 0 at 128^3 after 360 steps); BatchNorm in eval mode uses fixed running statistics.
    "norm": "batch",  # "batch" | "group"
    "groups": 8,  # GroupNorm groups (norm "group" only)
    # Geodesic click maps (lib.model.geodesic_maps): [] turns them off (the layout of the first runs);
    # with taus the embedding gets one more channel (cell-mean intensity) and the decoder 1 + 2 * len(taus)
    # more prompt maps.
    "geodesic_taus": [],
    "geodesic_gamma": 20.0,
    # The classical geodesic region as a prior the decoder's output is added to (GeodesicPrior):
    # margin of the clicks' box in cells (0: off; 7 cells = 42 mm at 1.5 mm, the classical row's 40 mm),
    # gamma of its cost, and the logit clip. Needs geodesic_taus (the cell-intensity channel).
    "prior_margin_cells": 0,
    "prior_gamma": 50.0,
    "prior_clip": 6.0,
    # growth of the prior's box past a structure larger than it (PriorGrowth): the largest margin in
    # cells it may grow to (0: the box stays fixed) and the volume-curve slope that marks a plateau
    "prior_grow_max": 0,
    "prior_grow_slope": 1.0,
    # true: the box grows only while there is no exclude click (PriorGrowth.until_exclude)
    "prior_grow_until_exclude": False,
    # where the box grew to a plateau, the region stops at cap x the plateau's level (PriorGrowth.cap; 0: off,
    # the box's faces alone bound it)
    "prior_grow_cap": 0.0,
    # the walled region of the clicked intensity (lib.model.flood_region.FloodRegion), which decides the
    # prior where the first include click sits in one tissue that a wall encloses: the cost per sigma
    # beyond the tolerance (0: off), the tolerance in sigmas, the largest spread of the click's
    # surroundings that still counts as one tissue, and what an exclude click does to the region
    # ("level": cuts it at the click's distance and competes, "compete": competes only, "off": ends it)
    "prior_flood_beta": 0.0,
    "prior_flood_tolerance": 1.0,
    "prior_flood_max_sigma": 0.25,
    "prior_flood_exclude": "level",
    # a CT click in tissue below this HU gets the flood per request while --conf prior_flood is auto
    # (lib.model.flood_region.flood_mode_for_tissue: a lung); None: only the switch above decides
    "prior_flood_air_hu": None,
    # a click in a small walled structure takes its 1.5 mm region (lib.session.fine_region.FineRegion):
    # the half width in voxels of the window around the first include click it must be walled within (0: off)
    "prior_fine_window": 0,
    # how the server merges a later click's mask (lib.session.local_update; --conf local_update wins):
    # None (the model's proposal as is), "monotone" or "piece"
    "local_update": None,
    # ... a later click's change kept within [factor, minimum mm, share]: factor times the click's distance to the
    # shown mask's edge, at least the minimum, where the change is over share x the shown mask's voxels
    # (lib.session.local_update.LocalUpdate); None: anywhere
    "local_update_focus": None,
    # where a click's decodes are all the prior's plain box competition, the server answers with this region
    # on the stored grid (lib.session.plain_region; --conf plain_region wins): None or "geodesic"
    "plain_region": None,
    # the plain region's first-click box margins (mm) to choose from by contrast (plain_region.first_click_region);
    # None: its tuned margin for every click
    "plain_region_margins": None,
    # or chosen by a learned score of each candidate region (lib.session.margin_choice.MarginScorer's config, with its
    # own margins, and with flood_levels the first click's flood at those levels as candidates too:
    # lib.session.flood_candidates; scripts/fit_margin_choice.py); None: no learned choice
    "plain_region_margin_scorer": None,
    # the plain region's box margin (mm) around the clicks (the first click's too unless chosen above); None: the
    # classical row's tuned 40 mm (lib.session.classical_region.TUNED)
    "plain_region_margin": None,
    # the plain region merged into the label's shown mask by the click update (local_update) instead of replacing it
    "plain_region_merge": False,
    # a brain MR click in a deep grey nucleus answered by the registered atlas, through the plain region (a dict of
    # lib.session.atlas_prior.AtlasParams' fields, checked there; --conf atlas_prior off wins); None: no atlas
    "atlas_prior": None,
    # how the server post-processes this model's masks by default (lib.session.refine; --conf refine
    # wins): None, or a dict of a geodesic refinement's REFINE_KEYS ({"band": 6.0, "gamma": 60.0, ...})
    "refine": None,
    # the segment names (case-insensitive) a fine-tuned version learnt its residual on (lib.model.segments; the
    # trainer records them from the labels' label_info, as 3D Slicer saves it); a request for another segment is
    # answered with the residual off, as the embedded default (residual zero) answers it; None: every segment
    "learned_segments": None,
    # the train options this model fine-tunes with unless the train request says otherwise (fields of
    # lib.trainers.options.FineTuneOptions, e.g. {"lr": 0.05, "steps_per_epoch": 16}); None: the task's
    # defaults (SAM-Med3D's recipe, made for the released weights)
    "finetune": None,
    # the clicks the decoder was trained to see: "newest" (SAM-Med3D's chain) or "all" (click
    # history; the geodesic maps need every click); the server's default click mode for this model
    "click_mode": "newest",
}


def resolve_click_unet_config(config: Optional[dict]) -> dict:
    """Merge over CLICK_UNET_CONFIG and check it; raises ValueError naming the bad key."""
    cfg = dict(CLICK_UNET_CONFIG)
    unknown = set(config or {}) - set(cfg)
    if unknown:
        raise ValueError(f"unknown click_unet config keys: {sorted(unknown)}; allowed: {sorted(cfg)}")
    cfg.update(config or {})
    if cfg["architecture"] != "click_unet":
        raise ValueError(f"not a click_unet config: architecture {cfg['architecture']!r}")
    size = cfg["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 16:
        raise ValueError(f"image_size must be a positive multiple of 16, got {size!r}")
    for key, n in (("encoder_widths", 4), ("decoder_widths", 3)):
        w = cfg[key]
        if not isinstance(w, (list, tuple)) or len(w) != n or any(isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in w):
            raise ValueError(f"{key} must be {n} positive integers, got {w!r}")
        cfg[key] = list(w)
    if isinstance(cfg["embed_dim"], bool) or not isinstance(cfg["embed_dim"], int) or cfg["embed_dim"] <= 0:
        raise ValueError(f"embed_dim must be a positive integer, got {cfg['embed_dim']!r}")
    if not cfg["click_sigmas"] or any(not isinstance(s, (int, float)) or s <= 0 for s in cfg["click_sigmas"]):
        raise ValueError(f"click_sigmas must be positive numbers, got {cfg['click_sigmas']!r}")
    cfg["click_sigmas"] = [float(s) for s in cfg["click_sigmas"]]
    taus = cfg["geodesic_taus"]
    if not isinstance(taus, (list, tuple)) or any(isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0 for t in taus):
        raise ValueError(f"geodesic_taus must be a list of positive numbers, got {taus!r}")
    cfg["geodesic_taus"] = [float(t) for t in taus]
    if cfg["click_mode"] not in ("newest", "all"):
        raise ValueError(f"click_mode must be 'newest' or 'all', got {cfg['click_mode']!r}")
    gamma = cfg["geodesic_gamma"]
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
        raise ValueError(f"geodesic_gamma must be a number >= 0, got {gamma!r}")
    for key in ("prior_gamma", "prior_clip"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ValueError(f"{key} must be a number > 0, got {v!r}")
    learned = cfg["learned_segments"]
    if learned is not None and (not isinstance(learned, (list, tuple)) or not learned
                                or any(not isinstance(n, str) or not n.strip() for n in learned)):
        raise ValueError(f"learned_segments must be None or a non-empty list of segment names, got {learned!r}")
    for key in ("prior_margin_cells", "prior_fine_window"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 0:
            raise ValueError(f"{key} must be an integer >= 0, got {cfg[key]!r}")
    air = cfg["prior_flood_air_hu"]
    if air is not None and (isinstance(air, bool) or not isinstance(air, (int, float)) or not -1024 < air < 3000):
        raise ValueError(f"prior_flood_air_hu must be None or a number of HU in (-1024, 3000), got {air!r}")
    if cfg["plain_region"] not in (None, "geodesic"):
        raise ValueError(f"plain_region must be None or 'geodesic', got {cfg['plain_region']!r}")
    margins = cfg["plain_region_margins"]
    if margins is not None and (not isinstance(margins, (list, tuple)) or not margins or any(
            isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 500 for m in margins)):
        raise ValueError(f"plain_region_margins must be None or a list of margins in (0, 500] mm, got {margins!r}")
    scorer = cfg["plain_region_margin_scorer"]
    if scorer is not None and (not isinstance(scorer, dict) or not {"margins", "features", "mean", "std",
                                                                     "weights"} <= set(scorer)):
        raise ValueError("plain_region_margin_scorer must be None or a dict of margins, features, mean, std and "
                         f"weights (scripts/fit_margin_choice.py), got {scorer!r}"[:300])
    if scorer is not None and margins is not None:
        raise ValueError("plain_region_margins (by contrast) and plain_region_margin_scorer exclude each other")
    margin = cfg["plain_region_margin"]
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin <= 500):
        raise ValueError(f"plain_region_margin must be None or a margin in (0, 500] mm, got {margin!r}")
    if cfg["atlas_prior"] is not None and not (isinstance(cfg["atlas_prior"], dict) and cfg["plain_region"]):
        raise ValueError(f"atlas_prior must be a dict of the atlas's parameters and needs plain_region, got "
                         f"{cfg['atlas_prior']!r:.60}")
    if not isinstance(cfg["plain_region_merge"], bool):
        raise ValueError(f"plain_region_merge must be true or false, got {cfg['plain_region_merge']!r}")
    if cfg["local_update"] not in (None, "monotone", "piece"):
        raise ValueError(f"local_update must be None, 'monotone' or 'piece', got {cfg['local_update']!r}")
    focus = cfg["local_update_focus"]
    if focus is not None and not (isinstance(focus, (list, tuple)) and len(focus) in (2, 3) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in focus) and min(focus[:2]) > 0):
        raise ValueError(f"local_update_focus must be None or [factor > 0, minimum mm > 0(, share >= 0)], got {focus!r}")
    margin = cfg["prior_margin_cells"]
    if margin and not cfg["geodesic_taus"]:
        raise ValueError("prior_margin_cells needs geodesic_taus (the prior reads the cell-intensity channel)")
    grow, slope = cfg["prior_grow_max"], cfg["prior_grow_slope"]
    if isinstance(grow, bool) or not isinstance(grow, int) or grow < 0:
        raise ValueError(f"prior_grow_max must be an integer >= 0, got {grow!r}")
    if isinstance(slope, bool) or not isinstance(slope, (int, float)) or slope <= 0:
        raise ValueError(f"prior_grow_slope must be a number > 0, got {slope!r}")
    for key in ("prior_flood_beta", "prior_flood_tolerance", "prior_flood_max_sigma"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{key} must be a number >= 0, got {v!r}")
    if cfg["prior_flood_exclude"] not in FloodRegion.EXCLUDE_MODES:
        raise ValueError(f"prior_flood_exclude must be one of {FloodRegion.EXCLUDE_MODES}, "
                         f"got {cfg['prior_flood_exclude']!r}")
    cap = cfg["prior_grow_cap"]
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not (cap == 0 or cap >= 1):
        raise ValueError(f"prior_grow_cap must be 0 (off) or a number >= 1, got {cap!r}")
    if not isinstance(cfg["prior_grow_until_exclude"], bool):
        raise ValueError(f"prior_grow_until_exclude must be true or false, got {cfg['prior_grow_until_exclude']!r}")
    refine = cfg["refine"]
    if refine is not None and (not isinstance(refine, dict) or set(refine) - REFINE_KEYS):
        raise ValueError(f"refine must be null or a dict of {' / '.join(sorted(REFINE_KEYS))}, got {refine!r}")
    finetune = cfg["finetune"]
    if finetune is not None and (not isinstance(finetune, dict) or not all(isinstance(k, str) for k in finetune)):
        raise ValueError(f"finetune must be null or a dict of train options, got {finetune!r}")
    if cfg["norm"] not in ("batch", "group"):
        raise ValueError(f"norm must be 'batch' or 'group', got {cfg['norm']!r}")
    return cfg
