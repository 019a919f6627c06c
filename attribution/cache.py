"""Cache keys that cannot lie, and cache writes that cannot be read half-done.

Keys: an entry derived from a model or an SAE is keyed by a fingerprint of what it computes (its config and a
hash of every weight), not by its name, so two fine-tunes of one architecture never share a corpus,
activations, SAEs or a feature index.

Writes: `build_once` builds an entry under a file lock beside it (a second process that wants the same entry
waits, then loads what the first built) into a unique temporary name beside the target, checks it, and renames
it into place: a reader sees nothing or a whole entry. A killed writer leaves only a temporary name, which is
never read and is removed by the next write of that entry. An entry that fails to load raises CacheError
naming it; `build_once` warns and rebuilds it.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import shutil
import tempfile
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from attribution.errors import CacheError

T = TypeVar("T")
TMP = ".tmp-"  # temporary names are <target name>.tmp-<random>, beside the target
# config fields that say how a model was loaded or run, not what it computes (the weights' dtype is hashed
# with the weights; fields starting with "_" are dropped too)
VOLATILE = {
    "architectures",
    "dtype",
    "torch_dtype",
    "transformers_version",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "quantization_config",
}


def cache_dir() -> Path:
    """$ATTRIBUTION_CACHE, default ~/.cache/attribution."""
    return Path(os.environ.get("ATTRIBUTION_CACHE", Path.home() / ".cache" / "attribution"))


# --- keys ------------------------------------------------------------------------------------------
def digest(obj) -> str:
    """sha256 of `obj` as canonical JSON (sorted keys; what JSON cannot hold is written with str)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tensor_digest(t: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256()
    _update(h, "", t)
    return h.hexdigest()


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer of `module`, by name (a tied weight counts once)."""
    h = hashlib.sha256()
    for name, t in _tensors(module):
        _update(h, name, t)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's content (memoised per process by path, size, inode and mtime)."""
    st = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_ino, st.st_mtime_ns)


def model_fingerprint(model) -> str:
    """`<model type>-<layers>x<width>-<hash>`: the hash covers the config (less how it was loaded), every
    weight and the tokenizer's vocabulary. Hashing the weights (~1 s per GB) runs once per Model and again
    only after a weight changes."""
    hf = model.hf
    parts = {
        "config": _clean(hf.config.to_dict()),
        "weights": _memoised(hf, lambda: weights_digest(hf)),
        "tokenizer": _tokenizer_digest(model.tokenizer),
    }
    return f"{slug(model.model_type)}-{model.n_layers}x{model.d_model}-{digest(parts)[:20]}"


def sae_fingerprint(sae) -> str:
    """`<hook>-<architecture><d_sae>-<hash>`: the hash covers the class, every hyper-parameter that changes the
    output (d_in, d_sae, hook, dtype, apply_b_dec_to_input, k, ...) and every weight (JumpReLU's threshold too)."""
    cfg = {
        "class": f"{type(sae).__module__}.{type(sae).__qualname__}",
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "hook": sae.hook,
        "dtype": str(sae.W_enc.dtype),
        "apply_b_dec_to_input": getattr(sae, "apply_b_dec_to_input", False),
        **sae.extra_config(),
    }
    parts = {"config": cfg, "weights": _memoised(sae, lambda: weights_digest(sae))}
    return f"{slug(sae.hook)}-{sae.architecture}{sae.d_sae}-{digest(parts)[:20]}"


def slug(text: str, n: int = 60) -> str:
    """A readable folder-name piece: letters, digits, '.', '_'; everything else '-'."""
    return "".join(c if c.isalnum() or c in "._" else "-" for c in str(text))[:n]


# --- writes ----------------------------------------------------------------------------------------
def build_once(
    target: str | Path,
    load: Callable[[Path], T | None],
    build: Callable[[Path], None],
    *,
    directory: bool = True,
    rebuild: bool = False,
) -> T:
    """The entry at `target`, built first if it is missing or corrupt.

    load(path) returns the entry, None when it is absent or stale, and raises CacheError when it is corrupt.
    build(tmp) writes the entry into `tmp` (an empty folder, or a file path when directory=False); it runs
    under the entry's file lock, so of several processes one builds and the others wait and load its result.
    """
    target = Path(target)
    if not rebuild:
        with contextlib.suppress(CacheError):  # a corrupt entry is reported below, under the lock
            value = _load(target, load)
            if value is not None:
                return value
    with locked(target):
        if not rebuild:
            value = load_entry(target, load)  # another process may have built it while we waited
            if value is not None:
                return value
        with atomic_write(target, directory=directory, check=load, lock=False) as tmp:
            build(tmp)
        return load(target)


def load_entry(target: str | Path, load: Callable[[Path], T | None]) -> T | None:
    """load(target), or None when it is absent, stale or corrupt (corrupt: with a warning naming it)."""
    try:
        return _load(Path(target), load)
    except CacheError as exc:
        warnings.warn(f"{exc} Rebuilding it.", stacklevel=2)
        return None


