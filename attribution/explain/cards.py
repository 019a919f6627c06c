"""A feature's card: its top contexts, the whole activation distribution, logit-lens tokens, neighbours and
label, as plain data. Rendering is the caller's (pages/templates/card.html.j2 for HTML).

A feature is more than its top examples, so every card also carries a histogram of its activations by
interval with the share of all its firings in each. Everything but the per-token activations in the card's
contexts is read from the feature's index; those are recomputed from the ids, one forward per card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import Tensor

from attribution.errors import AttributionError, SAEError
from attribution.explain.activations import feature_activations
from attribution.explain.frozen_lens import frozen_effects, top_tokens
from attribution.explain.index import FeatureIndex, feature_index
from attribution.nodes import is_int


@dataclass
class Context:
    tokens: list[str]  # a window of the text around the firing token
    acts: list[float]  # the feature's activation at each of those tokens
    position: int  # index in `tokens` of the top-firing token
    activation: float
    predicted: list[str]  # the model's top next-token predictions at the top-firing token


@dataclass
class Bin:
    lo: float
    hi: float
    count: int
    share: float  # of all the feature's non-zero activations in the indexed text


@dataclass
class FeatureCard:
    hook: str
    feature: int
    label: str
    frequency: float  # share of indexed tokens on which it fires
    max_activation: float
    contexts: list[Context]
    histogram: list[Bin]
    promoted: list[tuple[str, float]]  # tokens whose logits the decoder direction raises most (logit lens)
    promoted_seen: str  # the token it promotes most of those in the indexed text, which the label may show:
    evidence_share: float  # the share of its top contexts where the model predicts it (top lens.N_NEXT)
    evidence: bool  # evidence_share >= labels.EVIDENCE_SHARE: the label shows it
    suppressed: list[tuple[str, float]]
    neighbours: list[tuple[int, float]]  # (feature, cosine of decoder directions)
    n_tokens: int  # how many tokens the index covers
    # a transcoder's (empty for an SAE): what drives it and what its write does, each with its evidence
    writes: str = ""  # the hook its decoder writes (mlp_out.L)
    reads: list[tuple[str, float]] = field(default_factory=list)  # embedding lens: tokens driving it directly
    reads_share: float = 0.0  # of its top contexts firing on one of those tokens
    reads_evidence: bool = False  # reads_share >= labels.EVIDENCE_SHARE: the tokens are shown as evidence
    frozen: list[tuple[str, float]] = field(default_factory=list)  # logit rises from its write at its top context,
    # through the rest of the model with norms and attention frozen (frozen_lens.py)
    direct_share: float | None = None  # how much of that the direct path (the logit lens) accounts for

    def _repr_html_(self) -> str:
        """The card as the report shows it, in a notebook (drawn by pages, through attribution.display)."""
        from attribution import display

        return display.notebook("card", self)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"{self.hook} #{self.feature}: {self.label}",
            f"  fires on {self.frequency:.3%} of {self.n_tokens} tokens, max {self.max_activation:.3g}",
        ]
        for c in self.contexts[:5]:
            text = "".join(f"[[{t}]]" if i == c.position else t for i, t in enumerate(c.tokens))
            lines.append(f"  {c.activation:7.3g}  {text!r}")
        lines.append("  histogram: " + ", ".join(f"{b.lo:.3g}-{b.hi:.3g}: {b.share:.1%}" for b in self.histogram))
        lines.append("  promotes:  " + ", ".join(repr(t) for t, _ in self.promoted[:8]))
        lines.append(f"  the model predicts {self.promoted_seen!r} at {self.evidence_share:.0%} of the top contexts")
        lines.append("  suppresses: " + ", ".join(repr(t) for t, _ in self.suppressed[:8]))
        lines.append("  neighbours: " + ", ".join(f"#{f} ({c:.2f})" for f, c in self.neighbours[:5]))
        if self.writes:
            lines.append(f"  reads (embedding lens, {self.reads_share:.0%} of top contexts fire on these): "
                         + ", ".join(repr(t) for t, _ in self.reads[:8]))  # fmt: skip
            if self.direct_share is not None:
                lines.append(f"  at its top context, through the frozen model (direct path {self.direct_share:.0%}): "
                             + ", ".join(repr(t) for t, _ in self.frozen))  # fmt: skip
        return "\n".join(lines)


def explain(
    model, sae, feature: int, *, index: FeatureIndex | None = None, n_contexts: int = 8, frozen: bool = False
) -> FeatureCard:
    """The card of one feature (top contexts, histogram, logit-lens tokens, neighbours, label). frozen=True (a
    transcoder's): also its write's effect at its top context through the frozen model, two more forwards
    (frozen_lens.py; seconds per card on a CPU, so graphs' cards leave it out)."""
    if sae.d_sae == 0:
        raise SAEError(f"{sae!r} has no features to explain (WholeActivation): explain an SAE's features")
    if not is_int(feature):
        raise AttributionError(f"feature must be an integer index into the SAE's {sae.d_sae} features, got {feature!r}")
    if isinstance(n_contexts, bool) or not isinstance(n_contexts, int) or n_contexts < 0:
        raise AttributionError(f"n_contexts must be a whole number >= 0, got {n_contexts!r}")
    if index is not None and (index.hook != model.hook(sae.hook).name or index.d_sae != sae.d_sae):
        raise AttributionError(
            f"the index given is for {index.d_sae} features at {index.hook}, not for {sae!r}: "
            "pass feature_index(model, sae), or no index"
        )
    index = index or feature_index(model, sae)
    feature = index.check(int(feature))
    tok = model.tokenizer
    t = index.t
    acts, seqs, poss = t["top_acts"][feature], t["top_seq"][feature], t["top_pos"][feature]
    chosen, seen = [], set()
    for a, s, p in zip(acts.tolist(), seqs.tolist(), poss.tolist()):
        if len(chosen) >= n_contexts:
            break
        if a <= 0 or s in seen:
            continue  # one context per sequence: neighbouring positions of one text say the same thing
        seen.add(s)
        chosen.append((a, s, p))
    contexts = []
    if chosen:
        ids = t["tokens"][[s for _, s, _ in chosen]]  # [n, seq]
        f = feature_activations(model, {index.hook: sae}, ids)[index.hook][..., feature]  # [n, seq]
        for row, (a, s, p) in enumerate(chosen):
            lo, hi = max(1, p - 12), min(ids.shape[1], p + 5)
            pieces = [tok.decode([i]) for i in ids[row, lo:hi].tolist()]
            pred = [tok.decode([i]) for i in t["next_ids"][s, p].tolist() if i >= 0]
            contexts.append(Context(pieces, [float(v) for v in f[row, lo:hi]], p - lo, a, pred))
    extra = _frozen(model, sae, feature, ids[0], chosen[0]) if frozen and sae.is_transcoder and chosen else {}
    if sae.is_transcoder and "in_ids" in t:
        extra["reads"] = _tokens(tok, t["in_ids"][feature], t["in_vals"][feature])
        extra["reads_share"], extra["reads_evidence"] = float(t["in_share"][feature]), bool(t["in_evidence"][feature])
    edges = t["hist_edges"][feature].tolist()
    counts = t["hist"][feature].tolist()
    total = max(1, sum(counts))
    histogram = [Bin(edges[i], edges[i + 1], int(c), c / total) for i, c in enumerate(counts)]
    return FeatureCard(
        hook=index.hook,
        feature=feature,
        label=index.label(feature),
        frequency=index.frequency(feature),
        max_activation=index.max_activation(feature),
        contexts=contexts,
        histogram=histogram,
        promoted=_tokens(tok, t["up_ids"][feature], t["up_vals"][feature]),
        suppressed=_tokens(tok, t["down_ids"][feature], t["down_vals"][feature]),
        promoted_seen=tok.decode([int(t["up_seen"][feature])]),
        evidence_share=float(t["evidence_share"][feature]),
        evidence=bool(t["evidence"][feature]),
        neighbours=[(int(i), float(c)) for i, c in zip(t["nb_ids"][feature], t["nb_cos"][feature])],
        n_tokens=index.n_tokens,
        writes=sae.target or "",
        **extra,
    )


def _frozen(model, sae, feature: int, ids: Tensor, top: tuple) -> dict:
    """A transcoder's write removed at its top context (a, seq, pos): the tokens it raises through the frozen
    rest of the model, and the direct path's share of that (frozen_lens.py)."""
    a, _, p = top
    (effect,) = frozen_effects(model, sae, ids, [p], a * sae.W_dec[feature][None].float())
    frozen = [(model.tokenizer.decode([i]), v) for i, v in top_tokens(model, effect.total)]
    return {"frozen": frozen, "direct_share": effect.direct_share}


def _tokens(tok, ids: Tensor, vals: Tensor) -> list[tuple[str, float]]:
    return [(tok.decode([int(i)]), float(v)) for i, v in zip(ids, vals)]
