"""QK attribution (graphs.qk) on tiny random models of every family: the heads' queries, keys and patterns
are Hugging Face's own, the node-pair terms sum to the pre-softmax score, and removing a node in the frozen
replacement model (its vector subtracted, clean norm factors and attention patterns held: engine
frozen_state) changes the score by its terms; the constant part is what is left with every node removed."""

from __future__ import annotations

import pytest
import torch

from attribution import LogitDiff
from attribution.engine import Group, frozen_state, trace
from attribution.models.attention import Attention
from attribution.models.frozen import frozen_norm
from attribution.splice import decompose
from graphs import GraphError
from graphs.qk import BIAS, qk_pairs
from graphs.qk_heads import moving_heads
from graphs.replacement import EMBED, direction
from tests.conftest import PROMPTS, tiny_model
from tests.conftest import random_transcoders as transcoders
from tests.test_replacement import Minus, Replaced

pytestmark = pytest.mark.usefixtures("one_thread")


def _eager_attentions(m, batch):
    """Hugging Face's own attention patterns (eager attention returns them)."""
    for mod in m.hf.modules():
        if hasattr(mod, "config"):
            mod.config._attn_implementation = "eager"
    out = m.hf(**batch.inputs(), output_attentions=True)
    return [a[0].double() for a in out.attentions]


def test_patterns_are_hugging_faces(family):
    m = tiny_model(family)
    batch = m.tokenize(PROMPTS[0])
    pre = [f"resid_pre.{layer}" for layer in range(m.n_layers)]
    acts = trace(m, batch, capture=pre).acts
    ref = _eager_attentions(m, batch)
    for layer in range(m.n_layers):
        att = Attention(m, layer)
        for h in range(att.n_heads):
            got = att.pattern(acts[pre[layer]][0], torch.arange(batch.width), h)
            torch.testing.assert_close(got, ref[layer][h], rtol=0, atol=1e-6)  # HF: RMSNorms in float32


def _where(m, family):
    """(layer, head, query position, key position): the last layer, a key the query sees (gemma3's tiny
    model has a sliding window of 4)."""
    width = m.tokenize(PROMPTS[0]).width
    return m.n_layers - 1, 1, width - 1, (width - 3 if family == "gemma3" else 3)


