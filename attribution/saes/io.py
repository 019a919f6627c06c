"""Loading and saving one SAE: `load_sae` finds the folder's format (attribution.saes.formats: ours, SAELens,
sparsify) and reads it; `save_sae` writes ours, which SAELens reads too (formats/ours.py says what it holds).
"""

from __future__ import annotations

from pathlib import Path

from attribution.errors import SAEError
from attribution.saes import formats
from attribution.saes.formats.common import CFG, WEIGHTS, SAEWarning, check_model_name, model_names, read_hook

__all__ = ["CFG", "WEIGHTS", "SAEWarning", "load_sae", "model_names", "save_sae"]


def save_sae(sae, path: str | Path) -> Path:
    """Write `sae` in our format (SAELens's cfg.json + sae_weights.safetensors, plus our fields)."""
    return formats.ours.write_sae(sae, Path(path))


def load_sae(
    path: str | Path,
    *,
    hook: str | None = None,
    model=None,
    device=None,
    dtype=None,
    norm_scaling_factor: float | None = None,
):
    """Load an SAE folder (ours, SAELens, or sparsify with `hook`). With `model`, also check it fits that model.

    norm_scaling_factor: for an SAE trained with normalize_activations='expected_average_only_in' whose
    folder does not store the factor (SAELens keeps it in its release list, not in the folder).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise SAEError(f"SAE folder {path} does not exist. Pass a folder holding {CFG} and {WEIGHTS}.")
    fmt = formats.detect(path, reads="sae")
    if fmt is None:  # no cfg.json
        other = formats.detect(path)
        hint = f" (It holds {other.name} transcoders: load_transcoders reads them.)" if other else ""
        raise SAEError(
            f"SAE folder {path} has no {CFG}. An SAE folder holds {CFG} and {WEIGHTS} "
            f"(the SAELens layout); re-save or re-download it.{hint}"
        )
    family = getattr(model, "family", None)
    hook = read_hook(hook, path, family) if hook is not None else None  # a hook given in any spelling, as ours
    sae = fmt.read_sae(path, hook=hook, family=family, norm_scaling_factor=norm_scaling_factor)
    if device is not None or dtype is not None:
        sae = sae.to(device=device, dtype=dtype)
    sae.requires_grad_(False)
    sae.check(model)
    model_name = sae.meta.get("model_name")
    if model is not None and model_name:
        check_model_name(model_name, model, path)
    return sae
