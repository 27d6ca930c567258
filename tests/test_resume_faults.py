"""The resumable folder driver under faults (engine/resumable.py, through inference.py): a rerun after a kill at any
byte, mid-row or during the final write gives the files of an uninterrupted run; runs with other settings, another
folder or a second writer are refused; nothing in the output folder is trusted."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, assert_user_error, run_script, save_image

import inference

FILES = ("quality-scores.pkl", "quality-scores.csv")
PART = "quality-scores.part0of1.csv"
SETTINGS = "quality-scores.settings.json"


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "faces"
    for i in range(23):
        save_image(str(root / f"id{i % 3}" / f"{i:02d}.jpg"), seed=i)
    (root / "id1" / "broken.png").write_bytes(b"not a png")
    return root


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
    # no part, lock, state or temporary left; the resolved config beside the scores
    assert sorted(os.listdir(out)) == sorted([*FILES, SETTINGS, "quality-scores.config.json"])


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
    data, settings = (stopped / PART).read_bytes(), (stopped / SETTINGS).read_bytes()
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
        (out / SETTINGS).write_bytes(settings)
        (out / PART).write_bytes(data[:cut])
        code, err = run(argv(faces, checkpoint_dir, out), capsys)
        assert code == 0 and "left" not in err, (cut, err)
        assert outputs(out) == reference, cut
        finished_cleanly(out)
    # Garbage after the whole blocks (a damaged tail) is dropped too.
    out = tmp_path / "tail"
    out.mkdir()
    (out / SETTINGS).write_bytes(settings)
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
    for name in (".quality-scores.pkl.abc123.tmp", ".quality-scores.csv.x.tmp", ".quality-scores.settings.json.y.tmp"):
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
    other = tmp_path / "other"
    for rel in (p.relative_to(faces) for p in faces.rglob("*.jpg")):
        save_image(str(other / rel), seed=100 + len(str(rel)))
    out = tmp_path / "out"
    assert run(argv(faces, checkpoint_dir, out, "--limit", "8"), capsys)[0] == 0
    code, err = run(argv(other, checkpoint_dir, out), capsys)
    assert_user_error(code, err, "inference.py", r"other settings \(images: '.*faces' -> '.*other'; keys: ")


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
    from helpers import manifest_state_dict

    faces = tmp_path / "faces"
    for i in range(400):
        save_image(str(faces / f"{i:03d}.png"), seed=i)
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
    # A link planted as the settings file is refused the same way, before anything is read through it.
    (out / SETTINGS).unlink()
    os.symlink(victim, out / SETTINGS)
    code, err = run(argv(faces, checkpoint_dir, out), capsys)
    assert_user_error(code, err, "inference.py", r"settings.json' is a symbolic link")
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("content,pattern", [
    (b"", r"settings.json' is damaged \(.*\); add --fresh"),
    (b'{"images": "/x", "batch', r"settings.json' is damaged \(.*\); add --fresh"),
    (b"[1, 2]", r"settings.json' is damaged \(it holds a list, not the settings\); add --fresh"),
    (b"\xff\xfe", r"settings.json' is damaged"),
])
def test_a_damaged_settings_file_is_one_line(content, pattern, faces, checkpoint_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / SETTINGS).write_bytes(content)
    code, err = run(argv(faces, checkpoint_dir, out), capsys)
    assert_user_error(code, err, "inference.py", pattern)
    assert run(argv(faces, checkpoint_dir, out, "--fresh"), capsys)[0] == 0


@pytest.mark.parametrize("case", ["list_pickle", "nan_pickle", "foreign_part", "folder_part", "old_part_format"])
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
    else:
        (out / PART).unlink()
        (out / PART).mkdir()
        pattern = r"part0of1.csv' is not a regular file; add --fresh"
    code, err = run(argv(faces, checkpoint_dir, out), capsys)
    assert_user_error(code, err, "inference.py", pattern)


def test_non_finite_scores_stop_the_run_and_write_nothing(faces, tmp_path, capsys) -> None:
    """Weights whose scores overflow (finite, so they load): exit 1 at the first batch, no output set."""
    import torch
    from helpers import manifest_state_dict

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
    settings = json.loads((out / SETTINGS).read_text())
    assert settings["batch_size"] == 2 and settings["images"] == os.path.realpath(faces)
    assert settings["threads"] >= 1
