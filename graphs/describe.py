"""What every graph records about its prompt, dictionaries, model and metric, whichever builder made it
(graphs.build for residual SAEs, graphs.replacement for transcoders)."""

from __future__ import annotations

import torch


def described(model, prompt: str, batch, hooks: list[str], metric, value: float) -> dict:
    """A graph's description of its prompt, dictionaries, model and metric (Graph fields), whatever built it."""
    return {
        "prompt": prompt,
        "token_ids": batch.input_ids[0].tolist(),
        "tokens": batch.tokens[0],
        "hooks": hooks,
        "layers": {h: model.hook(h).layer for h in hooks},
        "model": {"name": model.name, "n_layers": model.n_layers},
        "metric_info": metric_info(metric, value),
    }


def metric_info(metric, value: float) -> dict:
    """What a graph records about its metric: enough to draw the metric node and, for a logit difference, to
    rebuild the metric from a saved graph (graphs.interventions.graph_metric)."""
    good, bad = getattr(metric, "good", None), getattr(metric, "bad", None)
    good_ids = getattr(metric, "good_ids", None)
    kind = type(metric).__name__ if good is not None and bad is not None and len(good) == 1 else None
    return {
        "repr": repr(metric),
        "value": value,
        "kind": kind,
        "good": good[0] if kind else None,
        "bad": bad[0] if kind else None,
        "position": getattr(metric, "position", -1),
        "good_id": int(good_ids[0]) if good_ids is not None else None,
    }


def metric_position(metric, width: int) -> int:
    """The metric's position in a prompt of `width` tokens (its `position`, -1 by default, made >= 0)."""
    return getattr(metric, "position", -1) % width


@torch.no_grad()
def prob(model, metric, hidden) -> float:
    """Probability of the metric's good answer at its position, from the prompt's final-norm states [pos,
    d_model] (0 for metrics without one)."""
    good = getattr(metric, "good_ids", None)
    if good is None:
        return 0.0
    pos = metric_position(metric, hidden.shape[0])
    logits = model.unembed(hidden[pos]).double()  # [vocab]
    return float(logits.softmax(-1)[int(good[0])])
