"""Replacement graphs: circuit-tracer's attribution graph with per-layer or cross-layer transcoders, on this
library's engine.

The replacement model is the model on this prompt with every MLP replaced by its transcoder's features plus
an error term (held constant), plus the transcoder's linear skip path, and with every norm's scale and every
attention pattern frozen (engine.trace(freeze=True)). It is linear in the residual stream, so the edge from
source s to target t is exact:
- s adds v_s to the residual stream: a_s W_dec[s] (a feature, at its layer's MLP output; a cross-layer
  transcoder's feature adds a_s W_dec[s -> l] at each layer l it reaches), its error vector (an error node), or
  its embedding (a token, at the input of block 0);
- t reads the stream with a direction: its encoder column at its transcoder's input (a feature's
  pre-activation), or the logit difference W_U[good] - W_U[bad] after the frozen final norm (the metric);
- edge(s -> t) = v_s . d(read_t)/d(v_s), one backward per target row, many rows per backward: the forward
  runs once and a batch of rows shares it (a vmapped backward, each row injecting its own target's
  direction), and zero probes at every MLP output collect the gradient per row.
Features and errors at <bos> are not nodes (their MLP outputs are constants, as in circuit-tracer); the
<bos> token is. Feature rows are computed in order of estimated influence on the metric and capped by
`max_feature_nodes`, as circuit-tracer does; features whose rows are not computed are not nodes.

A node's `attribution` is its total effect on the metric through the graph (paths summed, active features
linear with slope 1, as the graph assumes): exactly the metric change of removing it in the replacement
model (tests/test_replacement.py checks both that and every edge against interventions).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attribution.engine import Group, eager_attention, trace
from attribution.metrics import Rows, evaluate
from attribution.saes.clt import CrossLayerTranscoder
from attribution.splice import decompose, decompose_clt, prepare_saes
from graphs.describe import described, prob
from graphs.graph import Graph
from graphs.graph_nodes import METRIC_ID, GraphError, GraphNode, error_id, feature_id, token_id
from graphs.labeler import labeler
from graphs.replacement_budget import Plan, check_request, plan
from graphs.replacement_rows import SparseRows, entry_bounds

EMBED = "resid_pre.0"


@dataclass
class Held:
    """A transcoder's MLP output in the replacement model: the clean value less the skip path, held constant,
    plus the skip path of the input the rows actually receive (a linear path, so gradients flow through it)."""

    const: Tensor  # [1, pos, d_model]
    tc: object
    reads: str | None  # the transcoder's input hook (None without a skip path: nothing to read)

    def __call__(self, x: Tensor, read: Tensor | None = None) -> Tensor:
        out = self.const.to(x.dtype).expand_as(x)
        return out if read is None else out + self.tc.skip(read).to(x.dtype)


def _identity(x: Tensor) -> Tensor:
    return x


def _detached(x: Tensor) -> Tensor:
    return x.detach()


@dataclass
class Sources:
    """Every node that writes to the residual stream, as columns: active features, then errors, then tokens."""

    kind: Tensor  # [n] 0 feature, 1 error, 2 token
    layer: Tensor  # [n] model layer (-1 for tokens)
    pos: Tensor  # [n]
    feature: Tensor  # [n] feature index (-1 for errors and tokens)
    value: Tensor  # [n] activation (features), |vector| (errors, tokens)


def direction(model, metric) -> tuple[Tensor, int]:
    """The metric as a readout of the final norm's output: (W_U[good] - W_U[bad] [d_model], position)."""
    good, bad = getattr(metric, "good_ids", None), getattr(metric, "bad_ids", None)
    if good is None or bad is None or len(good) != 1 or len(bad) != 1:
        raise GraphError(
            f"a replacement graph needs a linear metric of the logits, a single logit difference such as "
            f"LogitDiff(model, ' Sacramento', ' Albany'); got {metric!r}"
        )
    W = model.W_U
    return (W[int(good[0])] - W[int(bad[0])]).detach(), int(getattr(metric, "position", -1))


