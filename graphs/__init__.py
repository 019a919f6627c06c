"""Feature graphs for multi-hop prompts: nodes across layers and positions, edges by direct effect,
pruned by influence, checked by real ablation, saved and loaded, exported as offline HTML, circuit-tracer
graph JSON and networkx.

    g = build_graph(model, saes, prompt, LogitDiff(model, " Sacramento", " Albany"))   # data, no model inside
    p = g.prune(node_threshold=0.8, edge_threshold=0.98, max_feature_nodes=60)   # a new graph
    print(check(model, saes, p))            # faithfulness and completeness by real ablation (zero, errors kept)
    p.group("state", [(hook, feature), ...]); ablate_group(model, saes, p, "state")   # metric change
    group_by_contrast(model, saes, p, "California", positive, negative)   # features attribution.contrast finds
    p.save("kobe"); Graph.load("kobe")      # a folder (graph.json + edges.safetensors), every number equal
    p.to_html("kobe.html"); p.to_json("kobe.json"); nx_graph = p.to_networkx()
    load_graph_json("kobe.json")            # validate a graph JSON (ours or circuit-tracer's): names the bad field

Modules: build (SAE graphs: candidates, nodes, edges), replacement (transcoder graphs), describe (what every
graph records), edges (batched backward passes), graph (the data), prune (influence; a pure function),
scores, interventions (checks, group ablation, steering and swaps: they take the model), groups, labeler
(attribution.explain), graph_nodes (node kinds and ids), schema (circuit-tracer's graph JSON, networkx),
viewer_features (its viewer's feature files). Pages are drawn above this package, in pages/.
"""

from graphs.build import build_graph
from graphs.graph import Edge, Graph
from graphs.graph_nodes import GraphError, GraphNode
from graphs.interventions import (
    Check,
    LayerCheck,
    ablate_group,
    check,
    check_layers,
    group_by_contrast,
    steer_group,
)
from graphs.prune import Pruned, prune
from graphs.schema import load_graph_json

__all__ = [
    "Check",
    "Edge",
    "Graph",
    "GraphError",
    "GraphNode",
    "LayerCheck",
    "Pruned",
    "ablate_group",
    "build_graph",
    "check",
    "check_layers",
    "group_by_contrast",
    "load_graph_json",
    "prune",
    "steer_group",
]
