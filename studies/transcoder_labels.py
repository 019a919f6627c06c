"""Do the default transcoders' labels carry evidence? Per layer, and on the top nodes of two replacement graphs.

    python -m studies.transcoder_labels   # writes bench/results/transcoder_labels.json

The transcoders' feature indexes are the library's own (attribution.explain.feature_indexes over the default
text, cached). Per layer, over alive features, the share whose
- firing words are evidence: the label's bracket covers >= HEAD_SHARE of the top contexts;
- embedding lens is evidence: the firing token is among the N_IN tokens whose embedding drives the feature
  most at >= EVIDENCE_SHARE of the top contexts (input side);
- promoted token is evidence: the model predicts it at >= EVIDENCE_SHARE of the top contexts (output side);
- label has a context word; label has some evidence (any of the above); label is `(mixed)`.
"Before" is the SAE rule the transcoders' labels used (labels.labels): the bracket shown whatever it holds.
Then the top TOP feature nodes (by influence) of the Kobe prompt's and the Eiffel Tower prompt's replacement
graphs, pruned as the case study prunes them (<= 100 features, 0.8 / 0.98): each node's old and new label and
its parts, and its write removed at its own position in the prompt through the frozen model (frozen_lens):
the tokens it raises, and how much of that the direct path (the logit lens) accounts for.
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
from attribution.explain import feature_indexes
from attribution.explain.frozen_lens import frozen_effects, top_tokens
from attribution.explain.index import TC_VERSION
from attribution.explain.labels import Words, base_rates, labels
from attribution.explain.transcoder import HEAD_SHARE, MIXED, Pieces, parts
from attribution.training.transcoder_defaults import default_transcoders
from cases.multihop import BAD, GOOD, PROMPT
from cases.suite_prompts import load_suite
from graphs import build_graph

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "transcoder_labels.json"
TOP, MAX_FEATURES = 30, 100
SUITE_ID = "eiffel_language"


def evident(p: dict) -> dict:
    """Which of a feature's label parts are evidence (parts() of attribution.explain.transcoder)."""
    out = {
        "bracket": p["head_share"] >= HEAD_SHARE,
        "input": p["input"],
        "context": bool(p["before"] or p["after"]),
        "promoted": bool(p["promoted"]),
    }
    out["old_any"] = out["bracket"] or out["context"] or out["promoted"]  # what the SAE rule could show as evidence
    out["any"] = out["old_any"] or out["input"]
    return out


def per_layer(tok, indexes: dict) -> tuple[dict, dict]:
    """({hook: shares over alive features}, {hook: {feature: (parts, old label, new label)}} for the graphs)."""
    pieces = Pieces(tok, Words(tok))
    table, cache = {}, {}
    for h, idx in indexes.items():
        t = idx.t
        base, total = base_rates(pieces.words, t["tokens"])
        rows = t["tokens"].tolist()
        old = labels(tok, t)
        alive = (t["count"] > 0).nonzero().flatten().tolist()
        ev = []
        cache[h] = {}
        for f in alive:
            p = parts(pieces, rows, base, total, t, f)
            cache[h][f] = (p, old[f], idx.label(f))
            ev.append(evident(p))
        n = max(1, len(alive))
        share = {k: round(sum(e[k] for e in ev) / n, 4) for k in ("bracket", "input", "promoted", "context", "any")}
        share["old_any"] = round(sum(e["old_any"] for e in ev) / n, 4)
        share["mixed"] = round(sum(idx.label(f).startswith(MIXED) for f in alive) / n, 4)
        table[h] = {"alive": len(alive), **share}
    return table, cache


