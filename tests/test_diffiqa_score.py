"""DifFIQA labels (diffiqa_score.py) and the DifFIQA(R) regressor. (Resuming a label run, its draw state and its
files: the driver's tests in test_score_folder.py.)"""
from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from helpers import (
    ODD_NAME,
    ROOT,
    assert_user_error,
    diffiqa_config,
    load_manifest,
    manifest_state_dict,
    read_scores,
    run_diffiqa,
)
from PIL import Image

from engine.labels.scoring import diffiqa_quality, image_seed, score_batch_fast, score_batch_official
from model.diffusion import GaussianDiffusion

TINY_UNET = {"dim": 8, "dim_mults": [1, 2, 4, 8], "attn_heads": 1, "attn_dim_head": 8}


class Identity(torch.nn.Module):
    """A 'denoiser' predicting x0 = its input."""

    channels = 3

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x


class TinyDenoiser(torch.nn.Module):
    channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x) + x)


def halves(x: torch.Tensor) -> torch.Tensor:
    """A test 'FR model': the means of the left and right image halves, ``(B, 2)``."""
    w = x.shape[3] // 2
    return torch.stack([x[..., :w].mean(dim=(1, 2, 3)), x[..., w:].mean(dim=(1, 2, 3))], dim=1)


def two_tone(a: float, b: float) -> torch.Tensor:
    x = torch.empty(3, 112, 112)
    x[..., :56], x[..., 56:] = a, b
    return x


# ------------------------------------------------------------------------------------------------- formula
def test_formula_on_hand_made_embeddings() -> None:
    e = torch.tensor([[1.0, 0.0]])
    rep = lambda *vs: torch.tensor([[list(v) for v in vs]])  # noqa: E731  (1, R, 2)
    e_noisy = rep((1, 0), (0, 1))                 # cos 1 and 0: mean 0.5
    e_recon = rep((1, 1), (1, 1))                 # cos 1/sqrt(2)
    e_noisy_flip = rep((-1, 0), (-1, 0))          # cos -1
    e_recon_flip = rep((2, 0), (0, -3))           # cos 1 and 0: mean 0.5
    e_flip = torch.tensor([[0.0, 5.0]])           # cos 0
    q = diffiqa_quality(e, e_flip, e_noisy, e_recon, e_noisy_flip, e_recon_flip)
    assert q.shape == (1,)
    assert q.item() == pytest.approx((0.5 + 1 / math.sqrt(2) - 1 + 0.5 + 0) / 5, abs=1e-6)
    # Repeated clean embeddings (the official bookkeeping) give the same result.
    q2 = diffiqa_quality(e[:, None].expand(1, 2, 2), e_flip[:, None].expand(1, 2, 2), e_noisy, e_recon,
                         e_noisy_flip, e_recon_flip)
    assert q2.item() == pytest.approx(q.item(), abs=1e-7)


@pytest.mark.parametrize("mode", ["official", "fast"])
def test_flip_and_repeat_bookkeeping(mode) -> None:
    tones = [(0.9, 0.1), (0.2, 0.8), (-0.5, 0.7)]
    x = torch.stack([two_tone(a, b) for a, b in tones])
    d = GaussianDiffusion(Identity())
    torch.manual_seed(0)
    if mode == "official":
        q = score_batch_official(x, d, halves, t=5, repeats=4)
    else:
        q = score_batch_fast(x, d, halves, seeds=[1, 2, 3], t=5, repeats=4, chunk=[5])
    # Every noisy/reconstructed image keeps its own tones; the three flip terms see them swapped (cos c), the two
    # others see the original (cos 1): q = (2 + 3c) / 5. A mix-up of images or of flips changes the values.
    expected = [(2 + 3 * (2 * a * b / (a * a + b * b))) / 5 for a, b in tones]
    np.testing.assert_allclose(q.numpy(), expected, atol=2e-3)
    assert len(set(np.round(q.numpy(), 3))) == 3


