"""Whole-process times of inference.py for small jobs: start-up, an argument error, the README's first command and
256 faces, for one or more checkouts and the official code, in one interleaved run.

    python -m benchmarks.startup [--repo PATH ...] [--official PATH] [--repeats 5] [--faces 256] [--threads N]

Each row is the wall time of a fresh ``python`` process, from its start to its exit (the median of ``--repeats``;
the runs of all checkouts and rows alternate, so a change of load on a shared machine touches them alike):

- ``--help``: ``inference.py --help``.
- argument error: ``inference.py --batch-size x`` (argparse's error, exit code 2).
- README, 15 faces: the README's first command, ``inference.py -c configs/inference_config.yaml --model ediffiqaT``,
  run in the checkout on its 15 example faces, the figure drawn as that command draws it; ``--output`` is added so
  that nothing is written into the checkout.
- 256 faces: the same command with ``--images`` on 256 distinct 112x112 JPEG faces
  (:func:`benchmarks.inference_throughput.make_jpeg_folder`) and ``--device cpu``.
- official, 256 faces (with ``--official PATH``, a checkout of LSIbabnikz/eDifFIQA or a bare git repository of it):
  its ``inference.py`` on the same faces in a temporary copy of that checkout (or of the repository's ``HEAD``),
  with its ``inference_config.yaml`` changed only in the paths, the device (``cpu``) and the model (``ediffiqaT``;
  batch 128 as published). Its scores are compared with ours (printed above the table).

``--repo`` defaults to this checkout; give an older one first to compare before and after ("vs first"). The weights
of eDifFIQA(T) are synthetic (:func:`model.synthetic.manifest_state_dict`: the official keys and shapes, well-scaled
random values): placed for our checkouts as the cached published file in a temporary ``TORCH_HOME`` (where the
README's command finds the weights it fetched once), and for the official code as its ``weights/ediffiqaT.pth``.
``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` are set to ``--threads`` (default: the CPUs this process may use) for
every process. One untimed run of each command first fills the caches (bytecode, fonts, the weights' hash record).
"CPU s" is the median CPU time (user + system, all threads) of the process: on a machine shared with other work it
varies less than the wall time, which the targets are about.
"""
from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from utils.io import safe_pickle_load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The variant of the README's first command.
VARIANT = "ediffiqaT"
#: The official inference config's keys, with this run's paths, device and model.
OFFICIAL_CONFIG = """base:
  verbose: 1
  save_path: "{out}"
  seed: 42069
  device: "cpu"

dataset:
  loc: "{faces}"

dataloader:
  params:
    batch_size: 128

model: "{variant}"
"""


@dataclass
class Command:
    """One timed command: its row, the checkout (column) it belongs to, its argv and folder, the exit code it must
    end with, and the output folder it writes (emptied before each run)."""

    row: str
    checkout: str
    argv: List[str]
    cwd: str
    code: int = 0
    out: Optional[str] = None
    times: List[float] = field(default_factory=list)
    cpu: List[float] = field(default_factory=list)


def run_once(command: Command, env: Dict[str, str]) -> Tuple[float, float]:
    """Seconds from the start of ``command``'s process to its exit, and the CPU seconds (user + system, all its
    threads) it used; raises if it ends with another exit code."""
    if command.out is not None:
        shutil.rmtree(command.out, ignore_errors=True)
        os.makedirs(command.out)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command.argv, cwd=command.cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, errors="replace", timeout=600)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != command.code:
        raise SystemExit(f"{command.checkout}: {' '.join(command.argv)} ended with {proc.returncode}, not "
                         f"{command.code}:\n{proc.stderr[-3000:]}")
    return seconds, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def label(path: str) -> str:
    """``path`` with its git commit (``+`` when the work tree has changes)."""
    try:
        commit = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return path
    return f"{path} ({commit}{'+' if dirty else ''})" if commit else path


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ours(repo: str, name: str, faces: str, row: str, out: str) -> List[Command]:
    python, script = sys.executable, os.path.join(repo, "inference.py")
    readme = [python, script, "-c", "configs/inference_config.yaml", "--model", VARIANT]
    return [Command("`--help`", name, [python, script, "--help"], repo),
            Command("argument error", name, [python, script, "--batch-size", "x"], repo, code=2),
            Command("README, 15 faces", name, [*readme, "--output", out + "-readme"], repo, out=out + "-readme"),
            Command(row, name, [*readme, "--images", faces, "--device", "cpu", "--output", out + "-folder"], repo,
                    out=out + "-folder")]


def is_git_dir(path: str) -> bool:
    """Whether ``path`` is a bare git repository (a mirror), whose ``HEAD`` tree can be extracted."""
    proc = subprocess.run(["git", "-C", path, "rev-parse", "--is-bare-repository"], capture_output=True, text=True,
                          timeout=30)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def official(path: str, tmp: str, faces: str, row: str, state_dict) -> Command:
    """The official ``inference.py`` in a copy of ``path`` (a checkout, or a bare repository's ``HEAD``) under
    ``tmp``, with its weights file and config."""
    import torch

    copy = os.path.join(tmp, "official")
    if os.path.isfile(os.path.join(path, "inference.py")):
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns(".git"))
    else:
        archive = subprocess.run(["git", "-C", path, "archive", "--format=tar", "HEAD"], capture_output=True,
                                 check=True, timeout=120).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(copy, filter="data")
    os.makedirs(os.path.join(copy, "weights"), exist_ok=True)
    torch.save(state_dict, os.path.join(copy, "weights", f"{VARIANT}.pth"))
    out = os.path.join(tmp, "out-official")
    with open(os.path.join(copy, "configs", "inference_config.yaml"), "w", encoding="utf-8") as handle:
        handle.write(OFFICIAL_CONFIG.format(out=out, faces=faces, variant=VARIANT))
    return Command(row, "official", [sys.executable, "inference.py", "-c", "configs/inference_config.yaml"],
                   copy, out=out)


