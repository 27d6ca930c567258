"""Photos in (MTCNN + alignment), ONNX export, and the onnxruntime/opencv backends."""
from __future__ import annotations

import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch
from helpers import run_script
from PIL import Image

import export_onnx
import inference
from dataset.alignment import ARCFACE_TEMPLATE, estimate_similarity
from utils.cli import run_cli
from utils.errors import CheckpointError


def public_domain_photos():
    import matplotlib

    skimage_data = pytest.importorskip("skimage.data")
    return {"astronaut": Image.fromarray(skimage_data.astronaut()),
            "grace_hopper": Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))}


def test_template_maps_onto_itself() -> None:
    matrix = estimate_similarity(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-12)


@pytest.mark.slow
def test_mtcnn_finds_the_faces_and_eyes_land_on_the_template() -> None:
    pytest.importorskip("facenet_pytorch")
    from engine.scoring.photos import FaceDetector

    detector = FaceDetector()
    for name, photo in public_domain_photos().items():
        faces = detector.detect(photo.convert("RGB"))
        assert len(faces) == 1 and faces[0].probability > 0.99, name
        matrix = estimate_similarity(faces[0].landmarks, ARCFACE_TEMPLATE)
        mapped = faces[0].landmarks @ matrix[:, :2].T + matrix[:, 2]
        # The eyes of the aligned crop sit within 3 px of the template's eye points.
        assert np.abs(mapped[:2] - ARCFACE_TEMPLATE[:2]).max() < 3.0, name
        crop = detector.crops(photo.convert("RGB"), faces)[0]
        assert crop.size == (112, 112)
        # A 3x larger photo: detection runs scaled down, the crop comes from the full resolution.
        big = photo.convert("RGB").resize((photo.width * 3, photo.height * 3))
        big_faces = FaceDetector(max_side=800).detect(big)
        assert len(big_faces) == 1
        width = faces[0].box[2] - faces[0].box[0]
        np.testing.assert_allclose(big_faces[0].landmarks / 3, faces[0].landmarks, atol=0.05 * width)


def test_load_photo_modes(tmp_path) -> None:
    from engine.scoring.photos import load_photo

    deep = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    img = load_photo(str(tmp_path / "deep.png"))
    assert img.mode == "RGB" and np.asarray(img).max() == 255 and np.asarray(img).min() == 0
    Image.new("RGBA", (20, 20), (10, 20, 30, 128)).save(tmp_path / "alpha.png")
    Image.new("L", (20, 20), 77).save(tmp_path / "grey.png")
    assert load_photo(str(tmp_path / "alpha.png")).mode == "RGB"
    assert np.asarray(load_photo(str(tmp_path / "grey.png")))[0, 0].tolist() == [77, 77, 77]


@pytest.mark.slow
def test_inference_align_writes_faces_annotations_and_no_face_list(tmp_path, checkpoint_dir, capsys,
                                                                    monkeypatch) -> None:
    pytest.importorskip("facenet_pytorch")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name, photo in public_domain_photos().items():
        photo.convert("RGB").save(photos / "sub" / f"{name}.JPG")
    Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)).save(photos / "x.png")
    out = tmp_path / "out"
    from engine import figures

    tiles = []
    real = figures.score_sheet

    def spy(scores, load, n, title):
        tiles.extend(load(k) for k in scores)
        return real(scores, load, n, title)

    monkeypatch.setattr(figures, "score_sheet", spy)
    code = run_cli(inference.main, ["--images", str(photos), "--align", "--model", "ediffiqaT", "--weights",
                                    os.path.join(checkpoint_dir, "ediffiqaT.pth"), "--output", str(out), "-q",
                                    "--device", "cpu", "--annotate", str(out / "ann"), "--save-crops",
                                    str(out / "crops")], "inference.py")
    err = capsys.readouterr().err
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "faces.csv")))
    assert len(rows) == 2 and {r["face"] for r in rows} == {"0"}
    assert all(float(r["probability"]) > 0.99 and np.isfinite(float(r["quality"])) for r in rows)
    assert (out / "no-face.txt").read_text().strip().endswith("x.png") and "photos without a face 1" in err
    scores = pickle.load(open(out / "quality-scores.pkl", "rb"))
    assert len(scores) == 2
    record = json.loads((out / "quality-scores.json").read_text())  # no settings: a photo run does not resume
    assert record["settings"] is None and record["config"]["align"] is True
    assert record["config"]["dataloader"]["params"]["pin_memory"] is False  # photos are read without a DataLoader
    assert (record["run"]["faces"], record["run"]["no_face"], record["run"]["scored"]) == (2, 1, 2)
    annotated = Image.open(out / "ann" / "sub" / "grace_hopper.jpg")
    annotated.verify()
    assert Image.open(out / "ann" / "sub" / "grace_hopper.jpg").size == (512, 600)
    assert Image.open(out / "crops" / "sub" / "astronaut_face0.png").size == (112, 112)
    # The score sheet's tiles are the aligned crops of the faces, not the photos.
    assert figures.image_size((out / "quality-scores.png").read_bytes())[0] == 1600
    assert len(tiles) == 2 and all(t.shape == (112, 112, 3) for t in tiles)
    crop = np.asarray(Image.open(out / "crops" / "sub" / "astronaut_face0.png").convert("RGB"))
    assert any(np.array_equal(t, crop) for t in tiles)


