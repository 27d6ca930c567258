"""Digests of what the scripts write, on fixed synthetic inputs, to show that a change of structure changed no number:

    python -m scripts.output_digests --repo /path/to/checkout-A > a.txt
    python -m scripts.output_digests --repo /path/to/checkout-B > b.txt
    diff a.txt b.txt

The inputs (faces, random well-scaled checkpoints in the official layouts, labels, embeddings, a tiny denoiser) are
made by this checkout, identically for every ``--repo``; the scripts of ``--repo`` run on them in subprocesses on the
CPU with one thread (``inference.py``, ``diffiqa_score.py`` in both modes, ``extract_embeddings.py``,
``prepare_data.py``, ``train.py`` in both modes, ``evaluate.py``). Printed: one line per output, its SHA-256 (scores
and embeddings by value, in key order; checkpoints and the centres by tensor, in key order; the training items and
CSV files by bytes). Figures, logs and files that record times or paths are left out.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

import numpy as np
import torch
import yaml

from dataset.synthetic import save_image
from model.synthetic import manifest_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inputs(tmp: str) -> Dict[str, str]:
    """Write every input once; returns their paths by name."""
    from model.build import build_backbone
    from model.diffusion import build_diffusion

    p = {k: os.path.join(tmp, k) for k in ("faces", "t.pth", "fr.pth", "den.pt", "den.yaml", "fr.yaml", "labels.pkl",
                                            "emb.pkl", "training_data")}
    for i in range(6):  # 6 identities x 8 images, JPEG and PNG
        for j in range(8):
            save_image(os.path.join(p["faces"], f"id{i:02d}", f"{j:02d}.{'jpg' if j % 2 else 'png'}"), seed=100 * i + j)
    torch.save(manifest_state_dict("ediffiqaT", seed=1), p["t.pth"])
    torch.manual_seed(0)
    torch.save(build_backbone("mobilefacenet").state_dict(), p["fr.pth"])
    unet = {"dim": 8, "dim_mults": [1, 2, 4, 8], "attn_heads": 1, "attn_dim_head": 8}
    torch.save({"step": 1, "model": build_diffusion(unet, {}).state_dict(), "opt": {}, "ema": {}, "scaler": None},
               p["den.pt"])
    with open(p["den.yaml"], "w") as handle:
        yaml.safe_dump({"unet_params": unet}, handle)
    with open(p["fr.yaml"], "w") as handle:
        yaml.safe_dump({"fr_model": {"module": "model.mobilenet.MobileFaceNet", "weights": p["fr.pth"]}}, handle)
    rng = np.random.default_rng(5)
    rels = [f"id{i:02d}/{j:02d}.{'jpg' if j % 2 else 'png'}" for i in range(6) for j in range(8)]
    centres = rng.normal(size=(6, 512))
    with open(p["labels.pkl"], "wb") as handle:
        pickle.dump([(r, float(rng.uniform(0, 1))) for r in rels], handle)
    with open(p["emb.pkl"], "wb") as handle:
        pickle.dump({r: (centres[k // 8] + rng.normal(scale=0.7, size=512)).astype(np.float32)
                     for k, r in enumerate(rels)}, handle)
    os.makedirs(p["training_data"])
    return p


def _run(repo: str, argv: List[str], cwd: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
           "EDIFFIQA_MIRROR": "http://127.0.0.1:9", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, os.path.join(repo, argv[0]), *argv[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def _digest_scores(path: str, root: str) -> str:
    """Scores or embeddings of a pickled dict, by value, keyed relative to ``root`` (so that runs from other folders
    compare)."""
    with open(path, "rb") as handle:
        table = pickle.load(handle)  # noqa: S301 - written by the run this script just made
    digest = hashlib.sha256()
    for key in sorted(table):
        digest.update(os.path.relpath(key, root).encode() if os.path.isabs(key) else key.encode())
        digest.update(np.asarray(table[key], dtype=np.float64).tobytes())
    return digest.hexdigest()


def _digest_bytes(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _digest_state(path: str) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def digests(repo: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        p = _inputs(tmp)
        faces = "faces"  # relative to the working folder of every run, so that keys do not name the temporary folder
        for extra, name in (([], "fp32"), (["--no-fold-bn"], "nofold")):
            target = os.path.join(tmp, f"scores-{name}")
            _run(repo, ["inference.py", "--images", faces, "--model", "ediffiqaT", "--weights", p["t.pth"],
                        "--output", target, "--device", "cpu", "--figure-tiles", "0", "-q", *extra], tmp)
            out[f"inference {name} quality-scores.pkl"] = _digest_scores(os.path.join(target, "quality-scores.pkl"),
                                                                        tmp)
            out[f"inference {name} quality-scores.csv"] = _digest_bytes(os.path.join(target, "quality-scores.csv"))
        for mode in ("0", "1"):
            cfg = os.path.join(tmp, f"labels{mode}.yaml")
            target = os.path.join(tmp, f"labels{mode}")
            with open(cfg, "w") as handle:
                yaml.safe_dump({"inference": {"repeats": 2, "images_loc": faces, "train_config": p["den.yaml"],
                                              "model_loc": p["den.pt"], "fr_config": p["fr.yaml"],
                                              "save_loc": target, "verbose": 0},
                                "base": {"device": "cpu", "official": int(mode), "figure_tiles": 0}}, handle)
            _run(repo, ["diffiqa_score.py", "-c", cfg], tmp)
            out[f"diffiqa_score official={mode} quality-scores.pkl"] = _digest_scores(
                os.path.join(target, "quality-scores.pkl"), tmp)
        emb = os.path.join(tmp, "fr-emb.pkl")
        _run(repo, ["extract_embeddings.py", "--images", faces, "--backbone", "mobilefacenet", "--weights",
                    p["fr.pth"], "--output", emb, "--device", "cpu", "-q"], tmp)
        out["extract_embeddings embeddings.pkl"] = _digest_scores(emb, tmp)
        _run(repo, ["prepare_data.py", "-b", "0.5", "-ll", p["labels.pkl"], "-el", p["emb.pkl"], "-sl",
                    p["training_data"], "--min-images", "2", "-q"], tmp)
        with open(os.path.join(p["training_data"], "average_embedding_batch-ediffiqa.pkl"), "rb") as handle:
            centres = pickle.load(handle)  # noqa: S301 - written above; a torch tensor (its pickle holds a random id)
        out["prepare_data average_embedding_batch-ediffiqa.pkl"] = hashlib.sha256(centres.numpy().tobytes()).hexdigest()
        out["prepare_data training_items-ediffiqa.pkl"] = _digest_bytes(
            os.path.join(p["training_data"], "training_items-ediffiqa.pkl"))
        with open(p["emb.pkl"], "rb") as handle:
            teacher = pickle.load(handle)  # noqa: S301 - written above
        with open(os.path.join(p["training_data"], "cosface-embeddings.pkl"), "wb") as handle:
            pickle.dump({f"faces/{k}": v for k, v in teacher.items()}, handle)  # keyed by the last three parts
        for mode in ("0", "1"):
            official = yaml.safe_load(open(os.path.join(ROOT, "configs", "train_config.yaml")))
            model_cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "ediffiqaT_config.yaml")))
            model_path = os.path.join(tmp, "ediffiqaT_config.yaml")
            with open(model_path, "w") as handle:
                yaml.safe_dump(model_cfg, handle)
            run = os.path.join(tmp, f"run{mode}")
            official["base"].update({"save_path": run, "device": "cpu", "model": model_path, "epochs": 2,
                                     "verbose": 0, "figure": 0, "official": int(mode), "amp": 0})
            official["dataset"].update({"image_loc": faces, "training_data": p["training_data"]})
            official["dataloader"]["train"]["params"].update({"batch_size": 8, "num_workers": 0})
            official["dataloader"]["val"]["params"].update({"batch_size": 3, "num_workers": 0})
            cfg = os.path.join(tmp, f"train{mode}.yaml")
            with open(cfg, "w") as handle:
                yaml.safe_dump(official, handle)
            _run(repo, ["train.py", "-c", cfg], tmp)
            out[f"train official={mode} model.pth"] = _digest_state(os.path.join(run, "model.pth"))
        pairs = os.path.join(tmp, "pairs.csv")
        rels = sorted(teacher)
        with open(pairs, "w") as handle:
            handle.write("a,b,mated\n")
            for k in range(len(rels)):
                for m in range(k + 1, len(rels), 5):
                    handle.write(f"{rels[k]},{rels[m]},{int(rels[k][:4] == rels[m][:4])}\n")
        target = os.path.join(tmp, "eval")
        _run(repo, ["evaluate.py", "--pairs", pairs, "--embeddings", f"FR={emb}", "--scores",
                    f"T={os.path.join(tmp, 'scores-fp32', 'quality-scores.pkl')}", "--fmr", "0.1", "--output",
                    target], tmp)
        import json

        rows = json.load(open(os.path.join(target, "edc.json")))
        out["evaluate edc.json"] = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=ROOT, help="the checkout whose scripts run (default: this one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name, value in digests(os.path.abspath(args.repo)).items():
        print(f"{value}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
