"""Finding face images in a folder and reading them with per-file error handling."""
from __future__ import annotations

import array
import logging
import os
import stat
from typing import List, NamedTuple, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.transforms import INPUT_SIZE, load_face, read_face_into
from utils.errors import DataError, first_line

__all__ = ["IMAGE_EXTENSIONS", "JPEG_EXTENSIONS", "ImageListing", "list_images", "find_images", "FaceFolder",
           "collate_faces", "JpegBytesFolder", "collate_jpeg_bytes"]

_logger = logging.getLogger(__name__)

#: Matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageListing(NamedTuple):
    """The images below a folder: relative paths (``/`` separators) and ``stats``, ``(N, 2)`` int64: each file's
    ``st_size`` and ``st_mtime_ns`` as it was listed (16 bytes an image)."""

    paths: List[str]
    stats: np.ndarray


def list_images(root: str, order: str = "sorted", key: str = "dataset.loc or --images") -> ImageListing:
    """The image files below ``root`` with their size and modification time (the ``stat`` that tells a regular
    file, so no second one).

    Symbolic links to files are followed, and so are linked folders, each real folder once (a link loop ends
    there). Entries with an image extension that are not regular files (FIFOs, devices, broken links) are left out
    and counted in a warning, as are folders that cannot be read.

    ``order``: ``sorted`` (the same on every machine), or ``walk``: the order ``os.walk`` meets them, as the official
    DifFIQA scorer lists a folder (it decides which random draws each image gets). A ``root`` that is missing, not a
    folder or holds no image is a :class:`DataError` naming it by the config key or flag ``key``.
    """
    if not os.path.exists(root):
        raise DataError(f"image folder '{root}' ({key}) does not exist")
    if not os.path.isdir(root):
        raise DataError(f"image folder '{root}' ({key}) is not a folder; name a folder of aligned face crops")
    found: List[str] = []
    stats = array.array("q")  # size, mtime, size, mtime, ...
    not_regular: List[str] = []
    unreadable: List[str] = []
    visited: set = set()  # real paths of the folders walked: each once, so link loops end
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True,
                                                onerror=lambda err: unreadable.append(str(err.filename))):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        if order != "walk":
            dirnames.sort()
        for filename in filenames:
            if os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                full = os.path.join(dirpath, filename)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                try:
                    info = os.stat(full)  # follows a link, as reading the file will
                except (OSError, ValueError):
                    not_regular.append(rel)
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(rel)
                    stats.extend((info.st_size, info.st_mtime_ns))
                else:
                    not_regular.append(rel)
    if not_regular:
        _logger.warning("left out %d entries of '%s' that are not regular files (FIFOs, devices, broken links), "
                        "e.g. %s", len(not_regular), root, ", ".join(sorted(not_regular)[:3]))
    if unreadable:
        _logger.warning("could not read %d folder(s) below '%s' (their images are left out), e.g. %s",
                        len(unreadable), root, ", ".join(unreadable[:3]))
    if not found:
        raise DataError(f"image folder '{root}' holds no images (looked for {' '.join(IMAGE_EXTENSIONS)}, "
                        "any case, in all subfolders)")
    table = np.frombuffer(stats, dtype=np.int64).reshape(-1, 2)
    if order == "walk":
        return ImageListing(found, table)
    index = sorted(range(len(found)), key=found.__getitem__)
    return ImageListing([found[i] for i in index], table[np.asarray(index, dtype=np.int64)])


def find_images(root: str, order: str = "sorted", key: str = "dataset.loc or --images") -> List[str]:
    """The image files below ``root`` as paths relative to it, with ``/`` separators (see :func:`list_images`)."""
    return list_images(root, order, key).paths


class FaceFolder(Dataset):
    """Aligned face crops read by path; a file that cannot be read yields a blank image and its error text.

    Items are ``(image (3, 112, 112) uint8, index, error)`` with ``error == ""`` for a good file, so that one bad
    file never stops a DataLoader and the caller can name it.
    """

    def __init__(self, root: str, rel_paths: List[str]) -> None:
        self.root = root
        self.rel_paths = list(rel_paths)

    def __len__(self) -> int:
        return len(self.rel_paths)

    def describe(self, index: int) -> str:
        """File ``index``'s path, for messages."""
        return os.path.join(self.root, self.rel_paths[index])

    def load(self, index: int) -> Tuple[torch.Tensor, str]:
        """``(image (3, 112, 112) uint8, "")`` of file ``index``, or a blank image and the one-line reason it could
        not be read."""
        try:
            return load_face(os.path.join(self.root, self.rel_paths[index])), ""
        except Exception as exc:  # PIL raises many types for truncated, foreign or unreadable files
            return torch.zeros((3, *INPUT_SIZE), dtype=torch.uint8), f"{type(exc).__name__}: {first_line(exc)}"

    def read_into(self, index: int, out: np.ndarray) -> str:
        """Decode file ``index`` into ``out`` (``(112, 112, 3)`` uint8); returns "" or the one-line reason it could
        not be read (``out`` is then left as it was)."""
        try:
            read_face_into(os.path.join(self.root, self.rel_paths[index]), out)
            return ""
        except Exception as exc:  # PIL raises many types for truncated, foreign or unreadable files
            return f"{type(exc).__name__}: {first_line(exc)}"

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, str]:
        image, error = self.load(index)
        return image, index, error



def collate_faces(items: List[Tuple[torch.Tensor, int, str]]) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """Stack items of :class:`FaceFolder`: ``(B, 3, 112, 112)`` uint8, ``(B,)`` int64 indices, B error strings."""
    images = torch.stack([item[0] for item in items])
    indices = torch.tensor([item[1] for item in items], dtype=torch.int64)
    return images, indices, [item[2] for item in items]


#: Extensions whose bytes :class:`JpegBytesFolder` hands over undecoded.
JPEG_EXTENSIONS = (".jpg", ".jpeg")


class JpegBytesFolder(FaceFolder):
    """:class:`FaceFolder` for decoding JPEGs elsewhere (on the GPU): JPEG files yield their raw bytes (a 1-d uint8
    tensor) instead of an image; other files are decoded as by :class:`FaceFolder`.

    Items are ``(image or bytes, index, error, is_bytes)``.
    """

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, str, bool]:
        rel = self.rel_paths[index]
        if os.path.splitext(rel)[1].lower() in JPEG_EXTENSIONS:
            try:
                with open(os.path.join(self.root, rel), "rb") as handle:
                    return torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8), index, "", True
            except OSError as exc:
                return torch.zeros((3, *INPUT_SIZE), dtype=torch.uint8), index, f"{type(exc).__name__}: {exc}", False
        image, error = self.load(index)
        return image, index, error, False


def collate_jpeg_bytes(items: List[Tuple[torch.Tensor, int, str, bool]]) -> Tuple[List[torch.Tensor], torch.Tensor,
                                                                                  List[str], List[bool]]:
    """Items of :class:`JpegBytesFolder` as lists (bytes have different lengths): ``(tensors, (B,) indices, errors,
    is_bytes)``."""
    return ([item[0] for item in items], torch.tensor([item[1] for item in items], dtype=torch.int64),
            [item[2] for item in items], [item[3] for item in items])
