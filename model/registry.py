"""The facts about the published models: named eDifFIQA variants and backbones, their official config strings, where
their weights come from, and the defaults. ``build_model("ediffiqaL")`` (:mod:`model.build`) replaces the import
strings of the official configs; checkpoints are read and checked in :mod:`model.checkpoint`.

Nothing here imports torch: the scripts take their command-line choices from this table, and ``--help`` must not wait
for torch. A backbone names the function that builds it as a ``"module:function"`` string, imported when a model is
built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from utils.errors import ConfigError

__all__ = ["BACKBONES", "Backbone", "VARIANTS", "Variant", "WeightsSource", "KINDS", "DEFAULT_VARIANT", "DEFAULT_FR",
           "register_variant", "get_variant", "backbone_for_module", "variant_for_module",
           "official_modules", "backbone_names", "variant_names", "OFFICIAL_WEIGHTS_HELP", "BACKBONE_WEIGHTS_HELP"]


@dataclass(frozen=True)
class Backbone:
    """A face recognition backbone: ``builder`` is the ``"module:function"`` that builds it randomly initialised
    (:func:`model.build.build_backbone`), ``modules`` the module strings official config files name it by
    (``base_model.module`` of model configs, ``fr_model.module`` of FR configs)."""

    name: str                          # --backbone of extract_embeddings.py
    builder: str
    modules: Tuple[str, ...] = ()


def _table(*entries):
    return {entry.name: entry for entry in entries}


BACKBONES: Dict[str, Backbone] = _table(
    Backbone("iresnet18", "model.iresnet:iresnet18", ("model.iresnet.iresnet18",)),
    Backbone("iresnet34", "model.iresnet:iresnet34", ("model.iresnet.iresnet34",)),
    Backbone("iresnet50", "model.iresnet:iresnet50", ("model.iresnet.iresnet50",)),
    # The official DifFIQA code loads its CosFace iResNet-100 through model_weights.iresnet.load_cosface.
    Backbone("iresnet100", "model.iresnet:iresnet100",
             ("model.iresnet.iresnet100", "model_weights.iresnet.load_cosface")),
    Backbone("iresnet200", "model.iresnet:iresnet200"),
    Backbone("mobilefacenet", "model.mobilefacenet:mobilefacenet", ("model.mobilenet.MobileFaceNet",)),
)


@dataclass(frozen=True)
class WeightsSource:
    """A published weights file that scripts fetch by name (``utils.download.fetch``)."""

    name: str                          # as published (also its name in torch's cache)
    url: str
    size: Optional[int] = None         # in bytes, when known
    sha256: Optional[str] = None       # when known; without it the first download's is recorded and checked later


#: The MIT mirror of the authors' eDifFIQA checkpoints (the official layout) in yakhyo/face-image-quality-assessment.
_MIRROR = "https://github.com/yakhyo/face-image-quality-assessment/releases/download/weights/"


#: Kinds of variants: an eDifFIQA model distilled with label-optimised targets (backbone + MLP head), or DifFIQA(R), a
#: regressor of DifFIQA labels (backbone + linear layer). The kind decides the model built around the backbone, the
#: model config that describes it and the training objective.
KINDS = ("ediffiqa", "regression")


@dataclass(frozen=True)
class Variant:
    """One published model: everything the scripts need to know about it. ``init_weights`` is the backbone
    initialisation the official recipe trains from (insightface CosFace backbones; None: random) and ``config`` its
    official model config file (what ``base.model`` names), both relative to the repository as the official model
    configs write them. ``onnx_faster_on``: the CPU kinds (``utils.runtime.cpu_kind``) where ONNX Runtime scored it
    faster than torch in fp32 (``benchmarks/inference_throughput.py``, docs/benchmarks.md); ``--backend auto`` picks
    ONNX Runtime there."""

    name: str                          # as in the official inference_config.yaml (ediffiqaL)
    title: str                         # as in the paper (eDifFIQA(L))
    backbone: str                      # a key of BACKBONES
    kind: str                          # one of KINDS
    init_weights: Optional[str]
    config: str
    weights: Optional[WeightsSource] = None  # its published checkpoint (official layout), fetched when none is given
    onnx: Optional[WeightsSource] = None     # its published ONNX file, fetched for the ONNX backends likewise
    onnx_faster_on: Tuple[str, ...] = ()


VARIANTS: Dict[str, Variant] = _table(
    Variant("ediffiqaL", "eDifFIQA(L)", "iresnet100", "ediffiqa", "./weights/r100.pth",
            "./configs/ediffiqaL_config.yaml",
            weights=WeightsSource("ediffiqa_l.pth", _MIRROR + "ediffiqa_l.pth"), onnx_faster_on=("avx2",)),
    Variant("ediffiqaM", "eDifFIQA(M)", "iresnet50", "ediffiqa", "./weights/r50.pth",
            "./configs/ediffiqaM_config.yaml",
            weights=WeightsSource("ediffiqa_m.pth", _MIRROR + "ediffiqa_m.pth"), onnx_faster_on=("avx2",)),
    Variant("ediffiqaS", "eDifFIQA(S)", "iresnet18", "ediffiqa", "./weights/r18.pth",
            "./configs/ediffiqaS_config.yaml",
            weights=WeightsSource("ediffiqa_s.pth", _MIRROR + "ediffiqa_s.pth"), onnx_faster_on=("avx2", "amx")),
    Variant("ediffiqaT", "eDifFIQA(T)", "mobilefacenet", "ediffiqa", None,
            "./configs/ediffiqaT_config.yaml",
            weights=WeightsSource("ediffiqa_t.pth", _MIRROR + "ediffiqa_t.pth"), onnx_faster_on=("avx2",),
            # The OpenCV Model Zoo's export of the same model, for the ONNX backends.
            onnx=WeightsSource("ediffiqa_tiny_jun2024.onnx",
                               "https://huggingface.co/opencv/face_image_quality_assessment_ediffiqa/resolve/main/"
                               "ediffiqa_tiny_jun2024.onnx", 7272678,
                               "9426c899cc0f01665240cb7d9e7f98e18e24e456c178326c771a43da289bfc6a")),
    # The regression baseline the paper compares against (authors' diffiqa(r).pth; keys base.*, linear.*).
    Variant("diffiqaR", "DifFIQA(R)", "iresnet100", "regression", "./weights/r100.pth",
            "./configs/diffiqaR_model_config.yaml"),
)

#: The variant scripts use when none is named (the official inference config's).
DEFAULT_VARIANT = "ediffiqaL"
#: The face recognition model of DifFIQA labels when no FR config is given: the official CosFace iResNet-100 (its
#: official module string) and where this project looks for its weights (relative to the repository).
DEFAULT_FR = ("model_weights.iresnet.load_cosface", "./weights/cosface_r100.pth")

OFFICIAL_WEIGHTS_HELP = (
    "the official weights are published by the authors (OneDrive link in the eDifFIQA README, and "
    "huggingface.co/LSIbabnikz); the yakhyo/face-image-quality-assessment GitHub release mirror "
    "(ediffiqa_{t,s,m,l}.pth, fetched by name when no file is given) uses the same layout"
)

#: Where the insightface backbones come from (training inits, FR models, teacher embeddings).
BACKBONE_WEIGHTS_HELP = (
    "the recipe starts from insightface's CosFace backbones (glint360k_cosface_r100_fp16_0.1 family of the "
    "arcface_torch model zoo: r100.pth, r50.pth, r18.pth)"
)


def register_variant(variant: Variant) -> None:
    """Add ``variant`` to :data:`VARIANTS` (its backbone must be registered); every script and the CLI choices see
    it."""
    if variant.backbone not in BACKBONES:
        raise ConfigError(f"variant '{variant.name}' names unknown backbone '{variant.backbone}'")
    if variant.kind not in KINDS:
        raise ConfigError(f"variant '{variant.name}' has unknown kind '{variant.kind}'; one of {', '.join(KINDS)}")
    VARIANTS[variant.name] = variant


def get_variant(name: str) -> Variant:
    """The registered variant ``name`` (else a :class:`ConfigError` listing them)."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(variant_names())}") from None


def backbone_for_module(module: str) -> Optional[str]:
    """The backbone an official module string names (``model.iresnet.iresnet18`` -> ``iresnet18``), or None."""
    return next((b.name for b in BACKBONES.values() if module in b.modules), None)


def variant_for_module(module: str, kind: str = "ediffiqa") -> Optional[str]:
    """The variant of ``kind`` whose backbone an official model config's ``base_model.module`` names, or None."""
    backbone = backbone_for_module(module)
    return next((v.name for v in VARIANTS.values() if v.kind == kind and v.backbone == backbone), None)


def official_modules(kind: Optional[str] = None) -> List[str]:
    """Module strings accepted in config files: of the backbones of ``kind``'s variants, or of every backbone."""
    backbones = {v.backbone for v in VARIANTS.values() if kind is None or v.kind == kind}
    return [m for b in BACKBONES.values() if kind is None or b.name in backbones for m in b.modules]


def backbone_names() -> List[str]:
    """Registered backbone names, sorted."""
    return sorted(BACKBONES)


def variant_names(kind: Optional[str] = None) -> List[str]:
    """Registered variant names (of ``kind``, when given), sorted."""
    return sorted(v.name for v in VARIANTS.values() if kind is None or v.kind == kind)
