"""Shared fixtures (helpers live in ``helpers.py``): the face-folder factory every test builds its images with, the
synthetic checkpoints, DifFIQA's tiny scoring setup, and the guards every test runs under (no internet, CUDA tests
skipped without CUDA)."""
from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from typing import Callable, Iterator, Tuple
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from helpers import ODD_NAME, TINY_UNET, load_manifest, make_faces, manifest_state_dict, official_layout
from PIL import Image

from model.build import build_backbone
from model.diffusion import build_diffusion


@pytest.fixture(name="make_faces", scope="session")
def make_faces_fixture() -> Callable[..., Path]:
    """The face-folder factory :func:`helpers.make_faces`: ``make_faces(root, names, ...) -> root``."""
    return make_faces


@pytest.fixture()
def odd_faces(tmp_path: Path) -> Path:
    """Three faces, one of them in a subfolder and one named with a byte that is not UTF-8 (:data:`ODD_NAME`)."""
    return make_faces(tmp_path / "faces", ["a/1.png", "a/2.png", ODD_NAME])


@pytest.fixture()
def diffiqa_setup(tmp_path: Path) -> Tuple[Path, Path]:
    """``(tmp_path, images)`` for diffiqa_score.py (see :func:`helpers.diffiqa_config`): a tiny random denoiser
    ``den.pt`` and MobileFaceNet ``fr.pth`` in ``tmp_path``, and five smooth noise images in two identity folders
    with an unreadable JPEG in ``images``."""
    torch.manual_seed(0)
    den = build_diffusion(TINY_UNET, {})
    torch.save({"step": 1, "model": den.state_dict(), "opt": {}, "ema": {}, "scaler": None}, tmp_path / "den.pt")
    torch.save(build_backbone("mobilefacenet").state_dict(), tmp_path / "fr.pth")
    rng = np.random.default_rng(0)
    small = [(rng.random((14, 14, 3)) * 255).astype(np.uint8) for _ in range(5)]
    images = make_faces(tmp_path / "img", {f"id{i % 2}/{i}.png": i for i in range(5)},
                        image=lambda i: np.asarray(Image.fromarray(small[i]).resize((112, 112),
                                                                                    Image.Resampling.BICUBIC)),
                        files={"id0/broken.jpg": b"not an image"})
    return tmp_path, images


@pytest.fixture(scope="session")
def official_set(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path, Path]:
    """``(root, images, data)``: the tiny training set in the official layout (:func:`tests.layouts.official_layout`,
    40 faces of 4 identities, prepared), built once; tests only read it (one that changes a file copies it first)."""
    root = tmp_path_factory.mktemp("official")
    return (root, *official_layout(root))


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder holding ``ediffiqa{L,M,S,T}.pth`` built from the manifest (plain state dicts, official layout)."""
    folder = tmp_path_factory.mktemp("weights")
    for variant in load_manifest():
        torch.save(manifest_state_dict(variant, seed=1), str(folder / f"{variant}.pth"))
    return str(folder)


def pytest_collection_modifyitems(config: pytest.Config, items) -> None:
    """Tests marked ``gpu`` need CUDA: without it they are skipped, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture()
def published_t(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[bytes]:
    """A mirror on 127.0.0.1 that serves a manifest-shaped eDifFIQA(T) checkpoint (seed 1) where the published one
    lies (EDIFFIQA_MIRROR points at it); yields the checkpoint's bytes."""
    from model.registry import get_variant

    root = tmp_path_factory.mktemp("mirror")
    target = root / urlsplit(get_variant("ediffiqaT").weights.url).path.lstrip("/")
    target.parent.mkdir(parents=True)
    torch.save(manifest_state_dict("ediffiqaT", seed=1), str(target))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("EDIFFIQA_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}")
    yield target.read_bytes()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never reach the internet: weights fetched by name come from a mirror on a closed local port (a test
    that serves files sets its own), into a cache of the test's own."""
    monkeypatch.setenv("EDIFFIQA_MIRROR", "http://127.0.0.1:9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
