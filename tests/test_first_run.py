"""The first training run of docs/training.md, run exactly as the docs write it: the commands are read from the fenced
block of that section (so the docs cannot drift from what is tested), each run through its script's ``main`` in a
fresh folder, with the published eDifFIQA(T) served by a mirror on 127.0.0.1 (fixture ``published_t``); after each
step, its output is checked and the next step reads it unchanged."""
from __future__ import annotations

import csv
import importlib
import os
import re
import shlex
from typing import List

import pytest
from helpers import ROOT, assert_user_error, run_script

from dataset.formats import read_embeddings, read_prepared
from dataset.image_folder import find_images
from utils.cli import run_cli

SECTION = "## Your first training run"


def documented_commands() -> List[List[str]]:
    """The ``python ...`` lines of the first fenced block below :data:`SECTION` in docs/training.md, split as a shell
    splits them."""
    text = open(os.path.join(ROOT, "docs", "training.md"), encoding="utf-8").read()
    start = text.index(SECTION)
    block = re.search(r"```bash\n(.*?)```", text[start:], flags=re.S)
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


def test_the_documented_block_is_the_whole_chain() -> None:
    """Every line is a python command, and the chain has every step the section promises, in order."""
    commands = documented_commands()
    assert all(c[0] == "python" for c in commands)
    steps = [c[2] if c[1] == "-m" else c[1] for c in commands]
    assert steps == ["scripts.make_face_set", "inference.py", "extract_embeddings.py", "prepare_data.py", "train.py",
                     "inference.py", "evaluate.py"]


def test_the_face_set_is_the_same_bytes_for_a_seed_varies_within_identities_and_is_not_overwritten(
        tmp_path, capsys) -> None:
    from PIL import Image

    from scripts import make_face_set

    assert make_face_set.main(["--output", str(tmp_path / "a")]) == 0
    assert make_face_set.main(["--output", str(tmp_path / "b")]) == 0
    assert make_face_set.main(["--output", str(tmp_path / "c"), "--seed", "1"]) == 0
    files = find_images(str(tmp_path / "a" / "faces"))
    read = lambda run, rel: (tmp_path / run / "faces" / rel).read_bytes()  # noqa: E731
    assert files == find_images(str(tmp_path / "b" / "faces"))
    assert all(read("a", rel) == read("b", rel) for rel in files)
    assert (tmp_path / "a" / "pairs.csv").read_bytes() == (tmp_path / "b" / "pairs.csv").read_bytes()
    assert read("a", "id00/noise_1.png") != read("c", "id00/noise_1.png")  # the seed draws the noise
    clean = [Image.open(tmp_path / "a" / "faces" / f"id{i:02d}" / "clean.png") for i in range(6)]
    assert all(im.size == (112, 112) for im in clean)
    assert len({im.tobytes() for im in clean}) == 6  # six different faces
    capsys.readouterr()
    prog = make_face_set.PROG
    assert_user_error(*run_script(make_face_set.main, prog, ["--output", str(tmp_path / "a")], capsys), prog,
                      "already exists; remove it or choose another --output")


@pytest.mark.parametrize("case,pattern", [
    ("output_is_a_file", r"output folder '.*afile' \(--output\) is a file; choose a folder"),
    ("unwritable_output", r"\(--output\)"),
    ("negative_seed", r"--seed must be 0 or more, got -1"),
    ("source_not_an_image", r"--sources: '.*a.png' is not a readable image \(.*\); remove it"),
    ("source_not_112", r"--sources: '.*small.png' is 50x40, not an aligned 112x112 face crop; crop it \(inference.py "
                       r"--align --save-crops DIR writes such crops\) or remove it$"),
    ("missing_sources", r"--sources '.*nosuch' does not exist; name a folder of aligned 112x112 face crops$"),
    ("sources_is_a_file", r"--sources '.*afile' is a file; name the folder that holds the faces$"),
])
def test_make_face_set_mistakes_are_one_line(case, pattern, tmp_path, capsys) -> None:
    from PIL import Image

    from scripts import make_face_set

    (tmp_path / "afile").write_text("x")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_text("not an image")
    (tmp_path / "small").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "small" / "small.png")
    argv = {"output_is_a_file": ["--output", str(tmp_path / "afile")],
            "unwritable_output": ["--output", str(tmp_path / "afile" / "sub")],
            "negative_seed": ["--output", str(tmp_path / "o"), "--seed", "-1"],
            "source_not_an_image": ["--output", str(tmp_path / "o"), "--sources", str(tmp_path / "bad")],
            "source_not_112": ["--output", str(tmp_path / "o"), "--sources", str(tmp_path / "small")],
            "missing_sources": ["--output", str(tmp_path / "o"), "--sources", str(tmp_path / "nosuch")],
            "sources_is_a_file": ["--output", str(tmp_path / "o"), "--sources", str(tmp_path / "afile")]}[case]
    prog = make_face_set.PROG
    assert_user_error(*run_script(make_face_set.main, prog, argv, capsys), prog, pattern)
    assert not (tmp_path / "o" / "faces").exists()


