"""The suite's hop interventions on one prompt's graph: its entity group suppressed (beside the shared group and
a control), inhibited, and swapped for the donor prompt's.

Two groups stand for a prompt's intermediate entity (cases.suite.contrasts): the shared group ("France":
features the prompts implying France have in common, ranked by contrast) and the entity group ("France (this
prompt)": the features at the entity's tokens this graph credits most, each firing on more of the prompts
sharing the entity than of the others). A swap suppresses one of this prompt's groups and injects one of the
donor's; SuiteOptions.swap says which, and with swap_variants every pairing is measured and reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attribution.errors import NumericalError
from cases.suite_prompts import SuitePrompt
from graphs.hop import suppress, swap

if TYPE_CHECKING:
    from cases.suite import SuiteOptions

GROUPS = ("shared", "entity")  # the two groups of an intermediate entity a swap can suppress or inject


def carrier(p: SuitePrompt) -> str:
    """The name of p's entity group: the intermediate's features that carry this prompt's answer."""
    return f"{p.intermediate} (this prompt)"


def group_name(p: SuitePrompt, which: str) -> str:
    """The graph group of p that `which` (one of GROUPS) names."""
    return p.intermediate if which == "shared" else carrier(p)


def target_kind(p: SuitePrompt) -> str:
    """What the answer is ("language", "currency", "country", ...): the relation's last element."""
    return (p.relation or "answer").split("->")[-1].strip() or "answer"


def answers_of_kind(p: SuitePrompt, suite) -> list[str]:
    """Every answer of the suite of p's kind (all languages for a language question)."""
    return list(dict.fromkeys(q.answer for q in suite if target_kind(q) == target_kind(p)))


def interventions(model, saes, p: SuitePrompt, by_id, graphs, suite, options: SuiteOptions, row: dict,
                  entity: set) -> None:  # fmt: skip
    """Fill row's suppress, inhibit, suppress_shared, suppress_control, swap and swap_variants. entity: every
    feature passing the entity's contrast, which the control leaves out."""
    g = graphs[p.id]
    answers = answers_of_kind(p, suite)
    group = carrier(p)
    if group not in g.groups:
        row["suppress"] = {"group": group, "error": "no entity group carries this prompt's answer in its graph"}
    else:
        s = suppress(model, saes, g, group, answers=answers)
        row["suppress"] = {"group": group, "members": len(g.groups[group])} | s.to_dict()
        s = suppress(model, saes, g, group, answers=answers, factor=options.inhibit)
        row["inhibit"] = {"group": group, "factor": options.inhibit} | s.to_dict()
        row["suppress_control"] = control(model, saes, g, group, answers, entity)
    if row.get("intermediate_found"):
        s = suppress(model, saes, g, p.intermediate, answers=answers)
        row["suppress_shared"] = {"group": p.intermediate, "members": len(g.groups[p.intermediate])} | s.to_dict()
    if p.swap is None:
        return
    donor_id, expect = p.swap["from"], p.swap["expect"]
    base = {"from": donor_id, "expect": expect}
    if donor_id not in graphs:
        row["swap"] = base | {"error": f"the donor {donor_id!r} has no graph (the model does not answer it top-1)"}
        return
    pairs = [(a, b) for a in GROUPS for b in GROUPS] if options.swap_variants else [tuple(options.swap)]
    done = {f"{a}->{b}": _swap(model, saes, p, by_id[donor_id], graphs, a, b, options.scales, answers, expect)
            for a, b in pairs}  # fmt: skip
    row["swap"] = base | done["->".join(options.swap)]
    if options.swap_variants:
        keep = ("scale", "expect_rank_after", "expect_p_after", "error")
        row["swap_variants"] = {k: {f: v[f] for f in keep if f in v} for k, v in done.items()}


def _swap(model, saes, p, donor, graphs, mine: str, theirs: str, scales, answers, expect) -> dict:
    """p's `mine` group suppressed and the donor's `theirs` group injected at the smallest of `scales` that
    makes `expect` top-1 (else the one that ranks it highest)."""
    g, dg = graphs[p.id], graphs[donor.id]
    group, given = group_name(p, mine), group_name(donor, theirs)
    if group not in g.groups or given not in dg.groups:
        return {"error": f"the group {group!r} was not found in this graph or {given!r} in the donor's"}
    tried, diverged = [], []
    for scale in scales:
        try:
            o = swap(model, saes, g, group, dg, given, scale=scale, answers=[*answers, expect])
        except NumericalError as exc:  # the injection overflowed the model: larger scales would too
            diverged.append({"scale": scale, "error": str(exc)})
            break
        tried.append((scale, o))
        if o.answers[expect]["rank_after"] == 0:
            break
    if not tried:
        return {"error": "every scale diverged", "diverged": diverged}
    scale, o = min(tried, key=lambda t: (t[1].answers[expect]["rank_after"], t[0]))
    e = o.answers[expect]
    return {
        "group": group, "with": given, "scale": scale,
        "expect_rank_before": e["rank_before"], "expect_rank_after": e["rank_after"],
        "expect_p_before": e["p_before"], "expect_p_after": e["p_after"],
        "tried": [{"scale": s, "expect_rank_after": t.answers[expect]["rank_after"],
                   "expect_p_after": t.answers[expect]["p_after"]} for s, t in tried],
        "diverged": diverged,
    } | o.to_dict()  # fmt: skip


def control(model, saes, g, group: str, answers, entity: set) -> dict:
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
