"""The DifFIQA labelling config: the official DifFIQA ``inference_config.yaml`` section ``inference``, key for key,
plus this project's additions in ``base`` and ``dataset``.

``inference.train_config`` names the denoiser's training config (its ``unet_params`` and ``diff_params`` give the
architecture) and ``inference.fr_config`` the face recognition model config (``fr_model.module``, allow-listed, and
``fr_model.weights``), as in the official code; null takes the official denoiser and CosFace iResNet-100.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from engine.denoiser.config import DiffusionTrainConfig
from engine.training.model_file import BackboneSection
from model.registry import DEFAULT_FR, backbone_for_module, official_modules
from utils.config import FolderBase, check, check_batch, check_workers, from_dict, load_yaml
from utils.errors import ConfigError
from utils.paths import repo_path
from utils.runtime import PRECISIONS

__all__ = ["ScoreConfig", "resolve_fr", "resolve_denoiser"]

#: More repeats than this would hold ``2 x repeats`` noisy copies of each image in memory for no gain (official 10).
MAX_REPEATS = 1000



@dataclass
class InferenceSection:
    """``inference``: the official section."""

    used_timesteps: int = 5
    repeats: int = 10
    images_loc: str = "./data/faces"
    train_config: Optional[str] = None   # the denoiser's training config (unet_params, diff_params); null: official
    model_loc: str = "./weights/diff_pretrain.pt"
    fr_config: Optional[str] = None      # the FR model config (fr_model.module, .weights); null: CosFace iResNet-100
    save_loc: str = "./outputs/diffiqa"
    batch_size: Optional[int] = None     # UNet inputs per call (official 64 -> 3 images); null: 64, or 256 on CUDA
    verbose: bool = True

    def __post_init__(self) -> None:
        check(self.used_timesteps >= 1, "'inference.used_timesteps' must be at least 1")
        check(1 <= self.repeats <= MAX_REPEATS, f"'inference.repeats' must be between 1 and {MAX_REPEATS} (official: "
              f"10), got {self.repeats}")
        check_batch(self.batch_size, "inference.batch_size")
        # The paths the official config writes for bundled files name them from any folder; the denoiser's default
        # names the repository's file when it is missing too.
        self.train_config = self.train_config and repo_path(self.train_config)
        self.fr_config = self.fr_config and repo_path(self.fr_config)
        self.model_loc = repo_path(self.model_loc, shipped=self.model_loc == InferenceSection.model_loc)


@dataclass
class ScoreBase(FolderBase):
    """``base``: this project's run settings (the official DifFIQA config has no ``base``). The seed defaults to 0,
    not the eDifFIQA configs' 42069: the labels of earlier releases were made with 0."""

    seed: int = 0
    official: bool = False          # reproduce the official computation draw for draw
    precision: Optional[str] = None  # null: fp32; with official on CUDA, tf32 (PyTorch's default, what it ran with)
    keys: str = "relative"          # pickle keys: paths relative to images_loc (as vggface2-qs.pkl), or "joined"
    ema: bool = False               # the denoiser's EMA weights (official scoring uses the others)
    fr_weights: Optional[str] = None  # overrides the FR weights of inference.fr_config
    figure_tiles: int = 8           # quality-scores.png: this many lowest and highest labelled faces; 0: no figure

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.figure_tiles <= 64, f"'base.figure_tiles' must be between 0 (no figure) and 64, got "
              f"{self.figure_tiles}")
        check(self.precision is None or self.precision in PRECISIONS,
              f"'base.precision' must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        check(self.keys in ("relative", "joined"), f"'base.keys' must be relative or joined, got '{self.keys}'")


@dataclass
class ScoreDataset:
    """``dataset``: how the folder is read."""

    num_workers: Optional[int] = None
    order: str = "sorted"           # or "walk": the official os.walk order (with --official, the official draws)

    def __post_init__(self) -> None:
        check(self.order in ("sorted", "walk"), f"'dataset.order' must be sorted or walk, got '{self.order}'")
        check_workers(self.num_workers, "dataset.num_workers")


@dataclass
class ScoreConfig:
    """The whole labelling config."""

    inference: InferenceSection = field(default_factory=InferenceSection)
    base: ScoreBase = field(default_factory=ScoreBase)
    dataset: ScoreDataset = field(default_factory=ScoreDataset)


@dataclass
class FRFile:
    """An FR model config (official ``configs/fr_config.yaml``)."""

    fr_model: BackboneSection = field(default_factory=BackboneSection)

    def __post_init__(self) -> None:
        check(backbone_for_module(self.fr_model.module) is not None,
              f"'fr_model.module' is '{self.fr_model.module}'; allowed: {', '.join(official_modules())}")


def resolve_fr(cfg: ScoreConfig) -> Tuple[str, str]:
    """``(backbone name, weights path)`` from ``inference.fr_config`` (or the default) and ``base.fr_weights``."""
    module, weights = DEFAULT_FR
    if cfg.inference.fr_config is not None:
        parsed = from_dict(FRFile, load_yaml(cfg.inference.fr_config), source=cfg.inference.fr_config)
        module, weights = parsed.fr_model.module, parsed.fr_model.weights
    return backbone_for_module(module), cfg.base.fr_weights or repo_path(weights, shipped=weights == DEFAULT_FR[1])


def resolve_denoiser(cfg: ScoreConfig) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """The denoiser's ``(unet kwargs, diffusion kwargs)`` from ``inference.train_config`` (a :class:`ConfigError`
    when it is not a denoiser training config); ``(None, None)``: official."""
    path = cfg.inference.train_config
    if path is None:
        return None, None
    raw = load_yaml(path)
    if "unet_params" not in raw:
        raise ConfigError(f"'inference.train_config' is '{path}', which is not a denoiser training config (it has no "
                          "unet_params); name configs/diffusion_train_config.yaml or the one the denoiser was "
                          "trained with")
    parsed = from_dict(DiffusionTrainConfig, raw, source=path)
    return parsed.unet_params.build_kwargs(), parsed.diff_params.build_kwargs()
