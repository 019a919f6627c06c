"""How many feature rows and target rows per backward a replacement graph can afford, from the memory it has.

A build holds, beside the clean pass: the replacement model's forward with its graph (one row: every batch of
target rows shares it), the source vectors laid out for the dot products, a batch's backward working set
(the gradients at every probe, per row, and the batch's dense rows while they are made sparse), and the rows,
one per computed feature, kept as their nonzero entries (graphs.replacement_rows: int32 source, int32 row,
the rows' dtype), which become the Graph's edges batch by batch and then its shares and mask (ENTRY_BYTES an
edge). A row's entries are bounded by the sources that can reach its feature (replacement_rows.entry_bounds:
earlier layers, positions up to the feature's; on the Kobe prompt the bound is the nonzeros to one entry in
14.4M), so the estimate counts the bounds of the rows taken, largest first where the rows are capped (the
ranking picks them later). With default arguments the build takes the largest batch
(at most MAX_BATCH) that fits in BATCH_SHARE of the budget and then as many feature rows as fit, most
influential first (circuit-tracer caps rows by estimated influence the same way); an explicit value that
cannot fit is an error that names the value that would.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from attribution import memory
from graphs.graph_nodes import GraphError

MAX_BATCH = 64  # target rows per backward when the caller does not say (more buys little: the rows dominate)
BATCH_SHARE = 0.25  # of what the forward and the vectors leave, at most this for a batch's backward
ENTRY_BYTES = 17  # a Graph's edge: int32 source, int32 target, float32 weight and share, a bool mask
SPARSIFY_BYTES = 1 + 16 + 12  # per entry of a batch's dense rows: its != 0 mask, nonzero()'s int64 index, the entry


class Plan(NamedTuple):
    """What a build computes and what that costs: `rows` feature rows (of `features` active), `batch` target
    rows per backward, and the estimates behind them (bytes)."""

    rows: int
    batch: int
    features: int
    chosen: bool  # rows or batch chosen here (the caller left them to the build)
    fixed_bytes: int  # the shared forward and the source vectors
    batch_bytes: int  # one backward of `batch` rows
    entries: int  # the metric's row and `rows` feature rows: at most this many edges (entry_bounds)
    entry_bytes: int  # an entry held, as a row's entry and then as an edge

    @property
    def total_bytes(self) -> int:
        """The whole build's estimate: the fixed parts, one batch's backward, the rows' entries."""
        return self.fixed_bytes + self.batch_bytes + self.entries * self.entry_bytes

    def describe(self, width: int) -> str:
        capped = f"{self.rows:,} of {self.features:,} active features" if self.rows < self.features else (
            f"all {self.features:,} active features")  # fmt: skip
        return (
            f"replacement graph on {width:,} tokens: rows for {capped}, most influential first, {self.batch} per "
            f"backward (~{memory.size(self.total_bytes)} of {memory.size(memory.budget())} available)"
        )


def plan(model, width: int, n_sources: int, bounds: Tensor, kmax: int, store_bytes: int,
         max_feature_nodes: int | None, batch_size: int | None) -> Plan:  # fmt: skip
    """The rows and batch a build on `width` tokens can afford (see the module's docstring); raises
    memory.OutOfMemoryError, naming what to lower, when the request (or not even the metric's row) fits.
    bounds: [active features] entries each feature's row can have (replacement_rows.entry_bounds)."""
    size, n_features = model.dtype.itemsize, len(bounds)
    forward = memory.forward_bytes(model, 1, width, model.n_layers, grad=True, eager=True)  # engine.eager_attention
    vectors = model.n_layers * width * (kmax + 1) * model.d_model * size  # padded features + errors, per layer
    fixed = forward + vectors
    # per target row: the gradients at every probe (embedding + each MLP output), the backward's working set, its
    # dense row while it is made sparse
    grads = (model.n_layers + 1) * model.d_model * size
    working = memory.token_bytes(model, width, grad=False, eager=False)  # a block's working set, per token
    per_batch_row = width * (grads + working) + n_sources * (store_bytes + SPARSIFY_BYTES)
    entry = max(ENTRY_BYTES, 8 + store_bytes)  # the larger of a row's entry and the graph's edge
    largest = torch.cat([torch.zeros(1, dtype=torch.long), bounds.sort(descending=True).values.cumsum(0)])
    where = f"a replacement graph on {width:,} tokens"
    shorter = "use a shorter prompt (the forward and every row grow with its length)."
    memory.require(fixed + per_batch_row + n_sources * entry, where, shorter)
    if batch_size is None:
        spare = memory.budget() - fixed - n_sources * entry
        batch = max(1, min(MAX_BATCH, int(spare * BATCH_SHARE) // per_batch_row))
    else:
        batch = batch_size
    room = (memory.budget() - fixed - batch * per_batch_row) // entry - n_sources  # entries beside the metric's row
    rows_fit = int(torch.searchsorted(largest, torch.tensor(max(room, -1)), right=True)) - 1  # -1: not even that
    rows = max(0, min(n_features, rows_fit if max_feature_nodes is None else max_feature_nodes))
    chosen = (max_feature_nodes is None and rows < n_features) or batch_size is None
    out = Plan(rows, batch, n_features, chosen, fixed, batch * per_batch_row, n_sources + int(largest[rows]), entry)
    if max_feature_nodes is not None and rows > rows_fit:
        memory.require(
            out.total_bytes,
            f"{where} with {rows:,} feature rows (max_feature_nodes) and {batch} per backward",
            f"lower max_feature_nodes (~{max(rows_fit, 0):,} fit), or leave it None to take what fits.",
        )
    if batch_size is not None:
        memory.require(out.total_bytes, f"{where} with batch_size={batch}",
                       "lower batch_size (max_rows in build_graph), or leave it None to take what fits.")  # fmt: skip
    return out


def check_request(max_feature_nodes, batch_size) -> None:
    if (batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1)) or (
        max_feature_nodes is not None and (not isinstance(max_feature_nodes, int) or max_feature_nodes < 0)
    ):
        raise GraphError(
            f"batch_size must be an int >= 1 and max_feature_nodes an int >= 0 (or None: the build takes what "
            f"fits in memory), got {batch_size!r}, {max_feature_nodes!r}"
        )
