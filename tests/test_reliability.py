"""Promises every script keeps alike: outputs checked before any work, written files that follow the umask,
config files that would crash or hang refused quickly, messages of one short line, library warnings one line and
quiet under -q. (Each feature's own guarantees are tested with the feature: test_score_folder.py, test_data_files.py,
test_train.py, ...)"""
from __future__ import annotations

import os
import stat

import pytest
import yaml
from helpers import assert_user_error, run_script

import diffiqa_score
import evaluate
import export_onnx
import extract_embeddings
import inference
import prepare_data
import train
import train_diffusion
from utils.config import load_config
from utils.errors import ConfigError
from utils.io import write_csv


def run(module, prog, argv, capsys):
    return run_script(module.main, prog, argv, capsys)


# ------------------------------------------------------------------------------------------------- outputs
def unwritable_outputs(tmp_path):
    """An output path that is a file, and one on a read-only file system (root can write anywhere else)."""
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    return [str(a_file), "/proc/ediffiqa-test/out"]


def script_args(name, out, tmp_path, checkpoint_dir):
    """Arguments that reach each script's output check, with ``out`` as the output folder (or file's folder)."""
    cfg = tmp_path / "cfg.yaml"
    if name == "train.py":
        cfg.write_text(yaml.safe_dump({"base": {"model": "ediffiqaT", "save_path": out, "device": "cpu"}}))
        return train, ["-c", str(cfg)]
    if name == "train_diffusion.py":
        cfg.write_text(yaml.safe_dump({"trainer_params": {"results_folder": out, "device": "cpu"}}))
        return train_diffusion, ["-c", str(cfg)]
    if name == "diffiqa_score.py":
        return diffiqa_score, ["--images", str(tmp_path), "--output", out, "--device", "cpu"]
    return {
        "inference.py": (inference, ["--images", str(tmp_path), "--model", "ediffiqaT", "--weights",
                                     os.path.join(checkpoint_dir, "ediffiqaT.pth"), "--output", out]),
        "prepare_data.py": (prepare_data, ["-sl", out, "-q"]),
        "evaluate.py": (evaluate, ["--pairs", "p.csv", "--scores", "ours=s.pkl", "--output", out]),
        "extract_embeddings.py": (extract_embeddings, ["--images", str(tmp_path), "--backbone", "mobilefacenet",
                                                       "--weights", "w.pth", "--output", os.path.join(out, "e.pkl")]),
        "export_onnx.py": (export_onnx, ["--model", "ediffiqaT", "--weights", "w.pth", "--output",
                                         os.path.join(out, "m.onnx")]),
    }[name]


@pytest.mark.parametrize("name", ["inference.py", "prepare_data.py", "train.py", "evaluate.py", "diffiqa_score.py",
                                  "train_diffusion.py", "extract_embeddings.py", "export_onnx.py"])
def test_unwritable_output_fails_before_any_work(name, tmp_path, checkpoint_dir, capsys) -> None:
    for out in unwritable_outputs(tmp_path):
        module, argv = script_args(name, out, tmp_path, checkpoint_dir)
        code, err = run(module, name, argv, capsys)
        assert_user_error(code, err, name, r"output folder '.*' \(.*\) (is a file|cannot be written)")


def test_written_files_follow_the_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        write_csv(str(tmp_path / "a.csv"), ("path", "quality"), [("x", "1")])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.csv").st_mode) == 0o644


# -------------------------------------------------------- configs that would crash or hang, and the messages about them
def _billion_laughs() -> str:
    text = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for prev, name in zip("abcdefgh", "bcdefghi"):
        text += f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    return text


@pytest.mark.parametrize("kind,pattern", [
    ("bomb", r"is refused: its aliases expand to more than 100000 values"),
    ("deep", r"is refused: it is nested more than 64 levels deep"),
    ("big", r"is larger than 1 MiB"),
])
@pytest.mark.parametrize("name", ["inference.py", "train.py", "diffiqa_score.py", "train_diffusion.py", "evaluate.py"])
def test_config_bombs_are_refused_quickly(name, kind, pattern, tmp_path, capsys) -> None:
    import time

    text = {"bomb": _billion_laughs(), "deep": "a: " + "[" * 50000 + "]" * 50000 + "\n",
            "big": "# " + "x" * (1 << 20) + "\n"}[kind]
    (tmp_path / "cfg.yaml").write_text(text)
    module = {"inference.py": inference, "train.py": train, "diffiqa_score.py": diffiqa_score,
              "train_diffusion.py": train_diffusion, "evaluate.py": evaluate}[name]
    start = time.perf_counter()
    code, err = run(module, name, ["-c", str(tmp_path / "cfg.yaml")], capsys)
    assert time.perf_counter() - start < 1.0
    assert_user_error(code, err, name, pattern)


def test_messages_show_a_short_value_and_the_full_key(tmp_path, capsys) -> None:
    from engine.training.config import TrainConfig

    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"base": {"seed": "x" * 100000}}))
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, str(tmp_path / "a.yaml"), {})
    assert len(str(info.value)) < 300 and "'base.seed' must be int" in str(info.value)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"optimizer": {"group_2": {"params": "base_model", "limit": -5}}}))
    with pytest.raises(ConfigError, match=r"'optimizer.group_2.limit' must be at least 1, got -5"):
        load_config(TrainConfig, str(tmp_path / "b.yaml"), {})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"dataloader": {"val": {"params": {"num_workers": -1}}}}))
    with pytest.raises(ConfigError, match=r"'dataloader.val.params.num_workers' must be between 0 and 256"):
        load_config(TrainConfig, str(tmp_path / "c.yaml"), {})


def test_a_wrong_typed_section_is_an_error_even_when_a_flag_touches_it(tmp_path) -> None:
    from engine.training.config import TrainConfig

    (tmp_path / "c.yaml").write_text("base: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"'base' must be a mapping of keys, got \[1, 2\]"):
        load_config(TrainConfig, str(tmp_path / "c.yaml"), {"base.epochs": 2})


def test_a_newline_in_a_path_stays_on_one_line(tmp_path, capsys) -> None:
    code, err = run(inference, "inference.py", ["--images", str(tmp_path / "two\nlines"), "--output",
                                                str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "inference.py", r"image folder '.*two\\nlines' \(dataset.loc or --images\) does not")
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------- library warnings
def test_library_warnings_are_one_line_and_quiet_under_q(capsys, monkeypatch) -> None:
    """A library's warning (matplotlib's, NumPy's) is one log line, and none under ``-q``."""
    import sys
    import warnings

    from utils.cli import setup_logging

    # Warnings shown on stderr as a plain run shows them (pytest records them instead).
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, filename, lineno, file=None, line=None:
                        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line)))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        setup_logging(False)
        warnings.warn("a library speaks\nover two lines", UserWarning, stacklevel=1)
        assert capsys.readouterr().err == ""
        setup_logging(True)
        warnings.warn("a library speaks\nover two lines", UserWarning, stacklevel=1)
        assert capsys.readouterr().err == "WARNING UserWarning: a library speaks\n"
