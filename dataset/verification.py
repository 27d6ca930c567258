"""Face verification benchmarks as inputs: insightface's verification files (``lfw.bin``, ``cfp_fp.bin``,
``agedb_30.bin``, ``calfw.bin``, ``cplfw.bin``) and image folders with an LFW-style ``pairs.txt`` (LFW, XQLFW).

A benchmark is its comparisons (``left[p]`` vs ``right[p]``, mated when ``issame[p]``) over images named by ``keys``:
``NAME/<index>`` for the images of a ``.bin`` file, ``NAME/<path relative to the folder>`` for a folder. Its images
are an :class:`ImageSource`, decoded one at a time when read and batched by :func:`benchmark_batches`, the reader that
scores folders (:func:`dataset.folder_batches.iterate_images`): the same tensors as the images written to files and
scored, with no file written.

A ``.bin`` file is a pickle of ``(encoded images, issame)`` with pairs ``(2p, 2p + 1)``; the published ones are
Python 2 pickles. They are read as insightface's ``load_bin`` reads them (a plain load, and ``encoding="bytes"`` when
that fails on their byte strings) through a restricted unpickler that admits bytes, lists, tuples, bools, ints and
plain NumPy arrays only (:func:`utils.io.safe_pickle_load`), so a file cannot run code when read.
"""
from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dataset.folder_batches import Batches, iterate_images
from dataset.image_folder import IMAGE_EXTENSIONS, FaceFolder, list_images
from dataset.keys import match_keys, normal_key
from dataset.transforms import INPUT_SIZE, decode_face
from utils.config import short
from utils.errors import ConfigError, DataError, first_line
from utils.io import TEXT_ERRORS, safe_pickle_load

__all__ = ["Benchmark", "ImageSource", "BinImages", "FolderImages", "decode_bin_image", "read_benchmark",
           "read_bin", "bin_key_form", "match_benchmark_keys", "read_pairs_folder", "parse_lfw_pairs",
           "read_lfw_pairs", "benchmark_batches", "check_images", "PAIRS_FILE"]

_logger = logging.getLogger(__name__)

#: The pairs file an image folder benchmark holds (LFW's name; a single ``*pairs*.txt``, as XQLFW's
#: ``xqlfw_pairs.txt``, is accepted too).
PAIRS_FILE = "pairs.txt"

#: Names a benchmark may have: they start its images' keys (``NAME/...``), file names and table columns.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class ImageSource:
    """A benchmark's images, ``len(keys)`` of them: item ``i`` is image ``i`` as a ``(112, 112, 3)`` uint8 RGB array,
    decoded when asked for (a :class:`DataError` naming it when it cannot be). Also a
    :class:`dataset.folder_batches.FaceImages`, so the scoring path's reader batches it."""

    def __len__(self) -> int:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """How messages name image ``index``."""
        raise NotImplementedError

    def decode(self, index: int) -> np.ndarray:
        """Image ``index`` as ``(112, 112, 3)`` uint8 RGB; any exception when it cannot be decoded."""
        raise NotImplementedError

    def check(self, index: int) -> None:
        """Read only image ``index``'s header (format, size, mode): any exception when that alone shows it cannot be
        decoded. Far cheaper than :meth:`decode`; damage past the header is found when decoded."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"image {index} of {len(self)}")
        index %= len(self)
        try:
            return self.decode(index)
        except Exception as exc:  # PIL raises many types for truncated or foreign data
            raise DataError(f"cannot decode {self.describe(index)}: {type(exc).__name__}: {first_line(exc)}"
                            ) from None

    def read_into(self, index: int, out: np.ndarray) -> str:
        """Decode image ``index`` into ``out`` (``(112, 112, 3)`` uint8); "" or the one-line reason it failed."""
        try:
            out[...] = self.decode(index)
            return ""
        except Exception as exc:  # PIL raises many types for truncated or foreign data
            return f"{type(exc).__name__}: {first_line(exc)}"

    def load(self, index: int) -> Tuple[torch.Tensor, str]:
        """``(image (3, 112, 112) uint8, "")``, or a blank image and the one-line reason it could not be read."""
        out = np.zeros((*INPUT_SIZE, 3), dtype=np.uint8)
        error = self.read_into(index, out)
        return torch.from_numpy(out).permute(2, 0, 1).contiguous(), error


def _open_encoded(data: Union[bytes, bytearray, memoryview]) -> Image.Image:
    """PIL's lazy view of an encoded image (its header read); a ``ValueError`` when the bytes are not an image."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"its {len(data)} bytes are not an image file (they begin {bytes(data[:8]).hex(' ')})"
                         ) from None


