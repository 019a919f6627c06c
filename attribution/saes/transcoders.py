"""Transcoder sets on disk: Gemma Scope 2, circuit-tracer and SAELens folders in; circuit-tracer folders out.

Every format is converted to our layout, output = act(x @ W_enc + b_enc) @ W_dec + b_dec + x @ W_skip with
W_enc [d_in, d_sae], W_dec [d_sae, d_out], W_skip [d_in, d_out]. What each format stores (the evidence is in
docs/models.md, "Transcoders on disk"):

- Gemma Scope 2 (`params.safetensors`, `config.json`): w_enc [d_in, d_sae], w_dec [d_sae, d_out] and
  affine_skip_connection [d_in, d_out], applied as `x @ affine_skip_connection` (Google's tutorial; circuit-tracer's
  single-layer loader transposes it and applies `x @ W_skip.T`, its cross-layer loader applies it as is): all as
  ours. config.json's hf_hook_point_in/out name Hugging Face modules: a transcoder reads
  `pre_feedforward_layernorm.output` (our mlp_in) and writes `post_feedforward_layernorm.output` (mlp_out), also
  the default for a folder without config.json.
- circuit-tracer (`SingleLayerTranscoder`): W_enc [d_sae, d_in] (F.linear), W_dec [d_sae, d_out], W_skip
  [d_out, d_in] applied as `x @ W_skip.T`: W_enc and W_skip are transposed.
- SAELens transcoders: W_enc [d_in, d_sae], W_dec [d_sae, d_out], W_skip [d_out, d_in] applied as `x @ W_skip.T`.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from attribution.errors import AttributionError, SAEError
from attribution.saes.base import SAE, build
from attribution.saes.io import CFG, WEIGHTS, SAEWarning, _check_model_name, _read_cfg, load_sae

GS2_PARAMS, GS2_CONFIG, CT_CONFIG = "params.safetensors", "config.json", "config.yaml"
# our hook kind -> circuit-tracer's name for it (its nnsight mapping for Gemma 3, TransformerLens spelling)
CT_HOOKS = {"resid_mid": "hook_resid_mid", "mlp_in": "mlp.hook_in", "mlp_out": "hook_mlp_out"}
# TransformerLens / circuit-tracer hook (after `blocks.L.`) -> our kind. TransformerLens's hook_mlp_in is the copy
# of resid_mid fed to ln2 (before the norm); `ln2.hook_normalized` is the norm's output before its learned scale,
# which none of our hooks is.
_TL_HOOKS = {
    **{v: k for k, v in CT_HOOKS.items()},
    "hook_mlp_in": "resid_mid",
    "mlp.hook_out": "mlp_out",
    **{f"hook_{k}": k for k in ("resid_pre", "attn_out", "resid_post")},
}
# Hugging Face module paths (Gemma Scope 2's hf_hook_point_*, SAELens's hf_hook_name) after `layers.L.` -> our kind
_HF_HOOKS = {
    "pre_feedforward_layernorm.input": "resid_mid",
    "pre_feedforward_layernorm.output": "mlp_in",
    "post_feedforward_layernorm.output": "mlp_out",
    "input": "resid_pre",
    "output": "resid_post",
}
_SAELENS_TC = {"transcoder": "relu", "skip_transcoder": "relu", "jumprelu_transcoder": "jumprelu"}
_SAELENS_TC["jumprelu_skip_transcoder"] = "jumprelu"
# release id -> (hub repository, folder, variant, number of layers): the files are
# <folder>/layer_<L>_<variant>/{params.safetensors,config.json}, the set circuit-tracer uses for gemma-3-270m
_GS2_270M = "transcoder_all", "width_16k_l0_small", 18
_RELEASES = {
    "gemma-scope-2-270m-pt-transcoders": ("google/gemma-scope-2-270m-pt", *_GS2_270M),
    "gemma-scope-2-270m-it-transcoders": ("google/gemma-scope-2-270m-it", *_GS2_270M),
    # circuit-tracer's reference for the pt set (its config.yaml lists the same files)
    "mwhanna/gemma-scope-2-270m-pt/transcoder_all/width_16k_l0_small": ("google/gemma-scope-2-270m-pt", *_GS2_270M),
}

Entry = tuple[int, Path, Callable[[], SAE]]  # (layer, where it comes from, build the SAE)


def load_transcoders(source, *, model=None, layers=None, device=None, dtype=None) -> dict[str, SAE]:
    """{read hook: transcoder}, sorted by layer, from a Gemma Scope 2, circuit-tracer or SAELens folder (one
    transcoder, or a folder of per-layer folders), or a known release id. `layers` selects layers (only those
    files are read); with `model`, each is checked to fit it."""
    wanted = _layers(layers)
    entries = _entries(source, wanted)
    by_layer: dict[int, Path] = {}
    for layer, path, _ in entries:
        if layer in by_layer:
            raise SAEError(
                f"two transcoders for layer {layer}: {by_layer[layer]} and {path}. Keep one per layer in the folder, "
                "or load each folder on its own."
            )
        by_layer[layer] = path
    if wanted is not None:
        missing = sorted(set(wanted) - set(by_layer))
        if missing:
            raise SAEError(f"{source}: no transcoder for layer(s) {missing}; it has layers {sorted(by_layer)}.")
        entries = [e for e in entries if e[0] in wanted]
    out = {}
    for _, path, make in sorted(entries, key=lambda e: e[0]):
        sae = make()
        if device is not None or dtype is not None:
            sae = sae.to(device=device, dtype=dtype)
        sae.requires_grad_(False)
        _check(sae, model, path)
        out[sae.hook] = sae
    return out


def save_transcoders(tcs, folder, *, format: str = "circuit-tracer", model_name: str | None = None) -> Path:
    """Write transcoders as a circuit-tracer transcoder set: config.yaml (model_kind transcoder_set, hooks in
    circuit-tracer's names) and layer_<L>.safetensors in its layout, which load_transcoders reads back exactly.

    relu and jumprelu load in circuit-tracer as they are. circuit-tracer's single-layer loader knows only those
    two, so a TopK transcoder's k is recorded under the extra `attribution` key, which it ignores: it would run
    one as a ReLU transcoder (we warn). Its `transcoders` paths are relative to the folder, while
    circuit-tracer's hf_utils.load_transcoders opens them from the working directory: resolve them against the
    folder first, or load the folder as circuit-tracer's cache (load_transcoders_from_cache(folder.name,
    cache_dir=folder.parent)). It also needs every layer from 0 up, with one width; we warn otherwise.
    """
    if format != "circuit-tracer":
        raise SAEError(f"save_transcoders writes format='circuit-tracer' only, not {format!r}.")
    saes = list(tcs.values()) if isinstance(tcs, dict) else list(tcs)
    if not saes:
        raise SAEError("save_transcoders got no transcoders; pass {hook: transcoder} as load_transcoders returns.")
    kinds = set()
    for sae in saes:
        if not isinstance(sae, SAE) or not sae.is_transcoder:
            raise SAEError(f"{sae!r} is not a transcoder (an SAE with a target hook); only transcoders are saved here.")
        if sae.architecture not in ("relu", "jumprelu", "topk"):
            raise SAEError(f"{sae!r}: architecture {sae.architecture!r} has no circuit-tracer form (relu, jumprelu).")
        (k_in, l_in), (k_out, l_out) = _split(sae.hook), _split(sae.target)
        if k_in not in CT_HOOKS or k_out not in CT_HOOKS or l_in != l_out:
            raise SAEError(
                f"{sae!r}: circuit-tracer's per-layer transcoders read and write one layer's {sorted(CT_HOOKS)} hooks."
            )
        kinds.add((k_in, k_out))
    if len(kinds) > 1:
        raise SAEError(f"a circuit-tracer set reads and writes one pair of hooks; these mix {sorted(kinds)}.")
    saes.sort(key=lambda s: _split(s.hook)[1])
    layers = [_split(s.hook)[1] for s in saes]
    if len(set(layers)) < len(layers):
        raise SAEError(f"two transcoders for one layer among layers {layers}; pass one per layer.")
    _warn_for_circuit_tracer(saes, layers)
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for sae, layer in zip(saes, layers):
        t = {"W_enc": sae.W_enc.T, "W_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
        if sae.architecture == "jumprelu":
            t["activation_function.threshold"] = sae.threshold
        if sae.W_skip is not None:
            t["W_skip"] = sae.W_skip.T
        files.append(f"layer_{layer}.safetensors")
        save_file({k: v.detach().contiguous().cpu() for k, v in t.items()}, str(folder / files[-1]))
    names = {s.meta.get("model_name") for s in saes} - {None}
    model_name = model_name or (names.pop() if len(names) == 1 else None)
    (k_in, k_out), ours = kinds.pop(), {"layers": layers, "architecture": saes[0].architecture}
    if len({s.architecture for s in saes}) > 1:
        ours["architecture"] = [s.architecture for s in saes]
    if any(s.architecture == "topk" for s in saes):
        ours["k"] = [getattr(s, "k", None) for s in saes]
    cfg = {"model_kind": "transcoder_set", **({"model_name": model_name} if model_name else {})}
    cfg |= {"feature_input_hook": CT_HOOKS[k_in], "feature_output_hook": CT_HOOKS[k_out], "scan": folder.name}
    cfg |= {"transcoders": files, "attribution": ours}  # `attribution`: ours, circuit-tracer ignores it
    import yaml

    (folder / CT_CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder


# --- finding the transcoders ------------------------------------------------------------------------------


def _layers(layers) -> list[int] | None:
    if layers is None:
        return None
    try:
        items = [layers] if isinstance(layers, int | str) else list(layers)
    except TypeError:
        items = [layers]
    if not items or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in items):
        raise SAEError(f"layers must be layer numbers (ints >= 0), got {layers!r}.")
    return sorted(set(items))


def _entries(source, layers) -> list[Entry]:
    if not isinstance(source, str | Path):
        raise SAEError(f"load_transcoders takes a folder or a release id, got {type(source).__name__}.")
    path = Path(source).expanduser()
    if path.exists():
        return _folder(path)
    if str(source) in _RELEASES:
        return _release(str(source), layers)
    raise SAEError(
        f"{source!r} is neither a folder nor a known release id ({', '.join(sorted(_RELEASES))}). Pass the folder "
        "holding the transcoders (Gemma Scope 2, circuit-tracer or SAELens layout)."
    )


def _folder(path: Path) -> list[Entry]:
    if not path.is_dir():
        raise SAEError(f"{path} is a file; pass the folder that holds it.")
    if (path / CT_CONFIG).is_file():
        return _circuit_tracer(path)
    if (path / GS2_PARAMS).is_file():
        return [_gemma_scope_2(path)]
    if (path / CFG).is_file():
        return [_saelens(path)]
    subs = [p for p in sorted(path.iterdir()) if p.is_dir() and any((p / f).is_file() for f in (GS2_PARAMS, CFG))]
    if not subs:
        raise SAEError(
            f"{path} holds no transcoders in a format we read: a circuit-tracer {CT_CONFIG}, a Gemma Scope 2 "
            f"{GS2_PARAMS} (+ {GS2_CONFIG}), a SAELens {CFG} + {WEIGHTS}, or one such folder per layer."
        )
    return [e for p in subs for e in _folder(p)]


def _release(name: str, layers) -> list[Entry]:
    repo, folder, variant, n = _RELEASES[name]
    layers = layers if layers is not None else list(range(n))
    files = [f"{folder}/layer_{L}_{variant}/{f}" for L in layers for f in (GS2_PARAMS, GS2_CONFIG)]
    try:
        local = [_hub_download(repo, f) for f in files]
    except Exception as exc:  # not installed, offline, gated, timeout: all end in the same instructions
        exc = "huggingface_hub is not installed" if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        Ls = ", ".join(map(str, layers)) if len(layers) <= 6 else f"{layers[0]}..{layers[-1]}"
        raise SAEError(
            f"release {name!r} could not be downloaded ({exc[:200]}). It is the Hugging "
            f"Face repository {repo}: download {folder}/layer_<L>_{variant}/{GS2_PARAMS} and {GS2_CONFIG} for "
            f"L in {Ls} (e.g. `huggingface-cli download {repo} --include '{folder}/layer_*_{variant}/*' "
            f"--local-dir DIR`), keep each layer_<L>_{variant} folder as it is, and call "
            f"load_transcoders('DIR/{folder}')."
        ) from None
    return [_gemma_scope_2(Path(p).parent) for p in local[::2]]


def _hub_download(repo: str, filename: str) -> str:
    """One file from the hub's cache or the hub. huggingface_hub retries an unreachable host for ~25 s, so a
    3-second connection check comes first: offline, this fails in seconds."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, hf_hub_download

    try:
        return hf_hub_download(repo, filename, local_files_only=True)
    except Exception:  # not in the cache
        if getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)():
            raise
    if not any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        url = urlparse(constants.ENDPOINT)
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
        except OSError as exc:
            raise OSError(f"cannot reach {constants.ENDPOINT}: {exc}") from None
    return hf_hub_download(repo, filename, etag_timeout=5)


