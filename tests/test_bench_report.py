"""The benchmark report states the precision every figure was measured in."""

from bench import report


def test_summary_carries_the_cpu_capability_and_compute_dtype():
    bench = {
        "name": "test_sae_train_topk[steady]",
        "fullname": "bench/test_sae.py::test_sae_train_topk[steady]",
        "stats": {"mean": 1.0, "median": 1.0, "stddev": 0.0, "min": 1.0, "rounds": 2},
        "extra_info": {"dtype": "float32 matmuls", "tokens_per_s": 1000.0},
    }
    machine = {
        "cpu": {"brand_raw": "AMD EPYC"},
        "cpu_capability": "AVX2",
        "bf16_native": False,
        "bf16_evidence": "no amx_bf16/avx512_bf16 flag",
        "compute_dtype": "float32",
        "compute_dtype_override": None,
        "model_dtype": "float32",
    }
    summary = report.summarize([bench], machine=machine)
    assert summary["machine"]["cpu_capability"] == "AVX2" and summary["machine"]["bf16_native"] is False
    md = report.markdown(summary)
    assert "CPU capability AVX2, bf16 not native (no amx_bf16/avx512_bf16 flag), compute dtype float32" in md
    assert "| float32 matmuls |" in md
    assert "1,000 tokens/s (float32 matmuls)" in report.terminal(summary)
    assert "not recorded" in report.precision({})
