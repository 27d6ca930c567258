"""prepare_data.py: label-optimisation semantics, official file formats, and error paths; extract_embeddings.py."""
from __future__ import annotations

import os
import pickle
import random
import re

import numpy as np
import pytest
import torch
from helpers import assert_user_error, manifest_state_dict, run_script
from official import official_prepare_data, without_storage_keys, write_official_prepared

import extract_embeddings
import prepare_data
from dataset.formats import read_embeddings, read_prepared
from dataset.labels import (
    centre_order,
    group_identities,
    identity_centres,
    quality_threshold,
    select_identities,
    training_items,
)
from utils.cli import run_cli


def synthetic(n_ids=12, per_id=(5, 40), dim=16, seed=0):
    rng = np.random.default_rng(seed)
    labels, embeddings = [], {}
    for i in range(n_ids):
        for j in range(int(rng.integers(*per_id))):
            path = f"n{i:06d}/{j:04d}_01.jpg"
            labels.append((path, float(np.round(rng.uniform(0, 1), 2))))  # rounding makes ties
            embeddings[path] = rng.normal(size=dim).astype(np.float32)
    return labels, embeddings


def write_inputs(tmp_path, labels, embeddings):
    lp, ep = tmp_path / "labels.pkl", tmp_path / "emb.pkl"
    lp.write_bytes(pickle.dumps(labels))
    ep.write_bytes(pickle.dumps(embeddings))
    return str(lp), str(ep)


def run(argv, capsys):
    return run_script(prepare_data.main, "prepare_data.py", argv, capsys)


# ---------------------------------------------------------------- pure functions

def test_threshold_ties_are_chosen() -> None:
    q = np.array([0.9, 0.8, 0.8, 0.8, 0.1])
    assert quality_threshold(q, 0.2) == 0.8           # index int(0.2 * 5) = 1 of the descending list
    assert quality_threshold(q, 0.99) == 0.1
    names, ids = group_identities(["a/1", "a/2", "a/3", "a/4", "b/1"])
    sel = select_identities(q, ids, len(names), 0.8, min_images=3)
    assert sel.chosen.tolist() == [True, True, True, True, False]  # >=: every tie at the threshold counts
    assert sel.kept.tolist() == [True, False]


def test_min_images_boundary() -> None:
    paths = [f"keep/{i}" for i in range(10)] + [f"drop/{i}" for i in range(9)] + [f"drop/low{i}" for i in range(5)]
    q = np.array([1.0] * 19 + [0.0] * 5)
    names, ids = group_identities(paths)
    sel = select_identities(q, ids, len(names), threshold=0.5, min_images=10)
    assert names == ["keep", "drop"]
    assert sel.chosen_per_identity.tolist() == [10, 9]
    assert sel.kept.tolist() == [True, False] and sel.row.tolist() == [0, -1]


def test_centres_and_items_by_hand() -> None:
    paths = ["x/a/1.jpg", "y/1.jpg", "x/a/2.jpg", "y/2.jpg", "x/a/3.jpg", "z/1.jpg"]
    q = np.array([0.9, 0.8, 0.7, 0.1, 0.95, 0.99])
    emb = np.array([[1, 0], [0, 2], [3, 0], [0, 9], [2, 2], [5, 5]], dtype=np.float32)
    names, ids = group_identities(paths)
    assert names == ["x/a", "y", "z"] and ids.tolist() == [0, 1, 0, 1, 0, 2]
    sel = select_identities(q, ids, 3, threshold=0.75, min_images=1)
    assert sel.kept.tolist() == [True, True, True]
    order, starts = centre_order(q, ids, sel)
    # x/a: images 3 (0.95) then 1 (0.9), not 2 (0.7); y: only 1; z: only 1
    assert order.tolist() == [4, 0, 1, 5] and starts.tolist() == [0, 2, 3, 4]
    centres = identity_centres(lambda a, b: emb[order[a:b]], starts, 2)
    np.testing.assert_allclose(centres.numpy(), [[1.5, 1.0], [0.0, 2.0], [5.0, 5.0]])
    items = training_items(paths, q.tolist(), ids, sel)
    # Grouped by identity in order of first appearance, label order within each.
    assert items == [("x/a/1.jpg", 0.9, 0), ("x/a/2.jpg", 0.7, 0), ("x/a/3.jpg", 0.95, 0), ("y/1.jpg", 0.8, 1),
                     ("y/2.jpg", 0.1, 1), ("z/1.jpg", 0.99, 2)]


