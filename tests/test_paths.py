"""Every script runs from any folder: the paths the project ships (the registry's model configs and weights, the
example images, the DifFIQA defaults) and the official configs' strings for bundled files resolve against the
repository, while user paths keep their meaning (relative to the current folder)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, official_layout, official_schema_config

from utils.paths import REPO_ROOT, repo_path


def test_repo_path_prefers_the_current_folder_then_the_repository(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert REPO_ROOT == os.path.realpath(ROOT)
    official = "./configs/ediffiqaT_config.yaml"
    assert repo_path(official) == os.path.join(REPO_ROOT, "configs", "ediffiqaT_config.yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "ediffiqaT_config.yaml").write_text("{}")
    assert repo_path(official) == official  # a user's copy in the current folder wins
    assert repo_path("./weights/nowhere.pth") == "./weights/nowhere.pth"  # a user path missing everywhere: as given
    assert repo_path("./weights/nowhere.pth", shipped=True) == os.path.join(REPO_ROOT, "weights", "nowhere.pth")
    assert repo_path("/abs/x.pth", shipped=True) == "/abs/x.pth" and repo_path("", shipped=True) == ""


def _script(name, argv, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def small_layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    images, data = official_layout(root, n_ids=2, per_id=6)
    return root, images, data


@pytest.mark.parametrize("model", ["ediffiqaT", "./configs/ediffiqaT_config.yaml"])
def test_train_runs_from_another_folder(small_layout, tmp_path, model) -> None:
    """``python /abs/train.py -c run.yaml`` in another folder, naming the model by variant or, as the official
    train_config.yaml does, by the bundled model config's relative path."""
    root, images, data = small_layout
    cfg = yaml.safe_load(open(official_schema_config(root, images, data, tmp_path / "out", "ediffiqaT", epochs=1)))
    cfg["base"]["model"] = model
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    done = _script("train.py", ["-c", "run.yaml"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "model.pth").is_file()


def test_inference_scores_the_shipped_example_images_from_another_folder(checkpoint_dir, tmp_path) -> None:
    weights = os.path.join(checkpoint_dir, "ediffiqaT.pth")
    done = _script("inference.py", ["--model", "ediffiqaT", "--weights", weights, "--output", "out", "--device", "cpu",
                                    "--figure-tiles", "0", "-q"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "out" / "quality-scores.csv", newline="") as handle:
        scored = sorted(os.path.basename(row[0]) for row in list(csv.reader(handle))[1:])
    shipped = sorted(name for _, _, names in os.walk(os.path.join(ROOT, "example_images")) for name in names)
    assert scored == shipped and len(shipped) > 1


def test_diffiqa_score_names_its_missing_defaults_by_their_repository_paths(tmp_path, monkeypatch, make_faces) -> None:
    """The default FR weights and denoiser are looked up in the repository's weights/ folder; missing, the one-line
    error names that path, not one relative to wherever the script was started."""
    from engine.labels.config import ScoreConfig, resolve_fr

    fr, denoiser = (os.path.join(REPO_ROOT, "weights", name) for name in ("cosface_r100.pth", "diff_pretrain.pt"))
    if os.path.exists(fr) or os.path.exists(denoiser):
        pytest.skip("this checkout holds the official DifFIQA weights")
    monkeypatch.chdir(tmp_path)
    cfg = ScoreConfig()
    assert cfg.inference.model_loc == denoiser and resolve_fr(cfg)[1] == fr
    make_faces(tmp_path / "faces", ["a.png"])
    done = _script("diffiqa_score.py", ["--images", "faces", "--output", "out", "--device", "cpu"], tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.startswith("diffiqa_score.py: error:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert f"'{fr}'" in lines[0] and "not found" in lines[0]
