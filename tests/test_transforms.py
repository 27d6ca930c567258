"""The shared preprocessing equals the official torchvision pipeline bit for bit."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import face_array, save_image
from PIL import Image

from dataset import load_face, normalize, official_transform, preprocess, preprocess_batch


@pytest.mark.parametrize("name,size,mode", [
    ("face.png", 112, "RGB"),
    ("big.jpg", 250, "RGB"),      # LFW-sized: goes through the antialiased bilinear resize
    ("small.PNG", 64, "RGB"),     # upsampling
    ("gray.png", 112, "L"),
    ("alpha.png", 130, "RGBA"),
    ("palette.bmp", 112, "P"),
])
def test_load_face_matches_official_pipeline(tmp_path, name: str, size: int, mode: str) -> None:
    path = os.path.join(str(tmp_path), name)
    save_image(path, seed=size, size=size, mode=mode)
    expected = official_transform()(Image.open(path).convert("RGB"))
    raw = load_face(path)
    assert raw.dtype == torch.uint8 and raw.shape == (3, 112, 112)
    assert torch.equal(normalize(raw), expected)
    assert torch.equal(preprocess(Image.open(path)), expected)


#: Sizes ``(W, H)`` the resize is checked at: down and up, odd, non-square, thin, tiny, and 112x112 itself (no-op).
RESIZE_SIZES = [(1, 1), (2, 3), (57, 91), (111, 112), (112, 111), (112, 112), (113, 113), (150, 150), (250, 250),
                (224, 160), (500, 37), (641, 479)]


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "LA", "I", "F", "1", "I;16", "YCbCr", "RGBa"])
def test_the_resize_is_torchvisions_bit_for_bit(mode: str) -> None:
    """resize_face (PIL's resize, no torchvision) gives the pixels of torchvision's ``resize(img, [112, 112],
    BILINEAR, antialias=True)`` byte for byte, downscaling and upscaling, at odd and non-square sizes, on white noise
    (the hardest case for a filter) and smooth images, in every PIL mode (the path itself only sees RGB)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from dataset.transforms import resize_face

    rng = np.random.default_rng(len(mode))
    for i, (w, h) in enumerate(RESIZE_SIZES):
        noise = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(face_array(i)).resize((w, h), Image.Resampling.BICUBIC))
        for array in (noise, smooth):
            img = Image.fromarray(array).convert(mode)
            expected = TF.resize(img, [112, 112], interpolation=InterpolationMode.BILINEAR, antialias=True)
            got = resize_face(img)
            assert (got.mode, got.size) == (expected.mode, expected.size) == (mode, (112, 112))
            assert got.tobytes() == expected.tobytes(), (mode, w, h)


def test_preprocess_is_the_official_pipeline_at_any_size() -> None:
    """The whole path (mode conversion, resize, tensor, normalisation) equals the official ``T.Compose`` bit for bit
    at every size of the resize test, for RGB and grey images."""
    pipeline = official_transform()
    rng = np.random.default_rng(1)
    for w, h in RESIZE_SIZES:
        for mode in ("RGB", "L"):
            img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).convert(mode)
            assert torch.equal(preprocess(img), pipeline(img.convert("RGB"))), (mode, w, h)


def test_preprocess_batch_and_range() -> None:
    images = [Image.fromarray(face_array(i)) for i in range(3)]
    batch = preprocess_batch(images)
    assert batch.shape == (3, 3, 112, 112) and batch.dtype == torch.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    assert torch.equal(normalize(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))


def test_channel_order_is_rgb(tmp_path) -> None:
    array = np.zeros((112, 112, 3), dtype=np.uint8)
    array[..., 0] = 255  # pure red
    path = str(tmp_path / "red.png")
    Image.fromarray(array).save(path)
    x = normalize(load_face(path))
    assert torch.all(x[0] == 1.0) and torch.all(x[1] == -1.0) and torch.all(x[2] == -1.0)