def removal_scores(m, tcs, qk):
    """The score in the frozen replacement model (features held) with nothing removed (row 0), each node
    removed (row 1 + i) and every node removed (the last row)."""
    batch = m.tokenize(qk.prompt)
    hooks = list(tcs)
    pre = f"resid_pre.{qk.layer}"
    clean = trace(m, batch, capture=[EMBED, pre, *hooks, *(t.target for t in tcs.values())], freeze=True)
    decs = {h: decompose(t, clean.acts[h][0], clean.acts[t.target][0]) for h, t in tcs.items()}
    nodes = qk.ids[:-1]
    n, width, d = len(nodes) + 2, batch.width, m.d_model
    minus = {h: torch.zeros(n, width, d, dtype=m.dtype) for h in [EMBED, *hooks]}
    for r, node in enumerate(nodes, 1):
        hook, pos, what = node.split(":") if not node.startswith("tok:") else (EMBED, node[4:], "tok")
        pos = int(pos)
        if what == "tok":
            v = clean.acts[EMBED][0, pos]
        elif what == "err":
            v = decs[hook].error[pos]
        else:
            f = int(what[1:])
            v = decs[hook].features[pos, f] * tcs[hook].W_dec[f]
        minus[hook][r, pos] = v
        minus[hook][-1, pos] += v
    edits = {EMBED: Minus(minus[EMBED])}
    for h, tc in tcs.items():
        const = clean.acts[tc.target] - tc.skip(clean.acts[h])
        edits[tc.target] = Replaced(const, tc, minus[h], clean.acts[h], None)
    tr = trace(m, batch, groups=[Group(edits, n=n)], capture=[pre], keep_batch=False, freeze=frozen_state(m, batch))
    att = Attention(m, qk.layer)
    x0 = clean.acts[pre][0]
    held_q, held_k = att.held(x0[qk.query_pos], "q"), att.held(x0[qk.key_pos], "k")
    x = tr.acts[pre]
    q = att.project(x[:, qk.query_pos], qk.query_pos, "q", held_q)[:, qk.head]
    k = att.project(x[:, qk.key_pos], qk.key_pos, "k", held_k)[:, att.kv_head(qk.head)]
    return (q * k).sum(-1)


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_qk_terms_sum_to_the_pre_softmax_score_and_match_interventions(family, arch):
    m = tiny_model(family)
    tcs = transcoders(m, arch)
    layer, head, qp, kp = _where(m, family)
    qk = qk_pairs(m, tcs, PROMPTS[0], layer, head, qp, kp, top=5, batch_size=6)
    assert sum(i.startswith("resid_mid") and ":f" in i for i in qk.ids) > 20  # features of earlier layers
    assert any(i.startswith("resid_mid") and ":0:" in i for i in qk.ids)  # <bos>'s are nodes here
    # the score is the model's: the softmax of the scores at this query is Hugging Face's pattern
    batch = m.tokenize(PROMPTS[0])
    pre = trace(m, batch, capture=[f"resid_pre.{layer}"], freeze=True).acts[f"resid_pre.{layer}"][0]  # float64 norms
    live = Attention(m, layer).scores(pre, torch.arange(batch.width), head)[qp, kp]
    assert qk.score == pytest.approx(float(live), rel=1e-9)
    ref = _eager_attentions(tiny_model(family), batch)[layer][head, qp, kp]  # a copy: eager softmaxes in float32
    # HF: RMSNorms and the softmax in float32, whose rounding differs by CPU kernel (2.6e-6 on an AVX2 EPYC)
    assert qk.pattern == pytest.approx(float(ref), rel=2e-5)
    # every pair's terms sum to the score; the listed pairs are the largest
    terms = qk.q.T @ qk.k
    assert float(terms.sum()) == pytest.approx(qk.score, rel=1e-9, abs=1e-12)
    assert abs(qk.pairs[0].term) == pytest.approx(float(terms.abs().max()), rel=1e-12)
    assert qk.pairs[0].term == pytest.approx(qk.term(qk.pairs[0].query, qk.pairs[0].key), rel=1e-12)
    assert qk.remainder == pytest.approx(qk.score - sum(p.term for p in qk.pairs))
    nodes = terms[:-1, :-1]
    assert float(nodes.sum()) + sum(qk.bias_terms().values()) == pytest.approx(qk.score, rel=1e-9, abs=1e-12)
    assert BIAS not in {i for p in qk.node_pairs for i in (p.query, p.key)}
    assert abs(qk.node_pairs[0].term) == pytest.approx(float(nodes.abs().max()), rel=1e-12)
    # removing a node changes the score by its row + column - diagonal; removing all leaves the bias x bias
    scores = removal_scores(m, tcs, qk)
    assert float(scores[0]) == pytest.approx(qk.score, rel=1e-9)
    measured = scores[0] - scores[1:-1]
    claimed = qk.removal()[:-1]
    assert (claimed.abs() > 1e-6 * claimed.abs().max()).sum() > 20
    torch.testing.assert_close(claimed, measured, rtol=1e-7, atol=1e-9 * float(measured.abs().max()))
    b = qk.index(BIAS)
    assert float(scores[-1]) == pytest.approx(float(qk.q[:, b] @ qk.k[:, b]), rel=1e-7, abs=1e-9)


def test_qk_pairs_at_the_first_layer_are_tokens_and_bias():
    m = tiny_model("llama")
    tcs = transcoders(m, "relu")
    qk = qk_pairs(m, tcs, PROMPTS[1], 0, 2, -1, 2, top=3)
    assert all(i.startswith("tok:") for i in qk.ids[:-1])
    scores = removal_scores(m, tcs, qk)
    torch.testing.assert_close(qk.removal()[:-1], scores[0] - scores[1:-1], rtol=1e-7, atol=1e-10)


def test_qk_bad_input_says_the_fix():
    m = tiny_model("gemma3")
    tcs = transcoders(m, "relu")
    with pytest.raises(GraphError, match="key_pos <= query_pos within its sliding window of 4"):
        qk_pairs(m, tcs, PROMPTS[0], 1, 0, -1, 0)
    with pytest.raises(GraphError, match="key_pos <= query_pos"):
        qk_pairs(m, tcs, PROMPTS[0], 1, 0, 3, 4)
    with pytest.raises(Exception, match=r"heads 0\.\.1"):
        qk_pairs(m, tcs, PROMPTS[0], 1, 5, -1, -2)
    with pytest.raises(GraphError, match="outside the prompt's"):
        qk_pairs(m, tcs, PROMPTS[0], 1, 0, 40, 0)
    with pytest.raises(Exception, match=r"layers 0\.\.2"):
        qk_pairs(m, tcs, PROMPTS[0], 3, 0, -1, -2)


