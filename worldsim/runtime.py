"""Process-level settings for fast CPU work, and device choice. Call `configure()` once at
the start of a command (never at import)."""

from __future__ import annotations

import contextlib
import contextvars
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


# `autocast(device, FRAMES)`: bf16 for the frame networks only (the VAE, the refiner, the
# reward model: convolutions over whole frames, which bf16 matrix units run 1.2-1.6x faster at
# batch 1, benchmarks/vae_speed.py), fp32 for the DiT, whose few-row matmuls at batch 1 gain
# nothing from bf16 on CPU and pay for the casts. The networks that read frames ask
# `frames_autocast` whether to use it.
FRAMES = "frames"
_frames_bf16: contextvars.ContextVar[bool] = contextvars.ContextVar("frames_bf16", default=False)


def has_bf16_matrix_units(device) -> bool:
    """Whether `device` runs bf16 matrix products in hardware: a CUDA GPU that supports bf16, a
    CPU with AMX (the `amx_bf16` flag of Linux's /proc/cpuinfo; elsewhere unknown, so False)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


def bf16_setting(bf16: bool, bf16_frames: bool | None, device=None) -> bool | str:
    """The `autocast` setting of a command's --bf16 / --bf16-frames flags: --bf16 (every
    network) wins, then --bf16-frames; None for the latter: "frames" where `device` has bf16
    matrix units (`has_bf16_matrix_units`), fp32 elsewhere."""
    if bf16:
        return True
    if bf16_frames is None:
        bf16_frames = has_bf16_matrix_units(choose_device(device))
    return FRAMES if bf16_frames else False


def check_bf16(value) -> bool | str:
    """A valid `bf16` setting: False (fp32), True (everything under bf16 autocast) or
    "frames" (the frame networks only, see FRAMES)."""
    if value is True or value is False or value == FRAMES:
        return value
    raise ValueError(f"bf16 must be True, False or {FRAMES!r}, got {value!r}")


def autocast(device, enabled: bool | str = True):
    """bf16 autocast on CPU and CUDA (a no-op context when disabled); `enabled="frames"`: only
    where `frames_autocast` is asked (the frame networks), the rest stays fp32."""
    import torch

    if check_bf16(enabled) == FRAMES:
        return _frames_only()
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def _frames_only():
    token = _frames_bf16.set(True)
    try:
        yield
    finally:
        _frames_bf16.reset(token)


def frames_autocast(device):
    """What a frame network runs under: bf16 autocast inside `autocast(device, "frames")`,
    else nothing of its own (an enclosing full autocast still applies)."""
    return autocast(device, _frames_bf16.get())
