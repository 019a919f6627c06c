"""Feature graphs checked against interventions on tiny random models: edges are the direct effects a
finite difference measures, influence equals the dense path sum, pruning keeps what it must, the unpruned
graph is exactly faithful, checks and group ablations equal independent interventions, exports are whole."""

import importlib
import json
from pathlib import Path

import networkx as nx
import pytest
import torch

from attribution import AttributionError, LogitDiff, WholeActivation, ablate, attribute, trace
from attribution.metrics import Rows, evaluate
from graphs import GraphError, ablate_group, build_graph, check, check_layers, group_by_contrast, steer_group
from graphs.edges import clean_pass
from graphs.labeler import labeler
from graphs.prune import influence
from graphs.schema import CIRCUIT_TRACER_VERSION, GraphFile, Metadata, Model, Node, cantor_pairing
from pages.graph_page import data as html_data
from tests.conftest import PROMPTS, random_sae, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

HOOKS = ["resid_post.0", "resid_post.2"]  # block 1 lies between the SAE layers, block 0 before the first
# Graph edge weights are stored in float32 (graphs.graph: memory): each is its float64 value rounded once, so
# it is exact to eps / 2 of its value; comparisons of weights with float64 measurements allow rtol=F32.
F32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def setup():
    """GPT-2 computes wholly in float64, so finite differences are exact to ~1e-8."""
    m = tiny_model("gpt2")
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(HOOKS)}
    metric = LogitDiff(m, "sad", "happy")
    g = build_graph(m, saes, PROMPTS[0], metric, candidates=None, labels=False)
    return m, saes, metric, g


def _clean(m, saes, metric, g):
    """The clean pass the graph was built from: activations, gradients and decompositions at its hooks."""
    return clean_pass(m, saes, m.tokenize(g.prompt), metric)[0]


def _spliced_logits(m, saes, prompt, edit_features):
    """An independent reference for interventions: every SAE spliced as x' = decode(edit(f)) + e, with the
    error term e = x - decode(f) of the activation the hook receives (a plain function edit, not the
    library's Splice)."""

    def splice(h):
        sae = saes[h]

        def edit(x):
            f = sae.encode(x)
            e = x - sae.decode(f)
            return sae.decode(edit_features[h](f) if h in edit_features else f) + e

        return edit

    return m.unembed(trace(m, m.tokenize(prompt), edits={h: splice(h) for h in saes}).hidden)


def _readout(m, saes, metric, g, node, x_hook):
    """Downstream node's objective from the activation at its hook: pre-activation, g . e(x), or the metric."""
    if node.kind == "feature":
        sae = saes[node.hook]
        return float(sae.pre_acts(x_hook[0, node.position])[node.feature])
    sae = saes[node.hook]
    x = x_hook[0, node.position]
    grad = _clean(m, saes, metric, g).grads[node.hook][node.position]
    return float(grad @ (x - sae.decode(sae.encode(x))))


def _contribution(m, saes, metric, g, node):
    """What the upstream node adds to the residual at its position."""
    clean = _clean(m, saes, metric, g)
    if node.kind == "token":
        return clean.acts["resid_pre.0"][node.position]
    dec = clean.decs[node.hook]
    if node.kind == "error":
        return dec.error[0, node.position]
    return node.activation * saes[node.hook].W_dec[node.feature]


def _finite_differences(m, saes, metric, g, pairs, eps=1e-5):
    """Central differences of each downstream objective, all perturbations of one hook pair in one batch."""
    up_hook = "resid_pre.0" if pairs[0][0].kind == "token" else pairs[0][0].hook
    down = pairs[0][1]

    vs = [_contribution(m, saes, metric, g, up) for up, _ in pairs]  # before the trace: edits only compute

    def perturb(x):  # [1, pos, d_model] -> [2 * len(pairs), pos, d_model]: +eps and -eps rows per pair
        x = x.repeat(2 * len(pairs), 1, 1)
        for k, (up, _) in enumerate(pairs):
            v = vs[k]
            x[2 * k, up.position] += eps * v
            x[2 * k + 1, up.position] -= eps * v
        return x

    batch = m.tokenize(g.prompt)
    if down.kind == "metric":
        tr = trace(m, batch, edits={up_hook: perturb})
        values = evaluate(metric, m, tr.hidden, Rows.copies(0, 2 * len(pairs))).tolist()
    else:
        tr = trace(m, batch, edits={up_hook: perturb}, capture=[down.hook], stop_early=True)
        x = tr.acts[down.hook]
        values = [
            _readout(m, saes, metric, g, d, x[r : r + 1]) for r, (_, d) in enumerate(p for p in pairs for _ in "+-")
        ]
    return [(values[2 * k] - values[2 * k + 1]) / (2 * eps) for k in range(len(pairs))]