def check_transcoders(model, tcs) -> dict:
    """{read hook: transcoder}, one per layer and every layer covered (an MLP left in place would put its
    nonlinearity into the edges)."""
    if isinstance(tcs, CrossLayerTranscoder):
        raise GraphError(
            f"{tcs!r} is a cross-layer transcoder: build_replacement_graph takes one; this analysis takes one "
            "transcoder per layer ({hook: transcoder}, e.g. default_transcoders(model))"
        )
    tcs = prepare_saes(model, tcs)
    if not tcs:
        raise GraphError(
            "no transcoders given: pass one per layer ({hook: transcoder}), e.g. default_transcoders(model)"
        )
    not_tc = [h for h, t in tcs.items() if not t.is_transcoder]
    if not_tc:
        raise GraphError(
            f"{not_tc} hold SAEs, not transcoders; a graph uses residual-stream SAEs or one transcoder per layer"
        )
    layers = {}
    for h, t in tcs.items():
        spec, out = model.hook(h), model.hook(t.target)
        if out.kind != "mlp_out" or spec.kind not in ("resid_mid", "mlp_in") or spec.layer != out.layer:
            raise GraphError(
                f"transcoder {t!r} must read resid_mid.L or mlp_in.L and write mlp_out.L of the same layer L"
            )
        if spec.layer in layers:
            raise GraphError(f"two transcoders at layer {spec.layer} ({layers[spec.layer]!r} and {h!r}); keep one")
        layers[spec.layer] = h
    missing = sorted(set(range(model.n_layers)) - set(layers))
    if missing:
        raise GraphError(
            f"no transcoder for layers {missing}: a replacement graph replaces every MLP (pass all "
            f"{model.n_layers}, e.g. default_transcoders(model))"
        )
    return dict(sorted(tcs.items(), key=lambda kv: model.hooks[kv[0]].layer))


def build_replacement_graph(
    model,
    tcs,
    prompt: str,
    metric,
    *,
    max_feature_nodes: int | None = None,
    batch_size: int | None = None,
    labels=True,
    progress: bool = True,
) -> Graph:
    """The replacement graph of `prompt` for a logit-difference `metric`, with one transcoder per layer.

    max_feature_nodes: feature rows to compute, most influential first (None: every active feature that fits
        in memory; graph.info["plan"] says how many were computed).
    batch_size: target rows per backward pass, sharing one forward (None: what fits, at most 64).
    A request that cannot fit raises memory.OutOfMemoryError before any work (graphs.replacement_budget).
    """
    start = time.perf_counter()
    vec, m_pos = direction(model, metric)
    tcs, batch, clean, decs, src, ahead = _clean_pass(model, tcs, prompt, max_feature_nodes, batch_size)
    hooks = list(tcs)
    value = float(evaluate(metric, model, clean.hidden, Rows.copies(0, 1))[0])
    width = batch.width
    m_pos %= width
    budget = _plan(model, batch, src, max_feature_nodes, batch_size)
    cap, batch_size, n_feat = budget.rows, budget.batch, budget.features
    if progress and budget.chosen:
        tqdm.write(budget.describe(width))
    store = _store(model)
    names = labeler(model, tcs, labels, progress)
    vectors = _Vectors(tcs, decs, clean.acts[EMBED][0], src, width, ahead)
    run = _Replacement(model, tcs, batch, clean.acts, store)
    rows = SparseRows(len(src.kind), budget.entries, store)  # the metric's row, then a row per feature
    rows.add(run.rows(vectors, [("metric", vec, m_pos)]), torch.tensor([model.n_layers]))  # above every layer
    order: list[int] = []  # source indices of the features whose rows are computed, in row order
    done = torch.zeros(len(src.kind), dtype=torch.bool)
    bar = tqdm(total=cap, desc="replacement graph rows", unit="row", disable=not progress)
    while len(order) < cap:
        if cap == n_feat:
            pending = torch.arange(n_feat)
        else:
            inf = rows.ranking_influence(torch.tensor([-1, *order]))
            ranked = inf[:n_feat].argsort(descending=True, stable=True)
            pending = ranked[~done[ranked]][: min(4 * batch_size, cap - len(order))]
        for chunk in pending.split(batch_size):
            targets = []
            for i in chunk.tolist():
                layer = int(src.layer[i])
                targets.append(("feature", tcs[hooks[layer]].W_enc[:, int(src.feature[i])], int(src.pos[i]), layer))
            rows.add(run.rows(vectors, targets), src.layer[chunk])
            order += chunk.tolist()
            done[chunk] = True
            bar.update(len(chunk))
    bar.close()
    del run, vectors  # the forward and its graph are done with: free them before the edges are laid out
    nodes, edges = _assemble(tcs, batch, value, src, rows, order, names, m_pos)  # empties the rows
    graph = Graph.scored(**described(model, prompt, batch, hooks, metric, value), full_nodes=nodes, **edges, info={})
    graph.info.update(
        build_s=time.perf_counter() - start,
        replacement=True,
        reach=None if ahead is None else 1 + ahead[0].shape[1],  # a cross-layer transcoder's
        max_feature_nodes=max_feature_nodes,
        active_features=n_feat,
        plan={
            "feature_rows": cap,
            "batch_size": batch_size,
            "chosen": budget.chosen,
            "estimate_bytes": budget.total_bytes,
        },
        token_prob=prob(model, metric, clean.hidden[0]),
    )
    return graph


