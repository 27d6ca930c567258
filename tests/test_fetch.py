"""Weights fetched by name (utils/download.py, engine/scoring/weights.py), from a server on 127.0.0.1 standing in for
the published sources through EDIFFIQA_MIRROR: the cache, its integrity checks, offline use and concurrent fetches."""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import ROOT, assert_user_error, manifest_state_dict, run_script, save_image

import inference

T_PATH = "yakhyo/face-image-quality-assessment/releases/download/weights/ediffiqa_t.pth"
ONNX_PATH = "opencv/face_image_quality_assessment_ediffiqa/resolve/main/ediffiqa_tiny_jun2024.onnx"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    delay = 0.0

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        time.sleep(self.delay)
        super().do_GET()


@pytest.fixture()
def server(tmp_path, monkeypatch):
    """``(folder served, its URL)``; EDIFFIQA_MIRROR points at it."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("EDIFFIQA_MIRROR", url)
    yield root, url
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def faces(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./weights/ediffiqaT.pth here: the weights must be fetched
    for i in range(3):
        save_image(str(tmp_path / "faces" / f"{i}.png"), seed=i)
    return tmp_path / "faces"


def publish(root, rel, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def checkpoint_bytes(tmp_path) -> bytes:
    torch.save(manifest_state_dict("ediffiqaT", 1), str(tmp_path / "t.pth"))
    return (tmp_path / "t.pth").read_bytes()


def cached(name: str) -> str:
    return os.path.join(os.environ["TORCH_HOME"], "hub", "checkpoints", name)


def args(faces, out, *extra):
    return ["--images", str(faces), "--model", "ediffiqaT", "--output", str(out), "--device", "cpu", "-q", *extra]


def test_fetched_by_name_scores_like_the_file_then_runs_offline_and_refuses_a_changed_file(server, faces, tmp_path,
                                                                                          capsys, monkeypatch):
    root, url = server
    data = checkpoint_bytes(tmp_path)
    publish(root, T_PATH, data)
    code, err = run_script(inference.main, "inference.py", args(faces, tmp_path / "fetched"), capsys)
    assert code == 0, err
    digest = hashlib.sha256(data).hexdigest()
    assert f"fetched the eDifFIQA(T) weights from {url}/{T_PATH}" in err and digest in err
    assert open(cached("ediffiqa_t.pth"), "rb").read() == data
    assert open(cached("ediffiqa_t.pth.sha256")).read().strip() == digest
    code, err = run_script(inference.main, "inference.py", args(faces, tmp_path / "by_path", "--weights",
                                                                str(tmp_path / "t.pth")), capsys)
    assert code == 0, err
    assert (tmp_path / "fetched" / "quality-scores.pkl").read_bytes() == (
        tmp_path / "by_path" / "quality-scores.pkl").read_bytes()

    # Offline: the cache serves it, nothing is fetched.
    monkeypatch.setenv("EDIFFIQA_MIRROR", "http://127.0.0.1:9")
    code, err = run_script(inference.main, "inference.py", args(faces, tmp_path / "offline"), capsys)
    assert code == 0 and "fetched the" not in err, err
    from engine.scoring.scorer import QualityScorer

    assert QualityScorer.from_pretrained("ediffiqaT", device="cpu").backend == "torch"

    # A cached file changed afterwards is refused.
    with open(cached("ediffiqa_t.pth"), "ab") as handle:
        handle.write(b"\0")
    code, err = run_script(inference.main, "inference.py", args(faces, tmp_path / "tampered"), capsys)
    assert_user_error(code, err, "inference.py", r"the cached eDifFIQA\(T\) weights '.*ediffiqa_t.pth' do not match "
                                                 r"the SHA-256 recorded at its download .*; delete it")


def test_no_network_and_nothing_cached_is_one_line(faces, tmp_path, capsys) -> None:
    code, err = run_script(inference.main, "inference.py", args(faces, tmp_path / "out"), capsys)
    assert_user_error(code, err, "inference.py", rf"cannot fetch the eDifFIQA\(T\) weights from "
                                                 rf"http://127.0.0.1:9/{T_PATH} \(.*\); download the file by hand and "
                                                 r"save it as '.*hub/checkpoints/ediffiqa_t.pth', or pass its path "
                                                 r"with --weights")
    assert not os.path.exists(cached("ediffiqa_t.pth"))


def test_a_pinned_hash_is_enforced_and_a_mismatch_leaves_nothing(server, faces, tmp_path, capsys, monkeypatch):
    """The ONNX backends fetch eDifFIQA(T)'s published ONNX file, whose SHA-256 and size are pinned. A file with
    another hash is refused and nothing stays in the cache; the right one (here our own export, pinned in its place)
    scores like the checkpoint."""
    pytest.importorskip("onnxruntime")
    import dataclasses

    from engine.scoring.backends import export_onnx
    from model.registry import VARIANTS, create_model

    root, _ = server
    publish(root, ONNX_PATH, b"not the published model")
    code, err = run_script(inference.main, "inference.py", args(faces, tmp_path / "bad", "--backend", "onnxruntime"),
                           capsys)
    assert_user_error(code, err, "inference.py", r"the eDifFIQA\(T\) ONNX model downloaded from .* do not have the "
                                                 r"published SHA-256 9426c899.*; nothing was kept")
    folder = os.path.dirname(cached("x"))
    assert not [f for f in os.listdir(folder) if f.startswith("ediffiqa_tiny") and not f.endswith(".lock")]

    data = checkpoint_bytes(tmp_path)
    export_onnx(create_model("ediffiqaT", str(tmp_path / "t.pth")), str(tmp_path / "t.onnx"), with_embedding=True)
    onnx = (tmp_path / "t.onnx").read_bytes()
    publish(root, ONNX_PATH, onnx)
    publish(root, T_PATH, data)
    source = dataclasses.replace(VARIANTS["ediffiqaT"].onnx, size=len(onnx), sha256=hashlib.sha256(onnx).hexdigest())
    monkeypatch.setitem(VARIANTS, "ediffiqaT", dataclasses.replace(VARIANTS["ediffiqaT"], onnx=source))
    for backend in ("onnxruntime", "torch"):
        code, err = run_script(inference.main, "inference.py", args(faces, tmp_path / backend, "--backend", backend),
                               capsys)
        assert code == 0, err
    import pickle

    a = pickle.loads((tmp_path / "onnxruntime" / "quality-scores.pkl").read_bytes())
    b = pickle.loads((tmp_path / "torch" / "quality-scores.pkl").read_bytes())
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-4 * max(abs(v) for v in b.values()) for k in a)
    assert not os.path.exists(cached("ediffiqa_tiny_jun2024.onnx.sha256"))  # pinned: nothing to record


@pytest.mark.slow
def test_two_processes_fetching_at_once_get_one_good_file(server, tmp_path) -> None:
    root, _ = server
    data = os.urandom(3 << 20)
    publish(root, T_PATH, data)
    _Quiet.delay = 0.5  # both processes start before the first download ends
    code = ("from utils.download import fetch\n"
            "print(fetch('https://github.com/" + T_PATH + "', 'ediffiqa_t.pth', 'test weights', progress=False))\n")
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        _Quiet.delay = 0.0
    assert all(p.returncode == 0 for p in procs), results
    assert results[0][0] == results[1][0] and results[0][0].strip() == cached("ediffiqa_t.pth")
    assert sum("fetched the test weights" in err for _, err in results) == 1
    assert open(cached("ediffiqa_t.pth"), "rb").read() == data
    assert not [f for f in os.listdir(os.path.dirname(cached("x"))) if f.endswith(".partial")]