def test_edges_equal_direct_effects_by_finite_differences(setup):
    m, saes, metric, g = setup
    groups = {}
    for e in sorted(g.edges, key=lambda e: -abs(e.weight)):
        up, down = g.node(e.source), g.node(e.target)
        kinds = groups.setdefault((up.layer, down.layer, down.kind), {})
        if len(kinds.setdefault((up.kind, down.kind), [])) < 3:
            kinds[(up.kind, down.kind)].append(e)
    seen = set()
    for kinds in groups.values():
        edges = [e for sample in kinds.values() for e in sample]
        seen |= set(kinds)
        fds = _finite_differences(m, saes, metric, g, [(g.node(e.source), g.node(e.target)) for e in edges])
        for e, fd in zip(edges, fds):
            assert e.weight == pytest.approx(fd, rel=1e-5, abs=1e-8), e
    want = {("token", "feature"), ("token", "error"), ("feature", "feature"), ("error", "feature")}
    want |= {("feature", "error"), ("error", "error"), ("feature", "metric"), ("error", "metric")}
    assert seen == want


def test_no_edge_flows_backwards_in_position(setup):
    _, _, _, g = setup
    for e in g.edges:
        assert g.node(e.source).position <= g.node(e.target).position
        assert g.node(e.target).layer == g.node(e.source).layer + 1  # consecutive rows only


def test_metric_edges_equal_ablation_effects_when_the_head_is_linear():
    m = tiny_model("gemma3", linear_head=True)
    saes = {"resid_post.2": random_sae(m, "resid_post.2", d_sae=48)}
    metric = LogitDiff(m, "sad", "happy")
    g = build_graph(m, saes, PROMPTS[0], metric, candidates=None, labels=False)
    feats = {e.source: e.weight for e in g.edges if e.target == "metric" and g.node(e.source).kind == "feature"}
    nodes = [(g.node(i).hook, g.node(i).position, g.node(i).feature) for i in feats]
    abl = ablate(m, saes, PROMPTS[0], metric, nodes, progress=False)
    torch.testing.assert_close(abl.effect, torch.tensor(list(feats.values()), dtype=torch.float64), rtol=F32, atol=1e-9)


def test_batched_edges_equal_one_row_at_a_time(setup):
    m, saes, metric, _ = setup
    chunked = build_graph(m, saes, PROMPTS[0], metric, candidates=30, labels=False, max_rows=15)
    whole = build_graph(m, saes, PROMPTS[0], metric, candidates=30, labels=False, max_rows=1000)

    def edges(graph):
        return {(int(s), int(d)): float(w) for s, d, w in zip(graph.src, graph.dst, graph.weight)}

    a, b = edges(chunked), edges(whole)
    assert a.keys() == b.keys() and len(a) > 1000
    assert all(a[k] == pytest.approx(b[k], rel=1e-10, abs=1e-13) for k in a)


def test_nodes_and_candidates_agree_with_attribute(setup):
    m, saes, metric, g = setup
    attr = attribute(m, saes, PROMPTS[0], metric)
    want = {(n.hook, n.position, n.feature): n.attribution for n in attr.top(None)}
    got = {(x.hook, x.position, x.feature): x.attribution for x in g.full_nodes if x.kind in ("feature", "error")}
    assert got.keys() == want.keys()  # every active feature and every error node, <bos> left out
    assert all(got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12) for k in want)
    assert [x.position for x in g.full_nodes if x.kind == "token"] == list(range(1, 12))
    few = build_graph(m, saes, PROMPTS[0], metric, candidates=5, labels=False)
    for h in HOOKS:
        mine = [x for x in few.full_nodes if x.kind == "feature" and x.hook == h]
        best = sorted((abs(v) for k, v in want.items() if k[0] == h and k[2] is not None), reverse=True)[:5]
        assert sorted((abs(x.attribution) for x in mine), reverse=True) == pytest.approx(best)


