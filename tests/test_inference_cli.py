"""End-to-end inference.py on temporary folders, and every user-error path (exit 2, one line, no traceback)."""
from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from helpers import ROOT, assert_user_error, run_script
from PIL import Image

import inference
from dataset import official_transform
from model import create_model


def run(argv, capsys):
    return run_script(inference.main, "inference.py", argv, capsys)


@pytest.fixture()
def folder(tmp_path, make_faces):
    """7 images: nested folders, upper-case extensions, mixed formats, and one corrupt file."""
    files = ["a/001.jpg", "a/b/002.PNG", "a/b/003.JpEg", "004.bmp", "c/005.tiff", "c/006.webp", "c/007.png"]
    root = make_faces(tmp_path / "faces", files, sizes={rel: 140 for rel in files[::2]},
                      files={"a/broken.jpg": b"\xff\xd8\xff\xe0 definitely not a jpeg", "notes.txt": "not an image"})
    return str(root), sorted(files + ["a/broken.jpg"])


def official_scores(weights: str, root: str, rel_paths):
    """What the official code computes for each readable file (eager, fp32, torchvision transform)."""
    model = create_model("ediffiqaT", weights)
    transform = official_transform()
    x = torch.stack([transform(Image.open(os.path.join(root, p)).convert("RGB")) for p in rel_paths])
    with torch.no_grad():
        return model(x).reshape(-1).numpy()


@pytest.mark.parametrize("batch_size,workers", [(3, 0), (6, 1)])
def test_end_to_end(folder, checkpoint_dir, tmp_path, capsys, batch_size, workers) -> None:
    # 8 files with one corrupt: batch 3 leaves a batch of 1 at the end (the official crash), and batch 6 puts the
    # corrupt file in the first batch.
    root, all_files = folder
    out = str(tmp_path / "out")
    weights = os.path.join(checkpoint_dir, "ediffiqaT.pth")
    code, err = run(["--images", root, "--model", "ediffiqaT", "--weights", weights, "--output", out,
                     "--device", "cpu", "--batch-size", str(batch_size), "--workers", str(workers)], capsys)
    assert code == 0, err
    assert "skipped" in err and "broken.jpg" in err
    assert "scored 7, skipped 1" in err

    with open(os.path.join(out, "quality-scores.pkl"), "rb") as handle:
        scores = pickle.load(handle)
    good = [p for p in all_files if p != "a/broken.jpg"]
    assert list(scores) == [os.path.join(root, p) for p in good]
    assert all(type(v) is float for v in scores.values())

    with open(os.path.join(out, "quality-scores.csv"), newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "quality"]
    assert {r[0]: float(r[1]) for r in rows[1:]} == scores  # exact: repr() round-trips floats

    expected = official_scores(weights, root, good)
    got = np.array(list(scores.values()))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_single_image_folder(tmp_path, checkpoint_dir, capsys, make_faces) -> None:
    make_faces(tmp_path / "one", {"x.JPG": 3})
    out = str(tmp_path / "out")
    code, err = run(["--images", str(tmp_path / "one"), "--model", "ediffiqaT", "--device", "cpu",
                     "--weights", os.path.join(checkpoint_dir, "ediffiqaT.pth"), "--output", out, "-q"], capsys)
    assert code == 0, err
    with open(os.path.join(out, "quality-scores.pkl"), "rb") as handle:
        assert len(pickle.load(handle)) == 1


def test_config_file_with_official_keys(tmp_path, checkpoint_dir, capsys, make_faces) -> None:
    images = make_faces(tmp_path / "imgs", 2)
    cfg = {
        "base": {"verbose": 0, "save_path": str(tmp_path / "scores"), "seed": 42069, "device": "cpu"},
        "dataset": {"loc": str(images)},
        "dataloader": {"params": {"batch_size": 128, "pin_memory": True, "num_workers": 0}},
        "model": "ediffiqaT",
        "weights": os.path.join(checkpoint_dir, "ediffiqaT.pth"),
    }
    path = tmp_path / "inference_config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, err = run(["-c", str(path)], capsys)
    assert code == 0, err
    assert os.path.isfile(tmp_path / "scores" / "quality-scores.csv")


