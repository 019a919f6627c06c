"""Edges of a replacement graph split by attention head: which heads carry an edge, exactly.

In the replacement model (graphs.replacement: patterns and norms frozen, MLPs replaced by held constants plus
the transcoders' linear skip paths) the edge s -> t is linear in s's vector v_s, a sum over paths from s's
layer to t's read. A path either crosses no attention (the residual stream and skip paths at s's own position)
or crosses one or more heads. Each path is given to the FIRST head it crosses, so

    edge = direct + sum over (layer L, head h) of part(L, h)

exactly, where
- direct = the edge with every head's OV zeroed (only the residual stream and skip paths carry it);
- part(L, h) = the edge with the heads' OV zeroed at every layer before L and at L all but h's, less the edge
  with them zeroed up to and including L: the paths whose first crossing is head h of layer L (read on from
  there through every later head, MLP skip path and the residual).
Both are interventions in the frozen model (tests/test_heads.py runs them on tiny models of every family).

How it is computed, with no row per (target, layer, head):
- per target t, one backward in the replicated replacement model (graphs.replacement, probes at every attn_z)
  gives G_t[L] = d read_t / d attn_z.L, every head's output at every position;
- per source s, one forward of the frozen model (clean norm factors and queries/keys held) with every
  attention output held at its clean value and alpha * v_s added where s writes: each attn_z.L then moves by
  alpha * (what v_s brings to head h of layer L along attention-free paths), and t's read by alpha * direct;
  alpha scales v_s far above the stream (the model is linear there, so it only shrinks rounding);
- part(L, h) = sum over positions of G_t[L] . delta attn_z_s[L], on head h's columns.
The parts are computed for chosen edges (by default a graph's kept ones, what a page draws) and stored
compactly: per edge its direct part, its `top` heads by |part| and the other heads' sum as one remainder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attribution.engine import Group, frozen_state, trace
from attribution.splice import decompose
from graphs.graph_nodes import GraphError
from graphs.head_parts import HeadParts
from graphs.replacement import EMBED, Held, _Replacement, _store, check_transcoders, direction

STREAM = 2.0**10  # v_s is scaled to this many times the largest residual norm of the prompt


def head_parts(
    model, tcs, graph, metric, *, edges=None, top: int = 3, batch_size: int = 32, progress: bool = False
) -> HeadParts:
    """The head split of `graph`'s edges (a replacement graph built with `tcs` for `metric`).

    edges: indices into the full edge arrays, or a bool mask over them; None: the kept edges.
    top: heads kept per edge (the others summed into `rest`). Set graph.heads to the result to save,
    export and draw it.
    """
    if not graph.info.get("replacement"):
        raise GraphError(
            "heads split the edges of a replacement graph (transcoders): build it with build_graph(model, tcs, ...)"
        )
    if isinstance(top, bool) or not isinstance(top, int) or top < 1 or batch_size < 1:
        raise GraphError(f"top (heads kept per edge) and batch_size must be whole numbers >= 1: {top}, {batch_size}")
    tcs = check_transcoders(model, tcs)
    if list(tcs) != list(graph.hooks):
        raise GraphError(f"the graph was built with transcoders at {graph.hooks}, not {list(tcs)}: pass the same set")
    vec, m_pos = direction(model, metric)
    good = getattr(metric, "good_ids", [None])[0]
    if graph.metric_info.get("good_id") not in (None, int(good)):
        raise GraphError(f"the graph explains {graph.metric}, not {metric!r}: pass the metric it was built for")
    idx = _chosen(graph, edges)
    batch = model.tokenize(graph.prompt)
    if batch.tokens[0] != graph.tokens:
        raise GraphError("the model tokenizes the graph's prompt differently: pass the model the graph was built with")
    hooks, n_layers = list(tcs), model.n_layers
    z_hooks = [model.hook(f"attn_z.{L}").name for L in range(n_layers)]
    n_heads = int(model.hf.config.num_attention_heads)

    with torch.no_grad():
        capture = [EMBED, *hooks, *(t.target for t in tcs.values())]
        capture += [f"{k}.{L}" for k in ("attn_out", "resid_pre", "attn_z") for L in range(n_layers)]
        clean = trace(model, batch, capture=capture, freeze=True)
        decs = {h: decompose(t, clean.acts[h][0], clean.acts[t.target][0]) for h, t in tcs.items()}
    nodes = graph.full_nodes
    src, dst = graph.src[idx].tolist(), graph.dst[idx].tolist()
    sources = sorted(set(src))
    targets = sorted(set(dst))
    width = batch.width
    store = _store(model)

    # per target: G_t[L] over every position, one backward row each
    run = _Replacement(model, tcs, batch, clean.acts, store, extra=tuple(z_hooks))
    G = {}
    for chunk in _chunks(targets, batch_size, progress, "head split: targets"):
        rows = []
        for i in chunk:
            x = nodes[i]
            if x.kind == "metric":
                rows.append(("metric", vec, m_pos % width))
            else:
                layer = hooks.index(x.hook)
                rows.append(("feature", tcs[x.hook].W_enc[:, x.feature], x.position, layer))
        grads = run.grads(rows)[1 + n_layers :]
        for r, i in enumerate(chunk):
            G[i] = torch.stack([_row(g, r, width, clean.acts, z, store) for g, z in zip(grads, z_hooks)])
    del run

    # per source: what it brings to every head along attention-free paths, and to each target's read
    frozen = frozen_state(model, batch)
    scale = STREAM * max(float(clean.acts[f"resid_pre.{L}"][0].norm(dim=-1).max()) for L in range(n_layers))
    by_source: dict[int, list[int]] = {}
    for k, s in enumerate(src):
        by_source.setdefault(s, []).append(k)
    m = len(idx)
    direct = torch.zeros(m, dtype=torch.float64)
    parts = torch.zeros(m, n_layers, n_heads, dtype=torch.float64)
    for chunk in _chunks(sources, batch_size, progress, "head split: sources"):
        vecs = [_vector(nodes[s], tcs, decs, clean.acts[EMBED][0]) for s in chunk]
        alpha = [2.0 ** round(torch.log2(torch.tensor(scale / max(float(v.norm()), 1e-30))).item()) for v in vecs]
        dz, reads, hidden = _pushed(model, tcs, batch, clean.acts, frozen, chunk, nodes, vecs, alpha, z_hooks)
        for c, s in enumerate(chunk):
            for k in by_source[s]:
                t = nodes[dst[k]]
                g = G[dst[k]]  # [L, pos, H * d_head]
                parts[k] = (g * dz[c]).reshape(n_layers, width, n_heads, -1).sum((1, 3)).double() / alpha[c]
                if t.kind == "metric":
                    read = hidden[c, m_pos % width] @ vec.to(hidden.dtype)
                else:
                    read = reads[t.hook][c, t.position] @ tcs[t.hook].W_enc[:, t.feature].to(hidden.dtype)
                direct[k] = float(read) / alpha[c]
    return _compact(idx, direct, parts, top, n_heads, graph.weight[idx])


def _chosen(graph, edges) -> Tensor:
    """Indices into the full edge arrays."""
    n = len(graph.src)
    if edges is None:
        edges = graph.edge_mask
    edges = torch.as_tensor(edges)
    if edges.dtype == torch.bool:
        if edges.shape != (n,):
            raise GraphError(f"an edge mask needs one entry per edge of the full graph ({n}), got {tuple(edges.shape)}")
        edges = edges.nonzero().squeeze(-1)
    edges = edges.to(torch.int64).flatten()
    if len(edges) and (edges.min() < 0 or edges.max() >= n):
        got = f"{int(edges.min())}..{int(edges.max())}"
        raise GraphError(f"edge indices must be in 0..{n - 1} (the full graph's edges), got {got}")
    return edges.unique()


def _chunks(items: list, size: int, progress: bool, desc: str):
    bar = tqdm(total=len(items), desc=desc, disable=not progress)
    for i in range(0, len(items), size):
        yield items[i : i + size]
        bar.update(min(size, len(items) - i))
    bar.close()


def _row(g: Tensor | None, r: int, width: int, acts: dict, hook: str, store) -> Tensor:
    """Row r of a probe's gradient on the CPU (zeros where no path reached the probe)."""
    if g is None:
        return torch.zeros(width, acts[hook].shape[-1], dtype=store)
    return g[r].to(store).cpu()


