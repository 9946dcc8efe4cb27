#!/usr/bin/env python
"""Does a background scoring run slow the clicks? Click latency with and without scoring going on.

    .venv/bin/python scripts/bench_scoring_click.py [--images 4] [--clicks 12] [--priorities 10,gate] [--max-images 3]

A real `monailabel start_server` (released-size model, random weights, as scripts/bench_http.py) on
synthetic 512x512x61 CTs. An annotator clicks on ct_0 (repeat clicks: decode, paste, write) about
three times a second. Phases, in this order, for each scoring mode in --priorities (0 = the
scoring subprocess at the server's priority; 10 = nice 10; idle = nice 10 and Linux's SCHED_IDLE policy:
--conf al_nice, al_idle; these three with the click gate off, request option "yield": 0; gate = nice 10
and the click gate on, the default now: the server stops the scoring subprocess while it serves a click,
lib/activelearning/gate.py, --conf al_yield):
  idle    -- --clicks repeat clicks, then --first first clicks on images the server has not seen;
  scoring -- POST /scoring/combined {"force": true, "nice": N, "idle": 0|1, "yield": 0|1, "max_images": M}
             (uncertainty of M images and diversity features of all of them, in a subprocess), repeat clicks
             while it runs and --first first clicks on unseen images among them;
  idle again (repeat clicks, then first clicks), so slow phases of a shared machine show up on both sides.
Reports medians per phase and the slow-down (scoring median / idle median - 1), for repeat and first
clicks; the target is <= 20 % for both.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "apps", "sammed3d"))

from bench_http import machine, released_random_checkpoint, synthetic_ct  # noqa: E402
from local_server import LocalServer  # noqa: E402


def scoring_running(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/scoring/?check_if_running=true", timeout=10) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise


PRIORITIES = {"0": {"nice": 0, "idle": 0, "yield": 0}, "10": {"nice": 10, "idle": 0, "yield": 0},
              "idle": {"nice": 10, "idle": 1, "yield": 0}, "gate": {"nice": 10, "idle": 0, "yield": 1}}
LABELS = {"0": "nice 0, no gate", "10": "nice 10, no gate (before)", "idle": "nice 10 + SCHED_IDLE, no gate",
          "gate": "nice 10 + click gate (default now)"}


def start_scoring(url: str, priority: str, max_images: int) -> None:
    body = json.dumps(dict({"force": True, "max_images": max_images}, **PRIORITIES[priority])).encode()
    req = urllib.request.Request(url + "/scoring/combined", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4, help="images in the datastore (all are scored)")
    p.add_argument("--clicks", type=int, default=12, help="repeat clicks per idle phase")
    p.add_argument("--first", type=int, default=2,
                   help="first clicks on unseen images in each idle phase and during each scoring run")
    p.add_argument("--priorities", default="10,gate",
                   help="scoring modes to compare: 0, 10, idle (nice 0 / 10 / 10 + SCHED_IDLE, gate off), "
                        "gate (nice 10 + click gate, the default)")
    p.add_argument("--interval", type=float, default=0.3, help="seconds between clicks")
    p.add_argument("--max-images", type=int, default=3, help="images each scoring run scores (its max_images)")
    args = p.parse_args(argv)
    from monailabel.client import MONAILabelClient

    nices = [n.strip() for n in args.priorities.split(",") if n.strip()]
    work = tempfile.mkdtemp(prefix="bench-scoring-")
    try:
        studies = os.path.join(work, "studies")
        os.makedirs(studies)
        synthetic_ct(os.path.join(studies, "ct_0.nii.gz"))
        n_unseen = 3 * args.first * len(nices)
        for r in range(1, args.images + n_unseen):
            shutil.copyfile(os.path.join(studies, "ct_0.nii.gz"), os.path.join(studies, f"ct_{r}.nii.gz"))
        ckpt = released_random_checkpoint(os.path.join(work, "random_released.pt"))
        conf = {"checkpoint": ckpt, "max_crops": "1", "modality": "CT"}
        with LocalServer(studies, conf) as server:
            client = MONAILabelClient(server.url, tmpdir=os.path.join(work, "client"))
            centre = [300, 250, 30]
            fg = [centre]
            client.infer("sammed3d", "ct_0", {"label": "liver", "foreground": fg, "background": []})
            unseen = iter(range(args.images, args.images + n_unseen))

            def repeat_click() -> float:
                fg.append([centre[0] + (len(fg) % 40), centre[1] - (len(fg) % 13), centre[2]])
                t = time.perf_counter()
                _, res = client.infer("sammed3d", "ct_0", {"label": "liver", "foreground": fg, "background": []})
                dt = time.perf_counter() - t
                assert res["cache_hit"], "repeat click must not re-encode"
                held.append(res.get("scoring_held", 0))
                return dt

            held = []

            def first_click() -> float:
                t = time.perf_counter()
                _, res = client.infer("sammed3d", f"ct_{next(unseen)}", {"label": "liver", "foreground": [centre]})
                dt = time.perf_counter() - t
                assert not res["cache_hit"], "a first click encodes"
                held.append(res.get("scoring_held", 0))
                return dt

            def idle(n):
                out = []
                for _ in range(n):
                    out.append(repeat_click())
                    time.sleep(args.interval)
                return out

            results = {}
            idle(3)  # warm-up
            for nice in nices:
                before = idle(args.clicks)
                first_idle = [first_click() for _ in range(args.first)]
                start_scoring(server.url, nice, args.max_images)
                t0 = time.perf_counter()
                while not scoring_running(server.url) and time.perf_counter() - t0 < 30:
                    time.sleep(0.1)
                during, first_during = [], []
                del held[:]
                while scoring_running(server.url):
                    if len(first_during) < args.first and len(during) % 6 == 5:
                        first_during.append(first_click())
                    during.append(repeat_click())
                    time.sleep(args.interval)
                run_s = time.perf_counter() - t0
                n_held = sum(1 for h in held if h)
                after = idle(args.clicks)
                first_idle += [first_click() for _ in range(args.first)]
                results[nice] = {"idle": before + after, "scoring": during, "first_idle": first_idle,
                                 "first_scoring": first_during, "run_s": run_s, "held": n_held}
                print(f"{LABELS[nice]}: scoring ran {run_s:.0f} s; {len(during)} repeat clicks during it", flush=True)
            log = server.log()
        med = statistics.median
        print()
        print(f"- Command: `{' '.join([os.path.relpath(sys.executable, REPO)] + sys.argv)}`")
        print(f"- Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
        print()
        print("| scoring mode | scoring run (s) | clicks holding it | repeat click idle: median (s), n "
              "| during scoring: median (s), n | slow-down | first click idle: median (s), n "
              "| during scoring: median (s), n | slow-down |")
        print("|---|---|---|---|---|---|---|---|---|")

        def slow(during, idle_):
            return f"{100 * (med(during) / med(idle_) - 1):+.0f} %" if during and idle_ else "-"

        def cell(x):
            return f"{med(x):.3f}, {len(x)}" if x else "-"

        for nice, r in results.items():
            n_during = len(r["scoring"]) + len(r["first_scoring"])
            print(f"| {LABELS[nice]} | {r['run_s']:.0f} | {r['held']} of {n_during} | {cell(r['idle'])} | "
                  f"{cell(r['scoring'])} | {slow(r['scoring'], r['idle'])} | {cell(r['first_idle'])} | "
                  f"{cell(r['first_scoring'])} | {slow(r['first_scoring'], r['first_idle'])} |")
        print()
        for nice, r in results.items():
            print(f"{LABELS[nice]}: first clicks idle " + ", ".join(f"{x:.2f}" for x in r["first_idle"])
                  + " s; during scoring " + ", ".join(f"{x:.2f}" for x in r["first_scoring"]) + " s")
        niced = [line for line in log.splitlines() if "scoring[combined] at nice" in line]
        print()
        print("server log:", *niced[-len(nices):], sep="\n  ")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
