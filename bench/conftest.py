"""Shared fixtures and the ratio report: every figure is a ratio of medians measured in the same run.

Run: python -m pytest bench/ (writes .benchmarks/ratios.json and prints the table).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attribution import LogitDiff, load_model
from attribution.saes import build

PROMPT = "Fact: The capital city of the state where Kobe Bryant played basketball for the Los Angeles Lakers is"
MEDIANS: dict[str, float] = {}
# name: (numerator, denominator, denominator multiplier, target, what)
RATIOS = {
    "grad_x_act": ("grad_x_act_18_layers", "plain_forward", 1, 4.0, "attribution / one plain forward"),
    "grad_x_act_vs_body": (
        "grad_x_act_18_layers",
        "forward_to_final_norm",
        1,
        None,
        "attribution / forward without unembedding",
    ),
    "atp": ("atp_18_layers", "plain_forward", 1, None, "attribution patching / one plain forward"),
    "ig": ("ig_18_layers_10_steps", "plain_forward", 1, None, "integrated gradients (10 steps) / one forward"),
    "ablations": ("ablate_256_nodes", "plain_forward", 256, 0.25, "256 batched ablations / 256 plain forwards"),
    "splice": ("forward_with_18_saes", "plain_forward", 1, None, "forward with 18 SAEs spliced / plain forward"),
}


@pytest.fixture(scope="session")
def model():
    torch.set_num_threads(torch.get_num_threads())
    return load_model()


@pytest.fixture(scope="session")
def prompt(model):
    assert len(model.encode(PROMPT)) == 20
    return PROMPT


@pytest.fixture(scope="session")
def metric(model):
    return LogitDiff(model, " Sacramento", " Albany")


@pytest.fixture(scope="session")
def saes(model):
    """TopK SAEs (8,192 features, k = 32) at every residual layer: the shapes and sparsity of real ones."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for layer in range(model.n_layers):
        sae = build("topk", model.d_model, 8192, f"resid_post.{layer}", k=32)
        with torch.no_grad():
            sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(8192, model.d_model, generator=g), dim=-1))
            sae.W_enc.copy_(sae.W_dec.T)
        out[sae.hook] = sae.requires_grad_(False)
    return out


@pytest.fixture
def record(benchmark, request):
    """Call after benchmark(...): keeps the median under the test's name for the ratio table."""

    def done():
        MEDIANS[request.node.name.removeprefix("test_")] = benchmark.stats.stats.median

    return done


def pytest_sessionfinish(session):
    if not MEDIANS:
        return
    rows = {}
    for name, (num, den, mult, target, what) in RATIOS.items():
        if num in MEDIANS and den in MEDIANS:
            ratio = MEDIANS[num] / (MEDIANS[den] * mult)
            rows[name] = {
                "ratio": ratio,
                "target": target,
                "what": what,
                "met": None if target is None else ratio <= target,
            }
    out = Path(".benchmarks")
    out.mkdir(exist_ok=True)
    (out / "ratios.json").write_text(json.dumps({"medians_s": MEDIANS, "ratios": rows}, indent=2))
    lines = ["", "ratios (medians from this run):"]
    for r in rows.values():
        tgt = "" if r["target"] is None else f"  target <= {r['target']}: {'met' if r['met'] else 'MISSED'}"
        lines.append(f"  {r['what']:<48} {r['ratio']:7.3f}{tgt}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("\n".join(lines))
