"""References written from the official eDifFIQA algorithms (LSIbabnikz/eDifFIQA), for equality tests and benchmark
baselines. They follow the official control flow and tensor operations step by step; nothing here is used by the
project itself."""
from __future__ import annotations

import os
import pickle
import re
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

#: ``pickle.dump``'s default protocol on the Pythons the official code ran on (3.8-3.13).
OFFICIAL_PICKLE_PROTOCOL = 4


def official_prepare_data(labels: Sequence[Tuple[str, Any]], embeddings: Dict[str, np.ndarray], beta: float,
                          min_images: int = 10) -> Tuple[Any, torch.Tensor, List[Tuple[str, Any, int]]]:
    """The official ``prepare_data``: dict of labels, per-identity lists, a global threshold, ``torch.cat`` of the
    chosen embeddings (quality descending) and ``torch.mean``, identities numbered as kept.

    Returns:
        ``(threshold, centres (K, D) tensor, training items)``.
    """
    quality_scores = dict(labels)
    per_identity: Dict[str, List[Tuple[str, Any]]] = {}
    for path, quality in quality_scores.items():
        per_identity.setdefault(path.rsplit("/", 1)[0], []).append((path, quality))
    threshold = sorted(quality_scores.items(), key=lambda x: x[1], reverse=True)[int(beta * len(quality_scores))][1]
    averages: Dict[str, torch.Tensor] = {}
    for identity, entries in list(per_identity.items()):
        ranked = sorted(entries, key=lambda x: x[1], reverse=True)
        chosen = [(path, quality) for path, quality in ranked if quality >= threshold]
        if len(chosen) < min_images:
            del per_identity[identity]
            continue
        stacked = torch.tensor([])
        for path, _ in chosen:
            stacked = torch.cat((stacked, torch.from_numpy(embeddings[path]).unsqueeze(0)), dim=0)
        averages[identity] = torch.mean(stacked, dim=0)
    mapping = {}
    batch = torch.tensor([])
    for i, (identity, average) in enumerate(averages.items()):
        mapping[identity] = i
        batch = torch.cat((batch, average.unsqueeze(0)), dim=0)
    items = [(path, quality, mapping[identity]) for identity, entries in per_identity.items()
             for path, quality in entries]
    return threshold, batch, items


def write_official_prepared(folder: str, name: str, centres: torch.Tensor, items: list) -> None:
    """The official ``dump_pickle`` of both files (plain ``pickle.dump`` with the default protocol)."""
    os.makedirs(folder, exist_ok=True)
    for stem, obj in (("average_embedding_batch", centres), ("training_items", items)):
        with open(os.path.join(folder, f"{stem}-{name}.pkl"), "wb") as handle:
            pickle.dump(obj, handle, protocol=OFFICIAL_PICKLE_PROTOCOL)


def without_storage_keys(data: bytes) -> bytes:
    """Pickled tensor bytes with torch's storage keys blanked: pickling a tensor writes its storage's memory address
    as the key, so two runs of the official script differ there and only there."""
    def blank(match: "re.Match[bytes]") -> bytes:
        return b"X<key>" if int.from_bytes(match.group(1), "little") == len(match.group(2)) else match.group(0)

    return re.sub(rb"X(.{4})(\d+)", blank, data, flags=re.S)


