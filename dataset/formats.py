"""Readers and writers of the official eDifFIQA data files (labels and quality scores, teacher embeddings, prepared
training data).

Pickles are read through :func:`utils.io.safe_pickle_load`, which admits only the types these formats use.
"""
from __future__ import annotations

import csv
import functools
import io
import operator
import os
import zipfile
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from utils.config import short
from utils.errors import DataError, first_line
from utils.io import (
    TEXT_ERRORS,
    atomic_open,
    csv_writer,
    pickle_writer,
    safe_pickle_load,
    sha256_of,
    values_digest,
    write_pickle,
)

# torch is imported only where the prepared files are read: labels, scores and embeddings are read without it
# (evaluate.py runs without torch).
if TYPE_CHECKING:
    import torch

__all__ = ["read_label_values", "quality_value", "all_real", "PREPARED_PROTOCOL", "format_score",
           "scores_csv_writer", "read_scores_csv", "read_scores_text", "EmbeddingTable", "read_embeddings",
           "write_embeddings", "centres_file", "items_file", "prepared_writers", "read_prepared",
           "MIN_EMBEDDING_LENGTH"]


def _examples(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(repr(x) for x in list(items)[:n]) + (" ..." if len(items) > n else "")


#: Types of the values that are qualities: Python and NumPy integers and floats (``bool`` is an ``int`` and
#: ``numpy.float64`` a ``float``, so truth values are left out by name below).
_REAL_TYPES = (int, float, np.integer, np.floating)


@functools.lru_cache(maxsize=None)
def _is_real_type(kind: type) -> bool:
    """Whether values of type ``kind`` are qualities: real numbers, not text, bytes, truth values or None."""
    return issubclass(kind, _REAL_TYPES) and not issubclass(kind, (bool, np.bool_))


def all_real(values: Iterable[Any]) -> bool:
    """Whether every value is a real number as :func:`quality_value` takes them (checked once per type, at C
    speed)."""
    return all(map(_is_real_type, set(map(type, values))))


def _what(value: Any) -> str:
    """What a value that is not a real number is, for messages: ``a text value '0.5'``, ``None``."""
    if isinstance(value, str):
        return f"a text value {short(value)}"
    if isinstance(value, (bytes, bytearray)):
        return f"a bytes value {short(bytes(value))}"
    if isinstance(value, (bool, np.bool_)):
        return f"{bool(value)}, a truth value"
    if value is None:
        return "None"
    if isinstance(value, (complex, np.complexfloating)):
        return f"a complex number {short(complex(value))}"
    if isinstance(value, np.ndarray):
        return f"a NumPy array of shape {value.shape}"
    return f"{short(value)} (a {type(value).__name__})"


def quality_value(value: Any, source: str, key: Any) -> float:
    """``float(value)`` of the quality of ``key`` in ``source`` (``"labels file '...'"``).

    Only real numbers are qualities: Python ``int`` (not ``bool``) and ``float``, NumPy integer and floating
    scalars; ``float()`` would also take ``'0.5'``, ``b'0.5'`` and ``True``, and the official ``prepare_data.py``
    would copy them into the training items unchanged. Anything else, or a number beyond the float range
    (``10**400``), is a :class:`DataError` naming ``source``, ``key`` and what the value is.
    """
    if not _is_real_type(type(value)):
        raise DataError(f"{source}: quality of {short(key)} is {_what(value)}, not a number; write it as a number")
    try:
        return float(value)
    except OverflowError:
        raise DataError(f"{source}: quality of {short(key)} is {short(value)}, a number beyond the float range "
                        "(about 1.8e308); fix or remove it") from None


def _fast_labels(data: Union[Mapping, Sequence]) -> Union[Tuple[List[str], np.ndarray, List[Any]], None]:
    """``dict(data)`` split into paths, float64 qualities and the original values at C speed, or None when any
    entry is malformed."""
    try:
        labels = dict(data)
        if not all(map(str.__instancecheck__, labels)):
            return None
        values = list(labels.values())
        if not all_real(values):
            return None
        return list(labels), np.fromiter(values, dtype=np.float64, count=len(labels)), values
    except (TypeError, ValueError, OverflowError):
        return None


def read_label_values(path: str) -> Tuple[List[str], np.ndarray, List[Any]]:
    """``(paths, qualities (N,) float64, values)`` of quality labels: a pickled list of ``(path, quality)`` pairs or
    dict (official), or a ``path,quality`` CSV. ``values`` are the file's own quality objects (Python or NumPy
    scalars), which the official ``prepare_data.py`` copies into the training items unchanged; a list with repeated
    paths keeps the last value, as the official ``dict(list)`` does. An unreadable file, a wrong structure or
    NaN/infinite qualities (count and examples) are a :class:`DataError`."""
    if path.lower().endswith(".csv"):
        if not os.path.isfile(path):
            raise DataError(f"labels file '{path}' not found")
        data: Union[Mapping, Sequence] = read_scores_csv(path)
    else:
        data = safe_pickle_load(path)
    if not isinstance(data, (Mapping, list, tuple)):
        raise DataError(f"labels file '{path}' must hold a list of (path, quality) pairs or a dict, "
                        f"not a {type(data).__name__}")
    fast = _fast_labels(data)
    if fast is None:  # something is malformed: find and name it
        pairs = list(data.items()) if isinstance(data, Mapping) else data
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)):
                raise DataError(f"labels file '{path}': entry {i} is {short(pair)}, expected a (path, quality) pair")
            quality_value(pair[1], f"labels file '{path}'", pair[0])
        raise DataError(f"labels file '{path}' could not be read as (path, quality) pairs")
    paths, qualities, values = fast
    if not paths:
        raise DataError(f"labels file '{path}' holds no labels")
    bad = np.flatnonzero(~np.isfinite(qualities))
    if len(bad):
        raise DataError(f"labels file '{path}': {len(bad)} qualities are NaN or infinite "
                        f"(e.g. {_examples([paths[i] for i in bad])}); fix or remove them")
    return paths, qualities, values


