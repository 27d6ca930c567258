"""Named eDifFIQA variants and backbones, and loading of their checkpoints.

``build_model("ediffiqaL")`` replaces the import strings of the official configs. ``load_weights`` accepts the
official checkpoint layout (plain ``state_dict`` of the wrapper), strips ``module.`` (DDP) and ``_orig_mod.``
(``torch.compile``) prefixes, unwraps ``{"model": ...}``/``{"state_dict": ...}`` training checkpoints, and refuses a
file of another variant with a message naming the variant it holds.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from model.diffiqa_r import DifFIQAR
from model.ediffiqa import EDifFIQA
from model.iresnet import iresnet18, iresnet34, iresnet50, iresnet100, iresnet200
from model.mlp import MLP
from model.mobilefacenet import mobilefacenet
from utils.errors import CheckpointError, ConfigError
from utils.io import torch_load, torch_load_reason

__all__ = ["BACKBONES", "Backbone", "VARIANTS", "Variant", "WeightsSource", "KINDS", "DEFAULT_VARIANT", "DEFAULT_FR",
           "register_variant", "backbone_for_module", "variant_for_module", "official_modules", "backbone_names",
           "OFFICIAL_WEIGHTS_HELP", "BACKBONE_WEIGHTS_HELP", "build_backbone", "build_model",
           "read_state_dict", "identify_variant", "check_checkpoint", "load_weights", "load_backbone", "create_model",
           "variant_names", "strip_prefixes", "describe_mismatch", "check_finite"]

_logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Backbone:
    """A face recognition backbone.

    Attributes:
        name: Registry name (``--backbone`` of ``extract_embeddings.py``).
        build: Builds it randomly initialised.
        modules: The module strings official config files name it by (``base_model.module`` of model configs,
            ``fr_model.module`` of FR configs).
    """

    name: str
    build: Callable[[], nn.Module]
    modules: Tuple[str, ...] = ()


def _table(*entries):
    return {entry.name: entry for entry in entries}


BACKBONES: Dict[str, Backbone] = _table(
    Backbone("iresnet18", iresnet18, ("model.iresnet.iresnet18",)),
    Backbone("iresnet34", iresnet34, ("model.iresnet.iresnet34",)),
    Backbone("iresnet50", iresnet50, ("model.iresnet.iresnet50",)),
    # The official DifFIQA code loads its CosFace iResNet-100 through model_weights.iresnet.load_cosface.
    Backbone("iresnet100", iresnet100, ("model.iresnet.iresnet100", "model_weights.iresnet.load_cosface")),
    Backbone("iresnet200", iresnet200),
    Backbone("mobilefacenet", mobilefacenet, ("model.mobilenet.MobileFaceNet",)),
)


def _ediffiqa(backbone: str) -> Callable[[], nn.Module]:
    return lambda: EDifFIQA(build_backbone(backbone), MLP(512, 1024, 1))


def _regression(backbone: str) -> Callable[[], nn.Module]:
    return lambda: DifFIQAR(build_backbone(backbone))


@dataclass(frozen=True)
class WeightsSource:
    """A published weights file that scripts fetch by name (``utils.download.fetch``).

    Attributes:
        name: Its file name, kept as published (also its name in torch's cache).
        url: Where it is published.
        size: Its size in bytes, when known.
        sha256: Its SHA-256, when known; without it the first download's is recorded and checked afterwards.
    """

    name: str
    url: str
    size: Optional[int] = None
    sha256: Optional[str] = None


#: The MIT mirror of the authors' eDifFIQA checkpoints (the official layout) in yakhyo/face-image-quality-assessment.
_MIRROR = "https://github.com/yakhyo/face-image-quality-assessment/releases/download/weights/"


#: Kinds of variants: an eDifFIQA model distilled with label-optimised targets, or DifFIQA(R), a regressor of
#: DifFIQA labels.
KINDS = ("ediffiqa", "regression")


@dataclass(frozen=True)
class Variant:
    """One published model: everything the scripts need to know about it.

    Attributes:
        name: Registry name, as in the official ``inference_config.yaml`` (``ediffiqaL``).
        title: Name used in the paper (``eDifFIQA(L)``).
        backbone: Key of :data:`BACKBONES`.
        kind: One of :data:`KINDS`; decides the training objective and which model config describes it.
        init_weights: The backbone initialisation the official recipe trains from (insightface CosFace backbones),
            or None for random weights.
        config: Its official model config file (what ``base.model`` names), relative to the working directory.
        build: Builds the randomly initialised model (backbone first, then the head, as the official code).
        weights: Its published checkpoint (official layout), fetched when no file is given.
        onnx: Its published ONNX file, fetched for the ONNX backends when no file is given.
        onnx_faster_on: The CPU kinds (``utils.runtime.cpu_kind``) where ONNX Runtime scored it faster than torch in
            fp32 (``benchmarks/inference_throughput.py``; the figures are in docs/benchmarks.md); ``--backend auto``
            picks ONNX Runtime there.
    """

    name: str
    title: str
    backbone: str
    kind: str
    init_weights: Optional[str]
    config: str
    build: Callable[[], nn.Module]
    weights: Optional[WeightsSource] = None
    onnx: Optional[WeightsSource] = None
    onnx_faster_on: Tuple[str, ...] = ()


VARIANTS: Dict[str, Variant] = _table(
    Variant("ediffiqaL", "eDifFIQA(L)", "iresnet100", "ediffiqa", "./weights/r100.pth",
            "./configs/ediffiqaL_config.yaml", _ediffiqa("iresnet100"),
            weights=WeightsSource("ediffiqa_l.pth", _MIRROR + "ediffiqa_l.pth"), onnx_faster_on=("avx2",)),
    Variant("ediffiqaM", "eDifFIQA(M)", "iresnet50", "ediffiqa", "./weights/r50.pth",
            "./configs/ediffiqaM_config.yaml", _ediffiqa("iresnet50"),
            weights=WeightsSource("ediffiqa_m.pth", _MIRROR + "ediffiqa_m.pth"), onnx_faster_on=("avx2",)),
    Variant("ediffiqaS", "eDifFIQA(S)", "iresnet18", "ediffiqa", "./weights/r18.pth",
            "./configs/ediffiqaS_config.yaml", _ediffiqa("iresnet18"),
            weights=WeightsSource("ediffiqa_s.pth", _MIRROR + "ediffiqa_s.pth"), onnx_faster_on=("avx2", "amx")),
    Variant("ediffiqaT", "eDifFIQA(T)", "mobilefacenet", "ediffiqa", None,
            "./configs/ediffiqaT_config.yaml", _ediffiqa("mobilefacenet"),
            weights=WeightsSource("ediffiqa_t.pth", _MIRROR + "ediffiqa_t.pth"), onnx_faster_on=("avx2",),
            # The OpenCV Model Zoo's export of the same model, for the ONNX backends.
            onnx=WeightsSource("ediffiqa_tiny_jun2024.onnx",
                               "https://huggingface.co/opencv/face_image_quality_assessment_ediffiqa/resolve/main/"
                               "ediffiqa_tiny_jun2024.onnx", 7272678,
                               "9426c899cc0f01665240cb7d9e7f98e18e24e456c178326c771a43da289bfc6a")),
    # The regression baseline the paper compares against (authors' diffiqa(r).pth; keys base.*, linear.*).
    Variant("diffiqaR", "DifFIQA(R)", "iresnet100", "regression", "./weights/r100.pth",
            "./configs/diffiqaR_model_config.yaml", _regression("iresnet100")),
)

#: The variant scripts use when none is named (the official inference config's).
DEFAULT_VARIANT = "ediffiqaL"
#: The face recognition model of DifFIQA labels when no FR config is given: the official CosFace iResNet-100 (its
#: official module string) and where this project looks for its weights.
DEFAULT_FR = ("model_weights.iresnet.load_cosface", "./weights/cosface_r100.pth")


def register_variant(variant: Variant) -> None:
    """Add ``variant`` to :data:`VARIANTS` (its backbone must be registered); every script and the CLI choices see
    it."""
    if variant.backbone not in BACKBONES:
        raise ConfigError(f"variant '{variant.name}' names unknown backbone '{variant.backbone}'")
    if variant.kind not in KINDS:
        raise ConfigError(f"variant '{variant.name}' has unknown kind '{variant.kind}'; one of {', '.join(KINDS)}")
    VARIANTS[variant.name] = variant
    _expected_shapes.cache_clear()


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


OFFICIAL_WEIGHTS_HELP = (
    "the official weights are published by the authors (OneDrive link in the eDifFIQA README, and "
    "huggingface.co/LSIbabnikz); the yakhyo/face-image-quality-assessment GitHub release mirror "
    "(ediffiqa_{t,s,m,l}.pth, fetched by name when no file is given) uses the same layout"
)


def variant_names(kind: Optional[str] = None) -> List[str]:
    """Registered variant names (of ``kind``, when given), sorted."""
    return sorted(v.name for v in VARIANTS.values() if kind is None or v.kind == kind)


def _get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(variant_names())}") from None


def build_backbone(name: str) -> nn.Module:
    """Build a randomly initialised backbone by name (see :data:`BACKBONES`)."""
    try:
        builder = BACKBONES[name].build
    except KeyError:
        raise ConfigError(f"unknown backbone '{name}'; choose one of: {', '.join(backbone_names())}") from None
    return builder()


def build_model(name: str, return_feat: bool = False) -> nn.Module:
    """Build a randomly initialised variant (``ediffiqaL/M/S/T`` an :class:`EDifFIQA`, ``diffiqaR`` a
    :class:`DifFIQAR`); both have ``backbone`` and ``embed_and_score``."""
    model = _get_variant(name).build()
    model.return_feat = bool(return_feat)
    return model


@functools.lru_cache(maxsize=None)
def _expected_shapes(name: str) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    # Built on the meta device: no memory and no init cost, only the key -> shape table.
    with torch.device("meta"):
        model = build_model(name)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Keys without the ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in ("module.", "_orig_mod."):
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        out[key] = value
    return out


#: Where the insightface backbones come from (training inits, FR models, teacher embeddings).
BACKBONE_WEIGHTS_HELP = (
    "the recipe starts from insightface's CosFace backbones (glint360k_cosface_r100_fp16_0.1 family of the "
    "arcface_torch model zoo: r100.pth, r50.pth, r18.pth)"
)


def _file_label(path: str, label: Optional[str]) -> str:
    return label if label is not None else f"weights file '{path}'"


def read_state_dict(path: str, key: str = "--weights or the config key 'weights'",
                    source: str = OFFICIAL_WEIGHTS_HELP, label: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read a weights file safely (``weights_only=True``) and return its flat ``state_dict`` on the CPU.

    Accepts a plain state dict or a training checkpoint holding one under ``model`` or ``state_dict``.
    Raises :class:`CheckpointError` with a one-line reason for anything else; ``key`` names the flag or config key
    that gives the path, ``source`` where such files come from, ``label`` how messages name the file (default
    ``weights file '<path>'``).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file '{path}' not found; {source}; pass its path with {key}")
    name = _file_label(path, label)
    try:
        obj = torch_load(path)
    except Exception as exc:  # torch raises several types for corrupt, foreign or code-carrying files
        raise CheckpointError(f"cannot read {name} as a PyTorch checkpoint ({torch_load_reason(exc)})") from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{name} does not hold a state_dict (a dict of tensors)")
    check_finite(obj, path, label)
    return strip_prefixes(obj)


def check_finite(state_dict: Mapping[str, torch.Tensor], path: str, label: Optional[str] = None) -> None:
    """Refuse a checkpoint whose parameters or buffers hold NaN or infinite values (a diverged or corrupt run).

    Raises:
        CheckpointError: Names the file (``label``, default ``weights file '<path>'``), the first such tensor and how
            many there are.
    """
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{_file_label(path, label)} holds NaN or infinite values in {len(bad)} tensor(s) "
                              f"(first: {bad[0]}); it comes from a diverged or damaged run")


def identify_variant(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Return the variant whose keys and shapes the state dict matches exactly, or None."""
    have = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name in variant_names():
        if have == dict(_expected_shapes(name)):
            return name
    return None


def describe_mismatch(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, Tuple[int, ...]]) -> str:
    """What keeps ``state_dict`` from loading strictly where key -> shape ``expected`` is needed ("" if nothing)."""
    have = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [k for k in expected if k not in have]
    unexpected = [k for k in have if k not in expected]
    wrong = [k for k in expected if k in have and have[k] != expected[k]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {list(have[k])}, model {list(expected[k])})")
    return "; ".join(parts)


