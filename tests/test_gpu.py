"""CUDA-only checks (marked ``gpu``; skipped on a machine without CUDA): scores and DifFIQA labels on the GPU against
the CPU. benchmarks/cuda_check.py covers more (nvJPEG, AMP training) on a GPU machine."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import manifest_state_dict

pytestmark = pytest.mark.gpu


def test_scores_on_cuda_equal_the_cpu(tmp_path, make_faces) -> None:
    from dataset.image_folder import find_images
    from engine.scoring.scorer import QualityScorer
    from model.checkpoint import create_model

    torch.save(manifest_state_dict("ediffiqaT", 1), str(tmp_path / "t.pth"))
    make_faces(tmp_path / "faces", 6)
    paths = find_images(str(tmp_path / "faces"))
    cpu = QualityScorer(create_model("ediffiqaT", str(tmp_path / "t.pth")), "cpu")
    gpu = QualityScorer(create_model("ediffiqaT", str(tmp_path / "t.pth")), "cuda")
    a = np.asarray(cpu.score_folder(str(tmp_path / "faces"), paths, workers=0).scores)
    b = np.asarray(gpu.score_folder(str(tmp_path / "faces"), paths, workers=0).scores)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())


def test_diffiqa_default_mode_on_cuda_matches_the_cpu() -> None:
    from engine.labels.scoring import image_seed, score_batch_fast
    from model.build import build_backbone
    from model.diffusion import build_diffusion

    torch.manual_seed(0)
    den = build_diffusion({"dim": 8, "dim_mults": (1, 2, 4, 8), "attn_heads": 1, "attn_dim_head": 8}, {}).eval()
    fr = build_backbone("mobilefacenet").eval()
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    seeds = [image_seed(0, f"{i}.png") for i in range(2)]
    cpu = score_batch_fast(x, den, fr, seeds, repeats=2)
    gpu = score_batch_fast(x.cuda(), den.cuda(), fr.cuda(), seeds, repeats=2).cpu()
    assert torch.isfinite(gpu).all()
    # Per-image CUDA generators draw other numbers than CPU ones: the labels agree in expectation, not bit for bit.
    assert torch.allclose(gpu, cpu, atol=0.2)
