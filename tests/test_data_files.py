"""The readers of the files a user gives (labels, scores, pairs, embeddings, prepared files, pickles): what they
read back exactly, and every odd value (beyond the float range, not a number, NaN, not UTF-8, not text, malformed)
one line naming the file and the entry, never a traceback or a silent cast."""
from __future__ import annotations

import csv
import os
import pickle
import re

import numpy as np
import pytest
import torch
from helpers import assert_user_error, run_script

import evaluate
import prepare_data
import train
from dataset.formats import read_scores_csv
from utils.errors import DataError
from utils.io import safe_pickle_load, write_csv, write_pickle


def run(module, prog, argv, capsys):
    return run_script(module.main, prog, argv, capsys)


# ------------------------------------------------------------------------------------------------- scores and labels
def test_csv_round_trip_with_awkward_paths(tmp_path) -> None:
    path = str(tmp_path / "q.csv")
    scores = {"a,b/c.jpg": 0.125, 'd "quoted".png': -1.5e-7}
    write_csv(path, ("path", "quality"), ((k, repr(v)) for k, v in scores.items()))
    assert read_scores_csv(path) == scores


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


def test_score_lines_as_other_methods_write_them(tmp_path) -> None:
    """``path score`` lines (CR-FIQA's getQualityScore.py): the score after the last space or tab, so paths keep
    their spaces; a byte-order mark, CRLF and blank lines are read; a bad line or a path given twice is one error."""
    from dataset.formats import read_scores_text

    text = "quality_data/lfw/images/00000.jpg 0.53125\r\nmy faces/a b.png\t-1.5e-07\n\n  c.jpg   2  \n"
    (tmp_path / "q.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_scores_text(str(tmp_path / "q.txt")) == {"quality_data/lfw/images/00000.jpg": 0.53125,
                                                         "my faces/a b.png": -1.5e-07, "c.jpg": 2.0}
    for body, pattern in [("a.jpg 0.5\nb.jpg\n", r"q.txt' line 2: expected 'path score' .*, got 'b.jpg'"),
                          ("a.jpg 0.5\nb.jpg 1_0\n", r"line 2: expected 'path score'"),
                          ("a.jpg 0.5\nb.jpg 1\na.jpg 2\n", r"'a.jpg' is given twice, on lines 1 and 3; keep one"),
                          ("a.jpg\x000.5\n", r"holds NUL bytes")]:
        (tmp_path / "q.txt").write_text(body)
        with pytest.raises(DataError, match=pattern):
            read_scores_text(str(tmp_path / "q.txt"))


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


# ------------------------------------------------------------------------------------------------- pairs
def test_pair_names_keep_every_character_but_line_ends(tmp_path) -> None:
    """File names holding characters that str.splitlines() takes for line ends (\\x0b, \\x0c, \\x1c-\\x1e, \\x85,
    \\u2028, \\u2029; valid on Linux), also first or last, are read whole from a pairs CSV (with a byte-order mark);
    only \\n, \\r\\n and \\r end lines, and a quoted name may span them."""
    from engine.evaluation.data import read_pairs

    odd = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
    names = [f"id{i}/a{c}b.png" for i, c in enumerate(odd)] + ["\x85x.png", "y.png\u2028", "q/\"two\nlines\".png"]
    rows = [(n, names[(i + 1) % len(names)], i % 2) for i, n in enumerate(names)]
    with open(tmp_path / "pairs.csv", "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "mated", "similarity"])
        writer.writerows((a, b, m, 0.5) for a, b, m in rows)
    pairs = read_pairs(str(tmp_path / "pairs.csv"))
    assert pairs.a == [a for a, _, _ in rows] and pairs.b == [b for _, b, _ in rows]
    assert pairs.mated.tolist() == [bool(m) for _, _, m in rows] and pairs.similarity.tolist() == [0.5] * len(rows)


def test_lfw_pairs_read_for_files_as_for_benchmarks(tmp_path) -> None:
    """An LFW pairs.txt is parsed by the benchmarks' parser (dataset.verification.parse_lfw_pairs): the counts line
    skipped, mated and non-mated lines, names made as LFW's files are named."""
    from dataset.verification import read_lfw_pairs
    from engine.evaluation.data import read_pairs

    (tmp_path / "pairs.txt").write_text("1 2\nAnn 1 12\n\nAnn 3 Bob_Li 1\r\nBob_Li 2 4\nBob_Li 2 Ann 1\n")
    pairs = read_pairs(str(tmp_path / "pairs.txt"))
    assert pairs.a == ["Ann/Ann_0001.jpg", "Ann/Ann_0003.jpg", "Bob_Li/Bob_Li_0002.jpg", "Bob_Li/Bob_Li_0002.jpg"]
    assert pairs.b == ["Ann/Ann_0012.jpg", "Bob_Li/Bob_Li_0001.jpg", "Bob_Li/Bob_Li_0004.jpg", "Ann/Ann_0001.jpg"]
    assert pairs.mated.tolist() == [True, False, True, False]
    assert [(f"{a}/{a}_{i:04d}.jpg", f"{b}/{b}_{j:04d}.jpg", m) for a, i, b, j, m in
            read_lfw_pairs(str(tmp_path / "pairs.txt"))] == list(zip(pairs.a, pairs.b, pairs.mated.tolist()))


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


# ---------------------------------------------------------------------------------------- embeddings and prepared files
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


@pytest.mark.parametrize("what", ["quality", "centres"])
def test_nan_in_the_prepared_files_is_refused_at_load(what, official_set, tmp_path, capsys) -> None:
    import shutil

    from helpers import official_schema_config

    _, images, shared = official_set
    data = tmp_path / "training_data"
    shutil.copytree(shared, data)  # a copy to damage
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

    from dataset.formats import read_embeddings, read_label_values, read_prepared
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
        "labels dict None": lambda: read_label_values(pkl("l.pkl", {"a": np.int64(1), "b": None})),
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


# ------------------------------------------------------------------------------------------------- pickles
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_safe_pickle_load(tmp_path) -> None:
    good = {"id1/img.jpg": np.arange(4, dtype=np.float32), "id2/img.jpg": np.float32(0.5), "n": [("a", 1.0, 2)]}
    write_pickle(str(tmp_path / "good.pkl"), good)
    loaded = safe_pickle_load(str(tmp_path / "good.pkl"))
    assert np.array_equal(loaded["id1/img.jpg"], good["id1/img.jpg"]) and loaded["n"] == good["n"]
    write_pickle(str(tmp_path / "evil.pkl"), {"x": _Evil()})
    with pytest.raises(DataError, match="refusing to unpickle 'posix.system'"):
        safe_pickle_load(str(tmp_path / "evil.pkl"))
    # A torch tensor pickled with plain pickle (the official average_embedding_batch format) loads only when allowed.
    write_pickle(str(tmp_path / "tensor.pkl"), torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert torch.equal(safe_pickle_load(str(tmp_path / "tensor.pkl"), allow_torch=True),
                       torch.arange(6, dtype=torch.float32).reshape(2, 3))
    with pytest.raises(DataError, match="refusing"):
        safe_pickle_load(str(tmp_path / "tensor.pkl"))
    (tmp_path / "trunc.pkl").write_bytes(pickle.dumps(good)[:20])
    with pytest.raises(DataError, match="cannot read"):
        safe_pickle_load(str(tmp_path / "trunc.pkl"))


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
