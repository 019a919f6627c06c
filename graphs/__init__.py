"""Feature graphs for multi-hop prompts: nodes across layers and positions, edges by direct effect,
pruned by influence, checked by ablation, exported as offline HTML, Neuronpedia JSON and networkx.

Built on `attribution` (issue 4); this package holds no code yet.
"""