def test_official_mode_draws_like_the_official_code() -> None:
    """Same torch seed -> the same bits as a literal transcription of the official batch computation."""
    d = GaussianDiffusion(TinyDenoiser())
    x = torch.rand(16, 3, 112, 112) * 2 - 1  # enough images that dividing by 5 would differ in the last bit
    fr = lambda z: halves(z) + 0.1 * z[:, :, ::16, ::16].flatten(1)[:, :2]  # noqa: E731
    torch.manual_seed(7)
    ours = score_batch_official(x, d, fr, t=5, repeats=3)
    torch.manual_seed(7)
    both = torch.cat([x, torch.flip(x, dims=[3])]).repeat_interleave(3, dim=0)
    noisy = d.q_sample(both, torch.full((len(both),), 5))
    img = noisy
    for time_, nxt in [(4, 3), (3, 2), (2, 1), (1, 0), (0, 0), (0, -1)]:
        eps, x0 = d.model_predictions(img, torch.full((len(both),), time_), clip_x_start=True)
        if nxt < 0:
            img = x0
            continue
        a, an = d.alphas_cumprod[time_], d.alphas_cumprod[nxt]
        sigma = ((1 - a / an) * (1 - an) / (1 - a)).sqrt()
        img = x0 * an.sqrt() + (1 - an - sigma ** 2).sqrt() * eps + sigma * torch.randn_like(img)
    emb = fr(torch.cat([both, noisy, img]))
    # The official calc_score: CosineSimilarity on (b n, D) rows, mean over the repeats, NumPy float32, then 1/5 *.
    base, flip, noisy_base, noisy_flip, recon_base, recon_flip = emb.chunk(6)
    cossim = torch.nn.CosineSimilarity()

    @torch.no_grad()
    def calc_score(a, b):
        return torch.mean(cossim(a, b).reshape(-1, 3), dim=1).cpu().numpy()

    expected = 1. / 5. * (calc_score(base, noisy_base) + calc_score(base, recon_base) + calc_score(base, noisy_flip)
                          + calc_score(base, recon_flip) + calc_score(base, flip))
    assert expected.dtype == np.float32
    np.testing.assert_array_equal(ours.numpy(), expected)  # to the last bit


def test_official_and_default_modes_agree_in_expectation() -> None:
    torch.manual_seed(0)
    d = GaussianDiffusion(TinyDenoiser())
    fr_net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(2),
                                 torch.nn.Flatten())
    x = torch.stack([torch.rand(3, 112, 112) * 2 - 1 for _ in range(3)])
    with torch.no_grad():
        official, fast = [], []
        for s in range(24):
            torch.manual_seed(100 + s)
            official.append(score_batch_official(x, d, fr_net, t=5, repeats=2))
            fast.append(score_batch_fast(x, d, fr_net, seeds=[s * 10 + i for i in range(3)], t=5, repeats=2))
    official, fast = torch.stack(official), torch.stack(fast)
    assert float(official.std(0).max()) > 0  # the draws matter, so the comparison means something
    se = torch.sqrt(official.var(0) / 24 + fast.var(0) / 24)
    assert bool((torch.abs(official.mean(0) - fast.mean(0)) <= 4 * se + 1e-6).all())


def test_default_mode_does_not_depend_on_batching() -> None:
    torch.manual_seed(0)
    d = GaussianDiffusion(TinyDenoiser())
    x = torch.rand(4, 3, 112, 112) * 2 - 1
    seeds = [image_seed(0, f"img{i}.png") for i in range(4)]
    whole = score_batch_fast(x, d, halves, seeds, repeats=3)
    parts = torch.cat([score_batch_fast(x[:1], d, halves, seeds[:1], repeats=3, chunk=[2]),
                       score_batch_fast(x[1:], d, halves, seeds[1:], repeats=3, chunk=[7])])
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-6)


def test_diffiqa_seeds_of_any_name() -> None:
    """A seed is the run seed and the name's bytes as the OS holds them through SHA-256 (so the same in every
    process, whatever Python's hash seed), for names that are not UTF-8 too."""
    import hashlib

    from engine.labels.scoring import image_seed

    def by_hand(seed: int, name: bytes) -> int:
        return int.from_bytes(hashlib.sha256(b"%d:%s" % (seed, name)).digest()[:8], "little") & (2 ** 63 - 1)

    assert image_seed(0, ODD_NAME) != image_seed(0, "caf.png")
    assert image_seed(0, ODD_NAME) == by_hand(0, b"caf\xff.png")
    assert image_seed(3, "a/b.png") == by_hand(3, b"a/b.png")


def test_out_of_memory_halves_the_batch_and_retries() -> None:
    from engine.labels.scoring import _chunked

    seen = []

    def fn(a: int, b: int) -> torch.Tensor:
        if b - a > 3:  # pretend that more than 3 rows do not fit
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        seen.append((a, b))
        return torch.arange(a, b)

    chunk = [16]
    out = _chunked(fn, 10, chunk)
    assert out.tolist() == list(range(10)) and chunk == [2]  # 16 -> 8 -> 4 -> 2, kept for later batches
    assert seen[0] == (0, 2) and seen[-1] == (8, 10)


