"""Seeding, device selection and thread settings."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Dict, Iterator

import numpy as np
import torch

from utils.errors import ConfigError

__all__ = ["seed_everything", "seed_worker", "resolve_device", "cpu_count", "peak_rss_bytes", "rng_state",
           "set_rng_state", "PRECISIONS", "precision_context", "resolve_precision", "cpu_has_native_bf16",
           "default_workers", "reader_workers", "cpu_kind"]


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA), with ``deterministic`` cuDNN kernels (slower) when asked; return a
    seeded generator for DataLoaders."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive NumPy/random seeds from the torch seed torch gave this worker."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def resolve_device(spec: str) -> torch.device:
    """Turn ``auto | cpu | cuda | cuda:N`` into a device that exists (else a :class:`ConfigError`)."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{spec}' asked for but CUDA is not available here; use --device cpu or auto")
        index = int(spec[5:]) if ":" in spec else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device '{spec}' asked for but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    raise ConfigError(f"device '{spec}' not understood; use auto, cpu, cuda or cuda:N")


def cpu_count() -> int:
    """CPUs this process may use (respects affinity masks and containers better than ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def peak_rss_bytes() -> int:
    """High-water resident memory of this process image (Linux ``VmHWM``; unlike ``ru_maxrss`` it does not include
    a parent's peak inherited across fork). 0 where ``/proc`` is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states in a form ``torch.load(weights_only=True)`` reads back."""
    np_state = np.random.get_state()
    state: Dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                                       int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "auto")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 inference is faster than fp32;
    elsewhere oneDNN emulates it and bf16 is several times slower."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_kind() -> str:
    """The kind of x86 CPU, as far as inference speed goes: ``amx`` (AMX tiles), ``avx512_bf16`` (AVX-512 with native
    bf16), ``avx512``, ``avx2`` or ``other``; which backend and precision are fastest depends on it."""
    probes = [("amx", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"),
              ("avx512", "_is_avx512_supported"), ("avx2", "_is_avx2_supported")]
    for kind, probe in probes:
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return kind
    return "other"


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto``: bf16 on CPUs with native bf16, fp32 on other CPUs, bf16 on GPUs that support it (else fp16);
    any other value is returned as it is."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


@contextlib.contextmanager
def precision_context(device: torch.device, precision: str) -> Iterator[None]:
    """Numerics of one forward pass.

    ``fp32`` is true fp32 everywhere (on CUDA, TF32 off: the same numbers as on the CPU to about 1e-5). ``tf32`` is
    PyTorch's CUDA default, which the official code gets implicitly (TF32 convolutions; about 1e-3 off on GPUs).
    ``bf16``/``fp16`` use autocast. On CUDA, cuDNN autotuning is on (inputs are always 112x112).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}' not understood; use one of: {', '.join(PRECISIONS)}")
    if device.type == "cpu" and precision in ("fp16", "tf32"):
        raise ConfigError(f"precision '{precision}' is for CUDA; on the CPU use fp32, bf16 or auto")
    with contextlib.ExitStack() as stack:
        if device.type == "cuda":
            cudnn = torch.backends.cudnn
            stack.enter_context(cudnn.flags(enabled=True, benchmark=True, deterministic=cudnn.deterministic,
                                            allow_tf32=precision == "tf32"))
            matmul = torch.backends.cuda.matmul
            previous = matmul.allow_tf32
            matmul.allow_tf32 = precision == "tf32"
            stack.callback(setattr, matmul, "allow_tf32", previous)
        if precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            stack.enter_context(torch.autocast(device_type=device.type, dtype=dtype))
        yield


def default_workers(device: torch.device) -> int:
    """Training DataLoader workers when a config leaves them unset: up to 8 feeding a GPU; on a CPU they share the
    cores with the model, so at most 2 and one core left for it."""
    cpus = cpu_count()
    return min(8, cpus) if device.type == "cuda" else max(0, min(2, cpus - 1))


def reader_workers(device: torch.device) -> int:
    """Worker processes reading images for scoring when a config leaves them unset: up to 8 feeding a GPU; none on a
    CPU, where the model keeps every core busy and a decoding process only competes with it (images are decoded
    in the scoring process, batch by batch: benchmarks/inference_throughput.py)."""
    return min(8, cpu_count()) if device.type == "cuda" else 0
