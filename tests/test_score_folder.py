"""The resumable score-folder driver (engine/resumable.py), through inference.py and diffiqa_score.py and with a
stand-in batch function: a rerun after --limit, a kill at any byte, mid-row or during the final write, or torchrun
gives the files of an uninterrupted run; runs with other settings, another folder, changed images or a second writer
are refused; images added or removed after a finished run are rescored exactly; --fresh leaves nothing of an earlier
run; nothing in the output folder is trusted; any file name is scored and the output set is written as one."""
from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
from helpers import (
    ODD_NAME,
    ROOT,
    assert_user_error,
    diffiqa_config,
    make_faces,
    manifest_state_dict,
    read_scores,
    run_diffiqa,
    run_script,
    save_image,
)
from PIL import Image

import inference
from dataset.formats import read_scores_csv
from dataset.image_folder import find_images
from utils.errors import ConfigError

FILES = ("quality-scores.pkl", "quality-scores.csv")
PART = "quality-scores.part0of1.csv"
SIDECAR = "quality-scores.json"
FINGERPRINTS = "quality-scores.fingerprints"


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """23 JPEGs in three identity folders and an unreadable PNG (batches of 2: 12 batches)."""
    return make_faces(tmp_path_factory.mktemp("faults") / "faces", [f"id{i % 3}/{i:02d}.jpg" for i in range(23)],
                      files={"id1/broken.png": b"not a png"})


@pytest.fixture(scope="module")
def png_faces(tmp_path_factory):
    """13 PNGs in three identity folders and an unreadable JPEG (batches of 2: 7 batches)."""
    return make_faces(tmp_path_factory.mktemp("resume") / "faces", [f"id{i % 3}/{i:02d}.png" for i in range(13)],
                      files={"id0/broken.jpg": b"not a jpeg"})


def argv(faces, checkpoint_dir, out, *extra, batch="2"):
    return ["--images", str(faces), "--model", "ediffiqaT", "--weights", os.path.join(checkpoint_dir, "ediffiqaT.pth"),
            "--output", str(out), "--device", "cpu", "--batch-size", batch, "--workers", "0", "-q",
            "--figure-tiles", "0", *extra]


def run(args, capsys):
    return run_script(inference.main, "inference.py", args, capsys)


def outputs(out):
    return {name: (out / name).read_bytes() for name in FILES}


