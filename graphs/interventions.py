"""Real interventions on a graph's nodes, in the model: faithfulness, completeness, group ablation and steering.

A Graph is data; these functions take the model and the SAEs it was built with (and the metric, rebuilt from
the graph's own description when not given) and run the engine (attribution.engine) on them.

Every run splices the SAEs at the graph's hooks and recomputes each SAE's features from the input it
actually receives (so downstream features react to upstream ablations), then replaces the chosen nodes:
`x' = x + (f' - f) W_dec + (e' - e)`, which is exactly x wherever nothing is replaced. Transcoders splice the
same way at the hook they write (an MLP's output), their features read from their input hook: checks of a
replacement graph run in the real model, attention and norms live.

The nodes are the clean prompt's active features and error terms at non-<bos> positions. Features that
were inactive on the clean prompt are not nodes: they are always recomputed, never ablated, so the
unpruned graph is exactly faithful in every mode. Ablation values: 0 (mode="zero") or each feature's and
error term's mean over the non-<bos> tokens of `reference` prompts, by default the graph's own prompt
("mean"). All rows of one check share a forward pass: they replace the prompt's row at the first SAE hook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attribution.engine import Group, Splice, trace
from attribution.metrics import LogitDiff, Rows, evaluate
from attribution.splice import edit_hook, prepare_saes, wide
from attribution.spliced import MODES, ablation_values
from graphs.graph_nodes import GraphError

ERRORS = ("keep", "ablate")


@dataclass
class RowEdit:
    """What one row replaces at one hook; True in a keep mask = left as computed."""

    features: Tensor  # [pos, d_sae] bool keep mask
    errors: Tensor  # [pos] bool keep mask
    values: Tensor | None = None  # [pos, d_sae] replacement feature values (None: the mode's ablation value)


@dataclass
class Check:
    """Metric values of one faithfulness check and the scores made from them."""

    mode: str
    errors: str
    model: float  # nothing ablated (equals the plain model)
    empty: float  # every feature node ablated (and every error node with errors="ablate")
    graph: float  # every node outside the graph ablated
    complement: float  # every node of the graph ablated

    @property
    def defined(self) -> bool:
        """False when m(model) = m(empty): the denominator of both scores is too small to divide by."""
        return _moved(self.model, self.empty)

    def _span(self) -> float:
        """m(model) - m(empty), the denominator of both scores."""
        if not self.defined:
            raise GraphError(
                f"faithfulness is undefined: ablating every node leaves the metric where it was (model "
                f"{self.model:+.4g}, empty {self.empty:+.4g}); nothing in the graph moves this metric. Try "
                "errors='ablate', the other ablation mode, or a metric the prompt actually decides"
            )
        return self.model - self.empty

    @property
    def faithfulness(self) -> float:
        """(m(graph) - m(empty)) / (m(model) - m(empty)): 1 when the graph alone recovers the metric."""
        return (self.graph - self.empty) / self._span()

    @property
    def completeness(self) -> float:
        """1 - (m(complement) - m(empty)) / (m(model) - m(empty)): 1 when nothing outside the graph matters."""
        return 1.0 - (self.complement - self.empty) / self._span()

    def _repr_html_(self) -> str:
        """A small table in a notebook (drawn by pages, through attribution.display)."""
        from attribution import display

        return display.notebook("check", self)

    def summary(self) -> str:
        """The scores and how they were measured, without the raw metric values."""
        scores = (
            f"faithfulness {self.faithfulness:.3f}, completeness {self.completeness:.3f}"
            if self.defined
            else "faithfulness undefined (m(model) = m(empty))"
        )
        return f"{scores} ({self.mode} ablation, errors {self.errors})"

    def __str__(self) -> str:
        return (
            f"{self.summary()}: metric model {self.model:+.4f}, empty {self.empty:+.4f}, "
            f"graph {self.graph:+.4f}, complement {self.complement:+.4f}"
        )


@dataclass
class LayerCheck:
    """One SAE layer on its own, errors kept and every other layer untouched: how much of the metric its
    features carry (model - empty) and how much of that the graph's features at this layer keep.

    Residual-stream SAE layers are cuts: everything reaching the metric passes each of them, so the whole
    graph can be no more faithful than its weakest layer allows, and a layer whose features carry little of
    the metric (its error term carries the rest) leaves that layer's score undefined or unstable.
    """

    hook: str
    mode: str
    model: float
    empty: float  # every clean-active feature at this hook ablated
    graph: float  # the features outside the graph at this hook ablated

    @property
    def carried(self) -> float:
        """m(model) - m(empty): the part of the metric this layer's features carry (the error holds the rest)."""
        return self.model - self.empty

    @property
    def defined(self) -> bool:
        return _moved(self.model, self.empty)

    @property
    def faithfulness(self) -> float:
        """(m(graph) - m(empty)) / (m(model) - m(empty)) for this layer alone; nan when undefined."""
        return (self.graph - self.empty) / self.carried if self.defined else float("nan")

    def __str__(self) -> str:
        score = f"faithfulness {self.faithfulness:+.3f}" if self.defined else "faithfulness undefined"
        return (
            f"{self.hook}: features carry {self.carried:+.4f} of the metric, the graph keeps "
            f"{self.graph - self.empty:+.4f}, {score} ({self.mode} ablation, errors kept; m(empty) "
            f"{self.empty:+.4f}, m(graph) {self.graph:+.4f})"
        )


