"""EleutherAI's sparsify: a folder its `SparseCoder.save_to_disk` wrote (`cfg.json` + `sae.safetensors`), read into
our `TopKSAE` (the same function; bench/peers/sparsify_side_by_side.py and sparsify_transcoder_side_by_side.py check
it against sparsify's own forward).

Its checkpoint: encoder.weight [d_sae, d_in] (nn.Linear's layout), encoder.bias [d_sae], W_dec [d_sae, d_out] (rows
are latents, as ours), b_dec [d_out], and with `skip_connection` W_skip [d_out, d_in] (it adds x @ W_skip.mT: ours,
[d_in, d_out], is its transpose). An autoencoder's encoder reads x - b_dec (our apply_b_dec_to_input); a transcoder's
(`transcode`: it read a module's input and reconstructed the module's output) reads x itself, b_dec being an output
bias. Groupmax activations and skip connections on an autoencoder are refused. Its cfg.json names neither the hook
point nor, for a transcoder, what it writes (the folder is named after the module it hooked): reading one needs
`hook=`, and a transcoder `target=` (from_sparsify; load_sae reads only autoencoders).
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


def convert(state: dict, cfg: dict, hook: str, target: str | None = None) -> TopKSAE:
    """A sparsify TopK `SparseCoder`'s state dict and cfg.json as our `TopKSAE` (the same function): an
    autoencoder of `hook`, or (cfg transcode) a transcoder reading `hook` and writing `target`."""
    if cfg.get("activation", "topk") != "topk":
        raise SAEError("only sparsify's TopK sparse coders convert (not groupmax)")
    transcode = bool(cfg.get("transcode"))
    skip = state.get("W_skip")
    if not transcode and (skip is not None or target is not None):
        raise SAEError("a sparsify autoencoder takes no skip connection or target (a transcoder has them)")
    if transcode and target is None:
        raise SAEError(
            "a sparsify transcoder (cfg transcode) reads its module's input and writes its output, which its "
            "cfg.json does not name: pass target='mlp_out.<layer>' (the hook that output is)"
        )
    w = state["encoder.weight"]  # [d_sae, d_in], as nn.Linear stores it
    d_out = state["W_dec"].shape[1]
    if d_out != w.shape[1]:
        raise SAEError(f"sparsify coder writes {d_out} dimensions but reads {w.shape[1]}; ours need them equal")
    options = TopKOptions(int(cfg["k"]))
    kw = {"target": target, "skip": skip is not None} if transcode else {"apply_b_dec_to_input": True}
    sae = build("topk", w.shape[1], w.shape[0], hook, options=options, **kw)
    with torch.no_grad():
        sae.W_enc.copy_(w.T)
        sae.b_enc.copy_(state["encoder.bias"])
        sae.W_dec.copy_(state["W_dec"])  # [d_sae, d_out]: rows are latents, our layout
        sae.b_dec.copy_(state["b_dec"])
        if skip is not None:
            sae.W_skip.copy_(skip.T)  # theirs [d_out, d_in] (x @ W_skip.mT), ours [d_in, d_out]
    return sae  # type: ignore[return-value]


def from_sparsify(folder: str | Path, hook: str, target: str | None = None) -> TopKSAE:
    """Our TopKSAE from a folder sparsify saved (cfg.json + sae.safetensors); a transcoder needs `target`."""
    folder = Path(folder)
    return convert(read_tensors(folder / SAE_FILE), json.loads((folder / CFG).read_text()), hook, target)


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
    if cfg.get("transcode"):
        raise SAEError(
            f"{path} is a sparsify transcoder; its cfg.json does not name the hook it writes: read it with "
            "attribution.saes.formats.sparsify.from_sparsify(folder, hook, target='mlp_out.<layer>')"
        )
    sae = convert(state, cfg, hook)
    sae.meta = {"source": str(path)}
    return sae


FORMAT = Format("sparsify", detect, read_sae=read_sae)
