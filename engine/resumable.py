"""The score folder: every file ``inference.py`` and ``diffiqa_score.py`` write into their output folder, and the one
resumable, shardable driver that writes them. A workflow hands it a batch function, its settings and what the score
sheet shows; the names, the sidecar, the figure, the check for non-finite scores, the summary and the line after a
``limit`` stop are this module's.

A run takes the output folder's lock, checks the settings recorded there and that no image already scored has
changed since (its size and modification time), and appends each batch's rows to its part file as one checksummed
block. A rerun keeps only whole blocks (a kill, a full disk or a cut row drops at most the
batch being written) and scores the rest in the batches of an uninterrupted run, so its files are byte for byte
those of a run that was never stopped. Under ``torchrun`` each process takes every world-th batch; the first process
merges the parts and writes the output set once no image is left.

Files in the output folder (none is ever followed if it is a link):

- ``quality-scores.pkl`` (the official ``{key: score}`` dict) and ``quality-scores.csv`` (``path,quality``, each
  score in its one text form): the scores, written once no image is left.
- ``quality-scores.png``: the score sheet (the lowest and highest scored faces and the spread of every score).
- ``quality-scores.json``: the sidecar. ``settings``: what the scores depend on, written when a run starts; a run with
  other settings is refused (``null`` for photos, whose run does not resume). Written with the scores: ``config``,
  the resolved config, and ``run``: the images listed, scored and skipped (with the reason), the processes, the
  device and the seconds of the run that finished the set (a rerun with nothing left to score keeps that run's
  ``config`` and ``run``).
- ``quality-scores.fingerprints``: a header line (how many images, and how many at the start of the listing the
  finished set's results count for), then 16 bytes per image of the listing, in its order: a hash of its relative
  path, and one of its size and modification time. A rerun refuses images scored before that have changed since (the
  same path, another size or time); after images were added or removed it keeps the finished set's results of the
  whole batches before the first change of the listing and scores the rest, as an uninterrupted run of the new
  listing forms its batches (:func:`compare_listings`).
- ``quality-scores.lock``: held while a run writes.
- ``quality-scores.part<r>of<w>.csv``: a header line, then blocks ``#B <bytes> <crc32>`` of rows
  ``path,quality,error``: ``path,<score>,`` or ``path,,<reason>``, each path of the listing at most once; any
  other row makes the part damaged.
- ``quality-scores.part<r>of<w>.state.pt``: a workflow's state after the last batch and the part length it belongs
  to (official DifFIQA: the RNG), so that a resumed run continues its draws.

``fresh`` removes all of these but the lock before the run starts. The pickle, CSV, figure, sidecar and fingerprints
are written as one set (:func:`write_scores`; the photo path of ``inference.py`` writes through it too, without
fingerprints), and the summary line names each file of it.
"""
from __future__ import annotations

import csv
import functools
import glob
import hashlib
import io
import logging
import math
import os
import re
import shlex
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from dataset.formats import format_score, scores_csv_writer
from dataset.transforms import decode_face
from engine import figures
from utils.distributed import DistInfo, all_reduce_sum, barrier, broadcast_from_main
from utils.errors import ConfigError, DataError, RunError, UserError
from utils.io import (
    TEXT_ERRORS,
    OutputError,
    atomic_open,
    file_list,
    json_writer,
    open_regular,
    pickle_writer,
    read_json,
    read_regular,
    safe_pickle_load,
    torch_load,
    write_together,
)
from utils.lock import FolderLock

__all__ = ["SCORES_PICKLE", "SCORES_CSV", "SCORES_FIGURE", "SIDECAR", "FINGERPRINTS_FILE", "LOCK_FILE", "BatchResult",
           "RunState", "ScoreSheet", "FolderJob", "FolderSummary", "run_folder", "write_scores", "sheet_files",
           "check_finite", "print_summary", "split_batches_for_rank", "part_path", "read_parts",
           "Fingerprints", "ListingChange", "fingerprints", "compare_listings"]

_logger = logging.getLogger(__name__)

#: The official pickle and its CSV twin.
SCORES_PICKLE = "quality-scores.pkl"
SCORES_CSV = "quality-scores.csv"
SCORES_FIGURE = "quality-scores.png"
SIDECAR = "quality-scores.json"
FINGERPRINTS_FILE = "quality-scores.fingerprints"
LOCK_FILE = "quality-scores.lock"
_PART = re.compile(r"^quality-scores\.part(\d+)of(\d+)\.csv$")
_STATE_SUFFIX = ".state.pt"
_HEADER = b"#ediffiqa-scores-part 1 listing="
_BLOCK = re.compile(rb"#B (\d{1,12}) ([0-9a-f]{8})\n")
_FINGERPRINTS = re.compile(rb"#ediffiqa-fingerprints 2 (\d{1,12}) (\d{1,12}) ([0-9a-f]{64})\n")


class BatchResult(NamedTuple):
    """What a batch function yields for one batch: the scored paths with their values, and the unreadable paths
    with their reasons; together they are exactly the batch's paths."""

    paths: List[str]
    values: Sequence[float]
    skipped: List[Tuple[str, str]]


#: ``(this process's paths, in whole batches; images per batch) -> one BatchResult per batch, in order``.
ScoreBatches = Callable[[List[str], int], Iterator[BatchResult]]