def _moved(model: float, empty: float) -> bool:
    """Whether ablating moved the metric enough to divide by m(model) - m(empty)."""
    return abs(model - empty) > 1e-6 * max(1.0, abs(model))


def check_mode(mode: str, errors: str = "keep") -> None:
    if mode not in MODES:
        raise GraphError(f"unknown ablation mode {mode!r}; choose one of {MODES}")
    if errors not in ERRORS:
        raise GraphError(
            f"errors must be one of {ERRORS} (error nodes outside the graph kept or ablated), got {errors!r}"
        )


@torch.no_grad()
def run_rows(model, saes: dict, batch, metric, rows: list[dict[str, RowEdit]], values: dict, *, freeze=False) -> Tensor:
    """The metric [rows] where row r applies rows[r] (a hook missing from a row: keep all), as one engine
    group: its rows replace the prompt's row at the first hook any row edits, and each hook splices its SAE
    with the rows' stacked masks (a row that keeps everything at a hook passes it through exactly, x + 0).
    freeze: an engine.Frozen of the clean prompt runs the rows in the replacement model (attention patterns
    and norm scales held at the clean prompt's), False in the real model."""
    hooks = sorted({h for row in rows for h in row}, key=lambda h: model.hooks[h].order)
    if not hooks:
        raise GraphError("nothing to intervene on")
    n, width = len(rows), batch.width
    edits = {}
    for h in hooks:
        d_sae = saes[h].d_sae
        fv, ev = values[h]
        keep_f = torch.ones(n, width, d_sae, dtype=torch.bool, device=fv.device)
        keep_e = torch.ones(n, width, 1, dtype=torch.bool, device=fv.device)
        val_f = fv.expand(n, width, d_sae).clone()  # [rows, pos, d_sae]
        for r, row in enumerate(rows):
            if h in row:
                keep_f[r], keep_e[r, :, 0] = row[h].features, row[h].errors
                if row[h].values is not None:
                    val_f[r] = row[h].values
        edits[edit_hook(model, saes[h], h)] = Splice(saes[h], keep_f, val_f, keep_e, ev)
    tr = trace(model, batch, groups=[Group(edits, n=n)], keep_batch=False, freeze=freeze)  # no clean row is read
    return evaluate(metric, model, tr.hidden[tr.groups[0]], Rows.copies(0, n)).double()


# --- a graph's checks ---------------------------------------------------------------------------------


def graph_setup(model, saes, graph, metric):
    """The SAEs at the graph's hooks, the prompt's batch and the metric, checked against the graph."""
    saes = prepare_saes(model, saes)
    missing = [h for h in graph.hooks if h not in saes]
    if missing:
        raise GraphError(
            f"the graph has nodes at {missing} but no SAE was given there; pass the SAEs it was built with"
        )
    saes = {h: saes[h] for h in graph.hooks}
    batch = model.tokenize(graph.prompt)
    if batch.input_ids[0].tolist() != graph.token_ids:
        raise GraphError("this model tokenizes the graph's prompt differently: pass the model the graph was built with")
    return saes, batch, metric if metric is not None else graph_metric(model, graph)


def _active(model, saes, batch) -> tuple[dict[str, Tensor], Tensor]:
    """hook -> [pos, d_sae] the clean prompt's active features at non-<bos> positions, and those positions [pos]
    (what checks ablate; group interventions need neither)."""
    acts = trace(model, batch, capture=list(saes), stop_early=True).acts
    valid = batch.node_mask()[0]  # [pos]
    return {
        h: (sae.encode(acts[h].to(wide(acts[h].dtype, sae)))[0] != 0) & valid[:, None] for h, sae in saes.items()
    }, valid


