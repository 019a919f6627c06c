"""Influence on the metric and pruning, circuit-tracer style, on the sparse layered DAG.

Each node's incoming |weights| are normalised to sum to 1 (its inputs' shares; edges into a feature are in
activation units, into an error or the metric in metric units, so only shares are comparable). A node's
influence is the sum over all its paths to the metric of the product of shares: e_metric (A + A^2 + ...),
computed by propagating from the metric down the rows (as many steps as the DAG is deep), never densely.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from graphs.graph_nodes import GraphError

RANKS = ("influence", "attribution")


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


def shares(dst: Tensor, weight: Tensor, n: int) -> Tensor:
    """|w| over the sum of |w| into the same target: [E] -> [E]."""
    a = weight.abs().double()
    total = torch.zeros(n, dtype=torch.float64).index_add_(0, dst, a)  # [n]
    return a / total[dst].clamp_min(1e-300)


def influence(src: Tensor, dst: Tensor, share: Tensor, n: int, metric: int) -> Tensor:
    """[n] sum over paths to `metric` of the product of shares (the metric itself gets 0)."""
    total = torch.zeros(n, dtype=torch.float64)
    current = torch.zeros(n, dtype=torch.float64)
    current[metric] = 1.0
    for _ in range(n):  # each step moves one row down; a DAG ends well before n steps
        current = torch.zeros(n, dtype=torch.float64).index_add_(0, src, share * current[dst])
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

    e_in = nodes[src] & nodes[dst]
    share = torch.zeros(len(src), dtype=torch.float64)
    share[e_in] = shares(dst[e_in], weight[e_in], n)
    inf = influence(src[e_in], dst[e_in], share[e_in], n, metric)
    inf[metric] = 1.0
    score = share * inf[dst]
    e_idx = e_in.nonzero().squeeze(-1)
    e_order = e_idx[score[e_idx].argsort(descending=True, stable=True)]
    edges = torch.zeros(len(src), dtype=torch.bool)
    edges[_within(score, e_order, edge_threshold)] = True

    reach = torch.zeros(n, dtype=torch.bool)
    reach[metric] = True
    for _ in range(n):
        step = reach.clone()
        step[src[edges & reach[dst]]] = True
        if bool((step == reach).all()):
            break
        reach = step
    nodes &= reach | (kind == 0)
    edges &= nodes[src] & nodes[dst]
    return nodes, edges
