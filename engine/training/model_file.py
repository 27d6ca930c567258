"""The model a training config names, read once into a :class:`ModelSpec`: ``base.model`` (an official model config
file, or a variant name) or DifFIQA(R)'s official ``model.config``.

An official model config (``configs/ediffiqa{L,M,S,T}_config.yaml``, ``configs/diffiqaR_model_config.yaml``) names
its backbone (``base_model.module``, allow-listed) and the backbone's initialisation (``base_model.weights``); every
other key it carries has one legal value, the official one (:data:`OFFICIAL_VALUES`), and may be left out. Paths that
the official configs write for bundled files resolve against the repository (:func:`utils.paths.repo_path`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Mapping, Optional, Set, Tuple

from engine.training.config import TrainConfig
from model.registry import BACKBONES, DEFAULT_VARIANT, VARIANTS, official_modules, variant_for_module, variant_names
from utils.config import NO_EFFECT_KEYS, check, key, load_yaml, short
from utils.errors import ConfigError
from utils.paths import repo_path

__all__ = ["OFFICIAL_TRANSFORMS", "OFFICIAL_VALUES", "ModelSpec", "BackboneSection", "read_model_file",
           "resolve_model"]

#: The one preprocessing the models are trained and scored with (official ``base_model.transformations``).
OFFICIAL_TRANSFORMS = {
    "trans_1": {"module": "torchvision.transforms.Resize", "params": {"size": [112, 112]}},
    "trans_2": {"module": "torchvision.transforms.ToTensor"},
    "trans_3": {"module": "torchvision.transforms.Normalize", "params": {"mean": [0.5] * 3, "std": [0.5] * 3}},
}

#: The keys of an official model config that have one legal value, by the kind of model it describes: the
#: preprocessing and the model around the backbone (eDifFIQA's MLP head and wrapper, DifFIQA(R)'s linear head).
OFFICIAL_VALUES: Dict[str, Dict[str, Any]] = {
    "ediffiqa": {"base_model.transformations": OFFICIAL_TRANSFORMS, "mlp.module": "model.mlp.MLP",
                 "mlp.params.in_dim": 512, "mlp.params.hidden_dim": 1024, "mlp.params.out_dim": 1,
                 "ediffiqa.module": "model.ediffiqa.eDifFIQA"},
    "regression": {"base_model.transformations": OFFICIAL_TRANSFORMS, "model_head.module": "torch.nn.Linear",
                   "model_head.params": {"in_features": 512, "out_features": 1}},
}
#: The keys that say which model a file describes: the backbone and its initialisation ("" = random).
_NAMING_KEYS = ("base_model.module", "base_model.weights")


def _unofficial(dotted: str, value: Any, official: Any) -> str:
    """The one error for a key whose only legal value is ``official`` ("" when ``value`` is it). Transformations
    compare without empty ``params`` and keys other than ``module`` and ``params``."""
    shown = short(official)
    if official is OFFICIAL_TRANSFORMS:
        value = {k: {"module": v.get("module"), **({"params": v["params"]} if v.get("params") else {})}
                 if isinstance(v, dict) else v for k, v in value.items()} if isinstance(value, dict) else value
        shown = ("preprocessing (Resize [112, 112], ToTensor, Normalize mean/std 0.5), the one the models are trained "
                 "and scored with")
    return "" if value == official else f"'{dotted}' must be the official {shown}, got {short(value)}"


def _leaves(raw: Mapping[str, Any], known: Set[str], prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """``(dotted key, value)`` of ``raw``, descending into sections that lead to a key of ``known``."""
    for name, value in raw.items():
        dotted = f"{prefix}{name}"
        if dotted in known or not any(k.startswith(dotted + ".") for k in known):
            yield dotted, value
        elif not isinstance(value, Mapping):
            raise ConfigError(f"'{dotted}' must be a mapping of keys, got {short(value)}")
        else:
            yield from _leaves(value, known, dotted + ".")


@dataclass(frozen=True)
class ModelSpec:
    """What a training config's model resolves to: a registry variant, its kind (which picks the training
    objective), the backbone initialisation (None: random) and what named it, for messages (``variant ediffiqaS``,
    or the model config file)."""

    name: str
    kind: str
    backbone_weights: Optional[str]
    source: str


def read_model_file(path: str) -> ModelSpec:
    """An official model config: eDifFIQA's (``base_model``, ``mlp``, ``ediffiqa``) or DifFIQA(R)'s (``base_model``,
    ``model_head``). An unknown key, a backbone module that is not allow-listed or a key that differs from its
    official value is a :class:`ConfigError` naming the file and the key."""
    raw = load_yaml(path)
    kind = "regression" if "model_head" in raw else "ediffiqa"
    official = OFFICIAL_VALUES[kind]
    known = {*official, *_NAMING_KEYS}
    given = {"base_model.module": BACKBONES[VARIANTS[DEFAULT_VARIANT].backbone].modules[0], "base_model.weights": ""}
    try:
        for dotted, value in _leaves(raw, known | set(NO_EFFECT_KEYS)):
            if dotted in NO_EFFECT_KEYS:
                continue
            if dotted not in known:
                raise ConfigError(f"unknown key '{dotted}' (known keys: {', '.join(sorted(known))})")
            problem = _unofficial(dotted, value, official[dotted]) if dotted in official else (
                "" if isinstance(value, str) else f"'{dotted}' must be str, got {short(value)}")
            if problem:
                raise ConfigError(problem)
            given[dotted] = value
        name = variant_for_module(given["base_model.module"], kind)
        if name is None:
            raise ConfigError(f"'base_model.module' is '{given['base_model.module']}'; allowed: "
                              f"{', '.join(official_modules(kind))}")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    weights = given["base_model.weights"]
    return ModelSpec(name, kind, repo_path(weights) or None, path)


def resolve_model(cfg: TrainConfig) -> ModelSpec:
    """The model ``cfg`` names (:attr:`TrainConfig.model_source`): a variant name (``ediffiqaS``, ``diffiqaR``) or the
    path of an official model config file, eDifFIQA's in ``base.model`` or DifFIQA(R)'s in ``model.config``;
    ``base.backbone_weights``, when set, replaces the backbone initialisation ("": random). Neither a variant nor a
    readable model config, or a model config under the other kind's key, is a :class:`ConfigError`."""
    value = cfg.model_source
    if value in VARIANTS:
        variant = VARIANTS[value]
        weights = repo_path(variant.init_weights, shipped=True) if variant.init_weights else None
        spec = ModelSpec(value, variant.kind, weights, f"variant {value}")
    else:
        path = repo_path(value)
        if not os.path.isfile(path):
            raise ConfigError(f"the model '{value}' (base.model or model.config) is neither a model config file nor a "
                              f"variant name ({', '.join(variant_names())}); the official model configs are "
                              f"{', '.join(v.config for v in VARIANTS.values())}")
        spec = read_model_file(path)
    # model.config is DifFIQA(R)'s official key and base.model eDifFIQA's; a variant name may stand in base.model.
    by_model_config = cfg.model is not None
    if by_model_config != (spec.kind == "regression") and (by_model_config or value not in VARIANTS):
        raise ConfigError(f"'{spec.source}' is {'not ' if by_model_config else ''}a DifFIQA(R) model; name "
                          "DifFIQA(R)'s model config with model.config, eDifFIQA's with base.model")
    if cfg.base.backbone_weights is not None:
        spec = dataclasses.replace(spec, backbone_weights=cfg.base.backbone_weights or None)
    return spec


@dataclass
class BackboneSection:
    """A backbone section of an official config file (``fr_model`` of DifFIQA's FR config): module string,
    initialisation, and the official preprocessing."""

    module: str = field(default_factory=lambda: BACKBONES[VARIANTS[DEFAULT_VARIANT].backbone].modules[0])
    weights: str = ""                  # backbone initialisation (an insightface CosFace backbone); "" = random
    transformations: Dict[str, Any] = field(default_factory=lambda: dict(OFFICIAL_TRANSFORMS))

    def __post_init__(self) -> None:
        problem = _unofficial(key("transformations"), self.transformations, OFFICIAL_TRANSFORMS)
        check(not problem, problem)
