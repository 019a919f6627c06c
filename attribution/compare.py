"""Agreement between attribution (the linear estimate) and ablation (the truth), on the same nodes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attribution.errors import AttributionError


@dataclass
class Agreement:
    n: int
    pearson: float
    spearman: float
    top_k: dict[int, float]  # share of the top-k nodes by |attribution| that are top-k by |effect|
    sign_agreement: float  # share of nodes whose estimate has the sign of the real effect
    relative_error: float  # sum |attr - effect| / sum |effect|

    def _repr_html_(self) -> str:
        """A small table in a notebook (drawn by pages, through attribution.display)."""
        from attribution import display

        return display.notebook("agreement", self)

    def __str__(self) -> str:
        tk = ", ".join(f"top-{k} {v:.0%}" for k, v in self.top_k.items())
        return (
            f"attribution vs ablation over {self.n} nodes: Pearson r = {self.pearson:.3f}, Spearman rho = "
            f"{self.spearman:.3f}, {tk}, same sign {self.sign_agreement:.0%}, "
            f"relative error {self.relative_error:.2f}"
        )


def compare(attr, abl, ks: tuple[int, ...] = (10, 20, 50)) -> Agreement:
    """Compare estimates in `attr` with real effects in `abl` over the nodes that were ablated."""
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise AttributionError(f"ks must be whole numbers >= 1 (top-k overlaps to report), got {ks!r}")
    index = {k: i for i, k in enumerate(attr.node_keys())}
    missing = [k for k in abl.node_keys() if k not in index]
    if missing:
        raise AttributionError(
            f"{len(missing)} ablated node(s) have no attribution (first: {missing[0]}); "
            "ablate nodes taken from the same attribution run and prompt(s)"
        )
    est = np.array([float(attr.value[index[k]]) for k in abl.node_keys()])
    true = abl.value.detach().cpu().numpy().astype(float)
    if len(true) < 2:
        raise AttributionError("need at least two ablated nodes to compute a correlation")
    top = {k: _overlap(est, true, k) for k in ks if k <= len(true)}
    denom = np.abs(true).sum()
    return Agreement(
        len(true),
        pearson(est, true),
        spearman(est, true),
        top,
        float(np.mean(np.sign(est) == np.sign(true))),
        float(np.abs(est - true).sum() / denom) if denom > 0 else float("nan"),
    )


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; NaN where either side is constant (no correlation is defined), never a warning."""
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the ranks, ties averaged."""
    return pearson(rank(a), rank(b))


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as Spearman's rho needs)."""
    order = x.argsort(kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def _overlap(est: np.ndarray, true: np.ndarray, k: int) -> float:
    a = set(np.argsort(-np.abs(est), kind="stable")[:k].tolist())
    b = set(np.argsort(-np.abs(true), kind="stable")[:k].tolist())
    return len(a & b) / k
