"""Training data in the official layout, built from synthetic faces, for tests and benchmarks (no pytest needed)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import yaml

from dataset.synthetic import save_image

__all__ = ["ROOT", "official_layout", "official_schema_config"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    """The official train_config.yaml with only paths, device, batch sizes and workers changed (and no figure unless
    ``figure=1`` is given: the figure tests draw theirs)."""
    official = yaml.safe_load(open(os.path.join(ROOT, "configs", "train_config.yaml")))
    model_cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", f"{variant}_config.yaml")))
    model_cfg["base_model"]["weights"] = ""  # random backbone (tests have no insightface weights)
    (root / f"{variant}_config.yaml").write_text(yaml.safe_dump(model_cfg))
    official["base"].update({"save_path": str(out), "device": "cpu", "model": str(root / f"{variant}_config.yaml"),
                             "epochs": 2, "verbose": 0, "figure": 0, **base})
    official["dataset"].update({"image_loc": str(images), "training_data": str(data)})
    official["dataloader"]["train"]["params"].update({"batch_size": 8, "num_workers": 0})
    official["dataloader"]["val"]["params"].update({"batch_size": 3, "num_workers": 0})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train.yaml"
    path.write_text(yaml.safe_dump(official))
    return str(path)
