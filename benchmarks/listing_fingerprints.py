"""What the per-image fingerprints of a resumable run cost next to listing the folder and decoding its images.

    python -m benchmarks.listing_fingerprints [--images 100000] [--folders 100] [--repeats 3]

Makes ``--images`` empty ``.jpg`` files in ``--folders`` folders, then times (best of ``--repeats``, warm page
cache): the listing as it was before fingerprints (``os.walk`` and ``os.path.isfile`` per image), the listing now
(``dataset.image_folder.list_images``: ``os.walk`` and one ``os.stat`` per image, keeping size and modification time),
the fingerprints (``engine.resumable.fingerprints``), and the rerun's check (``engine.resumable.compare_listings``
with every image scored before, each looked up among the stored fingerprints). For scale, it also times decoding a
112x112 JPEG face. Prints one table with each time per image and as a ratio of the listing before.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from typing import Callable, List

import numpy as np


def make_files(folder: str, n: int, folders: int) -> None:
    for i in range(n):
        sub = os.path.join(folder, f"{i % folders:04d}")
        if i < folders:
            os.makedirs(sub, exist_ok=True)
        os.close(os.open(os.path.join(sub, f"{i:07d}.jpg"), os.O_CREAT | os.O_WRONLY, 0o644))


def best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def listing_before(root: str) -> List[str]:
    """``find_images`` before fingerprints: the same walk, ``os.path.isfile`` instead of keeping the stat."""
    from dataset.image_folder import IMAGE_EXTENSIONS

    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        os.path.realpath(dirpath)
        dirnames.sort()
        for filename in filenames:
            if os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                full = os.path.join(dirpath, filename)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                if os.path.isfile(full):
                    found.append(rel)
    return sorted(found)


def decode_seconds(count: int = 200) -> float:
    """Seconds to decode one 112x112 JPEG face (the cheapest image a run reads)."""
    from PIL import Image

    from dataset.transforms import decode_face

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buffer, "JPEG")
    with tempfile.NamedTemporaryFile(suffix=".jpg") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        start = time.perf_counter()
        for _ in range(count):
            decode_face(handle.name)
        return (time.perf_counter() - start) / count


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100000)
    parser.add_argument("--folders", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from dataset.image_folder import list_images
    from engine.resumable import compare_listings, fingerprints

    with tempfile.TemporaryDirectory() as root:
        make_files(root, args.images, args.folders)
        before = best(lambda: listing_before(root), args.repeats)
        now = best(lambda: list_images(root), args.repeats)
        listing = list_images(root)
        assert listing.paths == listing_before(root)
        prints = best(lambda: fingerprints(listing.paths, listing.stats), args.repeats)
        body = fingerprints(listing.paths, listing.stats)  # every image scored before: the most a rerun checks
        change = compare_listings(body, body, 8)
        assert change.same and change.checked == len(listing.paths) and not len(change.changed)
        checked = best(lambda: compare_listings(body, body, 8), args.repeats)
        decode = decode_seconds()
    n = args.images
    print(f"{n} files in {args.folders} folders; best of {args.repeats}; fingerprints file {16 * n} bytes and a "
          "header line")
    print("| step | seconds | us per image | vs listing before |\n|---|---:|---:|---:|")
    for name, seconds in [("listing before (walk + isfile)", before), ("listing now (walk + stat kept)", now),
                          ("fingerprints (path BLAKE2b + size/time, 16 bytes)", prints),
                          ("rerun check (all scored before)", checked),
                          ("decoding a 112x112 JPEG (per image, x n)", decode * n)]:
        print(f"| {name} | {seconds:.3f} | {seconds / n * 1e6:.2f} | {seconds / before:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
