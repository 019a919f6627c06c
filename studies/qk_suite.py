"""QK attribution on the two-hop suite with the default transcoders, its top pairs checked in the real model.

    python -m studies.qk_suite   # writes bench/results/qk_suite.json

For a few two-hop prompts the model answers top-1: the heads that move the most into the last position
(graphs.qk_heads.moving_heads, the metric logit(answer) - logit(counterfactual)), and for each its score at
the key moving the most as node-pair terms (graphs.qk.qk_pairs). Each top pair's nodes are then removed one
at a time in the real model (MLPs, norms and attention live: the node's vector subtracted where it is added,
everything downstream recomputed) and the head's score and pattern at (query, key) measured, against the
drop the decomposition predicts in the frozen replacement model (QK.removal: the node's row + column), that
drop measured in the frozen model itself (exact), and its first-order estimate in the real model.
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
from attribution.engine import Group, frozen_state, trace
from attribution.models.attention import Attention
from attribution.splice import decompose
from attribution.training.transcoder_defaults import VERSION, default_transcoders
from cases.suite_prompts import check, load_suite
from graphs.qk import BIAS, qk_pairs
from graphs.qk_heads import moving_heads
from graphs.replacement import EMBED

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "cases" / "suites" / "two_hop.jsonl"
PROMPTS = ("eiffel_language", "brandenburg_language", "tokyo_currency")
HEADS, PAIRS = 3, 5


class _HeldMinus:
    """A transcoder's output in the frozen replacement model (clean less the skip path, skip live) less the
    rows' removed vectors."""

    def __init__(self, const, tc, minus):
        self.const, self.tc, self.minus, self.reads = const, tc, minus, tc.hook

    def __call__(self, x, read):
        return (self.const + self.tc.skip(read) - self.minus).to(x.dtype)


class _Minus:
    def __init__(self, delta):
        self.delta = delta

    def __call__(self, x):
        return x - self.delta.to(x.dtype)


def node_vector(tcs, clean, decs, node: str):
    """(EMBED or the node's transcoder hook, position, the vector it adds) for a token, feature or error id."""
    if node.startswith("tok:"):
        p = int(node[4:])
        return EMBED, p, clean.acts[EMBED][0, p]
    hook, p, what = node.split(":")
    p = int(p)
    tc = tcs[hook]
    if what == "err":
        return hook, p, decs[hook].error[p]
    f = int(what[1:])
    return hook, p, decs[hook].features[p, f] * tc.W_dec[f]


@torch.no_grad()
def removals(model, tcs, qk, nodes: list[str]) -> list[dict]:
    """Each node removed alone, in the real model (everything live) and in the frozen replacement model
    (features held, norms and patterns at their clean values): the head's score (and pattern) after."""
    batch = model.tokenize(qk.prompt)
    pre = f"resid_pre.{qk.layer}"
    clean = trace(model, batch, capture=[EMBED, pre, *tcs, *(t.target for t in tcs.values())], freeze=True)
    decs = {h: decompose(t, clean.acts[h][0], clean.acts[t.target][0]) for h, t in tcs.items()}
    n = len(nodes) + 1
    minus = {h: torch.zeros(n, batch.width, model.d_model, dtype=model.dtype) for h in [EMBED, *tcs]}
    groups = []
    for r, node in enumerate(nodes, 1):
        hook, p, v = node_vector(tcs, clean, decs, node)
        minus[hook][r, p] = v
        groups.append(Group({hook if hook == EMBED else tcs[hook].target: _Minus(minus[hook][r : r + 1])}))
    real = trace(model, batch, groups=groups, capture=[pre], stop_early=True).acts[pre]  # row 0 clean, then nodes
    edits = {EMBED: _Minus(minus[EMBED])}
    for h, tc in tcs.items():
        const = (clean.acts[tc.target] - tc.skip(clean.acts[h])).detach()
        edits[tc.target] = _HeldMinus(const, tc, minus[h])
    frozen = trace(model, batch, groups=[Group(edits, n=n)], capture=[pre], keep_batch=False,
                   freeze=frozen_state(model, batch)).acts[pre]  # fmt: skip
    att, qp, kp = Attention(model, qk.layer), qk.query_pos, qk.key_pos
    x0 = clean.acts[pre][0]
    held = att.held(x0[qp], "q"), att.held(x0[kp], "k")
    q = att.project(frozen[:, qp], qp, "q", held[0])[:, qk.head].double()
    k = att.project(frozen[:, kp], kp, "k", held[1])[:, att.kv_head(qk.head)].double()
    held_score = (q * k).sum(-1)
    keys = torch.arange(qp + 1)
    scores = torch.stack([att.scores(x, keys, qk.head)[qp] for x in real[:, : qp + 1]]).double()  # [rows, keys]
    pattern = torch.softmax(scores, -1)[:, kp]
    predicted = qk.removal()
    first = first_order(model, tcs, qk, [node_vector(tcs, clean, decs, node) for node in nodes])
    return [
        {
            "node": node, "name": qk.name(node), "predicted_drop": float(predicted[qk.index(node)]),
            "frozen_drop": float(held_score[0] - held_score[r]), "score_drop": float(scores[0, kp] - scores[r, kp]),
            "first_order_drop": first[r - 1], "pattern_before": float(pattern[0]), "pattern_after": float(pattern[r]),
        }
        for r, node in enumerate(nodes, 1)
    ]  # fmt: skip


