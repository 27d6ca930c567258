"""The evaluation config (``configs/evaluate_config.yaml``)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from utils.config import check

__all__ = ["FRModel", "Method", "EvaluateConfig"]


@dataclass
class FRModel:
    """One face recognition model: a label and its per-image embeddings (or the pairs' similarity column)."""

    label: str = "FR"
    embeddings: Optional[str] = None


@dataclass
class Method:
    """One quality method: a label and its ``quality-scores.pkl``/``.csv``."""

    label: str = "quality"
    scores: str = "./quality_scores/quality-scores.pkl"


@dataclass
class EvaluateConfig:
    """The evaluation config."""

    pairs: str = "./pairs.csv"
    fr_models: List[FRModel] = field(default_factory=list)
    methods: List[Method] = field(default_factory=list)
    fmr: float = 1e-3
    discard_limits: List[float] = field(default_factory=lambda: [0.2, 0.3])
    variant: str = "fixed"
    on_missing: str = "fail"
    output: str = "./evaluation"  # not ./figures: the repository's documentation figures
    name: str = "edc"
    verbose: bool = True

    def __post_init__(self) -> None:
        check(0.0 < self.fmr < 1.0, f"'fmr' must be between 0 and 1, got {self.fmr}")
        check(bool(self.discard_limits) and all(0.0 < d <= 1.0 for d in self.discard_limits),
              f"'discard_limits' must be values in (0, 1], got {self.discard_limits}")
        check(self.variant in ("fixed", "crfiqa"),
              f"'variant' must be 'fixed' (Schlett et al., default) or 'crfiqa', got '{self.variant}'")
        check(self.on_missing in ("fail", "drop"), f"'on_missing' must be 'fail' or 'drop', got '{self.on_missing}'")
        check(self.name not in ("", ".", "..") and "/" not in self.name and os.sep not in self.name
              and "\0" not in self.name, f"'name' must be a plain file name stem (no folder, not empty), got "
              f"{self.name!r}; the folder is 'output' (--output)")
        check(bool(self.methods), "no quality method given: add 'methods' to the config or --scores LABEL=FILE")