#: The shortest embedding that has a direction. The cosines taken of embeddings add an epsilon of 1e-12 to squared
#: lengths (torch's ``CosineEmbeddingLoss`` in training and label optimisation) or clamp lengths at 1e-12
#: (evaluation): at length 1e-5 the first is 0.5% off, at 1e-6 30%, and a zero embedding's cosine is 0 whatever the
#: other one is. No embedding of a face model comes near (their lengths are about 1 or tens).
MIN_EMBEDDING_LENGTH = 1e-5


class EmbeddingTable:
    """Teacher embeddings by image path, from the official pickled dict or an ``.npz`` (``paths``, ``embeddings``).
    ``index``: path -> row of the ``(N, D)`` ``matrix`` (``.npz``), or path -> ``(D,)`` array (a pickled dict, used
    as it is so that no second copy of a million-entry dict is made; ``matrix`` None); ``source`` names the file."""

    def __init__(self, source: str, index: Mapping[str, Any], matrix: Optional[np.ndarray], dim: int) -> None:
        self.source = source
        self._index = index
        self._matrix = matrix
        self.dim = dim

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, path: str) -> bool:
        return path in self._index

    @property
    def index(self) -> Mapping[str, Any]:
        """Path -> row or embedding, in file order (read it, never change it): what keys are matched against, at C
        speed."""
        return self._index

    def keys(self) -> List[str]:
        """All paths, in file order."""
        return list(self._index)

    def missing(self, paths: Sequence[str]) -> List[str]:
        """Paths that have no embedding."""
        if all(map(self._index.__contains__, paths)):  # the common case, at C speed
            return []
        return [p for p in paths if p not in self._index]

    def gather(self, paths: Sequence[str]) -> np.ndarray:
        """``(len(paths), D)`` float32 embeddings of ``paths``; embeddings with NaN or infinite values, too long to
        normalise in float32 (beyond about 1.8e19, whose square overflows) or too short to have a direction (below
        :data:`MIN_EMBEDDING_LENGTH`) are a :class:`DataError` (count and examples)."""
        if not paths:
            return np.zeros((0, self.dim), dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # a float64 beyond float32 becomes inf, refused below
            if self._matrix is not None:
                rows = np.fromiter(map(self._index.__getitem__, paths), dtype=np.int64, count=len(paths))
                out = np.asarray(self._matrix[rows], dtype=np.float32)
            else:
                out = np.stack(list(map(self._index.__getitem__, paths))).reshape(len(paths), self.dim).astype(
                    np.float32, copy=False)
            # Squared lengths: NaN or inf where an entry is, and where the length itself is beyond float32, which
            # every cosine (evaluation, centres, the training loss) would turn into 0 without a word.
            squared = np.einsum("ij,ij->i", out, out)
        if not np.isfinite(squared).all():
            bad = np.flatnonzero(~np.isfinite(squared))
            entries = bad[~np.isfinite(out[bad]).all(axis=1)]
            if len(entries):
                raise DataError(f"embeddings file '{self.source}': {len(entries)} embeddings hold NaN or infinite "
                                f"values (e.g. {_examples([paths[i] for i in entries])}); compute them again or "
                                "remove them")
            raise DataError(f"embeddings file '{self.source}': {len(bad)} embeddings are too long to normalise in "
                            f"float32 (length beyond about 1.8e19; e.g. {_examples([paths[i] for i in bad])}); "
                            "compute them again or scale them down")
        tiny = np.flatnonzero(squared < MIN_EMBEDDING_LENGTH ** 2)
        if len(tiny):
            raise DataError(f"embeddings file '{self.source}': {len(tiny)} embeddings are too short to have a "
                            f"direction (length below {MIN_EMBEDDING_LENGTH:g}, all zeros included; e.g. "
                            f"{_examples([paths[i] for i in tiny])}); compute them again or remove them")
        return out


def _npz_member(path: str, name: str) -> np.ndarray:
    """Array ``name`` of an ``.npz``: memory-mapped when stored uncompressed (``np.savez``), else read.

    Mapping skips zipfile's copy and CRC pass (several seconds per GB) and reads only the rows that are used.
    """
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{name}.npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as handle:
                handle.seek(info.header_offset)
                local = handle.read(30)
                if local[:4] == b"PK\x03\x04":
                    data_start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
                        int.from_bytes(local[28:30], "little")
                    handle.seek(data_start)
                    fmt = np.lib.format
                    reader = {(1, 0): fmt.read_array_header_1_0,
                              (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(handle))
                    shape, fortran, dtype = reader(handle) if reader else ((), False, np.dtype(object))
                    if not dtype.hasobject:
                        return np.memmap(path, dtype=dtype, mode="r", offset=handle.tell(), shape=shape,
                                         order="F" if fortran else "C")
        with archive.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)


def _not_real(path: str, dtype: Any, what: str) -> DataError:
    """The error for embeddings that are not real numbers (complex, text, objects, records), which a cast to
    float32 would change or refuse; ``what`` names the array or an example key."""
    return DataError(f"embeddings file '{path}': embeddings must be real numbers, but {what} holds {dtype} values; "
                     "compute them again")


#: NumPy kinds of real numbers: boolean, signed and unsigned integer, floating point.
_REAL_KINDS = "biuf"


def read_embeddings(path: str) -> EmbeddingTable:
    """Read teacher embeddings (pickled dict ``{path: (D,) array}`` or ``.npz``), all of one dimension D; anything
    else is a :class:`DataError`."""
    if path.lower().endswith(".npz"):
        if not os.path.isfile(path):
            raise DataError(f"embeddings file '{path}' not found")
        try:
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
                if "paths" not in npz or "embeddings" not in npz:
                    raise DataError(f"embeddings file '{path}' must hold arrays 'paths' and 'embeddings', "
                                    f"found {short(sorted(npz.files))}")
                names = npz["paths"]
            matrix = _npz_member(path, "embeddings")
        except DataError:
            raise
        except Exception as exc:  # zipfile/np.load raise several types on corrupt files
            raise DataError(f"cannot read embeddings file '{path}' as .npz ({type(exc).__name__}: "
                            f"{first_line(exc)})") from None
        if names.ndim != 1 or names.dtype.kind != "U":
            raise DataError(f"embeddings file '{path}': 'paths' must be a list of image paths (1-D text), found "
                            f"{names.dtype} values of shape {names.shape}")
        if matrix.dtype.kind not in _REAL_KINDS:
            raise _not_real(path, matrix.dtype, "'embeddings'")
        paths = names.tolist()
        if matrix.ndim != 2 or len(matrix) != len(paths):
            raise DataError(f"embeddings file '{path}': 'embeddings' has shape {matrix.shape}, expected "
                            f"({len(paths)}, D) to match 'paths'")
        return EmbeddingTable(path, dict(zip(paths, range(len(paths)))), matrix, int(matrix.shape[1]))

    data = safe_pickle_load(path)
    if not isinstance(data, Mapping) or not data:
        raise DataError(f"embeddings file '{path}' must hold a non-empty dict {{image path: embedding}}")
    if not all(map(str.__instancecheck__, data)):
        key = next(k for k in data if not isinstance(k, str))
        raise DataError(f"embeddings file '{path}': keys must be image paths (text), found {short(key)}")
    if not all(map(np.ndarray.__instancecheck__, data.values())):
        key, value = next((k, v) for k, v in data.items() if not isinstance(v, np.ndarray))
        kind = "None" if value is None else f"a {type(value).__name__}"
        raise DataError(f"embeddings file '{path}': the embedding of {short(key)} is {kind}, not a NumPy array; "
                        "store each embedding as a 1-D NumPy array")
    first = next(iter(data.values()))
    found = set(map(operator.attrgetter("shape", "dtype"), data.values()))
    if {shape for shape, _ in found} != {first.shape}:
        shapes: Dict[str, str] = {}
        for key, value in data.items():
            if value.shape != first.shape:
                shapes.setdefault(str(value.shape), key)
                if len(shapes) >= 3:
                    break
        others = "; ".join(f"{shape} (e.g. {short(key)})" for shape, key in shapes.items())
        raise DataError(f"embeddings file '{path}': embedding sizes differ: first is {first.shape}, also {others}")
    if any(dtype.kind not in _REAL_KINDS for _, dtype in found):
        key, value = next((k, v) for k, v in data.items() if v.dtype.kind not in _REAL_KINDS)
        raise _not_real(path, value.dtype, f"the embedding of {short(key)}")
    dim = int(first.size)
    if dim == 0:
        raise DataError(f"embeddings file '{path}': the embeddings are empty (shape {first.shape})")
    return EmbeddingTable(path, data, None, dim)


def write_embeddings(path: str, paths: Sequence[str], embeddings: np.ndarray) -> None:
    """Write embeddings as the official pickled dict, or as ``.npz`` when ``path`` ends with ``.npz`` (atomically)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if path.lower().endswith(".npz"):
        with atomic_open(path, "wb") as handle:
            np.savez(handle, paths=np.asarray(list(paths), dtype=str), embeddings=embeddings)
    else:
        write_pickle(path, {p: embeddings[i].copy() for i, p in enumerate(paths)})


def centres_file(save_location: str, name: str) -> str:
    """Path of the official centre file ``average_embedding_batch-<name>.pkl``."""
    return os.path.join(save_location, f"average_embedding_batch-{name}.pkl")


def items_file(save_location: str, name: str) -> str:
    """Path of the official items file ``training_items-<name>.pkl``."""
    return os.path.join(save_location, f"training_items-{name}.pkl")


def format_score(value: float) -> str:
    """The one text form of a score in CSV files: the shortest that reads back to the same float."""
    return repr(float(value))


def scores_csv_writer(table: Dict[str, float]) -> Tuple[str, Any]:
    """The ``path,quality`` CSV of ``table`` (``{key: score}``, each score in its one text form) as a writer for
    :func:`utils.io.write_together`."""
    return csv_writer(("path", "quality"), ((k, format_score(v)) for k, v in table.items()))


def read_scores_csv(path: str) -> Dict[str, float]:
    """Read a ``path,quality`` CSV as :func:`scores_csv_writer` writes it (file names as their bytes; a leading
    byte-order mark, as spreadsheets write, is dropped). Not a quality CSV, a row of other than two fields or
    without a plain number in its second column, a path given twice: a :class:`DataError` naming the line(s).
    """
    try:
        with open(path, "r", encoding="utf-8-sig", errors=TEXT_ERRORS, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != ["path", "quality"]:
                raise DataError(f"'{path}' is not a quality CSV: its first line must be 'path,quality'")
            table: Dict[str, float] = {}
            line = reader.line_num
            for row in reader:
                start, line = line + 1, reader.line_num  # a quoted name may span lines: name the first
                if not row:
                    continue
                if len(row) != 2:
                    raise DataError(f"'{path}' line {start}: expected 'path,quality', got {len(row)} field(s): "
                                    f"{','.join(row)[:80]!r}")
                key, text = row
                try:
                    value = _plain_number(text)  # nan/inf are refused later
                except ValueError:
                    raise DataError(f"'{path}' line {start}: expected 'path,quality', but the quality "
                                    f"{short(text)} is not a plain number (ASCII digits, e.g. 0.5 or 1e-3)") from None
                if key in table:
                    raise DataError(f"'{path}': {short(key)} is given twice, on lines {_line_of(path, key)} and "
                                    f"{start}; keep one")
                table[key] = value
            return table
    except csv.Error as exc:
        raise DataError(f"'{path}' is not a readable CSV ({exc})") from None


def _plain_number(text: str) -> float:
    """``float(text)`` of plain decimal or scientific notation only: ``float()`` also takes full-width digits
    (``'\\uff10.\\uff15'``), ``'1_000'`` and Unicode spaces, which are refused (``ValueError``)."""
    if not text.isascii() or "_" in text:
        raise ValueError(text)
    return float(text)


def read_scores_text(path: str) -> Dict[str, float]:
    """Read lines ``path score`` (the score after the last run of spaces or tabs, so a path may hold spaces), as other
    FIQA methods' scripts write them (CR-FIQA's ``getQualityScore.py``); blank lines are skipped. A line without a
    plain number at its end, or a path given twice, is a :class:`DataError` naming the line(s)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if b"\0" in data:
        raise DataError(f"'{path}' holds NUL bytes, so it is not a text file of 'path score' lines")
    table: Dict[str, float] = {}
    first: Dict[str, int] = {}
    for i, line in enumerate(io.StringIO(data.decode("utf-8-sig", TEXT_ERRORS), newline=None), start=1):
        parts = line.rstrip("\n").rsplit(None, 1)
        if not parts:
            continue
        try:
            if len(parts) != 2:
                raise ValueError(line)
            value = _plain_number(parts[1])
        except ValueError:
            raise DataError(f"'{path}' line {i}: expected 'path score' with a plain number (e.g. 0.5 or 1e-3), got "
                            f"{short(line.rstrip())}") from None
        key = parts[0].strip(" \t")
        if key in table:
            raise DataError(f"'{path}': {short(key)} is given twice, on lines {first[key]} and {i}; keep one")
        table[key], first[key] = value, i
    return table


