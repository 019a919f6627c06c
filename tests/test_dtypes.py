"""attribute, ablate, build_graph and training in float32, bfloat16 and float16 models.

Each low-precision result is compared with the float64 result of the same weights (which the other test
modules check against finite differences and direct interventions). Tolerances are on the largest error
relative to the largest float64 value, and were set at 2-3x the worst measured on these tiny models:

| dtype    | attribution, ablation, edges: measured worst | tolerance |
|----------|----------------------------------------------|-----------|
| float32  | 3e-6                                         | 1e-5      |
| float16  | 4e-3 (10 mantissa bits)                      | 1e-2      |
| bfloat16 | 3.4e-2 (8 mantissa bits)                     | 8e-2      |

In bf16 a few features sitting at their threshold switch on or off, so the node sets may differ by ~1%.
float16 runs on the CPU as it is: every op these paths use has a CPU float16 kernel in torch 2.13 (slow,
but correct), so nothing is upcast. SAEs are float32 (as trained), applied to the low-precision model:
activations are cast at the boundary.
"""

from __future__ import annotations

import functools

import pytest
import torch

from attribution import LogitDiff, ablate, attribute
from attribution.saes import build
from attribution.training import TrainConfig, collect, fit
from graphs import build_graph, check
from tests.conftest import PROMPTS, random_sae, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 8e-2}
DTYPES = list(TOL)
IDS = ["fp32", "fp16", "bf16"]
HOOKS = ["resid_post.0", "mlp_out.1", "resid_post.2"]


@functools.cache
def _reference(family: str):
    """The float64 model, its SAEs, attribution and the ablation of its top 20 nodes."""
    m = tiny_model(family, dtype=torch.float64)
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(HOOKS)}
    metric = LogitDiff(m, "sad", "happy")
    attr = attribute(m, saes, PROMPTS[0], metric)
    nodes = attr.top(20)
    return saes, attr, nodes, ablate(m, saes, PROMPTS[0], metric, nodes, progress=False)


def _saes(family: str, dtype=torch.float32):
    ref = _reference(family)[0]
    out = {}
    for h, s in ref.items():
        c = build(s.architecture, s.d_in, s.d_sae, h, dtype=s.W_dec.dtype)
        c.load_state_dict(s.state_dict())
        out[h] = c.to(dtype).requires_grad_(False)
    return out


def _close(got: dict, want: dict, dtype, what: str, min_shared: float = 0.99):
    shared = [k for k in want if k in got]
    assert len(shared) >= min_shared * len(want), f"{what}: only {len(shared)} of {len(want)} in common"
    scale = max(abs(v) for v in want.values())
    err = max(abs(got[k] - want[k]) for k in shared)
    assert err <= TOL[dtype] * scale, f"{what} in {dtype}: error {err:.3g} > {TOL[dtype]} x {scale:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_attribution_and_ablation_in_each_dtype(family, dtype):
    _, attr64, nodes, abl64 = _reference(family)
    m = tiny_model(family, dtype=dtype)
    saes = _saes(family)
    metric = LogitDiff(m, "sad", "happy")
    attr = attribute(m, saes, PROMPTS[0], metric)
    assert m.dtype == dtype and attr.value.dtype == torch.float64 and attr.value.device.type == "cpu"
    _close(
        dict(zip(attr.node_keys(), attr.value.tolist())),
        dict(zip(attr64.node_keys(), attr64.value.tolist())),
        dtype,
        "attribution",
    )
    abl = ablate(m, saes, PROMPTS[0], metric, nodes, progress=False)
    _close(dict(enumerate(abl.effect.tolist())), dict(enumerate(abl64.effect.tolist())), dtype, "ablation")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_batched_ablation_equals_single_in_each_dtype(dtype):
    """The growing batch computes each row as a lone forward would (measured: equal in bf16/fp16, 2e-7 in
    fp32), also with the SAEs in the model's own dtype."""
    m = tiny_model("gemma3", dtype=dtype)
    metric = LogitDiff(m, "sad", "happy")
    for saes in (_saes("gemma3"), _saes("gemma3", dtype)):
        nodes = attribute(m, saes, PROMPTS[0], metric).top(12)
        batched = ablate(m, saes, PROMPTS[0], metric, nodes, progress=False).effect.tolist()
        single = [float(ablate(m, saes, PROMPTS[0], metric, [n], progress=False).effect[0]) for n in nodes]
        _close(dict(enumerate(batched)), dict(enumerate(single)), dtype, "batched vs single ablation")


