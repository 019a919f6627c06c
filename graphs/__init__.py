"""Feature graphs for multi-hop prompts: nodes across layers and positions, edges by direct effect,
pruned by influence, checked by ablation, exported as offline HTML, Neuronpedia JSON and networkx.

    g = build_graph(model, {hook: sae, ...}, prompt, LogitDiff(model, " Sacramento", " Albany"))
    g.prune(node_threshold=0.8, edge_threshold=0.98, max_feature_nodes=60)   # in place, returns g
    print(g.check())                        # faithfulness and completeness by real ablation (zero, errors kept)
    g.group("state", [(hook, feature), ...]); g.ablate_group("state")   # metric change with the group ablated
    g.group_by_contrast("California", positive, negative)   # or the features attribution.contrast finds
    g.to_html("kobe.html"); g.to_json("kobe.json"); nx_graph = g.to_networkx()
    load_graph_json("kobe.json")            # validate a graph JSON (ours or circuit-tracer's): names the bad field

Modules: build (candidates, assembling), edges (batched backward passes), prune (influence), check
(interventions), groups, labels (attribution.explain), html + template (pyvis), schema (JSON, networkx).
"""

from graphs.build import build_graph
from graphs.check import Check, LayerCheck
from graphs.graph import Edge, Graph
from graphs.nodes import GraphError, GraphNode
from graphs.schema import load_graph_json

__all__ = ["Check", "Edge", "Graph", "GraphError", "GraphNode", "LayerCheck", "build_graph", "load_graph_json"]
