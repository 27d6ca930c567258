"""DifFIQA's denoiser: schedule, q_sample, reconstruction chain, loss, BSRGAN degradations, train_diffusion.py."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from helpers import ROOT, assert_user_error, run_script
from PIL import Image

from dataset.degradations import (
    anisotropic_gaussian,
    convolve_mirror,
    degradation_bsrgan,
    degrade_face,
    fspecial_gaussian,
    imresize_np,
    shift_pixel,
)
from dataset.diffusion_data import DegradationPairs, SampleStream
from model.diffusion import (
    GaussianDiffusion,
    build_diffusion,
    cosine_beta_schedule,
    load_diffusion,
    read_diffusion_state,
    reconstruction_pairs,
)
from model.diffusion_unet import DiffusionUnet
from model.ema import EMA
from model.synthetic import MANIFESTS
from utils.errors import CheckpointError

DIFF_MANIFEST = MANIFESTS["diffiqa"]


class Recorder(torch.nn.Module):
    """A stand-in denoiser: records the timesteps it is called with and returns ``scale * x``."""

    def __init__(self, scale: float = 0.5) -> None:
        super().__init__()
        self.channels, self.scale, self.calls = 3, scale, []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(t.tolist())
        return self.scale * x


# ------------------------------------------------------------------------------------------------- schedule
def test_schedule_values() -> None:
    betas = cosine_beta_schedule(1000)
    abar = torch.cumprod(1 - betas, 0)
    assert abar[0].item() == pytest.approx(0.99995872, abs=1e-8)
    assert abar[4].item() == pytest.approx(0.99974503, abs=1e-8)
    assert abar[5].item() == pytest.approx(0.99967947, abs=1e-8)
    d = GaussianDiffusion(Recorder())
    assert d.alphas_cumprod.dtype == torch.float32 and d.alphas_cumprod.shape == (1000,)
    assert d.alphas_cumprod[5].item() == pytest.approx(0.99967947, abs=1e-7)
    assert float(betas.max()) <= 0.999 and float(betas.min()) >= 0


def test_q_sample_statistics() -> None:
    d = GaussianDiffusion(Recorder())
    torch.manual_seed(0)
    x0 = torch.full((4000, 3, 4, 4), 0.6)
    for t in (5, 400):
        xt = d.q_sample(x0, torch.full((4000,), t, dtype=torch.long))
        abar = d.alphas_cumprod[t].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.6, abs=3e-3)
        assert xt.std().item() == pytest.approx(math.sqrt(1 - abar), rel=2e-2)


def test_reconstruction_steps_and_start_index() -> None:
    assert reconstruction_pairs(5) == [(4, 3), (3, 2), (2, 1), (1, 0), (0, 0), (0, -1)]
    rec = Recorder(scale=0.9)
    d = GaussianDiffusion(rec)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.manual_seed(1)
    d.reconstruct(x, 5)
    # The chain on an image noised at index 5 starts by telling the model t = 4, and keeps the (0, 0) step.
    assert [c[0] for c in rec.calls] == [4, 3, 2, 1, 0, 0] and all(len(set(c)) == 1 for c in rec.calls)
    rec.calls.clear()
    d.reconstruct(x, 5, skip_degenerate=True)
    assert [c[0] for c in rec.calls] == [4, 3, 2, 1, 0]


def test_degenerate_step_is_identity_and_chain_matches_hand_computation() -> None:
    d = GaussianDiffusion(Recorder(scale=0.9))
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.manual_seed(3)
    full = d.reconstruct(x, 5)
    # By hand, drawing the same noise in the same order.
    torch.manual_seed(3)
    img = x
    abar = d.alphas_cumprod
    for time, nxt in reconstruction_pairs(5):
        x0 = torch.clamp(0.9 * img, -1, 1)
        eps = (d.sqrt_recip_alphas_cumprod[time] * img - x0) / d.sqrt_recipm1_alphas_cumprod[time]
        if nxt < 0:
            img = x0
            break
        sigma = torch.sqrt((1 - abar[time] / abar[nxt]) * (1 - abar[nxt]) / (1 - abar[time]))
        c = torch.sqrt(1 - abar[nxt] - sigma ** 2)
        img = torch.sqrt(abar[nxt]) * x0 + c * eps + sigma * torch.randn_like(img)
    torch.testing.assert_close(full, img, rtol=0, atol=1e-6)
    # The (0, 0) step: sigma = 0 and the update returns its input up to rounding.
    y = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    x0 = torch.clamp(0.9 * y, -1, 1)
    eps = d.predict_noise_from_start(y, torch.zeros(2, dtype=torch.long), x0)
    same = torch.sqrt(abar[0]) * x0 + torch.sqrt(1 - abar[0]) * eps
    torch.testing.assert_close(same, y, rtol=0, atol=1e-4)


def test_training_loss_by_hand() -> None:
    d = GaussianDiffusion(Recorder(scale=0.5), time_bound=(0, 100), T=100)
    gen = torch.Generator().manual_seed(0)
    hq, lq = torch.rand(3, 3, 4, 4, generator=gen), torch.rand(3, 3, 4, 4, generator=gen)
    noise = torch.randn(3, 3, 4, 4, generator=gen)
    t = torch.tensor([0, 50, 99])
    loss = d.training_loss(hq, lq, t, noise)
    expected = 0.0
    for i in range(3):
        a = math.sin(t[i].item() / 100 * math.pi / 2)
        mix = (1 - a) * (hq[i] * 2 - 1) + a * (lq[i] * 2 - 1)
        abar = d.alphas_cumprod[t[i]].item()
        xt = math.sqrt(abar) * mix + math.sqrt(1 - abar) * noise[i]
        expected += ((0.5 * xt - (hq[i] * 2 - 1)) ** 2).mean().item() / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # t = 0 sees (almost only) the clean image, t near 100 (almost only) the degraded one.
    assert d.mix(hq, lq, torch.tensor([0, 0, 0])).equal(hq)


# ------------------------------------------------------------------------------------------------- UNet
def _reference():
    """lucidrains' denoising_diffusion_pytorch 0.27.12 (requirements.txt pins it for this comparison)."""
    ddp = pytest.importorskip("denoising_diffusion_pytorch")
    from importlib.metadata import version

    assert version("denoising-diffusion-pytorch") == "0.27.12"
    return ddp


