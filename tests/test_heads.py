"""Edges split by attention head (graphs.heads) on tiny random models of every family: the parts sum to the
edge, and each is an intervention in the frozen replacement model (clean norm factors and patterns held):
the direct part is the edge with every head's OV zeroed, head h of layer L's part the edge with the heads
zeroed before L and all but h at L, less the edge with the heads zeroed up to L."""

from __future__ import annotations

import json

import pytest
import torch

from attribution import LogitDiff
from attribution.engine import trace
from graphs import GraphError
from graphs.graph import Graph
from graphs.heads import head_parts
from graphs.replacement import build_replacement_graph
from tests.conftest import PROMPTS, tiny_model
from tests.conftest import random_transcoders as transcoders
from tests.test_graph_html import browser, chromium, offline_and_clean, open_page, screenshot  # noqa: F401
from tests.test_replacement import removal_runs

pytestmark = pytest.mark.usefixtures("one_thread")
F32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def built():
    out = {}
    for fam in ("gemma3", "llama", "gpt2", "neox"):
        m = tiny_model(fam)
        tcs = transcoders(m, "relu")
        metric = LogitDiff(m, "sad", "happy")
        g = build_replacement_graph(m, tcs, PROMPTS[1], metric, labels=False, progress=False, batch_size=7)
        out[fam] = (m, tcs, metric, g)
    return out


class _Zero:
    """attn_z with the given heads' columns zeroed (their OV carries nothing)."""

    def __init__(self, heads: list[int], d_head: int):
        self.heads, self.d_head = heads, d_head

    def __call__(self, x):
        keep = torch.ones(x.shape[-1], dtype=x.dtype)
        for h in self.heads:
            keep[h * self.d_head : (h + 1) * self.d_head] = 0
        return x * keep


def _effects(model, tcs, graph, metric, zero: dict[int, list[int]]) -> dict[tuple[str, str], float]:
    """Every (source, target) direct effect with the heads `zero` ({layer: heads}) zeroed: row 0 removes
    nothing, row 1 + s removes source s (tests/test_replacement.removal_runs with those heads zeroed)."""
    n_heads = model.hf.config.num_attention_heads
    d_head = trace(model, model.tokenize(graph.prompt), capture=["attn_z.0"]).acts["attn_z.0"].shape[-1] // n_heads
    heads = {f"attn_z.{layer}": _Zero(h, d_head) for layer, h in zero.items()}
    sources, values = removal_runs(model, tcs, graph, metric, linear=False, extra=heads)
    out = {}
    for t in graph.full_nodes:
        if t.kind not in ("metric", "feature"):
            continue
        v = values["metric" if t.kind == "metric" else t.id]
        for r, s in enumerate(sources, 1):
            out[(s.id, t.id)] = float(v[0] - v[r])
    return out


@pytest.mark.parametrize("fam", ["gemma3", "llama", "gpt2", "neox"])
def test_head_parts_sum_to_the_edge_and_are_interventions(built, fam):
    m, tcs, metric, g = built[fam]
    n_heads, n_layers = m.hf.config.num_attention_heads, m.n_layers
    p = g.prune(0.8, 0.98)
    hp = head_parts(m, tcs, p, metric, top=n_layers * n_heads, batch_size=6)  # every head kept: no remainder
    assert len(hp.edge) == int(p.edge_mask.count_nonzero()) > 50
    assert hp.rest.abs().max() == 0
    # the parts sum to the edge (the graph's float32 weight)
    total = hp.direct.double() + hp.value.double().sum(1)
    w = g.weight[hp.edge].double()
    torch.testing.assert_close(total, w, rtol=4 * F32, atol=1e-9 * float(w.abs().max()))
    assert hp.gap < 1e-6
    ids = [x.id for x in g.full_nodes]
    pairs = [(ids[int(g.src[e])], ids[int(g.dst[e])]) for e in hp.edge]
    scale = float(w.abs().max())

    def check(claimed: torch.Tensor, measured: dict) -> None:
        want = torch.tensor([measured[k] for k in pairs], dtype=torch.float64)
        torch.testing.assert_close(claimed.double(), want, rtol=4 * F32, atol=1e-6 * scale)

    every = list(range(n_heads))
    check(hp.direct, _effects(m, tcs, g, metric, {L: every for L in range(n_layers)}))
    part = torch.zeros(len(pairs), n_layers, n_heads, dtype=torch.float64)
    rows = torch.arange(len(pairs))[:, None].expand_as(hp.layer)
    part[rows, hp.layer.long(), hp.head.long()] = hp.value.double()
    carried = 0
    for L in range(n_layers):
        before = {k: every for k in range(L)}
        off = _effects(m, tcs, g, metric, {**before, L: every})
        for h in range(n_heads):
            only = _effects(m, tcs, g, metric, {**before, L: [k for k in every if k != h]})
            check(part[:, L, h], {k: only[k] - off[k] for k in pairs})
            carried += int((part[:, L, h].abs() > 1e-6 * scale).sum())
    assert carried > len(pairs)  # heads carry most edges (not a test of zeros)