# --- the formats ------------------------------------------------------------------------------------------


def _gemma_scope_2(path: Path) -> Entry:
    cfg = _json(path / GS2_CONFIG) if (path / GS2_CONFIG).is_file() else {}
    if cfg.get("architecture", "jump_relu") != "jump_relu":
        raise SAEError(f"{path / GS2_CONFIG}: architecture {cfg['architecture']!r}; Gemma Scope 2 is jump_relu.")
    match = re.search(r"layer_(\d+)", path.name)
    if cfg.get("hf_hook_point_in"):
        hook = _hf_hook(cfg["hf_hook_point_in"], path / GS2_CONFIG)
    elif match:
        hook = f"mlp_in.{match.group(1)}"
    else:
        raise SAEError(f"{path}: no {GS2_CONFIG} and no layer_<n> in the folder name, so the layer is unknown.")
    target = _hf_hook(cfg["hf_hook_point_out"], path / GS2_CONFIG) if cfg.get("hf_hook_point_out") else None
    target = target or f"mlp_out.{_split(hook)[1]}"
    if cfg.get("type", "transcoder") != "transcoder" or target == hook:
        raise SAEError(
            f"{path} is a Gemma Scope 2 SAE (type {cfg.get('type')!r}, reads and writes {hook}), not a transcoder; "
            "load_transcoders reads transcoders (Gemma Scope 2's transcoder/ and transcoder_all/ folders)."
        )
    _same_layer(hook, target, path)

    def make():
        w = _gs2_weights(_read(path / GS2_PARAMS), path / GS2_PARAMS)
        if "affine_connection" in cfg and bool(cfg["affine_connection"]) != (w["W_skip"] is not None):
            raise SAEError(
                f"{path}: config.json says affine_connection={cfg['affine_connection']} but {GS2_PARAMS} "
                f"{'lacks' if cfg['affine_connection'] else 'has'} affine_skip_connection; they do not belong together."
            )
        return _build("jumprelu", hook, target, w, path / GS2_PARAMS, {"model_name": cfg.get("model_name")}, _GS2)

    return _split(hook)[1], path, make


