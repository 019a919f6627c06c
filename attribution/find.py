"""Finding features by contrast: those that fire on positive prompts and stay silent on negative ones.

The paper found its California feature this way in spirit: a feature "firing after California is implied".
Give sentences that imply it ("He grew up in Los Angeles") and the same sentences about other places
("He grew up in Chicago"); a feature that fires on the first set and not on the second is a candidate, to be
checked by its contexts (explain) and by ablation (graphs: Graph.group_by_contrast). Matched templates
matter: they make syntax and length cancel, so what is left is the contrast itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attribution.engine import trace
from attribution.errors import AttributionError
from attribution.splice import prepare_saes

POSITIONS = ("last", "any")


@dataclass(frozen=True)
class Match:
    """One feature's firing on the two prompt sets, read at each prompt's `position` ("last" or "any")."""

    hook: str
    feature: int
    score: float  # positive - negative: the share of prompts it separates
    positive: float  # share of positive prompts where it fires
    negative: float  # share of negative prompts where it fires
    mean_positive: float  # mean activation over positive prompts (0 counted where it does not fire)
    mean_negative: float

    def __str__(self) -> str:
        return (
            f"{self.hook} f{self.feature}: score {self.score:+.2f} (fires on {self.positive:.0%} of positive, "
            f"{self.negative:.0%} of negative prompts; mean {self.mean_positive:.2f} vs {self.mean_negative:.2f})"
        )


@torch.no_grad()
def contrast(
    model,
    saes,
    positive: list[str],
    negative: list[str],
    *,
    position: str = "last",
    top: int | None = 20,
    min_score: float = 0.0,
    batch_size: int = 32,
) -> list[Match]:
    """Features that fire on `positive` prompts and not on `negative` ones, best first, across all SAEs.

    position: "last" reads each prompt's last token (end the prompts where the concept is implied); "any"
        counts a feature as firing on a prompt if it fires at any token but <bos> (its largest activation).
    Ranked by score = share of positive prompts it fires on - share of negative ones, then by the difference
    of mean activations. top: how many to return (None: all with score >= min_score).
    """
    for name, prompts in (("positive", positive), ("negative", negative)):
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise AttributionError(f"{name} must be a non-empty list of prompts (strings), got {prompts!r}")
    if position not in POSITIONS:
        raise AttributionError(f"unknown position {position!r}; choose one of {POSITIONS}")
    if top is not None and top < 1:
        raise AttributionError(f"top must be >= 1 or None, got {top}")
    if batch_size < 1:
        raise AttributionError(f"batch_size must be >= 1, got {batch_size}")
    saes = prepare_saes(model, saes)
    if not saes:
        raise AttributionError("no SAEs given: pass {hook: SAE}")
    pos = _read(model, saes, positive, position, batch_size)
    neg = _read(model, saes, negative, position, batch_size)
    found = []
    for h in saes:
        p, n = pos[h], neg[h]  # [prompts, d_sae]
        rate_p, rate_n = (p > 0).double().mean(0), (n > 0).double().mean(0)
        mean_p, mean_n = p.double().mean(0), n.double().mean(0)
        score = rate_p - rate_n  # [d_sae]
        keep = (score >= min_score) & (rate_p > 0)
        for k in keep.nonzero().squeeze(-1).tolist():
            found.append(
                Match(
                    h,
                    k,
                    float(score[k]),
                    float(rate_p[k]),
                    float(rate_n[k]),
                    float(mean_p[k]),
                    float(mean_n[k]),
                )
            )
    found.sort(key=lambda m: (-m.score, -(m.mean_positive - m.mean_negative), m.hook, m.feature))
    return found if top is None else found[:top]


def _read(model, saes: dict, prompts: list[str], position: str, batch_size: int) -> dict[str, Tensor]:
    """{hook: [prompts, d_sae]} activations at each prompt's last token, or its maximum over real tokens."""
    out: dict[str, list[Tensor]] = {h: [] for h in saes}
    for start in range(0, len(prompts), batch_size):
        batch = model.tokenize(prompts[start : start + batch_size])  # left-padded: column -1 is every last token
        acts = trace(model, batch, capture=list(saes), stop_early=True).acts
        mask = batch.node_mask()  # [batch, pos]
        for h, sae in saes.items():
            f = sae.encode(acts[h])  # [batch, pos, d_sae]
            if not torch.isfinite(f).all():
                raise AttributionError(f"non-finite feature activations at {h}: check the SAE's weights for NaNs")
            if position == "last":
                out[h].append(f[:, -1])
            else:
                out[h].append(f.masked_fill(~mask[..., None], 0).amax(1))
    return {h: torch.cat(v) for h, v in out.items()}