def test_influence_is_the_dense_path_sum(setup):
    _, _, _, g = setup
    n = len(g.full_nodes)
    A = torch.zeros(n, n, dtype=torch.float64)  # A[target, source]
    A[g.dst, g.src] = g.share.double()
    dense = torch.linalg.solve((torch.eye(n, dtype=torch.float64) - A).T, torch.eye(n, dtype=torch.float64)[-1])
    dense[-1] -= 1  # paths of length >= 1
    torch.testing.assert_close(influence(g.src, g.dst, g.share, n, n - 1)[:-1], dense[:-1])
    # each row's shares sum to one, so the influence through any layer sums to one
    for row in range(1, len(g.hooks) + 1):
        total = sum(x.influence for x in g.full_nodes if x.layer == row)
        assert total == pytest.approx(1.0)


def test_prune_keeps_tokens_and_metric_and_respects_thresholds_and_caps(setup):
    _, _, _, g = setup
    g = g.copy()
    n_tokens = sum(x.kind == "token" for x in g.full_nodes)
    inner = sorted((x for x in g.full_nodes if x.kind in ("feature", "error")), key=lambda x: -x.influence)
    total = sum(x.influence for x in inner)
    sizes = []
    for threshold in (0.3, 0.6, 0.9):
        g = g.prune(node_threshold=threshold, edge_threshold=0.98)
        kinds = [x.kind for x in g.nodes]
        assert kinds.count("token") == n_tokens and kinds[-1] == "metric"
        prefix, share = [], 0.0
        for x in inner:  # the fewest most-influential nodes that reach the threshold
            if share >= threshold * total:
                break
            prefix.append(x.id)
            share += x.influence
        kept = {x.id for x in g.nodes if x.kind in ("feature", "error")}
        assert kept <= set(prefix) and share >= threshold * total
        sizes.append(len(kept))
        nxg = g.to_networkx()
        for x in g.nodes:
            if x.kind != "token":
                assert nx.has_path(nxg, x.id, "metric")  # nothing dangles
        assert all(g.kept(e.source) and g.kept(e.target) for e in g.edges)
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    g = g.prune(0.9, 0.9, max_feature_nodes=4)
    assert sum(x.kind == "feature" for x in g.nodes) <= 4
    g = g.prune(0.9, 0.9, max_nodes=3)
    assert sum(x.kind in ("feature", "error") for x in g.nodes) <= 3
    g = g.prune(1.0, 1.0)
    assert sum(x.kind in ("feature", "error") for x in g.nodes) == sum(x.influence > 0 for x in inner)
    assert g.unpruned().node_mask.all() and not g.node_mask.all()
    with pytest.raises(GraphError, match="between 0 and 1"):
        g.prune(node_threshold=1.5)
    with pytest.raises(GraphError, match="max_feature_nodes"):
        g.prune(max_feature_nodes=-1)


def test_prune_by_attribution_keeps_the_largest_total_effects(setup):
    _, _, _, g = setup
    g = g.copy()
    feats = sorted((x for x in g.full_nodes if x.kind == "feature"), key=lambda x: -abs(x.attribution))
    k = 6
    g = g.prune(1.0, 1.0, max_feature_nodes=k, rank="attribution")
    kept = {x.id for x in g.nodes if x.kind == "feature"}
    assert kept <= {x.id for x in feats[:k]} and feats[0].id in kept
    assert g.pruning["rank"] == "attribution" and g.to_json()["metadata"]["info"]["pruning"]["rank"] == "attribution"
    by_influence = {x.id for x in g.prune(1.0, 1.0, max_feature_nodes=k).nodes if x.kind == "feature"}
    top_influence = sorted((x for x in g.full_nodes if x.kind == "feature"), key=lambda x: -x.influence)[:k]
    assert by_influence <= {x.id for x in top_influence}
    with pytest.raises(GraphError, match="unknown rank"):
        g.prune(rank="activation")