def graph_metric(model, graph):
    """The graph's metric rebuilt from its description (a logit difference), or an error asking for it."""
    m = graph.metric_info
    if m.get("kind") != "LogitDiff":
        raise GraphError(f"the graph's metric {m.get('repr')!r} cannot be rebuilt from the saved graph: pass metric=")
    return LogitDiff(model, m["good"], m["bad"], position=m["position"])


def _values(model, saes, batch, mode, reference):
    return ablation_values(model, saes, batch if reference is None else model.tokenize(reference), mode)


def _masks(graph, saes, width, nodes) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """hook -> [pos, d_sae] feature mask and [pos] error mask of `nodes`."""
    feats = {h: torch.zeros(width, saes[h].d_sae, dtype=torch.bool) for h in graph.hooks}
    errs = {h: torch.zeros(width, dtype=torch.bool) for h in graph.hooks}
    for x in nodes:
        if x.kind == "feature":
            feats[x.hook][x.position, x.feature] = True
        elif x.kind == "error":
            errs[x.hook][x.position] = True
    return feats, errs


def check(model, saes, graph, metric=None, *, mode: str = "zero", errors: str = "keep", reference=None) -> Check:
    """m(model), m(empty), m(graph), m(complement) of the graph's kept nodes in one batched forward.

    mode: ablated nodes are set to "zero" (a sparse feature's off state; the default) or their "mean" over
        the non-<bos> tokens of `reference` prompts (default: this prompt's own, a small sample: pass many
        prompts for a meaningful mean).
    errors: error nodes outside the evaluated set are "keep"-t (never ablated) or "ablate"-d too.
    """
    check_mode(mode, errors)
    saes, batch, metric = graph_setup(model, saes, graph, metric)
    active, valid_pos = _active(model, saes, batch)
    values = _values(model, saes, batch, mode, reference)
    kept_f, kept_e = _masks(graph, saes, batch.width, graph.nodes)
    rows = [{}, {}, {}, {}]  # model, empty, graph, complement
    for h in graph.hooks:
        valid = valid_pos.clone() if errors == "ablate" else torch.zeros_like(valid_pos)  # error nodes ever ablated
        graph_f, graph_e = kept_f[h], kept_e[h]
        rows[0][h] = RowEdit(torch.ones_like(active[h]), torch.ones_like(valid))
        rows[1][h] = RowEdit(~active[h], ~valid)
        rows[2][h] = RowEdit(~(active[h] & ~graph_f), ~(valid & ~graph_e))
        rows[3][h] = RowEdit(~(active[h] & graph_f), ~(valid & graph_e))
    m = run_rows(model, saes, batch, metric, rows, values).tolist()
    return Check(mode, errors, *m)


def check_layers(model, saes, graph, metric=None, *, mode: str = "zero", reference=None) -> list[LayerCheck]:
    """Each SAE layer alone (errors kept, other layers untouched), in one batched forward: how much of the
    metric its features carry and how much of that the graph keeps there. See LayerCheck."""
    check_mode(mode)
    saes, batch, metric = graph_setup(model, saes, graph, metric)
    active, _ = _active(model, saes, batch)
    values = _values(model, saes, batch, mode, reference)
    kept_f, _ = _masks(graph, saes, batch.width, graph.nodes)
    rows: list[dict] = [{}]  # row 0: nothing ablated
    for h in graph.hooks:
        keep_e = torch.ones(batch.width, dtype=torch.bool)
        rows.append({h: RowEdit(~active[h], keep_e)})
        rows.append({h: RowEdit(~(active[h] & ~kept_f[h]), keep_e.clone())})
    m = run_rows(model, saes, batch, metric, rows, values).tolist()
    return [LayerCheck(h, mode, m[0], m[1 + 2 * i], m[2 + 2 * i]) for i, h in enumerate(graph.hooks)]


def ablate_group(model, saes, graph, name: str, metric=None, *, mode: str = "zero", reference=None) -> float:
    """metric(group ablated) - metric(clean): every member set to zero or its mean at once.

    Negative when the group supports the metric (the opposite sign to attribution.ablate's `effect`).
    """
    check_mode(mode)
    members = graph.members(name)
    saes, batch, metric = graph_setup(model, saes, graph, metric)
    return _intervene(model, saes, batch, metric, members, _values(model, saes, batch, mode, reference), None)


