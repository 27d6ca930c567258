"""The one key rule (dataset/keys.py) and the scripts it joins: inference.py scores and extract_embeddings.py
embeddings of one folder feed prepare_data.py, whose items train."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
import yaml
from helpers import assert_user_error, manifest_state_dict, run_script

import extract_embeddings
import inference
import prepare_data
import train
from dataset.keys import match_keys, require_keys
from utils.cli import run_cli
from utils.errors import DataError

A, B = "labels file 'q.csv'", "embeddings file 'e.pkl'"


# ---------------------------------------------------------------- the rule

def test_keys_as_written_are_taken_as_they_are() -> None:
    keys = ["id0/a.jpg", "faces/id1/b.jpg", "/abs/c.jpg"]
    assert match_keys(keys, set(keys) | {"other.jpg"}, A, B) == keys


@pytest.mark.parametrize("wanted,available", [
    (["faces/id0/a.jpg", "faces/id1/b.jpg"], ["id0/a.jpg", "id1/b.jpg"]),            # inference.py vs extract
    (["/data/faces/id0/a.jpg", "/data/faces/id1/b.jpg"], ["id0/a.jpg", "id1/b.jpg"]),  # absolute folder
    (["id0/a.jpg", "id1/b.jpg"], ["train/id0/a.jpg", "train/id1/b.jpg"]),            # official last-three keys
    (["./id0/a.jpg", "id1//b.jpg/"], ["id0/a.jpg", "id1/b.jpg"]),                    # './', '//', trailing '/'
    (["faces\\id0\\a.jpg", "faces\\id1\\b.jpg"], ["id0/a.jpg", "id1/b.jpg"]),        # Windows separators
    (["faces/id0/a.jpg", "faces/id0/b.jpg"], ["id0/a.jpg", "id0/b.jpg"]),            # one folder each side
    (["faces/id0/a.jpg"], ["id0/a.jpg"]),                                            # one key each side
])
def test_keys_match_as_one_below_a_folder_of_the_other(wanted, available) -> None:
    assert match_keys(wanted, available, A, B) == available
    assert match_keys(available, wanted, B, A) == wanted  # the rule is symmetric


def test_a_subset_in_one_folder_keeps_its_folder() -> None:
    # A file of one identity strips nothing below the identity: it names that identity of the whole set.
    assert match_keys(["faces/id0/a.jpg"], ["id0/a.jpg", "id1/b.jpg"], A, B) == ["id0/a.jpg"]
    assert match_keys(["id0/a.jpg"], ["faces/id0/a.jpg", "faces/id1/b.jpg"], A, B) == ["faces/id0/a.jpg"]


@pytest.mark.parametrize("wanted,available", [
    (["first_run/faces/id03/a.png", "first_run/faces/id03/b.png"], ["id00/a.png", "id00/b.png"]),  # attack29 #2
    (["faces/id03/a.png"], ["id00/a.png"]),                                      # one key each side
    (["ID0/a.jpg"], ["id0/a.jpg"]),                                              # folders differ in case
    (["x/id03/a.png", "x/id03/b.png"], ["y/id00/a.png", "y/id00/b.png"]),        # both under another folder
    (["faces/a.png", "faces/b.png"], ["data/a.png", "data/b.png"]),              # flat folders of other names
    (["Alice/v0/00.png", "Alice/v1/00.png"], ["Bob/v0/00.png", "Bob/v1/00.png"]),  # person/video/frame
    (["faces/id0/a/x.png"], ["id9/a/x.png"]),                                    # one key each, nested
    (["faces/id0/a.jpg", "faces/id1/b.jpg"], ["vgg/id0/a.jpg", "vgg/id1/b.jpg"]),  # a renamed images folder
    (["train/id0/a.jpg", "train/id1/b.jpg"], ["test/id0/a.jpg", "test/id1/b.jpg"]),  # other sets, same names
])
def test_keys_in_different_folders_never_match_by_their_file_names(wanted, available) -> None:
    assert match_keys(wanted, available, A, B) == [None] * len(wanted)
    assert match_keys(available, wanted, B, A) == [None] * len(available)


def test_a_bare_file_name_names_the_one_key_that_ends_in_it() -> None:
    assert match_keys(["a.jpg", "c.jpg"], ["faces/id0/a.jpg", "faces/id1/b.jpg"], A, B) == ["faces/id0/a.jpg", None]
    assert match_keys(["faces/id0/a.jpg"], ["a.jpg", "b.jpg"], A, B) == ["a.jpg"]
    with pytest.raises(DataError, match=r"'a.jpg' names 2 different keys of embeddings file 'e.pkl' "
                                        r"\('id0/a.jpg', 'id1/a.jpg'\)"):
        match_keys(["a.jpg"], ["id0/a.jpg", "id1/a.jpg"], A, B)


def test_unmatched_keys_are_none() -> None:
    assert match_keys(["faces/id0/a.jpg", "faces/id9/z.jpg"], ["id0/a.jpg", "id1/b.jpg"], A, B) == \
        ["id0/a.jpg", None]


def test_two_keys_equal_after_stripping_are_an_error_not_a_pick() -> None:
    # Two keys of the embeddings that are one image in the normal form.
    with pytest.raises(DataError, match=r"labels file 'q.csv': 'id0/a.jpg' names 2 different keys of embeddings "
                                        r"file 'e.pkl' \('faces/id0/a.jpg', 'faces/id0//a.jpg'\)"):
        match_keys(["id0/a.jpg", "id1/b.jpg"], ["faces/id0/a.jpg", "faces/id0//a.jpg", "faces/id1/b.jpg"], A, B)
    # Two labels that name one embedding.
    with pytest.raises(DataError, match=r"'id0/a.jpg' and './id0/a.jpg' both name 'id0/a.jpg' of embeddings file"):
        match_keys(["id0/a.jpg", "./id0/a.jpg", "id1/b.jpg"], ["id0/a.jpg", "id1/b.jpg"], A, B)
    # Pairs may name one image in several spellings ...
    assert match_keys(["id0/a.jpg", "./id0/a.jpg", "faces/id1/b.jpg", "id1/b.jpg"], ["id0/a.jpg", "id1/b.jpg"], A, B,
                      one_to_one=False) == ["id0/a.jpg", "id0/a.jpg", "id1/b.jpg", "id1/b.jpg"]
    # ... but the images of two identities never name one bare key (attack-final #1: embeddings of one identity's
    # folder, keyed by bare file names, for pairs of every identity).
    with pytest.raises(DataError, match=r"'a.jpg' \(a file name without a folder\) names 2 keys of labels file "
                                        r"'q.csv' \('id0/a.jpg', 'id3/a.jpg'\)"):
        match_keys(["id0/a.jpg", "id3/a.jpg"], ["a.jpg", "b.jpg"], A, B, one_to_one=False)
    # ... not even when the file holds one of them with its folder: the bare key still ends both (attack: id01 keyed
    # with its folder, another identity's images by bare names, given for the pairs of id00 and id01).
    for one_to_one in (True, False):
        with pytest.raises(DataError, match=r"'a.jpg' \(a file name without a folder\) names 2 keys"):
            match_keys(["id0/a.jpg", "id1/a.jpg"], ["a.jpg", "id1/a.jpg"], A, B, one_to_one=one_to_one)
    # A bare key that ends one key only, or keys that name each other (one image spelled twice), still names it.
    assert match_keys(["id0/a.jpg", "id1/b.jpg"], ["a.jpg", "id1/b.jpg"], A, B) == ["a.jpg", "id1/b.jpg"]
    assert match_keys(["a.jpg", "id0/a.jpg"], ["a.jpg"], A, B, one_to_one=False) == ["a.jpg", "a.jpg"]
    # A bare key of the same bare key as written is that key, beside keys of that name in folders, whether or not
    # other keys are missing (attack: a missing image turned it into an ambiguity).
    for wanted in (["a.jpg", "x/a.jpg", "y/a.jpg", "c.jpg"], ["a.jpg", "x/a.jpg", "y/a.jpg", "./b.jpg"]):
        assert match_keys(wanted, ["a.jpg", "x/a.jpg", "y/a.jpg", "b.jpg"], A, B) == [
            "a.jpg", "x/a.jpg", "y/a.jpg", None if wanted[-1] == "c.jpg" else "b.jpg"]


def test_unmatched_error_names_both_files_counts_and_an_example_of_each() -> None:
    with pytest.raises(DataError) as info:
        require_keys(["faces/id0/a.jpg", "faces/id1/b.jpg", "faces/id2/x.jpg"], ["id0/a.jpg", "id1/c.jpg"], A, B,
                     "labelled images", "compute both from the same image folder")
    message = str(info.value)
    assert "\n" not in message
    assert message == ("2 of 3 labelled images of labels file 'q.csv' are not in embeddings file 'e.pkl', as written "
                       "or one as the other below a folder (e.g. 'faces/id1/b.jpg' in the first, 'id0/a.jpg' in the "
                       "second); compute both from the same image folder")


# ---------------------------------------------------------------- the scripts

def _prepare(labels, embeddings, out, capsys):
    code, err = run_script(prepare_data.main, "prepare_data.py", [
        "-b", "0.5", "-ll", str(labels), "-el", str(embeddings), "-sl", str(out), "--min-images", "2", "-q",
        "--no-figure"], capsys)
    assert code == 0, err
    centres = pickle.loads((out / "average_embedding_batch-ediffiqa.pkl").read_bytes())
    return centres, (out / "training_items-ediffiqa.pkl").read_bytes()


def test_labels_of_one_identity_never_join_embeddings_of_another(tmp_path, capsys) -> None:
    """attack29 #2: labels of id03 only (keyed as inference.py keys them) and embeddings of id00 only, with the same
    file names: prepare_data.py refuses in one line and writes nothing (it used to join them, exit 0)."""
    from dataset.formats import scores_csv_writer
    from utils.io import write_together

    names = ["clean.png", "blur_0.png", "blur_1.png"]
    labels = {f"first_run/faces/id03/{n}": 0.1 * (i + 1) for i, n in enumerate(names)}
    write_together([(str(tmp_path / "labels_id03.csv"), scores_csv_writer(labels))])
    rng = np.random.default_rng(0)
    (tmp_path / "emb_id00.pkl").write_bytes(pickle.dumps({f"id00/{n}": rng.normal(size=8).astype(np.float32)
                                                          for n in names}))
    code, err = run_script(prepare_data.main, "prepare_data.py", [
        "-b", "0.5", "--min-images", "1", "-ll", str(tmp_path / "labels_id03.csv"), "-el",
        str(tmp_path / "emb_id00.pkl"), "-sl", str(tmp_path / "data"), "--no-figure"], capsys)
    assert_user_error(code, err, "prepare_data.py", r"3 of 3 labelled images of labels file '.*labels_id03.csv' are "
                                                    r"not in embeddings file '.*emb_id00.pkl'.*'first_run/faces/id03/"
                                                    r"clean.png' in the first, 'id00/clean.png' in the second")
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_identities_are_the_folders_of_the_normal_keys(tmp_path, capsys) -> None:
    """attack29 #6: embeddings keyed with backslashes (``id0\\a.png``) group by their folders, as ``id0/a.png`` do
    (the official rsplit on '/' made each image an identity); keys with no folder are one line saying so."""
    rng = np.random.default_rng(0)
    names = [f"id{i}/{j}.png" for i in range(3) for j in range(4)]
    (tmp_path / "labels.pkl").write_bytes(pickle.dumps({n: float(rng.uniform()) for n in names}))
    vectors = {n: rng.normal(size=8).astype(np.float32) for n in names}
    (tmp_path / "emb.pkl").write_bytes(pickle.dumps(vectors))
    (tmp_path / "emb_bs.pkl").write_bytes(pickle.dumps({n.replace("/", "\\"): v for n, v in vectors.items()}))
    ref_centres, ref_raw = _prepare(tmp_path / "labels.pkl", tmp_path / "emb.pkl", tmp_path / "ref", capsys)
    centres, raw = _prepare(tmp_path / "labels.pkl", tmp_path / "emb_bs.pkl", tmp_path / "bs", capsys)
    summary = json.loads((tmp_path / "bs" / "prepare_data-ediffiqa.json").read_text())
    assert summary["identities"] == 3
    assert torch.equal(centres, ref_centres)
    assert pickle.loads(raw) == [(p.replace("/", "\\"), *rest) for p, *rest in pickle.loads(ref_raw)]

    (tmp_path / "flat.pkl").write_bytes(pickle.dumps({n.replace("/", "_"): v for n, v in vectors.items()}))
    (tmp_path / "flat_labels.pkl").write_bytes(pickle.dumps({n.replace("/", "_"): 0.5 for n in names}))
    code, err = run_script(prepare_data.main, "prepare_data.py", [
        "-b", "0.5", "-ll", str(tmp_path / "flat_labels.pkl"), "-el", str(tmp_path / "flat.pkl"), "-sl",
        str(tmp_path / "flat"), "--min-images", "2", "--no-figure"], capsys)
    assert_user_error(code, err, "prepare_data.py", r"keys of embeddings file '.*flat.pkl' hold no folder \(e.g. "
                                                    r"'id0_0.png'\): an identity is the folder")


def _same_as_identically_keyed(root, scores, embeddings, tmp_path, capsys):
    """prepare_data.py on ``scores/quality-scores.{csv,pkl}`` (keyed ``faces/...``) gives the bytes it gives on the
    same labels keyed as ``embeddings`` are; returns the folder of the CSV's output."""
    table = pickle.loads((scores / "quality-scores.pkl").read_bytes())
    assert table and all(k.startswith("faces/id") for k in table)  # what inference.py writes: folder as typed + file
    (root / "same.pkl").write_bytes(pickle.dumps({k[len("faces/"):]: v for k, v in table.items()}))
    ref_centres, ref_items = _prepare(root / "same.pkl", embeddings, tmp_path / "ref", capsys)
    items = pickle.loads(ref_items)
    assert items and all(p.startswith("id") for p, _, _ in items)
    for labels in ("quality-scores.csv", "quality-scores.pkl"):
        centres, raw = _prepare(scores / labels, embeddings, tmp_path / labels, capsys)
        assert raw == ref_items, labels  # the same bytes: the items carry the embeddings' keys
        assert torch.equal(centres, ref_centres), labels
    return tmp_path / "quality-scores.csv"


