"""Verification benchmarks and face recognition checkpoints as inputs (dataset/verification.py,
model/checkpoint.py load_fr_backbone): insightface .bin files and LFW-style folders read safely and decoded as
insightface's load_bin decodes them, batched exactly as folder scoring batches image files."""
from __future__ import annotations

import io
import pickle
import re
import struct
import zlib
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from dataset.folder_batches import iterate_folder
from dataset.image_folder import FaceFolder
from dataset.transforms import decode_face
from dataset.verification import (
    Benchmark,
    BinImages,
    benchmark_batches,
    check_images,
    decode_bin_image,
    match_benchmark_keys,
    parse_lfw_pairs,
    read_benchmark,
)
from model.build import build_backbone, build_model
from model.checkpoint import _built_shapes, find_fr_backbone, load_fr_backbone
from model.registry import BACKBONES
from utils.errors import CheckpointError, ConfigError, DataError
from utils.io import safe_pickle_load

CPU = torch.device("cpu")


def _image(seed: int, size=(112, 112), gray: bool = False) -> np.ndarray:
    """A smooth synthetic image ``(H, W, 3)`` uint8 (smooth, so JPEG keeps it recognisable)."""
    h, w = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    channels = [(127 + 120 * np.sin(x / rng.uniform(4, 12) + y / rng.uniform(5, 15) + c)) for c in range(3)]
    array = np.stack(channels, axis=-1).clip(0, 255).astype(np.uint8)
    return np.repeat(array[..., :1], 3, axis=-1) if gray else array


def _encode(array: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _py2_pickle(images: Sequence[bytes], issame: Sequence[bool]) -> bytes:
    """``(images, issame)`` pickled as Python 2 pickles them (protocol 2): the images as Python 2 ``str``
    (BINSTRING), which Python 3 decodes as text unless told ``encoding="bytes"``."""
    out = bytearray(b"\x80\x02](")  # PROTO 2, EMPTY_LIST, MARK
    for data in images:
        out += b"T" + struct.pack("<i", len(data)) + data  # BINSTRING
    out += b"e]("  # APPENDS, EMPTY_LIST, MARK
    out += b"".join(b"\x88" if flag else b"\x89" for flag in issame)  # NEWTRUE / NEWFALSE
    out += b"e\x86."  # APPENDS, TUPLE2, STOP
    return bytes(out)


def _load_bin_reference(path: str) -> tuple:
    """insightface's load_bin (arcface_torch eval/verification.py) transcribed with PIL for mxnet: ``(images as
    (112, 112, 3) uint8 RGB, issame_list)``. mx.image.imdecode gives RGB HWC uint8; mx.image.resize_short(img, 112)
    resizes the short side to 112 and the long one to 112 * long // short with its default interp=2, OpenCV's
    INTER_CUBIC; this transcription (and dataset/verification.py) uses PIL's BICUBIC, which differs for non-112
    images only (docs/differences.md). Only the test's own files are unpickled here."""
    try:
        with open(path, "rb") as f:
            bins, issame_list = pickle.load(f)
    except UnicodeDecodeError:
        with open(path, "rb") as f:
            bins, issame_list = pickle.load(f, encoding="bytes")
    images = []
    for idx in range(len(issame_list) * 2):
        img = np.asarray(Image.open(io.BytesIO(bins[idx])).convert("RGB"))
        if img.shape[1] != 112:
            h, w = img.shape[:2]
            new_h, new_w = (112 * h // w, 112) if h > w else (112, 112 * w // h)
            img = np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BICUBIC))
        images.append(img)
    return images, issame_list


def _images() -> List[bytes]:
    """Eight encoded images as .bin files hold them: PNG and JPEG, one grayscale, one 150x150 (resized)."""
    return [_encode(_image(0), "PNG"), _encode(_image(1), "JPEG"),
            _encode(_image(2), "JPEG"), _encode(_image(3), "PNG"),
            _encode(_image(4, gray=True), "PNG", mode="L"), _encode(_image(5, (150, 150)), "JPEG"),
            _encode(_image(6), "JPEG"), _encode(_image(7), "PNG")]


