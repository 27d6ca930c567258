"""The inference config: the official ``inference_config.yaml`` keys as typed dataclasses, plus this project's
additions (weights, precision, backend, photos)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from engine.scoring import BACKENDS
from model.registry import DEFAULT_VARIANT, VARIANTS, variant_names
from utils.config import FolderBase, LoaderParams, check
from utils.paths import repo_path
from utils.runtime import PRECISIONS

__all__ = ["InferenceConfig"]


@dataclass
class BaseSection(FolderBase):
    """``base``: run settings (official keys ``verbose``, ``save_path``, ``seed``, ``device``)."""

    verbose: bool = True
    save_path: str = "./quality_scores"


@dataclass
class DatasetSection:
    """``dataset``: where the images are (official key ``loc``)."""

    loc: str = "./example_images"

    def __post_init__(self) -> None:
        self.loc = repo_path(self.loc)  # the official config's ./example_images is the repository's from any folder


@dataclass
class InferenceLoaderParams(LoaderParams):
    """``dataloader.params``: DataLoader settings (official key names); None picks a value for the device."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(not self.drop_last, "'dataloader.params.drop_last: true' would leave the last images unscored; remove it")


@dataclass
class InferenceLoader:
    """``dataloader``."""

    params: InferenceLoaderParams = field(default_factory=InferenceLoaderParams)


@dataclass
class InferenceConfig:
    """The whole inference config: the official keys plus ``weights`` and ``precision``."""

    base: BaseSection = field(default_factory=BaseSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    dataloader: InferenceLoader = field(default_factory=InferenceLoader)
    model: str = DEFAULT_VARIANT
    weights: Optional[str] = None     # null: weights/<model>.pth if it exists, else the published file, fetched
    precision: str = "fp32"
    backend: str = BACKENDS[0]       # the first of the backends is the default (the help says so)
    fold_bn: bool = True
    gpu_decode: bool = False          # CUDA: decode JPEGs on the GPU (nvJPEG), in batches; other formats on the CPU
    figure_tiles: int = 8             # quality-scores.png: this many lowest and highest scored faces; 0: no figure
    align: bool = False
    largest_face: bool = False
    min_face_probability: float = 0.9
    save_crops: Optional[str] = None
    annotate: Optional[str] = None

    def __post_init__(self) -> None:
        check(self.backend in BACKENDS, f"'backend' is '{self.backend}'; choose one of: {', '.join(BACKENDS)}")
        check(0 <= self.figure_tiles <= 64, f"'figure_tiles' must be between 0 (no figure) and 64, got "
              f"{self.figure_tiles}")
        check(0.0 <= self.min_face_probability <= 1.0,
              f"'min_face_probability' must be in [0, 1], got {self.min_face_probability}")
        check(self.model in VARIANTS, f"'model' is '{self.model}'; choose one of: {', '.join(variant_names())}")
        check(self.precision in PRECISIONS,
              f"'precision' is '{self.precision}'; choose one of: {', '.join(PRECISIONS)}")
        if not self.align:
            for name, flag in (("largest_face", "--largest-face"), ("save_crops", "--save-crops"),
                               ("annotate", "--annotate")):
                check(not getattr(self, name), f"'{name}' ({flag}) only applies to photos: add align: true (--align)")

