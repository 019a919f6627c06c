"""The case study's replacement-graph stage: the prompt's graph with one transcoder per layer (graphs.replacement),
beside the residual-SAE graph of the same prompt, and the interventions that test its story.

What it measures, all written to the report:
- both graphs' sizes and scores at the same feature budgets (60 and 100 features): circuit-tracer's
  replacement and completeness scores of the linear graph, and faithfulness by real ablation in the model
  (attention and norms live; nodes outside the graph zero-ablated, error terms kept);
- the top nodes of the pruned replacement graph with their labels;
- each contrast group (e.g. California) as graph nodes, ablated together in the real model, and, where a
  swap is configured, the group's features replaced by another group's (e.g. Texas) at the same positions,
  with the change in the swap's own logit difference (e.g. Austin - Sacramento) and the answer before/after.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

BUDGETS = (60, 100)  # feature nodes: a graph a reader can follow, and the cap


@dataclass
class ReplacementResult:
    stats: dict
    html: str


def stage(config, loaded, graph_result) -> ReplacementResult | None:
    """Build, prune, score, check and export the replacement graph (None when no transcoders are configured)."""
    if config.sources.transcoders is None:
        return None
    from cases.stages import contrast_groups
    from graphs import build_graph
    from graphs.labeler import labeler
    from pages.graph_page import page

    model, prompt, metric = loaded.model, config.question.prompt, loaded.metric
    tcs = load(config.sources.transcoders, model, config.progress)
    out = config.output.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    names = labeler(model, tcs, config.output.explain, config.progress)
    full = build_graph(model, tcs, prompt, metric, labels=names, progress=config.progress)
    built = time.perf_counter() - start
    budgets = _budgets(model, tcs, full, metric)
    g, result = budgets[max(BUDGETS)]  # the page shows the largest budget's graph and its check
    stats = {
        "transcoders": describe(tcs),
        "build_s": round(built, 2),
        "active_features": full.info["active_features"],
        "full": summary(full, pruned=False),
        "budgets": {b: _stats(*pair) for b, pair in budgets.items()},
        "top": [_row(x) for x in g.top(15)],
        "groups": contrast_groups(model, tcs, g, metric, config.graph.groups, config.graph.swaps),
    }
    if graph_result is not None and getattr(graph_result, "full", None) is not None:
        saes, sae_full = graph_result.saes, graph_result.full
        stats["sae_graph"] = {
            "full": summary(sae_full, pruned=False),
            "budgets": {b: _stats(*pair) for b, pair in _budgets(model, saes, sae_full, metric).items()},
        }
    cards = names.card if config.output.explain else None
    # the graph is already pruned to at most max(BUDGETS) features: draw every edge pruning kept (the page's
    # 5,000-edge guard is for unpruned graphs; the default transcoders v2 keep 5,279 on the Kobe prompt)
    text = page(g, check=result, cards=cards, max_edges=None)
    (out / "replacement.html").write_text(text, encoding="utf-8")
    g.to_json(out / "replacement.json")
    stats |= {"html": str(out / "replacement.html"), "json": str(out / "replacement.json")}
    return ReplacementResult(stats, text)


def load(spec, model, progress: bool) -> dict:
    """ "default" (default_transcoders, trained on first use), a dict of transcoders, or a folder/release for
    attribution.load_transcoders."""
    if isinstance(spec, dict):
        return spec
    if spec == "default":
        from attribution.training.transcoder_defaults import default_transcoders

        return default_transcoders(model, progress=progress)
    from attribution.saes.transcoders import load_transcoders

    return load_transcoders(spec, model=model)


def describe(tcs: dict) -> str:
    t = next(iter(tcs.values()))
    skip = " with skip paths" if t.W_skip is not None else ""
    return f"{len(tcs)} {t.architecture} transcoders of {t.d_sae} features{skip}, reading {t.hook.split('.')[0]}"


def summary(graph, pruned: bool = True) -> dict:
    """Node counts and circuit-tracer's scores of a graph (its kept part, or the full candidate graph)."""
    from graphs.scores import graph_scores

    nodes = graph.nodes if pruned else graph.full_nodes
    kinds = [x.kind for x in nodes]
    s = graph_scores(graph, pruned=pruned)
    edges = int(graph.edge_mask.count_nonzero()) if pruned else len(graph.src)
    out = {
        "features": kinds.count("feature"),
        "errors": kinds.count("error"),
        "edges": edges,
        "replacement_score": s.replacement,
        "completeness_score": s.completeness,
    }
    if pruned:  # the other reading of a pruned graph's scores: dropped features removed, not counted as errors
        r = graph_scores(graph, dropped="removed")
        out |= {"replacement_score_removed": r.replacement, "completeness_score_removed": r.completeness}
    return out


def _budgets(model, dictionaries, full, metric) -> dict:
    """{budget: (the graph pruned to at most that many features, its check by real ablation)}."""
    from graphs import check

    out = {}
    for b in BUDGETS:
        g = full.prune(node_threshold=0.8, edge_threshold=0.98, max_feature_nodes=b)
        out[b] = g, check(model, dictionaries, g, metric)
    return out


def _stats(g, result) -> dict:
    """A pruned graph's scores and its faithfulness by real ablation."""
    return summary(g) | {
        "faithfulness": float(result.faithfulness) if result.defined else None,
        "completeness_ablation": float(result.completeness) if result.defined else None,
        "check": str(result),
    }


def _row(x) -> dict:
    return {
        "id": x.id,
        "layer": x.layer - 1,
        "position": x.position,
        "token": x.token,
        "influence": x.influence,
        "attribution": x.attribution,
        "label": x.label,
    }