def test_identity_centres_windows_do_not_change_result() -> None:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(1000, 8)).astype(np.float32)
    counts = rng.integers(1, 40, size=37)
    starts = np.concatenate([[0], np.cumsum(counts)])
    emb = emb[:starts[-1]]
    a = identity_centres(lambda x, y: emb[x:y], starts, 8, size=1000)
    b = identity_centres(lambda x, y: emb[x:y], starts, 8, size=7)
    assert torch.equal(a, b)
    assert torch.equal(a[5], torch.mean(torch.from_numpy(emb[starts[5]:starts[6]]), dim=0))


# ---------------------------------------------------------------- the script

def assert_official_bytes(ours, official, name) -> None:
    """Both prepared files equal the official ones byte for byte, but for torch's storage key in the centres."""
    assert (ours / f"training_items-{name}.pkl").read_bytes() == (official / f"training_items-{name}.pkl").read_bytes()
    a, b = ((folder / f"average_embedding_batch-{name}.pkl").read_bytes() for folder in (ours, official))
    assert without_storage_keys(a) != a  # the key (a memory address) was found and blanked, nothing else
    assert without_storage_keys(a) == without_storage_keys(b) and len(without_storage_keys(a)) > len(a) - 40


@pytest.mark.parametrize("fmt", ["pkl", "npz"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_script_writes_the_official_bytes(tmp_path, capsys, fmt, shuffle) -> None:
    labels, embeddings = synthetic()
    labels.append(labels[3][:1] + (0.5,))  # a repeated path: the last value wins, as in dict(list)
    if shuffle:  # identities interleaved: items must still come out grouped in first-appearance order
        random.Random(5).shuffle(labels)
    lp, ep = write_inputs(tmp_path, labels, embeddings)
    if fmt == "npz":
        ep = str(tmp_path / "emb.npz")
        np.savez(ep, paths=np.array(list(embeddings)), embeddings=np.stack(list(embeddings.values())))
    out = tmp_path / "new" / "folder"  # missing save folder: created
    code, err = run(["-b", "0.3", "-ll", lp, "-el", ep, "-sl", str(out), "-sn", "test"], capsys)
    assert code == 0, err
    threshold, centres, items = official_prepare_data(labels, embeddings, 0.3)
    write_official_prepared(str(tmp_path / "official"), "test", centres, items)
    assert_official_bytes(out, tmp_path / "official", "test")

    assert 0 < len(centres) < 12
    import json
    summary = json.loads((out / "prepare_data-test.json").read_text())
    assert summary["threshold"] == threshold and summary["identities_kept"] == len(centres)
    assert summary["identities_kept"] + summary["identities_dropped"] == 12
    safe_centres, safe_items = read_prepared(str(out), "test")
    assert torch.equal(safe_centres, centres) and safe_items == items


def test_numpy_label_values_are_kept_as_they_are(tmp_path, capsys) -> None:
    labels, embeddings = synthetic(seed=4)
    labels = [(p, np.float32(q)) for p, q in labels]
    lp, ep = write_inputs(tmp_path, labels, embeddings)
    code, err = run(["-b", "0.3", "-ll", lp, "-el", ep, "-sl", str(tmp_path / "out"), "-sn", "n"], capsys)
    assert code == 0, err
    _, centres, items = official_prepare_data(labels, embeddings, 0.3)
    write_official_prepared(str(tmp_path / "official"), "n", centres, items)
    assert_official_bytes(tmp_path / "out", tmp_path / "official", "n")


def test_config_file_and_dict_labels(tmp_path, capsys) -> None:
    labels, embeddings = synthetic(seed=3)
    lp, ep = write_inputs(tmp_path, dict(labels), embeddings)
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(f"beta: 0.5\nlabel_location: {lp}\nembedding_location: {ep}\nsave_location: {tmp_path}\n"
                   "save_name: cfg\nmin_images: 3\n")
    code, err = run(["-c", str(cfg), "--min-images", "4"], capsys)  # command line wins over the file
    assert code == 0, err
    summary = __import__("json").loads((tmp_path / "prepare_data-cfg.json").read_text())
    assert summary["config"]["min_images"] == 4 and summary["config"]["beta"] == 0.5


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("case,pattern", [
    ("missing_embedding", r"2 of \d+ labelled images of labels file '.*labels.pkl' are not in embeddings file "
                          r"'.*emb.pkl', as written or one as the other below a folder \(e.g. "
                          r"'n000000/0000_01.jpg' in the first, '.*' in the second\); compute both from the same image "
                          r"folder"),
    ("dims_differ", r"embedding sizes differ: first is \(16,\), also \(8,\)"),
    ("nan_quality", r"1 qualities are NaN or infinite \(e.g. 'n000001/0000_01.jpg'\)"),
    ("beta_zero", r"'beta' must be between 0 and 1"),
    ("beta_one", r"'beta' must be between 0 and 1"),
    ("no_identity", r"no identity has 1000 images with quality"),
    ("missing_labels", r"file '.*nope.pkl' not found"),
    ("garbage_labels", r"cannot read '.*garbage.pkl' as a pickle file"),
    ("wrong_type_labels", r"must hold a list of \(path, quality\) pairs or a dict, not a str"),
    ("bad_pair", r"entry 0 is \('a', 'b', 'c'\), expected a \(path, quality\) pair"),
    ("evil_pickle", r"refusing to unpickle 'posix.system'"),
    ("unknown_key", r"unknown key 'betta'"),
])
def test_errors_exit_2(case, pattern, tmp_path, capsys) -> None:
    labels, embeddings = synthetic()
    args = {"-b": "0.2", "-sl": str(tmp_path / "out")}
    if case == "missing_embedding":
        del embeddings[labels[0][0]], embeddings[labels[1][0]]
    if case == "dims_differ":
        embeddings[labels[5][0]] = np.zeros(8, dtype=np.float32)
    if case == "nan_quality":
        i = next(i for i, (p, _) in enumerate(labels) if p.startswith("n000001/"))
        labels[i] = (labels[i][0], float("nan"))
    lp, ep = write_inputs(tmp_path, labels, embeddings)
    args.update({"-ll": lp, "-el": ep})
    extra = []
    if case == "beta_zero":
        args["-b"] = "0"
    if case == "beta_one":
        args["-b"] = "1.0"
    if case == "no_identity":
        extra = ["--min-images", "1000"]
    if case == "missing_labels":
        args["-ll"] = str(tmp_path / "nope.pkl")
    if case == "garbage_labels":
        (tmp_path / "garbage.pkl").write_bytes(b"\x80\x04garbage")
        args["-ll"] = str(tmp_path / "garbage.pkl")
    if case == "wrong_type_labels":
        (tmp_path / "str.pkl").write_bytes(pickle.dumps("hello"))
        args["-ll"] = str(tmp_path / "str.pkl")
    if case == "bad_pair":
        (tmp_path / "bad.pkl").write_bytes(pickle.dumps([("a", "b", "c")]))
        args["-ll"] = str(tmp_path / "bad.pkl")
    if case == "evil_pickle":
        (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"x": _Evil()}))
        args["-el"] = str(tmp_path / "evil.pkl")
    if case == "unknown_key":
        (tmp_path / "c.yaml").write_text("betta: 0.3\n")
        extra = ["-c", str(tmp_path / "c.yaml")]
    argv = [x for kv in args.items() for x in kv] + extra
    code, err = run(argv, capsys)
    assert_user_error(code, err, "prepare_data.py", pattern)
    assert not os.path.exists(tmp_path / "out" / "training_items-ediffiqa.pkl")


