"""On-disk format: a folder with `cfg.json` + `sae_weights.safetensors`, the SAELens layout.

Our own files are SAELens-compatible (same tensor names and shapes, `architecture`, `d_in`, `d_sae`,
`metadata.hook_name`, `metadata.model_name`), plus `hook` in our naming and the training statistics under
`meta`, so either library can read them. SAELens folders (standard / jumprelu / topk; v6 and pre-6.0 cfg
layouts; training checkpoints with their activation scaler) load here as SAELens reads them: every
transform SAELens applies around its encoder and decoder that is fixed (a scale, a whitening, TopK's
decoder-norm rescaling, a fine-tuning scale) is folded into the weights, so the loaded SAE works in model
space with a plain linear decoder. Transforms that depend on each input are refused with the reason.
tests/test_sae_files.py checks the results against SAELens's own outputs (bench/saelens_fixtures.py).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from attribution.errors import SAEError
from attribution.models.hooks import from_transformerlens
from attribution.saes.base import build

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
SCALER, WHITENING = "activation_scaler.json", "activation_whitening.safetensors"  # SAELens training checkpoints
_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}
_NONE = type(None)
# cfg.json fields we read, with the JSON types they may hold (None always counts as absent)
_FIELDS: dict[str, tuple[type, ...]] = {
    "architecture": (str,),
    "d_in": (int,),
    "d_sae": (int,),
    "k": (int, float),
    "hook": (str,),
    "target": (str,),
    "skip": (bool,),
    "hook_name": (str,),
    "hook_point": (str,),
    "model_name": (str,),
    "apply_b_dec_to_input": (bool,),
    "normalize_activations": (str, bool),
    "rescale_acts_by_decoder_norm": (bool,),
    "finetuning_scaling_factor": (bool,),
    "activation_fn_str": (str,),
    "activation_fn": (str,),
    "activation_fn_kwargs": (dict,),
    "reshape_activations": (str,),
    "hook_head_index": (int,),
    "hook_point_head_index": (int,),
    "metadata": (dict,),
    "meta": (dict,),
}


class SAEWarning(UserWarning):
    """An SAE that loads and fits the hook, but something about it is probably not what was meant."""


def save_sae(sae, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layer, kind = sae.hook.split(".")[1], sae.hook.split(".")[0]
    metadata = {"hook_name": f"blocks.{layer}.hook_{kind}"}
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


def load_sae(
    path: str | Path,
    *,
    hook: str | None = None,
    model=None,
    device=None,
    dtype=None,
    norm_scaling_factor: float | None = None,
):
    """Load an SAE folder (ours or SAELens). With `model`, also check it fits that model.

    norm_scaling_factor: for an SAE trained with normalize_activations='expected_average_only_in' whose
    folder does not store the factor (SAELens keeps it in its release list, not in the folder).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise SAEError(f"SAE folder {path} does not exist. Pass a folder holding {CFG} and {WEIGHTS}.")
    for name in (CFG, WEIGHTS):
        if not (path / name).is_file():
            raise SAEError(
                f"SAE folder {path} has no {name}. An SAE folder holds {CFG} and {WEIGHTS} "
                "(the SAELens layout); re-save or re-download it."
            )
    cfg = _read_cfg(path)
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as exc:
        raise SAEError(f"{path / WEIGHTS} could not be read ({exc}); the file is corrupt or truncated.") from exc

    arch, extra = _architecture(cfg, path)
    hook = hook or _hook_name(cfg, path)
    apply_b_dec = _get(cfg, "apply_b_dec_to_input", path)
    apply_b_dec = True if apply_b_dec is None else apply_b_dec  # SAELens's default, v6 and pre-6.0 alike
    weights = _weights(weights, arch, cfg, path)
    d_in, d_sae = _shapes(weights, arch, cfg, path)
    weights = _fold(weights, arch, apply_b_dec, cfg, path, norm_scaling_factor)
    target = _get(cfg, "target", path)  # a transcoder of ours: the hook it writes
    if target is not None:
        apply_b_dec = False
        extra |= {"target": target, "skip": bool(_get(cfg, "skip", path))}
    sae = build(arch, d_in, d_sae, hook, apply_b_dec_to_input=apply_b_dec, dtype=weights["W_enc"].dtype, **extra)
    sae.load_state_dict({k: weights[k] for k in sae.state_dict()})
    sae.meta = _get(cfg, "meta", path) or {}
    model_name = sae.meta.get("model_name") or _get(cfg, "model_name", path)
    if model_name:
        sae.meta["model_name"] = model_name
    if device is not None or dtype is not None:
        sae = sae.to(device=device, dtype=dtype)
    sae.requires_grad_(False)
    sae.check(model)
    if model is not None and model_name:
        _check_model_name(model_name, model, path)
    return sae


