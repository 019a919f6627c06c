"""Real interventions on a graph's nodes: faithfulness, completeness, group ablation and steering.

Every run splices the SAEs at the graph's hooks and recomputes each SAE's features from the input it
actually receives (so downstream features react to upstream ablations), then replaces the chosen nodes:
`x' = x + (f' - f) W_dec + (e' - e)`, which is exactly x wherever nothing is replaced.

The nodes are the clean prompt's active features and error terms at non-<bos> positions. Features that
were inactive on the clean prompt are not nodes: they are always recomputed, never ablated, so the
unpruned graph is exactly faithful in every mode. Ablation values: 0 (mode="zero") or each feature's and
error term's mean over the non-<bos> tokens of `reference` prompts, by default the graph's own prompt
("mean"). All rows of one check share a forward pass: they join the batch at the first SAE hook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attribution.metrics import Rows, evaluate
from attribution.splice import decompose, trace, wide
from graphs.nodes import GraphError

MODES = ("zero", "mean")
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
def ablation_values(model, saes: dict, batch, mode: str) -> dict[str, tuple[Tensor, Tensor]]:
    """hook -> (feature values [d_sae], error values [d_model]) that ablated nodes are set to."""
    if mode == "zero":
        return {
            h: (
                torch.zeros(s.d_sae, dtype=s.W_dec.dtype, device=model.device),
                torch.zeros(model.d_model, dtype=model.dtype, device=model.device),
            )
            for h, s in saes.items()
        }
    tr = trace(model, batch, capture=list(saes), stop_early=True)
    mask = batch.node_mask()  # [batch, pos], non-<bos> tokens
    out = {}
    for h, sae in saes.items():
        d = decompose(sae, tr.acts[h])
        out[h] = (d.features[mask].mean(0), d.error[mask].mean(0))
    return out


@torch.no_grad()
def run_rows(model, saes: dict, batch, metric, rows: list[dict[str, RowEdit]], values: dict) -> Tensor:
    """The metric [rows] of one forward where row r applies rows[r] (a hook missing from a row: keep all)."""
    hooks = sorted({h for row in rows for h in row}, key=lambda h: model.hooks[h].order)
    if not hooks:
        raise GraphError("nothing to intervene on")
    n = len(rows)
    width = batch.width

    def stacked(h: str):
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
        return keep_f, val_f, keep_e, ev

    def splice(h: str, first: bool):
        sae = saes[h]
        keep_f, val_f, keep_e, ev = stacked(h)

        def edit(x):  # [1 or rows, pos, d_model] -> [rows, pos, d_model]
            if first:
                x = x.repeat(n, 1, 1)
            f = sae.encode(x)  # [rows, pos, d_sae]
            new = torch.where(keep_f, f, val_f.to(f.dtype))
            dx = (new - f) @ sae.W_dec  # [rows, pos, d_model]; b_dec cancels
            if not bool(keep_e.all()):
                xw = x.to(wide(x.dtype, sae))  # the error term in the wider dtype, as decompose makes it
                e = xw - sae.decode(f).to(xw.dtype)
                dx = dx.to(xw.dtype) + torch.where(keep_e, e, ev.to(xw.dtype)) - e
            return x + dx.to(x.dtype)

        return edit

    edits = {h: splice(h, i == 0) for i, h in enumerate(hooks)}
    tr = trace(model, batch, edits=edits)
    return evaluate(metric, model, tr.hidden, Rows.copies(0, n)).double()