# ---------------------------------------------------------------- extract_embeddings.py

@pytest.mark.parametrize("suffix,flip", [("pkl", False), ("npz", True)])
def test_extract_embeddings(tmp_path, capsys, suffix, flip, make_faces) -> None:
    images = make_faces(tmp_path / "faces", {rel: len(rel) + ord(rel[-5]) for rel in ["id1/a.jpg", "id1/b.PNG",
                                                                                       "id2/c.png"]},
                        files={"id2/broken.png": b"nope"})
    weights = tmp_path / "r18.pth"
    backbone_sd = {k[len("base_model."):]: v for k, v in manifest_state_dict("ediffiqaS").items()
                   if k.startswith("base_model.")}
    torch.save(backbone_sd, str(weights))
    out = str(tmp_path / f"emb.{suffix}")
    argv = ["--images", str(images), "--backbone", "iresnet18", "--weights", str(weights), "--output", out,
            "--device", "cpu", "--batch-size", "2", "--workers", "0"] + (["--flip"] if flip else [])
    code = run_cli(extract_embeddings.main, argv, "extract_embeddings.py")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "skipped 1" in err and "broken.png" in err
    table = read_embeddings(out)
    assert len(table) == 3 and table.dim == 512
    assert table.missing(["id1/a.jpg", "id1/b.PNG", "id2/c.png"]) == []

    from PIL import Image

    from dataset import official_transform
    from model import build_backbone
    model = build_backbone("iresnet18")
    model.load_state_dict(backbone_sd)
    model.eval()
    x = official_transform()(Image.open(images / "id1" / "a.jpg").convert("RGB"))[None]
    with torch.no_grad():
        expected = model(x)
        if flip:
            expected = (expected + model(torch.flip(x, dims=[3]))) / 2
    np.testing.assert_allclose(table.gather(["id1/a.jpg"])[0], expected[0].numpy(), rtol=1e-4, atol=1e-5)


