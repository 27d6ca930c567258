"""The evaluation config (``configs/evaluate_config.yaml``): pairs with score and embedding files, or benchmarks
(insightface ``.bin`` files, image folders with a ``pairs.txt``) with FR checkpoints and quality methods scored here."""
from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import List, Optional

from model.registry import VARIANTS, backbone_names, variant_names
from utils.config import check, check_batch

__all__ = ["Benchmark", "FRModel", "Method", "EvaluateConfig", "DEFAULT_SCORES", "figure_label"]

#: The quality file of a method that names neither a file nor a variant (inference.py's default output).
DEFAULT_SCORES = "./quality_scores/quality-scores.pkl"

#: What a benchmark, FR model or method label may hold: it names cache files and keys (``NAME/<index>``).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _control(text: str) -> str:
    """The first control character of ``text`` (newline, tab, any other of Unicode's category Cc, or a line or
    paragraph separator) as ``U+XXXX``; empty when there is none."""
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    return f"U+{ord(bad):04X}" if bad is not None else ""


def figure_label(label: str) -> str:
    """An FR model's label as it names its EDC figure in pairs mode (``<name>_<label>.png``): every run of other
    characters becomes one ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


@dataclass
class Benchmark:
    """One verification set: ``name`` keys its images (``NAME/<index>``) and names its column; ``path`` is an
    insightface ``.bin`` file or an image folder holding an LFW-style ``pairs.txt``."""

    name: str = ""
    path: str = ""

    def __post_init__(self) -> None:
        check(bool(_NAME.fullmatch(self.name)), f"benchmark name {self.name!r} must be letters, digits, '.', '_' or "
              "'-' (it names the images' keys NAME/<index> and cache files), e.g. lfw=PATH")
        check(bool(self.path), f"benchmark '{self.name}' has no path; give NAME=PATH (a .bin file or a folder with "
              "pairs.txt)")


@dataclass
class FRModel:
    """One face recognition model: a label and its per-image embeddings (or the pairs' similarity column), or, with
    benchmarks, its insightface checkpoint (``backbone`` inferred from the shapes when not named)."""

    label: str = "FR"
    embeddings: Optional[str] = None
    checkpoint: Optional[str] = None
    backbone: Optional[str] = None

    def __post_init__(self) -> None:
        check(self.embeddings is None or self.checkpoint is None, f"FR model '{self.label}' names both "
              "'embeddings' and 'checkpoint'; give one")
        check(self.backbone is None or self.backbone in backbone_names(), f"FR model '{self.label}': backbone "
              f"'{self.backbone}' is not known; choose one of: {', '.join(backbone_names())}")


@dataclass
class Method:
    """One quality method: a label and its ``quality-scores.pkl``/``.csv``, or a variant (``model``) scored here
    with ``weights`` (null: fetched by name as inference.py does). The label defaults to the variant's title. With
    benchmarks, entries of one label with other scores files are one method given as a file per benchmark."""

    label: Optional[str] = None
    scores: Optional[str] = None
    model: Optional[str] = None
    weights: Optional[str] = None

    def __post_init__(self) -> None:
        check(self.model is None or self.model in VARIANTS, f"method model '{self.model}' is not a variant; choose "
              f"one of: {', '.join(variant_names())}")
        check(self.model is None or self.scores is None, f"method '{self.label or self.model}' names both 'scores' "
              "and 'model'; give one")
        check(self.weights is None or self.model is not None, f"method '{self.label}' names 'weights' but no "
              "'model' (the variant they belong to)")
        if self.label is None:
            self.label = VARIANTS[self.model].title if self.model is not None else "quality"
        if self.model is None and self.scores is None:
            self.scores = DEFAULT_SCORES


@dataclass
class EvaluateConfig:
    """The evaluation config."""

    pairs: str = "./pairs.csv"
    benchmarks: List[Benchmark] = field(default_factory=list)  # given: pairs is not used
    fr_models: List[FRModel] = field(default_factory=list)
    methods: List[Method] = field(default_factory=list)
    fmr: float = 1e-3
    discard_limits: List[float] = field(default_factory=lambda: [0.2, 0.3])
    variant: str = "fixed"
    on_missing: str = "fail"
    output: str = "./evaluation"  # not ./figures: the repository's documentation figures
    name: str = "edc"
    device: str = "auto"              # benchmarks: where embeddings and qualities are computed
    batch_size: Optional[int] = None  # benchmarks: images per batch; null: per device, as the scripts pick it
    verbose: bool = True

    def method_labels(self) -> List[str]:
        """The methods' labels in order, each once (a method given as a scores file per benchmark is one method)."""
        return list(dict.fromkeys(m.label or "" for m in self.methods))

    def __post_init__(self) -> None:
        check(0.0 < self.fmr < 1.0, f"'fmr' must be between 0 and 1, got {self.fmr}")
        check(bool(self.discard_limits) and all(0.0 < d <= 1.0 for d in self.discard_limits),
              f"'discard_limits' must be values in (0, 1], got {self.discard_limits}")
        check(self.variant in ("fixed", "crfiqa"),
              f"'variant' must be 'fixed' (Schlett et al., default) or 'crfiqa', got '{self.variant}'")
        check(self.on_missing in ("fail", "drop"), f"'on_missing' must be 'fail' or 'drop', got '{self.on_missing}'")
        check(self.name not in ("", ".", "..") and "/" not in self.name and os.sep not in self.name
              and not _control(self.name), f"'name' must be a plain file name stem (no folder, not empty, no "
              f"control character), got {self.name!r}; give the folder with --output")
        check(bool(self.methods), "no quality method given: add 'methods' to the config, --scores LABEL=FILE or "
              "--method")
        check_batch(self.batch_size, "batch_size")
        for kind, labels in (("benchmark", [b.name for b in self.benchmarks]),
                             ("FR model", [f.label for f in self.fr_models])):
            twice = sorted({x for x in labels if labels.count(x) > 1})
            check(not twice, f"{kind} {twice[0]!r} is given twice; labels must differ" if twice else "")
        labels = [m.label for m in self.methods]
        # With benchmarks, one method's scores may come as a file per set (CR-FIQA writes one per .bin): a label
        # given again with another scores file adds a file; anything else given twice is a mistake.
        twice = sorted({x for x in labels if labels.count(x) > 1
                        and not (self.benchmarks and all(m.model is None for m in self.methods if m.label == x))})
        check(not twice, f"method {twice[0]!r} is given twice; labels must differ (with --benchmark, a label given "
              "again with another scores file adds that file: one file per benchmark)" if twice else "")
        files = [(m.label, m.scores) for m in self.methods if m.model is None]
        again = next((f for i, f in enumerate(files) if f in files[:i]), None)
        check(again is None, f"method {again[0]!r} names the scores file '{again[1]}' twice; give it once"
              if again else "")
        for kind, labels in (("FR model", [f.label for f in self.fr_models]),
                             ("method", [m.label or "" for m in self.methods])):
            bad = next((x for x in labels if _control(x)), None)
            check(bad is None, f"{kind} label {bad!r} holds a control character ({_control(bad or '')}); a label "
                  "is one line of text (it names a row of the table and a curve of the figure)")
        folded = [b.name.lower() for b in self.benchmarks]
        alike = [b.name for b, f in zip(self.benchmarks, folded) if folded.count(f) > 1]
        check(not alike, f"benchmarks {', '.join(repr(n) for n in alike[:2])} differ only in case; name them apart "
              "(they name cache files, one file on a case-insensitive file system)" if alike else "")
        if self.benchmarks:
            check(bool(self.fr_models), "benchmarks need FR models: add fr_models with a 'checkpoint' (--fr "
                  "NAME=CHECKPOINT)")
            for fr in self.fr_models:
                check(fr.checkpoint is not None, f"FR model '{fr.label}': benchmarks need its 'checkpoint' (--fr "
                      f"{fr.label}=CHECKPOINT), not embeddings")
        else:
            # One figure per FR model, named by its label: two labels that name one file (also on a file system
            # that ignores case) would overwrite one figure.
            stems: dict = {}
            for fr in self.fr_models:
                other = stems.setdefault(figure_label(fr.label).lower(), fr.label)
                check(other == fr.label, f"FR models {other!r} and {fr.label!r} would both write the figure "
                      f"{self.name}_{figure_label(fr.label)}.png (labels name figure files, other characters than "
                      "letters, digits, '.', '_' and '-' read as '_', case ignored); give labels that differ there")
            for fr in self.fr_models:
                check(fr.checkpoint is None, f"FR model '{fr.label}' has a checkpoint, which only benchmarks use "
                      "(--benchmark NAME=PATH); give embeddings with --pairs")
            for method in self.methods:
                check(method.model is None, f"method '{method.label}' is a variant scored here, which only "
                      "benchmarks do (--benchmark NAME=PATH); give its scores file with --pairs")
