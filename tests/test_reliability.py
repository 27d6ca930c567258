"""Nothing lost, nothing silent: outputs checked before work and written as sets, any file name, folder walks that
end, non-finite numbers refused, and config values that would crash later refused up front."""
from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import stat

import numpy as np
import pytest
import torch
import yaml
from helpers import ODD_NAME, assert_user_error, manifest_state_dict, run_script, save_image

import diffiqa_score
import evaluate
import export_onnx
import extract_embeddings
import inference
import prepare_data
import train
import train_diffusion
from dataset.formats import read_scores_csv
from dataset.image_folder import find_images
from utils.config import load_config
from utils.errors import ConfigError
from utils.io import safe_pickle_load, write_csv


def run(module, prog, argv, capsys):
    return run_script(module.main, prog, argv, capsys)


# ---------------------------------------------------------------- outputs

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


def test_a_failed_write_leaves_the_previous_set(odd_faces, checkpoint_dir, tmp_path, capsys, monkeypatch) -> None:
    """A full disk after the first file of the pickle/CSV pair: the earlier pair stays, as it was."""
    out = tmp_path / "scores"
    argv = ["--images", str(odd_faces), "--model", "ediffiqaT", "--weights",
            os.path.join(checkpoint_dir, "ediffiqaT.pth"), "--output", str(out), "-q", "--device", "cpu"]
    assert run(inference, "inference.py", argv, capsys)[0] == 0
    before = {f: (out / f).read_bytes() for f in ("quality-scores.pkl", "quality-scores.csv")}
    save_image(str(odd_faces / "a" / "3.png"), seed=9)

    import dataset.formats

    real = dataset.formats.csv_writer

    def full_disk(header, rows):
        mode, write = real(header, rows)

        def fail(handle):
            write(handle)
            raise OSError(errno.ENOSPC, "No space left on device")
        return mode, fail

    monkeypatch.setattr(dataset.formats, "csv_writer", full_disk)
    code, err = run(inference, "inference.py", argv, capsys)
    assert_user_error(code, err, "inference.py", r"cannot write '.*quality-scores.csv': No space left on device; the "
                                                 r"previous quality-scores.pkl, quality-scores.csv are unchanged")
    assert {f: (out / f).read_bytes() for f in before} == before
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary left behind


def test_written_files_follow_the_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        write_csv(str(tmp_path / "a.csv"), ("path", "quality"), [("x", "1")])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.csv").st_mode) == 0o644


# ---------------------------------------------------------------- file names and folders

def test_a_name_that_is_not_utf8_is_scored_and_written_losslessly(odd_faces, checkpoint_dir, tmp_path, capsys) -> None:
    out = tmp_path / "scores"
    code, err = run(inference, "inference.py", ["--images", str(odd_faces), "--model", "ediffiqaT", "--weights",
                                                os.path.join(checkpoint_dir, "ediffiqaT.pth"), "--output", str(out),
                                                "-q", "--device", "cpu"], capsys)
    assert code == 0, err
    table = pickle.load(open(out / "quality-scores.pkl", "rb"))
    odd = os.path.join(str(odd_faces), ODD_NAME)
    assert odd in table and os.path.isfile(odd)  # the exact path: it opens the file
    assert read_scores_csv(str(out / "quality-scores.csv")) == table  # the CSV reads back to the same keys
    assert b"caf\xff.png" in (out / "quality-scores.csv").read_bytes()  # the name's own bytes


def test_diffiqa_seeds_of_any_name() -> None:
    """A seed is the run seed and the name's bytes as the OS holds them through SHA-256 (so the same in every
    process, whatever Python's hash seed), for names that are not UTF-8 too."""
    import hashlib

    from engine.labels.scoring import image_seed

    def by_hand(seed: int, name: bytes) -> int:
        return int.from_bytes(hashlib.sha256(b"%d:%s" % (seed, name)).digest()[:8], "little") & (2 ** 63 - 1)

    assert image_seed(0, ODD_NAME) != image_seed(0, "caf.png")
    assert image_seed(0, ODD_NAME) == by_hand(0, b"caf\xff.png")
    assert image_seed(3, "a/b.png") == by_hand(3, b"a/b.png")


