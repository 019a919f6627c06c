"""Which attention heads carry a replacement graph's edges, on two-hop prompts of the suite (issue 23).

    python -m studies.heads_suite   # writes bench/results/heads_suite.json

For each chosen two-hop prompt that the model answers top-1: the replacement graph with the default
transcoders for logit(answer) - logit(counterfactual), pruned as studies/transcoder_graphs prunes it (0.8 /
0.98, at most 100 features), and every kept edge split by attention head (graphs.heads: each path counted at
the first head it crosses, plus the part no head carries). Reported: for the strongest edges into the metric
and into the three most influential features, the heads that carry them; over all kept edges, the share of
each edge that its top 3 heads carry, the share no head carries, and the heads that carry the most.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from attribution import LogitDiff, load_model
from attribution.compute import machine
from attribution.training.transcoder_defaults import VERSION, default_transcoders
from cases.suite_prompts import check, load_suite
from graphs import build_graph
from graphs.heads import head_parts, intervened

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "cases" / "suites" / "two_hop.jsonl"
IDS = ("eiffel_language", "tokyo_currency")
MAX_FEATURES, TOP = 100, 3


def _edge(graph, hp, i: int, at: dict) -> dict:
    """One split edge as the result file keeps it."""
    e = int(hp.edge[i])
    src, dst = graph.full_nodes[int(graph.src[e])], graph.full_nodes[int(graph.dst[e])]
    w = float(graph.weight[e])
    top3 = float(hp.value[i, :TOP].double().sum())
    absolute = hp.value[i].double().abs()
    return {
        "source": src.id,
        "source_token": src.token,
        "target": dst.id,
        "weight": w,
        "direct": float(hp.direct[i]),
        "heads": [
            [int(a), int(b), float(v)] for a, b, v in zip(hp.layer[i, :TOP], hp.head[i, :TOP], hp.value[i, :TOP])
        ],
        "rest": float(hp.value[i, TOP:].double().sum()),
        "top3_of_edge": top3 / w,  # signed: the top 3 heads' parts over the edge
        "top3_of_heads_abs": float(absolute[:TOP].sum() / absolute.sum().clamp_min(1e-30)),
    }


def _strongest_into(graph, hp, target: int, k: int) -> list[int]:
    """Rows of hp for the k edges of largest |weight| into node index `target`."""
    rows = [i for i, e in enumerate(hp.edge.tolist()) if int(graph.dst[e]) == target]
    return sorted(rows, key=lambda i: -abs(float(graph.weight[int(hp.edge[i])])))[:k]


def _check(model, tcs, graph, metric, hp, i: int) -> dict:
    """Edge row i's top 3 heads and direct part against the interventions that define them (heads' OV zeroed
    in the frozen replacement model, graphs.heads.intervened), and the edge itself with nothing zeroed."""
    e, n_heads = int(hp.edge[i]), hp.n_heads
    every = list(range(n_heads))
    heads = []
    for L, h, v in zip(hp.layer[i, :TOP].tolist(), hp.head[i, :TOP].tolist(), hp.value[i, :TOP].tolist()):
        before = {k: every for k in range(L)}
        on = intervened(model, tcs, graph, metric, e, before | {L: [k for k in every if k != h]})
        off = intervened(model, tcs, graph, metric, e, before | {L: every})
        heads.append({"layer": L, "head": h, "part": v, "intervention": on - off})
    direct = intervened(model, tcs, graph, metric, e, {k: every for k in range(model.n_layers)})
    return {
        "edge": [graph.full_nodes[int(graph.src[e])].id, graph.full_nodes[int(graph.dst[e])].id],
        "weight": float(graph.weight[e]),
        "intervention": intervened(model, tcs, graph, metric, e, {}),
        "direct": float(hp.direct[i]),
        "direct_intervention": direct,
        "heads": heads,
        "max_rel_diff": max(abs(x["part"] - x["intervention"]) for x in heads) / abs(float(graph.weight[e])),
    }


def one(model, tcs, line) -> dict:
    metric = LogitDiff(model, line.answer, line.counterfactual)
    t0 = time.perf_counter()
    g = build_graph(model, tcs, line.prompt, metric, labels=False, progress=False)
    pruned = g.prune(0.8, 0.98, max_feature_nodes=MAX_FEATURES)
    t1 = time.perf_counter()
    full = head_parts(model, tcs, pruned, metric, top=model.n_layers * model.hf.config.num_attention_heads)
    t2 = time.perf_counter()
    at = full.lookup()
    w = pruned.weight[full.edge].double()
    big = w.abs() > 1e-3 * float(w.abs().max())  # shares of edges too small to matter are noise
    absolute = full.value.double().abs()
    n_heads = full.n_heads
    mass = torch.zeros(model.n_layers * n_heads, dtype=torch.float64)
    mass.index_add_(0, (full.layer.long() * n_heads + full.head.long()).flatten(), absolute.flatten())
    order = mass.argsort(descending=True)[:8]
    features = [x for x in pruned.top(3, kind="feature")]
    into = _strongest_into(pruned, full, pruned.metric_index, 5)
    checked = _check(model, tcs, pruned, metric, full, into[0])
    return {
        "id": line.id,
        "prompt": line.prompt,
        "answer": line.answer,
        "counterfactual": line.counterfactual,
        "metric": pruned.metric_value,
        "features_kept": sum(x.kind == "feature" for x in pruned.nodes),
        "edges_split": len(full.edge),
        "gap": full.gap,
        "seconds_graph": t1 - t0,
        "seconds_heads": t2 - t1,
        "median_top3_of_edge": statistics.median((full.value[big, :TOP].double().sum(1) / w[big]).tolist()),
        "median_top3_of_heads_abs": statistics.median(
            (absolute[big, :TOP].sum(1) / absolute[big].sum(1).clamp_min(1e-30)).tolist()
        ),
        "median_direct_of_edge": statistics.median((full.direct[big].double() / w[big]).tolist()),
        "edges_with_no_direct_part": int((full.direct[big] == 0).sum()),
        "edges_counted": int(big.sum()),
        "heads_by_mass": [[int(j) // n_heads, int(j) % n_heads, float(mass[j] / mass.sum())] for j in order.tolist()],
        "into_metric": [_edge(pruned, full, i, at) for i in into],
        "checked_by_intervention": checked,
        "into_features": [
            {
                "feature": x.id,
                "token": x.token,
                "influence": x.influence,
                "edges": [_edge(pruned, full, i, at) for i in _strongest_into(pruned, full, pruned._index[x.id], 3)],
            }
            for x in features
        ],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default=str(SUITE))
    p.add_argument("--ids", default=",".join(IDS), help="suite ids, comma-separated")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "heads_suite.json"))
    a = p.parse_args(argv)
    model = load_model()
    tcs = default_transcoders(model, train=False)
    suite = {x.id: x for x in load_suite(a.suite)}
    wanted = a.ids.split(",")
    missing = [i for i in wanted if i not in suite or suite[i].hops != 2]
    if missing:
        raise SystemExit(f"no two-hop prompt {missing} in {a.suite}; choose ids from it")
    answered = {x.id: x for x in check(model, [suite[i] for i in wanted])}
    wrong = [i for i in wanted if not answered[i].top1]
    if wrong:
        raise SystemExit(f"the model does not answer {wrong} top-1; choose prompts it answers")
    folder = next(iter(tcs.values())).meta.get("default_spec", {}).get("folder")
    t0 = time.perf_counter()
    rows = [one(model, tcs, suite[i]) | {"answer_p": answered[i].answer_p} for i in wanted]
    result = {
        "transcoders": {"version": VERSION, "folder": folder},
        "suite": Path(a.suite).name,
        "max_features": MAX_FEATURES,
        "top": TOP,
        "n_heads": model.hf.config.num_attention_heads,
        "prompts": rows,
        "seconds": time.perf_counter() - t0,
        "machine": machine(),
    }
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        print(r["id"], r["edges_split"], f"gap {r['gap']:.2e}", f"{r['seconds_heads']:.1f} s")
        print("  top3/edge", round(r["median_top3_of_edge"], 3), "direct/edge", round(r["median_direct_of_edge"], 3))
        print("  heads by mass", r["heads_by_mass"][:5])
        print("  checked", r["checked_by_intervention"])
        for e in r["into_metric"][:3]:
            print(
                "  ->metric",
                e["source"],
                repr(e["source_token"]),
                round(e["weight"], 3),
                e["heads"],
                round(e["direct"], 3),
            )
    return result


if __name__ == "__main__":
    main()
