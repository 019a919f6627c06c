"""Influence on the metric and pruning, circuit-tracer style, on the sparse layered DAG.

Each node's incoming |weights| are normalised to sum to 1 (its inputs' shares; edges into a feature are in
activation units, into an error or the metric in metric units, so only shares are comparable). A node's
influence is the sum over all its paths to the metric of the product of shares: e_metric (A + A^2 + ...),
computed by propagating from the metric down the rows (as many steps as the DAG is deep), never densely.

Memory: edges are int32 src/dst and float32 weights (graphs.graph.Graph); nothing here makes an [E] float64
(or int64) copy of them. Sums that are [n] accumulate in float64, and the float64 products that feed them
are taken CHUNK edges at a time; an [E] result (shares, edge scores) is float32. Gathers by src/dst use
index_select: indexing with an int32 tensor (x[src]) makes an int64 copy of the index first.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from graphs.graph_nodes import GraphError

RANKS = ("influence", "attribution")
CHUNK = 1 << 18  # edges per slice where an [E] vector meets a float64 one: such temporaries stay 2 MB


class Pruned(NamedTuple):
    """What prune returns: the pruned graph (a new Graph) and the masks it keeps, over the full graph."""

    graph: object  # graphs.Graph
    node_mask: Tensor  # [n] bool
    edge_mask: Tensor  # [E] bool


def prune(
    graph,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    *,
    max_feature_nodes: int | None = None,
    max_nodes: int | None = None,
    rank: str = "influence",
) -> Pruned:
    """Keep the nodes and edges carrying node_threshold / edge_threshold of the influence on the metric.

    A pure function: always starts from `graph`'s full candidate graph and returns a new graph; `graph` is
    unchanged. Tokens and the metric always stay; max_feature_nodes caps feature nodes, max_nodes features +
    error nodes (see prune_masks).
    rank: what orders the nodes, "influence" (circuit-tracer: shares of |edge weights| along every path)
        or "attribution" (|activation x gradient of the metric|, the total-effect estimate that
        sparse feature circuits threshold); node_threshold is then a share of that score.
    """
    if rank not in RANKS:
        raise GraphError(f"unknown rank {rank!r}; choose one of {RANKS}")
    for name, v in (("max_feature_nodes", max_feature_nodes), ("max_nodes", max_nodes)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise GraphError(f"{name} must be a whole number of nodes or None, got {v!r}")
    key = (lambda x: x.influence) if rank == "influence" else (lambda x: abs(x.attribution))
    nodes, edges = prune_masks(
        [x.kind for x in graph.full_nodes],
        graph.src,
        graph.dst,
        graph.weight,
        torch.tensor([key(x) for x in graph.full_nodes], dtype=torch.float64),
        graph.metric_index,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        max_feature_nodes=max_feature_nodes,
        max_nodes=max_nodes,
    )
    new = graph.copy()
    new.node_mask, new.edge_mask = nodes, edges
    new.pruning = {
        "node_threshold": node_threshold,
        "edge_threshold": edge_threshold,
        "max_feature_nodes": max_feature_nodes,
        "max_nodes": max_nodes,
        "rank": rank,
    }
    return Pruned(new, nodes, edges)


def spans(m: int):
    """Slices of CHUNK over range(m)."""
    return (slice(i, min(i + CHUNK, m)) for i in range(0, m, CHUNK))


def totals(dst: Tensor, weight: Tensor, n: int) -> Tensor:
    """[n] float64: the sum of |w| into each target."""
    out = torch.zeros(n, dtype=torch.float64)
    for s in spans(len(dst)):
        out.index_add_(0, dst[s], weight[s].abs().double())
    return out


def per_target(dst: Tensor, weight: Tensor, n: int) -> Tensor:
    """[n] float64: 1 / the sum of |w| into each target (0 where nothing comes in), so that edge e's share is
    |w[e]| * per_target[dst[e]]: influence's `scale`, float64 shares with no [E] float64 copy."""
    t = totals(dst, weight, n)
    return torch.where(t > 0, 1 / t, torch.zeros_like(t))


def shares(dst: Tensor, weight: Tensor, n: int) -> Tensor:
    """|w| over the sum of |w| into the same target: [E] -> [E] float32 (each rounded once, from float64)."""
    total = totals(dst, weight, n).clamp_min(1e-300)
    out = torch.empty(len(dst), dtype=torch.float32)
    for s in spans(len(dst)):
        out[s] = weight[s].abs().double() / total.index_select(0, dst[s])
    return out


def influence(src: Tensor, dst: Tensor, share: Tensor, n: int, metric: int, scale: Tensor | None = None) -> Tensor:
    """[n] sum over paths to `metric` of the product of shares (the metric itself gets 0).

    Edge e's share is |share[e]|, times scale[dst[e]] when scale [n] is given: weights with
    scale=per_target(dst, weights, n) give float64 shares of float32 weights. Sums and products in float64."""
    total = torch.zeros(n, dtype=torch.float64)
    current = torch.zeros(n, dtype=torch.float64)
    current[metric] = 1.0
    for _ in range(n):  # each step moves one row down; a DAG ends well before n steps
        passed = current if scale is None else current * scale  # [n]: what a target passes on per unit share
        current = torch.zeros(n, dtype=torch.float64)
        for s in spans(len(src)):
            current.index_add_(0, src[s], share[s].abs().double() * passed.index_select(0, dst[s]))
        if not bool(current.any()):
            break
        total += current
    return total