def _line_of(path: str, key: str) -> int:
    """The line on which the row of ``key`` starts in the quality CSV ``path`` (read again: only a path given twice
    needs it)."""
    with open(path, "r", encoding="utf-8-sig", errors=TEXT_ERRORS, newline="") as handle:
        reader = csv.reader(handle)
        line = 0
        for row in reader:
            if row and row[0] == key and line:
                return line + 1
            line = reader.line_num
    return 0


#: Pickle protocol of the prepared files: Python's default when the official script ran (3.8-3.13), so that the
#: files are the official bytes.
PREPARED_PROTOCOL = 4


def prepared_writers(save_location: str, name: str, centres: "torch.Tensor",
                     items: Sequence[Tuple[str, Any, int]]) -> List[Tuple[str, Tuple[str, Any]]]:
    """The two official files as ``(path, writer)`` for :func:`utils.io.write_together`: the pickled ``(K, D)``
    float32 torch tensor of centres and the pickled item list, with the official pickle protocol."""
    return [(centres_file(save_location, name), pickle_writer(centres, PREPARED_PROTOCOL)),
            (items_file(save_location, name), pickle_writer(list(items), PREPARED_PROTOCOL))]


def _item_columns(source: str, items: List[Any], n_centres: int) -> Tuple[np.ndarray, np.ndarray]:
    """Qualities ``(N,)`` float64 and centre rows ``(N,)`` int64 of prepared training items, every item checked (at
    C speed; an item that fails, not ``(path text, number, whole number)``, beyond the float range or outside the
    centres, is then found and named with ``source`` in a :class:`DataError`)."""
    if not items:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
    try:
        if all(map(tuple.__instancecheck__, items)) and set(map(len, items)) == {3}:
            paths, values, rows = zip(*items)
            if all(map(str.__instancecheck__, paths)) and all_real(values):
                qualities = np.fromiter(map(float, values), dtype=np.float64, count=len(items))
                row = np.fromiter(map(operator.index, rows), dtype=np.int64, count=len(items))
                outside = np.flatnonzero((row < 0) | (row >= n_centres))
                if not len(outside):
                    return qualities, row
    except (TypeError, ValueError, OverflowError):
        pass
    for i, item in enumerate(items):  # name the first item that failed
        if not (isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str)):
            raise DataError(f"'{source}': item {i} is {short(item)}, expected a (path, quality, centre row) tuple")
        quality_value(item[1], f"'{source}'", item[0])
        try:
            row_of = operator.index(item[2])
        except TypeError:
            raise DataError(f"'{source}': centre row of {short(item[0])} is {short(item[2])}, not a whole "
                            "number") from None
        if not 0 <= row_of < n_centres:
            raise DataError(f"'{source}': item {short(item)} points at centre row {short(row_of)}, but there are "
                            f"{n_centres} centres")
    raise DataError(f"'{source}' could not be read as (path, quality, centre row) items")


