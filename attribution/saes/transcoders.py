"""Transcoder sets: `load_transcoders` reads a folder in any format that holds transcoders (attribution.saes.formats:
Gemma Scope 2, circuit-tracer, SAELens, ours), a folder of such folders, or a known release id; `save_transcoders`
writes a circuit-tracer set; `load_clt` / `save_clt` read and write a cross-layer transcoder in circuit-tracer's CLT
layout (attribution.saes.formats.circuit_tracer_clt).

Every format is converted to our layout, output = act(x @ W_enc + b_enc) @ W_dec + b_dec + x @ W_skip with
W_enc [d_in, d_sae], W_dec [d_sae, d_out], W_skip [d_in, d_out]; each format's module says what it stores (the
evidence is in docs/models.md, "Transcoders on disk").
"""

from __future__ import annotations

from pathlib import Path

from attribution.errors import AttributionError, SAEError
from attribution.saes import formats
from attribution.saes.base import SAE
from attribution.saes.clt import CrossLayerTranscoder
from attribution.saes.formats import circuit_tracer_clt
from attribution.saes.formats.common import CFG, WEIGHTS, Entry, check_model_name
from attribution.saes.formats.gemma_scope import CONFIG as GS2_CONFIG
from attribution.saes.formats.gemma_scope import PARAMS as GS2_PARAMS
from attribution.saes.formats.gemma_scope import RELEASES

CT_CONFIG = formats.circuit_tracer.CONFIG
CLT_KIND = circuit_tracer_clt.KIND


def load_transcoders(source, *, model=None, layers=None, device=None, dtype=None) -> dict[str, SAE]:
    """{read hook: transcoder}, sorted by layer, from a Gemma Scope 2, circuit-tracer or SAELens folder (one
    transcoder, or a folder of per-layer folders), or a known release id. `layers` selects layers (only those
    files are read); with `model`, each is checked to fit it (and hook names that depend on the model family are
    read with its family)."""
    wanted = _layers(layers)
    entries = _entries(source, wanted, getattr(model, "family", None))
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
    fmt = formats.by_name(format)
    if fmt is None or fmt.write_transcoders is None:
        raise SAEError(f"save_transcoders writes format='circuit-tracer' only, not {format!r}.")
    saes = list(tcs.values()) if isinstance(tcs, dict) else list(tcs)
    if not saes:
        raise SAEError("save_transcoders got no transcoders; pass {hook: transcoder} as load_transcoders returns.")
    return fmt.write_transcoders(saes, Path(folder), model_name)


def load_clt(folder, *, model=None, device=None, dtype=None) -> CrossLayerTranscoder:
    """A cross-layer transcoder from a circuit-tracer CLT folder (config.yaml, model_kind cross_layer_transcoder,
    + W_enc_<i> / W_dec_<i>.safetensors), frozen; with `model`, checked to fit it (one layer per block, hooks
    and width), and its hook names read with the model's family."""
    if not isinstance(folder, str | Path):
        raise SAEError(f"load_clt takes a folder, got {type(folder).__name__}.")
    if str(folder).startswith("hf://"):
        raise SAEError(
            f"load_clt reads a local folder, not {folder}: download the repository's config.yaml and "
            "*.safetensors (e.g. `huggingface-cli download REPO --local-dir DIR`) and pass DIR."
        )
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise SAEError(f"{path} is not a folder; pass the folder holding the CLT's {CT_CONFIG} and safetensors.")
    if not (path / CT_CONFIG).is_file():
        raise SAEError(f"{path} has no {CT_CONFIG}; a circuit-tracer CLT folder holds one (model_kind {CLT_KIND}).")
    clt = circuit_tracer_clt.read_clt(path, getattr(model, "family", None))
    if device is not None or dtype is not None:
        clt = clt.to(device=device, dtype=dtype)
    clt.requires_grad_(False)
    if model is None:
        clt.check(None)
        return clt
    try:
        clt.check(model)
        for sae in clt.layers:
            model.hook(sae.target)
    except AttributionError as exc:
        raise SAEError(f"cross-layer transcoder {path} does not fit {model.name!r}: {exc}") from None
    if clt.meta.get("model_name"):
        check_model_name(clt.meta["model_name"], model, path, stacklevel=3)
    return clt


def save_clt(clt: CrossLayerTranscoder, folder, *, model_name: str | None = None) -> Path:
    """Write a cross-layer transcoder in circuit-tracer's CLT layout, which load_clt reads back exactly.

    circuit-tracer reads it with its own `load_clt(folder, feature_input_hook=..., feature_output_hook=...)` (hooks
    from config.yaml; its hf_utils loader wants a hub repo_id). Its decoders W_dec_<i> [d_sae, n_layers - i,
    d_model] are ours padded with zeros beyond the reach. Its loader has no skip path and knows only relu and
    jump_relu (x * (x > t)): a skip path (kept as W_skip_<i>), TopK (run as ReLU) and negative thresholds are not
    computed as ours there, and we warn (SAEWarning).
    """
    if str(folder).startswith("hf://"):
        raise SAEError(f"save_clt writes a local folder, not {folder}; upload the folder afterwards.")
    return circuit_tracer_clt.write_clt(clt, Path(folder), model_name)


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


def _entries(source, layers, family) -> list[Entry]:
    if not isinstance(source, str | Path):
        raise SAEError(f"load_transcoders takes a folder or a release id, got {type(source).__name__}.")
    path = Path(source).expanduser()
    if path.exists():
        return _folder(path, family)
    if str(source) in RELEASES:
        return _release(str(source), layers, family)
    raise SAEError(
        f"{source!r} is neither a folder nor a known release id ({', '.join(sorted(RELEASES))}). Pass the folder "
        "holding the transcoders (Gemma Scope 2, circuit-tracer or SAELens layout)."
    )


def _folder(path: Path, family) -> list[Entry]:
    if not path.is_dir():
        raise SAEError(f"{path} is a file; pass the folder that holds it.")
    fmt = formats.detect(path, reads="transcoders")
    if fmt is not None:
        return fmt.read_transcoders(path, family)
    other = formats.detect(path)
    if other is not None:
        raise SAEError(f"{path} holds a {other.name} SAE, not a transcoder; load an SAE with load_sae.")
    subs = [p for p in sorted(path.iterdir()) if p.is_dir() and formats.detect(p, reads="transcoders")]
    if not subs:
        raise SAEError(
            f"{path} holds no transcoders in a format we read: a circuit-tracer {CT_CONFIG}, a Gemma Scope 2 "
            f"{GS2_PARAMS} (+ {GS2_CONFIG}), a SAELens {CFG} + {WEIGHTS}, or one such folder per layer."
        )
    return [e for p in subs for e in _folder(p, family)]


def _release(name: str, layers, family) -> list[Entry]:
    repo, folder, variant, n = RELEASES[name]
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
    return [e for p in local[::2] for e in formats.gemma_scope.read_transcoders(Path(p).parent, family)]


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


def _check(sae: SAE, model, path: Path) -> None:
    if model is None:
        return sae.check(None)
    try:
        model.hook(sae.target)
        sae.check(model)
    except AttributionError as exc:
        raise SAEError(f"transcoder {path} does not fit {model.name!r}: {exc}") from None
    if sae.meta.get("model_name"):
        check_model_name(sae.meta["model_name"], model, path, stacklevel=4)
