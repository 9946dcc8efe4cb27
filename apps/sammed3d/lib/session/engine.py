"""SegmentationEngine: clicks on a stored volume in, a mask on the same grid out.

Flow of one request (segment):
  load (LRU-cached) -> validate clicks -> diff against the label's state -> for each new click:
  find/create the crop(s) containing it -> embedding (LRU-cached: preprocess + encode on a miss)
  -> decode with the mapped clicks and the previous logits -> grow to neighbour crops while the
  mask reaches a border -> paste every crop's logits back onto the stored grid (union).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..model.flood_region import air_threshold_of, flood_for_request, flood_mode_for_tissue
from ..model.segments import residual_for_segment
from .cache import LRUCache, Sized
from .errors import SessionError
from .fine_region import FineRegion
from .geometry import ModelGrid, model_grid
from .growth import inside_crop, lattice_origin_for, neighbour, seed_point, shift_logits, touching_faces
from .local_update import LocalUpdate
from .pasteback import paste_logits
from .points import Click, diff_clicks, ordered_clicks, parse_points, validate_request
from .plain_region import PlainRegion, answered_plainly
from .preprocess import crop_origin_for, normalise, resample_crop, tile_origins
from .refine import GeodesicRefine, refine_image, refine_images, refine_logits
from .result import SegmentationResult
from .roi import apply_roi, clamp_roi
from .runner import ModelRunner
from .state import CropEmbedding, CropMask, CropState, LabelState
from .volume import LoadedVolume, is_ct
from .volume_cache import VolumeCache

logger = logging.getLogger(__name__)

CLICK_MODES = ("all", "newest")
# "all": every click so far inside the crop is sent each time (the official inference); "newest": only the new
# click plus the previous logits (how the model was trained). "newest" measured better with default-v1 (docs/session.md).
DEFAULT_CLICK_MODE = "newest"


class _Request:
    """Per-request context: the volume, its model grid, CT flag, timings, encoder use."""

    def __init__(self, image_id: str, volume: LoadedVolume, grid: ModelGrid, ct: bool, timings: Dict[str, float]):
        self.image_id, self.volume, self.grid, self.ct, self.timings = image_id, volume, grid, ct, timings
        self.encoded = 0  # encoder runs for this request
        self.plain: Optional[bool] = None  # the click's decodes all the plain box competition (None: none yet)


class SegmentationEngine:
    """Interactive SAM-Med3D segmentation with an embedding/volume cache and per-label state."""

    def __init__(
        self,
        model,
        model_version: str,
        device="cpu",
        cache_bytes: int = 2 << 30,
        modality: Optional[str] = None,
        click_mode: str = DEFAULT_CLICK_MODE,
        precision: Optional[str] = None,
        max_crops: int = 8,
        volumes: Optional[VolumeCache] = None,
        refine: Optional[GeodesicRefine] = None,
        fine: Optional[FineRegion] = None,
        local: Optional[LocalUpdate] = None,
        region: Optional[PlainRegion] = None,
    ):
        """volumes: the app's shared VolumeCache (lib.session.volume_cache); its LRU then also holds
        this engine's embeddings and model grids (one bound for all). Default: a cache of its own of
        `cache_bytes`. refine: image-aware refinement of each crop's mask (lib.session.refine), None: off.
        fine: a click in a small walled structure takes its 1.5 mm region (lib.session.fine_region).
        local: how a later click changes the mask (lib.session.local_update: only adds / only removes).
        region: where every decode of a request is the plain box competition, or its atlas prior names the label's
        nucleus, this region answers instead (lib.session.plain_region; `merge`: merged by `local` as the model's)."""
        if click_mode not in CLICK_MODES or max_crops < 1:
            raise ValueError(f"click_mode must be one of {CLICK_MODES} and max_crops >= 1, got {click_mode!r}, {max_crops}")
        self.runner = ModelRunner(model, device, precision)
        self.model_version = str(model_version)
        self.encoder_version = self.model_version  # embeddings stay valid while this is unchanged
        self.modality, self.click_mode, self.max_crops = modality, click_mode, int(max_crops)
        self.refine, self.fine, self.local, self.region = refine, fine, local, region
        self.volumes = volumes if volumes is not None else VolumeCache(LRUCache(cache_bytes))
        self.cache = self.volumes.lru  # volumes, model grids and embeddings: one byte bound
        self._states: Dict[Tuple[str, str], LabelState] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ public API
    def set_model(self, model, model_version: str, encoder_changed: bool = True) -> None:
        """Hot-swap the model. Cached embeddings survive when the encoder did not change; label
        states restart from their clicks on their next request (their logits came from the old
        decoder)."""
        with self._lock:
            self.runner = ModelRunner(model, self.runner.device, self.runner.precision_name)
            self.model_version = str(model_version)
            if encoder_changed:
                old = self.encoder_version
                self.encoder_version = self.model_version
                self.cache.discard(lambda k: k[0] == "emb" and k[-1] == old)

    def segment(
        self,
        image_id: str,
        image_path: str,
        label: str,
        foreground,
        background,
        reset: bool = False,
        modality: Optional[str] = None,
        roi=None,
        prior_flood: Optional[str] = None,
    ) -> SegmentationResult:
        """All clicks so far for `label` (stored voxel indices) -> the label's mask.

        roi: a parsed ROI (lib.session.roi), checked against the volume before the label changes; the returned mask
        is zero outside it (the label's own state is not clipped). prior_flood: "on" / "off" switches the model's
        flood for this call (lib.model.flood_region.flood_for_request); `label` its residual (lib.model.segments)."""
        t0 = time.perf_counter()
        fg = parse_points(foreground, "foreground")
        bg = parse_points(background, "background")
        if prior_flood == "on" and getattr(self.runner.model, "prior", None) is None:
            raise SessionError("prior_flood on needs a model with a geodesic prior (the embedded default)")
        with self._lock:
            timings = dict.fromkeys(("load", "preprocess", "encode", "decode", "paste"), 0.0)
            req = self._request(image_id, image_path, modality, timings)
            roi = clamp_roi(roi, req.volume.shape) if roi is not None else None
            validate_request(fg, bg, req.volume.shape)
            # a CT click in air-density tissue gets the served model's flood (its config, under the server's switch)
            prior_flood = flood_mode_for_tissue(prior_flood, req.ct, lambda: req.volume.median_around(fg[0]),
                                                air_threshold_of(self.runner.model))
            key = (str(image_id), str(label))
            prev = self._states.get(key)
            saved = prev.checkpoint() if prev is not None else None
            try:
                with flood_for_request(self.runner.model, prior_flood), residual_for_segment(self.runner.model, label):
                    state, new = self._update(req, key, prev, fg, bg, reset, image_path)
                    return self._result(req, key, state, t0, roi, new)
            except BaseException:
                # A failed request (model error, interrupt) leaves the label as it was.
                if prev is None:
                    self._states.pop(key, None)
                else:
                    prev.restore(saved)
                    self._states[key] = prev
                raise

    def _update(self, req: _Request, key, state: Optional[LabelState], fg, bg, reset, image_path):
        """Apply what is new in (fg, bg) to the label, restarting it when it cannot be diffed.
        -> (the label's state, the clicks applied or None when it restarted)"""
        diffable = state is not None and not reset and state.volume_key == req.volume.file_key and \
            state.model_version == self.model_version
        new: Optional[List[Click]] = diff_clicks(state.fg, state.bg, fg, bg) if diffable else None
        restarted = new is None  # first request, reset, changed file/model, or clicks removed/edited
        if restarted:
            old, state = state, LabelState(volume_key=req.volume.file_key, model_version=self.model_version,
                                           image_path=image_path)
            state.carry_shown(old if diffable else None, fg, bg)  # an undo gets back what it showed
            self._states[key] = state
            new = ordered_clicks(fg, bg)
        for click in new:
            self._apply_click(req, state, click)
        return state, (None if restarted else new)

    def reset(self, image_id: str, label: Optional[str] = None) -> None:
        """Forget one label's state, or every label of the image (cached embeddings stay)."""
        with self._lock:
            for key in [k for k in self._states if k[0] == str(image_id) and (label is None or k[1] == str(label))]:
                del self._states[key]

    def clear_cache(self) -> None:
        self.cache.clear()

    # ------------------------------------------------------------------ embeddings for scoring
    def volume(self, image_path: str) -> LoadedVolume:
        """The volume as clicks see it (loaded once, then from the cache): stored grid, spacing, affine."""
        with self._lock:
            return self._request("", image_path, None, {"load": 0.0}).volume

    def point_embedding(self, image_id: str, image_path: str, point, modality: Optional[str] = None) -> CropEmbedding:
        """The crop a first include click at `point` (stored voxel index) would use, encoded.

        For active-learning scoring: same preprocessing, crop placement and embedding cache as
        `segment`, but no label state is read or changed."""
        with self._lock:
            req = self._request(image_id, image_path, modality, dict.fromkeys(("load", "preprocess", "encode"), 0.0))
            u = req.grid.stored_to_grid(np.array(point, dtype=np.float64))[0]
            origin = crop_origin_for(u, self.runner.crop)
            return CropEmbedding(origin, self._embedding(req, origin), req.grid, self.runner.crop)

    def volume_embeddings(self, image_id: str, image_path: str, max_crops: int = 4,
                          modality: Optional[str] = None) -> List[CropEmbedding]:
        """Encoded crops tiling the volume's model grid (no overlap, centred on the grid); when
        more than `max_crops` are needed, the ones nearest the grid centre. For volume features
        (active-learning diversity); uses and fills the embedding cache."""
        with self._lock:
            req = self._request(image_id, image_path, modality, dict.fromkeys(("load", "preprocess", "encode"), 0.0))
            crop = self.runner.crop
            return [CropEmbedding(o, self._embedding(req, o, features=True), req.grid, crop)
                    for o in tile_origins(req.grid.size, crop, max_crops)]

    def decode_first_clicks(self, embeddings: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Batched first-click decode for scoring: embeddings (T, C, s, s, s), coords (T, N, 3) crop
        voxels, labels (T, N) -> logits (T, 1, L, L, L), from zero previous logits as a first click.

        Through this engine's lock and runner (CUDA-graph replay on CUDA), like a click: scoring never
        runs the model beside a click, nor a model a hot swap has just replaced."""
        with self._lock:
            return self.runner.decode_batch(embeddings, coords, labels)

    # ------------------------------------------------------------------ loading
    def _request(self, image_id, image_path, modality, timings) -> _Request:
        t = time.perf_counter()
        if not isinstance(image_path, str) or not image_path:
            raise SessionError(f"image path must be a non-empty string, got {image_path!r}")
        volume = self.volumes.get(image_path)
        grid = self.cache.get_or_put(("grid",) + volume.file_key, lambda: Sized(model_grid(volume.image)))
        timings["load"] += time.perf_counter() - t
        ct = is_ct(volume, modality or self.modality)
        return _Request(str(image_id), volume, grid.value, ct, timings)

    def _embedding(self, req: _Request, origin, features: bool = False) -> torch.Tensor:
        """The crop's embedding (cached); a prior-only model's clicks skip the encoder's features (scoring asks)."""
        key = ("emb", req.image_id, req.volume.file_key, req.ct, tuple(origin), features or not self.runner.prior_only,
               self.encoder_version)
        emb = self.cache.get(key)
        if emb is not None:
            return emb
        t, image = time.perf_counter(), self._crop(req, origin)
        t1 = time.perf_counter()
        emb = self.runner.encode(image, features=key[-2])
        self.runner.sync()
        req.timings["preprocess"] += t1 - t
        req.timings["encode"] += time.perf_counter() - t1
        req.encoded += 1
        self.cache.put(key, emb)
        if self.refine is not None:
            self.cache.put(self._refine_key(req, origin), refine_images(image, self.refine))
        return emb

    def _crop(self, req: _Request, origin) -> torch.Tensor:
        """The normalised model crop at `origin` (what the encoder and the refinement read)."""
        return normalise(resample_crop(req.volume.image, req.grid, origin, self.runner.crop), req.ct)

    def _refine_key(self, req: _Request, origin) -> tuple:
        return ("rimg", req.image_id, req.volume.file_key, req.ct, tuple(origin), self.refine.factors)

    def _refine_image(self, req: _Request, origin) -> np.ndarray:
        """The crop at the refinement grid (cached beside its embedding; recomputed if evicted)."""
        return self.cache.get_or_put(self._refine_key(req, origin),
                                     lambda: refine_images(self._crop(req, origin), self.refine))

    def _full_res_image(self, req: _Request, origin) -> np.ndarray:
        """The crop at 1.5 mm as the refinement reads it (the refinement's cached copy when it has one)."""
        if self.refine is not None and 1 in self.refine.factors:
            return self._refine_image(req, origin)[1]
        return self.cache.get_or_put(("fimg", req.image_id, req.volume.file_key, req.ct, tuple(origin)),
                                     lambda: refine_image(self._crop(req, origin), 1))

    def _refined(self, req: _Request, cs: CropState, pts) -> torch.Tensor:
        """cs's logits refined by the image (lib.session.refine) with the prompts `pts` inside the crop."""
        return refine_logits(cs.logits, self._refine_image(req, cs.origin), [p for p, _ in pts],
                             [lab for _, lab in pts], self.refine)

    def _crop_mask(self, req: _Request, key, state: LabelState, cs: CropState):
        """cs's mask on the stored grid, (slices, uint8 box) or None: its logits (refined when the engine
        refines) pasted and thresholded. Memoised per crop in the byte-bounded cache. Why: a click decodes
        only the crops it falls in (and those it grows), but every crop's mask is part of the answer;
        re-refining the unchanged ones was most of a click on a large structure (a lung: 7 crops, 0.7 s).
        A hit needs the same CropState object (replaced, never modified, on each decode) and the same
        prompts in the crop (the refinement keeps clicks' labels)."""
        pts = tuple(cs.seeds) + tuple(self._in_crop(req, cs, state.applied)) if self.refine is not None else ()
        memo_key = ("cmask", req.image_id, req.volume.file_key) + tuple(key) + (cs.origin,)
        memo = self.cache.get(memo_key)
        if memo is not None and memo.crop is cs and memo.prompts == pts:
            return memo.piece
        logits = self._refined(req, cs, pts) if self.refine is not None else cs.logits
        pasted = paste_logits(logits, req.grid, cs.origin, req.volume.shape, self.runner.crop)
        piece = None if pasted is None else (pasted[0], (pasted[1] > 0).numpy().view(np.uint8))
        self.cache.put(memo_key, CropMask(cs, pts, piece))
        return piece

    # ------------------------------------------------------------------ clicks
    def _apply_click(self, req: _Request, state: LabelState, click: Click) -> None:
        crop, req.plain = self.runner.crop, None  # plain or not: the last click's decodes say (an undo's replay too)
        point, lab = click
        u = req.grid.stored_to_grid(np.array(point))[0]
        if not state.crops:
            if lab != 1:  # cannot happen through segment(): includes are replayed first
                raise SessionError("the first click of a label must be an include (foreground) point")
            origin = crop_origin_for(u, crop)
            state.anchor = origin
            state.crops[origin] = CropState.fresh(origin, self._zeros())
        state.record(click)
        hit = [o for o in state.crops if inside_crop(u - np.array(o), crop)]
        if not hit:
            if lab == 0:
                return  # an exclude outside every crop: the mask is already empty there
            origin = lattice_origin_for(u, state.anchor, crop)
            if len(state.crops) >= self.max_crops:
                logger.warning("label already uses %d crops (max_crops); click %s not segmented", len(state.crops), point)
                return
            state.crops[origin] = self._crop_from_neighbours(state, origin)
            hit = [origin]
        for origin in hit:
            self._decode(req, state, origin, newest=(point, lab))
        self._grow(req, state, hit)

    def _prompts(self, req: _Request, state: LabelState, cs: CropState,
                 newest: Optional[Click]) -> Tuple[List, List]:
        """(growth seeds, the user's clicks) as (point in crop coords, label) for a decode of crop `cs`, per
        click mode."""
        seeds = list(cs.seeds) if (self.click_mode == "all" or not cs.decoded) else []
        clicks = state.applied if self.click_mode == "all" else ([newest] if newest is not None else [])
        return seeds, self._in_crop(req, cs, clicks)

    def _in_crop(self, req: _Request, cs: CropState, clicks) -> List:
        """The clicks (stored indices, label) inside crop `cs`, in its coordinates."""
        if not clicks:
            return []
        mapped = req.grid.stored_to_grid(np.array([p for p, _ in clicks])) - np.array(cs.origin)
        return [(tuple(float(x) for x in a), lab) for a, (_, lab) in zip(mapped, clicks)
                if inside_crop(a, self.runner.crop)]

    def _decode(self, req: _Request, state: LabelState, origin, newest: Optional[Click]) -> None:
        cs = state.crops[origin]
        emb = self._embedding(req, origin)
        seeds, clicks = self._prompts(req, state, cs, newest)
        pts = seeds + clicks
        if not pts:
            return
        t = time.perf_counter()
        logits = decoded = self.runner.decode(emb, [p for p, _ in pts], [lab for _, lab in pts], cs.logits)
        if self.fine is not None and clicks and not self._prior_flag("last_flooded"):  # a small walled structure
            logits = self.fine(self._full_res_image(req, origin), [p for p, _ in clicks],
                               [lab for _, lab in clicks], logits)  # its 1.5 mm region
        req.plain = req.plain is not False and answered_plainly(self.runner.prior_only, self._prior_flag(
            "last_flooded"), self._prior_flag("last_grown"), logits is not decoded)
        self.runner.sync()
        req.timings["decode"] += time.perf_counter() - t
        state.crops[origin] = CropState(origin, logits, cs.seeds, True)

    def _prior_flag(self, name: str) -> bool:
        """The model's prior on the last decode: "last_flooded" (its flood answered: a large walled tissue) or
        "last_grown" (its box grew to a plateau); False for a model without a prior."""
        return bool((getattr(getattr(self.runner.model, "prior", None), name, None) or [False])[0])

    def _grow(self, req: _Request, state: LabelState, queue: List) -> None:
        """Add 50 %-overlap neighbour crops while a crop's mask reaches its border."""
        crop = self.runner.crop
        queue = list(queue)
        while queue and len(state.crops) < self.max_crops:
            cs = state.crops[queue.pop(0)]
            for axis, direction in touching_faces(cs.logits, cs.origin, req.grid.size, crop):
                nb = neighbour(cs.origin, axis, direction, crop)
                if nb in state.crops or len(state.crops) >= self.max_crops:
                    continue
                mask_input = shift_logits(cs.logits, axis, direction)
                seed = seed_point(mask_input, crop)
                if seed is None:
                    continue
                state.crops[nb] = CropState(nb, mask_input, ((seed, 1),), False)
                self._decode(req, state, nb, newest=None)
                queue.append(nb)

    def _crop_from_neighbours(self, state: LabelState, origin) -> CropState:
        """A crop for an include click outside every crop: starts from a face neighbour's
        logits when there is one (continuity), else from zeros."""
        for axis in range(3):
            for direction in (-1, 1):
                src = neighbour(origin, axis, -direction, self.runner.crop)
                if src in state.crops:
                    return CropState(origin, shift_logits(state.crops[src].logits, axis, direction), (), False)
        return CropState.fresh(origin, self._zeros())

    def _zeros(self) -> torch.Tensor:
        n = self.runner.crop // 4
        return torch.zeros((1, 1, n, n, n), dtype=torch.float32, device=self.runner.device)

    # ------------------------------------------------------------------ output
    def _result(self, req: _Request, key, state: LabelState, t0: float, roi=None, new=None) -> SegmentationResult:
        t, plain = time.perf_counter(), state.plain if req.plain is None else req.plain
        nucleus = self.region.atlas_for(req.volume, req.ct, state) if self.region is not None else None
        # the region solves on its own thread while the model's mask (the answer where it gives way) is pasted here
        pending = self.region.start(req.volume, req.ct, state.fg, state.bg, nucleus) \
            if self.region is not None and (plain or nucleus is not None) else None
        mask, boxes = np.zeros(req.volume.shape, dtype=np.uint8), []
        for cs in state.crops.values():
            piece = self._crop_mask(req, key, state, cs) if cs.decoded else None
            if piece is None:
                continue
            slices, box = piece
            region = mask[slices]
            np.maximum(region, box, out=region)
            boxes.append(slices)
        answer = pending.result() if pending is not None else None  # (region, its box); None: the model's mask
        merged = answer is not None and self.region.merge  # else the region replaces the model's shown mask
        state.plain, mask = plain, state.show(*((answer[0], [answer[1]]) if merged else (mask, boxes)), self.local, new,
                                              req.volume.image.GetSpacing())
        mask = apply_roi(answer[0] if answer is not None and not merged else mask, roi)  # clamped to an ROI
        if self.region is not None:  # work the label's next click may need, begun as the answer goes out
            self.region.ahead(req.volume, req.ct, state)
        req.timings["paste"] += time.perf_counter() - t
        req.timings["total"] = time.perf_counter() - t0
        return SegmentationResult(
            mask=mask,
            affine=req.volume.affine.copy(),
            timings=dict(req.timings),
            cache_hit=req.encoded == 0,
            model_version=self.model_version,
            grid=req.volume.grid,
            encoded=req.encoded,
            num_crops=sum(1 for cs in state.crops.values() if cs.decoded),
        )