def test_unet_equals_reference() -> None:
    ddp = _reference()
    torch.manual_seed(0)
    ref = ddp.Unet(dim=8, dim_mults=(1, 2, 4, 8), channels=3)
    mine = DiffusionUnet(dim=8, dim_mults=(1, 2, 4, 8), channels=3)
    assert [(k, v.shape) for k, v in ref.state_dict().items()] == [(k, v.shape) for k, v in mine.state_dict().items()]
    mine.load_state_dict(ref.state_dict(), strict=True)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 57])
    assert torch.equal(ref(x, t), mine(x, t))  # bitwise
    wrapped = ddp.GaussianDiffusion(ref, image_size=32, objective="pred_x0", loss_type="l2")
    ours = GaussianDiffusion(mine, image_size=32)
    a, b = wrapped.state_dict(), ours.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    t = torch.tensor([5, 5])
    torch.testing.assert_close(ours.predict_noise_from_start(x, t, x0), wrapped.predict_noise_from_start(x, t, x0),
                               rtol=0, atol=0)


def test_full_size_unet_keys_equal_reference_and_manifest() -> None:
    ddp = _reference()
    with open(DIFF_MANIFEST, encoding="utf-8") as handle:
        manifest = json.load(handle)
    ours = build_diffusion()
    ours_keys = [(k, list(v.shape)) for k, v in ours.state_dict().items()]
    assert ours_keys == [(k, v["shape"]) for k, v in manifest["state_dict"].items()]
    assert sum(p.numel() for p in ours.parameters()) == manifest["num_parameters"] == 142872835
    ref = ddp.GaussianDiffusion(ddp.Unet(dim=128, dim_mults=(1, 2, 4, 8)), image_size=112, objective="pred_x0")
    assert ours_keys == [(k, list(v.shape)) for k, v in ref.state_dict().items()]


