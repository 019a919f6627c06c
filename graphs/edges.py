"""Activations, gradients and direct-effect edges between consecutive SAE layers.

Edge u -> d is `v_u . dr_d/dx_up`, the change in d's pre-activation per unit of u:
- v_u, what u adds to the residual at its position: a_i W_dec[i] (feature), e (error), the embedding (token);
- r_d, the linear readout of d at its position downstream: W_enc[:, j] for a feature (its pre-activation);
  for an error node the readout g - W_enc[:, A] (W_dec[A] g), the gradient of g . e(x) with g the metric's
  gradient there and A the active features (feature-circuits' projection of an error onto the gradient).

Residual SAEs cover the whole stream, so every path between SAE layers passes through each SAE layer in
between: the blocks between two consecutive SAE layers are the direct path. Attention patterns and norms
are not frozen: edges are the real model's local Jacobian, like the library's attributions.

One trace per chunk of downstream nodes: the upstream activation is replicated as a [rows, pos, d_model]
leaf, row b's objective is downstream node b's readout, and one backward gives every row's gradient.
Rows are taken in position order and each chunk's prompt is cut after its last row's position (causal
models: nothing there depends on later tokens), and tokens before the first upstream node are not rerun
(their keys and values come from one clean forward of that prefix, splice.Past): on a long prompt a row
costs the span between its layer's nodes, not the whole prompt.
Chunks hold as many rows as fit in memory (attribution.memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attribution import memory
from attribution.attribute import Gradients, gradients
from attribution.engine import Group, Past, trace
from attribution.errors import check_finite
from attribution.models import Batch
from attribution.splice import Decomposition, decompose

EMBED = "resid_pre.0"  # the token nodes' vectors: the input of block 0, i.e. the (scaled) embedding


@dataclass
class Clean:
    """One forward and backward of the clean prompt: what every node and edge is made of."""

    metric: float
    acts: dict[str, Tensor]  # hook -> [pos, d_model], EMBED included
    grads: dict[str, Tensor]  # hook -> [pos, d_model], d(metric)/dx through the real model
    decs: dict[str, Decomposition]  # SAE hook -> features [1, pos, d_sae], error [1, pos, d_model]
    hidden: Tensor  # [pos, d_model] final-norm states, for the answer's probability


def clean_pass(model, saes: dict, batch, metric) -> tuple[Clean, Gradients]:
    """attribution.gradients at the embedding and every SAE hook (the pass attribute() makes), as the one
    prompt's rows, with each SAE's decomposition."""
    g = gradients(model, batch, metric, [EMBED, *saes])
    acts = {h: a[0] for h, a in g.acts.items()}
    decs = {h: decompose(sae, acts[h][None]) for h, sae in saes.items()}
    return Clean(float(g.metric[0]), acts, {h: x[0] for h, x in g.grads.items()}, decs, g.hidden[0]), g


@dataclass
class Side:
    """One row of nodes as edges see it: graph indices, positions and one d_model vector each."""

    index: Tensor  # [n] long, graph node indices
    pos: Tensor  # [n] long, token positions
    vec: Tensor  # [n, d_model]: contributions v_u (upstream) or readouts r_d (downstream)

    def __len__(self) -> int:
        return len(self.index)


def readouts(sae, dec: Decomposition, grad: Tensor, pos: Tensor, features: Tensor) -> Tensor:
    """r_d for nodes at `pos` (`features` -1 = error node): [n] -> [n, d_model]."""
    out = torch.empty(len(pos), grad.shape[-1], dtype=torch.float64, device=grad.device)
    is_f = features >= 0
    out[is_f.to(out.device)] = sae.W_enc[:, features[is_f]].T.double()
    for n in (~is_f).nonzero().squeeze(-1).tolist():
        t = int(pos[n])
        g = grad[t].double()  # [d_model]
        active = (dec.features[0, t] != 0).nonzero().squeeze(-1)  # [k]
        out[n] = g - sae.W_enc[:, active].double() @ (sae.W_dec[active].double() @ g)
    return out


def blocks_between(model, up_hook: str, down_hook: str) -> int:
    """Transformer blocks from one residual hook to a later one (resid_pre.L = L, resid_post.L = L + 1)."""

    def depth(h):
        spec = model.hook(h)
        return spec.layer + (spec.kind == "resid_post")

    return max(0, depth(down_hook) - depth(up_hook))


def row_bytes(model, pos: int, blocks: int) -> int:
    """Memory of one downstream row: its forward + backward over `blocks` blocks, the leaf and its gradient."""
    return memory.forward_bytes(model, 1, pos, blocks, grad=True) + pos * model.d_model * 4 * 4


def direct_edges(
    model, batch, up_hook: str, up: Side, down_hook: str, down: Side, max_rows: int | None, fixed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Sparse edges (source index [E] int32, target index [E] int32, weight [E] float32, each rounded once from
    the float64 product) from `up` to `down`, batched backward.

    max_rows: rows per backward (None: as many as fit beside `fixed` bytes, at most 256).
    """
    srcs, dsts, ws = [], [], []
    up_pos = sorted(set(up.pos.tolist()))
    blocks = blocks_between(model, up_hook, down_hook)
    if max_rows is None:
        width = int(down.pos.max()) + 1 if len(down) else 1
        max_rows = memory.chunk_rows(
            None, row_bytes(model, width, blocks), fixed, what=f"graph edges into {down_hook}", arg="", most=256
        )
    # positions before the first upstream node hold no leaf anyone differentiates: their keys and values
    # are the clean prefix's, computed once
    first = min(up_pos) if up_pos else 0
    same = model.hook(up_hook).name == model.hook(down_hook).name
    past = Past(model, batch, first) if first > 0 and not same else None
    off = past.start if past is not None else 0
    by_pos = down.pos.argsort(stable=True)
    by_pos = by_pos[down.pos[by_pos] >= first]  # a node before every upstream node receives no edge
    for start in range(0, len(by_pos), max_rows):
        rows = by_pos[start : start + max_rows]
        S, R = down.pos[rows], down.vec[rows]  # [B], [B, d_model]
        end = int(S.max()) + 1
        G = _row_gradients(model, _prefix(batch, end), up_hook, down_hook, S, R, past)  # [B, end - off, d_model]
        for t in up_pos:
            if t >= end:
                break
            mine = (up.pos == t).nonzero().squeeze(-1)
            W = (G[:, t - off].double() @ up.vec[mine].double().T).float().cpu()  # [B, U_t], the Graph's float32
            keep = (t <= S)[:, None] & (W != 0)  # causal: nothing flows backwards in position
            b, u = keep.nonzero(as_tuple=True)
            srcs.append(up.index[mine][u].int())  # the Graph's int32: no [E] int64 to concatenate
            dsts.append(down.index[rows][b].int())
            ws.append(W[b, u])
        del G
    if not srcs:
        empty = torch.zeros(0, dtype=torch.int32)
        return empty, empty, torch.zeros(0, dtype=torch.float32)
    return torch.cat(srcs), torch.cat(dsts), torch.cat(ws)