def test_extract_embeddings_of_a_published_model_fetch_its_checkpoint_and_embed_with_its_backbone(
        tmp_path, capsys, make_faces, published_t) -> None:
    """``--model`` takes the variant's backbone from the registry and its weights as inference.py does (fetched by
    name here): the same embeddings as ``--backbone`` with that checkpoint's file; both flags at once are refused."""
    images = make_faces(tmp_path / "faces", ["id1/a.png", "id2/b.png"])
    (tmp_path / "t.pth").write_bytes(published_t)
    common = ["--images", str(images), "--device", "cpu", "--workers", "0", "-q"]
    assert run_cli(extract_embeddings.main, [*common, "--model", "ediffiqaT", "--output", str(tmp_path / "m.pkl")],
                   "extract_embeddings.py") == 0
    assert run_cli(extract_embeddings.main, [*common, "--backbone", "mobilefacenet", "--weights",
                                             str(tmp_path / "t.pth"), "--output", str(tmp_path / "b.pkl")],
                   "extract_embeddings.py") == 0
    by_model, by_file = read_embeddings(str(tmp_path / "m.pkl")), read_embeddings(str(tmp_path / "b.pkl"))
    paths = ["id1/a.png", "id2/b.png"]
    assert by_model.missing(paths) == [] and by_model.dim == 512
    np.testing.assert_array_equal(by_model.gather(paths), by_file.gather(paths))
    capsys.readouterr()
    code, err = run_script(extract_embeddings.main, "extract_embeddings.py",
                           [*common, "--model", "ediffiqaT", "--backbone", "mobilefacenet", "--output",
                            str(tmp_path / "x.pkl")], capsys)
    assert_user_error(code, err, "extract_embeddings.py", r"'backbone' \(--backbone\) or 'model' \(--model\), not both")
    # With --model, a missing file or one of another variant names the variants and their weights, never
    # --backbone (refused with --model) nor the CosFace backbones.
    for weights, pattern in ((tmp_path / "none.pth", r"weights file '.*none.pth' not found; pass an "
                              r"eDifFIQA\(S\) checkpoint with --weights, or leave --weights out to fetch it "
                              r"\(see README: Weights\)$"),
                             (tmp_path / "t.pth", r"it holds a mobilefacenet backbone; give --model ediffiqaT, whose "
                              r"backbone it is, or leave --weights out to fetch eDifFIQA\(S\)'s$")):
        code, err = run_script(extract_embeddings.main, "extract_embeddings.py",
                               [*common, "--model", "ediffiqaS", "--weights", str(weights), "--output",
                                str(tmp_path / "x.pkl")], capsys)
        assert_user_error(code, err, "extract_embeddings.py", pattern)
        assert "--backbone" not in err and "r100.pth" not in err, err


