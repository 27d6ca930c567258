"""Test helpers: running a script's main as its command line does and checking its one-line errors, and
:func:`make_faces`, which writes every folder of faces the tests use (the fixture ``make_faces`` of conftest.py);
the synthetic checkpoints, images and training layouts the tests share with the benchmarks are re-exported from
where they live (``model.synthetic``, ``dataset.synthetic``, ``tests.layouts``). Imported by the tests as
``helpers`` (pytest puts ``tests/`` on the path)."""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pytest
import yaml
from PIL import Image

import diffiqa_score
from dataset.synthetic import face_array, save_image  # noqa: F401 - re-exported for the tests
from model.synthetic import load_manifest, manifest_state_dict  # noqa: F401 - re-exported for the tests
from tests.layouts import official_layout, official_schema_config  # noqa: F401 - re-exported for the tests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A file name that is not valid UTF-8 (byte 0xff), as Linux allows.
ODD_NAME = os.fsdecode(b"caf\xff.png")

#: The U-Net of the tiny DifFIQA denoiser the tests score with (fixture ``diffiqa_setup``).
TINY_UNET = {"dim": 8, "dim_mults": [1, 2, 4, 8], "attn_heads": 1, "attn_dim_head": 8}


def run_script(main: Callable[[Optional[List[str]]], int], prog: str, argv: List[str],
               capsys: Optional[pytest.CaptureFixture] = None) -> Tuple[int, str]:
    """Run a script's ``main`` as its command line does; returns the exit code and what it wrote to stderr."""
    from utils.cli import run_cli

    code = run_cli(main, argv, prog)
    return code, capsys.readouterr().err if capsys is not None else ""


def assert_user_error(code: int, err: str, prog: str, pattern: str) -> None:
    """A user mistake: exit code 2, exactly one ``<prog>: error: ...`` line matching ``pattern``, no traceback."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert "Traceback" not in err


def make_faces(root: Union[str, Path], names: Union[int, Sequence[str], Mapping[str, int]] = 3, *, size: int = 112,
               sizes: Optional[Mapping[str, int]] = None, modes: Optional[Mapping[str, str]] = None,
               image: Optional[Callable[[int], np.ndarray]] = None, quality: Optional[int] = None,
               files: Optional[Mapping[str, Union[bytes, str]]] = None) -> Path:
    """Write a folder of synthetic faces (:func:`dataset.synthetic.save_image`) and return it as a ``Path``.

    Args:
        root: The folder (created, parents too; it may exist).
        names: How many images (``0.png``, ``1.png``, ...), their paths relative to ``root`` (the i-th seeded with
            ``i``), or ``{path: seed}``. The extension picks the format (JPEG for ``.jpg``/``.jpeg``).
        size: The side of every image in pixels, except those named in ``sizes`` (``{path: side}``).
        modes: ``{path: PIL mode}`` for images stored other than RGB (``"L"``, ``"RGBA"``, ``"P"``).
        image: ``seed -> (H, W, 3) uint8 array`` drawn instead of the synthetic face (``size`` then unused).
        quality: The JPEG quality of images drawn by ``image`` (PIL's default otherwise).
        files: Other files, ``{path: bytes or text}``: unreadable "images", notes, stand-ins scored by size.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if isinstance(names, int):
        names = [f"{i}.png" for i in range(names)]
    seeds = dict(names) if isinstance(names, Mapping) else {name: i for i, name in enumerate(names)}
    for name, seed in seeds.items():
        path = root / name
        if image is None:
            save_image(str(path), seed=seed, size=(sizes or {}).get(name, size), mode=(modes or {}).get(name, "RGB"))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image(seed)).save(path, **({} if quality is None else {"quality": quality}))
    for name, content in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            (root / name).write_text(content)
        else:
            (root / name).write_bytes(content)
    return root


def diffiqa_config(tmp_path: Path, images: Path, out: Path, **base) -> str:
    """diffiqa_score.py's config for the folder of the fixture ``diffiqa_setup``: the official inference section
    (with its tiny denoiser and MobileFaceNet as the FR model) writing to ``out``, plus ``base`` additions."""
    (tmp_path / "den_train.yaml").write_text(yaml.safe_dump({"unet_params": TINY_UNET}))
    (tmp_path / "fr_config.yaml").write_text(yaml.safe_dump(
        {"fr_model": {"module": "model.mobilenet.MobileFaceNet", "weights": str(tmp_path / "fr.pth")}}))
    cfg = {"inference": {"used_timesteps": 5, "repeats": 2, "images_loc": str(images),
                         "train_config": str(tmp_path / "den_train.yaml"), "model_loc": str(tmp_path / "den.pt"),
                         "fr_config": str(tmp_path / "fr_config.yaml"), "save_loc": str(out), "batch_size": 8,
                         "verbose": 0},
           "base": {"device": "cpu", "flush_every": 1, "figure_tiles": 0, **base},
           "dataset": {"num_workers": 0}}
    path = tmp_path / f"cfg-{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run_diffiqa(argv: List[str], capsys: pytest.CaptureFixture) -> Tuple[int, str]:
    """diffiqa_score.py run as its command line runs it: the exit code and its stderr."""
    return run_script(diffiqa_score.main, "diffiqa_score.py", argv, capsys)


def read_scores(out: Path) -> dict:
    """The scores pickle ``quality-scores.pkl`` of the output folder ``out``."""
    with open(out / "quality-scores.pkl", "rb") as handle:
        return pickle.load(handle)