def test_existing_results_survive_a_failed_run(tmp_path, checkpoint_dir, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "quality-scores.pkl").write_bytes(b"old results")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _ = run(["--images", str(empty), "--model", "ediffiqaT", "--output", str(out),
                   "--weights", os.path.join(checkpoint_dir, "ediffiqaT.pth")], capsys)
    assert code == 2
    assert (out / "quality-scores.pkl").read_bytes() == b"old results"


def _write_yaml(tmp_path, data) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize("case,pattern", [
    ("missing_folder", r"image folder '.*nowhere' \(dataset.loc or --images\) does not exist"),
    ("empty_folder", r"holds no images"),
    ("all_corrupt", r"none of the 1 images .* could be read"),
    ("missing_weights", r"weights file '.*absent.pth' not found; the official weights are published"),
    ("wrong_variant", r"holds eDifFIQA\(T\) \('ediffiqaT'\), not eDifFIQA\(S\)"),
    ("unknown_key", r"unknown key 'base.verbos'"),
    ("unknown_loader_key", r"unknown key 'dataloader.params.batchsize'"),
    ("bad_type", r"'dataloader.params.batch_size' must be int or null, got 'many'"),
    ("bad_value", r"'dataloader.params.batch_size' must be between 1 and 1048576"),
    ("bad_model", r"argument --model: invalid choice: 'ediffiqaXL' \(choose from 'diffiqaR', 'ediffiqaL'"),
    ("bad_device", r"device 'tpu' not understood"),
    ("bad_yaml", r"is not valid YAML at line"),
    ("missing_config", r"config file '.*nope.yaml' not found"),
    ("drop_last", r"drop_last: true' would leave"),
    ("onnx_bf16", r"precision 'bf16' applies to the torch backend; the ONNX backends compute in fp32"),
    ("annotate_without_align", r"'annotate' \(--annotate\) only applies to photos: add align: true \(--align\)"),
    ("largest_without_align", r"'largest_face' \(--largest-face\) only applies to photos"),
    ("tf32_on_cpu", r"precision 'tf32' is for CUDA; on the CPU use fp32, bf16 or auto"),
])
def test_user_errors_exit_2(case, pattern, tmp_path, checkpoint_dir, capsys, make_faces) -> None:
    images = make_faces(tmp_path / "imgs", 1)
    t_weights = os.path.join(checkpoint_dir, "ediffiqaT.pth")
    base = ["--images", str(images), "--model", "ediffiqaT", "--weights", t_weights, "--device", "cpu",
            "--output", str(tmp_path / "out")]
    def with_config(data):
        return ["-c", _write_yaml(tmp_path, data)] + base

    def folder_with(name, files):
        return base + ["--images", str(make_faces(tmp_path / name, 0, files=files))]

    argv = {
        "missing_folder": lambda: base + ["--images", str(tmp_path / "nowhere")],
        "empty_folder": lambda: folder_with("empty", {"sub/readme.txt": b"x"}),
        "all_corrupt": lambda: folder_with("bad", {"x.png": b"garbage"}),
        "missing_weights": lambda: base + ["--weights", str(tmp_path / "absent.pth")],
        "wrong_variant": lambda: base + ["--model", "ediffiqaS"],
        "unknown_key": lambda: with_config({"base": {"verbos": 1}}),
        "unknown_loader_key": lambda: with_config({"dataloader": {"params": {"batchsize": 2}}}),
        "bad_type": lambda: with_config({"dataloader": {"params": {"batch_size": "many"}}}),
        "bad_value": lambda: base + ["--batch-size", "0"],
        "bad_model": lambda: base + ["--model", "ediffiqaXL"],
        "bad_device": lambda: base + ["--device", "tpu"],
        "bad_yaml": lambda: with_config("base:\n  verbose: [1, 2\n"),
        "missing_config": lambda: ["-c", str(tmp_path / "nope.yaml")] + base,
        "drop_last": lambda: with_config({"dataloader": {"params": {"drop_last": True}}}),
        "onnx_bf16": lambda: base + ["--backend", "onnxruntime", "--precision", "bf16"],
        "annotate_without_align": lambda: base + ["--annotate", str(tmp_path / "ann")],
        "largest_without_align": lambda: base + ["--largest-face"],
        "tf32_on_cpu": lambda: base + ["--precision", "tf32"],
    }[case]()
    code, err = run(argv, capsys)
    assert_user_error(code, err, "inference.py", pattern)


