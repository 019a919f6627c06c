"""Nodes (what users attribute to and intervene on) and the result table that carries them.

A node is a feature (hook, position, feature) or an error term (hook, position, feature=None) of one
prompt. Positions are the prompt's own token indices (0 is <bos>), whatever the batch padding was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from attribution.errors import AttributionError

ORDERS = ("abs", "pos", "neg")


class Node(NamedTuple):
    hook: str
    position: int
    token: str
    feature: int | None  # None: the SAE's error term at (hook, position)
    activation: float  # feature activation, or ||e|| for an error node
    gradient: float  # d(metric)/d(activation); for an error node, along e's direction
    attribution: float  # estimated metric(clean) - metric(node ablated)
    prompt: int = 0

    @property
    def key(self) -> tuple[int, str, int, int]:
        return node_key(self.prompt, self.hook, self.position, self.feature)

    @property
    def is_error(self) -> bool:
        return self.feature is None

    def __str__(self):
        what = "error" if self.is_error else f"f{self.feature}"
        return (
            f"{self.hook:>13} pos {self.position:>3} {self.token!r:>14} {what:>8}  "
            f"act {self.activation:9.3f}  grad {self.gradient:+9.4f}  attr {self.attribution:+8.4f}"
        )


def node_key(prompt: int, hook: str, position: int, feature: int | None) -> tuple[int, str, int, int]:
    return (int(prompt), hook, int(position), -1 if feature is None else int(feature))


def as_key(node) -> tuple[int, str, int, int]:
    """Key of a Node, or of a plain tuple (hook, position, feature[, prompt]), checked for types."""
    if isinstance(node, Node):
        return node.key
    if not isinstance(node, (tuple, list)) or not 3 <= len(node) <= 4:
        raise AttributionError(
            f"cannot read node {node!r}: give a Node (e.g. from attribute(...).top()) or a tuple "
            "(hook, position, feature or None for the error term[, prompt])"
        )
    hook, position, feature, *rest = node
    prompt = rest[0] if rest else 0
    checks = [("position", position), ("prompt", prompt)] + ([("feature", feature)] if feature is not None else [])
    for name, v in checks:
        if not is_int(v):
            raise AttributionError(f"node {tuple(node)!r}: {name} must be an integer, got {v!r}")
    if feature is not None and int(feature) < 0:
        # -1 is how the tables store error nodes; a user's negative index would silently become one
        raise AttributionError(
            f"node {tuple(node)!r}: feature {int(feature)} is negative; give a feature index >= 0, "
            "or None for the error term"
        )
    return node_key(prompt, hook, position, feature)


def is_int(v) -> bool:
    """True for Python/numpy ints and integer 0-d tensors (not bools or floats: 1.5 would be truncated)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, Tensor):
        return v.dim() == 0 and not v.is_floating_point() and v.dtype != torch.bool
    try:
        v.__index__()
    except (AttributeError, TypeError):
        return False
    return True


@dataclass
class NodeTable:
    """Columnar node table: one row per (prompt, hook, position, feature|error). Feature -1 = error."""

    hooks: list[str]
    tokens: list[list[str]]  # each prompt's tokens
    prompt: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # [n]
    hook_idx: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # [n]
    position: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # [n]
    feature: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # [n], -1 = error
    activation: Tensor = field(default_factory=lambda: torch.zeros(0))  # [n]
    gradient: Tensor = field(default_factory=lambda: torch.zeros(0))  # [n]
    value: Tensor = field(default_factory=lambda: torch.zeros(0))  # [n] attribution or ablation effect

    def __len__(self) -> int:
        return len(self.value)

    def node(self, i: int) -> Node:
        p, h, pos, f = (
            int(self.prompt[i]),
            int(self.hook_idx[i]),
            int(self.position[i]),
            int(self.feature[i]),
        )
        return Node(
            self.hooks[h],
            pos,
            self.tokens[p][pos],
            None if f < 0 else f,
            float(self.activation[i]),
            float(self.gradient[i]),
            float(self.value[i]),
            p,
        )

    def node_keys(self) -> list[tuple[int, str, int, int]]:
        return [
            (int(p), self.hooks[int(h)], int(s), int(f))
            for p, h, s, f in zip(self.prompt, self.hook_idx, self.position, self.feature)
        ]

    def order(self, k: int | None = None, *, prompt: int | None = 0, errors: bool = True, by: str = "abs") -> Tensor:
        """Row indices sorted by |value| (by="abs"), value (by="pos") or -value (by="neg")."""
        self._check_order(k, prompt, by)
        keep = torch.ones(len(self), dtype=torch.bool)
        if prompt is not None:
            keep &= self.prompt == prompt
        if not errors:
            keep &= self.feature >= 0
        idx = keep.nonzero().squeeze(-1)
        score = {"abs": self.value.abs(), "pos": self.value, "neg": -self.value}[by][idx]
        order = idx[score.argsort(descending=True, stable=True)]
        return order if k is None else order[:k]

    def _check_order(self, k, prompt, by) -> None:
        if k is not None and (not is_int(k) or k < 1):
            raise AttributionError(f"k must be a whole number >= 1 (how many nodes), or None for all; got {k!r}")
        if by not in ORDERS:
            raise AttributionError(f"by={by!r}: choose 'abs' (|value|), 'pos' (largest first) or 'neg' (smallest)")
        if prompt is not None and (not is_int(prompt) or not 0 <= prompt < len(self.tokens)):
            raise AttributionError(
                f"prompt={prompt!r} is not a prompt of this result: it has {len(self.tokens)} prompt(s), "
                f"numbered 0..{len(self.tokens) - 1}; pass prompt=None for all"
            )

    def _repr_html_(self) -> str:
        """The top nodes as a table in a notebook (drawn by pages, through attribution.display)."""
        from attribution import display

        return display.notebook("node_table", self)

    def top_values(self, k: int | None = 10, **kw) -> Tensor:
        """The values of `top(k, **kw)`, as a tensor in the same order."""
        return self.value[self.order(k, **kw)]

    def top(self, k: int | None = 10, *, prompt: int | None = 0, errors: bool = True, by: str = "abs") -> list[Node]:
        return [self.node(int(i)) for i in self.order(k, prompt=prompt, errors=errors, by=by)]

    def records(self) -> list[dict]:
        return [self.node(i)._asdict() for i in range(len(self))]
