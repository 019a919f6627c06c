"""Supernodes: named groups of feature nodes ("California" = several features at several positions).

A group is intervened on as one unit (all members at once, see graphs.interventions) and drawn as one node, its
edges the sums of its members' edges. Members are given as node ids, GraphNodes, (hook, position, feature)
triples, or (hook, feature) pairs meaning that feature at every position where the graph has it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from attribution.models.hooks import canonical
from graphs.graph_nodes import GraphError, GraphNode, feature_id


def resolve(graph, members: Iterable) -> list[str]:
    """Node ids of the feature nodes named by `members`, in graph order, checked to exist."""
    if isinstance(members, (str, GraphNode, tuple)):
        members = [members]
    ids: list[str] = []
    for m in members:
        ids.extend(_ids_of(graph, m))
    if not ids:
        raise GraphError("a group needs at least one feature node")
    order = {nid: i for i, nid in enumerate(graph.node_ids(full=True))}
    return sorted(dict.fromkeys(ids), key=order.__getitem__)


def _ids_of(graph, m) -> list[str]:
    if isinstance(m, GraphNode):
        m = m.id
    if isinstance(m, str):
        node = graph.node(m)
        if node.kind != "feature":
            raise GraphError(f"{m!r} is a {node.kind} node; groups hold feature nodes only")
        return [m]
    if isinstance(m, tuple) and len(m) == 3:
        hook, pos, feat = m
        nid = feature_id(canonical(hook), int(pos), int(feat))
        graph.node(nid)  # raises if absent
        return [nid]
    if isinstance(m, tuple) and len(m) == 2:
        hook, feat = canonical(m[0]), int(m[1])
        found = [n.id for n in graph.full_nodes if n.kind == "feature" and n.hook == hook and n.feature == feat]
        if not found:
            raise GraphError(f"feature {feat} at {hook} is not a node of this graph (inactive, or not a candidate)")
        return found
    raise GraphError(
        f"cannot read group member {m!r}: give a node id, a GraphNode, (hook, position, feature) or (hook, feature)"
    )


def _words(label: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", label.lower()) if len(w) > 2}


def by_label(nodes: list[GraphNode], min_overlap: float = 0.5) -> dict[str, list[str]]:
    """Clusters of >= 2 feature nodes whose labels share words (Jaccard >= min_overlap), most influential first.

    Each cluster is named after the label of its most influential member.
    """
    feats = sorted((n for n in nodes if n.kind == "feature" and n.label), key=lambda n: -n.influence)
    clusters: list[tuple[set[str], list[GraphNode]]] = []
    for n in feats:
        words = _words(n.label)
        for seed, members in clusters:
            if words and len(words & seed) / len(words | seed) >= min_overlap:
                members.append(n)
                break
        else:
            clusters.append((words, [n]))
    out: dict[str, list[str]] = {}
    for _, members in clusters:
        if len(members) < 2:
            continue
        name, k = members[0].label, 2
        while name in out:
            name, k = f"{members[0].label} ({k})", k + 1
        out[name] = [n.id for n in members]
    return out
