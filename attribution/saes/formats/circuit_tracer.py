"""circuit-tracer transcoder sets: `config.yaml` (`model_kind: transcoder_set`) + one safetensors per layer, read
and written. Cross-layer transcoders (`model_kind: cross_layer_transcoder`) are refused.

Its `SingleLayerTranscoder`: W_enc [d_sae, d_in] (F.linear), W_dec [d_sae, d_out], W_skip [d_out, d_in] applied as
`x @ W_skip.T`: W_enc and W_skip are transposed from ours; `activation_function.threshold` makes it JumpReLU, whose
form `x * (x > t)` differs from ours `relu(x) * (x > t)` for negative thresholds (we warn). Hooks are TransformerLens
names relative to the block (`hook_resid_mid`, `mlp.hook_in`, `hook_mlp_out`, `mlp.hook_out`), read and written
through attribution.models.hooks: its `mlp.hook_in` is our mlp_in (its nnsight mapping: the output of
pre_feedforward_layernorm / post_attention_layernorm), `mlp.hook_out` our mlp_out only where no norm follows the MLP.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_file

from attribution.errors import SAEError
from attribution.models.hooks import Family, family_from_model_name, spelling
from attribution.saes.base import SAE
from attribution.saes.formats import gemma_scope
from attribution.saes.formats.common import (
    Entry,
    Format,
    SAEWarning,
    build_transcoder,
    read_hook,
    read_tensors,
    require_keys,
    same_layer,
    split_hook,
    transpose,
)
from attribution.saes.topk import TopKOptions

CONFIG = "config.yaml"
KINDS = ("resid_mid", "mlp_in", "mlp_out")  # what its per-layer transcoders read and write
LAYOUT = "circuit-tracer's layout: W_enc [d_sae, d_in], W_dec [d_sae, d_out], W_skip [d_out, d_in]"
NEGATIVE_THRESHOLDS = (
    "circuit-tracer's JumpReLU passes pre-activations between a negative threshold and 0 through (negative), ours "
    "(Gemma Scope's, SAELens's) zeroes them, so outputs differ there."
)


def detect(path: Path) -> bool:
    return (path / CONFIG).is_file()


def read_config(path: Path, kind: str) -> dict:
    """`path`/config.yaml as a mapping, checked to be of model_kind `kind` and to name both feature hooks."""
    import yaml

    where = path / CONFIG
    try:
        cfg = yaml.safe_load(where.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SAEError(f"{where} is not valid YAML ({exc}); re-save or re-download it.") from exc
    if not isinstance(cfg, dict):
        raise SAEError(f"{where} should hold a mapping (model_kind, feature_input_hook, ...).")
    if cfg.get("model_kind") != kind:
        how = {"transcoder_set": "load_transcoders", "cross_layer_transcoder": "load_clt"}
        other = how.get(cfg.get("model_kind"))
        fix = f"; load it with attribution.saes.{other}(folder)" if other else ""
        raise SAEError(f"{where}: model_kind {cfg.get('model_kind')!r}; {how[kind]} reads {kind} folders{fix}.")
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(cfg.get(key), str):
            raise SAEError(f"{where} lacks {key} (e.g. hook_resid_mid / hook_mlp_out); add it.")
    if isinstance(cfg.get("transcoders"), list):
        hub = [n for n in cfg["transcoders"] if isinstance(n, str) and n.startswith("hf://")]
        if hub:
            raise SAEError(
                f"{where} lists files on the Hugging Face hub ({hub[0]}, ...). Download them, put them in this "
                "folder and replace each hf:// entry by its path relative to the folder."
            )
    return cfg


def read_transcoders(path: Path, family: Family | None) -> list[Entry]:
    where, cfg = path / CONFIG, read_config(path, "transcoder_set")
    ours = cfg.get("attribution") if isinstance(cfg.get("attribution"), dict) else {}
    if "transcoders" in cfg:
        names = cfg["transcoders"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SAEError(f"{where}: transcoders must be a list of file paths, one per layer.")
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
    family = family or family_from_model_name(cfg.get("model_name"))
    entries = []
    for i, (layer, file) in enumerate(zip(layers, files)):
        hook, target = (read_hook(f"blocks.{layer}.{h}", where, family) for h in hooks)
        same_layer(hook, target, where)
        a = arch[i] if isinstance(arch, list) else arch
        k = ks[i] if isinstance(ks, list) else ks
        meta = {"model_name": cfg.get("model_name"), "hook_out": hooks[1]}
        entries.append((layer, file, _maker(file, hook, target, a, k, meta)))
    return entries


def _maker(file: Path, hook: str, target: str, arch, k, meta: dict) -> Callable[[], SAE]:
    def make():
        if file.suffix != ".safetensors":
            raise SAEError(f"{file}: only .safetensors transcoders load here (not Gemma Scope 1's .npz).")
        t = read_tensors(file)
        if "w_enc" in t:  # Gemma Scope 2's own file (circuit-tracer's special_load_fn gemma-scope-2)
            w = gemma_scope.weights(t, file)
            return build_transcoder("jumprelu", hook, target, w, file, meta, gemma_scope.LAYOUT)
        require_keys(t, file, ["W_enc", "W_dec", "b_enc", "b_dec"], ["activation_function.threshold", "W_skip"])
        for bad in ("threshold", "log_thresholds"):
            if bad in t:
                raise SAEError(f"{file} holds {bad!r}; circuit-tracer names it activation_function.threshold.")
        threshold = t.get("activation_function.threshold")
        w = {"W_enc": transpose(t["W_enc"]), "W_dec": t["W_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
        w |= {"threshold": threshold, "W_skip": transpose(t.get("W_skip"))}
        if arch == "topk":
            if not (isinstance(k, int) and not isinstance(k, bool)):
                raise SAEError(f"{file}: a TopK transcoder needs its k (attribution.k in {CONFIG}).")
            return build_transcoder("topk", hook, target, w, file, meta, LAYOUT, TopKOptions(k))
        if threshold is not None and (threshold < 0).any():
            warnings.warn(f"{file}: negative thresholds: " + NEGATIVE_THRESHOLDS, SAEWarning, stacklevel=4)
        return build_transcoder("jumprelu" if threshold is not None else "relu", hook, target, w, file, meta, LAYOUT)

    return make


def write_transcoders(saes: list[SAE], folder: Path, model_name: str | None = None) -> Path:
    """Write transcoders as a circuit-tracer transcoder set: config.yaml (model_kind transcoder_set, hooks in
    circuit-tracer's names) and layer_<L>.safetensors in its layout, which read_transcoders reads back exactly.
    (attribution.saes.save_transcoders says what circuit-tracer makes of it.)"""
    kinds = set()
    for sae in saes:
        if not isinstance(sae, SAE) or not sae.is_transcoder:
            raise SAEError(f"{sae!r} is not a transcoder (an SAE with a target hook); only transcoders are saved here.")
        if sae.architecture not in ("relu", "jumprelu", "topk"):
            raise SAEError(f"{sae!r}: architecture {sae.architecture!r} has no circuit-tracer form (relu, jumprelu).")
        (k_in, l_in), (k_out, l_out) = split_hook(sae.hook), split_hook(sae.target)
        if k_in not in KINDS or k_out not in KINDS or l_in != l_out:
            raise SAEError(
                f"{sae!r}: circuit-tracer's per-layer transcoders read and write one layer's {sorted(KINDS)} hooks."
            )
        kinds.add((k_in, k_out))
    if len(kinds) > 1:
        raise SAEError(f"a circuit-tracer set reads and writes one pair of hooks; these mix {sorted(kinds)}.")
    saes = sorted(saes, key=lambda s: split_hook(s.hook)[1])
    layers = [split_hook(s.hook)[1] for s in saes]
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
    hook_in, hook_out = (spelling(f"{k}.0", "circuit-tracer") for k in (k_in, k_out))
    cfg = {"model_kind": "transcoder_set", **({"model_name": model_name} if model_name else {})}
    cfg |= {"feature_input_hook": hook_in, "feature_output_hook": hook_out, "scan": folder.name}
    cfg |= {"transcoders": files, "attribution": ours}  # `attribution`: ours, circuit-tracer ignores it
    import yaml

    (folder / CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder


def _warn_for_circuit_tracer(saes: list[SAE], layers: list[int]) -> None:
    problems = []
    if layers != list(range(len(layers))):
        problems.append(f"it needs every layer 0..{max(layers)} (these are {layers})")
    if len({s.d_sae for s in saes}) > 1:
        problems.append("it needs one width for all layers")
    if any(s.architecture == "topk" for s in saes):
        problems.append("it runs TopK transcoders as ReLU")
    if any(s.architecture == "jumprelu" and (s.threshold < 0).any() for s in saes):
        problems.append(NEGATIVE_THRESHOLDS)
    if problems:
        warnings.warn("circuit-tracer will not read this set as ours: " + "; ".join(problems), SAEWarning, stacklevel=4)


FORMAT = Format("circuit-tracer", detect, read_transcoders=read_transcoders, write_transcoders=write_transcoders)
