"""Gemma Scope 2 transcoders: `params.safetensors` (+ `config.json`), or one `layer_<L>_width_…` folder per layer.

w_enc [d_in, d_sae], w_dec [d_sae, d_out] and affine_skip_connection [d_in, d_out], applied as
`x @ affine_skip_connection` (Google's tutorial; circuit-tracer's single-layer loader transposes it and applies
`x @ W_skip.T`, its cross-layer loader applies it as is): all as ours (the evidence is in docs/models.md,
"Transcoders on disk"). config.json's hf_hook_point_in/out name Hugging Face modules, read with the model family's
names (attribution.models.hooks): a transcoder reads `pre_feedforward_layernorm.output` (our mlp_in, after the
norm's learned scale) and writes `post_feedforward_layernorm.output` (mlp_out), also the default for a folder
without config.json. Cross-layer transcoders (clt/, a 3-d w_dec) are refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from attribution.errors import SAEError
from attribution.models.hooks import Family, family_from_model_name
from attribution.saes.formats.common import (
    Entry,
    Format,
    build_transcoder,
    read_hook,
    read_json,
    read_tensors,
    require_keys,
    same_layer,
    split_hook,
)

PARAMS, CONFIG = "params.safetensors", "config.json"
LAYOUT = "Gemma Scope 2's layout: w_enc [d_in, d_sae], w_dec [d_sae, d_out], affine_skip_connection [d_in, d_out]"
# release id -> (hub repository, folder, variant, number of layers): the files are
# <folder>/layer_<L>_<variant>/{params.safetensors,config.json}, the set circuit-tracer uses for gemma-3-270m
_GS2_270M = "transcoder_all", "width_16k_l0_small", 18
RELEASES = {
    "gemma-scope-2-270m-pt-transcoders": ("google/gemma-scope-2-270m-pt", *_GS2_270M),
    "gemma-scope-2-270m-it-transcoders": ("google/gemma-scope-2-270m-it", *_GS2_270M),
    # circuit-tracer's reference for the pt set (its config.yaml lists the same files)
    "mwhanna/gemma-scope-2-270m-pt/transcoder_all/width_16k_l0_small": ("google/gemma-scope-2-270m-pt", *_GS2_270M),
}


def detect(path: Path) -> bool:
    return (path / PARAMS).is_file()


def read_transcoders(path: Path, family: Family | None) -> list[Entry]:
    cfg = read_json(path / CONFIG) if (path / CONFIG).is_file() else {}
    if cfg.get("architecture", "jump_relu") != "jump_relu":
        raise SAEError(f"{path / CONFIG}: architecture {cfg['architecture']!r}; Gemma Scope 2 is jump_relu.")
    family = family or family_from_model_name(cfg.get("model_name"))
    match = re.search(r"layer_(\d+)", path.name)
    if cfg.get("hf_hook_point_in"):
        hook = read_hook(cfg["hf_hook_point_in"], path / CONFIG, family)
    elif match:
        hook = f"mlp_in.{match.group(1)}"
    else:
        raise SAEError(f"{path}: no {CONFIG} and no layer_<n> in the folder name, so the layer is unknown.")
    target = read_hook(cfg["hf_hook_point_out"], path / CONFIG, family) if cfg.get("hf_hook_point_out") else None
    target = target or f"mlp_out.{split_hook(hook)[1]}"
    if cfg.get("type", "transcoder") != "transcoder" or target == hook:
        raise SAEError(
            f"{path} is a Gemma Scope 2 SAE (type {cfg.get('type')!r}, reads and writes {hook}), not a transcoder; "
            "load_transcoders reads transcoders (Gemma Scope 2's transcoder/ and transcoder_all/ folders)."
        )
    same_layer(hook, target, path)

    def make():
        w = weights(read_tensors(path / PARAMS), path / PARAMS)
        if "affine_connection" in cfg and bool(cfg["affine_connection"]) != (w["W_skip"] is not None):
            raise SAEError(
                f"{path}: config.json says affine_connection={cfg['affine_connection']} but {PARAMS} "
                f"{'lacks' if cfg['affine_connection'] else 'has'} affine_skip_connection; they do not belong together."
            )
        meta = {"model_name": cfg.get("model_name")}
        return build_transcoder("jumprelu", hook, target, w, path / PARAMS, meta, LAYOUT)

    return [(split_hook(hook)[1], path, make)]


def weights(t: dict, file: Path) -> dict:
    """Gemma Scope 2's tensors under our names, all in our orientation already (the module docstring says why)."""
    require_keys(t, file, ["w_enc", "w_dec", "b_enc", "b_dec", "threshold"], ["affine_skip_connection"])
    if t["w_dec"].ndim == 3:
        raise SAEError(f"{file}: w_dec is 3-d, a cross-layer transcoder (clt/); only per-layer ones load here.")
    w = {"W_enc": t["w_enc"], "W_dec": t["w_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
    return w | {"threshold": t["threshold"], "W_skip": t.get("affine_skip_connection")}


FORMAT = Format("Gemma Scope 2", detect, read_transcoders=read_transcoders)
