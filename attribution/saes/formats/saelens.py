"""SAELens folders: `cfg.json` + `sae_weights.safetensors`, SAEs (standard / jumprelu / topk; v6 and pre-6.0 cfg
layouts; training checkpoints with their activation scaler and whitening) and transcoders.

SAEs load as SAELens reads them: every transform SAELens applies around its encoder and decoder that is fixed (a
scale, a whitening, TopK's decoder-norm rescaling, a fine-tuning scale) is folded into the weights, so the loaded
SAE works in model space with a plain linear decoder. Transforms that depend on each input are refused with the
reason. tests/test_sae_files.py checks the results against SAELens's own outputs (bench/saelens_fixtures.py).
Transcoders: W_enc [d_in, d_sae], W_dec [d_sae, d_out], W_skip [d_out, d_in] applied as `x @ W_skip.T`.

Hooks: `metadata.hook_name` (TransformerLens's spelling: its `blocks.L.hook_mlp_in` is our resid_mid, the residual
before the MLP's norm; see attribution.models.hooks), or for transcoders `hf_hook_name(_out)` when present.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from attribution.errors import SAEError
from attribution.models.hooks import Family, family_from_model_name
from attribution.saes.base import SAE, build
from attribution.saes.formats.common import (
    CFG,
    WEIGHTS,
    Entry,
    Format,
    build_transcoder,
    cfg_field,
    read_cfg,
    read_hook,
    read_tensors,
    require_keys,
    same_layer,
    split_hook,
    transpose,
)
from attribution.saes.topk import TopKOptions

ARCHITECTURES = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}  # SAELens's -> ours
TRANSCODERS = {"transcoder": "relu", "skip_transcoder": "relu", "jumprelu_transcoder": "jumprelu"}
TRANSCODERS["jumprelu_skip_transcoder"] = "jumprelu"
SCALER, WHITENING = "activation_scaler.json", "activation_whitening.safetensors"  # SAELens training checkpoints
LAYOUT = "SAELens's layout: W_enc [d_in, d_sae], W_dec [d_sae, d_out], W_skip [d_out, d_in]"


def detect(path: Path) -> bool:
    return (path / CFG).is_file()


def require_files(path: Path) -> None:
    for name in (CFG, WEIGHTS):
        if not (path / name).is_file():
            raise SAEError(
                f"SAE folder {path} has no {name}. An SAE folder holds {CFG} and {WEIGHTS} "
                "(the SAELens layout); re-save or re-download it."
            )


def read_sae(
    path: Path,
    *,
    hook: str | None = None,
    family: Family | None = None,
    norm_scaling_factor: float | None = None,
    cfg: dict | None = None,
    target: str | None = None,
    skip: bool = False,
) -> SAE:
    """An SAE (or, with `target`, one of our transcoders) from a SAELens-layout folder; its meta holds model_name.
    `cfg`: the folder's cfg.json when the caller read it already."""
    require_files(path)
    cfg = read_cfg(path) if cfg is None else cfg
    weights = read_tensors(path / WEIGHTS)
    arch, options = architecture(cfg, path)
    hook = hook or hook_name(cfg, path, family)
    apply_b_dec = cfg_field(cfg, "apply_b_dec_to_input", path)
    apply_b_dec = True if apply_b_dec is None else apply_b_dec  # SAELens's default, v6 and pre-6.0 alike
    weights = named_weights(weights, arch, cfg, path)
    d_in, d_sae = check_shapes(weights, arch, cfg, path)
    weights = fold(weights, arch, apply_b_dec, cfg, path, norm_scaling_factor)
    if target is not None:
        apply_b_dec = False
    sae = build(
        arch,
        d_in,
        d_sae,
        hook,
        apply_b_dec_to_input=apply_b_dec,
        dtype=weights["W_enc"].dtype,
        target=target,
        skip=skip,
        options=options,
    )
    sae.load_state_dict({k: weights[k] for k in sae.state_dict()})
    model_name = cfg_field(cfg, "model_name", path)
    sae.meta = {"model_name": model_name} if model_name else {}
    return sae