def _manifest_state(seed: int = 0):
    with open(DIFF_MANIFEST, encoding="utf-8") as handle:
        manifest = json.load(handle)["state_dict"]
    gen = torch.Generator().manual_seed(seed)
    return {k: 0.02 * torch.randn(v["shape"], generator=gen) for k, v in manifest.items()}


@pytest.mark.slow
def test_manifest_state_dict_loads_strictly(tmp_path) -> None:
    state = _manifest_state()
    model = build_diffusion()
    model.load_state_dict(state, strict=True)
    # The same through the checkpoint reader: official trainer layout, 'model' entry by default.
    path = str(tmp_path / "diff_pretrain.pt")
    torch.save({"step": 7, "model": state, "opt": {}, "ema": {}, "scaler": None}, path)
    loaded = read_diffusion_state(path)
    assert list(loaded) == list(state) and torch.equal(loaded["model.final_conv.weight"],
                                                       state["model.final_conv.weight"])


def _tiny_params():
    return {"dim": 8, "dim_mults": (1, 2)}, {"image_size": 16}


def test_checkpoint_model_and_ema_entries(tmp_path) -> None:
    unet, diff = _tiny_params()
    online = build_diffusion(unet, diff)
    ema = EMA(online, beta=0.9, update_every=1, update_after_step=0)
    keys = list(ema.state_dict())
    assert keys[:2] == ["initted", "step"] and any(k.startswith("online_model.model.") for k in keys)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    ema.update()
    ema.update()  # the second update averages: the EMA now differs from the online weights
    path = str(tmp_path / "model.pt")
    torch.save({"step": 2, "model": online.state_dict(), "opt": {}, "ema": ema.state_dict(), "scaler": None}, path)
    plain = load_diffusion(path, unet_params=unet, diff_params=diff)
    averaged = load_diffusion(path, ema=True, unet_params=unet, diff_params=diff)
    w = "model.final_conv.weight"
    assert torch.equal(plain.state_dict()[w], online.state_dict()[w])
    assert torch.equal(averaged.state_dict()[w], ema.ema_model.state_dict()[w])


@pytest.mark.parametrize("content,pattern", [
    ("iresnet", r"is not a DifFIQA denoiser checkpoint"),
    ("other_size", r"does not fit this UNet/schedule: .*shape mismatches"),
    ("garbage", r"cannot read denoiser checkpoint"),
    ("no_ema", r"has no 'ema' entry"),
])
def test_wrong_checkpoints_are_refused(content, pattern, tmp_path) -> None:
    unet, diff = _tiny_params()
    path = str(tmp_path / "x.pt")
    if content == "iresnet":
        torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "fc.weight": torch.zeros(512, 10)}, path)
    elif content == "other_size":
        torch.save(build_diffusion({"dim": 16, "dim_mults": (1, 2)}, diff).state_dict(), path)
    elif content == "garbage":
        with open(path, "wb") as handle:
            handle.write(b"not a checkpoint")
    else:
        torch.save(build_diffusion(unet, diff).state_dict(), path)
    with pytest.raises(CheckpointError, match=pattern):
        load_diffusion(path, ema=content == "no_ema", unet_params=unet, diff_params=diff)


