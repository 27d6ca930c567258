"""eDifFIQA distillation training: data loading, optimizer groups, the loop, checkpoints, resume and DDP."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from dataset.formats import read_embeddings, read_labels, read_prepared
from dataset.training import DistillationDataset, TrainingSet, collate_distillation, official_split
from dataset.transforms import normalize
from model.ediffiqa import EDifFIQA
from model.conv_grad import use_fast_weight_grad
from model.loss import BASE_LOSSES, DistillationLoss, ExtendedL1
from model.registry import VARIANTS, build_model, load_backbone
from utils.config import to_dict
from utils.errors import ConfigError, DataError, RunError, first_line
from utils.io import check_output_dir, write_json
from utils.run_log import RunLog, read_resume_checkpoint, save_checkpoint
from utils.distributed import all_reduce_sum, finish_distributed, init_distributed
from utils.runtime import default_workers, rng_state, seed_everything, seed_worker, set_rng_state
from engine.training.config import OPTIMIZER_CLASSES, ModelSpec, TrainConfig, resolve_model

__all__ = ["optimizer_groups", "load_training_data", "load_regression_data", "Trainer", "train"]

_logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
BEST_MODEL = "model.pth"
LAST_CHECKPOINT = "last.pt"


class _StridedSampler(Sampler):
    """Every ``world``-th index from ``rank``: validation split across processes without padding."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ------------------------------------------------------------------------------------------------- model parts
def optimizer_groups(model: EDifFIQA, cfg: TrainConfig, freeze: bool = True) -> List[Dict[str, Any]]:
    """The official parameter groups. With ``freeze``, every tensor outside them is frozen (``requires_grad =
    False``: no gradient is computed for it); the official code leaves them trainable, so their gradients are
    computed, accumulate across steps (its ``zero_grad`` clears only the optimizer's tensors) and count in the
    gradient clipping.

    Group ``limit`` N keeps the LAST N tensors of ``<child>.parameters()`` (official: the last 100 backbone tensors).
    """
    groups = []
    chosen: set = set()
    for group in (cfg.optimizer.group_1, cfg.optimizer.group_2):
        if group is None:
            continue
        params = list(getattr(model, group.params).parameters())
        if group.limit is not None:
            params = params[-group.limit:]
        groups.append({"params": params, "lr": group.lr})
        chosen.update(id(p) for p in params)
    if freeze:
        for p in model.parameters():
            if id(p) not in chosen:
                p.requires_grad_(False)
    return groups