def _train_config(root, prepared, embeddings, out, tmp_path) -> str:
    cfg = {"base": {"seed": 7, "verbose": 0, "save_path": str(out), "device": "cpu", "amp": 0, "epochs": 1,
                    "figure": 0, "model": "ediffiqaT"},
           "dataset": {"image_loc": str(root / "faces"), "training_data": str(prepared),
                       "embeddings": str(embeddings), "val_split": 0.25, "on_missing": "fail"},
           "dataloader": {"train": {"params": {"batch_size": 4, "num_workers": 0}},
                          "val": {"params": {"batch_size": 4, "num_workers": 0}}}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    return str(tmp_path / "train.yaml")


def test_scores_keyed_by_the_folder_prepare_and_load_as_relative_ones(tmp_path, make_faces, capsys) -> None:
    """Files keyed as inference.py (``faces/id0/0.png``) and extract_embeddings.py (``id0/0.png``) key them: the
    prepared items equal those of identically keyed inputs, and the trainer finds their images and embeddings."""
    from dataset.formats import scores_csv_writer
    from engine.training.config import TrainConfig
    from engine.training.data import load_training_data
    from utils.config import from_dict
    from utils.io import write_together

    root = tmp_path
    names = [f"id{i}/{j}.png" for i in range(3) for j in range(4)]
    make_faces(root / "faces", {n: k for k, n in enumerate(names)})
    rng = np.random.default_rng(0)
    scores = {f"faces/{n}": float(rng.uniform()) for n in rng.permutation(names)}
    (root / "scores").mkdir()
    write_together([(str(root / "scores" / "quality-scores.csv"), scores_csv_writer(scores))])
    (root / "scores" / "quality-scores.pkl").write_bytes(pickle.dumps(scores))
    (root / "emb.pkl").write_bytes(pickle.dumps({n: rng.normal(size=8).astype(np.float32) for n in names}))
    prepared = _same_as_identically_keyed(root, root / "scores", root / "emb.pkl", tmp_path, capsys)

    raw = yaml.safe_load(open(_train_config(root, prepared, root / "emb.pkl", root / "run", tmp_path)))
    train_set, val_set, centres, counts = load_training_data(from_dict(TrainConfig, raw))
    assert counts["no_image"] == counts["no_embedding"] == 0
    assert sorted(train_set.paths + val_set.paths) == sorted(p for p, _, _ in pickle.loads(
        (prepared / "training_items-ediffiqa.pkl").read_bytes()))


@pytest.fixture(scope="module")
def scored(tmp_path_factory, checkpoint_dir, make_faces):
    """A folder ``faces`` of 3 identities x 4 faces, scored by inference.py (run from the folder above, so keyed
    ``faces/id0/0.png``) and embedded by extract_embeddings.py (keyed ``id0/0.png``)."""
    root = tmp_path_factory.mktemp("keys")
    make_faces(root / "faces", {f"id{i}/{j}.png": 10 * i + j for i in range(3) for j in range(4)})
    backbone = {k[len("base_model."):]: v for k, v in manifest_state_dict("ediffiqaS").items()
                if k.startswith("base_model.")}
    torch.save(backbone, str(root / "r18.pth"))
    here = os.getcwd()
    os.chdir(root)
    try:
        assert run_cli(inference.main, ["--images", "faces", "--model", "ediffiqaT", "--device", "cpu", "-q",
                                        "--weights", os.path.join(checkpoint_dir, "ediffiqaT.pth"),
                                        "--output", "scores"], "inference.py") == 0
        assert run_cli(extract_embeddings.main, ["--images", "faces", "--backbone", "iresnet18", "--weights",
                                                 "r18.pth", "--output", "emb.pkl", "--device", "cpu", "-q"],
                       "extract_embeddings.py") == 0
    finally:
        os.chdir(here)
    return root


@pytest.mark.slow
def test_inference_scores_feed_prepare_data_with_extracted_embeddings_and_train(scored, tmp_path, capsys) -> None:
    root = scored
    prepared = _same_as_identically_keyed(root, root / "scores", root / "emb.pkl", tmp_path, capsys)
    out = tmp_path / "run"
    code, err = run_script(train.main, "train.py", ["-c", _train_config(root, prepared, root / "emb.pkl", out,
                                                                        tmp_path)], capsys)
    assert code == 0, err
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1] and np.isfinite(history[0]["train"]["loss"])


