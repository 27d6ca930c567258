"""CUDA check for a machine with a GPU: scores on CUDA (fp32, fp16, and with JPEGs decoded by nvJPEG) against the
CPU, and ``inference.py --device auto``;
training with AMP; the DifFIQA denoiser trained with AMP and DifFIQA labels on CUDA against the CPU.

    python -m benchmarks.cuda_check
    python -m benchmarks.diffiqa_throughput --device cuda --images 16 --repeats 10    # GPU labelling speed

Uses checkpoints in the official layout built from ``model/manifests`` (random, well-scaled weights).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from dataset.image_folder import find_images
from engine.scoring.scorer import QualityScorer
from model.checkpoint import create_model
from model.synthetic import manifest_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_check(tmp: str) -> int:
    """Three epochs of the tiny synthetic training set on CUDA with AMP (fp16 autocast + GradScaler)."""
    import json
    import pathlib

    import train
    from tests.layouts import official_layout, official_schema_config

    root = pathlib.Path(tmp) / "train"
    root.mkdir()
    images, data = official_layout(root)
    out = root / "out"
    cfg = official_schema_config(root, images, data, out, "ediffiqaT", device="cuda", amp=1, epochs=3)
    code = train.main(["-c", cfg])
    history = json.loads((out / "history.json").read_text())
    losses = [round(h["train"]["loss"], 5) for h in history]
    val = [round(h["val"]["loss"], 5) for h in history]
    print(f"train on cuda with amp: exit {code}, train losses {losses}, val {val}")
    model = create_model("ediffiqaT", str(out / "model.pth"))
    scores = QualityScorer(model, "cuda").score_folder(str(images), find_images(str(images))).scores
    print(f"trained model.pth scores {len(scores)} images on cuda, finite: {bool(np.isfinite(scores).all())}")
    return int(code != 0 or not losses[-1] < losses[0] or not np.isfinite(scores).all())


def diffusion_check(tmp: str) -> int:
    """train_diffusion.py with AMP on CUDA (tiny UNet), then DifFIQA labels on CUDA vs the CPU at each precision."""
    import pathlib
    import pickle

    import yaml
    from PIL import Image

    import diffiqa_score
    import train_diffusion
    from model.build import build_backbone
    from model.diffusion import build_diffusion

    root = pathlib.Path(tmp) / "diff"
    faces = root / "faces"
    faces.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        small = (rng.random((14, 14, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((112, 112), Image.Resampling.BICUBIC).save(faces / f"{i}.png")
    unet = {"dim": 8, "dim_mults": [1, 2, 4, 8], "attn_heads": 1, "attn_dim_head": 8}
    cfg = {"unet_params": unet, "diff_params": {"image_size": 112},
           "trainer_params": {"folder": str(faces), "train_batch_size": 4, "gradient_accumulate_every": 2,
                              "train_num_steps": 6, "save_and_sample_every": 3, "num_samples": 4,
                              "results_folder": str(root / "run"), "device": "cuda", "amp": True, "verbose": False,
                              "log_every": 1}}
    (root / "train.yaml").write_text(yaml.safe_dump(cfg))
    code = train_diffusion.main(["-c", str(root / "train.yaml")])
    losses = [float(r.split(",")[1]) for r in (root / "run" / "loss_log.csv").read_text().splitlines()[1:]]
    print(f"train_diffusion on cuda with amp: exit {code}, losses {[round(v, 4) for v in losses]}")
    failures = int(code != 0 or not np.isfinite(losses).all())
    torch.manual_seed(0)
    torch.save({"step": 0, "model": build_diffusion(unet, {}).state_dict(), "opt": {}, "ema": {}, "scaler": None},
               root / "den.pt")
    torch.save(build_backbone("mobilefacenet").state_dict(), root / "fr.pth")
    scores = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "tf32"), ("cuda", "bf16"),
                              ("cuda", "fp16")):
        out = root / f"{device}-{precision}"
        (root / "den_train.yaml").write_text(yaml.safe_dump({"unet_params": unet}))
        (root / "fr.yaml").write_text(yaml.safe_dump(
            {"fr_model": {"module": "model.mobilenet.MobileFaceNet", "weights": str(root / "fr.pth")}}))
        score_cfg = {"inference": {"images_loc": str(faces), "train_config": str(root / "den_train.yaml"),
                                   "model_loc": str(root / "den.pt"), "fr_config": str(root / "fr.yaml"),
                                   "save_loc": str(out), "repeats": 4, "verbose": 0},
                     "base": {"device": device, "precision": precision}}
        (root / "score.yaml").write_text(yaml.safe_dump(score_cfg))
        failures += diffiqa_score.main(["-c", str(root / "score.yaml")]) != 0
        with open(out / "quality-scores.pkl", "rb") as handle:
            table = pickle.load(handle)
        scores[(device, precision)] = np.array([table[k] for k in sorted(table)])
    for key, value in scores.items():
        diff = np.abs(value - scores[("cpu", "fp32")]).max()
        print(f"DifFIQA labels {key[0]} {key[1]}: max |diff| vs cpu fp32 = {diff:.2e}")
        if key == ("cuda", "fp32") and diff > 1e-3:
            failures += 1
    return failures


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, cudnn.allow_tf32="
          f"{torch.backends.cudnn.allow_tf32}, matmul tf32={torch.backends.cuda.matmul.allow_tf32}")
    images = os.path.join(ROOT, "example_images")
    paths = find_images(images)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("ediffiqaT", "ediffiqaS", "ediffiqaM", "ediffiqaL"):
            weights = os.path.join(tmp, f"{variant}.pth")
            torch.save(manifest_state_dict(variant, seed=1), weights)
            cpu = np.asarray(QualityScorer(create_model(variant, weights), "cpu").score_folder(
                images, paths, workers=0).scores)
            scale = np.abs(cpu).max()
            for precision in ("fp32", "fp16", "bf16"):
                scorer = QualityScorer(create_model(variant, weights), "cuda", precision=precision)
                gpu = np.asarray(scorer.score_folder(images, paths).scores)
                rel = np.abs(gpu - cpu).max() / scale
                rank = np.corrcoef(np.argsort(np.argsort(gpu)), np.argsort(np.argsort(cpu)))[0, 1]
                print(f"{variant} cuda {precision}: max |cuda - cpu| / max|cpu| = {rel:.2e}, Spearman {rank:.4f}")
                if precision == "fp32" and rel > 1e-2:
                    failures += 1
            # JPEGs decoded on the GPU (nvJPEG) instead of libjpeg-turbo on the CPU: how far the scores move.
            from dataset.folder_batches import cuda_jpeg_decoder

            scorer = QualityScorer(create_model(variant, weights), "cuda")
            nv = np.asarray(scorer.score_folder(images, paths, decode_jpegs=cuda_jpeg_decoder(scorer.device)).scores)
            rel = np.abs(nv - cpu).max() / scale
            print(f"{variant} cuda fp32 nvJPEG: max |cuda - cpu| / max|cpu| = {rel:.2e}")
            failures += int(not rel <= 1e-2)
        out = os.path.join(tmp, "out")
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "inference.py"), "--images", images,
                               "--model", "ediffiqaT", "--weights", os.path.join(tmp, "ediffiqaT.pth"),
                               "--output", out, "--device", "auto", "--batch-size", "4"],
                              capture_output=True, text=True)
        print("inference.py --device auto:", proc.returncode, proc.stderr.strip().splitlines()[-1:])
        failures += proc.returncode != 0 or "on cuda" not in proc.stderr
        failures += train_check(tmp)
        failures += diffusion_check(tmp)
    print("CUDA CHECK", "FAILED" if failures else "OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
