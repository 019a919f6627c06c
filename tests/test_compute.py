"""The compute dtype is chosen by what the hardware multiplies natively, and can be overridden."""

from __future__ import annotations

import pytest
import torch

from attribution import compute
from attribution.errors import AttributionError

AMX = "fpu vme sse avx2 avx512f avx512bw amx_bf16 amx_tile amx_int8 avx512_bf16"  # Sapphire Rapids and later
AVX2 = "fpu vme sse sse4_2 avx avx2 fma"  # e.g. an AMD EPYC without AVX512-BF16: bf16 matmuls ~200x slower


@pytest.fixture
def cpuinfo(monkeypatch, tmp_path):
    """Point the flag reader at a fake /proc/cpuinfo, clearing the per-process cache around the test."""
    monkeypatch.delenv(compute.ENV, raising=False)

    def use(flags: str | None):
        compute._cpu_bf16.cache_clear()
        if flags is None:
            monkeypatch.setattr(compute, "cpu_flags", lambda: None)
        else:
            monkeypatch.setattr(compute, "cpu_flags", lambda: set(flags.split()))

    yield use
    compute._cpu_bf16.cache_clear()


@pytest.mark.parametrize(("flags", "native", "dtype"), [(AMX, True, torch.bfloat16), (AVX2, False, torch.float32)])
def test_cpu_choice_follows_the_flags(cpuinfo, flags, native, dtype):
    cpuinfo(flags)
    assert compute.native_bf16("cpu") is native
    assert compute.compute_dtype("cpu") == dtype
    assert compute.compute_dtype() == dtype  # the CPU is the default device


def test_unreadable_flags_are_measured_once(cpuinfo, monkeypatch):
    cpuinfo(None)
    calls = []

    def fake(dtype, n=256):
        calls.append(dtype)
        return 0.001 if dtype == torch.float32 else 0.2  # emulated bf16: 200x slower

    monkeypatch.setattr(compute, "_matmul_seconds", fake)
    assert compute.compute_dtype("cpu") == torch.float32
    assert compute.compute_dtype("cpu") == torch.float32
    assert len(calls) == 2  # one fp32 and one bf16 timing, then cached
    assert "measured" in compute.bf16_evidence("cpu")


def test_environment_override(cpuinfo, monkeypatch):
    cpuinfo(AVX2)
    monkeypatch.setenv(compute.ENV, "bfloat16")
    assert compute.compute_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv(compute.ENV, "auto")
    assert compute.compute_dtype("cpu") == torch.float32
    cpuinfo(AMX)
    monkeypatch.setenv(compute.ENV, "float32")
    assert compute.compute_dtype("cpu") == torch.float32
    monkeypatch.setenv(compute.ENV, "bf15")
    with pytest.raises(AttributionError, match=compute.ENV):
        compute.compute_dtype("cpu")


def test_autocast_is_a_no_op_in_float32():
    a = torch.randn(4, 4)
    with compute.autocast("cpu", torch.float32):
        assert (a @ a).dtype == torch.float32
    with compute.autocast("cpu", torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16


def test_model_autocast_only_casts_float32_models(cpuinfo, monkeypatch):
    class Fake:
        device = torch.device("cpu")

    cpuinfo(AMX)
    a = torch.randn(4, 4, dtype=torch.float64)
    for dtype, expect in ((torch.float32, torch.bfloat16), (torch.float64, torch.float64)):
        m = Fake()
        m.dtype = dtype
        with compute.model_autocast(m):
            assert (a.to(dtype) @ a.to(dtype)).dtype == expect
    m.dtype = torch.float32
    with compute.model_autocast(m, "float32"):  # an explicit dtype wins over the choice
        assert (a.float() @ a.float()).dtype == torch.float32


def test_cpu_flags_readable_here():
    flags = compute.cpu_flags()
    assert flags is None or isinstance(flags, set)
