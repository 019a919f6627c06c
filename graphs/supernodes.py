"""Supernodes found for you: a graph's features grouped by what they stand for, each with its evidence.

A group is the set of the graph's feature nodes whose features separate two sets of prompts
(attribution.find.contrast): fire on the prompts that share a concept, stay silent on the others. For a
multi-hop prompt that gives the intermediate entity ("France": features that fire on the Eiffel Tower,
Louvre and Paris prompts and not on prompts about other countries, read at any token) and output groups
("says French": features at the last token of prompts answered " French" and not of prompts answered
otherwise; "says a language": language questions against currency questions). circuit-tracer users group
nodes by hand on Neuronpedia; here it is a function with parameters.

A contrast's features are ranked by how well they separate the prompts (rank="contrast": what the prompts
share) or by how much this graph's metric rests on them (rank="attribution": the features that carry the
entity to the answer in this prompt, each still firing on more of the prompts sharing the entity than on the
others, so one landmark's own features can join its country's group):

    found = supernodes(model, saes, graph, {"France": Contrast(france_prompts, other_prompts, "any")})
    found[0].members, found[0].label
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from attribution.find import POSITIONS, contrast
from attribution.splice import prepare_saes
from graphs.graph_nodes import GraphError

WHERE = ("all", "last", "not_last")  # an intermediate entity sits on its own tokens, an output group at the last
RANKS = ("contrast", "attribution")


@dataclass(frozen=True)
class Contrast:
    """The prompts that share a concept (positive) and those that do not (negative), read at each prompt's
    last token ("last") or at its strongest token ("any")."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    position: str = "any"
    kind: str = "intermediate"  # or "output": only a label for readers
    where: str = "all"  # which of this prompt's positions the group's nodes may sit at: all, last, not_last
    rank: str = "contrast"  # features ranked by contrast score, or by the graph's attribution (positive only)
    min_score: float | None = None  # this contrast's threshold (None: supernodes' min_score)
    within: str | None = None  # only at the positions of this group's members (a group found before this one)

    def __post_init__(self):
        object.__setattr__(self, "positive", tuple(self.positive))
        object.__setattr__(self, "negative", tuple(self.negative))
        if self.position not in POSITIONS:
            raise GraphError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if not self.positive or not self.negative:
            raise GraphError("a contrast needs at least one positive and one negative prompt")
        if self.where not in WHERE:
            raise GraphError(f"where must be one of {WHERE}, got {self.where!r}")
        if self.rank not in RANKS:
            raise GraphError(f"rank must be one of {RANKS}, got {self.rank!r}")
        if self.min_score is not None and not 0 < self.min_score <= 1:
            raise GraphError(f"a contrast's min_score must be in (0, 1], got {self.min_score}")


@dataclass
class Supernode:
    """A named group of a graph's feature nodes, and why they belong together."""

    name: str
    kind: str
    members: list[str]  # node ids of the graph (graph.groups[name])
    features: list[dict] = field(default_factory=list)  # per feature: hook, feature, score, rates, label
    label: str = ""  # one line of evidence
    passing: frozenset = frozenset()  # (hook, feature) of every feature passing the contrast, in the graph or not

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "members": self.members, "label": self.label,
                "features": self.features}  # fmt: skip


