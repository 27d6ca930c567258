"""What both trainers (``train.py``'s :class:`engine.training.trainer.Trainer` and ``train_diffusion.py``'s
:class:`engine.denoiser.trainer.DiffusionTrainer`) do around their loops: the output check, torchrun set-up and
shutdown, seeding, the DDP wrap and the run log."""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils.distributed import DistInfo, finish_distributed, init_distributed
from utils.io import check_output_dir
from utils.run_log import RunLog
from utils.runtime import seed_everything

__all__ = ["TrainingRun"]


class TrainingRun:
    """One process's share of a training run on the config's ``device`` (under torchrun one GPU per process), seeded
    with ``seed + rank``, writing into ``out`` (checked before any work; ``out_key`` names it in messages)."""

    def __init__(self, device: str, seed: int, out: str, out_key: str, deterministic: bool = False) -> None:
        check_output_dir(out, out_key)
        self.out = out
        self.info: DistInfo
        self.info, self.device = init_distributed(device)
        seed_everything(seed + self.info.rank, deterministic=deterministic)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` under torchrun, else ``model`` itself."""
        if not self.info.enabled:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def log(self, cfg: Any, name: str, header: Sequence[str], resumed: bool, wandb_cfg: Any) -> RunLog:
        """The run log in the output folder (written by the first process only)."""
        return RunLog(self.out, cfg, name, header, resumed=resumed, wandb_cfg=wandb_cfg, main=self.info.main)

    def close(self) -> None:
        """Wait for every process and leave the process group."""
        finish_distributed(self.info)
