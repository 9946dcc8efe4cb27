"""Prototype measured in docs/default_model.md, "Nineteenth run" (not served): at every later click the label's answer is
chosen among candidates: the engine's own answer (E: default-v11's click, merged by its piece update) and the classical
geodesic region of all the label's clicks in a box of the clicks + MARGINS mm, merged into the shown mask by the same
piece update, with the change kept inside that box (BOXED=1, the default, else anywhere, as the engine's merge does);
SPLIT=1 adds, at an exclude click, the shown mask minus the voxels geodesically nearer (inside the mask) to an exclude click than to
an include click ("split") and that intersected with E ("splitE"); FLOOD=levels adds, at an include click, the union
of each include click's lib.session.flood_candidates.FloodField at those levels; FIRST=1 adds, at an include click,
the region the served first click's learned margin choice gives for that click alone, added to the mask ("first");
CLAIM=margins adds, at an exclude click, the shown mask minus the piece the exclude clicks win against both the include
clicks and the box faces in the box of the clicks + each margin ("xclaim_<margin>"). POLICY: "oracle" (the best Dice per
click, greedy), "E", a candidate name, "<include choice>|<exclude choice>" ("cond60": the region
at 60 mm where the engine's answer was not its plain region, else E), "mix" (E or a random candidate, to collect
fitting rows), or "learned" (WEIGHTS: a later_click_fit_prototype.py fit). SYNC=1 puts a non-E choice into the engine's
shown mask, so its next click merges into what was shown. Every later click's candidates, their Dice, their Dice with
E and their features go to LOG (jsonl). Development or fitting data only:

    cd apps/sammed3d && POLICY=oracle SPLIT=0 LOG=/tmp/oracle_dev_ct.jsonl OMP_NUM_THREADS=1 ../../.venv/bin/python \
        ../../docs/eval/click_unet/later_click_candidates_prototype.py --data ../../work_data/dev_ct --model sammed3d \
        --checkpoint model/default/model.pt --model-name oracle --click-mode all --clicks 5 --report-at 1,3,5 \
        --no-nsd --out /tmp/dev_ct_oracle
"""
import os, sys, json, time
from dataclasses import replace
sys.path.insert(0, os.getcwd())
import numpy as np
import SimpleITK as sitk
import lib.evaluation.loop as L
from lib.evaluation import command as C
from lib.evaluation.metrics import dice
from lib.session.classical_region import TUNED, segment_box
from lib.session.local_update import LocalUpdate
from lib.session.margin_choice import own_features
from lib.session.volume import is_ct

POLICY = os.environ.get("POLICY", "oracle")
MARGINS = [float(m) for m in os.environ.get("MARGINS", "15,25,40,60").split(",")]
LOG = open(os.environ.get("LOG", "later_click_candidates.jsonl"), "a")
piece = LocalUpdate("piece")
FLOOD_LEVELS = [float(x) for x in os.environ.get("FLOOD", "").split(",") if x]
SYNC = os.environ.get("SYNC", "1") == "1"
SPLIT = os.environ.get("SPLIT", "0") == "1"
FIRST = os.environ.get("FIRST", "0") == "1"
CLAIM = [float(x) for x in os.environ.get("CLAIM", "").split(",") if x]
BOXED = os.environ.get("BOXED", "1") == "1"
rng = np.random.default_rng(0)
CHOOSER = None  # POLICY=learned: (later_click_fit_prototype, its weights), read once
if POLICY == "learned":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import later_click_fit_prototype  # noqa: E402
    CHOOSER = (later_click_fit_prototype, json.load(open(os.environ["WEIGHTS"])))


def split_shown(image, ct, spacing, S, fg, bg):
    """The shown mask minus the voxels geodesically nearer (inside the mask, over the image) to an exclude click
    than to an include click."""
    from scipy import ndimage
    from lib.model.geodesic_graph import geodesic_cost, nearest_seed_set
    from lib.session.classical_region import normalise_roi
    P = TUNED["geodesic"]
    found = ndimage.find_objects(S.astype(np.uint8))
    if not found:
        return S.copy()
    box = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(found[0], S.shape))
    lo = np.array([b.start for b in box]); hi = np.array([b.stop for b in box])
    inside = lambda pts: [np.asarray(p) - lo for p in pts if all(l <= c < h for c, l, h in zip(p, lo, hi)) and S[tuple(p)]]
    f, b = inside(fg), inside(bg)
    if not f or not b:
        return S.copy()
    data = normalise_roi(image[box], ct, spacing, P.sigma_mm)
    cost = geodesic_cost(data, P.gamma, spacing)
    cost = np.where(S[box], cost, np.inf)
    near = nearest_seed_set(cost, [np.array(b, dtype=np.int64), np.array(f, dtype=np.int64)], spacing)
    out = S.copy()
    out[box] &= ~(near == 0)
    return out


