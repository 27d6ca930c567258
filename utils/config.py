"""Strict YAML -> dataclass config loading.

Every section is a dataclass. Unknown keys and values of the wrong type are :class:`ConfigError`s that name the
key (``base.device``) and the file, so a typo fails loudly instead of being ignored. No key can import code.
"""
from __future__ import annotations

import contextvars
import dataclasses
import os
import re
import reprlib
import typing
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

from utils.errors import ConfigError, first_line

__all__ = ["load_yaml", "from_dict", "to_dict", "set_by_path", "load_config", "check", "check_batch",
           "check_workers", "key", "short", "parse_set", "NO_EFFECT_KEYS", "MAX_SEED", "MAX_BATCH", "MAX_WORKERS",
           "RunBase", "FolderBase", "LoaderParams"]

T = TypeVar("T")


#: Bounds a config file must keep: configs are a few kilobytes, a few levels deep; anything far beyond is a mistake
#: or an attack (YAML aliases can expand a small file into billions of nodes).
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 64
MAX_CONFIG_NODES = 100_000


class _TooBig(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting bound (its composer recurses) and a bound on the size the document has
    once every alias is expanded, checked before anything is constructed."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise _TooBig(f"it is nested more than {MAX_CONFIG_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_CONFIG_NODES:
            raise _TooBig(f"its aliases expand to more than {MAX_CONFIG_NODES} values")
        return self.construct_document(node)


def _expanded_size(node: Any, memo: Dict[int, int]) -> int:
    """Nodes of ``node`` with every alias expanded (aliases share nodes, so each is counted once per use)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_CONFIG_NODES + 1  # a node that contains itself expands without end
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo)
            if size > MAX_CONFIG_NODES:
                break
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo) + _expanded_size(v, memo)
            if size > MAX_CONFIG_NODES:
                break
    memo[key] = size
    return size


def load_yaml(path: str) -> Dict[str, Any]:
    """Read a YAML mapping from ``path``; any problem is a one-line :class:`ConfigError`, and a file beyond the
    bounds above is refused in well under a second."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' not found")
    try:
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file '{path}' is larger than {MAX_CONFIG_BYTES >> 20} MiB; a config is a few "
                              "kilobytes of keys")
        with open(path, "r", encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except _TooBig as exc:
        raise ConfigError(f"config file '{path}' is refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, not a {type(data).__name__}")
    return data


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 4, 4, 2


def short(value: Any) -> str:
    """A short form of a value for messages (never the whole of a huge one)."""
    return _SHORT.repr(value)


#: The dotted prefix of the section being built by :func:`from_dict`, so that range checks name their full key.
_PREFIX: contextvars.ContextVar[str] = contextvars.ContextVar("config_prefix", default="")


def key(name: str) -> str:
    """The full dotted key of field ``name`` of the section being validated (``optimizer.group_2.limit``)."""
    return _PREFIX.get() + name


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        return "mapping"
    if origin is list:
        return "list"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and dataclasses.is_dataclass(others[0]):  # a section's own error names the key inside
            return _coerce(value, others[0], key, source)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {short(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping of keys, got {short(value)}")
        return from_dict(tp, value, source=source, prefix=f"{key}.")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {short(value)}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {short(value)}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        # The official configs write flags as 0/1.
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as text
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {short(value)}")


#: The one list of keys that official config files carry but that change nothing here: accepted, so that the
#: official files run unchanged, and dropped when read. Why each changes nothing:
NO_EFFECT_KEYS = {
    "loss.epsilon": "the official train.py reads epsilon from loss.quality.params.epsilon; it ignores this key too",
    "ediffiqa.params.return_feat": "training always returns features, as the official train.py does",
    "diff_params.sampling_timesteps": "DifFIQA never samples from pure noise, so the sampling steps are never used",
}


def _no_effect(dotted: str, value: Any) -> bool:
    """``dotted`` is in :data:`NO_EFFECT_KEYS`, or is a section holding only such keys."""
    if dotted in NO_EFFECT_KEYS:
        return True
    return isinstance(value, Mapping) and bool(value) and all(_no_effect(f"{dotted}.{k}", v) for k, v in value.items())


def from_dict(cls: Type[T], data: Mapping[str, Any], source: str = "config", prefix: str = "") -> T:
    """Build dataclass ``cls`` (nested sections recursively) from a mapping, rejecting unknown keys and wrong types;
    messages name the file or origin ``source`` and the key, ``prefix`` being the dotted path of ``data``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: Dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields and _no_effect(f"{prefix}{key}", value):
            continue
        if key not in fields:
            known = ", ".join(prefix + name for name in fields)
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (known keys here: {known})")
        kwargs[key] = _coerce(value, hints[key], prefix + str(key), source)
    token = _PREFIX.set(prefix)
    try:
        obj = cls(**kwargs)
    except ValueError as exc:  # __post_init__ range checks
        raise ConfigError(f"{source}: {exc}") from None
    finally:
        _PREFIX.reset(token)
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict (for saving the resolved config)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def set_by_path(data: Dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted == "a.b"``, creating sections as needed."""
    node = data
    parts = dotted.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            section = ".".join(parts[:depth + 1])
            raise ConfigError(f"'{section}' must be a mapping of keys, got {short(child)}")
        node = child
    node[parts[-1]] = value


#: Ranges that values must keep so that they cannot crash a run later (torch seeds are 64-bit; larger batches or
#: worker counts than these are typos, not settings).
MAX_SEED = 2 ** 63 - 1
MAX_BATCH = 1 << 20
MAX_WORKERS = 256


def check_batch(value: Optional[int], key: str) -> None:
    check(value is None or 1 <= value <= MAX_BATCH, f"'{key}' must be between 1 and {MAX_BATCH}, got {value}")


def check_workers(value: Optional[int], key: str) -> None:
    check(value is None or 0 <= value <= MAX_WORKERS, f"'{key}' must be between 0 and {MAX_WORKERS}, got {value}")


@dataclasses.dataclass
class RunBase:
    """The ``base`` keys every script's config has: the seed (official 42069) and the device. Each script's ``base``
    section extends it; a different default is documented where it is set."""

    seed: int = 42069
    device: str = "auto"               # auto (CUDA when present), cpu, cuda or cuda:N

    def __post_init__(self) -> None:
        check(0 <= self.seed <= MAX_SEED, f"'{key('seed')}' must be between 0 and 2**63 - 1, got {self.seed}")


@dataclasses.dataclass
class FolderBase(RunBase):
    """``base`` of the scripts that score a folder resumably (``inference.py``, ``diffiqa_score.py``)."""

    flush_every: int = 1024            # images between fsyncs of the part files (a kill loses only the batch being
                                       # written; this bounds what a power cut loses)
    limit: Optional[int] = None        # score this many new images in whole batches (at least one), then stop

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.flush_every >= 1, f"'{key('flush_every')}' must be at least 1, got {self.flush_every}")
        check(self.limit is None or self.limit >= 1, f"'{key('limit')}' must be at least 1, got {self.limit}")


@dataclasses.dataclass
class LoaderParams:
    """DataLoader settings under their official key names (``dataloader.params`` of inference,
    ``dataloader.{train,val}.params`` of training); None picks a value for the device."""

    batch_size: Optional[int] = None
    num_workers: Optional[int] = None
    pin_memory: bool = True
    drop_last: bool = False
    prefetch_factor: Optional[int] = None
    persistent_workers: bool = False

    def __post_init__(self) -> None:
        check_batch(self.batch_size, key("batch_size"))
        check_workers(self.num_workers, key("num_workers"))
        check(self.prefetch_factor is None or 1 <= self.prefetch_factor <= 64,
              f"'{key('prefetch_factor')}' must be between 1 and 64, got {self.prefetch_factor}")


def check(condition: bool, message: str) -> None:
    """Range check for a config dataclass's ``__post_init__``: :func:`from_dict` turns the error into a
    :class:`ConfigError` naming the file."""
    if not condition:
        raise ValueError(message)


def load_config(cls: Type[T], path: Optional[str], overrides: Mapping[str, Any],
                sets: Sequence[str] = (), flags: Optional[Mapping[str, str]] = None) -> T:
    """The YAML file at ``path`` (none: defaults only) as ``cls``, with command-line ``overrides`` (dotted key ->
    value; ``None``: not given) and then the ``KEY=VALUE`` items of ``--set`` (:func:`parse_set`) applied.

    A value the command line gave is blamed on it, not on the file: a message about its key says ``command line``
    and names the flag (``flags``: dotted key -> the flag that set it, ``--workers``; else ``--set``)."""
    raw: Dict[str, Any] = load_yaml(path) if path else {}
    given: Dict[str, str] = {}
    for dotted, value in overrides.items():
        if value is not None:
            set_by_path(raw, dotted, value)
            given[dotted] = (flags or {}).get(dotted, "the command line")
    for item in sets:
        dotted, value = parse_set(cls, item)
        set_by_path(raw, dotted, value)
        given[dotted] = "--set"
    source = path or "command line"
    try:
        return from_dict(cls, raw, source=source)
    except ConfigError as exc:
        raise _blame_the_command_line(exc, source, given) from None


def _blame_the_command_line(exc: ConfigError, source: str, given: Mapping[str, str]) -> ConfigError:
    """``exc`` (``"<source>: ... '<key>' ..."``) as the command line's error when the command line gave ``key``
    (``given``: dotted key -> flag): ``command line (--workers): 'dataloader.train.params.num_workers' ...``."""
    message = str(exc)
    if not message.startswith(f"{source}: "):
        return exc
    for dotted in sorted(given, key=len, reverse=True):
        if f"'{dotted}'" in message:
            return ConfigError(f"command line ({given[dotted]}): {message[len(source) + 2:]}")
    return exc


def _field_type(cls: Any, dotted: str) -> Any:
    """The schema type of ``dotted`` in dataclass ``cls`` (``Any`` inside a free mapping); None for an unknown key."""
    tp: Any = cls
    for part in dotted.split("."):
        args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is Union else [tp]
        section = next((a for a in args if dataclasses.is_dataclass(a)), None)
        if section is not None:
            hints = typing.get_type_hints(section)
            if part not in hints:
                return None
            tp = hints[part]
        elif typing.get_origin(tp) is dict or tp is Any:
            tp = Any
        else:
            return None
    return tp


def parse_set(cls: Any, item: str) -> Tuple[str, Any]:
    """``--set KEY=VALUE`` as ``(key, value)``: the value is read as YAML (``5``, ``1e-4``, ``null``, ``[0.9, 0.99]``),
    except for a text key, which takes it as it is (``null`` still clears an optional one); the schema checks it.
    Not ``KEY=VALUE``, an unknown key or a value that is not YAML is a :class:`ConfigError`."""
    if "=" not in item:
        raise ConfigError(f"--set takes KEY=VALUE (e.g. --set base.seed=7), got {short(item)}")
    shown = item if len(item) <= 80 else item[:77] + "..."
    dotted, text = item.split("=", 1)
    dotted = dotted.strip()
    tp = _field_type(cls, dotted)
    if tp is None:
        if _no_effect(dotted, None):
            return dotted, text
        raise ConfigError(f"--set {shown}: unknown key '{dotted}'")
    args = set(typing.get_args(tp)) if typing.get_origin(tp) is Union else {tp}
    if str in args and text.strip() != "null":
        return dotted, text
    if float in args:  # YAML 1.1 reads 1e-3 as text; the schema says it is a number
        try:
            return dotted, float(text)
        except ValueError:
            pass
    try:
        return dotted, yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, _TooBig) as exc:
        raise ConfigError(f"--set {shown}: the value is not valid YAML ({first_line(exc)})") from None
