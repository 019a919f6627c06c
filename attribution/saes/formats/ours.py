"""Our format: SAELens's (`cfg.json` + `sae_weights.safetensors`, W_enc [d_in, d_sae], W_dec [d_sae, d_in],
`architecture`, `d_in`, `d_sae`, `metadata.hook_name`, `metadata.model_name`), so SAELens reads it, plus fields of
ours: `hook` in our naming, a transcoder's `target` and `skip`, the architecture's options (`k`) and training
statistics under `meta`. Any training-time scale is folded into the weights, so `normalize_activations` is none.

`metadata.hook_name` is written in TransformerLens's spelling of the same point (attribution.models.hooks): for our
`mlp_in` that is circuit-tracer's `blocks.L.mlp.hook_in`, never TransformerLens's `blocks.L.hook_mlp_in`, which is
the residual before the MLP's norm (our resid_mid).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from attribution.models.hooks import Family, spelling
from attribution.saes.base import SAE
from attribution.saes.formats import saelens
from attribution.saes.formats.common import CFG, WEIGHTS, Entry, Format, cfg_field, read_cfg, split_hook

OURS = ("hook", "target", "meta")  # a cfg.json with any of these is ours (SAELens writes none of them)


def detect(path: Path) -> bool:
    if not (path / CFG).is_file():
        return False
    try:
        cfg = json.loads((path / CFG).read_text())
    except (ValueError, OSError):
        return False  # SAELens's reader says what is wrong with it
    return isinstance(cfg, dict) and any(cfg.get(k) is not None for k in OURS)


def write_sae(sae: SAE, path: Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    metadata = {"hook_name": spelling(sae.hook, "transformerlens")}
    if sae.meta.get("model_name"):
        metadata["model_name"] = sae.meta["model_name"]
    cfg = {
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "hook": sae.hook,
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",  # any training-time scale is folded into the weights
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "metadata": metadata,
        **sae.extra_config(),
        **({"target": sae.target, "skip": sae.W_skip is not None} if sae.is_transcoder else {}),
        "meta": sae.meta,
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS))
    (path / CFG).write_text(json.dumps(cfg, indent=2, default=str))
    return path


def read_sae(
    path: Path, *, hook: str | None = None, family: Family | None = None, norm_scaling_factor: float | None = None
) -> SAE:
    saelens.require_files(path)
    cfg = read_cfg(path)
    target = cfg_field(cfg, "target", path)  # a transcoder of ours: the hook it writes
    skip = bool(cfg_field(cfg, "skip", path)) if target is not None else False
    sae = saelens.read_sae(
        path,
        hook=hook,
        family=family,
        norm_scaling_factor=norm_scaling_factor,
        cfg=cfg,
        target=target,
        skip=skip,
    )
    model_name = sae.meta.get("model_name")
    sae.meta = cfg_field(cfg, "meta", path) or {}
    model_name = sae.meta.get("model_name") or model_name
    if model_name:
        sae.meta["model_name"] = model_name
    return sae


def read_transcoders(path: Path, family: Family | None) -> list[Entry]:
    cfg = read_cfg(path)
    if cfg.get("target") is None:  # an SAE of ours: SAELens's reader says it is no transcoder
        return saelens.read_transcoders(path, family)
    return [(split_hook(str(cfg.get("hook")))[1], path, lambda: read_sae(path))]


FORMAT = Format("ours", detect, read_sae=read_sae, read_transcoders=read_transcoders, write_sae=write_sae)
