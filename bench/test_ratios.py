"""The ratio report (bench/ratios.py): it states the precision every figure was measured in, and the committed
ratios.md is exactly what it makes of the committed summary.json.

These are bench's own checks (plain tests, no benchmark fixture); the test suite runs them beside tests/
(pyproject's testpaths), so the library's tests need not import bench.
"""

import json
from pathlib import Path

from bench import ratios as report

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "bench/results/summary.json"
SAELENS = ROOT / "bench/results/saelens.json"


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


def test_ratios_md_is_what_the_report_makes_of_summary_json():
    """ratios.md is generated (bench/ratios.py): regenerating it from the committed summary.json gives it back
    byte for byte, so every figure in it is the summary's; `python -m bench.ratios --from-summary` redoes it."""
    summary = json.loads(SUMMARY.read_text())
    assert report.markdown(summary) == (ROOT / "bench/results/ratios.md").read_text()


def test_summary_json_embeds_the_committed_saelens_run():
    """summary.json carries a copy of saelens.json's summary (the side-by-side is its own run): it must be the
    committed run's, or ratios.md quotes a run the README no longer does."""
    summary = json.loads(SUMMARY.read_text())
    assert summary["saelens_side_by_side"] == report.side_by_side(SAELENS)
