"""Images/s of ``extract_embeddings.py`` against ``inference.py`` on the same folder and the same eDifFIQA variant, in
one interleaved run: both read the folder by one rule (:func:`engine.scoring.scorer.folder_batching`), so the
embeddings (the backbone alone) should come at least as fast as the scores (backbone and quality head).

    python -m benchmarks.embeddings [--faces 192] [--repeats 3] [--variant ediffiqaT] [--repo PATH]

Rows, each the median of ``--repeats``, the rows alternating so that a change of load on a shared machine touches
them alike:

- in process: :meth:`QualityScorer.score_folder` and :func:`engine.scoring.embeddings.extract_embeddings` on the
  folder, the model already built (the folder loop alone: decoding, batching, the model).
- whole process: ``inference.py`` and ``extract_embeddings.py`` as a user runs them (``--device cpu -q``, no figure),
  from the start of ``python`` to its exit; "loop images/s" is the rate each prints in its summary.

The folder holds ``--faces`` distinct 112x112 JPEG faces (:func:`benchmarks.inference_throughput.make_jpeg_folder`);
the weights are synthetic (:func:`model.synthetic.manifest_state_dict`: the official keys and shapes, well-scaled
random values; speed does not depend on them). ``--repo`` runs the whole-process rows of another checkout too (give
an older one to compare before and after).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

import torch

from benchmarks.inference_throughput import make_jpeg_folder
from engine.scoring.embeddings import EmbedConfig, extract_embeddings
from engine.scoring.scorer import QualityScorer
from model.synthetic import manifest_state_dict
from utils.runtime import cpu_kind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RATE = re.compile(r", ([0-9.]+) images/s")


def whole_process(repo: str, argv: List[str]) -> Callable[[], Dict[str, float]]:
    """A run of ``python argv`` in ``repo``: its wall seconds and the images/s its summary line prints."""
    def run() -> Dict[str, float]:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *argv], cwd=repo, capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} in {repo} ended with {proc.returncode}:\n{proc.stderr[-3000:]}")
        rate = _RATE.search(proc.stderr)
        return {"seconds": seconds, "loop": float(rate.group(1)) if rate else float("nan")}
    return run


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", default="ediffiqaT")
    parser.add_argument("--repo", action="append", default=[], help="another checkout (whole-process rows)")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp:
        faces = os.path.join(tmp, "faces")
        os.makedirs(faces)
        paths = make_jpeg_folder(faces, args.faces)
        weights = os.path.join(tmp, f"{args.variant}.pth")
        torch.save(manifest_state_dict(args.variant), weights)
        scorer = QualityScorer.from_pretrained(args.variant, weights, device=device, progress=False)
        embed = EmbedConfig(images=faces, model=args.variant, weights=weights, output=os.path.join(tmp, "e.pkl"),
                            device="cpu", verbose=False)

        def in_process(fn: Callable[[], object]) -> Callable[[], Dict[str, float]]:
            def run() -> Dict[str, float]:
                start = time.perf_counter()
                fn()
                seconds = time.perf_counter() - start
                return {"seconds": seconds, "loop": len(paths) / seconds}
            return run

        rows: Dict[str, Callable[[], Dict[str, float]]] = {
            "in process: score_folder": in_process(lambda: scorer.score_folder(faces, paths)),
            "in process: extract_embeddings": in_process(lambda: extract_embeddings(embed)),
        }
        for repo in [ROOT, *args.repo]:
            name = "" if repo == ROOT else f" [{repo}]"
            common = ["--images", faces, "--model", args.variant, "--weights", weights, "--device", "cpu", "-q"]
            rows[f"whole process: inference.py{name}"] = whole_process(
                repo, ["inference.py", *common, "--figure-tiles", "0", "--output", os.path.join(tmp, "scores"),
                       "--fresh"])
            rows[f"whole process: extract_embeddings.py{name}"] = whole_process(
                repo, ["extract_embeddings.py", *common, "--output", os.path.join(tmp, "emb.pkl")])
        for run in rows.values():  # untimed: caches, bytecode, the weights' hash record
            run()
        results: Dict[str, List[Dict[str, float]]] = {name: [] for name in rows}
        for _ in range(args.repeats):
            for name, run in rows.items():
                results[name].append(run())
    print(f"{args.faces} faces, {args.variant}, CPU {cpu_kind()}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}; medians of {args.repeats}")
    print(f"{'row':58s} {'wall s':>8s} {'loop images/s':>14s}")
    median = {name: {k: statistics.median(r[k] for r in runs) for k in ("seconds", "loop")}
              for name, runs in results.items()}
    for name, m in median.items():
        print(f"{name:58s} {m['seconds']:8.2f} {m['loop']:14.1f}")
    a, b = median["in process: extract_embeddings"], median["in process: score_folder"]
    print(f"embeddings / scores, in process: {a['loop'] / b['loop']:.2f}x images/s")
    a, b = median["whole process: extract_embeddings.py"], median["whole process: inference.py"]
    print(f"embeddings / scores, whole process: {b['seconds'] / a['seconds']:.2f}x (wall), "
          f"{a['loop'] / b['loop']:.2f}x (loop images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