def _read_cfg(path: Path) -> dict:
    try:
        cfg = json.loads((path / CFG).read_text())
    except ValueError as exc:  # not JSON, or not even text
        raise SAEError(f"{path / CFG} is not valid JSON ({exc}); the file is corrupt: re-save it.") from exc
    if not isinstance(cfg, dict):
        raise SAEError(
            f"{path / CFG} holds a JSON {type(cfg).__name__}, not an object of fields (architecture, d_in, "
            "d_sae, hook_name, ...); the file is not an SAE config: re-save or re-download it."
        )
    _get(cfg, "metadata", path)  # checked up front: the fields looked up inside it depend on its type
    return cfg


def _get(cfg: dict, key: str, path: Path):
    """A cfg field, from the top level or SAELens v6's `metadata`, type-checked; None when absent."""
    value = cfg.get(key)
    if value is None and isinstance(cfg.get("metadata"), dict):
        value = cfg["metadata"].get(key)
    if value is None:
        return None
    types = _FIELDS[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        want = " or ".join("an object" if t is dict else t.__name__ for t in types)
        raise SAEError(
            f"{path / CFG}: field {key!r} is {value!r} ({type(value).__name__}), expected {want}. "
            "Fix the field or re-save the SAE."
        )
    return value


def _architecture(cfg: dict, path: Path) -> tuple[str, dict]:
    arch = _get(cfg, "architecture", path)
    if arch is None:  # pre-6.0 SAELens: the activation function names the architecture
        act = _get(cfg, "activation_fn_str", path) or _get(cfg, "activation_fn", path) or "relu"
        arch = {"relu": "standard", "topk": "topk"}.get(act, act)
    if arch not in _SAELENS_ARCH:
        raise SAEError(
            f"{path}: SAE architecture {arch!r} is not supported (use standard/relu, jumprelu or topk; "
            "a batchtopk SAE saved for inference is jumprelu)."
        )
    arch = _SAELENS_ARCH[arch]
    extra = {}
    if arch == "topk":
        k = _get(cfg, "k", path)
        if k is None:
            kwargs = _get(cfg, "activation_fn_kwargs", path) or {}
            k = kwargs.get("k")
        if k is None:
            raise SAEError(f"{path / CFG}: a TopK SAE's cfg.json must give k (the number of active features)")
        if isinstance(k, bool) or not isinstance(k, int | float) or k != int(k) or k < 1:
            raise SAEError(f"{path / CFG}: k must be a positive whole number, got {k!r}; fix the field.")
        extra["k"] = int(k)
    if (_get(cfg, "reshape_activations", path) or "none") != "none" or (
        _get(cfg, "hook_head_index", path) is not None or _get(cfg, "hook_point_head_index", path) is not None
    ):
        raise SAEError(
            f"{path}: this SAE reads attention heads (hook_z / a head index); only whole-layer hook points "
            "(resid_pre, attn_out, mlp_out, resid_post) are supported."
        )
    return arch, extra


def _hook_name(cfg: dict, path: Path) -> str:
    if _get(cfg, "hook", path):
        return cfg["hook"]
    raw = _get(cfg, "hook_name", path) or _get(cfg, "hook_point", path)
    if raw is None:
        raise SAEError(f"{path}: cfg.json names no hook point; pass hook='resid_post.<layer>' to load_sae")
    name = from_transformerlens(raw)
    if name is None:
        raise SAEError(f"{path}: hook {raw!r} has no equivalent in our hook names; pass hook=... explicitly")
    return name


def _weights(weights: dict[str, torch.Tensor], arch: str, cfg: dict, path: Path) -> dict[str, torch.Tensor]:
    """The tensors an `arch` SAE needs, in SAELens's current naming, checked to be floating point."""
    weights = dict(weights)
    if arch == "jumprelu" and "threshold" not in weights and "log_threshold" in weights:
        weights["threshold"] = weights["log_threshold"].double().exp()  # older JumpReLU files
    if "scaling_factor" in weights:  # older SAELens: a per-feature scale applied to features in decode
        scale = weights.pop("scaling_factor")
        if not torch.equal(scale, torch.ones_like(scale)):
            if not _get(cfg, "finetuning_scaling_factor", path):
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


def _shapes(weights: dict[str, torch.Tensor], arch: str, cfg: dict, path: Path) -> tuple[int, int]:
    if weights["W_enc"].ndim != 2:
        raise SAEError(
            f"{path / WEIGHTS}: W_enc has shape {tuple(weights['W_enc'].shape)}, expected a matrix [d_in, d_sae]."
        )
    d_in, d_sae = weights["W_enc"].shape
    for key in ("d_in", "d_sae"):
        stated = _get(cfg, key, path)
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


def _fold(weights, arch: str, apply_b_dec: bool, cfg: dict, path: Path, norm_scaling_factor) -> dict:
    """Fold SAELens's fixed transforms around the SAE into its weights (in float64), innermost first, so
    that encode(x) and decode(f) are SAELens's on model-space activations."""
    mode = _get(cfg, "normalize_activations", path)
    if isinstance(mode, bool):  # pre-6.0 SAELens wrote a bool
        mode = "expected_average_only_in" if mode else "none"
    mode = mode or "none"
    if norm_scaling_factor is not None and mode != "expected_average_only_in":
        raise SAEError(
            f"{path}: norm_scaling_factor is for SAEs trained with normalize_activations="
            f"'expected_average_only_in', but this one has {mode!r}; leave it out."
        )
    rescale = arch == "topk" and _get(cfg, "rescale_acts_by_decoder_norm", path)
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


def _name_keys(name: str) -> set[str]:
    """Comparable forms of a model name: each word's last path part, lower case, without separators."""
    keys = set()
    for word in re.split(r"[\s()]+", name.lower()):
        word = word.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gguf")
        word = re.sub(r"[-_.]", "", word)
        if len(word) >= 3:
            keys.add(word)
    return keys


def model_names(model) -> list[str]:
    """The names that identify `model` (its name, its Hugging Face path), for recording with an SAE trained
    on it; empty for an in-memory model known only by its class, whose name says nothing about which it is."""
    hf = getattr(model, "hf", None)
    names = [getattr(model, "name", "") or "", getattr(getattr(hf, "config", None), "_name_or_path", "") or ""]
    return list(dict.fromkeys(n for n in names if n and n != type(hf).__name__))


def _check_model_name(sae_model: str, model, path: Path) -> None:
    """Warn when the SAE names the model it was trained for, and it is not this one. A warning, not an
    error: names differ across hubs and local copies, and hook and width already matched."""
    ours = set().union(*(_name_keys(n) for n in model_names(model)))
    theirs = _name_keys(sae_model)
    if not ours or not theirs:
        return
    if not any(a in b or b in a for a in theirs for b in ours):
        warnings.warn(
            f"SAE {path} was trained for model {sae_model!r}, but it is being loaded for {model.name!r}. "
            "Hook and width match, so it loads; check that it is the SAE you meant (features of another "
            "model's activations are meaningless here).",
            SAEWarning,
            stacklevel=3,
        )
