"""What the default transcoders do to replacement graphs: circuit-tracer's scores over the two-hop suite, and
where the error nodes' influence sits, layer by layer.

    python -m studies.transcoder_graphs   # writes bench/results/transcoder_graphs_v<version>.json
    python -m studies.transcoder_graphs --tokens 4000000   # the set trained on 4M tokens: ..._v<version>_t4M.json

For every two-hop prompt of the suite the model answers top-1 (cases.suite_prompts.check): the replacement
graph with the default transcoders for logit(answer) - logit(counterfactual), its replacement and
completeness scores full and pruned to at most 100 features (circuit-tracer's pruning, 0.8 / 0.98), and per
layer the influence of its feature and error nodes in the full graph (graphs.prune.influence, summed over
positions). Issue 21's targets: median pruned >= 0.5 / 0.8, full >= 0.65 / 0.9.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from tqdm.auto import tqdm

from attribution import LogitDiff, load_model
from attribution.compute import machine
from attribution.training.transcoder_defaults import VERSION, budget_tag, default_transcoders
from cases.suite_prompts import check, load_suite
from graphs import build_graph
from graphs.scores import graph_scores
from studies.replacement_why import layer_influence

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "cases" / "suites" / "two_hop.jsonl"
MAX_FEATURES = 100


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default=str(SUITE))
    p.add_argument("--tokens", type=int, default=None, help="the set trained on this many tokens (default: default)")
    p.add_argument("--out", default=None, help="default: bench/results/transcoder_graphs_v<version>[_t<N>M].json")
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts")
    a = p.parse_args(argv)
    budget = "" if a.tokens is None else f"_{budget_tag(a.tokens)}"
    out = a.out or str(ROOT / "bench" / "results" / f"transcoder_graphs_v{VERSION}{budget}.json")
    model = load_model()
    tcs = default_transcoders(model, train=False, **({} if a.tokens is None else {"tokens": a.tokens}))
    hooks = list(tcs)
    suite = {x.id: x for x in load_suite(a.suite)}
    two_hop = [x for x in suite.values() if x.hops == 2]  # the one-hop controls are not multi-hop graphs
    prompts = [x for x in check(model, two_hop) if x.top1][: a.limit]
    rows = []
    t0 = time.perf_counter()
    for x in tqdm(prompts, desc="replacement graphs"):
        line = suite[x.id]
        metric = LogitDiff(model, line.answer, line.counterfactual)
        g = build_graph(model, tcs, line.prompt, metric, labels=False, progress=False)
        pruned = g.prune(0.8, 0.98, max_feature_nodes=MAX_FEATURES)
        full, kept = graph_scores(g, pruned=False), graph_scores(pruned)
        layers = layer_influence(g, hooks)
        rows.append(
            {
                "id": x.id,
                "answer_p": x.answer_p,
                "features_kept": sum(n.kind == "feature" for n in pruned.nodes),
                "full": {"replacement": full.replacement, "completeness": full.completeness},
                "pruned": {"replacement": kept.replacement, "completeness": kept.completeness},
                "token_influence": sum(n.influence for n in g.full_nodes if n.kind == "token"),
                "layers": layers,
            }
        )
    seconds = time.perf_counter() - t0

    def med(key, part):
        return statistics.median(r[part][key] for r in rows)

    n_layers = len(hooks)
    result = {
        "transcoders": {
            "version": VERSION,
            "folder": next(iter(tcs.values())).meta.get("default_spec", {}).get("folder"),
            "tokens_seen": next(iter(tcs.values())).meta.get("training", {}).get("tokens_seen"),
        },
        "suite": Path(a.suite).name,
        "max_features": MAX_FEATURES,
        "prompts": rows,
        "median": {
            "pruned_replacement": med("replacement", "pruned"),
            "pruned_completeness": med("completeness", "pruned"),
            "full_replacement": med("replacement", "full"),
            "full_completeness": med("completeness", "full"),
        },
        "median_error_share_by_layer": [
            statistics.median(
                r["layers"][L]["error_influence"]
                / max(1e-12, r["layers"][L]["error_influence"] + r["layers"][L]["feature_influence"])
                for r in rows
            )
            for L in range(n_layers)
        ],
        "seconds": seconds,
        "machine": machine(),
    }
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["median"], indent=1))
    return result


def layer_shares(result: dict) -> str:
    """The median error share of each layer's influence, as the docs quote it ("L0 0.12, L1 ...")."""
    return ", ".join(f"L{i} {v:.2f}" for i, v in enumerate(result["median_error_share_by_layer"]))


def table(result: dict) -> str:
    """Markdown: the median scores over the suite's prompts."""
    lines = ["| graph | median replacement | median completeness |", "|---|---|---|"]
    for name, key in (("full", "full"), (f"pruned to <= {result['max_features']} features", "pruned")):
        m = result["median"]
        lines.append(f"| {name} | {m[key + '_replacement']:.3f} | {m[key + '_completeness']:.3f} |")
    return "\n".join(lines)


def compare(before: dict, after: dict) -> str:
    """Markdown: the median scores of two runs (two sets of transcoders), before → after."""
    a, b = before["median"], after["median"]
    tb, ta = (r["transcoders"]["folder"].split("-t")[-1].split("-")[0] for r in (before, after))  # "2M", "4M"
    lines = [f"| graph | median replacement, {tb} → {ta} | median completeness, {tb} → {ta} |", "|---|---|---|"]
    for name, key in (("full", "full"), (f"pruned to <= {after['max_features']} features", "pruned")):
        lines.append(
            f"| {name} | {a[key + '_replacement']:.3f} → {b[key + '_replacement']:.3f} "
            f"| {a[key + '_completeness']:.3f} → {b[key + '_completeness']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