def build_optimizer(groups: List[Dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    kwargs = dict(cfg.optimizer.params)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return OPTIMIZER_CLASSES[cfg.optimizer.module]()(groups, **kwargs)


def build_loss(cfg: TrainConfig) -> DistillationLoss:
    """The official loss modules from ``loss.quality`` and ``loss.consistency`` (validated by the config); for
    DifFIQA(R) the quality loss's base loss is its regression loss."""
    quality = cfg.loss.quality.params
    spec = cfg.loss.regression_loss() if cfg.regression else quality.base_loss
    base = BASE_LOSSES[spec.module](**spec.params)
    consistency = torch.nn.CosineEmbeddingLoss(**vars(cfg.loss.consistency.params))
    return DistillationLoss(ExtendedL1(base, quality.epsilon), consistency, cfg.loss.theta)


# ------------------------------------------------------------------------------------------------- data
def _teacher_key_fallback(image_loc: str, path: str) -> str:
    # The official dataset keys teacher embeddings by the last three components of the full image path.
    return "/".join(os.path.join(image_loc, path).replace(os.sep, "/").split("/")[-3:])


def _check_image_loc(image_loc: str) -> None:
    if not os.path.isdir(image_loc):
        raise DataError(f"image folder '{image_loc}' (dataset.image_loc) does not exist")


def _drop_or_fail(missing: List[str], description: str, on_missing: str) -> None:
    """Refuse (``on_missing: fail``) or warn about the items in ``missing``; the caller leaves them out."""
    if not missing:
        return
    message = f"{description} (e.g. {', '.join(repr(p) for p in missing[:3])})"
    if on_missing == "fail":
        raise DataError(message + "; set dataset.on_missing: drop to leave them out")
    _logger.warning("%s; left out (dataset.on_missing: drop)", message)


def _split(data: TrainingSet, val_split: float) -> Tuple[TrainingSet, TrainingSet]:
    """The official split of quality-sorted ``data``; refuses a split that leaves either side empty."""
    train_idx, val_idx = official_split(len(data.paths), val_split)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(f"the split of {len(data.paths)} items with val_split={val_split} leaves "
                        f"{len(train_idx)} training and {len(val_idx)} validation items; add data or change val_split")
    return data.subset(train_idx), data.subset(val_idx)


def load_training_data(cfg: TrainConfig) -> Tuple[TrainingSet, TrainingSet, torch.Tensor, Dict[str, int]]:
    """Read the prepared files and embeddings, drop (or refuse) items without image or embedding, split.

    Returns:
        ``(train, val, centres (K, D), counts)``.
    """
    ds = cfg.dataset
    _check_image_loc(ds.image_loc)
    centres, items = read_prepared(ds.training_data, ds.model_name)
    table = read_embeddings(ds.embeddings_path)

    no_image = [it[0] for it in items if not os.path.isfile(os.path.join(ds.image_loc, it[0]))]
    keys: List[Optional[str]] = []
    for it in items:
        key = it[0] if it[0] in table else _teacher_key_fallback(ds.image_loc, it[0])
        keys.append(key if key in table else None)
    no_embedding = [it[0] for it, key in zip(items, keys) if key is None]
    for what, missing in (("image file", no_image), ("teacher embedding", no_embedding)):
        _drop_or_fail(missing, f"{len(missing)} of {len(items)} training items have no {what}", ds.on_missing)
    bad = set(no_image) | set(no_embedding)
    kept = [(it, key) for it, key in zip(items, keys) if it[0] not in bad]
    if not kept:
        raise DataError(f"no training item has both an image in '{ds.image_loc}' and an embedding in "
                        f"'{ds.embeddings_path}'")
    if table.dim != centres.shape[1]:
        raise DataError(f"teacher embeddings are {table.dim}-d but the centres in '{ds.training_data}' are "
                        f"{centres.shape[1]}-d; prepare the data from the same embeddings")
    teacher = table.gather([key for _, key in kept])
    train, val = _split(TrainingSet.build([it for it, _ in kept], teacher), ds.val_split)
    counts = {"items": len(items), "no_image": len(no_image), "no_embedding": len(no_embedding),
              "train": len(train.paths), "val": len(val.paths), "identities": int(centres.shape[0])}
    return train, val, centres.float(), counts


def load_regression_data(cfg: TrainConfig) -> Tuple[TrainingSet, TrainingSet, torch.Tensor, Dict[str, int]]:
    """DifFIQA(R) data: ``dataset.labels`` (``{path: quality}`` pickle/CSV) joined to ``dataset.image_loc``, sorted
    by quality, min-max normalised and split as officially; no label optimisation, no teacher embeddings.

    Returns:
        ``(train, val, centres (1, 1) zeros, counts)`` in the shape :func:`load_training_data` returns.
    """
    ds = cfg.dataset
    _check_image_loc(ds.image_loc)
    paths, qualities = read_labels(ds.labels_path)
    prefix = os.path.join(ds.image_loc, "")
    rel = [p[len(prefix):] if p.startswith(prefix) else p for p in paths]  # keys may be joined to the folder
    no_image = [p for p in rel if not os.path.isfile(os.path.join(ds.image_loc, p))]
    _drop_or_fail(no_image, f"{len(no_image)} of {len(rel)} labelled images are not in '{ds.image_loc}'",
                  ds.on_missing)
    missing = set(no_image)
    items = [(p, float(q), 0) for p, q in zip(rel, qualities.tolist()) if p not in missing]
    if not items:
        raise DataError(f"none of the labelled images of '{ds.labels_path}' is in '{ds.image_loc}'")
    train, val = _split(TrainingSet.build(items, np.zeros((len(items), 1), dtype=np.float32)), ds.val_split)
    counts = {"items": len(paths), "no_image": len(no_image), "no_embedding": 0, "train": len(train.paths),
              "val": len(val.paths), "identities": 0}
    return train, val, torch.zeros(1, 1), counts


# ------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Runs the official recipe; see :func:`train`."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.official = cfg.base.official
        self.spec: ModelSpec = resolve_model(cfg.model_source, cfg.base.backbone_weights)
        check_output_dir(cfg.base.save_path, "base.save_path / --output")
        self.info, self.device = init_distributed(cfg.base.device)
        if self.official and self.info.enabled:
            raise ConfigError("'base.official: 1' reproduces the official single-process loop; run it without "
                              "torchrun")
        seed_everything(cfg.base.seed + self.info.rank, deterministic=cfg.base.deterministic)
        self.amp_dtype = self._amp_dtype()

        # DifFIQA(R): plain L1 regression on min-max labels (no label optimisation, no consistency term).
        self.regression = cfg.regression
        if self.regression != (self.spec.name == "diffiqaR"):
            raise ConfigError(f"'{self.spec.source}' is {'not ' if self.regression else ''}a DifFIQA(R) model; name "
                              "DifFIQA(R)'s model config with model.config (or base.model: diffiqaR), eDifFIQA's "
                              "with base.model")
        loader = load_regression_data if self.regression else load_training_data
        self.train_set, self.val_set, centres, self.counts = loader(cfg)
        self.centres = centres.to(self.device)

        # Built as the official code does (backbone, its weights, then the head), so the same seed gives the same
        # initial weights and leaves the global RNG in the same state for the official shuffling.
        model = build_model(self.spec.name, return_feat=True)
        if self.spec.backbone_weights:
            backbone = VARIANTS[self.spec.name].backbone
            load_backbone(backbone, self.spec.backbone_weights, into=model.backbone,
                          key=f"base_model.weights in '{self.spec.source}' or base.backbone_weights",
                          fix="set base.model to the model with a {held} backbone, or base.backbone_weights to a "
                          f"checkpoint of its {backbone} backbone")
            _logger.info("backbone %s initialised from %s", backbone, self.spec.backbone_weights)
        if self.official and self.amp_dtype is not None and hasattr(model.backbone, "trunk_autocast"):
            model.backbone.trunk_autocast = False  # the official iResNet runs its trunk in fp32 under AMP
        swapped = 0
        if cfg.base.fast_conv_grad and self.device.type == "cpu" and not self.official and self.amp_dtype is None:
            swapped = use_fast_weight_grad(model)
            _logger.info("%d 3x3 convolutions use the CPU weight gradient of model/conv_grad.py", swapped)
        # channels_last speeds up eager kernels. Compiled CPU code with PyTorch's conv gradients is faster on the
        # plain layout, with ours on channels_last (benchmarks/train_step.py). The official loop is plain NCHW.
        plain = self.official or (cfg.base.compile and self.device.type == "cpu" and not swapped)
        self.memory_format = torch.contiguous_format if plain else torch.channels_last
        self.model = model.to(self.device).to(memory_format=self.memory_format)
        self.optimizer = build_optimizer(optimizer_groups(self.model, cfg, freeze=not self.official), cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.criterion = build_loss(cfg)
        self.start_epoch = 0
        self.best_val = float("inf")
        self.history: List[Dict[str, Any]] = []
        self.run_log = RunLog.null()
        if cfg.base.resume:
            self._resume(cfg.base.resume)
        self.ddp_model: nn.Module = self.model
        self.train_model: Optional[nn.Module] = None  # the compiled training forward, when base.compile is set
        self.compile_checked = False  # the first compiled step ran: later errors are not compiler failures
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _amp_dtype(self) -> Optional[torch.dtype]:
        """``base.amp``: fp16 autocast with a GradScaler on CUDA. On a CPU the official code runs fp32 (its
        autocast and GradScaler are CUDA-only); the default mode uses bf16 where the CPU computes it natively."""
        if not self.cfg.base.amp:
            return None
        if self.device.type == "cuda":
            return torch.float16
        if self.official:
            return None
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
        if self.info.main:
            _logger.info("base.amp: this CPU has no native bf16, so training runs in fp32 (bf16 would be slower)")
        return None

    # ----------------------------------------------------------------------------------------- loaders
    def _loader(self, data: TrainingSet, train: bool, epoch: int) -> DataLoader:
        params = (self.cfg.dataloader.train if train else self.cfg.dataloader.val).params
        if params.batch_size % self.info.world:
            raise ConfigError(f"batch_size {params.batch_size} must be divisible by the {self.info.world} processes")
        batch = params.batch_size // self.info.world
        dataset = DistillationDataset(self.cfg.dataset.image_loc, data)
        # The official loaders draw from the global RNG (RandomSampler and worker seeds); ours from a seeded one.
        generator = None if self.official else torch.Generator().manual_seed(self.cfg.base.seed + epoch)
        if self.info.enabled:
            from torch.utils.data.distributed import DistributedSampler

            if train:
                sampler: Optional[Sampler] = DistributedSampler(dataset, self.info.world, self.info.rank,
                                                                shuffle=params.shuffle, seed=self.cfg.base.seed,
                                                                drop_last=params.drop_last)
                sampler.set_epoch(epoch)
            else:
                sampler = _StridedSampler(len(dataset), self.info.rank, self.info.world)
            shuffle = None
        else:
            sampler, shuffle = None, params.shuffle and train
        workers = params.num_workers if params.num_workers is not None else default_workers(self.device)
        kwargs: Dict[str, Any] = {}
        if workers > 0:
            kwargs["persistent_workers"] = params.persistent_workers
            if params.prefetch_factor is not None:
                kwargs["prefetch_factor"] = params.prefetch_factor
        drop_last = params.drop_last and train
        local = len(sampler) if sampler is not None else len(dataset)
        if train and not drop_last and local % batch == 1 and local > 1:
            # BatchNorm cannot train on one sample (the official code crashes here); leave that one item out.
            if epoch == self.start_epoch and self.info.main:
                _logger.warning("the last training batch would hold 1 image (%d per process, batch %d): left out "
                                "each epoch, as BatchNorm cannot train on a single image", local, batch)
            drop_last = True
        return DataLoader(dataset, batch_size=batch, shuffle=shuffle, sampler=sampler, num_workers=workers,
                          pin_memory=params.pin_memory and self.device.type == "cuda",
                          drop_last=drop_last, collate_fn=collate_distillation,
                          generator=generator, worker_init_fn=seed_worker, **kwargs)

    # ----------------------------------------------------------------------------------------- steps
    def _compiled(self) -> Optional[nn.Module]:
        if self.cfg.base.compile and self.train_model is None:
            if self.info.main:
                _logger.info("base.compile: torch.compile compiles the training step on the first batch (a minute or "
                             "two; cached for later runs)")
            self.train_model = torch.compile(self.ddp_model)
        return self.train_model

    def _forward(self, batch, adjust: bool, compiled: bool = False, amp: bool = True):
        images, quality, rows, teacher, ok = batch
        if not bool(ok.all()):
            images, quality, rows, teacher = images[ok], quality[ok], rows[ok], teacher[ok]
        if len(images) == 0:
            return None
        x = normalize(images.to(self.device, non_blocking=True)).contiguous(memory_format=self.memory_format)
        quality, teacher = quality.to(self.device), teacher.to(self.device)
        centre = self.centres[rows.to(self.device)] if adjust and not self.regression else None
        # The losses too run under autocast, as officially (autocast keeps them in fp32).
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None and amp):
            model = self._compiled() if compiled else None
            feat, pred = (model if model is not None else self.ddp_model)(x)
            if self.regression:
                loss = self.criterion.quality_loss(pred.float().reshape(-1), quality)
                zero = torch.zeros((), device=loss.device)
                return loss, {"loss": loss.detach(), "loss_rc": zero, "loss_q": loss.detach()}, len(images)
            loss, terms = self.criterion(feat, pred, quality, teacher, centre)
        return loss, terms, len(images)

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        from tqdm import tqdm

        self.ddp_model.train()
        loader = self._loader(self.train_set, True, epoch)
        sums = torch.zeros(4, dtype=torch.float64)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.cfg.base.epochs}", unit="batch",
                   disable=not (self.cfg.base.verbose and self.info.main), dynamic_ncols=True)
        for step, batch in enumerate(bar):
            try:
                out = self._forward(batch, adjust=True, compiled=self.cfg.base.compile)
                self.compile_checked = True
            except Exception as exc:  # noqa: BLE001 - a compiler failure (no C++ compiler, unsupported op...)
                if not self.cfg.base.compile or self.train_model is None or self.compile_checked:
                    raise
                _logger.warning("torch.compile failed (%s); training continues without it", first_line(exc))
                self.cfg.base.compile = False
                self.train_model = None
                self.optimizer.zero_grad(set_to_none=True)
                out = self._forward(batch, adjust=True)
            if out is None:
                continue
            loss, terms, n = out
            if not bool(torch.isfinite(loss)):
                self._diverged(f"the training loss is {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.optimizer.grad_clip:
                self.scaler.unscale_(self.optimizer)
                # Over the whole model, as officially: frozen tensors have no gradient and do not count.
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optimizer.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            values = {k: float(v) for k, v in terms.items()}
            sums += torch.tensor([values["loss"] * n, values["loss_rc"] * n, values["loss_q"] * n, n],
                                 dtype=torch.float64)
            bar.set_postfix(loss=f"{values['loss']:.4f}", rc=f"{values['loss_rc']:.4f}", q=f"{values['loss_q']:.4f}")
            self.run_log.row([epoch + 1, step + 1, n, values["loss"], values["loss_rc"], values["loss_q"]])
            self.run_log.log({"train/loss": values["loss"], "train/loss_rc": values["loss_rc"],
                              "train/loss_q": values["loss_q"], "epoch": epoch + 1})
        sums = all_reduce_sum(sums, self.info)
        count = max(sums[3].item(), 1.0)
        return {"loss": sums[0].item() / count, "loss_rc": sums[1].item() / count, "loss_q": sums[2].item() / count}

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Validation losses (raw labels, no epsilon adjustment), as the official code averages them: the mean of
        the per-batch means."""
        self.ddp_model.eval()
        sums = torch.zeros(4, dtype=torch.float64)
        # The official DifFIQA(R) validates without autocast.
        amp = not (self.official and self.regression)
        for batch in self._loader(self.val_set, False, 0):
            out = self._forward(batch, adjust=False, amp=amp)
            if out is None:
                continue
            _, terms, _ = out
            sums += torch.tensor([terms["loss"].item(), terms["loss_rc"].item(), terms["loss_q"].item(), 1],
                                 dtype=torch.float64)
        sums = all_reduce_sum(sums, self.info)
        count = max(sums[3].item(), 1.0)
        if not bool(torch.isfinite(sums).all()):
            self._diverged("the validation loss is not finite")
        return {"loss": sums[0].item() / count, "loss_rc": sums[1].item() / count, "loss_q": sums[2].item() / count}

    def _diverged(self, what: str) -> None:
        """Stop at the first non-finite loss: the checkpoints already written stay as they are."""
        kept = (f"the checkpoints of epoch {self.history[-1]['epoch']} and before in '{self.cfg.base.save_path}' are "
                "kept" if self.history else "no checkpoint was written yet")
        raise RunError(f"{what}: training diverged ({kept}); lower the learning rates, turn base.amp off, or check "
                       "the labels and embeddings")

    # ----------------------------------------------------------------------------------------- checkpoints
    def _checkpoint(self, epoch: int) -> Dict[str, Any]:
        return {"version": CHECKPOINT_VERSION, "epoch": epoch, "variant": self.spec.name,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "best_val": self.best_val, "rng": rng_state(), "config": to_dict(self.cfg),
                "history": self.history}

    def _resume(self, path: str) -> None:
        state = read_resume_checkpoint(path, "base.resume")
        if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "optimizer" not in state:
            raise ConfigError(f"base.resume: '{path}' is not a resumable checkpoint of this project (use last.pt)")
        held = state.get("variant") or (state["config"].get("model") or {}).get("name")
        if held != self.spec.name:
            raise ConfigError(f"base.resume: '{path}' trains {held}, the config {self.spec.name}")
        if bool(state["config"]["base"].get("official", False)) != self.official:
            raise ConfigError(f"base.resume: '{path}' was trained with base.official: "
                              f"{int(not self.official)}; resume it with the same setting")
        for section in ("optimizer", "dataloader"):
            if state["config"].get(section) != to_dict(self.cfg)[section]:
                raise ConfigError(f"base.resume: '{path}' was trained with another '{section}' section "
                                  f"({state['config'].get(section)}); resume with the config it was trained with")
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.best_val = float(state["best_val"])
        self.history = list(state["history"])
        set_rng_state(state["rng"])
        _logger.info("resumed from %s after epoch %d (best validation loss %.6f)", path, self.start_epoch,
                     self.best_val)

    # ----------------------------------------------------------------------------------------- run
    def fit(self) -> Dict[str, Any]:
        cfg = self.cfg
        out = cfg.base.save_path
        self.run_log = RunLog(out, cfg, "train_log.csv", ["epoch", "step", "images", "loss", "loss_rc", "loss_q"],
                              resumed=self.start_epoch > 0, wandb_cfg=cfg.wandb, main=self.info.main)
        if self.info.main:
            what = "" if self.regression else f", {self.counts['identities']} identities"
            _logger.info("training %s%s: %d training / %d validation items%s, %d process(es) on %s",
                         self.spec.name, " (official update)" if self.official else "", self.counts["train"],
                         self.counts["val"], what, self.info.world, self.device)
        try:
            for epoch in range(self.start_epoch, cfg.base.epochs):
                start = time.perf_counter()
                train_terms = self.train_epoch(epoch)
                val_terms = self.validate()
                improved = val_terms["loss"] < self.best_val
                if improved:
                    self.best_val = val_terms["loss"]
                record = {"epoch": epoch + 1, "train": train_terms, "val": val_terms, "best": improved,
                          "seconds": round(time.perf_counter() - start, 2)}
                self.history.append(record)
                if self.info.main:
                    if improved:
                        save_checkpoint(os.path.join(out, BEST_MODEL), self.model.state_dict())
                    save_checkpoint(os.path.join(out, LAST_CHECKPOINT), self._checkpoint(epoch + 1))
                    write_json(os.path.join(out, "history.json"), self.history)
                    self.run_log.flush()
                    self.run_log.log({"val/loss": val_terms["loss"], "val/loss_rc": val_terms["loss_rc"],
                                      "val/loss_q": val_terms["loss_q"], "epoch": epoch + 1})
                    _logger.info("epoch %d: train loss %.5f (rc %.5f, q %.5f), val loss %.5f (rc %.5f, q %.5f)%s",
                                 epoch + 1, train_terms["loss"], train_terms["loss_rc"], train_terms["loss_q"],
                                 val_terms["loss"], val_terms["loss_rc"], val_terms["loss_q"],
                                 ", saved model.pth" if improved else "")
        finally:
            self.run_log.close()
            finish_distributed(self.info)
        return {"history": self.history, "best_val": self.best_val}


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Train with ``cfg``; returns the per-epoch history and the best validation loss."""
    return Trainer(cfg).fit()
