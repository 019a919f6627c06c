"""The Graph: a prompt's feature graph as data (nodes, sparse edges, metadata), saved and loaded exactly.

A Graph holds no model: interventions on it (faithfulness, group ablation and steering) live in
graphs.interventions and take the model; pruning (graphs.prune.prune) returns a new Graph. The full
(candidate) graph is kept inside: `nodes` and `edges` are the kept view, `full_nodes` and src/dst/weight
everything build_graph computed.

    g.save("runs/kobe")       # runs/kobe/graph.json (nodes, metadata) + edges.safetensors (edges, masks)
    Graph.load("runs/kobe")   # the same graph, every number equal

Edges take 18 bytes each (int32 src and dst, float32 weight and share, two bool masks; 34 with the int64 and
float64 of format 1): a graph's memory is its edges, node indices fit int32, and a float32 weight is its float64
value rounded once (to 6e-8 of it). Node values (activation, attribution, influence) stay float64.
"""

from __future__ import annotations

import copy as _copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from graphs import groups as _groups
from graphs.graph_nodes import KINDS, GraphError, GraphNode
from graphs.head_parts import HeadParts
from graphs.prune import cumulative, influence, per_target, prune, shares

FORMAT = 2  # the on-disk format's version: 2 saves int32 src/dst and float32 weights
READS = (1, 2)  # formats load reads (1: int64 src/dst and float64 weights, cast on load)
META, EDGES = "graph.json", "edges.safetensors"  # the files of a saved graph's folder


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    weight: float  # direct effect of source on target's pre-activation (metric units into errors and the metric)
    share: float  # |weight| / sum of |weights| into the target in the full graph


