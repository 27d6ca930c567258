"""Weights fetched by name (utils/download.py, engine/scoring/weights.py), from a server on 127.0.0.1 standing in for
the published sources through EDIFFIQA_MIRROR: the cache, its integrity checks, offline use and concurrent fetches;
servers that stall, trickle, never answer, cut the transfer or send the wrong thing (each one line, fast, nothing
kept); the download lock; odd and read-only cache entries. Timeouts are tenths of a second here
(EDIFFIQA_FETCH_TIMEOUT)."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import logging
import os
import random
import re
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import torch
from helpers import ROOT, assert_user_error, manifest_state_dict, run_script

import inference
from engine.scoring.weights import resolve_weights
from utils.download import fetch
from utils.errors import UserError
from utils.lock import FolderLock

T_PATH = "yakhyo/face-image-quality-assessment/releases/download/weights/ediffiqa_t.pth"
ONNX_PATH = "opencv/face_image_quality_assessment_ediffiqa/resolve/main/ediffiqa_tiny_jun2024.onnx"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    delay = 0.0

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        time.sleep(self.delay)
        super().do_GET()


@pytest.fixture(autouse=True)
def quick(monkeypatch, tmp_path):
    """Short timeouts (a local server answers in milliseconds), and no ./weights folder in the working directory."""
    monkeypatch.setenv("EDIFFIQA_FETCH_TIMEOUT", "0.5")
    monkeypatch.chdir(tmp_path)


@pytest.fixture()
def server(tmp_path, monkeypatch):
    """``(folder served, its URL)``; EDIFFIQA_MIRROR points at it."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("EDIFFIQA_MIRROR", url)
    yield root, url
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def faces(tmp_path, monkeypatch, make_faces):
    monkeypatch.chdir(tmp_path)  # no ./weights/ediffiqaT.pth here: the weights must be fetched
    return make_faces(tmp_path / "faces", 3)


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
    """... and under -q the fetch says nothing (its line is an info log: see the cut-transfer test)."""
    root, url = server
    data = checkpoint_bytes(tmp_path)
    publish(root, T_PATH, data)
    code, err = run_script(inference.main, "inference.py", args(faces, tmp_path / "fetched"), capsys)
    assert code == 0, err
    assert "fetched the" not in err and "ediffiqa_t.pth" not in err  # -q
    digest = hashlib.sha256(data).hexdigest()
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
    path = cached("ediffiqa_t.pth")
    assert_user_error(code, err, "inference.py", rf"the cached file for the eDifFIQA\(T\) weights \('{path}'\) does "
                                                 rf"not match the SHA-256 recorded at its download .*; delete '{path}' "
                                                 rf"and '{path}.sha256' to fetch it again")


def test_no_network_and_nothing_cached_is_one_line(faces, tmp_path, capsys) -> None:
    code, err = run_script(inference.main, "inference.py", args(faces, tmp_path / "out"), capsys)
    assert_user_error(code, err, "inference.py", rf"cannot fetch the eDifFIQA\(T\) weights from "
                                                 rf"http://127.0.0.1:9/{T_PATH} \(connection refused; 3 tries\); check "
                                                 r"the network or the mirror \(EDIFFIQA_MIRROR\), download the file by "
                                                 r"hand and save it as '.*hub/checkpoints/ediffiqa_t.pth', or pass its "
                                                 r"path with --weights")
    assert not os.path.exists(cached("ediffiqa_t.pth"))