def exclude_claim(image, ct, spacing, S, fg, bg, click, margin):
    """The shown mask minus the connected piece, at the exclude `click`, of the shown voxels that the exclude clicks win
    against both the include clicks and the box faces (the geodesic region's three seed sets, one solve), in the box of
    all clicks + margin."""
    from lib.model.geodesic_graph import geodesic_cost, nearest_seed_set
    from lib.session.classical_region import normalise_roi, roi_box, seed_labels
    P = TUNED["geodesic"]
    box, inner = roi_box(list(fg) + list(bg), image.shape, spacing, margin)
    lo = np.array([b.start for b in box])
    loc = lambda pts: [tuple(int(v) for v in np.asarray(p) - lo) for p in pts]
    faces = seed_labels([b.stop - b.start for b in box], [], [], inner, spacing, P.seed_radius_mm) == 2
    fgl = seed_labels(faces.shape, loc(fg), [], None, spacing, P.seed_radius_mm) == 1
    bgl = seed_labels(faces.shape, [], loc(bg), None, spacing, P.seed_radius_mm) == 2
    faces &= ~(fgl | bgl); bgl &= ~fgl
    data = normalise_roi(image[box], ct, spacing, P.sigma_mm)
    sets = [np.argwhere(bgl), np.argwhere(fgl)] + ([np.argwhere(faces)] if faces.any() else [])
    near = nearest_seed_set(geodesic_cost(data, P.gamma, spacing), sets, spacing)
    removal = S[box] & (near == 0)
    c = tuple(int(v) for v in np.asarray(click) - lo)
    out = S.copy()
    if removal[c]:
        from scipy import ndimage
        lab, _ = ndimage.label(removal, structure=np.ones((3, 3, 3), bool))
        out[box] &= ~(lab == lab[c])
    return out


def faces_mask(box, shape):
    f = np.zeros(tuple(s.stop - s.start for s in box), bool)
    for a, s in enumerate(box):
        idx = [slice(None)] * 3
        if s.start > 0:
            idx[a] = slice(0, 1); f[tuple(idx)] = True
        if s.stop < shape[a]:
            idx[a] = slice(-1, None); f[tuple(idx)] = True
    return f


def change_feats(c, S, lab, voxel_ml, box=None, faces=None):
    ch = (c & ~S) if lab else (S & ~c)
    other = (S & ~c) if lab else (c & ~S)  # change against the click's sign (replace-type candidates)
    n, ns = int(ch.sum()), int(S.sum())
    out = dict(ch_ml=float(np.log(n * voxel_ml + 1e-3)), ch_rel=float(np.log((n + 1.0) / (ns + 1.0))),
               other_rel=float(np.log((other.sum() + 1.0) / (ns + 1.0))), ch_face=0.0)
    if box is not None and n:
        out["ch_face"] = float((ch[box] & faces).sum() / max(1, ch[box].sum()))
    return out


