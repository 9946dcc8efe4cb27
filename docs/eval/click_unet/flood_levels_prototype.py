"""Prototype measured in docs/default_model.md, "Seventeenth run": the first click's intensity flood on a 2 mm grid of
the whole volume at 13 levels, against the served model's Dice after one click (its evaluation per_target.csv in
$SERVED/<set>/per_target.csv, e.g. from `python -m lib.evaluation ... --out $SERVED/dev_ct`):

    SERVED=/tmp/ev OMP_NUM_THREADS=1 .venv/bin/python docs/eval/click_unet/flood_levels_prototype.py \
        work_data/dev_table work_data/dev_ct work_data/dev_lesions work_data/dev_brain work_data/dev_dk
"""
import sys, os, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'apps', 'sammed3d'))
import SimpleITK as sitk, pandas as pd
from scipy import ndimage as ndi
from lib.evaluation.cases import find_pairs, iter_targets, load_names
from lib.evaluation.clicks import first_click
from lib.evaluation.metrics import dice
from lib.model.flood_region import FloodRegion, click_statistics
from lib.model.geodesic_graph import geodesic_from
G=2.0; TH=np.geomspace(4, 256, 13); MAXS=float(os.environ.get('MAXS',0.3)); SLOPE=float(os.environ.get('SLOPE',1.0))
rows=[]
for data in sys.argv[1:]:
    s=os.path.basename(data)
    v11=pd.read_csv(os.path.join(os.environ['SERVED'], s, 'per_target.csv')); v11=v11[v11.clicks==1].set_index(['case','value']).dice
    pairs = find_pairs(data); names = load_names(pairs)
    for case, ip, value, gt in iter_targets(pairs, None, log=lambda *a: None):
        img = sitk.ReadImage(ip); sp = np.array(img.GetSpacing()); a = sitk.GetArrayFromImage(img).transpose(2,1,0).astype(np.float32)
        f = sp / G; small = ndi.zoom(a, f, order=1); pos = small[small > 0]; x = (small - pos.mean()) / pos.std()
        gs = ndi.zoom(gt.astype(np.float32), f, order=1) > 0.5
        (c, _) = first_click(gt, spacing=tuple(sp)); cell = np.minimum((np.array(c) * f).round().astype(int), np.array(small.shape) - 1)
        mu, sig = click_statistics(x, cell[None])
        fr = FloodRegion(2.0, 1.0, 1.0, 9.0)
        d = geodesic_from(fr.cost(x, mu, sig), cell[None])
        vols = np.array([np.count_nonzero(d < t) for t in TH], float)
        slopes = np.diff(np.log(vols + 1)) / np.diff(np.log(TH))
        ok = (vols[1:] > 8) & (vols[1:] <= 0.5 * d.size)
        flat = np.nonzero((slopes < SLOPE) & ok)[0]
        lvl = TH[flat[0] + 1] if (len(flat) and sig <= MAXS) else None
        fd = dice(d < lvl, gs) if lvl else None
        best = max(dice(d < t, gs) for t in TH)
        rows.append((s, case[:18], str(names.get((case, value), value))[:24], round(sig,2), lvl, None if fd is None else round(fd,3), round(best,3), round(float(v11.get((case, value), np.nan)),3)))
        print(*rows[-1], flush=True)
df=pd.DataFrame(rows, columns=['set','case','structure','sigma','level','flood','best','v11'])
fired=df[df.level.notna()]
df.to_csv(os.environ.get("OUT", "flood_levels.csv"), index=False)
print("fired", len(fired), 'of', len(df), 'flood mean', fired.flood.mean(), 'v11 mean there', fired.v11.mean())
