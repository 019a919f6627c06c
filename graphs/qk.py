"""QK attribution: one head's attention score at (query position, key position) as a sum of node-pair terms.

In the replacement model (graphs.replacement: MLPs replaced by transcoder features, error terms and the
linear skip path; norms and attention patterns of the prompt frozen) the residual stream at layer L's input
is linear in the graph's source vectors: active features (a_i W_dec[i]), error nodes and token embeddings,
at every earlier layer and position (attention of earlier layers moves them between positions with its
frozen pattern, the skip paths carry them on), plus constants (decoder biases, the attention's output
biases). <bos>'s features and error terms, which a graph holds constant, are nodes here by default (with
the graph's id scheme): attention sinks read them, and as constants they would swamp the bias. With layer
L's input norm and Gemma's q_norm / k_norm held at their clean factors and the rotary embedding at fixed
positions, the head's query q and key k are affine in that stream, so the pre-softmax score q.k (scaling
folded into q) is bilinear:

    q = sum_i Q_i + Q_bias,  k = sum_j K_j + K_bias,  score = sum_{i, j} Q_i . K_j

with i, j running over the nodes and "bias" (the constant part). Q_i is node i's total contribution to the
query through the frozen linear model (features held at their activations, as a graph's edges hold them):
d_head rows of replacement-graph machinery, the query's coordinates as targets read at resid_pre.L. The
"bias" column is what no node explains: the clean query less the nodes' parts, so the terms sum to the score.

Removing node i (its vector subtracted where it is added, the rest of the frozen model responding) changes
q by Q_i and k by K_i, so the score by  Q_i.k + q.K_i - Q_i.K_i  (its row, its column, the pair counted
twice): `removal()`; tests/test_qk.py checks it node by node against that intervention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from attribution.engine import trace
from attribution.models.attention import Attention
from attribution.splice import decompose
from graphs.graph_nodes import GraphError, error_id, feature_id, token_id
from graphs.replacement import EMBED, Sources, _Replacement, _sources, _store, _Vectors, check_transcoders

BIAS = "bias"  # the constant part of the query or the key: no node's


@dataclass
class Pair:
    query: str  # node id on the query side ("bias" for the constant part)
    key: str  # node id on the key side
    term: float  # Q_query . K_key, in units of the pre-softmax score

    def to_dict(self) -> dict:
        return {"query": self.query, "key": self.key, "term": self.term}


@dataclass
class QK:
    """Head `head` of layer `layer`: the score of `key_pos` at `query_pos`, decomposed (module docstring)."""

    prompt: str
    tokens: list[str]
    layer: int
    head: int
    query_pos: int
    key_pos: int
    score: float  # q.k x scaling before the softmax, from the clean query and key
    pattern: float  # the attention weight on key_pos at query_pos (the real model's, softmax of live scores)
    ids: list[str]  # node ids, BIAS last
    q: Tensor  # [d_head, len(ids)] float64: each node's part of the scaled query
    k: Tensor  # [d_head, len(ids)] float64: each node's part of the key
    pairs: list[Pair] = field(default_factory=list)  # the `top` largest |terms|, largest first
    node_pairs: list[Pair] = field(default_factory=list)  # the same among node x node pairs (no bias)
    labels: dict[str, str] = field(default_factory=dict)  # node id -> a short name (features' labels)

    @property
    def remainder(self) -> float:
        """The score less the listed pairs' terms."""
        return self.score - sum(p.term for p in self.pairs)

    def index(self, node: str) -> int:
        try:
            return self.ids.index(node)
        except ValueError:
            raise GraphError(f"{node!r} is no node here: ids are tokens, features, errors and 'bias'") from None

    def term(self, query: str, key: str) -> float:
        return float(self.q[:, self.index(query)] @ self.k[:, self.index(key)])

    def bias_terms(self) -> dict[str, float]:
        """The constant parts' share of the score: bias x bias, nodes x the key's bias, bias x the key's nodes."""
        q, k, b = self.q[:, :-1].sum(1), self.k[:, :-1].sum(1), len(self.ids) - 1
        qb, kb = self.q[:, b], self.k[:, b]
        return {"bias_bias": float(qb @ kb), "nodes_bias": float(q @ kb), "bias_nodes": float(qb @ k)}

    def removal(self) -> Tensor:
        """[len(ids)] the score's drop when each node is removed (module docstring): row + column - diagonal."""
        q, k = self.q.sum(1), self.k.sum(1)
        return self.q.T @ k + self.k.T @ q - (self.q * self.k).sum(0)

    def name(self, node: str) -> str:
        """A node's short name: its label, else what and where it is."""
        if node == BIAS:
            return "bias (constant part)"
        if self.labels.get(node):
            return self.labels[node]
        where = node.split(":")
        if node.startswith("tok:"):
            return f"token {self.tokens[int(where[1])]!r}@{where[1]}"
        pos = int(where[1])
        what = "error" if where[2] == "err" else where[2]
        return f"{what} {where[0]} @{pos} {self.tokens[pos]!r}"

    def _named(self, p: Pair) -> dict:
        return p.to_dict() | {"query_name": self.name(p.query), "key_name": self.name(p.key)}

    def to_dict(self) -> dict:
        """JSON-ready: where, the score, the top pairs with names, the remainder."""
        return {
            "layer": self.layer, "head": self.head, "query_pos": self.query_pos, "key_pos": self.key_pos,
            "query_token": self.tokens[self.query_pos], "key_token": self.tokens[self.key_pos],
            "score": self.score, "pattern": self.pattern, "nodes": len(self.ids) - 1,
            "pairs": [self._named(p) for p in self.pairs], "node_pairs": [self._named(p) for p in self.node_pairs],
            "bias_terms": self.bias_terms(), "remainder": self.remainder,
        }  # fmt: skip