# ------------------------------------------------------------------------------------------------- the script
@pytest.mark.slow
def test_official_mode_and_prepare_data_reads_the_labels(diffiqa_setup, capsys) -> None:
    tmp_path, images = diffiqa_setup
    out = tmp_path / "off"
    code, err = run_diffiqa(["-c", diffiqa_config(tmp_path, images, out), "--official", "--seed", "3"], capsys)
    assert code == 0, err
    scores = read_scores(out)
    assert len(scores) == 5 and all(np.isfinite(v) for v in scores.values())
    assert json.loads((out / "quality-scores.json").read_text())["settings"]["mode"] == "official"
    # The labels feed prepare_data.py together with embeddings keyed by the same relative paths.
    import prepare_data

    emb = {k: np.random.default_rng(i).normal(size=8).astype(np.float32) for i, k in enumerate(sorted(scores))}
    with open(tmp_path / "emb.pkl", "wb") as handle:
        pickle.dump(emb, handle)
    assert prepare_data.main(["-b", "0.5", "-ll", str(out / "quality-scores.pkl"), "-el", str(tmp_path / "emb.pkl"),
                              "-sl", str(tmp_path / "prep"), "-sn", "x", "--min-images", "1", "-q"]) == 0


@pytest.mark.slow
def test_torchrun_splits_the_folder(diffiqa_setup, capsys) -> None:
    tmp_path, images = diffiqa_setup
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert run_diffiqa(["-c", diffiqa_config(tmp_path, images, single)], capsys)[0] == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29537", os.path.join(ROOT, "diffiqa_score.py"), "-c",
                           diffiqa_config(tmp_path, images, ddp)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_scores(single), read_scores(ddp)
    assert sorted(a) == sorted(b) and len(b) == 5
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-5)


@pytest.mark.parametrize("case,pattern", [
    ("empty", r"image folder '.*empty' holds no images"),
    ("no_denoiser", r"denoiser checkpoint '.*nope.pt' not found"),
    ("no_fr", r"face recognition weights '.*nofr.pth' \(fr_model.weights of inference.fr_config, or base.fr_weights"),
    ("edifiqa_train_config", r"'inference.train_config' is '.*train_config.yaml', which is not a denoiser training"),
    ("wrong_denoiser", r"is not a DifFIQA denoiser checkpoint"),
    ("bad_precision", r"'base.precision' must be one of"),
])
def test_errors_exit_2(case, pattern, diffiqa_setup, capsys) -> None:
    tmp_path, images = diffiqa_setup
    out = tmp_path / "err"
    path = diffiqa_config(tmp_path, images, out)
    cfg = yaml.safe_load(open(path))
    if case == "empty":
        (tmp_path / "empty").mkdir()
        cfg["inference"]["images_loc"] = str(tmp_path / "empty")
    elif case == "no_denoiser":
        cfg["inference"]["model_loc"] = str(tmp_path / "nope.pt")
    elif case == "no_fr":
        cfg["base"]["fr_weights"] = str(tmp_path / "nofr.pth")
    elif case == "edifiqa_train_config":  # what the official config's ./configs/train_config.yaml names here
        cfg["inference"]["train_config"] = os.path.join(ROOT, "configs", "train_config.yaml")
    elif case == "wrong_denoiser":
        cfg["inference"]["model_loc"] = str(tmp_path / "fr.pth")
    else:
        cfg["base"]["precision"] = "fp8"
    open(path, "w").write(yaml.safe_dump(cfg))
    code, err = run_diffiqa(["-c", path], capsys)
    assert_user_error(code, err, "diffiqa_score.py", pattern)


@pytest.mark.parametrize("key,value,pattern", [
    ("used_timesteps", 1000, r"'inference.used_timesteps' is 1000; the denoiser has 1000 steps, so it must be in "
                             r"\[1, 999\]"),
    ("repeats", 10 ** 30, r"'inference.repeats' must be between 1 and 1000"),
])
def test_timestep_and_repeats_out_of_range(key, value, pattern, diffiqa_setup, capsys) -> None:
    tmp_path, images = diffiqa_setup
    path = diffiqa_config(tmp_path, images, tmp_path / "range")
    cfg = yaml.safe_load(open(path))
    cfg["inference"][key] = value
    open(path, "w").write(yaml.safe_dump(cfg))
    code, err = run_diffiqa(["-c", path], capsys)
    assert_user_error(code, err, "diffiqa_score.py", pattern)