@pytest.fixture(scope="module")
def reference(faces, checkpoint_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    from utils.cli import run_cli

    assert run_cli(inference.main, argv(faces, checkpoint_dir, out), "inference.py") == 0
    return outputs(out)


def finished_cleanly(out) -> None:
    # no part, lock, state or temporary left; the sidecar beside the scores
    assert sorted(os.listdir(out)) == sorted([*FILES, SIDECAR, FINGERPRINTS])


# ------------------------------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("every_block", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_cut_at_any_byte_of_the_part_file_resumes_exactly(every_block, faces, checkpoint_dir, reference, tmp_path,
                                                            capsys):
    """What a kill, a full disk or a torchrun teardown leaves is a part file cut somewhere: in the header, in a block
    header, mid-row, on a row or block boundary. Each cut is resumed to the bytes of an uninterrupted run (the quick
    run cuts the first two blocks at each kind of byte, the slow one every block)."""
    stopped = tmp_path / "stopped"
    code, err = run(argv(faces, checkpoint_dir, stopped, "--limit", "12"), capsys)
    assert code == 0 and "stopped with 12 image(s) left (base.limit)" in err, err
    data, settings, prints = ((stopped / name).read_bytes() for name in (PART, SIDECAR, FINGERPRINTS))
    blocks = [m.start() for m in re.finditer(rb"#B \d+ [0-9a-f]{8}\n", data)] + [len(data)]
    assert len(blocks) == 7  # 6 batches of 2
    cuts = {0, 1, blocks[0] - 1, blocks[0]}
    for a, b in list(zip(blocks, blocks[1:]))[:None if every_block else 2]:
        cuts |= {a + 1, a + 5, a + 16, (a + b) // 2, b - 2, b - 1, b}
    data_rows = data.split(b"\n")
    assert any(b"," in row for row in data_rows)
    for cut in sorted(c for c in cuts if 0 <= c <= len(data)):
        out = tmp_path / f"cut{cut}"
        out.mkdir()
        (out / SIDECAR).write_bytes(settings)
        (out / FINGERPRINTS).write_bytes(prints)
        (out / PART).write_bytes(data[:cut])
        code, err = run(argv(faces, checkpoint_dir, out), capsys)
        assert code == 0 and "left" not in err, (cut, err)
        assert outputs(out) == reference, cut
        finished_cleanly(out)
    # Garbage after the whole blocks (a damaged tail) is dropped too.
    out = tmp_path / "tail"
    out.mkdir()
    (out / SIDECAR).write_bytes(settings)
    (out / FINGERPRINTS).write_bytes(prints)
    (out / PART).write_bytes(data + b"#B 40 0badf00d\nid0/00.jpg,0.5,\n\x00\x00")
    code, err = run(argv(faces, checkpoint_dir, out), capsys)
    assert code == 0 and "dropped" in err and outputs(out) == reference


@pytest.mark.parametrize("call,fraction", [(2, 0.5), (4, 0.0), (5, 0.9), (9, 0.3)])
def test_interrupted_mid_write_resumes_exactly(call, fraction, faces, checkpoint_dir, reference, tmp_path, capsys,
                                               monkeypatch):
    """Ctrl-C arriving while a block is half written (the write call returns part of it): the rerun is exact."""
    real = os.write
    calls = {"n": 0}

    def dying_write(fd, data):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == PART:
            calls["n"] += 1
            if calls["n"] == call:
                real(fd, bytes(data)[:int(len(data) * fraction)])
                raise KeyboardInterrupt
        return real(fd, data)

    out = tmp_path / "out"
    monkeypatch.setattr(os, "write", dying_write)
    code, _ = run(argv(faces, checkpoint_dir, out), capsys)
    monkeypatch.setattr(os, "write", real)
    assert code == 130 and not (out / FILES[0]).exists()
    code, err = run(argv(faces, checkpoint_dir, out), capsys)
    assert code == 0, err
    assert outputs(out) == reference
    finished_cleanly(out)


def test_killed_during_the_final_write_resumes_exactly(faces, checkpoint_dir, reference, tmp_path, capsys,
                                                       monkeypatch):
    """Stopped after the pickle was renamed into place but before the CSV: the parts are still there, so the rerun
    writes the whole set again; temporaries a kill left behind are removed."""
    real = os.replace
    calls = {"n": 0}

    def dying_replace(src, dst):
        calls["n"] += 1
        if os.path.basename(dst) == FILES[1]:
            raise KeyboardInterrupt
        return real(src, dst)

    out = tmp_path / "out"
    monkeypatch.setattr(os, "replace", dying_replace)
    code, _ = run(argv(faces, checkpoint_dir, out), capsys)
    monkeypatch.setattr(os, "replace", real)
    assert code == 130 and (out / FILES[0]).exists() and not (out / FILES[1]).exists() and (out / PART).exists()
    for name in (".quality-scores.pkl.abc123.tmp", ".quality-scores.csv.x.tmp", ".quality-scores.json.y.tmp"):
        (out / name).write_bytes(b"left by a kill")
    code, err = run(argv(faces, checkpoint_dir, out), capsys)
    assert code == 0, err
    assert outputs(out) == reference
    finished_cleanly(out)


@pytest.mark.slow
def test_sigkill_and_sigterm_at_many_moments(faces, checkpoint_dir, reference, tmp_path) -> None:
    """The real thing: inference.py killed (SIGKILL or SIGTERM) at several moments of its run (watched through the
    part file's size), then run again; every result equals the uninterrupted run's bytes."""
    script = os.path.join(ROOT, "inference.py")
    for attempt, (sig, size) in enumerate([(signal.SIGKILL, 150), (signal.SIGTERM, 500), (signal.SIGKILL, 800)]):
        out = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen([sys.executable, script, *argv(faces, checkpoint_dir, out)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if (out / PART).exists() and (out / PART).stat().st_size >= size:
                proc.send_signal(sig)
                break
            time.sleep(0.001)
        proc.wait(timeout=60)
        assert not (out / FILES[0]).exists(), "the run ended before the kill"
        rerun = subprocess.run([sys.executable, script, *argv(faces, checkpoint_dir, out)], capture_output=True,
                               text=True, cwd=ROOT, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert outputs(out) == reference, (sig, size)
        finished_cleanly(out)


@pytest.mark.slow
def test_a_file_size_limit_while_appending_and_workers_do_not_hang(faces, checkpoint_dir, reference, tmp_path):
    """A full disk (here a file-size limit, which fails writes the same way): one line, exit 1, the whole batches
    kept; with DataLoader workers too, and without a hang. The next run finishes with the uninterrupted bytes."""
    import resource

    script = os.path.join(ROOT, "inference.py")
    for workers in ("0", "2"):
        out = tmp_path / f"limited{workers}"
        args = argv(faces, checkpoint_dir, out)
        args[args.index("--workers") + 1] = workers
        proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (700, 700)))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("inference.py: error:")]
        assert len(lines) == 1 and re.search(r"cannot append to '.*part0of1.csv': File too large; the \d+ image\(s\) "
                                             r"this process finished are kept", lines[0]), proc.stderr
        assert not (out / FILES[0]).exists()
        rerun = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert outputs(out) == reference


def test_resume_after_limit(png_faces, checkpoint_dir, tmp_path, capsys) -> None:
    """--limit 5 with batches of 2: whole batches, 4 new images a run (14 files: 4 runs), then the uninterrupted
    run's bytes. (Kills at any byte: tests/test_resume_faults.py.)"""
    whole = tmp_path / "whole"
    assert run(argv(png_faces, checkpoint_dir, whole), capsys)[0] == 0
    limited = tmp_path / "limited"
    for step in range(4):
        code, err = run(argv(png_faces, checkpoint_dir, limited, "--limit", "5"), capsys)
        assert code == 0, err
        assert ("left" in err) == (step < 3), err
    assert outputs(limited) == outputs(whole)
    assert not [f for f in os.listdir(limited) if ".part" in f]


# ------------------------------------------------------------------------------------------------- runs cannot mix
def test_another_batch_size_is_refused_and_fresh_starts_afresh(faces, checkpoint_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert run(argv(faces, checkpoint_dir, out, "--limit", "8"), capsys)[0] == 0
    code, err = run(argv(faces, checkpoint_dir, out, batch="5"), capsys)
    assert_user_error(code, err, "inference.py", r"holds quality scores made with other settings \(batch_size: 2 -> "
                                                 r"5\); use another base.save_path \(--output\), or add --fresh")
    code, err = run(argv(faces, checkpoint_dir, out, "--fresh", batch="5"), capsys)
    assert code == 0, err
    clean = tmp_path / "clean"
    assert run(argv(faces, checkpoint_dir, clean, batch="5"), capsys)[0] == 0
    assert outputs(out) == outputs(clean)


def test_another_folder_with_the_same_names_is_refused(faces, checkpoint_dir, tmp_path, capsys) -> None:
    other = make_faces(tmp_path / "other", {str(rel): 100 + len(str(rel))
                                            for rel in (p.relative_to(faces) for p in faces.rglob("*.jpg"))})
    out = tmp_path / "out"
    assert run(argv(faces, checkpoint_dir, out, "--limit", "8"), capsys)[0] == 0
    code, err = run(argv(other, checkpoint_dir, out), capsys)
    assert_user_error(code, err, "inference.py", r"other settings \(images: '.*faces' -> '.*other'; keys: ")


def test_other_settings_are_refused(png_faces, checkpoint_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert run(argv(png_faces, checkpoint_dir, out, "--limit", "4"), capsys)[0] == 0
    code, err = run(argv(png_faces, checkpoint_dir, out, "--no-fold-bn"), capsys)
    assert_user_error(code, err, "inference.py", r"holds quality scores made with other settings \(fold_bn: True -> "
                                                 r"False\); use another base.save_path \(--output\)")


def test_a_changed_listing_is_refused_while_parts_exist(faces, checkpoint_dir, tmp_path, capsys) -> None:
    import shutil

    images = tmp_path / "faces"
    shutil.copytree(faces, images)
    out = tmp_path / "out"
    assert run(argv(images, checkpoint_dir, out, "--limit", "8"), capsys)[0] == 0
    save_image(str(images / "id0" / "00a.jpg"), seed=77)  # falls between the scored images: batches would shift
    code, err = run(argv(images, checkpoint_dir, out), capsys)
    assert_user_error(code, err, "inference.py", r"the images in '.*faces' changed since the unfinished run .*add "
                                                 r"--fresh")


def test_images_changed_in_place_are_refused(faces, checkpoint_dir, tmp_path, capsys) -> None:
    """The folder replaced by one with the same names and other pixels after a --limit run: the rerun refuses,
    naming how many of the images scored so far changed and one of them, instead of keeping their stale scores."""
    import shutil

    images = tmp_path / "faces"
    shutil.copytree(faces, images)
    out = tmp_path / "out"
    assert run(argv(images, checkpoint_dir, out, "--limit", "8"), capsys)[0] == 0
    for i, path in enumerate(sorted(images.rglob("*.jpg"))):
        save_image(str(path), seed=500 + i)
    code, err = run(argv(images, checkpoint_dir, out), capsys)
    assert_user_error(code, err, "inference.py", r"8 of the 8 images of '.*faces' already scored in '.*out' changed "
                                                 r"since \(another size or modification time\), e.g. id0/00.jpg: their "
                                                 r"scores would be stale; add --fresh to score the folder afresh, or "
                                                 r"use another base.save_path \(--output\)")
    assert not (out / FILES[0]).exists()


def test_images_added_and_removed_after_a_finished_run_give_a_fresh_runs_bytes(png_faces, checkpoint_dir, tmp_path,
                                                                              capsys) -> None:
    """inference.py after a finished run: two images added (one among the scored ones) and one removed; the rerun
    keeps the whole batches before the first change and writes a fresh run's pickle and CSV."""
    import shutil

    images = tmp_path / "png_faces"
    shutil.copytree(png_faces, images)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert run(argv(images, checkpoint_dir, out), capsys)[0] == 0
    save_image(str(images / "id1" / "04a.png"), seed=40)
    save_image(str(images / "id2" / "99.png"), seed=41)
    os.remove(images / "id2" / "11.png")
    code, err = run(argv(images, checkpoint_dir, out), capsys)
    assert code == 0 and "2 image(s) added, 1 removed; the finished results of the first 8 " in err, err
    assert run(argv(images, checkpoint_dir, fresh), capsys)[0] == 0
    assert outputs(out) == outputs(fresh)


def test_fresh_removes_the_earlier_set_and_the_printed_command_continues(faces, checkpoint_dir, reference, tmp_path,
                                                                         capsys) -> None:
    """A finished run with old weights, then --fresh --limit 8 with new ones: --fresh removes the earlier set (a
    link planted as its figure is removed, never followed), and the stop names the command that continues, without
    --fresh. Following it to the end gives every score from the new weights, byte for byte an uninterrupted run."""
    import shlex

    import torch

    torch.save(manifest_state_dict("ediffiqaT", 2), str(tmp_path / "old.pth"))
    out = tmp_path / "out"
    old = argv(faces, "", out)
    old[old.index("--weights") + 1] = str(tmp_path / "old.pth")
    assert run(old, capsys)[0] == 0
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    os.symlink(victim, out / "quality-scores.png")
    code, err = run(argv(faces, checkpoint_dir, out, "--fresh", "--limit", "8"), capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("stopped with")]
    assert len(lines) == 1 and lines[0].startswith("stopped with 16 image(s) left (base.limit); continue with the "
                                                   "same command without --fresh (it would start over): "), err
    command = shlex.split(lines[0].split(": ", 1)[1])
    assert command == ["python", "inference.py", *argv(faces, checkpoint_dir, out, "--limit", "8")]
    assert sorted(os.listdir(out)) == sorted([PART, SIDECAR, FINGERPRINTS]) and victim.read_bytes() == b"keep me"
    code, err = run(command[2:], capsys)
    assert code == 0 and "stopped with 8 image(s) left (base.limit); run the same command to continue" in err, err
    assert run(command[2:], capsys)[0] == 0
    assert outputs(out) == reference
    finished_cleanly(out)


def test_a_second_writer_is_refused_naming_the_first(faces, checkpoint_dir, tmp_path, capsys) -> None:
    from utils.lock import FolderLock

    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(str(out / "quality-scores.lock"), "--output"):
        code, err = run(argv(faces, checkpoint_dir, out), capsys)
        assert_user_error(code, err, "inference.py", rf"'.*out' is being written by another run \(pid {os.getpid()} "
                                                     r"on .* since .*\); wait for it to end or use another")
    assert run(argv(faces, checkpoint_dir, out), capsys)[0] == 0  # released: the next run goes ahead
    finished_cleanly(out)


@pytest.mark.slow
def test_two_processes_on_one_output(tmp_path, capsys) -> None:
    """A second inference.py started while the first runs exits 2 naming it; the first finishes unharmed."""
    import pickle

    import torch

    faces = make_faces(tmp_path / "faces", [f"{i:03d}.png" for i in range(400)])
    torch.save(manifest_state_dict("ediffiqaT", 1), str(tmp_path / "t.pth"))
    out = tmp_path / "out"
    args = ["--images", str(faces), "--model", "ediffiqaT", "--weights", str(tmp_path / "t.pth"), "--output", str(out),
            "--device", "cpu", "--batch-size", "2", "--workers", "0", "-q"]
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "inference.py"), *args], cwd=ROOT,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / PART).exists() and time.time() < deadline:
        time.sleep(0.01)
    code, err = run(args, capsys)
    assert_user_error(code, err, "inference.py", rf"is being written by another run \(pid {first.pid} on ")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    with open(out / FILES[0], "rb") as handle:
        assert len(pickle.load(handle)) == 400