def plan_replacement_graph(
    model, tcs, prompt: str, metric, *, max_feature_nodes: int | None = None, batch_size: int | None = None
) -> Plan:
    """What build_replacement_graph would compute with these arguments and the memory it would plan to use,
    from the clean pass alone (no rows): how long a prompt, how many rows. Raises as the build would."""
    direction(model, metric)
    tcs, batch, *_, src, _ = _clean_pass(model, tcs, prompt, max_feature_nodes, batch_size)
    return _plan(model, batch, src, max_feature_nodes, batch_size)


def _clean_pass(model, tcs, prompt, max_feature_nodes, batch_size):
    """The checked transcoders, the tokens, the clean trace (frozen), each layer's decomposition, the sources."""
    if not isinstance(prompt, str):
        raise GraphError(f"a graph explains one prompt: pass a str, got {type(prompt).__name__}")
    check_request(max_feature_nodes, batch_size)
    clt = tcs if isinstance(tcs, CrossLayerTranscoder) else None
    tcs = check_cross_layer(model, clt) if clt is not None else check_transcoders(model, tcs)
    batch = model.tokenize(prompt)
    with torch.no_grad():
        # freeze=True changes no value, except that a float64 model's norms stay in float64 (Hugging Face rounds
        # them to float32): the replacement model's own clean values, so edges are exact to float64
        clean = trace(model, batch, capture=[EMBED, *tcs, *(t.target for t in tcs.values())], freeze=True)
        if clt is None:
            decs = {h: decompose(t, clean.acts[h][0], clean.acts[t.target][0]) for h, t in tcs.items()}
        else:
            xs, outs = [clean.acts[h][0] for h in tcs], [clean.acts[t.target][0] for t in tcs.values()]
            decs = dict(zip(tcs, decompose_clt(clt, xs, outs)))
    ahead = None if clt is None else [w.detach() for w in clt.W_ahead]
    return tcs, batch, clean, decs, _sources(model, tcs, decs, clean.acts[EMBED][0], batch), ahead


def check_cross_layer(model, clt: CrossLayerTranscoder) -> dict:
    """A CLT's per-layer transcoders, checked as check_transcoders checks a set, with the CLT on the model's
    device (its decoders ahead included)."""
    clt.check(model)
    if clt.W_ahead[0].device != model.device:
        clt.to(model.device)
    return check_transcoders(model, {s.hook: s for s in clt.layers})