def evaluate(engine, pairs, values, num_clicks, modes, log=print, nsd_at=(), nsd_tolerance_mm=2.0, names=None,
             model_name=None, flood_min_ml=None, trace=False, segment=None):
    names = names or {}
    rows = []
    engine.click_mode = modes[0]
    for case, image_path, value, gt in L.iter_targets(pairs, values, log):
        t = time.perf_counter()
        label = f"eval-{value}"
        vol = engine.volume(image_path)
        spacing = vol.image.GetSpacing()
        voxel_ml = float(np.prod(spacing)) / 1000.0
        image = sitk.GetArrayViewFromImage(vol.image).transpose(2, 1, 0)
        ct = is_ct(vol, engine.modality)
        engine.reset(case, label)
        st = dict(shown=None, nfg=1)

        def seg(fg, bg):
            E = engine.segment(case, image_path, label, fg, bg).mask.astype(bool)
            n = len(fg) + len(bg)
            if st["shown"] is None:
                st["shown"] = E
                return E
            eplain = bool(engine._states[(case, label)].plain)
            lab = 1 if len(fg) > st["nfg"] else 0
            st["nfg"] = len(fg)
            click = fg[-1] if lab else bg[-1]
            S = st["shown"]
            cands = {"E": E}
            feats = {"E": dict(is_e=1.0, log_m=0.0, **change_feats(E, S, lab, voxel_ml))}
            for m in MARGINS:
                box, region, data = segment_box("geodesic", image, ct, spacing, fg, bg, replace(TUNED["geodesic"], margin_mm=m))
                if BOXED:  # the change only inside the region's box
                    lo = np.array([s.start for s in box])
                    c = S.copy(); c[box] = piece(S[box], region, [(np.asarray(click, float) - lo, lab)])
                else:
                    R = np.zeros(image.shape, bool); R[box] = region
                    c = piece(S, R, [(click, lab)])
                k = f"piece_{m:g}"
                cands[k] = c
                own = own_features(box, region, data, spacing, image.shape)
                feats[k] = dict(is_e=0.0, log_m=float(np.log(m / 25.0)), **change_feats(c, S, lab, voxel_ml, box, faces_mask(box, image.shape)),
                                **{f"r_{a}": b for a, b in own.items()})
            if not lab and SPLIT:
                cands["split"] = split_shown(image, ct, spacing, S, fg, bg)
                cands["splitE"] = cands["split"] & E
                for k in ("split", "splitE"):
                    feats[k] = dict(is_e=0.0, log_m=0.0, **change_feats(cands[k], S, lab, voxel_ml))
            if CLAIM and not lab:
                for m in CLAIM:
                    cands[f"xclaim_{m:g}"] = exclude_claim(image, ct, spacing, S, fg, bg, click, m)
                    feats[f"xclaim_{m:g}"] = dict(is_e=0.0, log_m=0.0)
            if FIRST and lab:  # the new include click answered as a first click (its learned margin), added
                from lib.session.plain_region import first_click_region
                reg = engine.region
                mm, fbox, freg = first_click_region(image, ct, spacing, [list(click)], reg.params, reg.margins, reg.scorer)
                U = S.copy(); U[fbox] |= freg
                cands["first"] = U
                cands["firstp"] = piece(S, U, [(click, lab)])
                feats["first"] = feats["firstp"] = dict(is_e=0.0, log_m=0.0)
            if FLOOD_LEVELS and lab:
                from lib.session.flood_candidates import FloodField
                fields = st.setdefault("fields", {})
                for p in fg:
                    if tuple(p) not in fields:
                        fields[tuple(p)] = FloodField.solve(image, ct, spacing, p)
                for level in FLOOD_LEVELS:
                    U = S.copy()
                    for f in fields.values():
                        b, r = f.region(level); U[b] |= r
                    cands[f"flood_{level:g}"] = U
                    feats[f"flood_{level:g}"] = dict(is_e=0.0, log_m=0.0, **change_feats(U, S, lab, voxel_ml))
            d = {k: dice(v, gt) for k, v in cands.items()}
            agree = {k: dice(v, E) for k, v in cands.items()}
            if POLICY == "oracle":
                choice = max(d, key=d.get)
            elif POLICY == "learned":
                FL, W = CHOOSER
                rec = dict(include=lab, ct=ct, eplain=eplain, s_ml=float(S.sum() * voxel_ml), click=n, feats=feats, agree=agree)
                X = np.array([FL.vec(rec, k) for k in FL.CANDS])
                choice = FL.CANDS[int(FL.choose(W["include" if lab else "exclude"], X))]
            elif POLICY == "mix":
                choice = "E" if rng.random() < 0.5 else str(rng.choice(list(cands)))
            else:
                choice = POLICY.split("|")[1 - lab] if "|" in POLICY else POLICY
                if choice.startswith("cond"):  # the region at that margin where the engine's answer was its own model's
                    choice = "E" if eplain else "piece_" + choice[4:]
            LOG.write(json.dumps(dict(case=case, value=value, click=n, include=lab, ct=ct, eplain=eplain,
                                      s_ml=float(S.sum() * voxel_ml), dice=d, agree=agree, feats=feats, choice=choice)) + "\n")
            LOG.flush()
            st["shown"] = cands[choice]
            if choice != "E" and SYNC:  # the engine merges the next click into what was shown
                from lib.session.local_update import ShownMask
                lst = engine._states[(case, label)]
                lst.shown = ShownMask(cands[choice])
                lst.shown_for[(tuple(lst.fg), tuple(lst.bg))] = lst.shown
            return cands[choice]

        recs = L.simulate_clicks(seg, gt, spacing, num_clicks, nsd_at, nsd_tolerance_mm)
        engine.reset(case, label)
        L._log_line(log, model_name or "x", case, value, recs, time.perf_counter() - t)
        rows += L._rows(f"{model_name}:all", "model", case, value, names.get((case, value), ""), recs)
    return rows


C.evaluate = evaluate
sys.exit(C.main())
