"""train.py: the objective, optimizer groups, the split, a tiny end-to-end run, resume, DDP (gloo), wandb, errors."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from helpers import (
    ROOT,
    assert_user_error,
    make_faces,
    manifest_state_dict,
    official_schema_config,
    run_script,
)

import inference
import prepare_data
import train
from dataset.training import TrainingSet, official_split
from engine.training.config import TrainConfig
from engine.training.trainer import optimizer_groups
from model import build_model
from model.loss import DistillationLoss, ExtendedL1
from utils.cli import run_cli
from utils.config import from_dict
from utils.io import sha256_of

# ---------------------------------------------------------------- objective

def test_extended_l1_by_hand() -> None:
    pred = torch.tensor([0.5, 0.2, 0.9], requires_grad=True)
    q = torch.tensor([0.6, 0.1, 0.95])
    ad = torch.tensor([0.0, 1.0, 2.0])
    # target = clamp(q - 0.5 * ad, 0, 1) = [0.6, 0 (clamped from -0.4), 0 (from -0.05)]
    loss = ExtendedL1(epsilon=0.5)(pred, q, ad)
    assert torch.isclose(loss, torch.tensor((0.1 + 0.2 + 0.9) / 3))
    # Without the adjustment (validation): plain L1 against q; a negative epsilon * ad pushes above 1 and clamps.
    assert torch.isclose(ExtendedL1(epsilon=0.5)(pred, q), torch.tensor((0.1 + 0.1 + 0.05) / 3))
    high = ExtendedL1(epsilon=-1.0)(torch.tensor([1.0]), torch.tensor([0.9]), torch.tensor([2.0]))
    assert torch.isclose(high, torch.tensor(0.0))  # target clamp(0.9 + 2, 0, 1) = 1


def test_distillation_loss_terms_by_hand() -> None:
    feat = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 1.0]])  # cos = 1, 0, 1 -> L_rc = (0 + 1 + 0) / 3
    pred, q = torch.tensor([[0.3], [0.7], [0.5]]), torch.tensor([0.5, 0.5, 0.9])
    terms = DistillationLoss(ExtendedL1(epsilon=0.5), theta=0.25)(feat, pred, q, teacher)
    total = terms["loss"]
    # L_q = mean |pred - q| = (0.2 + 0.2 + 0.4) / 3
    assert torch.isclose(terms["loss_rc"], torch.tensor(1 / 3))
    assert torch.isclose(terms["loss_q"], torch.tensor(0.8 / 3))
    assert torch.isclose(total, torch.tensor(0.25 / 3 + 0.75 * 0.8 / 3))
    # With centres: ad = 1 - cos(feat, centre) = [0, 1, 2] without gradient; targets [0.5, 0, 0].
    centre = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    terms = DistillationLoss(ExtendedL1(epsilon=0.5), theta=0.0)(feat, pred, q, teacher, centre)
    total = terms["loss"]
    assert torch.isclose(terms["loss_q"], torch.tensor((0.2 + 0.7 + 0.5) / 3))
    total.backward()
    assert not feat.grad.any()  # theta 0: only L_q counts, and ad carries no gradient


def test_optimizer_groups_hold_the_official_tensors() -> None:
    model = build_model("ediffiqaS", return_feat=True)
    groups = optimizer_groups(model, TrainConfig())
    backbone = list(model.base_model.parameters())
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in model.mlp.parameters()]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in backbone[-100:]]
    assert groups[0]["lr"] == 1e-3 and groups[1]["lr"] == 1e-4
    assert not any(p.requires_grad for p in backbone[:-100])
    assert all(p.requires_grad for p in model.mlp.parameters())


@pytest.mark.parametrize("n,val_split", [(25, 0.1), (31, 0.3), (7, 0.5), (1000, 0.07)])
def test_official_split(n, val_split) -> None:
    train_idx, val_idx = official_split(n, val_split)
    expected_val = [int(k) for k in np.arange(0, n, 1 / val_split)]
    assert val_idx.tolist() == expected_val
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(n))
    assert train_idx.tolist() == sorted(set(range(n)) - set(expected_val))
    if (n, val_split) != (31, 0.3):
        return
    # The same in another process (no hash-seed dependence), once: the process start costs seconds.
    code = ("import sys; sys.path.insert(0, %r); from dataset.training import official_split; "
            "t, v = official_split(%d, %r); print(t.tolist(), v.tolist())" % (ROOT, n, val_split))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}).stdout.strip()
    assert out == f"{train_idx.tolist()} {val_idx.tolist()}"


def test_training_set_sorts_by_quality_and_normalises() -> None:
    items = [("a", 0.5, 0), ("b", 0.1, 1), ("c", 0.9, 0), ("d", 0.5, 1)]
    teacher = np.arange(8, dtype=np.float32).reshape(4, 2)
    data = TrainingSet.build(items, teacher)
    assert data.paths == ["b", "a", "d", "c"]  # stable for the tie a/d
    np.testing.assert_allclose(data.quality, [0.0, 0.5, 0.5, 1.0])
    assert data.rows.tolist() == [1, 0, 1, 0]
    np.testing.assert_array_equal(data.teacher[0], teacher[1])


# ---------------------------------------------------------------- end to end

def make_dataset(root, n_ids=4, per_id=12, dim=512, seed=0):
    """Images, DifFIQA-like labels (brighter = better) and teacher embeddings in the official formats."""
    rng = np.random.default_rng(seed)
    seeds = {f"n{i:06d}/{j:04d}_01.png": 100 * i + j for i in range(n_ids) for j in range(per_id)}
    images = make_faces(root / "images", seeds)
    labels, embeddings = [], {}
    for rel in seeds:
        labels.append((rel, float(rng.uniform(0, 1))))
        embeddings[rel] = rng.normal(size=dim).astype(np.float32)
    (root / "labels.pkl").write_bytes(pickle.dumps(labels))
    (root / "emb.pkl").write_bytes(pickle.dumps(embeddings))
    assert prepare_data.main(["-b", "0.5", "-ll", str(root / "labels.pkl"), "-el", str(root / "emb.pkl"),
                              "-sl", str(root / "prepared"), "-sn", "tiny", "--min-images", "2", "-q"]) == 0
    return images


def tiny_config(root, images, out, **overrides):
    cfg = {
        "base": {"seed": 7, "verbose": 0, "save_path": str(out), "device": "cpu", "amp": 0, "epochs": 2, "figure": 0,
                 "model": "ediffiqaT"},
        "dataset": {"image_loc": str(images), "training_data": str(root / "prepared"), "model_name": "tiny",
                    "embeddings": str(root / "emb.pkl"), "val_split": 0.25},
        "dataloader": {"train": {"params": {"batch_size": 8, "shuffle": True, "num_workers": 0}},
                       "val": {"params": {"batch_size": 16, "shuffle": False, "num_workers": 0}}},
        "optimizer": {"module": "torch.optim.Adam", "group_1": {"params": "mlp", "lr": 1e-3},
                      "group_2": {"params": "base_model", "lr": 1e-3, "limit": 100}},
    }
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        node = cfg.setdefault(section, {})
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = root / f"train_{abs(hash(str(out))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return root, make_dataset(root)


def run_train(argv, capsys=None):
    return run_script(train.main, "train.py", argv, capsys)


@pytest.mark.slow
def test_two_epochs_lower_the_loss_and_model_pth_loads_in_inference(tiny, tmp_path, capsys) -> None:
    root, images = tiny
    out = tmp_path / "run"
    code, err = run_train(["-c", tiny_config(root, images, out, **{"base.epochs": 3})], capsys)
    assert code == 0, err
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]
    log = (out / "train_log.csv").read_text().splitlines()
    assert log[0] == "epoch,step,images,loss,loss_rc,loss_q" and len(log) > 3
    assert json.loads((out / "config.json").read_text())["base"]["model"] == "ediffiqaT"
    sd = torch.load(str(out / "model.pth"), weights_only=True)
    assert set(sd) == set(manifest_state_dict("ediffiqaT"))  # the official layout
    code = run_cli(inference.main, ["--images", str(images), "--model", "ediffiqaT", "--weights",
                                    str(out / "model.pth"), "--output", str(tmp_path / "scores"), "-q",
                                    "--device", "cpu"], "inference.py")
    assert code == 0
    assert len(pickle.load(open(tmp_path / "scores" / "quality-scores.pkl", "rb"))) == 48


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny, tmp_path, capsys) -> None:
    root, images = tiny
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_train(["-c", tiny_config(root, images, full)], capsys)[0] == 0
    assert run_train(["-c", tiny_config(root, images, part, **{"base.epochs": 1})], capsys)[0] == 0
    # Resumed with 2 loader workers instead of 0: accepted, and the numbers are those of the run with none.
    code, err = run_train(["-c", tiny_config(root, images, part), "--resume", str(part / "last.pt"), "--workers", "2"],
                          capsys)
    assert code == 0, err
    assert json.loads((part / "config.json").read_text())["dataloader"]["train"]["params"]["num_workers"] == 2
    a = torch.load(str(full / "last.pt"), weights_only=True)
    b = torch.load(str(part / "last.pt"), weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [h["epoch"] for h in a["history"]] == [h["epoch"] for h in b["history"]] == [1, 2]
    assert all(abs(x["val"]["loss"] - y["val"]["loss"]) < 1e-12 for x, y in zip(a["history"], b["history"]))


@pytest.mark.slow
def test_torchrun_two_gloo_processes(tiny, tmp_path) -> None:
    root, images = tiny
    out = tmp_path / "ddp"
    cfg = tiny_config(root, images, out, **{"base.epochs": 1})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", os.path.join(ROOT, "train.py"), "-c", cfg],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("best validation loss") == 1, proc.stderr[-3000:]  # the first process reports
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["val"]["loss"])
    assert (out / "model.pth").is_file()


@pytest.mark.slow
def test_wandb_offline_writes_a_run(tiny, tmp_path, capsys, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root, images = tiny
    out = tmp_path / "wb"
    code, err = run_train(["-c", tiny_config(root, images, out, **{"base.epochs": 1, "wandb.use": 1})], capsys)
    assert code == 0, err
    runs = [d for d in os.listdir(out / "wandb") if d.startswith("offline-run-")]
    assert runs


@pytest.mark.parametrize("case,pattern", [
    ("missing_images", r"image folder '.*nowhere' \(dataset.image_loc\) does not exist"),
    ("missing_prepared", r"file '.*average_embedding_batch-other.pkl' not found"),
    ("missing_embeddings", r"file '.*absent.pkl' not found"),
    ("missing_item_fail", r"1 of \d+ training items of items file .* are not in image folder .*imgs.*e.g. "
                          r"'n000000/0000_01.png' in the first.*on_missing: drop"),
    ("empty_split", r"the split of 1 items with val_split=0.25 leaves 0 training and 1 validation items"),
    ("bad_optimizer", r"'optimizer.module' is 'os.system'; allowed"),
    ("bad_loss", r"'loss.quality.params.base_loss.module' is 'torch.nn.Foo'"),
    ("unknown_key", r"unknown key 'base.epoch'"),
    ("bad_resume", r"base.resume: checkpoint '.*nope.pt' not found"),
])
def test_errors_exit_2(case, pattern, tiny, tmp_path, capsys) -> None:
    root, images = tiny
    out = tmp_path / "err"
    overrides = {
        "missing_images": {"dataset.image_loc": str(tmp_path / "nowhere")},
        "missing_prepared": {"dataset.model_name": "other"},
        "missing_embeddings": {"dataset.embeddings": str(tmp_path / "absent.pkl")},
        "missing_item_fail": {"dataset.on_missing": "fail"},
        "empty_split": {},
        "bad_optimizer": {"optimizer.module": "os.system"},
        "bad_loss": {"loss.quality.params.base_loss.module": "torch.nn.Foo"},
        "unknown_key": {"base.epoch": 3},
        "bad_resume": {"base.resume": str(tmp_path / "nope.pt")},
    }[case]
    if case == "missing_item_fail":
        # Copy the images but one.
        import shutil
        images2 = tmp_path / "imgs"
        shutil.copytree(images, images2)
        os.remove(images2 / "n000000" / "0000_01.png")
        overrides["dataset.image_loc"] = str(images2)
    if case == "empty_split":
        # One image left: it goes to validation (index 0) and nothing is left to train on.
        one = tmp_path / "one" / "n000000"
        one.mkdir(parents=True)
        (one / "0000_01.png").write_bytes((images / "n000000" / "0000_01.png").read_bytes())
        overrides["dataset.image_loc"] = str(tmp_path / "one")
    code, err = run_train(["-c", tiny_config(root, images, out, **overrides)], capsys)
    assert_user_error(code, err, "train.py", pattern)


@pytest.mark.parametrize("section,value,pattern", [
    ("optimizer", {"params": {"momentum": 0.9}}, r"'optimizer.params.momentum' is not a setting of torch.optim.Adam"),
    ("optimizer", {"params": {"betas": [0.9]}}, r"'optimizer.params.betas' must be a list of 2 finite numbers, got "
                                                r"\[0.9\]"),
    ("optimizer", {"params": {"betas": [0.9, 1.0]}}, r"'optimizer.params.betas' is refused by torch.optim.Adam: "
                                                     r"Invalid beta parameter at index 1"),
    ("optimizer", {"params": {"eps": -1}}, r"'optimizer.params.eps' is refused by torch.optim.Adam: Invalid epsilon "
                                           r"value: -1"),
    ("optimizer", {"params": {"weight_decay": float("inf")}}, r"'optimizer.params.weight_decay' must be a finite "
                                                              r"number, got inf"),
    ("optimizer", {"params": {"fused": True}}, r"'optimizer.params.fused' is not a setting of torch.optim.Adam that "
                                               r"this project passes on \(it takes betas, eps, weight_decay"),
    ("optimizer", {"module": "torch.optim.SGD", "params": {"momentum": 0.9, "nesterov": True, "dampening": 0.5}},
     r"'optimizer.params.nesterov' is refused by torch.optim.SGD: Nesterov momentum requires a momentum and zero "
     r"dampening"),
    ("optimizer", {"grad_clip": float("inf")}, r"'optimizer.grad_clip' must be a positive number or null, got inf"),
    ("loss", {"quality": {"params": {"base_loss": {"params": {"beta": 1}}}}}, r"do not fit torch.nn.L1Loss: it takes "
                                                                              r"reduction, not 'beta'"),
    ("optimizer", {"group_2": {"params": "mlp", "lr": 1e-3}}, r"both name 'mlp'"),
    ("base", {"seed": 10 ** 23}, r"'base.seed' must be between 0 and 2\*\*63 - 1"),
    ("dataloader", {"train": {"params": {"batch_size": 10 ** 20}}}, r"batch_size' must be between 1 and"),
    ("wandb", {"mode": "sometimes"}, r"'wandb.mode' must be online, offline or disabled"),
])
def test_train_values_that_would_crash_later(section, value, pattern, tmp_path, capsys) -> None:
    cfg = {"base": {"model": "ediffiqaT", "device": "cpu", "save_path": str(tmp_path / "o")}}
    cfg.setdefault(section, {}).update(value)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert_user_error(*run_train(["-c", str(tmp_path / "c.yaml")], capsys), "train.py", pattern)


# ---------------------------------------------------------------- resume and the output folder

def test_resume_ignores_what_cannot_change_a_number_and_names_each_key_that_can(tiny, tmp_path) -> None:
    from engine.training.config import resume_mismatch
    from utils.config import to_dict

    root, images = tiny
    saved = to_dict(from_dict(TrainConfig, yaml.safe_load(open(tiny_config(root, images, tmp_path / "o")))))
    free = {"base.epochs": 9, "base.verbose": 1, "base.figure": 1, "base.save_path": str(tmp_path / "elsewhere"),
            "base.resume": "x/last.pt", "wandb.use": 1, "wandb.project": "p", "base.model": "ediffiqaT_config.yaml",
            "dataloader.train.params.num_workers": 2, "dataloader.val.params.num_workers": 2,
            "dataloader.train.params.pin_memory": 0, "dataloader.val.params.prefetch_factor": 4,
            "dataloader.train.params.persistent_workers": 1}
    now = yaml.safe_load(open(tiny_config(root, images, tmp_path / "o", **free)))
    assert resume_mismatch(saved, from_dict(TrainConfig, now)) == ""
    changed = {**free, "optimizer.group_1.lr": 5e-4, "dataloader.train.params.batch_size": 4, "loss.theta": 0.25,
               "dataset.val_split": 0.5, "base.official": 1}
    now = yaml.safe_load(open(tiny_config(root, images, tmp_path / "o", **changed)))
    assert resume_mismatch(saved, from_dict(TrainConfig, now)).split("; ") == [
        "base.official: False -> True", "dataset.val_split: 0.25 -> 0.5",
        "dataloader.train.params.batch_size: 8 -> 4", "optimizer.group_1.lr: 0.001 -> 0.0005",
        "loss.theta: 0.5 -> 0.25"]


def test_resume_with_another_learning_rate_is_refused_before_any_work(tiny, tmp_path, capsys) -> None:
    from utils.checkpoint import save_checkpoint
    from utils.config import to_dict

    root, images = tiny
    out = tmp_path / "run"
    nowhere = {"dataset.image_loc": str(tmp_path / "nowhere")}  # no data: the refusal comes before reading them
    trained = from_dict(TrainConfig, yaml.safe_load(open(tiny_config(root, images, out, **nowhere))))
    out.mkdir()
    save_checkpoint(str(out / "last.pt"), {"version": 1, "epoch": 1, "variant": "ediffiqaT", "optimizer": {},
                                           "config": to_dict(trained)})
    cfg = tiny_config(root, images, out, **nowhere, **{"base.epochs": 3})
    code, err = run_train(["-c", cfg, "--resume", str(out / "last.pt"), "--set", "optimizer.group_1.lr=5e-4",
                           "--workers", "2"], capsys)
    assert_user_error(code, err, "train.py", r"last.pt' was trained with other settings \(optimizer.group_1.lr: "
                      r"0.001 -> 0.0005\); resume with the settings it was trained with")


def test_resume_of_another_variant_names_the_model_to_give(tiny, tmp_path, capsys) -> None:
    from utils.checkpoint import save_checkpoint
    from utils.config import to_dict

    root, images = tiny
    out = tmp_path / "run"
    cfg = tiny_config(root, images, out, **{"dataset.image_loc": str(tmp_path / "nowhere")})
    out.mkdir()
    save_checkpoint(str(out / "last.pt"), {"version": 1, "epoch": 1, "variant": "ediffiqaS", "optimizer": {},
                                           "config": to_dict(from_dict(TrainConfig, yaml.safe_load(open(cfg))))})
    assert_user_error(*run_train(["-c", cfg, "--resume", str(out / "last.pt")], capsys), "train.py",
                      r"last.pt' trains ediffiqaS, the config ediffiqaT; give --model ediffiqaS \(or -c the config it "
                      r"was trained with\)$")


def test_resume_with_another_optimizer_is_refused(official_set, tmp_path, capsys) -> None:
    from helpers import official_schema_config

    _, images, data = official_set  # read only
    out = tmp_path / "run"
    path = official_schema_config(tmp_path, images, data, out, "ediffiqaT", epochs=1)
    assert run_train(["-c", path], capsys)[0] == 0
    cfg = yaml.safe_load(open(path))
    cfg["optimizer"]["module"] = "torch.optim.SGD"
    cfg["base"]["epochs"] = 2
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(cfg))
    code, err = run_train(["-c", str(tmp_path / "other.yaml"), "--resume", str(out / "last.pt")], capsys)
    assert_user_error(code, err, "train.py", r"was trained with other settings \(optimizer.module: 'torch.optim.Adam' "
                      r"-> 'torch.optim.SGD'\)")


@pytest.mark.parametrize("files,pattern", [
    (("config.json", "train_log.csv", "history.json", "model.pth", "last.pt", "train_log.png"),
     r"holds a training run \(model.pth, last.pt, train_log.csv, history.json, config.json, train_log.png\); "
     r"continue it with --resume .*run/last.pt, write to another --output, or add --overwrite to replace it"),
    (("config.json", "train_log.csv"),
     r"holds a training run \(train_log.csv, config.json\); it has no last.pt to resume from; write to another "
     r"--output, or add --overwrite to replace it"),
])
def test_a_folder_holding_a_run_is_refused_before_any_work(files, pattern, tiny, tmp_path, capsys) -> None:
    """A finished run (or one stopped after an epoch: the same files) and one stopped in its first epoch."""
    root, images = tiny
    out = tmp_path / "run"
    out.mkdir()
    for name in files:
        (out / name).write_text("earlier")
    cfg = tiny_config(root, images, out, **{"dataset.image_loc": str(tmp_path / "nowhere")})
    assert_user_error(*run_train(["-c", cfg], capsys), "train.py", pattern)
    assert all((out / name).read_text() == "earlier" for name in files)
    other = tmp_path / "other"
    other.mkdir()
    (other / "last.pt").write_text("earlier")
    # Resuming another folder's run into it mixes two runs as well; --overwrite with --resume of its own run is
    # a contradiction.
    assert_user_error(*run_train(["-c", cfg, "--resume", str(other / "last.pt")], capsys), "train.py",
                      r"holds a training run .*; --resume '.*other/last.pt' continues the run of '.*other': add "
                      r"--output .*other to continue it there")
    assert_user_error(*run_train(["-c", cfg, "--resume", str(out / "last.pt"), "--overwrite"], capsys), "train.py",
                      r"--overwrite \(base.overwrite\) would remove the run in .* that --resume .* continues")


def test_overwrite_replaces_the_earlier_run(tiny, tmp_path, capsys, monkeypatch) -> None:
    """--overwrite removes every file of the earlier run (its figure too, which this run does not draw) once the run
    is ready to write; the epoch itself is stubbed (the loop is tested above)."""
    from engine.training.trainer import Trainer

    monkeypatch.setattr(Trainer, "train_epoch", lambda self, epoch: {"loss": 1.0, "loss_rc": 0.5, "loss_q": 0.5})
    monkeypatch.setattr(Trainer, "validate", lambda self: {"loss": 0.8, "loss_rc": 0.4, "loss_q": 0.4})
    root, images = tiny
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "train_log.csv", "history.json", "model.pth", "last.pt", "train_log.png"):
        (out / name).write_text("earlier")
    code, err = run_train(["-c", tiny_config(root, images, out, **{"base.epochs": 1}), "--overwrite"], capsys)
    assert code == 0, err
    assert not (out / "train_log.png").exists()
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1]
    assert torch.load(str(out / "last.pt"), weights_only=True)["epoch"] == 1
    assert set(torch.load(str(out / "model.pth"), weights_only=True)) == set(manifest_state_dict("ediffiqaT"))


def test_config_json_and_last_pt_hold_the_resolved_device_and_workers_and_the_same_command_resumes(
        tiny, tmp_path, capsys, monkeypatch) -> None:
    """Left to the run (device auto, workers null), config.json and last.pt's config hold what the run used, not
    auto or null; the same command resumes from that checkpoint, and so does a checkpoint that holds the config as
    given (written before configs were resolved): the device is compared by its kind. The epochs are stubbed."""
    from engine.training.trainer import Trainer
    from utils.checkpoint import save_checkpoint
    from utils.config import to_dict

    monkeypatch.setattr(Trainer, "train_epoch", lambda self, epoch: {"loss": 1.0, "loss_rc": 0.5, "loss_q": 0.5})
    monkeypatch.setattr(Trainer, "validate", lambda self: {"loss": 0.8, "loss_rc": 0.4, "loss_q": 0.4})
    root, images = tiny
    out = tmp_path / "run"
    unset = {"base.device": "auto", "dataloader.train.params.num_workers": None,
             "dataloader.val.params.num_workers": None}
    first = tiny_config(root, images, out, **{"base.epochs": 1}, **unset)
    code, err = run_train(["-c", first], capsys)
    assert code == 0, err
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    for config in (json.loads((out / "config.json").read_text()),
                   torch.load(str(out / "last.pt"), weights_only=True)["config"]):
        assert config["base"]["device"] == device
        for name in ("train", "val"):
            workers = config["dataloader"][name]["params"]["num_workers"]
            assert isinstance(workers, int) and workers >= 0
    again = tiny_config(root, images, out, **{"base.epochs": 2}, **unset)
    code, err = run_train(["-c", again, "--resume", str(out / "last.pt")], capsys)
    assert code == 0, err
    assert torch.load(str(out / "last.pt"), weights_only=True)["epoch"] == 2

    state = torch.load(str(out / "last.pt"), weights_only=True)
    state["config"] = to_dict(from_dict(TrainConfig, yaml.safe_load(open(again))))  # as given: auto, null
    assert state["config"]["base"]["device"] == "auto"
    save_checkpoint(str(out / "last.pt"), state)
    code, err = run_train(["-c", tiny_config(root, images, out, **{"base.epochs": 3}, **unset), "--resume",
                           str(out / "last.pt")], capsys)
    assert code == 0, err
    assert torch.load(str(out / "last.pt"), weights_only=True)["epoch"] == 3


def _stub_epochs(monkeypatch, val_losses):
    """Stub the epochs (the loop is tested above): each validation returns the next of ``val_losses``."""
    from engine.training.trainer import Trainer

    losses = iter(val_losses)
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, epoch: {"loss": 1.0, "loss_rc": 0.5, "loss_q": 0.5})
    monkeypatch.setattr(Trainer, "validate", lambda self: dict.fromkeys(("loss", "loss_rc", "loss_q"), next(losses)))


def test_resume_on_other_training_data_is_refused_and_on_the_same_data_accepted(tiny, tmp_path, capsys,
                                                                                 monkeypatch) -> None:
    """last.pt records the SHA-256 of the items, centres and teacher embeddings files: prepare_data.py rerun into
    the run's data folder with other labels, or another teacher file, is refused in one line naming the file; the
    same data resume; a checkpoint without the record resumes with one warning."""
    import shutil

    from utils.checkpoint import save_checkpoint

    _stub_epochs(monkeypatch, [0.8, 0.7, 0.6, 0.5])
    root, images = tiny
    data, out = tmp_path / "prepared", tmp_path / "run"
    shutil.copytree(root / "prepared", data)
    emb = tmp_path / "emb.pkl"
    shutil.copy(root / "emb.pkl", emb)
    config = lambda epochs: tiny_config(root, images, out, **{"base.epochs": epochs,  # noqa: E731
                                                              "dataset.training_data": str(data),
                                                              "dataset.embeddings": str(emb)})
    assert run_train(["-c", config(1)], capsys)[0] == 0
    inputs = torch.load(str(out / "last.pt"), weights_only=True)["inputs"]
    assert sorted(inputs) == ["centres file", "items file", "teacher embeddings file"]
    assert inputs["teacher embeddings file"]["sha256"] == sha256_of(str(emb))
    resume = ["--resume", str(out / "last.pt")]
    code, err = run_train(["-c", config(2), *resume], capsys)
    assert code == 0, err

    labels = pickle.loads((root / "labels.pkl").read_bytes())
    shuffled = [(path, q) for (path, _), (_, q) in zip(labels, labels[::-1])]
    (tmp_path / "labels.pkl").write_bytes(pickle.dumps(shuffled))
    assert prepare_data.main(["-b", "0.5", "-ll", str(tmp_path / "labels.pkl"), "-el", str(emb), "-sl", str(data),
                              "-sn", "tiny", "--min-images", "2", "-q"]) == 0
    before = (out / "last.pt").read_bytes()
    assert_user_error(*run_train(["-c", config(3), *resume], capsys), "train.py",
                      r"last.pt' was trained on other data \(items file '.*training_items-tiny.pkl' has other content "
                      r"\(SHA-256 \w{12} -> \w{12}, .*bytes\)\); restore the data it was trained with, or train "
                      r"anew into another --output$")
    assert (out / "last.pt").read_bytes() == before

    shutil.rmtree(data)
    shutil.copytree(root / "prepared", data)  # the data restored: accepted again
    embeddings = pickle.loads(emb.read_bytes())
    emb.write_bytes(pickle.dumps({k: -v for k, v in embeddings.items()}))
    assert_user_error(*run_train(["-c", config(3), *resume], capsys), "train.py",
                      r"other data \(teacher embeddings file '.*emb.pkl' has other content \(SHA-256 \w{12} -> "
                      r"\w{12}, same size, \d+ bytes\)\)")
    shutil.copy(root / "emb.pkl", emb)
    state = torch.load(str(out / "last.pt"), weights_only=True)
    del state["inputs"]  # written before the record
    save_checkpoint(str(out / "last.pt"), state)
    code, err = run_train(["-c", config(3), *resume], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "records no fingerprint of the data it was trained on" in warnings[0], err
    assert torch.load(str(out / "last.pt"), weights_only=True)["inputs"] == inputs
    # prepare_data.py rerun on the same data writes the same centres in other bytes (torch's pickle holds the
    # tensor's memory address): the same data, so the resume goes on (attack: it was refused).
    assert prepare_data.main(["-b", "0.5", "-ll", str(root / "labels.pkl"), "-el", str(emb), "-sl", str(data),
                              "-sn", "tiny", "--min-images", "2", "-q"]) == 0
    centres = data / "average_embedding_batch-tiny.pkl"
    stored = pickle.loads(centres.read_bytes())
    before = centres.read_bytes()
    centres.write_bytes(pickle.dumps(stored.clone(), protocol=4))  # another tensor: another address
    assert centres.read_bytes() != before
    code, err = run_train(["-c", config(4), *resume], capsys)
    assert code == 0, err


def test_a_resumed_summary_names_only_the_files_it_wrote_and_no_stale_figure(tiny, tmp_path, capsys,
                                                                             monkeypatch) -> None:
    """A run stopped after an epoch with its figure, resumed with --no-figure and no better validation loss: the
    summary names only what the resumed part wrote, and the earlier part's train_log.png (epoch 1 only) is gone."""
    _stub_epochs(monkeypatch, [0.8, 0.9])
    root, images = tiny
    out = tmp_path / "run"
    code, err = run_train(["-c", tiny_config(root, images, out, **{"base.epochs": 1, "base.figure": 1})], capsys)
    assert code == 0 and (out / "train_log.png").exists(), err
    code, err = run_train(["-c", tiny_config(root, images, out), "--resume", str(out / "last.pt"), "--no-figure"],
                          capsys)
    assert code == 0, err
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("best validation loss 0.800000; wrote "), summary
    assert summary.split("; wrote ")[1].split(", ") == [str(out / "last.pt"), "train_log.csv", "history.json",
                                                        "config.json"], summary
    assert not (out / "train_log.png").exists() and (out / "model.pth").exists()