def _store(model) -> torch.dtype:
    """The rows' dtype: float32, or float64 for a float64 model."""
    return torch.promote_types(model.dtype, torch.float32)


def _plan(model, batch, src: Sources, max_feature_nodes, batch_size) -> Plan:
    n_feat = int((src.kind == 0).sum())
    at = src.pos[src.kind == 0] * model.n_layers + src.layer[src.kind == 0]  # features per (position, layer)
    kmax = int(torch.bincount(at).max()) if n_feat else 0
    bounds = entry_bounds(src.kind, src.layer, src.pos, batch.width, model.n_layers)
    return plan(model, batch.width, len(src.kind), bounds, kmax, _store(model).itemsize, max_feature_nodes, batch_size)


def _sources(model, tcs, decs, emb: Tensor, batch, bos: bool = False) -> Sources:
    """Active features and error vectors at non-<bos> positions (bos: <bos>'s too), layer by layer, then
    every token."""
    valid = batch.node_mask(include_bos=bos)[0].cpu()  # [pos], <bos> out unless bos
    kinds, layers, pos, feats, vals = [], [], [], [], []
    for layer, d in enumerate(decs.values()):
        f = d.features.cpu() * valid[:, None]  # [pos, d_sae]
        p, i = f.nonzero(as_tuple=True)
        kinds.append(torch.zeros(len(p), dtype=torch.long))
        layers.append(torch.full((len(p),), layer))
        pos.append(p)
        feats.append(i)
        vals.append(f[p, i].double())
    for layer, d in enumerate(decs.values()):
        p = valid.nonzero().squeeze(-1)
        kinds.append(torch.ones(len(p), dtype=torch.long))
        layers.append(torch.full((len(p),), layer))
        pos.append(p)
        feats.append(torch.full((len(p),), -1))
        vals.append(d.error.cpu()[p].double().norm(dim=-1))
    p = batch.attention_mask[0].cpu().bool().nonzero().squeeze(-1)  # every token, <bos> included
    kinds.append(torch.full((len(p),), 2))
    layers.append(torch.full((len(p),), -1))
    pos.append(p)
    feats.append(torch.full((len(p),), -1))
    vals.append(emb.cpu()[p].double().norm(dim=-1))
    return Sources(*(torch.cat(x) for x in (kinds, layers, pos, feats, vals)))


class _Vectors:
    """What each source adds to the stream, laid out for the per-row dot products with the gradients: per
    layer, the active features padded per position ([pos, k, d_model]: one small batched matmul per backward,
    not a gather of [rows, features, d_model]), and the error and token vectors per position. With a
    cross-layer transcoder's decoders ahead (`ahead[L]` [d_sae, reach - 1, d_out]), a feature of layer L has
    one such vector per layer it writes: vectors [reach, pos, k, d], the j-th read at layer L + j's probe."""

    def __init__(self, tcs, decs, emb: Tensor, src: Sources, width: int, ahead: list[Tensor] | None = None):
        self.layers = []  # per layer: (columns [pos, k] (-1 pad), vectors [reach, pos, k, d], error cols, vectors)
        for layer, (h, d) in enumerate(decs.items()):
            tc = tcs[h]
            dec = tc.W_dec[:, None] if ahead is None else torch.cat([tc.W_dec[:, None], ahead[layer]], 1)
            fi = ((src.kind == 0) & (src.layer == layer)).nonzero().squeeze(-1)
            ei = ((src.kind == 1) & (src.layer == layer)).nonzero().squeeze(-1)
            pos = src.pos[fi]
            k = int(torch.bincount(pos, minlength=width).max()) if len(fi) else 0
            cols = torch.full((width, k), -1, dtype=torch.long)
            vecs = torch.zeros(dec.shape[1], width, k, dec.shape[2], dtype=dec.dtype, device=dec.device)
            slot = torch.zeros(width, dtype=torch.long)
            for i, p in zip(fi.tolist(), pos.tolist()):
                cols[p, slot[p]] = i
                vecs[:, p, slot[p]] = dec[int(src.feature[i])] * float(src.value[i])
                slot[p] += 1
            ev = d.error[src.pos[ei].to(d.error.device)]  # [n, d_model]
            self.layers.append((cols, vecs, ei, src.pos[ei], ev))
        ti = (src.kind == 2).nonzero().squeeze(-1)
        self.tokens = (ti, src.pos[ti], emb[src.pos[ti].to(emb.device)])
        self.n = len(src.kind)


