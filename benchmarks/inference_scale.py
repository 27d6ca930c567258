"""Memory and time of inference.py on large folders: listing, peak memory per image, and the part-file overhead.

    python -m benchmarks.inference_scale [--images 10000] [--size 24]

Generates ``--images`` tiny PNG faces (``--size`` pixels a side; the model resizes them to 112x112) in nested
folders, then runs, each in a fresh process: ``list`` (the folder walk alone), and ``inference.py`` with eDifFIQA(T)
and random weights on a quarter and on all of the images. Peak memory is the process's high-water resident set
(VmHWM); if memory is bounded per image, the full run's peak exceeds the quarter run's by little. Prints one table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def generate(folder: str, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = os.path.join(folder, f"{i // 1000:04d}")
        os.makedirs(sub, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(sub, f"{i:07d}.png"))


def worker(kind: str, folder: str, limit: int, weights: str, out: str) -> None:
    from utils.runtime import peak_rss_bytes

    start = time.perf_counter()
    if kind == "list":
        from dataset.image_folder import find_images

        count = len(find_images(folder))
    else:
        import inference

        argv = ["--images", folder, "--model", "ediffiqaT", "--weights", weights, "--output", out, "--device", "cpu",
                "-q", "--batch-size", "32"]
        if limit:
            argv += ["--limit", str(limit)]
        assert inference.main(argv) == 0
        count = limit
    print(json.dumps({"seconds": time.perf_counter() - start, "peak": peak_rss_bytes(), "count": count}))


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--size", type=int, default=24)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.folder, args.limit, args.weights, args.out)
        return 0
    if args.images < 8 or args.size < 8:
        parser.error("--images and --size must be at least 8")
    import torch

    from model.synthetic import manifest_state_dict

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        faces = os.path.join(tmp, "faces")
        t = time.perf_counter()
        generate(faces, args.images, args.size)
        print(f"generated {args.images} images in {time.perf_counter() - t:.0f} s", flush=True)
        weights = os.path.join(tmp, "t.pth")
        torch.save(manifest_state_dict("ediffiqaT"), weights)
        quarter = args.images // 4
        for kind, limit in (("list", 0), ("score", quarter), ("score", args.images)):
            out = os.path.join(tmp, f"out-{limit}")
            proc = subprocess.run([sys.executable, "-m", "benchmarks.inference_scale", "--worker", kind,
                                   "--folder", faces, "--limit", str(limit), "--weights", weights, "--out", out],
                                  capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-3000:])
                return 1
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((kind, result["count"] or args.images, result["seconds"], result["peak"]))
    print("\n| run | images | seconds | images/s | peak memory |")
    print("|---|---:|---:|---:|---:|")
    for kind, count, seconds, peak in rows:
        print(f"| {kind} | {count} | {seconds:.1f} | {count / seconds:.0f} | {peak / 2 ** 20:.0f} MiB |")
    (_, q, _, q_peak), (_, n, _, n_peak) = rows[1], rows[2]
    print(f"\nmemory per image beyond the quarter run: {(n_peak - q_peak) / max(n - q, 1):.0f} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