def test_resume_compares_the_device_by_its_kind() -> None:
    from engine.training.config import resume_mismatch
    from utils.config import to_dict

    here = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = TrainConfig()
    saved = to_dict(TrainConfig())
    for recorded in ("auto", here, f"{here}:0" if here == "cuda" else "cpu"):
        saved["base"]["device"] = recorded
        assert resume_mismatch(saved, cfg) == "", recorded
    saved["base"]["device"] = "auto"  # a run left to auto resumed with the device named: the same kind here
    assert resume_mismatch(saved, from_dict(TrainConfig, {"base": {"device": here}})) == ""
    saved["base"]["device"] = "cuda:0" if here == "cpu" else "cpu"
    assert resume_mismatch(saved, cfg) == f"base.device: '{saved['base']['device']}' -> 'auto'"


def test_workers_beyond_the_cpus_use_the_cpus_with_one_line(tiny, tmp_path, monkeypatch, caplog) -> None:
    import logging

    from engine.training import data

    root, images = tiny
    monkeypatch.setattr(data, "cpu_count", lambda: 2)
    raw = yaml.safe_load(open(official_schema_config(root, images, root / "prepared", tmp_path / "o", "ediffiqaT")))
    cfg = from_dict(TrainConfig, raw)  # the official num_workers: 10 for both loaders ...
    for n in (10, None):
        for name in ("train", "val"):
            getattr(cfg.dataloader, name).params.num_workers = n
        with caplog.at_level(logging.INFO, logger="engine.training.data"):
            caplog.clear()
            workers = data.loader_workers(cfg, torch.device("cpu"), log=True)
        if n == 10:  # ... are the 2 this machine has, said once
            assert workers == {"train": 2, "val": 2} and len(caplog.records) == 1
            assert "dataloader.train.params.num_workers 10 and dataloader.val.params.num_workers 10 asked for, " \
                   "this machine has 2 CPUs: 2 worker processes instead" in caplog.text
        else:  # unset: the per-device rule
            assert workers == {"train": 1, "val": 1} and not caplog.records


