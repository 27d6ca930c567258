"""The training config: the official ``train_config.yaml`` schema as typed dataclasses, plus a few additions.

Every official key keeps its official meaning: ``base.model`` names an official model config
(``configs/ediffiqaX_config.yaml``, read by :mod:`engine.training.model_file`) or, as a shortcut, a variant name;
``dataset.model_name`` is the suffix of the prepared files; ``dataset.backbone_model`` names the teacher embeddings;
``loss.quality`` and ``loss.consistency`` are the official nested sections. Module strings (``torch.optim.Adam``,
``loss.ExtendedL1``, ``torch.nn.L1Loss``, ``torch.nn.CosineEmbeddingLoss``, ...) are checked against allow-lists; a
config cannot import anything else.
"""
from __future__ import annotations

import fnmatch
import inspect
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from model.loss import BASE_LOSSES, CONSISTENCY_LOSSES, QUALITY_LOSSES, loss_argument_problem
from model.registry import DEFAULT_VARIANT, VARIANTS, variant_names
from utils.config import LoaderParams, RunBase, check, key, short, to_dict
from utils.errors import first_line
from utils.run_log import WandbSection
from utils.runtime import resolve_device

__all__ = ["OPTIMIZERS", "RESUME_FREE_KEYS", "TrainConfig", "build_optimizer", "resolved_config",
           "resume_mismatch"]

#: The optimizers a config may name (``optimizer.module``), by their official module strings.
OPTIMIZERS = {"torch.optim.Adam": torch.optim.Adam, "torch.optim.AdamW": torch.optim.AdamW,
              "torch.optim.SGD": torch.optim.SGD}
#: Optimizer arguments a config may not pass (``optimizer.params``): the groups give the learning rates; the others
#: choose how torch computes the step (and can work on one device and fail on another) or turn the descent around.
_RESERVED_ARGUMENTS = ("params", "lr", "foreach", "fused", "capturable", "differentiable", "maximize")


@dataclass
class TrainBase(RunBase):
    """``base``: run settings."""

    verbose: bool = True
    save_path: str = "./outputs/ediffiqa"
    model: Optional[str] = None        # an official model config, or a variant name; None: model.config
                                       # (DifFIQA(R)) or the default variant's model config
    backbone_weights: Optional[str] = None  # overrides the backbone init that base.model gives ("" = random)
    amp: bool = True
    epochs: int = 3
    official: bool = False             # the official update step for step (slower); see docs
    resume: Optional[str] = None
    overwrite: bool = False            # replace the run an output folder holds (its files are removed first)
    deterministic: bool = False
    compile: bool = False              # torch.compile the training step (faster for S/M/L on a CPU, see the
                                       # benchmarks; compiles for a minute or two first, so worth it for long runs)
    fast_conv_grad: bool = True        # on a CPU, 3x3 conv weight gradients by model/conv_grad.py (faster than
                                       # oneDNN's); false = PyTorch's own
    figure: bool = True                # train_log.png after every epoch: losses per term, learning rates

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.epochs >= 1, f"'base.epochs' must be at least 1, got {self.epochs}")


@dataclass
class TrainDataset:
    """``dataset``: images, prepared files and teacher embeddings."""

    val_split: float = 0.1
    image_loc: str = "./data/vggface2"
    model_name: str = "ediffiqa"       # suffix of the prepared files (prepare_data.py -sn)
    backbone_model: str = "cosface"    # teacher: <training_data>/<backbone_model>-embeddings.pkl
    training_data: str = "./training_data"
    embeddings: Optional[str] = None   # teacher embeddings file; None: the official name above
    on_missing: str = "drop"
    labels: Optional[str] = None       # DifFIQA(R) only: {path: quality} labels (diffiqa_score.py output)
    quality_loc: Optional[str] = None  # DifFIQA(R), official: the folder of vggface2-qs.pkl (when labels is unset)

    @property
    def labels_path(self) -> Optional[str]:
        """DifFIQA(R) labels: ``labels``, else ``<quality_loc>/vggface2-qs.pkl`` (the official file name)."""
        if self.labels is not None or self.quality_loc is None:
            return self.labels
        return os.path.join(self.quality_loc, "vggface2-qs.pkl")

    @property
    def embeddings_path(self) -> str:
        """The teacher embeddings: ``embeddings``, else ``<training_data>/<backbone_model>-embeddings.pkl``."""
        return self.embeddings or os.path.join(self.training_data, f"{self.backbone_model}-embeddings.pkl")

    def __post_init__(self) -> None:
        check(0.0 < self.val_split < 1.0, f"'dataset.val_split' must be between 0 and 1, got {self.val_split}")
        check(self.on_missing in ("drop", "fail"),
              f"'dataset.on_missing' must be 'drop' or 'fail', got '{self.on_missing}'")