def qk_pairs(
    model,
    tcs,
    prompt: str,
    layer: int,
    head: int,
    query_pos: int = -1,
    key_pos: int = 0,
    *,
    top: int = 10,
    graph=None,
    bos: bool = True,
    batch_size: int = 64,
) -> QK:
    """Head `head` of `layer`: its score of `key_pos` at `query_pos` (negative positions count from the end)
    as node-pair terms in the replacement model of `tcs` (one transcoder per layer, as a replacement graph
    needs). top: pairs listed. graph: a replacement graph of the prompt whose node labels name the pairs.
    bos: <bos>'s features and error terms are nodes here (a graph holds them constant, but attention sinks
    read them: without them they fall into the bias). batch_size: query/key coordinates per backward pass."""
    tcs = check_transcoders(model, tcs)
    if not isinstance(prompt, str):
        raise GraphError(f"QK attribution explains one prompt: pass a str, got {type(prompt).__name__}")
    batch = model.tokenize(prompt)
    width = batch.width
    att = Attention(model, layer)
    att.check_head(head)
    qp, kp = _position(query_pos, width, "query_pos"), _position(key_pos, width, "key_pos")
    if not att.visible(qp, kp):
        window = f" within its sliding window of {att.window}" if att.window else ""
        raise GraphError(
            f"layer {layer}'s query at {qp} does not see key {kp}: pass a key_pos <= query_pos{window} "
            f"(key positions {max(0, qp - att.window + 1) if att.window else 0}..{qp})"
        )
    if att.softcap is not None:
        raise GraphError(f"layer {layer} soft-caps its scores (tanh): a QK decomposition needs them bilinear")
    if top < 0 or batch_size < 1:
        raise GraphError(f"top must be >= 0 and batch_size >= 1, got {top}, {batch_size}")
    hooks = list(tcs)
    pre = model.hook(f"resid_pre.{layer}").name
    with torch.no_grad():
        clean = trace(model, batch, capture=[EMBED, pre, *hooks, *(t.target for t in tcs.values())], freeze=True)
        decs = {h: decompose(t, clean.acts[h][0], clean.acts[t.target][0]) for h, t in tcs.items()}
    src = _before(_sources(model, tcs, decs, clean.acts[EMBED][0], batch, bos=bos), layer, qp)
    x = clean.acts[pre][0]
    maps, values = [], []
    for part, p in (("q", qp), ("k", kp)):
        h = head if part == "q" else att.kv_head(head)
        held = att.held(x[p], part)
        fn = lambda v, part=part, p=p, held=held, h=h: att.project(v, p, part, held)[0, h]  # noqa: E731
        maps.append(torch.autograd.functional.jacobian(fn, x[p].detach()))  # [d_head, d_model], exact: affine
        values.append(fn(x[p]).double())
    store = _store(model)
    run = _Replacement(model, tcs, batch, clean.acts, store, reads=(pre,))
    vectors = _Vectors(tcs, decs, clean.acts[EMBED][0], src, width)
    parts = []
    for A, p, value in zip(maps, (qp, kp), values):
        rows = torch.cat([
            run.rows(vectors, [("read", d, p, pre) for d in chunk]).double() for chunk in A.split(batch_size)
        ])  # fmt: skip
        parts.append(torch.cat([rows, (value - rows.sum(1))[:, None]], 1))  # [d_head, n + 1]: nodes, bias
    del run
    with torch.no_grad():
        pattern = float(att.pattern(x[: qp + 1], torch.arange(qp + 1), head)[qp, kp])
    out = QK(prompt, list(batch.tokens[0]), layer, head, qp, kp, float(values[0] @ values[1]), pattern,
             [*_ids(hooks, src), BIAS], parts[0], parts[1])  # fmt: skip
    out.pairs, out.node_pairs = top_pairs(out, top), top_pairs(out, top, nodes_only=True)
    if graph is not None:
        names = {x.id: x.label for x in graph.full_nodes if x.label}
        out.labels = {i: names[i] for p in out.pairs + out.node_pairs for i in (p.query, p.key) if i in names}
    return out


