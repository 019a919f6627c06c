"""An aggregate graph across prompts: the features and edges that several prompts' circuits share.

circuit-tracer's graphs are one prompt each. Here the kept (pruned) graphs of a suite are merged by feature:
a node is a (hook, feature) whatever its token position, plus one node for the metric (each prompt's answer
logit difference), and an edge joins two of them when some prompt's graph keeps an edge between their nodes.
Each carries how many prompts use it and their mean influence / weight; a pathway such as "country ->
language" is the set of nodes and edges many prompts share. Tokens and error nodes are left out: they differ
from prompt to prompt by construction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from graphs.graph_nodes import GraphError

METRIC = "metric"


@dataclass
class AggregateNode:
    key: str  # "resid_post.6 f123", or "metric"
    hook: str | None
    layer: int  # row: the dictionary's position in forward order (the metric last)
    feature: int | None
    prompts: list[str] = field(default_factory=list)  # ids of the prompts whose graphs keep it
    influence: float = 0.0  # mean over those prompts (summed over positions within a prompt)
    label: str = ""
    groups: list[str] = field(default_factory=list)  # supernode names it belongs to in any prompt


@dataclass
class AggregateEdge:
    source: str
    target: str
    prompts: list[str] = field(default_factory=list)
    weight: float = 0.0  # mean over those prompts of the summed edge weight


@dataclass
class Aggregate:
    nodes: dict[str, AggregateNode]
    edges: list[AggregateEdge]
    prompts: list[str]

    def shared(self, min_prompts: int = 2) -> Aggregate:
        """Only the nodes and edges at least `min_prompts` prompts use."""
        nodes = {k: n for k, n in self.nodes.items() if len(n.prompts) >= min_prompts or k == METRIC}
        edges = [e for e in self.edges if len(e.prompts) >= min_prompts and e.source in nodes and e.target in nodes]
        return Aggregate(nodes, edges, self.prompts)

    def to_dict(self) -> dict:
        return {
            "prompts": self.prompts,
            "nodes": [vars(n) | {"n_prompts": len(n.prompts)} for n in self.nodes.values()],
            "edges": [vars(e) | {"n_prompts": len(e.prompts)} for e in self.edges],
        }


def _key(x) -> str | None:
    if x.kind == "feature":
        return f"{x.hook} f{x.feature}"
    return METRIC if x.kind == "metric" else None


def aggregate(graphs: dict) -> Aggregate:
    """Merge {prompt id: Graph} (pruned graphs, built with the same dictionaries) into one Aggregate."""
    if not graphs:
        raise GraphError("aggregate needs at least one graph")
    hooks = {tuple(g.hooks) for g in graphs.values()}
    if len(hooks) > 1:
        raise GraphError(f"the graphs were built with different dictionaries ({sorted(hooks)}); aggregate one set")
    order = list(next(iter(hooks)))
    nodes: dict[str, AggregateNode] = {}
    influence: dict[str, list[float]] = defaultdict(list)
    edges: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for pid, g in graphs.items():
        member_of = {i: name for name, ids in g.groups.items() for i in ids}
        mine: dict[str, float] = defaultdict(float)
        for x in g.nodes:
            k = _key(x)
            if k is None:
                continue
            if k not in nodes:
                layer = order.index(x.hook) if x.hook in order else len(order)
                nodes[k] = AggregateNode(k, x.hook, layer, x.feature, label=x.label or "")
            mine[k] += x.influence or 0.0
            if x.id in member_of and member_of[x.id] not in nodes[k].groups:
                nodes[k].groups.append(member_of[x.id])
        for k, v in mine.items():
            nodes[k].prompts.append(pid)
            influence[k].append(v)
        for e in g.edges:
            s, t = _key(g.node(e.source)), _key(g.node(e.target))
            if s is None or t is None or s == t:
                continue
            edges[(s, t)][pid] = edges[(s, t)].get(pid, 0.0) + e.weight
    for k, vals in influence.items():
        nodes[k].influence = sum(vals) / len(vals)
    out_edges = [AggregateEdge(s, t, sorted(w), sum(w.values()) / len(w)) for (s, t), w in sorted(edges.items())]
    return Aggregate(nodes, out_edges, list(graphs))
