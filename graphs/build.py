"""build_graph: a prompt's feature graph, from one clean forward/backward plus one batched backward per
chunk of each SAE layer's nodes.

Candidates, circuit-tracer style: edges are computed only into nodes that can be kept. Per SAE layer, the
`candidates` active features with the largest |attribution| (activation x gradient of the metric, the
library's grad_x_act) become nodes, plus one error node per position; every non-<bos> token is a node.
"""

from __future__ import annotations

import itertools
import time

import torch
from tqdm.auto import tqdm

from attribution import memory
from attribution.attribute import grad_x_act
from attribution.splice import prepare_saes
from graphs.describe import described, metric_position, prob
from graphs.edges import EMBED, Side, blocks_between, clean_pass, direct_edges, readouts, row_bytes
from graphs.graph import Graph
from graphs.graph_nodes import METRIC_ID, GraphError, GraphNode, check_residual, error_id, feature_id, token_id
from graphs.labeler import labeler


class _SAEOnly(int):
    """The default of an option that only residual-SAE graphs have: its value, and known to be the default."""

    def __repr__(self) -> str:
        return f"{int(self)} (SAE graphs only)"


CANDIDATES = _SAEOnly(128)


def build_graph(
    model,
    saes,
    prompt: str,
    metric,
    *,
    candidates: int | None = CANDIDATES,
    error_nodes: int | None = None,
    labels=True,
    max_rows: int | None = None,
    max_feature_nodes: int | None = None,
    progress: bool = True,
) -> Graph:
    """The feature graph of `prompt` for `metric` (e.g. LogitDiff), with SAEs `saes` ({hook: SAE}).

    candidates: feature nodes per SAE layer, by |attribution| (None: every active feature; default 128).
    error_nodes: error nodes per SAE layer, by |attribution| (None: one per position). Each node is one
        backward row, so on long prompts this and `candidates` set the cost.
    labels: True (attribution.explain), {hook: FeatureIndex}, False, fn(hook, feature) -> str, or a labeller
        (see graphs.labeler).
    max_rows: downstream nodes per backward pass (None: as many as memory allows, at most 256). A graph that
        cannot fit raises memory.OutOfMemoryError before any work.
    progress: progress bars (feature indexes, edges).
    Transcoders (one per layer, e.g. default_transcoders(model), or a CrossLayerTranscoder) make a replacement
    graph instead (graphs.replacement): then max_feature_nodes caps its feature rows, most influential first,
    and max_rows is its target rows per backward pass (default for both: what fits in memory); candidates and
    error_nodes are refused there (it ranks feature rows by influence and keeps every error node). The result is
    unpruned; call .prune() on it.
    """
    if is_replacement(saes):
        given = [f"{k}={v!r}" for k, v in (("candidates", candidates), ("error_nodes", error_nodes))
                 if v is not None and not isinstance(v, _SAEOnly)]  # fmt: skip
        if given:
            raise GraphError(
                f"{', '.join(given)}: a replacement graph (transcoders) does not choose nodes per layer by "
                "attribution; it ranks feature rows by influence on the metric and keeps one error node per layer "
                "and position. Cap its feature rows with max_feature_nodes=N instead."
            )
        from graphs.replacement import build_replacement_graph

        return build_replacement_graph(
            model, saes, prompt, metric, max_feature_nodes=max_feature_nodes, batch_size=max_rows,
            labels=labels, progress=progress,
        )  # fmt: skip
    start = time.perf_counter()
    _check_options(prompt, candidates, error_nodes, max_rows)
    saes = prepare_saes(model, saes)
    if not saes:
        raise GraphError("no SAEs given: pass {hook: SAE} for residual-stream hooks, e.g. resid_post.L")
    hooks = list(saes)
    check_residual(model, hooks)
    batch = model.tokenize(prompt)
    fixed = _check_memory(model, saes, batch.width, max_rows)
    names = labeler(model, saes, labels, progress)
    clean, grads = clean_pass(model, saes, batch, metric)
    nodes, sides, last_attr = _nodes(saes, batch, clean, grads, candidates, error_nodes, names)
    m_pos = metric_position(metric, batch.width)
    nodes.append(
        GraphNode(METRIC_ID, "metric", len(hooks) + 1, None, m_pos, None, batch.tokens[0][m_pos], clean.metric,
                  clean.metric)
    )  # fmt: skip
    src, dst, weight = _edges(model, batch, sides, last_attr, len(nodes) - 1, max_rows, fixed, progress)
    info = {
        "build_s": time.perf_counter() - start,
        "candidates": None if candidates is None else int(candidates),
        "token_prob": prob(model, metric, clean.hidden),
    }
    return Graph.scored(
        **described(model, prompt, batch, hooks, metric, clean.metric),
        full_nodes=nodes,
        src=src,
        dst=dst,
        weight=weight,
        info=info,
    )