ISSAME = [True, False, True, False]


@pytest.mark.parametrize("kind", ["py3", "py2", "numpy-issame"])
def test_bin_images_equal_load_bin(tmp_path, kind) -> None:
    path = tmp_path / "set.bin"
    if kind == "py2":
        path.write_bytes(_py2_pickle(_images(), ISSAME))
    else:
        issame = np.array(ISSAME) if kind == "numpy-issame" else ISSAME
        path.write_bytes(pickle.dumps((_images(), issame), protocol=4))
    reference, issame_list = _load_bin_reference(str(path))
    bench = read_benchmark("lfw", str(path))
    assert bench.keys == [f"lfw/{i}" for i in range(8)]
    assert bench.left.tolist() == [0, 2, 4, 6] and bench.right.tolist() == [1, 3, 5, 7]
    assert bench.left.dtype == np.int64 and bench.issame.dtype == bool
    assert bench.issame.tolist() == [bool(v) for v in issame_list] == ISSAME
    assert len(bench.images) == 8
    for i in range(8):
        image = bench.images[i]
        assert image.dtype == np.uint8 and image.shape == (112, 112, 3)
        assert np.array_equal(image, reference[i]), i


def test_python2_pickles_need_bytes_encoding_and_both_load(tmp_path) -> None:
    """The published files are Python 2 pickles: a plain load fails on their byte strings, ``encoding="bytes"``
    reads them (as load_bin does); Python 3 pickles of bytes at protocol 2 (``_codecs.encode``) load too."""
    blob = _py2_pickle(_images()[:2], [True])
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(blob)
    assert pickle.loads(blob, encoding="bytes")[0][0] == _images()[0]
    (tmp_path / "py2.bin").write_bytes(blob)
    (tmp_path / "proto2.bin").write_bytes(pickle.dumps((_images()[:2], [True]), protocol=2))
    for name in ("py2.bin", "proto2.bin"):
        bench = read_benchmark("x", str(tmp_path / name))
        assert bench.images.encoded == _images()[:2] and bench.issame.tolist() == [True]


