"""Images/s of the project's inference path against the naive path of the official code, in one interleaved run.

Naive (official): one process, PIL + torchvision transform per image, eager fp32 NCHW under ``no_grad``, batch 128.
Ours: ``QualityScorer`` (on a CPU each batch decoded in the scoring process straight into a channels_last buffer, on a
GPU DataLoader workers shipping uint8; ``inference_mode``, device batch size) with the backends
``torch`` (channels_last), ``torch+fold`` (BatchNorm folded, the default), and on the CPU ``onnxruntime`` and
``opencv`` (the model exported to ONNX). All run on the same JPEG files and weights, interleaved; the table gives the
ratio to the naive path and the largest score difference. The ``auto`` row is what ``--precision auto --backend auto``
pick on this machine. Model-only rows feed the scorer the batches it forms end to end, already decoded.

    python -m benchmarks.inference_throughput [--variants T S M L] [--device cpu] [--repeats 3] [--reduced] [--compile]

Weights are random but well scaled (the official key layout filled as in the tests) unless ``--weights-dir`` holds
``ediffiqa{L,M,S,T}.pth``; speed does not depend on them. On CUDA the naive path runs with PyTorch's defaults (TF32
convolutions), as the official code does; ours is timed in true fp32 and in tf32, and end to end also with JPEGs
decoded on the GPU in batches (``nvJPEG`` rows, ``gpu_decode``; fp16 with ``--reduced``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from PIL import Image

from dataset.image_folder import find_images
from dataset.transforms import official_transform
from engine.scoring.scorer import QualityScorer, default_batch_size
from model.build import build_model
from model.checkpoint import load_weights
from model.synthetic import manifest_state_dict
from utils.runtime import cpu_kind, reader_workers, resolve_device

CPU_IMAGES = {"ediffiqaT": 256, "ediffiqaS": 96, "ediffiqaM": 32, "ediffiqaL": 24}
GPU_IMAGES = {"ediffiqaT": 4096, "ediffiqaS": 4096, "ediffiqaM": 2048, "ediffiqaL": 2048}
OFFICIAL_BATCH = 128


def make_jpeg_folder(root: str, count: int, seed: int = 0) -> List[str]:
    """Write ``count`` distinct 112x112 JPEG face-like crops (example images with jitter and noise)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = [np.asarray(Image.open(os.path.join(here, "example_images", p)).convert("RGB"), dtype=np.float32)
               for p in find_images(os.path.join(here, "example_images"))]
    rng = np.random.default_rng(seed)
    for i in range(count):
        base = sources[i % len(sources)]
        shift = rng.integers(-4, 5, size=2)
        img = np.roll(base, tuple(shift), axis=(0, 1)) * rng.uniform(0.7, 1.2) + rng.normal(0, 6, base.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(root, f"{i:05d}.jpg"), quality=90)
    return find_images(root)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_model_only(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(x), OFFICIAL_BATCH):
            out.append(model(x[i:i + OFFICIAL_BATCH].to(device)).squeeze(1).cpu().numpy())
    return np.concatenate(out)


def naive_end_to_end(model: torch.nn.Module, root: str, paths: List[str], device: torch.device) -> np.ndarray:
    transform = official_transform()
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), OFFICIAL_BATCH):
            batch = torch.stack([transform(Image.open(os.path.join(root, p)).convert("RGB"))
                                 for p in paths[i:i + OFFICIAL_BATCH]])
            out.append(model(batch.to(device)).squeeze(1).cpu().numpy())
    return np.concatenate(out)


