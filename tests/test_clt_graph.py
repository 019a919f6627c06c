"""Replacement graphs with a cross-layer transcoder: the spliced model is the model, a reach-1 CLT gives the
per-layer set's graph, and every edge and attribution equals the intervention it linearises (a feature's
removal subtracts what it writes at every layer it reaches)."""

from __future__ import annotations

import pytest
import torch

from attribution import LogitDiff, feature_index
from attribution.engine import trace
from attribution.saes.clt import CrossLayerTranscoder
from attribution.splice import decompose_clt
from graphs import GraphError, build_graph
from graphs.heads import head_parts
from graphs.replacement import build_replacement_graph
from tests.conftest import PROMPTS, tiny_model
from tests.conftest import random_transcoders as transcoders
from tests.test_replacement import F32, removal_runs

pytestmark = pytest.mark.usefixtures("one_thread")


def random_clt(model, arch="topk", reach=2, seed=0, scale=0.5) -> CrossLayerTranscoder:
    """The random per-layer set of tests/conftest.py with random decoders ahead."""
    clt = CrossLayerTranscoder(list(transcoders(model, arch, seed=seed).values()), reach)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for w in clt.W_ahead:
            w.copy_(scale * torch.randn(w.shape, generator=g, dtype=w.dtype) / w.shape[-1] ** 0.5)
    return clt.requires_grad_(False)


def _graph(m, clt, prompt=PROMPTS[0], **kw):
    if isinstance(clt, CrossLayerTranscoder):  # build_graph dispatches a CLT to the replacement graph
        g = build_graph(m, clt, prompt, LogitDiff(m, "sad", "happy"), labels=False, progress=False, **kw)
        assert g.info["replacement"] and g.info["reach"] == clt.reach
        return g
    return build_replacement_graph(m, clt, prompt, LogitDiff(m, "sad", "happy"), labels=False, progress=False, **kw)


def test_clt_decomposition_completes_every_mlp_output(family):
    m = tiny_model(family)
    clt = random_clt(m, reach=3)
    batch = m.tokenize(PROMPTS[0])
    hooks, targets = clt.hooks, [s.target for s in clt.layers]
    tr = trace(m, batch, capture=[*hooks, *targets])
    xs, outs = [tr.acts[h][0] for h in hooks], [tr.acts[t][0] for t in targets]
    decs = decompose_clt(clt, xs, outs)
    ys = clt.decode([d.features for d in decs], xs)
    for y, d, out in zip(ys, decs, outs):
        torch.testing.assert_close(y + d.error, out, rtol=0, atol=1e-12)
    # layer 2's output really depends on layer 0's features (reach 3): dropping them changes it
    fs = [d.features for d in decs]
    dropped = clt.decode([torch.zeros_like(fs[0]), *fs[1:]], xs)
    assert (dropped[2] - ys[2]).abs().max() > 1e-3


def test_a_reach_one_clt_gives_the_per_layer_graph():
    m = tiny_model("gemma3")
    tcs = transcoders(m, "topk")
    a = _graph(m, tcs)
    b = _graph(m, CrossLayerTranscoder(list(tcs.values()), reach=1))
    assert [x.id for x in a.full_nodes] == [x.id for x in b.full_nodes]
    ea = {(e.source, e.target): e.weight for e in a.edges}
    eb = {(e.source, e.target): e.weight for e in b.edges}
    assert ea.keys() == eb.keys()
    torch.testing.assert_close(torch.tensor([eb[k] for k in ea]), torch.tensor(list(ea.values())), rtol=1e-6, atol=0)


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_clt_edges_are_direct_effects_in_the_replacement_model(family, arch):
    m = tiny_model(family)
    clt = random_clt(m, arch, reach=2)
    g = _graph(m, clt, max_rows=5)
    assert g.info["active_features"] > 20
    sources, values = removal_runs(m, clt, g, LogitDiff(m, "sad", "happy"), linear=False)
    weights = {(e.source, e.target): e.weight for e in g.edges}
    targets = ["metric"] + [x.id for x in g.full_nodes if x.kind == "feature"]
    measured = torch.stack([values[t][0] - values[t][1:] for t in targets])
    claimed = torch.tensor([[weights.get((s.id, t), 0.0) for s in sources] for t in targets], dtype=torch.float64)
    assert (claimed != 0).sum() > 500
    torch.testing.assert_close(claimed, measured, atol=1e-10 * float(measured.abs().max()), rtol=F32)


def test_clt_attributions_are_removals_with_linear_features(family):
    m = tiny_model(family)
    clt = random_clt(m, "relu", reach=3)
    g = _graph(m, clt, prompt=PROMPTS[1])
    sources, values = removal_runs(m, clt, g, LogitDiff(m, "sad", "happy"), linear=True)
    effect = values["metric"][0] - values["metric"][1:]
    claimed = torch.tensor([x.attribution for x in sources], dtype=torch.float64)
    torch.testing.assert_close(claimed, effect, atol=1e-10 * float(effect.abs().max()), rtol=1e-8)


def test_analyses_for_per_layer_sets_refuse_a_clt_by_name():
    m = tiny_model("gemma3")
    clt = random_clt(m)
    g = _graph(m, clt)
    with pytest.raises(GraphError, match="cross-layer transcoder"):
        head_parts(m, clt, g, LogitDiff(m, "sad", "happy"))


def test_a_clt_graph_is_labelled_by_each_layers_index(tiny_windows, tmp_path, monkeypatch):
    """Labels come from a feature index per layer (clt.layers[L], whose output side is its own layer's write)."""
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(tmp_path / "cache"))
    model, tokens = tiny_windows
    clt = random_clt(model)
    indexes = {t.hook: feature_index(model, t, tokens=tokens, progress=False) for t in clt.layers}
    g = build_graph(model, clt, PROMPTS[0], LogitDiff(model, "sad", "happy"), labels=indexes, progress=False)
    features = [n for n in g.full_nodes if n.kind == "feature"]
    assert features and all(n.label for n in features)
    page = g.prune(0.8, 0.98).to_html(tmp_path / "graph.html").read_text()  # the page says what wrote the features
    assert f"cross-layer transcoder: a feature writes up to {clt.reach} layers" in page
