"""Graph memory (issue 23): edges are int32 src/dst and float32 weights and shares in every built, pruned,
saved and loaded graph; format-1 folders (int64/float64 edges) still load; and pruning, scoring and the
replacement builder's influence ranking, which now run on float32 edges a slice at a time, equal a dense float64
reference computed from the original float64 weights.

Tolerances: a float32 weight is its float64 value rounded once (relative error <= eps / 2, eps = 2^-23), so a
share is within ~eps of the float64 share and an influence, a product of shares along paths 4 rows deep, within
~4 eps; node values and scores are compared at rtol=RTOL = 1e-6 (~8 eps). Masks are compared exactly, after
checking that no reference score lies within RTOL of its threshold (else a rounding could honestly flip it).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from attribution import LogitDiff
from graphs import GraphError, build_graph
from graphs.graph import EDGES, META, Graph
from graphs.graph_nodes import GraphNode
from graphs.replacement import build_replacement_graph
from graphs.replacement_rows import SparseRows
from graphs.scores import graph_scores
from tests.conftest import PROMPTS, random_sae, random_transcoders, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-6


@pytest.fixture(scope="module")
def sae_graph():
    m = tiny_model("gpt2")
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(["resid_post.0", "resid_post.2"])}
    return build_graph(m, saes, PROMPTS[0], LogitDiff(m, "sad", "happy"), candidates=None, labels=False)


@pytest.fixture(scope="module")
def replacement_graph():
    m = tiny_model("llama")
    tcs = random_transcoders(m, "topk")
    return build_replacement_graph(m, tcs, PROMPTS[0], LogitDiff(m, "sad", "happy"), labels=False, progress=False)


def _check_dtypes(g: Graph) -> None:
    assert (g.src.dtype, g.dst.dtype, g.weight.dtype, g.share.dtype) == (torch.int32,) * 2 + (torch.float32,) * 2
    assert g.node_mask.dtype == g.edge_mask.dtype == torch.bool
    assert len(g.src) == len(g.dst) == len(g.weight) == len(g.share) == len(g.edge_mask) > 100


@pytest.mark.parametrize("which", ["sae_graph", "replacement_graph"])
def test_built_and_pruned_graphs_hold_int32_and_float32_edges(which, request):
    g = request.getfixturevalue(which)
    _check_dtypes(g)
    p = g.prune(0.6, 0.9)
    _check_dtypes(p)
    assert 0 < int(p.edge_mask.sum()) < len(p.src)
    assert all(isinstance(x.influence, float) for x in p.full_nodes)  # node values: Python (float64) numbers


def test_save_and_load_round_trip_in_the_new_dtypes(sae_graph, tmp_path):
    p = sae_graph.prune(0.6, 0.95)
    folder = p.save(tmp_path / "new")
    saved = load_file(str(folder / EDGES))
    assert {k: v.dtype for k, v in saved.items()} == {
        "src": torch.int32,
        "dst": torch.int32,
        "weight": torch.float32,
        "node_mask": torch.bool,
        "edge_mask": torch.bool,
    }
    assert json.loads((folder / META).read_text())["format"] == 2
    back = Graph.load(folder)
    _check_dtypes(back)
    for name in ("src", "dst", "weight", "share", "node_mask", "edge_mask"):
        assert torch.equal(getattr(back, name), getattr(p, name)), name
    assert [x.to_dict() for x in back.full_nodes] == [x.to_dict() for x in p.full_nodes]
    assert graph_scores(back) == graph_scores(p)


def test_format_1_folders_with_int64_and_float64_edges_still_load(sae_graph, tmp_path):
    """A folder as the previous release wrote it: format 1, int64 indices, float64 weights (these here are the
    graph's float32 weights moved off float32's grid by 1e-12 of their value, as a float64 build's are)."""
    p = sae_graph.prune(0.6, 0.95)
    folder = p.save(tmp_path / "old")
    tensors = load_file(str(folder / EDGES))
    tensors |= {"src": p.src.long(), "dst": p.dst.long(), "weight": p.weight.double() * (1 + 1e-12)}
    assert not torch.equal(tensors["weight"].float().double(), tensors["weight"])
    save_file(tensors, str(folder / EDGES), metadata={"format": "1"})
    meta = json.loads((folder / META).read_text())
    (folder / META).write_text(json.dumps(meta | {"format": 1}))
    back = Graph.load(folder)
    _check_dtypes(back)
    for name in ("src", "dst", "weight", "share", "node_mask", "edge_mask"):  # rounded to the nearest float32
        assert torch.equal(getattr(back, name), getattr(p, name)), name
    assert back.pruning == p.pruning and back.to_json() == p.to_json()
    (folder / META).write_text(json.dumps(meta | {"format": 3}))
    with pytest.raises(GraphError, match="graph format 3"):
        Graph.load(folder)


# --- a float64 reference -------------------------------------------------------------------------------


def _synthetic(seed: int = 0):
    """A random layered graph (5 tokens, 3 rows of 9 features and 3 errors, the metric; edges from the row
    below and some skipping one) as Graph fields, with its float64 weights."""
    g = torch.Generator().manual_seed(seed)
    nodes = [GraphNode(f"tok:{i}", "token", 0, None, i, None, "t", 1.0, 0.1) for i in range(5)]
    rows = [list(range(5))]
    for layer in (1, 2, 3):
        rows.append(list(range(len(nodes), len(nodes) + 12)))
        for j in range(12):
            kind = "error" if j < 3 else "feature"
            feature = None if kind == "error" else j
            nodes.append(GraphNode(f"h{layer}:{j}", kind, layer, f"h{layer}", j, feature, "t", 1.0, 0.1))
    nodes.append(GraphNode("metric", "metric", 4, None, 4, None, "t", 1.0, 1.0))
    rows.append([len(nodes) - 1])
    src, dst = [], []
    for r in range(1, 5):
        for d in rows[r]:
            for below, p in ((rows[r - 1], 0.7), (rows[r - 2] if r > 1 else [], 0.2)):
                pick = torch.rand(len(below), generator=g) < p
                src += [s for s, k in zip(below, pick.tolist()) if k]
                dst += [d] * int(pick.sum())
    weight = torch.randn(len(src), generator=g, dtype=torch.float64) * torch.rand(len(src), generator=g)
    fields = {
        "prompt": "p",
        "token_ids": list(range(5)),
        "tokens": ["t"] * 5,
        "hooks": ["h1", "h2", "h3"],
        "layers": {"h1": 1, "h2": 2, "h3": 3},
        "model": {"name": "synthetic", "n_layers": 3},
        "metric_info": {"repr": "m", "value": 1.0},
        "full_nodes": nodes,
        "src": torch.tensor(src),
        "dst": torch.tensor(dst),
        "weight": weight,
    }
    return fields, weight


def _dense_influence(A: torch.Tensor, metric: int) -> torch.Tensor:
    """circuit-tracer's definition, densely in float64: A[target, source] weights, rows normalised by |.|."""
    N = A.abs()
    N = N / N.sum(1, keepdim=True).where(N.sum(1, keepdim=True) > 0, torch.ones(()))
    cur = N[metric].clone()
    inf = torch.zeros(len(A), dtype=torch.float64)
    while cur.any():
        inf += cur
        cur = cur @ N
    return inf


def _leading(score: torch.Tensor, threshold: float) -> tuple[torch.Tensor, float]:
    """Positive scores, most first (ties by index), until `threshold` of their total; and the smallest relative
    distance of any running share from the threshold (how far the choice is from a flip)."""
    order = score.argsort(descending=True, stable=True)
    s = score[order]
    before = (s.cumsum(0) - s) / s.sum()
    keep = torch.zeros(len(score), dtype=torch.bool)
    keep[order[(before < threshold) & (s > 0)]] = True
    return keep, float(((before - threshold).abs() / threshold).min())


def _reference_prune(fields, weight, node_threshold, edge_threshold):
    """prune_masks' three steps (graphs.prune), densely in float64 on the float64 weights; and the margin."""
    kinds = [x.kind for x in fields["full_nodes"]]
    n, metric = len(kinds), len(kinds) - 1
    src, dst = fields["src"], fields["dst"]
    A = torch.zeros(n, n, dtype=torch.float64)
    A[dst, src] = weight
    inner = torch.tensor([k in ("feature", "error") for k in kinds])
    inf = _dense_influence(A, metric)
    chosen, margin = _leading(torch.where(inner, inf, torch.zeros(())), node_threshold)
    nodes = chosen | torch.tensor([k in ("token", "metric") for k in kinds])
    Ak = A * nodes[:, None] * nodes[None, :]
    inf_k = _dense_influence(Ak, metric)
    inf_k[metric] = 1.0
    N = Ak.abs() / Ak.abs().sum(1, keepdim=True).clamp_min(1e-300)
    edges, edge_margin = _leading(N[dst, src] * inf_k[dst], edge_threshold)
    reach = torch.zeros(n, dtype=torch.bool)
    reach[metric] = True
    for _ in range(n):
        reach[src[edges & reach[dst]]] = True
    nodes &= reach | torch.tensor([k == "token" for k in kinds])
    return nodes, edges & nodes[src] & nodes[dst], inf, min(margin, edge_margin)


def _reference_scores(fields, weight, unexplained, keep=None):
    """circuit-tracer's replacement and completeness scores, densely in float64 (keep: the edges left in)."""
    kinds = [x.kind for x in fields["full_nodes"]]
    n = len(kinds)
    A = torch.zeros(n, n, dtype=torch.float64)
    A[fields["dst"], fields["src"]] = weight if keep is None else weight * keep
    inf = _dense_influence(A, n - 1)
    N = A.abs() / A.abs().sum(1, keepdim=True).clamp_min(1e-300)
    tokens = inf[[k == "token" for k in kinds]].sum()
    replacement = tokens / (tokens + inf[unexplained].sum())
    out = inf.clone()
    out[-1] += 1
    return float(replacement), float(((1 - N[:, unexplained].sum(1)) * out).sum() / out.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruning_and_scores_equal_a_float64_reference(seed):
    fields, w64 = _synthetic(seed)
    g = Graph.scored(**fields)
    _check_dtypes(g)
    assert torch.equal(g.weight, w64.float())  # each weight rounded once
    nodes, edges, inf, margin = _reference_prune(fields, w64, 0.7, 0.9)
    got = torch.tensor([x.influence for x in g.full_nodes], dtype=torch.float64)
    torch.testing.assert_close(got[:-1], inf[:-1], rtol=RTOL, atol=1e-12)
    p = g.prune(0.7, 0.9)
    assert margin > RTOL  # no threshold within a float32 rounding of a running share: the masks are determined
    assert torch.equal(p.node_mask, nodes) and torch.equal(p.edge_mask, edges)
    assert 0 < int(edges.sum()) < len(edges) and 0 < int(nodes.sum()) < len(nodes)
    kinds = [x.kind for x in fields["full_nodes"]]
    errors = torch.tensor([k == "error" for k in kinds])
    dropped = errors | (torch.tensor([k == "feature" for k in kinds]) & ~nodes)
    kept = edges & nodes[fields["src"]] & nodes[fields["dst"]]
    cases = {
        "full": (graph_scores(p, pruned=False), _reference_scores(fields, w64, errors)),
        "error": (graph_scores(p), _reference_scores(fields, w64, dropped)),
        "removed": (graph_scores(p, dropped="removed"), _reference_scores(fields, w64, errors, kept)),
    }
    for name, (mine, ref) in cases.items():
        assert tuple(mine) == pytest.approx(ref, rel=RTOL), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_influence_ranking_of_the_rows_equals_the_float64_path_sum(dtype):
    """The replacement builder's ranking (graphs.replacement_rows.SparseRows.ranking_influence) reads the rows'
    nonzero entries in their own dtype, and sums in float64: against the dense float64 path sum over the same
    (float64) rows it is exact for float64 rows and within float32 rounding for float32 rows. The rows, added a
    few at a time, hold their nonzero entries only, and the total effect equals the dense path sum too."""
    g = torch.Generator().manual_seed(0)
    n, layer = 60, torch.arange(60) // 15  # sources in 4 layers; a row's feature reads lower layers only
    row_source = torch.tensor([-1, 30, 31, 45, 47, 50, 16, 20])
    rows = torch.randn(len(row_source), n, generator=g, dtype=torch.float64)
    for r, s in enumerate(row_source.tolist()):
        if s >= 0:
            rows[r, layer >= layer[s]] = 0
    A = torch.zeros(n + 1, n + 1, dtype=torch.float64)  # the rows as edges: row r into its node, the metric n
    node = row_source.where(row_source >= 0, torch.tensor(n))
    A[node, :n] = rows
    want = _dense_influence(A, n)[:n]
    sparse = SparseRows(n, capacity=10, dtype=dtype)  # a bound too small: the arrays grow
    for part, at in zip(rows.to(dtype).split(3), torch.tensor([4, *layer[row_source[1:]]]).split(3)):
        sparse.add(part, at)  # the metric's row above every layer
    assert sparse.n == int((rows != 0).sum()) and sparse.n_rows == len(rows)
    got = sparse.ranking_influence(row_source)
    assert got.dtype == torch.float64 and (want > 0).sum() > 40
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=1e-12)
    act = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    total = rows[0].clone()  # t = R[0] + sum_r (t_r / a_r) R[r], iterated to the fixed point densely
    for _ in range(5):
        total = rows[0] + (total[row_source[1:]] / act[row_source[1:]]) @ rows[1:]
    got = sparse.total_effect(row_source[1:], act[row_source[1:]])
    torch.testing.assert_close(got, total, rtol=tol, atol=1e-12)
