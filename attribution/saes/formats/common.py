"""What the dictionary formats share: the small interface each format implements (`Format`), reading files with
errors that name the fix, cfg.json fields, shape checks, and the model-name check.

A format reads a folder into our layout: output = act(x @ W_enc + b_enc) @ W_dec + b_dec (+ x @ W_skip for a
transcoder) with W_enc [d_in, d_sae], W_dec [d_sae, d_out], W_skip [d_in, d_out].
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from attribution.errors import HookError, SAEError
from attribution.models.hooks import Family, to_hook
from attribution.saes.base import SAE, Options, build

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"  # the SAELens layout, ours too

Entry = tuple[int, Path, Callable[[], SAE]]  # a transcoder found in a folder: (layer, where it comes from, build it)


class SAEWarning(UserWarning):
    """An SAE that loads and fits the hook, but something about it is probably not what was meant."""


@dataclass(frozen=True)
class Format:
    """One on-disk format: how to recognise its folder, and what it reads and writes (None: not this format's).

    read_sae(folder, *, hook, family, norm_scaling_factor) -> SAE, its `meta` holding what the files say;
    read_transcoders(folder, family) -> [Entry], one per transcoder, built only when called;
    write_sae(sae, folder) -> folder; write_transcoders(transcoders, folder, model_name) -> folder.
    `family`: the model's (None without a model), for hook names whose meaning depends on it.
    """

    name: str
    detect: Callable[[Path], bool]
    read_sae: Callable[..., SAE] | None = None
    read_transcoders: Callable[[Path, Family | None], list[Entry]] | None = None
    write_sae: Callable[[SAE, Path], Path] | None = None
    write_transcoders: Callable[[list[SAE], Path, str | None], Path] | None = None


# --- reading files -------------------------------------------------------------------------------------------


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise SAEError(f"{file} does not exist; the folder is incomplete: download or copy it.")
    try:
        return load_file(str(file))
    except Exception as exc:
        raise SAEError(f"{file} could not be read ({exc}); the file is corrupt or truncated.") from exc


def require_keys(t: dict, file: Path, need: list[str], optional: list[str]) -> dict[str, torch.Tensor]:
    """`t`, checked to hold `need` and to be floating point in those and in `optional` where present."""
    missing = [k for k in need if k not in t]
    if missing:
        raise SAEError(f"{file} lacks {missing} (found {sorted(t)}); it is not the transcoder file expected here.")
    for k in need + [o for o in optional if o in t]:
        if not t[k].is_floating_point():
            raise SAEError(f"{file}: {k} has dtype {t[k].dtype}; weights must be floating point. Re-save it.")
    return t


def read_json(file: Path) -> dict:
    try:
        cfg = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SAEError(f"{file} is not valid JSON ({exc}); re-download it.") from exc
    if not isinstance(cfg, dict):
        raise SAEError(f"{file} should hold a JSON object (hf_hook_point_in, ...); re-download it.")
    return cfg


# cfg.json fields we read, with the JSON types they may hold (None always counts as absent)
FIELDS: dict[str, tuple[type, ...]] = {
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


def read_cfg(path: Path) -> dict:
    """A folder's cfg.json (SAELens's layout, ours too) as a dict, its `metadata` type-checked up front."""
    try:
        cfg = json.loads((path / CFG).read_text())
    except ValueError as exc:  # not JSON, or not even text
        raise SAEError(f"{path / CFG} is not valid JSON ({exc}); the file is corrupt: re-save it.") from exc
    if not isinstance(cfg, dict):
        raise SAEError(
            f"{path / CFG} holds a JSON {type(cfg).__name__}, not an object of fields (architecture, d_in, "
            "d_sae, hook_name, ...); the file is not an SAE config: re-save or re-download it."
        )
    cfg_field(cfg, "metadata", path)  # checked up front: the fields looked up inside it depend on its type
    return cfg


def cfg_field(cfg: dict, key: str, path: Path):
    """A cfg field, from the top level or SAELens v6's `metadata`, type-checked; None when absent."""
    value = cfg.get(key)
    if value is None and isinstance(cfg.get("metadata"), dict):
        value = cfg["metadata"].get(key)
    if value is None:
        return None
    types = FIELDS[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        want = " or ".join("an object" if t is dict else t.__name__ for t in types)
        raise SAEError(
            f"{path / CFG}: field {key!r} is {value!r} ({type(value).__name__}), expected {want}. "
            "Fix the field or re-save the SAE."
        )
    return value


# --- hooks -----------------------------------------------------------------------------------------------------


def read_hook(name, where: Path, family: Family | None) -> str:
    """Our name of a hook a file gives in any spelling (attribution.models.hooks.to_hook), or an SAEError naming
    the file and why none of ours is it."""
    try:
        return to_hook(str(name), family)
    except HookError as exc:
        raise SAEError(f"{where}: {exc}") from None


def split_hook(hook: str) -> tuple[str, int]:
    kind, _, layer = hook.partition(".")
    if not layer.isdigit():
        raise SAEError(f"hook {hook!r} is not '<kind>.<layer>'.")
    return kind, int(layer)


def same_layer(hook: str, target: str, where: Path) -> None:
    if hook == target:
        raise SAEError(f"{where}: reads and writes {hook}, an SAE, not a transcoder; load an SAE with load_sae.")
    if split_hook(hook)[1] != split_hook(target)[1]:
        raise SAEError(f"{where}: reads {hook} but writes {target}; only per-layer transcoders load here.")


# --- building a transcoder from weights in our layout -----------------------------------------------------------


def transpose(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.T


def build_transcoder(
    arch: str, hook: str, target: str, w: dict, file: Path, meta: dict, layout: str, options: Options | None = None
) -> SAE:
    """A transcoder from weights in our layout, each shape checked against b_enc [d_sae] and b_dec [d_out]
    (`layout`: how the format stores them, for the error)."""
    d_sae, d_out = w["b_enc"].shape[0], w["b_dec"].shape[0]
    d_in = w["W_enc"].shape[0] if w["W_enc"].ndim == 2 and w["W_enc"].shape[1] == d_sae else None
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "threshold": (d_sae,), "W_skip": (d_in, d_out)}
    for key, shape in shapes.items():
        if w.get(key) is not None and tuple(w[key].shape) != shape:
            raise SAEError(
                f"{file}: {key} does not fit b_enc [{d_sae}] and b_dec [{d_out}] in {layout} (the tensors have "
                f"{ {k: tuple(v.shape) for k, v in w.items() if v is not None} } in our orientation, W_enc "
                "[d_in, d_sae]); the tensors do not belong together or are stored transposed."
            )
    if d_in != d_out:
        raise SAEError(f"{file}: reads {d_in} and writes {d_out} wide; only transcoders that keep the width load.")
    skip, dtype = w.get("W_skip") is not None, w["W_enc"].dtype
    sae = build(arch, d_in, d_sae, hook, target=target, skip=skip, dtype=dtype, options=options)
    sae.load_state_dict({k: v.to(dtype) for k, v in w.items() if v is not None and k in sae.state_dict()})
    sae.meta = {k: v for k, v in meta.items() if v} | {"source": str(file)}
    return sae


# --- the model an SAE names ---------------------------------------------------------------------------------------


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


def check_model_name(sae_model: str, model, path: Path, stacklevel: int = 3) -> None:
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
            stacklevel=stacklevel,
        )
