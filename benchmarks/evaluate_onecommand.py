"""The paper's evaluation of one verification set: ``evaluate.py --benchmark`` (one process) against the four-script
path (unpack the ``.bin`` to image files with a pairs file, ``extract_embeddings.py``, ``inference.py``,
``evaluate.py``: four processes), whole-process wall times, interleaved, in one run.

    python -m benchmarks.evaluate_onecommand [--pairs 300] [--repeats 3] [--fr-variant ediffiqaS]
                                             [--variant ediffiqaT] [--threads N]

The set is a synthetic insightface ``.bin`` (:func:`dataset.synthetic.verification_bin`, 2 x ``--pairs`` JPEG
faces); the FR model is the backbone of ``--fr-variant`` and the quality method ``--variant``, both with synthetic
weights (:func:`model.synthetic.manifest_state_dict`: the official keys and shapes). Each one-command run starts
with an empty output folder (no cache); the four-script path's time is the sum of its four processes, the unpacking
step counted as a researcher would have to run it (decoding the ``.bin`` as ``load_bin`` does and writing PNG files
and ``pairs.csv``). Both paths must give the same pAUCs (checked, printed). ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``
are ``--threads`` for every process; one untimed run of each path first fills the caches (bytecode, fonts).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The unpacking step of the four-script path, run as its own process: images to PNG files, comparisons to a pairs
#: file (argv: the .bin, the image folder, the pairs file).
UNPACK = """
import csv, os, sys
from PIL import Image
from dataset.verification import read_benchmark
data = read_benchmark("syn", sys.argv[1])
names = [f"{i:05d}.png" for i in range(len(data.keys))]
for i, name in enumerate(names):
    Image.fromarray(data.images[i]).save(os.path.join(sys.argv[2], name))
with open(sys.argv[3], "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["a", "b", "mated"])
    writer.writerows([names[a], names[b], int(s)] for a, b, s in zip(data.left, data.right, data.issame))
"""


def run(argv: List[str], env: Dict[str, str]) -> float:
    """Seconds from the start of the process to its exit; raises when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", timeout=3600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} ended with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


def fresh(folder: str) -> str:
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    return folder


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=300, help="comparisons of the synthetic set (images: twice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fr-variant", default="ediffiqaS", help="the FR model is this variant's backbone")
    parser.add_argument("--variant", default="ediffiqaT", help="the quality method")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)

    import torch

    from benchmarks.startup import cpu_name
    from dataset.synthetic import verification_bin
    from model.registry import VARIANTS
    from model.synthetic import manifest_state_dict

    backbone = VARIANTS[args.fr_variant].backbone
    python = sys.executable
    fmr = max(1e-3, 4.0 / args.pairs)  # half the comparisons are non-mated: twice 1 / FMR of them
    with tempfile.TemporaryDirectory() as tmp:
        verification_bin(os.path.join(tmp, "syn.bin"), args.pairs, seed=1)
        fr = os.path.join(tmp, "fr.pth")
        torch.save({k[len("base_model."):]: v for k, v in manifest_state_dict(args.fr_variant).items()
                    if k.startswith("base_model.")}, fr)
        weights = os.path.join(tmp, "q.pth")
        torch.save(manifest_state_dict(args.variant, seed=1), weights)
        threads = str(args.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "TORCH_HOME": os.path.join(tmp, "torch")}
        common = ["--fmr", f"{fmr:g}", "--device", "cpu"]

        def one_command() -> float:
            out = fresh(os.path.join(tmp, "one"))
            return run([python, "evaluate.py", "--benchmark", f"syn={os.path.join(tmp, 'syn.bin')}",
                        "--fr", f"FR={backbone}:{fr}", "--method", f"Q={args.variant}:{weights}", *common,
                        "-q", "--output", out], env)

        def four_scripts() -> float:
            images, out = fresh(os.path.join(tmp, "images")), fresh(os.path.join(tmp, "four"))
            pairs, emb = os.path.join(out, "pairs.csv"), os.path.join(out, "emb.npz")
            return sum([
                run([python, "-c", UNPACK, os.path.join(tmp, "syn.bin"), images, pairs], env),
                run([python, "extract_embeddings.py", "--images", images, "--backbone", backbone, "--weights", fr,
                     "--output", emb, "--device", "cpu", "-q"], env),
                run([python, "inference.py", "--images", images, "--model", args.variant, "--weights", weights,
                     "--output", os.path.join(out, "scores"), "--device", "cpu", "-q"], env),
                run([python, "evaluate.py", "--pairs", pairs, "--embeddings", f"FR={emb}",
                     "--scores", f"Q={os.path.join(out, 'scores', 'quality-scores.pkl')}", "--fmr", f"{fmr:g}",
                     "--output", os.path.join(out, "figs")], env)])

        paths = {"one command (evaluate.py --benchmark)": one_command, "four scripts": four_scripts}
        times: Dict[str, List[float]] = {name: [] for name in paths}
        load_before = os.getloadavg()
        for path in paths.values():  # untimed: bytecode, font cache
            path()
        for repeat in range(args.repeats):
            order = list(paths) if repeat % 2 == 0 else list(paths)[::-1]
            for name in order:
                times[name].append(paths[name]())
        load_after = os.getloadavg()
        ours = json.load(open(os.path.join(tmp, "one", "edc.json"), encoding="utf-8"))["results"][0]
        theirs = json.load(open(os.path.join(tmp, "four", "figs", "edc.json"), encoding="utf-8"))[0]
        same = all(ours[k] == theirs[k] for k in ("fnmr0", "pauc@0.2", "pauc@0.3"))

    print(f"{cpu_name()}, {len(os.sched_getaffinity(0))} CPUs, OMP/MKL threads {threads}; torch {torch.__version__}; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; median of {args.repeats}, "
          f"interleaved; {2 * args.pairs} images ({args.pairs} comparisons), FR {backbone}, quality {args.variant}, "
          f"synthetic weights; pAUCs of the two paths {'identical' if same else 'DIFFER'} "
          f"(pauc@0.3 {ours['pauc@0.3']!r})")
    print()
    print("| path | median s | min s | max s |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    ratio = statistics.median(times["four scripts"]) / statistics.median(times["one command (evaluate.py --benchmark)"])
    print(f"\nfour scripts / one command: {ratio:.2f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