def test_missing_items_are_dropped_with_a_warning(tiny, tmp_path, caplog) -> None:
    import shutil

    from engine.training.data import load_training_data

    root, images = tiny
    images2 = tmp_path / "imgs"
    shutil.copytree(images, images2)
    os.remove(images2 / "n000001" / "0003_01.png")
    raw = yaml.safe_load(open(tiny_config(root, images, tmp_path / "o")))
    raw["dataset"]["image_loc"] = str(images2)
    cfg = from_dict(TrainConfig, raw)
    train_set, val_set, centres, counts = load_training_data(cfg)
    assert counts["no_image"] == 1 and counts["train"] + counts["val"] == counts["items"] - 1
    assert "n000001/0003_01.png" in caplog.text and "left out" in caplog.text
    assert "n000001/0003_01.png" not in train_set.paths + val_set.paths


def test_backbone_weights_initialise_the_student(tiny, tmp_path) -> None:
    from engine.training.trainer import Trainer

    root, images = tiny
    backbone = {k[len("base_model."):]: v for k, v in manifest_state_dict("ediffiqaT", seed=5).items()
                if k.startswith("base_model.")}
    torch.save(backbone, str(tmp_path / "mbf.pth"))
    raw = yaml.safe_load(open(tiny_config(root, images, tmp_path / "o", **{"base.backbone_weights":
                                                                           str(tmp_path / "mbf.pth")})))
    trainer = Trainer(from_dict(TrainConfig, raw))
    for key, value in trainer.model.base_model.state_dict().items():
        assert torch.equal(value, backbone[key]), key


