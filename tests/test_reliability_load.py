"""8 simulated annotators at once on 8 images: every answer equals the single-client answer.

Bounded for CI (a reference pass, then about 25 s of load on the small test model); the longer
runs, with the released-size architecture and the soak, are `scripts/bench_load.py --minutes N`
(figures in docs/reliability.md).
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from bench_load import click_plan, run_load  # noqa: E402

LOAD_SECONDS = 25
CACHE_MB = 512  # the reliability server's --conf cache_mb (tests/conftest.py)
# Resident memory besides the cache (docs/reliability.md, measured with this test): the idle server
# (Python, torch, MONAI Label, the small model) 767 MB, 8 requests in flight about 150 MB more.
IDLE_OVERHEAD_MB = 1024  # absolute: peak RSS <= cache bound + this
IN_FLIGHT_MB = 256  # relative: peak RSS <= RSS of the idle server + cache bound + this


def test_eight_annotators_get_the_single_client_answers(reliability_server, reliability_data):
    studies = reliability_data["studies"]
    images = sorted(n for n in os.listdir(studies) if n.endswith((".nii.gz", ".nrrd")) and not os.path.islink(
        os.path.join(studies, n)))
    assert len(images) >= 8
    plans = {n.split(".")[0]: click_plan(os.path.join(studies, n), 3) for n in images[:8]}
    report = run_load(reliability_server.url, plans, LOAD_SECONDS, reliability_server.proc.pid)
    print("\nload:", {k: v for k, v in report.items() if k not in ("errors", "mismatches")})
    assert report["errors"] == [], report["errors"][:5]
    assert report["mismatches"] == [], report["mismatches"][:5]
    assert len(report["rounds"]) == 8 and min(report["rounds"].values()) >= 1, report["rounds"]
    assert report["p99_s"] < 30
    rss = report["rss_mb"]
    assert rss["peak"] <= CACHE_MB + IDLE_OVERHEAD_MB, rss
    assert rss["peak"] <= rss["before"] + CACHE_MB + IN_FLIGHT_MB, rss