def top_pairs(qk: QK, top: int, block: int = 2048, nodes_only: bool = False) -> list[Pair]:
    """The `top` pairs with the largest |term| (nodes_only: neither side the bias), a block of query-side
    nodes at a time (the full [nodes, nodes] matrix of a real model's prompt would take gigabytes)."""
    reach = (qk.q != 0).any(0), (qk.k != 0).any(0)  # nodes that reach the query / key (earlier positions)
    if nodes_only:
        for r in reach:
            r[-1] = False
    qi, ki = (r.nonzero().squeeze(-1) for r in reach)
    K = qk.k[:, ki]
    best = []  # (|term|, term, query index, key index)
    for s in qi.split(block):
        T = qk.q[:, s].T @ K  # [block, keys]
        n = min(top, T.numel())
        if n == 0:
            continue
        vals, flat = T.abs().flatten().topk(n)
        for v, f in zip(vals.tolist(), flat.tolist()):
            r, c = divmod(f, T.shape[1])
            best.append((v, float(T[r, c]), int(s[r]), int(ki[c])))
        best = sorted(best, key=lambda t: (-t[0], t[2], t[3]))[:top]
    return [Pair(qk.ids[i], qk.ids[j], t) for _, t, i, j in best]


def _position(p: int, width: int, what: str) -> int:
    if not -width <= p < width:
        raise GraphError(f"{what}={p} is outside the prompt's {width} tokens (0..{width - 1}, or -1 for the last)")
    return p % width


def _before(src: Sources, layer: int, pos: int) -> Sources:
    """The sources that can reach layer `layer`'s input at positions <= pos: earlier layers, tokens."""
    keep = (src.layer < layer) & (src.pos <= pos)
    return Sources(*(t[keep] for t in (src.kind, src.layer, src.pos, src.feature, src.value)))


def _ids(hooks: list[str], src: Sources) -> list[str]:
    """The graph's node ids of the sources (graphs.graph_nodes)."""
    out = []
    for kind, layer, pos, f in zip(src.kind.tolist(), src.layer.tolist(), src.pos.tolist(), src.feature.tolist()):
        out.append(token_id(pos) if kind == 2 else error_id(hooks[layer], pos) if kind == 1 else
                   feature_id(hooks[layer], pos, f))  # fmt: skip
    return out