# ------------------------------------------------------------------------------------------------- untrusted folder
def test_a_planted_link_is_never_followed(faces, checkpoint_dir, tmp_path, capsys) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    assert run(argv(faces, checkpoint_dir, out, "--limit", "4"), capsys)[0] == 0
    os.remove(out / PART)
    os.symlink(victim, out / PART)
    code, err = run(argv(faces, checkpoint_dir, out), capsys)
    assert_user_error(code, err, "inference.py", r"part0of1.csv' is a symbolic link; a run does not follow links in "
                                                 r"its output folder: add --fresh .* or use another")
    assert victim.read_text() == "keep me"
    code, err = run(argv(faces, checkpoint_dir, out, "--fresh"), capsys)
    assert code == 0, err
    assert victim.read_text() == "keep me" and not (out / PART).exists()
    # A link planted as the sidecar is refused the same way, before anything is read through it.
    (out / SIDECAR).unlink()
    os.symlink(victim, out / SIDECAR)
    code, err = run(argv(faces, checkpoint_dir, out), capsys)
    assert_user_error(code, err, "inference.py", r"quality-scores.json' is a symbolic link")
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("content,pattern", [
    (b"", r"quality-scores.json' is damaged \(.*\); add --fresh"),
    (b'{"settings": {"images": "/x", "batch', r"quality-scores.json' is damaged \(.*\); add --fresh"),
    (b"[1, 2]", r"quality-scores.json' is damaged \(not a record of settings\); add --fresh"),
    (b'{"config": {}}', r"quality-scores.json' is damaged \(not a record of settings\); add --fresh"),
    (b'{"settings": [1]}', r"quality-scores.json' is damaged \(not a record of settings\); add --fresh"),
    (b"\xff\xfe", r"quality-scores.json' is damaged"),
])
def test_a_damaged_sidecar_is_one_line(content, pattern, faces, checkpoint_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / SIDECAR).write_bytes(content)
    code, err = run(argv(faces, checkpoint_dir, out), capsys)
    assert_user_error(code, err, "inference.py", pattern)
    assert run(argv(faces, checkpoint_dir, out, "--fresh"), capsys)[0] == 0


@pytest.mark.parametrize("case", ["list_pickle", "nan_pickle", "foreign_part", "folder_part", "old_part_format",
                                  "forged_part_row"])
def test_damaged_outputs_and_parts_are_one_line(case, faces, checkpoint_dir, tmp_path, capsys) -> None:
    import pickle

    out = tmp_path / "out"
    assert run(argv(faces, checkpoint_dir, out, *(["--limit", "4"] if "part" in case else [])), capsys)[0] == 0
    if case == "list_pickle":
        (out / FILES[0]).write_bytes(pickle.dumps([1, 2]))
        pattern = r"quality-scores.pkl' is damaged \(not a dict of path: finite quality\); add --fresh"
    elif case == "nan_pickle":
        (out / FILES[0]).write_bytes(pickle.dumps({str(faces / "id0" / "00.jpg"): float("nan")}))
        pattern = r"quality-scores.pkl' is damaged"
    elif case == "foreign_part":
        (out / PART).write_bytes(b"id0/00.jpg,0.5,\n")
        pattern = r"part0of1.csv' is not a part file of this project \(damaged or foreign\); add --fresh"
    elif case == "old_part_format":
        (out / "quality-scores.part0of2.csv").write_bytes(b"path,1.0,\n")
        pattern = r"part0of2.csv' is not a part file of this project"
    elif case == "forged_part_row":  # a whole block with a valid checksum (more in test_forged_part_rows_are_one_line)
        row = b"id0/12.jpg,nan,\r\n"
        with open(out / PART, "ab") as handle:
            handle.write(b"#B %d %08x\n" % (len(row), zlib.crc32(row)) + row)
        pattern = r"part0of1.csv' is damaged \(row 5: the score 'nan' is not finite\); add --fresh"
    else:
        (out / PART).unlink()
        (out / PART).mkdir()
        pattern = r"part0of1.csv' is not a regular file; add --fresh"
    code, err = run(argv(faces, checkpoint_dir, out), capsys)
    assert_user_error(code, err, "inference.py", pattern)