def steer_group(model, saes, graph, name: str, factor: float, metric=None) -> float:
    """metric(members clamped to factor x their clean activation) - metric(clean); factor 0 = zero ablation."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
        raise GraphError(f"factor must be a finite number (0 = zero ablation, 1 = unchanged), got {factor!r}")
    members = graph.members(name)
    saes, batch, metric = graph_setup(model, saes, graph, metric)
    values = _values(model, saes, batch, "zero", None)
    return _intervene(model, saes, batch, metric, members, values, float(factor))


def pair_rows(saes, hooks, width: int, values) -> list[dict]:
    """Two rows that keep everything at `hooks`: the clean one, and one to edit, whose replaced features take
    `values` (each hook's ablation value) unless set."""
    rows: list[dict] = [{}, {}]
    for h in hooks:
        keep = torch.ones(width, saes[h].d_sae, dtype=torch.bool)
        rows[0][h] = RowEdit(keep.clone(), torch.ones(width, dtype=torch.bool))
        rows[1][h] = RowEdit(keep, torch.ones(width, dtype=torch.bool), values[h][0].repeat(width, 1))
    return rows


def _intervene(model, saes, batch, metric, members, values, factor: float | None) -> float:
    rows = pair_rows(saes, {x.hook for x in members}, batch.width, values)
    for x in members:
        rows[1][x.hook].features[x.position, x.feature] = False
        if factor is not None:
            rows[1][x.hook].values[x.position, x.feature] = factor * x.activation
    m = run_rows(model, saes, batch, metric, rows, values)
    return float(m[1] - m[0])


def group_by_contrast(
    model,
    saes,
    graph,
    name: str,
    positive: list[str],
    negative: list[str],
    *,
    min_score: float = 0.5,
    position: str = "last",
):
    """Group the graph's feature nodes (at every position) whose features fire on `positive` prompts and
    not on `negative` ones (attribution.find.contrast, score >= min_score), as graph.groups[name]. Returns
    the matches that are nodes here, best first; raises if none is."""
    from attribution.find import contrast

    saes = {h: s for h, s in prepare_saes(model, saes).items() if h in graph.hooks}
    found = contrast(model, saes, positive, negative, position=position, top=None, min_score=min_score)
    present = {(x.hook, x.feature) for x in graph.full_nodes if x.kind == "feature"}
    matches = [m for m in found if (m.hook, m.feature) in present]
    if not matches:
        best = "; ".join(str(m) for m in found[:3]) or "none"
        raise GraphError(
            f"no feature with contrast score >= {min_score} is a node of this graph (best matches anywhere: "
            f"{best}). Lower min_score, give more or better-matched prompts, or build with more candidates"
        )
    graph.group(name, [(m.hook, m.feature) for m in matches])
    return matches


def swap_group(model, saes, graph, name: str, good: str, bad: str, positive, negative, *, top: int = 10) -> dict:
    """The paper's swap: group `name`'s members zeroed and, at the members' positions, the features that
    contrast `positive` against `negative` prompts (attribution.find.contrast, the `top` best) set to their
    mean activation on `positive` prompts. Measured in the real model with logit(good) - logit(bad) (e.g.
    " Austin" - " Sacramento" for California -> Texas) and the top answer, before and after."""
    from attribution.find import contrast

    members = graph.members(name)
    saes, batch, _ = graph_setup(model, saes, graph, None)
    found = contrast(model, saes, list(positive), list(negative), top=top, min_score=0.3)
    if not found:
        raise GraphError(f"no feature separates the swap's prompts for {name!r}; give more or better-matched prompts")
    positions = sorted({x.position for x in members})
    values = ablation_values(model, saes, batch, "zero")
    rows = pair_rows(saes, {x.hook for x in members} | {m.hook for m in found}, batch.width, values)
    for x in members:
        rows[1][x.hook].features[x.position, x.feature] = False
    for m in found:
        for p in positions:
            rows[1][m.hook].features[p, m.feature] = False
            rows[1][m.hook].values[p, m.feature] = m.mean_positive
    swap = LogitDiff(model, good, bad)
    diff = run_rows(model, saes, batch, swap, rows, values).tolist()
    top_id = run_rows(model, saes, batch, lambda logits: logits[:, -1].argmax(-1).double(), rows, values).tolist()
    answer = [model.tokenizer.decode([int(t)]) for t in top_id]
    return {
        "metric": repr(swap),
        "before": diff[0],
        "after": diff[1],
        "change": diff[1] - diff[0],
        "answer_before": answer[0],
        "answer_after": answer[1],
        "features": [str(m) for m in found],
        "positions": positions,
    }
