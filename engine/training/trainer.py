"""Training an eDifFIQA model (label-optimised distillation) or DifFIQA(R) (label regression): the model, the
optimizer groups, the loop, checkpoints and resume. What differs between the two is the :class:`Objective`'s; how it
computes is the :class:`TrainingPolicy`'s; the run around it is :class:`engine.training_run.TrainingRun`'s."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from tqdm import tqdm

from dataset.transforms import normalize
from engine import figures
from engine.training.config import TrainConfig, build_optimizer, resolved_config, resume_mismatch
from engine.training.data import loader_workers, training_loader
from engine.training.model_file import ModelSpec, resolve_model
from engine.training.objective import OBJECTIVES, Objective
from engine.training.policy import TrainingPolicy
from engine.training_run import TrainingRun
from model.build import build_model
from model.checkpoint import load_backbone
from model.conv_grad import use_fast_weight_grad
from model.registry import VARIANTS
from utils.checkpoint import read_checkpoint, save_checkpoint
from utils.distributed import all_reduce_sum
from utils.errors import ConfigError, RunError, first_line
from utils.io import OutputError, changed_files, file_fingerprints, write_json
from utils.run_log import RunLog
from utils.runtime import rng_state, set_rng_state

__all__ = ["optimizer_groups", "group_names", "check_output", "Trainer", "train"]

_logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
BEST_MODEL = "model.pth"
LAST_CHECKPOINT = "last.pt"
TRAINING_FIGURE = "train_log.png"
TRAINING_LOG = "train_log.csv"
HISTORY = "history.json"
#: The files of a run in its output folder (``config.json`` is :class:`utils.run_log.RunLog`'s).
RUN_FILES = (BEST_MODEL, LAST_CHECKPOINT, TRAINING_LOG, HISTORY, "config.json", TRAINING_FIGURE)


# ------------------------------------------------------------------------------------------------- model parts
def optimizer_groups(model: nn.Module, cfg: TrainConfig, freeze: bool = True) -> List[Dict[str, Any]]:
    """The parameter groups of ``optimizer.group_N``. With ``freeze``, every tensor outside them is frozen
    (``requires_grad = False``: no gradient is computed for it); the authors' code leaves them trainable, so their
    gradients are computed, accumulate across steps (its ``zero_grad`` clears only the optimizer's tensors) and count
    in the gradient clipping.

    Group ``limit`` N keeps the LAST N tensors of ``<child>.parameters()`` (the recipe: the last 100 backbone
    tensors).
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


#: What each part an optimizer group may name is, for the figure's legend.
_PARTS = {"mlp": "head", "linear": "head", "base_model": "backbone", "base": "backbone"}


def group_names(cfg: TrainConfig) -> List[str]:
    """What each optimizer group trains, in the optimizer's order (``mlp (head)``, ``base_model (last 100
    tensors)``)."""
    return [f"{g.params} ({f'last {g.limit} tensors' if g.limit is not None else _PARTS[g.params]})"
            for g in (cfg.optimizer.group_1, cfg.optimizer.group_2) if g is not None]


# ------------------------------------------------------------------------------------------------- output folder
def check_output(cfg: TrainConfig) -> List[str]:
    """Before any work: the run files already in the output folder that this run replaces (``base.overwrite``), or
    none. A folder holding a run is refused unless this run resumes it (``base.resume`` in the same folder) or
    replaces it, so that two runs never mix their files (a :class:`ConfigError` naming ``--resume`` with the
    folder's ``last.pt``, ``--output`` and ``--overwrite``)."""
    out, resume = cfg.base.save_path, cfg.base.resume
    found = [name for name in RUN_FILES if os.path.lexists(os.path.join(out, name))] if os.path.isdir(out) else []
    resuming_here = bool(resume) and os.path.realpath(os.path.dirname(os.path.abspath(resume))) == os.path.realpath(out)
    if cfg.base.overwrite and resuming_here:
        raise ConfigError(f"--overwrite (base.overwrite) would remove the run in '{out}' that --resume "
                          f"'{resume}' continues; drop one of them")
    if not found or resuming_here or cfg.base.overwrite:
        return found if cfg.base.overwrite else []
    last = os.path.join(out, LAST_CHECKPOINT)
    if resume:  # a run of another folder: continue it in its own
        resume_hint = (f"--resume '{resume}' continues the run of '{os.path.dirname(resume) or '.'}': add --output "
                       f"{os.path.dirname(resume) or '.'} to continue it there, ")
    elif LAST_CHECKPOINT in found:
        resume_hint = f"continue it with --resume {last}, "
    else:
        resume_hint = f"it has no {LAST_CHECKPOINT} to resume from; "
    raise ConfigError(f"output folder '{out}' (base.save_path) holds a training run ({', '.join(found)}); "
                      f"{resume_hint}write to another --output, or add --overwrite to replace it")


def _remove(folder: str, names: List[str], why: str = "--overwrite") -> None:
    """Remove the files ``names`` of an earlier run from ``folder`` (``base.overwrite``, or ``why``)."""
    for name in names:
        path = os.path.join(folder, name)
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputError(f"cannot remove '{path}' of the earlier run ({why}): {exc.strerror or exc}; "
                              "remove it or choose another --output") from None
    _logger.info("%s: removed the earlier run's %s from %s", why, ", ".join(names), folder)


# ------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains the model ``cfg`` names; see :func:`train`."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.spec: ModelSpec = resolve_model(cfg)
        objective = OBJECTIVES[self.spec.kind]
        objective.check(cfg)
        self.replaced = check_output(cfg)  # removed as the run starts writing, once everything before has worked
        # last.pt's record of the data, for a resume
        self.inputs = file_fingerprints(objective.input_files(cfg), objective.value_digests())
        resume_state = self._read_resume(cfg.base.resume) if cfg.base.resume else None
        self.run = TrainingRun(cfg.base.device, cfg.base.seed, cfg.base.save_path, "base.save_path / --output",
                               cfg.base.deterministic)
        self.info, self.device = self.run.info, self.run.device
        self.workers = loader_workers(cfg, self.device, log=self.info.main)
        self.resolved = resolved_config(cfg, self.device, self.workers)  # config.json and last.pt's config
        self.objective: Objective = objective(cfg, self.device)  # the data and the loss of the model's kind
        self.criterion = self.objective.criterion
        self._build_model()
        self._build_optimizer()
        self.start_epoch = 0
        self.best_val = float("inf")
        self.history: List[Dict[str, Any]] = []
        self.run_log = RunLog.null()
        if resume_state is not None:
            self._restore(resume_state, cfg.base.resume)
        self.ddp_model: nn.Module = self.run.wrap(self.model)
        self.train_model: Optional[nn.Module] = None  # the compiled training forward, when the policy compiles
        self.compiling = self.policy.compile          # off after a compiler failure (the config is left as it is)
        self.compile_checked = False  # the first compiled step ran: later errors are not compiler failures

    # ----------------------------------------------------------------------------------------- builders
    def _build_model(self) -> None:
        """The model, built in the authors' order (backbone, its weights, then the head), so the same seed gives the
        same initial weights and leaves the global RNG in the same state for their shuffling; then the policy's
        changes."""
        model = build_model(self.spec.name, return_feat=True)
        if self.spec.backbone_weights:
            backbone = VARIANTS[self.spec.name].backbone
            load_backbone(backbone, self.spec.backbone_weights, into=model.backbone,
                          key=f"base_model.weights in '{self.spec.source}' or base.backbone_weights",
                          fix="set base.model to the model with a {held} backbone, or base.backbone_weights to a "
                          f"checkpoint of its {backbone} backbone")
            _logger.info("backbone %s initialised from %s", backbone, self.spec.backbone_weights)
        self.policy = TrainingPolicy.from_config(self.cfg, self.device, self.info.world, model, self.objective,
                                                 log=self.info.main)
        if self.policy.fp32_trunk and hasattr(model.backbone, "trunk_autocast"):
            model.backbone.trunk_autocast = False
        if self.policy.fast_conv_grad:
            swapped = use_fast_weight_grad(model)
            _logger.info("%d 3x3 convolutions use the CPU weight gradient of model/conv_grad.py", swapped)
        self.model = model.to(self.device).to(memory_format=self.policy.memory_format)

    def _build_optimizer(self) -> None:
        """The optimizer groups and the GradScaler (fp16)."""
        groups = optimizer_groups(self.model, self.cfg, freeze=self.policy.freeze_outside_groups)
        self.optimizer = build_optimizer(self.cfg.optimizer.module, self.cfg.optimizer.params, groups)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.policy.amp_dtype == torch.float16)

    # ----------------------------------------------------------------------------------------- steps
    def _compiled(self) -> Optional[nn.Module]:
        if self.compiling and self.train_model is None:
            if self.info.main:
                _logger.info("base.compile: torch.compile compiles the training step on the first batch (a minute or "
                             "two; cached for later runs)")
            self.train_model = torch.compile(self.ddp_model)
        return self.train_model

    def _forward(self, batch: Dict[str, torch.Tensor], adjust: bool, compiled: bool = False,
                 amp: bool = True) -> Optional[Dict[str, torch.Tensor]]:
        """The named loss terms (``loss`` and the criterion's :attr:`terms`) of a batch's readable images, or None
        when none is; ``adjust``: optimise the labels (training), else the raw labels (validation)."""
        ok = batch["ok"]
        if not bool(ok.all()):
            batch = {k: v[ok] for k, v in batch.items()}
        if len(batch["image"]) == 0:
            return None
        x = normalize(batch["image"].to(self.device, non_blocking=True)).contiguous(
            memory_format=self.policy.memory_format)
        dtype = self.policy.amp_dtype
        # The losses too run under autocast, as in the authors' loop (autocast keeps them in fp32).
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None and amp):
            model = self._compiled() if compiled else None
            feat, pred = (model if model is not None else self.ddp_model)(x)
            return self.objective.terms(feat, pred, batch, adjust)

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        """One epoch; returns the image-weighted mean of each loss term."""
        self.ddp_model.train()
        loader = training_loader(self.cfg, self.objective.train_set, True, epoch, self.info, self.device,
                                 self.policy.seeded_loader, self.workers["train"],
                                 warn=epoch == self.start_epoch and self.info.main)
        names = ("loss", *self.criterion.terms)
        sums = torch.zeros(len(names) + 1, dtype=torch.float64)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.cfg.base.epochs}", unit="batch",
                   disable=not (self.cfg.base.verbose and self.info.main), dynamic_ncols=True)
        for step, batch in enumerate(bar):
            terms = self._train_forward(batch)
            if terms is None:
                continue
            loss, n = terms["loss"], int(batch["ok"].sum())
            if not bool(torch.isfinite(loss)):
                self._diverged(f"the training loss is {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.optimizer.grad_clip:
                self.scaler.unscale_(self.optimizer)
                # Over the whole model, as the authors clip: frozen tensors have no gradient and do not count.
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optimizer.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            values = [float(terms[k].detach()) for k in names]
            sums += torch.tensor([v * n for v in values] + [n], dtype=torch.float64)
            bar.set_postfix({k: f"{v:.4f}" for k, v in zip(names, values)})
            self.run_log.row([epoch + 1, step + 1, n, *values])
            self.run_log.log({**{f"train/{k}": v for k, v in zip(names, values)}, "epoch": epoch + 1})
        sums = all_reduce_sum(sums, self.info)
        count = max(sums[-1].item(), 1.0)
        return {k: sums[i].item() / count for i, k in enumerate(names)}

    def _train_forward(self, batch: Dict[str, torch.Tensor]) -> Optional[Dict[str, torch.Tensor]]:
        """:meth:`_forward` of a training batch, compiled when the policy says so; a compiler that fails on the first
        step leaves training eager."""
        try:
            terms = self._forward(batch, adjust=True, compiled=self.compiling)
            self.compile_checked = True
            return terms
        except Exception as exc:  # noqa: BLE001 - a compiler failure (no C++ compiler, unsupported op...)
            if not self.compiling or self.train_model is None or self.compile_checked:
                raise
            _logger.warning("torch.compile failed (%s); training continues without it", first_line(exc))
            self.compiling, self.train_model = False, None
            self.optimizer.zero_grad(set_to_none=True)
            return self._forward(batch, adjust=True)

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Validation losses (raw labels, no epsilon adjustment), averaged as the authors' code does: the mean of the
        per-batch means."""
        self.ddp_model.eval()
        names = ("loss", *self.criterion.terms)
        sums = torch.zeros(len(names) + 1, dtype=torch.float64)
        loader = training_loader(self.cfg, self.objective.val_set, False, 0, self.info, self.device,
                                 self.policy.seeded_loader, self.workers["val"], warn=False)
        for batch in loader:
            terms = self._forward(batch, adjust=False, amp=self.policy.validation_autocast)
            if terms is None:
                continue
            sums += torch.tensor([terms[k].item() for k in names] + [1], dtype=torch.float64)
        sums = all_reduce_sum(sums, self.info)
        count = max(sums[-1].item(), 1.0)
        if not bool(torch.isfinite(sums).all()):
            self._diverged("the validation loss is not finite")
        return {k: sums[i].item() / count for i, k in enumerate(names)}

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
                "best_val": self.best_val, "rng": rng_state(), "config": self.resolved,
                "inputs": self.inputs, "history": self.history}

    def _read_resume(self, path: str) -> Dict[str, Any]:
        """The checkpoint to resume from, read before any work: it must train the same model with the same settings
        (those that can change a number; see :func:`engine.training.config.resume_mismatch`)."""
        state = read_checkpoint(path, "base.resume", needed=("optimizer", "config"), version=CHECKPOINT_VERSION,
                                what="a resumable checkpoint of this project (use last.pt)")
        held = state.get("variant") or (state["config"].get("model") or {}).get("name")
        if held != self.spec.name:
            raise ConfigError(f"base.resume: '{path}' trains {held}, the config {self.spec.name}; give --model {held} "
                              "(or -c the config it was trained with)")
        mismatch = resume_mismatch(state["config"], self.cfg)
        if mismatch:
            raise ConfigError(f"base.resume: '{path}' was trained with other settings ({mismatch}); resume with the "
                              "settings it was trained with, or train anew into another --output")
        inputs = state.get("inputs")
        if inputs is not None and not (isinstance(inputs, dict) and all(
                isinstance(v, dict) and {"path", "size", "sha256"} <= set(v) for v in inputs.values())):
            raise ConfigError(f"base.resume: '{path}' is damaged (its record of the training data is not one this "
                              "project writes); resume from another last.pt, or train anew into another --output")
        if inputs is None:
            _logger.warning("base.resume: '%s' records no fingerprint of the data it was trained on (written before "
                            "they were recorded), so they are not checked: resume only with the same data", path)
        else:
            changes = changed_files(state["inputs"], self.inputs)
            if changes:
                raise ConfigError(f"base.resume: '{path}' was trained on other data ({'; '.join(changes)}); restore "
                                  "the data it was trained with, or train anew into another --output")
        return state

    def _restore(self, state: Dict[str, Any], path: str) -> None:
        """Continue from the checkpoint ``state`` (read from ``path``): weights, optimizer, scaler, RNGs, history."""
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.best_val = float(state["best_val"])
        self.history = list(state["history"])
        set_rng_state(state["rng"])
        _logger.info("resumed from %s after epoch %d (best validation loss %.6f)", path, self.start_epoch,
                     self.best_val)

    def _write_figure(self) -> None:
        """``train_log.png``: every epoch so far (a resumed run's history included), written atomically."""
        title = f"training {self.spec.name} ({self.policy.mode} mode): losses per epoch and learning rates"
        figures.write_figure(os.path.join(self.cfg.base.save_path, TRAINING_FIGURE),
                             lambda: figures.training_curves(self.history, title, group_names(self.cfg)))

    # ----------------------------------------------------------------------------------------- run
    def fit(self) -> Dict[str, Any]:
        cfg = self.cfg
        out = cfg.base.save_path
        names = ("loss", *self.criterion.terms)
        written = {"config.json", TRAINING_LOG}  # the run log's, written as it opens
        if self.replaced and self.info.main:
            _remove(out, self.replaced)
            self.replaced = []
        stale = os.path.join(out, TRAINING_FIGURE)
        if self.start_epoch > 0 and not cfg.base.figure and self.info.main and os.path.lexists(stale):
            # The earlier part's figure would show only its epochs beside this run's files.
            _remove(out, [TRAINING_FIGURE], why="base.figure is off: it would show only the epochs before the "
                    "resume")
        self.run_log = self.run.log(self.resolved, TRAINING_LOG, ["epoch", "step", "images", *names],
                                    resumed=self.start_epoch > 0, wandb_cfg=cfg.wandb)
        if self.info.main:
            _logger.info("training %s (%s mode): %d training / %d validation items%s, %d process(es) on %s",
                         self.spec.name, self.policy.mode, self.objective.counts["train"],
                         self.objective.counts["val"], self.objective.summary(),
                         self.info.world, self.device)
        try:
            for epoch in range(self.start_epoch, cfg.base.epochs):
                start = time.perf_counter()
                train_terms = self.train_epoch(epoch)
                val_terms = self.validate()
                improved = val_terms["loss"] < self.best_val
                if improved:
                    self.best_val = val_terms["loss"]
                record = {"epoch": epoch + 1, "train": train_terms, "val": val_terms, "best": improved,
                          "lr": [group["lr"] for group in self.optimizer.param_groups],
                          "seconds": round(time.perf_counter() - start, 2)}
                self.history.append(record)
                if self.info.main:
                    if improved:
                        save_checkpoint(os.path.join(out, BEST_MODEL), self.model.state_dict())
                        written.add(BEST_MODEL)
                    save_checkpoint(os.path.join(out, LAST_CHECKPOINT), self._checkpoint(epoch + 1))
                    write_json(os.path.join(out, HISTORY), self.history)
                    written.update((LAST_CHECKPOINT, HISTORY))
                    if cfg.base.figure:
                        self._write_figure()
                        written.add(TRAINING_FIGURE)
                    self.run_log.flush()
                    self.run_log.log({**{f"val/{k}": v for k, v in val_terms.items()}, "epoch": epoch + 1})
                    shown = lambda terms: ", ".join(f"{k[5:]} {v:.5f}" for k, v in terms.items() if k != "loss")  # noqa: E731
                    _logger.info("epoch %d: train loss %.5f (%s), val loss %.5f (%s)%s", epoch + 1,
                                 train_terms["loss"], shown(train_terms), val_terms["loss"], shown(val_terms),
                                 ", saved model.pth" if improved else "")
        finally:
            self.run_log.close()
            self.run.close()
        return {"history": self.history, "best_val": self.best_val, "main": self.info.main,
                "written": [os.path.join(out, name) for name in RUN_FILES if name in written]}


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Train with ``cfg``; returns the per-epoch history, the best validation loss, whether this is the first
    process (the one that reports, under torchrun) and the run's files in its output folder (``written``)."""
    return Trainer(cfg).fit()