def test_compile_failure_falls_back_to_eager(tiny, tmp_path, capsys, monkeypatch) -> None:
    """base.compile: a compiler that fails on the first step (no C++ compiler, say) leaves training eager."""
    calls = []

    class Broken(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape)
            raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda model: Broken())
    root, images = tiny
    out = tmp_path / "compiled"
    code, err = run_train(["-c", tiny_config(root, images, out, **{"base.epochs": 1, "base.compile": 1})], capsys)
    assert code == 0, err
    assert len(calls) == 1 and "torch.compile failed (no C++ compiler found)" in err
    history = json.loads((out / "history.json").read_text())
    assert np.isfinite(history[0]["train"]["loss"])


@pytest.mark.slow
def test_last_batch_of_one_is_left_out(tiny, tmp_path, capsys) -> None:
    root, images = tiny
    out = tmp_path / "one"
    # 48 items, val_split 0.25 -> 36 training items; batch 7 leaves a last batch of 1.
    code, err = run_train(["-c", tiny_config(root, images, out, **{
        "base.epochs": 1, "dataloader.train.params.batch_size": 7, "base.model": "ediffiqaS",
        "base.backbone_weights": ""})], capsys)
    assert code == 0, err
    assert "the last training batch would hold 1 image" in err


# ---------------------------------------------------------------- official mode