def architecture(cfg: dict, path: Path) -> tuple[str, TopKOptions | None]:
    """Our architecture and its options, from SAELens's v6 `architecture` or a pre-6.0 activation function."""
    arch = cfg_field(cfg, "architecture", path)
    if arch is None:  # pre-6.0 SAELens: the activation function names the architecture
        act = cfg_field(cfg, "activation_fn_str", path) or cfg_field(cfg, "activation_fn", path) or "relu"
        arch = {"relu": "standard", "topk": "topk"}.get(act, act)
    if arch not in ARCHITECTURES:
        raise SAEError(
            f"{path}: SAE architecture {arch!r} is not supported (use standard/relu, jumprelu or topk; "
            "a batchtopk SAE saved for inference is jumprelu)."
        )
    arch, options = ARCHITECTURES[arch], None
    if arch == "topk":
        k = cfg_field(cfg, "k", path)
        if k is None:
            kwargs = cfg_field(cfg, "activation_fn_kwargs", path) or {}
            k = kwargs.get("k")
        if k is None:
            raise SAEError(f"{path / CFG}: a TopK SAE's cfg.json must give k (the number of active features)")
        if isinstance(k, bool) or not isinstance(k, int | float) or k != int(k) or k < 1:
            raise SAEError(f"{path / CFG}: k must be a positive whole number, got {k!r}; fix the field.")
        options = TopKOptions(int(k))
    if (cfg_field(cfg, "reshape_activations", path) or "none") != "none" or (
        cfg_field(cfg, "hook_head_index", path) is not None or cfg_field(cfg, "hook_point_head_index", path) is not None
    ):
        raise SAEError(
            f"{path}: this SAE reads attention heads (hook_z / a head index); only whole-layer hook points "
            "(resid_pre, attn_out, mlp_out, resid_post) are supported."
        )
    return arch, options


def hook_name(cfg: dict, path: Path, family: Family | None = None) -> str:
    """Our hook for an SAE's cfg.json: our `hook` field, else SAELens's hook_name (TransformerLens's spelling)."""
    if cfg_field(cfg, "hook", path):
        return cfg["hook"]
    raw = cfg_field(cfg, "hook_name", path) or cfg_field(cfg, "hook_point", path)
    if raw is None:
        raise SAEError(f"{path}: cfg.json names no hook point; pass hook='resid_post.<layer>' to load_sae")
    family = family or family_from_model_name(cfg_field(cfg, "model_name", path))
    try:
        return read_hook(raw, path, family)
    except SAEError as exc:
        raise SAEError(f"{exc}; pass hook=... to load_sae explicitly") from None


def named_weights(weights: dict[str, torch.Tensor], arch: str, cfg: dict, path: Path) -> dict[str, torch.Tensor]:
    """The tensors an `arch` SAE needs, in SAELens's current naming, checked to be floating point."""
    weights = dict(weights)
    if arch == "jumprelu" and "threshold" not in weights and "log_threshold" in weights:
        weights["threshold"] = weights["log_threshold"].double().exp()  # older JumpReLU files
    if "scaling_factor" in weights:  # older SAELens: a per-feature scale applied to features in decode
        scale = weights.pop("scaling_factor")
        if not torch.equal(scale, torch.ones_like(scale)):
            if not cfg_field(cfg, "finetuning_scaling_factor", path):
                raise SAEError(
                    f"{path / WEIGHTS} holds a scaling_factor but cfg.json does not set finetuning_scaling_factor; "
                    "the files do not belong together (SAELens refuses this too)."
                )
            weights["finetuning_scaling_factor"] = scale
    needed = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
    missing = [k for k in needed if k not in weights]
    if missing:
        hint = " (or log_threshold)" if missing == ["threshold"] else ""
        raise SAEError(
            f"{path / WEIGHTS} lacks {missing}{hint} needed by a {arch} SAE (found {sorted(weights)}); "
            "the weights file does not match cfg.json's architecture."
        )
    for key in [*needed, "finetuning_scaling_factor"]:
        if key in weights and not weights[key].is_floating_point():
            raise SAEError(
                f"{path / WEIGHTS}: {key} has dtype {str(weights[key].dtype).removeprefix('torch.')}; SAE weights "
                "must be floating point (float32, float16, bfloat16). The file was written wrongly: re-save it."
            )
    return weights


