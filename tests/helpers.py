"""Test helpers: checkpoints in the official layout built from the key/shape manifest, images, and running a
script's main as its command line does. Imported by the tests as ``helpers`` (pytest puts ``tests/`` on the path)."""
from __future__ import annotations

import json
import os
import pickle
import re
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import yaml
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MANIFEST = os.path.join(ROOT, "tests", "data", "official_state_dict_manifest.json")
_DTYPES = {"float32": torch.float32, "int64": torch.int64}


def load_manifest() -> Dict[str, List[Tuple[str, List[int], str]]]:
    """Key, shape and dtype of every tensor of the official eDifFIQA(L/M/S/T) checkpoints."""
    with open(MANIFEST, "r", encoding="utf-8") as handle:
        return json.load(handle)


def manifest_state_dict(variant: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A state dict with exactly the official keys, shapes and dtypes, filled with well-scaled random values."""
    gen = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = {}
    for key, shape, dtype in load_manifest()[variant]:
        if dtype == "int64":
            out[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = 0.9 + 0.2 * torch.rand(shape, generator=gen)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            out[key] = 0.01 * torch.randn(shape, generator=gen)
        elif key.endswith("prelu.weight"):
            out[key] = torch.full(shape, 0.25)
        elif len(shape) == 1:  # BatchNorm scale
            out[key] = 1.0 + 0.05 * torch.randn(shape, generator=gen)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[key] = torch.randn(shape, generator=gen) * (0.5 / fan_in ** 0.5)
        assert out[key].dtype == _DTYPES[dtype]
    return out


def face_array(seed: int, size: int = 112) -> np.ndarray:
    """A smooth random RGB uint8 image (compresses like a photo, unlike white noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 8, size=(size, size, 3))
    return np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


def save_image(path: str, seed: int, size: int = 112, mode: str = "RGB") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(face_array(seed, size))
    if mode != "RGB":
        img = img.convert(mode)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(os.path.splitext(path)[1].lower())
    img.save(path, format=fmt) if fmt else img.save(path)


def run_script(main: Callable[[Optional[List[str]]], int], prog: str, argv: List[str],
               capsys: Optional[pytest.CaptureFixture] = None) -> Tuple[int, str]:
    """Run a script's ``main`` as its command line does; returns the exit code and what it wrote to stderr."""
    from utils.cli import run_cli

    code = run_cli(main, argv, prog)
    return code, capsys.readouterr().err if capsys is not None else ""


def assert_user_error(code: int, err: str, prog: str, pattern: str) -> None:
    """A user mistake: exit code 2, exactly one ``<prog>: error: ...`` line matching ``pattern``, no traceback."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert "Traceback" not in err


def official_layout(root, n_ids=4, per_id=10, seed=3):
    """A tiny VGGFace2-like set in the official layout: prepared files in ``training_data/``, teacher embeddings
    keyed by the last three path components (as the official dataset looks them up), labels in shuffled order."""
    import random

    import prepare_data

    rng = np.random.default_rng(seed)
    images = root / "vgg" / "train"
    labels, by_item, by_tail = [], {}, {}
    for i in range(n_ids):
        for j in range(per_id):
            rel = f"n{i:06d}/{j:04d}_01.png"
            save_image(str(images / rel), seed=50 * i + j)
            labels.append((rel, float(rng.uniform(0, 1))))
            by_item[rel] = rng.normal(size=512).astype(np.float32)
            by_tail[f"train/{rel}"] = by_item[rel]
    random.Random(seed).shuffle(labels)
    data = root / "training_data"
    data.mkdir()
    (root / "labels.pkl").write_bytes(pickle.dumps(labels))
    (root / "prep_emb.pkl").write_bytes(pickle.dumps(by_item))
    (data / "cosface-embeddings.pkl").write_bytes(pickle.dumps(by_tail))
    assert prepare_data.main(["-b", "0.5", "-ll", str(root / "labels.pkl"), "-el", str(root / "prep_emb.pkl"),
                              "-sl", str(data), "--min-images", "2", "-q"]) == 0
    return images, data


def official_schema_config(root, images, data, out, variant, **base):
    """The official train_config.yaml with only paths, device, batch sizes and workers changed."""
    official = yaml.safe_load(open(os.path.join(ROOT, "configs", "train_config.yaml")))
    model_cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", f"{variant}_config.yaml")))
    model_cfg["base_model"]["weights"] = ""  # random backbone (tests have no insightface weights)
    (root / f"{variant}_config.yaml").write_text(yaml.safe_dump(model_cfg))
    official["base"].update({"save_path": str(out), "device": "cpu", "model": str(root / f"{variant}_config.yaml"),
                             "epochs": 2, "verbose": 0, **base})
    official["dataset"].update({"image_loc": str(images), "training_data": str(data)})
    official["dataloader"]["train"]["params"].update({"batch_size": 8, "num_workers": 0})
    official["dataloader"]["val"]["params"].update({"batch_size": 3, "num_workers": 0})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train.yaml"
    path.write_text(yaml.safe_dump(official))
    return str(path)
