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
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from graphs.prune import influence, shares


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
        keep = graph.edge_mask & graph.node_mask[src] & graph.node_mask[dst]
        src, dst, weight = src[keep], dst[keep], weight[keep]
    share = shares(dst, weight, n)
    inf = influence(src, dst, share, n, graph.metric_index)  # [n]
    kind = [x.kind for x in nodes]
    is_token = torch.tensor([k == "token" for k in kind])
    unexplained = torch.tensor([k == "error" for k in kind])
    if pruned and dropped == "error":
        unexplained |= torch.tensor([k == "feature" for k in kind]) & ~graph.node_mask
    tokens, errors = float(inf[is_token].sum()), float(inf[unexplained].sum())
    replacement = tokens / (tokens + errors) if tokens + errors > 0 else float("nan")
    from_errors = torch.zeros(n, dtype=torch.float64).index_add_(0, dst, share * unexplained[src])
    weight_of = inf.clone()
    weight_of[graph.metric_index] += 1.0
    completeness = float(((1 - from_errors) * weight_of).sum() / weight_of.sum())
    return Scores(replacement, completeness)
