"""circuit-tracer cross-layer transcoders (CLTs): a folder read into a CrossLayerTranscoder and written from one.

Its layout (circuit-tracer 0.5.0's CrossLayerTranscoder.to_safetensors and load_clt), for layers i = 0..n-1:

    config.yaml             model_kind: cross_layer_transcoder, feature_input_hook, feature_output_hook (its hook
                            names, relative to the block), scan, model_name
    W_enc_{i}.safetensors   W_enc_{i} [d_sae, d_model] (transposed from ours), b_enc_{i} [d_sae], b_dec_{i}
                            [d_model], threshold_{i} [d_sae] when JumpReLU (its form x * (x > t))
    W_dec_{i}.safetensors   W_dec_{i} [d_sae, n - i, d_model]: what a feature of layer i writes at i, i + 1, ..., n - 1
                            (our decoders(i), which stop at the CLT's reach: zeros beyond it)

Ours on top, which its loader never asks for (it reads the keys above by name, and counts layers by the
W_enc_*.safetensors files): `W_skip_{i}` [d_model, d_model] in W_enc_{i}.safetensors, stored [d_in, d_out] as its
CrossLayerTranscoder applies W_skip[i] (`x @ W_skip[i]`, as ours; its per-layer transcoders store [d_out, d_in]),
and config.yaml's `attribution` key: architecture, k (TopK), reach, reads. Its file loader has no skip path and
knows only relu and jump_relu, so a skip path is dropped and TopK runs as ReLU there (save_clt warns).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from attribution.errors import SAEError
from attribution.models.hooks import Family, family_from_model_name, spelling
from attribution.saes.clt import READS, CrossLayerTranscoder
from attribution.saes.formats.circuit_tracer import CONFIG, NEGATIVE_THRESHOLDS, read_config
from attribution.saes.formats.common import (
    SAEWarning,
    build_transcoder,
    read_hook,
    read_tensors,
    require_keys,
    same_layer,
    split_hook,
)
from attribution.saes.topk import TopKOptions

KIND = "cross_layer_transcoder"
LAYOUT = "circuit-tracer's CLT layout: W_enc_{i} [d_sae, d_model], W_dec_{i} [d_sae, n_layers - i, d_model]"
ARCHITECTURES = ("relu", "jumprelu", "topk")


# --- reading ---------------------------------------------------------------------------------------------------


def read_clt(path: Path, family: Family | None = None) -> CrossLayerTranscoder:
    """The CLT in folder `path`; `family` (the model's) reads hook names whose meaning depends on it."""
    where, cfg = path / CONFIG, read_config(path, KIND)
    ours = cfg.get("attribution")
    if ours is not None and not isinstance(ours, dict):
        raise SAEError(f"{where}: attribution must be a mapping (architecture, k, reach, reads), not {ours!r}.")
    ours = ours or {}
    n = _count_layers(path, cfg)
    reach = ours.get("reach", n)
    if isinstance(reach, bool) or not isinstance(reach, int) or reach < 1:
        raise SAEError(f"{where}: attribution.reach must be a whole number of layers >= 1, got {reach!r}.")
    hooks = cfg["feature_input_hook"], cfg["feature_output_hook"]
    family = family or family_from_model_name(cfg.get("model_name"))
    meta = {"model_name": cfg.get("model_name"), "hook_out": hooks[1]}
    layers, ahead, d = [], [], None
    for i in range(n):
        hook, target = (read_hook(f"blocks.{i}.{h}", where, family) for h in hooks)
        same_layer(hook, target, where)
        if split_hook(hook)[0] not in READS or split_hook(target)[0] != "mlp_out":
            raise SAEError(f"{where}: a cross-layer transcoder reads {READS} and writes mlp_out; this reads {hook}.")
        t, dec, d = _layer(path, i, n, d)
        threshold = t.get(f"threshold_{i}")
        arch = _architecture(ours, threshold is not None, where, path / f"W_enc_{i}.safetensors")
        w = {"W_enc": t[f"W_enc_{i}"].T, "W_dec": dec[:, 0], "b_enc": t[f"b_enc_{i}"], "b_dec": t[f"b_dec_{i}"]}
        w |= {"threshold": threshold, "W_skip": t.get(f"W_skip_{i}")}
        options = TopKOptions(ours["k"]) if arch == "topk" else None
        file = path / f"W_enc_{i}.safetensors"
        layers.append(build_transcoder(arch, hook, target, w, file, meta, LAYOUT, options))
        r = min(reach, n - i)
        beyond = dec[:, r:].ne(0).any(2).any(0).nonzero()  # [n_nonzero, 1]: output layers i + r + j written
        if len(beyond):
            raise SAEError(
                f"{path / f'W_dec_{i}.safetensors'}: W_dec_{i} writes layer {i + r + int(beyond[0])}, beyond the "
                f"reach {reach} that {where} declares; fix attribution.reach, or remove it (a circuit-tracer CLT "
                "writes every later layer)."
            )
        ahead.append(dec[:, 1:r])
        if threshold is not None and arch == "jumprelu" and (threshold < 0).any():
            warnings.warn(f"{file}: negative thresholds: " + NEGATIVE_THRESHOLDS, SAEWarning, stacklevel=3)
    clt = CrossLayerTranscoder(layers, reach)
    with torch.no_grad():
        for s, w in enumerate(ahead):
            clt.W_ahead[s].copy_(w.to(clt.W_ahead[s].dtype))
    clt.meta = {k: v for k, v in meta.items() if v} | {"source": str(path)}
    return clt


def _count_layers(path: Path, cfg: dict) -> int:
    """n_layers: the W_enc_{i}.safetensors files, which must be 0..n-1 (as circuit-tracer counts them)."""
    found = {int(m.group(1)) for p in path.glob("W_enc_*.safetensors") if (m := re.fullmatch(r"W_enc_(\d+)", p.stem))}
    if not found:
        hub = f" (its repo_id {cfg['repo_id']!r} is on the Hugging Face hub)" if cfg.get("repo_id") else ""
        raise SAEError(
            f"{path} has a {CONFIG} but no W_enc_<i>.safetensors{hub}; download the CLT's W_enc_*.safetensors and "
            "W_dec_*.safetensors into this folder."
        )
    missing = sorted(set(range(max(found) + 1)) - found)
    if missing:
        raise SAEError(f"{path} lacks W_enc_{missing[0]}.safetensors (has layers {sorted(found)}); copy it in.")
    return len(found)


def _layer(path: Path, i: int, n: int, d: tuple[int, int] | None) -> tuple[dict, torch.Tensor, tuple[int, int]]:
    """Layer i's W_enc file (its tensors) and decoder [d_sae, n - i, d_model], shapes checked against layer 0's
    (d_sae, d_model) `d`; returns that too."""
    enc_file, dec_file = path / f"W_enc_{i}.safetensors", path / f"W_dec_{i}.safetensors"
    t = require_keys(
        read_tensors(enc_file), enc_file, [f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"], [f"threshold_{i}", f"W_skip_{i}"]
    )
    if not dec_file.is_file():
        raise SAEError(f"{dec_file} does not exist: every layer needs its decoder file; copy or download it.")
    dec = require_keys(read_tensors(dec_file), dec_file, [f"W_dec_{i}"], [])[f"W_dec_{i}"]
    if t[f"W_enc_{i}"].ndim != 2:
        raise SAEError(f"{enc_file}: W_enc_{i} is {tuple(t[f'W_enc_{i}'].shape)}, not [d_sae, d_model].")
    d = d or tuple(t[f"W_enc_{i}"].shape)
    d_sae, d_model = d
    want = {f"W_enc_{i}": (d_sae, d_model), f"b_enc_{i}": (d_sae,), f"b_dec_{i}": (d_model,)}
    want |= {f"threshold_{i}": (d_sae,), f"W_skip_{i}": (d_model, d_model)}
    for key, shape in want.items():
        if key in t and tuple(t[key].shape) != shape:
            raise SAEError(
                f"{enc_file}: {key} is {tuple(t[key].shape)}, expected {shape} (d_sae {d_sae}, d_model {d_model} "
                f"from W_enc_0 [d_sae, d_model]); the files do not belong together or are stored transposed."
            )
    if tuple(dec.shape) != (d_sae, n - i, d_model):
        raise SAEError(
            f"{dec_file}: W_dec_{i} is {tuple(dec.shape)}, expected {(d_sae, n - i, d_model)} [d_sae, n_layers - "
            f"{i}, d_model] for {n} layers; the files do not belong together or are stored transposed."
        )
    return t, dec.to(t[f"W_enc_{i}"].dtype), d


def _architecture(ours: dict, has_threshold: bool, where: Path, file: Path) -> str:
    arch = ours.get("architecture", "jumprelu" if has_threshold else "relu")
    if arch not in ARCHITECTURES:
        raise SAEError(f"{where}: attribution.architecture {arch!r} is none of {ARCHITECTURES}.")
    if arch == "topk":
        k = ours.get("k")
        if isinstance(k, bool) or not isinstance(k, int):
            raise SAEError(f"{where}: a TopK CLT needs its k, a whole number (attribution.k), got {k!r}.")
    elif has_threshold != (arch == "jumprelu"):
        has = "has" if has_threshold else "lacks"
        raise SAEError(f"{file} {has} a threshold, but {where} says attribution.architecture {arch!r}; fix either.")
    return arch


# --- writing ---------------------------------------------------------------------------------------------------


def write_clt(clt: CrossLayerTranscoder, folder: Path, model_name: str | None = None) -> Path:
    """Write `clt` in circuit-tracer's CLT layout (module docstring), which read_clt reads back exactly."""
    if not isinstance(clt, CrossLayerTranscoder):
        raise SAEError(
            f"save_clt writes a CrossLayerTranscoder, got {type(clt).__name__}; save_transcoders writes "
            "per-layer transcoders."
        )
    if clt.architecture not in ARCHITECTURES or len({s.architecture for s in clt.layers}) > 1:
        raise SAEError(f"{clt!r}: circuit-tracer's CLT layout holds one architecture of {ARCHITECTURES}.")
    kinds = {(split_hook(s.hook)[0], split_hook(s.target)[0]) for s in clt.layers}
    at = [(split_hook(s.hook)[1], split_hook(s.target)[1]) for s in clt.layers]
    if len(kinds) > 1 or next(iter(kinds))[1] != "mlp_out" or at != [(i, i) for i in range(clt.n_layers)]:
        raise SAEError(f"{clt!r}: each layer L must read {READS[0]}.L or {READS[1]}.L and write mlp_out.L.")
    folder = Path(folder).expanduser()
    files = [*folder.glob("W_enc_*.safetensors"), *folder.glob("W_dec_*.safetensors")]
    stale = [p.name for p in files if _index(p) >= clt.n_layers]
    if stale:
        raise SAEError(
            f"{folder} holds {sorted(stale)[:3]} of a larger CLT (circuit-tracer would count them as "
            "layers); write to an empty folder or remove them."
        )
    _warn_for_circuit_tracer(clt)
    folder.mkdir(parents=True, exist_ok=True)
    for i, sae in enumerate(clt.layers):
        t = {f"W_enc_{i}": sae.W_enc.T, f"b_enc_{i}": sae.b_enc, f"b_dec_{i}": sae.b_dec}
        if sae.architecture == "jumprelu":
            t[f"threshold_{i}"] = sae.threshold
        if sae.W_skip is not None:
            t[f"W_skip_{i}"] = sae.W_skip  # [d_in, d_out]: x @ W_skip, as circuit-tracer's CLT applies it
        dec = torch.zeros(clt.d_sae, clt.n_layers - i, sae.W_dec.shape[1], dtype=sae.W_dec.dtype)
        dec[:, : clt.reach_of(i)] = clt.decoders(i).detach()
        save_file({k: v.detach().contiguous().cpu() for k, v in t.items()}, str(folder / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": dec.cpu()}, str(folder / f"W_dec_{i}.safetensors"))
    k_in = kinds.pop()[0]
    model_name = model_name or clt.meta.get("model_name") or clt.layers[0].meta.get("model_name")
    ours = {"architecture": clt.architecture, "reach": clt.reach, "reads": k_in}
    if clt.architecture == "topk":
        ours["k"] = clt.layers[0].k
    cfg = {"model_kind": KIND, **({"model_name": model_name} if model_name else {})}
    cfg |= {"feature_input_hook": spelling(f"{k_in}.0", "circuit-tracer")}
    cfg |= {"feature_output_hook": spelling("mlp_out.0", "circuit-tracer"), "scan": folder.name}
    cfg["attribution"] = ours  # ours: circuit-tracer ignores it
    import yaml

    (folder / CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder


def _index(p: Path) -> int:
    m = re.fullmatch(r"W_(?:enc|dec)_(\d+)", p.stem)
    return int(m.group(1)) if m else -1


def _warn_for_circuit_tracer(clt: CrossLayerTranscoder) -> None:
    problems = []
    if any(s.W_skip is not None for s in clt.layers):
        problems.append("its file loader drops the skip path (W_skip_<i>)")
    if clt.architecture == "topk":
        problems.append("it runs TopK as ReLU")
    if clt.architecture == "jumprelu" and any((s.threshold < 0).any() for s in clt.layers):
        problems.append(NEGATIVE_THRESHOLDS)
    if problems:
        warnings.warn("circuit-tracer will not compute this CLT as ours: " + "; ".join(problems), SAEWarning, 4)