@pytest.mark.slow
@pytest.mark.parametrize("variant", ["ediffiqaT", "ediffiqaS"])
def test_official_mode_equals_the_official_loop(official_set, tmp_path, capsys, variant) -> None:
    """base.official: 1 gives the official model.pth tensor for tensor (two epochs, 10 steps, a partial last
    validation batch, AMP on in the config as officially: fp32 on a CPU)."""
    from official import official_train

    root, images, data = official_set
    out = tmp_path / "ours"
    code, err = run_train(["-c", official_schema_config(root, images, data, out, variant, official=1)], capsys)
    assert code == 0, err
    reference, val_losses = official_train(lambda: build_model(variant), str(data), "ediffiqa", str(images),
                                           str(data / "cosface-embeddings.pkl"), seed=42069, epochs=2,
                                           batch_size=8, val_batch_size=3)
    ours = torch.load(str(out / "model.pth"), weights_only=True)
    assert list(ours) == list(reference)
    for key in reference:
        assert torch.equal(ours[key], reference[key]), key
    history = json.loads((out / "history.json").read_text())
    assert [h["val"]["loss"] for h in history] == val_losses


def test_official_train_config_runs_unchanged(official_set, tmp_path, capsys) -> None:
    """The shipped configs/train_config.yaml is the official file: with paths, device and batch sizes changed it
    trains (default mode) and writes a model.pth that inference.py loads."""
    root, images, data = official_set
    out = tmp_path / "run"
    code, err = run_train(["-c", official_schema_config(root, images, data, out, "ediffiqaT", epochs=1)], capsys)
    assert code == 0, err
    code = run_cli(inference.main, ["--images", str(images), "--model", "ediffiqaT", "--weights",
                                    str(out / "model.pth"), "--output", str(tmp_path / "scores"), "-q",
                                    "--device", "cpu"], "inference.py")
    assert code == 0


