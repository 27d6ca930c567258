"""evaluate.py --benchmark: the paper's evaluation in one run, against the four-script path (images unpacked to files,
extract_embeddings.py, inference.py, a pairs file, evaluate.py), its cache (a rerun computes nothing, a killed run
resumes) and its one-line errors."""
from __future__ import annotations

import csv
import json
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_user_error, manifest_state_dict, run_script
from PIL import Image

import evaluate
import extract_embeddings
import inference
from dataset.synthetic import verification_bin
from dataset.verification import read_benchmark
from engine.evaluation import benchmarks as workflow
from engine.evaluation import cache
from utils.io import sha256_of

PAIRS = 30
FMR = "0.1"  # 15 non-mated comparisons measure it


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory, checkpoint_dir):
    """``(root, eDifFIQA(T) weights)``: in ``root`` a synthetic ``syn.bin`` (30 comparisons), a MobileFaceNet FR
    checkpoint (keys under ``module.``), another method's scores keyed ``syn/<index>`` (``other.pkl``) and, for the
    four-script path, the images unpacked to PNG files with those scores keyed by file and a pairs file."""
    root = tmp_path_factory.mktemp("bench")
    issame = verification_bin(str(root / "syn.bin"), PAIRS, seed=3)
    backbone = {"module." + k[len("base_model."):]: v for k, v in manifest_state_dict("ediffiqaT", seed=5).items()
                if k.startswith("base_model.")}
    torch.save(backbone, str(root / "fr.pth"))
    data = read_benchmark("syn", str(root / "syn.bin"))
    rng = np.random.default_rng(0)
    other = {key: float(rng.uniform()) for key in data.keys}
    (root / "other.pkl").write_bytes(pickle.dumps(other))
    # The four-script path: PNG files named so that their order is the images' order, as the batches go.
    images = root / "images"
    images.mkdir()
    names = [f"{i:05d}.png" for i in range(len(data.keys))]
    for i, name in enumerate(names):
        Image.fromarray(data.images[i]).save(images / name)
    (root / "other-files.pkl").write_bytes(pickle.dumps({names[i]: other[k] for i, k in enumerate(data.keys)}))
    (root / "partial.pkl").write_bytes(pickle.dumps({k: other[k] for k in data.keys[:-3]}))
    # enough comparisons for the FMR, so that the counts (checked first) pass and the images are decoded
    (root / "junk.bin").write_bytes(pickle.dumps(([b"not an image"] * 40, [True] * 10 + [False] * 10)))
    (root / "other.json").write_text(json.dumps(other))
    (root / "lfw-keys.pkl").write_bytes(pickle.dumps({f"lfw/{i}": v for i, v in enumerate(other.values())}))
    with zipfile.ZipFile(root / "zip.pth", "w") as archive:  # a zip archive, but no checkpoint
        archive.writestr("readme.txt", "not a checkpoint")
    (root / "nan.pkl").write_bytes(pickle.dumps({**other, "syn/7": float("nan")}))
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "mated"])
        writer.writerows([names[2 * p], names[2 * p + 1], int(same)] for p, same in enumerate(issame))
    return root, os.path.join(checkpoint_dir, "ediffiqaT.pth")


@pytest.fixture(scope="module")
def bench(bench_files):
    """:func:`bench_files` with the four-script path's results (``four``) and the one command's (``one``)."""
    root, weights = bench_files
    images = root / "images"
    assert run_script(extract_embeddings.main, "extract_embeddings.py", [
        "--images", str(images), "--backbone", "mobilefacenet", "--weights", str(root / "fr.pth"),
        "--output", str(root / "emb.npz"), "--device", "cpu", "-q"])[0] == 0
    assert run_script(inference.main, "inference.py", [
        "--images", str(images), "--model", "ediffiqaT", "--weights", weights, "--device", "cpu", "-q",
        "--output", str(root / "scores"), "--figure-tiles", "0"])[0] == 0
    assert run_script(evaluate.main, "evaluate.py", [
        "--pairs", str(root / "pairs.csv"), "--embeddings", f"MFN={root / 'emb.npz'}",
        "--scores", f"T={root / 'scores' / 'quality-scores.pkl'}", "--scores", f"other={root / 'other-files.pkl'}",
        "--fmr", FMR, "--output", str(root / "four")])[0] == 0
    code, err = run_script(evaluate.main, "evaluate.py", one_command(root, weights, root / "one"))
    assert code == 0, err
    return root, weights