def check_shapes(weights: dict[str, torch.Tensor], arch: str, cfg: dict, path: Path) -> tuple[int, int]:
    if weights["W_enc"].ndim != 2:
        raise SAEError(
            f"{path / WEIGHTS}: W_enc has shape {tuple(weights['W_enc'].shape)}, expected a matrix [d_in, d_sae]."
        )
    d_in, d_sae = weights["W_enc"].shape
    for key in ("d_in", "d_sae"):
        stated = cfg_field(cfg, key, path)
        if stated is not None and stated != {"d_in": d_in, "d_sae": d_sae}[key]:
            raise SAEError(
                f"{path}: cfg.json says {key}={stated}, but W_enc has shape {(d_in, d_sae)} ([d_in, d_sae]); "
                "the config and weights do not belong together."
            )
    shapes = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if arch == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if "finetuning_scaling_factor" in weights:
        shapes["finetuning_scaling_factor"] = (d_sae,)
    for key, shape in shapes.items():
        if tuple(weights[key].shape) != shape:
            raise SAEError(
                f"{path / WEIGHTS}: {key} has shape {tuple(weights[key].shape)}, expected {shape} "
                f"for W_enc of shape {(d_in, d_sae)}; the files do not belong together."
            )
    return d_in, d_sae


def fold(weights, arch: str, apply_b_dec: bool, cfg: dict, path: Path, norm_scaling_factor) -> dict:
    """Fold SAELens's fixed transforms around the SAE into its weights (in float64), innermost first, so
    that encode(x) and decode(f) are SAELens's on model-space activations."""
    mode = cfg_field(cfg, "normalize_activations", path)
    if isinstance(mode, bool):  # pre-6.0 SAELens wrote a bool
        mode = "expected_average_only_in" if mode else "none"
    mode = mode or "none"
    if norm_scaling_factor is not None and mode != "expected_average_only_in":
        raise SAEError(
            f"{path}: norm_scaling_factor is for SAEs trained with normalize_activations="
            f"'expected_average_only_in', but this one has {mode!r}; leave it out."
        )
    rescale = arch == "topk" and cfg_field(cfg, "rescale_acts_by_decoder_norm", path)
    if mode == "none" and not rescale and "finetuning_scaling_factor" not in weights:
        return weights  # nothing to fold (the common case): no float64 copy of a large SAE
    dtype = weights["W_enc"].dtype
    w = {k: v.double() for k, v in weights.items()}
    if "finetuning_scaling_factor" in w:  # decode((f * s) @ W_dec): the scale belongs to the decoder rows
        w["W_dec"] = w["W_dec"] * w.pop("finetuning_scaling_factor")[:, None]
    if rescale:  # TopK over pre * |W_dec[i]|, decoded through W_dec[i] / |W_dec[i]|: unit rows, scaled encoder
        norms = w["W_dec"].norm(dim=-1).clamp(min=1e-8)
        w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"] * norms, w["b_enc"] * norms, w["W_dec"] / norms[:, None]
    if mode == "expected_average_only_in":  # the SAE saw s * x and reconstructed s * x
        s = norm_scaling_factor if norm_scaling_factor is not None else _scaler(path).get("scaling_factor")
        if s is None:
            raise SAEError(
                f"{path}: normalize_activations='expected_average_only_in': the SAE was trained on activations "
                "multiplied by sqrt(d_in)/E|x|, a factor estimated from its training data that this folder "
                f"does not store (no {SCALER}). Pass load_sae(..., norm_scaling_factor=<factor>) with the "
                "factor published with the SAE (SAELens's release list calls it norm_scaling_factor)."
            )
        if isinstance(s, bool) or not isinstance(s, int | float) or not s > 0 or s == float("inf"):
            raise SAEError(f"{path}: the activation scaling factor must be a positive number, got {s!r}.")
        w["W_enc"], w["W_dec"], w["b_dec"] = w["W_enc"] * s, w["W_dec"] / s, w["b_dec"] / s
    elif mode == "covariance_whitening":  # the SAE saw z = (x - mean) @ M and reconstructed z
        mean, M, M_inv = _whitening(path)
        w["W_enc"] = M @ w["W_enc"]
        if not apply_b_dec:  # with it, the folded b_dec below subtracts the mean from the input already
            w["b_enc"] = w["b_enc"] - mean @ w["W_enc"]
        w["W_dec"], w["b_dec"] = w["W_dec"] @ M_inv, w["b_dec"] @ M_inv + mean
    elif mode in ("constant_norm_rescale", "layer_norm"):
        how = "its own norm" if mode == "constant_norm_rescale" else "its own mean and standard deviation"
        raise SAEError(
            f"{path}: normalize_activations={mode!r} rescales every input by {how} and undoes it on the "
            "reconstruction, so the decoder is not one fixed linear map of the features; the error-term "
            "splice, linear ablations and W_dec-based attributions here need one. Use an SAE trained with "
            "normalize_activations='none' or 'expected_average_only_in'."
        )
    elif mode != "none":
        raise SAEError(
            f"{path}: normalize_activations={mode!r} is not a mode SAELens writes (none, "
            "expected_average_only_in, covariance_whitening, constant_norm_rescale, layer_norm); fix cfg.json."
        )
    return {k: v.to(dtype) for k, v in w.items()}


