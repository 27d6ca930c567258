"""DifFIQA quality labels: the official formula, its official computation and a faster equivalent (the folder run is
:mod:`engine.labels.run`).

For an image ``x`` and its horizontal flip ``x'``, with ``e = FR(x)``, ``R`` repeats of ``x_t = q_sample(x, t)`` and
``x_hat = reconstruct(x_t, t)``:

    q = 1/5 * [ m cos(e, FR(x_t)) + m cos(e, FR(x_hat)) + m cos(e, FR(x'_t)) + m cos(e, FR(x'_hat)) + m cos(e, FR(x')) ]

``m`` = mean over the repeats. Higher = better.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from model.diffusion import GaussianDiffusion, noised_steps

__all__ = ["diffiqa_quality", "score_batch_official", "score_batch_fast", "image_seed"]

_logger = logging.getLogger(__name__)

FR = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------------- the formula
def diffiqa_quality(e: torch.Tensor, e_flip: torch.Tensor, e_noisy: torch.Tensor, e_recon: torch.Tensor,
                    e_noisy_flip: torch.Tensor, e_recon_flip: torch.Tensor) -> torch.Tensor:
    """``(B,)`` DifFIQA scores from the embeddings of the originals ``e`` and their flips ``e_flip``, ``(B, D)`` or
    ``(B, R, D)`` (the official code repeats them), and of the noisy and reconstructed copies, ``(B, R, D)``; every
    term compares with the unflipped original's embedding."""
    if e.ndim == 2:
        e = e[:, None, :]
    if e_flip.ndim == 2:
        e_flip = e_flip[:, None, :]

    def m(other: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(e.float(), other.float(), dim=-1).mean(dim=1)

    # The official arithmetic: a float32 multiplication by 1/5 (not a division), so labels agree to the last bit.
    return 1.0 / 5.0 * (m(e_noisy) + m(e_recon) + m(e_noisy_flip) + m(e_recon_flip) + m(e_flip))


# ------------------------------------------------------------------------------------------------- one batch
def _flip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=[3])


@torch.no_grad()
def score_batch_official(x: torch.Tensor, diffusion: GaussianDiffusion, fr: FR, t: int = 5,
                         repeats: int = 10) -> torch.Tensor:
    """The official computation, step for step and draw for draw (global torch RNG).

    ``[originals; flips]`` is repeated ``repeats`` times each, consecutively; one ``q_sample`` draw for the whole
    batch, the 6-step chain with its degenerate ``(0, 0)`` step (one draw per step), then one FR call on
    ``cat(clean, noisy, reconstructed)``. ``x``: ``(B, 3, H, W)`` faces in [-1, 1]; returns ``(B,)`` qualities.
    """
    b = x.shape[0]
    both = torch.cat([x, _flip(x)])
    rep = both.repeat_interleave(repeats, dim=0)
    tt = torch.full((rep.shape[0],), t, device=x.device, dtype=torch.long)
    noisy = diffusion.q_sample(rep, tt)
    recon = diffusion.reconstruct(noisy, t)
    emb = fr(torch.cat([rep, noisy, recon]))
    clean, e_noisy, e_recon = (c.reshape(2, b, repeats, -1) for c in emb.chunk(3))
    return diffiqa_quality(clean[0], clean[1], e_noisy[0], e_recon[0], e_noisy[1], e_recon[1])


def image_seed(seed: int, rel_path: str) -> int:
    """A 63-bit seed for one image from the run seed and its relative path (independent of batching and ranks)."""
    # The name's bytes as the OS holds them (the same as UTF-8 for valid names), so any file name works.
    digest = hashlib.sha256(f"{seed}:".encode("ascii") + os.fsencode(rel_path)).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def _chunked(fn: Callable[[int, int], torch.Tensor], n: int, chunk: List[int]) -> torch.Tensor:
    """``cat(fn(a, b))`` over row windows of ``chunk[0]``; on CUDA out-of-memory the window halves and retries."""
    out: List[torch.Tensor] = []
    a = 0
    while a < n:
        b = min(n, a + chunk[0])
        try:
            out.append(fn(a, b))
        except torch.cuda.OutOfMemoryError:
            if chunk[0] == 1:
                raise
            torch.cuda.empty_cache()
            chunk[0] = max(1, chunk[0] // 2)
            _logger.warning("CUDA out of memory: batch lowered to %d", chunk[0])
            continue
        a = b
    return torch.cat(out)


@torch.no_grad()
def score_batch_fast(x: torch.Tensor, diffusion: GaussianDiffusion, fr: FR, seeds: Sequence[int], t: int = 5,
                     repeats: int = 10, chunk: Optional[List[int]] = None) -> torch.Tensor:
    """The same scores in expectation with less work: clean embeddings once per image (not ``repeats`` times),
    no degenerate ``(0, 0)`` step, and every image's noise drawn from its own seed, so a score does not depend on
    the batch it was computed in, on the number of processes, or on an interruption. ``seeds``: one per image
    (:func:`image_seed`); ``chunk``: ``[rows]`` per UNet/FR call (a one-element list so that an out-of-memory retry
    lowers it for later batches; default all rows at once).
    """
    b = x.shape[0]
    both = torch.cat([x, _flip(x)])
    rep = both.repeat_interleave(repeats, dim=0)
    n = rep.shape[0]
    chunk = chunk if chunk is not None else [n]
    draws = 1 + noised_steps(t, skip_degenerate=True)
    # Noise of image i: (draws, 2, R, C, H, W) from its own generator, placed at its original and flip rows.
    noise = torch.empty((draws, n, *x.shape[1:]), device=x.device, dtype=x.dtype)
    for i, seed in enumerate(seeds):
        g = torch.Generator(device=x.device).manual_seed(int(seed))
        own = torch.randn((draws, 2, repeats, *x.shape[1:]), generator=g, device=x.device, dtype=x.dtype)
        noise[:, i * repeats:(i + 1) * repeats] = own[:, 0]
        noise[:, (b + i) * repeats:(b + i + 1) * repeats] = own[:, 1]

    first = getattr(diffusion.model, "init_conv", None)
    channels_last = first is not None and first.weight.is_contiguous(memory_format=torch.channels_last)

    def chain(a: int, c: int) -> torch.Tensor:
        tt = torch.full((c - a,), t, device=x.device, dtype=torch.long)
        noisy = diffusion.q_sample(rep[a:c], tt, noise[0, a:c])
        if channels_last:  # a denoiser converted to channels_last (faster on CPUs) gets its input in that layout
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        recon = diffusion.reconstruct(noisy, t, skip_degenerate=True, noises=[nz[a:c] for nz in noise[1:]])
        return torch.cat([fr(noisy), fr(recon)], dim=1)

    clean = fr(both)
    emb = _chunked(chain, n, chunk)
    d = clean.shape[1]
    e_noisy = emb[:, :d].reshape(2, b, repeats, d)
    e_recon = emb[:, d:].reshape(2, b, repeats, d)
    return diffiqa_quality(clean[:b], clean[b:], e_noisy[0], e_recon[0], e_noisy[1], e_recon[1])