def _check_options(prompt, candidates, error_nodes, max_rows) -> None:
    if not isinstance(prompt, str):
        raise GraphError(f"a graph explains one prompt: pass a str, got {type(prompt).__name__}")
    if candidates is not None and candidates < 1:
        raise GraphError(f"candidates must be >= 1 (features per layer) or None for all, got {candidates}")
    if error_nodes is not None and error_nodes < 0:
        raise GraphError(f"error_nodes must be >= 0 (error nodes per layer) or None for all, got {error_nodes}")
    if max_rows is not None and max_rows < 1:
        raise GraphError(f"max_rows must be >= 1, got {max_rows}")


def _top(values: torch.Tensor, k: int | None) -> torch.Tensor | None:
    """Indices of the k largest |values|, in their original order (None: keep all)."""
    if k is None or len(values) <= k:
        return None
    return values.abs().argsort(descending=True, stable=True)[:k].sort().values


def _nodes(saes, batch, clean, grads, candidates, error_nodes, names):
    """The graph's nodes (tokens, then per SAE layer its candidate features and error nodes) and, per layer,
    the Sides the edges need: what each node adds to the residual stream (up) and its readout (down).
    Returns (nodes, [(hook, up, down)], attributions of the last layer's nodes)."""
    columns = grad_x_act(saes, grads, batch, batch.node_mask(), clean.decs)  # the nodes' attributions
    tokens = batch.tokens[0]
    # rule: node bookkeeping (indices, positions, attributions, edges) lives on the CPU; activations,
    # gradients and the vectors the backward passes use stay on the model's device
    positions = batch.node_mask()[0].nonzero().squeeze(-1).cpu()  # [n_pos], <bos> left out
    nodes: list[GraphNode] = []

    def add(node: GraphNode) -> int:
        nodes.append(node)
        return len(nodes) - 1

    emb, g0 = clean.acts[EMBED].double(), clean.grads[EMBED].double()  # [pos, d_model]
    ids = [
        add(GraphNode(token_id(t), "token", 0, None, t, None, tokens[t], float(emb[t].norm()), float(emb[t] @ g0[t])))
        for t in positions.tolist()
    ]
    sides = [(EMBED, Side(torch.tensor(ids), positions, emb[positions]), None)]
    last_attr = None
    for row, h in enumerate(saes, 1):
        sae, dec = saes[h], clean.decs[h]
        f, e = dec.features[0].double(), dec.error[0].double()  # [pos, d_sae], [pos, d_model]
        W_dec = sae.W_dec.double()
        feats, errs = columns[row - 1]  # active features at node positions, then one error node per position
        t, i, attr = feats["position"].cpu(), feats["feature"].cpu(), feats["value"].cpu()
        top = _top(attr, candidates)
        if top is not None:
            t, i, attr = t[top], i[top], attr[top]
        ids = [
            add(GraphNode(feature_id(h, p, k), "feature", row, h, p, k, tokens[p], float(f[p, k]), float(a)))
            for p, k, a in zip(t.tolist(), i.tolist(), attr.tolist())
        ]
        at, err_attr = errs["position"].cpu(), errs["value"].cpu()  # [n_pos]
        top = _top(err_attr, error_nodes)
        if top is not None:
            at, err_attr = at[top.to(at.device)], err_attr[top]
        ids += [
            add(GraphNode(error_id(h, p), "error", row, h, p, None, tokens[p], float(e[p].norm()), float(a)))
            for p, a in zip(at.tolist(), err_attr.tolist())
        ]
        pos = torch.cat([t, at])
        feats = torch.cat([i, torch.full_like(at, -1)])
        up = torch.cat([f[t, i, None] * W_dec[i], e[at]])  # [n, d_model], what each node adds
        down = readouts(sae, dec, clean.grads[h], pos, feats)  # [n, d_model]
        for n, k in zip(ids, (feats >= 0).tolist()):
            if k:
                nodes[n].label = names.label(h, nodes[n].feature)
        sides.append((h, Side(torch.tensor(ids), pos, up), Side(torch.tensor(ids), pos, down)))
        last_attr = torch.cat([attr, err_attr])
    return nodes, sides, last_attr