def centres_values_sha256(path: str) -> str:
    """SHA-256 of the centres' values (dtype, shape and bytes of the tensor ``path`` holds): the same for two files
    of the same centres, whose bytes differ where torch's pickle writes the tensor's memory address; the file's own
    SHA-256 where it holds no tensor NumPy can hold (reading it then says what is wrong)."""
    import torch

    try:
        centres = safe_pickle_load(path, allow_torch=True)
        if isinstance(centres, torch.Tensor):
            return values_digest(centres.detach().cpu().numpy())
    except (DataError, TypeError, RuntimeError):  # unreadable, or a tensor kind NumPy has no type for
        pass
    return sha256_of(path)


def read_prepared(save_location: str, name: str):
    """Read the two official files back: ``(centres (K, D) float32 tensor, [(path, quality, row), ...])``. A file
    that is unreadable or malformed, a centre or quality that is not finite, a row outside the centres is a
    :class:`DataError` naming the file."""
    import torch

    centres_path, items_path = centres_file(save_location, name), items_file(save_location, name)
    centres = safe_pickle_load(centres_path, allow_torch=True)
    items = safe_pickle_load(items_path)
    if not isinstance(centres, torch.Tensor) or centres.ndim != 2 or not centres.is_floating_point():
        raise DataError(f"'{centres_path}' must hold a (n_identities, D) floating-point torch tensor")
    if not isinstance(items, list):
        raise DataError(f"'{items_path}' must hold a list of (path, quality, row) tuples")
    if not bool(torch.isfinite(centres).all()):
        rows = torch.nonzero(~torch.isfinite(centres).all(dim=1)).flatten().tolist()
        raise DataError(f"'{centres_path}': {len(rows)} of {len(centres)} centres hold NaN or "
                        f"infinite values (e.g. row {rows[0]}); prepare the data again from finite embeddings")
    qualities, _ = _item_columns(items_path, items, len(centres))
    bad_q = np.flatnonzero(~np.isfinite(qualities))
    if len(bad_q):
        raise DataError(f"'{items_path}': {len(bad_q)} of {len(items)} training items have a NaN "
                        f"or infinite quality (e.g. {short(items[bad_q[0]][0])}); prepare the data again from finite "
                        "labels")
    return centres, items
