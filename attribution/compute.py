"""Which dtype to compute in, chosen by what the hardware multiplies natively.

bfloat16 matmuls are ~3.5x faster than float32 on CPUs with AMX or AVX512-BF16, but ~200x slower on CPUs
without them (an AVX2-only EPYC: 115 GFLOP/s in float32, 0.5 in bfloat16), so a hard-coded bf16 path is a
trap on half the machines. Every low-precision path asks `compute_dtype(device)` instead:

- CPU: bfloat16 where /proc/cpuinfo lists amx_bf16 or avx512_bf16; where there are no x86 flags to read
  (not Linux, or ARM), a small bf16 vs fp32 matmul is timed once per process (bf16 chosen if it takes at
  most twice the fp32 time; emulated bf16 takes ~100x). Otherwise float32.
- CUDA: bfloat16 where the GPU does it natively (Ampere and later), else float32. float16 is not chosen:
  gemma's residual stream holds values that overflow its range (max 65504) and it would need loss scaling
  in training.
- anything else: float32.
- $ATTRIBUTION_COMPUTE_DTYPE (float32, bfloat16, float16 or auto) overrides the choice everywhere.

Rule: lower precision is applied through autocast to float32 models only; a model already in bf16/fp16
runs as it is, and a float64 model is never cast (autocast leaves float64 alone).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import torch

from attribution.errors import AttributionError

ENV = "ATTRIBUTION_COMPUTE_DTYPE"
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
}


def parse_dtype(value) -> torch.dtype:
    """A torch.dtype from a dtype or its name ('float32', 'bf16', ...)."""
    if isinstance(value, torch.dtype):
        return value
    try:
        return _NAMES[str(value).lower().removeprefix("torch.")]
    except KeyError:
        raise AttributionError(f"unknown dtype {value!r}: use float32, bfloat16 or float16") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo (the same on every core here), or None where
    there is none to read (not Linux, or no such line)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def cpu_flags() -> set[str] | None:
    """An x86 CPU's feature flags from /proc/cpuinfo, or None where there are none to read (not Linux, or
    not x86: an ARM CPU's "bf16" feature says nothing of how fast torch's kernels use it, so it is timed)."""
    flags = _cpuinfo("flags")
    return None if flags is None else set(flags.split())


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo ("" where there is none)."""
    return _cpuinfo("model name") or ""


@functools.cache
def _cpu_bf16() -> tuple[bool, str]:
    """(native bf16 matmuls?, how we know), decided once per process."""
    flags = cpu_flags()
    if flags is not None:
        found = sorted(set(BF16_FLAGS) & flags)
        return bool(found), ",".join(found) or "no amx_bf16/avx512_bf16 flag"
    fp32, bf16 = _matmul_seconds(torch.float32), _matmul_seconds(torch.bfloat16)
    return bf16 <= 2 * fp32, f"measured: bf16 matmul {bf16 / fp32:.1f}x the fp32 time"


def _matmul_seconds(dtype: torch.dtype, n: int = 256) -> float:
    """Best of 3 timings of an n x n matmul: ~1 ms in fp32, ~70 ms in bf16 where bf16 is emulated."""
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(dtype)
    a @ a  # warm-up: first calls pay for kernel selection
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return best


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if hasattr(device, "device") and not isinstance(device, (str, torch.device)):
        device = device.device  # a Model, a tensor, a module with .device
    return torch.device(device)


def native_bf16(device=None) -> bool:
    """Whether `device` (default the CPU) multiplies bfloat16 natively, i.e. faster than float32."""
    device = _device(device)
    if device.type == "cpu":
        return _cpu_bf16()[0]
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch without the argument
            return torch.cuda.is_bf16_supported()
    return False


def bf16_evidence(device=None) -> str:
    """Why native_bf16 said what it said (for benchmark reports)."""
    device = _device(device)
    if device.type == "cpu":
        return _cpu_bf16()[1]
    return f"{device.type}: " + ("native" if native_bf16(device) else "not native")


def compute_dtype(device=None) -> torch.dtype:
    """The dtype low-precision paths use on `device`: $ATTRIBUTION_COMPUTE_DTYPE, else bfloat16 where it is
    native, else float32."""
    override = os.environ.get(ENV, "").strip()
    if override and override.lower() != "auto":
        try:
            return parse_dtype(override)
        except AttributionError:
            raise AttributionError(
                f"${ENV}={override!r} is not a dtype: set it to float32, bfloat16, float16 or auto"
            ) from None
    return torch.bfloat16 if native_bf16(device) else torch.float32


def resolve(dtype, device=None) -> torch.dtype:
    """An explicit dtype (or name) as given; None: compute_dtype(device)."""
    return compute_dtype(device) if dtype is None else parse_dtype(dtype)


def autocast(device, dtype: torch.dtype | None):
    """torch.autocast on `device`'s type in `dtype`; a no-op for float32/float64/None."""
    if dtype is None or dtype in (torch.float32, torch.float64):
        return contextlib.nullcontext()
    return torch.autocast(_device(device).type, dtype=dtype)


def run_dtype(model, dtype=None) -> torch.dtype:
    """The dtype `model`'s matmuls run in under model_autocast: its own unless it is float32. Cache keys carry
    it, since bf16 and float32 runs of the same model give different samples and activations."""
    return model.dtype if model.dtype != torch.float32 else resolve(dtype, model.device)


def model_autocast(model, dtype=None):
    """Autocast for running `model`: in `dtype` (default: compute_dtype of its device), and only when the
    model is float32 (a bf16/fp16 model already computes in its own dtype; float64 is for exactness)."""
    if model.dtype != torch.float32:
        return contextlib.nullcontext()
    return autocast(model.device, resolve(dtype, model.device))


def machine(device=None) -> dict:
    """What a timing was measured on, for result files: the CPU kind (AMX, AVX-512 bf16, or neither: bf16
    ~200x slower than float32 there), torch's view of it, threads, and the dtype low precision runs in."""
    flags = cpu_flags() or set()
    kind = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "no native bf16"
    if flags and kind == "no native bf16":
        kind += " (AVX2)" if "avx2" in flags else ""
    dev = _device(device)
    return {
        "cpu_kind": kind,
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "compute_dtype": dtype_name(compute_dtype(dev)),
        "torch": torch.__version__,
    }