def _edges(g) -> dict:
    ids = [n.id for n in g.full_nodes]
    return {(ids[s], ids[d]): w for s, d, w in zip(g.src.tolist(), g.dst.tolist(), g.weight.tolist())}


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_graph_in_each_dtype(dtype):
    hooks = ["resid_post.0", "resid_post.2"]
    kw = {"candidates": None, "labels": False, "progress": False}
    ref = tiny_model("gpt2", dtype=torch.float64)
    s64 = {h: random_sae(ref, h, seed=i) for i, h in enumerate(hooks)}
    g64 = build_graph(ref, s64, PROMPTS[0], LogitDiff(ref, "sad", "happy"), **kw)
    m = tiny_model("gpt2", dtype=dtype)
    saes = {h: random_sae(ref, h, seed=i).float() for i, h in enumerate(hooks)}
    g = build_graph(m, saes, PROMPTS[0], LogitDiff(m, "sad", "happy"), **kw)
    # features near their threshold fire in one dtype and not the other, and with them their edges: in bf16
    # 98.7% of the float64 graph's edges are shared on an AVX2 EPYC (bf16 emulated), >= 99% with AMX
    _close(_edges(g), _edges(g64), dtype, "graph edges", min_shared=0.98 if dtype == torch.bfloat16 else 0.99)
    assert check(m, saes, g).faithfulness == pytest.approx(1.0, abs=TOL[dtype])  # the unpruned graph is the model


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_training_on_activations_of_each_dtype(dtype, tmp_path):
    """Activations collected from a model in `dtype` (stored in bf16, as by default) train an SAE."""
    m = tiny_model("llama", dtype=dtype)
    ids = torch.randint(4, 39, (64, 16), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = m.tokenizer.bos_token_id
    cache = collect(m, ["resid_post.1"], ids.split(16), tmp_path, progress=False)
    sae = build("topk", m.d_model, 64, "resid_post.1", k=4, apply_b_dec_to_input=True)
    log = fit(sae, cache.batches("resid_post.1"), TrainConfig(steps=30, batch_size=256, lr=3e-3, progress=False))
    assert torch.isfinite(sae.W_dec).all() and log.explained_variance[-1] > log.explained_variance[0]


@pytest.mark.parametrize("sae_dtype", [torch.float64, torch.bfloat16, torch.float16], ids=["fp64", "bf16", "fp16"])
def test_sae_in_another_dtype_than_the_model(sae_dtype):
    """An SAE keeps its own dtype; features come out in it, the error term in the wider of the two, and what
    goes back into the model in the model's dtype, so splicing stays exact whatever the SAE's precision."""
    from attribution import run_with_saes

    m = tiny_model("gemma3", dtype=torch.float32)
    sae = _saes("gemma3", sae_dtype)["resid_post.0"]
    run = run_with_saes(m, {sae.hook: sae}, PROMPTS)
    assert sae.W_dec.dtype == sae_dtype and run.features[sae.hook].dtype == sae_dtype
    assert run.errors[sae.hook].dtype == torch.promote_types(sae_dtype, torch.float32)
    assert (run.logits - m.logits(PROMPTS)).abs().max() <= 1e-4
    attr = attribute(m, {sae.hook: sae}, PROMPTS[0], LogitDiff(m, "sad", "happy"))
    assert len(attr) > 0 and torch.isfinite(attr.value).all()


def test_float16_overflow_is_named():
    """Activations beyond float16's range (gemma-3-270m's do) give a NumericalError that says so."""
    from attribution import NumericalError

    m = tiny_model("gpt2", dtype=torch.float16)
    with torch.no_grad():
        m.hf.transformer.h[2].mlp.c_proj.weight.mul_(3e4)  # the last block writes ~1e5 into the residual
    with pytest.raises(NumericalError, match="float16 holds at most 65504"):
        attribute(m, {"resid_post.0": _saes("gpt2")["resid_post.0"]}, PROMPTS[0], LogitDiff(m, "sad", "happy"))
