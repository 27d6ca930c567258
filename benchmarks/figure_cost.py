"""What quality-scores.png costs: the time to draw it (histogram of every score, re-reading the 2N faces shown) against
the time inference.py takes to score the folder, on one machine in one run.

    python -m benchmarks.figure_cost [--images 10000] [--tiles 8] [--variant T]

The run is timed once, end to end in this process (listing, model, part files, outputs; the figure turned off); the
figure is then drawn three times from the written scores, as the run draws it before writing the set: the first
time (which imports matplotlib, as a run does) and the median.
"""
from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from typing import List, Optional

import torch


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--variant", default="T", help="T, S, M or L")
    args = parser.parse_args(argv)

    import inference
    from dataset.synthetic import save_image
    from engine.resumable import ScoreSheet, sheet_files
    from model.synthetic import manifest_state_dict

    name = f"ediffiqa{args.variant.upper()}"
    with tempfile.TemporaryDirectory() as tmp:
        faces = os.path.join(tmp, "faces")
        for i in range(args.images):
            save_image(os.path.join(faces, f"{i // 1000:03d}", f"{i:06d}.jpg"), seed=i)
        torch.save(manifest_state_dict(name, seed=1), os.path.join(tmp, "w.pth"))
        out = os.path.join(tmp, "out")
        argv_ = ["--images", faces, "--model", name, "--weights", os.path.join(tmp, "w.pth"), "--output", out,
                 "--device", "cpu", "-q", "--figure-tiles", "0"]
        start = time.perf_counter()
        assert inference.main(argv_) == 0
        run = time.perf_counter() - start
        with open(os.path.join(out, "quality-scores.pkl"), "rb") as handle:
            table = pickle.load(handle)
        sheet = ScoreSheet(args.tiles, "eDifFIQA quality scores", name)
        draws = []
        for _ in range(3):
            start = time.perf_counter()
            files = sheet_files(out, table, sheet, faces, "quality scores")
            files[0][1][1](open(os.devnull, "wb"))
            draws.append(time.perf_counter() - start)
        draw = statistics.median(draws)
    print(f"{name}, {args.images} JPEG images, {torch.get_num_threads()} threads: scoring run {run:.1f} s; "
          f"quality-scores.png ({args.tiles} + {args.tiles} tiles) {draws[0]:.2f} s the first time (matplotlib "
          f"imported) = {100 * draws[0] / run:.2f}% of the run, {draw:.2f} s after that")
    return 0


if __name__ == "__main__":
    sys.exit(main())
