"""The training config: the official ``train_config.yaml`` schema as typed dataclasses, plus a few additions.

Every official key keeps its official meaning: ``base.model`` names an official model config
(``configs/ediffiqaX_config.yaml``) or, as a shortcut, a variant name; ``dataset.model_name`` is the suffix of the
prepared files; ``dataset.backbone_model`` names the teacher embeddings; ``loss.quality`` and ``loss.consistency`` are
the official nested sections. Module strings (``torch.optim.Adam``, ``loss.ExtendedL1``, ``torch.nn.L1Loss``,
``torch.nn.CosineEmbeddingLoss``, ``model.iresnet.iresnet100``, ...) are checked against allow-lists; a config cannot
import anything else.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from model.loss import BASE_LOSSES, CONSISTENCY_LOSSES, QUALITY_LOSSES, loss_argument_problem
from utils.config import LoaderParams, RunBase, check, from_dict, key, load_yaml, short
from utils.errors import ConfigError
from utils.run_log import WandbSection

__all__ = ["OPTIMIZERS", "TrainConfig", "ModelSpec", "resolve_model", "resume_mismatch"]

#: Optimizer module strings admitted in configs, and their classes (looked up when needed: torch imports late).
OPTIMIZERS = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD")
OPTIMIZER_CLASSES = {name: (lambda attr=name.rsplit(".", 1)[1]: getattr(__import__("torch").optim, attr))
                     for name in OPTIMIZERS}


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
        _check_optimizer_params(self.module, self.params)
        groups = [g for g in (self.group_1, self.group_2) if g is not None]
        check(len({g.params for g in groups}) == len(groups),
              f"'optimizer.group_1' and 'optimizer.group_2' both name '{self.group_1.params}'; name two different "
              "parts (mlp and base_model)")
        check(self.grad_clip is None or (math.isfinite(self.grad_clip) and self.grad_clip > 0),
              f"'optimizer.grad_clip' must be a positive number or null, got {self.grad_clip}")


#: What each optimizer argument a config may pass must be (checked without building the optimizer).
_OPTIMIZER_ARGUMENTS = {
    "weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "eps": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "momentum": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "dampening": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "betas": (lambda v: isinstance(v, list) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
              "two numbers in [0, 1)"),
    "nesterov": (lambda v: isinstance(v, bool), "true or false"),
    "amsgrad": (lambda v: isinstance(v, bool), "true or false"),
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_optimizer_params(module: str, params: Dict[str, Any]) -> None:
    """``optimizer.params``: names the optimizer takes, with values it accepts (the optimizer is built once, by the
    trainer)."""
    import inspect

    accepted = inspect.signature(OPTIMIZER_CLASSES[module]()).parameters
    takes = ", ".join(n for n in _OPTIMIZER_ARGUMENTS if n in accepted)
    for name, value in params.items():
        check(name in _OPTIMIZER_ARGUMENTS and name in accepted, f"'optimizer.params.{name}' is not a setting of "
              f"{module} that this project passes on (it takes {takes})")
        test, expected = _OPTIMIZER_ARGUMENTS[name]
        check(test(value), f"'optimizer.params.{name}' must be {expected}, got {short(value)}")
    check(not params.get("nesterov") or (params.get("momentum", 0) > 0 and params.get("dampening", 0) == 0),
          "'optimizer.params.nesterov' needs momentum > 0 and dampening 0")


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


def _regression_config() -> str:
    from model.registry import VARIANTS, variant_names

    return VARIANTS[variant_names("regression")[0]].config


@dataclass
class ModelRef:
    """``model``: DifFIQA(R)'s official section, naming its model config."""

    config: str = field(default_factory=_regression_config)