class _Payload:
    """Unpickling it creates the file ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_code_running_pickle_is_refused_and_runs_nothing(tmp_path) -> None:
    marker = tmp_path / "ran"
    blob = pickle.dumps(([_encode(_image(0), "PNG"), _Payload(str(marker))], [True]), protocol=2)
    pickle.loads(blob)[0][1].close()  # a plain load runs the payload (opens the file): the check can fail
    assert marker.exists()
    marker.unlink()
    (tmp_path / "evil.bin").write_bytes(blob)
    with pytest.raises(DataError) as info:
        read_benchmark("lfw", str(tmp_path / "evil.bin"))
    message = str(info.value)
    assert "evil.bin" in message and "refusing" in message and "\n" not in message
    assert not marker.exists()


def test_bad_bin_files_are_one_line_naming_the_file(tmp_path) -> None:
    def refused(obj, pattern: str, name: str = "x.bin") -> None:
        path = tmp_path / name
        path.write_bytes(obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=4))
        with pytest.raises(DataError, match=pattern) as info:
            read_benchmark("lfw", str(path))
        assert name in str(info.value) and "\n" not in str(info.value)

    images = _images()
    refused({"images": images}, "must hold \\(images, issame\\)")  # a dict: admitted by pickle, not a .bin
    refused((images, ["yes"] * 4), "not a list of bools")
    refused((images[:6], ISSAME), "holds 6 images for 4 comparisons")
    refused((images, []), "no comparisons")
    refused((images[:1] + ["text"] * 7, ISSAME), "image 1 is a str")
    refused(b"not a pickle", "cannot read")
    with pytest.raises(DataError, match="not found"):
        read_benchmark("lfw", str(tmp_path / "absent.bin"))
    for name in ("a/b", "", "-x"):
        with pytest.raises(ConfigError, match="benchmark name"):
            read_benchmark(name, str(tmp_path / "x.bin"))


@pytest.mark.parametrize("kind", ["bytes", "bytearray"])
def test_a_pickle_calling_bytes_with_a_number_is_refused(tmp_path, kind) -> None:
    """``bytes(n)`` / ``bytearray(n)`` (REDUCE of an allowed callable) would ask for n bytes from a file of 36: one
    line naming the file, before any memory is taken; the forms real pickles use still load."""
    size = 10 ** 12  # more than any test machine has: an allocation would fail with MemoryError, not be refused
    blob = (b"\x80\x02c__builtin__\n" + kind.encode() + b"\n\x8a\x06" + size.to_bytes(6, "little") + b"\x85R.")
    (tmp_path / "bomb.bin").write_bytes(blob)
    with pytest.raises(DataError) as info:
        read_benchmark("lfw", str(tmp_path / "bomb.bin"))
    message = str(info.value)
    assert "bomb.bin" in message and f"refusing '{kind}' called with int" in message and "\n" not in message
    for protocol in (2, 4):
        (tmp_path / "ok.pkl").write_bytes(pickle.dumps([bytearray(b"\xff\x00"), b"\xfe"], protocol=protocol))
        assert safe_pickle_load(str(tmp_path / "ok.pkl"), types="verification") == [bytearray(b"\xff\x00"), b"\xfe"]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_images_keep_their_high_byte_as_opencv_decodes_them(fmt) -> None:
    """A 16-bit gray image decodes as load_bin's ``mx.image.imdecode`` (OpenCV, IMREAD_COLOR) decodes it: each sample
    ``v >> 8`` copied to R, G and B (PIL's own RGB conversion clips them all to 255, a white image)."""
    rng = np.random.default_rng(3)
    samples = rng.integers(0, 65536, size=(112, 112), dtype=np.uint16)
    samples[0, :4] = [0, 255, 256, 65535]  # the edges of the high byte
    buffer = io.BytesIO()
    Image.fromarray(samples).save(buffer, format=fmt)
    with Image.open(io.BytesIO(buffer.getvalue())) as img:
        assert img.mode.startswith("I;16")  # the file really is 16-bit
    expected = np.repeat((samples >> 8).astype(np.uint8)[..., None], 3, axis=-1)
    decoded = decode_bin_image(buffer.getvalue())
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, expected)
    assert decoded[0, :4, 0].tolist() == [0, 0, 1, 255]
    buffer = io.BytesIO()
    Image.fromarray(samples.astype(np.int32)).save(buffer, format="TIFF")  # 32-bit: refused, not guessed
    with pytest.raises(ValueError, match=r"32-bit integer image \(PIL mode I\)"):
        decode_bin_image(buffer.getvalue())


def test_undecodable_and_non_square_images(tmp_path) -> None:
    """An image that cannot be decoded, or is not square (load_bin fails on it), is named when read; batches skip
    it and report it, as folder scoring does with an unreadable file."""
    images = [_encode(_image(0), "PNG"), b"\xff\xd8broken", _encode(_image(1, (112, 140)), "PNG"),
              _encode(_image(2), "JPEG")]
    (tmp_path / "odd.bin").write_bytes(pickle.dumps((images, [True, False]), protocol=4))
    bench = read_benchmark("odd", str(tmp_path / "odd.bin"))
    with pytest.raises(DataError, match=r"cannot decode image 1 of '.*odd.bin'"):
        bench.images[1]
    with pytest.raises(ValueError, match=r"^its 9 bytes are not an image file \(they begin 6e 6f 74 20"):
        decode_bin_image(b"not a png")
    with pytest.raises(DataError, match=r"140x112 after resizing.*load_bin fails on it too"):
        bench.images[2]
    batches = list(benchmark_batches(bench.images, batch_size=3))
    assert [b[0].tolist() for b in batches] == [[0], [3]]
    assert [i for b in batches for i, _ in b[2]] == [1, 2]