def graph_nodes(model, tcs, indexes, cache, prompt: str, good: str, bad: str) -> dict:
    """The top TOP feature nodes of the pruned replacement graph, each with its labels, parts and frozen effect."""
    tok = model.tokenizer
    t0 = time.perf_counter()
    g = build_graph(model, tcs, prompt, LogitDiff(model, good, bad), labels=indexes, progress=False)
    pruned = g.prune(0.8, 0.98, max_feature_nodes=MAX_FEATURES)
    ids = model.tokenize(prompt).input_ids[0]
    rows = []
    for x in pruned.top(TOP):
        tc, f = tcs[x.hook], int(x.feature)
        p, old, new = cache[x.hook][f]
        write = x.activation * tc.W_dec[f][None].float()
        (effect,) = frozen_effects(model, tc, ids, [x.position], write)
        lens = [tok.decode([int(i)]) for i in indexes[x.hook].t["up_ids"][f][:5]]
        frozen = [tok.decode([i]) for i, _ in top_tokens(model, effect.total, k=5)]
        rows.append(
            {
                "hook": x.hook,
                "feature": f,
                "token": x.token,
                "influence": round(x.influence, 4),
                "old_label": old,
                "label": new,
                "evidence": evident(p),
                "head_share": round(p["head_share"], 3),
                "lens": lens,
                "frozen": frozen,
                "direct_share": round(effect.direct_share, 3),
                "lens_top_in_frozen_top5": lens[0] in frozen,
            }
        )
    n = len(rows)
    half = model.n_layers // 2
    late = [r for r in rows if model.hook(r["hook"]).layer >= half]  # the second half of the model's layers
    early = [r for r in rows if model.hook(r["hook"]).layer < half]
    summary = {
        "nodes": n,
        "old_with_evidence": sum(r["evidence"]["old_any"] for r in rows) / n,
        "with_evidence": sum(r["evidence"]["any"] for r in rows) / n,
        "old_unmarked_soup": sum(not r["evidence"]["old_any"] for r in rows) / n,
        "mixed": sum(r["label"].startswith(MIXED) for r in rows) / n,
        **{f"{k}_evidence": sum(r["evidence"][k] for r in rows) / n for k in ("bracket", "input", "promoted")},
        "context_word": sum(r["evidence"]["context"] for r in rows) / n,
        "median_direct_share_early": statistics.median(r["direct_share"] for r in early) if early else None,
        "median_direct_share_late": statistics.median(r["direct_share"] for r in late) if late else None,
        "lens_top_in_frozen_top5_late": sum(r["lens_top_in_frozen_top5"] for r in late) / len(late) if late else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return {"prompt": prompt, "metric": f"{good!r} - {bad!r}", "summary": summary, "top": rows}


def card_seconds(model, tcs, indexes, nodes: list[dict]) -> dict:
    """Seconds per transcoder card (3 contexts, as a graph's tooltip), without and with the frozen effect at
    its top context, over the Kobe graph's top 10 nodes (the second pass: contexts' forwards warm)."""
    from attribution.explain import explain

    out = {}
    for frozen in (False, True):
        t0 = time.perf_counter()
        for r in nodes[:10]:
            explain(model, tcs[r["hook"]], r["feature"], index=indexes[r["hook"]], n_contexts=3, frozen=frozen)
        out["frozen" if frozen else "plain"] = round((time.perf_counter() - t0) / max(1, min(10, len(nodes))), 2)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--cards", action="store_true", help="only time the cards again, in the existing --out file")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model = load_model()
    tcs = default_transcoders(model, train=False)
    t0 = time.perf_counter()
    indexes = feature_indexes(model, tcs)
    index_s = time.perf_counter() - t0
    if a.cards:
        result = json.loads(Path(a.out).read_text())
        result["card_s"] = card_seconds(model, tcs, indexes, result["prompts"]["kobe"]["top"])
        Path(a.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        return result
    layers, cache = per_layer(model.tokenizer, indexes)
    eiffel = next(x for x in load_suite() if x.id == SUITE_ID)
    prompts = {
        "kobe": graph_nodes(model, tcs, indexes, cache, PROMPT, GOOD, BAD),
        SUITE_ID: graph_nodes(model, tcs, indexes, cache, eiffel.prompt, eiffel.answer, eiffel.counterfactual),
    }
    result = {
        "index": {"version": TC_VERSION, "n_tokens": next(iter(indexes.values())).n_tokens, "s": round(index_s, 1)},
        "layers": layers,
        "prompts": prompts,
        "card_s": card_seconds(model, tcs, indexes, prompts["kobe"]["top"]),
        "machine": machine(),
    }
    Path(a.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    for name, r in prompts.items():
        print(name, json.dumps(r["summary"]))
        for row in r["top"][:12]:
            print(f"  {row['hook']:>13} f{row['feature']:<5} {row['old_label']!r:>40} -> {row['label']!r}")
    return result


def pct(v: float) -> str:
    return f"{v:.0%}"


def table(result: dict) -> str:
    """Markdown: per layer, the share of alive features each part of the label is evidence for."""
    lines = [
        "| hook | alive | firing words | embedding lens | promoted token | context word | any: before → now | mixed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h, r in result["layers"].items():
        cells = [r["bracket"], r["input"], r["promoted"], r["context"]]
        lines.append(
            f"| {h} | {r['alive']} | " + " | ".join(map(pct, cells)) + f" | {pct(r['old_any'])} → {pct(r['any'])} | "
            f"{pct(r['mixed'])} |"
        )
    return "\n".join(lines)


def nodes_table(result: dict, prompt: str, k: int = 10) -> str:
    """Markdown: the prompt's top k graph nodes, old label beside new, and what the write does in the prompt."""
    lines = [
        "| node | old label | new label | logit lens | through the frozen model here | direct share |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["prompts"][prompt]["top"][:k]:
        lens, frozen = ", ".join(map(repr, r["lens"][:3])), ", ".join(map(repr, r["frozen"][:3]))
        lines.append(
            f"| {r['hook']} f{r['feature']} at {r['token']!r} | `{r['old_label']}` | `{r['label']}` | {lens} | "
            f"{frozen} | {r['direct_share']:.2f} |"
        )
    return "\n".join(lines).replace("|'", "| '")


if __name__ == "__main__":
    main()