@pytest.mark.parametrize("value,pattern", [
    ("nowhere.yaml", r"the model 'nowhere.yaml' \(base.model or model.config\) is neither a model config file nor a "
                     r"variant"),
    ("bad_backbone", r"'base_model.module' is 'os.system'; allowed"),
    ("bad_transform", r"'base_model.transformations' must be the official preprocessing"),
    ("bad_head", r"ediffiqaT_config.yaml: 'mlp.params.hidden_dim' must be the official 1024, got 512"),
    ("unknown_key", r"ediffiqaT_config.yaml: unknown key 'mlp.params.dropout'"),
])
def test_model_config_errors(official_set, tmp_path, capsys, value, pattern) -> None:
    root, images, data = official_set
    cfg = yaml.safe_load(open(official_schema_config(root, images, data, tmp_path / "o", "ediffiqaT")))
    if value != "nowhere.yaml":
        model_cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "ediffiqaT_config.yaml")))
        if value == "bad_backbone":
            model_cfg["base_model"]["module"] = "os.system"
        elif value == "bad_transform":
            model_cfg["base_model"]["transformations"]["trans_1"]["params"]["size"] = [128, 128]
        else:
            model_cfg["mlp"]["params"].update({"hidden_dim": 512} if value == "bad_head" else {"dropout": 0.1})
        (tmp_path / "ediffiqaT_config.yaml").write_text(yaml.safe_dump(model_cfg))
        value = str(tmp_path / "ediffiqaT_config.yaml")
    cfg["base"]["model"] = value
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert_user_error(*run_train(["-c", str(tmp_path / "c.yaml")], capsys), "train.py", pattern)