def test_make_face_set_runs_as_a_file_as_well_as_a_module(tmp_path) -> None:
    """``python scripts/make_face_set.py`` works like ``python -m scripts.make_face_set`` (from the repository root
    and from elsewhere): a mistake is still one line, not a ModuleNotFoundError traceback."""
    import subprocess
    import sys

    script = os.path.join("scripts", "make_face_set.py")
    for cwd, path in ((ROOT, script), (str(tmp_path), os.path.join(ROOT, script))):
        done = subprocess.run([sys.executable, path, "--sources", str(tmp_path / "nosuch")], cwd=cwd,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"python -m scripts.make_face_set: error: --sources '{tmp_path / 'nosuch'}' does not exist; name a "
            "folder of aligned 112x112 face crops"]


def _run(command: List[str], capsys: pytest.CaptureFixture) -> str:
    module, argv = (command[2], command[3:]) if command[1] == "-m" else (command[1][:-len(".py")], command[2:])
    main = importlib.import_module(module).main
    code = run_cli(main, argv, os.path.basename(command[1]))
    err = capsys.readouterr().err
    assert code == 0, f"{shlex.join(command)}\n{err}"
    return err


def _csv_rows(path: str) -> List[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_the_documented_first_training_run_runs_and_each_step_feeds_the_next(tmp_path, monkeypatch, capsys,
                                                                                published_t) -> None:
    """The repository's configs/ is linked into the folder the commands run in, as they run from the repository root
    (the commands name ``configs/first_run.yaml``)."""
    monkeypatch.chdir(tmp_path)
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    commands = documented_commands()

    _run(commands[0], capsys)                                               # the face set
    faces = find_images("first_run/faces")
    identities = {p.split("/")[0] for p in faces}
    assert len(faces) == 96 and len(identities) == 6
    pairs = _csv_rows("first_run/pairs.csv")
    assert len(pairs) == 96 * 95 // 2
    assert sum(r["mated"] == "1" for r in pairs) == 6 * 16 * 15 // 2

    _run(commands[1], capsys)                                               # labels: the published model's scores
    labels = _csv_rows("first_run/labels/quality-scores.csv")
    assert len(labels) == len(faces)

    _run(commands[2], capsys)                                               # teacher embeddings
    embeddings = read_embeddings("first_run/embeddings.pkl")
    assert len(embeddings) == len(faces) and embeddings.missing(faces) == []

    _run(commands[3], capsys)                                               # label optimisation
    centres, items = read_prepared("first_run/data", "ediffiqa")
    assert len(items) >= 3 * 16 and centres.shape[1] == 512

    err = _run(commands[4], capsys)                                         # training
    assert re.search(rf"training ediffiqaT \(default mode\): \d+ training / \d+ validation items, "
                     rf"{centres.shape[0]} identities", err)
    assert "have no image file" not in err and "have no teacher embedding" not in err  # every item found
    assert len(_csv_rows("first_run/model/train_log.csv")) > 0
    from model.checkpoint import check_checkpoint
    check_checkpoint("first_run/model/model.pth", "ediffiqaT")

    _run(commands[5], capsys)                                               # scores of the trained model
    scores = _csv_rows("first_run/scores/quality-scores.csv")
    assert len(scores) == len(faces)
    assert [r["quality"] for r in scores] != [r["quality"] for r in labels]  # not the published model's

    _run(commands[6], capsys)                                               # evaluation of both
    table = _csv_rows("first_run/edc/edc.csv")
    assert sorted({r["method"] for r in table}) == ["first run", "published eDifFIQA(T)"]
    assert os.path.isfile("first_run/edc/edc_eDifFIQA_T_backbone.png")
