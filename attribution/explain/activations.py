"""Feature activations on token ids: one forward to the last hook, then each SAE's encoder."""

from __future__ import annotations

import torch
from torch import Tensor

from attribution.compute import model_autocast
from attribution.engine import trace
from attribution.models.model import Batch
from attribution.splice import place
from attribution.tokens import OUTLIER, keep_tokens


@torch.no_grad()
def feature_activations(model, saes: dict, ids: Tensor, *, outliers: bool = True) -> dict[str, Tensor]:
    """{hook: [n, seq, d_sae]} feature activations on ids (forward in attribution.compute's dtype, stopping at
    the last hook; on the model's device).

    outliers=False zeroes the tokens the SAEs were not trained on (<bos>, and massive-norm tokens over
    attribution.tokens.OUTLIER x the median): their huge activations would otherwise fill every feature's
    top contexts."""
    return features(model, saes, ids, outliers)[0]


def features(model, saes: dict, ids: Tensor, outliers: bool, final: bool = False) -> tuple:
    """(features as in feature_activations, {hook: [n, seq, d_model] activations} at each SAE's hook and each
    transcoder's target, with outliers=False {hook: [n, seq] bool tokens kept} else None, and with final=True
    (the whole model runs) the final-norm hidden states [n, seq, d_model] else None)."""
    writes = [s.target for s in saes.values() if s.is_transcoder]  # where transcoders' decoders write, for the index
    with model_autocast(model):
        run = trace(model, Batch.from_ids(ids, model.device), capture=[*saes, *writes], stop_early=not final)
    acts = run.acts
    kept = None if outliers else {h: keep_tokens(acts[h], OUTLIER) for h in saes}
    feats = {}
    for h, sae in saes.items():
        place(model, sae)
        f = sae.encode(acts[h].float()).float()
        feats[h] = f if kept is None else f * kept[h][..., None]
    return feats, acts, kept, run.hidden