def official_train(model: torch.nn.Module, training_data: str, model_name: str, image_loc: str,
                   embeddings_file: str, seed: int, epochs: int, batch_size: int, val_batch_size: int,
                   val_split: float = 0.1, lr_mlp: float = 1e-3, lr_backbone: float = 1e-4, limit: int = 100,
                   epsilon: float = 0.5, theta: float = 0.5) -> Tuple[Dict[str, torch.Tensor], List[float]]:
    """The official ``train.py`` on the CPU without AMP, step for step: ``seed_all``, the model built by the caller
    right after seeding (``model()``: backbone, then head), the official datasets and split (training items in list
    order instead of the official ``set`` order), RandomSampler shuffling from the global RNG, Adam over the mlp and
    the last ``limit`` backbone tensors (the others stay trainable), ``zero_grad`` before each step,
    ``clip_grad_norm_(model.parameters(), 5)``, and ``model.pth`` saved at the best mean of validation batch means.

    Args:
        model: A callable that builds the eDifFIQA wrapper (called after seeding, as the official script does).

    Returns:
        ``(state dict of the saved model.pth, validation loss of every epoch)``.
    """
    import random

    from PIL import Image
    from torchvision import transforms

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    net = model()
    net.return_feat = True
    trans = transforms.Compose([transforms.Resize([112, 112]), transforms.ToTensor(),
                                transforms.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
    with open(os.path.join(training_data, f"training_items-{model_name}.pkl"), "rb") as handle:
        items = pickle.load(handle)
    with open(os.path.join(training_data, f"average_embedding_batch-{model_name}.pkl"), "rb") as handle:
        centres = pickle.load(handle)
    items = [(os.path.join(image_loc, p), q, r) for p, q, r in items]
    items = [it for it in items if os.path.isfile(it[0])]
    items.sort(key=lambda x: x[1])
    low, high = min(it[1] for it in items), max(it[1] for it in items)
    items = [(p, (q - low) / (high - low), r) for p, q, r in items]
    with open(embeddings_file, "rb") as handle:
        teacher = {k: torch.from_numpy(v) for k, v in pickle.load(handle).items()}
    val_items = [items[int(k)] for k in np.arange(0, len(items), 1. / val_split)]
    train_items = [it for it in items if it not in set(val_items)]

    class Wrapper(torch.utils.data.Dataset):
        def __init__(self, entries):
            self.entries = entries

        def __len__(self):
            return len(self.entries)

        def __getitem__(self, i):
            location, score, row = self.entries[i]
            key = "/".join(location.split("/")[-3:])
            return trans(Image.open(location).convert("RGB")), torch.tensor(score), teacher[key], row

    train_loader = torch.utils.data.DataLoader(Wrapper(train_items), batch_size=batch_size, shuffle=True)
    val_loader = torch.utils.data.DataLoader(Wrapper(val_items), batch_size=val_batch_size)
    optimizer = torch.optim.Adam([{"params": net.mlp.parameters(), "lr": lr_mlp},
                                  {"params": list(net.base_model.parameters())[-limit:], "lr": lr_backbone}])
    quality_base = torch.nn.L1Loss()
    consistency = torch.nn.CosineEmbeddingLoss(reduction="none")
    best, saved, history = float("inf"), None, []
    for _ in range(epochs):
        net.train()
        for images, labels, embeddings, rows in train_loader:
            optimizer.zero_grad()
            out_embedding, out_quality = net(images)
            out_quality = out_quality.squeeze()
            with torch.no_grad():
                ad = consistency(out_embedding, centres[rows], target=torch.tensor([1]))
            loss_quality = quality_base(out_quality, torch.clamp(labels - epsilon * ad, 0., 1.))
            loss_consistency = torch.mean(consistency(out_embedding, embeddings, target=torch.tensor([1])))
            loss = theta * loss_consistency + (1. - theta) * loss_quality
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5)
            optimizer.step()
        net.eval()
        total = 0.
        with torch.no_grad():
            for images, labels, embeddings, _ in val_loader:
                out_embedding, out_quality = net(images)
                loss_quality = quality_base(out_quality.squeeze(), labels)
                loss_consistency = torch.mean(consistency(out_embedding, embeddings, target=torch.tensor([1])))
                total += (theta * loss_consistency + (1. - theta) * loss_quality).item()
        total /= len(val_loader)
        history.append(total)
        if total < best:
            best, saved = total, {k: v.clone() for k, v in net.state_dict().items()}
    return saved, history