@contextlib.contextmanager
def locked(*targets: str | Path) -> Iterator[None]:
    """Hold the file locks `<target>.lock` of one or more entries (taken in a fixed order, so two processes
    locking overlapping sets cannot deadlock); re-entrant within a process."""
    with contextlib.ExitStack() as stack:
        for key in sorted({str(Path(t).absolute()) + ".lock" for t in targets}):
            Path(key).parent.mkdir(parents=True, exist_ok=True)
            with _LOCKS_GUARD:
                lock = _LOCKS.setdefault(key, FileLock(key))  # one object per path, so re-entry does not block
            stack.enter_context(lock)
        yield


@contextlib.contextmanager
def atomic_write(
    target: str | Path, *, directory: bool = True, check: Callable[[Path], object] | None = None, lock: bool = True
) -> Iterator[Path]:
    """Yield a fresh temporary path beside `target` (an empty folder, or a file path when directory=False);
    when the block succeeds, check(tmp) runs (it should raise CacheError on a bad entry) and tmp replaces
    target; on any error, or a kill, it never becomes target. Leftover temporaries of this target (killed
    writers) are removed first. lock=False: the caller already holds a lock that covers target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target) if lock else contextlib.nullcontext():
        for old in target.parent.glob(glob.escape(target.name) + TMP + "*"):
            remove(old)  # under the lock, any other temporary of this entry belongs to a dead writer
        if directory:
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + TMP))
        else:
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=target.name + TMP)
            os.close(fd)
            tmp = Path(name)
        tmp.chmod((0o777 if directory else 0o666) & ~_UMASK)  # as mkdir/open would make it, not private
        try:
            yield tmp
            if check is not None and check(tmp) is None:
                raise CacheError(f"the new cache entry for {target} does not load; this is a bug, please report it")
            _replace(tmp, target)
        except BaseException:
            remove(tmp)
            raise


def write_json(path: str | Path, obj, *, lock: bool = False) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    with atomic_write(path, directory=False, lock=lock) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def remove(path: str | Path) -> None:
    """Delete a file, a link (never what it points to) or a folder tree; nothing if absent."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


# --- reads -----------------------------------------------------------------------------------------
def corrupt(path: str | Path, reason) -> CacheError:
    """The error for a cache entry that cannot be read: which one, why, and how to remove it."""
    return CacheError(
        f"the cache entry {path} is truncated or corrupt ({reason}). Delete it (rm -r '{path}') and it is "
        "rebuilt on next use."
    )


def read_safetensors(path: str | Path, entry: str | Path | None = None) -> dict[str, Tensor]:
    """The tensors of a cached safetensors file; CacheError naming `entry` (default: the file) if unreadable."""
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise corrupt(entry or path, f"{Path(path).name}: {exc}") from None


def read_json(path: str | Path, entry: str | Path | None = None):
    """A cached JSON file; CacheError naming `entry` (default: the file) if missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise corrupt(entry or path, f"{Path(path).name}: {exc}") from None


# --- internals -------------------------------------------------------------------------------------
_LOCKS: dict[str, FileLock] = {}
_LOCKS_GUARD = threading.Lock()
_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_UMASK = os.umask(0o022)  # read it (the only way is to set it), then put it back
os.umask(_UMASK)


def _load(target: Path, load: Callable[[Path], T | None]) -> T | None:
    return load(target) if os.path.lexists(target) else None


def _replace(tmp: Path, target: Path) -> None:
    if target.is_symlink():
        target.unlink()  # a link (e.g. to another cache's entry) is replaced, never what it points to
    elif target.is_dir():
        old = target.with_name(f"{target.name}{TMP}old-{uuid.uuid4().hex[:8]}")  # a leftover name if we die here
        target.rename(old)
        tmp.rename(target)
        remove(old)
        return
    os.replace(tmp, target)  # atomic: a file replaces a file; a folder takes a free name


def _tensors(module: torch.nn.Module) -> list[tuple[str, Tensor]]:
    items = dict(module.named_parameters())
    items.update((f"buffer:{n}", b) for n, b in module.named_buffers())
    return sorted(items.items())


def _update(h, name: str, t: Tensor) -> None:
    t = t.detach()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(memoryview(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))


def _memoised(module: torch.nn.Module, compute: Callable[[], str]) -> str:
    """compute() once per module until a weight is replaced or changed in place (a tensor's _version counts
    in-place writes)."""
    state = tuple((n, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for n, t in _tensors(module))
    hit = _MEMO.get(module)
    if hit is not None and hit[0] == state:
        return hit[1]
    value = compute()
    _MEMO[module] = (state, value)
    return value


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if k not in VOLATILE and not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _tokenizer_digest(tok) -> str:
    hit = _MEMO.get(tok)
    if hit is None or hit[0] != len(tok):  # added tokens change the length
        special = {n: getattr(tok, f"{n}_token_id", None) for n in ("bos", "eos", "pad", "unk")}
        vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
        hit = _MEMO[tok] = (len(tok), digest({"vocab": vocab, **special}))
    return hit[1]


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, inode: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
