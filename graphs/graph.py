"""The Graph: nodes, sparse edges, pruning, checks by real ablation, groups, and exports.

The full (candidate) graph is kept; `prune` sets which part is shown and checked, in place, so it can be
called again with other thresholds. `copy()` gives an independent graph when both views are wanted.
"""

from __future__ import annotations

import copy as _copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from graphs import check as _check
from graphs import groups as _groups
from graphs.nodes import KINDS, GraphError, GraphNode
from graphs.prune import cumulative, influence, prune_masks, shares

RANKS = ("influence", "attribution")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    weight: float  # direct effect of source on target's pre-activation (metric units into errors and the metric)
    share: float  # |weight| / sum of |weights| into the target in the full graph


class Graph:
    """A prompt's feature graph. Build it with graphs.build_graph; see the package docstring."""

    def __init__(self, *, model, saes, prompt, metric, batch, clean, nodes, edges, labeler, info):
        self.model, self.saes, self.prompt, self.metric = model, saes, prompt, metric
        self.batch, self.clean, self.labeler, self.info = batch, clean, labeler, info
        self.full_nodes: list[GraphNode] = nodes
        self._index = {n.id: i for i, n in enumerate(nodes)}
        self.src, self.dst, self.weight = edges  # [E] long, [E] long, [E] float64: the full graph's edges
        n = len(nodes)
        self.metric_index = n - 1
        self.share = shares(self.dst, self.weight, n)  # [E]
        inf = influence(self.src, self.dst, self.share, n, self.metric_index)  # [n]
        inner = torch.tensor([x.kind in ("feature", "error") for x in nodes])
        cum = cumulative(inf, inner)
        for x, a, c in zip(nodes, inf.tolist(), cum.tolist()):
            x.influence, x.cumulative = a, c
        nodes[-1].influence = 1.0
        self.node_mask = torch.ones(n, dtype=torch.bool)  # [n] kept nodes
        self.edge_mask = torch.ones(len(self.src), dtype=torch.bool)  # [E] kept edges
        self.pruning: dict | None = None
        self.groups: dict[str, list[str]] = {}
        self._check_cache: dict = {}

    # --- views --------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[GraphNode]:
        """The kept nodes (all of them before pruning), tokens first, the metric last."""
        return [x for x, k in zip(self.full_nodes, self.node_mask.tolist()) if k]

    @property
    def edges(self) -> list[Edge]:
        """The kept edges, as (source id, target id, weight, share)."""
        ids = [x.id for x in self.full_nodes]
        m = self.edge_mask
        cols = (self.src[m].tolist(), self.dst[m].tolist(), self.weight[m].tolist(), self.share[m].tolist())
        return [Edge(ids[s], ids[d], w, a) for s, d, w, a in zip(*cols)]

    @property
    def metric_value(self) -> float:
        return self.clean.metric

    @property
    def hooks(self) -> list[str]:
        return list(self.saes)

    @property
    def tokens(self) -> list[str]:
        return self.batch.tokens[0]

    def node(self, node_id: str) -> GraphNode:
        try:
            return self.full_nodes[self._index[node_id]]
        except KeyError:
            raise GraphError(
                f"no node {node_id!r} in this graph; ids look like 'resid_post.9:5:f123', 'resid_post.9:5:err', "
                "'tok:5', 'metric' (see graph.node_ids())"
            ) from None

    def node_ids(self, full: bool = False) -> list[str]:
        return [x.id for x in (self.full_nodes if full else self.nodes)]

    def kept(self, node_id: str) -> bool:
        self.node(node_id)
        return bool(self.node_mask[self._index[node_id]])

    def top(self, k: int | None = 10, kind: str | None = "feature") -> list[GraphNode]:
        """Kept nodes by influence (of one kind, or all but tokens and the metric with kind=None)."""
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise GraphError(f"k must be a whole number >= 1 (how many nodes), or None for all; got {k!r}")
        if kind is not None and kind not in KINDS:
            raise GraphError(f"unknown node kind {kind!r}; choose one of {KINDS}, or None for features and errors")
        pool = [x for x in self.nodes if (x.kind == kind if kind else x.kind in ("feature", "error"))]
        return sorted(pool, key=lambda x: -x.influence)[:k]

    def __repr__(self) -> str:
        kinds = [x.kind for x in self.nodes]
        return (
            f"Graph({self.prompt!r}, metric {self.metric_value:+.4f}: {kinds.count('feature')} features, "
            f"{kinds.count('error')} error nodes, {kinds.count('token')} tokens, {int(self.edge_mask.sum())} edges"
            f"{', pruned' if self.pruning else ''})"
        )

    def __str__(self) -> str:
        return "\n".join([repr(self), *(str(x) for x in self.top(15, kind=None))])

    def copy(self) -> Graph:
        """An independent copy (nodes, masks, groups); the model and SAEs are shared."""
        new = _copy.copy(self)
        new.full_nodes = [_copy.copy(x) for x in self.full_nodes]
        new.node_mask, new.edge_mask = self.node_mask.clone(), self.edge_mask.clone()
        new.groups = {k: list(v) for k, v in self.groups.items()}
        new._check_cache = {}
        return new

    # --- pruning ------------------------------------------------------------------------------
    def prune(
        self,
        node_threshold: float = 0.8,
        edge_threshold: float = 0.98,
        *,
        max_feature_nodes: int | None = None,
        max_nodes: int | None = None,
        rank: str = "influence",
    ) -> Graph:
        """Keep the nodes and edges carrying node_threshold / edge_threshold of the influence on the metric.

        In place, always starting from the full graph; returns self. Tokens and the metric always stay;
        max_feature_nodes caps feature nodes, max_nodes features + error nodes (see graphs.prune).
        rank: what orders the nodes, "influence" (circuit-tracer: shares of |edge weights| along every path)
            or "attribution" (|activation x gradient of the metric|, the total-effect estimate that
            sparse feature circuits threshold); node_threshold is then a share of that score.
        """
        if rank not in RANKS:
            raise GraphError(f"unknown rank {rank!r}; choose one of {RANKS}")
        for name, v in (("max_feature_nodes", max_feature_nodes), ("max_nodes", max_nodes)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise GraphError(f"{name} must be a whole number of nodes or None, got {v!r}")
        key = (lambda x: x.influence) if rank == "influence" else (lambda x: abs(x.attribution))
        self.node_mask, self.edge_mask = prune_masks(
            [x.kind for x in self.full_nodes],
            self.src,
            self.dst,
            self.weight,
            torch.tensor([key(x) for x in self.full_nodes], dtype=torch.float64),
            self.metric_index,
            node_threshold=node_threshold,
            edge_threshold=edge_threshold,
            max_feature_nodes=max_feature_nodes,
            max_nodes=max_nodes,
        )
        self.pruning = {
            "node_threshold": node_threshold,
            "edge_threshold": edge_threshold,
            "max_feature_nodes": max_feature_nodes,
            "max_nodes": max_nodes,
            "rank": rank,
        }
        self._check_cache = {}
        return self

    def unprune(self) -> Graph:
        """Back to the full candidate graph (in place); returns self."""
        self.node_mask[:] = True
        self.edge_mask[:] = True
        self.pruning, self._check_cache = None, {}
        return self

    # --- checks by real ablation ----------------------------------------------------------------
    def check(self, mode: str = "zero", errors: str = "keep", reference: str | list[str] | None = None):
        """m(model), m(empty), m(graph), m(complement) in one batched forward -> graphs.check.Check.

        mode: ablated nodes are set to "zero" (a sparse feature's off state; the default) or their "mean" over
            the non-<bos> tokens of `reference` prompts (default: this prompt's own, a small sample: pass many
            prompts for a meaningful mean).
        errors: error nodes outside the evaluated set are "keep"-t (never ablated) or "ablate"-d too.
        """
        _check.check_mode(mode, errors)
        key = (mode, errors, reference if not isinstance(reference, list) else tuple(reference))
        if key not in self._check_cache:
            values = self._values(mode, reference)
            kept_f, kept_e = self._masks(self.nodes)
            all_f, all_e = self._masks(self.full_nodes, everything=True)
            rows = [{}, {}, {}, {}]  # model, empty, graph, complement
            for h in self.hooks:
                active, valid = all_f[h], all_e[h]  # clean-active features [pos, d_sae] / node positions [pos]
                graph_f, graph_e = kept_f[h], kept_e[h]
                if errors == "keep":
                    valid = torch.zeros_like(valid)  # no error node is ever ablated
                rows[0][h] = _check.RowEdit(torch.ones_like(active), torch.ones_like(valid))
                rows[1][h] = _check.RowEdit(~active, ~valid)
                rows[2][h] = _check.RowEdit(~(active & ~graph_f), ~(valid & ~graph_e))
                rows[3][h] = _check.RowEdit(~(active & graph_f), ~(valid & graph_e))
            m = _check.run_rows(self.model, self.saes, self.batch, self.metric, rows, values).tolist()
            self._check_cache[key] = _check.Check(mode, errors, *m)
        return self._check_cache[key]

    def check_layers(self, mode: str = "zero", reference=None) -> list[_check.LayerCheck]:
        """Each SAE layer alone (errors kept, other layers untouched), in one batched forward: how much of the
        metric its features carry and how much of that the graph keeps there. See graphs.check.LayerCheck."""
        _check.check_mode(mode)
        values = self._values(mode, reference)
        kept_f, _ = self._masks(self.nodes)
        all_f, all_e = self._masks(self.full_nodes, everything=True)
        rows: list[dict] = [{}]  # row 0: nothing ablated
        for h in self.hooks:
            keep_e = torch.ones_like(all_e[h])
            rows.append({h: _check.RowEdit(~all_f[h], keep_e)})
            rows.append({h: _check.RowEdit(~(all_f[h] & ~kept_f[h]), keep_e.clone())})
        m = _check.run_rows(self.model, self.saes, self.batch, self.metric, rows, values).tolist()
        return [_check.LayerCheck(h, mode, m[0], m[1 + 2 * i], m[2 + 2 * i]) for i, h in enumerate(self.hooks)]

    def faithfulness(self, mode: str = "zero", errors: str = "keep", reference=None) -> float:
        """(m(graph) - m(empty)) / (m(model) - m(empty)) by real ablation; see check()."""
        return self.check(mode, errors, reference).faithfulness

    def completeness(self, mode: str = "zero", errors: str = "keep", reference=None) -> float:
        """1 - (m(complement) - m(empty)) / (m(model) - m(empty)) by real ablation; see check()."""
        return self.check(mode, errors, reference).completeness

    def _values(self, mode: str, reference):
        batch = self.batch if reference is None else self.model.tokenize(reference)
        return _check.ablation_values(self.model, self.saes, batch, mode)

    def _masks(self, nodes, everything: bool = False) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """hook -> [pos, d_sae] feature mask and [pos] error mask of `nodes` (everything: all clean nodes)."""
        width = self.batch.width
        feats, errs = {}, {}
        valid = self.batch.node_mask()[0]  # [pos]
        for h, sae in self.saes.items():
            if everything:
                feats[h] = (self.clean.decs[h].features[0] != 0) & valid[:, None]
                errs[h] = valid.clone()
            else:
                feats[h] = torch.zeros(width, sae.d_sae, dtype=torch.bool, device=valid.device)
                errs[h] = torch.zeros(width, dtype=torch.bool, device=valid.device)
        if not everything:
            for x in nodes:
                if x.kind == "feature":
                    feats[x.hook][x.position, x.feature] = True
                elif x.kind == "error":
                    errs[x.hook][x.position] = True
        return feats, errs

    # --- groups ---------------------------------------------------------------------------------
    def group(self, name: str, members) -> list[str]:
        """Make (or replace) supernode `name` from feature nodes; returns the member ids. See graphs.groups."""
        if not isinstance(name, str) or not name:
            raise GraphError(f"a group needs a non-empty name, got {name!r}")
        self.groups[name] = _groups.resolve(self, members)
        return self.groups[name]

    def ungroup(self, name: str) -> None:
        self._members(name)
        del self.groups[name]

    def group_by_label(self, min_overlap: float = 0.5) -> dict[str, list[str]]:
        """Group kept features whose labels share words (needs labels); returns the new groups."""
        if not any(x.label for x in self.nodes if x.kind == "feature"):
            raise GraphError(
                "no feature has a label: build the graph with labels=True (or a callable) to group by label"
            )
        found = _groups.by_label(self.nodes, min_overlap)
        for name, ids in found.items():
            self.groups[name] = ids
        return found

    def group_by_contrast(
        self, name: str, positive: list[str], negative: list[str], *, min_score: float = 0.5, position: str = "last"
    ):
        """Group the graph's feature nodes (at every position) whose features fire on `positive` prompts and
        not on `negative` ones (attribution.find.contrast, score >= min_score). Returns the matches that are
        nodes here, best first; raises if none is."""
        from attribution.find import contrast

        found = contrast(self.model, self.saes, positive, negative, position=position, top=None, min_score=min_score)
        present = {(x.hook, x.feature) for x in self.full_nodes if x.kind == "feature"}
        matches = [m for m in found if (m.hook, m.feature) in present]
        if not matches:
            best = "; ".join(str(m) for m in found[:3]) or "none"
            raise GraphError(
                f"no feature with contrast score >= {min_score} is a node of this graph (best matches anywhere: "
                f"{best}). Lower min_score, give more or better-matched prompts, or build with more candidates"
            )
        self.groups[name] = _groups.resolve(self, [(m.hook, m.feature) for m in matches])
        return matches

    def _members(self, name: str) -> list[GraphNode]:
        if name not in self.groups:
            raise GraphError(
                f"no group {name!r}; groups: {sorted(self.groups)}. Make one with graph.group(name, nodes)"
            )
        return [self.node(i) for i in self.groups[name]]

    def ablate_group(self, name: str, mode: str = "zero", reference=None) -> float:
        """metric(group ablated) - metric(clean): every member set to zero or its mean at once.

        Negative when the group supports the metric (the opposite sign to attribution.ablate's `effect`).
        """
        _check.check_mode(mode)
        return self._intervene(self._members(name), self._values(mode, reference), factor=None)

    def steer_group(self, name: str, factor: float) -> float:
        """metric(members clamped to factor x their clean activation) - metric(clean); factor 0 = zero ablation."""
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
            raise GraphError(f"factor must be a finite number (0 = zero ablation, 1 = unchanged), got {factor!r}")
        return self._intervene(self._members(name), self._values("zero", None), factor=float(factor))

    def _intervene(self, members: list[GraphNode], values, factor: float | None) -> float:
        rows: list[dict] = [{}, {}]
        for x in members:
            h = x.hook
            if h not in rows[1]:
                width, d_sae = self.batch.width, self.saes[h].d_sae
                keep = torch.ones(width, d_sae, dtype=torch.bool)
                rows[1][h] = _check.RowEdit(keep, torch.ones(width, dtype=torch.bool), values[h][0].repeat(width, 1))
                rows[0][h] = _check.RowEdit(keep.clone(), torch.ones(width, dtype=torch.bool))
            rows[1][h].features[x.position, x.feature] = False
            if factor is not None:
                rows[1][h].values[x.position, x.feature] = factor * x.activation
        m = _check.run_rows(self.model, self.saes, self.batch, self.metric, rows, values)
        return float(m[1] - m[0])

    # --- exports --------------------------------------------------------------------------------
    def to_json(self, path: str | Path | None = None, *, slug: str | None = None) -> dict:
        """Neuronpedia / circuit-tracer graph JSON of the kept graph (written to `path` if given)."""
        from graphs.schema import to_json

        return to_json(self, _writable(path), slug=slug)

    def to_html(
        self, path: str | Path, *, collapse_groups: bool = True, check: bool = True, max_edges: int | None = 5000
    ) -> Path:
        """Offline interactive HTML (pyvis). check: faithfulness in the title; groups drawn as one node each
        unless collapse_groups=False; more than max_edges edges is refused (prune first). See graphs.html."""
        from graphs.html import to_html

        return to_html(self, _writable(path), collapse_groups=collapse_groups, check=check, max_edges=max_edges)

    def to_networkx(self, full: bool = False):
        """networkx.DiGraph of the kept (or full) graph with every node and edge attribute."""
        from graphs.schema import to_networkx

        return to_networkx(self, full=full)


def _writable(path: str | Path | None) -> Path | None:
    """`path`, checked to name a file in an existing folder (else the export would die in open())."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise GraphError(f"{path} is a folder; give a file name inside it, e.g. {path / 'graph.html'}")
    if not path.parent.is_dir():
        raise GraphError(f"cannot write {path}: the folder {path.parent} does not exist; create it first")
    return path
