"""Checkpoint files of the trainers: written through a temporary file, read back safely and checked for the format
a resumed run needs."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import torch

from utils.errors import ConfigError
from utils.io import atomic_open, torch_load, torch_load_reason

__all__ = ["save_checkpoint", "read_checkpoint"]


def save_checkpoint(path: str, obj: Any) -> None:
    """``torch.save`` through a temporary file, so a kill never leaves a half-written checkpoint."""
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def read_checkpoint(path: str, key: str, needed: Sequence[str] = (), version: Optional[int] = None,
                    what: str = "a resumable checkpoint of this project") -> Dict[str, Any]:
    """Load a checkpoint to resume from (``weights_only=True``) that has the keys ``needed`` and carries the format
    ``version`` (None: any, as the official denoiser's has none); messages name the config ``key`` and ``what`` it
    must be. Anything else (missing, unreadable, not a dict, another version, missing keys) is a
    :class:`ConfigError`."""
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: checkpoint '{path}' not found")
    try:
        state = torch_load(path)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise ConfigError(f"{key}: cannot read '{path}' ({torch_load_reason(exc, path)})") from None
    missing = [k for k in needed if not isinstance(state, dict) or k not in state]
    if not isinstance(state, dict) or missing or (version is not None and state.get("version") != version):
        detail = f" (needs keys {', '.join(needed)})" if missing else ""
        raise ConfigError(f"{key}: '{path}' is not {what}{detail}")
    return state
