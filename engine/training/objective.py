"""What differs between training the two kinds of model (``model.registry.KINDS``): eDifFIQA's label-optimised
distillation and DifFIQA(R)'s label regression. The trainer holds one :class:`Objective`, chosen by the kind of the
variant the config names (:data:`OBJECTIVES`), and asks it for the keys that kind takes, its data, its loss and the
loss terms of a batch; nothing else in training tells the kinds apart."""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch

from dataset.formats import centres_file, centres_values_sha256, items_file
from engine.training.config import TrainConfig
from engine.training.data import load_regression_data, load_training_data
from model.loss import BASE_LOSSES, DistillationLoss, ExtendedL1, RegressionLoss
from utils.errors import ConfigError

__all__ = ["Objective", "Distillation", "Regression", "OBJECTIVES"]


class Objective:
    """One kind's training objective, built once the run has a device: ``train_set`` and ``val_set``
    (:class:`dataset.training.TrainingSet`), their ``counts`` for the log, and the ``criterion``, which returns named
    terms, ``loss`` and each of its ``terms``."""

    #: Name for messages.
    title = ""
    #: The model's parts that optimizer groups may name (``optimizer.group_N.params``).
    parts: Tuple[str, ...] = ()
    #: The official code validates under autocast (the official DifFIQA(R) code validates without).
    official_validation_autocast = True

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        """Refuse keys of ``cfg`` that this kind does not take, before anything is built (a :class:`ConfigError`
        naming the key)."""
        for group in (cfg.optimizer.group_1, cfg.optimizer.group_2):
            if group is not None and group.params not in cls.parts:
                raise ConfigError(f"optimizer group 'params' '{group.params}' is not a part of {cls.title}, which has "
                                  f"{' and '.join(repr(p) for p in cls.parts)}")

    @classmethod
    def input_files(cls, cfg: TrainConfig) -> Dict[str, str]:
        """The files this kind trains on, ``{what: path}`` (``what`` names it in messages): a resumed run must find
        them as they were."""
        raise NotImplementedError

    @classmethod
    def value_digests(cls) -> Dict[str, Callable[[str], str]]:
        """Of :meth:`input_files`, those compared by the values they hold, not their bytes (``{what: digest}``)."""
        return {}

    def terms(self, feat: torch.Tensor, pred: torch.Tensor, batch: Dict[str, torch.Tensor],
              adjust: bool) -> Dict[str, torch.Tensor]:
        """The loss terms of a batch from the model's ``(B, 512)`` embeddings and ``(B, 1)`` qualities; ``adjust``:
        training (optimised labels), else validation (raw labels)."""
        raise NotImplementedError

    def summary(self) -> str:
        """What the start-of-run log adds about the data."""
        return ""


class Distillation(Objective):
    """eDifFIQA: the student's embedding follows the teacher's and its quality the label, optimised by the distance
    to the identity centre (``loss.quality``, ``loss.consistency``, ``loss.theta``; the prepared files)."""

    title = "eDifFIQA"
    parts = ("mlp", "base_model")

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        if cfg.dataset.labels is not None or cfg.dataset.quality_loc is not None:
            raise ConfigError("'dataset.labels' is for DifFIQA(R) (model.config); eDifFIQA trains on prepare_data.py "
                              "outputs")
        if cfg.loss.module is not None:
            raise ConfigError("'loss.module' is DifFIQA(R)'s loss; eDifFIQA's are loss.quality and loss.consistency")
        super().check(cfg)

    @classmethod
    def input_files(cls, cfg: TrainConfig) -> Dict[str, str]:
        ds = cfg.dataset
        return {"items file": items_file(ds.training_data, ds.model_name),
                "centres file": centres_file(ds.training_data, ds.model_name),
                "teacher embeddings file": ds.embeddings_path}

    @classmethod
    def value_digests(cls) -> Dict[str, Callable[[str], str]]:
        # prepare_data.py run again on the same data writes the same centres with other bytes (torch's pickle holds
        # the tensor's memory address), so they are compared by value.
        return {"centres file": centres_values_sha256}

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.device = device
        self.train_set, self.val_set, centres, self.counts = load_training_data(cfg)
        self.centres = centres.to(device)
        quality = cfg.loss.quality.params
        base = BASE_LOSSES[quality.base_loss.module](**quality.base_loss.params)
        consistency = torch.nn.CosineEmbeddingLoss(**vars(cfg.loss.consistency.params))
        self.criterion = DistillationLoss(ExtendedL1(base, quality.epsilon), consistency, cfg.loss.theta)

    def terms(self, feat: torch.Tensor, pred: torch.Tensor, batch: Dict[str, torch.Tensor],
              adjust: bool) -> Dict[str, torch.Tensor]:
        centre = self.centres[batch["row"].to(self.device)] if adjust else None
        return self.criterion(feat, pred, batch["quality"].to(self.device), batch["teacher"].to(self.device), centre)

    def summary(self) -> str:
        return f", {self.counts['identities']} identities"


class Regression(Objective):
    """DifFIQA(R): the quality regresses the label (``loss.module``, else ``loss.quality.params.base_loss``; the
    labels of ``dataset.labels`` or ``dataset.quality_loc``); no teacher, centres or consistency term."""

    title = "DifFIQA(R)"
    parts = ("linear", "base")
    official_validation_autocast = False

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        if cfg.dataset.labels_path is None:
            raise ConfigError("'dataset.labels' (or the official 'dataset.quality_loc') must name the quality labels "
                              "to train DifFIQA(R) on (diffiqa_score.py output)")
        super().check(cfg)

    @classmethod
    def input_files(cls, cfg: TrainConfig) -> Dict[str, str]:
        return {"labels file": cfg.dataset.labels_path}

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.device = device
        self.train_set, self.val_set, self.counts = load_regression_data(cfg)
        spec = cfg.loss.regression_loss()
        self.criterion = RegressionLoss(BASE_LOSSES[spec.module](**spec.params))

    def terms(self, feat: torch.Tensor, pred: torch.Tensor, batch: Dict[str, torch.Tensor],
              adjust: bool) -> Dict[str, torch.Tensor]:
        return self.criterion(pred, batch["quality"].to(self.device))


#: The objective of each kind of variant.
OBJECTIVES = {"ediffiqa": Distillation, "regression": Regression}
