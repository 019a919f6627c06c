"""A hop proven by intervention: suppress a group of a graph's features, or swap it for another prompt's group.

The experiment of "Biology of a Large Language Model" (Dallas -> Texas -> Austin): remove the intermediate
concept's features and the answer should fall; put another entity's features in their place and that entity's
answer should rise. Both run with the graph's SAEs spliced and their error terms kept, so everything not
edited is exactly the model's own computation:

- in the real model (attention and norms live: later features react to the edit), and
- in the replacement model (attention patterns and norm scales held at the clean prompt's values, the
  linearised model the graph's edges describe), so the two numbers say how much the live attention adds.

    out = suppress(model, saes, graph, "France", answers=[" French", " German"])
    out = swap(model, saes, graph, "France", donor_graph, "Germany", answers=[" French", " German"])
    out.metric_before, out.metric_after, out.answers[" German"]["rank_after"]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from attribution.engine import frozen_state
from attribution.errors import NumericalError
from attribution.metrics import evaluate
from attribution.spliced import ablation_values
from graphs.graph_nodes import GraphError
from graphs.interventions import graph_setup, pair_rows, run_rows


@dataclass
class Outcome:
    """Before and after one intervention. metric: the graph's (logit(answer) - logit(counterfactual));
    answers: for each candidate answer, its rank among all next tokens (0 = top-1) and probability."""

    what: str
    group: str
    metric_before: float
    metric_after: float
    replacement_before: float | None  # the same metric in the replacement model (frozen attention and norms)
    replacement_after: float | None  # None where it diverged: see replacement_error
    top_before: str
    top_after: str
    answers: dict[str, dict] = field(default_factory=dict)  # answer -> rank/p before/after
    donor: str | None = None  # swap: the donor graph's prompt
    injected: list[str] = field(default_factory=list)  # swap: "hook f<feature> = value" at `positions`
    positions: list[int] = field(default_factory=list)
    replacement_error: str | None = None  # why the replacement model gave no number (NaN/inf), if it did not

    @property
    def drop(self) -> float:
        """How much of the metric the intervention removed: 1 - after / before (1 = all of it)."""
        return 1.0 - self.metric_after / self.metric_before if self.metric_before else float("nan")

    def to_dict(self) -> dict:
        return asdict(self) | {"drop": self.drop}


def suppress(model, saes, graph, group: str, *, answers=(), factor: float = 0.0, metric=None) -> Outcome:
    """Every member of `group` set to `factor` x its clean activation (0: zero ablation) at its position."""
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor):
        raise GraphError(f"factor must be a finite number (0 = zero ablation), got {factor!r}")
    members = graph.members(group)
    saes, batch, metric = graph_setup(model, saes, graph, metric)
    values = ablation_values(model, saes, batch, "zero")
    rows = pair_rows(saes, {x.hook for x in members}, batch.width, values)
    for x in members:
        rows[1][x.hook].features[x.position, x.feature] = False
        rows[1][x.hook].values[x.position, x.feature] = factor * x.activation
    return _measure(model, saes, batch, metric, rows, values, "suppress", group, answers)


def swap(
    model,
    saes,
    graph,
    group: str,
    donor,
    donor_group: str,
    *,
    scale: float = 1.0,
    factor: float = 0.0,
    answers=(),
    metric=None,
) -> Outcome:
    """`group` suppressed (its members set to `factor` x their activation: 0 zeroes them, -1 inhibits them) and
    `donor_group`'s features, from `donor` (another prompt's
    graph built with the same SAEs), injected at `scale` x their activation there: each donor feature at
    every position where `group` has a member, at the donor's hook, with its largest activation over the
    donor's positions. The positions differ between prompts, so the donor's group is carried over by
    feature, not by token."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
        raise GraphError(f"scale must be a finite number >= 0, got {scale!r}")
    if list(donor.hooks) != list(graph.hooks):
        raise GraphError(
            f"the donor graph's dictionaries are at {donor.hooks}, this graph's at {graph.hooks}: build both with "
            "the same SAEs"
        )
    members, given = graph.members(group), donor.members(donor_group)
    saes, batch, metric = graph_setup(model, saes, graph, metric)
    strongest: dict[tuple[str, int], float] = {}
    for x in given:
        strongest[(x.hook, x.feature)] = max(strongest.get((x.hook, x.feature), 0.0), x.activation)
    positions = sorted({x.position for x in members})
    values = ablation_values(model, saes, batch, "zero")
    rows = pair_rows(saes, {x.hook for x in members} | {h for h, _ in strongest}, batch.width, values)
    for x in members:
        rows[1][x.hook].features[x.position, x.feature] = False
        rows[1][x.hook].values[x.position, x.feature] = factor * x.activation
    for (h, k), act in strongest.items():
        for p in positions:
            rows[1][h].features[p, k] = False
            rows[1][h].values[p, k] = scale * act
    out = _measure(model, saes, batch, metric, rows, values, "swap", group, answers)
    out.donor = donor.prompt
    out.injected = [f"{h} f{k} = {scale * a:.3g}" for (h, k), a in sorted(strongest.items())]
    out.positions = positions
    return out


class _LastLogits:
    """The metric, evaluated as usual, that also keeps each row's next-token logits [rows, vocab]: one
    forward pass gives both."""

    def __init__(self, metric):
        self.metric, self.logits = metric, None

    def from_hidden(self, model, hidden, rows):
        self.logits = model.unembed(hidden[:, -1]).double()
        return evaluate(self.metric, model, hidden, rows)


@torch.no_grad()
def _measure(model, saes, batch, metric, rows, values, what: str, group: str, answers) -> Outcome:
    """Run the clean and the edited row in the real and in the replacement model; read metric and answers."""
    keep = _LastLogits(metric)
    real = run_rows(model, saes, batch, keep, rows, values).tolist()
    logits = keep.logits  # [2, vocab]: clean, edited
    frozen, problem = frozen_state(model, batch), None
    try:
        linear = run_rows(model, saes, batch, metric, rows, values, freeze=frozen).tolist()
    except NumericalError as exc:  # norm scales held at the clean prompt's do not renormalise a large edit
        linear, problem = [None, None], str(exc)
    out = Outcome(
        what, group, real[0], real[1], linear[0], linear[1],
        model.tokenizer.decode([int(logits[0].argmax())]), model.tokenizer.decode([int(logits[1].argmax())]),
    )  # fmt: skip
    out.replacement_error = problem
    probs = logits.softmax(-1)
    for a in dict.fromkeys(answers):
        i = model.token_id(a)
        out.answers[a] = {
            f"{k}_{when}": v
            for when, r in (("before", 0), ("after", 1))
            for k, v in (("rank", int((logits[r] > logits[r, i]).sum())), ("p", float(probs[r, i])))
        }
    return out
