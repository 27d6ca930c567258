"""How a DifFIQA labelling run computes: one field per difference between the official computation and the default
mode (docs/diffiqa.md, "The default mode"). Built once from the config; :mod:`engine.labels.run` reads its fields and
nothing else decides these things."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from engine.labels.config import ScoreConfig
from engine.labels.scoring import FR, image_seed, score_batch_fast, score_batch_official
from engine.resumable import RunState
from model.diffusion import GaussianDiffusion
from utils.distributed import DistInfo
from utils.errors import first_line
from utils.runtime import resolve_precision

__all__ = ["LabelPolicy", "GlobalRng"]


class GlobalRng:
    """The global RNG the official computation draws from (a :class:`engine.resumable.RunState`): seeded on a fresh
    start, saved with every batch, restored on a resume so that the draws continue as in a run never stopped."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed = seed
        self.device = device

    def save(self) -> Dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def problem(self, state: Dict[str, Any]) -> str:
        keys = sorted(state, key=str)
        if keys not in (["cpu"], ["cpu", "cuda"]):
            return f"keys {keys}, not 'cpu' (and 'cuda')"
        used = [("cpu", torch.device("cpu"))] + ([("cuda", self.device)] if "cuda" in state and
                                                 self.device.type == "cuda" else [])
        for key, device in used:
            value = state[key]
            if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1):
                return f"'{key}' is not a byte tensor"
            try:  # a scratch generator checks the size and the content without touching the global ones
                torch.Generator(device=device).set_state(value)
            except (RuntimeError, ValueError) as exc:
                return f"'{key}' is not a state of this machine's generator: {first_line(exc)}"
        return ""

    def load(self, state: Optional[Dict[str, Any]]) -> None:
        if state is None:
            torch.manual_seed(self.seed)
            return
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)


@dataclass(frozen=True)
class LabelPolicy:
    """Attributes:
        mode: ``official`` or ``default``, for logs and the settings.
        seed: The run seed (``base.seed``).
        global_draws: The official draws: one ``q_sample`` and chain from each process's global RNG, in its order of
            images (:func:`engine.labels.scoring.score_batch_official`); else every image's noise from its own seed
            (:func:`engine.labels.scoring.score_batch_fast`), whatever the batch, process or interruption.
        state: What a resumed run restores (official: the global RNG, seeded ``seed + rank``); None: nothing.
        memory_format: Of the denoiser (default mode on a CPU: ``channels_last``, faster, scores within 1e-5).
        unet_batch: UNet inputs per call (``inference.batch_size``; unset: 64 officially or on a CPU, else 256).
        precision: Resolved ``base.precision``; unset: ``tf32`` for the official computation on CUDA (PyTorch's
            default, what it ran with), else ``fp32``.
        recorded: What the settings record besides the shared keys (official: the image order and the number of
            processes, which decide the draws).
    """

    mode: str
    seed: int
    global_draws: bool
    state: Optional[RunState]
    memory_format: torch.memory_format
    unet_batch: int
    precision: str
    recorded: Dict[str, Any]

    @classmethod
    def from_config(cls, cfg: ScoreConfig, device: torch.device, info: DistInfo) -> "LabelPolicy":
        """The policy of ``cfg`` on ``device`` for process ``info.rank`` of ``info.world``."""
        base = cfg.base
        official = base.official
        precision = resolve_precision(device, base.precision) if base.precision else None
        if precision is None:
            precision = "tf32" if official and device.type == "cuda" else "fp32"
        return cls(mode="official" if official else "default", seed=base.seed, global_draws=official,
                   state=GlobalRng(base.seed + info.rank, device) if official else None,
                   memory_format=torch.channels_last if not official and device.type == "cpu"
                   else torch.contiguous_format,
                   unet_batch=cfg.inference.batch_size or (64 if official or device.type == "cpu" else 256),
                   precision=precision,
                   recorded={"order": cfg.dataset.order, "processes": info.world} if official else {})

    def score_batch(self, x: torch.Tensor, denoiser: GaussianDiffusion, fr: FR, rel_paths: Sequence[str], t: int,
                    repeats: int, chunk: List[int]) -> torch.Tensor:
        """``(B,)`` labels of the faces ``x`` ``(B, 3, 112, 112)`` in [-1, 1], whose relative paths are
        ``rel_paths``; ``chunk``: ``[rows]`` per UNet/FR call of the default mode (lowered on CUDA out-of-memory)."""
        if self.global_draws:
            return score_batch_official(x, denoiser, fr, t, repeats)
        return score_batch_fast(x, denoiser, fr, [image_seed(self.seed, p) for p in rel_paths], t, repeats, chunk)
