"""Process-level settings for fast CPU work, and device choice. Call `configure()` once at
the start of a command (never at import)."""

from __future__ import annotations

import ctypes
import os

# glibc returns large activation buffers to the OS after every forward pass and faults them
# back in on the next one; pinning them (no mmap'd chunks, no trimming) made a batched
# world-model step ~2x faster and steadier on the 2-core reference machine.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_THRESHOLD_BYTES = 1 << 36


def tune_malloc() -> bool:
    """Apply the glibc malloc settings above; returns False where glibc is absent."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
    return ok and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(_TRIM_THRESHOLD_BYTES, 2**31 - 1))) == 1


def choose_device(requested: str | None = None):
    """`requested` if given ("cpu", "cuda", "cuda:1", "mps"), else CUDA when available, else
    CPU. Never asserts a device."""
    import torch

    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def configure(threads: int | None = None, malloc: bool = True) -> None:
    """Set torch's intra-op threads (default: $WORLDSIM_THREADS or torch's own choice) and
    tune malloc."""
    import torch

    threads = threads or int(os.environ.get("WORLDSIM_THREADS", "0")) or None
    if threads:
        torch.set_num_threads(threads)
    if malloc:
        tune_malloc()


def autocast(device, enabled: bool = True):
    """bf16 autocast on CPU and CUDA (a no-op context when disabled)."""
    import contextlib

    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
