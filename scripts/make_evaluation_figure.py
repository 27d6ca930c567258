"""Draw the docs' example of ``evaluate.py --benchmark``'s grid (``figures/example-edc-grid.png``) from synthetic data:
two synthetic insightface ``.bin`` sets, two FR models with random MobileFaceNet weights, eDifFIQA(T) with random
weights and a file of random scores. It shows what the run writes, not results.

    python -m scripts.make_evaluation_figure [--output figures]
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=os.path.join(ROOT, "figures"))
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    import evaluate
    from dataset.synthetic import verification_bin
    from dataset.verification import read_benchmark
    from model.registry import VARIANTS
    from model.synthetic import manifest_state_dict
    from scripts.make_doc_figures import _copy
    from utils.cli import run_cli

    variant = next(name for name, v in VARIANTS.items() if v.backbone == "mobilefacenet")
    with tempfile.TemporaryDirectory() as tmp:
        argv_run = ["--fmr", "0.02", "--device", "cpu", "-q", "--output", os.path.join(tmp, "out"),
                    "--method", f"{variant}={os.path.join(tmp, 'q.pth')}"]
        random_scores = {}
        rng = np.random.default_rng(0)
        for i, name in enumerate(("setA", "setB")):
            path = os.path.join(tmp, f"{name}.bin")
            verification_bin(path, 120, seed=10 + i)
            argv_run += ["--benchmark", f"{name}={path}"]
            random_scores.update({k: float(rng.uniform()) for k in read_benchmark(name, path).keys})
        with open(os.path.join(tmp, "random.pkl"), "wb") as handle:
            pickle.dump(random_scores, handle)
        argv_run += ["--method", f"random={os.path.join(tmp, 'random.pkl')}"]
        for seed, label in ((2, "FR-A"), (3, "FR-B")):
            fr = os.path.join(tmp, f"{label}.pth")
            torch.save({k[len("base_model."):]: v for k, v in manifest_state_dict(variant, seed=seed).items()
                        if k.startswith("base_model.")}, fr)
            argv_run += ["--fr", f"{label}={fr}"]
        torch.save(manifest_state_dict(variant, seed=1), os.path.join(tmp, "q.pth"))
        code = run_cli(evaluate.main, argv_run, "evaluate.py")
        if code:
            return code
        os.makedirs(args.output, exist_ok=True)
        _copy(os.path.join(tmp, "out", "edc_grid.png"), os.path.join(args.output, "example-edc-grid.png"))
    print(f"wrote {os.path.join(args.output, 'example-edc-grid.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
