"""A suite of multi-hop prompts, end to end: which the model answers, each one's graph, its supernodes found
by contrast across the suite, the hop proven by intervention, and the graph the prompts share.

    python -m cases suite --prompts cases/suites/two_hop.jsonl --out runs/suite
    attribution case suite --prompts FILE --out DIR

For every prompt the model answers top-1 (cases.suite_prompts.check): the feature graph for logit(answer) -
logit(counterfactual), pruned to at most `max_features` features, with circuit-tracer's scores and
faithfulness by real ablation; supernodes (graphs.supernodes): the intermediate entity (features that fire on
the suite's prompts sharing it, read at any token, and not on the others) and two output groups ("says
French": the last token of prompts answered " French" against prompts answered otherwise; "says a language":
prompts whose answer is a language against the others); suppression of the intermediate group and, where the
line names one, the swap for another prompt's group (graphs.hop), in the real and in the replacement model.
Writes DIR/report.json ({"prompts": [...], "aggregate": {...}}, docs/case-studies.md has the schema),
DIR/report.html, and per prompt DIR/graphs/<id>.html and .json.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from attribution.errors import NumericalError
from attribution.metrics import LogitDiff
from attribution.splice import prepare_saes
from cases.suite_prompts import SuitePrompt, check, load_suite
from graphs.aggregate import aggregate
from graphs.build import build_graph
from graphs.hop import suppress, swap
from graphs.supernodes import Contrast, contrast_features, supernodes

SCALES = (1.0, 2.0, 4.0)  # the swap's injection scales tried, smallest first


@dataclass
class SuiteOptions:
    max_features: int = 100  # feature nodes kept by pruning (circuit-tracer's max_feature_nodes)
    min_score: float = 0.5  # a supernode's features separate its prompts by at least this share
    max_group: int = 40  # features per supernode
    carrier_score: float = 0.25  # the per-prompt entity group's contrast threshold (graphs.supernodes, rank)
    inhibit: float = -1.0  # the second suppression: members set to this multiple of their activation
    scales: tuple[float, ...] = SCALES
    candidates: int | None = 128  # build_graph's feature candidates per layer
    labels: bool = True  # feature labels (feature indexes over real text; False for tiny models)
    progress: bool = True
    only: list[str] = field(default_factory=list)  # run only these ids (and the donors their swaps need)
    require_top1: bool = True  # build graphs only for prompts the model answers top-1
    qk_heads: int = 0  # per prompt, the heads moving the most into the last position, QK-decomposed (transcoders)


def target_kind(p: SuitePrompt) -> str:
    """What the answer is ("language", "currency", "country", ...): the relation's last element."""
    return (p.relation or "answer").split("->")[-1].strip() or "answer"


def carrier(p: SuitePrompt) -> str:
    """The name of p's per-prompt entity group: the intermediate's features that carry this prompt's answer."""
    return f"{p.intermediate} (this prompt)"


def contrasts(p: SuitePrompt, suite: list[SuitePrompt], carrier_score: float = 0.25) -> dict[str, Contrast]:
    """The suite's prompt sets that define p's supernodes: its intermediate entity (what the prompts sharing it
    have in common, and the features that carry it to this prompt's answer), its answer, its answer's kind."""
    out = {}
    if p.intermediate:
        pos = [q.prompt for q in suite if q.intermediate == p.intermediate]
        neg = [q.prompt for q in suite if q.intermediate and q.intermediate != p.intermediate]
        if neg:
            out[p.intermediate] = Contrast(pos, neg, "any", "intermediate", "not_last")
            out[carrier(p)] = Contrast(pos, neg, "any", "intermediate", "not_last", "attribution", carrier_score)
    pos = [q.prompt for q in suite if q.answer == p.answer]
    neg = [q.prompt for q in suite if q.answer != p.answer and target_kind(q) == target_kind(p)]
    if neg:
        out[f"says{p.answer}"] = Contrast(pos, neg, "last", "output", "last")
    kind = target_kind(p)
    pos = [q.prompt for q in suite if target_kind(q) == kind]
    neg = [q.prompt for q in suite if target_kind(q) != kind]
    if neg:
        out[f"says a {kind}"] = Contrast(pos, neg, "last", "output", "last")
    return out


