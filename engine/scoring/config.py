"""The inference config: the official ``inference_config.yaml`` keys as typed dataclasses, plus this project's
additions (weights, precision, backend, photos)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from utils.config import LoaderParams, check_seed

__all__ = ["InferenceConfig"]


@dataclass
class BaseSection:
    """``base``: run settings (official keys)."""

    verbose: bool = True
    save_path: str = "./quality_scores"
    seed: int = 42069
    device: str = "auto"
    flush_every: int = 1024           # images between flushes of the part files: a kill loses at most these
    limit: Optional[int] = None       # score at most this many new images, then stop (run again to continue)

    def __post_init__(self) -> None:
        check_seed(self.seed, "base.seed")
        if self.flush_every < 1:
            raise ValueError(f"'base.flush_every' must be at least 1, got {self.flush_every}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"'base.limit' must be at least 1, got {self.limit}")


@dataclass
class DatasetSection:
    """``dataset``: where the images are (official key ``loc``)."""

    loc: str = "./example_images"


@dataclass
class InferenceLoaderParams(LoaderParams):
    """``dataloader.params``: DataLoader settings (official key names); None picks a value for the device."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.drop_last:
            raise ValueError("'dataloader.params.drop_last: true' would leave the last images unscored; remove it")


@dataclass
class LoaderSection:
    """``dataloader``."""

    params: InferenceLoaderParams = field(default_factory=InferenceLoaderParams)


@dataclass
class InferenceConfig:
    """The whole inference config: the official keys plus ``weights`` and ``precision``."""

    base: BaseSection = field(default_factory=BaseSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    dataloader: LoaderSection = field(default_factory=LoaderSection)
    model: str = "ediffiqaL"
    weights: Optional[str] = None
    precision: str = "fp32"
    backend: str = "torch"
    fold_bn: bool = True
    gpu_decode: bool = False          # CUDA: decode JPEGs on the GPU (nvJPEG), in batches; other formats on the CPU
    align: bool = False
    largest_face: bool = False
    min_face_probability: float = 0.9
    save_crops: Optional[str] = None
    annotate: Optional[str] = None

    def __post_init__(self) -> None:
        from engine.scoring.backends import BACKENDS
        from utils.runtime import PRECISIONS
        from model.registry import VARIANTS, variant_names

        if self.backend not in BACKENDS:
            raise ValueError(f"'backend' is '{self.backend}'; choose one of: {', '.join(BACKENDS)}")
        if not 0.0 <= self.min_face_probability <= 1.0:
            raise ValueError(f"'min_face_probability' must be in [0, 1], got {self.min_face_probability}")

        if self.model not in VARIANTS:
            raise ValueError(f"'model' is '{self.model}'; choose one of: {', '.join(variant_names())}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"'precision' is '{self.precision}'; choose one of: {', '.join(PRECISIONS)}")
        if not self.align:
            for key, flag in (("largest_face", "--largest-face"), ("save_crops", "--save-crops"),
                              ("annotate", "--annotate")):
                if getattr(self, key):
                    raise ValueError(f"'{key}' ({flag}) only applies to photos: add align: true (--align)")

    @property
    def weights_path(self) -> str:
        """The checkpoint: ``weights`` if set, else ``weights/<model>.pth`` (relative to the working directory)."""
        return self.weights or os.path.join("weights", f"{self.model}.pth")
