"""inference.py at scale: flushed part files, resuming after a kill or --limit, refusing other settings, and
splitting a folder across torchrun processes, each giving the files of one uninterrupted run."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT, assert_user_error, run_script, save_image

import inference

FILES = ("quality-scores.pkl", "quality-scores.csv")


@pytest.fixture(scope="module")
def faces(tmp_path_factory, make_faces):
    return make_faces(tmp_path_factory.mktemp("resume") / "faces", [f"id{i % 3}/{i:02d}.png" for i in range(13)],
                      files={"id0/broken.jpg": b"not a jpeg"})


def argv(faces, checkpoint_dir, out, *extra):
    return ["--images", str(faces), "--model", "ediffiqaT", "--weights", os.path.join(checkpoint_dir, "ediffiqaT.pth"),
            "--output", str(out), "--device", "cpu", "--batch-size", "2", "--workers", "0", "-q", "--figure-tiles", "0",
            *extra]


def outputs(out):
    return {name: (out / name).read_bytes() for name in FILES}


def test_resume_after_limit(faces, checkpoint_dir, tmp_path, capsys) -> None:
    """--limit 5 with batches of 2: whole batches, 4 new images a run (14 files: 4 runs), then the uninterrupted
    run's bytes. (Kills at any byte: tests/test_resume_faults.py.)"""
    whole = tmp_path / "whole"
    assert run_script(inference.main, "inference.py", argv(faces, checkpoint_dir, whole), capsys)[0] == 0
    limited = tmp_path / "limited"
    for step in range(4):
        code, err = run_script(inference.main, "inference.py", argv(faces, checkpoint_dir, limited, "--limit", "5"),
                               capsys)
        assert code == 0, err
        assert ("left" in err) == (step < 3), err
    assert outputs(limited) == outputs(whole)
    assert not [f for f in os.listdir(limited) if ".part" in f]


def test_images_added_and_removed_after_a_finished_run_give_a_fresh_runs_bytes(faces, checkpoint_dir, tmp_path,
                                                                              capsys) -> None:
    """inference.py after a finished run: two images added (one among the scored ones) and one removed; the rerun
    keeps the whole batches before the first change and writes a fresh run's pickle and CSV."""
    import shutil

    images = tmp_path / "faces"
    shutil.copytree(faces, images)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert run_script(inference.main, "inference.py", argv(images, checkpoint_dir, out), capsys)[0] == 0
    save_image(str(images / "id1" / "04a.png"), seed=40)
    save_image(str(images / "id2" / "99.png"), seed=41)
    os.remove(images / "id2" / "11.png")
    code, err = run_script(inference.main, "inference.py", argv(images, checkpoint_dir, out), capsys)
    assert code == 0 and "2 image(s) added, 1 removed; the finished results of the first 8 " in err, err
    assert run_script(inference.main, "inference.py", argv(images, checkpoint_dir, fresh), capsys)[0] == 0
    assert outputs(out) == outputs(fresh)


def test_other_settings_are_refused(faces, checkpoint_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert run_script(inference.main, "inference.py", argv(faces, checkpoint_dir, out, "--limit", "4"), capsys)[0] == 0
    code, err = run_script(inference.main, "inference.py", argv(faces, checkpoint_dir, out, "--no-fold-bn"), capsys)
    assert_user_error(code, err, "inference.py", r"holds quality scores made with other settings \(fold_bn: True -> "
                                                 r"False\); use another base.save_path \(--output\)")


@pytest.mark.slow
def test_torchrun_processes_write_the_files_of_one_process(faces, checkpoint_dir, tmp_path, capsys) -> None:
    """Each process takes whole batches, so with the same threads per process the merged files are byte for byte
    those of one process, also when a --limit run comes first; the rerun's summary counts every process. After
    images are added and removed, the processes rescore from the batch of the first change, as one process would."""
    import shutil

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    images = tmp_path / "faces"
    shutil.copytree(faces, images)
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
