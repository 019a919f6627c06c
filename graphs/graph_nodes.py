"""Graph nodes: input tokens, SAE features, SAE error terms and the metric, with stable string ids.

Rows (`layer`) order the layered DAG: tokens are row 0, the SAE hooks rows 1..H in forward order, the
metric row H + 1. Edges only join consecutive rows, because residual-stream SAEs see every path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from attribution.errors import AttributionError

KINDS = ("token", "feature", "error", "metric")


class GraphError(AttributionError):
    """A graph request that cannot be met (bad hooks, unknown node or group, bad thresholds)."""


@dataclass
class GraphNode:
    id: str
    kind: str  # one of KINDS
    layer: int  # row of the layered DAG: 0 tokens, 1..H SAE hooks, H + 1 the metric
    hook: str | None  # the SAE's hook (None for tokens and the metric)
    position: int  # token index in the prompt (0 = <bos>, never a node)
    feature: int | None  # SAE feature index (features only)
    token: str  # the prompt's token at `position`
    activation: float  # feature activation, ||e|| for an error, ||embedding|| for a token, the metric's value
    attribution: float  # activation x d(metric)/d(activation) through the real model (the library's grad_x_act)
    influence: float = 0.0  # share of the metric's input carried through this node, indirect paths counted
    cumulative: float = 0.0  # share of all feature/error influence held by nodes at least this influential
    label: str = ""  # short explanation from attribution.explain or the user's labeller ("" if none)

    @property
    def is_feature(self) -> bool:
        return self.kind == "feature"

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        what = {"token": "token", "metric": "metric", "error": "error"}.get(self.kind, f"f{self.feature}")
        hook = self.hook or ""
        text = f"{hook:>13} pos {self.position:>3} {self.token!r:>14} {what:>8}  influence {self.influence:.4f}"
        return text + (f"  {self.label}" if self.label else "")


def token_id(position: int) -> str:
    return f"tok:{position}"


def feature_id(hook: str, position: int, feature: int) -> str:
    return f"{hook}:{position}:f{feature}"


def error_id(hook: str, position: int) -> str:
    return f"{hook}:{position}:err"


METRIC_ID = "metric"


def check_residual(model, hooks: list[str]) -> None:
    """Graph hooks must be residual-stream points with distinct layers (see the module docstring)."""
    layers: dict[int, str] = {}
    for h in hooks:
        spec = model.hook(h)
        if spec.kind not in ("resid_post", "resid_pre"):
            raise GraphError(
                f"graphs need SAEs on the residual stream (resid_post.L or resid_pre.L), got {h!r}: an SAE on "
                f"{spec.kind} does not see every path between layers, so edges between SAE layers would miss "
                "effects. Use residual-stream SAEs, or attribute() for other hooks."
            )
        if spec.layer in layers:
            raise GraphError(
                f"two graph SAEs at layer {spec.layer} ({layers[spec.layer]!r} and {h!r}); keep one per layer"
            )
        layers[spec.layer] = h
