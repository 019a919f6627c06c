"""Up-front memory estimates: a request that cannot fit fails before any work, naming the argument that
lowers it, and one that fits only in pieces is split into rows that do.

The estimates are deliberately simple (bytes per token per transformer block, measured on gemma-3-270m at
2,048 tokens and scaled by the model's widths) and err high. The budget is the memory available now
(psutil, else /proc/meminfo) times `HEADROOM`; `limit(gib)` or $ATTRIBUTION_MEMORY_GIB overrides it, so
a test can trigger the error on a tiny model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from attribution.errors import AttributionError

GiB = 2**30
HEADROOM = 0.7  # share of the available memory a request may plan to use (allocator slack, other work)
ENV = "ATTRIBUTION_MEMORY_GIB"
_limit: list[float] = []


class OutOfMemoryError(AttributionError, MemoryError):
    """A request whose up-front estimate exceeds the memory available; the message names what lowers it."""


@contextmanager
def limit(gib: float) -> Iterator[None]:
    """Plan as if only `gib` GiB were available (tests, or to leave room for other jobs)."""
    _limit.append(float(gib))
    try:
        yield
    finally:
        _limit.pop()


def available() -> int:
    """Bytes available now: the innermost `limit`, else $ATTRIBUTION_MEMORY_GIB, else the OS's figure."""
    if _limit:
        return int(_limit[-1] * GiB)
    if os.environ.get(ENV):
        return int(float(os.environ[ENV]) * GiB)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return 2**62  # unknown: never refuse


def budget() -> int:
    """Bytes a request may plan to use."""
    return int(available() * HEADROOM)


def _widths(model) -> tuple[int, int, int, int, bool]:
    cfg = model.hf.config
    d = model.d_model
    ffn = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    q = heads * (getattr(cfg, "head_dim", None) or d // heads)
    eager = getattr(cfg, "_attn_implementation", "eager") == "eager"  # eager keeps [heads, pos, pos] scores
    return d, ffn, heads, q, eager


def token_bytes(model, pos: int, grad: bool, eager: bool | None = None) -> int:
    """Bytes per row and token: what one block keeps for the backward (grad), or its peak working set
    (eager: attention keeps its [heads, pos, pos] pattern; None: as the model is configured)."""
    d, ffn, heads, q, configured = _widths(model)
    eager = configured if eager is None else eager
    size = model.dtype.itemsize if hasattr(model.dtype, "itemsize") else 4
    if grad:  # measured: 190 MB per row and block at 2,048 tokens on gemma-3-270m = 12 d + 6 ffn + 4 q floats
        n = 12 * d + 6 * ffn + 4 * q + (2 * heads * pos if eager else 0)
    else:  # measured: 88 MB per row at 2,048 tokens (the largest block's working set; nothing is kept)
        n = 4 * d + 4 * ffn + (2 * heads * pos if eager else 0)
    return n * size


def forward_bytes(model, rows: int, pos: int, blocks: int, grad: bool, eager: bool | None = None) -> int:
    """A forward of `rows` x `pos` tokens through `blocks` blocks, with its backward kept when `grad`."""
    per = token_bytes(model, pos, grad, eager) * pos * rows
    return per * max(1, blocks) if grad else per


def size(n: float) -> str:
    """Bytes for a reader: GiB, or MiB / KiB when small."""
    if n >= 2**30:
        return f"{n / GiB:.1f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / 2**10:.0f} KiB"


def require(need: int, what: str, fix: str) -> None:
    """Raise OutOfMemoryError before any work when `need` bytes exceed the budget."""
    have = budget()
    if need > have:
        raise OutOfMemoryError(
            f"{what} needs ~{size(need)}, {size(have)} available "
            f"({HEADROOM:.0%} of the free memory, or the `attribution.memory.limit` / ${ENV} override); {fix}"
        )


def rows_that_fit(per_row: int, fixed: int = 0) -> int:
    """How many rows of `per_row` bytes fit beside `fixed` bytes (0 when not even one does)."""
    return max(0, (budget() - fixed) // max(1, per_row))


def chunk_rows(
    requested: int | None,
    per_row: int,
    fixed: int,
    *,
    what: str,
    arg: str,
    most: int,
    least: int = 1,
    smaller: str = "",
):
    """Rows per chunk: `requested` when given (an error naming `arg` if it cannot fit), else as many as fit,
    at most `most`; an error when not even `least` rows fit (`smaller`: what else lowers `least`)."""
    fit = rows_that_fit(per_row, fixed)
    shorter = f"{smaller}use a shorter prompt (the cost grows with its length) or fewer SAEs."
    if requested is not None:
        fix = f"lower `{arg}` (~{fit} fit)." if fit >= least else shorter
        require(fixed + requested * per_row, f"{what} with {arg}{requested}", fix)
        return requested
    require(fixed + least * per_row, what, shorter)
    return max(least, min(most, fit))