def _bare_backbone(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    have = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name in BACKBONES:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build_backbone(name).state_dict().items()}
        if have == expected:
            return name
    return None


def check_checkpoint(path: str, name: str, label: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The state dict of ``path`` once it is known to be variant ``name``'s checkpoint: read safely, finite, with
    exactly the variant's keys and shapes (what a strict load needs).

    Args:
        path: The checkpoint file.
        name: A registered variant.
        label: How messages name the file (default ``weights file '<path>'``).

    Raises:
        CheckpointError: The file is missing or unreadable, or holds another variant, a bare backbone or
            something else; the message says which.
    """
    state_dict = read_state_dict(path, label=label)
    variant = _get_variant(name)
    if dict(_expected_shapes(name)) != {k: tuple(v.shape) for k, v in state_dict.items()}:
        file = _file_label(path, label)
        held = identify_variant(state_dict)
        if held is not None:
            raise CheckpointError(f"{file} holds {VARIANTS[held].title} ('{held}'), not "
                                  f"{variant.title}; use --model {held} or the {variant.title} weights")
        backbone = _bare_backbone(state_dict)
        if backbone is not None:
            raise CheckpointError(f"{file} is a bare {backbone} backbone, not an eDifFIQA checkpoint "
                                  f"(backbone + quality head); {OFFICIAL_WEIGHTS_HELP}")
        raise CheckpointError(f"{file} does not match {variant.title}: "
                              f"{describe_mismatch(state_dict, dict(_expected_shapes(name)))}")
    return state_dict


def load_weights(model: EDifFIQA, path: str, name: str) -> None:
    """Load a checkpoint into ``model`` (variant ``name``) with strict key and shape matching.

    Raises:
        CheckpointError: See :func:`check_checkpoint`.
    """
    model.load_state_dict(check_checkpoint(path, name), strict=True)


def load_backbone(name: str, path: str, into: Optional[nn.Module] = None,
                  key: str = "--weights", fix: str = "use --backbone {held}") -> nn.Module:
    """Load an insightface-layout checkpoint strictly into backbone ``name``: a new one in eval mode, or ``into``
    (left in its mode; nothing new is built, so no random numbers are drawn).

    The ``base_model.*`` part of an eDifFIQA checkpoint and the ``base.*`` part of a DifFIQA(R) one are accepted too.
    ``key`` names the flag or config key that gives ``path``, and ``fix`` (``{held}``: the backbone the file holds)
    what to change in the calling script when the file holds another backbone, for messages.
    """
    state_dict = read_state_dict(path, key, BACKBONE_WEIGHTS_HELP)
    for prefix in ("base_model.", "base."):  # the backbone of an eDifFIQA or a DifFIQA(R) checkpoint
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            break
    backbone = into if into is not None else build_backbone(name)
    expected = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state_dict.items()}
    if have != expected:
        held = _bare_backbone(state_dict)
        hint = f"it holds a {held} backbone; {fix.format(held=held)}" if held else (
            f"{len(set(expected) - set(have))} missing and {len(set(have) - set(expected))} unexpected keys, "
            f"{sum(1 for k in expected if k in have and have[k] != expected[k])} shape mismatches")
        raise CheckpointError(f"weights file '{path}' does not match backbone {name}: {hint}")
    backbone.load_state_dict(state_dict, strict=True)
    return backbone if into is not None else backbone.eval()


def create_model(name: str, weights: Optional[str] = None, device: torch.device | str = "cpu",
                 return_feat: bool = False) -> EDifFIQA:
    """Build a variant, load its weights (if given) and return it in eval mode on ``device``.

    Example:
        >>> model = create_model("ediffiqaT", "weights/ediffiqaT.pth")  # doctest: +SKIP
        >>> quality = model(batch)  # (B, 3, 112, 112) -> (B, 1)  # doctest: +SKIP
    """
    model = build_model(name, return_feat=return_feat)
    if weights is not None:
        load_weights(model, weights, name)
    else:
        _logger.warning("no weights given for %s: the model is randomly initialised", name)
    return model.to(device).eval()