@dataclass
class TrainLoaderParams(LoaderParams):
    """``dataloader.{train,val}.params``: DataLoader settings; None picks a value for the device."""

    batch_size: int = 128
    shuffle: bool = True


@dataclass
class TrainLoader:
    params: TrainLoaderParams = field(default_factory=TrainLoaderParams)


@dataclass
class Dataloaders:
    """``dataloader``: ``train`` and ``val`` loaders."""

    train: TrainLoader = field(default_factory=TrainLoader)
    val: TrainLoader = field(default_factory=lambda: TrainLoader(TrainLoaderParams(shuffle=False)))


@dataclass
class OptimizerGroup:
    """One parameter group: ``params`` names a child of the model; ``limit`` keeps only its last N tensors."""

    params: str = "mlp"
    lr: float = 1e-3
    limit: Optional[int] = None

    def __post_init__(self) -> None:
        check(self.params in ("mlp", "base_model", "linear", "base"),
              f"'{key('params')}' must be 'mlp' or 'base_model' ('linear' or 'base' for DifFIQA(R)), "
              f"got '{self.params}'")
        check(math.isfinite(self.lr) and self.lr > 0, f"'{key('lr')}' must be a positive number, got {self.lr}")
        check(self.limit is None or self.limit >= 1, f"'{key('limit')}' must be at least 1, got {self.limit}")