def _prefix(batch, n: int):
    """The first n tokens of a one-prompt, unpadded batch."""
    if n >= batch.width:
        return batch
    return Batch(
        batch.input_ids[:, :n],
        batch.attention_mask[:, :n],
        batch.position_ids[:, :n],
        [n],
        [batch.tokens[0][:n]],
        batch.bos,
    )


def _row_gradients(model, batch, up_hook: str, down_hook: str, S: Tensor, R: Tensor, past=None) -> Tensor:
    """G[b] = d(R[b] . x_down[b, S[b]]) / d x_up[b]: one forward of B rows and one backward (from
    `past.start` on when given: G then covers those positions only)."""
    B = len(S)
    if model.hook(up_hook).name == model.hook(down_hook).name:  # the first SAE sits on the embedding itself
        G = R.new_zeros(B, batch.width, R.shape[-1])
        G[torch.arange(B), S] = R
        return G
    # B copies of the clean row join at the upstream hook as one leaf; row b's objective is node b's readout
    rows = Group({up_hook: _same}, n=B, leaves=(up_hook,))
    tr = trace(
        model, batch, groups=[rows], capture=[down_hook], grad=True, stop_early=True, past=past, keep_batch=False
    )
    x = tr.acts[model.hook(down_hook).name][tr.groups[0]]  # [B, pos, d_model]
    objective = (x[torch.arange(B), S - (past.start if past else 0)] * R.to(x.dtype)).sum()
    (G,) = torch.autograd.grad(objective, tr.leaves[(0, model.hook(up_hook).name)])
    check_finite(G, f"the gradient from {down_hook} to {up_hook}")
    return G


def _same(x: Tensor) -> Tensor:
    """The identity edit: the rows stay copies of the clean row (they join only to become a leaf)."""
    return x