def test_moving_heads_match_interventions(family):
    """A head's output split by key rebuilds attn_out at the destination (every head, the output bias), and
    removing what a head moves from the other keys changes the metric by `moved` in the frozen replacement
    model with the graph's features linear."""
    m = tiny_model(family)
    tcs = transcoders(m, "relu")
    metric = LogitDiff(m, "sad", "happy")
    heads = moving_heads(m, tcs, PROMPTS[0], metric, top=3)
    assert len(heads) == 3 and abs(heads[0].moved) >= abs(heads[-1].moved) > 0
    batch = m.tokenize(PROMPTS[0])
    d = batch.width - 1
    hooks = list(tcs)
    for h in heads:
        assert h.dest == d and h.key not in (0, d)
        att, pre, out = Attention(m, h.layer), f"resid_pre.{h.layer}", f"attn_out.{h.layer}"
        clean = trace(m, batch, capture=[pre, out, *hooks, *(t.target for t in tcs.values())], freeze=True)
        x, keys = clean.acts[pre][0], torch.arange(d + 1)
        v = att.project(x, keys, "v")
        A = torch.stack([att.pattern(x, keys, i)[d] for i in range(att.n_heads)])
        z = torch.stack([A[i] @ v[:, att.kv_head(i)] for i in range(att.n_heads)])
        scale = att.post_scale(z[None])
        parts = [att.head_out(z[i : i + 1], i, scale) for i in range(att.n_heads)]
        bias = att._out_bias()
        if bias is not None:
            bias = bias[None] if scale is None else frozen_norm(att.post, bias[None], att.offset, scale)
        rebuilt = sum(parts) + (0 if bias is None else bias)
        # Gemma's q_norm / k_norm run in float32 in Hugging Face (float64 here): patterns agree to ~1e-7
        torch.testing.assert_close(rebuilt[0], clean.acts[out][0, d], rtol=1e-6, atol=1e-6 * float(rebuilt.abs().max()))
        moved = A[h.head, 2:d, None] * att.head_out(v[2:d, att.kv_head(h.head)], h.head, scale)
        delta = torch.zeros_like(clean.acts[out])
        delta[0, d] = A[h.head, 1] * att.head_out(v[1:2, att.kv_head(h.head)], h.head, scale)[0] + moved.sum(0)
        edits = {out: Minus(delta)}
        for hook, tc in tcs.items():
            f = decompose(tc, clean.acts[hook][0], clean.acts[tc.target][0]).features
            active = ((f != 0) & batch.node_mask()[0][:, None]).to(f.dtype)
            const = clean.acts[tc.target] - tc.skip(clean.acts[hook])
            edits[tc.target] = Replaced(const, tc, torch.zeros_like(const), clean.acts[hook], active)
        frozen = frozen_state(m, batch)
        vec, _ = direction(m, metric)
        before = trace(m, batch, edits={k: e for k, e in edits.items() if k != out}, freeze=frozen).hidden[0, d] @ vec
        after = trace(m, batch, edits=edits, freeze=frozen).hidden[0, d] @ vec
        assert float(before - after) == pytest.approx(h.moved, rel=1e-6, abs=1e-10)


def test_graph_page_shows_the_qk_panel():
    from markupsafe import escape

    from graphs.replacement import build_replacement_graph
    from pages.graph_page import page

    m = tiny_model("gemma3")
    tcs = transcoders(m, "relu")
    g = build_replacement_graph(m, tcs, PROMPTS[0], LogitDiff(m, "sad", "happy"), labels=False, progress=False)
    qk = qk_pairs(m, tcs, PROMPTS[0], 2, 0, -1, -2, top=4, graph=g)
    html = page(g, qk=[qk], max_edges=None)
    title = escape(f"L2.H0: {qk.tokens[-1]!r}@{qk.query_pos} ← {qk.tokens[-2]!r}@{qk.key_pos}")
    assert "QK attribution" in html and str(title) in html
    drawn = {x.id for x in g.nodes}
    linked = [i for p in qk.pairs + qk.node_pairs for i in (p.query, p.key) if i in drawn]
    assert linked and all(f'data-node="{i}"' in html for i in linked)
    assert "QK attribution" not in page(g, max_edges=None)
    other = qk_pairs(m, tcs, PROMPTS[1], 2, 0, -1, -2, top=2)
    with pytest.raises(GraphError, match="pass the graph's own"):
        page(g, qk=[other], max_edges=None)


def test_suite_report_has_a_qk_section():
    from cases.suite import _qk, _row, summary
    from cases.suite_prompts import SuitePrompt, check
    from graphs.replacement import build_replacement_graph
    from pages.suite_page import page

    m = tiny_model("llama")
    tcs = transcoders(m, "relu")
    p = SuitePrompt("john", PROMPTS[0], " sad", " happy", None, None, "a -> b -> mood")
    g = build_replacement_graph(m, tcs, p.prompt, LogitDiff(m, "sad", "happy"), labels=False, progress=False)
    row = _row(p, check(m, [p])[0])
    row["qk"] = _qk(m, tcs, p, g, 2)
    assert len(row["qk"]) == 2 and all(h["node_pairs"] for h in row["qk"])
    report = {"model": "tiny", "dictionaries": None, "suite": None, "seconds": 0.0, "prompts": [row]}
    html = page(report | {"summary": summary([row])})
    assert "Why the heads attend" in html and f"L{row['qk'][0]['layer']}.H{row['qk'][0]['head']}" in html
    assert "Why the heads attend" not in page(
        report | {"prompts": [_row(p, check(m, [p])[0])], "summary": summary([row])}
    )
