"""How much of a graph is explained by its features: circuit-tracer's replacement and completeness scores.

Both use each node's influence on the metric (graphs.prune.influence: |weights| normalised per target, every
path summed) over the full graph's edges:
- replacement score: the influence of the input tokens over that of tokens and error nodes together, i.e. how
  much of the end-to-end path from tokens to the metric runs through features;
- completeness score: per node, the share of its input that does not come from error nodes, averaged with
  weight (influence + 1 for the metric).
For a pruned graph, the features it dropped count as error nodes (what the pruned graph leaves unexplained),
as in Anthropic's circuit-tracing paper; the unpruned graph's scores are circuit-tracer's compute_graph_scores.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from graphs.prune import influence, shares


class Scores(NamedTuple):
    replacement: float
    completeness: float


def graph_scores(graph, pruned: bool = True) -> Scores:
    """The scores of `graph`'s kept nodes (pruned=False: of its full candidate graph)."""
    nodes = graph.full_nodes
    n = len(nodes)
    share = shares(graph.dst, graph.weight, n)
    inf = influence(graph.src, graph.dst, share, n, graph.metric_index)  # [n]
    kind = [x.kind for x in nodes]
    is_token = torch.tensor([k == "token" for k in kind])
    unexplained = torch.tensor([k == "error" for k in kind])
    if pruned:
        unexplained |= torch.tensor([k == "feature" for k in kind]) & ~graph.node_mask
    tokens, errors = float(inf[is_token].sum()), float(inf[unexplained].sum())
    replacement = tokens / (tokens + errors) if tokens + errors > 0 else float("nan")
    from_errors = torch.zeros(n, dtype=torch.float64).index_add_(0, graph.dst, share * unexplained[graph.src])
    weight = inf.clone()
    weight[graph.metric_index] += 1.0
    completeness = float(((1 - from_errors) * weight).sum() / weight.sum())
    return Scores(replacement, completeness)