def test_the_batch_reader_gives_the_pixels_of_the_per_image_path(tmp_path, make_faces) -> None:
    """The in-process batch reader (the CPU default) decodes each image straight into an NHWC batch buffer: the
    batches equal the per-image path (load_face + normalize) bit for bit, for JPEG and PNG, RGB, grey, RGBA and
    palette images, other sizes, a partial last batch and an unreadable file; and the DataLoader-worker path too."""
    import numpy as np
    import torch

    from dataset.folder_batches import iterate_folder
    from dataset.transforms import load_face, normalize

    kinds = {"0.jpg": ("RGB", 112), "1.png": ("RGB", 112), "2.png": ("L", 112), "3.png": ("RGBA", 112),
             "4.png": ("P", 112), "5.jpg": ("RGB", 150), "6.png": ("RGB", 96), "7.jpg": ("L", 112)}
    make_faces(tmp_path, list(kinds), modes={n: mode for n, (mode, _) in kinds.items()},
               sizes={n: size for n, (_, size) in kinds.items()}, files={"8.jpg": b"\xff\xd8 not a jpeg"})
    names = [*kinds, "8.jpg"]
    cpu = torch.device("cpu")
    expected = {n: normalize(load_face(str(tmp_path / n))) for n in names if n != "8.jpg"}
    for workers in (0, 1):
        seen, bad = [], []
        for indices, x, errors in iterate_folder(str(tmp_path), names, cpu, batch_size=4, workers=workers):
            assert x.is_contiguous(memory_format=torch.channels_last)
            for j, index in enumerate(indices.tolist()):
                assert torch.equal(x[j], expected[names[index]]), (workers, names[index])
                seen.append(names[index])
            bad += [names[i] for i, _ in errors]
        assert seen == [n for n in names if n != "8.jpg"] and bad == ["8.jpg"]
    flat = next(iterate_folder(str(tmp_path), names, cpu, batch_size=3, workers=0, channels_last=False))[1]
    assert flat.is_contiguous() and np.array_equal(flat.numpy(), torch.stack([expected[n] for n in names[:3]]).numpy())


def test_batched_jpeg_decoding_path_with_an_injected_decoder(tmp_path, make_faces) -> None:
    """The GPU decoding path, run on the CPU with torchvision's decoder injected: JPEGs decoded in batches score
    like PIL-decoded ones (libjpeg-turbo both); a broken JPEG is skipped and named; a JPEG that is not 112x112 and
    a PNG take the CPU path; a decoder that fails takes the CPU path for the whole batch."""
    import numpy as np
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from dataset.folder_batches import map_folder

    names = ["a.jpg", "b.jpg", "c.png", "d.jpg", "e.jpeg"]
    root = make_faces(tmp_path / "faces", names, sizes={"d.jpg": 140}, files={"f.jpg": b"\xff\xd8 broken"})
    names = sorted(names + ["f.jpg"])
    forward = lambda x: (x.mean(dim=(1, 2, 3)),)  # noqa: E731 - a stand-in model that sees every pixel
    cpu = torch.device("cpu")
    reference = map_folder(str(root), names, cpu, forward, batch_size=4, workers=0)
    calls = []

    def decoder(data):
        calls.append(len(data))
        return [decode_jpeg(d, mode=ImageReadMode.RGB) for d in data]

    injected = map_folder(str(root), names, cpu, forward, batch_size=4, workers=0, decode_jpegs=decoder)
    assert injected.paths == reference.paths and [p for p, _ in injected.skipped] == ["f.jpg"]
    np.testing.assert_allclose(injected.scores, reference.scores, atol=2 / 255)
    assert calls and max(calls) > 1  # decoded in batches

    def failing(data):
        raise RuntimeError("nvjpeg failed")

    fallback = map_folder(str(root), names, cpu, forward, batch_size=4, workers=0, decode_jpegs=failing)
    assert fallback.scores == reference.scores and fallback.paths == reference.paths