@pytest.mark.parametrize(("mode", "errors"), [("zero", "keep"), ("mean", "keep"), ("mean", "ablate")])
def test_unpruned_graph_is_exactly_faithful(setup, mode, errors):
    m, saes, _, g = setup
    result = check(m, saes, g, mode=mode, errors=errors)
    assert result.model == pytest.approx(g.metric_value, abs=1e-12)
    assert abs(result.model - result.empty) > 0.05  # ablating everything matters
    assert result.faithfulness == pytest.approx(1.0, abs=1e-9)
    assert result.completeness == pytest.approx(1.0, abs=1e-9)


def test_scores_refuse_a_metric_that_no_ablation_moves():
    """m(model) = m(empty) leaves F = 0/0: a clear error, and a printable check, not a ZeroDivisionError."""
    from graphs.interventions import Check

    flat = Check("zero", "keep", model=1.5, empty=1.5, graph=1.5, complement=1.5)
    assert not flat.defined and "undefined" in str(flat)
    for score in ("faithfulness", "completeness"):
        with pytest.raises(GraphError, match="undefined"):
            getattr(flat, score)
    moved = Check("zero", "keep", model=2.0, empty=0.0, graph=1.5, complement=0.5)
    assert moved.defined and moved.faithfulness == 0.75 and moved.completeness == 0.75


def test_pruned_checks_equal_independent_interventions(setup):
    """m(graph) and m(empty) equal run_with_saes with the clean-active non-graph features zeroed."""
    m, saes, metric, g = setup
    g = g.prune(0.5, 0.9)
    result = check(m, saes, g, mode="zero", errors="keep")
    clean = _clean(m, saes, metric, g)

    def zero_outside(hook, keep):
        active = (clean.decs[hook].features[0] != 0) & m.tokenize(g.prompt).node_mask()[0][:, None]
        return lambda f: torch.where(active & ~keep, torch.zeros_like(f), f)

    kept = {h: torch.zeros(12, saes[h].d_sae, dtype=torch.bool) for h in HOOKS}
    for x in g.nodes:
        if x.kind == "feature":
            kept[x.hook][x.position, x.feature] = True
    for keep, value in ((kept, result.graph), ({h: torch.zeros_like(k) for h, k in kept.items()}, result.empty)):
        logits = _spliced_logits(m, saes, g.prompt, {h: zero_outside(h, keep[h]) for h in HOOKS})
        assert float(metric(logits)) == pytest.approx(value, abs=1e-9)
    assert -10 < result.faithfulness < 10 and result.faithfulness != pytest.approx(1.0)


def test_layer_checks_equal_independent_interventions(setup):
    """Each layer alone: m(empty) and m(graph) equal run_with_saes zeroing that layer's features only."""
    m, saes, metric, g = setup
    full = check_layers(m, saes, g)
    assert [x.hook for x in full] == HOOKS
    for x in full:  # the unpruned graph keeps every feature: graph = model at every layer
        assert x.model == pytest.approx(g.metric_value, abs=1e-12)
        assert x.graph == pytest.approx(x.model, abs=1e-12)
        assert x.defined and x.faithfulness == pytest.approx(1.0, abs=1e-9)
    g = g.prune(0.5, 0.9)
    valid = m.tokenize(g.prompt).node_mask()[0][:, None]  # [pos, 1]
    clean = _clean(m, saes, metric, g)
    for x in check_layers(m, saes, g):
        active = (clean.decs[x.hook].features[0] != 0) & valid
        kept = torch.zeros_like(active)
        for n in g.nodes:
            if n.kind == "feature" and n.hook == x.hook:
                kept[n.position, n.feature] = True
        for keep, value in ((torch.zeros_like(kept), x.empty), (kept, x.graph)):
            drop = active & ~keep
            edit = {x.hook: lambda f, drop=drop: torch.where(drop, torch.zeros_like(f), f)}
            assert float(metric(_spliced_logits(m, saes, g.prompt, edit))) == pytest.approx(value, abs=1e-9)
        assert x.carried == pytest.approx(x.model - x.empty)
        assert x.faithfulness == pytest.approx((x.graph - x.empty) / (x.model - x.empty))
    assert "features carry" in str(x)
    with pytest.raises(GraphError, match="unknown ablation mode"):
        check_layers(m, saes, g, mode="patch")