def _gs2_weights(t: dict, file: Path) -> dict:
    """Gemma Scope 2's tensors, all in our orientation already (the module docstring says why)."""
    _keys(t, file, ["w_enc", "w_dec", "b_enc", "b_dec", "threshold"], ["affine_skip_connection"])
    if t["w_dec"].ndim == 3:
        raise SAEError(f"{file}: w_dec is 3-d, a cross-layer transcoder (clt/); only per-layer ones load here.")
    w = {"W_enc": t["w_enc"], "W_dec": t["w_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
    return w | {"threshold": t["threshold"], "W_skip": t.get("affine_skip_connection")}


def _circuit_tracer(path: Path) -> list[Entry]:
    import yaml

    where = path / CT_CONFIG
    try:
        cfg = yaml.safe_load(where.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SAEError(f"{where} is not valid YAML ({exc}); re-save or re-download it.") from exc
    if not isinstance(cfg, dict):
        raise SAEError(f"{where} should hold a mapping (model_kind, feature_input_hook, ...).")
    if cfg.get("model_kind") != "transcoder_set":
        raise SAEError(
            f"{where}: model_kind {cfg.get('model_kind')!r}; only per-layer transcoder sets (transcoder_set) load "
            "here, not cross-layer transcoders."
        )
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(cfg.get(key), str):
            raise SAEError(f"{where} lacks {key} (e.g. hook_resid_mid / hook_mlp_out); add it.")
    ours = cfg.get("attribution") if isinstance(cfg.get("attribution"), dict) else {}
    if "transcoders" in cfg:
        names = cfg["transcoders"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SAEError(f"{where}: transcoders must be a list of file paths, one per layer.")
        hub = [n for n in names if n.startswith("hf://")]
        if hub:
            raise SAEError(
                f"{where} lists files on the Hugging Face hub ({hub[0]}, ...). Download them, put them in this "
                "folder and replace each hf:// entry by its path relative to the folder."
            )
        layers, files = ours.get("layers", list(range(len(names)))), [path / n for n in names]
    else:  # circuit-tracer's cache layout: layer_<L>.safetensors
        found = {p: re.fullmatch(r"layer_(\d+)", p.stem) for p in path.glob("layer_*.safetensors")}
        files = sorted((p for p, m in found.items() if m), key=lambda p: int(found[p].group(1)))
        layers = [int(found[p].group(1)) for p in files]
    arch, ks = ours.get("architecture"), ours.get("k")
    if not files:
        raise SAEError(f"{where} lists no transcoders, and the folder has no layer_<L>.safetensors.")
    if not isinstance(layers, list) or len(layers) != len(files) or not all(isinstance(x, int) for x in layers):
        raise SAEError(f"{where}: attribution.layers must list one layer number per transcoders entry.")
    hooks = cfg["feature_input_hook"], cfg["feature_output_hook"]
    entries = []
    for i, (layer, file) in enumerate(zip(layers, files)):
        hook, target = (_tl_hook(f"blocks.{layer}.{h}", where, cfg.get("model_name")) for h in hooks)
        _same_layer(hook, target, where)
        a = arch[i] if isinstance(arch, list) else arch
        k = ks[i] if isinstance(ks, list) else ks
        meta = {"model_name": cfg.get("model_name"), "hook_out": hooks[1]}
        entries.append((layer, file, _ct_maker(file, hook, target, a, k, meta)))
    return entries


def _ct_maker(file: Path, hook: str, target: str, arch, k, meta: dict) -> Callable[[], SAE]:
    def make():
        if file.suffix != ".safetensors":
            raise SAEError(f"{file}: only .safetensors transcoders load here (not Gemma Scope 1's .npz).")
        t = _read(file)
        if "w_enc" in t:  # Gemma Scope 2's own file (circuit-tracer's special_load_fn gemma-scope-2)
            return _build("jumprelu", hook, target, _gs2_weights(t, file), file, meta, _GS2)
        _keys(t, file, ["W_enc", "W_dec", "b_enc", "b_dec"], ["activation_function.threshold", "W_skip"])
        for bad in ("threshold", "log_thresholds"):
            if bad in t:
                raise SAEError(f"{file} holds {bad!r}; circuit-tracer names it activation_function.threshold.")
        threshold = t.get("activation_function.threshold")
        w = {"W_enc": _t(t["W_enc"]), "W_dec": t["W_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
        w |= {"threshold": threshold, "W_skip": _t(t.get("W_skip"))}
        if arch == "topk":
            return _build("topk", hook, target, w, file, meta, _CT, k=k)
        if threshold is not None and (threshold < 0).any():
            warnings.warn(f"{file}: negative thresholds: " + _NEG, SAEWarning, stacklevel=4)
        return _build("jumprelu" if threshold is not None else "relu", hook, target, w, file, meta, _CT)

    return make


def _saelens(path: Path) -> Entry:
    cfg = _read_cfg(path)

    def field(key):
        value = cfg.get(key)
        return value if value is not None else (cfg.get("metadata") or {}).get(key)

    if cfg.get("target") is not None:  # ours (save_sae of a transcoder)
        return _split(str(cfg.get("hook")))[1], path, lambda: load_sae(path)
    arch = field("architecture")
    if arch not in _SAELENS_TC:
        what = "an SAE" if arch in (None, "standard", "relu", "jumprelu", "topk", "batchtopk", "gated") else "unknown"
        raise SAEError(
            f"{path}: architecture {arch!r} is {what}, not a transcoder ({', '.join(_SAELENS_TC)}); "
            "load an SAE with load_sae."
        )
    hooks = []
    for suffix in ("", "_out"):
        if field(f"hf_hook_name{suffix}"):
            hooks.append(_hf_hook(field(f"hf_hook_name{suffix}"), path / CFG))
        elif field(f"hook_name{suffix}"):
            hooks.append(_tl_hook(field(f"hook_name{suffix}"), path / CFG, field("model_name")))
        else:
            raise SAEError(f"{path / CFG} names no hook_name{suffix}; a transcoder's cfg.json gives both hooks.")
    hook, target = hooks
    _same_layer(hook, target, path / CFG)
    if field("normalize_activations") not in (None, "none") or field("apply_b_dec_to_input"):
        raise SAEError(f"{path / CFG}: transcoders with normalize_activations or apply_b_dec_to_input are not read.")

    def make():
        skip, act = "skip" in arch, _SAELENS_TC[arch]
        need = ["W_enc", "W_dec", "b_enc", "b_dec"] + ["threshold"] * (act == "jumprelu") + ["W_skip"] * skip
        t = _keys(_read(path / WEIGHTS), path / WEIGHTS, need, [])
        if "W_skip" in t and not skip:
            raise SAEError(f"{path}: {WEIGHTS} holds W_skip but architecture {arch!r} has no skip path.")
        w = {k: t.get(k) for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")} | {"W_skip": _t(t.get("W_skip"))}
        dims = {"d_sae": t["b_enc"].shape[0], "d_out": t["b_dec"].shape[0]}
        dims["d_in"] = t["W_enc"].shape[0] if t["W_enc"].ndim == 2 else None
        for key, real in dims.items():
            if field(key) is not None and field(key) != real:
                raise SAEError(f"{path}: cfg.json says {key}={field(key)} but the weights have {real}.")
        meta = {"model_name": field("model_name"), "hook_out": field("hook_name_out")}
        return _build(act, hook, target, w, path / WEIGHTS, meta, _SL)

    return _split(hook)[1], path, make


# --- shared pieces ----------------------------------------------------------------------------------------

_NEG = (
    "circuit-tracer's JumpReLU passes pre-activations between a negative threshold and 0 through (negative), ours "
    "(Gemma Scope's, SAELens's) zeroes them, so outputs differ there."
)


def _t(x):
    return None if x is None else x.T


_GS2 = "Gemma Scope 2's layout: w_enc [d_in, d_sae], w_dec [d_sae, d_out], affine_skip_connection [d_in, d_out]"
_CT = "circuit-tracer's layout: W_enc [d_sae, d_in], W_dec [d_sae, d_out], W_skip [d_out, d_in]"
_SL = "SAELens's layout: W_enc [d_in, d_sae], W_dec [d_sae, d_out], W_skip [d_out, d_in]"


def _build(arch, hook, target, w: dict, file: Path, meta: dict, layout: str, **extra) -> SAE:
    """An SAE from weights in our layout, each shape checked against b_enc [d_sae] and b_dec [d_out]."""
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
    if arch == "topk" and not (isinstance(extra.get("k"), int) and not isinstance(extra["k"], bool)):
        raise SAEError(f"{file}: a TopK transcoder needs its k (attribution.k in {CT_CONFIG}).")
    skip, dtype = w.get("W_skip") is not None, w["W_enc"].dtype
    sae = build(arch, d_in, d_sae, hook, target=target, skip=skip, dtype=dtype, **extra)
    sae.load_state_dict({k: v.to(dtype) for k, v in w.items() if v is not None and k in sae.state_dict()})
    sae.meta = {k: v for k, v in meta.items() if v} | {"source": str(file)}
    return sae


def _read(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise SAEError(f"{file} does not exist; the folder is incomplete: download or copy it.")
    try:
        return load_file(str(file))
    except Exception as exc:
        raise SAEError(f"{file} could not be read ({exc}); the file is corrupt or truncated.") from exc


def _keys(t: dict, file: Path, need: list[str], optional: list[str]) -> dict[str, torch.Tensor]:
    missing = [k for k in need if k not in t]
    if missing:
        raise SAEError(f"{file} lacks {missing} (found {sorted(t)}); it is not the transcoder file expected here.")
    for k in need + [o for o in optional if o in t]:
        if not t[k].is_floating_point():
            raise SAEError(f"{file}: {k} has dtype {t[k].dtype}; weights must be floating point. Re-save it.")
    return t


def _json(file: Path) -> dict:
    try:
        cfg = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SAEError(f"{file} is not valid JSON ({exc}); re-download it.") from exc
    if not isinstance(cfg, dict):
        raise SAEError(f"{file} should hold a JSON object (hf_hook_point_in, ...); re-download it.")
    return cfg


def _split(hook: str) -> tuple[str, int]:
    kind, _, layer = hook.partition(".")
    if not layer.isdigit():
        raise SAEError(f"hook {hook!r} is not '<kind>.<layer>'.")
    return kind, int(layer)


def _same_layer(hook: str, target: str, where: Path) -> None:
    if hook == target:
        raise SAEError(f"{where}: reads and writes {hook}, an SAE, not a transcoder; load an SAE with load_sae.")
    if _split(hook)[1] != _split(target)[1]:
        raise SAEError(f"{where}: reads {hook} but writes {target}; only per-layer transcoders load here.")


def _hf_hook(name, where: Path) -> str:
    m = re.fullmatch(r"(?:[\w.]+\.)?layers\.(\d+)\.(.+)", str(name))
    if not m or m.group(2) not in _HF_HOOKS:
        raise SAEError(
            f"{where}: hook {name!r} is not a point we hook; known: model.layers.<L>.{{{', '.join(_HF_HOOKS)}}}."
        )
    return f"{_HF_HOOKS[m.group(2)]}.{m.group(1)}"


def _tl_hook(name, where: Path, model_name=None) -> str:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", str(name))
    if m and m.group(2) == "ln2.hook_normalized":
        raise SAEError(
            f"{where}: {name} is the MLP norm's output before its learned scale, which none of our hooks is "
            "(mlp_in is after it); this transcoder cannot be spliced here."
        )
    if not m or m.group(2) not in _TL_HOOKS:
        raise SAEError(f"{where}: hook {name!r} has no equivalent here; known: blocks.<L>.{{{', '.join(_TL_HOOKS)}}}.")
    if m.group(2) == "mlp.hook_out" and re.search(r"gemma-?[23]", str(model_name or "").lower()):
        raise SAEError(f"{where}: mlp.hook_out on {model_name} is before the post-feedforward norm; no hook of ours.")
    return f"{_TL_HOOKS[m.group(2)]}.{m.group(1)}"


def _check(sae: SAE, model, path: Path) -> None:
    if model is None:
        return sae.check(None)
    try:
        model.hook(sae.target)
        sae.check(model)
    except AttributionError as exc:
        raise SAEError(f"transcoder {path} does not fit {model.name!r}: {exc}") from None
    if str(sae.meta.get("hook_out")).endswith("mlp.hook_out") and model.family.mlp[0] != "mlp":
        raise SAEError(f"{path}: written at mlp.hook_out, before {model.name}'s post-feedforward norm.")
    if sae.meta.get("model_name"):
        _check_model_name(sae.meta["model_name"], model, path)


def _warn_for_circuit_tracer(saes: list[SAE], layers: list[int]) -> None:
    problems = []
    if layers != list(range(len(layers))):
        problems.append(f"it needs every layer 0..{max(layers)} (these are {layers})")
    if len({s.d_sae for s in saes}) > 1:
        problems.append("it needs one width for all layers")
    if any(s.architecture == "topk" for s in saes):
        problems.append("it runs TopK transcoders as ReLU")
    if any(s.architecture == "jumprelu" and (s.threshold < 0).any() for s in saes):
        problems.append(_NEG)
    if problems:
        warnings.warn("circuit-tracer will not read this set as ours: " + "; ".join(problems), SAEWarning, stacklevel=3)