def timed(fn: Callable[[], np.ndarray], device: torch.device) -> Tuple[float, np.ndarray]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def bench_variant(name: str, device: torch.device, root: str, paths: List[str], repeats: int, reduced: bool,
                  weights_dir: str | None, backends: List[str], compile_model: bool = False) -> List[Dict[str, object]]:
    naive = build_model(name)
    if weights_dir:
        load_weights(naive, os.path.join(weights_dir, f"{name}.pth"), name)
    else:
        naive.load_state_dict(manifest_state_dict(name, seed=1))
    naive = naive.to(device).eval()
    weights = os.path.join(root, f"{name}.pth")
    torch.save(naive.state_dict(), weights)
    plain = build_model(name)
    plain.load_state_dict(naive.state_dict())
    scorers: Dict[str, QualityScorer] = {"torch fp32": QualityScorer(plain, device=device)}
    scorers["torch+fold fp32"] = QualityScorer.from_pretrained(name, weights, device=device)
    if device.type == "cpu":
        for backend in backends:
            scorers[f"{backend} fp32"] = QualityScorer.from_pretrained(name, weights, backend=backend)
    else:
        scorers["torch+fold tf32"] = QualityScorer.from_pretrained(name, weights, device=device, precision="tf32")
    if reduced:
        p = "bf16" if device.type == "cpu" else "fp16"
        scorers[f"torch+fold {p}"] = QualityScorer.from_pretrained(name, weights, device=device, precision=p)
    # What --precision auto --backend auto pick on this machine.
    auto = QualityScorer.from_pretrained(name, weights, device=device, precision="auto", backend="auto")
    scorers[f"auto: {auto.backend} {auto.precision}"] = auto
    decoders = {}
    if device.type == "cuda":  # JPEGs decoded on the GPU (nvJPEG) in batches: the end-to-end path it speeds up
        from dataset.folder_batches import cuda_jpeg_decoder

        key = "torch+fold fp16 nvJPEG" if reduced else "torch+fold tf32 nvJPEG"
        scorers[key] = QualityScorer.from_pretrained(name, weights, device=device,
                                                     precision="fp16" if reduced else "tf32")
        decoders[key] = cuda_jpeg_decoder(device)
    if compile_model and device.type == "cuda":
        compiled = QualityScorer.from_pretrained(name, weights, device=device, precision="fp16")
        compiled.model.base_model = torch.compile(compiled.model.backbone, mode="reduce-overhead")  # CUDA graphs
        scorers["torch+fold fp16 compile+CUDA graphs"] = compiled
    precisions = list(scorers)
    os.remove(weights)

    transform = official_transform()
    x = torch.stack([transform(Image.open(os.path.join(root, p)).convert("RGB")) for p in paths])
    def ours_model_only(s: QualityScorer) -> np.ndarray:
        # The batches the scorer forms end to end, already in the layout it reads them in.
        batch = default_batch_size(s.device, s.precision)
        xs = x.contiguous(memory_format=torch.channels_last) if s.channels_last else x
        return np.concatenate([s(xs[i:i + batch]).cpu().numpy() for i in range(0, len(xs), batch)])

    def ours_end_to_end(s: QualityScorer, decode=None) -> np.ndarray:
        return np.asarray(s.score_folder(root, paths, decode_jpegs=decode).scores, dtype=np.float32)

    # Warm up every path once (allocator, cuDNN autotuning, worker start), then interleave the timed runs.
    naive_model_only(naive, x[:OFFICIAL_BATCH], device)
    for key in list(scorers):
        try:
            ours_model_only(scorers[key])
        except Exception as exc:  # an optional path (torch.compile) that fails here is reported, not fatal
            print(f"{name} {key}: left out ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            del scorers[key]
            precisions.remove(key)
    # Both modes of every path within each repeat, so that the e2e / model ratio compares like with like on a
    # machine whose speed drifts.
    modes = ("model-only", "end-to-end")
    times: Dict[Tuple[str, str], List[float]] = {(m, p): [] for m in modes for p in ["naive", *precisions]}
    scores: Dict[Tuple[str, str], np.ndarray] = {}
    for _ in range(repeats):
        for mode in modes:
            if mode == "model-only":
                t, scores[mode, "naive"] = timed(lambda: naive_model_only(naive, x, device), device)
            else:
                t, scores[mode, "naive"] = timed(lambda: naive_end_to_end(naive, root, paths, device), device)
            times[mode, "naive"].append(t)
        for p, s in scorers.items():
            for mode in modes:
                fn = ((lambda s=s: ours_model_only(s)) if mode == "model-only"
                      else (lambda s=s, p=p: ours_end_to_end(s, decoders.get(p))))
                t, scores[mode, p] = timed(fn, device)
                times[mode, p].append(t)
    rows = []
    for mode in modes:
        base = statistics.median(times[mode, "naive"])
        scale = float(np.abs(scores[mode, "naive"]).max())
        rows.append({"variant": name, "mode": mode, "path": "naive (official)", "img_s": len(paths) / base,
                     "ratio": 1.0, "max_rel_diff": 0.0, "spearman": 1.0,
                     "e2e_model": statistics.median(times["model-only", "naive"]) / base
                     if mode == "end-to-end" else None})
        for p in precisions:
            t = statistics.median(times[mode, p])
            diff = float(np.abs(scores[mode, p] - scores[mode, "naive"]).max()) / scale
            rows.append({"variant": name, "mode": mode, "path": p, "img_s": len(paths) / t,
                         "ratio": base / t, "max_rel_diff": diff, "spearman": spearman(scores[mode, p],
                                                                                        scores[mode, "naive"]),
                         "e2e_model": statistics.median(times["model-only", p]) / t if mode == "end-to-end" else None})
    return rows


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["T", "S", "M", "L"], help="subset of T S M L")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=0, help="images per variant (default: per variant/device)")
    parser.add_argument("--reduced", action="store_true", help="also time reduced precision (bf16 CPU, fp16 CUDA)")
    parser.add_argument("--weights-dir", help="folder with ediffiqa{L,M,S,T}.pth (optional)")
    parser.add_argument("--backends", nargs="*", default=["onnxruntime", "opencv"],
                        help="ONNX backends timed on the CPU (default: onnxruntime opencv)")
    parser.add_argument("--compile", action="store_true", help="CUDA: also time torch.compile (fp16)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    defaults = GPU_IMAGES if device.type == "cuda" else CPU_IMAGES
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, CPU kind {cpu_kind()}, "
          f"our batch {default_batch_size(device)} (bf16/fp16: {default_batch_size(device, 'bf16')}), reader "
          f"processes {reader_workers(device)}, official batch {OFFICIAL_BATCH}")
    rows: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for letter in args.variants:
            name = f"ediffiqa{letter.upper()}"
            count = args.images or defaults[name]
            folder = os.path.join(tmp, name)
            os.makedirs(folder)
            paths = make_jpeg_folder(folder, count)
            rows.extend(bench_variant(name, device, folder, paths, args.repeats, args.reduced, args.weights_dir,
                                      args.backends, args.compile))
            print(f"{name}: done ({count} images)", flush=True)
    print()
    print("| variant | mode | path | images/s | vs naive | e2e / model | max score diff (rel.) | Spearman |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['e2e_model']:.2f}" if r["e2e_model"] is not None else "-"
        print(f"| {r['variant']} | {r['mode']} | {r['path']} | {r['img_s']:.1f} | {r['ratio']:.2f}x | {ratio} | "
              f"{r['max_rel_diff']:.1e} | {r['spearman']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