@dataclass
class TrainConfig:
    """The whole training config."""

    base: TrainBase = field(default_factory=TrainBase)
    model: Optional[ModelRef] = None   # DifFIQA(R), official: model.config names its model config file
    dataset: TrainDataset = field(default_factory=TrainDataset)
    dataloader: Dataloaders = field(default_factory=Dataloaders)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    loss: LossSection = field(default_factory=LossSection)
    wandb: WandbSection = field(default_factory=WandbSection)

    @property
    def model_source(self) -> str:
        """What names the model: ``model.config`` (DifFIQA(R)'s official key), else ``base.model``."""
        from model.registry import DEFAULT_VARIANT, VARIANTS

        if self.model is not None:
            return self.model.config
        return self.base.model or VARIANTS[DEFAULT_VARIANT].config

    @property
    def regression(self) -> bool:
        """DifFIQA(R) (label regression) rather than eDifFIQA distillation."""
        from model.registry import VARIANTS

        named = VARIANTS.get(self.base.model or "")
        return self.model is not None or (named is not None and named.kind == "regression")

    def __post_init__(self) -> None:
        regression = self.regression
        check(not (self.model is not None and self.base.model is not None),
              "'base.model' and 'model.config' both name the model; keep one")
        check(not regression or self.dataset.labels_path is not None,
              "'dataset.labels' (or the official 'dataset.quality_loc') must name the quality labels to train "
              "DifFIQA(R) on (diffiqa_score.py output)")
        check(regression or (self.dataset.labels is None and self.dataset.quality_loc is None),
              "'dataset.labels' is for DifFIQA(R) (model.config); eDifFIQA trains on prepare_data.py outputs")
        check(regression or self.loss.module is None,
              "'loss.module' is DifFIQA(R)'s loss; eDifFIQA's are loss.quality and loss.consistency")
        for group in (self.optimizer.group_1, self.optimizer.group_2):
            check(group is None or regression or group.params in ("mlp", "base_model"),
                  f"optimizer group 'params' '{group.params if group else ''}' names a DifFIQA(R) part; eDifFIQA "
                  "has 'mlp' and 'base_model'")
        check(not (self.base.official and self.base.compile),
              "'base.compile' changes the arithmetic; 'base.official: 1' runs the official loop eagerly")


# ----------------------------------------------------------------------------------------- model configs
#: The one preprocessing the models are trained and scored with (official ``base_model.transformations``).
OFFICIAL_TRANSFORMS = {
    "trans_1": {"module": "torchvision.transforms.Resize", "params": {"size": [112, 112]}},
    "trans_2": {"module": "torchvision.transforms.ToTensor"},
    "trans_3": {"module": "torchvision.transforms.Normalize", "params": {"mean": [0.5] * 3, "std": [0.5] * 3}},
}
def _default_module() -> str:
    from model.registry import BACKBONES, DEFAULT_VARIANT, VARIANTS

    return BACKBONES[VARIANTS[DEFAULT_VARIANT].backbone].modules[0]


@dataclass
class BackboneSection:
    module: str = field(default_factory=_default_module)
    weights: str = ""                  # backbone initialisation (an insightface CosFace backbone); "" = random
    transformations: Dict[str, Any] = field(default_factory=lambda: dict(OFFICIAL_TRANSFORMS))

    def __post_init__(self) -> None:
        normalised = {k: {"module": v.get("module"), **({"params": v["params"]} if v.get("params") else {})}
                      if isinstance(v, dict) else v for k, v in self.transformations.items()}
        check(normalised == OFFICIAL_TRANSFORMS,
              f"'{key('transformations')}' must be the official preprocessing (Resize [112, 112], ToTensor, "
              "Normalize mean/std 0.5), the one the models are trained and scored with")


@dataclass
class MlpParams:
    in_dim: int = 512
    hidden_dim: int = 1024
    out_dim: int = 1


@dataclass
class MlpSection:
    module: str = "model.mlp.MLP"
    params: MlpParams = field(default_factory=MlpParams)

    def __post_init__(self) -> None:
        check(self.module == "model.mlp.MLP", f"'mlp.module' is '{self.module}'; allowed: model.mlp.MLP")
        check((self.params.in_dim, self.params.hidden_dim, self.params.out_dim) == (512, 1024, 1),
              f"'mlp.params' must be the official in_dim 512, hidden_dim 1024, out_dim 1, got {self.params}")


@dataclass
class WrapperSection:
    module: str = "model.ediffiqa.eDifFIQA"   # its params.return_feat is one of utils.config.NO_EFFECT_KEYS

    def __post_init__(self) -> None:
        check(self.module == "model.ediffiqa.eDifFIQA",
              f"'ediffiqa.module' is '{self.module}'; allowed: model.ediffiqa.eDifFIQA")


