"""The replacement graph's rows, kept sparse as they are computed: the metric's row, then one row per computed
feature, each every source's direct effect on the row's node. A row is exactly zero on every source that
cannot reach its node (a later position, or a layer at or after the feature's), three quarters of a dense
[rows, sources] matrix on a short prompt (Kobe, every feature: 14.4M nonzero of 56.9M entries), so each batch
of rows is stored as its nonzero entries (int32 source, int32 row, the rows' dtype: float32, or float64 for a
float64 model) as soon as it is computed. Ranking the next rows by influence, the total effect on the metric
and laying the rows out as the Graph's edges read those entries a batch at a time; the dense rows for all
targets are never held, and nothing makes a copy of every entry beyond the edges themselves.
"""

from __future__ import annotations

import torch
from torch import Tensor

SPAN = 1 << 20  # entries read at a time: float64 temporaries of 8 MB


def entry_bounds(kind: Tensor, layer: Tensor, pos: Tensor, width: int, n_layers: int) -> Tensor:
    """[features] the entries a feature's row can have (an upper bound on its nonzeros): the features and
    errors at an earlier layer and a position up to the feature's, and the tokens up to it. kind/layer/pos
    are graphs.replacement.Sources' (0 feature, 1 error, 2 token), features first."""
    tok = kind == 2
    grid = torch.bincount(pos[~tok] * n_layers + layer[~tok], minlength=width * n_layers).view(width, n_layers)
    below = torch.nn.functional.pad(grid.cumsum(0).cumsum(1), (1, 0))[:, :-1]  # [p, l]: pos <= p, layer < l
    tokens = torch.bincount(pos[tok], minlength=width).cumsum(0)  # [p]: tokens at pos <= p
    f = kind == 0
    return below[pos[f], layer[f]] + tokens[pos[f]]