def test_damaged_images_are_found_from_their_headers_all_at_once(tmp_path) -> None:
    """check_images reads every header before any model runs: garbage, a non-square image and a decompression bomb
    (a header claiming 30000x30000) are one error with the count and the first few; one image is '1 image'."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    # a PNG header claiming 30000x30000 gray pixels (its data is never read)
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    images = [_encode(_image(0), "PNG"), b"\xff\xd8broken", _encode(_image(1, (112, 140)), "PNG"),
              _encode(_image(2), "JPEG"), bomb, b"junk"] + [_encode(_image(3), "PNG")] * 2
    (tmp_path / "odd.bin").write_bytes(pickle.dumps((images, [True] * 4), protocol=4))
    with pytest.raises(DataError) as info:
        check_images(read_benchmark("odd", str(tmp_path / "odd.bin")))
    message = str(info.value)
    assert re.fullmatch(r"benchmark 'odd' \('.*odd.bin'\): 4 images cannot be decoded \(odd/1: ValueError: its 8 "
                        r"bytes are not an image file .*; odd/2: ValueError: the image is 140x112, not square .*; "
                        r"odd/4: DecompressionBombError: .*; \.\.\.\); give an undamaged copy", message), message
    (tmp_path / "one.bin").write_bytes(pickle.dumps((images[:2], [True]), protocol=4))
    with pytest.raises(DataError, match=r"'one.*: 1 image cannot be decoded \(one/1: ValueError"):
        check_images(read_benchmark("one", str(tmp_path / "one.bin")))
    check_images(Benchmark("ok", ["ok/0", "ok/1"], np.array([0]), np.array([1]), np.array([True]),
                           BinImages("ok.bin", [images[0], images[3]])))  # the good ones pass


def test_batches_equal_folder_scoring_of_the_same_images_as_png(tmp_path) -> None:
    """The tensors a .bin's images give are those of the same images written as PNG files and read by the folder
    scoring path (the one preprocessing, the same batching)."""
    (tmp_path / "set.bin").write_bytes(_py2_pickle(_images(), ISSAME))
    bench = read_benchmark("lfw", str(tmp_path / "set.bin"))
    folder = tmp_path / "png"
    folder.mkdir()
    names = [f"{i}.png" for i in range(len(bench.images))]
    for i, name in enumerate(names):
        Image.fromarray(bench.images[i]).save(folder / name)
    for channels_last in (True, False):
        ours = list(benchmark_batches(bench.images, batch_size=3, channels_last=channels_last))
        files = list(iterate_folder(str(folder), names, CPU, batch_size=3, workers=0, channels_last=channels_last))
        assert len(ours) == len(files) == 3
        for (i, x, bad), (j, y, bad_files) in zip(ours, files):
            assert torch.equal(i, j) and torch.equal(x, y) and bad == bad_files == []
            assert x.shape[1:] == (3, 112, 112) and x.dtype == torch.float32
            assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    reader = FaceFolder(str(folder), names)
    for i in range(len(names)):
        assert torch.equal(bench.images.load(i)[0], reader.load(i)[0])


def test_batches_read_by_loader_workers_equal_those_read_in_process(tmp_path) -> None:
    (tmp_path / "set.bin").write_bytes(_py2_pickle(_images(), ISSAME))
    source = read_benchmark("lfw", str(tmp_path / "set.bin")).images
    workers = list(benchmark_batches(source, batch_size=3, workers=1))
    in_process = list(benchmark_batches(source, batch_size=3, workers=0))
    assert len(workers) == len(in_process) == 3
    assert all(torch.equal(i, j) and torch.equal(x, y) for (i, x, _), (j, y, _) in zip(workers, in_process))


def _lfw_folder(root: Path, pairs: str, files: Sequence[str], sizes=None) -> Path:
    for seed, rel in enumerate(files):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(seed, (sizes or {}).get(rel, (112, 112)))).save(path)
    (root / "pairs.txt").write_text(pairs)
    return root


def test_folder_with_lfw_pairs(tmp_path) -> None:
    files = ["Ann/Ann_0001.jpg", "Ann/Ann_0002.png", "Bob/Bob_0001.jpg", "Cy/Cy_0003.jpg"]
    pairs = "Ann\t1\t2\nAnn 2 Bob 1\n\nCy\t3\tAnn\t1\n"
    root = _lfw_folder(tmp_path / "lfw", pairs, files, sizes={"Cy/Cy_0003.jpg": (120, 100)})
    for path in (root, root / "pairs.txt"):
        bench = read_benchmark("lfw", str(path))
        assert bench.keys == ["lfw/Ann/Ann_0001.jpg", "lfw/Ann/Ann_0002.png", "lfw/Bob/Bob_0001.jpg",
                              "lfw/Cy/Cy_0003.jpg"]
        assert bench.left.tolist() == [0, 1, 3] and bench.right.tolist() == [1, 2, 0]
        assert bench.issame.tolist() == [True, False, False]
        for i, rel in enumerate(files):  # decoded as folder scoring decodes the file (resized to 112x112)
            assert np.array_equal(bench.images[i], np.asarray(decode_face(str(root / rel))))
    (root / "pairs.txt").rename(root / "xqlfw_pairs.txt")  # XQLFW's name, found when it is the only one
    assert read_benchmark("xqlfw", str(root)).keys[0] == "xqlfw/Ann/Ann_0001.jpg"


def test_folder_images_in_a_subfolder(tmp_path) -> None:
    root = tmp_path / "xqlfw"
    _lfw_folder(root / "aligned", "", ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg"])
    (root / "aligned" / "pairs.txt").unlink()
    (root / "pairs.txt").write_text("Ann 1 2\n")
    bench = read_benchmark("xq", str(root))
    assert bench.keys == ["xq/aligned/Ann/Ann_0001.jpg", "xq/aligned/Ann/Ann_0002.jpg"]


def test_folder_errors_are_one_line(tmp_path) -> None:
    root = _lfw_folder(tmp_path / "lfw", "Ann 1 2\nAnn 1 Bob 4\nCy 1 Dee 2\n", ["Ann/Ann_0001.jpg"])
    with pytest.raises(DataError, match=r"pairs.txt' names 4 images that are not in .*\(e.g. Ann/Ann_0002\.\*, "
                                        r"Bob/Bob_0004\.\*, Cy/Cy_0001\.\*\)") as info:
        read_benchmark("lfw", str(root))
    assert "\n" not in str(info.value)
    (root / "pairs.txt").write_text("Ann 1 x\n")
    with pytest.raises(DataError, match=r"pairs.txt', line 1: expected 'name i j'"):
        read_benchmark("lfw", str(root))
    (root / "pairs.txt").unlink()
    with pytest.raises(DataError, match="holds no pairs.txt"):
        read_benchmark("lfw", str(root))


@pytest.mark.parametrize("text,pattern", [
    ("P 1 2\nP 1 Q 1\nP 1 2\n", r"line 3: 'P 1 2' repeats the comparison of line 1"),
    ("P 1 2\nP 2\t1\n", r"line 2: 'P 2.*1' repeats the comparison of line 1"),  # either order
    ("P 1 Q 1\nQ 1 P 1\n", r"line 2: 'Q 1 P 1' repeats the comparison of line 1"),
    ("P 1 1\n", r"line 1: 'P 1 1' compares an image with itself"),
    ("P 1 2\nQ 1 Q 1\n", r"line 2: 'Q 1 Q 1' compares an image with itself"),
    ("P 1 Q 1\nP 1 P 2\n", r"line 2: 'P 1 P 2' is a non-mated comparison of one person \(P\)"),
    ("1\t2\nP 1 2\nP 1 Q 1\n", r"line 1: the counts 1 2 say 1 set\(s\) of 2 mated and 2 non-mated .* holds 1 "
                                r"mated and 1 non-mated"),
    ("2\nP 1 2\nP 1 Q 1\nQ 1 2\n", r"line 1: the counts 2 say 1 set\(s\) of 2 mated .* holds 2 mated and 1 "),
])
def test_pairs_files_with_repeated_self_or_miscounted_lines_are_refused(text, pattern) -> None:
    """A repeated comparison, an image with itself, a non-mated line of one person, or counts that disagree with the
    lines (LFW: S sets of N mated and N non-mated) would each change the result silently: one line naming it."""
    with pytest.raises(DataError, match=pattern) as info:
        parse_lfw_pairs(text, "pairs.txt")
    assert "pairs.txt" in str(info.value) and "\n" not in str(info.value)


def test_pairs_file_counts_that_agree_are_skipped() -> None:
    rows = [("P", 1, "P", 2, True), ("P", 1, "Q", 1, False), ("Q", 1, "Q", 2, True), ("P", 2, "Q", 2, False)]
    assert parse_lfw_pairs("2\t1\nP 1 2\nP 1 Q 1\nQ 1 2\nP 2 Q 2\n", "pairs.txt") == rows
    assert parse_lfw_pairs("2\nP 1 2\nP 1 Q 1\nQ 1 2\nP 2 Q 2\n", "pairs.txt") == rows


# ---- keys of other methods' score files ----

def _bin_of(tmp_path, name: str, images: int) -> Benchmark:
    """A ``.bin`` benchmark of ``images`` (undecoded) images: only its keys are used."""
    return Benchmark(name, [f"{name}/{i}" for i in range(images)], np.arange(0, images, 2), np.arange(1, images, 2),
                     np.ones(images // 2, dtype=bool), BinImages(str(tmp_path / f"{name}.bin"), [b""] * images),
                     str(tmp_path / f"{name}.bin"))


@pytest.mark.parametrize("key", [
    "syn/{i}",                            # as the benchmark keys them
    "unpacked/syn/{i}.png",               # inference.py on images unpacked to <index>.png
    "quality_data/syn/images/{i:05d}.jpg",  # CR-FIQA's extract_bin.py: %05d.jpg
    "{i:05d}.png",                        # inference.py run in the folder of the images
    "C:\\data\\x\\{i}.JPG",                # Windows paths, any case of a known extension
    "/abs/faces/{i:03d}",                 # no extension
])
def test_score_files_of_unpacked_bin_images_name_their_index(tmp_path, key) -> None:
    """A score file's key names image ``NAME/<index>`` of a ``.bin`` file as written, or as the file of that image
    unpacked (``<index>`` with or without leading zeros and an image extension) relative to the file's common
    folder; images it lacks are None."""
    data = _bin_of(tmp_path, "syn", 12)
    keys = [key.format(i=i) for i in range(10)]
    assert match_benchmark_keys(data, keys, "scores") == keys + [None, None]


def test_score_file_keys_that_do_not_name_bin_images(tmp_path) -> None:
    data = _bin_of(tmp_path, "syn", 4)
    with pytest.raises(DataError, match=r"scores: 'u/1.png' and 'u/01.jpg' both name image u/1; give each image "):
        match_benchmark_keys(data, ["u/0.png", "u/1.png", "u/01.jpg"], "scores")
    # Another file name, or a number with more than the index: nothing matches.
    assert match_benchmark_keys(data, ["u/a0.png", "u/0.5.png", "u/1.txt"], "scores") == [None] * 4
    # The scores of another benchmark of the run are refused; with no such benchmark, the rule matches them.
    lfw = [f"lfw/{i}" for i in range(4)]
    with pytest.raises(DataError, match=r"scores keys the images of benchmark 'lfw' \('lfw/0'\), not of 'syn'"):
        match_benchmark_keys(data, lfw, "scores", ["syn", "lfw"])
    assert match_benchmark_keys(data, lfw, "scores", ["syn"]) == lfw
    both = lfw + [f"syn/{i}" for i in range(4)]
    assert match_benchmark_keys(data, both, "scores", ["syn", "lfw"]) == both[4:]
    # One run of inference.py over the unpacked sets: matched relative to its common folder 'unpacked'.
    unpacked = [f"unpacked/{n}/{i:05d}.jpg" for n in ("lfw", "syn") for i in range(4)]
    assert match_benchmark_keys(data, unpacked, "scores", ["syn", "lfw"]) == unpacked[4:]


def test_keys_of_another_set_never_stand_in_for_images_a_file_lacks(tmp_path) -> None:
    """A file that names this set's images with its name names only those: its keys of another set ('B/7') do not
    stand in by index for the images it lacks ('A/7'), whether or not 'B' is a benchmark of the run, and one
    missing image is said as missing, not as an index that names two keys."""
    data = _bin_of(tmp_path, "A", 10)
    half = [f"A/{i}" for i in range(5)] + [f"B/{i}" for i in range(5, 10)]
    for others in (["A", "B"], ["A"]):
        assert match_benchmark_keys(data, half, "scores", others) == half[:5] + [None] * 5
    combined = [f"{n}/{i}" for n in ("A", "B") for i in range(10) if (n, i) != ("A", 7)]
    found = match_benchmark_keys(data, combined, "scores", ["A", "B"])
    assert found == [f"A/{i}" if i != 7 else None for i in range(10)]
    # Keys without the set's name are still matched by index alone.
    assert match_benchmark_keys(data, [f"u/{i}.jpg" for i in range(10)], "scores") == [f"u/{i}.jpg"
                                                                                       for i in range(10)]


def test_score_files_of_a_folder_benchmark_match_by_the_key_rule(tmp_path) -> None:
    root = _lfw_folder(tmp_path / "XQLFW", "Ann 1 2\nAnn 2 Bob 1\n", ["Ann/Ann_0001.jpg", "Ann/Ann_0002.png",
                                                                      "Bob/Bob_0001.jpg"])
    data = read_benchmark("xq", str(root))
    keys = ["data/XQLFW/Bob/Bob_0001.jpg", "data/XQLFW/Ann/Ann_0001.jpg", "data/XQLFW/Cy/Cy_0001.jpg"]
    assert match_benchmark_keys(data, keys, "scores") == [keys[1], None, keys[0]]
    assert match_benchmark_keys(data, ["xq/Ann/Ann_0002.png"], "scores") == [None, "xq/Ann/Ann_0002.png", None]


# ---- face recognition checkpoints ----

def _meta_state_dict(name: str) -> dict:
    """Backbone ``name``'s keys and shapes as meta tensors (no memory, no init)."""
    return {k: torch.empty(shape, device="meta") for k, shape in _built_shapes(name, None)}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_each_backbone_is_found_from_its_shapes_only(name) -> None:
    """Each backbone's keys and shapes are recognised as that backbone and no other (iResNet-50's keys are a subset
    of iResNet-100's, with the same shapes), under a prefix and beside a head."""
    state = _meta_state_dict(name)
    assert [b for b in BACKBONES if find_fr_backbone(state, b) is not None] == [name]
    wrapped = {f"features.module.{k}": v for k, v in state.items()}
    wrapped["fc.weight"] = torch.empty(10, 512, device="meta")  # MagFace's classification head beside it
    assert [b for b in BACKBONES if find_fr_backbone(wrapped, b) is not None] == [name]