def _scaler(path: Path) -> dict:
    """SAELens's activation_scaler.json (written with training checkpoints), or {} when absent."""
    if not (path / SCALER).is_file():
        return {}
    try:
        data = json.loads((path / SCALER).read_text())
    except ValueError as exc:
        raise SAEError(f"{path / SCALER} is not valid JSON ({exc}); the file is corrupt.") from exc
    if not isinstance(data, dict):
        raise SAEError(f"{path / SCALER} should hold a JSON object with scaling_factor; the file is corrupt.")
    return data


def _whitening(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not (path / WHITENING).is_file():
        raise SAEError(
            f"{path}: normalize_activations='covariance_whitening': the SAE was trained on whitened "
            f"activations, and the whitening (mean and matrix, estimated from its training data) is not in "
            f"the folder ({WHITENING}). Fold it into the weights with SAELens's fold_activation_whitening "
            "and save again, or copy the file from the training checkpoint."
        )
    try:
        t = load_file(str(path / WHITENING))
        mean, M, M_inv = (t[k].double() for k in ("mean", "matrix", "inverse_matrix"))
    except Exception as exc:
        raise SAEError(
            f"{path / WHITENING} could not be read as SAELens's whitening (mean, matrix, inverse_matrix): {exc}"
        ) from exc
    d = mean.shape[0]
    if mean.shape != (d,) or M.shape != (d, d) or M_inv.shape != (d, d):
        raise SAEError(f"{path / WHITENING}: expected mean [d_in] and two [d_in, d_in] matrices; it is corrupt.")
    return mean, M, M_inv


def read_transcoders(path: Path, family: Family | None) -> list[Entry]:
    cfg = read_cfg(path)

    def field(key):
        value = cfg.get(key)
        return value if value is not None else (cfg.get("metadata") or {}).get(key)

    arch = field("architecture")
    if arch not in TRANSCODERS:
        what = "an SAE" if arch in (None, "standard", "relu", "jumprelu", "topk", "batchtopk", "gated") else "unknown"
        raise SAEError(
            f"{path}: architecture {arch!r} is {what}, not a transcoder ({', '.join(TRANSCODERS)}); "
            "load an SAE with load_sae."
        )
    family = family or family_from_model_name(field("model_name"))
    hooks = []
    for suffix in ("", "_out"):
        name = field(f"hf_hook_name{suffix}") or field(f"hook_name{suffix}")
        if not name:
            raise SAEError(f"{path / CFG} names no hook_name{suffix}; a transcoder's cfg.json gives both hooks.")
        hooks.append(read_hook(name, path / CFG, family))
    hook, target = hooks
    same_layer(hook, target, path / CFG)
    if field("normalize_activations") not in (None, "none") or field("apply_b_dec_to_input"):
        raise SAEError(f"{path / CFG}: transcoders with normalize_activations or apply_b_dec_to_input are not read.")

    def make():
        skip, act = "skip" in arch, TRANSCODERS[arch]
        need = ["W_enc", "W_dec", "b_enc", "b_dec"] + ["threshold"] * (act == "jumprelu") + ["W_skip"] * skip
        t = require_keys(read_tensors(path / WEIGHTS), path / WEIGHTS, need, [])
        if "W_skip" in t and not skip:
            raise SAEError(f"{path}: {WEIGHTS} holds W_skip but architecture {arch!r} has no skip path.")
        w: dict[str, torch.Tensor | None] = {k: t.get(k) for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
        w["W_skip"] = transpose(t.get("W_skip"))
        dims = {"d_sae": t["b_enc"].shape[0], "d_out": t["b_dec"].shape[0]}
        dims["d_in"] = t["W_enc"].shape[0] if t["W_enc"].ndim == 2 else None
        for key, real in dims.items():
            if field(key) is not None and field(key) != real:
                raise SAEError(f"{path}: cfg.json says {key}={field(key)} but the weights have {real}.")
        meta = {"model_name": field("model_name"), "hook_out": field("hook_name_out")}
        return build_transcoder(act, hook, target, w, path / WEIGHTS, meta, LAYOUT)

    return [(split_hook(hook)[1], path, make)]


FORMAT = Format("SAELens", detect, read_sae=read_sae, read_transcoders=read_transcoders)
