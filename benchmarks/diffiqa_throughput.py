"""DifFIQA labelling speed: the default mode of diffiqa_score.py against its --official mode, in one run.

Same images, same seed, random well-scaled weights in the official shapes (UNet dim 128, CosFace iResNet-100 by
default). Reports images/s of each mode, the speed ratio, the largest score difference and the Spearman rank
correlation between the modes (the draws differ between the modes, so the difference is Monte-Carlo noise; it
shrinks with more repeats), and for the default mode at other precisions their error against default fp32.

    python -m benchmarks.diffiqa_throughput [--images 3] [--repeats 2] [--device auto] [--precisions fp32 bf16]

On a 2-core CPU one official image with 10 repeats takes about 4 minutes, hence the small default workload; the
ratio hardly depends on the repeats (both modes scale with them).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scaled_backbone(name: str, seed: int):
    """A backbone whose activations stay finite through 100 layers (the insightface init blows up untrained)."""
    import torch
    from torch import nn

    from model.build import build_backbone

    torch.manual_seed(seed)
    net = build_backbone(name)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    for name_, m in net.named_modules():
        if name_.endswith("bn3") and isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 0.1)
    return net.eval()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128, help="UNet width (128 = the official denoiser)")
    parser.add_argument("--fr", default="iresnet100")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", nargs="*", default=None,
                        help="extra precisions of the default mode (default: none on CPU, where bf16 is slow; "
                             "tf32 bf16 fp16 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=None, help="default mode: UNet rows per call")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from engine.labels.scoring import image_seed, score_batch_fast, score_batch_official
    from model.diffusion import build_diffusion
    from utils.runtime import precision_context, resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(0)
    denoiser = build_diffusion({"dim": args.dim, "dim_mults": (1, 2, 4, 8)}, {}).to(device).eval()
    fr = scaled_backbone(args.fr, 1).to(device)
    gen = torch.Generator().manual_seed(2)
    # Smooth random faces: 14x14 noise upsampled, in [-1, 1].
    x = torch.nn.functional.interpolate(torch.rand(args.images, 3, 14, 14, generator=gen), size=112,
                                        mode="bicubic", align_corners=False).clamp(0, 1).mul(2).sub(1).to(device)
    per_batch = max(1, 64 // (2 * args.repeats))  # the official batching
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def official() -> np.ndarray:
        torch.manual_seed(0)
        out = []
        with precision_context(device, "fp32"):
            for i in range(0, args.images, per_batch):
                out.append(score_batch_official(x[i:i + per_batch], denoiser, fr, 5, args.repeats))
        return torch.cat(out).float().cpu().numpy()

    def default(precision: str) -> np.ndarray:
        rows = args.batch_size or (64 if device.type == "cpu" else 256)
        images = max(1, rows // (2 * args.repeats))
        seeds = [image_seed(0, f"img{i}") for i in range(args.images)]
        out = []
        with precision_context(device, precision):
            for i in range(0, args.images, images):
                out.append(score_batch_fast(x[i:i + images], denoiser, fr, seeds[i:i + images], 5, args.repeats,
                                            [rows]))
        return torch.cat(out).float().cpu().numpy()

    def timed(fn, *a):
        sync()
        start = time.perf_counter()
        result = fn(*a)
        sync()
        return result, time.perf_counter() - start

    with torch.no_grad():
        if device.type == "cuda":  # warm-up: cuDNN autotuning and allocations
            default("fp32")
        base_scores, base_s = timed(official)
        rows: List[Dict] = [{"mode": "official (fp32)", "seconds": base_s, "scores": base_scores}]
        if device.type == "cpu":
            denoiser.model.to(memory_format=torch.channels_last)  # what diffiqa_score.py does on a CPU
        fast_scores, fast_s = timed(default, "fp32")
        rows.append({"mode": "default (fp32)", "seconds": fast_s, "scores": fast_scores})
        precisions = args.precisions if args.precisions is not None else (
            [] if device.type == "cpu" else ["tf32", "bf16", "fp16"])
        for p in precisions:
            s, secs = timed(default, p)
            rows.append({"mode": f"default ({p})", "seconds": secs, "scores": s, "vs_fp32": fast_scores})

    print(f"\n{args.images} images, {args.repeats} repeats, t=5, UNet dim {args.dim}, FR {args.fr}, {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}\n")
    print("| mode | images/s | vs official | max abs diff vs official | Spearman vs official "
          "| max abs diff vs default fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        speed = args.images / r["seconds"]
        diff = float(np.abs(r["scores"] - base_scores).max())
        rho = spearmanr(r["scores"], base_scores)[0] if args.images > 2 else float("nan")
        own = f"{float(np.abs(r['scores'] - r['vs_fp32']).max()):.2e}" if "vs_fp32" in r else "-"
        print(f"| {r['mode']} | {speed:.4f} | {base_s / r['seconds']:.2f}x | {diff:.2e} | {rho:.3f} | {own} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