def test_a_nan_loss_stops_training_and_keeps_the_checkpoints(official_set, tmp_path, capsys, monkeypatch) -> None:
    from helpers import official_schema_config

    from model.loss import DistillationLoss

    _, images, data = official_set  # read only
    out = tmp_path / "run"
    calls = {"n": 0}
    real = DistillationLoss.forward

    def diverging(self, *args, **kwargs):
        terms = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 7:  # epoch 2 (5 steps + 2 validation)
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(DistillationLoss, "forward", diverging)
    code, err = run_train(["-c", official_schema_config(tmp_path, images, data, out, "ediffiqaT")], capsys)
    assert code == 1 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1 and "the training loss is nan at epoch 2, step 1" in lines[0]
    assert "checkpoints of epoch 1 and before" in lines[0]
    assert torch.load(str(out / "last.pt"), weights_only=True)["epoch"] == 1
    assert (out / "model.pth").is_file()


def test_a_missing_training_backbone_names_the_cosface_backbones(official_set, tmp_path, capsys) -> None:
    from helpers import official_schema_config

    _, images, data = official_set  # read only
    cfg = official_schema_config(tmp_path, images, data, tmp_path / "run", "ediffiqaS")
    raw = yaml.safe_load(open(cfg))
    raw["base"]["model"] = "ediffiqaS"  # the variant's own init: ./weights/r18.pth
    open(cfg, "w").write(yaml.safe_dump(raw))
    code, err = run_train(["-c", cfg], capsys)
    assert_user_error(code, err, "train.py", r"weights file '.*r18.pth' not found; the recipe starts from "
                                             r"insightface's CosFace backbones .*; pass its path with "
                                             r"base_model.weights")


