"""A graph's edges split by attention head, as data (graphs.heads computes it): per edge the part no head
carries, the top heads' parts and the other heads' sum. Kept apart from graphs.heads so that Graph can hold,
save and load it without importing the model side."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from graphs.graph_nodes import GraphError


@dataclass
class HeadParts:
    """Edges split by head (see the module docstring), for `edge` (indices into the graph's full edge
    arrays src/dst/weight): weight = direct + sum of value[:, :k] + rest, up to rounding (`gap`)."""

    edge: Tensor  # [m] int64, index of the edge in graph.src / dst / weight
    direct: Tensor  # [m] float32, the part no head carries (residual stream and skip paths)
    layer: Tensor  # [m, top] int16, model layer of the top heads (-1 where an edge has fewer)
    head: Tensor  # [m, top] int16, head index within its layer (-1 pad)
    value: Tensor  # [m, top] float32, their parts, largest |part| first (0 pad)
    rest: Tensor  # [m] float32, the sum of every other head's part
    n_heads: int  # heads per layer
    gap: float = 0.0  # max |weight - (direct + heads + rest)| / max |weight|: the two computations' rounding

    def __post_init__(self):
        self.edge = self.edge.to(torch.int64)
        self.layer, self.head = self.layer.to(torch.int16), self.head.to(torch.int16)
        self.direct, self.value, self.rest = (x.to(torch.float32) for x in (self.direct, self.value, self.rest))
        n = len(self.edge)
        if not (len(self.direct) == len(self.rest) == n and self.layer.shape == self.head.shape == self.value.shape):
            raise GraphError("HeadParts: edge, direct and rest need one entry per edge, layer/head/value one row each")

    @property
    def top(self) -> int:
        return self.value.shape[1]

    def lookup(self) -> dict[int, int]:
        """edge index -> row."""
        return {int(e): i for i, e in enumerate(self.edge.tolist())}

    def row(self, i: int) -> dict:
        """Row i as plain data: {"direct", "heads": [[layer, head, part], ...], "rest"}."""
        heads = [
            [int(a), int(b), float(v)]
            for a, b, v in zip(self.layer[i].tolist(), self.head[i].tolist(), self.value[i].tolist())
            if a >= 0 and v != 0  # a head with no part carries nothing (no attention between s and t)
        ]
        return {"direct": float(self.direct[i]), "heads": heads, "rest": float(self.rest[i])}

    def tensors(self) -> dict[str, Tensor]:
        """For Graph.save (edges.safetensors, keys prefixed "heads.")."""
        names = ("edge", "direct", "layer", "head", "value", "rest")
        return {f"heads.{k}": getattr(self, k).contiguous() for k in names}

    @classmethod
    def from_saved(cls, tensors: dict, meta: dict) -> HeadParts:
        return cls(**{k[len("heads.") :]: v for k, v in tensors.items()}, **meta)

    def trimmed(self, top: int) -> HeadParts:
        """The same split keeping only the `top` largest heads per edge (the others added to rest)."""
        if top >= self.top:
            return self
        rest = self.rest.double() + self.value[:, top:].double().sum(1)
        cut = (self.layer[:, :top], self.head[:, :top], self.value[:, :top])
        return HeadParts(self.edge, self.direct, *cut, rest, self.n_heads, self.gap)

    def kept(self, graph) -> list[dict | None]:
        """For each of graph.edges (the kept edges, in order) its row (see row), or None where it has none."""
        at = self.lookup()
        return [self.row(at[e]) if e in at else None for e in graph.edge_mask.nonzero().squeeze(-1).tolist()]

    def meta(self) -> dict:
        return {"n_heads": self.n_heads, "gap": self.gap}