def test_top_heads_and_remainder_saved_and_exported(built, tmp_path):
    m, tcs, metric, g = built["llama"]
    p = g.prune(0.8, 0.98)
    full = head_parts(m, tcs, p, metric, top=m.n_layers * 4)
    hp = head_parts(m, tcs, p, metric, top=2)
    assert hp.value.shape == (len(hp.edge), 2)
    # the top two by |part|, the rest their sum
    torch.testing.assert_close(hp.value.double(), full.value[:, :2].double())
    torch.testing.assert_close(hp.rest.double(), full.value[:, 2:].double().sum(1), rtol=1e-6, atol=1e-6)
    assert (hp.value[:, 0].abs() >= hp.value[:, 1].abs()).all()
    p.heads = hp
    back = Graph.load(p.save(tmp_path / "g"))
    for k in ("edge", "direct", "layer", "head", "value", "rest"):
        assert torch.equal(getattr(back.heads, k), getattr(hp, k))
    assert back.heads.n_heads == 4 and back.heads.gap == hp.gap
    # an older folder (no heads) still loads
    p.heads = None
    assert Graph.load(p.save(tmp_path / "old")).heads is None
    p.heads = hp
    # the graph JSON carries each kept edge's heads
    data = p.to_json()
    with_heads = [x for x in data["links"] if "heads" in x]
    assert len(with_heads) == len(data["links"]) > 0
    row = with_heads[0]["heads"]
    assert set(row) == {"direct", "heads", "rest"} and len(row["heads"]) <= 2
    assert row["direct"] + sum(v for _, _, v in row["heads"]) + row["rest"] == pytest.approx(
        with_heads[0]["weight"], rel=1e-5, abs=1e-6
    )
    # the page lists them in an edge's panel
    html = p.to_html(tmp_path / "g.html").read_text()
    assert '"heads"' in html and "carried by heads" in html


def test_bad_input_names_the_fix(built):
    m, tcs, metric, g = built["gemma3"]
    with pytest.raises(GraphError, match="top"):
        head_parts(m, tcs, g, metric, top=0)
    with pytest.raises(GraphError, match="one entry per edge"):
        head_parts(m, tcs, g, metric, edges=torch.ones(3, dtype=torch.bool))
    with pytest.raises(GraphError, match="edge indices"):
        head_parts(m, tcs, g, metric, edges=[len(g.src)])
    with pytest.raises(GraphError, match="not LogitDiff"):
        head_parts(m, tcs, g, LogitDiff(m, "happy", "sad"), edges=[0])


def test_an_edge_panel_lists_its_heads(built, browser, tmp_path):  # noqa: F811 (the browser fixture)
    m, tcs, metric, g = built["gemma3"]
    p = g.prune(0.8, 0.98)
    p.heads = head_parts(m, tcs, p, metric, top=2)
    open_page(browser, p.to_html(tmp_path / "heads.html"))
    ids, kinds = [x.id for x in p.full_nodes], [x.kind for x in p.full_nodes]
    drawn = torch.tensor([kinds[int(p.src[e])] != "error" for e in p.heads.edge])  # error rows are merged at first
    i = int((p.heads.value[:, 0].abs() * drawn).argmax())  # the drawn edge whose top head carries the most
    e = int(p.heads.edge[i])
    key = json.dumps(ids[int(p.src[e])] + "\u0000" + ids[int(p.dst[e])])
    browser.evaluate(f"graphPage.showEdge({key})")
    text = browser.evaluate("document.getElementById('panel-body').innerText")
    layer, head = int(p.heads.layer[i, 0]), int(p.heads.head[i, 0])
    assert "carried by heads" in text and f"layer {layer} head {head}" in text
    assert "other heads" in text and "no head (residual stream, skip paths)" in text
    screenshot(browser, tmp_path / "heads.png")
    offline_and_clean(browser)