def test_fr_weights_of_another_backbone_name_the_fr_config_key(diffiqa_setup, capsys) -> None:
    from model.build import build_backbone

    tmp_path, images = diffiqa_setup
    torch.save(build_backbone("iresnet18").state_dict(), tmp_path / "r18.pth")
    code, err = run_diffiqa(["-c", diffiqa_config(tmp_path, images, tmp_path / "hint"), "--fr-weights",
                             str(tmp_path / "r18.pth")], capsys)
    assert_user_error(code, err, "diffiqa_score.py", r"it holds a iresnet18 backbone; set fr_model.module of "
                                                     r"inference.fr_config to the backbone the file holds")
    assert "--backbone" not in err


@pytest.mark.slow
def test_the_sidecar_config_holds_the_values_the_label_run_used(diffiqa_setup, capsys) -> None:
    """Left to the run (device auto, UNet batch, workers, precision), the sidecar's config holds what it used, not
    null; the FR weights file is the one it loaded."""
    tmp_path, images = diffiqa_setup
    out = tmp_path / "resolved"
    path = diffiqa_config(tmp_path, images, out, device="auto")
    cfg = yaml.safe_load(open(path))
    cfg["inference"]["batch_size"] = cfg["dataset"]["num_workers"] = None
    cfg["inference"]["repeats"] = 1
    open(path, "w").write(yaml.safe_dump(cfg))
    code, err = run_diffiqa(["-c", path], capsys)
    assert code == 0, err
    config = json.loads((out / "quality-scores.json").read_text())["config"]
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert config["base"]["device"] == device and config["base"]["precision"] == "fp32"
    assert config["inference"]["batch_size"] == (256 if torch.cuda.is_available() else 64)
    assert isinstance(config["dataset"]["num_workers"], int) and config["dataset"]["num_workers"] >= 0
    assert config["base"]["fr_weights"] == str(tmp_path / "fr.pth")


@pytest.mark.parametrize("official", [False, True])
def test_the_resolved_label_config_has_no_null_where_the_run_chooses(official) -> None:
    """The keys a label config may leave to the run (device, precision, UNet batch, workers, FR weights) are what the
    run chose in the sidecar's config (the whole run: the slow test above)."""
    from engine.labels.config import ScoreConfig
    from engine.labels.policy import LabelPolicy
    from engine.labels.run import resolved_config
    from utils.distributed import DistInfo

    cfg = ScoreConfig()
    cfg.base.official = official
    chosen = {"base": ("device", "precision", "fr_weights"), "inference": ("batch_size",), "dataset": ("num_workers",)}
    assert all(getattr(getattr(cfg, section), k) in (None, "auto") for section, keys in chosen.items() for k in keys)
    device = torch.device("cpu")
    policy = LabelPolicy.from_config(cfg, device, DistInfo())
    out = resolved_config(cfg, device, policy, 0, "fr.pth")
    assert out["base"] == {**out["base"], "device": "cpu", "precision": "fp32", "fr_weights": "fr.pth"}
    assert out["inference"]["batch_size"] == 64 and out["dataset"]["num_workers"] == 0
    assert out["inference"]["repeats"] == cfg.inference.repeats  # the rest as configured


# ------------------------------------------------------------------------------------------------- DifFIQA(R)
def diffiqa_r_state_dict(seed: int = 0) -> dict:
    """The authors' diffiqa(r).pth layout: eDifFIQA(L)'s backbone under ``base.``, plus ``linear.``."""
    full = manifest_state_dict("ediffiqaL", seed)
    state = {"base." + k[len("base_model."):]: v for k, v in full.items() if k.startswith("base_model.")}
    gen = torch.Generator().manual_seed(seed)
    state["linear.weight"] = 0.05 * torch.randn(1, 512, generator=gen)
    state["linear.bias"] = torch.zeros(1)
    return state