class _Replacement:
    """The replacement model's forward on the prompt, run once and kept for many backward passes: a batch of
    target rows shares it (torch.func.vmap over the backward, one direction per row: 1.6x faster than autograd's
    is_grads_batched on the Kobe prompt, 2-core Xeon with AMX, and within 11% of replicating the prompt), so its
    memory does not grow with the batch (circuit-tracer replicates the prompt per row instead).
    extra: more hooks to probe (graphs.heads: every attn_z), their gradients after the sources' in grads();
    reads: more hooks whose values rows can read (targets ("read", direction, pos, hook): graphs.qk's queries)."""

    def __init__(self, model, tcs, batch, acts: dict, store: torch.dtype, extra: tuple = (), reads: tuple = ()):
        self.hooks, self.store = list(tcs), store
        edits = {EMBED: _identity, **{h: _identity for h in extra}}
        for h, tc in tcs.items():
            const = (acts[tc.target] - (tc.skip(acts[h]) if tc.W_skip is not None else 0.0)).detach()
            edits[tc.target] = Held(const, tc, h if tc.W_skip is not None else None)
            spec = model.hooks[h]
            if spec.kind == "resid_mid":  # the MLP's output is replaced: its input needs no graph (~10x the memory)
                edits[model.hook(f"mlp_in.{spec.layer}").name] = _detached
        probes = (EMBED, *(t.target for t in tcs.values()), *extra)
        group = Group(edits, n=1, probes=probes)
        capture = [*tcs, *(model.hook(h).name for h in reads)]
        with torch.enable_grad(), eager_attention(model):  # the frozen pattern's backward: one matmul per head
            tr = trace(model, batch, groups=[group], capture=capture, grad=True, keep_batch=False, freeze=True)
        self.reads = {h: tr.acts[h] for h in capture}  # [1, pos, d_in], with their graph
        self.hidden = tr.hidden  # [1, pos, d_model], after the frozen final norm
        self.leaves = [tr.leaves[(0, p)] for p in probes]

    def grads(self, targets: list[tuple]) -> list[Tensor | None]:
        """The gradients [rows, pos, d] of each target's read at every probe (the embedding, each MLP output,
        then `extra`; None where no path reaches it), row r for targets[r]: ("metric", direction, pos),
        ("feature", encoder column, pos, layer) or ("read", direction, pos, one of `reads`)."""
        n = len(targets)
        inject = {}  # output key -> [rows, 1, pos, d]: row r's readout direction at its position, else zero
        for r, t in enumerate(targets):
            key = {"metric": "metric", "read": t[-1]}.get(t[0]) or self.hooks[t[3]]
            where = self.hidden if key == "metric" else self.reads[key]
            if key not in inject:
                inject[key] = where.new_zeros(n, *where.shape)
            inject[key][r, 0, t[2]] = t[1].to(where.dtype)
        outs = [self.hidden if k == "metric" else self.reads[k] for k in inject]
        leaves = self.leaves

        def backward(*directions):
            g = torch.autograd.grad(outs, leaves, directions, retain_graph=True, allow_unused=True)
            return tuple(x if x is not None else torch.zeros(()) for x in g)

        with torch.enable_grad(), warnings.catch_warnings():
            # CPU attention's backward has no batching rule: vmap loops over the rows there, and says so
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
            grads = torch.func.vmap(backward)(*inject.values())
        return [None if g.dim() == 1 else g[:, 0] for g in grads]  # vmap gives [rows] zeros for an unused probe

    def rows(self, vectors: _Vectors, targets: list[tuple]) -> Tensor:
        """[len(targets), n_sources] direct effects of every source on each target (as in grads)."""
        n = len(targets)
        grads = self.grads(targets)
        out = torch.zeros(n, vectors.n, dtype=self.store)
        g_emb = grads[0]
        ti, tpos, tvec = vectors.tokens
        if g_emb is not None:
            out[:, ti] = _dots(g_emb[:, tpos.to(g_emb.device)], tvec).to(self.store)
        for layer, (cols, vecs, ei, epos, ev) in enumerate(vectors.layers):
            if cols.numel():  # per layer written: [pos, rows, d] x [pos, d, k] -> [pos, rows, k]
                reached = [(grads[1 + layer + j], v) for j, v in enumerate(vecs) if grads[1 + layer + j] is not None]
                if reached:
                    vals = sum(torch.bmm(g.transpose(0, 1), v.to(g.dtype).transpose(1, 2)) for g, v in reached)
                    used = cols >= 0
                    out[:, cols[used]] = vals.permute(1, 0, 2).cpu()[:, used].to(self.store)
            g = grads[1 + layer]
            if g is not None and len(ei):
                out[:, ei] = _dots(g[:, epos.to(g.device)], ev).to(self.store)
        return out