def test_inference_workers_range(odd_faces, checkpoint_dir, tmp_path, capsys) -> None:
    code, err = run(["--images", str(odd_faces), "--model", "ediffiqaT", "--weights",
                     os.path.join(checkpoint_dir, "ediffiqaT.pth"), "--workers", "100000", "--output",
                     str(tmp_path / "o")], capsys)
    assert_user_error(code, err, "inference.py", r"'dataloader.params.num_workers' must be between 0 and 256")


def test_cuda_request_without_cuda(tmp_path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    code, err = run(["--images", str(tmp_path), "--device", "cuda:0", "--model", "ediffiqaT"], capsys)
    assert code == 2 and "CUDA is not available" in err


@pytest.mark.slow
def test_subprocess_exit_code_and_no_traceback(tmp_path) -> None:
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "inference.py"), "--images", str(tmp_path / "none"),
                           "--device", "cpu"], capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("inference.py: error: image folder")
    assert "Traceback" not in proc.stderr


def test_precision_auto_follows_the_cpu(tmp_path, checkpoint_dir, capsys, make_faces) -> None:
    """--precision auto: bf16 only where the CPU computes bf16 natively; the log says which was used."""
    from utils.runtime import cpu_has_native_bf16

    images = make_faces(tmp_path / "imgs", 1)
    code, err = run(["--images", str(images), "--model", "ediffiqaT", "--weights",
                     os.path.join(checkpoint_dir, "ediffiqaT.pth"), "--device", "cpu", "--precision", "auto",
                     "--output", str(tmp_path / "out")], capsys)
    assert code == 0, err
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert f"on cpu ({expected}, torch backend)" in err, err


@pytest.mark.parametrize("kind,precision,expected", [("avx2", "fp32", "onnxruntime"), ("avx512_bf16", "fp32", "torch"),
                                                     ("avx2", "bf16", "torch"), ("other", "fp32", "torch")])
def test_backend_auto_follows_the_measurements(kind, precision, expected, tmp_path, checkpoint_dir, capsys,
                                               monkeypatch, make_faces) -> None:
    """--backend auto: ONNX Runtime where the registry says it measured faster for the variant in fp32 on this kind
    of CPU, torch elsewhere (and for bf16); the choice and why are logged once; scores within the backends'
    tolerance of torch's."""
    import pickle

    pytest.importorskip("onnxruntime")
    import engine.scoring.backends
    import utils.runtime

    monkeypatch.setattr(engine.scoring.backends, "cpu_kind", lambda: kind)
    monkeypatch.setattr(utils.runtime, "cpu_has_native_bf16", lambda: True)  # bf16 runs (slowly) on any CPU
    images = make_faces(tmp_path / "imgs", 3)
    weights = os.path.join(checkpoint_dir, "ediffiqaT.pth")
    base = ["--images", str(images), "--model", "ediffiqaT", "--weights", weights, "--device", "cpu",
            "--precision", precision]
    code, err = run([*base, "--backend", "auto", "--output", str(tmp_path / "auto")], capsys)
    assert code == 0, err
    chosen = [line for line in err.splitlines() if "--backend auto:" in line]
    assert len(chosen) == 1 and f"--backend auto: {expected} (" in chosen[0], err
    assert f"{precision}, {expected} backend" in err
    assert run([*base, "--output", str(tmp_path / "torch")], capsys)[0] == 0
    a = pickle.loads((tmp_path / "auto" / "quality-scores.pkl").read_bytes())
    b = pickle.loads((tmp_path / "torch" / "quality-scores.pkl").read_bytes())
    scale = max(abs(v) for v in b.values())
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-4 * scale for k in a)