def _check_loads(tmp_path, name: str, wrap=lambda sd: sd, backbone=None) -> None:
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    path = str(tmp_path / f"{name}.pth")
    torch.save(wrap(model.state_dict()), path)
    loaded = load_fr_backbone(path, backbone)
    assert type(loaded) is type(model) and not loaded.training
    got, want = loaded.state_dict(), model.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


# iresnet200 writes and reads a 0.45 GB checkpoint (seconds of disk on a shared machine); iresnet100 takes the same
# path in the quick suite.
@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n == "iresnet200" else [])
                                  for n in BACKBONES])
def test_every_backbone_loads_inferred(tmp_path, name) -> None:
    _check_loads(tmp_path, name)


@pytest.mark.parametrize("wrap", [
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {"state_dict": {f"backbone.{k}": v for k, v in sd.items()}, "epoch": 3},
    lambda sd: {"model": {f"model.{k}": v for k, v in sd.items()}},
    lambda sd: {"state_dict": {**{f"features.module.{k}": v for k, v in sd.items()}, "fc.weight": torch.ones(9, 512)}},
    lambda sd: {"state_dict_backbone": dict(sd), "state_dict_softmax_fc": {"weight": torch.ones(9, 512)}},
    lambda sd: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
], ids=["module", "state_dict-backbone", "model-model", "magface", "arcface-torch-resume", "no-bn-counters"])
def test_prefixes_and_wrapping_dicts(tmp_path, wrap) -> None:
    _check_loads(tmp_path, "mobilefacenet", wrap)