def _dots(g: Tensor, vecs: Tensor) -> Tensor:
    """[rows, n, d] . [n, d] -> [rows, n] on the CPU, in the gradients' dtype (float64 for a float64 model)."""
    return torch.einsum("bnd,nd->bn", g, vecs.to(g.dtype)).cpu()


def _assemble(tcs, batch, value, src: Sources, rows: SparseRows, order, names, m_pos) -> tuple[list[GraphNode], dict]:
    """The Graph's nodes (tokens, the computed features, errors, the metric) and its edges among them, from
    the rows ({"src", "dst", "weight"}: int32, int32, float32), which it empties."""
    hooks = list(tcs)
    tokens = batch.tokens[0]
    n_src = len(src.kind)
    keep = torch.zeros(n_src, dtype=torch.bool)
    keep[torch.tensor(order, dtype=torch.long)] = True
    keep |= src.kind != 0
    total = _total_effect(rows, src, order)
    node_of = torch.full((n_src,), -1, dtype=torch.int32)  # the Graph's src/dst dtype
    nodes: list[GraphNode] = []
    for i in (src.kind == 2).nonzero().squeeze(-1).tolist():  # tokens first
        p = int(src.pos[i])
        node_of[i] = len(nodes)
        nodes.append(GraphNode(token_id(p), "token", 0, None, p, None, tokens[p], float(src.value[i]), float(total[i])))
    for layer, h in enumerate(hooks):
        for i in ((src.layer == layer) & keep & (src.kind != 2)).nonzero().squeeze(-1).tolist():
            p, f = int(src.pos[i]), int(src.feature[i])
            node_of[i] = len(nodes)
            a, t = float(src.value[i]), float(total[i])
            if src.kind[i] == 0:
                x = GraphNode(feature_id(h, p, f), "feature", layer + 1, h, p, f, tokens[p], a, t)
                x.label = names.label(h, f)
            else:
                x = GraphNode(error_id(h, p), "error", layer + 1, h, p, None, tokens[p], a, t)
            nodes.append(x)
    metric_index = len(nodes)
    nodes.append(GraphNode(METRIC_ID, "metric", len(hooks) + 1, None, m_pos, None, tokens[m_pos], value, value))
    targets = torch.tensor([metric_index] + [int(node_of[i]) for i in order], dtype=torch.int32)
    return nodes, rows.edges(keep, node_of, targets)


def _total_effect(rows: SparseRows, src: Sources, order: list[int]) -> Tensor:
    """[n_sources] each source's effect on the metric summed over the graph's paths (SparseRows.total_effect)."""
    at = torch.tensor(order, dtype=torch.long)
    return rows.total_effect(at, src.value[at])
