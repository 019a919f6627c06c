"""build_graph's `labels=` argument turned into the one labeller, attribution.explain.Explainer.

`labels=True` uses feature indexes (one per SAE, built once and cached on disk): short labels for every
candidate node, cards (top contexts, promoted tokens, histogram) only for the nodes a page shows. Without an
index for an SAE (a WholeActivation has no features), its nodes stay unlabelled, with a warning: a label is
never made up. `labels={hook: FeatureIndex}` uses indexes the user built (e.g. over their own text);
`labels=False` skips labelling; a callable `fn(hook, feature) -> str` labels without cards; an object with
`label(hook, feature)` and `card(hook, feature)` (the user's own) is used as it is, and an Explainer (the
one a case study holds) with its indexes and the cards it made, so the report's cards fill the tooltips.
"""

from __future__ import annotations

from collections.abc import Callable

from attribution.explain import Explainer
from graphs.graph_nodes import GraphError

TOOLTIP_CONTEXTS = 3  # contexts per card an Explainer made here computes: a tooltip shows 3, each costs a forward


def labeler(model, saes: dict, labels, progress: bool = True):
    """The labeller behind build_graph's `labels=` argument (see the module's docstring)."""
    if isinstance(labels, Explainer):  # a case study's: its indexes and cards, cards cut to the tooltip's contexts
        return labels.with_contexts(TOOLTIP_CONTEXTS)
    if hasattr(labels, "label") and hasattr(labels, "card"):
        return labels
    if labels is True or isinstance(labels, dict):
        explainer = Explainer(
            model, saes, indexes=labels if isinstance(labels, dict) else None, n_contexts=TOOLTIP_CONTEXTS,
            progress=progress,
        )  # fmt: skip
        explainer.prepare()  # every SAE's index at once: the missing ones share one pass over the text
        return explainer
    if labels is False or labels is None:
        return Explainer(model, saes, enabled=False)
    if callable(labels):
        return Explainer(model, saes, label_fn=_checked(labels))
    raise GraphError(
        f"labels must be True, False, {{hook: FeatureIndex}}, a callable (hook, feature) -> str or a labeller; "
        f"got {labels!r}"
    )


def _checked(fn: Callable[[str, int], str]) -> Callable[[str, int], str]:
    def label(hook: str, feature: int) -> str:
        text = fn(hook, feature)
        if not isinstance(text, str):
            raise GraphError(f"labels callable returned {type(text).__name__} for {hook} f{feature}; return a str")
        return text

    return label