def first_order(model, tcs, qk, located: list[tuple]) -> list[float]:
    """Each node's removal to first order in the real model (everything live): its vector . the gradient of
    the head's score where the vector is added (apart from the frozen model's prediction, this one lets the
    norms, q_norm / k_norm and the MLPs respond, linearly)."""
    batch = model.tokenize(qk.prompt)
    pre = f"resid_pre.{qk.layer}"
    where = list(dict.fromkeys(EMBED if h == EMBED else tcs[h].target for h, _, _ in located))
    with torch.enable_grad():
        tr = trace(model, batch, capture=[*where, pre], grad=True, stop_early=True)
        att = Attention(model, qk.layer)
        x = tr.acts[pre][0, : qk.query_pos + 1]
        score = att.scores(x, torch.arange(qk.query_pos + 1), qk.head)[qk.query_pos, qk.key_pos]
        grads = dict(zip(where, torch.autograd.grad(score, [tr.acts[w] for w in where])))
    return [float(grads[EMBED if h == EMBED else tcs[h].target][0, p].double() @ v.double()) for h, p, v in located]


def promotes(model, tcs, node: str, n: int = 3) -> list[str]:
    """The tokens a feature's decoder direction raises most through the unembedding (a label without data)."""
    if node.startswith("tok:") or node == BIAS or node.endswith(":err"):
        return []
    hook, _, what = node.split(":")
    logits = tcs[hook].W_dec[int(what[1:])].to(model.W_U.dtype) @ model.W_U.T
    return model.to_str_tokens(logits.topk(n).indices.tolist())


def study(model, tcs, prompt) -> dict:
    metric = LogitDiff(model, prompt.answer, prompt.counterfactual)
    heads = moving_heads(model, tcs, prompt.prompt, metric, top=HEADS)
    rows = []
    for h in heads:
        qk = qk_pairs(model, tcs, prompt.prompt, h.layer, h.head, h.dest, h.key, top=PAIRS)
        pairs = qk.pairs + qk.node_pairs
        nodes = list(dict.fromkeys(i for p in pairs for i in (p.key, p.query) if i != BIAS))
        row = h.to_dict() | qk.to_dict()
        row["promotes"] = {i: promotes(model, tcs, i) for i in nodes}
        row["removals"] = removals(model, tcs, qk, nodes)
        rows.append(row)
    return {"id": prompt.id, "prompt": prompt.prompt, "answer": prompt.answer, "heads": rows}


def summary(prompts: list[dict]) -> dict:
    """How well the frozen model's predicted drops hold: exactly in the frozen model, and in the real one."""
    heads = [h for p in prompts for h in p["heads"]]
    rem = [r for h in heads for r in h["removals"]]
    big = [r for r in rem if abs(r["predicted_drop"]) > 0.1]
    top = max(abs(r["predicted_drop"]) for r in rem)
    return {
        "heads": len(heads),
        "removals": len(rem),
        "frozen_max_error": max(abs(r["frozen_drop"] - r["predicted_drop"]) for r in rem) / top,
        "predicted_over_0_1": len(big),
        "real_sign_agrees": sum((r["predicted_drop"] > 0) == (r["score_drop"] > 0) for r in big),
        "first_order_sign_agrees": sum((r["first_order_drop"] > 0) == (r["score_drop"] > 0) for r in big),
        "real_median_ratio": statistics.median(r["score_drop"] / r["predicted_drop"] for r in big),
        "median_bias_bias_share": statistics.median(abs(h["bias_terms"]["bias_bias"]) / abs(h["score"]) for h in heads),
    }


