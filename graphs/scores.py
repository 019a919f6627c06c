"""How much of a graph is explained by its features: circuit-tracer's replacement and completeness scores.

Both use each node's influence on the metric (graphs.prune.influence: |weights| normalised per target, every
path summed) over the full graph's edges:
- replacement score: the influence of the input tokens over that of tokens and error nodes together, i.e. how
  much of the end-to-end path from tokens to the metric runs through features;
- completeness score: per node, the share of its input that does not come from error nodes, averaged with
  weight (influence + 1 for the metric).
circuit-tracer defines them for a graph, not for a pruned one; for a pruned graph both readings are offered:
the features it dropped count as error nodes (what the pruned graph leaves unexplained; the default), or are
removed with the pruned edges. The unpruned graph's scores are circuit-tracer's compute_graph_scores.
Shares are taken in float64 from the float32 weights without an [E] float64 copy (graphs.prune's memory note).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from graphs.prune import influence, per_target, spans


class Scores(NamedTuple):
    replacement: float
    completeness: float


def graph_scores(graph, pruned: bool = True, dropped: str = "error") -> Scores:
    """The scores of `graph`'s kept nodes (pruned=False: of its full candidate graph).

    dropped: what a pruned graph does with the features it dropped: "error" counts them as error nodes (their
    influence is unexplained), "removed" takes them out with every pruned edge, each node's inputs normalised
    over what is kept (circuit-tracer's formulas on the pruned adjacency matrix)."""
    if dropped not in ("error", "removed"):
        raise ValueError(f"dropped must be 'error' or 'removed', got {dropped!r}")
    nodes = graph.full_nodes
    n = len(nodes)
    src, dst, weight = graph.src, graph.dst, graph.weight
    if pruned and dropped == "removed":
        keep = graph.edge_mask & graph.node_mask.index_select(0, src) & graph.node_mask.index_select(0, dst)
        weight = torch.where(keep, weight, torch.zeros((), dtype=weight.dtype))  # [E]: removed edges weigh 0
        del keep
    scale = per_target(dst, weight, n)  # [n]: share of edge e = |w[e]| * scale[dst[e]]
    inf = influence(src, dst, weight, n, graph.metric_index, scale=scale)  # [n]
    kind = [x.kind for x in nodes]
    is_token = torch.tensor([k == "token" for k in kind])
    unexplained = torch.tensor([k == "error" for k in kind])
    if pruned and dropped == "error":
        unexplained |= torch.tensor([k == "feature" for k in kind]) & ~graph.node_mask
    tokens, errors = float(inf[is_token].sum()), float(inf[unexplained].sum())
    replacement = tokens / (tokens + errors) if tokens + errors > 0 else float("nan")
    from_errors = torch.zeros(n, dtype=torch.float64)  # [n] share of each node's input from unexplained nodes
    for s in spans(len(src)):
        from_errors.index_add_(0, dst[s], weight[s].abs().double() * unexplained.index_select(0, src[s]))
    from_errors *= scale
    weight_of = inf.clone()
    weight_of[graph.metric_index] += 1.0
    completeness = float(((1 - from_errors) * weight_of).sum() / weight_of.sum())
    return Scores(replacement, completeness)