def cumulative(score: Tensor, among: Tensor) -> Tensor:
    """For nodes in `among` [n] bool: the share of their total score held by nodes scoring at least as much."""
    out = torch.zeros_like(score, dtype=torch.float64)
    idx = among.nonzero().squeeze(-1)
    order = idx[score[idx].argsort(descending=True, stable=True)]
    total = float(score[order].sum())
    if total > 0:
        out[order] = score[order].double().cumsum(0) / total
    return out


def _within(score: Tensor, order: Tensor, threshold: float) -> Tensor:
    """Leading items of `order` (by descending score) needed to reach `threshold` of the total score."""
    s = score[order].double()
    total = float(s.sum())
    if total <= 0:
        return order[:0]
    before = (s.cumsum(0) - s) / total  # share held by the items ranked above each one
    return order[(before < threshold) & (s > 0)]


def _leading(score: Tensor, threshold: float) -> Tensor:
    """[E] bool: what _within keeps of every positive score ranked in descending order (ties by index), from
    a sort of the values alone (no [E] int64 order); the float64 running sum is taken a slice at a time."""
    keep = torch.zeros(len(score), dtype=torch.bool)
    v = np.sort(score.numpy())[::-1]  # [E] descending, in score's dtype
    total = sum(float(v[s].sum(dtype=np.float64)) for s in spans(len(v)))
    if total <= 0:
        return keep
    k, run = 0, 0.0  # items kept so far, the sum of every item before the slice
    for s in spans(len(v)):
        x = v[s].astype(np.float64)
        cum = run + np.cumsum(x)
        before = np.concatenate(([run], cum[:-1]))  # held by the items ranked above each one: never decreases
        ok = (before / total < threshold) & (x > 0)  # true on a leading run of the slice
        k += int(ok.sum())
        run = float(cum[-1])
        if not ok.all():
            break
    if k == 0:
        return keep
    cut = float(v[k - 1])
    keep |= score > cut
    ties = (score == cut).nonzero().squeeze(-1)  # in index order, as a stable sort ranks them
    keep[ties[: k - int(keep.count_nonzero())]] = True  # count_nonzero: a bool sum() makes an int64 copy
    return keep


def prune_masks(
    kinds: list[str],
    src: Tensor,
    dst: Tensor,
    weight: Tensor,
    node_influence: Tensor,
    metric: int,
    *,
    node_threshold: float,
    edge_threshold: float,
    max_feature_nodes: int | None,
    max_nodes: int | None,
) -> tuple[Tensor, Tensor]:
    """Node mask [n] and edge mask [E] of the pruned graph. Tokens and the metric always stay.

    1. Features and errors by influence, most influential first, until node_threshold of their total
       influence is covered; then the caps (max_feature_nodes on features, max_nodes on features + errors).
    2. Edges by influence through them (share x the target's influence, recomputed on the kept nodes; edges
       into the metric count with weight 1), until edge_threshold of the total is covered.
    3. Nodes left with no kept path to the metric go.
    """
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0 <= v <= 1:
            raise GraphError(f"{name} must be a share between 0 and 1, got {v}")
    for name, v in (("max_feature_nodes", max_feature_nodes), ("max_nodes", max_nodes)):
        if v is not None and v < 0:
            raise GraphError(f"{name} must be >= 0 or None, got {v}")
    n = len(kinds)
    kind = [{"token": 0, "feature": 1, "error": 2, "metric": 3}[k] for k in kinds]
    kind = torch.tensor(kind)
    inner = (kind == 1) | (kind == 2)
    idx = inner.nonzero().squeeze(-1)
    order = idx[node_influence[idx].argsort(descending=True, stable=True)]
    chosen = _within(node_influence, order, node_threshold)  # still sorted by influence
    if max_feature_nodes is not None:
        is_f = kind[chosen] == 1
        rank = is_f.long().cumsum(0)
        chosen = chosen[~is_f | (rank <= max_feature_nodes)]
    if max_nodes is not None:
        chosen = chosen[:max_nodes]
    nodes = (kind == 0) | (kind == 3)
    nodes[chosen] = True

    e_in = nodes.index_select(0, src) & nodes.index_select(0, dst)
    kept = torch.where(e_in, weight, torch.zeros((), dtype=weight.dtype))  # [E]: edges out of the kept graph weigh 0
    scale = per_target(dst, kept, n)
    inf = influence(src, dst, kept, n, metric, scale=scale)
    inf[metric] = 1.0
    through = scale * inf  # [n]: influence an edge carries per unit of |w| into each target
    score = torch.empty(len(src), dtype=torch.float32)  # share x the target's influence
    for s in spans(len(src)):
        score[s] = kept[s].abs().double() * through.index_select(0, dst[s])
    del kept
    edges = _leading(score, edge_threshold)
    del score

    reach = torch.zeros(n, dtype=torch.bool)
    reach[metric] = True
    for _ in range(n):
        step = reach.clone()
        for s in spans(len(src)):
            step[src[s][edges[s] & reach.index_select(0, dst[s])]] = True
        if bool((step == reach).all()):
            break
        reach = step
    nodes &= reach | (kind == 0)
    edges &= nodes.index_select(0, src) & nodes.index_select(0, dst)
    return nodes, edges
