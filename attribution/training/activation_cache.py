"""Activation caches: residual activations streamed to disk in shards, so memory stays bounded.

Collection runs under autocast in attribution.compute's dtype (bfloat16 where the device multiplies it
natively, ~3.5x faster with AMX; float32 on CPUs without it) and stops the forward at the last hook needed.
Activations are stored in `dtype` (bfloat16 by default, whatever the compute dtype) on the CPU. Each shard
holds every hook's activations for the same tokens; the manifest records how many input batches are done,
so an interrupted collection resumes where it stopped.

Which tokens are kept: never <bos> (an attention sink whose norm is ~10x the median: a dictionary would
spend features on it, and attribution leaves it out of the node set anyway), and no token whose norm
exceeds `outlier` x the batch median (the rare massive-activation tokens, ~0.02% of text): attribution.tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from attribution.cache import (
    atomic_write,
    cache_dir,
    corrupt,
    digest,
    locked,
    model_fingerprint,
    read_json,
    remove,
    slug,
    tensor_digest,
    write_json,
)
from attribution.compute import dtype_name, model_autocast, run_dtype
from attribution.engine import trace
from attribution.errors import AttributionError, CacheError
from attribution.models.model import Batch
from attribution.tokens import OUTLIER, keep_tokens

MANIFEST = "manifest.json"


@dataclass
class ActivationCache:
    """A folder of shards; `batches(hook)` can be iterated any number of times (training epochs)."""

    path: Path
    hooks: list[str]
    shards: list[str]
    n_tokens: int

    def batches(self, hook: str) -> _Shards:
        if hook not in self.hooks:
            raise AttributionError(f"the cache at {self.path} has no {hook!r}; it holds {self.hooks}")
        return _Shards(self, hook)

    def tensor(self, hook: str) -> Tensor:
        """Every cached activation of one hook in memory, [n_tokens, d_model] (for small caches)."""
        return torch.cat(list(self.batches(hook)))


class _Shards:
    def __init__(self, cache: ActivationCache, hook: str):
        self.cache, self.hook = cache, hook

    def __iter__(self) -> Iterator[Tensor]:
        for name in self.cache.shards:  # only this hook's tensor: a shard holds every cached hook
            with safe_open(str(self.cache.path / name), "pt") as f:
                yield f.get_tensor(self.hook)


def collect(model, hooks: list[str], token_batches: Iterable[Tensor], path: str | Path, **kw) -> ActivationCache:
    """Run `token_batches` ([batch, seq] ids, each row starting with <bos>) and cache `hooks` under `path`.

    Holds the folder's file lock, so two processes collecting into one folder take turns (the second resumes
    or finds it complete). Keywords: shard_tokens, dtype, outlier, total, progress (see _collect)."""
    with locked(path):
        return _collect(model, hooks, token_batches, path, **kw)


def _collect(
    model,
    hooks: list[str],
    token_batches: Iterable[Tensor],
    path: str | Path,
    *,
    shard_tokens: int = 1 << 17,
    dtype: torch.dtype = torch.bfloat16,
    compute_dtype: torch.dtype | str | None = None,
    outlier: float = OUTLIER,
    total: int | None = None,
    progress: bool = True,
) -> ActivationCache:
    """Run `token_batches` ([batch, seq] ids, each row starting with <bos>) and cache `hooks` under `path`.

    dtype: how activations are stored; compute_dtype: the forward's autocast dtype. None: float32 when
    storing float32 or wider (exact activations were asked for), else chosen by the model's device (see
    attribution.compute)."""
    hooks = sorted({model.hook(h).name for h in hooks}, key=lambda h: model.hooks[h].order)
    if compute_dtype is None and dtype.itemsize >= 4:
        compute_dtype = torch.float32
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(path, hooks)
    done_batches = manifest["batches"]
    buffers: dict[str, list[Tensor]] = {h: [] for h in hooks}
    buffered, seen = 0, done_batches
    bar = tqdm(total=total, desc=f"activations {','.join(hooks)}", unit="batch", disable=not progress)
    for i, ids in enumerate(token_batches):
        bar.update(1)
        if i < done_batches:
            continue  # resuming: this batch is already in a shard
        seen = i + 1
        batch = Batch.from_ids(ids, model.device)
        with torch.no_grad(), model_autocast(model, compute_dtype):
            acts = trace(model, batch, capture=hooks, stop_early=True).acts
        keep = keep_tokens(acts[hooks[-1]], outlier)  # [batch, seq] bool: not <bos>, not a massive-norm token
        for h in hooks:
            buffers[h].append(acts[h][keep].to("cpu", dtype))
        buffered += int(keep.sum())
        if buffered >= shard_tokens:
            _write_shard(path, manifest, buffers, seen)
            buffers, buffered = {h: [] for h in hooks}, 0
    if buffered:
        _write_shard(path, manifest, buffers, seen)
    bar.close()
    manifest["complete"] = True
    write_json(path / MANIFEST, manifest)
    if not manifest["shards"]:
        raise AttributionError("no activations were collected: the token source was empty")
    return ActivationCache(path, hooks, [s["file"] for s in manifest["shards"]], manifest["tokens"])


def cached_activations(model, hooks: list[str], ids: Tensor, name: str, *, progress: bool = True) -> ActivationCache:
    """The activations of `hooks` on token ids [n_seq, seq], collected once and then reused: the cache folder
    is keyed by the model's fingerprint, `name`, the hooks and a hash of the ids (last, for bench/)."""
    hooks = sorted({model.hook(h).name for h in hooks})
    run = dtype_name(run_dtype(model))  # the forward's compute dtype (collect's default below)
    key = f"{slug(name)}-{run}-{digest(hooks)[:8]}-{tensor_digest(ids)[:16]}"
    folder = cache_dir() / "activations" / model_fingerprint(model) / key
    try:
        if cache := open_cache(folder):
            return cache
    except CacheError:
        pass  # reported below, under the lock
    with locked(folder):
        try:
            cache = open_cache(folder)  # another process may have finished it while we waited
        except CacheError as exc:
            warnings.warn(f"{exc} Collecting it again.", stacklevel=2)
            remove(folder)
            cache = None
        return cache or collect(model, hooks, ids.split(32), folder, total=-(-len(ids) // 32), progress=progress)


def open_cache(path: str | Path) -> ActivationCache | None:
    """A complete cache at `path`; None when absent or unfinished; CacheError when a file is corrupt or missing."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        return None
    m = _checked(path, read_json(path / MANIFEST, entry=path))
    if not m["complete"]:
        return None
    return ActivationCache(path, m["hooks"], [s["file"] for s in m["shards"]], m["tokens"])


def _read_manifest(path: Path, hooks: list[str]) -> dict:
    if (path / MANIFEST).exists():
        m = _checked(path, read_json(path / MANIFEST, entry=path))
        if m["hooks"] != hooks:
            raise AttributionError(f"{path} caches {m['hooks']}, not {hooks}; use another folder")
        return m
    return {"hooks": hooks, "batches": 0, "tokens": 0, "shards": [], "complete": False}


def _checked(path: Path, m) -> dict:
    """The manifest `m` of the cache at `path`, once every shard it lists is there at its recorded size."""
    if not isinstance(m, dict) or not {"hooks", "batches", "tokens", "shards", "complete"} <= m.keys():
        raise corrupt(path, f"{MANIFEST} lacks hooks, batches, tokens, shards or complete")
    for s in m["shards"]:
        f = path / s["file"]
        size = f.stat().st_size if f.is_file() else None
        if size is None or size != s.get("bytes", size):
            raise corrupt(path, f"shard {s['file']} is {'missing' if size is None else 'truncated'}")
    return m


def _write_shard(path: Path, manifest: dict, buffers: dict[str, list[Tensor]], batches_done: int) -> None:
    """The shard under a temporary name renamed into place, then the manifest likewise: a kill leaves the
    previous manifest, which does not list the new shard (the next run writes it again)."""
    name = f"shard_{len(manifest['shards']):05d}.safetensors"
    tensors = {h: torch.cat(v).contiguous() for h, v in buffers.items()}
    n = next(iter(tensors.values())).shape[0]
    with atomic_write(path / name, directory=False, lock=False) as tmp:  # collect holds the folder's lock
        save_file(tensors, str(tmp))
    manifest["shards"].append({"file": name, "tokens": n, "bytes": (path / name).stat().st_size})
    manifest["tokens"] += n
    manifest["batches"] = batches_done
    write_json(path / MANIFEST, manifest)