# ------------------------------------------------------------------------------------------------- degradations
def _face(seed: int = 0, size=(150, 140)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = (rng.random((12, 12, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC))


def test_degradation_size_range_and_determinism() -> None:
    face = _face()
    a = degrade_face(face, np.random.default_rng(5))
    b = degrade_face(face, np.random.default_rng(5))
    c = degrade_face(face, np.random.default_rng(6))
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    for seed in range(12):  # every branch (pre-downscale, shifted-kernel downsample, noise kinds) keeps the size
        out = degradation_bsrgan(np.float32(np.random.default_rng(seed).random((64, 64, 3))),
                                 np.random.default_rng(seed), sf=4)
        assert out.shape == (16, 16, 3) and out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0


def test_pairs_are_seeded_by_position(tmp_path, make_faces) -> None:
    make_faces(tmp_path, ["a.png"], image=_face)
    pairs = DegradationPairs(str(tmp_path), ["a.png"], 112, seed=3)
    hq1, lq1 = pairs[(0, 10)]
    hq2, lq2 = pairs[(0, 10)]
    _, lq3 = pairs[(0, 11)]
    assert hq1.shape == lq1.shape == (3, 112, 112) and hq1.dtype == torch.uint8
    assert torch.equal(lq1, lq2) and torch.equal(hq1, hq2) and not torch.equal(lq1, lq3)


def test_kernels_and_resize_match_the_originals() -> None:
    from scipy import ndimage
    from scipy.interpolate import RegularGridInterpolator

    rng = np.random.default_rng(0)
    img = rng.random((30, 27, 3)).astype(np.float32)
    k = shift_pixel(fspecial_gaussian(25, 1.3), 4)
    for kernel in (fspecial_gaussian(9, 1.7), anisotropic_gaussian(11, 0.6, 5.0, 1.0), k / k.sum()):
        np.testing.assert_allclose(convolve_mirror(img, kernel),
                                   ndimage.convolve(img, kernel[..., None], mode="mirror"), atol=1e-5)
    # shift_pixel = bilinear interpolation at the shifted grid (what interp2d(kind='linear') did)
    base = fspecial_gaussian(25, 2.0)
    grid = np.arange(25.0)
    shifted = np.clip(grid + 1.5, 0, 24)
    yy, xx = np.meshgrid(shifted, shifted, indexing="ij")
    expected = RegularGridInterpolator((grid, grid), base)(np.stack([yy, xx], -1))
    np.testing.assert_allclose(shift_pixel(base, 4), expected, atol=1e-12)
    # The anisotropic kernel equals the normalised multivariate normal density (scipy.stats, as the original).
    from scipy.stats import multivariate_normal

    theta, l1, l2, size = 0.6, 5.0, 1.0, 11
    v = np.array([np.cos(theta), np.sin(theta)])
    V = np.array([[v[0], v[1]], [v[1], -v[0]]])
    cov = V @ np.diag([l1, l2]) @ np.linalg.inv(V)
    c = size / 2.0 + 0.5
    ref = np.array([[multivariate_normal.pdf([x - c + 1, y - c + 1], mean=[0, 0], cov=cov) for x in range(size)]
                    for y in range(size)])
    np.testing.assert_allclose(anisotropic_gaussian(size, theta, l1, l2), ref / ref.sum(), atol=1e-12)
    # MATLAB bicubic imresize: constant in, constant out; interior equals PIL's antialiased bicubic.
    np.testing.assert_allclose(imresize_np(np.full((20, 18, 3), 0.3), 0.5), 0.3, atol=1e-12)
    g = rng.random((64, 64)).astype(np.float32)
    ours = imresize_np(g[..., None], 0.5)[..., 0]
    pil = np.asarray(Image.fromarray(g).resize((32, 32), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(ours[4:-4, 4:-4], pil[4:-4, 4:-4], atol=1e-5)


def test_sample_stream_is_split_and_resumable() -> None:
    one = SampleStream(10, seed=1, shuffle=True, global_batch=4)
    it = iter(one)
    stream = [next(it) for _ in range(24)]
    assert [p for _, p in stream] == list(range(24))
    assert sorted(i for i, _ in stream[:10]) == list(range(10))  # each epoch is a permutation
    ranks = [iter(SampleStream(10, 1, True, 4, rank=r, world=2)) for r in range(2)]
    merged = []
    for _ in range(6):
        for r in range(2):
            merged += [next(ranks[r]) for _ in range(2)]
    assert merged == stream[:24]
    later = iter(SampleStream(10, 1, True, 4, start=8))
    assert [next(later) for _ in range(8)] == stream[8:16]


# ------------------------------------------------------------------------------------------------- train_diffusion.py
@pytest.fixture()
def faces(tmp_path, make_faces):
    return make_faces(tmp_path / "faces", [f"id0/{i}.jpg" for i in range(6)], image=lambda i: _face(i, (64, 64)),
                      quality=95)


def write_config(tmp_path, faces, out, **trainer) -> str:
    tp = {"folder": str(faces), "train_batch_size": 4, "gradient_accumulate_every": 2, "train_num_steps": 4,
          "figure": 0, "save_and_sample_every": 2, "num_samples": 4, "results_folder": str(out), "min_image_size": 32,
          "num_workers": 0, "device": "cpu", "log_every": 1, "ema_update_after_step": 1, "ema_update_every": 1,
          "verbose": False, "seed": 5}
    tp.update(trainer)
    cfg = {"unet_params": {"dim": 8, "dim_mults": [1, 2]}, "diff_params": {"image_size": 32}, "trainer_params": tp}
    path = tmp_path / f"cfg-{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run_train(argv, capsys):
    import train_diffusion

    return run_script(train_diffusion.main, "train_diffusion.py", argv, capsys)


@pytest.mark.slow
def test_tiny_unet_trains_and_loss_falls(faces, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code, err = run_train(["-c", write_config(tmp_path, faces, out, train_num_steps=16, train_lr=2e-3,
                                              gradient_accumulate_every=1, save_and_sample_every=8)], capsys)
    assert code == 0, err
    rows = [line.split(",") for line in (out / "loss_log.csv").read_text().splitlines()[1:]]
    losses = [float(r[1]) for r in rows]
    assert len(losses) == 16 and np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    assert not (out / "loss_log.png").exists()  # trainer_params.figure: 0
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert {"step", "model", "opt", "ema", "scaler"} <= set(ckpt) and ckpt["step"] == 16
    assert (out / "sample-1.png").is_file() and (out / "sample-2.png").is_file()
    load_diffusion(str(out / "model.pt"), ema=True, unet_params={"dim": 8, "dim_mults": (1, 2)},
                   diff_params={"image_size": 32})


@pytest.mark.slow
def test_resume_equals_uninterrupted(faces, tmp_path, capsys) -> None:
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run_train(["-c", write_config(tmp_path, faces, whole)], capsys)[0] == 0
    assert run_train(["-c", write_config(tmp_path, faces, part), "--steps", "2"], capsys)[0] == 0
    code, err = run_train(["-c", write_config(tmp_path, faces, part), "--resume", str(part / "model.pt")], capsys)
    assert code == 0, err
    a = torch.load(whole / "model.pt", weights_only=True)
    b = torch.load(part / "model.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


@pytest.mark.slow
def test_torchrun_two_gloo_processes(faces, tmp_path) -> None:
    out = tmp_path / "ddp"
    cfg = write_config(tmp_path, faces, out)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29531", os.path.join(ROOT, "train_diffusion.py"), "-c", cfg],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["samples_seen"] == 4 * 4 * 2
    losses = [float(r.split(",")[1]) for r in (out / "loss_log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 4 and all(np.isfinite(losses))


@pytest.mark.parametrize("case,pattern", [
    ("empty", r"image folder '.*empty' holds no images"),
    ("small", r"2 image\(s\) in '.*' are smaller than 32 px on a side .*lower trainer_params.min_image_size"),
    ("bad_resume", r"trainer_params.resume: '.*other.pt' is not a denoiser trainer checkpoint"),
    ("unknown_key", r"unknown key 'trainer_params.train_steps'"),
    ("self_condition", r"'unet_params.self_condition' is not used by DifFIQA"),
    ("inf_lr", r"'trainer_params.train_lr' must be a positive number, got inf"),
    ("negative_clip", r"'trainer_params.max_grad_norm' must be a positive number or null \(no clipping\), got -1"),
    ("beta_one", r"'trainer_params.adam_betas' must be two numbers in \[0, 1\), got \[1.0, 0.99\]"),
    ("beta_nan", r"'trainer_params.adam_betas' must be two numbers in \[0, 1\), got \[nan, 0.99\]"),
    ("one_channel", r"'unet_params.channels' must be 3 \(faces are RGB\), got 1"),
])
def test_errors_exit_2(case, pattern, faces, make_faces, tmp_path, capsys) -> None:
    out = tmp_path / "err"
    extra = {}
    if case == "empty":
        (tmp_path / "empty").mkdir()
        extra["folder"] = str(tmp_path / "empty")
    elif case == "small":
        make_faces(faces, ["tiny0.png", "tiny1.png"], image=lambda i: _face(i, (20, 24)))
    elif case == "bad_resume":
        torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pt")
        extra["resume"] = str(tmp_path / "other.pt")
    elif case == "unknown_key":
        extra["train_steps"] = 3
    elif case == "inf_lr":
        extra["train_lr"] = float("inf")
    elif case == "negative_clip":
        extra["max_grad_norm"] = -1
    elif case in ("beta_one", "beta_nan"):
        extra["adam_betas"] = [1.0 if case == "beta_one" else float("nan"), 0.99]
    path = write_config(tmp_path, faces, out, **extra)
    if case in ("self_condition", "one_channel"):
        cfg = yaml.safe_load(open(path))
        cfg["unet_params"].update({"self_condition": True} if case == "self_condition" else {"channels": 1})
        open(path, "w").write(yaml.safe_dump(cfg))
    code, err = run_train(["-c", path], capsys)
    assert_user_error(code, err, "train_diffusion.py", pattern)


@pytest.mark.slow
def test_wandb_offline_writes_a_run(faces, tmp_path, capsys, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wb"
    path = write_config(tmp_path, faces, out, train_num_steps=2)
    cfg = yaml.safe_load(open(path))
    cfg["trainer_params"].update({"use_wandb": True, "project_name": "test"})
    open(path, "w").write(yaml.safe_dump(cfg))
    code, err = run_train(["-c", path], capsys)
    assert code == 0, err
    assert [d for d in os.listdir(out / "wandb") if d.startswith("offline-run-")]


def test_time_bound_and_T_as_officially() -> None:
    """diff_params.time_bound bounds the training t, and T None trains on the degraded image as it is."""
    d = GaussianDiffusion(Recorder(scale=0.5), time_bound=(20, 30), T=None)
    hq, lq = torch.zeros(64, 3, 4, 4), torch.ones(64, 3, 4, 4)
    assert d.mix(hq, lq, torch.full((64,), 25)).equal(lq)
    seen = []
    d.model.forward = lambda x, t: seen.append(t) or x  # record the drawn timesteps
    d.training_loss(hq, lq)
    assert 20 <= int(seen[0].min()) and int(seen[0].max()) < 30
    with pytest.raises(ValueError, match="time_bound"):
        GaussianDiffusion(Recorder(), time_bound=(50, 50))


def test_a_diverging_denoiser_stops_and_keeps_the_last_good_checkpoint(faces, tmp_path, capsys) -> None:
    """A learning rate that blows the weights up: the first non-finite loss or weight stops the run (exit 1); the
    checkpoint saved before stays, and no NaN checkpoint is written."""
    out = tmp_path / "run"
    code, err = run_train(["-c", write_config(tmp_path, faces, out, train_num_steps=6, train_lr=1e30,
                                              save_and_sample_every=1, gradient_accumulate_every=1)], capsys)
    assert code == 1 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("train_diffusion.py: error:")]
    assert len(lines) == 1 and "training diverged" in lines[0], err
    ckpt = torch.load(out / "model.pt", weights_only=True)  # saved at step 1, before the loss went non-finite
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values() if v.is_floating_point())
