"""Resumable, shardable scoring of a folder: part files that a killed run continues from, each process's share,
and the settings a folder's scores were made with (so that a rerun never mixes scores of other settings)."""
from __future__ import annotations

import csv
import glob
import json
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from dataset.formats import SCORES_PICKLE
from utils.errors import ConfigError
from utils.io import TEXT_ERRORS, safe_pickle_load, write_json

__all__ = ["PART_GLOB", "SETTINGS_FILE", "part_path", "read_parts", "read_scores", "split_for_rank",
           "split_batches_for_rank", "check_settings", "remove_parts"]

PART_GLOB = "quality-scores.part*.csv"
SETTINGS_FILE = "quality-scores.settings.json"


def part_path(folder: str, rank: int, world: int) -> str:
    """The part file of process ``rank`` of ``world``: rows ``path,quality,error`` appended while scoring."""
    return os.path.join(folder, f"quality-scores.part{rank}of{world}.csv")


def split_for_rank(paths: Sequence[str], rank: int, world: int) -> List[str]:
    """Every ``world``-th path from ``rank``: the ranks together cover each path exactly once."""
    return list(paths[rank::world])


def split_batches_for_rank(paths: Sequence[str], rank: int, world: int, batch: int) -> List[str]:
    """Every ``world``-th block of ``batch`` consecutive paths from block ``rank``: each process then forms exactly
    the batches a single process would (a batch's shape can change the last bits of its results)."""
    return [p for start in range(rank * batch, len(paths), world * batch) for p in paths[start:start + batch]]


def read_parts(folder: str) -> Tuple[Dict[str, float], Dict[str, str]]:
    """Scores and skip reasons already written by earlier (or other ranks') runs in ``folder``."""
    scores: Dict[str, float] = {}
    skipped: Dict[str, str] = {}
    for part in sorted(glob.glob(os.path.join(folder, PART_GLOB))):
        with open(part, "r", encoding="utf-8", errors=TEXT_ERRORS, newline="") as handle:
            for row in csv.reader(handle):
                if len(row) != 3:
                    continue  # a line cut by a kill: that image is scored again
                path, quality, error = row
                if error:
                    skipped[path] = error
                else:
                    try:
                        scores[path] = float(quality)
                    except ValueError:
                        continue
    return scores, skipped


def remove_parts(folder: str, *patterns: str) -> None:
    """Delete the part files (and files matching ``patterns``) once the merged outputs are written."""
    for leftover in [p for pattern in (PART_GLOB, *patterns) for p in glob.glob(os.path.join(folder, pattern))]:
        os.remove(leftover)


def read_scores(folder: str, root: str) -> Dict[str, float]:
    """The finished ``quality-scores.pkl`` of an earlier run in ``folder`` as ``{path relative to root: quality}``
    (its keys may be relative or joined to ``root``); empty when there is none."""
    path = os.path.join(folder, SCORES_PICKLE)
    if not os.path.isfile(path):
        return {}
    prefix = os.path.join(root, "")
    return {(k[len(prefix):] if k.startswith(prefix) else k): float(v) for k, v in safe_pickle_load(path).items()}


def check_settings(folder: str, settings: Mapping[str, Any], what: str, key: str, main: bool) -> bool:
    """Refuse to mix scores of other settings in ``folder``; a first run records ``settings``.

    Args:
        folder: The output folder.
        settings: What the scores depend on (JSON values).
        what: What the scores are, for the message (``DifFIQA scores``).
        key: The config key or flag that names the folder, for the message.
        main: Whether this process records the settings.

    Returns:
        True when the folder already holds scores made with the same settings.

    Raises:
        ConfigError: The folder holds scores made with other settings (names up to three).
    """
    path = os.path.join(folder, SETTINGS_FILE)
    if not os.path.isfile(path):
        if main:
            write_json(path, dict(settings))
        return False
    with open(path, "r", encoding="utf-8") as handle:
        old = json.load(handle)
    changed = [k for k in settings if old.get(k) != settings[k]]
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in changed[:3])
        raise ConfigError(f"'{folder}' holds {what} made with other settings ({shown}); use another {key} or delete "
                          "its quality-scores.* files")
    return True