@dataclass
class Graph:
    """A prompt's feature graph. Build it with graphs.build_graph; see the module docstring."""

    prompt: str
    token_ids: list[int]  # the prompt's token ids (<bos> first)
    tokens: list[str]  # the prompt's tokens as strings
    hooks: list[str]  # the SAE hooks, in forward order
    layers: dict[str, int]  # hook -> the model layer it sits at (for the JSON's layer numbers)
    model: dict  # {"name": str, "n_layers": int}
    metric_info: dict  # {"repr", "value", "kind", "good", "bad", "position", "good_id"}: what the metric node is
    full_nodes: list[GraphNode]  # every candidate node: tokens first, the metric last
    src: Tensor  # [E] int32, the full graph's edges: source node index (other integer dtypes are cast)
    dst: Tensor  # [E] int32, target node index
    weight: Tensor  # [E] float32, direct effect of source on target (other float dtypes are rounded to it)
    node_mask: Tensor | None = None  # [n] bool, kept nodes (None: all)
    edge_mask: Tensor | None = None  # [E] bool, kept edges (None: all)
    pruning: dict | None = None  # the thresholds the masks come from
    groups: dict[str, list[str]] = field(default_factory=dict)  # supernode name -> member node ids
    info: dict = field(default_factory=dict)  # build time, candidates, the answer's probability
    heads: HeadParts | None = None  # edges split by attention head (graphs.heads), for some edges or none

    def __post_init__(self):
        n = len(self.full_nodes)
        self.src, self.dst = self.src.to(torch.int32), self.dst.to(torch.int32)  # no copy when already int32
        self.weight = self.weight.to(torch.float32)
        self.node_mask = torch.ones(n, dtype=torch.bool) if self.node_mask is None else self.node_mask
        self.edge_mask = torch.ones(len(self.src), dtype=torch.bool) if self.edge_mask is None else self.edge_mask
        self._index = {x.id: i for i, x in enumerate(self.full_nodes)}
        self.metric_index = n - 1
        self.share = shares(self.dst, self.weight, n)  # [E] float32, |w| over the sum into the same target

    @classmethod
    def scored(cls, **fields) -> Graph:
        """A new graph whose nodes get their influence and cumulative share from its edges (build_graph)."""
        graph = cls(**fields)
        nodes, n = graph.full_nodes, len(graph.full_nodes)
        scale = per_target(graph.dst, graph.weight, n)  # shares in float64, from the weights (graphs.prune)
        inf = influence(graph.src, graph.dst, graph.weight, n, graph.metric_index, scale=scale)  # [n]
        inner = torch.tensor([x.kind in ("feature", "error") for x in nodes])
        for x, a, c in zip(nodes, inf.tolist(), cumulative(inf, inner).tolist()):
            x.influence, x.cumulative = a, c
        nodes[-1].influence = 1.0
        return graph

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
        return self.metric_info["value"]

    @property
    def metric(self) -> str:
        """The metric as it was written, e.g. "LogitDiff(' Sacramento' - ' Albany')"."""
        return self.metric_info["repr"]

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
        edges = int(self.edge_mask.count_nonzero())  # not sum(): a bool sum makes an [E] int64 copy
        return (
            f"Graph({self.prompt!r}, {self.metric} {self.metric_value:+.4f}: {kinds.count('feature')} features, "
            f"{kinds.count('error')} error nodes, {kinds.count('token')} tokens, {edges} edges"
            f"{', pruned' if self.pruning else ''})"
        )

    def __str__(self) -> str:
        return "\n".join([repr(self), *(str(x) for x in self.top(15, kind=None))])

    def _repr_html_(self) -> str:
        """The graph's offline page in an iframe, in a notebook (drawn by pages, through attribution.display)."""
        from attribution import display

        return display.notebook("graph", self)

    def copy(self) -> Graph:
        """An independent copy (nodes, masks, groups)."""
        new = _copy.copy(self)
        new.full_nodes = [_copy.copy(x) for x in self.full_nodes]
        new.node_mask, new.edge_mask = self.node_mask.clone(), self.edge_mask.clone()
        new.groups = {k: list(v) for k, v in self.groups.items()}
        new.pruning = None if self.pruning is None else dict(self.pruning)
        new.info = dict(self.info)
        return new

    def with_nodes(self, ids) -> Graph:
        """A copy that also keeps the nodes `ids` (e.g. a group's members that pruning dropped, so a page draws
        the group) and every edge between them and the kept nodes. The pruning's record is unchanged: scores
        describe the pruned graph, this copy is for drawing."""
        new = self.copy()
        added = torch.zeros_like(self.node_mask)
        for i in ids:
            self.node(i)  # a clear error for an unknown id
            added[self._index[i]] = True
        added &= ~self.node_mask
        new.node_mask |= added
        # index_select, not added[src]: indexing with an int32 tensor makes an [E] int64 copy of it
        a_src, a_dst = added.index_select(0, self.src), added.index_select(0, self.dst)
        k_src, k_dst = new.node_mask.index_select(0, self.src), new.node_mask.index_select(0, self.dst)
        new.edge_mask |= (a_src & k_dst) | (a_dst & k_src)
        return new

    def scores(self, model=None, dictionaries=None, metric=None) -> dict:
        """circuit-tracer's replacement and completeness scores of the kept graph (pruned features count as
        error nodes) and of the full graph (graphs.scores); given the model and the SAEs or transcoders the
        graph was built with, also faithfulness and completeness by real ablation (graphs.check)."""
        from graphs.scores import graph_scores

        kept, full = graph_scores(self), graph_scores(self, pruned=False)
        out = {
            "replacement_score": kept.replacement,
            "completeness_score": kept.completeness,
            "full_replacement_score": full.replacement,
            "full_completeness_score": full.completeness,
        }
        if model is not None and dictionaries is not None:
            from graphs.interventions import check

            result = check(model, dictionaries, self, metric)
            out |= {
                "faithfulness": result.faithfulness if result.defined else None,
                "completeness": result.completeness if result.defined else None,
            }
        return out

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98, **kwargs) -> Graph:
        """A new graph keeping the nodes and edges that carry node_threshold / edge_threshold of the influence
        on the metric (graphs.prune.prune: its keyword arguments and the masks). This graph is unchanged."""
        return prune(self, node_threshold, edge_threshold, **kwargs).graph

    def unpruned(self) -> Graph:
        """A new graph with every candidate node and edge kept."""
        new = self.copy()
        new.node_mask[:] = True
        new.edge_mask[:] = True
        new.pruning = None
        return new

    # --- groups ---------------------------------------------------------------------------------
    def group(self, name: str, members) -> list[str]:
        """Make (or replace) supernode `name` from feature nodes; returns the member ids. See graphs.groups."""
        if not isinstance(name, str) or not name:
            raise GraphError(f"a group needs a non-empty name, got {name!r}")
        self.groups[name] = _groups.resolve(self, members)
        return self.groups[name]

    def ungroup(self, name: str) -> None:
        self.members(name)
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

    def members(self, name: str) -> list[GraphNode]:
        if name not in self.groups:
            raise GraphError(
                f"no group {name!r}; groups: {sorted(self.groups)}. Make one with graph.group(name, nodes)"
            )
        return [self.node(i) for i in self.groups[name]]

    # --- disk ---------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """The graph in `folder` (made if missing): graph.json (nodes, groups, metadata) and edges.safetensors
        (edges and masks). Graph.load(folder) reads it back with every number equal. Returns the folder."""
        from safetensors.torch import save_file

        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise GraphError(f"{folder} is a file; Graph.save writes a folder (graph.json + edges.safetensors)")
        if not folder.parent.is_dir():
            raise GraphError(f"cannot write {folder}: the folder {folder.parent} does not exist; create it first")
        folder.mkdir(exist_ok=True)
        meta = {
            "format": FORMAT,
            "prompt": self.prompt,
            "token_ids": self.token_ids,
            "tokens": self.tokens,
            "hooks": self.hooks,
            "layers": self.layers,
            "model": self.model,
            "metric_info": self.metric_info,
            "nodes": [x.to_dict() for x in self.full_nodes],
            "pruning": self.pruning,
            "groups": self.groups,
            "info": self.info,
        }
        if self.heads is not None:
            meta["heads"] = self.heads.meta()
        tensors = {
            "src": self.src.contiguous(),
            "dst": self.dst.contiguous(),
            "weight": self.weight.contiguous(),
            "node_mask": self.node_mask.contiguous(),
            "edge_mask": self.edge_mask.contiguous(),
        }
        if self.heads is not None:
            tensors |= self.heads.tensors()
        save_file(tensors, str(folder / EDGES), metadata={"format": str(FORMAT)})
        (folder / META).write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Graph:
        """The graph that save() wrote into `folder`. A format-1 folder (int64 src/dst, float64 weights) loads too,
        its edges cast to int32 and float32 (Graph's dtypes); its nodes' numbers are read as saved."""
        from safetensors.torch import load_file

        folder = Path(folder)
        for p in (folder / META, folder / EDGES):
            if not p.is_file():
                raise GraphError(
                    f"no saved graph in {folder}: {p.name} is missing (Graph.save writes {META} + {EDGES})"
                )
        try:
            meta = json.loads((folder / META).read_text())
            tensors = load_file(str(folder / EDGES))
        except (ValueError, OSError) as err:
            raise GraphError(f"cannot read the saved graph in {folder}: {err}") from None
        if meta.get("format") not in READS:
            raise GraphError(f"{folder / META} is graph format {meta.get('format')!r}; this library reads {READS}")
        nodes = [GraphNode(**x) for x in meta.pop("nodes")]
        meta.pop("format")
        heads = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith("heads.")]}
        if "heads" in meta:  # older folders have none
            meta["heads"] = HeadParts.from_saved(heads, meta["heads"])
        return cls(full_nodes=nodes, **meta, **tensors)

    # --- exports --------------------------------------------------------------------------------
    def to_json(self, path: str | Path | None = None, *, slug: str | None = None) -> dict:
        """Neuronpedia / circuit-tracer graph JSON of the kept graph (written to `path` if given)."""
        from graphs.schema import to_json

        return to_json(self, _writable(path), slug=slug)

    def to_html(
        self,
        path: str | Path,
        *,
        collapse_groups: bool = True,
        check=None,
        cards=None,
        max_edges: int | None = 5000,
        qk=None,
    ) -> Path:
        """Offline interactive HTML (vis-network, inlined). check: a graphs.interventions.Check shown in the title;
        cards: fn(hook, feature) -> FeatureCard for the side panel of a clicked feature; groups drawn as one node
        each (opened by double-click) unless collapse_groups=False; more than max_edges edges is refused (prune
        first); qk: graphs.qk.QK decompositions listed under the side panel. Drawn by pages.graph_page (through
        attribution.display: graphs never import pages)."""
        from attribution import display

        return display.renderer("graph_page")(
            self,
            _writable(path),
            collapse_groups=collapse_groups,
            check=check,
            cards=cards,
            max_edges=max_edges,
            qk=qk,
        )

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
