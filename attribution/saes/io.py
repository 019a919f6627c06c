"""On-disk format: a folder with `cfg.json` + `sae_weights.safetensors`, the SAELens layout.

Our own files are SAELens-compatible (same tensor names and shapes, `architecture`, `d_in`, `d_sae`,
`metadata.hook_name`), plus `hook` in our naming and the training statistics under `meta`, so either
library can read them. SAELens directories (standard / jumprelu / topk; v6 and older cfg layouts) load
here as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from attribution.errors import SAEError
from attribution.models.hooks import _from_transformerlens
from attribution.saes.base import build

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}


def save_sae(sae, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layer, kind = sae.hook.split(".")[1], sae.hook.split(".")[0]
    cfg = {
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "hook": sae.hook,
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",  # any training-time scale is folded into the weights
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "metadata": {"hook_name": f"blocks.{layer}.hook_{kind}"},
        **sae.extra_config(),
        "meta": sae.meta,
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS))
    (path / CFG).write_text(json.dumps(cfg, indent=2, default=str))
    return path


def load_sae(path: str | Path, *, hook: str | None = None, model=None, device=None, dtype=None):
    """Load an SAE folder (ours or SAELens). With `model`, also check it fits that model."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise SAEError(f"SAE folder {path} does not exist. Pass a folder holding {CFG} and {WEIGHTS}.")
    for name in (CFG, WEIGHTS):
        if not (path / name).is_file():
            raise SAEError(
                f"SAE folder {path} has no {name}. An SAE folder holds {CFG} and {WEIGHTS} "
                "(the SAELens layout); re-save or re-download it."
            )
    try:
        cfg = json.loads((path / CFG).read_text())
    except json.JSONDecodeError as exc:
        raise SAEError(f"{path / CFG} is not valid JSON ({exc}); the file is corrupt.") from exc
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as exc:
        raise SAEError(f"{path / WEIGHTS} could not be read ({exc}); the file is corrupt or truncated.") from exc

    arch, extra = _architecture(cfg, path)
    hook = hook or _hook_name(cfg, path)
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise SAEError(
            f"{path}: normalize_activations={cfg['normalize_activations']!r} is not supported; "
            "fold the activation scale into W_enc/b_enc and W_dec/b_dec and set it to 'none'."
        )
    d_in, d_sae = _shapes(weights, path)
    sae = build(
        arch,
        d_in,
        d_sae,
        hook,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)),
        dtype=weights["W_enc"].dtype,
        **extra,
    )
    expected = set(sae.state_dict())
    missing = expected - set(weights)
    if missing:
        raise SAEError(f"{path / WEIGHTS} lacks {sorted(missing)} needed by a {arch} SAE.")
    sae.load_state_dict({k: weights[k] for k in expected})
    sae.meta = cfg.get("meta", {})
    if device is not None or dtype is not None:
        sae = sae.to(device=device, dtype=dtype)
    sae.requires_grad_(False)
    sae.check(model)
    return sae


def _architecture(cfg: dict, path: Path) -> tuple[str, dict]:
    arch = cfg.get("architecture")
    if arch is None:  # older SAELens: the activation function names the architecture
        arch = {"relu": "standard", "topk": "topk"}.get(cfg.get("activation_fn_str", "relu"))
    if arch not in _SAELENS_ARCH:
        raise SAEError(f"{path}: SAE architecture {arch!r} is not supported (use standard/relu, jumprelu, topk).")
    arch = _SAELENS_ARCH[arch]
    extra = {}
    if arch == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if k is None:
            raise SAEError(f"{path}: a TopK SAE's cfg.json must give k")
        extra["k"] = int(k)
    return arch, extra


def _hook_name(cfg: dict, path: Path) -> str:
    if "hook" in cfg:
        return cfg["hook"]
    raw = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")
    if raw is None:
        raise SAEError(f"{path}: cfg.json names no hook point; pass hook='resid_post.<layer>' to load_sae")
    name = _from_transformerlens(raw)
    if name is None:
        raise SAEError(f"{path}: hook {raw!r} has no equivalent in our hook names; pass hook=... explicitly")
    return name


def _shapes(weights: dict[str, torch.Tensor], path: Path) -> tuple[int, int]:
    for key in ("W_enc", "W_dec", "b_enc", "b_dec"):
        if key not in weights:
            raise SAEError(f"{path / WEIGHTS} has no tensor {key!r} (found {sorted(weights)})")
    d_in, d_sae = weights["W_enc"].shape
    shapes = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    for key, shape in shapes.items():
        if tuple(weights[key].shape) != shape:
            raise SAEError(
                f"{path / WEIGHTS}: {key} has shape {tuple(weights[key].shape)}, expected {shape} "
                f"for W_enc of shape {(d_in, d_sae)}; the files do not belong together."
            )
    return d_in, d_sae
