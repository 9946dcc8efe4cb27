#!/usr/bin/env python
"""Many annotators at once against a real server: latency, throughput, and no cross-talk.

    .venv/bin/python scripts/bench_load.py [--annotators 8] [--seconds 60 | --minutes 30]
                                           [--weights small|released-random|default] [--json out.json]

Each simulated annotator works on its own image with its own segment name and repeats a fixed
plan: the first click with reset_state, then one more include click at a time (`--clicks`, as
Slicer sends them: all clicks so far). First every plan is run once by a single client; those
masks are the reference. Then all annotators run at once until the time is up, and every answer
must equal the single-client answer for the same image and click count, voxel for voxel (no
cross-talk between images, labels or annotators). Reported: errors, mismatches, p50/p95/p99 latency
of a click, throughput (answers/s), and the server's resident memory (before: the idle server,
nothing cached; start: after the reference pass; peak, end; sampled every second over the
server's process tree).

Weights: `small` (the reduced test architecture of tests/test_app_server.py, seeded), `released-random`
(the released vit_b_ori size with random weights, seeded), `default` (the embedded default model,
apps/sammed3d/model/default/model.pt). A fresh versions folder: no fine-tuned version is served.
The studies are the synthetic phantoms of prepare_sample_data.py, copied so that each annotator has
its own image. tests/test_reliability_load.py runs `run_load` for under a minute; --minutes 30 is
the soak (RSS growth over thousands of clicks).
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

import numpy as np
import requests
import SimpleITK as sitk

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "apps", "sammed3d"))


# ------------------------------------------------------------------------------------- plans


def click_plan(image_path: str, n_clicks: int) -> List[List[int]]:
    """`n_clicks` include clicks near the volume's centre, a few voxels apart (stored i, j, k)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(image_path)
    reader.ReadImageInformation()
    size = reader.GetSize()[:3]
    centre = [s // 2 for s in size]
    offsets = [(0, 0, 0), (3, 0, 0), (0, 3, 0), (0, 0, 2), (-3, 0, 0), (0, -3, 0), (0, 0, -2), (3, 3, 0)]
    return [[int(min(max(c + o, 0), s - 1)) for c, o, s in zip(centre, offsets[i % len(offsets)], size)]
            for i in range(n_clicks)]


def mask_digest(content: bytes, suffix: str) -> str:
    """SHA-256 of the mask's voxels (file headers such as gzip time stamps do not count)."""
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(content)
        f.flush()
        arr = sitk.GetArrayFromImage(sitk.ReadImage(f.name))
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()


def click(url: str, image: str, label: str, clicks: List[List[int]], timeout: float = 600.0):
    """One request as Slicer sends it; -> (status, digest or error text, seconds)."""
    params = {"label": label, "foreground": clicks, "background": [], "result_extension": ".nii.gz"}
    if len(clicks) == 1:
        params["reset_state"] = True
    t0 = time.perf_counter()
    r = requests.post(f"{url}/infer/sammed3d", params={"image": image, "output": "image"},
                      data={"params": json.dumps(params)}, timeout=timeout)
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        return r.status_code, r.text[:300], dt
    return 200, mask_digest(r.content, ".nii.gz"), dt


# -------------------------------------------------------------------------------------- run


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its children (Linux /proc)."""
    total = 0
    pids = [pid]
    try:
        for child in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{child}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def percentile(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_load(url: str, plans: Dict[str, List[List[int]]], seconds: float, server_pid: Optional[int] = None) -> dict:
    """Reference pass (one client), then all annotators at once for `seconds`. -> report dict."""
    reference, errors = {}, []
    before = rss_bytes(server_pid) if server_pid else 0  # the idle server: nothing cached yet
    t0 = time.perf_counter()
    for image, clicks in plans.items():
        for k in range(1, len(clicks) + 1):
            status, digest, _ = click(url, image, f"seg_{image}", clicks[:k])
            if status != 200:
                errors.append(("reference", image, k, status, digest))
            reference[(image, k)] = digest
    reference_s = time.perf_counter() - t0

    latencies, mismatches, answers = [], [], []
    lock = threading.Lock()
    rss = {"before": before, "start": rss_bytes(server_pid) if server_pid else 0, "peak": 0}
    stop = threading.Event()
    deadline = time.monotonic() + seconds

    def annotator(image: str, clicks: List[List[int]]):
        rounds = 0
        while time.monotonic() < deadline:
            for k in range(1, len(clicks) + 1):
                status, digest, dt = click(url, image, f"seg_{image}", clicks[:k])
                with lock:
                    answers.append((image, k))
                    if status != 200:
                        errors.append(("load", image, k, status, digest))
                    else:
                        latencies.append(dt)
                        if digest != reference[(image, k)]:
                            mismatches.append((image, k))
            rounds += 1
        with lock:
            rounds_done[image] = rounds

    trace: List[tuple] = []  # (answers so far, RSS bytes), once a second: the soak's growth check

    def sample_rss():
        while not stop.wait(1.0):
            if server_pid:
                now = rss_bytes(server_pid)
                rss["peak"] = max(rss["peak"], now)
                with lock:
                    trace.append((len(answers), now))

    rounds_done: Dict[str, int] = {}
    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=annotator, args=(img, c)) for img, c in plans.items()]
    t1 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t1
    stop.set()
    rss["end"] = rss_bytes(server_pid) if server_pid else 0
    rss["peak"] = max(rss["peak"], rss["end"])
    return {
        "annotators": len(plans), "clicks_per_plan": len(next(iter(plans.values()))), "seconds": round(wall, 1),
        "reference_seconds": round(reference_s, 1), "answers": len(answers), "errors": errors,
        "mismatches": mismatches, "rounds": rounds_done,
        "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95), "p99_s": percentile(latencies, 99),
        "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
        "throughput_per_s": len(latencies) / wall if wall else 0.0,
        "rss_mb": {k: round(v / 2 ** 20) for k, v in rss.items()},
        "rss_growth": rss_growth(trace),
    }


def rss_growth(trace: List[tuple]) -> dict:
    """Memory growth over the run: median RSS over the first and the last quarter of the answers,
    and the least-squares slope in MB per 1,000 answers (a leak shows as a steady positive slope;
    the cache filling shows in the first quarter only)."""
    if len(trace) < 8:
        return {}
    n = np.array([t[0] for t in trace], dtype=np.float64)
    mb = np.array([t[1] for t in trace], dtype=np.float64) / 2 ** 20
    q = max(1, len(trace) // 4)
    slope = float(np.polyfit(n[q:], mb[q:], 1)[0] * 1000) if np.ptp(n[q:]) > 0 else float("nan")
    return {"answers": int(n[-1]), "first_quarter_mb": round(float(np.median(mb[:q])), 1),
            "last_quarter_mb": round(float(np.median(mb[-q:])), 1),
            "slope_mb_per_1000_answers_after_first_quarter": round(slope, 2)}


def studies_for(n: int, folder: str) -> Dict[str, str]:
    """`n` images (the synthetic phantoms, copied as needed) -> {image id: path}."""
    from prepare_sample_data import prepare_synthetic

    os.makedirs(folder, exist_ok=True)
    truth = tempfile.mkdtemp(prefix="bench-load-truth-")
    prepare_synthetic(folder, truth)
    shutil.rmtree(truth, ignore_errors=True)
    originals = sorted(n_ for n_ in os.listdir(folder) if n_.endswith((".nii.gz", ".nrrd")))
    out = {}
    i = 0
    while len(out) < n:
        name = originals[i % len(originals)]
        copy = name if i < len(originals) else f"copy{i // len(originals)}_{name}"
        if copy != name:
            shutil.copy(os.path.join(folder, name), os.path.join(folder, copy))
        out[copy.split(".")[0]] = os.path.join(folder, copy)
        i += 1
    return out


def checkpoint_for(weights: str, folder: str) -> Optional[str]:
    import torch
    from lib.model import build_sam_med3d, save_checkpoint

    if weights == "default":  # the embedded default model, by path: not whatever else resolve_weights finds first
        from lib.weights import find_default_checkpoint

        path = find_default_checkpoint(os.path.join(REPO, "apps", "sammed3d", "model"))
        if not path:
            raise SystemExit("no embedded default model in apps/sammed3d/model/default/")
        return path
    torch.manual_seed(0)
    if weights == "small":
        config = {"encoder_embed_dim": 96, "encoder_depth": 4, "encoder_num_heads": 4,
                  "encoder_global_attn_indexes": [1, 3], "prompt_embed_dim": 96}
        return save_checkpoint(build_sam_med3d(config), os.path.join(folder, "small.pt"), version="bench-small")
    return save_checkpoint(build_sam_med3d(None), os.path.join(folder, "released_random.pt"), version="released-random")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", type=int, default=8)
    ap.add_argument("--clicks", type=int, default=3, help="clicks per plan (then the plan restarts)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--minutes", type=float, default=None, help="overrides --seconds (soak)")
    ap.add_argument("--weights", choices=("small", "released-random", "default"), default="small")
    ap.add_argument("--cache-mb", default="1024")
    ap.add_argument("--json", default=None, help="write the report here")
    args = ap.parse_args(argv)
    from local_server import LocalServer

    seconds = args.minutes * 60 if args.minutes else args.seconds
    work = tempfile.mkdtemp(prefix="bench-load-")
    try:
        images = studies_for(args.annotators, os.path.join(work, "studies"))
        plans = {image: click_plan(path, args.clicks) for image, path in images.items()}
        conf = {"max_crops": "1", "cache_mb": args.cache_mb,
                "versions_dir": os.path.join(work, "versions")}  # no live fine-tuned version replaces the weights
        ckpt = checkpoint_for(args.weights, work)
        if ckpt:
            conf["checkpoint"] = ckpt
        with LocalServer(os.path.join(work, "studies"), conf) as server:
            report = run_load(server.url, plans, seconds, server.proc.pid)
        report.update({"weights": args.weights, "cache_mb": int(args.cache_mb), "cpus": os.cpu_count()})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0 if not report["errors"] and not report["mismatches"] else 1


if __name__ == "__main__":
    sys.exit(main())
