"""Wall time and peak memory of prepare_data.py at VGGFace2-like scale, against a straightforward implementation.

    python -m benchmarks.prepare_data_scale [--images 1000000] [--identities 3000] [--dim 512]

Generates synthetic inputs in the official formats (pickled list of (path, quality) labels and pickled dict
{path: float32 array} embeddings, plus the same embeddings as .npz), then runs, each in a fresh process:
``baseline`` (the official script: plain pickle.load and the official algorithm of ``tests/official.py``), ``ours``
on the pickle, and ``ours`` on the .npz; both of ours must write the baseline's files (byte for byte, but for torch's
storage key). Peak memory is the process's high-water resident set size (VmHWM); the raw
size is images x dim x 4 bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from typing import List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def generate(folder: str, n_images: int, n_ids: int, dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.integers(0, n_ids, size=n_images))
    qualities = rng.beta(5, 2, size=n_images).round(4)
    paths = [f"n{i:06d}/{j:07d}_01.jpg" for j, i in enumerate(ids.tolist())]
    labels = list(zip(paths, qualities.tolist()))
    with open(os.path.join(folder, "labels.pkl"), "wb") as handle:
        pickle.dump(labels, handle, protocol=4)
    matrix = rng.standard_normal((n_images, dim), dtype=np.float32)
    np.savez(os.path.join(folder, "embeddings.npz"), paths=np.asarray(paths), embeddings=matrix)
    with open(os.path.join(folder, "embeddings.pkl"), "wb") as handle:
        pickle.dump({p: matrix[i].copy() for i, p in enumerate(paths)}, handle, protocol=4)


def baseline(folder: str, beta: float = 0.2, min_images: int = 10) -> None:
    """The official script: plain pickle.load of both files, then the official algorithm (tests/official.py)."""
    from tests.official import official_prepare_data, write_official_prepared

    with open(os.path.join(folder, "labels.pkl"), "rb") as handle:
        labels = pickle.load(handle)
    with open(os.path.join(folder, "embeddings.pkl"), "rb") as handle:
        embeddings = pickle.load(handle)
    _, centres, items = official_prepare_data(labels, embeddings, beta, min_images)
    write_official_prepared(os.path.join(folder, "baseline"), "b", centres, items)


def worker(kind: str, folder: str) -> None:
    start = time.perf_counter()
    if kind == "baseline":
        baseline(folder)
    else:
        import prepare_data

        emb = "embeddings.npz" if kind == "ours-npz" else "embeddings.pkl"
        code = prepare_data.main(["-ll", os.path.join(folder, "labels.pkl"), "-el", os.path.join(folder, emb),
                                  "-sl", os.path.join(folder, kind), "-sn", "b", "-q"])
        assert code == 0
    from utils.runtime import peak_rss_bytes

    peak = peak_rss_bytes()
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_bytes": peak}))


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--identities", type=int, default=3000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.folder)
        return 0
    raw = args.images * args.dim * 4
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as folder:
        t = time.perf_counter()
        generate(folder, args.images, args.identities, args.dim)
        print(f"generated {args.images} images / {args.identities} identities / {args.dim}-d in "
              f"{time.perf_counter() - t:.0f} s; raw embeddings {raw / 2**30:.2f} GiB", flush=True)
        results = {}
        for kind in ("baseline", "ours-pkl", "ours-npz"):
            proc = subprocess.run([sys.executable, "-m", "benchmarks.prepare_data_scale", "--worker", kind,
                                   "--folder", folder],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr)
                return 1
            results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{kind}: {results[kind]['seconds']:.1f} s, peak {results[kind]['peak_bytes'] / 2**30:.2f} GiB",
                  flush=True)
        base = results["baseline"]
        from tests.official import without_storage_keys

        for kind in ("ours-pkl", "ours-npz"):
            for stem in ("average_embedding_batch", "training_items"):
                ref, got = (open(os.path.join(folder, k, f"{stem}-b.pkl"), "rb").read() for k in ("baseline", kind))
                assert without_storage_keys(got) == without_storage_keys(ref), f"{kind}: {stem} differs"
    print()
    print("| run | seconds | vs baseline | peak memory | peak / raw embeddings |")
    print("|---|---:|---:|---:|---:|")
    for kind, r in results.items():
        print(f"| {kind} | {r['seconds']:.1f} | {base['seconds'] / r['seconds']:.2f}x | "
              f"{r['peak_bytes'] / 2**30:.2f} GiB | {r['peak_bytes'] / raw:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