def test_non_finite_scores_stop_the_run_and_write_nothing(faces, tmp_path, capsys) -> None:
    """Weights whose scores overflow (finite, so they load): exit 1 at the first batch, no output set."""
    import torch

    state = manifest_state_dict("ediffiqaT", 1)
    state["mlp.l1.bias"].fill_(1e30)  # every hidden unit 1e30, the output 1024 x 1e30 x 1e10: inf
    state["mlp.l2.weight"].fill_(1e10)
    torch.save(state, str(tmp_path / "huge.pth"))
    out = tmp_path / "out"
    args = argv(faces, "", out)
    args[args.index("--weights") + 1] = str(tmp_path / "huge.pth")
    code, err = run(args, capsys)
    assert code == 1 and "Traceback" not in err
    assert re.search(r"inference.py: error: 2 of the 2 quality scores of a batch are NaN or infinite \(e.g. "
                     r"id0/00.jpg, id0/03.jpg\)", err), err
    assert not (out / FILES[0]).exists() and not (out / FILES[1]).exists()


def test_the_summary_counts_every_image_of_this_run(faces, checkpoint_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code, err = run(argv(faces, checkpoint_dir, out, "--limit", "10"), capsys)
    assert code == 0 and "stopped with 14 image(s) left" in err
    code, err = run(argv(faces, checkpoint_dir, out), capsys)
    assert code == 0 and "scored 13, skipped 1 in this run (23 scored in all)" in err, err
    assert "skipped (unreadable): id1/broken.png" in err
    record = json.loads((out / SIDECAR).read_text())
    settings, finished = record["settings"], record["run"]
    assert settings["batch_size"] == 2 and settings["images"] == os.path.realpath(faces)
    assert settings["threads"] >= 1 and record["config"]["base"]["limit"] is None
    assert (finished["images"], finished["scored"], list(finished["skipped"])) == (24, 23, ["id1/broken.png"])


# --------------------------------------------------------------------- file names, the folder's listing, the output set
def test_a_name_that_is_not_utf8_is_scored_and_written_losslessly(odd_faces, checkpoint_dir, tmp_path, capsys) -> None:
    out = tmp_path / "scores"
    code, err = run(["--images", str(odd_faces), "--model", "ediffiqaT", "--weights",
                     os.path.join(checkpoint_dir, "ediffiqaT.pth"), "--output", str(out), "-q", "--device", "cpu"],
                    capsys)
    assert code == 0, err
    table = pickle.load(open(out / "quality-scores.pkl", "rb"))
    odd = os.path.join(str(odd_faces), ODD_NAME)
    assert odd in table and os.path.isfile(odd)  # the exact path: it opens the file
    assert read_scores_csv(str(out / "quality-scores.csv")) == table  # the CSV reads back to the same keys
    assert b"caf\xff.png" in (out / "quality-scores.csv").read_bytes()  # the name's own bytes


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


def test_walk_order_is_the_official_listing(tmp_path) -> None:
    """dataset.order: walk lists a folder as the official scorer does (os.walk order, unsorted)."""
    from dataset.image_folder import find_images

    for name in ("b/z.png", "b/a.png", "a/y.jpg", "c.png", "a/x.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    official = [os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path) for f in files]
    assert find_images(str(tmp_path), "walk") == official
    assert find_images(str(tmp_path)) == sorted(official)


def test_a_failed_write_leaves_the_previous_set(odd_faces, checkpoint_dir, tmp_path, capsys, monkeypatch) -> None:
    """A full disk after the first file of the pickle/CSV pair: the earlier pair stays, as it was."""
    out = tmp_path / "scores"
    argv = ["--images", str(odd_faces), "--model", "ediffiqaT", "--weights",
            os.path.join(checkpoint_dir, "ediffiqaT.pth"), "--output", str(out), "-q", "--device", "cpu"]
    assert run(argv, capsys)[0] == 0
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
    code, err = run(argv, capsys)
    assert_user_error(code, err, "inference.py", r"cannot write '.*quality-scores.csv': No space left on device; the "
                                                 r"previous quality-scores.pkl, quality-scores.csv are unchanged")
    assert {f: (out / f).read_bytes() for f in before} == before
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary left behind


# ------------------------------------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_torchrun_processes_write_the_files_of_one_process(png_faces, checkpoint_dir, tmp_path, capsys) -> None:
    """Each process takes whole batches, so with the same threads per process the merged files are byte for byte
    those of one process, also when a --limit run comes first; the rerun's summary counts every process. After
    images are added and removed, the processes rescore from the batch of the first change, as one process would."""
    import shutil

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    images = tmp_path / "png_faces"
    shutil.copytree(png_faces, images)
    single, shared = tmp_path / "single", tmp_path / "shared"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    script = os.path.join(ROOT, "inference.py")

    def run(out, launcher, *extra):
        proc = subprocess.run([*(launcher or [sys.executable]), script, *argv(images, checkpoint_dir, out, *extra)],
                              capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    run(single, None)
    run(shared, torchrun, "--limit", "4")
    err = run(shared, torchrun, "--figure-tiles", "4")
    assert "scored 9, skipped 1 in this run (13 scored in all)" in err, err[-2000:]
    assert outputs(shared) == outputs(single)
    from engine.figures import image_size, score_sheet_size

    # Drawn once, by the first process, from the merged scores.
    assert image_size((shared / "quality-scores.png").read_bytes()) == (1600, round(score_sheet_size(4)[1] * 100))
    save_image(str(images / "id0" / "03a.png"), seed=60)
    os.remove(images / "id2" / "08.png")
    err = run(shared, torchrun)
    assert "1 image(s) added, 1 removed; the finished results of the first 2 " in err, err[-2000:]
    run(tmp_path / "fresh", None)
    assert outputs(shared) == outputs(tmp_path / "fresh")


@pytest.mark.parametrize("n,world,batch", [(14, 2, 2), (13, 3, 4), (5, 4, 2), (1, 2, 8)])
def test_whole_batches_cover_each_path_once(n, world, batch) -> None:
    from engine.resumable import split_batches_for_rank

    paths = [f"{i:03d}" for i in range(n)]
    shares = [split_batches_for_rank(paths, rank, world, batch) for rank in range(world)]
    assert sorted(p for share in shares for p in share) == paths
    for share in shares:  # each share is made of the single process's batches
        for start in range(0, len(share), batch):
            block = share[start:start + batch]
            assert int(block[0]) % batch == 0 and block == paths[int(block[0]):int(block[0]) + len(block)]


# ---------------------------------- DifFIQA labels through the driver: per-image seeds, and official mode's saved draws
@pytest.mark.slow
def test_resume_after_interruption_scores_each_image_once(diffiqa_setup, capsys) -> None:
    tmp_path, images = diffiqa_setup
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    code, err = run_diffiqa(["-c", diffiqa_config(tmp_path, images, whole)], capsys)
    assert code == 0, err
    assert "scored 5, skipped 1, " in err and "skipped (unreadable): id0/broken.jpg" in err
    reference = read_scores(whole)
    assert sorted(reference) == sorted(f"id{i % 2}/{i}.png" for i in range(5))
    record = json.loads((whole / "quality-scores.json").read_text())
    assert not (whole / "quality-scores.png").exists()  # base.figure_tiles: 0
    assert record["settings"]["seed"] == 0 and record["settings"]["mode"] == "default"
    assert list(record["run"]["skipped"]) == ["id0/broken.jpg"] and record["config"]["inference"]["repeats"] == 2

    # Stop after 2 new images, then after 2 more, then finish: nothing scored twice, nothing lost.
    for step in range(3):
        code, err = run_diffiqa(["-c", diffiqa_config(tmp_path, images, parts), "--limit", "2"], capsys)
        assert code == 0, err
        if step < 2:
            assert not (parts / "quality-scores.pkl").exists() and "left" in err
        else:  # the last run counts only what it scored itself
            assert "scored 2, skipped 0 in this run (5 scored in all)" in err, err
    assert not list(parts.glob("quality-scores.part*"))  # merged and removed once complete
    resumed = read_scores(parts)
    assert sorted(resumed) == sorted(reference)
    for key, value in reference.items():  # per-image seeds: the same scores as the uninterrupted run
        assert resumed[key] == pytest.approx(value, abs=1e-5)
    assert {r.split(",")[0] for r in (parts / "quality-scores.csv").read_text().splitlines()[1:]} == set(reference)


@pytest.mark.slow
def test_official_mode_resumes_draw_for_draw(diffiqa_setup, capsys) -> None:
    """--official after an interruption: the saved RNG state continues the draws, so the scores equal a run that
    was never stopped (flushes fall on batch boundaries: 64 // (2 x 2) = 16 images per batch, so use batch 4)."""
    tmp_path, images = diffiqa_setup
    whole, parts = tmp_path / "owhole", tmp_path / "oparts"
    assert run_diffiqa(["-c", diffiqa_config(tmp_path, images, whole), "--official", "--batch-size", "4"],
                       capsys)[0] == 0
    for _ in range(3):
        code, err = run_diffiqa(["-c", diffiqa_config(tmp_path, images, parts), "--official", "--batch-size", "4",
                                 "--limit", "2"], capsys)
        assert code == 0, err
    a, b = read_scores(whole), read_scores(parts)
    assert sorted(a) == sorted(b)
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("official", [False, True])
def test_a_cut_part_file_resumes_to_the_same_labels(official, diffiqa_setup, capsys) -> None:
    """--official continues the global RNG from the state saved with the part, at the part length it belongs to:
    a kill mid-write after it, or after batches written since (flush_every > 1), gives the labels of a run that was
    never stopped, bit for bit; so does the default mode (per-image seeds) after a cut anywhere."""
    import re
    import shutil

    tmp_path, images = diffiqa_setup
    flag = ["--official"] if official else []
    whole, stopped = tmp_path / f"w{official}", tmp_path / f"s{official}"
    args = ["--batch-size", "4", *flag]  # 4 // (2 x 2) = 1 image per batch
    assert run_diffiqa(["-c", diffiqa_config(tmp_path, images, whole), *args], capsys)[0] == 0
    assert run_diffiqa(["-c", diffiqa_config(tmp_path, images, stopped), *args, "--limit", "2"], capsys)[0] == 0
    state = stopped / "quality-scores.part0of1.csv.state.pt"
    assert state.exists() == official
    early_state = state.read_bytes() if official else b""
    assert run_diffiqa(["-c", diffiqa_config(tmp_path, images, stopped), *args, "--limit", "2"], capsys)[0] == 0
    part = stopped / "quality-scores.part0of1.csv"
    data = part.read_bytes()
    blocks = [m.start() for m in re.finditer(rb"#B \d+ [0-9a-f]{8}\n", data)]
    assert len(blocks) == 4
    cases = {"mid-write": data + data[blocks[1]:blocks[2]][:20]}
    if official:
        cases["state lags"] = data  # with the state of two batches ago
    else:
        cases["cut"] = data[:blocks[2] + 9]
    for name, content in cases.items():
        out = tmp_path / f"{name}{official}"
        shutil.copytree(stopped, out)
        (out / part.name).write_bytes(content)
        if name == "state lags":
            (out / state.name).write_bytes(early_state)
        code, err = run_diffiqa(["-c", diffiqa_config(tmp_path, images, out), *args], capsys)
        assert code == 0, err
        assert (out / "quality-scores.pkl").read_bytes() == (whole / "quality-scores.pkl").read_bytes(), name
        assert (out / "quality-scores.csv").read_bytes() == (whole / "quality-scores.csv").read_bytes(), name
        assert not list(out.glob("*.part*"))
    # A state that claims more than the part holds is refused (the two files do not belong together).
    if official:
        out = tmp_path / "ahead"
        shutil.copytree(stopped, out)
        (out / part.name).write_bytes(data[:blocks[1]])
        code, err = run_diffiqa(["-c", diffiqa_config(tmp_path, images, out), *args], capsys)
        assert_user_error(code, err, "diffiqa_score.py", r"state.pt' belongs to a longer 'quality-scores.part0of1.csv' "
                                                         r"than there is; add --fresh")


@pytest.mark.slow
def test_rerun_scores_added_images_as_a_fresh_run_and_refuses_other_settings(diffiqa_setup, capsys) -> None:
    """An image added among the labelled ones after a finished run (8 // (2 x 2) = 2 images per batch): the rerun
    keeps the first batch and labels the rest as an uninterrupted run would (the unreadable image again too), giving
    a fresh run's files."""
    tmp_path, images = diffiqa_setup
    out = tmp_path / "again"
    cfg = diffiqa_config(tmp_path, images, out)
    assert run_diffiqa(["-c", cfg], capsys)[0] == 0
    Image.fromarray((np.random.default_rng(9).random((112, 112, 3)) * 255).astype(np.uint8)).save(
        images / "id0" / "3.png")  # the third image: id0/0.png, id0/2.png, id0/3.png, ...
    code, err = run_diffiqa(["-c", cfg], capsys)
    assert code == 0, err
    assert "1 image(s) added, 0 removed; the finished results of the first 2 " in err, err
    assert "scored 4, skipped 1 in this run (6 scored in all)" in err, err
    fresh = tmp_path / "fresh"
    assert run_diffiqa(["-c", diffiqa_config(tmp_path, images, fresh)], capsys)[0] == 0
    for name in ("quality-scores.pkl", "quality-scores.csv"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes()
    code, err = run_diffiqa(["-c", cfg, "--seed", "5"], capsys)
    assert code == 2 and "holds DifFIQA scores made with other settings (seed: 0 -> 5)" in err


def test_fresh_removes_the_earlier_set_and_a_limit_stop_names_the_command(diffiqa_setup, capsys,
                                                                          monkeypatch) -> None:
    """--fresh removes an earlier run's set (the sidecar and figure too); the line after a --limit stop is the
    driver's, as in inference.py: under --fresh the command without it, otherwise the same command. (The labels
    themselves are a stand-in here: this is about the files and the messages.)"""
    import shlex

    monkeypatch.setattr("engine.labels.policy.score_batch_fast", lambda x, *args: torch.full((len(x),), 0.5))
    tmp_path, images = diffiqa_setup
    out = tmp_path / "lim"
    out.mkdir()
    earlier = ["quality-scores.pkl", "quality-scores.csv", "quality-scores.json", "quality-scores.png"]
    for name in earlier:
        (out / name).write_bytes(b"an earlier run's")
    cfg = diffiqa_config(tmp_path, images, out)
    args = ["-c", cfg, "--batch-size", "4", "--limit", "2"]  # 4 // (2 x 2) = 1 image per batch
    code, err = run_diffiqa([*args[:2], "--fresh", *args[2:]], capsys)
    assert code == 0 and ("stopped with 4 image(s) left (base.limit); continue with the same command without --fresh "
                          f"(it would start over): {shlex.join(['python', 'diffiqa_score.py', *args])}\n") in err, err
    assert [name for name in earlier if (out / name).exists()] == ["quality-scores.json"]  # this run's, only:
    assert list(json.loads((out / "quality-scores.json").read_text())) == ["settings"]
    code, err = run_diffiqa(args, capsys)
    assert code == 0 and "stopped with 2 image(s) left (base.limit); run the same command to continue\n" in err, err


@pytest.mark.slow
def test_one_float_format_and_nan_labels_write_nothing(diffiqa_setup, capsys) -> None:
    """The CSV holds each score in the form that reads back to the pickle's float; an FR model that overflows makes
    NaN labels, which stop the run (exit 1) with nothing of the output set written."""
    import csv

    tmp_path, images = diffiqa_setup
    out = tmp_path / "fmt"
    assert run_diffiqa(["-c", diffiqa_config(tmp_path, images, out)], capsys)[0] == 0
    table = read_scores(out)
    with open(out / "quality-scores.csv", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert {p: float(q) for p, q in rows} == table  # exactly, not to 8 decimals

    from model.build import build_backbone

    state = {k: (v * 1e6 if k.endswith("weight") and v.ndim > 1 else v)
             for k, v in build_backbone("mobilefacenet").state_dict().items()}
    torch.save(state, tmp_path / "huge.pth")
    nan_out = tmp_path / "nan"
    code, err = run_diffiqa(["-c", diffiqa_config(tmp_path, images, nan_out), "--fr-weights",
                             str(tmp_path / "huge.pth")], capsys)
    assert code == 1 and "Traceback" not in err, err
    assert "DifFIQA scores of a batch are NaN or infinite" in err
    assert not [f for f in os.listdir(nan_out) if f.startswith("quality-scores.") and f.split(".")[-1] in
                ("pkl", "csv") and "part" not in f]


# ------------------------------------------------------------------------------------------------- the driver alone
@pytest.fixture()
def small(tmp_path):
    """Six tiny files with image names; the stand-in model of :func:`drive` scores a file by its length."""
    return make_faces(tmp_path / "small", 0, files={f"a/{i}.jpg": b"x" * (i + 1) for i in range(6)})


def drive(images, out, batch=2, score=None, keys="relative", **extra):
    """One run of the driver over ``images`` with a stand-in batch function (no model, milliseconds): by default
    each file's score is its length."""
    from dataset.image_folder import list_images
    from engine.resumable import BatchResult, FolderJob, run_folder
    from utils.distributed import DistInfo

    def lengths(paths, batch):
        for k in range(0, len(paths), batch):
            chunk = paths[k:k + batch]
            yield BatchResult(chunk, [float(os.path.getsize(os.path.join(images, p))) for p in chunk], [])

    os.makedirs(out, exist_ok=True)
    listing = list_images(str(images))
    job = FolderJob(root=str(images), rel_paths=listing.paths, stats=listing.stats, out=str(out), batch_size=batch,
                    settings={}, keys=keys, verbose=False, **extra)
    return run_folder(job, score or lengths, DistInfo())


def batch_sums(images, calls=None, draws=False):
    """A stand-in whose scores depend on the batch, as a model's last bits do: a file's length plus the batch's
    total length / 1000 (plus a draw of the global RNG with ``draws``); a file starting with ``bad`` is skipped.
    ``calls`` collects the paths it scores."""
    import torch

    from engine.resumable import BatchResult

    def score(paths, batch):
        for k in range(0, len(paths), batch):
            chunk = paths[k:k + batch]
            data = {p: (images / p).read_bytes() for p in chunk}
            good = [p for p in chunk if not data[p].startswith(b"bad")]
            total = sum(len(data[p]) for p in good)
            values = [len(data[p]) + total / 1000 + (torch.rand(()).item() if draws else 0.0) for p in good]
            if calls is not None:
                calls.extend(chunk)
            yield BatchResult(good, values, [(p, "bad bytes") for p in chunk if p not in good])

    return score


def forty(folder):
    """40 small files (one unreadable to the stand-in: its reason is a result too)."""
    return make_faces(folder, 0, files={f"f{i:02d}.jpg": b"bad" if i == 7 else b"x" * (1 + i % 7) for i in range(40)})


def the_set(out):
    record = json.loads((out / SIDECAR).read_text())
    return outputs(out), record["run"]["skipped"], record["run"]["images"]


def test_a_finished_run_refuses_changed_images_and_scores_added_ones(small, tmp_path) -> None:
    """After a finished run of whole batches an image added at the end is scored in a batch of its own (as an
    uninterrupted run scores it) and the earlier scores are kept; an image scored before whose modification time
    (same bytes) or size changed is refused, the added one too once it was scored."""
    import pickle


    out = tmp_path / "out"
    assert drive(small, out).complete
    (small / "a" / "9.jpg").write_bytes(b"new")
    summary = drive(small, out)
    assert summary.complete and (summary.scored, summary.total) == (1, 7)
    touched = small / "a" / "2.jpg"
    info = touched.stat()
    os.utime(touched, ns=(info.st_atime_ns, info.st_mtime_ns + 1))
    (small / "a" / "9.jpg").write_bytes(b"longer")
    with pytest.raises(ConfigError, match=r"^2 of the 7 images of '.*small' already scored in '.*out' changed since "
                                          r"\(another size or modification time\), e.g. a/2.jpg: their scores would "
                                          r"be stale; add --fresh"):
        drive(small, out)
    assert drive(small, out, fresh=True).scored == 7
    with open(out / FILES[0], "rb") as handle:
        assert pickle.load(handle)["a/9.jpg"] == 6.0


def test_a_set_without_settings_is_scored_afresh_and_never_continued(small, tmp_path) -> None:
    """A sidecar whose settings are null (photos, whose run does not resume) records no run to continue: the scores
    beside it are never taken over, and part files beside it are refused."""
    import pickle

    from utils.errors import DataError

    out = tmp_path / "out"
    out.mkdir()
    (out / SIDECAR).write_text('{"settings": null, "config": {}}')
    (out / FILES[0]).write_bytes(pickle.dumps({"a/0.jpg": 0.5}))
    summary = drive(small, out)
    assert summary.complete and summary.scored == 6
    with open(out / FILES[0], "rb") as handle:
        assert pickle.load(handle)["a/0.jpg"] == 1.0
    assert drive(small, out, fresh=True, limit=2).left == 4
    (out / SIDECAR).write_text('{"settings": null}')
    with pytest.raises(DataError, match=r"holds part files \(quality-scores.part0of1.csv\) but no settings in "
                                        r"quality-scores.json, so their settings are unknown; add --fresh"):
        drive(small, out)


@pytest.mark.parametrize("case,pattern", [
    ("missing", r"'.*out' holds quality-scores.json but no quality-scores.fingerprints, so the images its "
                r"scores belong to cannot be checked; add --fresh"),
    ("cut", r"fingerprints' is damaged \(not the fingerprints of a listing\); add --fresh"),
    ("altered", r"fingerprints' is damaged \(not the fingerprints of a listing\); add --fresh"),
    ("random", r"fingerprints' is damaged \(not the fingerprints of a listing\); add --fresh"),
    ("foreign", r"^2 of the 2 images of '.*small' already scored in '.*out' changed since"),
    ("link", r"fingerprints' is a symbolic link; a run does not follow links in its output folder: add --fresh"),
    ("folder", r"fingerprints' is not a regular file; add --fresh"),
])
def test_damaged_fingerprints_are_one_line(case, pattern, small, tmp_path) -> None:
    from utils.errors import UserError

    out = tmp_path / "out"
    assert drive(small, out, limit=2).left == 4
    path = out / FINGERPRINTS
    data = path.read_bytes()
    path.unlink()
    if case == "cut":
        path.write_bytes(data[:-1])
    elif case == "altered":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif case == "random":
        path.write_bytes(os.urandom(len(data)))
    elif case == "foreign":  # well formed, of another folder's files
        other = make_faces(tmp_path / "other", 0, files={f"a/{i}.jpg": b"y" * (i + 2) for i in range(6)})
        drive(other, tmp_path / "other-out", limit=2)
        path.write_bytes((tmp_path / "other-out" / FINGERPRINTS).read_bytes())
    elif case == "link":
        (tmp_path / "elsewhere").write_bytes(data)
        os.symlink(tmp_path / "elsewhere", path)
    elif case == "folder":
        path.mkdir()
    with pytest.raises(UserError, match=pattern):
        drive(small, out)
    if case == "folder":  # --fresh removes files only: a folder in a file's place is left to the user, in one line
        with pytest.raises(UserError, match=r"fingerprints' is a folder where this project keeps a file; remove it"):
            drive(small, out, fresh=True)
        assert path.is_dir()
    else:
        assert drive(small, out, fresh=True).complete


@pytest.mark.parametrize("row,problem", [
    (b"a/3.jpg,nan,", r"the score 'nan' is not finite"),
    (b"a/3.jpg,inf,", r"the score 'inf' is not finite"),
    (b"a/3.jpg,-1e999,", r"the score '-1e999' is not finite"),
    (b"a/3.jpg,0.5", r"2 field\(s\), not path,quality,error"),
    (b"a/3.jpg,0.5,,x", r"4 field\(s\), not path,quality,error"),
    (b"", r"0 field\(s\), not path,quality,error"),
    (b"a/3.jpg,abc,", r"'abc' is not a score"),
    (b"a/3.jpg,1_0,", r"'1_0' is not a score as this project writes it"),
    (b"a/3.jpg,,", r"neither a score nor a reason"),
    (b"a/3.jpg,0.5,unreadable", r"both a score and a reason"),
    (b"b/7.jpg,0.5,", r"'b/7.jpg' is not an image of the listing"),
    (b"a/0.jpg,0.5,", r"'a/0.jpg' a second time"),
])
def test_forged_part_rows_are_one_line(row, problem, small, tmp_path) -> None:
    """A block with a valid checksum whose row is not one a run writes makes the part damaged: one line naming it,
    the row and --fresh; nothing of it reaches an output."""
    from utils.errors import DataError

    out = tmp_path / "out"
    assert drive(small, out, limit=2).left == 4
    payload = row + b"\r\n"
    with open(out / PART, "ab") as handle:
        handle.write(b"#B %d %08x\n" % (len(payload), zlib.crc32(payload)) + payload)
    with pytest.raises(DataError, match=rf"^'.*part0of1.csv' is damaged \(row 3: {problem}\); add --fresh"):
        drive(small, out)
    assert not (out / FILES[0]).exists()
    assert drive(small, out, fresh=True).complete
    assert (out / FILES[1]).read_text().splitlines()[1:] == [f"a/{i}.jpg,{i + 1}.0" for i in range(6)]


def test_the_line_after_a_limit_stop() -> None:
    """Without --fresh: run the same command. With it (or a prefix argparse takes for it): the command without it,
    quoted for a shell, on one line."""
    from engine.resumable import _continue_line

    assert _continue_line(3, False, ["x.py", "--fresh"]) == ("stopped with 3 image(s) left (base.limit); run the "
                                                            "same command to continue")
    line = _continue_line(3, True, ["x.py", "--fre", "--images", "my faces\nb", "--fresh", "--limit", "2"])
    assert line == ("stopped with 3 image(s) left (base.limit); continue with the same command without --fresh (it "
                    "would start over): python x.py --images 'my faces\\nb' --limit 2")


def test_a_state_without_its_part_is_refused_and_fresh_removes_it(small, tmp_path) -> None:
    """A draw state whose part file is gone would be restored into a part that starts afresh: refused; --fresh
    removes it with every other file of the earlier run."""
    from utils.errors import DataError

    out = tmp_path / "out"
    assert drive(small, out, limit=2).left == 4
    orphan = out / "quality-scores.part1of2.csv.state.pt"
    orphan.write_bytes(b"left behind")
    with pytest.raises(DataError, match=r"part1of2.csv.state.pt' has no part file beside it; add --fresh"):
        drive(small, out)
    assert drive(small, out, fresh=True).complete and not orphan.exists()


def test_images_added_and_removed_after_a_finished_run_give_an_uninterrupted_runs_bytes(tmp_path, capsys) -> None:
    """A finished run of 40 images in batches of 4, then 3 images added (sorting in the middle and at the end) and 2
    removed: the rerun keeps the results (scores and skip reasons) of the whole batches before the first change and
    scores the rest in the batches of an uninterrupted run, so its files are a fresh run's bytes, with a stand-in
    whose scores depend on the batch. Continued over --limit stops too, and the summary names the change."""
    images = forty(tmp_path / "faces")
    out, limited = tmp_path / "out", tmp_path / "limited"
    for folder in (out, limited):
        assert drive(images, folder, batch=4, score=batch_sums(images)).complete
    for name in ("f21a.jpg", "f33a.jpg", "f99.jpg"):
        (images / name).write_bytes(b"new!")
    for name in ("f30.jpg", "f36.jpg"):
        (images / name).unlink()
    capsys.readouterr()
    calls = []
    summary = drive(images, out, batch=4, score=batch_sums(images, calls))
    err = capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert drive(images, fresh, batch=4, score=batch_sums(images)).complete
    assert the_set(out) == the_set(fresh)
    assert the_set(out)[1:] == ({"f07.jpg": "bad bytes"}, 41)
    # f21a.jpg is the 23rd image: the batches f00-f19 are kept, the images from f20 on are scored, 18 of them again.
    assert calls == sorted(os.listdir(images))[20:]
    assert summary.complete and (summary.scored, summary.total) == (21, 40)
    assert summary.change[1:5] == (20, 3, 2, 18)
    assert ("changed since the finished scores in '" in err and "': 3 image(s) added, 2 removed; the finished results "
            "of the first 20 (the whole batches before the first change of the listing) are kept" in err), err
    assert "scored 21, skipped 0 in this run (40 scored in all)" in err
    # The same change, continued over --limit stops: the fingerprints record how far the finished set counts.
    stops = [drive(images, limited, batch=4, score=batch_sums(images), limit=4).left for _ in range(6)]
    assert stops == [17, 13, 9, 5, 1, 0] and the_set(limited) == the_set(fresh)
    finished_cleanly(limited)
    capsys.readouterr()
    again = drive(images, limited, batch=4, score=batch_sums(images, calls := []))
    assert again.complete and calls == [] and again.change is None and the_set(limited) == the_set(fresh)
    err = capsys.readouterr().err
    assert "nothing left to score (40 scored in all); wrote" in err and "nan" not in err, err


def test_a_run_with_a_draw_state_refuses_to_restart_inside_a_changed_listing(tmp_path) -> None:
    """Official DifFIQA's draws continue from batch to batch and a finished run keeps no draw state: images added
    after its first batch are refused with one line; added before it, every image is scored afresh, exactly."""
    import torch

    from engine.labels.policy import GlobalRng

    images = forty(tmp_path / "faces")
    out = tmp_path / "out"
    state = GlobalRng(3, torch.device("cpu"))
    assert drive(images, out, batch=4, score=batch_sums(images, draws=True), state=state).complete
    (images / "f21a.jpg").write_bytes(b"new!")
    with pytest.raises(ConfigError, match=r"^'.*faces' changed since the scores in '.*out' \(1 image\(s\) added, "
                                          r"0 removed\): each batch's draws continue from the batches before it "
                                          r"\(official DifFIQA\), and a finished run keeps no draw state to restart "
                                          r"from image 21; restore the folder, or add --fresh"):
        drive(images, out, batch=4, score=batch_sums(images, draws=True), state=state)
    (images / "f21a.jpg").unlink()
    (images / "a.jpg").write_bytes(b"first")
    assert drive(images, out, batch=4, score=batch_sums(images, draws=True), state=state).scored == 40
    fresh = tmp_path / "fresh"
    assert drive(images, fresh, batch=4, score=batch_sums(images, draws=True), state=state).complete
    assert the_set(out) == the_set(fresh)


@pytest.mark.parametrize("case,problem", [
    ("offset_true", r"offset True is not a length"),
    ("offset_negative", r"offset -5 is not a length"),
    ("offset_float", r"offset 10.0 is not a length"),
    ("offset_mid_block", r"offset \d+ is not where a batch of 'quality-scores.part0of1.csv' ends"),
    ("offset_header", r"offset \d+ is not where a batch of 'quality-scores.part0of1.csv' ends"),
    ("cpu_short", r"'cpu' is not a state of this machine's generator: Expected a CPUGeneratorImplState of size"),
    ("cpu_float", r"'cpu' is not a byte tensor"),
    ("cpu_text", r"'cpu' is not a byte tensor"),
    ("cpu_zeros", r"'cpu' is not a state of this machine's generator: Invalid mt19937 state"),
    ("cpu_missing", r"keys \[\], not 'cpu' \(and 'cuda'\)"),
    ("extra_key", r"keys \['cpu', 'seed'\], not 'cpu' \(and 'cuda'\)"),
    ("not_a_mapping", r"not a mapping"),
    ("garbage", r"not a state file this project writes"),
])
def test_a_damaged_draw_state_is_one_line_and_cuts_nothing(case, problem, tmp_path) -> None:
    """Official DifFIQA's draw state beside a part is checked in full (its keys, the CPU state a byte tensor the
    generator takes, the offset a length where one of the part's batches ends, not a bool) before any part is cut:
    one line naming it and --fresh, and every part as it was (here a second part whose torn tail would be cut)."""
    import shutil

    import torch

    from engine.labels.policy import GlobalRng
    from utils.errors import DataError

    images = forty(tmp_path / "faces")
    out = tmp_path / "out"
    state = GlobalRng(3, torch.device("cpu"))
    assert drive(images, out, batch=4, score=batch_sums(images, draws=True), state=state, limit=8).left == 32
    path = out / (PART + ".state.pt")
    saved = torch.load(path, weights_only=True)
    offset = saved["offset"]
    changes = {"offset_true": {"offset": True}, "offset_negative": {"offset": -5}, "offset_float": {"offset": 10.0},
               "offset_mid_block": {"offset": offset - 3}, "offset_header": {"offset": offset - offset + 97},
               "cpu_short": {"cpu": torch.zeros(10, dtype=torch.uint8)}, "cpu_float": {"cpu": torch.zeros(5056)},
               "cpu_text": {"cpu": "abc"}, "cpu_zeros": {"cpu": torch.zeros(5056, dtype=torch.uint8)},
               "extra_key": {"seed": 3}}
    if case == "garbage":
        path.write_bytes(os.urandom(300))
    elif case == "not_a_mapping":
        torch.save([saved["cpu"]], path)
    else:
        torch.save({k: v for k, v in {**saved, **changes.get(case, {})}.items()
                    if not (case == "cpu_missing" and k == "cpu")}, path)
    other = out / "quality-scores.part0of2.csv"  # sorts first: it would be cut before the damaged state is read
    shutil.copy(out / PART, other)
    torch.save(saved, str(other) + ".state.pt")
    with open(other, "ab") as handle:
        handle.write(b"#B 40 0badf00d\nf9")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(DataError) as caught:
        drive(images, out, batch=4, score=batch_sums(images, draws=True), state=state)
    assert re.fullmatch(rf"'.*part0of1.csv.state.pt' is damaged \({problem}.*\); add --fresh to discard this "
                        rf"folder's earlier scores, or use another --output", str(caught.value)), str(caught.value)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


@pytest.mark.parametrize("content", [b"[" * 200000 + b"]" * 200000, b'{"settings": ' + b"[" * 100000])
def test_a_deeply_nested_sidecar_is_one_line(content, small, tmp_path) -> None:
    from utils.errors import DataError

    out = tmp_path / "out"
    out.mkdir()
    (out / SIDECAR).write_bytes(content)
    with pytest.raises(DataError, match=r"^'.*quality-scores.json' is damaged \(values nested too deeply\); add "
                                        r"--fresh"):
        drive(small, out)


def test_the_folder_with_a_trailing_separator_continues_and_a_linked_one_is_refused(small, tmp_path) -> None:
    """Keys joined to the folder as given: "small" and "small/" write the same keys, so either continues the
    other's run; a link to the folder writes other keys and is refused."""

    whole, out = tmp_path / "whole", tmp_path / "out"
    assert drive(small, whole, keys="joined").complete
    assert drive(small, out, keys="joined", limit=2).left == 4
    assert drive(f"{small}{os.sep}", out, keys="joined").complete
    assert outputs(out) == outputs(whole)
    os.symlink(small, tmp_path / "link")
    with pytest.raises(ConfigError, match=r"other settings \(keys: '.*/small/<rel.* -> '.*/link/<rel"):
        drive(tmp_path / "link", out, keys="joined")


def test_the_sidecar_records_the_values_used_and_the_summary_names_each_file(faces, checkpoint_dir, tmp_path,
                                                                             capsys) -> None:
    """Left to the run (batch size, workers, device, backend ``auto``), the sidecar's ``config`` holds what the run
    chose, not null, and host memory is not pinned on a CPU; the summary line names every file of the set; the same
    command again is accepted (the settings that decide a resume are unchanged), says the same and keeps the
    finished run's record (its config and seconds), byte for byte."""
    out = tmp_path / "out"
    args = ["--images", str(faces), "--model", "ediffiqaT", "--weights", os.path.join(checkpoint_dir, "ediffiqaT.pth"),
            "--output", str(out), "--device", "auto", "--backend", "auto", "-q", "--figure-tiles", "2"]
    records = []
    for attempt in range(2):
        # The rerun changes a key that decides nothing: the record stays the one of the run that scored the set.
        code, err = run(args + ["--set", "base.flush_every=7"] * attempt, capsys)
        assert code == 0, err
        (summary,) = [line for line in err.splitlines() if " wrote " in line]
        names = ["quality-scores.pkl", "quality-scores.csv", "quality-scores.png", SIDECAR, FINGERPRINTS]
        assert f"wrote {out / names[0]}, " in summary and all(name in summary for name in names), summary
        assert ("nothing left to score" in summary) == (attempt == 1)
        records.append((out / SIDECAR).read_bytes())
        record = json.loads(records[-1])
        config = record["config"]
        params = config["dataloader"]["params"]
        assert params["batch_size"] >= 1 and params["num_workers"] >= 0 and params["pin_memory"] is False
        assert config["base"]["flush_every"] != 7  # the first run's, also after the rerun
        assert config["base"]["device"] == "cpu" and config["backend"] in ("torch", "onnxruntime")
        assert config["precision"] == "fp32" and config["weights"] == os.path.join(checkpoint_dir, "ediffiqaT.pth")
    assert records[1] == records[0]