def supernodes(
    model,
    saes,
    graph,
    contrasts: Mapping[str, Contrast],
    *,
    min_score: float = 0.5,
    max_features: int = 12,
    kept_only: bool = True,
    cache: dict | None = None,
) -> list[Supernode]:
    """One Supernode per contrast that some of the graph's feature nodes pass, added to graph.groups.

    min_score: a feature must fire on at least this share more of the positive prompts than of the
        negative ones; max_features: the best-scoring features kept per group (all their nodes join);
    kept_only: only nodes the (pruned) graph keeps, so the group is part of the circuit drawn.
    Contrasts no feature node passes are left out (the caller can report them as not found).
    cache: a dict kept across calls with the same model and dictionaries (a suite's prompts share their
    contrasts), so each contrast's prompts run once."""
    if not 0 < min_score <= 1:
        raise GraphError(f"min_score must be in (0, 1], got {min_score}")
    if max_features < 1:
        raise GraphError(f"max_features must be >= 1, got {max_features}")
    saes = {h: s for h, s in prepare_saes(model, saes).items() if h in graph.hooks}
    nodes = [x for x in graph.full_nodes if x.kind == "feature" and (not kept_only or graph.kept(x.id))]
    by_feature: dict[tuple[str, int], list] = {}
    for x in nodes:
        by_feature.setdefault((x.hook, x.feature), []).append(x)
    out, last = [], len(graph.tokens) - 1
    for name, c in contrasts.items():
        if c.within is not None and c.within not in graph.groups:
            continue  # the group that places this one was not found: neither is this one
        found = contrast_features(model, saes, c, min_score, cache)
        at = None if c.within is None else {graph.node(i).position for i in graph.groups[c.within]}
        here = {k: [x for x in xs if _allowed(x.position, last, c.where) and (at is None or x.position in at)]
                for k, xs in by_feature.items()}  # fmt: skip
        matches = [m for m in found if here.get((m.hook, m.feature))]
        credit = {(m.hook, m.feature): sum(x.attribution for x in here[(m.hook, m.feature)]) for m in matches}
        if c.rank == "attribution":
            matches = sorted((m for m in matches if credit[(m.hook, m.feature)] > 0),
                             key=lambda m: -credit[(m.hook, m.feature)])  # fmt: skip
        matches = matches[:max_features]
        if not matches:
            continue
        members = [x.id for m in matches for x in here[(m.hook, m.feature)]]
        graph.group(name, members)
        features = []
        for m in matches:
            label = next((x.label for x in by_feature[(m.hook, m.feature)] if x.label), "")
            rates = {"score": round(m.score, 4), "positive": round(m.positive, 4), "negative": round(m.negative, 4)}
            features.append({"hook": m.hook, "feature": m.feature, **rates,
                             "attribution": credit[(m.hook, m.feature)], "label": label})  # fmt: skip
        passing = frozenset((m.hook, m.feature) for m in found)
        out.append(Supernode(name, c.kind, members, features, _evidence(c, matches, features), passing))
    return out


def contrast_features(model, saes, c: Contrast, min_score: float = 0.5, cache: dict | None = None) -> list:
    """The features (attribution.find.Match, best contrast first) that pass `c` at its threshold (or
    min_score); cache as in supernodes."""
    saes = prepare_saes(model, saes)
    threshold = min_score if c.min_score is None else c.min_score
    key = (c.positive, c.negative, c.position, threshold, tuple(saes))
    found = cache.get(key) if cache is not None else None
    if found is None:
        found = contrast(model, saes, list(c.positive), list(c.negative), position=c.position, top=None,
                         min_score=threshold)  # fmt: skip
        if cache is not None:
            cache[key] = found
    return found


def _evidence(c: Contrast, matches, features) -> str:
    """One line: where the group sits, how well its best feature separates the prompts, its contexts."""
    n_pos, n_neg = len(c.positive), len(c.negative)
    best = max(matches, key=lambda m: m.score)
    evidence = f"{len(matches)} feature(s) at {sorted({m.hook for m in matches})}"
    if c.rank == "attribution":
        evidence += f" carrying {sum(f['attribution'] for f in features):.3g} of the metric's attribution"
    evidence += (
        f"; best fires on {best.positive:.0%} of {n_pos} prompt(s) sharing it, {best.negative:.0%} of {n_neg} other(s)"
    )
    labels = [f["label"] for f in features if f["label"]][:3]
    return evidence + ("; contexts: " + " | ".join(labels) if labels else "")


def _allowed(position: int, last: int, where: str) -> bool:
    return where == "all" or (position == last) == (where == "last")