def score_difference(commands: Sequence[Command], row: str) -> Optional[str]:
    """Largest score difference of the runs of ``row`` (the folder) against the official run (by file name), or
    None."""
    tables = {}
    for command in commands:
        if command.row == row and command.out is not None:
            table = safe_pickle_load(os.path.join(command.out, "quality-scores.pkl"))
            tables[command.checkout] = {os.path.basename(k): float(v) for k, v in table.items()}
    if "official" not in tables:
        return None
    reference = tables.pop("official")
    scale = max(abs(v) for v in reference.values())
    parts = []
    for name, table in tables.items():
        if set(table) != set(reference):
            parts.append(f"{name}: other files than the official run's")
            continue
        worst = max(abs(table[k] - reference[k]) for k in reference)
        parts.append(f"{name}: max |ours - official| / max |official| = {worst / scale:.1e}")
    return "; ".join(parts)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", nargs="+", default=[ROOT], help="checkouts to time (default: this one); the "
                        "first is the baseline of 'vs first'")
    parser.add_argument("--official", help="a checkout of the official eDifFIQA code")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--faces", type=int, default=256)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)

    import torch

    from benchmarks.inference_throughput import make_jpeg_folder
    from model.registry import VARIANTS
    from model.synthetic import manifest_state_dict

    repos = [os.path.abspath(r) for r in args.repo]
    for repo in repos:
        if not os.path.isfile(os.path.join(repo, "inference.py")):
            parser.error(f"'{repo}' is not a checkout of this project (no inference.py)")
    if args.official and not (os.path.isfile(os.path.join(args.official, "inference.py")) or
                              is_git_dir(args.official)):
        parser.error(f"'{args.official}' is neither a checkout of the official code (no inference.py) nor a bare git "
                     "repository of it")
    for repo in repos:
        if os.path.exists(os.path.join(repo, "weights", f"{VARIANT}.pth")):
            print(f"note: {repo}/weights/{VARIANT}.pth exists and is used instead of the cached file",
                  file=sys.stderr)
    names = [label(r) for r in repos]
    state_dict = manifest_state_dict(VARIANT, seed=1)
    folder_row = f"{args.faces} faces"
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "torch", "hub", "checkpoints")
        os.makedirs(cache)
        torch.save(state_dict, os.path.join(cache, VARIANTS[VARIANT].weights.name))
        faces = os.path.join(tmp, "faces")
        os.makedirs(faces)
        make_jpeg_folder(faces, args.faces)
        commands = [c for i, (repo, name) in enumerate(zip(repos, names))
                    for c in ours(repo, name, faces, folder_row, os.path.join(tmp, f"out-{i}"))]
        if args.official:
            commands.append(official(os.path.abspath(args.official), tmp, faces, folder_row, state_dict))
        threads = str(args.threads)
        env = {**os.environ, "TORCH_HOME": os.path.join(tmp, "torch"), "OMP_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads}
        load_before = os.getloadavg()
        for command in commands:  # untimed: bytecode, font cache, the weights' hash record
            run_once(command, env)
        for repeat in range(args.repeats):
            shift = repeat % len(commands)  # each command takes each place in the order in turn
            for command in commands[shift:] + commands[:shift]:
                seconds, cpu = run_once(command, env)
                command.times.append(seconds)
                command.cpu.append(cpu)
        load_after = os.getloadavg()
        difference = score_difference(commands, folder_row)

    print(f"{cpu_name()}, {len(os.sched_getaffinity(0))} CPUs, OMP/MKL threads {threads}; torch {torch.__version__}; "
          f"{datetime.date.today().isoformat()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"median of {args.repeats}, interleaved; weights: synthetic {VARIANT}, cached in a temporary TORCH_HOME")
    if difference:
        print(f"scores of the {args.faces} faces: {difference}")
    official_time = next((statistics.median(c.times) for c in commands if c.checkout == "official"), None)
    print()
    print("| command | checkout | median s | min s | max s | CPU s | vs first | vs official |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in dict.fromkeys(c.row for c in commands):
        group = [c for c in commands if c.row == row]
        first = statistics.median(group[0].times)
        for command in group:
            median = statistics.median(command.times)
            vs_first = f"{first / median:.2f}x" if command.checkout != "official" else "-"
            vs_official = (f"{official_time / median:.2f}x" if official_time is not None and row == folder_row else "-")
            print(f"| {row} | {command.checkout} | {median:.2f} | {min(command.times):.2f} | "
                  f"{max(command.times):.2f} | {statistics.median(command.cpu):.2f} | {vs_first} | {vs_official} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
