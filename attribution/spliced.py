"""Runs on the engine that every study needs: the prompt with SAEs spliced in (features, error terms,
logits), and the values ablated nodes are set to (zeros or means over reference prompts)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attribution.engine import trace
from attribution.errors import AttributionError
from attribution.splice import decompose_acts, prepare_saes


@dataclass
class SplicedRun:
    logits: Tensor  # [batch, pos, vocab], left-padded like Model.tokenize
    features: dict[str, Tensor]  # hook -> [batch, pos, d_sae]
    errors: dict[str, Tensor]  # hook -> [batch, pos, d_model]


@torch.no_grad()
def run_with_saes(model, saes, prompt) -> SplicedRun:
    """The prompt with SAEs spliced in, x = decode(f) + e: the logits (the plain model's, since the error
    term e = x - decode(f) completes every activation) and each SAE's features and error terms.

    To change features, give the engine an edit: `trace(model, batch, edits={hook: Splice(...)})`."""
    saes = prepare_saes(model, saes)
    batch = model.tokenize(prompt)
    tr = trace(model, batch, capture=hooks_of(saes))
    decs = {h: decompose_acts(sae, tr.acts, h) for h, sae in saes.items()}
    return SplicedRun(
        model.unembed(tr.hidden), {h: d.features for h, d in decs.items()}, {h: d.error for h, d in decs.items()}
    )


def hooks_of(saes: dict) -> list[str]:
    """Every hook the dictionaries need captured: their inputs, and transcoders' targets."""
    return list(dict.fromkeys([*saes, *(s.target for s in saes.values() if s.is_transcoder)]))


MODES = ("zero", "mean")  # the values ablated nodes take without a corrupted prompt


@torch.no_grad()
def ablation_values(model, saes: dict, batch, mode: str) -> dict[str, tuple[Tensor, Tensor]]:
    """hook -> (feature values [d_sae], error values [d_model]) that ablated nodes are set to: zeros, or each
    feature's and error term's mean over the non-<bos> tokens of `batch` (the reference prompts)."""
    if mode not in MODES:
        raise AttributionError(f"unknown ablation mode {mode!r} for reference values; choose one of {MODES}")
    if mode == "zero":
        return {
            h: (
                torch.zeros(s.d_sae, dtype=s.W_dec.dtype, device=model.device),
                torch.zeros(model.d_model, dtype=model.dtype, device=model.device),
            )
            for h, s in saes.items()
        }
    tr = trace(model, batch, capture=hooks_of(saes), stop_early=True)
    mask = batch.node_mask()  # [batch, pos], non-<bos> tokens
    out = {}
    for h, sae in saes.items():
        d = decompose_acts(sae, tr.acts, h)
        out[h] = (d.features[mask].mean(0), d.error[mask].mean(0))
    return out
