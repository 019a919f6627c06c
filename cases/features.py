"""Labels and feature cards from `attribution.explain`, used only where they exist.

A feature index is built once per SAE (and cached on disk by `attribution.explain`); the report asks for
the indexes of all the hooks its tables show at once, so missing ones share one pass over the text. Where
explain is missing, or a dictionary has no features (WholeActivation), the report says so instead of
showing anything made up.
"""

from __future__ import annotations


class Explainer:
    """Per-hook feature indexes; `available` is False (with `reason`) when labels cannot be had.

    tokens: ids [n_seq, seq] to index features over (default: explain's own corpus).
    """

    def __init__(self, model, saes: dict, *, enabled: bool = True, tokens=None, progress: bool = True):
        self.model, self.saes, self.tokens, self.progress = model, saes, tokens, progress
        self.indexes: dict = {}
        self.available, self.reason = False, ""
        if not enabled:
            self.reason = "labels and feature cards were turned off (explain=False / --no-explain)"
        elif all(s.d_sae == 0 for s in saes.values()):
            self.reason = "the dictionary has no features (whole activations), so there is nothing to label or explain"
        else:
            try:
                from attribution import explain as _  # noqa: F401
            except ImportError as exc:
                self.reason = f"labels and feature cards skipped: attribution.explain is not available ({exc})"
            else:
                self.available = True

    def prepare(self, hooks) -> None:
        """Load or build the indexes of `hooks` (one shared pass over the text for the missing ones)."""
        if not self.available:
            return
        from attribution.explain import feature_indexes

        todo = {h: self.saes[h] for h in dict.fromkeys(hooks) if h not in self.indexes and self.saes[h].d_sae > 0}
        if todo:
            self.indexes |= feature_indexes(self.model, todo, tokens=self.tokens, progress=self.progress)

    def index(self, hook: str):
        self.prepare([hook])
        return self.indexes[hook]

    def label(self, hook: str, feature: int | None) -> str:
        if not self.available or feature is None or self.saes[hook].d_sae == 0:
            return ""
        return str(self.index(hook).label(int(feature)))

    def max_activation(self, hook: str, feature: int) -> float | None:
        """The feature's largest activation over the indexed text, or None without an index."""
        return float(self.index(hook).max_activation(int(feature))) if self.available else None

    def card(self, hook: str, feature: int):
        """A FeatureCard (see attribution.explain), or None where explain is unavailable."""
        if not self.available:
            return None
        from attribution.explain import explain

        return explain(self.model, self.saes[hook], int(feature), index=self.index(hook))