def test_a_pinned_hash_is_enforced_and_a_mismatch_leaves_nothing(server, faces, tmp_path, capsys, monkeypatch):
    """The ONNX backends fetch eDifFIQA(T)'s published ONNX file, whose SHA-256 and size are pinned. A file of another
    size is refused by its Content-Length before its body is read and nothing stays in the cache; the right one (here
    our own export, pinned in its place) scores like the checkpoint."""
    pytest.importorskip("onnxruntime")
    import dataclasses

    from engine.scoring.backends import export_onnx
    from model.checkpoint import create_model
    from model.registry import VARIANTS

    root, _ = server
    publish(root, ONNX_PATH, b"not the published model")
    code, err = run_script(inference.main, "inference.py", args(faces, tmp_path / "bad", "--backend", "onnxruntime"),
                           capsys)
    assert_user_error(code, err, "inference.py", r"cannot fetch the eDifFIQA\(T\) ONNX model from .* \(the server "
                                                 r"announces a file of 23 bytes \(application/octet-stream\), not the "
                                                 r"published 7,272,678 bytes; nothing was downloaded\)")
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
def test_two_processes_fetching_at_once_get_one_good_file(server, tmp_path, monkeypatch) -> None:
    root, _ = server
    data = os.urandom(3 << 20)
    publish(root, T_PATH, data)
    _Quiet.delay = 0.5  # both processes start before the first download ends
    monkeypatch.setenv("EDIFFIQA_FETCH_TIMEOUT", "20")  # the delay is not a stall
    code = ("import logging; logging.basicConfig(level=logging.INFO)\nfrom utils.download import fetch\n"
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
    assert sum(err.count("waiting for another process to fetch the test weights") for _, err in results) <= 1
    assert open(cached("ediffiqa_t.pth"), "rb").read() == data
    assert not [f for f in os.listdir(os.path.dirname(cached("x"))) if f.endswith(".partial")]


# ------------------------------------------------------------------------------------ servers that misbehave


def send(data: bytes, kind="application/octet-stream", status: int = 200, length="auto", stall: bool = False,
         headers=()):
    """A server's answer: ``status``, ``data`` of type ``kind`` (None: no Content-Type) announced as ``length`` bytes
    (``"auto"``: its own; None: no Content-Length, the end is the connection's), with ``headers`` more, then the
    connection closed, or held open without a byte more (``stall``)."""
    def answer(handler, release: threading.Event) -> None:
        handler.send_response(status)
        if kind is not None:
            handler.send_header("Content-Type", kind)
        if length is not None:
            handler.send_header("Content-Length", str(len(data) if length == "auto" else length))
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()
        if stall:
            release.wait(30)

    return answer


def raw(data: bytes):
    """A server's answer of exactly ``data`` (no status line or headers of its own), then the connection closed."""
    def answer(handler, release: threading.Event) -> None:
        handler.wfile.write(data)

    return answer


def trickle(data: bytes, headers_too: bool = False, seen=None):
    """A server that sends ``data`` (``headers_too``: the status line and headers as well) one byte every 10 ms;
    ``seen`` (a list), when given, gets the size of the download's temporary file once 5 bytes of the body are sent
    (what a process waiting for the download would see)."""
    def answer(handler, release: threading.Event) -> None:
        head = (f"HTTP/1.0 200 OK\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        if not headers_too:
            handler.wfile.write(head)
        for i, byte in enumerate((head if headers_too else b"") + data):
            if release.is_set():
                return
            handler.wfile.write(bytes([byte]))
            time.sleep(0.01)
            if seen is not None and i == 4 and not seen:
                seen.append(partial_size(5, wait=0.15))

    return answer


def partial_size(least: int, wait: float) -> int:
    """The size of eDifFIQA(T)'s download in progress, once it holds ``least`` bytes or after ``wait`` seconds."""
    end = time.monotonic() + wait
    size = 0
    while time.monotonic() < end and size < least:
        names = [f for f in cache_listing() if f.endswith(".partial")]
        try:
            size = os.path.getsize(cached(names[0])) if names else 0
        except FileNotFoundError:  # that try ended meanwhile
            size = 0
        time.sleep(0.01)
    return size


@pytest.fixture()
def scripted(monkeypatch):
    """``(plan, requests, url)``: a server on 127.0.0.1 that answers the n-th GET with ``plan[n]`` (the last one
    repeats; replace the list's items to change it); EDIFFIQA_MIRROR points at it."""
    plan, requests = [], []
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            try:
                plan[min(len(requests), len(plan)) - 1](self, release)
            except OSError:  # the client gave up: what it does about it is under test, not this
                pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("EDIFFIQA_MIRROR", url)
    yield plan, requests, url
    release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> bytes:
    """eDifFIQA(T) checkpoint bytes (official keys and shapes)."""
    return checkpoint_bytes(tmp_path_factory.mktemp("good"))


def bounded(call, limit: float = 15.0):
    """``call()``'s result, or the exception it raised; a call still running after ``limit`` seconds is a hang and
    fails the test (the thread is left behind)."""
    box = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive()
    return box.get("error", box.get("result"))


def fetch_t(limit: float = 15.0):
    """eDifFIQA(T)'s weights by name, as the scripts fetch them (with the checkpoint check)."""
    return bounded(lambda: resolve_weights("ediffiqaT", progress=False), limit)


def one_line(error, pattern: str) -> str:
    assert isinstance(error, UserError), error
    message = str(error)
    assert "\n" not in message
    assert re.search(pattern, message), message
    return message


def cache_listing():
    folder = os.path.dirname(cached("x"))
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_a_stalled_server_is_one_line_naming_the_url_and_the_timeout(scripted, good, monkeypatch) -> None:
    plan, requests, url = scripted
    plan[:] = [send(good[:1000], length=len(good), stall=True)]  # headers and 1,000 bytes, then nothing
    monkeypatch.setenv("EDIFFIQA_FETCH_TIMEOUT", "0.1")
    # The 1,000 bytes came with the headers or in the body's first window (as the reads fell).
    one_line(fetch_t(), rf"^cannot fetch the eDifFIQA\(T\) weights from {url}/{T_PATH} \(the server stalled: "
                        rf"(no data|1,000 bytes) in 0.1 s after 1,000 of {len(good):,} bytes \(at least 64 KiB must "
                        r"arrive in every 0.1 s\); EDIFFIQA_FETCH_TIMEOUT sets the seconds to wait; 3 tries\); check "
                        r"the network or the mirror \(EDIFFIQA_MIRROR\)")
    assert len(requests) == 3 and cache_listing() == []


def test_a_trickling_server_fails_as_stalled_and_what_arrived_is_on_disk_meanwhile(scripted, good,
                                                                                     monkeypatch) -> None:
    """A body trickled a byte at a time (each read well within the timeout) fails once a window of the timeout brings
    less than 64 KiB, in about the timeout per try; meanwhile what arrived is in the download's temporary file (a
    process waiting for the download sees it grow)."""
    plan, requests, url = scripted
    seen: list = []
    plan[:] = [trickle(good, seen=seen)]
    monkeypatch.setenv("EDIFFIQA_FETCH_TIMEOUT", "0.2")
    one_line(fetch_t(limit=5), rf"\(the server stalled: [\d,]+ bytes in 0.2 s after [\d,]+ of {len(good):,} bytes "
                               r"\(at least 64 KiB must arrive in every 0.2 s\); EDIFFIQA_FETCH_TIMEOUT sets the "
                               r"seconds to wait; 3 tries\)")
    assert len(requests) == 3 and seen == [5] and cache_listing() == []


def test_headers_that_do_not_arrive_complete_in_time_fail_as_a_transient_error(scripted, monkeypatch) -> None:
    plan, requests, _ = scripted
    plan[:] = [trickle(b"x" * 10_000, headers_too=True)]  # a byte of the status line and headers every 10 ms
    monkeypatch.setenv("EDIFFIQA_FETCH_TIMEOUT", "0.1")
    one_line(fetch_t(limit=5), r"\(the answer's headers did not arrive within 0.1 s \([\d,]+ bytes of them did\); "
                               r"EDIFFIQA_FETCH_TIMEOUT sets the seconds to wait; 3 tries\)")
    assert len(requests) == 3 and cache_listing() == []


def test_a_server_that_never_answers_is_one_line(monkeypatch) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel does) and never reads or answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        monkeypatch.setenv("EDIFFIQA_MIRROR", f"http://127.0.0.1:{listener.getsockname()[1]}")
        monkeypatch.setenv("EDIFFIQA_FETCH_TIMEOUT", "0.1")
        one_line(fetch_t(), r"cannot fetch the eDifFIQA\(T\) weights from .* \(no answer for 0.1 s; "
                            r"EDIFFIQA_FETCH_TIMEOUT sets the seconds to wait; 3 tries\); .* pass its path with "
                            r"--weights$")
    assert cache_listing() == []


def test_a_cut_transfer_is_tried_again_then_refused_and_the_fixed_server_is_used(scripted, good, caplog) -> None:
    plan, requests, url = scripted
    plan[:] = [send(good[: len(good) // 2], length=len(good))]  # Content-Length, then the connection closed early
    one_line(fetch_t(), rf"cannot fetch the eDifFIQA\(T\) weights from {url}/{T_PATH} \("
                        rf"{len(good) // 2 / 1e6:.1f} of {len(good) / 1e6:.1f} MB \(the transfer was cut\); 3 tries\)")
    assert len(requests) == 3 and cache_listing() == []
    plan[:] = [send(good)]
    with caplog.at_level(logging.INFO, logger="utils.download"):
        assert fetch_t() == cached("ediffiqa_t.pth")
    digest = hashlib.sha256(good).hexdigest()
    assert f"fetched the eDifFIQA(T) weights from {url}/{T_PATH} into '{cached('ediffiqa_t.pth')}' ({len(good):,} " \
           f"bytes, SHA-256 {digest}; recorded" in caplog.text  # an info log: -q silences it (the first test)
    assert open(cached("ediffiqa_t.pth"), "rb").read() == good
    assert open(cached("ediffiqa_t.pth.sha256")).read().strip() == digest


def test_a_server_error_is_tried_again(scripted, good) -> None:
    plan, requests, _ = scripted
    plan[:] = [send(b"busy", status=503), send(good[:100], length=len(good)), send(good)]
    assert fetch_t() == cached("ediffiqa_t.pth") and len(requests) == 3
    plan[:] = [send(b"gone", status=404)]  # not transient: one try
    os.remove(cached("ediffiqa_t.pth"))
    one_line(fetch_t(), r"\(HTTP 404 Not Found\); check the network")
    assert len(requests) == 4


def test_a_connection_closed_in_the_headers_is_tried_again(scripted, good) -> None:
    plan, requests, _ = scripted
    plan[:] = [raw(b"HTTP/1.1 200 OK\r\nContent-Le"), send(good)]
    assert fetch_t() == cached("ediffiqa_t.pth") and len(requests) == 2
    os.remove(cached("ediffiqa_t.pth"))
    plan[:] = [raw(b"HTTP/1.1 200 OK\r\nContent-Le")]
    one_line(fetch_t(), r"\(the connection was closed before the answer's headers were complete \(27 bytes of them "
                        r"arrived\); 3 tries\)")
    assert len(requests) == 5


@pytest.mark.parametrize("answer,arrived,tries", [
    ("part", r"HTTP 206 Partial Content, not 200 OK with the file", 1),
    ("whole as a part", r"HTTP 206 Partial Content, not 200 OK with the file", 1),
    ("gzip", r"the server sent it gzip-encoded \(Content-Encoding\), not as the file itself", 1),
    ("longer", r"{got:,} of {more:,} bytes \(the transfer was cut\); 3 tries", 3),
    ("html untyped", r"is an HTML page \(no Content-Type, 50 bytes\), not the file; nothing was kept", 1),
    ("loop", r"a redirect loop \(HTTP 302 Found, to an address already visited 4 times or after 10 redirects\)", 5),
    ("not HTTP", r"not an HTTP answer: it begins with '\\x00\\x01", 1),
])
def test_answers_that_are_not_the_whole_file_say_what_arrived(scripted, good, answer, arrived, tries) -> None:
    """Only 200 OK with the file itself is taken; each other answer is named as it is (its status, its encoding, the
    bytes when the MB figures would read the same, no Content-Type where there was none, a redirect loop on one
    line, the first bytes of what is not HTTP) and nothing is kept."""
    plan, requests, url = scripted
    page = b"<!DOCTYPE html><html><body>Not found</body></html>"

    def loop(handler, release) -> None:
        handler.send_response(302)
        handler.send_header("Location", handler.path)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    plan[:] = [{"part": lambda: send(good[:1000], status=206, headers=[("Content-Range",
                                                                        f"bytes 0-999/{len(good)}")]),
                "whole as a part": lambda: send(good, status=206),
                "gzip": lambda: send(gzip.compress(good[:10_000]), headers=[("Content-Encoding", "gzip")]),
                "longer": lambda: send(good, length=len(good) + 100),
                "html untyped": lambda: send(page, kind=None),
                "loop": lambda: loop,
                "not HTTP": lambda: raw(bytes(range(256)) * 4)}[answer]()]
    message = one_line(fetch_t(), arrived.format(got=len(good), more=len(good) + 100))
    assert message.startswith(f"cannot fetch the eDifFIQA(T) weights from {url}/{T_PATH} (") or answer == "html untyped"
    assert len(requests) == tries and cache_listing() == []


@pytest.mark.parametrize("sent,arrived", [
    ("html", r"the file downloaded for the eDifFIQA\(T\) weights from {url} is an HTML page \(text/html, 1,234 "
             r"bytes\), not the file; nothing was kept"),
    ("random", r"cannot read the file downloaded for the eDifFIQA\(T\) weights from {url} \(5,000 bytes\) as a PyTorch "
               r"checkpoint \(it is neither a zip archive nor a pickle, as checkpoints are; it begins with bytes 73 a9 "
               r"[0-9a-f ]+\); nothing was kept"),
    ("nan", r"the file downloaded for the eDifFIQA\(T\) weights from {url} \(.* MB\) holds NaN or infinite values"),
])
def test_what_is_not_the_checkpoint_is_named_and_not_kept_and_the_fixed_server_is_used(
        scripted, good, faces, tmp_path, capsys, sent, arrived) -> None:
    """An HTML page sent with status 200, random bytes, a checkpoint with NaN weights: refused with what arrived,
    nothing cached or recorded; once the server sends the checkpoint, the next run uses it."""
    plan, _, url = scripted
    if sent == "html":
        page = b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>"
        body = page + b" " * (1234 - len(page))
    elif sent == "random":
        body = random.Random(2).randbytes(5000)  # torch's own reason for these bytes: "pop from empty list"
    else:
        state = manifest_state_dict("ediffiqaT", 1)
        next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = float("nan")
        torch.save(state, str(tmp_path / "nan.pth"))
        body = (tmp_path / "nan.pth").read_bytes()
    plan[:] = [send(body, kind="text/html" if sent == "html" else "application/octet-stream")]
    code, err = bounded(lambda: run_script(inference.main, "inference.py", args(faces, tmp_path / "out"), capsys))
    assert_user_error(code, err, "inference.py", arrived.format(url=re.escape(f"{url}/{T_PATH}")))
    assert cache_listing() == []
    plan[:] = [send(good)]
    assert fetch_t() == cached("ediffiqa_t.pth")
    assert open(cached("ediffiqa_t.pth.sha256")).read().strip() == hashlib.sha256(good).hexdigest()


def test_the_published_size_and_hash_are_checked_before_anything_is_kept(scripted, monkeypatch) -> None:
    """A Content-Length other than the published size is refused before the body is read (the server here would
    stall); a body growing past it is stopped there; the right size with another SHA-256 is refused; nothing kept."""
    plan, requests, url = scripted
    data = os.urandom(5000)
    pinned = dict(sha256=hashlib.sha256(data).hexdigest(), size=len(data), progress=False)
    source = "https://example.org/files/blob.bin"
    monkeypatch.setenv("EDIFFIQA_FETCH_TIMEOUT", "0.2")

    plan[:] = [send(b"", length=7_075_027, stall=True)]
    one_line(bounded(lambda: fetch(source, "blob.bin", "test file", **pinned)),
             r"cannot fetch the test file from .*blob.bin \(the server announces a file of 7,075,027 bytes "
             r"\(application/octet-stream\), not the published 5,000 bytes; nothing was downloaded\)")
    plan[:] = [send(data + b"x" * 1000, length=None, stall=True)]
    one_line(bounded(lambda: fetch(source, "blob.bin", "test file", **pinned)),
             r"\(more than the published 5,000 bytes arrived; stopped at 6,000\)")
    plan[:] = [send(os.urandom(5000))]
    one_line(bounded(lambda: fetch(source, "blob.bin", "test file", **pinned)),
             rf"the file downloaded for the test file from {url}/files/blob.bin \(5,000 bytes\) does not have the "
             rf"published SHA-256 {pinned['sha256']} \(a damaged transfer or another file\); nothing was kept")
    assert len(requests) == 3 and cache_listing() == []
    plan[:] = [send(data)]
    assert bounded(lambda: fetch(source, "blob.bin", "test file", **pinned)) == cached("blob.bin")
    assert cache_listing() == ["blob.bin"]  # pinned: no record


@pytest.mark.parametrize("variable,value", [
    ("EDIFFIQA_MIRROR", "ftp://127.0.0.1:21/pub"), ("EDIFFIQA_MIRROR", "file:///srv/weights"),
    ("EDIFFIQA_MIRROR", "localhost:8000"), ("EDIFFIQA_MIRROR", "http://"),
    ("EDIFFIQA_FETCH_TIMEOUT", "0"), ("EDIFFIQA_FETCH_TIMEOUT", "soon"), ("EDIFFIQA_FETCH_TIMEOUT", "inf"),
    ("EDIFFIQA_FETCH_TIMEOUT", "1e12"),
])
def test_variables_that_cannot_work_are_one_line_before_any_lock_or_network(faces, tmp_path, capsys, monkeypatch,
                                                                            variable, value) -> None:
    monkeypatch.setenv(variable, value)
    code, err = bounded(lambda: run_script(inference.main, "inference.py", args(faces, tmp_path / "out"), capsys))
    assert_user_error(code, err, "inference.py", rf"{variable}='{re.escape(value)}' is not an? ")
    assert not os.path.exists(os.path.dirname(cached("x")))  # no cache folder, no lock file


@pytest.mark.parametrize("value,shown,problem", [
    ("http://127.0.0.1:9/ok#frag", None, "it has a fragment"),
    ("http://127.0.0.1:9/ok?x=1", None, "it has a query"),
    ("http://user:secret@127.0.0.1:9/", "http://***@127.0.0.1:9/", "it holds a user name or password"),
    ("http://127.0.0.1:9/a b", None, "it holds a space or a control character"),
    ("http://127.0.0.1:9/a\nb", None, "it holds a space or a control character"),
    ("http://127.0.0.1:99999", None, "its host or port cannot be read"),
])
def test_a_mirror_other_than_scheme_host_port_and_path_is_refused(monkeypatch, value, shown, problem) -> None:
    """Only http(s)://host[:port][/path]: the rest would be dropped, misplaced or sent, so it is refused before any
    lock or network, and a password is never echoed."""
    monkeypatch.setenv("EDIFFIQA_MIRROR", value)
    message = one_line(fetch_t(), rf"^EDIFFIQA_MIRROR={re.escape(repr(shown or value))} is not an "
                                  rf"http\(s\)://host\[:port\]\[/path\] address \({problem}")
    assert "secret" not in message and not os.path.exists(os.path.dirname(cached("x")))


def test_a_process_waiting_for_the_download_lock_says_so_once_and_gives_up(capsys, monkeypatch) -> None:
    os.makedirs(os.path.dirname(cached("x")))
    holder = FolderLock(cached("ediffiqa_t.pth.lock"), "TORCH_HOME").acquire()  # a download that makes no progress
    try:
        monkeypatch.setenv("EDIFFIQA_FETCH_TIMEOUT", "0.05")
        one_line(fetch_t(), rf"another process holds the download lock '{cached('ediffiqa_t.pth.lock')}' \(pid "
                            rf"{os.getpid()} on .*\) and its download of the eDifFIQA\(T\) weights has not grown for "
                            r"0.2 s \(4 times EDIFFIQA_FETCH_TIMEOUT\); wait for it to end or stop it")
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert err.count("waiting for another process") == 1 and (
        f"waiting for another process to fetch the eDifFIQA(T) weights into '{cached('ediffiqa_t.pth')}' (pid "
        f"{os.getpid()} on ") in err


def test_a_waiting_process_waits_while_the_download_grows_then_uses_its_file(good, capsys, monkeypatch) -> None:
    """Behind a download that keeps growing for longer than the bound, the waiting process waits, then takes the file
    the holder put in place (looking at the cache again once it has the lock) without fetching it itself."""
    os.makedirs(os.path.dirname(cached("x")))
    holder = FolderLock(cached("ediffiqa_t.pth.lock"), "TORCH_HOME").acquire()
    monkeypatch.setenv("EDIFFIQA_FETCH_TIMEOUT", "0.1")  # gives up after 0.4 s without growth

    def download() -> None:
        partial = cached("ediffiqa_t.pth.x1.partial")
        with open(partial, "wb") as handle:
            for i in range(8):  # 0.8 s, twice the bound
                handle.write(good[i * 1000:(i + 1) * 1000])
                handle.flush()
                time.sleep(0.1)
            handle.write(good[8000:])
        with open(cached("ediffiqa_t.pth.sha256"), "w") as handle:
            handle.write(hashlib.sha256(good).hexdigest() + "\n")
        os.replace(partial, cached("ediffiqa_t.pth"))
        holder.release()

    thread = threading.Thread(target=download)
    thread.start()
    try:
        assert fetch_t() == cached("ediffiqa_t.pth")  # the mirror is a closed port: nothing was fetched
    finally:
        thread.join()
    assert capsys.readouterr().err.count("waiting for another process to fetch the eDifFIQA(T) weights") == 1


def plant(kind: str, good: bytes) -> str:
    """A cache entry of ``kind`` for eDifFIQA(T)'s weights; returns the path the message must name."""
    path = cached("ediffiqa_t.pth")
    os.makedirs(os.path.dirname(path))
    digest = hashlib.sha256(good).hexdigest() + "\n"
    if kind == "file is a folder":
        os.makedirs(path)
        return path
    if kind == "not a checkpoint, recorded":  # what an earlier version kept and recorded from an HTML page
        junk = b"<!DOCTYPE html><html></html>"
        open(path, "wb").write(junk)
        open(path + ".sha256", "w").write(hashlib.sha256(junk).hexdigest() + "\n")
        return path
    open(path, "wb").write(good)
    if kind == "record is a folder":
        os.makedirs(path + ".sha256")
    elif kind == "record not UTF-8":
        open(path + ".sha256", "wb").write(b"\xff\xfe" + digest.encode())
    elif kind == "record not a digest":
        open(path + ".sha256", "w").write("ok\n")
    elif kind == "record of another file":
        open(path + ".sha256", "w").write("0" * 64 + "\n")
    return path + ".sha256"


@pytest.mark.parametrize("kind,problem", [
    ("file is a folder", r"the cache path of the eDifFIQA\(T\) weights '{path}' is a folder; delete '{path}' to fetch "
                         r"it again"),
    ("record is a folder", r"the SHA-256 record '{path}' of the cached file .* is a folder; delete '.*' and '{path}'"),
    ("record not UTF-8", r"the SHA-256 record '{path}' of .* is not UTF-8 text; delete '.*' and '{path}'"),
    ("record not a digest", r"the SHA-256 record '{path}' of .* does not hold a SHA-256 \(64 hexadecimal digits\); "
                            r"delete '.*' and '{path}' to fetch it again"),
    ("record of another file", r"does not match the SHA-256 recorded at its download \('{path}'\): .* so the file "
                               r"changed after it was fetched; delete '.*' and '{path}' to fetch it again"),
    ("not a checkpoint, recorded", r"cannot read the cached file for the eDifFIQA\(T\) weights \('{path}'\) as a "
                                   r"PyTorch checkpoint \(.*\); delete '{path}' and '{path}.sha256' to fetch it again"),
])
def test_odd_or_bad_cache_entries_are_one_line_naming_what_to_delete(good, faces, tmp_path, capsys, kind,
                                                                     problem) -> None:
    named = plant(kind, good)
    code, err = bounded(lambda: run_script(inference.main, "inference.py", args(faces, tmp_path / "out"), capsys))
    assert_user_error(code, err, "inference.py", problem.format(path=re.escape(named)))


@pytest.mark.parametrize("recorded", [True, False])
def test_a_read_only_cache_holding_a_verified_file_is_used_without_lock_or_write(good, monkeypatch, caplog,
                                                                                 recorded) -> None:
    """No lock is taken and nothing is written when the cache holds the file; without its record (placed by hand), the
    file is checked as the variant's and used, with a warning that its SHA-256 could not be recorded. The folder is
    read-only, and every way to write into it fails (as root, chmod alone would not stop a write)."""
    path = cached("ediffiqa_t.pth")
    os.makedirs(os.path.dirname(path))
    open(path, "wb").write(good)
    if recorded:
        open(path + ".sha256", "w").write(hashlib.sha256(good).hexdigest() + "\n")
    listing = cache_listing()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(FolderLock, "acquire", refuse)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    os.chmod(os.path.dirname(path), stat.S_IRUSR | stat.S_IXUSR)
    try:
        with caplog.at_level(logging.WARNING):
            assert fetch_t() == path
    finally:
        os.chmod(os.path.dirname(path), stat.S_IRWXU)
    assert cache_listing() == listing
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ([] if recorded else [f"using the eDifFIQA(T) weights placed at '{path}' (SHA-256 "
                                           f"{hashlib.sha256(good).hexdigest()}) without recording its SHA-256 "
                                           f"(cannot write '{path}.sha256': Permission denied; nothing was "
                                           "written)"])


def test_an_unwritable_cache_without_the_file_is_one_line(monkeypatch) -> None:
    os.makedirs(os.path.dirname(cached("x")))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    one_line(fetch_t(), rf"torch's cache folder '{re.escape(os.path.dirname(cached('x')))}' does not hold the "
                        r"eDifFIQA\(T\) weights and cannot be written \(Permission denied\); set TORCH_HOME to a "
                        r"writable folder, save the file by hand as '.*ediffiqa_t.pth', or pass its path with "
                        r"--weights")


def test_a_full_cache_disk_is_a_run_error_and_leaves_nothing(scripted, good, faces, tmp_path, capsys,
                                                             monkeypatch) -> None:
    """The download is written to a device that is always full (/dev/full): one line, exit 1 as for a full disk
    when scores are appended (the input was fine), nothing left in the cache."""
    plan, _, _ = scripted
    plan[:] = [send(good)]
    real = tempfile.mkstemp

    def full(*args, **kwargs):
        fd, path = real(*args, **kwargs)
        if not path.endswith(".partial"):
            return fd, path
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path

    monkeypatch.setattr(tempfile, "mkstemp", full)
    code, err = bounded(lambda: run_script(inference.main, "inference.py", args(faces, tmp_path / "out"), capsys))
    assert code == 1 and "Traceback" not in err, err
    assert re.search(rf"^inference.py: error: cannot write the eDifFIQA\(T\) weights into torch's cache folder "
                     rf"'{re.escape(os.path.dirname(cached('x')))}' \(No space left on device\); make room \(or raise "
                     r"the file-size limit\) and run again, or set TORCH_HOME to another folder$", err, re.M), err
    assert [f for f in cache_listing() if not f.endswith(".lock")] == []


def test_the_progress_bar_counts_megabytes_as_the_messages_do(scripted, capsys) -> None:
    plan, _, _ = scripted
    plan[:] = [send(bytes(2_000_000))]
    assert bounded(lambda: fetch("https://example.org/blob.bin", "blob.bin", "test file")) == cached("blob.bin")
    bar = capsys.readouterr().err
    assert "2.00M/2.00M" in bar, bar  # 10^6 bytes, not 2^20 (which would read 1.91M)