class SparseRows:
    """Rows appended a batch at a time ([k, sources] dense, as _Replacement.rows gives them), held as their
    nonzero entries in row-major order in three arrays: source [e] int32, row [e] int32, value [e] in the rows'
    dtype. The arrays are allocated once at `capacity` entries (the plan's bound, replacement_budget): pages
    never written are never resident, so the bound costs nothing beyond the entries, and the edges are these
    arrays rewritten in place, not a copy of them (the allocator would keep a batch-by-batch copy's freed
    pieces resident beside the edges)."""

    def __init__(self, n_sources: int, capacity: int, dtype: torch.dtype):
        self.n_sources, self.n_rows, self.n = n_sources, 0, 0
        self.src = torch.empty(capacity, dtype=torch.int32)
        self.row = torch.empty(capacity, dtype=torch.int32)
        self.value = torch.empty(capacity, dtype=dtype)
        self.layers: list[Tensor] = []  # per batch, its rows' layers
        self.starts: list[int] = [0]  # row r's entries are [starts[r], starts[r + 1])
        self.abs_sums: list[Tensor] = []  # per batch, its rows' sums of |entries| (float64)

    def add(self, dense: Tensor, layers: Tensor) -> None:
        """Append rows [k, sources] whose nodes sit at `layers` [k] (a feature's model layer; the metric's row
        above every layer): a row's entries are on sources at lower layers only (graphs.replacement)."""
        r, c = dense.nonzero(as_tuple=True)  # row-major, int64 for this batch only
        k = len(r)
        if self.n + k > len(self.src):  # beyond the bound (it holds by causality): grow, a copy
            more = max(self.n + k, 2 * len(self.src))
            for name in ("src", "row", "value"):
                old = getattr(self, name)
                setattr(self, name, torch.cat([old[: self.n], old.new_empty(more - self.n)]))
        self.src[self.n : self.n + k] = c
        self.row[self.n : self.n + k] = r + self.n_rows
        self.value[self.n : self.n + k] = dense[r, c]
        self.starts += (self.n + torch.bincount(r, minlength=len(dense)).cumsum(0)).tolist()
        self.layers.append(layers.to(torch.long))
        self.abs_sums.append(dense.abs().sum(1, dtype=torch.float64))
        self.n += k
        self.n_rows += len(dense)

    def _spans(self, n: int | None = None):
        n = self.n if n is None else n
        return (slice(i, min(i + SPAN, n)) for i in range(0, n, SPAN))

    def _path_sum(self, coef, absolute: bool) -> Tensor:
        """[sources] float64: sum over rows r of c_r |R[r]| (absolute) or c_r R[r], the rows taken from the highest
        layer down, where coef(out, a, b) gives c for rows a..b-1 from `out` so far: a row's own node is at a
        higher layer than every source of its entries, so when its layer's turn comes `out` is final at its
        node. One pass over the entries (the path sum as repeated products would be one pass per layer)."""
        out = torch.zeros(self.n_sources, dtype=torch.float64)
        layer = torch.cat(self.layers)
        order = layer.argsort(descending=True, stable=True).tolist()
        at = layer[order].tolist()
        i = 0
        while i < len(order):
            j = i + 1  # a run: consecutive rows of one layer
            while j < len(order) and order[j] == order[j - 1] + 1 and at[j] == at[i]:
                j += 1
            a, b = order[i], order[j - 1] + 1
            c = coef(out, a, b)  # [b - a] float64
            for e in range(self.starts[a], self.starts[b], SPAN):
                s = slice(e, min(e + SPAN, self.starts[b]))
                v = self.value[s].double()
                v = v.abs() if absolute else v
                out.index_add_(0, self.src[s], c.index_select(0, self.row[s] - a) * v)
            i = j
        return out

    def ranking_influence(self, row_source: Tensor) -> Tensor:
        """Influence on the metric (row 0) of every source through the rows computed so far: circuit-tracer's
        partial influence, i.e. graphs.prune.influence on the rows as edges (source -> the row's node: the
        metric for row 0, else the feature whose row it is). row_source[r] = source index of row r (-1 for
        the metric). A node's shares are its row's |entries| over their sum; sums and products in float64."""
        total = torch.cat(self.abs_sums)
        scale = torch.where(total > 0, 1 / total, torch.zeros_like(total))  # [rows]
        node = row_source.clamp_min(0)

        def coef(inf: Tensor, a: int, b: int) -> Tensor:  # a node's influence, passed on per unit of |entry|
            mine = torch.where(row_source[a:b] >= 0, inf.index_select(0, node[a:b]), torch.ones(()))
            return mine * scale[a:b]

        return self._path_sum(coef, absolute=True)

    def total_effect(self, rows: Tensor, act: Tensor) -> Tensor:
        """[sources] each source's effect on the metric summed over the rows' paths: t_s = R[0, s] + sum over
        feature rows r of (t_r / a_r) R[r, s], a_r the row feature's activation (slope 1 when active); rows[r - 1]
        is row r's source. In float64."""
        coefs = torch.cat([torch.zeros(1, dtype=torch.float64), 1 / act.double()])
        node = torch.cat([torch.zeros(1, dtype=torch.long), rows])

        def coef(total: Tensor, a: int, b: int) -> Tensor:
            t = total.index_select(0, node[a:b]) * coefs[a:b]
            return torch.where(torch.arange(a, b) == 0, torch.ones(()), t)  # the metric's row: 1

        return self._path_sum(coef, absolute=False)

    def edges(self, keep: Tensor, node_of: Tensor, targets: Tensor) -> dict:
        """The entries at kept sources (keep [sources]) as edges node_of[source] -> targets[row] in row-major
        order ({"src", "dst", "weight"}: int32, int32, float32; the rows are gone after). Where every source is
        kept (every feature has its row) the arrays are rewritten in place; otherwise (a capped build's other
        features) the kept entries are copied into edges of the exact size, a slice at a time."""
        src, row, value, n = self.src, self.row, self.value, self.n
        self.src = self.row = self.value = None
        if bool(keep.all()):
            for s in self._spans(n):
                src[s] = node_of.index_select(0, src[s])
                row[s] = targets.index_select(0, row[s])
            return {"src": src[:n], "dst": row[:n], "weight": value[:n].to(torch.float32)}  # float32: rounded once
        counts = [int(keep.index_select(0, src[s]).count_nonzero()) for s in self._spans(n)]
        out = {"src": torch.empty(sum(counts), dtype=torch.int32), "dst": torch.empty(sum(counts), dtype=torch.int32)}
        out["weight"] = torch.empty(sum(counts), dtype=torch.float32)
        at = 0
        for s, k in zip(self._spans(n), counts):
            m = keep.index_select(0, src[s])
            out["src"][at : at + k] = node_of.index_select(0, src[s][m])
            out["dst"][at : at + k] = targets.index_select(0, row[s][m])
            out["weight"][at : at + k] = value[s][m]
            at += k
        return out