def run_suite(
    model, saes, prompts: list[SuitePrompt] | str | Path, out: str | Path, options: SuiteOptions | None = None
):
    """Run the suite and write its report; returns the report as a dict (what report.json holds)."""
    from pages import suite_page

    options = options or SuiteOptions()
    suite = load_suite(prompts) if isinstance(prompts, str | Path) else list(prompts)
    out = Path(out)
    (out / "graphs").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    answered = {a.id: a for a in check(model, suite)}
    by_id = {p.id: p for p in suite}
    wanted = _wanted(suite, options.only)
    todo = [p for p in suite if p.id in wanted and p.hops >= 2 and (answered[p.id].top1 or not options.require_top1)]
    rows = {p.id: _row(p, answered[p.id]) for p in suite}
    graphs, contrast_cache, entity = {}, {}, {}  # the suite's prompts share their contrasts: each runs once
    bar = tqdm(todo, desc="suite graphs", disable=not options.progress)
    for p in bar:
        bar.set_postfix_str(p.id)
        graphs[p.id] = _graph(model, saes, p, suite, options, rows[p.id], out, contrast_cache)
        if p.intermediate and carrier(p) in (cs := contrasts(p, suite, options.carrier_score)):
            hooks = {h: d for h, d in prepare_saes(model, saes).items() if h in graphs[p.id].hooks}
            found = contrast_features(model, hooks, cs[carrier(p)], options.min_score, contrast_cache)
            entity[p.id] = {(m.hook, m.feature) for m in found}
    for p in tqdm(todo, desc="suite interventions", disable=not options.progress):
        _interventions(model, saes, p, by_id, graphs, suite, options, rows[p.id], entity.get(p.id, set()))
    if options.qk_heads:
        for p in tqdm(todo, desc="suite QK", disable=not options.progress):
            rows[p.id]["qk"] = _qk(model, saes, p, graphs[p.id], options.qk_heads)
    shared = aggregate(graphs).shared(2) if graphs else None
    report = {
        "suite": str(prompts) if isinstance(prompts, str | Path) else None,
        "model": model.name,
        "dictionaries": list(saes) if isinstance(saes, dict) else None,
        "options": {k: v for k, v in vars(options).items() if k != "progress"},
        "prompts": list(rows.values()),
        "summary": summary(list(rows.values())),
        "aggregate": shared.to_dict() if shared is not None else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False, default=_jsonable))
    suite_page.write(report, out / "report.html", shared)
    return report


def _wanted(suite, only) -> set[str]:
    if not only:
        return {p.id for p in suite}
    by_id = {p.id: p for p in suite}
    wanted = set(only)
    wanted |= {by_id[i].swap["from"] for i in only if i in by_id and by_id[i].swap}
    return wanted


def _row(p: SuitePrompt, a) -> dict:
    return {
        "id": p.id, "prompt": p.prompt, "answer": p.answer, "counterfactual": p.counterfactual,
        "intermediate": p.intermediate, "relation": p.relation, "hops": p.hops,
        "answer_p": a.answer_p, "answer_rank": a.answer_rank, "top": a.top, "top_p": a.top_p,
        "metric": a.metric, "answered": a.top1,
    }  # fmt: skip


def _graph(model, saes, p: SuitePrompt, suite, options: SuiteOptions, row: dict, out: Path, cache: dict):
    metric = LogitDiff(model, p.answer, p.counterfactual)
    transcoders = any(getattr(d, "is_transcoder", False) for d in saes.values())
    per_layer = {} if transcoders else {"candidates": options.candidates}  # a replacement graph ranks its rows
    g = build_graph(model, saes, p.prompt, metric, labels=options.labels, progress=False, **per_layer)
    pruned = g.prune(0.8, 0.98, max_feature_nodes=options.max_features)
    scores = pruned.scores(model, saes, metric)
    found = supernodes(model, saes, pruned, contrasts(p, suite, options.carrier_score), min_score=options.min_score,
                       max_features=options.max_group, kept_only=False, cache=cache)  # fmt: skip
    row["graph"] = {
        "features": sum(x.kind == "feature" for x in pruned.nodes),
        "candidates": sum(x.kind == "feature" for x in pruned.full_nodes),
        **scores,
        "html": f"graphs/{p.id}.html",
        "json": f"graphs/{p.id}.json",
    }
    row["supernodes"] = [s.to_dict() | {"kept": sum(pruned.kept(i) for i in s.members)} for s in found]
    row["intermediate_found"] = bool(p.intermediate) and any(s.name == p.intermediate for s in found)
    entity = [i for name in (p.intermediate, carrier(p)) for i in pruned.groups.get(name, [])]
    drawn = pruned.with_nodes(entity) if entity else pruned  # the entity's groups drawn, pruned or not
    drawn.to_html(out / "graphs" / f"{p.id}.html", max_edges=None)
    pruned.to_json(out / "graphs" / f"{p.id}.json", slug=p.id)
    return pruned