def test_training_items_keyed_by_the_folder_find_their_images(tmp_path, make_faces) -> None:
    """Items (or DifFIQA(R) labels) written with inference.py's keys are found in dataset.image_loc by the rule."""
    from engine.training.data import _image_files

    make_faces(tmp_path / "faces", [f"id{i}/{j}.png" for i in range(2) for j in range(2)])
    keys = [f"faces/id{i}/{j}.png" for i in range(2) for j in range(2)]
    here = os.getcwd()
    try:
        os.chdir(tmp_path / "faces")  # the keys are not files as written from here
        files, _ = _image_files(keys + ["faces/id7/0.png"], str(tmp_path / "faces"), "items file 'i.pkl'")
    finally:
        os.chdir(here)
    assert files == [k[len("faces/"):] for k in keys] + [None]


def test_items_of_one_identity_never_find_another_identitys_images(tmp_path, make_faces) -> None:
    """attack29 #2 in train.py: with dataset.image_loc one identity's folder (same file names as the others), the
    items of another identity find no image; the items of that identity find theirs."""
    from engine.training.data import _image_files

    make_faces(tmp_path / "faces", [f"id{i}/{n}.png" for i in range(2) for n in ("clean", "blur")])
    items = ["id1/clean.png", "id1/blur.png"]
    files, _ = _image_files(items, str(tmp_path / "faces" / "id0"), "items file 'i.pkl'")
    assert files == [None, None]
    files, _ = _image_files(items, str(tmp_path / "faces" / "id1"), "items file 'i.pkl'")
    assert files == ["clean.png", "blur.png"]
