"""The heads worth a QK decomposition: those whose attention moves the most into the metric's position.

A head h of layer L adds to the residual stream at the destination d (the metric's position)
    out_h(d) = sum_k A_h[d, k] O_h v_h(k)
(A the clean pattern, v_h(k) the value of position k, O_h the head's slice of the output projection, in
Gemma followed by the post-norm at its clean factor). Its effect on the metric through the replacement
model, with the graph's active features responding linearly (slope 1, as a node's attribution counts
paths), is out_h(d) . g_L, g_L the metric's gradient at attn_out.L[d] there; the part from key k is
    moved_h(k) = A_h[d, k] (O_h v_h(k)) . g_L.
Keys other than d itself and <bos> are what the head moves from elsewhere in the prompt (<bos> is the usual
sink, a near-constant); `moving_heads` ranks heads by |sum of those|, and names the key moving the most.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from attribution.engine import trace
from attribution.models.attention import Attention
from attribution.splice import decompose
from graphs.graph_nodes import GraphError
from graphs.replacement import check_transcoders, direction


@dataclass
class Head:
    layer: int
    head: int
    dest: int  # the destination: the metric's position
    key: int  # the key position moving the most (largest |moved_h(k)|, k not d or <bos>)
    moved: float  # sum of moved_h(k) over keys other than d and <bos>: metric units
    from_key: float  # moved_h(key)
    total: float  # sum over every key, d and <bos> included
    pattern: float  # A_h[d, key]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Linear:
    """A transcoder's MLP output with its active features responding linearly to their read (slope 1)."""

    const: Tensor  # [1, pos, d]: the clean output less the skip path
    tc: object
    clean_read: Tensor  # [1, pos, d_in]
    active: Tensor  # [pos, d_sae] float: 1 where a feature is a node (active, not at <bos>)

    @property
    def reads(self):
        return self.tc.hook

    def __call__(self, x: Tensor, read: Tensor) -> Tensor:
        delta = ((read - self.clean_read) @ self.tc.W_enc) * self.active
        return (self.const + self.tc.skip(read) + delta @ self.tc.W_dec).to(x.dtype)


def moving_heads(model, tcs, prompt: str, metric, *, top: int = 3, layers=None) -> list[Head]:
    """The `top` heads moving the most (|moved|, module docstring) into the metric's position, largest
    first. layers: the layers to look at (None: all). `metric` is a single logit difference, as a replacement
    graph's."""
    tcs = check_transcoders(model, tcs)
    vec, d = direction(model, metric)
    batch = model.tokenize(prompt)
    width = batch.width
    d %= width
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    if width < 3:
        raise GraphError(f"{prompt!r} has {width} tokens: a head moves nothing from elsewhere in fewer than 3")
    grads, pre = metric_gradients(model, tcs, batch, vec, d, layers)
    bos = 0 if batch.bos else -1
    heads = []
    with torch.no_grad():
        for layer in layers:
            att = Attention(model, layer)
            for h, per_key in enumerate(moved(att, pre[layer], d, grads[layer])):
                others = torch.tensor([k not in (d, bos) for k in range(d + 1)])
                mv = per_key * others
                k = int(mv.abs().argmax())
                a = float(att.pattern(pre[layer][: d + 1], torch.arange(d + 1), h)[d, k])
                heads.append(Head(layer, h, d, k, float(mv.sum()), float(per_key[k]), float(per_key.sum()), a))
    return sorted(heads, key=lambda x: (-abs(x.moved), x.layer, x.head))[:top]


def moved(att: Attention, x: Tensor, d: int, g: Tensor) -> Tensor:
    """[heads, d + 1] moved_h(k) for every head and key k <= d (module docstring): x the clean residual at
    the layer's input [pos, d_model], g the metric's gradient at attn_out[d]."""
    keys = torch.arange(d + 1)
    v = att.project(x[: d + 1], keys, "v")  # [keys, kv, d_head]
    A = torch.stack([att.pattern(x[: d + 1], keys, h)[d] for h in range(att.n_heads)])  # [heads, keys]
    z = torch.stack([A[h].to(v.dtype) @ v[:, att.kv_head(h)] for h in range(att.n_heads)])  # [heads, d_head]
    scale = att.post_scale(z[None])
    rows = []
    for h in range(att.n_heads):
        out = att.head_out(v[:, att.kv_head(h)], h, None if scale is None else scale.expand(d + 1, 1))
        rows.append(A[h].double() * (out.double() @ g.double()))
    return torch.stack(rows)


def metric_gradients(model, tcs, batch, vec: Tensor, d: int, layers: list[int]):
    """({layer: the metric's gradient at attn_out.L[d]}, {layer: the clean residual at its input [pos, d]})
    in the replacement model with the graph's features linear (frozen norms and patterns)."""
    hooks = list(tcs)
    pre = [model.hook(f"resid_pre.{layer}").name for layer in layers]
    outs = [model.hook(f"attn_out.{layer}").name for layer in layers]
    with torch.no_grad():
        clean = trace(model, batch, capture=[*pre, *hooks, *(t.target for t in tcs.values())], freeze=True)
    valid = batch.node_mask()[0]
    edits = {}
    for h, tc in tcs.items():
        read, out = clean.acts[h], clean.acts[tc.target]
        f = decompose(tc, read[0], out[0]).features
        active = ((f != 0) & valid[:, None].to(f.device)).to(f.dtype)
        edits[tc.target] = Linear((out - tc.skip(read)).detach(), tc, read.detach(), active)
    with torch.enable_grad():
        tr = trace(model, batch, edits=edits, capture=outs, grad=True, freeze=True)
        value = tr.hidden[0, d] @ vec.to(tr.hidden.dtype)
        grads = torch.autograd.grad(value, [tr.acts[o] for o in outs], allow_unused=True)
    return (
        {layer: (g[0, d] if g is not None else torch.zeros(model.d_model)) for layer, g in zip(layers, grads)},
        {layer: clean.acts[p][0] for layer, p in zip(layers, pre)},
    )