class RunState(Protocol):
    """State a resumed run must restore exactly (official DifFIQA's global RNG): ``save()`` is written after every
    batch with the part length it belongs to; ``load(state)`` is called before scoring (``None`` on a fresh
    start), with a state ``problem`` accepted (read from an output folder, it is never trusted)."""

    def save(self) -> Dict[str, Any]: ...

    def problem(self, state: Dict[str, Any]) -> str:
        """What makes ``state`` (as read back) one that ``load`` cannot restore; ``""``: nothing."""
        ...

    def load(self, state: Optional[Dict[str, Any]]) -> None: ...


@dataclass(frozen=True)
class ScoreSheet:
    """What ``quality-scores.png`` shows: ``tiles`` lowest and highest scored faces (0: no figure) under the title
    ``<heading> of <N> images in '<folder>' by <model>``. ``load`` reads the face of a key (default: the image file
    the key names, below the images folder for relative keys)."""

    tiles: int
    heading: str
    model: str
    load: Optional[Callable[[str], np.ndarray]] = None


@dataclass
class FolderJob:
    """What :func:`run_folder` needs besides the batch function."""

    root: str                          # the images folder as given (keys are joined to it unless keys is relative)
    rel_paths: List[str]               # every image below root, in scoring order
    stats: np.ndarray                  # (N, 2) int64 st_size, st_mtime_ns of each as listed (list_images)
    out: str
    batch_size: int
    settings: Dict[str, Any]           # what the scores depend on besides the folder, batch size and keys (JSON)
    config: Dict[str, Any] = field(default_factory=dict)  # the resolved config, for the sidecar
    sheet: Optional[ScoreSheet] = None  # None: no figure
    device: str = ""                   # where the scores are computed, for the sidecar
    what: str = "quality scores"       # for messages (DifFIQA scores)
    out_key: str = "--output"          # the config key and flag naming out, for messages
    keys: str = "joined"               # or relative: the keys are the relative paths
    limit: Optional[int] = None        # score at most this many new images (in whole batches), then stop
    flush_every: int = 1024            # images between fsync calls of the part file
    fresh: bool = False                # remove every file of an earlier run first (parts, states, sidecar, ...)
    verbose: bool = True
    state: Optional[RunState] = None
    command: Sequence[str] = ()        # [program, *arguments] of this run, for the line after a limit stop


@dataclass
class FolderSummary:
    """What a run did. ``scored``/``skipped``/``seconds`` count this run over every process; ``total`` the scores
    in the written set; ``left`` the images a ``limit`` left for the next run; ``change``: how the listing changed
    since a finished set (first process; None: it did not)."""

    complete: bool = False
    scored: int = 0
    skipped: int = 0
    total: int = 0
    left: int = 0
    seconds: float = 0.0
    skipped_names: List[str] = field(default_factory=list)
    change: Optional[ListingChange] = None
    written: List[str] = field(default_factory=list)  # the files of the finished set, for the summary line


# ------------------------------------------------------------------------------------------------- the finished set
def check_finite(keys: Sequence[str], values: Sequence[float], what: str, where: str, kept: str) -> None:
    """Every value of ``keys`` is finite, else a :class:`RunError` naming how many of ``what`` (``where``: of what,
    e.g. `` of a batch``) and which, and what was kept."""
    bad = [k for k, v in zip(keys, values) if not math.isfinite(v)]
    if bad:
        raise RunError(f"{len(bad)} of the {len(values)} {what}{where} are NaN or infinite (e.g. "
                       f"{', '.join(bad[:3])}): the weights or the precision overflow; {kept}")


def sheet_files(out: str, table: Dict[str, float], sheet: Optional[ScoreSheet], folder: str, what: str,
                tile_prefix: str = "") -> List[Tuple[str, Any]]:
    """``[(quality-scores.png, writer)]``: the score sheet of ``table``, whose faces ``sheet.load`` reads (default:
    the image file ``tile_prefix + key``); empty when turned off (no sheet, or 0 tiles) or when it cannot be drawn
    (said in a warning: the ``what`` are written without it)."""
    if sheet is None or not sheet.tiles:
        return []
    load = sheet.load or (lambda key: np.asarray(decode_face(tile_prefix + key)))
    title = (f"{sheet.heading} of {figures.counted(len(table), 'image')} in '{figures.shorten(folder, 60)}' by "
             f"{sheet.model} (higher = better quality)")
    draw = functools.partial(figures.score_sheet, table, load, sheet.tiles, title)
    return figures.figure_file(os.path.join(out, SCORES_FIGURE), draw, f"the {what} are written without it")


def write_scores(out: str, table: Dict[str, float], record: Dict[str, Any], what: str, folder: str,
                 sheet: Optional[ScoreSheet] = None, tile_prefix: str = "",
                 extra: Sequence[Tuple[str, Any]] = ()) -> List[str]:
    """Write the set: ``quality-scores.pkl`` and ``.csv`` of ``table`` (``{key: score}``), the score sheet
    (:func:`sheet_files`), the sidecar ``record`` and ``extra`` ``(path, writer)`` files, as one set; a NaN or
    infinite score is a :class:`RunError` and nothing is written. Returns the paths written, in that order."""
    check_finite(list(table), list(table.values()), what, "", "nothing was written")
    files = [(os.path.join(out, SCORES_PICKLE), pickle_writer(table)),
             (os.path.join(out, SCORES_CSV), scores_csv_writer(table)),
             *sheet_files(out, table, sheet, folder, what, tile_prefix),
             (os.path.join(out, SIDECAR), json_writer(record)), *extra]
    write_together(files)
    return [path for path, _ in files]


