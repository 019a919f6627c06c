"""Exports without a browser: Neuronpedia / circuit-tracer graph JSON, and networkx.

The JSON follows circuit-tracer's frontend schema (metadata, qParams, nodes, links), so their viewers open
it: tokens are "embedding" nodes on layer "E", SAE features "cross layer transcoder" nodes (the type their
viewer draws as features) on the hook's layer, error terms "mlp reconstruction error" nodes, and the metric a
"logit" node on layer n_layers + 1 named after the good answer. As circuit-tracer writes them, a feature's
`feature` is cantor(layer, index) (its viewer unpairs it to label the node "L<layer>/<index>"), its
node_id "<layer>_<index>_<position>"; `influence` is the cumulative share; the logit node's clerp reads
`Output "<what>" (p=<probability>)`, which the viewer parses for the label under the node and its order.
Error nodes are "<layer>_-1_<position>" (circuit-tracer's "0_<layer>_<position>" can equal a layer-0
feature's id), their clerp "Err: <hook> “<token>”". Groups go to qParams.supernodes as [name, member
ids...]. Edge weights are the graph's direct effects. metadata.info (ours: the metric, its value, the
pruning, build time) is a key circuit-tracer's models ignore, as is a link's `heads` (ours, where the graph has
a head split, graphs.heads: {"direct", "heads": [[layer, head, part], ...], "rest"}).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ValidationError

from graphs.graph_nodes import GraphError

# --------------------------------------------------------------------------------------------------
# circuit-tracer 0.5.0's circuit_tracer/frontend/graph_models.py, field by field (names, types, defaults,
# Node's jsNodeId fallback). tests/fixtures/circuit_tracer_0.5.0_graph_schema.json is its JSON schema, and
# tests/test_graphs.py checks these classes against it; `python -m bench.peers.circuit_tracer_side_by_side
# --validate FILE` validates a file with the peer's own classes in its venv.
# --------------------------------------------------------------------------------------------------
CIRCUIT_TRACER_VERSION = "0.5.0"


def cantor_pairing(x: int, y: int) -> int:
    """Unique integer encoding of two non-negative integers (circuit-tracer's `_cantor_pairing`)."""
    return (x + y) * (x + y + 1) // 2 + y


class Metadata(BaseModel):
    slug: str
    scan: str
    transcoder_list: list[str]
    prompt_tokens: list[str]
    prompt: str
    node_threshold: float | None = None
    schema_version: int | None = 1


class QParams(BaseModel):
    pinnedIds: list[str]
    supernodes: list[list[str]]
    linkType: str
    clickedId: str
    sg_pos: str


class Node(BaseModel):
    node_id: str
    feature: int
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    run_idx: int = 0
    reverse_ctx_idx: int = 0
    jsNodeId: str
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None

    def __init__(self, **data):
        if "node_id" in data and "jsNodeId" not in data:
            data["jsNodeId"] = data["node_id"]
        super().__init__(**data)


class Link(BaseModel):
    source: str
    target: str
    weight: float


class Model(BaseModel):
    metadata: Metadata
    qParams: QParams
    nodes: list[Node]
    links: list[dict]


# --------------------------------------------------------------------------------------------------
# What we write and load_graph_json checks: circuit-tracer's file, with typed links and our metadata.info.
# --------------------------------------------------------------------------------------------------
class GraphMetadata(Metadata):
    info: dict | None = None  # ours: metric, its value, pruning settings, build time


class GraphFile(Model):
    metadata: GraphMetadata
    links: list[Link]


def _node(graph, x) -> Node:
    common = {"ctx_idx": x.position, "influence": x.cumulative, "activation": x.activation}
    if x.kind == "token":
        vocab = int(graph.token_ids[x.position])
        return Node(
            node_id=f"E_{vocab}_{x.position}",
            feature=x.position,
            layer="E",
            feature_type="embedding",
            jsNodeId=f"E_{vocab}-{x.position}",
            **common,
        )
    if x.kind == "metric":
        layer = str(graph.model["n_layers"] + 1)
        vocab = graph.metric_info["good_id"] or 0
        prob = graph.info.get("token_prob", 0.0)
        return Node(
            node_id=f"{layer}_{vocab}_{x.position}",
            feature=vocab,
            layer=layer,
            ctx_idx=x.position,
            feature_type="logit",
            token_prob=prob,
            is_target_logit=True,
            jsNodeId=f"L_{vocab}-{x.position}",
            clerp=f'Output "{_metric_label(graph)}" = {graph.metric_value:+.4f} (p={prob:.3g})',
            influence=1.0,
            activation=x.activation,
        )
    layer = str(graph.layers[x.hook])
    if x.kind == "error":
        return Node(
            node_id=f"{layer}_-1_{x.position}",
            feature=-1,
            layer=layer,
            feature_type="mlp reconstruction error",
            jsNodeId=f"{layer}_-1-{x.position}",
            clerp=f"Err: {x.hook} “{x.token}”",  # else the viewer says "Err: mlp", and ours are the SAE's
            **common,
        )
    return Node(
        node_id=f"{layer}_{x.feature}_{x.position}",
        feature=cantor_pairing(graph.layers[x.hook], x.feature),
        layer=layer,
        feature_type="cross layer transcoder",
        jsNodeId=f"{layer}_{x.feature}-0",
        clerp=x.label,
        **common,
    )


def _metric_label(graph) -> str:
    """What the logit node stands for, without double quotes (the viewer reads the label between the first
    two): "good − bad" for a logit difference, else the metric as written."""
    m = graph.metric_info
    text = f"{m['good']} − {m['bad']}" if m.get("kind") == "LogitDiff" else graph.metric
    return text.replace('"', "'")


def graph_file(graph, slug: str | None = None) -> GraphFile:
    nodes = {x.id: _node(graph, x) for x in graph.nodes}
    prune = graph.pruning or {}
    meta = GraphMetadata(
        slug=slug or "graph",
        scan=graph.model["name"],
        transcoder_list=graph.hooks,
        prompt_tokens=graph.tokens,
        prompt=graph.prompt,
        node_threshold=prune.get("node_threshold"),
        info={"metric": graph.metric, "metric_value": graph.metric_value, "pruning": prune, **graph.info},
    )
    supernodes = [[name, *(nodes[i].node_id for i in ids if i in nodes)] for name, ids in graph.groups.items()]
    qparams = QParams(pinnedIds=[], supernodes=supernodes, linkType="both", clickedId="", sg_pos="")
    links = [Link(source=nodes[e.source].node_id, target=nodes[e.target].node_id, weight=e.weight) for e in graph.edges]
    return GraphFile(metadata=meta, qParams=qparams, nodes=list(nodes.values()), links=links)


def to_json(graph, path: str | Path | None = None, *, slug: str | None = None) -> dict:
    data = graph_file(graph, slug or (Path(path).stem if path else None)).model_dump()
    if getattr(graph, "heads", None) is not None:  # ours: each link's split by attention head (graphs.heads)
        for link, row in zip(data["links"], graph.heads.kept(graph)):
            if row is not None:
                link["heads"] = row
    if path is not None:
        Path(path).write_text(json.dumps(data, indent=1))
    return data


def to_networkx(graph, full: bool = False):
    import networkx as nx

    g = nx.DiGraph(
        prompt=graph.prompt,
        tokens=graph.tokens,
        metric=graph.metric,
        metric_value=graph.metric_value,
        hooks=graph.hooks,
        pruning=graph.pruning,
        groups={k: list(v) for k, v in graph.groups.items()},
        info=dict(graph.info),
    )
    member = {i: name for name, ids in graph.groups.items() for i in ids}
    mask = graph.node_mask.tolist()
    for k, x in enumerate(graph.full_nodes):
        if full or mask[k]:
            g.add_node(x.id, **x.to_dict(), kept=bool(mask[k]), group=member.get(x.id))
    ids = [x.id for x in graph.full_nodes]
    cols = (
        graph.src.tolist(),
        graph.dst.tolist(),
        graph.weight.tolist(),
        graph.share.tolist(),
        graph.edge_mask.tolist(),
    )
    for s, t, w, a, kept in zip(*cols):
        if full or kept:
            g.add_edge(ids[s], ids[t], weight=w, share=a, kept=kept)
    return g


def load_graph_json(source: str | Path | dict) -> GraphFile:
    """Read and validate a graph JSON file (ours, circuit-tracer's or Neuronpedia's) or its parsed dict.

    Raises GraphError naming the first invalid field, so a hand-edited or foreign file fails with what to
    fix rather than deep inside a viewer. Links must join nodes of the file.
    """
    where = "the graph data"
    if isinstance(source, (list, tuple)):
        raise GraphError(f"{where}: a graph JSON is an object with metadata, qParams, nodes and links, not a list")
    if not isinstance(source, dict):
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise GraphError(f"graph JSON {path} does not exist; pass the path of a file written by graph.to_json")
        try:
            source = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GraphError(f"{path} is not JSON ({exc}); pass a file written by graph.to_json") from None
    if not isinstance(source, dict):
        raise GraphError(f"{where}: a graph JSON is an object with metadata, qParams, nodes and links")
    try:
        graph = GraphFile.model_validate(source)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
        raise GraphError(
            f"{where}: field {field!r} is invalid ({first['msg']}; {exc.error_count()} problem(s) in all). "
            "Fix that field, or rewrite the file with graph.to_json"
        ) from None
    ids = {n.node_id for n in graph.nodes}
    if len(ids) != len(graph.nodes):
        raise GraphError(f"{where}: node_id values repeat; every node needs its own node_id")
    for i, link in enumerate(graph.links):
        for end in ("source", "target"):
            if getattr(link, end) not in ids:
                raise GraphError(
                    f"{where}: field 'links[{i}].{end}' names node {getattr(link, end)!r}, which is not in 'nodes'"
                )
    return graph
