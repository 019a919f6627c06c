"""EleutherAI's sparsify: a folder its `SparseCoder.save_to_disk` wrote (`cfg.json` + `sae.safetensors`), read into
our `TopKSAE` (the same function; bench/sparsify_side_by_side.py checks it against sparsify's own forward).

Its checkpoint: encoder.weight [d_sae, d_in] (nn.Linear's layout), encoder.bias [d_sae], W_dec [d_sae, d_in] (rows
are latents, as ours), b_dec [d_in]; the encoder reads x - b_dec (our apply_b_dec_to_input). Only its plain TopK
autoencoders convert: groupmax activations, transcoders (`transcode`) and skip connections are refused. Its cfg.json
does not name the hook point (the folder is named after the module it hooked), so reading one needs `hook=`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from attribution.errors import SAEError
from attribution.models.hooks import Family
from attribution.saes.base import build
from attribution.saes.formats.common import CFG, WEIGHTS, Format, read_json, read_tensors
from attribution.saes.topk import TopKOptions, TopKSAE

SAE_FILE = "sae.safetensors"


def detect(path: Path) -> bool:
    return (path / CFG).is_file() and (path / SAE_FILE).is_file() and not (path / WEIGHTS).is_file()


def convert(state: dict, cfg: dict, hook: str) -> TopKSAE:
    """A sparsify TopK `SparseCoder`'s state dict and cfg.json as our `TopKSAE` (the same function)."""
    if cfg.get("activation", "topk") != "topk" or cfg.get("transcode") or state.get("W_skip") is not None:
        raise SAEError("only sparsify's plain TopK autoencoders convert (no groupmax, transcoder or skip)")
    w = state["encoder.weight"]  # [d_sae, d_in], as nn.Linear stores it; the encoder reads x - b_dec
    options = TopKOptions(int(cfg["k"]))
    sae = build("topk", w.shape[1], w.shape[0], hook, options=options, apply_b_dec_to_input=True)
    with torch.no_grad():
        sae.W_enc.copy_(w.T)
        sae.b_enc.copy_(state["encoder.bias"])
        sae.W_dec.copy_(state["W_dec"])  # [d_sae, d_in]: rows are latents, our layout
        sae.b_dec.copy_(state["b_dec"])
    return sae  # type: ignore[return-value]


def from_sparsify(folder: str | Path, hook: str) -> TopKSAE:
    """Our TopKSAE from a folder sparsify saved (cfg.json + sae.safetensors)."""
    folder = Path(folder)
    return convert(read_tensors(folder / SAE_FILE), json.loads((folder / CFG).read_text()), hook)


def read_sae(
    path: Path, *, hook: str | None = None, family: Family | None = None, norm_scaling_factor: float | None = None
) -> TopKSAE:
    if hook is None:
        raise SAEError(
            f"{path} is a sparsify SAE, whose {CFG} does not name the hook point (its folder is named after the "
            "module it hooked); pass hook='resid_post.<layer>' to load_sae."
        )
    if norm_scaling_factor is not None:
        raise SAEError(f"{path}: norm_scaling_factor is for SAELens SAEs; a sparsify SAE has no activation scale.")
    cfg = read_json(path / CFG)
    state = read_tensors(path / SAE_FILE)
    missing = sorted({"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(state))
    if missing:
        raise SAEError(f"{path / SAE_FILE} lacks {missing} (found {sorted(state)}); it is not a sparsify SAE.")
    if "k" not in cfg:
        raise SAEError(f"{path / CFG}: a sparsify TopK SAE's cfg.json must give k (the number of active features)")
    sae = convert(state, cfg, hook)
    sae.meta = {"source": str(path)}
    return sae


FORMAT = Format("sparsify", detect, read_sae=read_sae)
