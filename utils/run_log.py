"""The log of a training run (``train.py``, ``train_diffusion.py``): the run folder's ``config.json``, a CSV log that a
resumed run appends to, and optional wandb."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from utils.config import check, to_dict
from utils.io import write_json

__all__ = ["WandbSection", "RunLog"]


@dataclass
class WandbSection:
    """``wandb``: optional Weights & Biases logging (imported only when ``use`` is set)."""

    use: bool = False
    project: str = "ediffiqa"
    entity: Optional[str] = None
    name: Optional[str] = None
    mode: Optional[str] = None

    def __post_init__(self) -> None:
        check(self.mode in (None, "online", "offline", "disabled"),
              f"'wandb.mode' must be online, offline or disabled, got '{self.mode}'")


class RunLog:
    """The main process's log of a training run in ``folder`` (created): the resolved config ``cfg`` as
    ``config.json`` (and to wandb, with :class:`WandbSection` ``wandb_cfg``), and the CSV log ``log_name`` with
    columns ``header``, which a ``resumed`` run appends to. On other processes (not ``main``) it does nothing."""

    def __init__(self, folder: str, cfg: Any, log_name: str, header: Sequence[str], resumed: bool, wandb_cfg: Any,
                 main: bool = True) -> None:
        self.handle = None
        self.writer: Any = None
        self.wandb: Any = None
        if not main:
            return
        os.makedirs(folder, exist_ok=True)
        write_json(os.path.join(folder, "config.json"), to_dict(cfg))
        path = os.path.join(folder, log_name)
        new = not resumed or not os.path.exists(path)
        self.handle = open(path, "w" if new else "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle)
        if new:
            self.writer.writerow(list(header))
        if wandb_cfg.use:
            import wandb  # only when asked for

            self.wandb = wandb
            wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity, name=wandb_cfg.name, config=to_dict(cfg),
                       dir=folder, mode=wandb_cfg.mode)

    @classmethod
    def null(cls) -> "RunLog":
        """A log that writes nothing (before ``fit`` starts, or for benchmarks that drive the loop themselves)."""
        log = cls.__new__(cls)
        log.handle, log.writer, log.wandb = None, None, None
        return log

    def row(self, values: Sequence[Any]) -> None:
        if self.writer is not None:
            self.writer.writerow(list(values))

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.flush()

    def log(self, values: dict, step: Optional[int] = None) -> None:
        """Send ``values`` to wandb when it is in use."""
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = self.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
