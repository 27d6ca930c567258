"""Training images/s and peak memory of train.py's loop against the naive loop of the official code, in one run.

Naive (official): every backbone tensor keeps its gradient (only the optimizer groups are stepped), each image is
opened twice, NCHW. Ours: ``engine.training.trainer.Trainer`` (tensors outside the optimizer frozen, one read, uint8
workers, channels_last, 3x3 weight gradients from ``model/conv_grad.py``), eager and with ``base.compile``, and eager
with PyTorch's own conv gradients (``base.fast_conv_grad: false``) to show what that part adds. Same data, batch size,
workers and fp32 on the CPU; each loop runs one epoch (full batches only) in its own process. "steady" images/s leave
out the first ``--warmup`` steps (where torch.compile compiles); "epoch" images/s count everything, compilation
included.

    python -m benchmarks.train_step [--variants T S] [--images 720] [--batch-size 128] [--warmup 2]

The defaults are the official recipe's batch of 128 and enough images for 3 steady steps (about 20 minutes for
both variants on a 2-core CPU).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from typing import List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_data(folder: str, n_images: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    labels, embeddings = [], {}
    for i in range(n_images):
        rel = f"n{i // 16:06d}/{i % 16:04d}_01.jpg"
        os.makedirs(os.path.join(folder, "images", os.path.dirname(rel)), exist_ok=True)
        img = (rng.random((14, 14, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).resize((112, 112), Image.Resampling.BICUBIC).save(
            os.path.join(folder, "images", rel), quality=90)
        labels.append((rel, float(rng.uniform())))
        embeddings[rel] = rng.normal(size=512).astype(np.float32)
    with open(os.path.join(folder, "labels.pkl"), "wb") as handle:
        pickle.dump(labels, handle)
    with open(os.path.join(folder, "emb.pkl"), "wb") as handle:
        pickle.dump(embeddings, handle)
    import prepare_data

    assert prepare_data.main(["-b", "0.5", "-ll", os.path.join(folder, "labels.pkl"), "-el",
                              os.path.join(folder, "emb.pkl"), "-sl", os.path.join(folder, "prep"), "-sn", "b",
                              "--min-images", "1", "-q"]) == 0


def config(folder: str, variant: str, batch: int, workers: int, compile_: bool = False, fast_grad: bool = True):
    from engine.training.config import TrainConfig
    from utils.config import from_dict

    loader = {"batch_size": batch, "shuffle": True, "num_workers": workers, "drop_last": True}
    return from_dict(TrainConfig, {
        "base": {"verbose": 0, "save_path": os.path.join(folder, "out"), "device": "cpu", "amp": False, "epochs": 1,
                 "compile": compile_, "fast_conv_grad": fast_grad, "model": variant, "backbone_weights": ""},
        "dataset": {"image_loc": os.path.join(folder, "images"), "training_data": os.path.join(folder, "prep"),
                    "model_name": "b", "embeddings": os.path.join(folder, "emb.pkl"), "val_split": 0.02},
        "dataloader": {"train": {"params": loader}, "val": {"params": loader}},
    })


def naive_epoch(trainer, stamps: List[float]) -> int:
    """The official loop: all backbone tensors keep gradients, each image read twice, NCHW input."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from dataset.transforms import official_transform

    model = trainer.model.to(memory_format=torch.contiguous_format)
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model.backbone, "features"):
        model.backbone.features.weight.requires_grad_(False)  # insightface freezes it, the official code too
    data, root, transform = trainer.train_set, trainer.cfg.dataset.image_loc, official_transform()

    class Official(Dataset):
        def __len__(self):
            return len(data.paths)

        def __getitem__(self, i):
            location = os.path.join(root, data.paths[i])
            img = Image.open(location).convert("RGB")  # noqa: F841 (read and thrown away, as officially)
            img = transform(Image.open(location).convert("RGB"))
            return img, float(data.quality[i]), int(data.rows[i]), torch.from_numpy(data.teacher[i])

    params = trainer.cfg.dataloader.train.params
    loader = DataLoader(Official(), batch_size=params.batch_size, shuffle=True, num_workers=params.num_workers,
                        drop_last=True)
    model.train()
    seen = 0
    for x, q, rows, teacher in loader:
        q = q.float()
        feat, pred = model(x)
        loss = trainer.criterion(feat, pred, q, teacher, trainer.centres[rows])["loss"]
        trainer.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        trainer.optimizer.step()
        seen += len(x)
        stamps.append(time.perf_counter())
    return seen


def worker(kind: str, folder: str, variant: str, batch: int, workers: int, warmup: int) -> None:
    import torch

    from engine.training.trainer import Trainer

    torch.manual_seed(0)
    trainer = Trainer(config(folder, variant, batch, workers, compile_=kind == "ours+compile",
                             fast_grad=kind not in ("naive", "ours, PyTorch conv grad")))
    stamps: List[float] = []
    start = time.perf_counter()
    if kind == "naive":
        seen = naive_epoch(trainer, stamps)
    else:
        step = trainer.optimizer.step

        def timed_step(*args, **kwargs):
            out = step(*args, **kwargs)
            stamps.append(time.perf_counter())
            return out

        trainer.optimizer.step = timed_step  # type: ignore[method-assign]
        trainer.train_epoch(0)
        seen = len(stamps) * batch
    seconds = time.perf_counter() - start
    from utils.runtime import peak_rss_bytes

    steady = (len(stamps) - warmup) * batch / (stamps[-1] - stamps[warmup - 1]) if len(stamps) > warmup else 0.0
    print(json.dumps({"images": seen, "seconds": seconds, "steady": steady, "first_step": stamps[0] - start,
                      "peak_bytes": peak_rss_bytes()}))


KINDS = ("naive", "ours, PyTorch conv grad", "ours", "ours+compile")


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["T", "S"])
    parser.add_argument("--images", type=int, default=720)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.folder, f"ediffiqa{args.variants[0].upper()}", args.batch_size, args.workers,
               args.warmup)
        return 0
    # Every 50th image validates (val_split 0.02); full training batches only.
    steps = (args.images - math.ceil(args.images / 50)) // max(args.batch_size, 1)
    if args.batch_size < 1 or args.warmup < 1 or steps <= args.warmup:
        parser.error(f"--images {args.images} with --batch-size {args.batch_size} gives {steps} training step(s); "
                     f"at least --warmup {args.warmup} + 1 are needed (raise --images)")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        make_data(folder, args.images)
        for letter in args.variants:
            variant = f"ediffiqa{letter.upper()}"
            result = {}
            for kind in KINDS:
                proc = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--worker", kind,
                                       "--folder", folder,
                                       "--variants", letter, "--batch-size", str(args.batch_size),
                                       "--workers", str(args.workers), "--warmup", str(args.warmup)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stderr[-3000:])
                    return 1
                result[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
            base = result["naive"]["steady"]
            for kind, r in result.items():
                epoch = r["images"] / r["seconds"]
                rows.append(f"| {variant} | {kind} | {r['steady']:.2f} | {r['steady'] / base:.2f}x | {epoch:.2f} | "
                            f"{r['first_step']:.1f} s | {r['peak_bytes'] / 2**20:.0f} MiB |")
            print(f"{variant} done", flush=True)
    print(f"\nbatch {args.batch_size}, {args.workers} worker(s), fp32, one epoch of ~{args.images} images, "
          f"steady = after {args.warmup} warm-up steps\n")
    print("| variant | loop | steady images/s | vs naive | epoch images/s | first step | peak memory |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
