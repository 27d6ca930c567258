"""Stand-ins for the official checkpoints, for tests and benchmarks: state dicts with exactly the official keys,
shapes and dtypes (from the manifests in ``model/manifests/``, read off the authors' files), filled with well-scaled
random values. Nothing in the scripts uses them."""
from __future__ import annotations

import functools
import json
import os
from typing import Dict, List, Tuple

import torch

__all__ = ["MANIFESTS", "load_manifest", "manifest_state_dict"]

#: Key, shape and dtype of every tensor of the official eDifFIQA(L/M/S/T) checkpoints, and of DifFIQA's denoiser.
MANIFESTS = {name: os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifests",
                                f"{name}_state_dict_manifest.json") for name in ("ediffiqa", "diffiqa")}
_DTYPES = {"float32": torch.float32, "int64": torch.int64}


@functools.lru_cache(maxsize=None)
def load_manifest(name: str = "ediffiqa") -> Dict[str, List[Tuple[str, List[int], str]]]:
    """The manifest ``name``: for ``ediffiqa``, variant -> ``[(key, shape, dtype), ...]``."""
    with open(MANIFESTS[name], "r", encoding="utf-8") as handle:
        return json.load(handle)


def manifest_state_dict(variant: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A state dict of ``variant`` with exactly the official keys, shapes and dtypes, filled with well-scaled random
    values (BatchNorm statistics near 1 and 0, PReLU slopes 0.25, weights with unit-ish activations)."""
    gen = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = {}
    for key, shape, dtype in load_manifest()[variant]:
        if dtype == "int64":
            out[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = 0.9 + 0.2 * torch.rand(shape, generator=gen)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            out[key] = 0.01 * torch.randn(shape, generator=gen)
        elif key.endswith("prelu.weight"):
            out[key] = torch.full(shape, 0.25)
        elif len(shape) == 1:  # BatchNorm scale
            out[key] = 1.0 + 0.05 * torch.randn(shape, generator=gen)
        else:
            fan_in = 1
            for side in shape[1:]:
                fan_in *= side
            out[key] = torch.randn(shape, generator=gen) * (0.5 / fan_in ** 0.5)
        assert out[key].dtype == _DTYPES[dtype]
    return out
