"""The files of one evaluation run of a name in its output folder, written as one set with a record of their names
(``<name>.files``); on a rerun of the name, the files the earlier run recorded and this run does not write are
removed, so the folder never mixes two runs' tables and figures. Only the names that record holds are removed, each
only when it is a file this module could have written for that name (``<name>.json|csv|md``,
``<name>_<x>.png|pdf``), a regular file, and named by no other name's record in the folder; anything else in the
folder is left alone. Before any work (:func:`check_outputs`) a run is refused when a file it would write is named
by another name's record (two names whose figure files collide) or is in the folder without this name's record
naming it (a file of the user's)."""
from __future__ import annotations

import json
import logging
import os
import stat
from typing import IO, Callable, Dict, List, Sequence, Tuple

from utils.errors import UserError, first_line
from utils.io import OutputError, json_writer, read_regular, write_together

__all__ = ["RECORD_SUFFIX", "record_path", "recorded_files", "other_records", "check_outputs", "write_outputs"]

_logger = logging.getLogger(__name__)

#: The ending of a run's record of the files it wrote: no table or figure ends so, whatever the name.
RECORD_SUFFIX = ".files"

Writer = Tuple[str, Callable[[IO], None]]


def record_path(folder: str, name: str) -> str:
    """``<folder>/<name>.files``: the record of the files the last run of ``name`` wrote."""
    return os.path.join(folder, name + RECORD_SUFFIX)


def _is_output_name(file: str, name: str) -> bool:
    """Whether ``file`` is a plain file name a run of ``name`` writes: ``<name>.json|csv|md`` or
    ``<name>_<x>.png|pdf``."""
    if not isinstance(file, str) or not file or "/" in file or "\\" in file or os.sep in file or "\0" in file:
        return False
    if file in (f"{name}.json", f"{name}.csv", f"{name}.md"):
        return True
    stem, ext = os.path.splitext(file)
    return ext in (".png", ".pdf") and stem.startswith(f"{name}_") and len(stem) > len(name) + 1


def recorded_files(folder: str, name: str) -> List[str]:
    """The file names the last run of ``name`` recorded in ``folder`` (written, or still to remove); none when there
    is no record. A record that is not a regular file, or damaged, or that names a file no run of ``name`` writes, is
    said in a warning and that part is not used: nothing is removed on its word."""
    path = record_path(folder, name)
    if not os.path.lexists(path):
        return []
    try:
        held = json.loads(read_regular(path, fix="it is replaced").decode("utf-8"))
    except UserError as exc:
        _logger.warning("%s; files of an earlier run of '%s' are left as they are", first_line(exc), name)
        return []
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        _logger.warning("'%s' is damaged (%s); it is replaced, and files of an earlier run of '%s' are left as they "
                        "are", path, first_line(exc), name)
        return []
    parts = [held.get("files", []), held.get("removing", [])] if isinstance(held, dict) else [None]
    files = [f for part in parts if isinstance(part, list) for f in part]
    if not all(isinstance(part, list) for part in parts):
        _logger.warning("'%s' is not a record of files (%s); it is replaced, and files of an earlier run of '%s' are "
                        "left as they are", path, type(held).__name__, name)
        return []
    strange = [f for f in files if not _is_output_name(f, name)]
    if strange:
        _logger.warning("'%s' names %d files that no run of '%s' writes (e.g. %r); they are left as they are", path,
                        len(strange), name, strange[0])
    return [f for f in files if _is_output_name(f, name)]


def other_records(folder: str, name: str) -> Dict[str, List[str]]:
    """``{other name: the file names its record lists}`` of every other name's record (``<other>.files``, a regular
    file holding a record) in ``folder``; a file so named that holds no record is not one."""
    out: Dict[str, List[str]] = {}
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return out
    for entry in entries:
        other = entry[:-len(RECORD_SUFFIX)]
        if not entry.endswith(RECORD_SUFFIX) or not other or other == name:
            continue
        try:
            held = json.loads(read_regular(os.path.join(folder, entry), fix="").decode("utf-8"))
        except (UserError, OSError, ValueError, UnicodeDecodeError, RecursionError):
            continue
        if not isinstance(held, dict):
            continue
        parts = [held.get("files", []), held.get("removing", [])]
        out[other] = [f for part in parts if isinstance(part, list) for f in part if isinstance(f, str)]
    return out


def check_outputs(folder: str, name: str, files: Sequence[str]) -> None:
    """Before any work: a one-line :class:`OutputError` when a file of ``files`` (names in ``folder``) that this run
    of ``name`` writes is listed in another name's record (the two names' files collide: a rerun of either would
    replace, then remove, the other's), or is in the folder and not recorded by this name's last run (the user's
    file, or one written by hand: never silently overwritten)."""
    for other, listed in other_records(folder, name).items():
        clash = [f for f in files if f in listed]
        if clash:
            raise OutputError(f"'{os.path.join(folder, clash[0])}', which this run of '{name}' writes, belongs to "
                              f"the run of '{other}' ({other}{RECORD_SUFFIX}); give this run another --name (or "
                              "--output)")
    ours = set(recorded_files(folder, name))
    for file in files:
        path = os.path.join(folder, file)
        if file not in ours and os.path.lexists(path):
            raise OutputError(f"'{path}' exists and no earlier run of '{name}' wrote it; move it away, or give "
                              "another --output or --name")


def _record_writer(name: str, files: Sequence[str], removing: Sequence[str]) -> Writer:
    return json_writer({"name": name, "files": list(files), "removing": list(removing)})


def write_outputs(folder: str, name: str, files: Sequence[Tuple[str, Writer]]) -> List[str]:
    """Write ``[(file name, writer), ...]`` into ``folder`` as one set (:func:`utils.io.write_together`) with the
    record ``<name>.files``, then remove the files the last run of ``name`` recorded and this one did not write;
    returns the paths written, the record last. The record names those files as still to remove until they are
    gone, so a run killed in between has them removed by the next."""
    written = [file for file, _ in files]
    check_outputs(folder, name, written)
    others = {f for listed in other_records(folder, name).values() for f in listed}
    kept = [f for f in recorded_files(folder, name) if f not in written and f in others]
    if kept:
        _logger.warning("'%s' of the earlier run of '%s' is left: another name's record in '%s' lists it", kept[0],
                        name, folder)
    stale = [f for f in recorded_files(folder, name) if f not in written and f not in others]
    stale = sorted(set(stale), key=stale.index)
    record = record_path(folder, name)
    write_together([(os.path.join(folder, file), writer) for file, writer in files]
                   + [(record, _record_writer(name, written, stale))])
    left: List[Tuple[str, str]] = []  # (file, why)
    for file in stale:
        path = os.path.join(folder, file)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                left.append((file, "not a regular file"))
                continue
            os.remove(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            left.append((file, exc.strerror or str(exc)))
            continue
        _logger.info("removed '%s' of the earlier run of '%s'", path, name)
    if left:
        _logger.warning("could not remove files of the earlier run of '%s' in '%s': %s; remove them by hand", name,
                        folder, ", ".join(f"{file} ({why})" for file, why in left))
    if stale:  # the record keeps only what is still to remove
        write_together([(record, _record_writer(name, written, [file for file, _ in left]))])
    return [os.path.join(folder, file) for file in written] + [record]