def test_loading_draws_no_random_numbers_and_holds_float32(tmp_path) -> None:
    """The backbone is built on the meta device and given the file's tensors: loading draws no random number (a
    seeded run is not shifted by it), and a half-precision file gives a float32 model of its values."""
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet")
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, str(tmp_path / "half.pth"))
    rng = torch.random.get_rng_state()
    loaded = load_fr_backbone(str(tmp_path / "half.pth"))
    assert torch.equal(torch.random.get_rng_state(), rng)
    got = loaded.state_dict()
    assert all(got[k].dtype == (torch.float32 if v.is_floating_point() else v.dtype) and not got[k].is_meta
               and torch.equal(got[k], v.to(got[k].dtype)) for k, v in state.items())


def test_an_ediffiqa_checkpoint_gives_its_backbone_with_a_warning(tmp_path, caplog) -> None:
    """An eDifFIQA checkpoint given as the FR model (a likely mix-up, yet a usable FR network) loads its backbone
    (``base_model.*``) and says so in one warning."""
    torch.manual_seed(0)
    state = build_model("ediffiqaT").state_dict()
    torch.save(state, str(tmp_path / "ediffiqaT.pth"))
    with caplog.at_level("WARNING", logger="model.checkpoint"):
        loaded = load_fr_backbone(str(tmp_path / "ediffiqaT.pth"))
    assert [r.getMessage() for r in caplog.records] == [
        f"weights file '{tmp_path / 'ediffiqaT.pth'}' (--fr) holds the quality model eDifFIQA(T) ('ediffiqaT'); its "
        "mobilefacenet backbone is used as the face recognition model"]
    got = loaded.state_dict()
    assert all(torch.equal(got[k], state[f"base_model.{k}"]) for k in got if not k.endswith("num_batches_tracked"))