def _vector(x, tcs, decs, emb: Tensor) -> Tensor:
    """What source node x adds to the stream (graphs.replacement's v_s)."""
    if x.kind == "token":
        return emb[x.position]
    if x.kind == "error":
        return decs[x.hook].error[x.position]
    if x.kind == "feature":
        return x.activation * tcs[x.hook].W_dec[x.feature]
    raise GraphError(f"{x.id} is no source of edges")


@dataclass
class _Held:
    """An attention output held at its clean value: its heads' OV carries nothing of the rows' own input."""

    clean: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return self.clean.to(x.dtype).expand_as(x)


@dataclass
class _Push:
    """An edit plus a per-row vector added after it."""

    edit: object
    delta: Tensor  # [rows, pos, d]

    @property
    def reads(self):
        return getattr(self.edit, "reads", None)

    def __call__(self, x: Tensor, read: Tensor | None = None) -> Tensor:
        out = self.edit(x) if read is None else self.edit(x, read)
        return out + self.delta.to(out.dtype)


def _identity(x: Tensor) -> Tensor:
    return x


def _pushed(model, tcs, batch, acts, frozen, chunk, nodes, vecs, alpha, z_hooks):
    """One frozen forward: row 0 clean, row 1 + c with alpha_c v_c added where chunk[c] writes, attention
    outputs held. Returns (delta attn_z [c, L, pos, width], delta reads {hook: [c, pos, d]}, delta hidden)."""
    n, width = len(chunk) + 1, batch.width
    writes = {EMBED: EMBED, **{h: tc.target for h, tc in tcs.items()}}
    deltas = {w: torch.zeros(n, width, model.d_model, dtype=model.dtype) for w in writes.values()}
    for c, (s, v) in enumerate(zip(chunk, vecs), 1):
        x = nodes[s]
        where = writes[EMBED if x.kind == "token" else x.hook]
        deltas[where][c, x.position] = alpha[c - 1] * v.to(model.dtype)
    edits = {EMBED: _Push(_identity, deltas[EMBED])}
    for h, tc in tcs.items():
        const = (acts[tc.target] - (tc.skip(acts[h]) if tc.W_skip is not None else 0.0)).detach()
        edits[tc.target] = _Push(Held(const, tc, h if tc.W_skip is not None else None), deltas[tc.target])
    for L in range(model.n_layers):
        edits[f"attn_out.{L}"] = _Held(acts[f"attn_out.{L}"])
    with torch.no_grad():
        tr = trace(model, batch, groups=[Group(edits, n=n)], capture=[*z_hooks, *tcs], keep_batch=False, freeze=frozen)
    dz = torch.stack([(tr.acts[z][1:] - tr.acts[z][:1]) for z in z_hooks], 1).cpu()
    reads = {h: (tr.acts[h][1:] - tr.acts[h][:1]).cpu() for h in tcs}
    return dz, reads, (tr.hidden[1:] - tr.hidden[:1]).cpu()


