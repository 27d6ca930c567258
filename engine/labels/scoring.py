"""DifFIQA quality labels: the official formula, its official computation, a faster equivalent, and a resumable,
distributable folder driver.

For an image ``x`` and its horizontal flip ``x'``, with ``e = FR(x)``, ``R`` repeats of ``x_t = q_sample(x, t)`` and
``x_hat = reconstruct(x_t, t)``:

    q = 1/5 * [ m cos(e, FR(x_t)) + m cos(e, FR(x_hat)) + m cos(e, FR(x'_t)) + m cos(e, FR(x'_hat)) + m cos(e, FR(x')) ]

``m`` = mean over the repeats. Higher = better.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set

import torch
import torch.nn.functional as F

from model.diffusion import GaussianDiffusion, noised_steps
from engine.parts import part_path, read_parts, split_for_rank
from utils.io import TEXT_ERRORS

__all__ = ["diffiqa_quality", "score_batch_official", "score_batch_fast", "image_seed", "ScoreRun", "score_folder",
           "RNG_GLOB"]

_logger = logging.getLogger(__name__)

FR = Callable[[torch.Tensor], torch.Tensor]
RNG_GLOB = "quality-scores.part*.rng.pt"


# ------------------------------------------------------------------------------------------------- the formula
def diffiqa_quality(e: torch.Tensor, e_flip: torch.Tensor, e_noisy: torch.Tensor, e_recon: torch.Tensor,
                    e_noisy_flip: torch.Tensor, e_recon_flip: torch.Tensor) -> torch.Tensor:
    """The DifFIQA score from embeddings.

    Args:
        e: Embeddings of the originals, ``(B, D)`` or ``(B, R, D)`` (the official code repeats them).
        e_flip: Of the flipped originals, ``(B, D)`` or ``(B, R, D)``.
        e_noisy, e_recon, e_noisy_flip, e_recon_flip: ``(B, R, D)``.

    Returns:
        ``(B,)`` qualities; every term compares with the unflipped original's embedding.
    """
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
    ``cat(clean, noisy, reconstructed)``.

    Args:
        x: ``(B, 3, H, W)`` faces in [-1, 1].

    Returns:
        ``(B,)`` qualities.
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
    the batch it was computed in, on the number of processes, or on an interruption.

    Args:
        x: ``(B, 3, H, W)`` faces in [-1, 1].
        seeds: One seed per image (see :func:`image_seed`).
        chunk: ``[rows]`` per UNet/FR call (a one-element list so an out-of-memory retry can lower it for later
            batches); default all rows at once.

    Returns:
        ``(B,)`` qualities.
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


# ------------------------------------------------------------------------------------------------- folder driver
@dataclass
class ScoreRun:
    """What :func:`score_folder` needs besides the models."""

    root: str
    out_dir: str
    t: int = 5
    repeats: int = 10
    seed: int = 0
    official: bool = False
    batch_size: int = 64            # UNet inputs per call; images per batch = batch_size // (2 * repeats)
    flush_every: int = 64           # images between flushes of the part file
    limit: Optional[int] = None     # stop after this many new images (resume later)
    workers: int = 1
    verbose: bool = True
    precision: str = "fp32"          # fp32, tf32 (CUDA), bf16, fp16 (CUDA): see engine.scoring.scorer.precision_context
    rank: int = 0
    world: int = 1


def score_folder(run: ScoreRun, rel_paths: Sequence[str], diffusion: GaussianDiffusion, fr: FR,
                 device: torch.device, done: Optional[Set[str]] = None) -> Dict[str, int]:
    """Score this rank's share of ``rel_paths`` not scored yet, appending ``(path, quality, error)`` rows to
    ``quality-scores.part<rank>of<world>.csv`` every ``flush_every`` images (fsync'ed: a killed run loses at most the
    images since the last flush).

    Args:
        done: Paths already scored or skipped (default: read from the part files now).

    Returns:
        Counts: ``done`` (before this run), ``scored``, ``skipped`` by this rank, and ``todo`` left for it.
    """
    from tqdm import tqdm

    from engine.scoring.scorer import iterate_folder
    from utils.runtime import precision_context

    if done is None:
        done_scores, done_skipped = read_parts(run.out_dir)
        done = set(done_scores) | set(done_skipped)
    todo = [p for p in rel_paths if p not in done]
    mine = split_for_rank(todo, run.rank, run.world)
    if run.limit is not None:
        mine = mine[:run.limit]
    part = part_path(run.out_dir, run.rank, run.world)
    rng_file = os.path.join(run.out_dir, f"quality-scores.part{run.rank}of{run.world}.rng.pt")
    if run.official:
        if os.path.isfile(rng_file) and done:
            saved = torch.load(rng_file, map_location="cpu", weights_only=True)
            torch.set_rng_state(saved["cpu"])
            if "cuda" in saved and device.type == "cuda":
                torch.cuda.set_rng_state(saved["cuda"], device)
        else:
            torch.manual_seed(run.seed + run.rank)
    per_batch = max(1, run.batch_size // (2 * run.repeats))
    chunk = [max(1, run.batch_size)]
    counts = {"done": len(done), "scored": 0, "skipped": 0, "todo": len(mine)}
    if not mine:
        return counts
    handle = open(part, "a", encoding="utf-8", errors=TEXT_ERRORS, newline="")
    writer = csv.writer(handle)
    since_flush = 0
    bar = tqdm(total=len(mine), unit="img", dynamic_ncols=True, disable=not run.verbose,
               desc=f"DifFIQA{' (official)' if run.official else ''}")
    start = time.perf_counter()

    def flush() -> None:
        handle.flush()
        os.fsync(handle.fileno())
        if run.official:
            state = {"cpu": torch.get_rng_state()}
            if device.type == "cuda":
                state["cuda"] = torch.cuda.get_rng_state(device)
            from utils.io import atomic_open

            with atomic_open(rng_file, "wb") as out:
                torch.save(state, out)

    try:
        for indices, x, bad in iterate_folder(run.root, mine, device, per_batch, run.workers,
                                              channels_last=False):
            for index, error in bad:
                writer.writerow([mine[index], "", error])
                counts["skipped"] += 1
            if len(indices):
                with precision_context(device, run.precision):
                    if run.official:
                        q = score_batch_official(x, diffusion, fr, run.t, run.repeats)
                    else:
                        seeds = [image_seed(run.seed, mine[i]) for i in indices.tolist()]
                        q = score_batch_fast(x, diffusion, fr, seeds, run.t, run.repeats, chunk)
                for i, value in zip(indices.tolist(), q.float().cpu().tolist()):
                    writer.writerow([mine[i], repr(float(value)), ""])
                counts["scored"] += len(indices)
            n = len(indices) + len(bad)
            since_flush += n
            bar.update(n)
            if since_flush >= run.flush_every:
                flush()
                since_flush = 0
        flush()
    finally:
        bar.close()
        handle.close()
    seconds = time.perf_counter() - start
    _logger.info("rank %d: scored %d image(s) in %.1f s (%.3f images/s)", run.rank, counts["scored"], seconds,
                 counts["scored"] / seconds if seconds > 0 else float("nan"))
    counts["todo"] = 0
    return counts