@pytest.mark.parametrize("variant", ["ediffiqaT", "ediffiqaS"])
def test_onnx_export_parity(variant, tmp_path, checkpoint_dir, capsys) -> None:
    ort = pytest.importorskip("onnxruntime")
    out = str(tmp_path / f"{variant}.onnx")
    weights = os.path.join(checkpoint_dir, f"{variant}.pth")
    assert run_cli(export_onnx.main, ["--model", variant, "--weights", weights, "--output", out],
                   "export_onnx.py") == 0
    assert "largest difference" in capsys.readouterr().err
    from model import create_model

    model = create_model(variant, weights)
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input" and session.get_inputs()[0].shape[1:] == [3, 112, 112]
    got = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_export_refuses_a_failed_parity_check(checkpoint_dir, tmp_path, capsys, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    import engine.scoring.export

    class Wrong:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, x):
            return None, np.full(len(x), np.nan, dtype=np.float32)

    monkeypatch.setattr(engine.scoring.export, "OnnxModel", Wrong)
    out = tmp_path / "m.onnx"
    code, err = run_script(export_onnx.main, "export_onnx.py", ["--model", "ediffiqaT", "--weights",
                                                                os.path.join(checkpoint_dir, "ediffiqaT.pth"),
                                                                "--output", str(out)], capsys)
    assert code == 1 and "ONNX Runtime and PyTorch disagree" in err and "Traceback" not in err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_every_backend_scores_a_folder_like_torch(tmp_path, checkpoint_dir, capfd, make_faces) -> None:
    """... and with -q prints nothing but its summary (OpenCV's own parser warnings included)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("cv2")
    images = make_faces(tmp_path / "faces", 5)
    weights = os.path.join(checkpoint_dir, "ediffiqaT.pth")
    onnx_file = str(tmp_path / "t.onnx")
    assert run_cli(export_onnx.main, ["--model", "ediffiqaT", "--weights", weights, "--output", onnx_file],
                   "export_onnx.py") == 0
    capfd.readouterr()
    runs = {"torch": ["--weights", weights, "--no-fold-bn"], "torch+fold": ["--weights", weights],
            "onnxruntime": ["--weights", weights, "--backend", "onnxruntime"],
            "opencv": ["--weights", weights, "--backend", "opencv"],
            "onnx file": ["--weights", onnx_file], "onnx file opencv": ["--weights", onnx_file, "--backend", "opencv"]}
    scores = {}
    for name, extra in runs.items():
        out = tmp_path / name.replace(" ", "_")
        code = run_cli(inference.main, ["--images", str(images), "--model", "ediffiqaT", "--output", str(out),
                                        "--device", "cpu", "-q", "--batch-size", "2"] + extra, "inference.py")
        err = capfd.readouterr().err
        assert code == 0, err
        assert err.startswith("scored 5, skipped 0") and len(err.strip().splitlines()) == 1, err
        scores[name] = np.array(list(pickle.load(open(out / "quality-scores.pkl", "rb")).values()))
    scale = np.abs(scores["torch"]).max()
    for name, values in scores.items():
        assert np.abs(values - scores["torch"]).max() <= 1e-4 * scale, name


def test_onnx_of_the_wrong_shape_is_refused(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from engine.scoring.backends import OnnxModel

    path = str(tmp_path / "wrong.onnx")
    torch.onnx.export(torch.nn.Conv2d(3, 1, 3), (torch.zeros(1, 3, 64, 64),), path, input_names=["input"],
                      dynamo=False)
    with pytest.raises(CheckpointError, match=r"expected one input of shape \(N, 3, 112, 112\)"):
        OnnxModel(path)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="cannot load ONNX file"):
        OnnxModel(str(tmp_path / "junk.onnx"))


def test_fold_batchnorm_keeps_the_scores(checkpoint_dir) -> None:
    from model import create_model
    from model.fuse import fold_batchnorm

    for variant in ("ediffiqaT", "ediffiqaS"):
        model = create_model(variant, os.path.join(checkpoint_dir, f"{variant}.pth"), return_feat=True)
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.base_model.modules()
                       if m is not None) or variant == "ediffiqaS"  # iResNet keeps its pre-activation BN
        x = torch.rand(4, 3, 112, 112) * 2 - 1
        with torch.no_grad():
            (fa, qa), (fb, qb) = model(x), folded(x)
        assert torch.allclose(qa, qb, rtol=1e-4, atol=1e-5 * qa.abs().max().item())
        assert torch.allclose(fa, fb, rtol=1e-4, atol=1e-4 * fa.abs().max().item())