def _qk(model, saes, p: SuitePrompt, graph, n: int) -> list[dict]:
    """The `n` heads moving the most into the last position, each with its score at the key moving the most
    decomposed into node pairs (graphs.qk): replacement graphs (transcoders) only."""
    from graphs.qk import qk_pairs
    from graphs.qk_heads import moving_heads

    if not graph.info.get("replacement"):
        return [{"error": "QK attribution needs transcoders (a replacement graph)"}]
    metric = LogitDiff(model, p.answer, p.counterfactual)
    out = []
    for h in moving_heads(model, saes, p.prompt, metric, top=n):
        qk = qk_pairs(model, saes, p.prompt, h.layer, h.head, h.dest, h.key, top=3, graph=graph)
        out.append(h.to_dict() | qk.to_dict())
    return out


def _answers(p: SuitePrompt, suite) -> list[str]:
    """Every answer of the suite of p's kind (all languages for a language question)."""
    return list(dict.fromkeys(q.answer for q in suite if target_kind(q) == target_kind(p)))


def _interventions(model, saes, p: SuitePrompt, by_id, graphs, suite, options: SuiteOptions, row: dict,
                   entity: set) -> None:  # fmt: skip
    """Suppress p's entity group (the one carrying this prompt's answer; the suite-wide shared group and a
    control beside it), inhibit it, and swap it for the donor prompt's. entity: every feature passing the
    entity's contrast, which the control leaves out."""
    g = graphs[p.id]
    answers = _answers(p, suite)
    group = carrier(p)
    if group not in g.groups:
        row["suppress"] = {"group": group, "error": "no entity group carries this prompt's answer in its graph"}
    else:
        s = suppress(model, saes, g, group, answers=answers)
        row["suppress"] = {"group": group, "members": len(g.groups[group])} | s.to_dict()
        s = suppress(model, saes, g, group, answers=answers, factor=options.inhibit)
        row["inhibit"] = {"group": group, "factor": options.inhibit} | s.to_dict()
        row["suppress_control"] = _control(model, saes, g, group, answers, entity)
    if row.get("intermediate_found"):
        s = suppress(model, saes, g, p.intermediate, answers=answers)
        row["suppress_shared"] = {"group": p.intermediate, "members": len(g.groups[p.intermediate])} | s.to_dict()
    if p.swap is None:
        return
    donor_id, expect = p.swap["from"], p.swap["expect"]
    base = {"from": donor_id, "expect": expect}
    donor = by_id[donor_id]
    if donor_id not in graphs:
        row["swap"] = base | {"error": f"the donor {donor_id!r} has no graph (the model does not answer it top-1)"}
        return
    if group not in g.groups or carrier(donor) not in graphs[donor_id].groups:
        row["swap"] = base | {"error": "the entity group was not found in this graph or in the donor's"}
        return
    tried, diverged = [], []
    for scale in options.scales:
        try:
            o = swap(model, saes, g, group, graphs[donor_id], carrier(donor), scale=scale,
                     answers=[*answers, expect])  # fmt: skip
        except NumericalError as exc:  # the injection overflowed the model: larger scales would too
            diverged.append({"scale": scale, "error": str(exc)})
            break
        tried.append((scale, o))
        if o.answers[expect]["rank_after"] == 0:
            break
    if not tried:
        row["swap"] = base | {"error": "every scale diverged", "diverged": diverged}
        return
    scale, o = min(tried, key=lambda t: (t[1].answers[expect]["rank_after"], t[0]))
    e = o.answers[expect]
    row["swap"] = base | {
        "group": group, "with": carrier(donor), "scale": scale,
        "expect_rank_before": e["rank_before"], "expect_rank_after": e["rank_after"],
        "expect_p_before": e["p_before"], "expect_p_after": e["p_after"],
        "tried": [{"scale": s, "expect_rank_after": t.answers[expect]["rank_after"],
                   "expect_p_after": t.answers[expect]["p_after"]} for s, t in tried],
        "diverged": diverged,
    } | o.to_dict()  # fmt: skip