def _compact(idx, direct, parts, top, n_heads, weight) -> HeadParts:
    """Top heads per edge by |part|, the rest summed; the gap to the graph's float32 weights measured."""
    m = parts.shape[0]
    flat = parts.reshape(m, -1)
    k = min(top, flat.shape[1])
    order = flat.abs().argsort(dim=1, descending=True, stable=True)[:, :k]
    value = flat.gather(1, order)
    rest = flat.scatter(1, order, torch.zeros_like(value)).sum(1)  # the other heads' parts, summed
    layer, head = order // n_heads, order % n_heads
    total = direct + flat.sum(1)
    w = weight.double()
    gap = float((total - w).abs().max() / w.abs().max().clamp_min(1e-30)) if m else 0.0
    return HeadParts(idx, direct, layer, head, value, rest, n_heads, gap)


@dataclass
class _Zeroed:
    """attn_z with some heads' columns zeroed: their OV carries nothing."""

    keep: Tensor  # [n_heads * d_head] 0/1

    def __call__(self, x: Tensor) -> Tensor:
        return x * self.keep.to(x.dtype)


def intervened(model, tcs, graph, metric, edge: int, zero: dict[int, list[int]]) -> float:
    """Edge `edge` (an index into the full edge arrays) measured by intervention in the frozen replacement
    model with the heads `zero` ({layer: [heads]}) zeroed: t's read with s present less with s removed
    (features held, as edges are direct effects). A check of head_parts on any model:
    part(L, h) = intervened(zero={l: all for l < L} | {L: all but h}) - intervened(zero={l: all for l <= L})."""
    tcs = check_transcoders(model, tcs)
    batch = model.tokenize(graph.prompt)
    n_layers = model.n_layers
    with torch.no_grad():
        capture = [EMBED, *tcs, *(t.target for t in tcs.values()), *(f"attn_z.{L}" for L in range(n_layers))]
        clean = trace(model, batch, capture=capture, freeze=True)
        decs = {h: decompose(t, clean.acts[h][0], clean.acts[t.target][0]) for h, t in tcs.items()}
    s, t = graph.full_nodes[int(graph.src[edge])], graph.full_nodes[int(graph.dst[edge])]
    writes = {EMBED: EMBED, **{h: tc.target for h, tc in tcs.items()}}
    deltas = {w: torch.zeros(2, batch.width, model.d_model, dtype=model.dtype) for w in writes.values()}
    deltas[writes[EMBED if s.kind == "token" else s.hook]][1, s.position] = -_vector(s, tcs, decs, clean.acts[EMBED][0])
    edits = {EMBED: _Push(_identity, deltas[EMBED])}
    for h, tc in tcs.items():
        const = (clean.acts[tc.target] - (tc.skip(clean.acts[h]) if tc.W_skip is not None else 0.0)).detach()
        edits[tc.target] = _Push(Held(const, tc, h if tc.W_skip is not None else None), deltas[tc.target])
    n_heads = int(model.hf.config.num_attention_heads)
    for L, heads in zero.items():
        z = clean.acts[f"attn_z.{L}"]
        keep = torch.ones(n_heads, z.shape[-1] // n_heads, dtype=z.dtype)
        keep[list(heads)] = 0
        edits[f"attn_z.{L}"] = _Zeroed(keep.flatten())
    with torch.no_grad():
        tr = trace(
            model,
            batch,
            groups=[Group(edits, n=2)],
            capture=list(tcs),
            keep_batch=False,
            freeze=frozen_state(model, batch),
        )
    if t.kind == "metric":
        vec, pos = direction(model, metric)
        read = tr.hidden[:, pos % batch.width] @ vec.to(tr.hidden.dtype)
    else:
        read = tr.acts[t.hook][:, t.position] @ tcs[t.hook].W_enc[:, t.feature].to(tr.hidden.dtype)
    return float(read[0] - read[1])