@dataclass
class ModelFile:
    """An official model config (``configs/ediffiqa{L,M,S,T}_config.yaml``)."""

    base_model: BackboneSection = field(default_factory=BackboneSection)
    mlp: MlpSection = field(default_factory=MlpSection)
    ediffiqa: WrapperSection = field(default_factory=WrapperSection)

    def __post_init__(self) -> None:
        from model.registry import official_modules, variant_for_module

        check(variant_for_module(self.base_model.module) is not None, f"'base_model.module' is "
              f"'{self.base_model.module}'; allowed: {', '.join(official_modules('ediffiqa'))}")


@dataclass
class HeadSection:
    module: str = "torch.nn.Linear"
    params: Dict[str, Any] = field(default_factory=lambda: {"in_features": 512, "out_features": 1})

    def __post_init__(self) -> None:
        check(self.module == "torch.nn.Linear", f"'model_head.module' is '{self.module}'; allowed: torch.nn.Linear")
        check(self.params == {"in_features": 512, "out_features": 1},
              f"'model_head.params' must be the official in_features 512, out_features 1, got {self.params}")


@dataclass
class RegressionModelFile:
    """DifFIQA(R)'s official model config (``configs/diffiqaR_model_config.yaml``): backbone and linear head."""

    base_model: BackboneSection = field(default_factory=BackboneSection)
    model_head: HeadSection = field(default_factory=HeadSection)

    def __post_init__(self) -> None:
        from model.registry import official_modules, variant_for_module

        check(variant_for_module(self.base_model.module, "regression") is not None, f"'base_model.module' is "
              f"'{self.base_model.module}'; allowed: {', '.join(official_modules('regression'))}")


@dataclass(frozen=True)
class ModelSpec:
    """What ``base.model`` resolves to: a registry variant and its backbone initialisation (None: random)."""

    name: str
    backbone_weights: Optional[str]
    source: str


def resolve_model(value: str, backbone_weights: Optional[str] = None) -> ModelSpec:
    """``base.model``: a variant name (``ediffiqaS``, ``diffiqaR``) or the path of an official model config file
    (eDifFIQA's, or DifFIQA(R)'s ``model.config``);
    ``backbone_weights`` (``base.backbone_weights``), when set, replaces the backbone initialisation ("": random).

    Raises:
        ConfigError: Neither a variant nor a readable model config; the message names the key and the file.
    """
    from model.registry import VARIANTS, variant_for_module, variant_names

    if value in VARIANTS:
        spec = ModelSpec(value, VARIANTS[value].init_weights, f"variant {value}")
    else:
        if not os.path.isfile(value):
            raise ConfigError(f"the model '{value}' (base.model or model.config) is neither a model config file nor a "
                              "variant name "
                              f"({', '.join(variant_names())}); the official model configs are "
                              f"{', '.join(v.config for v in VARIANTS.values())}")
        raw = load_yaml(value)
        if "model_head" in raw:  # DifFIQA(R)'s model config
            head = from_dict(RegressionModelFile, raw, source=value)
            spec = ModelSpec(variant_for_module(head.base_model.module, "regression"), head.base_model.weights or None,
                             value)
        else:
            parsed = from_dict(ModelFile, raw, source=value)
            spec = ModelSpec(variant_for_module(parsed.base_model.module), parsed.base_model.weights or None, value)
    if backbone_weights is not None:
        spec = ModelSpec(spec.name, backbone_weights or None, spec.source)
    return spec


def resume_mismatch(saved: Dict[str, Any], cfg: TrainConfig) -> str:
    """Why a checkpoint trained with config ``saved`` (a dict) cannot continue under ``cfg`` ("" when it can): the
    update mode, the optimizer and the DataLoaders must be the ones it was trained with."""
    from utils.config import to_dict

    if bool(saved.get("base", {}).get("official", False)) != cfg.base.official:
        return f"was trained with base.official: {int(not cfg.base.official)}"
    now = to_dict(cfg)
    for section in ("optimizer", "dataloader"):
        if saved.get(section) != now[section]:
            return f"was trained with another '{section}' section ({saved.get(section)})"
    return ""