def _control(model, saes, g, group: str, answers, entity: set) -> dict:
    """The same number of features, at the same positions, that the graph credits most but that do not pass
    the entity's contrast: does removing the group matter because it is the entity, or because it is large?"""
    members = g.members(group)
    chosen = {(x.hook, x.feature) for x in members} | entity
    positions = {x.position for x in members}
    carried: dict[tuple[str, int], list] = {}
    for x in g.full_nodes:
        if x.kind == "feature" and x.position in positions and (x.hook, x.feature) not in chosen:
            carried.setdefault((x.hook, x.feature), []).append(x)
    n = len({(x.hook, x.feature) for x in members})
    ranked = sorted(carried, key=lambda k: -sum(x.attribution for x in carried[k]))[:n]
    if not ranked:
        return {"error": "no other feature at the group's positions"}
    g.group(f"{group}: control", [x.id for k in ranked for x in carried[k]])
    s = suppress(model, saes, g, f"{group}: control", answers=answers)
    g.ungroup(f"{group}: control")
    return {"features": len(ranked), "members": [f"{h} f{k}" for h, k in ranked]} | s.to_dict()


def summary(rows: list[dict]) -> dict:
    """The suite's acceptance figures: how many prompts pass, and how often each experiment works."""
    two = [r for r in rows if r["hops"] >= 2]
    built = [r for r in two if "graph" in r]
    sup = [r["suppress"] for r in built if "metric_after" in r.get("suppress", {})]
    shared = [r["suppress_shared"] for r in built if "metric_after" in r.get("suppress_shared", {})]
    control = [r["suppress_control"] for r in built if "metric_after" in r.get("suppress_control", {})]
    inh = [r["inhibit"] for r in built if "metric_after" in r.get("inhibit", {})]
    swaps = [r["swap"] for r in built if "swap" in r]
    done = [s for s in swaps if "expect_rank_after" in s]

    def median(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    return {
        "prompts": len(rows),
        "two_hop": len(two),
        "two_hop_answered": sum(r["answered"] for r in two),
        "controls": len(rows) - len(two),
        "controls_answered": sum(r["answered"] for r in rows if r["hops"] < 2),
        "graphs": len(built),
        "intermediate_found": sum(bool(r.get("intermediate_found")) for r in built),
        "suppressed": len(sup),
        "suppress_halves_metric": sum(s["metric_after"] <= 0.5 * s["metric_before"] for s in sup),
        "inhibited": len(inh),
        "inhibit_halves_metric": sum(s["metric_after"] <= 0.5 * s["metric_before"] for s in inh),
        "median_suppress_drop": median([s["drop"] for s in sup]),
        "shared_suppressed": len(shared),
        "shared_suppress_halves_metric": sum(s["metric_after"] <= 0.5 * s["metric_before"] for s in shared),
        "median_shared_suppress_drop": median([s["drop"] for s in shared]),
        "control_suppressed": len(control),
        "control_suppress_halves_metric": sum(s["metric_after"] <= 0.5 * s["metric_before"] for s in control),
        "median_control_suppress_drop": median([s["drop"] for s in control]),
        "median_inhibit_drop": median([s["drop"] for s in inh]),
        "swaps_defined": len(swaps),
        "swaps_run": len(done),
        "swap_top1": sum(s["expect_rank_after"] == 0 for s in done),
        "median_replacement_score": median([r["graph"]["replacement_score"] for r in built]),
        "median_completeness_score": median([r["graph"]["completeness_score"] for r in built]),
        "median_faithfulness": median([r["graph"].get("faithfulness") for r in built]),
    }


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")
