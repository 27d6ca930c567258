"""Training data: the prepared files (eDifFIQA) or the labels (DifFIQA(R)) joined to the images, the official split,
and the DataLoaders."""
from __future__ import annotations

import logging
import os
from typing import Any, Collection, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from dataset.formats import items_file, read_embeddings, read_label_values, read_prepared
from dataset.image_folder import list_images
from dataset.keys import match_keys, unmatched_message
from dataset.training import TrainingFaces, TrainingSet, collate_training, official_split
from engine.training.config import TrainConfig
from utils.config import LoaderParams
from utils.distributed import DistInfo
from utils.errors import ConfigError, DataError
from utils.runtime import cpu_count, default_workers, seed_worker

__all__ = ["load_training_data", "load_regression_data", "loader_workers", "training_loader"]

_logger = logging.getLogger(__name__)


class _StridedSampler(Sampler):
    """Every ``world``-th index from ``rank``: validation split across processes without padding."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _check_image_loc(image_loc: str) -> None:
    if not os.path.isdir(image_loc):
        raise DataError(f"image folder '{image_loc}' (dataset.image_loc) does not exist")


def _drop_or_fail(wanted: List[str], matched: List[Optional[str]], available: Collection[str], sources: Tuple[str, str],
                  what: str, on_missing: str) -> None:
    """Refuse (``on_missing: fail``) or warn about the keys of ``wanted`` that :func:`dataset.keys.match_keys` found
    no partner for (``matched`` None); the caller leaves them out."""
    if all(m is not None for m in matched):
        return
    message = unmatched_message(wanted, matched, available, *sources, what=what)
    if on_missing == "fail":
        raise DataError(message + "; set dataset.on_missing: drop to leave them out")
    _logger.warning("%s; left out (dataset.on_missing: drop)", message)


def _image_files(keys: List[str], image_loc: str, source: str) -> Tuple[List[Optional[str]], Collection[str]]:
    """``(file, available)``: the file below ``image_loc`` (as joined to it) that each key names, None where none,
    by the key rule of :mod:`dataset.keys`, the folder's files keyed by their paths (``inference.py``'s
    ``faces/id0/a.jpg`` and the items' ``id0/a.jpg`` name ``faces/id0/a.jpg`` of the folder ``faces``);
    ``available``: what the keys were matched against. The folder is listed only when some key is not a file as
    written."""
    written = [os.path.isfile(os.path.join(image_loc, k)) for k in keys]
    if all(written):
        return list(keys), keys
    # The folder's files are keyed by their paths (joined to image_loc), not by names relative to it: when
    # image_loc is one identity's folder, its 'clean.png' is 'faces/id00/clean.png' and never names 'id03/clean.png'.
    files = {os.path.join(image_loc, rel): rel for rel in list_images(image_loc, key="dataset.image_loc").paths}
    files.update((os.path.join(image_loc, k), k) for k, ok in zip(keys, written) if ok)
    return [None if m is None else files[m] for m in match_keys(keys, files, source, f"image folder '{image_loc}'")], \
        files


def _split(data: TrainingSet, val_split: float) -> Tuple[TrainingSet, TrainingSet]:
    """The official split of quality-sorted ``data``; refuses a split that leaves either side empty."""
    train_idx, val_idx = official_split(len(data.paths), val_split)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(f"the split of {len(data.paths)} items with val_split={val_split} leaves "
                        f"{len(train_idx)} training and {len(val_idx)} validation items; add data or change val_split")
    return data.subset(train_idx), data.subset(val_idx)


def load_training_data(cfg: TrainConfig) -> Tuple[TrainingSet, TrainingSet, torch.Tensor, Dict[str, int]]:
    """``(train, val, centres (K, D), counts)``: the prepared files and embeddings read, items without image or
    embedding dropped (or refused), split."""
    ds = cfg.dataset
    _check_image_loc(ds.image_loc)
    centres, items = read_prepared(ds.training_data, ds.model_name)
    table = read_embeddings(ds.embeddings_path)

    paths = [it[0] for it in items]
    items_source = f"items file '{items_file(ds.training_data, ds.model_name)}'"
    files, listed = _image_files(paths, ds.image_loc, items_source)
    keys = match_keys(paths, table.index, items_source, f"embeddings file '{ds.embeddings_path}'")
    for i, key in enumerate(keys):
        if key is None:  # the official lookup: the last three components of the full image path
            tail = "/".join(os.path.join(ds.image_loc, paths[i]).replace(os.sep, "/").split("/")[-3:])
            keys[i] = tail if tail in table else None
    _drop_or_fail(paths, files, listed, (items_source, f"image folder '{ds.image_loc}'"), "training items",
                  ds.on_missing)
    _drop_or_fail(paths, keys, table.index, (items_source, f"embeddings file '{ds.embeddings_path}'"), "training items",
                  ds.on_missing)
    kept = [((file, *it[1:]), key) for it, file, key in zip(items, files, keys) if file is not None and key is not None]
    if not kept:
        raise DataError(f"no training item has both an image in '{ds.image_loc}' and an embedding in "
                        f"'{ds.embeddings_path}'")
    if table.dim != centres.shape[1]:
        raise DataError(f"teacher embeddings are {table.dim}-d but the centres in '{ds.training_data}' are "
                        f"{centres.shape[1]}-d; prepare the data from the same embeddings")
    teacher = table.gather([key for _, key in kept])
    train, val = _split(TrainingSet.build([it for it, _ in kept], teacher), ds.val_split)
    counts = {"items": len(items), "no_image": files.count(None), "no_embedding": keys.count(None),
              "train": len(train.paths), "val": len(val.paths), "identities": int(centres.shape[0])}
    return train, val, centres.float(), counts


def load_regression_data(cfg: TrainConfig) -> Tuple[TrainingSet, TrainingSet, Dict[str, int]]:
    """DifFIQA(R) data: ``dataset.labels`` (``{path: quality}`` pickle/CSV) joined to ``dataset.image_loc``, sorted
    by quality, min-max normalised and split as officially (``(train, val, counts)``); no label optimisation, no
    teacher embeddings."""
    ds = cfg.dataset
    _check_image_loc(ds.image_loc)
    paths, qualities, _ = read_label_values(ds.labels_path)
    source = f"labels file '{ds.labels_path}'"
    files, listed = _image_files(paths, ds.image_loc, source)
    _drop_or_fail(paths, files, listed, (source, f"image folder '{ds.image_loc}'"), "labelled images",
                  ds.on_missing)
    items = [(f, float(q)) for f, q in zip(files, qualities.tolist()) if f is not None]
    if not items:
        raise DataError(f"none of the labelled images of '{ds.labels_path}' is in '{ds.image_loc}'")
    train, val = _split(TrainingSet.build(items), ds.val_split)
    counts = {"items": len(paths), "no_image": files.count(None), "train": len(train.paths), "val": len(val.paths)}
    return train, val, counts


def loader_workers(cfg: TrainConfig, device: torch.device, log: bool) -> Dict[str, int]:
    """Worker processes of the ``train`` and ``val`` loaders: ``dataloader.{train,val}.params.num_workers`` as far
    as this machine has the CPUs (torch's own limit, past which it warns at every loader), unset:
    :func:`utils.runtime.default_workers`. The count changes no number: the items and their order do not depend on
    it. ``log``: say in one line when a config asks for more than the machine has."""
    cpus = cpu_count()
    workers: Dict[str, int] = {}
    asked: List[str] = []
    for name in ("train", "val"):
        n = getattr(cfg.dataloader, name).params.num_workers
        workers[name] = default_workers(device) if n is None else min(n, cpus)
        if n is not None and n > cpus:
            asked.append(f"dataloader.{name}.params.num_workers {n}")
    if asked and log:
        _logger.info("%s asked for, this machine has %d CPUs: %d worker processes instead (--workers N sets both)",
                     " and ".join(asked), cpus, cpus)
    return workers


def training_loader(cfg: TrainConfig, data: TrainingSet, train: bool, epoch: int, info: DistInfo,
                    device: torch.device, seeded: bool, workers: int, warn: bool) -> DataLoader:
    """The DataLoader of one epoch: ``dataloader.train`` (shuffled) or ``dataloader.val``; under torchrun each
    process takes its share of the global batch. ``seeded``: shuffle with a generator seeded by the epoch (else the
    global RNG, as the official ``RandomSampler``); ``workers``: its worker processes (:func:`loader_workers`);
    ``warn``: say when a lone last image is left out."""
    params: LoaderParams = (cfg.dataloader.train if train else cfg.dataloader.val).params
    if params.batch_size % info.world:
        raise ConfigError(f"batch_size {params.batch_size} must be divisible by the {info.world} processes")
    batch = params.batch_size // info.world
    dataset = TrainingFaces(cfg.dataset.image_loc, data)
    generator = torch.Generator().manual_seed(cfg.base.seed + epoch) if seeded else None
    if info.enabled:
        if train:
            sampler: Optional[Sampler] = DistributedSampler(dataset, info.world, info.rank, shuffle=params.shuffle,
                                                            seed=cfg.base.seed, drop_last=params.drop_last)
            sampler.set_epoch(epoch)
        else:
            sampler = _StridedSampler(len(dataset), info.rank, info.world)
        shuffle = None
    else:
        sampler, shuffle = None, params.shuffle and train
    kwargs: Dict[str, Any] = {}
    if workers > 0:
        kwargs["persistent_workers"] = params.persistent_workers
        if params.prefetch_factor is not None:
            kwargs["prefetch_factor"] = params.prefetch_factor
    drop_last = params.drop_last and train
    local = len(sampler) if sampler is not None else len(dataset)
    if train and not drop_last and local % batch == 1 and local > 1:
        # BatchNorm cannot train on one sample (the official code crashes here); leave that one item out.
        if warn:
            _logger.warning("the last training batch would hold 1 image (%d per process, batch %d): left out each "
                            "epoch, as BatchNorm cannot train on a single image", local, batch)
        drop_last = True
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle, sampler=sampler, num_workers=workers,
                      pin_memory=params.pin_memory and device.type == "cuda", drop_last=drop_last,
                      collate_fn=collate_training, generator=generator, worker_init_fn=seed_worker, **kwargs)