def _check_mode(img: Image.Image) -> None:
    if img.mode in ("I", "F"):
        raise ValueError(f"it is a 32-bit {'float' if img.mode == 'F' else 'integer'} image (PIL mode {img.mode}); "
                         "give 8- or 16-bit images")


def check_images(data: "Benchmark", shown: int = 3) -> None:
    """Read every image's header of benchmark ``data`` (:meth:`ImageSource.check`), before any model runs: all the
    images that cannot be decoded are one :class:`DataError` (how many, the first few), not one batch per run."""
    count, examples = 0, []
    for index in range(len(data.images)):
        try:
            data.images.check(index)
        except Exception as exc:  # PIL raises many types for foreign data (and DecompressionBombError)
            count += 1
            if len(examples) < shown:
                examples.append(f"{data.keys[index]}: {type(exc).__name__}: {first_line(exc)}")
    if count:
        raise DataError(f"benchmark '{data.name}' ('{data.path}'): {count} image{'s' if count != 1 else ''} cannot "
                        f"be decoded ({'; '.join(examples)}{'; ...' if count > shown else ''}); give an undamaged "
                        "copy")


def _to_rgb(img: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB, as OpenCV's ``imdecode(IMREAD_COLOR)`` (``mx.image.imdecode``) gives it: gray
    copied to the three channels, alpha dropped, 16-bit samples cut to their high byte (``v >> 8``; PIL's own
    conversion of 16-bit gray clips them to 255, a white image). PIL already gives 16-bit RGB(A) files as 8-bit by
    that rule. 32-bit images (mode I or F) are a ``ValueError``: insightface's files hold none."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):
        high = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(high, mode="L").convert("RGB")
    _check_mode(img)
    return img.convert("RGB")


def decode_bin_image(data: Union[bytes, bytearray, memoryview]) -> np.ndarray:
    """An encoded image of a ``.bin`` file -> ``(112, 112, 3)`` uint8 RGB, as ``load_bin`` decodes it:
    ``mx.image.imdecode`` (RGB, 8-bit: :func:`_to_rgb`), then ``mx.image.resize_short(img, 112)`` when the width is
    not 112. An image that is not 112x112 after that (not square) is a ``ValueError``,
    as ``load_bin`` fails on it too."""
    with _open_encoded(data) as img:
        img.load()
        rgb = _to_rgb(img)
    if rgb.width != INPUT_SIZE[1]:  # load_bin: `if img.shape[1] != image_size[0]`
        # mx.image.resize_short: the short side to 112, the other to 112 * long // short (floor), with its default
        # interp=2, OpenCV's bicubic (INTER_CUBIC, a = -0.75, no antialiasing). PIL's bicubic (a = -0.5, antialiased
        # when shrinking) is used here: pixels of non-112 images differ slightly (docs/differences.md); the
        # published files hold 112x112 images only, which are never resized.
        short_side = INPUT_SIZE[1]
        w, h = rgb.size
        size = (short_side, short_side * h // w) if h > w else (short_side * w // h, short_side)
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    array = np.asarray(rgb, dtype=np.uint8)
    if array.shape != (*INPUT_SIZE, 3):
        raise ValueError(f"the image is {array.shape[1]}x{array.shape[0]} after resizing its short side to "
                         f"{INPUT_SIZE[1]}, not {INPUT_SIZE[1]}x{INPUT_SIZE[0]} (load_bin fails on it too)")
    return array


class BinImages(ImageSource):
    """The encoded images of a ``.bin`` file (bytes each, as read), decoded by :func:`decode_bin_image` when read."""

    def __init__(self, path: str, encoded: Sequence[Union[bytes, bytearray, np.ndarray]]) -> None:
        self.path = path
        self.encoded = list(encoded)

    def __len__(self) -> int:
        return len(self.encoded)

    def describe(self, index: int) -> str:
        return f"image {index} of '{self.path}'"

    def _bytes(self, index: int) -> Union[bytes, bytearray]:
        data = self.encoded[index]
        return data.tobytes() if isinstance(data, np.ndarray) else data

    def decode(self, index: int) -> np.ndarray:
        return decode_bin_image(self._bytes(index))

    def check(self, index: int) -> None:
        with _open_encoded(self._bytes(index)) as img:
            if img.width != img.height:  # resized on its short side to 112, it is not 112x112
                raise ValueError(f"the image is {img.width}x{img.height}, not square (load_bin fails on it too)")
            _check_mode(img)


class FolderImages(ImageSource):
    """Image files below a folder, decoded as folder scoring decodes them (:func:`dataset.transforms.decode_face`:
    RGB, resized to 112x112 when not that size)."""

    def __init__(self, root: str, rel_paths: Sequence[str]) -> None:
        self.folder = FaceFolder(root, list(rel_paths))

    def __len__(self) -> int:
        return len(self.folder)

    def describe(self, index: int) -> str:
        return self.folder.describe(index)

    def decode(self, index: int) -> np.ndarray:
        return np.asarray(decode_face(self.folder.describe(index)), dtype=np.uint8)

    def check(self, index: int) -> None:
        with Image.open(self.folder.describe(index)):
            pass

    def read_into(self, index: int, out: np.ndarray) -> str:
        return self.folder.read_into(index, out)

    def load(self, index: int) -> Tuple[torch.Tensor, str]:
        return self.folder.load(index)


@dataclass
class Benchmark:
    """A verification benchmark: comparison ``p`` is image ``left[p]`` vs ``right[p]`` (indices into ``keys``,
    int64 ``(P,)``), mated when ``issame[p]`` (bool ``(P,)``); ``images[i]`` is the image named ``keys[i]``;
    ``path`` the file or folder it was read from."""

    name: str
    keys: List[str]
    left: np.ndarray
    right: np.ndarray
    issame: np.ndarray
    images: ImageSource
    path: str = ""


#: The file name of an unpacked ``.bin`` image: its index with leading zeros (``00017.jpg``, as CR-FIQA's
#: ``extract_bin.py`` writes them) or without (``17.png``).
_NUMBERED = re.compile(r"0*(\d+)")


def bin_key_form(key: str) -> str:
    """The key of a score file in the form that names an image of a ``.bin`` file: an image file numbered by its
    index loses its extension and leading zeros (``'quality_data/lfw/images/00017.jpg'`` ->
    ``'quality_data/lfw/images/17'``, ``'lfw/17'`` stays); any other key is left as it is."""
    folder, sep, file = key.replace("\\", "/").rpartition("/")
    stem, ext = os.path.splitext(file)
    number = _NUMBERED.fullmatch(stem) if ext.lower() in IMAGE_EXTENSIONS or not ext else None
    return key if number is None else f"{folder}{sep}{number.group(1)}"


def match_benchmark_keys(data: "Benchmark", keys: Sequence[str], source: str,
                         others: Sequence[str] = ()) -> List[Optional[str]]:
    """The key of ``keys`` (a score file's, ``source`` in messages) that names each image of ``data``, None where
    none, by the one key rule (:func:`dataset.keys.match_keys`: as written or one as the other below a folder);
    where no key names an image with ``NAME/``, by ``<index>`` or ``<path>`` alone. For a ``.bin`` file a key is first
    read in :func:`bin_key_form`, so the files of its images unpacked as ``<index>.<ext>``
    (``unpacked/lfw/00017.jpg``) name ``NAME/<index>`` (``lfw/17``). Two keys that name one image
    are a :class:`DataError`, and so is a file matched only relative to its folder when that folder names another
    benchmark of the run (``others``) and not this one: the scores of ``lfw/<index>`` are not those of
    ``cfp_fp/<index>``."""
    where = f"benchmark '{data.name}' ('{data.path}')"
    forms: Dict[str, str] = {}
    if isinstance(data.images, BinImages):
        for key in keys:
            form = bin_key_form(key)
            if forms.setdefault(form, key) != key:
                raise DataError(f"{source}: {short(forms[form])} and {short(key)} both name image {form}; give "
                                "each image one key")
    else:
        forms = {key: key for key in keys}
    found = match_keys(data.keys, forms, where, source)
    if all(k is None for k in found):
        # NAME is no folder of the files other code scored ('quality_data/lfw/images/00017.jpg' of a .bin's image 17,
        # 'data/XQLFW/Ann/Ann_0001.jpg' of a folder's): the images are named by <index> or <path> alone (one key
        # ending in it; several are an error). Only when no key names an image with NAME/: a file that does names
        # this set's images so, and its keys of other sets ('B/17' beside 'A/0') must not stand in for those it
        # lacks.
        found = match_keys([k.partition("/")[2] for k in data.keys], forms, where, source)
    if isinstance(data.images, BinImages) and found[0] is None:
        _refuse_numbering_from_one(data, forms, source)
    hits = [k for k in found if k is not None]
    if hits and not any(k == want for k, want in zip(found, data.keys)):
        folder = {part for k in hits for part in normal_key(k).split("/")[:-1]}
        named = [n for n in others if n != data.name and n in folder]
        if named and data.name not in folder:
            raise DataError(f"{source} keys the images of benchmark '{named[0]}' ({short(forms[hits[0]])}), not "
                            f"of '{data.name}'; give the scores of '{data.name}' (keys {data.keys[0]}, ...)")
    return [forms[k] if k is not None else None for k in found]


def _refuse_numbering_from_one(data: "Benchmark", forms: Dict[str, str], source: str) -> None:
    """A :class:`DataError` when the keys of a folder of the score file are numbered from 1 (no 0, the largest one
    past the benchmark's last index): matched, each score would be given to the image after its own."""
    numbers: Dict[str, List[Tuple[int, str]]] = {}
    for form, key in forms.items():
        folder, _, last = form.rpartition("/")
        if last.isdigit() and last.isascii():
            numbers.setdefault(folder, []).append((int(last), key))
    count = len(data.keys)
    for found in numbers.values():
        if min(found)[0] >= 1 and max(found)[0] == count:
            example = max(found)[1]
            raise DataError(f"{source} numbers the images of benchmark '{data.name}' from 1 ({short(example)} is "
                            f"one past its last image, {data.keys[-1]}, and none is numbered 0): the scores would be "
                            f"those of the next image; number them from 0, as load_bin (subtract 1)")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"benchmark name {short(name)} must start with a letter or digit and hold only letters, "
                          "digits and _ . + - (it starts the keys NAME/<index> of its images); e.g. lfw=PATH")


def read_benchmark(name: str, path: str) -> Benchmark:
    """The benchmark ``name`` from ``path``: an insightface verification ``.bin`` file (:func:`read_bin`), an image
    folder with an LFW-style pairs file, or that pairs file (:func:`read_pairs_folder`). Any problem is a one-line
    :class:`DataError` naming the file."""
    _check_name(name)
    if os.path.isdir(path):
        return read_pairs_folder(name, path)
    if not os.path.exists(path):
        raise DataError(f"benchmark '{name}': '{path}' not found; give an insightface verification file (lfw.bin, "
                        "...) or an image folder holding an LFW-style pairs.txt")
    if path.lower().endswith(".txt"):
        return read_pairs_folder(name, os.path.dirname(path) or ".", path)
    return read_bin(name, path)


def read_bin(name: str, path: str) -> Benchmark:
    """An insightface verification file: a pickle of ``(encoded images, issame)``, comparison ``p`` being images
    ``2p`` and ``2p + 1``. As ``load_bin``, the first ``2 * len(issame)`` images are used."""
    _check_name(name)
    data = safe_pickle_load(path, types="verification", py2_bytes=True)
    what = (f"verification file '{path}' must hold (images, issame) as insightface's .bin files do: a list of "
            "encoded images and a list of bools")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise DataError(f"{what}; it holds {type(data).__name__}"
                        f"{f' of length {len(data)}' if isinstance(data, (tuple, list)) else ''}")
    encoded, issame = data
    if not isinstance(encoded, (list, tuple)):
        raise DataError(f"{what}; its images are a {type(encoded).__name__}")
    issame = _issame(issame, f"{what}; its issame")
    pairs = len(issame)
    if pairs == 0:
        raise DataError(f"verification file '{path}' holds no comparisons (issame is empty)")
    if len(encoded) < 2 * pairs:
        raise DataError(f"verification file '{path}' holds {len(encoded)} images for {pairs} comparisons; it needs "
                        f"{2 * pairs} (images 2p and 2p+1 of comparison p): the file is cut short or damaged")
    if len(encoded) > 2 * pairs:
        _logger.warning("verification file '%s' holds %d images for %d comparisons; the first %d are used, as "
                        "load_bin uses them", path, len(encoded), pairs, 2 * pairs)
    encoded = list(encoded[:2 * pairs])
    for i, item in enumerate(encoded):
        if not (isinstance(item, (bytes, bytearray))
                or (isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1)):
            raise DataError(f"{what}; its image {i} is a {type(item).__name__}, not encoded bytes")
    index = np.arange(2 * pairs, dtype=np.int64)
    return Benchmark(name, [f"{name}/{i}" for i in range(2 * pairs)], index[0::2].copy(), index[1::2].copy(),
                     issame, BinImages(path, encoded), path)


def _issame(value: object, what: str) -> np.ndarray:
    """``issame`` of a ``.bin`` file as bool ``(P,)``: a list of bools (or 0/1), or a 1-d NumPy array of them."""
    if isinstance(value, np.ndarray):
        items = value.tolist() if value.ndim == 1 and value.dtype.kind in "biu" else None
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = None
    if items is None or not all(isinstance(v, (bool, int)) and v in (0, 1) for v in items):
        raise DataError(f"{what} is not a list of bools ({short(value)})")
    return np.array(items, dtype=bool)


def parse_lfw_pairs(text: str, path: str) -> List[Tuple[str, int, str, int, bool]]:
    """``(name1, n1, name2, n2, mated)`` of each line of the text of an LFW-style pairs file (LFW, XQLFW) ``path``:
    ``name n1 n2`` is mated, ``name1 n1 name2 n2`` not; blank lines are skipped, and so is a first line of one or two
    whole numbers, LFW's counts (``S N``: S sets of N mated and N non-mated lines; ``N``: one set), which must agree
    with the lines. Another line, a line that repeats an earlier comparison (in either order), an image compared
    with itself and a non-mated line naming one person twice are each a :class:`DataError` naming the file and line:
    counted, they would change the result without a word. Lines end only at ``\\n``, ``\\r\\n`` or ``\\r`` (names
    may hold other line-breaking characters)."""
    rows = []
    header: Optional[Tuple[int, List[int]]] = None
    seen: Dict[Tuple[Tuple[str, int], Tuple[str, int]], int] = {}
    for i, line in enumerate(io.StringIO(text, newline=None), start=1):
        parts = line.split()
        if not parts:
            continue
        if i == 1 and len(parts) <= 2 and all(p.isascii() and p.isdigit() and len(p) <= 9 for p in parts):
            header = (i, [int(p) for p in parts])
            continue
        numbers = parts[1::2] if len(parts) == 4 else parts[1:]
        if len(parts) not in (3, 4) or not all(p.isascii() and p.isdigit() and len(p) <= 9 for p in numbers):
            raise DataError(f"pairs file '{path}', line {i}: expected 'name i j' or 'name1 i name2 j' with whole "
                            f"numbers i and j, got {short(line.rstrip())}")
        if len(parts) == 3:
            row = (parts[0], int(parts[1]), parts[0], int(parts[2]), True)
        else:
            row = (parts[0], int(parts[1]), parts[2], int(parts[3]), False)
        first, second = (row[0], row[1]), (row[2], row[3])
        where = f"pairs file '{path}', line {i}: {short(line.strip())}"
        if first == second:
            raise DataError(f"{where} compares an image with itself; remove the line")
        if not row[4] and row[0] == row[2]:
            raise DataError(f"{where} is a non-mated comparison of one person ({row[0]}); mated lines read "
                            "'name i j'")
        comparison = (min(first, second), max(first, second))
        if comparison in seen:
            raise DataError(f"{where} repeats the comparison of line {seen[comparison]}; each comparison is "
                            "counted once: remove the repeat")
        seen[comparison] = i
        rows.append(row)
    if header is not None and rows:
        line, counts = header
        sets, per_set = counts if len(counts) == 2 else (1, counts[0])
        mated = sum(row[4] for row in rows)
        if mated != sets * per_set or len(rows) - mated != sets * per_set:
            raise DataError(f"pairs file '{path}', line {line}: the counts {' '.join(map(str, counts))} say "
                            f"{sets} set(s) of {per_set} mated and {per_set} non-mated comparisons "
                            f"({2 * sets * per_set} lines), but it holds {mated} mated and {len(rows) - mated} "
                            "non-mated; give the whole file, or fix or remove the counts line")
    return rows


def read_lfw_pairs(path: str) -> List[Tuple[str, int, str, int, bool]]:
    """:func:`parse_lfw_pairs` of the file ``path``; a missing or binary file (NUL bytes) or one without comparisons
    is a :class:`DataError` naming it."""
    if not os.path.isfile(path):
        raise DataError(f"pairs file '{path}' not found")
    with open(path, "rb") as handle:
        data = handle.read()
    if b"\0" in data:
        raise DataError(f"pairs file '{path}' holds NUL bytes, so it is not an LFW-style pairs.txt")
    rows = parse_lfw_pairs(data.decode("utf-8-sig", TEXT_ERRORS), path)
    if not rows:
        raise DataError(f"pairs file '{path}' holds no comparisons")
    return rows


def _find_pairs_file(root: str) -> str:
    named = os.path.join(root, PAIRS_FILE)
    if os.path.isfile(named):
        return named
    found = sorted(f for f in os.listdir(root) if f.lower().endswith(".txt") and "pairs" in f.lower()
                   and os.path.isfile(os.path.join(root, f)))
    if len(found) == 1:
        return os.path.join(root, found[0])
    if not found:
        raise DataError(f"image folder '{root}' holds no {PAIRS_FILE} (nor another *pairs*.txt); a folder benchmark "
                        "needs an LFW-style pairs file beside its images")
    raise DataError(f"image folder '{root}' holds {len(found)} pairs files ({', '.join(found[:3])}); name one: "
                    "NAME=FOLDER/FILE.txt")


def read_pairs_folder(name: str, root: str, pairs_file: Optional[str] = None) -> Benchmark:
    """A folder of LFW-style images (``person/person_0001.jpg``; any image extension, in any subfolder) and its
    pairs file (``pairs_file``, else :data:`PAIRS_FILE` or the folder's one ``*pairs*.txt``). Images are keyed
    ``NAME/<path relative to root>``, in the order the pairs file first names them; an image the pairs file names
    that is not in the folder is a :class:`DataError` (how many, a few names)."""
    _check_name(name)
    pairs_file = pairs_file or _find_pairs_file(root)
    rows = read_lfw_pairs(pairs_file)
    by_stem: Dict[str, List[str]] = {}
    for rel in list_images(root, key=f"benchmark '{name}'").paths:
        stem, ext = os.path.splitext(rel)
        by_stem.setdefault("/".join(stem.split("/")[-2:]), []).append(rel)
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    index: Dict[str, int] = {}
    keys: List[str] = []
    rel_paths: List[str] = []
    missing: List[str] = []
    ambiguous: List[str] = []

    def image(person: str, number: int) -> int:
        stem = f"{person}/{person}_{number:04d}"
        if stem in index:
            return index[stem]
        found = by_stem.get(stem, [])
        # Several folders holding the same person/file: ambiguous; one file in several formats: the first of
        # IMAGE_EXTENSIONS' order (.jpg first).
        folders = {os.path.dirname(p) for p in found}
        if len(folders) > 1:
            ambiguous.append(f"{stem} ({', '.join(sorted(found)[:2])})")
        if not found:
            missing.append(f"{stem}.*")
            index[stem] = -1
            return -1
        rel = min(found, key=lambda p: (rank.get(os.path.splitext(p)[1].lower(), len(rank)), p))
        index[stem] = len(keys)
        keys.append(f"{name}/{rel}")
        rel_paths.append(rel)
        return index[stem]

    left, right, issame = [], [], []
    for person1, n1, person2, n2, mated in rows:
        left.append(image(person1, n1))
        right.append(image(person2, n2))
        issame.append(mated)
    if missing:
        raise DataError(f"pairs file '{pairs_file}' names {len(missing)} images that are not in '{root}' (e.g. "
                        f"{', '.join(missing[:3])}); give the folder that holds its person folders")
    if ambiguous:
        raise DataError(f"image folder '{root}' holds {len(ambiguous)} images of '{pairs_file}' in several "
                        f"subfolders (e.g. {ambiguous[0]}); give the subfolder that holds the benchmark")
    return Benchmark(name, keys, np.array(left, dtype=np.int64), np.array(right, dtype=np.int64),
                     np.array(issame, dtype=bool), FolderImages(root, rel_paths), pairs_file)


def benchmark_batches(source: ImageSource, batch_size: int, device: Union[str, torch.device] = "cpu",
                      workers: int = 0, channels_last: bool = True, **loader_kwargs) -> Batches:
    """``(indices (b,), images (b, 3, 112, 112) float on device, [(index, error), ...])`` per batch of ``source``, by
    the reader and the one preprocessing that score folders (:func:`dataset.folder_batches.iterate_images`):
    the same tensors as the images written to PNG files and scored, with no file written. Images that cannot be
    decoded are only reported (the third element), not logged: a benchmark with one is damaged, said once by the
    caller."""
    return iterate_images(source, torch.device(device), batch_size, workers, channels_last=channels_last, warn=False,
                          **loader_kwargs)