@pytest.mark.slow
def test_diffiqa_r_loads_strictly_and_scores(tmp_path, capsys) -> None:
    from model.checkpoint import create_model

    expected = [k for k, _, _ in load_manifest()["ediffiqaL"] if k.startswith("base_model.")]
    state = diffiqa_r_state_dict()
    assert [k for k in state if k.startswith("base.")] == ["base." + k[len("base_model."):] for k in expected]
    path = tmp_path / "diffiqa(r).pth"
    torch.save(state, path)
    model = create_model("diffiqaR", str(path))
    assert list(model.state_dict()) == list(state)
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        want = model.linear(model.base(x)).reshape(-1)
    import inference
    from utils.cli import run_cli

    img = tmp_path / "faces"
    img.mkdir()
    Image.fromarray((np.random.default_rng(0).random((112, 112, 3)) * 255).astype(np.uint8)).save(img / "a.png")
    code = run_cli(inference.main, ["--model", "diffiqaR", "--weights", str(path), "--images", str(img), "--output",
                                    str(tmp_path / "out"), "--device", "cpu", "-q"], "inference.py")
    assert code == 0, capsys.readouterr().err
    with open(tmp_path / "out" / "quality-scores.pkl", "rb") as handle:
        scores = pickle.load(handle)
    assert len(scores) == 1 and np.isfinite(list(scores.values())[0])
    assert torch.isfinite(want).all()
    # An eDifFIQA checkpoint is refused as DifFIQA(R) with a message naming what it is.
    torch.save(manifest_state_dict("ediffiqaS"), tmp_path / "s.pth")
    code = run_cli(inference.main, ["--model", "diffiqaR", "--weights", str(tmp_path / "s.pth"), "--images",
                                    str(img), "--output", str(tmp_path / "o2"), "--device", "cpu"], "inference.py")
    assert code == 2 and "holds eDifFIQA(S)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("labels_key", ["quality_loc", "labels"])
def test_diffiqa_r_trains_one_epoch(tmp_path, capsys, labels_key) -> None:
    """The shipped config (the official DifFIQA(R) train_config.yaml plus additions) with paths and device changed;
    the labels as the official folder (quality_loc/vggface2-qs.pkl) or as our file key."""
    import train
    from utils.cli import run_cli

    img = tmp_path / "faces"
    rng = np.random.default_rng(0)
    labels = {}
    for i in range(10):
        (img / f"n{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((112, 112, 3)) * 255).astype(np.uint8)).save(img / f"n{i % 2}" / f"{i}.png")
        labels[os.path.join(str(img), f"n{i % 2}", f"{i}.png")] = float(rng.uniform(0.3, 0.9))  # joined keys
    (tmp_path / "qs").mkdir()
    with open(tmp_path / "qs" / "vggface2-qs.pkl", "wb") as handle:
        pickle.dump(labels, handle)
    torch.save(diffiqa_r_state_dict(), tmp_path / "init.pth")
    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "diffiqaR_train_config.yaml")))
    cfg["base"].update({"save_path": str(tmp_path / "out"), "device": "cpu", "amp": 0, "verbose": 0})
    cfg["base"]["backbone_weights"] = str(tmp_path / "init.pth")
    cfg["model"]["config"] = os.path.join(ROOT, "configs", "diffiqaR_model_config.yaml")
    cfg["dataset"].update({"image_loc": str(img), "quality_loc": str(tmp_path / "qs")} if labels_key == "quality_loc"
                          else {"image_loc": str(img), "labels": str(tmp_path / "qs" / "vggface2-qs.pkl")})
    for part in ("train", "val"):
        cfg["dataloader"][part]["params"].update({"batch_size": 4, "num_workers": 0})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    code = run_cli(train.main, ["-c", str(tmp_path / "cfg.yaml")], "train.py")
    assert code == 0, capsys.readouterr().err
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["val"]["loss"]) and "loss_rc" not in history[0]["train"]
    saved = torch.load(tmp_path / "out" / "model.pth", weights_only=True)
    assert list(saved)[-2:] == ["linear.weight", "linear.bias"]
    assert all(k.startswith(("base.", "linear.")) for k in saved)
    from model.checkpoint import create_model

    create_model("diffiqaR", str(tmp_path / "out" / "model.pth"))  # loads strictly where inference.py loads it


def test_diffiqa_r_config_needs_labels(tmp_path, capsys) -> None:
    import train
    from utils.cli import run_cli

    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "diffiqaR_train_config.yaml")))
    del cfg["dataset"]["labels"], cfg["dataset"]["quality_loc"]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    code = run_cli(train.main, ["-c", str(tmp_path / "cfg.yaml")], "train.py")
    err = capsys.readouterr().err
    assert code == 2 and "'dataset.labels' (or the official 'dataset.quality_loc') must name the quality" in err