def test_link_loops_fifos_and_unreadable_folders(tmp_path, caplog, monkeypatch, make_faces) -> None:
    root = make_faces(tmp_path / "faces", {"a/1.png": 1, "b/2.png": 1})
    os.symlink(str(root), str(root / "a" / "loop"))          # a loop back to the top
    os.symlink(str(root / "b"), str(root / "b_again"))       # a second way into b
    os.symlink(str(root / "a" / "1.png"), str(root / "link.png"))  # a link to a file counts as an image
    os.mkfifo(str(root / "x.jpg"))
    os.mkdir(str(root / "locked"))
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING):
        found = find_images(str(root))
    assert found == ["a/1.png", "b/2.png", "link.png"]
    assert "left out 1 entries of" in caplog.text and "x.jpg" in caplog.text
    assert "could not read 1 folder(s)" in caplog.text and "locked" in caplog.text


# ---------------------------------------------------------------- non-finite numbers

def test_nan_weights_are_refused(odd_faces, tmp_path, capsys) -> None:
    state = manifest_state_dict("ediffiqaT")
    state["mlp.l2.weight"][0, 0] = float("nan")
    torch.save(state, str(tmp_path / "nan.pth"))
    code, err = run(inference, "inference.py", ["--images", str(odd_faces), "--model", "ediffiqaT", "--weights",
                                                str(tmp_path / "nan.pth"), "--output", str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "inference.py", r"holds NaN or infinite values in 1 tensor\(s\) \(first: "
                                                 r"mlp.l2.weight\)")


@pytest.mark.parametrize("bad", ["quality", "similarity"])
def test_nan_qualities_and_similarities_in_evaluate(bad, tmp_path, capsys) -> None:
    pairs = tmp_path / "pairs.csv"
    sim = "nan" if bad == "similarity" else "0.2"
    pairs.write_text(f"a,b,mated,similarity\nx/1.png,x/2.png,1,0.8\nx/1.png,y/1.png,0,{sim}\n")
    q = float("nan") if bad == "quality" else 0.4
    (tmp_path / "q.pkl").write_bytes(pickle.dumps({"x/1.png": 0.5, "x/2.png": q, "y/1.png": 0.2}))
    code, err = run(evaluate, "evaluate.py", ["--pairs", str(pairs), "--scores", f"ours={tmp_path / 'q.pkl'}",
                                              "--output", str(tmp_path / "o")], capsys)
    pattern = (r"1 of 3 scores are NaN or infinite \(e.g. 'x/2.png'\)" if bad == "quality"
               else r"1 similarities are NaN or infinite \(e.g. rows 3\)")
    assert_user_error(code, err, "evaluate.py", pattern)


@pytest.mark.parametrize("row,pattern", [
    ("x/1.png,high", r"line 3: expected 'path,quality', but the quality 'high' is not a plain number"),
    ("x/1.png", r"line 3: expected 'path,quality', got 1 field\(s\): 'x/1.png'"),
    ("x/1.png,0.5,extra", r"line 3: expected 'path,quality', got 3 field\(s\): 'x/1.png,0.5,extra'"),
    ("x/1.png,\uff10.\uff15", r"line 3: expected 'path,quality', but the quality '\uff10.\uff15' is not a plain"),
    ("x/1.png,1_000", r"line 3: expected 'path,quality', but the quality '1_000' is not a plain number"),
    ("x/1.png,\u20030.5", r"line 3: expected 'path,quality', but the quality '\\u20030.5' is not a plain number"),
    ('"x/\n1.png",0.1\nx/2.png,0.4', r"'x/2.png' is given twice, on lines 2 and 5; keep one"),
])
def test_malformed_quality_csv_rows_name_the_line(row, pattern, tmp_path, capsys) -> None:
    """A scores CSV row of other than two fields, a quality that float() takes but that is not plain ASCII
    notation (full-width digits, '1_000', a Unicode space), a path given twice (both lines named, a quoted name over
    two lines counted): one line naming the file and the line."""
    (tmp_path / "pairs.csv").write_text("a,b,mated,similarity\nx/1.png,x/2.png,1,0.5\n")
    (tmp_path / "q.csv").write_text(f"path,quality\nx/2.png,0.3\n{row}\n", encoding="utf-8")
    code, err = run(evaluate, "evaluate.py", ["--pairs", str(tmp_path / "pairs.csv"), "--scores",
                                              f"ours={tmp_path / 'q.csv'}", "--output", str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "evaluate.py", r"q.csv'.*" + pattern)


def test_quality_csvs_with_a_byte_order_mark_and_plain_numbers_are_read(tmp_path) -> None:
    """A scores or labels CSV that a spreadsheet saved with a UTF-8 byte-order mark is read (as pairs files are);
    every notation ``repr(float)`` writes reads back to the same float, with spaces around."""
    from dataset.formats import read_label_values

    values = [0.5, -1.5e-07, 1e+22, 3.0, 0.0, -0.0, 12345.678]
    text = "path,quality\n" + "".join(f"x/{i}.png,{v!r}\n" for i, v in enumerate(values)) + "x/7.png, 7 \n"
    (tmp_path / "q.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    expected = {**{f"x/{i}.png": v for i, v in enumerate(values)}, "x/7.png": 7.0}
    assert read_scores_csv(str(tmp_path / "q.csv")) == expected
    paths, qualities, _ = read_label_values(str(tmp_path / "q.csv"))
    assert dict(zip(paths, qualities.tolist())) == expected


def test_nan_embedding_in_prepare_data(tmp_path, capsys) -> None:
    labels = [(f"id/{i}.png", 0.9) for i in range(12)]
    embeddings = {p: np.ones(4, dtype=np.float32) for p, _ in labels}
    embeddings["id/3.png"][1] = np.nan
    (tmp_path / "l.pkl").write_bytes(pickle.dumps(labels))
    (tmp_path / "e.pkl").write_bytes(pickle.dumps(embeddings))
    code, err = run(prepare_data, "prepare_data.py", ["-ll", str(tmp_path / "l.pkl"), "-el", str(tmp_path / "e.pkl"),
                                                      "-sl", str(tmp_path / "o"), "-q"], capsys)
    assert_user_error(code, err, "prepare_data.py", r"1 embeddings hold NaN or infinite values \(e.g. 'id/3.png'\)")
    assert not os.listdir(tmp_path / "o")  # nothing half-written


def test_a_nan_loss_stops_training_and_keeps_the_checkpoints(tmp_path, capsys, monkeypatch) -> None:
    from helpers import official_layout, official_schema_config

    from model.loss import DistillationLoss

    images, data = official_layout(tmp_path)
    out = tmp_path / "run"
    calls = {"n": 0}
    real = DistillationLoss.forward

    def diverging(self, *args, **kwargs):
        terms = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 7:  # epoch 2 (5 steps + 2 validation)
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(DistillationLoss, "forward", diverging)
    code, err = run(train, "train.py", ["-c", official_schema_config(tmp_path, images, data, out, "ediffiqaT")],
                    capsys)
    assert code == 1 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1 and "the training loss is nan at epoch 2, step 1" in lines[0]
    assert "checkpoints of epoch 1 and before" in lines[0]
    assert torch.load(str(out / "last.pt"), weights_only=True)["epoch"] == 1
    assert (out / "model.pth").is_file()


def test_export_refuses_a_failed_parity_check(checkpoint_dir, tmp_path, capsys, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    import engine.scoring.export

    class Wrong:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, x):
            return None, np.full(len(x), np.nan, dtype=np.float32)

    monkeypatch.setattr(engine.scoring.export, "OnnxModel", Wrong)
    out = tmp_path / "m.onnx"
    code, err = run(export_onnx, "export_onnx.py", ["--model", "ediffiqaT", "--weights",
                                                    os.path.join(checkpoint_dir, "ediffiqaT.pth"), "--output",
                                                    str(out)], capsys)
    assert code == 1 and "ONNX Runtime and PyTorch disagree" in err and "Traceback" not in err
    assert not out.exists() and os.listdir(tmp_path) == []


# ---------------------------------------------------------------- config values

@pytest.mark.parametrize("section,value,pattern", [
    ("optimizer", {"params": {"momentum": 0.9}}, r"'optimizer.params.momentum' is not a setting of torch.optim.Adam"),
    ("optimizer", {"params": {"betas": [0.9]}}, r"'optimizer.params.betas' must be a list of 2 finite numbers, got "
                                                r"\[0.9\]"),
    ("optimizer", {"params": {"betas": [0.9, 1.0]}}, r"'optimizer.params.betas' is refused by torch.optim.Adam: "
                                                     r"Invalid beta parameter at index 1"),
    ("optimizer", {"params": {"eps": -1}}, r"'optimizer.params.eps' is refused by torch.optim.Adam: Invalid epsilon "
                                           r"value: -1"),
    ("optimizer", {"params": {"weight_decay": float("inf")}}, r"'optimizer.params.weight_decay' must be a finite "
                                                              r"number, got inf"),
    ("optimizer", {"params": {"fused": True}}, r"'optimizer.params.fused' is not a setting of torch.optim.Adam that "
                                               r"this project passes on \(it takes betas, eps, weight_decay"),
    ("optimizer", {"module": "torch.optim.SGD", "params": {"momentum": 0.9, "nesterov": True, "dampening": 0.5}},
     r"'optimizer.params.nesterov' is refused by torch.optim.SGD: Nesterov momentum requires a momentum and zero "
     r"dampening"),
    ("optimizer", {"grad_clip": float("inf")}, r"'optimizer.grad_clip' must be a positive number or null, got inf"),
    ("loss", {"quality": {"params": {"base_loss": {"params": {"beta": 1}}}}}, r"do not fit torch.nn.L1Loss: it takes "
                                                                              r"reduction, not 'beta'"),
    ("optimizer", {"group_2": {"params": "mlp", "lr": 1e-3}}, r"both name 'mlp'"),
    ("base", {"seed": 10 ** 23}, r"'base.seed' must be between 0 and 2\*\*63 - 1"),
    ("dataloader", {"train": {"params": {"batch_size": 10 ** 20}}}, r"batch_size' must be between 1 and"),
    ("wandb", {"mode": "sometimes"}, r"'wandb.mode' must be online, offline or disabled"),
])
def test_train_values_that_would_crash_later(section, value, pattern, tmp_path, capsys) -> None:
    cfg = {"base": {"model": "ediffiqaT", "device": "cpu", "save_path": str(tmp_path / "o")}}
    cfg.setdefault(section, {}).update(value)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert_user_error(*run(train, "train.py", ["-c", str(tmp_path / "c.yaml")], capsys), "train.py", pattern)


def test_inference_workers_range(odd_faces, checkpoint_dir, tmp_path, capsys) -> None:
    code, err = run(inference, "inference.py", ["--images", str(odd_faces), "--model", "ediffiqaT", "--weights",
                                                os.path.join(checkpoint_dir, "ediffiqaT.pth"), "--workers", "100000",
                                                "--output", str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "inference.py", r"'dataloader.params.num_workers' must be between 0 and 256")


def test_a_wrong_typed_section_is_an_error_even_when_a_flag_touches_it(tmp_path) -> None:
    from engine.training.config import TrainConfig

    (tmp_path / "c.yaml").write_text("base: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"'base' must be a mapping of keys, got \[1, 2\]"):
        load_config(TrainConfig, str(tmp_path / "c.yaml"), {"base.epochs": 2})


def test_resume_with_another_optimizer_is_refused(tmp_path, capsys) -> None:
    from helpers import official_layout, official_schema_config

    images, data = official_layout(tmp_path)
    out = tmp_path / "run"
    path = official_schema_config(tmp_path, images, data, out, "ediffiqaT", epochs=1)
    assert run(train, "train.py", ["-c", path], capsys)[0] == 0
    cfg = yaml.safe_load(open(path))
    cfg["optimizer"]["module"] = "torch.optim.SGD"
    cfg["base"]["epochs"] = 2
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(cfg))
    code, err = run(train, "train.py", ["-c", str(tmp_path / "other.yaml"), "--resume", str(out / "last.pt")], capsys)
    assert_user_error(code, err, "train.py", r"was trained with other settings \(optimizer.module: 'torch.optim.Adam' "
                      r"-> 'torch.optim.SGD'\)")


# ---------------------------------------------------------------- readers of user files

def test_huge_and_hidden_objects_in_pickles_are_one_line_errors(tmp_path) -> None:
    import struct

    from utils.errors import DataError

    huge = tmp_path / "huge.pkl"
    huge.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2 ** 60) + b"abc")  # bytes claiming an exabyte
    with pytest.raises(DataError, match="larger than the memory of this machine"):
        safe_pickle_load(str(huge))

    import torch.storage

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    class Carrier:  # a "tensor" whose torch bytes hide a pickle that runs a command
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (pickle.dumps(Evil()),))

    hidden = tmp_path / "centres.pkl"
    hidden.write_bytes(pickle.dumps(Carrier()))
    with pytest.raises(DataError) as info:
        safe_pickle_load(str(hidden), allow_torch=True)
    message = str(info.value)
    assert "\n" not in message and "could run code" in message and "weights_only=False" not in message


@pytest.mark.parametrize("script", ["prepare_data.py", "evaluate.py"])
def test_a_number_beyond_the_float_range_is_one_line(script, tmp_path, capsys) -> None:
    labels = {f"id/{i}.png": 0.5 for i in range(12)}
    labels["id/3.png"] = 10 ** 400  # a Python int that no float holds
    (tmp_path / "l.pkl").write_bytes(pickle.dumps(list(labels.items()) if script == "prepare_data.py" else labels))
    if script == "prepare_data.py":
        (tmp_path / "e.pkl").write_bytes(pickle.dumps({p: np.ones(4, dtype=np.float32) for p in labels}))
        code, err = run(prepare_data, script, ["-ll", str(tmp_path / "l.pkl"), "-el", str(tmp_path / "e.pkl"),
                                               "-sl", str(tmp_path / "o"), "-q"], capsys)
    else:
        (tmp_path / "pairs.csv").write_text("a,b,mated,similarity\nid/1.png,id/3.png,1,0.8\nid/1.png,id/2.png,0,0.2\n")
        code, err = run(evaluate, script, ["--pairs", str(tmp_path / "pairs.csv"), "--scores",
                                           f"ours={tmp_path / 'l.pkl'}", "--output", str(tmp_path / "o")], capsys)
    assert_user_error(code, err, script, r"l.pkl': quality of 'id/3.png' is 1000+\.\.\.0+, a number beyond the "
                                         r"float range")


@pytest.mark.parametrize("script,value,what", [
    ("prepare_data.py", "0.5", "a text value '0.5'"), ("prepare_data.py", True, "True, a truth value"),
    ("prepare_data.py", None, "None"), ("evaluate.py", b"0.5", "a bytes value b'0.5'"),
])
def test_qualities_that_are_not_numbers_are_one_line(script, value, what, tmp_path, capsys) -> None:
    """A label or score that float() would take ('0.5', b'0.5', True) or that NumPy would call NaN (None): one line
    naming the file, the key and what the value is; prepare_data.py writes nothing (it would have copied the text
    into training_items)."""
    labels = {f"id/{i}.png": 0.5 for i in range(12)}
    labels["id/3.png"] = value
    (tmp_path / "l.pkl").write_bytes(pickle.dumps(list(labels.items()) if script == "prepare_data.py" else labels))
    if script == "prepare_data.py":
        (tmp_path / "e.pkl").write_bytes(pickle.dumps({p: np.ones(4, dtype=np.float32) for p in labels}))
        code, err = run(prepare_data, script, ["-ll", str(tmp_path / "l.pkl"), "-el", str(tmp_path / "e.pkl"),
                                               "-sl", str(tmp_path / "o"), "-q"], capsys)
        assert not os.listdir(tmp_path / "o")
    else:
        (tmp_path / "pairs.csv").write_text("a,b,mated,similarity\nid/1.png,id/3.png,1,0.8\nid/1.png,id/2.png,0,0.2\n")
        code, err = run(evaluate, script, ["--pairs", str(tmp_path / "pairs.csv"), "--scores",
                                           f"ours={tmp_path / 'l.pkl'}", "--output", str(tmp_path / "o")], capsys)
    assert_user_error(code, err, script, re.escape(f"l.pkl': quality of 'id/3.png' is {what}, not a number"))


@pytest.mark.parametrize("kind,pattern", [
    ("random", r"pairs.csv' needs the header 'a,b,mated'"),
    ("binary", r"pairs.csv' holds NUL bytes, so it is not a text file"),
    ("huge field", r"pairs.csv' is not a readable CSV \(field larger than field limit"),
    ("lfw", r"pairs.txt', line 2: expected 'name i j' or 'name1 i name2 j' with whole numbers .*, got 'x 1e400 2'"),
])
def test_pairs_files_of_any_bytes_are_one_line(kind, pattern, tmp_path, capsys) -> None:
    import random

    data = {"random": bytes(random.Random(0).randrange(128, 256) for _ in range(300)),  # not UTF-8, no NUL
            "binary": b"a,b,mated\n\x00\x01\x02\n",
            "huge field": b"a,b,mated\n" + b"x" * 200000 + b",y,1\n",
            "lfw": b"1 1\nx 1e400 2\n"}[kind]
    pairs = tmp_path / ("pairs.txt" if kind == "lfw" else "pairs.csv")
    pairs.write_bytes(data)
    (tmp_path / "q.pkl").write_bytes(pickle.dumps({"x": 0.5}))
    code, err = run(evaluate, "evaluate.py", ["--pairs", str(pairs), "--scores", f"ours={tmp_path / 'q.pkl'}",
                                              "--output", str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "evaluate.py", pattern)


def _npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def _prepared(folder, items) -> str:
    from dataset.formats import centres_file, items_file

    (folder / "p").mkdir()
    with open(centres_file(str(folder / "p"), "x"), "wb") as handle:
        pickle.dump(torch.ones(2, 4), handle, protocol=4)
    with open(items_file(str(folder / "p"), "x"), "wb") as handle:
        pickle.dump(items, handle, protocol=4)
    return str(folder / "p")


@pytest.mark.parametrize("case,pattern", [
    ("scores 10**400", r"q.pkl': quality of 'a' is 1000+\.\.\.0+, a number beyond the float range"),
    ("complex embeddings", r"e.pkl': embeddings must be real numbers, but the embedding of 'a' holds complex128"),
    ("object embeddings", r"e.pkl': embeddings must be real numbers, but the embedding of 'a' holds object"),
    ("embeddings too long", r"e.pkl': 1 embeddings are too long to normalise in float32 .*'b'"),
    ("float64 beyond float32", r"e.pkl': 1 embeddings hold NaN or infinite values \(e.g. 'a'\)"),
    ("npz complex", r"e.npz': embeddings must be real numbers, but 'embeddings' holds complex64"),
    ("npz number paths", r"e.npz': 'paths' must be a list of image paths \(1-D text\), found int64"),
    ("prepared 10**400", r"training_items-x.pkl': quality of 'b' is 1000+\.\.\.0+, a number beyond the float"),
    ("prepared row None", r"training_items-x.pkl': centre row of 'a' is None, not a whole number"),
    ("prepared late item", r"training_items-x.pkl': item 1000 is \('a', 0.5\), expected a \(path, quality, centre"),
    ("labels text", r"l.pkl': quality of 'b' is a text value '0.5', not a number"),
    ("labels bytes", r"l.pkl': quality of 'b' is a bytes value b'0.5', not a number"),
    ("labels True", r"l.pkl': quality of 'b' is True, a truth value, not a number"),
    ("labels numpy bool", r"l.pkl': quality of 'b' is False, a truth value, not a number"),
    ("labels None", r"l.pkl': quality of 'b' is None, not a number"),
    ("labels dict None", r"l.pkl': quality of 'b' is None, not a number"),
    ("scores text", r"q.pkl': quality of 'b' is a text value '0.5', not a number"),
    ("scores complex", r"q.pkl': quality of 'b' is a complex number \(1\+0j\), not a number"),
    ("scores numpy bool", r"q.pkl': quality of 'b' is True, a truth value, not a number"),
    ("prepared text", r"training_items-x.pkl': quality of 'b' is a text value '0.5', not a number"),
    ("embeddings list", r"e.pkl': the embedding of 'a' is a list, not a NumPy array"),
    ("embeddings None", r"e.pkl': the embedding of 'b' is None, not a NumPy array"),
    ("embeddings zero", r"e.pkl': 1 embeddings are too short to have a direction \(length below 1e-05, all zeros "
                        r"included; e.g. 'b'\)"),
    ("embeddings tiny", r"e.pkl': 2 embeddings are too short to have a direction .*e.g. 'b', 'c'\)"),
    ("npz zero", r"e.npz': 1 embeddings are too short to have a direction .*e.g. 'a'\)"),
])
def test_odd_values_in_every_loader_are_one_line(case, pattern, tmp_path) -> None:
    """Numbers outside the float range, complex or object arrays and malformed items in the files of scores,
    embeddings and prepared data, qualities that float() would take but that are not real numbers (text, bytes,
    truth values; None is named, not called NaN), embeddings that are lists or too short to have a direction (a
    zero one's cosine is 0 whatever the other): a DataError naming the file and the entry (one line), never a
    traceback or a silent cast."""
    import warnings

    from dataset.formats import read_embeddings, read_label_values, read_labels, read_prepared
    from engine.evaluation.data import read_qualities
    from utils.errors import DataError

    def pkl(name, obj):
        (tmp_path / name).write_bytes(pickle.dumps(obj))
        return str(tmp_path / name)

    def embeddings(table):
        return read_embeddings(pkl("e.pkl", table)).gather(list(table))

    calls = {
        "scores 10**400": lambda: read_qualities(pkl("q.pkl", {"a": 10 ** 400})),
        "complex embeddings": lambda: embeddings({"a": np.ones(4, dtype=complex), "b": np.ones(4, dtype=complex)}),
        "object embeddings": lambda: embeddings({"a": np.array([10 ** 400] * 4, dtype=object)}),
        "embeddings too long": lambda: embeddings({"a": np.ones(4, np.float32), "b": np.full(4, 1e30, np.float32)}),
        "float64 beyond float32": lambda: embeddings({"a": np.full(4, 1e300), "b": np.ones(4)}),
        "npz complex": lambda: read_embeddings(_npz(tmp_path / "e.npz", paths=np.array(["a"]),
                                                    embeddings=np.ones((1, 4), np.complex64))),
        "npz number paths": lambda: read_embeddings(_npz(tmp_path / "e.npz", paths=np.array([1]),
                                                         embeddings=np.ones((1, 4), np.float32))),
        "prepared 10**400": lambda: read_prepared(_prepared(tmp_path, [("a", 0.5, 0), ("b", 10 ** 400, 1)]), "x"),
        "prepared row None": lambda: read_prepared(_prepared(tmp_path, [("a", 0.5, None)]), "x"),
        "prepared late item": lambda: read_prepared(_prepared(tmp_path, [("a", 0.5, 0)] * 1000 + [("a", 0.5)]), "x"),
        "labels text": lambda: read_label_values(pkl("l.pkl", [("a", 0.5), ("b", "0.5")])),
        "labels bytes": lambda: read_label_values(pkl("l.pkl", {"a": 0.5, "b": b"0.5"})),
        "labels True": lambda: read_label_values(pkl("l.pkl", [("a", 1), ("b", True)])),
        "labels numpy bool": lambda: read_label_values(pkl("l.pkl", [("a", np.float32(1)), ("b", np.bool_(False))])),
        "labels None": lambda: read_label_values(pkl("l.pkl", [("a", 0.5), ("b", None)])),
        "labels dict None": lambda: read_labels(pkl("l.pkl", {"a": np.int64(1), "b": None})),
        "scores text": lambda: read_qualities(pkl("q.pkl", {"a": 0.5, "b": "0.5"})),
        "scores complex": lambda: read_qualities(pkl("q.pkl", {"a": 0.5, "b": 1 + 0j})),
        "scores numpy bool": lambda: read_qualities(pkl("q.pkl", {"a": 0.5, "b": np.bool_(True)})),
        "prepared text": lambda: read_prepared(_prepared(tmp_path, [("a", 0.5, 0), ("b", "0.5", 1)]), "x"),
        "embeddings list": lambda: read_embeddings(pkl("e.pkl", {"a": [1.0, 2.0], "b": [1.0, 2.0]})),
        "embeddings None": lambda: read_embeddings(pkl("e.pkl", {"a": np.ones(2), "b": None})),
        "embeddings zero": lambda: embeddings({"a": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}),
        "embeddings tiny": lambda: embeddings({"a": np.ones(4), "b": np.full(4, 1e-30), "c": np.full(4, 1e-6)}),
        "npz zero": lambda: read_embeddings(_npz(tmp_path / "e.npz", paths=np.array(["a", "b"]),
                                                 embeddings=np.array([[0, 0], [1, 0]], np.float32))).gather(["a", "b"]),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no library warning on the way (NumPy's casts) either
        with pytest.raises(DataError, match=pattern):
            calls[case]()


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


# ---------------------------------------------------------------- configs that would crash or hang

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


def test_a_newline_in_a_path_stays_on_one_line(tmp_path, capsys) -> None:
    code, err = run(inference, "inference.py", ["--images", str(tmp_path / "two\nlines"), "--output",
                                                str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "inference.py", r"image folder '.*two\\nlines' \(dataset.loc or --images\) does not")
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- non-finite values in every script

def test_nan_embeddings_stop_extract_embeddings(odd_faces, tmp_path, capsys) -> None:
    from model.build import build_backbone

    net = build_backbone("mobilefacenet")
    state = {k: (v * 1e6 if k.endswith("weight") and v.ndim > 1 else v) for k, v in net.state_dict().items()}
    torch.save(state, str(tmp_path / "huge.pth"))
    out = tmp_path / "o" / "e.pkl"
    argv = ["--images", str(odd_faces), "--backbone", "mobilefacenet", "--weights", str(tmp_path / "huge.pth"),
            "--output", str(out), "--device", "cpu", "-q"]
    code, err = run(extract_embeddings, "extract_embeddings.py", argv, capsys)
    assert code == 1 and "Traceback" not in err, err
    assert re.search(r"extract_embeddings.py: error: \d of the \d embeddings of a batch are NaN or infinite", err)
    assert not out.exists()


@pytest.mark.parametrize("what", ["quality", "centres"])
def test_nan_in_the_prepared_files_is_refused_at_load(what, tmp_path, capsys) -> None:
    from helpers import official_layout, official_schema_config

    images, data = official_layout(tmp_path)
    if what == "quality":
        items = pickle.loads((data / "training_items-ediffiqa.pkl").read_bytes())
        items[3] = (items[3][0], float("nan"), items[3][2])
        (data / "training_items-ediffiqa.pkl").write_bytes(pickle.dumps(items, protocol=4))
        pattern = r"training_items-ediffiqa.pkl': 1 of \d+ training items have a NaN or infinite quality"
    else:
        centres = safe_pickle_load(str(data / "average_embedding_batch-ediffiqa.pkl"), allow_torch=True)
        centres[1, 5] = float("inf")
        (data / "average_embedding_batch-ediffiqa.pkl").write_bytes(pickle.dumps(centres, protocol=4))
        pattern = r"average_embedding_batch-ediffiqa.pkl': 1 of \d+ centres hold NaN or infinite values \(e.g. row 1\)"
    code, err = run(train, "train.py", ["-c", official_schema_config(tmp_path, images, data, tmp_path / "run",
                                                                     "ediffiqaT")], capsys)
    assert_user_error(code, err, "train.py", pattern)


def test_a_missing_training_backbone_names_the_cosface_backbones(tmp_path, capsys) -> None:
    from helpers import official_layout, official_schema_config

    images, data = official_layout(tmp_path)
    cfg = official_schema_config(tmp_path, images, data, tmp_path / "run", "ediffiqaS")
    raw = yaml.safe_load(open(cfg))
    raw["base"]["model"] = "ediffiqaS"  # the variant's own init: ./weights/r18.pth
    open(cfg, "w").write(yaml.safe_dump(raw))
    code, err = run(train, "train.py", ["-c", cfg], capsys)
    assert_user_error(code, err, "train.py", r"weights file '.*r18.pth' not found; the recipe starts from "
                                             r"insightface's CosFace backbones .*; pass its path with "
                                             r"base_model.weights")


def test_a_backbone_of_another_size_names_the_training_keys(tmp_path, capsys) -> None:
    from helpers import official_layout, official_schema_config

    from model.build import build_backbone

    images, data = official_layout(tmp_path)
    torch.save(build_backbone("mobilefacenet").state_dict(), str(tmp_path / "mfn.pth"))
    cfg = official_schema_config(tmp_path, images, data, tmp_path / "run", "ediffiqaS",
                                 backbone_weights=str(tmp_path / "mfn.pth"))
    code, err = run(train, "train.py", ["-c", cfg], capsys)
    assert_user_error(code, err, "train.py", r"it holds a mobilefacenet backbone; set base.model to the model with a "
                                             r"mobilefacenet backbone, or base.backbone_weights to a checkpoint of its "
                                             r"iresnet18 backbone")
    assert "--backbone" not in err