def test_named_backbone(tmp_path) -> None:
    _check_loads(tmp_path, "mobilefacenet", backbone="mobilefacenet")
    with pytest.raises(CheckpointError, match=r"holds a mobilefacenet backbone, not iresnet18; name it "
                                              r"mobilefacenet:PATH"):
        load_fr_backbone(str(tmp_path / "mobilefacenet.pth"), "iresnet18")
    with pytest.raises(ConfigError, match="unknown backbone 'resnet'"):
        load_fr_backbone(str(tmp_path / "mobilefacenet.pth"), "resnet")


def test_wrong_or_damaged_fr_checkpoints_say_what_they_hold(tmp_path) -> None:
    def refused(obj, pattern: str) -> None:
        path = tmp_path / "fr.pth"
        if isinstance(obj, bytes):
            path.write_bytes(obj)
        else:
            torch.save(obj, str(path))
        with pytest.raises(CheckpointError, match=pattern) as info:
            load_fr_backbone(str(path))
        assert "fr.pth" in str(info.value) and "\n" not in str(info.value)

    refused({"conv.weight": torch.ones(3, 3), "head.kernel": torch.ones(512, 7), "bn.bias": torch.ones(3)},
            r"holds 3 tensors \(e.g. conv.weight \[3, 3\], head.kernel \[512, 7\], bn.bias \[3\]\).*not covered")
    refused({"epoch": 3, "arch": "ir101"}, "it holds a dict of 2 entries \\(0 tensors\\), keys epoch, arch")
    refused(b"\x00" * 64, "cannot read")
    state = build_backbone("mobilefacenet").state_dict()
    state[next(iter(state))][0] = float("nan")
    refused({"state_dict": state}, "NaN or infinite values in 1 tensor")
    with pytest.raises(CheckpointError, match="not found"):
        load_fr_backbone(str(tmp_path / "absent.pth"))

