"""Replacement graphs on tiny random models of all four families, every number checked against an
intervention in the replacement model itself (clean norm factors and attention patterns held, engine
frozen_state): edges are direct effects with every other node held, node attributions are the metric change
of removing the node with downstream features linear, and the scores follow circuit-tracer's definitions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch

from attribution import LogitDiff
from attribution.engine import Group, Splice, frozen_state, trace
from attribution.saes.clt import CrossLayerTranscoder
from attribution.splice import decompose, decompose_clt
from graphs import GraphError, build_graph
from graphs.replacement import EMBED, build_replacement_graph, direction
from graphs.scores import graph_scores
from tests.conftest import ARCHS, PROMPTS, tiny_model
from tests.conftest import random_transcoders as transcoders

pytestmark = pytest.mark.usefixtures("one_thread")
# Graph edge weights are stored in float32 (graphs.graph: memory), each its float64 value rounded once: exact to
# eps / 2 of its value, so edges are compared with the float64 interventions at rtol=F32 (node values stay float64).
F32 = torch.finfo(torch.float32).eps


@dataclass
class Replaced:
    """An MLP output in the replacement model: held constant, skip path live, less each row's removed node,
    plus (linear=True) the graph's active features responding linearly to the rows' own input."""

    const: torch.Tensor  # [1, pos, d]
    tc: object
    minus: torch.Tensor  # [rows, pos, d]
    clean_read: torch.Tensor  # [1, pos, d_in]
    active: torch.Tensor | None  # [pos, d_sae] bool: features that respond (None: held)

    @property
    def reads(self):
        return self.tc.hook

    def __call__(self, x, read):
        out = self.const + self.tc.skip(read) - self.minus
        if self.active is not None:
            out = out + (((read - self.clean_read) @ self.tc.W_enc) * self.active) @ self.tc.W_dec
        return out


@dataclass
class Minus:
    delta: torch.Tensor

    def __call__(self, x):
        return x - self.delta


@dataclass
class Written:
    """Layer `layer`'s MLP output in the replacement model of a cross-layer transcoder (a per-layer set is one of
    reach 1): held constant, skip path live, less what each row's removed nodes wrote there, plus (linear=True)
    what the graph's features of every layer reaching it write in response to the rows' own inputs (each layer's
    input recorded in `inputs` as the forward passes it)."""

    const: torch.Tensor  # [1, pos, d]
    clt: CrossLayerTranscoder
    layer: int
    minus: torch.Tensor  # [rows, pos, d]
    clean_reads: list  # [1, pos, d_in] per layer
    active: list | None  # [pos, d_sae] bool per layer: features that respond (None: held)
    inputs: dict  # layer -> the rows' input there, this forward

    @property
    def reads(self):
        return self.clt.layers[self.layer].hook

    def __call__(self, x, read):
        self.inputs[self.layer] = read
        out = self.const + self.clt.layers[self.layer].skip(read) - self.minus
        if self.active is not None:
            for s in self.clt.sources(self.layer):
                delta = ((self.inputs[s] - self.clean_reads[s]) @ self.clt.layers[s].W_enc) * self.active[s]
                out = out + delta @ self.clt.decoders(s)[:, self.layer - s]
        return out


def removal_runs(model, tcs, graph, metric, linear: bool, extra: dict | None = None):
    """Row 0 removes nothing, row 1 + s removes source node s (what it writes subtracted where it is added: a
    cross-layer transcoder's feature at every layer it reaches); returns the sources and, per row, every feature
    node's pre-activation and the metric. tcs: {hook: transcoder} or a CrossLayerTranscoder. extra: more edits
    applied to every row (tests/test_heads.py: heads' OV zeroed)."""
    clt = tcs if isinstance(tcs, CrossLayerTranscoder) else CrossLayerTranscoder(list(tcs.values()), reach=1)
    batch = model.tokenize(graph.prompt)
    hooks, targets = clt.hooks, [t.target for t in clt.layers]
    clean = trace(model, batch, capture=[EMBED, *hooks, *targets], freeze=True)
    decs = decompose_clt(clt, [clean.acts[h][0] for h in hooks], [clean.acts[t][0] for t in targets])
    sources = [x for x in graph.full_nodes if x.kind != "metric"]
    n, width, d = len(sources) + 1, batch.width, model.d_model
    emb = torch.zeros(n, width, d, dtype=model.dtype)
    minus = [torch.zeros(n, width, d, dtype=model.dtype) for _ in hooks]
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
    edits, inputs, clean_reads = {EMBED: Minus(emb)}, {}, [clean.acts[h] for h in hooks]
    for L, (h, t) in enumerate(zip(hooks, targets)):
        const = clean.acts[t] - clt.layers[L].skip(clean.acts[h])
        edits[t] = Written(const, clt, L, minus[L], clean_reads, active if linear else None, inputs)
    edits.update(extra or {})
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


@pytest.mark.parametrize("arch", list(ARCHS))
def test_edges_are_direct_effects_in_the_replacement_model(family, arch):
    m = tiny_model(family)
    tcs = transcoders(m, arch, skip=arch != "jumprelu")
    metric = LogitDiff(m, "sad", "happy")
    g = build_replacement_graph(m, tcs, PROMPTS[0], metric, labels=False, progress=False, batch_size=7)
    assert g.info["active_features"] > 20
    sources, values = removal_runs(m, tcs, g, metric, linear=False)
    weights = {(e.source, e.target): e.weight for e in g.edges}
    targets = ["metric"] + [x.id for x in g.full_nodes if x.kind == "feature"]
    measured, claimed = [], []
    for t in targets:
        effect = values[t][0] - values[t][1:]  # [sources]: removing s lowers t by its direct effect
        measured.append(effect)
        claimed.append(torch.tensor([weights.get((s.id, t), 0.0) for s in sources], dtype=torch.float64))
    measured, claimed = torch.stack(measured), torch.stack(claimed)
    assert (claimed != 0).sum() > 1000
    torch.testing.assert_close(claimed, measured, atol=1e-10 * float(measured.abs().max()), rtol=F32)
    # a feature's pre-activation is its activation on the clean prompt (the rows' pre-activations at row 0)
    for x in g.full_nodes[:]:
        if x.kind == "feature":
            assert values[x.id][0] == pytest.approx(x.activation, rel=1e-5, abs=1e-8)  # HF's norms: float32


def test_attributions_are_removals_with_linear_features(family):
    m = tiny_model(family)
    tcs = transcoders(m, "relu")
    metric = LogitDiff(m, "sad", "happy")
    g = build_replacement_graph(m, tcs, PROMPTS[1], metric, labels=False, progress=False)
    sources, values = removal_runs(m, tcs, g, metric, linear=True)
    effect = values["metric"][0] - values["metric"][1:]
    claimed = torch.tensor([x.attribution for x in sources], dtype=torch.float64)
    torch.testing.assert_close(claimed, effect, atol=1e-10 * float(effect.abs().max()), rtol=1e-8)
    # the metric node holds the metric of the real model
    assert g.full_nodes[-1].activation == pytest.approx(float(values["metric"][0]), rel=1e-5)


def test_influence_ordered_cap_keeps_the_most_influential_rows():
    m = tiny_model("gemma3")
    tcs = transcoders(m, "relu")
    metric = LogitDiff(m, "sad", "happy")
    full = build_replacement_graph(m, tcs, PROMPTS[0], metric, labels=False, progress=False)
    capped = build_replacement_graph(
        m, tcs, PROMPTS[0], metric, labels=False, progress=False, max_feature_nodes=40, batch_size=8
    )
    feats = [x for x in capped.full_nodes if x.kind == "feature"]
    assert len(feats) == 40
    # every edge the capped graph has is the full graph's edge (rows are exact whatever the order)
    full_w = {(e.source, e.target): e.weight for e in full.edges}
    for e in capped.edges[:500]:
        assert e.weight == pytest.approx(full_w[(e.source, e.target)], rel=1e-9, abs=1e-12)
    # the first rows chosen are the features with the largest direct effect on the metric
    direct = {e.source: abs(e.weight) for e in full.edges if e.target == "metric" and ":f" in e.source}
    best = max(direct, key=direct.get)
    assert best in {x.id for x in feats}


def test_pruning_keeps_tokens_and_metric_and_scores_match_the_definitions():
    m = tiny_model("llama")
    tcs = transcoders(m, "topk")
    metric = LogitDiff(m, "sad", "happy")
    g = build_replacement_graph(m, tcs, PROMPTS[0], metric, labels=False, progress=False)
    p = g.prune(node_threshold=0.6, edge_threshold=0.9)
    kinds = [x.kind for x in p.nodes]
    assert kinds.count("token") == m.tokenize(PROMPTS[0]).width  # <bos> is a token node too
    assert kinds[-1] == "metric" and 0 < kinds.count("feature") < kinds.count("feature") + len(g.full_nodes)
    rep, comp = _reference_scores(g)
    s = graph_scores(g)
    assert s.replacement == pytest.approx(rep, rel=1e-9) and s.completeness == pytest.approx(comp, rel=1e-9)
    sp = graph_scores(p)
    assert 0 <= sp.replacement <= s.replacement + 1e-12 and 0 <= sp.completeness <= 1
    # "removed": circuit-tracer's formulas on the pruned adjacency (dropped nodes' and edges' weights zeroed)
    kept = p.edge_mask & p.node_mask[p.src] & p.node_mask[p.dst]
    masked = dataclasses.replace(g, weight=torch.where(kept, g.weight, torch.zeros_like(g.weight)))
    assert graph_scores(p, dropped="removed") == pytest.approx(_reference_scores(masked), rel=1e-9)


def _reference_scores(g):
    """circuit-tracer's compute_graph_scores, written out densely from its definition."""
    n = len(g.full_nodes)
    A = torch.zeros(n, n, dtype=torch.float64)
    A[g.dst, g.src] = g.weight.double()  # the float32 weights, exactly
    N = A.abs()
    N = N / N.sum(1, keepdim=True).clamp_min(1e-10)
    w = torch.zeros(n, dtype=torch.float64)
    w[-1] = 1.0
    inf, cur = torch.zeros(n, dtype=torch.float64), w @ N
    while cur.any():
        inf += cur
        cur = cur @ N
    kind = [x.kind for x in g.full_nodes]
    tok = inf[[i for i, k in enumerate(kind) if k == "token"]].sum()
    err_idx = [i for i, k in enumerate(kind) if k == "error"]
    rep = tok / (tok + inf[err_idx].sum())
    non_err = 1 - N[:, err_idx].sum(1)
    out = inf + w
    return float(rep), float((non_err * out).sum() / out.sum())


def test_transcoder_splice_matches_the_decomposition(family):
    m = tiny_model(family)
    tcs = transcoders(m, "jumprelu")
    h = "resid_mid.1"
    tc = tcs[h]
    batch = m.tokenize(PROMPTS[0])
    clean = trace(m, batch, capture=[h, tc.target])
    d = decompose(tc, clean.acts[h], clean.acts[tc.target])
    # the spliced MLP output decode(f) + skip + error is the MLP's output, so the logits are the model's
    recon = tc.decode(d.features) + tc.skip(clean.acts[h]) + d.error
    torch.testing.assert_close(recon, clean.acts[tc.target], rtol=0, atol=1e-12)
    f = d.features[0]
    p, i = (f != 0).nonzero()[0].tolist()
    keep = torch.ones(1, batch.width, tc.d_sae, dtype=torch.bool)
    keep[0, p, i] = False
    ablated = trace(m, batch, edits={tc.target: Splice(tc, keep, torch.zeros(1))}, capture=[tc.target])
    expect = clean.acts[tc.target].clone()
    expect[0, p] -= f[p, i] * tc.W_dec[i]
    torch.testing.assert_close(ablated.acts[tc.target], expect, rtol=0, atol=1e-12)


def test_build_graph_dispatches_and_refuses_bad_sets():
    m = tiny_model("gemma3")
    tcs = transcoders(m, "relu")
    metric = LogitDiff(m, "sad", "happy")
    g = build_graph(m, tcs, PROMPTS[0], metric, labels=False, progress=False)
    assert g.info["replacement"] and len(g.hooks) == m.n_layers
    partial = dict(list(tcs.items())[:-1])
    with pytest.raises(Exception, match="no transcoder for layers"):
        build_graph(m, partial, PROMPTS[0], metric, labels=False, progress=False)
    with pytest.raises(Exception, match="single logit difference"):
        build_replacement_graph(m, tcs, PROMPTS[0], lambda logits: logits[..., 0], labels=False, progress=False)
    # options that only residual-SAE graphs have are refused, not silently ignored; their defaults pass
    for option in ({"candidates": 8}, {"error_nodes": 2}, {"candidates": None, "error_nodes": 0}):
        with pytest.raises(GraphError, match="max_feature_nodes"):
            build_graph(m, tcs, PROMPTS[0], metric, labels=False, progress=False, **option)


@pytest.mark.parametrize("fam", ["gemma3", "llama"])
def test_transcoders_reading_the_normalised_mlp_input(fam):
    """mlp_in readers (Gemma Scope 2's layout): the MLP norm's frozen scale sits on the path to every read."""
    m = tiny_model(fam)
    tcs = transcoders(m, "relu", reads="mlp_in")
    metric = LogitDiff(m, "sad", "happy")
    g = build_replacement_graph(m, tcs, PROMPTS[0], metric, labels=False, progress=False, batch_size=5)
    sources, values = removal_runs(m, tcs, g, metric, linear=False)
    weights = {(e.source, e.target): e.weight for e in g.edges}
    for t in ["metric", *[x.id for x in g.full_nodes if x.kind == "feature"][:40]]:
        effect = values[t][0] - values[t][1:]
        claimed = torch.tensor([weights.get((s.id, t), 0.0) for s in sources], dtype=torch.float64)
        torch.testing.assert_close(claimed, effect, atol=1e-10 * float(effect.abs().max()), rtol=F32)