def copy_of_one(root: Path, tmp_path: Path) -> Path:
    """A copy of the one command's finished output folder, cache included."""
    shutil.copytree(root / "one", tmp_path / "out")
    return tmp_path / "out"


def one_command(root: Path, weights: str, out: Path, *more: str):
    return ["--benchmark", f"syn={root / 'syn.bin'}", "--fr", f"MFN=mobilefacenet:{root / 'fr.pth'}",
            "--method", f"T=ediffiqaT:{weights}", "--method", f"other={root / 'other.pkl'}", "--fmr", FMR,
            "--device", "cpu", "-q", "--output", str(out), *more]


def test_one_command_equals_the_four_script_path(bench) -> None:
    """Every FNMR(0) and pAUC of the one command equals the four-script path's to the last digit; the table, its
    Markdown and the grid figure are written."""
    root, _ = bench
    out = root / "one"
    four = {r["method"]: r for r in json.loads((root / "four" / "edc.json").read_text())}
    ours = json.loads((out / "edc.json").read_text())
    assert [(r["benchmark"], r["fr_model"], r["method"]) for r in ours["results"]] == [
        ("syn", "MFN", "T"), ("syn", "MFN", "other")]
    assert 0 < ours["results"][0]["fnmr0"] < 1 and 0 < ours["results"][0]["pauc@0.3"]  # the curve has a shape
    for row in ours["results"]:
        reference = four[row["method"]]
        for key in ("threshold", "mated", "non_mated", "fnmr0", "pauc@0.2", "pauc@0.3", "pauc@0.2_norm"):
            assert row[key] == reference[key], (row["method"], key)
    assert ours["table"][0] == {"fr_model": "MFN", "metric": "pauc@0.2", "method": "T",
                                "syn": four["T"]["pauc@0.2"], "mean": four["T"]["pauc@0.2"]}
    with open(out / "edc.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["fr_model", "metric", "method", "syn", "mean"]
    text = (out / "edc.md").read_text()
    assert "| method | syn | mean |" in text and "## MFN: pAUC at discard 0.3" in text
    assert (out / "edc_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "edc_grid.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name[:-len("-0123456789ab.npz")] for p in (out / "cache").iterdir()) == [
        "embeddings-syn-mobilefacenet", "qualities-syn-ediffiqaT"]


def _no_models(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the cache holds its values")

    monkeypatch.setattr(workflow, "load_fr_backbone", refuse)
    monkeypatch.setattr(workflow.QualityScorer, "from_pretrained", refuse)


def test_a_rerun_and_an_added_method_reuse_the_cache(bench, tmp_path, capsys, monkeypatch) -> None:
    root, weights = bench
    out = copy_of_one(root, tmp_path)
    argv = one_command(root, weights, out)
    first = (out / "edc.json").read_bytes()
    _no_models(monkeypatch)
    code, err = run_script(evaluate.main, "evaluate.py", argv, capsys)
    assert code == 0, err
    assert (out / "edc.json").read_bytes() == first
    keys = read_benchmark("syn", str(root / "syn.bin")).keys
    (tmp_path / "more.pkl").write_bytes(pickle.dumps({k: float(i) for i, k in enumerate(keys)}))
    code, err = run_script(evaluate.main, "evaluate.py", argv + ["--method", f"more={tmp_path / 'more.pkl'}"], capsys)
    assert code == 0, err
    methods = [r["method"] for r in json.loads((out / "edc.json").read_text())["results"]]
    assert methods == ["T", "other", "more"]


def test_scores_keyed_by_the_unpacked_files_equal_scores_keyed_by_index(bench, tmp_path, capsys,
                                                                         monkeypatch) -> None:
    """The four-script path's score file (keyed by the unpacked files, ``00017.png``) and CR-FIQA's (lines
    ``quality_data/syn/images/00017.jpg score``) name the benchmark's images ``syn/<index>`` by the key rule: their
    results equal those of the same scores keyed by index."""
    root, weights = bench
    out = copy_of_one(root, tmp_path)
    _no_models(monkeypatch)
    other = pickle.loads((root / "other.pkl").read_bytes())
    lines = "".join(f"quality_data/syn/images/{int(k.split('/')[1]):05d}.jpg {v!r}\n" for k, v in other.items())
    (tmp_path / "crfiqa.txt").write_text(lines)  # CR-FIQA's extract_bin.py names and getQualityScore.py lines
    argv = one_command(root, weights, out, "--method", f"files={root / 'other-files.pkl'}",
                       "--method", f"crfiqa={tmp_path / 'crfiqa.txt'}")
    code, err = run_script(evaluate.main, "evaluate.py", argv, capsys)
    assert code == 0, err
    rows = {r["method"]: r for r in json.loads((out / "edc.json").read_text())["results"]}
    for label in ("files", "crfiqa"):
        assert {k: v for k, v in rows[label].items() if k != "method"} == {
            k: v for k, v in rows["other"].items() if k != "method"}


def test_a_killed_run_resumes_and_equals_an_uninterrupted_one(bench, tmp_path, capsys, monkeypatch) -> None:
    """The run is killed once the embeddings are stored; the rerun embeds nothing, scores the rest and writes what
    an uninterrupted run writes. A damaged cache file is said and computed again."""
    root, weights = bench
    whole = root / "one"
    out = tmp_path / "out"
    store = cache.store

    def store_then_die(path, record, values):
        store(path, record, values)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(cache, "store", store_then_die)
        assert run_script(evaluate.main, "evaluate.py", one_command(root, weights, out), capsys)[0] == 130
    assert [p.name.split("-")[0] for p in (out / "cache").iterdir()] == ["embeddings"]
    assert not (out / "edc.json").exists()
    with monkeypatch.context() as patch:
        patch.setattr(workflow, "load_fr_backbone", lambda *a, **k: pytest.fail("embedded again"))
        code, err = run_script(evaluate.main, "evaluate.py", one_command(root, weights, out), capsys)
    assert code == 0, err
    for name in ("edc.json", "edc.csv", "edc.md"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    damaged = next((out / "cache").glob("qualities-*"))
    damaged.write_bytes(damaged.read_bytes()[:100])
    code, err = run_script(evaluate.main, "evaluate.py", one_command(root, weights, out, "--set", "verbose=1"),
                           capsys)
    assert code == 0 and f"cache file '{damaged}' is not used: unreadable" in err, err
    assert (out / "edc.json").read_bytes() == (whole / "edc.json").read_bytes()


def test_a_cache_file_of_another_computation_is_not_used(bench, tmp_path, capsys) -> None:
    root, weights = bench
    out = copy_of_one(root, tmp_path)
    first = (out / "edc.json").read_bytes()
    path = next((out / "cache").glob("embeddings-*"))
    with np.load(path) as npz:
        record = json.loads(str(npz["record"][()]))["record"]
        values = npz["values"]
    cache.store(str(path), {**record, "batch_size": 3}, values * 2)
    code, err = run_script(evaluate.main, "evaluate.py", one_command(root, weights, out), capsys)
    assert code == 0 and "holds another computation (differs in: batch_size)" in err, err
    assert (out / "edc.json").read_bytes() == first


def test_a_changed_bin_file_of_the_same_name_is_computed_again(bench, tmp_path, capsys) -> None:
    """The cache's record holds the .bin file's size and SHA-256: another file under the same name and path is never
    given the cached embeddings; they are computed again from it, and stored with its digest."""
    root, weights = bench
    out = copy_of_one(root, tmp_path)
    (tmp_path / "changed").mkdir()
    changed = tmp_path / "changed" / "syn.bin"
    verification_bin(str(changed), PAIRS, seed=4)
    argv = ["--benchmark", f"syn={changed}", "--fr", f"MFN=mobilefacenet:{root / 'fr.pth'}", "--method",
            f"other={root / 'other.pkl'}", "--fmr", FMR, "--device", "cpu", "--output", str(out)]
    code, err = run_script(evaluate.main, "evaluate.py", argv, capsys)
    assert code == 0 and "holds another computation (differs in: source)" in err, err
    path = next((out / "cache").glob("embeddings-*"))
    with np.load(path) as npz:
        source = json.loads(str(npz["record"][()]))["record"]["source"]
    assert source == {"file": "syn.bin", "size": changed.stat().st_size, "sha256": sha256_of(str(changed))}
    assert source["sha256"] != sha256_of(str(root / "syn.bin"))


@pytest.mark.parametrize("change,pattern", [
    (["--benchmark", "syn"], r"--benchmark takes NAME=PATH"),
    (["--benchmark", "a b={bin}"], r"benchmark name 'a b'"),
    (["--benchmark", "x={root}/none.bin"], r"'.*none.bin' not found"),
    (["--fr", "R18"], r"--fr takes NAME=CHECKPOINT"),
    (["--fr", "R=iresnet18:"], r"--fr 'R=iresnet18:' names no checkpoint"),
    (["--fr", "R={root}/none.pth"], r"checkpoint '.*none.pth' not found"),
    (["--fr", "R=curricular:{root}/fr.pth"], r"--fr 'R=curricular:.*fr.pth': unknown backbone 'curricular'; choose "
                                             r"one of: .*iresnet100.*mobilefacenet \(or leave it out"),
    (["--method", "nosuch"], r"--method takes a variant \(.*ediffiqaT.*\)"),
    (["--method", "L=ediffiqaT:"], r"names no weights after 'ediffiqaT:'"),
    (["--embeddings", "E={root}/emb.npz"], r"--fr .* and --embeddings .* belong to different runs"),
    (["--benchmark", "SYN={bin}"], r"benchmarks 'syn', 'SYN' differ only in case"),
    (["--benchmark", "two={bin}"], r"quality file '.*other.pkl' keys the images of benchmark 'syn' \('syn/0'\), "
                                   r"not of 'two'"),
    (["--output", "{root}/other.pkl"], r"output folder '.*other.pkl' \(output / --output\) is a file"),
    (["--method", "N={root}/nan.pkl"], r"quality file '.*nan.pkl': 1 of 60 scores are NaN or infinite \(e.g. "
                                       r"'syn/7'\)"),
    (["--method", "J={root}/other.json"], r"cannot read '.*other.json' as a pickle file .*; a quality file is a "
                                          r"pickled dict .* or a CSV .*, or lines 'path score' \(.txt"),
    (["--method", "part={root}/partial.pkl"], r"benchmark 'syn': 2 pairs lack a quality; 3 of 60 images of benchmark "
                                              r"'syn' are not in quality file '.*partial.pkl', as written or one as "
                                              r"the other below a folder \(e.g. 'syn/57' in the first, 'syn/0' in "
                                              r"the second\)"),
    (["--method", "X=ediffiqaT:{root}/none.pth"], r"--method 'X': weights file '.*none.pth' not found; give the "
                                                  r"eDifFIQA\(T\) checkpoint with --method ediffiqaT=WEIGHTS"),
    (["--method", "ediffiqaT={root}"], r"--method 'eDifFIQA\(T\)': weights file '.*' is a folder"),
    (["--method", "ediffiqaL={weights}"], r"weights file '.*' holds eDifFIQA\(T\) \('ediffiqaT'\), not eDifFIQA\(L\); "
                                          r"use --method ediffiqaT=.*ediffiqaT.pth or"),
    (["--method", "X=ediffiqaX:{weights}"], r"--method 'X=ediffiqaX:.*': unknown variant 'ediffiqaX'; choose one of: "
                                            r".*ediffiqaT"),
    (["--method", "ediffiqaX={weights}"], r"unknown variant 'ediffiqaX' for the weights '.*'; choose one of: "),
    (["--fr", "Z={root}/zip.pth"], r"cannot read weights file '.*zip.pth' as a PyTorch checkpoint \(it is a zip "
                                   r"archive that is not a PyTorch checkpoint: it holds readme.txt, not "
                                   r"<name>/data.pkl\)$"),
    (["--name", "../escape"], r"command line \(--name\): 'name' must be a plain file name stem .*; give the folder "
                              r"with --output"),
    (["--name", "x\ny"], r"'name' must be a plain file name stem \(no folder, not empty, no control character\)"),
    (["--method", "a\nb={root}/other.pkl"], r"method label 'a\\nb' holds a control character \(U\+000A\)"),
    (["--fr", "M\tx={root}/fr.pth"], r"FR model label 'M\\tx' holds a control character \(U\+0009\)"),
    (["--method", "L={root}/lfw-keys.pkl"], r"quality file '.*lfw-keys.pkl' keys the images of set 'lfw' "
                                            r"\('lfw/0', ...\), not of benchmark 'syn'; give the scores of 'syn' "
                                            r"\(keys syn/0, ...\), or name the benchmark 'lfw'"),
])
def test_bad_inputs_are_one_line_each(change, pattern, bench_files, tmp_path, capsys) -> None:
    root, weights = bench_files
    argv = one_command(root, weights, tmp_path / "out")
    argv += [c.format(root=root, bin=root / "syn.bin", weights=weights) for c in change]
    code, err = run_script(evaluate.main, "evaluate.py", argv, capsys)
    assert_user_error(code, err, "evaluate.py", pattern)


def test_one_method_from_a_scores_file_per_benchmark(bench_files, tmp_path, capsys) -> None:
    """A method given as one scores file per benchmark (the same label again, as CR-FIQA writes a file per .bin) is
    one row: its pAUCs equal those of one file of both sets; each file serves the benchmark its keys name. A file
    that names no benchmark, a file given twice, two files that name one benchmark and a variant's label given
    again are each one line."""
    root, _ = bench_files
    verification_bin(str(tmp_path / "two.bin"), PAIRS, seed=4)
    rng = np.random.default_rng(1)
    sets = {name: [f"{name}/{i}" for i in range(2 * PAIRS)] for name in ("syn", "two")}
    scores = {key: float(rng.uniform()) for keys in sets.values() for key in keys}
    (tmp_path / "both.pkl").write_bytes(pickle.dumps(scores))
    for name, keys in sets.items():  # keyed as inference.py keys the unpacked images of each set
        (tmp_path / f"{name}.pkl").write_bytes(pickle.dumps({f"unpacked/{k}.jpg": scores[k] for k in keys}))
        (tmp_path / f"u-{name}.pkl").write_bytes(pickle.dumps({f"u{name}/{i}.jpg": scores[k]
                                                               for i, k in enumerate(keys)}))
    base = ["--benchmark", f"syn={root / 'syn.bin'}", "--benchmark", f"two={tmp_path / 'two.bin'}",
            "--fr", f"MFN={root / 'fr.pth'}", "--fmr", FMR, "--device", "cpu", "-q"]
    per = [f"P={tmp_path / 'two.pkl'}", f"P={tmp_path / 'syn.pkl'}"]
    runs = {"one": ["--method", f"P={tmp_path / 'both.pkl'}"], "per": [a for m in per for a in ("--method", m)]}
    for name, methods in runs.items():
        code, err = run_script(evaluate.main, "evaluate.py", base + methods + ["--output", str(tmp_path / name)])
        assert code == 0, err
    one, per_set = (json.loads((tmp_path / n / "edc.json").read_text()) for n in runs)
    assert per_set["table"] == one["table"] and [r["method"] for r in per_set["table"]] == ["P"] * 2
    assert per_set["results"] == one["results"]
    # The JSON says what was evaluated: the FR model's backbone (found from its shapes here) and the methods' files.
    assert per_set["fr_models"] == [{"label": "MFN", "checkpoint": str(root / "fr.pth"), "backbone": "mobilefacenet",
                                     "sha256": sha256_of(str(root / "fr.pth"))}]
    assert per_set["methods"] == [{"label": "P", "scores": [str(tmp_path / "two.pkl"), str(tmp_path / "syn.pkl")]}]
    for extra, pattern in [
        ([f"P={root / 'other.pkl'}"], r"(quality file '.*other.pkl' of method 'P' names images of none of the "
                                      r"benchmarks \(syn, two\)|both name images of benchmark 'syn')"),
        ([f"P={tmp_path / 'syn.pkl'}"], r"method 'P' names the scores file '.*syn.pkl' twice; give it once"),
        ([f"P={tmp_path / 'u-syn.pkl'}"], r"quality file '.*u-syn.pkl' of method 'P' names the images of "
                                          r"benchmark\(s\) syn, two only by index or path, and another of its files "
                                          r"names them below a folder named as the benchmark"),
        (["P=ediffiqaT"], r"method 'P' is given twice; labels must differ \(with --benchmark, a label given again "
                          r"with another scores file adds that file"),
    ]:
        code, err = run_script(evaluate.main, "evaluate.py", base + runs["per"] + ["--method", *extra, "--output",
                                                                                    str(tmp_path / "bad")], capsys)
        assert_user_error(code, err, "evaluate.py", pattern)
    # Two files keyed by index alone name one benchmark's images alike; a file of a set not in the run, keyed below
    # its set's folder, gives way to the file keyed below the benchmark's.
    code, err = run_script(evaluate.main, "evaluate.py", base + ["--method", f"P={tmp_path / 'u-syn.pkl'}",
                                                                 "--method", f"P={tmp_path / 'u-two.pkl'}",
                                                                 "--output", str(tmp_path / "bad")], capsys)
    assert_user_error(code, err, "evaluate.py", r"quality files '.*u-syn.pkl' and '.*u-two.pkl' of method 'P' both "
                                                r"name images of benchmark 'syn': with one file per benchmark, key "
                                                r"each file's images below a folder named as its benchmark")
    code, err = run_script(evaluate.main, "evaluate.py", base[:2] + base[4:] + runs["per"]
                           + ["--output", str(tmp_path / "bad")], capsys)
    assert_user_error(code, err, "evaluate.py", r"quality file '.*two.pkl' of method 'P' names the images of "
                                                r"benchmark\(s\) syn only by index or path")


def test_a_damaged_bin_image_is_one_line(bench_files, tmp_path, capsys, monkeypatch) -> None:
    """The images of a .bin file that cannot be decoded are found before any model runs, all at once: one line
    naming the benchmark, how many, the first few and why, no per-image warnings."""
    root, weights = bench_files
    _models_raise(monkeypatch)
    argv = ["--benchmark", f"junk={root / 'junk.bin'}", "--fr", f"MFN=mobilefacenet:{root / 'fr.pth'}",
            "--method", f"T=ediffiqaT:{weights}", "--fmr", FMR, "--device", "cpu", "--output", str(tmp_path / "out"),
            "--batch-size", "2"]
    code, err = run_script(evaluate.main, "evaluate.py", argv, capsys)
    assert_user_error(code, err, "evaluate.py", r"benchmark 'junk' \('.*junk.bin'\): 40 images cannot be decoded "
                                                 r"\(junk/0: ValueError: its 12 bytes are not an image file .*; "
                                                 r"junk/1: .*; junk/2: .*; \.\.\.\); give an undamaged copy")
    assert "skipped" not in err and "WARNING" not in err, err


def _models_raise(monkeypatch) -> None:
    """Every FR forward and quality model raises: a check that needs only the pairs must come first."""
    def forward(*args, **kwargs):
        def run(x):
            raise AssertionError("a model ran before a check that needs only the pairs")
        return run

    monkeypatch.setattr(workflow, "embedding_forward", forward)
    monkeypatch.setattr(workflow.QualityScorer, "from_pretrained", forward)


@pytest.mark.parametrize("change,pattern", [
    (["--fmr", "0.01"], r"benchmark 'syn': FMR 0.01 cannot be measured with 15 non-mated comparisons: it needs at "
                        r"least 100"),
    (["--method", "half={tmp}/half.pkl", "--on-missing", "drop"],
     r"benchmark 'syn': need mated and non-mated comparisons, have 0 mated and 0 non-mated after on_missing: drop "
     r"left out 30 comparisons"),
    (["--method", "part={root}/partial.pkl"], r"benchmark 'syn': 2 pairs lack a quality"),
])
def test_input_errors_that_need_only_the_pairs_come_before_any_model_runs(change, pattern, bench_files, tmp_path,
                                                                           capsys, monkeypatch) -> None:
    root, weights = bench_files
    keys = read_benchmark("syn", str(root / "syn.bin")).keys
    (tmp_path / "half.pkl").write_bytes(pickle.dumps({k: 0.5 for k in keys[0::2]}))  # one image of each pair
    _models_raise(monkeypatch)
    argv = one_command(root, weights, tmp_path / "out") + [c.format(root=root, tmp=tmp_path) for c in change]
    code, err = run_script(evaluate.main, "evaluate.py", argv, capsys)
    assert_user_error(code, err, "evaluate.py", pattern)
    assert not (tmp_path / "out" / "cache").exists() or not list((tmp_path / "out" / "cache").iterdir())


@pytest.mark.parametrize("form", ["syn/{i}", "unpacked/syn/{i:05d}.png"])
def test_a_score_file_numbered_from_1_is_refused(form, bench_files, tmp_path, capsys) -> None:
    """Keys syn/1..syn/60 (or files 00001.png..00060.png) for the 60 images syn/0..syn/59: with --on-missing drop
    they would be matched one image off; one line naming the file."""
    root, weights = bench_files
    keys = read_benchmark("syn", str(root / "syn.bin")).keys
    other = pickle.loads((root / "other.pkl").read_bytes())
    shifted = {form.format(i=i + 1): other[k] for i, k in enumerate(keys)}
    (tmp_path / "from1.pkl").write_bytes(pickle.dumps(shifted))
    argv = one_command(root, weights, tmp_path / "out", "--method", f"one={tmp_path / 'from1.pkl'}",
                       "--on-missing", "drop")
    code, err = run_script(evaluate.main, "evaluate.py", argv, capsys)
    last = form.format(i=len(keys))
    assert_user_error(code, err, "evaluate.py", rf"quality file '.*from1.pkl' numbers the images of benchmark 'syn' "
                                                rf"from 1 \('{last}' is one past its last image, syn/59, and none is "
                                                r"numbered 0\).*number them from 0")


def test_the_files_of_a_rerun_are_one_set_and_the_summary_names_them(bench, tmp_path, capsys, monkeypatch) -> None:
    """The summary names each file written; a rerun whose grid cannot be drawn removes the earlier run's grid (the
    folder never shows a figure of another run beside the table); the cache stays."""
    root, weights = bench
    out = copy_of_one(root, tmp_path)
    _no_models(monkeypatch)
    cached = sorted((out / "cache").iterdir())
    code, err = run_script(evaluate.main, "evaluate.py", one_command(root, weights, out), capsys)
    assert code == 0, err
    summary = err.strip().splitlines()[-1]
    assert summary == f"wrote {out / 'edc.json'}, edc.csv, edc.md, edc_grid.png, edc_grid.pdf, edc.files", summary

    def no_grid(*args, **kwargs):
        raise MemoryError("no room for the figure")

    monkeypatch.setattr(workflow, "edc_grid", no_grid)
    code, err = run_script(evaluate.main, "evaluate.py", one_command(root, weights, out), capsys)
    assert code == 0 and "could not draw edc_grid (MemoryError" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["cache", "edc.csv", "edc.files", "edc.json", "edc.md"]
    assert sorted((out / "cache").iterdir()) == cached
    assert err.strip().splitlines()[-1] == f"wrote {out / 'edc.json'}, edc.csv, edc.md, edc.files"


@pytest.mark.parametrize("entry", ["cache", "cache/embeddings-syn-mobilefacenet-{sha}.npz", "link"])
def test_a_cache_entry_that_cannot_be_replaced_is_one_line_before_any_work(entry, bench_files, tmp_path, capsys,
                                                                          monkeypatch) -> None:
    """A file or a link where the cache folder goes, or a folder where a cache file goes, is one line naming it and
    what to do, before any model runs (not after the work, which could then not be stored)."""
    root, weights = bench_files
    out = tmp_path / "out"
    path = out / entry.format(sha=sha256_of(str(root / "fr.pth"))[:12])
    path.parent.mkdir(parents=True)
    if entry == "cache":
        path.write_text("someone's notes")
        pattern = rf"'{path}' is a file where the cache folder of output '{out}' goes; move it out of the way"
    elif entry == "link":  # a planted link: the cache would be written wherever it points
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        path = out / "cache"
        path.symlink_to(elsewhere, target_is_directory=True)
        pattern = rf"'{path}' is a link where the cache folder of output '{out}' goes; remove the link"
    else:
        path.mkdir()
        pattern = rf"cache entry '{path}' is a folder where a cache file goes; remove it"
    _models_raise(monkeypatch)
    code, err = run_script(evaluate.main, "evaluate.py", one_command(root, weights, out), capsys)
    assert_user_error(code, err, "evaluate.py", pattern)


def test_a_label_with_a_bar_keeps_the_markdown_columns(bench, tmp_path, capsys, monkeypatch) -> None:
    root, weights = bench
    out = copy_of_one(root, tmp_path)
    _no_models(monkeypatch)
    argv = one_command(root, weights, out, "--method", f"a|b={root / 'other.pkl'}")
    code, err = run_script(evaluate.main, "evaluate.py", argv, capsys)
    assert code == 0, err
    rows = [line for line in (out / "edc.md").read_text().splitlines() if line.startswith("| a")]
    bars = [len(re.findall(r"(?<!\\)\|", r)) for r in rows]  # unescaped: the borders of the 3 columns
    assert len(rows) == 2 and all(r.startswith("| a\\|b | ") for r in rows) and bars == [4, 4], rows


def test_collapsed_similarities_warn_and_a_users_grid_is_refused(bench, tmp_path, capsys, monkeypatch) -> None:
    """--benchmark: similarities all within 1e-8 of 1 (collapsed embeddings; at FMR 0.1 the threshold meets a
    non-mated similarity) get the warning; the user's own edc_grid.png in a fresh folder is one line before any
    model runs."""
    root, weights = bench
    out = copy_of_one(root, tmp_path)
    _no_models(monkeypatch)
    rng = np.random.default_rng(2)
    monkeypatch.setattr(workflow.edc, "cosine_similarities",
                        lambda matrix, a, b: 1.0 - 1e-8 * rng.uniform(size=len(a)))
    code, err = run_script(evaluate.main, "evaluate.py", one_command(root, weights, out), capsys)
    assert code == 0, err
    (warning,) = [line for line in err.splitlines() if "does not separate" in line]
    assert "'MFN' on 'syn': " in warning and "similarities within" in warning and "collapsed" in warning, warning
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "edc_grid.png").write_bytes(b"mine")
    _models_raise(monkeypatch)
    code, err = run_script(evaluate.main, "evaluate.py", one_command(root, weights, fresh), capsys)
    assert_user_error(code, err, "evaluate.py", r"'.*edc_grid\.png' exists and no earlier run of 'edc' wrote it; "
                                                r"move it away, or give another --output or --name")
    assert (fresh / "edc_grid.png").read_bytes() == b"mine"


def test_unpack_bin_writes_each_images_bytes_as_index_files(bench_files, tmp_path, capsys) -> None:
    """scripts.unpack_bin: <index>.jpg per image, its bytes unchanged (so inference.py's keys of them name the
    images of the .bin file); a second run into the same folder, and a damaged .bin, are one line each."""
    from scripts import unpack_bin

    root, _ = bench_files
    out = tmp_path / "unpacked"
    code, err = run_script(unpack_bin.main, unpack_bin.PROG, [str(root / "syn.bin"), str(out)], capsys)
    assert code == 0, err
    encoded, issame = pickle.loads((root / "syn.bin").read_bytes())
    assert sorted(os.listdir(out), key=lambda n: int(n.split(".")[0])) == [f"{i}.jpg" for i in range(2 * PAIRS)]
    assert all((out / f"{i}.jpg").read_bytes() == bytes(e) for i, e in enumerate(encoded))
    assert f"wrote {2 * PAIRS} images ({PAIRS} comparisons) into {out}" in err
    code, err = run_script(unpack_bin.main, unpack_bin.PROG, [str(root / "syn.bin"), str(out)], capsys)
    assert_user_error(code, err, unpack_bin.PROG, r"'.*0\.jpg' already exists; remove it or choose another output")
    code, err = run_script(unpack_bin.main, unpack_bin.PROG, [str(root / "junk.bin"), str(tmp_path / "j")], capsys)
    assert_user_error(code, err, unpack_bin.PROG, r"image 0 of '.*junk.bin' is not an image file")
    assert not (tmp_path / "j").exists()
