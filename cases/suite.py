"""A suite of multi-hop prompts, end to end: which the model answers, each one's graph, its supernodes found
by contrast across the suite, the hop proven by intervention, and the graph the prompts share.

    python -m cases suite --prompts cases/suites/two_hop.jsonl --out runs/suite
    attribution case suite --prompts FILE --out DIR

For every prompt the model answers top-1 (cases.suite_prompts.check): the feature graph for logit(answer) -
logit(counterfactual), pruned to at most `max_features` features, with circuit-tracer's scores and
faithfulness by real ablation; supernodes (graphs.supernodes): the intermediate entity twice (the shared
group: features that fire on the suite's prompts sharing it, read at any token, and not on the others; the
entity group: the features at the entity's tokens this graph credits most among those firing on more of the
prompts sharing it than of the others) and two output groups ("says French": the last token of prompts
answered " French" against prompts answered otherwise; "says a language": prompts whose answer is a language
against the others); then cases.suite_hop: the entity group suppressed (the shared group and a control of
as many other credited features beside it) and, where the line names one, the swap for another prompt's
group, in the real and in the replacement model. `--transcoders` makes every graph a replacement graph.
Writes DIR/report.json ({"prompts": [...], "aggregate": {...}}, docs/case-studies.md has the schema),
DIR/report.html, and per prompt DIR/graphs/<id>.html and .json.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from attribution.metrics import LogitDiff
from cases.suite_hop import GROUPS, carrier, interventions, target_kind
from cases.suite_prompts import SuiteError, SuitePrompt, check, load_suite
from graphs.aggregate import aggregate
from graphs.build import build_graph, is_replacement
from graphs.supernodes import Contrast, supernodes

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
    swap: tuple[str, str] = ("shared", "entity")  # the swap: this prompt's group suppressed, the donor's injected
    swap_variants: bool = True  # also every other pairing of the two groups (cases.suite_hop), reported beside
    qk_heads: int = 0  # per prompt, the heads moving the most into the last position, QK-decomposed (transcoders)

    def __post_init__(self):
        self.swap = tuple(self.swap)
        if len(self.swap) != 2 or not set(self.swap) <= set(GROUPS):
            raise SuiteError(f"swap must be two of {GROUPS} (this prompt's group, the donor's), got {self.swap!r}")


def contrasts(p: SuitePrompt, suite: list[SuitePrompt], carrier_score: float = 0.25) -> dict[str, Contrast]:
    """The suite's prompt sets that define p's supernodes: its intermediate entity (what the prompts sharing it
    have in common, and the features that carry it to this prompt's answer), its answer, its answer's kind."""
    out = {}
    if p.intermediate:
        pos = [q.prompt for q in suite if q.intermediate == p.intermediate]
        neg = [q.prompt for q in suite if q.intermediate and q.intermediate != p.intermediate]
        if neg:
            out[p.intermediate] = Contrast(pos, neg, "any", "intermediate", "not_last")
            out[carrier(p)] = Contrast(
                pos, neg, "any", "intermediate", "not_last", "attribution", carrier_score, within=p.intermediate
            )  # on the tokens where the shared group sits
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
    if is_replacement(saes) and options.candidates is not None:  # a replacement graph ranks its rows by influence
        options = replace(options, candidates=None)
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
        graphs[p.id], entity[p.id] = _graph(model, saes, p, suite, options, rows[p.id], out, contrast_cache)
    for p in tqdm(todo, desc="suite interventions", disable=not options.progress):
        interventions(model, saes, p, by_id, graphs, suite, options, rows[p.id], entity[p.id])
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
    """p's pruned graph with its supernodes (row filled in, pages written), and the features passing its entity
    group's contrast (which the suppression's control leaves out)."""
    metric = LogitDiff(model, p.answer, p.counterfactual)
    g = build_graph(model, saes, p.prompt, metric, candidates=options.candidates, labels=options.labels,
                    progress=False)  # fmt: skip
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
    return pruned, next((s.passing for s in found if s.name == carrier(p)), frozenset())


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
        "swap_top1_by_variant": _by_variant([r["swap_variants"] for r in built if "swap_variants" in r]),
        "median_replacement_score": median([r["graph"]["replacement_score"] for r in built]),
        "median_completeness_score": median([r["graph"]["completeness_score"] for r in built]),
        "median_faithfulness": median([r["graph"].get("faithfulness") for r in built]),
    }


def _by_variant(variants: list[dict]) -> dict:
    """For each pairing of groups a swap can use: how many swaps made the expected answer top-1."""
    names = dict.fromkeys(k for v in variants for k in v)
    return {k: sum(v.get(k, {}).get("expect_rank_after") == 0 for v in variants) for k in names}


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")
