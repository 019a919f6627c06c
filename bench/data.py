"""Activations for the SAE benchmarks: real cached residuals of the default model where a cache exists,
else synthetic ones with the same shape and statistics that matter for speed and for the normalisation.

Real ones come from `train_sae`'s activation caches (`~/.cache/attribution/activations/`, layer 9 of
gemma-3-270m: the middle-layer SAE's input). Timings of SAE code depend on shapes, not values, but the
side-by-side comparison with SAELens also measures quality, where real activations are the honest input.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from attribution.models.loading import cache_dir
from attribution.training import open_cache

HOOK = "resid_post.9"
D_IN, D_SAE, K, BATCH = 640, 8192, 32, 4096  # the middle-layer SAE's shape and training batch


def find_cache(hook: str = HOOK, d_in: int = D_IN):
    """A complete activation cache holding `hook` at width `d_in` (the default model's, not a test model's),
    preferring caches of fewer hooks (less to read), then more tokens; or None."""
    root = cache_dir() / "activations"  # <model fingerprint>/<name>-<hooks hash>-<ids hash>
    caches = [open_cache(p) for p in sorted(root.glob("*/*")) if p.is_dir()] if root.is_dir() else []
    caches = [c for c in caches if c is not None and hook in c.hooks and _width(c, hook) == d_in]
    return min(caches, key=lambda c: (len(c.hooks), -c.n_tokens), default=None)


def _width(cache, hook: str) -> int:
    with safe_open(str(Path(cache.path) / cache.shards[0]), "pt") as f:
        return f.get_slice(hook).get_shape()[-1]


def load(cache, hook: str = HOOK) -> Tensor:
    """Every cached activation of `hook` (the cache reads only that tensor from each shard)."""
    return cache.tensor(hook)


def synthetic(n: int, d: int = D_IN, n_true: int = 4 * D_SAE, active: int = 48, seed: int = 0) -> Tensor:
    """Sparse sums of unit directions on top of a large shared offset, with a residual-like norm (~5,000).

    x = m + sum_i a_i t_i + noise: `active` of `n_true` directions per token, magnitudes heavy-tailed.
    The large mean is what makes the scalar normalisation and a centred encoder matter on real data.
    """
    g = torch.Generator().manual_seed(seed)
    true = torch.nn.functional.normalize(torch.randn(n_true, d, generator=g), dim=-1)
    mean = torch.randn(d, generator=g) * 150
    out = torch.empty(n, d)
    for start in range(0, n, 8192):  # chunked: a dense [n, n_true] code would not fit in memory
        m = min(8192, n - start)
        idx = torch.randint(0, n_true, (m, active), generator=g)
        mags = torch.empty(m, active).exponential_(1.0, generator=g) * 400
        out[start : start + m] = mean + torch.einsum("ma,mad->md", mags, true[idx])
    return out + 30 * torch.randn(n, d, generator=g)


def activations(n: int, hook: str = HOOK) -> tuple[Tensor, str]:
    """`n` activations [n, d_in] (float32) and where they came from; real ones are repeated if too few."""
    cache = find_cache(hook)
    if cache is None:
        return synthetic(n), "synthetic (no activation cache found)"
    x = load(cache, hook).float()
    src = f"cached {hook} activations of the default model ({cache.n_tokens:,} tokens, {Path(cache.path).name})"
    if len(x) < n:
        x = x.repeat(-(-n // len(x)), 1)
    return x[:n].contiguous(), src