def print_summary(written: Sequence[str], scored: int, skipped: int, seconds: float, skipped_names: Sequence[str],
                  total: Optional[int] = None, extra: str = "") -> None:
    """The line a finished run prints, naming each file of ``written`` (``total``: the scores in the set, when more
    than this run's), and the unreadable images it skipped."""
    wrote = f"wrote {file_list(written)}"
    if not scored and not skipped:
        counts = f" ({total} scored in all)" if total else ""
        print(f"nothing left to score{counts}{extra}; {wrote}", file=sys.stderr)
    else:
        counts = f" in this run ({total} scored in all)" if total is not None and total != scored else ""
        rate = f", {scored / seconds:.1f} images/s" if seconds > 0 else ""
        print(f"scored {scored}, skipped {skipped}{counts}{extra}, {seconds:.1f} s{rate}; {wrote}", file=sys.stderr)
    if skipped_names:
        print(f"skipped (unreadable): {', '.join(skipped_names[:5])}{' ...' if len(skipped_names) > 5 else ''}",
              file=sys.stderr)


# ------------------------------------------------------------------------------------------------- files of a run
def part_path(folder: str, rank: int, world: int) -> str:
    """The part file of process ``rank`` of ``world``."""
    return os.path.join(folder, f"quality-scores.part{rank}of{world}.csv")


def _part_files(folder: str) -> List[str]:
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if _PART.match(name))


def _state_files(folder: str) -> List[str]:
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.endswith(_STATE_SUFFIX) and _PART.match(name[:-len(_STATE_SUFFIX)]))


