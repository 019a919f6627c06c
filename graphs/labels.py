"""Feature labels and explanation cards for nodes and tooltips.

`labels=True` uses `attribution.explain` (a feature index built once per SAE and cached on disk): short
labels for every candidate node, full cards (top contexts, promoted tokens, histogram) only for the nodes
an export shows. Without an index for an SAE (a WholeActivation has no features), its nodes stay
unlabelled, with a warning: a label is never made up. `labels={hook: FeatureIndex}` uses indexes the user
built (e.g. over their own text); `labels=False` skips labelling; a callable `fn(hook, feature) -> str`, or
an object with `label(hook, feature)` and `card(hook, feature)`, replaces it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from attribution.errors import AttributionError
from graphs.nodes import GraphError


class NoLabels:
    def label(self, hook: str, feature: int) -> str:
        return ""

    def card(self, hook: str, feature: int):
        return None


class CallableLabels(NoLabels):
    def __init__(self, fn: Callable[[str, int], str]):
        self.fn = fn

    def label(self, hook: str, feature: int) -> str:
        text = self.fn(hook, feature)
        if not isinstance(text, str):
            raise GraphError(f"labels callable returned {type(text).__name__} for {hook} f{feature}; return a str")
        return text


class ExplainLabels:
    """Labels and cards from attribution.explain, one FeatureIndex per SAE, loaded on first use."""

    def __init__(self, model, saes: dict, progress: bool = True, indexes: dict | None = None):
        try:
            from attribution.explain import explain, feature_index
        except ImportError as e:
            raise GraphError(
                f"labels=True needs attribution.explain (feature_index, explain), which could not be imported "
                f"({e}). Pass labels=False, or labels=fn(hook, feature) -> str."
            ) from e
        self._explain, self._feature_index = explain, feature_index
        self.model, self.saes, self.progress = model, saes, progress
        self._indexes: dict[str, object] = {}
        self._given = indexes is not None
        if indexes is not None:
            self._indexes = {model.hook(h).name: idx for h, idx in indexes.items()}
            self._indexes.update({h: None for h in saes if h not in self._indexes})
        self._cards: dict[tuple[str, int], object] = {}

    def _index(self, hook: str):
        if not self._indexes:  # first use: every SAE's index, the missing ones built in one pass over text
            try:
                from attribution.explain import feature_indexes

                with_features = {h: s for h, s in self.saes.items() if s.d_sae > 0}
                self._indexes.update(feature_indexes(self.model, with_features, progress=self.progress))
            except (ImportError, AttributionError, OSError):
                pass  # one SAE at a time below, each failure reported on its own
        if hook not in self._indexes:
            sae = self.saes[hook]
            self._indexes[hook] = None
            if sae.d_sae > 0:  # a WholeActivation has nothing to label
                try:
                    self._indexes[hook] = self._feature_index(self.model, sae, progress=self.progress)
                except (AttributionError, OSError) as e:
                    warnings.warn(
                        f"no feature index for the SAE at {hook} ({e}); its nodes stay unlabelled", stacklevel=2
                    )
        return self._indexes[hook]

    def label(self, hook: str, feature: int) -> str:
        index = self._index(hook)
        return "" if index is None else index.label(feature)

    def card(self, hook: str, feature: int):
        key = (hook, feature)
        if key not in self._cards:
            index = self._index(hook)
            card = None
            if index is not None:
                try:
                    # a tooltip shows 3 contexts; each costs a forward, so ask for no more
                    card = self._explain(self.model, self.saes[hook], feature, index=index, n_contexts=3)
                except (AttributionError, OSError) as e:
                    warnings.warn(f"no explanation for {hook} f{feature} ({e})", stacklevel=2)
            self._cards[key] = card
        return self._cards[key]


def labeler(model, saes: dict, labels, progress: bool = True):
    """The labeller behind build_graph's `labels=` argument."""
    if labels is True:
        return ExplainLabels(model, saes, progress)
    if isinstance(labels, dict):
        return ExplainLabels(model, saes, progress, indexes=labels)
    if labels is False or labels is None:
        return NoLabels()
    if hasattr(labels, "label") and hasattr(labels, "card"):
        return labels
    if callable(labels):
        return CallableLabels(labels)
    raise GraphError(
        f"labels must be True, False, {{hook: FeatureIndex}}, a callable (hook, feature) -> str or a labeller; "
        f"got {labels!r}"
    )