def _edges(model, batch, sides, last_attr, metric_index, max_rows, fixed, progress):
    """(src, dst, weight): direct edges between consecutive layers' nodes (one batched backward per chunk),
    then the last layer's attributions as its edges into the metric."""
    srcs, dsts, ws = [], [], []
    pairs = list(itertools.pairwise(sides))
    for (up_hook, up, _), (down_hook, _, down) in tqdm(pairs, desc="edges", disable=not progress, leave=False):
        s, d, w = direct_edges(model, batch, up_hook, up, down_hook, down, max_rows, fixed)
        srcs.append(s)
        dsts.append(d)
        ws.append(w)
    last = sides[-1][1]
    attr = last_attr.float()  # the Graph's dtypes (float32, int32), as direct_edges gives them
    into_metric = attr != 0
    srcs.append(last.index[into_metric].int())
    dsts.append(torch.full((int(into_metric.sum()),), metric_index, dtype=torch.int32))
    ws.append(attr[into_metric])
    return torch.cat(srcs), torch.cat(dsts), torch.cat(ws)


def is_replacement(saes) -> bool:
    """Whether `saes` are transcoders (a replacement graph) rather than residual-stream SAEs."""
    from attribution.saes.clt import CrossLayerTranscoder

    if isinstance(saes, CrossLayerTranscoder):
        return True
    values = saes.values() if isinstance(saes, dict) else saes if isinstance(saes, (list, tuple)) else []
    return any(getattr(s, "is_transcoder", False) for s in values)


def kept_bytes(model, saes: dict, width: int) -> int:
    """What the clean pass leaves alive while edges are computed: decompositions, activations, node vectors."""
    return sum(width * (s.d_sae * 4 + model.d_model * 8 * 6) for s in saes.values())


def _check_memory(model, saes: dict, width: int, max_rows: int | None) -> int:
    """Fail before any work when the clean pass or the edges' backward cannot fit; returns the memory the
    clean pass's results hold while edges are computed."""
    kept = kept_bytes(model, saes, width)
    clean = memory.forward_bytes(model, 1, width, model.n_layers, grad=True) + kept
    memory.require(clean, f"the clean pass of a graph on {width} tokens", "use a shorter prompt or fewer SAEs.")
    hooks = list(dict.fromkeys([EMBED, *saes]))
    blocks = max(blocks_between(model, a, b) for a, b in itertools.pairwise(hooks)) if len(hooks) > 1 else 1
    per_row = row_bytes(model, width, blocks)
    memory.chunk_rows(max_rows, per_row, kept, what=f"graph edges on {width} tokens", arg="max_rows=", most=256)
    return kept