def test_extract_embeddings_by_the_scoring_rule_equal_a_plain_batched_forward(tmp_path, capsys, make_faces) -> None:
    """Batch size and workers left unset take scoring's rule (folder_batching: 8 a batch on a CPU, read in this
    process), and the embeddings are bit for bit a plain forward of the backbone (eval, channels_last, batches of
    that size) on the faces decoded one by one, JPEGs and other sizes included."""
    from PIL import Image

    from dataset.transforms import normalize, resize_face, to_uint8_tensor
    from engine.scoring.scorer import folder_batching
    from model.build import build_backbone

    names = [f"id{i % 3}/{i:02d}.{'jpg' if i % 4 == 0 else 'png'}" for i in range(19)]
    images = make_faces(tmp_path / "faces", names, sizes={names[1]: 128})
    weights = tmp_path / "t.pth"
    backbone_sd = {k[len("base_model."):]: v for k, v in manifest_state_dict("ediffiqaT").items()
                   if k.startswith("base_model.")}
    torch.save(backbone_sd, str(weights))
    out = str(tmp_path / "emb.pkl")
    assert run_cli(extract_embeddings.main, ["--images", str(images), "--backbone", "mobilefacenet", "--weights",
                                             str(weights), "--output", out, "--device", "cpu", "-q"],
                   "extract_embeddings.py") == 0
    assert folder_batching(torch.device("cpu")) == {"batch_size": 8, "workers": 0}
    net = build_backbone("mobilefacenet")
    net.load_state_dict(backbone_sd)
    net = net.eval().to(memory_format=torch.channels_last)
    rel = sorted(names)
    faces = torch.stack([to_uint8_tensor(resize_face(Image.open(images / p).convert("RGB"))) for p in rel])
    with torch.inference_mode():
        expected = torch.cat([net(normalize(faces[i:i + 8]).contiguous(memory_format=torch.channels_last))
                              for i in range(0, len(rel), 8)])
    np.testing.assert_array_equal(read_embeddings(out).gather(rel), expected.numpy())


def test_extract_embeddings_wrong_backbone(tmp_path, capsys, make_faces) -> None:
    images = make_faces(tmp_path / "faces", {"a.png": 1})
    weights = tmp_path / "r18.pth"
    torch.save({k[len("base_model."):]: v for k, v in manifest_state_dict("ediffiqaS").items()
                if k.startswith("base_model.")}, str(weights))
    code = run_cli(extract_embeddings.main, ["--images", str(images), "--backbone", "iresnet50", "--weights",
                                             str(weights), "--output", str(tmp_path / "e.pkl")],
                   "extract_embeddings.py")
    err = capsys.readouterr().err
    assert code == 2 and "holds a iresnet18 backbone; use --backbone iresnet18" in err


def test_nan_embeddings_stop_extract_embeddings(odd_faces, tmp_path, capsys) -> None:
    from model.build import build_backbone

    net = build_backbone("mobilefacenet")
    state = {k: (v * 1e6 if k.endswith("weight") and v.ndim > 1 else v) for k, v in net.state_dict().items()}
    torch.save(state, str(tmp_path / "huge.pth"))
    out = tmp_path / "o" / "e.pkl"
    argv = ["--images", str(odd_faces), "--backbone", "mobilefacenet", "--weights", str(tmp_path / "huge.pth"),
            "--output", str(out), "--device", "cpu", "-q"]
    code, err = run_script(extract_embeddings.main, "extract_embeddings.py", argv, capsys)
    assert code == 1 and "Traceback" not in err, err
    assert re.search(r"extract_embeddings.py: error: \d of the \d embeddings of a batch are NaN or infinite", err)
    assert not out.exists()
