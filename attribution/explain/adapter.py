"""The one adapter between feature indexes and what shows features: a graph's nodes and tooltips, a case
study's tables and cards. Both ask `label(hook, feature)` and `card(hook, feature)` of the same object, so a
graph built inside a report shows the report's own labels and cards from the same indexes.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterable

from attribution.errors import AttributionError
from attribution.explain import index as _index
from attribution.explain.cards import FeatureCard, explain
from attribution.explain.index import FeatureIndex, Text


class Explainer:
    """Labels and feature cards per (hook, feature), from one FeatureIndex per SAE, loaded on first use.

    indexes: {hook: FeatureIndex} to use as given (an SAE not in it gets none, and is never indexed);
    without it each SAE's index is loaded or built over `tokens` (see index.index_text): prepare(hooks)
    builds the missing ones in one shared pass over the text, index(hook) that SAE's alone.
    label_fn: fn(hook, feature) -> str labels instead (no cards).
    enabled=False: no labels or cards, with `reason`. n_contexts: contexts per card.
    Where an index or a card cannot be had, a warning, and those features stay unlabelled: a label is never
    made up. `available` is False (with `reason`) when no label can be had at all.
    """

    def __init__(
        self,
        model,
        saes: dict,
        *,
        enabled: bool = True,
        indexes: dict[str, FeatureIndex] | None = None,
        tokens: Text = None,
        label_fn: Callable[[str, int], str] | None = None,
        n_contexts: int = 8,
        progress: bool = True,
    ):
        self.model, self.saes, self.tokens, self.progress = model, saes, tokens, progress
        self.label_fn, self.n_contexts, self.given = label_fn, n_contexts, indexes is not None
        self.indexes: dict[str, FeatureIndex | None] = {}
        if indexes is not None:
            self.indexes = {model.hook(h).name: idx for h, idx in indexes.items()}
        self.cards: dict[tuple[str, int], tuple[int, FeatureCard | None]] = {}  # (n_contexts made with, card)
        self.reason = ""
        if not enabled:
            self.reason = "labels and feature cards were turned off (explain=False / --no-explain)"
        elif label_fn is None and all(s.d_sae == 0 for s in saes.values()):
            self.reason = "the dictionary has no features (whole activations), so there is nothing to label or explain"
        self.available = not self.reason

    def prepare(self, hooks: Iterable[str] | None = None) -> None:
        """Load or build the indexes of `hooks` (default: every SAE's), the missing ones in one pass."""
        if not self.available or self.label_fn is not None:
            return
        todo = {h: self.saes[h] for h in dict.fromkeys(self.saes if hooks is None else hooks) if h not in self.indexes}
        for h in [h for h, s in todo.items() if s.d_sae == 0 or self.given]:
            self.indexes[h] = None  # a WholeActivation has nothing to label; given indexes are all there is
            del todo[h]
        if not todo:
            return
        try:
            self.indexes |= _index.feature_indexes(self.model, todo, tokens=self.tokens, progress=self.progress)
        except (AttributionError, OSError):
            for h, sae in todo.items():  # one SAE at a time, each failure reported on its own
                try:
                    self.indexes[h] = _index.feature_index(self.model, sae, tokens=self.tokens, progress=self.progress)
                except (AttributionError, OSError) as e:
                    why = f"no feature index for the SAE at {h} ({e}); its features stay unlabelled"
                    warnings.warn(why, stacklevel=3)
                    self.indexes[h] = None

    def index(self, hook: str) -> FeatureIndex | None:
        """The index of the SAE at `hook`, or None where it has none."""
        if hook not in self.indexes:
            self.prepare([hook])
        return self.indexes.get(hook)

    def label(self, hook: str, feature: int | None) -> str:
        """The feature's label; "" for an error node (feature None) or where there is none."""
        if not self.available or feature is None:
            return ""
        if self.label_fn is not None:
            text = self.label_fn(hook, feature)
            if not isinstance(text, str):
                what = type(text).__name__
                raise AttributionError(f"labels callable returned {what} for {hook} f{feature}; return a str")
            return text
        index = self.index(hook)
        return "" if index is None else str(index.label(int(feature)))

    def max_activation(self, hook: str, feature: int) -> float | None:
        """The feature's largest activation over the indexed text, or None without an index."""
        index = None if self.label_fn is not None or not self.available else self.index(hook)
        return None if index is None else float(index.max_activation(int(feature)))

    def card(self, hook: str, feature: int) -> FeatureCard | None:
        """The feature's card (n_contexts contexts), made once; None where there is no index. A card made
        with more contexts (by a with_contexts sibling) serves, cut to n_contexts."""
        key = (hook, int(feature))
        made, card = self.cards.get(key, (-1, None))
        if made < self.n_contexts:
            index = None if self.label_fn is not None or not self.available else self.index(hook)
            made, card = self.n_contexts, None
            if index is not None:
                try:
                    card = explain(self.model, self.saes[hook], key[1], index=index, n_contexts=made)
                except (AttributionError, OSError) as e:
                    warnings.warn(f"no feature card for {hook} f{feature} ({e})", stacklevel=2)
            self.cards[key] = made, card
        if card is None or made == self.n_contexts:
            return card
        return dataclasses.replace(card, contexts=card.contexts[: self.n_contexts])

    def with_contexts(self, n_contexts: int) -> Explainer:
        """This explainer making cards of `n_contexts` contexts (each costs a forward), sharing its indexes
        and the cards it made: a graph's tooltips show 3 of the contexts a report's cards show 8 of."""
        other = copy.copy(self)  # shallow: the same indexes and cards dicts
        other.n_contexts = n_contexts
        return other