def at_bos(node: str) -> bool:
    """A node of <bos> (its token, or its features and error terms: the attention sink's)."""
    return node == "tok:0" or ":0:" in node


def table(result: dict) -> str:
    """Markdown: per head, its move, its score (pattern), the constant parts' term, its top node pair, its
    top pair away from <bos>, and what removing that pair's key-side node does (the drop predicted by the
    frozen replacement model / its first-order estimate in the real model / the real model's)."""
    lines = [
        "| prompt | head | query ← key | moved | score (pattern) | bias × bias | top node pair (term) | "
        "top pair away from `<bos>` (term) | its key node removed: score drop predicted / first-order / real, "
        "pattern |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["prompts"]:
        for h in p["heads"]:
            top = h["node_pairs"][0]
            away = next((x for x in h["node_pairs"] if not (at_bos(x["query"]) or at_bos(x["key"]))), None)
            pair, removed = "–", "–"
            if away is not None:
                r = next(r for r in h["removals"] if r["node"] == away["key"])
                pair = f"{away['query_name']} × {away['key_name']} ({away['term']:+.2f})"
                removed = (
                    f"{r['predicted_drop']:+.2f} / {r['first_order_drop']:+.2f} / {r['score_drop']:+.2f}, "
                    f"{r['pattern_before']:.2f} → {r['pattern_after']:.2f}"
                )
            lines.append(
                f"| {p['id']} | L{h['layer']}.H{h['head']} | {h['query_token']!r} ← {h['key_token']!r} | "
                f"{h['moved']:+.2f} | {h['score']:+.2f} ({h['pattern']:.2f}) | {h['bias_terms']['bias_bias']:+.2f} | "
                f"{top['query_name']} × {top['key_name']} ({top['term']:+.2f}) | {pair} | {removed} |"
            )
    return "\n".join(lines)


def away_removals(result: dict) -> list[dict]:
    """Per head, the removal of the key-side node of its top pair away from <bos> (where one is listed)."""
    out = []
    for h in (h for p in result["prompts"] for h in p["heads"]):
        away = next((x for x in h["node_pairs"] if not (at_bos(x["query"]) or at_bos(x["key"]))), None)
        if away is not None:
            out.append(next(r for r in h["removals"] if r["node"] == away["key"]))
    return out


def away_agree(result: dict) -> str:
    """'a of n': those removals whose real score drop has the predicted sign."""
    rows = away_removals(result)
    return f"{sum((r['predicted_drop'] > 0) == (r['score_drop'] > 0) for r in rows)} of {len(rows)}"


def bos_tops(result: dict) -> int:
    """Heads whose top node pair has a <bos> node on both sides."""
    return sum(
        at_bos(h["node_pairs"][0]["query"]) and at_bos(h["node_pairs"][0]["key"])
        for p in result["prompts"]
        for h in p["heads"]
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default=str(SUITE))
    p.add_argument("--ids", nargs="*", default=list(PROMPTS))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "qk_suite.json"))
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    model = load_model()
    tcs = default_transcoders(model, train=False)
    suite = {x.id: x for x in load_suite(a.suite)}
    asked = [suite[i] for i in a.ids]
    answered = {x.id for x in check(model, asked) if x.top1}
    prompts = [study(model, tcs, x) for x in asked if x.id in answered]
    result = {
        "transcoders": {
            "version": VERSION,
            "folder": next(iter(tcs.values())).meta.get("default_spec", {}).get("folder"),
        },
        "suite": Path(a.suite).name,
        "prompts": prompts,
        "skipped": [x.id for x in asked if x.id not in answered],
        "summary": summary(prompts),
        "seconds": time.perf_counter() - t0,
        "machine": machine(),
    }
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(json.dumps(result["summary"], indent=1))
    return result


if __name__ == "__main__":
    main()