def test_layer_check_without_a_carried_metric_is_undefined():
    from graphs.interventions import LayerCheck

    flat = LayerCheck("resid_post.3", "zero", model=1.0, empty=1.0, graph=0.5)
    assert not flat.defined and flat.faithfulness != flat.faithfulness and "undefined" in str(flat)


def test_group_by_contrast_groups_the_matching_feature_nodes(setup):
    m, saes, _, g = setup
    g = g.copy()
    # the contrast: prompts ending in "john" (as the graph prompt's second to last word does) or not
    positive = ["john says i want to be alone right now john", "mary went home and john", "the cat ran john"]
    negative = ["john says i want to be alone right now mary", "mary went home and", "the cat ran"]
    from attribution import contrast

    found = contrast(m, saes, positive, negative, top=None, min_score=0.5)
    nodes = {(x.hook, x.feature) for x in g.full_nodes if x.kind == "feature"}
    expected = [x for x in found if (x.hook, x.feature) in nodes]
    assert expected, "the tiny model has separating features that are nodes"
    matches = group_by_contrast(m, saes, g, "john", positive, negative, min_score=0.5)
    assert matches == expected
    pairs = {(y.hook, y.feature) for y in matches}
    assert g.groups["john"] == [x.id for x in g.full_nodes if x.kind == "feature" and (x.hook, x.feature) in pairs]
    assert isinstance(ablate_group(m, saes, g, "john"), float)
    with pytest.raises(GraphError, match="no feature with contrast score"):
        group_by_contrast(m, saes, g, "none", positive, negative, min_score=1.5)


def test_group_ablation_equals_ablating_the_features_together(setup):
    m, saes, metric, g = setup
    g = g.copy()
    top = [x for x in g.top(None) if x.hook == "resid_post.0"][:3]
    g.group("trio", top)
    batch = m.tokenize(g.prompt)

    def zero_members(x):
        x = x.clone()
        for n in top:
            x[0, n.position] -= n.activation * saes[n.hook].W_dec[n.feature]
        return x

    tr = trace(m, batch, edits={"resid_post.0": zero_members})
    direct = float(evaluate(metric, m, tr.hidden, Rows.copies(0, 1))) - g.metric_value
    assert ablate_group(m, saes, g, "trio") == pytest.approx(direct, abs=1e-10)
    assert steer_group(m, saes, g, "trio", 0.0) == pytest.approx(direct, abs=1e-10)
    assert steer_group(m, saes, g, "trio", 1.0) == pytest.approx(0.0, abs=1e-12)
    # one member: the library's single-feature ablation (effect = clean - ablated)
    g.group("one", top[0].id)
    effect = ablate(m, saes, g.prompt, metric, [(top[0].hook, top[0].position, top[0].feature)], progress=False)
    assert ablate_group(m, saes, g, "one") == pytest.approx(-float(effect.effect[0]), abs=1e-10)
    # members on two layers: the later one is set to zero given its upstream partner's ablation too
    late = next(x for x in g.top(None) if x.hook == "resid_post.2")
    g.group("pair", [top[0], (late.hook, late.position, late.feature)])

    def zero(nodes):
        def edit(f):
            f = f.clone()
            for n in nodes:
                f[0, n.position, n.feature] = 0
            return f

        return edit

    logits = _spliced_logits(m, saes, g.prompt, {"resid_post.0": zero([top[0]]), late.hook: zero([late])})
    assert ablate_group(m, saes, g, "pair") == pytest.approx(float(metric(logits)) - g.metric_value, abs=1e-10)
    assert ablate_group(m, saes, g, "pair", mode="mean") != ablate_group(m, saes, g, "pair")


