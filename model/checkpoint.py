"""Reading, checking and loading checkpoints of the registry's models (the official layout: the wrapper's plain
``state_dict``), with one description of what keeps a file from loading."""
from __future__ import annotations

import functools
import logging
import os
import zipfile
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from model.build import build_backbone, build_model, build_variant
from model.registry import (
    BACKBONE_WEIGHTS_HELP,
    BACKBONES,
    OFFICIAL_WEIGHTS_HELP,
    VARIANTS,
    get_variant,
    variant_names,
)
from utils.errors import CheckpointError
from utils.io import torch_load, torch_load_reason

__all__ = ["read_state_dict", "check_finite", "strip_prefixes", "describe_mismatch", "expected_shapes",
           "identify_variant", "check_checkpoint", "load_weights", "load_backbone", "find_fr_backbone",
           "fr_backbone_of", "load_fr_backbone", "FR_WRAPPERS", "create_model"]

_logger = logging.getLogger(__name__)

Shapes = Dict[str, Tuple[int, ...]]


def _shapes(state_dict: Mapping[str, torch.Tensor]) -> Shapes:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


#: In-place random fills (what weight initialisation calls), skipped on meta tensors.
_RANDOM_FILLS = frozenset({"normal_", "uniform_", "random_", "bernoulli_", "exponential_", "geometric_",
                           "log_normal_", "cauchy_"})


class _MetaBuild(TorchFunctionMode):
    """Modules built inside are on the meta device, their random initialisation skipped: on meta tensors it computes
    nothing, but runs through PyTorch's Python reference kernels, whose first call imports ``torch._dynamo`` (about a
    second of CPU, once per process)."""

    def __enter__(self):
        self._device = torch.device("meta")
        self._device.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self._device.__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in _RANDOM_FILLS:  # Tensor.normal_(t, ...), nn.init.normal_(tensor=t)
            tensor = args[0] if args else kwargs.get("tensor")
            if getattr(tensor, "is_meta", False):
                return tensor
        return func(*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _built_shapes(backbone: str, kind: Optional[str]) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    """Key -> shape of ``backbone`` alone (``kind`` None) or of a model of ``kind`` on it, built on the meta device:
    no memory and no init cost, only the table."""
    with _MetaBuild():
        module = build_backbone(backbone) if kind is None else build_variant(backbone, kind)
    return tuple(_shapes(module.state_dict()).items())


def expected_shapes(name: str) -> Shapes:
    """Key -> shape of variant ``name``'s state dict, in its order (what a strict load needs)."""
    variant = get_variant(name)
    return dict(_built_shapes(variant.backbone, variant.kind))


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


def _file_label(path: str, label: Optional[str]) -> str:
    return label if label is not None else f"weights file '{path}'"


def _what_it_holds(obj: object) -> str:
    """A short description of a checkpoint's content for messages: its type, size and a few keys."""
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:4]]
        tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
        return (f"a dict of {len(obj)} entries ({tensors} tensors)"
                + (f", keys {', '.join(keys)}{' ...' if len(obj) > 4 else ''}" if keys else ""))
    return f"a {type(obj).__name__}"


def _load_reason(exc: BaseException, path: str) -> str:
    """:func:`utils.io.torch_load_reason`, except for a zip archive without a checkpoint's layout (every member in one
    top folder, ``<name>/data.pkl``), for which torch's C++ reader gives its own source location: what it holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        members = None
    if members is not None and not any(m.count("/") == 1 and m.endswith("/data.pkl") for m in members):
        held = ", ".join(members[:3]) + (" ..." if len(members) > 3 else "") if members else "nothing"
        return f"it is a zip archive that is not a PyTorch checkpoint: it holds {held}, not <name>/data.pkl"
    return torch_load_reason(exc, path)


def read_state_dict(path: str, key: str = "--weights or the config key 'weights'",
                    source: str = OFFICIAL_WEIGHTS_HELP, label: Optional[str] = None,
                    wrappers: Tuple[str, ...] = ("model", "state_dict")) -> Dict[str, torch.Tensor]:
    """The flat ``state_dict`` on the CPU of a weights file, read safely (``weights_only=True``): a plain state dict
    or a checkpoint holding one under the first of ``wrappers`` it has (training checkpoints: ``model`` or
    ``state_dict``). Anything else is a one-line :class:`CheckpointError` naming the flag or config ``key`` that gives
    the path, where such files come from (``source``), the file as ``label`` (default ``weights file '<path>'``) and
    what it holds."""
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file '{path}' not found; {source}; pass its path with {key}")
    name = _file_label(path, label)
    try:
        obj = torch_load(path)
    except Exception as exc:  # torch raises several types for corrupt, foreign or code-carrying files
        raise CheckpointError(f"cannot read {name} as a PyTorch checkpoint ({_load_reason(exc, path)})") from None
    if isinstance(obj, Mapping):
        for wrapper in wrappers:
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{name} does not hold a state_dict (a dict of tensors); it holds {_what_it_holds(obj)}")
    check_finite(obj, path, label)
    return strip_prefixes(obj)


def check_finite(state_dict: Mapping[str, torch.Tensor], path: str, label: Optional[str] = None) -> None:
    """Refuse a checkpoint whose parameters or buffers hold NaN or infinite values (a diverged or corrupt run): a
    :class:`CheckpointError` naming the file (``label``, default ``weights file '<path>'``), the first such tensor and
    how many there are."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{_file_label(path, label)} holds NaN or infinite values in {len(bad)} tensor(s) "
                              f"(first: {bad[0]}); it comes from a diverged or damaged run")


