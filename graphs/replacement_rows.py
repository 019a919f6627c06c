"""The replacement graph's rows, read in place: a dense [1 + rows, sources] matrix (the metric's row, then one
row per computed feature, every source's direct effect on it; float32, or float64 for a float64 model), as
circuit-tracer keeps them. Ranking the next rows by influence and laying the rows out as the Graph's edges
each read them a slice of SLICE entries at a time, so neither makes a copy of the whole matrix (float64 or
an int64 index of its nonzeros)."""

from __future__ import annotations

import torch
from torch import Tensor

SLICE = 1 << 21  # entries of the rows read at a time (8 MB of |rows| in float32)


def ranking_influence(rows: Tensor, row_source: Tensor) -> Tensor:
    """Influence on the metric (row 0) of every source through the rows computed so far: circuit-tracer's
    partial influence, i.e. graphs.prune.influence on the rows as edges (source -> the row's node: the metric
    for row 0, else the feature whose row it is). row_source[r] = source index of row r (-1 for the metric).

    A row holds every edge into its node, so a node's shares are its row's |entries| over their sum and a step
    of the path sum is one vector-matrix product. Products in the rows' dtype (float32, or float64 for a
    float64 model: the ranking only orders rows), a slice of rows at a time, summed in float64 over [n]:
    no copy of the rows, float64 or otherwise, beyond one slice."""
    m, n = rows.shape
    node = row_source.clone()
    node[0] = n  # the metric: one node past the sources
    step = max(1, SLICE // max(n, 1))
    parts = [slice(i, min(i + step, m)) for i in range(0, m, step)]
    total = torch.cat([rows[s].abs().sum(1, dtype=torch.float64) for s in parts])  # [m] |row| sums
    scale = torch.where(total > 0, 1 / total, torch.zeros_like(total))
    inf = torch.zeros(n + 1, dtype=torch.float64)
    current = torch.zeros(n + 1, dtype=torch.float64)
    current[n] = 1.0
    for _ in range(n + 1):  # each step moves one layer down; the rows form a DAG
        passed = current[node] * scale  # [m]: what each row's node passes on per unit of |entry|
        current = torch.zeros(n + 1, dtype=torch.float64)
        for s in parts:
            current[:n] += (passed[s].to(rows.dtype) @ rows[s].abs()).double()
        if not bool(current.any()):
            break
        inf += current
    return inf[:n]


def row_edges(A: Tensor, keep: Tensor, node_of: Tensor, targets: Tensor) -> dict:
    """A's nonzero entries at kept sources (keep [sources]) as edges node_of[source] -> targets[row], in row-major
    order. Two passes over slices of rows, counting and then filling tensors of the exact size: no int64 index
    of the whole matrix and no list of pieces to concatenate (which would hold every edge twice)."""
    step = max(1, SLICE // max(A.shape[1], 1))
    parts = [slice(i, min(i + step, len(A))) for i in range(0, len(A), step)]
    counts = [int(((A[s] != 0) & keep).count_nonzero()) for s in parts]
    n = sum(counts)
    out = {"src": torch.empty(n, dtype=torch.int32), "dst": torch.empty(n, dtype=torch.int32)}
    out["weight"] = torch.empty(n, dtype=torch.float32)
    at = 0
    for s, k in zip(parts, counts):
        r, c = ((A[s] != 0) & keep).nonzero(as_tuple=True)  # int64, at most 2 x SLICE entries
        out["src"][at : at + k] = node_of[c]
        out["dst"][at : at + k] = targets[s.start + r]
        out["weight"][at : at + k] = A[s][r, c]  # rounded to float32 once
        at += k
    return out