def test_group_members_and_errors(setup):
    m, saes, _, g = setup
    g = g.copy()
    f = next(x for x in g.full_nodes if x.kind == "feature")
    assert g.group("by pair", [(f.hook, f.feature)]) == [
        x.id for x in g.full_nodes if x.kind == "feature" and x.hook == f.hook and x.feature == f.feature
    ]
    assert g.group("by triple", (f.hook, f.position, f.feature)) == [f.id]
    with pytest.raises(GraphError, match="feature nodes only"):
        g.group("bad", "resid_post.0:3:err")
    with pytest.raises(GraphError, match="no node"):
        g.group("bad", "resid_post.0:3:f99999")
    with pytest.raises(GraphError, match="no group"):
        ablate_group(m, saes, g, "missing")
    with pytest.raises(GraphError, match="unknown ablation mode"):
        ablate_group(m, saes, g, "by pair", mode="patch")
    with pytest.raises(GraphError, match="labels"):
        g.group_by_label()
    g.ungroup("by pair")
    assert "by pair" not in g.groups


def test_labels_from_a_callable_and_grouping_by_label(setup):
    m, saes, metric, _ = setup
    names = {0: "the capital city", 1: "capital city of", 2: "basketball"}
    g = build_graph(m, saes, PROMPTS[0], metric, labels=lambda hook, f: names.get(f % 3, ""), candidates=None)
    assert all(x.label == names[x.feature % 3] for x in g.full_nodes if x.kind == "feature")
    found = g.group_by_label(min_overlap=0.5)
    assert len(found) == 2 and "basketball" in found
    assert any({"capital", "city"} <= set(name.split()) for name in found)
    assert all(g.node(i).label in names.values() for ids in found.values() for i in ids)
    with pytest.raises(GraphError, match="return a str"):
        build_graph(m, saes, PROMPTS[0], metric, labels=lambda hook, f: 3)


