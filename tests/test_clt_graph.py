"""Replacement graphs with a cross-layer transcoder: the spliced model is the model, a reach-1 CLT gives the
per-layer set's graph, and every edge and attribution equals the intervention it linearises (a feature's
removal subtracts what it writes at every layer it reaches)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from attribution import LogitDiff, feature_index
from attribution.engine import Group, frozen_state, trace
from attribution.saes.clt import CrossLayerTranscoder
from attribution.splice import decompose_clt
from graphs import GraphError, build_graph
from graphs.heads import head_parts
from graphs.replacement import EMBED, build_replacement_graph, direction
from tests.conftest import PROMPTS, tiny_model
from tests.conftest import random_transcoders as transcoders
from tests.test_replacement import F32, Minus

pytestmark = pytest.mark.usefixtures("one_thread")


def random_clt(model, arch="topk", reach=2, seed=0, scale=0.5) -> CrossLayerTranscoder:
    """The random per-layer set of tests/conftest.py with random decoders ahead."""
    clt = CrossLayerTranscoder(list(transcoders(model, arch, seed=seed).values()), reach)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for w in clt.W_ahead:
            w.copy_(scale * torch.randn(w.shape, generator=g, dtype=w.dtype) / w.shape[-1] ** 0.5)
    return clt.requires_grad_(False)


@dataclass
class Written:
    """Layer l's MLP output in the replacement model: held constant, skip path live, less what each row's
    removed nodes wrote there, plus (linear=True) what the graph's features write in response to the rows'
    own inputs at their layers (layer s's features read here from `reads[s]`, filled as the forward runs)."""

    const: torch.Tensor  # [1, pos, d]
    clt: CrossLayerTranscoder
    layer: int
    minus: torch.Tensor  # [rows, pos, d]
    clean_reads: list  # [1, pos, d_in] per layer
    active: list | None  # [pos, d_sae] per layer (None: features held)
    reads: dict  # layer -> the rows' input at that layer, this forward

    def __call__(self, x):
        raise AssertionError("called with its read")

    def at(self, read):
        self.reads[self.layer] = read
        tc = self.clt.layers[self.layer]
        out = self.const + tc.skip(read) - self.minus
        if self.active is not None:
            for s in self.clt.sources(self.layer):
                src = self.clt.layers[s]
                delta = ((self.reads[s] - self.clean_reads[s]) @ src.W_enc) * self.active[s]
                out = out + delta @ self.clt.decoders(s)[:, self.layer - s]
        return out


class _Edit:
    def __init__(self, w: Written):
        self.w, self.reads = w, w.clt.layers[w.layer].hook

    def __call__(self, x, read):
        return self.w.at(read)


def removal_runs(model, clt, graph, metric, linear: bool):
    """Row 0 removes nothing, row 1 + s removes source node s; the metric and each feature's pre-activation."""
    batch = model.tokenize(graph.prompt)
    hooks, targets = clt.hooks, [s.target for s in clt.layers]
    clean = trace(model, batch, capture=[EMBED, *hooks, *targets], freeze=True)
    decs = decompose_clt(clt, [clean.acts[h][0] for h in hooks], [clean.acts[t][0] for t in targets])
    sources = [x for x in graph.full_nodes if x.kind != "metric"]
    n, width, d = len(sources) + 1, batch.width, model.d_model
    minus = [torch.zeros(n, width, d, dtype=model.dtype) for _ in hooks]
    emb = torch.zeros(n, width, d, dtype=model.dtype)
    layer_of = {h: i for i, h in enumerate(hooks)}
    for r, x in enumerate(sources, 1):
        if x.kind == "token":
            emb[r, x.position] = clean.acts[EMBED][0, x.position]
        elif x.kind == "error":
            minus[layer_of[x.hook]][r, x.position] = decs[layer_of[x.hook]].error[x.position]
        else:
            s = layer_of[x.hook]
            for j, v in enumerate(clt.decoders(s)[x.feature]):
                minus[s + j][r, x.position] = x.activation * v
    active = [torch.zeros(width, clt.d_sae, dtype=model.dtype) for _ in hooks]
    for x in graph.full_nodes:
        if x.kind == "feature":
            active[layer_of[x.hook]][x.position, x.feature] = 1.0
    reads, edits = {}, {EMBED: Minus(emb)}
    clean_reads = [clean.acts[h] for h in hooks]
    for L, (h, t) in enumerate(zip(hooks, targets)):
        const = clean.acts[t] - clt.layers[L].skip(clean.acts[h])
        w = Written(const, clt, L, minus[L], clean_reads, active if linear else None, reads)
        edits[t] = _Edit(w)
    tr = trace(
        model, batch, groups=[Group(edits, n=n)], capture=hooks, keep_batch=False, freeze=frozen_state(model, batch)
    )
    vec, pos = direction(model, metric)
    values = {"metric": tr.hidden[:, pos % width] @ vec}
    for x in graph.full_nodes:
        if x.kind == "feature":
            tc = clt.layers[layer_of[x.hook]]
            values[x.id] = tr.acts[x.hook][:, x.position] @ tc.W_enc[:, x.feature] + tc.b_enc[x.feature]
    return sources, values


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