def _listing_digest(rel_paths: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for path in rel_paths:
        digest.update(path.encode("utf-8", TEXT_ERRORS) + b"\0")
    return digest.hexdigest()


class Fingerprints(NamedTuple):
    """What ``quality-scores.fingerprints`` records of a listing: per image, in listing order, ``paths`` ``(N,)``
    uint64, a hash of its relative path, and ``files`` ``(N,)`` uint64, one of its size and modification time; and
    ``kept``: the finished set's results count for the listing's first ``kept`` images (the rest are scored again)."""

    paths: np.ndarray
    files: np.ndarray
    kept: int


class ListingChange(NamedTuple):
    """How a listing compares with the one recorded: ``same``, the same paths in the same order; ``kept``, the
    images at its start whose finished results still count; ``added`` and ``removed`` images (by path); ``again``,
    images with finished results from ``kept`` on, scored again; ``changed``, the indices of images with results
    (finished or in parts) whose size or modification time changed since, of ``checked`` such images."""

    same: bool
    kept: int
    added: int
    removed: int
    again: int
    changed: np.ndarray
    checked: int

    def describe(self) -> str:
        """What changed and what a run does about it, for messages."""
        what = (f"the finished results of the first {self.kept} (the whole batches before the first change of the "
                f"listing) are kept, the images from there on are scored as an uninterrupted run scores them"
                if self.kept else "no finished result is kept (the first change is in the first batch), every image "
                "is scored as an uninterrupted run scores it")
        return f"{self.added} image(s) added, {self.removed} removed; {what} ({self.again} of them again)"


def fingerprints(rel_paths: Sequence[str], stats: np.ndarray) -> Fingerprints:
    """The :class:`Fingerprints` of a listing (``stats``: ``(N, 2)`` int64 size and ``st_mtime_ns``), all kept."""
    blake2b = hashlib.blake2b
    paths = np.frombuffer(b"".join(blake2b(p.encode("utf-8", TEXT_ERRORS), digest_size=8).digest()
                                   for p in rel_paths), dtype="<u8")
    raw = np.ascontiguousarray(stats, dtype=np.int64).reshape(len(rel_paths), 2).view(np.uint64)
    # An odd multiplier is a bijection mod 2**64: another size alone or another time alone always gives another value.
    files = (raw[:, 0] * np.uint64(0x9E3779B97F4A7C15)) ^ raw[:, 1]
    return Fingerprints(paths, files.astype("<u8"), len(rel_paths))


def compare_listings(stored: Fingerprints, current: Fingerprints, batch: int,
                     in_parts: Optional[np.ndarray] = None) -> ListingChange:
    """``current`` against the ``stored`` listing whose first ``stored.kept`` images hold finished results (0: no
    finished set), with ``in_parts`` ``(N,)`` bool: images of ``current`` scored in part files.

    Batches are consecutive runs of ``batch`` images in listing order, so an uninterrupted run of ``current`` forms
    the batches of the stored one up to the batch holding the first difference of the two: the results of the whole
    batches before it are kept, the rest is scored again."""
    n = len(current.paths)
    common = min(n, len(stored.paths))
    differ = np.flatnonzero(stored.paths[:common] != current.paths[:common])
    first = int(differ[0]) if len(differ) else common
    same = first == n == len(stored.paths)
    kept = stored.kept if same else min(stored.kept, first - first % batch)
    order = np.argsort(stored.paths, kind="stable")
    known = stored.paths[order]
    at = np.minimum(np.searchsorted(known, current.paths), max(len(known) - 1, 0))
    found = known[at] == current.paths if len(known) else np.zeros(n, dtype=bool)
    where = order[at] if len(known) else np.zeros(n, dtype=np.int64)  # each found image's index in stored
    finished = found & (where < stored.kept)
    checked = finished | (in_parts if in_parts is not None else False)
    moved = ~found | (stored.files[where] != current.files if len(known) else True)
    changed = np.flatnonzero(checked & moved)
    removed = len(stored.paths) - int(np.isin(stored.paths, current.paths).sum())
    again = int(finished[kept:].sum())
    return ListingChange(same, kept, int((~found).sum()), removed, again, changed, int(checked.sum()))


def _fingerprints_writer(prints: Fingerprints, kept: int) -> Tuple[str, Callable[[Any], None]]:
    body = prints.paths.astype("<u8").tobytes() + prints.files.astype("<u8").tobytes()
    digest = hashlib.sha256(b"%d\n" % kept + body).hexdigest().encode()
    header = b"#ediffiqa-fingerprints 2 %d %d %s\n" % (len(prints.paths), kept, digest)
    return "wb", lambda handle: handle.write(header + body)


def _parse_part(data: bytes) -> Tuple[Optional[bytes], List[List[str]], List[int], int]:
    """``(listing digest or None, rows of the whole blocks, where each whole block ends (the header's end first; the
    last is the length of the valid prefix), bytes dropped after them)``; a ``ValueError`` for data that is not a
    part file (neither a whole header nor the beginning of one)."""
    end = data.find(b"\n", 0, len(_HEADER) + 66)
    if end < 0:
        if not (_HEADER.startswith(data[:len(_HEADER)]) and len(data) <= len(_HEADER) + 65):
            raise ValueError("no part-file header")
        return None, [], [0], len(data)  # a header cut by a kill
    header = data[:end]
    if not header.startswith(_HEADER) or not re.fullmatch(rb"[0-9a-f]{64}", header[len(_HEADER):]):
        raise ValueError("no part-file header")
    rows: List[List[str]] = []
    ends = [end + 1]
    while ends[-1] < len(data):
        match = _BLOCK.match(data, ends[-1])
        if match is None:
            break
        size, crc = int(match.group(1)), int(match.group(2), 16)
        payload = data[match.end():match.end() + size]
        if len(payload) != size or zlib.crc32(payload) != crc:
            break
        try:
            rows.extend(csv.reader(io.StringIO(payload.decode("utf-8", TEXT_ERRORS), newline="")))
        except csv.Error:
            raise ValueError("a block that is not CSV") from None
        ends.append(match.end() + size)
    return header[len(_HEADER):], rows, ends, len(data) - ends[-1]


def _read_part(path: str, fix: str) -> Tuple[Optional[bytes], List[List[str]], List[int], int]:
    try:
        return _parse_part(read_regular(path, fix))
    except ValueError:
        raise DataError(f"'{path}' is not a part file of this project (damaged or foreign); {fix}") from None


def _row_problem(row: List[str], paths: AbstractSet[str], seen: AbstractSet[str]) -> str:
    """What is wrong with a part row (``""``: nothing): it must be ``path,<score>,`` with a finite score in its one
    text form, or ``path,,<reason>``, for a path of the listing not seen before."""
    if len(row) != 3:
        return f"{len(row)} field(s), not path,quality,error"
    path, quality, error = row
    if path not in paths:
        return f"{_short(path)} is not an image of the listing"
    if path in seen:
        return f"{_short(path)} a second time"
    if error:
        return "" if not quality else "both a score and a reason"
    if not quality:
        return "neither a score nor a reason"
    try:
        value = float(quality)
    except ValueError:
        return f"{_short(quality)} is not a score"
    if not math.isfinite(value):
        return f"the score {_short(quality)} is not finite"
    return "" if format_score(value) == quality else f"{_short(quality)} is not a score as this project writes it"


def read_parts(folder: str, paths: AbstractSet[str], fix: str = "remove it") -> Tuple[Dict[str, float],
                                                                                    Dict[str, str]]:
    """Scores and skip reasons in the whole blocks of every part file in ``folder``, whose rows must name
    ``paths`` (the listing) only; a part that is not a part file, or a row that is not what a run writes, is a
    :class:`DataError` naming the part, the row and ``fix``."""
    scores: Dict[str, float] = {}
    skipped: Dict[str, str] = {}
    seen: set = set()
    for part in _part_files(folder):
        _, rows, _, _ = _read_part(part, fix)
        for number, row in enumerate(rows, 1):
            problem = _row_problem(row, paths, seen)
            if problem:
                raise DataError(f"'{part}' is damaged (row {number}: {problem}); {fix}")
            path, quality, error = row
            seen.add(path)
            if error:
                skipped[path] = error
            else:
                scores[path] = float(quality)
    return scores, skipped


def _continue_line(left: int, fresh: bool, command: Sequence[str]) -> str:
    """The line after a ``limit`` stop: what is left and the command that continues (never ``--fresh``, which
    would start over)."""
    text = f"stopped with {left} image(s) left (base.limit); "
    if not fresh:
        return text + "run the same command to continue"
    # argparse takes any unambiguous prefix of a flag: a parsed "--fre" was --fresh.
    kept = [arg for arg in command[1:] if not (len(arg) > 3 and "--fresh".startswith(arg))]
    again = shlex.join(["python", *command[:1], *kept]) if command else ""
    return text + ("continue with the same command without --fresh (it would start over)" +
                   (f": {again}" if again else "")).replace("\n", "\\n")


def _remove(paths: Sequence[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise OutputError(f"'{path}' is a folder where this project keeps a file; remove it") from None


def _cut(part: str, length: int, size: int, fix: str) -> None:
    """Cut ``part`` (``size`` bytes) to its first ``length`` bytes, what a resumed run keeps, saying what is
    dropped."""
    if size <= length:
        return
    _logger.warning("'%s': dropped %d bytes after the last whole batch (a run stopped while writing): those images "
                    "are scored again", part, size - length)
    fd = open_regular(part, os.O_WRONLY, fix=fix)
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)


def split_batches_for_rank(paths: Sequence[str], rank: int, world: int, batch: int) -> List[str]:
    """Every ``world``-th block of ``batch`` consecutive paths from block ``rank``: each process then forms exactly
    the batches a single process would (a batch's shape can change the last bits of its results)."""
    return [p for start in range(rank * batch, len(paths), world * batch) for p in paths[start:start + batch]]


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:  # a value read from a damaged file
        return "(a value nested too deeply)"
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------------------------- the run
class _Run:
    """One process's run of a :class:`FolderJob`."""

    def __init__(self, job: FolderJob, info: DistInfo) -> None:
        self.job = job
        self.info = info
        self.fix = f"add --fresh to discard this folder's earlier scores, or use another {job.out_key}"
        if np.shape(job.stats) != (len(job.rel_paths), 2):
            raise ValueError("FolderJob.stats must hold one (size, mtime) per path")
        self.listing = _listing_digest(job.rel_paths).encode("ascii")
        self.paths = frozenset(job.rel_paths)
        self.current: Optional[Fingerprints] = None  # the first process's, of job.rel_paths
        # The finished results of an earlier run that still count (first process): scores and skip reasons.
        self.previous: Tuple[Dict[str, float], Dict[str, str]] = {}, {}
        self.parts: Optional[Tuple[Dict[str, float], Dict[str, str]]] = None  # the first process's read of them
        self.change: Optional[ListingChange] = None
        # The sidecar of a finished set of this very listing (first process): a rerun that adds nothing keeps its
        # record of the run that scored the set.
        self.finished_record: Optional[Dict[str, Any]] = None
        # The keys as they are written (the folder as given, one separator added): "faces" and "faces/" write the same.
        self.settings = {"images": os.path.realpath(job.root), "keys": job.keys if job.keys == "relative" else
                         f"{os.path.join(job.root, '')}<relative path>", "batch_size": job.batch_size,
                         **job.settings}

    # --------------------------------------------------------------------------------------------- first process
    def prepare(self) -> int:
        """Run by the first process, holding the lock: clean up, check the settings, the parts and the images
        scored before, cut the parts to their whole blocks. Returns how many images at the start of the listing keep
        the finished results of an earlier run in the folder (whole batches; 0: none)."""
        job, out = self.job, self.job.out
        _remove(glob.glob(os.path.join(glob.escape(out), ".quality-scores.*.tmp")))  # left by a kill
        sidecar_path = os.path.join(out, SIDECAR)
        fingerprints_path = os.path.join(out, FINGERPRINTS_FILE)
        if job.fresh:
            self._remove_earlier_run()
        parts = _part_files(out)
        orphans = [p for p in _state_files(out) if p[:-len(_STATE_SUFFIX)] not in parts]
        if orphans:  # it would restore a draw state into a part that starts afresh
            raise DataError(f"'{orphans[0]}' has no part file beside it; {self.fix}")
        self.current = current = fingerprints(job.rel_paths, job.stats)
        record = read_json(sidecar_path, self.fix) if os.path.lexists(sidecar_path) else None
        old = self._recorded_settings(sidecar_path, record) if record is not None else None
        if old is None:
            if parts:
                raise DataError(f"'{out}' holds part files ({os.path.basename(parts[0])}) but no settings in "
                                f"{SIDECAR}, so their settings are unknown; {self.fix}")
            # The fingerprints first: settings without them would make the next run refuse the folder. No finished
            # results count yet (0 kept): the set records how far its own count, after the pickle and the sidecar.
            write_together([(fingerprints_path, _fingerprints_writer(current, 0)),
                            (sidecar_path, json_writer({"settings": self.settings}))])
            self.parts = {}, {}
            return 0
        changed = [k for k in self.settings if old.get(k) != self.settings[k]]
        changed += [k for k in old if k not in self.settings]
        if changed:
            shown = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(self.settings.get(k))}" for k in changed[:3])
            raise ConfigError(f"'{out}' holds {job.what} made with other settings ({shown}); use another "
                              f"{job.out_key}, or add --fresh to discard its earlier scores")
        for part, (keep, size) in [(part, self._whole_blocks(part)) for part in parts]:  # all checked, then cut
            _cut(part, keep, size, self.fix)
        self.parts = read_parts(out, self.paths, self.fix)
        stored = self._read_fingerprints(fingerprints_path)
        finished = os.path.lexists(os.path.join(out, SCORES_PICKLE))
        if not finished:
            stored = stored._replace(kept=0)
        in_parts = set(self.parts[0]) | set(self.parts[1])
        change = compare_listings(stored, current, job.batch_size,
                                  np.fromiter((p in in_parts for p in job.rel_paths), bool, len(job.rel_paths)))
        self._check_unchanged(change)
        if finished and not change.same:
            self._check_exact(change)
            self.change = change
        elif finished and isinstance(record.get("config"), dict) and isinstance(record.get("run"), dict):
            self.finished_record = record
        if change.kept:
            self.previous = self._previous_results(record, change.kept)
        if not change.same:  # what a continuing run compares with (the rest of the listing is scored afresh)
            write_together([(fingerprints_path, _fingerprints_writer(current, change.kept))])
        return change.kept

    def _remove_earlier_run(self) -> None:
        """``fresh``: every file of an earlier run, by the names this project gives them (a link is removed, never
        followed)."""
        out = self.job.out
        names = [SIDECAR, FINGERPRINTS_FILE, SCORES_PICKLE, SCORES_CSV, SCORES_FIGURE]
        _remove(_state_files(out) + _part_files(out) + [os.path.join(out, name) for name in names])

    def _recorded_settings(self, path: str, record: Any) -> Optional[Dict[str, Any]]:
        """The ``settings`` of the sidecar ``record``; None where it records none (a set of photos, which no run
        continues)."""
        settings = record.get("settings", ()) if isinstance(record, dict) else ()
        if not (settings is None or isinstance(settings, dict)):
            raise DataError(f"'{path}' is damaged (not a record of settings); {self.fix}")
        return settings

    def _read_fingerprints(self, path: str) -> Fingerprints:
        if not os.path.lexists(path):
            raise DataError(f"'{self.job.out}' holds {SIDECAR} but no {FINGERPRINTS_FILE}, so the images its "
                            f"scores belong to cannot be checked; {self.fix}")
        data = read_regular(path, self.fix)
        match = _FINGERPRINTS.match(data)
        body = data[match.end():] if match else b""
        count, kept = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        if (match is None or len(body) != 16 * count or kept > count
                or hashlib.sha256(b"%d\n" % kept + body).hexdigest().encode("ascii") != match.group(3)):
            raise DataError(f"'{path}' is damaged (not the fingerprints of a listing); {self.fix}")
        columns = np.frombuffer(body, dtype="<u8")
        return Fingerprints(columns[:count], columns[count:], kept)

    def _check_unchanged(self, change: ListingChange) -> None:
        """Every image scored before has the size and modification time it had when it was listed for scoring."""
        job = self.job
        if len(change.changed):
            raise ConfigError(f"{len(change.changed)} of the {change.checked} images of '{job.root}' already scored "
                              f"in '{job.out}' changed since (another size or modification time), e.g. "
                              f"{job.rel_paths[change.changed[0]]}: their scores would be stale; add --fresh to score "
                              f"the folder afresh, or use another {job.out_key}")

    def _check_exact(self, change: ListingChange) -> None:
        """Images added or removed since a finished set are scored as an uninterrupted run would, or refused: a
        workflow with a run state (official DifFIQA's draws) cannot restart inside the listing, as a finished run
        keeps no state."""
        job = self.job
        if job.state is not None and 0 < change.kept < len(job.rel_paths):
            raise ConfigError(f"'{job.root}' changed since the scores in '{job.out}' ({change.added} image(s) added, "
                              f"{change.removed} removed): each batch's draws continue from the batches before it "
                              f"(official DifFIQA), and a finished run keeps no draw state to restart from image "
                              f"{change.kept + 1}; restore the folder, or {self.fix}")

    def _whole_blocks(self, part: str) -> Tuple[int, int]:
        """``(the length part is cut to, its length)``: its whole blocks, or those its draw state belongs to
        (checked in full here, before anything is cut)."""
        listing, _, ends, tail = _read_part(part, self.fix)
        size = ends[-1] + tail
        if listing is not None and listing != self.listing:
            raise ConfigError(f"the images in '{self.job.root}' changed since the unfinished run in "
                              f"'{self.job.out}' ({os.path.basename(part)}), so its batches would differ; restore "
                              f"the folder, or {self.fix}")
        if self.job.state is None:
            return ends[-1], size
        state_path = part + _STATE_SUFFIX
        if not os.path.lexists(state_path):
            return 0, size
        offset = self._read_state(state_path)["offset"]
        if offset > ends[-1]:
            raise DataError(f"'{state_path}' belongs to a longer '{os.path.basename(part)}' than there is; "
                            f"{self.fix}")
        if offset not in ends[1:]:
            raise DataError(f"'{state_path}' is damaged (offset {offset} is not where a batch of "
                            f"'{os.path.basename(part)}' ends); {self.fix}")
        return offset, size

    def _read_state(self, path: str) -> Dict[str, Any]:
        """A part's draw state, checked in full: ``offset`` (a non-negative int) and what the workflow's
        :meth:`RunState.problem` accepts."""
        fd = open_regular(path, fix=self.fix)
        try:
            with os.fdopen(fd, "rb") as handle:
                state = torch_load(handle)
        except Exception:  # noqa: BLE001 - torch raises many types for damaged files
            raise DataError(f"'{path}' is damaged (not a state file this project writes); {self.fix}") from None
        if not isinstance(state, dict):
            raise DataError(f"'{path}' is damaged (not a mapping); {self.fix}")
        offset = state.get("offset")
        if type(offset) is not int or offset < 0:  # bool is an int, but not an offset
            raise DataError(f"'{path}' is damaged (offset {_short(offset)} is not a length); {self.fix}")
        problem = self.job.state.problem({k: v for k, v in state.items() if k != "offset"})
        if problem:
            raise DataError(f"'{path}' is damaged ({problem}); {self.fix}")
        return state

    def _previous_results(self, record: Any, kept: int) -> Tuple[Dict[str, float], Dict[str, str]]:
        """The finished scores and skip reasons of the listing's first ``kept`` images, by relative path: from
        ``quality-scores.pkl`` and the sidecar ``record``'s ``run``, which must hold one of them for each."""
        job = self.job
        path = os.path.join(job.out, SCORES_PICKLE)
        table = safe_pickle_load(path, fix=self.fix)
        if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                                  and math.isfinite(v) for k, v in table.items()):
            raise DataError(f"'{path}' is damaged (not a dict of path: finite quality); {self.fix}")
        prefix = "" if job.keys == "relative" else os.path.join(job.root, "")
        run = record.get("run") if isinstance(record, dict) else None
        reasons = run.get("skipped") if isinstance(run, dict) else None
        if not (isinstance(reasons, dict) and all(isinstance(v, str) and v for v in reasons.values())):
            raise DataError(f"'{os.path.join(job.out, SIDECAR)}' is damaged (no record of the images its run "
                            f"skipped); {self.fix}")
        scores: Dict[str, float] = {}
        skipped: Dict[str, str] = {}
        for rel in job.rel_paths[:kept]:
            if prefix + rel in table:
                scores[rel] = float(table[prefix + rel])
            elif rel in reasons:
                skipped[rel] = reasons[rel]
            else:
                raise DataError(f"'{path}' is damaged (no score for {_short(rel)}, which its run scored); {self.fix}")
        return scores, skipped

    # --------------------------------------------------------------------------------------------- every process
    def run(self, score_batches: ScoreBatches) -> FolderSummary:
        job, info = self.job, self.info
        lock = FolderLock(os.path.join(job.out, LOCK_FILE), job.out_key) if info.main else None
        try:
            kept = self._prepare_on_first(lock)
            done_scores, done_skipped = self.parts if self.parts is not None else read_parts(job.out, self.paths,
                                                                                             self.fix)
            # The first `kept` images hold finished results (the first process checked them), in whole batches.
            done = set(job.rel_paths[:kept]) | set(done_scores) | set(done_skipped)
            barrier(info)  # every process has read the parts before any appends to them
            todo = [p for p in job.rel_paths if p not in done]
            if job.limit is not None:
                todo = todo[:max(job.batch_size, job.limit - job.limit % job.batch_size)]
            mine = split_batches_for_rank(todo, info.rank, info.world, job.batch_size)
            if done and info.main:
                _logger.info("%d image(s) already scored in '%s': only the others are scored", len(done), job.out)
            counts, seconds = self._score(mine, score_batches)
            barrier(info)
            totals = all_reduce_sum(torch.tensor(counts, dtype=torch.float64), info)
            summary = FolderSummary(scored=int(totals[0]), skipped=int(totals[1]), seconds=seconds,
                                    change=self.change)
            if info.main:
                self._finish(summary)
                self._report(summary)
            return summary
        finally:
            if lock is not None:
                lock.release()

    def _prepare_on_first(self, lock: Optional[FolderLock]) -> int:
        """The first process (the one that holds ``lock``) takes the lock and runs :meth:`prepare`; every process
        learns its result, or stops when it failed."""
        value, error = 0, None
        if lock is not None:
            try:
                lock.acquire()
                value = self.prepare()
            except (UserError, RunError, OSError) as exc:
                error = exc
        flag, value = broadcast_from_main([int(error is not None), value], self.info)
        if error is not None:
            if isinstance(error, OSError):
                raise OutputError(f"cannot prepare '{self.job.out}': {error.strerror or error}") from None
            raise error
        if flag:
            raise RunError("the first process refused to start (see its message)")
        return value

    def _score(self, mine: List[str], score_batches: ScoreBatches) -> Tuple[List[int], float]:
        job, info = self.job, self.info
        path = part_path(job.out, info.rank, info.world)
        fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, fix=self.fix)
        scored = skipped = 0
        start = time.perf_counter()
        try:
            length = os.fstat(fd).st_size
            if length == 0:
                length = self._append(fd, path, _HEADER + self.listing + b"\n", 0)
            if job.state is not None:
                state_path = path + _STATE_SUFFIX
                job.state.load(self._read_state(state_path) if os.path.lexists(state_path) else None)
            if not mine:
                return [0, 0], 0.0
            pending = 0
            batch = job.batch_size
            with tqdm(total=len(mine), unit="img", disable=not (job.verbose and info.main), dynamic_ncols=True) as bar:
                results = score_batches(mine, batch)
                for k in range(0, len(mine), batch):
                    expected = mine[k:k + batch]
                    result = next(results, None)
                    if result is None:
                        raise RuntimeError(f"the batch function ended before batch {k // batch + 1}")
                    payload = self._block(expected, result)
                    header = b"#B %d %08x\n" % (len(payload), zlib.crc32(payload))
                    length = self._append(fd, path, header + payload, scored + skipped)
                    if job.state is not None:  # after the block: a kill between the two only repeats this batch
                        with atomic_open(path + _STATE_SUFFIX, "wb") as handle:  # with the part length it belongs to
                            torch.save({**job.state.save(), "offset": length}, handle)
                    scored += len(result.paths)
                    skipped += len(result.skipped)
                    pending += len(expected)
                    if pending >= job.flush_every:
                        self._flush(fd, path)
                        pending = 0
                    bar.update(len(expected))
            self._flush(fd, path)
        finally:
            os.close(fd)
        return [scored, skipped], time.perf_counter() - start

    def _block(self, expected: List[str], result: BatchResult) -> bytes:
        values = [float(v) for v in result.values]
        given = list(result.paths) + [p for p, _ in result.skipped]
        if len(values) != len(result.paths) or sorted(given) != sorted(expected):
            raise RuntimeError("a batch function returned other paths than its batch's")
        check_finite(result.paths, values, self.job.what, " of a batch", "nothing of this batch or of the output set "
                     "was written (the earlier batches are kept in the part files)")
        by_path = dict(zip(result.paths, values))
        reasons = dict(result.skipped)
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        for p in expected:  # the batch's order, so that the part files do not depend on the batch function
            writer.writerow([p, format_score(by_path[p]), ""] if p in by_path else [p, "", reasons[p] or "unreadable"])
        return text.getvalue().encode("utf-8", TEXT_ERRORS)

    def _append(self, fd: int, path: str, data: bytes, written: int) -> int:
        """Append ``data`` in full; a full disk is one line (exit 1) and the whole batches before are kept."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            raise RunError(f"cannot append to '{path}': {exc.strerror or exc}; the {written} image(s) this process "
                           "finished are kept: make room (or raise the file-size limit) and run the same command to "
                           "continue") from None
        return os.fstat(fd).st_size

    def _flush(self, fd: int, path: str) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise RunError(f"cannot write '{path}' to disk: {exc.strerror or exc}; run the same command to "
                           "continue") from None

    def _finish(self, summary: FolderSummary) -> None:
        """First process: merge every part (and the finished results of an earlier run that still count), write the
        set with the fingerprints of its listing, remove the parts."""
        job = self.job
        scores, skipped = read_parts(job.out, self.paths, self.fix)
        scores, skipped = {**self.previous[0], **scores}, {**self.previous[1], **skipped}
        left = [p for p in job.rel_paths if p not in scores and p not in skipped]
        if left:
            if job.limit is None:
                raise RunError(f"{len(left)} image(s) of '{job.root}' were not scored (e.g. {left[0]}); run the same "
                               "command to continue")
            summary.left = len(left)
            return
        kept = [p for p in job.rel_paths if p in scores]
        if not kept:
            first = next(iter(skipped.items()))
            raise DataError(f"none of the {len(job.rel_paths)} images in '{job.root}' could be read (first: "
                            f"{first[0]}: {first[1]})")
        below_root = os.path.join(job.root, "")  # + a relative path = os.path.join(job.root, path)
        prefix, tile_prefix = ("", below_root) if job.keys == "relative" else (below_root, "")
        table = {prefix + p: scores[p] for p in kept}
        current = {p: skipped[p] for p in job.rel_paths if p in skipped}
        record = {"settings": self.settings, "config": job.config,
                  "run": {"images": len(job.rel_paths), "scored": len(table), "skipped": current,
                          "processes": self.info.world, "device": job.device, "seconds": round(summary.seconds, 2)}}
        if self.finished_record is not None and not (summary.scored or summary.skipped):
            # Nothing scored: the set is the finished run's, and so are its config, device and seconds.
            record.update(config=self.finished_record["config"], run=self.finished_record["run"])
        # The fingerprints after the pickle and the sidecar: a kill between them leaves them counting only the
        # results the earlier files hold, and the parts (removed last) the rest.
        prints = (os.path.join(job.out, FINGERPRINTS_FILE), _fingerprints_writer(self.current, len(job.rel_paths)))
        written = write_scores(job.out, table, record, job.what, job.root, job.sheet, tile_prefix, extra=[prints])
        parts = _part_files(job.out)
        _remove([p + _STATE_SUFFIX for p in parts] + parts)
        summary.complete, summary.total, summary.skipped_names = True, len(kept), sorted(current)
        summary.written = written

    def _report(self, summary: FolderSummary) -> None:
        """First process: the summary line of a finished set, or what a ``limit`` stop left and how to continue."""
        job = self.job
        if summary.change is not None:
            print(f"'{job.root}' changed since the finished scores in '{job.out}': {summary.change.describe()}",
                  file=sys.stderr)
        if summary.complete:
            print_summary(summary.written, summary.scored, summary.skipped, summary.seconds, summary.skipped_names,
                          total=summary.total)
        elif summary.left:
            print(_continue_line(summary.left, job.fresh, job.command), file=sys.stderr)


def run_folder(job: FolderJob, score_batches: ScoreBatches, info: DistInfo) -> FolderSummary:
    """Score ``job.rel_paths`` resumably into ``job.out`` (see the module docstring).

    Raises:
        ConfigError: Another run holds the folder, or it holds scores of other settings, of another listing or of
            images changed since.
        DataError: A damaged settings, fingerprints, part, state or earlier output file (names it and the fix).
        RunError: A non-finite score, a full disk (the whole batches written are kept), images left unscored.
    """
    return _Run(job, info).run(score_batches)