@dataclass
class OptimizerSection:
    """``optimizer``: official ``module`` string, two groups, extra ``params`` and the gradient clip."""

    module: str = "torch.optim.Adam"
    group_1: OptimizerGroup = field(default_factory=lambda: OptimizerGroup("mlp", 1e-3))
    group_2: Optional[OptimizerGroup] = field(default_factory=lambda: OptimizerGroup("base_model", 1e-4, 100))
    params: Dict[str, Any] = field(default_factory=dict)
    grad_clip: Optional[float] = 5.0

    def __post_init__(self) -> None:
        check(self.module in OPTIMIZERS, f"'optimizer.module' is '{self.module}'; allowed: {', '.join(OPTIMIZERS)}")
        self._check_params()
        groups = [g for g in (self.group_1, self.group_2) if g is not None]
        check(len({g.params for g in groups}) == len(groups),
              f"'optimizer.group_1' and 'optimizer.group_2' both name '{self.group_1.params}'; name two different "
              "parts (mlp and base_model)")
        check(self.grad_clip is None or (math.isfinite(self.grad_clip) and self.grad_clip > 0),
              f"'optimizer.grad_clip' must be a positive number or null, got {self.grad_clip}")

    def _check_params(self) -> None:
        """``optimizer.params``: arguments the optimizer takes, each of the type of its default, that its constructor
        accepts (built once here on a dummy parameter, so that torch's own checks speak before the run starts)."""
        accepted = {name: p.default for name, p in inspect.signature(OPTIMIZERS[self.module]).parameters.items()
                    if name not in _RESERVED_ARGUMENTS}
        for name, value in self.params.items():
            check(name in accepted, f"'optimizer.params.{name}' is not a setting of {self.module} that this project "
                  f"passes on (it takes {', '.join(accepted)})")
            expected = _like(accepted[name], value)
            check(not expected, f"'optimizer.params.{name}' must be {expected}, got {short(value)}")
        problem = _refusal(self.module, self.params)
        # Name the argument that the constructor refuses on its own, where there is one.
        alone = next((n for n in self.params if _refusal(self.module, {n: self.params[n]})), None) if problem else None
        check(not problem, f"'optimizer.params{'.' + alone if alone else ''}' is refused by {self.module}: {problem}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _like(default: Any, value: Any) -> str:
    """What ``value`` must be to stand where the optimizer's ``default`` stands ("" when it is)."""
    if isinstance(default, bool):
        return "" if isinstance(value, bool) else "true or false"
    if isinstance(default, (int, float)):
        return "" if _number(value) else "a finite number"
    if isinstance(default, tuple):
        fits = isinstance(value, list) and len(value) == len(default) and all(_number(v) for v in value)
        return "" if fits else f"a list of {len(default)} finite numbers"
    return ""


def build_optimizer(module: str, params: Dict[str, Any], groups: List[Any]) -> torch.optim.Optimizer:
    """Optimizer ``module`` (``optimizer.module``) over the parameter ``groups`` with the arguments ``params``
    (``optimizer.params``; lists as tuples, which is how torch takes ``betas``)."""
    kwargs = {name: tuple(v) if isinstance(v, list) else v for name, v in params.items()}
    return OPTIMIZERS[module](groups, **kwargs)


def _refusal(module: str, params: Dict[str, Any]) -> str:
    """Why the constructor of ``module`` refuses ``params`` ("" when it does not)."""
    try:
        build_optimizer(module, params, [torch.zeros(1, requires_grad=True)])
    except (ValueError, TypeError, RuntimeError) as exc:
        return first_line(exc)
    return ""


@dataclass
class ModuleSpec:
    """``{module, params}``: an allow-listed module string and its keyword arguments."""

    module: str = "torch.nn.L1Loss"
    params: Dict[str, Any] = field(default_factory=dict)


def _check_base_loss(module: str, params: Dict[str, Any], module_key: str, params_key: str) -> None:
    """An allow-listed regression loss with arguments it takes (the loss is built once, by the trainer)."""
    check(module in BASE_LOSSES, f"'{module_key}' is '{module}'; allowed: {', '.join(BASE_LOSSES)}")
    problem = loss_argument_problem(module, params)
    check(not problem, f"'{params_key}' {short(params)} do not fit {module}: {problem}")


@dataclass
class QualityParams:
    base_loss: ModuleSpec = field(default_factory=ModuleSpec)
    epsilon: float = 0.5               # label optimisation strength (the official code reads it here)


@dataclass
class QualityLoss:
    """``loss.quality``: ``ExtendedL1`` around a base regression loss."""

    module: str = "loss.ExtendedL1"
    params: QualityParams = field(default_factory=QualityParams)

    def __post_init__(self) -> None:
        check(self.module in QUALITY_LOSSES,
              f"'loss.quality.module' is '{self.module}'; allowed: {', '.join(QUALITY_LOSSES)}")
        base = self.params.base_loss
        _check_base_loss(base.module, base.params, "loss.quality.params.base_loss.module",
                         "loss.quality.params.base_loss.params")
        check(base.params.get("reduction", "mean") in ("mean", "sum"),
              "'loss.quality.params.base_loss.params.reduction' must be 'mean' or 'sum' (the loss must be a number)")


@dataclass
class ConsistencyParams:
    reduction: str = "none"            # official; the consistency term is the mean of what this gives
    margin: float = 0.0                # no effect: every target is 1

    def __post_init__(self) -> None:
        check(self.reduction in ("none", "mean", "sum"),
              f"'loss.consistency.params.reduction' must be none, mean or sum, got '{self.reduction}'")


@dataclass
class ConsistencyLoss:
    """``loss.consistency``: ``CosineEmbeddingLoss`` with target 1, for the representation term and ``ad``."""

    module: str = "torch.nn.CosineEmbeddingLoss"
    params: ConsistencyParams = field(default_factory=ConsistencyParams)

    def __post_init__(self) -> None:
        check(self.module in CONSISTENCY_LOSSES,
              f"'loss.consistency.module' is '{self.module}'; allowed: {', '.join(CONSISTENCY_LOSSES)}")


@dataclass
class LossSection:
    """``loss``: the official nested sections and the weight ``theta``."""

    quality: QualityLoss = field(default_factory=QualityLoss)
    consistency: ConsistencyLoss = field(default_factory=ConsistencyLoss)
    theta: float = 0.5                 # loss = theta * L_rc + (1 - theta) * L_q
    module: Optional[str] = None       # DifFIQA(R), official: its regression loss (e.g. torch.nn.L1Loss)
    params: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(0.0 <= self.theta <= 1.0, f"'loss.theta' must be in [0, 1], got {self.theta}")
        if self.module is not None:
            _check_base_loss(self.module, self.params, "loss.module", "loss.params")

    def regression_loss(self) -> ModuleSpec:
        """DifFIQA(R)'s loss: ``loss.module`` (its official key), else ``loss.quality.params.base_loss``."""
        if self.module is not None:
            return ModuleSpec(self.module, dict(self.params))
        return self.quality.params.base_loss


@dataclass
class ModelRef:
    """``model``: DifFIQA(R)'s official section, naming its model config."""

    config: str = field(default_factory=lambda: VARIANTS[variant_names("regression")[0]].config)


@dataclass
class TrainConfig:
    """The whole training config. The keys that only one kind of model takes are checked against the model the
    config names, once it is read (:mod:`engine.training.objective`)."""

    base: TrainBase = field(default_factory=TrainBase)
    model: Optional[ModelRef] = None   # DifFIQA(R), official: model.config names its model config file
    dataset: TrainDataset = field(default_factory=TrainDataset)
    dataloader: Dataloaders = field(default_factory=Dataloaders)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    loss: LossSection = field(default_factory=LossSection)
    wandb: WandbSection = field(default_factory=WandbSection)

    @property
    def model_source(self) -> str:
        """What names the model: ``model.config`` (DifFIQA(R)'s official key), else ``base.model``, else the default
        variant's model config."""
        if self.model is not None:
            return self.model.config
        return self.base.model or VARIANTS[DEFAULT_VARIANT].config

    def __post_init__(self) -> None:
        check(not (self.model is not None and self.base.model is not None),
              "'base.model' and 'model.config' both name the model; keep one")
        check(not (self.base.official and self.base.compile),
              "'base.compile' changes the arithmetic; 'base.official: 1' runs the official loop eagerly")


#: The keys a resumed run may change: none of them changes a number of the run (how the images are read, what is
#: shown and logged, where it is written, how long it trains). ``base.model``, ``model`` (``model.config``) and
#: ``base.backbone_weights`` name the model and its initialisation: the model is checked as the variant it builds
#: (the checkpoint replaces its initialisation), not by how the config spells it.
RESUME_FREE_KEYS = ("base.verbose", "base.figure", "base.epochs", "base.save_path", "base.resume", "base.overwrite",
                    "base.model", "model", "base.backbone_weights", "wandb",
                    "dataloader.*.params.num_workers", "dataloader.*.params.pin_memory",
                    "dataloader.*.params.prefetch_factor", "dataloader.*.params.persistent_workers")

_ABSENT = object()


def _differences(old: Any, new: Any, prefix: str = "") -> List[Tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` of every leaf where the nested dicts ``old`` and ``new`` differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: List[Tuple[str, Any, Any]] = []
        for name in [*new, *(k for k in old if k not in new)]:
            found += _differences(old.get(name, _ABSENT), new.get(name, _ABSENT), f"{prefix}{name}.")
        return found
    return [] if old == new else [(prefix[:-1], old, new)]


def resolved_config(cfg: TrainConfig, device: torch.device, workers: Dict[str, int]) -> Dict[str, Any]:
    """The config as this run uses it, for ``config.json`` and ``last.pt``: the device it runs on and the worker
    processes of each loader (``workers``: :func:`engine.training.data.loader_workers`), which the config may leave
    to the run (``auto``, null) or ask beyond the machine's CPUs."""
    out = to_dict(cfg)
    out["base"]["device"] = str(device)
    for name, count in workers.items():
        out["dataloader"][name]["params"]["num_workers"] = count
    return out


def _device_kind(spec: Any) -> Any:
    """What of a device setting can change a number: its kind (``cpu``, ``cuda``), ``auto`` as it resolves here;
    any other value as it is."""
    if not isinstance(spec, str):
        return spec
    if spec.strip().lower() == "auto":
        return resolve_device("auto").type
    try:
        return torch.device(spec.strip().lower()).type
    except (RuntimeError, ValueError):
        return spec


def resume_mismatch(saved: Dict[str, Any], cfg: TrainConfig) -> str:
    """Why a checkpoint trained with config ``saved`` (a dict) cannot continue under ``cfg`` ("" when it can): every
    key that can change a number (all but :data:`RESUME_FREE_KEYS`) must be as it was trained with; each one that
    differs is named with both values. ``base.device`` is compared by its kind: the checkpoints of this project hold
    the device a run resolved (``cpu``, ``cuda:0``), older ones the setting (``auto``)."""
    changed = [(k, a, b) for k, a, b in _differences(saved, to_dict(cfg))
               if not any(fnmatch.fnmatchcase(k, p) or fnmatch.fnmatchcase(k, p + ".*") for p in RESUME_FREE_KEYS)
               and not (k == "base.device" and _device_kind(a) == _device_kind(b))]
    shown = lambda v: "(absent)" if v is _ABSENT else short(v)  # noqa: E731
    return "; ".join(f"{k}: {shown(a)} -> {shown(b)}" for k, a, b in changed)