def test_labels_and_tooltips_from_feature_indexes(setup, tmp_path, monkeypatch):
    """Real attribution.explain indexes (over random token windows) label nodes and fill the tooltips."""
    from attribution import feature_indexes

    m, saes, metric, _ = setup
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(tmp_path / "cache"))
    tokens = torch.randint(4, m.tokenizer.vocab_size, (24, 12), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = m.tokenizer.bos_token_id
    indexes = feature_indexes(m, saes, tokens=tokens, progress=False)
    g = build_graph(m, saes, PROMPTS[0], metric, candidates=6, labels=indexes).prune(0.9, 0.98)
    feats = [x for x in g.nodes if x.kind == "feature"]
    assert feats and all(x.label == indexes[x.hook].label(x.feature) for x in feats)
    names = labeler(m, saes, indexes, False)
    card = names.card(feats[0].hook, feats[0].feature)
    assert card.label == feats[0].label and card.contexts
    page = g.to_html(tmp_path / "g.html", cards=names.card).read_text()
    assert "fires on" in page and "promotes" in page and "share of firings by activation" in page
    assert {n["clerp"] for n in g.to_json()["nodes"] if n["feature_type"] == "cross layer transcoder"} == {
        x.label for x in feats
    }


def test_labels_degrade_without_an_index(setup, monkeypatch):
    module = importlib.import_module("attribution.explain.index")
    m, saes, metric, _ = setup

    def missing(*args, **kw):
        raise AttributionError("no index for this SAE")

    monkeypatch.setattr(module, "feature_indexes", missing)
    monkeypatch.setattr(module, "feature_index", missing)
    with pytest.warns(UserWarning, match="stay unlabelled"):
        g = build_graph(m, saes, PROMPTS[0], metric, candidates=4, labels=True)
    assert all(x.label == "" for x in g.full_nodes)
    with pytest.warns(UserWarning, match="stay unlabelled"):
        assert labeler(m, saes, True, False).card("resid_post.0", 1) is None


def test_json_follows_the_graph_schema(setup, tmp_path):
    _, _, _, g = setup
    g = g.copy().prune(0.6, 0.95)
    g.group("pair", [x.id for x in g.top(2)])
    data = g.to_json(tmp_path / "graph.json")
    loaded = json.loads((tmp_path / "graph.json").read_text())
    assert loaded == json.loads(json.dumps(data))
    parsed = GraphFile.model_validate(loaded)
    assert set(loaded) == {"metadata", "qParams", "nodes", "links"}
    assert parsed.metadata.slug == "graph" and parsed.metadata.prompt == g.prompt
    assert parsed.metadata.prompt_tokens == g.tokens and parsed.metadata.node_threshold == 0.6
    ids = [n.node_id for n in parsed.nodes]
    assert len(ids) == len(set(ids)) == len(g.nodes) and len(parsed.links) == len(g.edges)
    assert all(link.source in ids and link.target in ids for link in parsed.links)
    types = {n.feature_type for n in parsed.nodes}
    assert types == {"embedding", "cross layer transcoder", "mlp reconstruction error", "logit"}
    logit = next(n for n in parsed.nodes if n.feature_type == "logit")
    assert logit.is_target_logit and 0 < logit.token_prob < 1 and logit.layer == "4"
    assert parsed.qParams.supernodes[0][0] == "pair" and len(parsed.qParams.supernodes[0]) == 3
    # what circuit-tracer's own models and viewer need: its Model validates it, every node key is one of its
    # Node's and metadata.info the only extra key; the viewer reads the logit's clerp as Output "label"
    # (p=...) and unpairs a feature's `feature` into (layer, index)
    assert Model.model_validate(loaded).model_dump()["nodes"] == [n.model_dump() for n in parsed.nodes]
    assert {k for n in loaded["nodes"] for k in n} == set(Node.model_fields)
    assert set(loaded["metadata"]) - set(Metadata.model_fields) == {"info"}
    assert logit.clerp.startswith('Output "sad − happy"') and float(logit.clerp.split("(p=")[1].split(")")[0]) > 0
    for x in g.nodes:
        if x.kind == "feature":
            node = parsed.nodes[ids.index(f"{g.layers[x.hook]}_{x.feature}_{x.position}")]
            assert node.feature == cantor_pairing(g.layers[x.hook], x.feature)


def test_json_models_mirror_circuit_tracer():
    """graphs.schema's Metadata, QParams, Node, Link and Model are circuit-tracer's (its JSON schema, taken
    from its graph_models in its venv, is the fixture; python -m bench.peers.circuit_tracer_side_by_side --validate
    compares them there)."""
    fixture = Path(__file__).parent / "fixtures" / f"circuit_tracer_{CIRCUIT_TRACER_VERSION}_graph_schema.json"
    assert Model.model_json_schema() == json.loads(fixture.read_text())


def test_networkx_has_every_node_edge_and_attribute(setup):
    _, _, _, g = setup
    g = g.copy().prune(0.6, 0.95)
    nxg = g.to_networkx()
    assert set(nxg.nodes) == {x.id for x in g.nodes}
    assert nxg.number_of_edges() == len(g.edges)
    x = g.top(1)[0]
    assert nxg.nodes[x.id] == {**x.to_dict(), "kept": True, "group": None}
    e = g.edges[0]
    assert nxg.edges[e.source, e.target]["weight"] == e.weight
    assert nxg.graph["prompt"] == g.prompt and nxg.graph["pruning"]["node_threshold"] == 0.6
    assert nx.is_directed_acyclic_graph(nxg)
    full = g.to_networkx(full=True)
    assert full.number_of_nodes() == len(g.full_nodes) and full.number_of_edges() == len(g.src)


def test_html_is_offline_and_has_every_node(setup, tmp_path):
    m, saes, _, g = setup
    g = g.prune(0.6, 0.95)
    page = g.to_html(tmp_path / "graph.html", check=check(m, saes, g)).read_text()
    assert 'src="http' not in page and 'href="http' not in page and "<link" not in page
    assert "vis.Network" in page and g.prompt in page and "Legend" in page and "faithfulness" in page
    for x in g.nodes:
        assert json.dumps(x.id) in page
    with pytest.raises(GraphError, match="prune it first"):
        g.unpruned().to_html(tmp_path / "big.html", max_edges=100)
    g.group("pair", [x.id for x in g.top(2)])
    page = g.prune(0.6, 0.95).to_html(tmp_path / "grouped.html").read_text()
    assert '"group:pair"' in page  # drawn as one node; its members are in the page, shown when it opens
    nodes = {n["id"]: n for n in html_data(g.prune(0.6, 0.95))["nodes"]}
    assert nodes["group:pair"]["members"] == g.groups["pair"]
    assert all(nodes[i]["group"] == "group:pair" for i in g.groups["pair"])


def test_whole_activation_graphs_and_bad_input():
    m = tiny_model("llama")
    metric = LogitDiff(m, "sad", "happy")
    whole = WholeActivation.at(m, ["resid_post.0", "resid_post.1"])
    g = build_graph(m, whole, PROMPTS[1], metric, labels=True)
    assert {x.kind for x in g.full_nodes} == {"token", "error", "metric"}  # no features, nothing to label
    assert check(m, whole, g, mode="zero", errors="ablate").faithfulness == pytest.approx(1.0)
    sae = random_sae(m, "mlp_out.1")
    with pytest.raises(GraphError, match="residual stream"):
        build_graph(m, {"mlp_out.1": sae}, PROMPTS[1], metric, labels=False)
    with pytest.raises(GraphError, match="one prompt"):
        build_graph(m, {}, PROMPTS[:2], metric, labels=False)
    with pytest.raises(GraphError, match="no SAEs"):
        build_graph(m, {}, PROMPTS[1], metric, labels=False)
    with pytest.raises(GraphError, match="candidates"):
        build_graph(m, WholeActivation.at(m, ["resid_post.0"]), PROMPTS[1], metric, candidates=0, labels=False)
    with pytest.raises(GraphError, match="at layer 0"):
        build_graph(m, WholeActivation.at(m, ["resid_pre.0", "resid_post.0"]), PROMPTS[1], metric, labels=False)
    with pytest.raises(AttributionError, match="labels must be"):
        build_graph(m, WholeActivation.at(m, ["resid_post.0"]), PROMPTS[1], metric, labels=3)


def test_save_and_load_round_trip_exactly(setup, tmp_path):
    """A graph is data: saved (JSON + safetensors) and loaded, every node, edge, mask and group is equal, and
    checks on the loaded graph (its metric rebuilt from the saved description) give the same numbers."""
    m, saes, metric, g = setup
    p = g.prune(0.6, 0.95)
    p.group("pair", [x.id for x in p.top(2)])
    folder = p.save(tmp_path / "kobe")
    assert sorted(x.name for x in folder.iterdir()) == ["edges.safetensors", "graph.json"]
    back = type(p).load(tmp_path / "kobe")
    assert [x.to_dict() for x in back.full_nodes] == [x.to_dict() for x in p.full_nodes]
    for name in ("src", "dst", "weight", "node_mask", "edge_mask", "share"):
        assert torch.equal(getattr(back, name), getattr(p, name)), name
    assert (back.groups, back.pruning, back.info, back.metric_info) == (p.groups, p.pruning, p.info, p.metric_info)
    assert (back.prompt, back.tokens, back.token_ids, back.hooks) == (p.prompt, p.tokens, p.token_ids, p.hooks)
    assert back.to_json() == p.to_json()
    assert check(m, saes, back) == check(m, saes, p, metric)
    assert ablate_group(m, saes, back, "pair") == ablate_group(m, saes, p, "pair", metric)
    (folder / "edges.safetensors").unlink()
    with pytest.raises(GraphError, match=r"edges\.safetensors is missing"):
        type(p).load(folder)


def test_prune_is_pure_and_returns_the_masks(setup):
    from graphs import prune

    _, _, _, g = setup
    before = (g.node_mask.clone(), g.edge_mask.clone(), g.pruning)
    result = prune(g, 0.5, 0.9, max_feature_nodes=3)
    assert torch.equal(g.node_mask, before[0]) and torch.equal(g.edge_mask, before[1]) and g.pruning is before[2]
    assert torch.equal(result.graph.node_mask, result.node_mask) and torch.equal(
        result.graph.edge_mask, result.edge_mask
    )
    assert result.graph.pruning["max_feature_nodes"] == 3 and sum(x.kind == "feature" for x in result.graph.nodes) <= 3