def describe_mismatch(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, Tuple[int, ...]]) -> str:
    """What keeps ``state_dict`` from loading strictly where key -> shape ``expected`` is needed ("" if nothing)."""
    have = _shapes(state_dict)
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


def identify_variant(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Return the variant whose keys and shapes the state dict matches exactly, or None."""
    have = _shapes(state_dict)
    return next((name for name in variant_names() if have == expected_shapes(name)), None)


def _bare_backbone(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The backbone whose keys and shapes the state dict matches exactly, or None."""
    have = _shapes(state_dict)
    return next((name for name in BACKBONES if have == dict(_built_shapes(name, None))), None)


def check_checkpoint(path: str, name: str, label: Optional[str] = None,
                     fix: str = "use --model {held}") -> Dict[str, torch.Tensor]:
    """The state dict of ``path`` once it is known to be variant ``name``'s checkpoint: read safely, finite, with
    exactly the variant's keys and shapes (what a strict load needs); else a :class:`CheckpointError` that names
    the file as ``label`` and says what it holds (another variant, a bare backbone, something else); ``fix``
    (``{held}``: the variant the file holds) says what the calling script's user changes then."""
    state_dict = read_state_dict(path, label=label)
    variant = get_variant(name)
    expected = expected_shapes(name)
    mismatch = describe_mismatch(state_dict, expected)
    if mismatch:
        file = _file_label(path, label)
        held = identify_variant(state_dict)
        if held is not None:
            raise CheckpointError(f"{file} holds {VARIANTS[held].title} ('{held}'), not "
                                  f"{variant.title}; {fix.format(held=held)} or the {variant.title} weights")
        backbone = _bare_backbone(state_dict)
        if backbone is not None:
            raise CheckpointError(f"{file} is a bare {backbone} backbone, not an eDifFIQA checkpoint "
                                  f"(backbone + quality head); {OFFICIAL_WEIGHTS_HELP}")
        raise CheckpointError(f"{file} does not match {variant.title}: {mismatch}")
    return state_dict


def load_weights(model: nn.Module, path: str, name: str) -> None:
    """Load a checkpoint into ``model`` (variant ``name``) strictly, as :func:`check_checkpoint` checks it."""
    model.load_state_dict(check_checkpoint(path, name), strict=True)


def load_backbone(name: str, path: str, into: Optional[nn.Module] = None,
                  key: str = "--weights", fix: Union[str, Callable[[str], str]] = "use --backbone {held}",
                  source: str = BACKBONE_WEIGHTS_HELP) -> nn.Module:
    """Load an insightface-layout checkpoint strictly into backbone ``name``: a new one in eval mode, or ``into``
    (left in its mode; nothing new is built, so no random numbers are drawn).

    The ``base_model.*`` part of an eDifFIQA checkpoint and the ``base.*`` part of a DifFIQA(R) one are accepted too.
    ``key`` names the flag or config key that gives ``path``, and ``fix`` (``{held}``: the backbone the file holds)
    what to change in the calling script when the file holds another backbone (or a function of ``held``), and
    ``source`` where such a file comes from, for messages.
    """
    state_dict = read_state_dict(path, key, source)
    for prefix in ("base_model.", "base."):  # the backbone of an eDifFIQA or a DifFIQA(R) checkpoint
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            break
    backbone = into if into is not None else build_backbone(name)
    mismatch = describe_mismatch(state_dict, _shapes(backbone.state_dict()))
    if mismatch:
        held = _bare_backbone(state_dict)
        hint = f"it holds a {held} backbone; {fix(held) if callable(fix) else fix.format(held=held)}" if held else \
            mismatch
        raise CheckpointError(f"weights file '{path}' does not match backbone {name}: {hint}")
    backbone.load_state_dict(state_dict, strict=True)
    return backbone if into is not None else backbone.eval()


#: Keys under which face recognition checkpoints wrap their state dict, tried in this order: arcface_torch's resume
#: checkpoints (``state_dict_backbone``), then the usual training checkpoints.
FR_WRAPPERS = ("state_dict_backbone", "backbone", "model", "state_dict")


def find_fr_backbone(state_dict: Mapping[str, torch.Tensor], name: str) -> Optional[Dict[str, torch.Tensor]]:
    """The part of ``state_dict`` that is backbone ``name``, under the backbone's own keys, or None.

    The part is the keys under one prefix (``backbone.``, ``features.module.``, ... or none), found where the
    backbone's first key is. It must hold every key of the backbone with its shape (BatchNorm's
    ``num_batches_tracked`` counters, unused in eval mode, may be absent) and no other key under the backbone's
    modules (so a deeper network of the same family is not taken for a shallower one); keys of other modules (a
    classification head beside it) are left out."""
    expected = dict(_built_shapes(name, None))
    first = next(iter(expected))
    prefixes = sorted({k[:len(k) - len(first)] for k in state_dict if k == first or k.endswith("." + first)},
                      key=len)
    modules = {k.split(".")[0] for k in expected}
    for prefix in prefixes:
        part = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        part = {k: v for k, v in part.items() if k.split(".")[0] in modules}
        for k in expected:
            if k not in part and k.endswith("num_batches_tracked"):
                part[k] = torch.zeros((), dtype=torch.int64)
        if _shapes(part) == expected:
            return {k: part[k] for k in expected}
    return None


def load_fr_backbone(path: str, backbone: Optional[str] = None, key: str = "--fr", warn: bool = True) -> nn.Module:
    """A face recognition model from an insightface-layout checkpoint, in eval mode on the CPU: any backbone of
    :data:`model.registry.BACKBONES`, named by ``backbone`` or found from the checkpoint's keys and shapes.

    Accepted: a plain state dict or one wrapped in a dict (:data:`FR_WRAPPERS`), its keys under any prefix
    (``module.``, ``backbone.``, ``model.``, ``features.module.`` ...) and beside other modules (a classification
    head). A file that is missing, unreadable, holds NaN or infinite weights, another backbone than the one named, or
    no backbone the registry knows is a one-line :class:`CheckpointError` that says what it holds; ``key`` names the
    flag or config key that gives ``path``; ``warn``: warn when it is a quality model's checkpoint."""
    name, part = _fr_part(path, backbone, key, warn)
    # Built on the meta device and given the file's tensors (as float32, as a built model holds them): no random
    # initialisation that the weights would overwrite, and no copy.
    with _MetaBuild():
        model = build_backbone(name)
    model.load_state_dict({k: v.float().contiguous() if v.is_floating_point() else v for k, v in part.items()},
                          strict=True, assign=True)
    return model.eval()


def fr_backbone_of(path: str, backbone: Optional[str] = None, key: str = "--fr") -> str:
    """The backbone of the face recognition checkpoint ``path`` (``backbone`` when named and held), with the errors
    and the warning of :func:`load_fr_backbone`, without building the model."""
    return _fr_part(path, backbone, key, warn=True)[0]


def _fr_part(path: str, backbone: Optional[str], key: str, warn: bool) -> Tuple[str, Dict[str, torch.Tensor]]:
    """``(backbone name, its tensors)`` of the checkpoint ``path``; see :func:`load_fr_backbone`."""
    if backbone is not None and backbone not in BACKBONES:
        build_backbone(backbone)  # its ConfigError lists the backbones
    state_dict = read_state_dict(path, key, BACKBONE_WEIGHTS_HELP, wrappers=FR_WRAPPERS)
    names = [backbone] if backbone is not None else list(BACKBONES)
    for name in names:
        part = find_fr_backbone(state_dict, name)
        if part is not None:
            variant = identify_variant(state_dict) if any(k.startswith(("base_model.", "base.")) for k in state_dict) \
                else None
            if variant is not None and warn:  # allowed (its backbone is an FR network), but rarely what was meant
                _logger.warning("weights file '%s' (%s) holds the quality model %s ('%s'); its %s backbone is used "
                                "as the face recognition model", path, key, VARIANTS[variant].title, variant, name)
            return name, part
    held = next((name for name in BACKBONES
                 if name != backbone and find_fr_backbone(state_dict, name) is not None), None)
    if held is not None:
        raise CheckpointError(f"weights file '{path}' ({key}) holds a {held} backbone, not {backbone}; name it "
                              f"{held}:PATH or leave the backbone out")
    shown = ", ".join(f"{k} {list(v.shape)}" for k, v in list(state_dict.items())[:3])
    wanted = f"backbone {backbone}" if backbone is not None else (
        f"a backbone the registry knows ({', '.join(BACKBONES)})")
    raise CheckpointError(f"weights file '{path}' ({key}) does not hold {wanted} in insightface's layout: it holds "
                          f"{len(state_dict)} tensors (e.g. {shown}); other layouts (CurricularFace's IR-101, ...) "
                          "are not covered")


def create_model(name: str, weights: Optional[str] = None, device: torch.device | str = "cpu",
                 return_feat: bool = False) -> nn.Module:
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
