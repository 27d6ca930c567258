"""How far the default training mode moves from the official update (base.official: 1), on a small synthetic run.

    python -m benchmarks.official_vs_default [--variants ediffiqaT ediffiqaS] [--ids 4] [--per-id 10] [--epochs 2]

Builds a tiny set in the official layout (random 112x112 images, random labels and 512-d teacher embeddings), trains
each variant from the same seed and random backbone in both modes with the official train_config.yaml (batch 8,
validation batch 3, fp32 on the CPU), and prints the largest parameter difference between the two ``model.pth``
files, the validation losses, and the wall time of each mode (the ratio is the default mode's speed-up).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["ediffiqaT", "ediffiqaS"])
    parser.add_argument("--ids", type=int, default=4)
    parser.add_argument("--per-id", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from tests.layouts import official_layout, official_schema_config

    print("| variant | mode | seconds | vs official | val loss per epoch | largest parameter difference |")
    print("|---|---|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        images, data = official_layout(root, n_ids=args.ids, per_id=args.per_id)
        for variant in args.variants:
            results = {}
            for mode in ("official", "default"):
                out = root / f"{variant}-{mode}"
                cfg = official_schema_config(root, images, data, out, variant, epochs=args.epochs,
                                             official=int(mode == "official"))
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "-c", cfg],
                                      capture_output=True, text=True, cwd=ROOT)
                if proc.returncode:
                    print(proc.stderr)
                    return 1
                seconds = time.perf_counter() - start
                history = json.loads((out / "history.json").read_text())
                results[mode] = (seconds, [h["val"]["loss"] for h in history],
                                 torch.load(str(out / "model.pth"), weights_only=True))
            ref = results["official"][2]
            for mode, (seconds, losses, state) in results.items():
                diff = max((state[k].double() - ref[k].double()).abs().max().item() for k in ref)
                print(f"| {variant} | {mode} | {seconds:.1f} | {results['official'][0] / seconds:.2f}x | "
                      f"{', '.join(f'{v:.6f}' for v in losses)} | {diff:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
