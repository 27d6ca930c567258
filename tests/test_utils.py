"""Config loading, atomic writes, the restricted unpickler, devices and face alignment."""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pytest
import torch

from dataset.alignment import ARCFACE_TEMPLATE, align_face, estimate_similarity
from utils.config import from_dict, load_yaml
from utils.errors import ConfigError
from utils.io import atomic_open, write_pickle
from utils.runtime import resolve_device, seed_everything


@dataclass
class _Inner:
    flag: bool = False
    size: Optional[int] = None
    rate: float = 1.0


@dataclass
class _Outer:
    name: str = "x"
    inner: _Inner = field(default_factory=_Inner)


def test_from_dict_types_and_official_0_1_flags() -> None:
    cfg = from_dict(_Outer, {"name": "y", "inner": {"flag": 1, "size": 3, "rate": 2}})
    assert cfg.inner.flag is True and cfg.inner.size == 3 and cfg.inner.rate == 2.0 and cfg.name == "y"
    assert from_dict(_Outer, {"inner": {"size": None}}).inner.size is None


@pytest.mark.parametrize("data,pattern", [
    ({"nme": "y"}, r"cfg.yaml: unknown key 'nme' \(known keys here: name, inner\)"),
    ({"inner": {"flag": 2}}, r"'inner.flag' must be bool, got 2"),
    ({"inner": {"size": True}}, r"'inner.size' must be int or null, got True"),
    ({"inner": {"rate": "fast"}}, r"'inner.rate' must be float"),
    ({"inner": 3}, r"'inner' must be a mapping"),
    ({"name": 5}, r"'name' must be str"),
])
def test_from_dict_errors_name_the_key(data, pattern) -> None:
    with pytest.raises(ConfigError, match=pattern):
        from_dict(_Outer, data, source="cfg.yaml")


def test_load_yaml_errors(tmp_path) -> None:
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(str(tmp_path / "list.yaml"))
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(str(tmp_path / "empty.yaml")) == {}
    # YAML tags that would build Python objects are not accepted (safe_load).
    (tmp_path / "evil.yaml").write_text("x: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(str(tmp_path / "evil.yaml"))


def test_atomic_write_keeps_old_file_on_failure(tmp_path) -> None:
    path = str(tmp_path / "out.pkl")
    write_pickle(path, {"a": 1.0})
    with pytest.raises(RuntimeError):
        with atomic_open(path, "wb") as handle:
            handle.write(b"partial")
            raise RuntimeError("crash mid-write")
    assert pickle.load(open(path, "rb")) == {"a": 1.0}
    assert os.listdir(tmp_path) == ["out.pkl"]


@pytest.mark.parametrize("existing,fail_at,said", [
    ((), "write", r"; nothing was written$"),
    (("a.bin",), "write", r"; the previous a.bin is unchanged; b.bin was not written$"),
    (("a.bin", "b.bin"), "write", r"; the previous a.bin, b.bin are unchanged$"),
    ((), "second rename", r"; a.bin was written; b.bin was not written$"),
])
def test_a_failed_file_set_says_what_it_left(tmp_path, monkeypatch, existing, fail_at, said) -> None:
    """The message of a failed set names what is really there: the previous files where there were some, nothing
    written where there were none, and the files already renamed into place when a rename fails."""
    import errno
    import re

    from utils.io import OutputError, file_set

    for name in existing:
        (tmp_path / name).write_bytes(b"old")
    if fail_at == "second rename":
        real, calls = os.replace, []

        def replace(src, dst):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(errno.EIO, "Input/output error")
            real(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError) as info:
        with file_set() as open_new:
            open_new(str(tmp_path / "a.bin")).write(b"new")
            open_new(str(tmp_path / "b.bin")).write(b"new")
            if fail_at == "write":
                raise OSError(errno.ENOSPC, "No space left on device")
    assert re.search(r"^cannot write '.*b.bin': (No space left on device|Input/output error)" + said, str(info.value))
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == {
        **{name: b"old" for name in existing}, **({"a.bin": b"new"} if fail_at == "second rename" else {})}


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("AUTO").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="not understood"):
        resolve_device("gpu0")


def test_seed_everything_is_deterministic() -> None:
    seed_everything(7)
    a = (np.random.rand(), torch.rand(1).item())
    gen = seed_everything(7)
    assert (np.random.rand(), torch.rand(1).item()) == a
    assert torch.randint(0, 10**6, (1,), generator=gen).item() == torch.randint(
        0, 10**6, (1,), generator=torch.Generator().manual_seed(7)).item()


def test_similarity_transform_is_recovered() -> None:
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(0).uniform(0, 100, size=(5, 2))
    dst = src @ rot.T + shift
    matrix = estimate_similarity(src, dst)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_align_face_puts_landmarks_on_the_template() -> None:
    from PIL import Image, ImageDraw

    # Landmarks of a face twice the template size, shifted: each marked by a coloured dot.
    landmarks = ARCFACE_TEMPLATE * 2.0 + np.array([30.0, 20.0])
    img = Image.new("RGB", (300, 300), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for x, y in landmarks:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(255, 255, 255))
    crop = np.asarray(align_face(img, landmarks))
    assert crop.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].mean() > 200
    assert crop.mean() < 30


def test_only_the_first_torchrun_process_logs_info(monkeypatch) -> None:
    import logging

    from utils.cli import setup_logging

    monkeypatch.setenv("RANK", "1")
    setup_logging(True)
    assert logging.getLogger().level == logging.WARNING
    monkeypatch.setenv("RANK", "0")
    setup_logging(True)
    assert logging.getLogger().level == logging.INFO