def test_a_backbone_of_another_size_names_the_training_keys(official_set, tmp_path, capsys) -> None:
    from helpers import official_schema_config

    from model.build import build_backbone

    _, images, data = official_set  # read only
    torch.save(build_backbone("mobilefacenet").state_dict(), str(tmp_path / "mfn.pth"))
    cfg = official_schema_config(tmp_path, images, data, tmp_path / "run", "ediffiqaS",
                                 backbone_weights=str(tmp_path / "mfn.pth"))
    code, err = run_train(["-c", cfg], capsys)
    assert_user_error(code, err, "train.py", r"it holds a mobilefacenet backbone; set base.model to the model with a "
                                             r"mobilefacenet backbone, or base.backbone_weights to a checkpoint of its "
                                             r"iresnet18 backbone")
    assert "--backbone" not in err


@pytest.mark.parametrize("cfg,pattern", [
    ({"base": {"model": "diffiqaR"}, "dataset": {"labels": "l.pkl"}},
     r"optimizer group 'params' 'mlp' is not a part of DifFIQA\(R\), which has 'linear' and 'base'"),
    ({"base": {"model": "ediffiqaT"}, "dataset": {"labels": "l.pkl"}}, r"'dataset.labels' is for DifFIQA\(R\)"),
    ({"base": {"model": "ediffiqaT"}, "loss": {"module": "torch.nn.L1Loss"}}, r"'loss.module' is DifFIQA\(R\)'s loss"),
    ({"model": {"config": "./configs/ediffiqaT_config.yaml"}, "dataset": {"labels": "l.pkl"}},
     r"ediffiqaT_config.yaml' is not a DifFIQA\(R\) model; name DifFIQA\(R\)'s model config with model.config"),
    ({"base": {"model": "./configs/diffiqaR_model_config.yaml"}, "dataset": {"labels": "l.pkl"}},
     r"diffiqaR_model_config.yaml' is a DifFIQA\(R\) model; name DifFIQA\(R\)'s model config with model.config"),
])
def test_each_kind_refuses_the_keys_of_the_other(cfg, pattern, tmp_path, capsys) -> None:
    """The model's kind decides which keys apply; a key of the other kind is one line, before anything is built
    (DifFIQA(R) with the default optimizer groups, which name eDifFIQA's parts, included)."""
    cfg.setdefault("base", {}).update({"device": "cpu", "save_path": str(tmp_path / "out")})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert_user_error(*run_train(["-c", str(tmp_path / "c.yaml")], capsys), "train.py", pattern)
    assert not (tmp_path / "out").exists()


def test_every_kind_has_an_objective() -> None:
    from engine.training.objective import OBJECTIVES
    from model.registry import KINDS

    assert set(OBJECTIVES) == set(KINDS)


def test_only_the_official_diffiqa_r_validates_without_autocast() -> None:
    from engine.training.objective import Distillation, Regression
    from engine.training.policy import TrainingPolicy

    cfg = TrainConfig()
    for official in (True, False):
        cfg.base.official = official
        seen = [TrainingPolicy.from_config(cfg, torch.device("cpu"), 1, torch.nn.Linear(1, 1), objective,
                                           log=False).validation_autocast for objective in (Distillation, Regression)]
        assert seen == [True, not official]
