"""The training config: the official ``train_config.yaml`` keys as typed dataclasses, plus a few additions.

Module strings of the official configs (``torch.optim.Adam``, ``loss.ExtendedL1``, ``torch.nn.L1Loss``,
``torch.nn.CosineEmbeddingLoss``) are checked against allow-lists; a config cannot import anything else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from model.loss import BASE_LOSSES, QUALITY_LOSSES, REPRESENTATION_LOSSES
from utils.config import check

__all__ = ["OPTIMIZERS", "TrainConfig"]

#: Optimizer module strings admitted in configs.
OPTIMIZERS = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD")


@dataclass
class TrainBase:
    """``base``: run settings."""

    seed: int = 42069
    verbose: bool = True
    save_path: str = "./outputs/ediffiqa"
    device: str = "auto"
    amp: bool = True
    epochs: int = 3
    resume: Optional[str] = None
    deterministic: bool = False
    compile: bool = False              # torch.compile the training step (1.47x on a CPU for eDifFIQA(S); compiles
                                       # for a minute or two first, so worth it for long runs)
    fast_conv_grad: bool = True        # on a CPU, 3x3 conv weight gradients by model/conv_grad.py (faster than
                                       # oneDNN's); false = PyTorch's own

    def __post_init__(self) -> None:
        check(self.epochs >= 1, f"'base.epochs' must be at least 1, got {self.epochs}")


@dataclass
class ModelSection:
    """``model``: the variant to train and its backbone initialisation (insightface ``r100.pth`` etc.)."""

    name: str = "ediffiqaL"
    backbone_weights: Optional[str] = None

    def __post_init__(self) -> None:
        from model.registry import VARIANTS, variant_names

        check(self.name in VARIANTS, f"'model.name' is '{self.name}'; choose one of: {', '.join(variant_names())}")


@dataclass
class TrainDataset:
    """``dataset``: images, prepared files and teacher embeddings."""

    image_loc: str = "./data/vggface2"
    training_data: str = "./training_data"
    save_name: str = "ediffiqa"
    embeddings: str = "./training_data/cosface-embeddings.pkl"
    val_split: float = 0.1
    on_missing: str = "drop"
    labels: Optional[str] = None       # DifFIQA(R) only: {path: quality} labels (diffiqa_score.py output)

    def __post_init__(self) -> None:
        check(0.0 < self.val_split < 1.0, f"'dataset.val_split' must be between 0 and 1, got {self.val_split}")
        check(self.on_missing in ("drop", "fail"),
               f"'dataset.on_missing' must be 'drop' or 'fail', got '{self.on_missing}'")


@dataclass
class TrainLoaderParams:
    """``dataloader.{train,val}.params``: DataLoader settings; None picks a value for the device."""

    batch_size: int = 128
    shuffle: bool = True
    num_workers: Optional[int] = None
    pin_memory: bool = True
    drop_last: bool = False
    prefetch_factor: Optional[int] = None
    persistent_workers: bool = False

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, f"'batch_size' must be at least 1, got {self.batch_size}")
        check(self.num_workers is None or self.num_workers >= 0, "'num_workers' must be 0 or more")


@dataclass
class LoaderSection:
    params: TrainLoaderParams = field(default_factory=TrainLoaderParams)


@dataclass
class Dataloaders:
    """``dataloader``: ``train`` and ``val`` loaders."""

    train: LoaderSection = field(default_factory=LoaderSection)
    val: LoaderSection = field(default_factory=lambda: LoaderSection(TrainLoaderParams(shuffle=False)))


@dataclass
class OptimizerGroup:
    """One parameter group: ``params`` names a child of the model; ``limit`` keeps only its last N tensors."""

    params: str = "mlp"
    lr: float = 1e-3
    limit: Optional[int] = None

    def __post_init__(self) -> None:
        check(self.params in ("mlp", "base_model", "linear", "base"),
               f"optimizer group 'params' must be 'mlp' or 'base_model' ('linear' or 'base' for DifFIQA(R)), "
               f"got '{self.params}'")
        check(self.lr > 0, f"optimizer group 'lr' must be positive, got {self.lr}")
        check(self.limit is None or self.limit >= 1, f"optimizer group 'limit' must be at least 1, got {self.limit}")


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
        for key, value in self.params.items():
            check(key in ("weight_decay", "betas", "eps", "momentum", "nesterov", "amsgrad"),
                   f"'optimizer.params.{key}' is not an optimizer setting this project passes on")
            check(isinstance(value, (int, float, bool, list)), f"'optimizer.params.{key}' must be a number")


@dataclass
class LossSection:
    """``loss``: the official module strings and weights."""

    module: str = "loss.ExtendedL1"
    base_loss: str = "torch.nn.L1Loss"
    representation_loss: str = "torch.nn.CosineEmbeddingLoss"
    epsilon: float = 0.5
    theta: float = 0.5

    def __post_init__(self) -> None:
        check(self.module in QUALITY_LOSSES, f"'loss.module' is '{self.module}'; allowed: {', '.join(QUALITY_LOSSES)}")
        check(self.base_loss in BASE_LOSSES,
               f"'loss.base_loss' is '{self.base_loss}'; allowed: {', '.join(BASE_LOSSES)}")
        check(self.representation_loss in REPRESENTATION_LOSSES,
               f"'loss.representation_loss' is '{self.representation_loss}'; allowed: "
               f"{', '.join(REPRESENTATION_LOSSES)}")
        check(0.0 <= self.theta <= 1.0, f"'loss.theta' must be in [0, 1], got {self.theta}")


@dataclass
class WandbSection:
    """``wandb``: optional Weights & Biases logging (imported only when ``use`` is set)."""

    use: bool = False
    project: str = "ediffiqa"
    entity: Optional[str] = None
    name: Optional[str] = None
    mode: Optional[str] = None


@dataclass
class TrainConfig:
    """The whole training config."""

    base: TrainBase = field(default_factory=TrainBase)
    model: ModelSection = field(default_factory=ModelSection)
    dataset: TrainDataset = field(default_factory=TrainDataset)
    dataloader: Dataloaders = field(default_factory=Dataloaders)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    loss: LossSection = field(default_factory=LossSection)
    wandb: WandbSection = field(default_factory=WandbSection)

    def __post_init__(self) -> None:
        regression = self.model.name == "diffiqaR"
        check(not regression or self.dataset.labels is not None,
               "'dataset.labels' must name the quality labels to train DifFIQA(R) on (diffiqa_score.py output)")
        check(regression or self.dataset.labels is None,
               "'dataset.labels' is for DifFIQA(R) (model.name: diffiqaR); eDifFIQA trains on prepare_data.py outputs")
        for group in (self.optimizer.group_1, self.optimizer.group_2):
            check(group is None or regression or group.params in ("mlp", "base_model"),
                   f"optimizer group 'params' '{group.params if group else ''}' names a DifFIQA(R) part; eDifFIQA "
                   "has 'mlp' and 'base_model'")
