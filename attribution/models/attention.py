"""A layer's attention heads as plain functions of the layer's residual input (resid_pre.L), per family.

The QK decomposition (graphs.qk) needs each head's query and key as functions of the residual stream, with
the block's input norm and Gemma's / Qwen 3's per-head q_norm / k_norm held at their clean scale, so that
they are affine and the score q.k is bilinear. Hugging Face computes them inside the attention module's
forward; this module repeats those steps from the module's own weights and functions (its projections, the
model's rotary embedding and the family's apply_rotary_pos_emb), so that the result is the model's: the
tests compare patterns with Hugging Face's own (output_attentions) on every family.

    att = attention(model, layer)
    q = att.project(x, pos, "q")            # [n, heads, d_head], live norms (the real model)
    held = att.held(x, "q")                 # the clean norm factors ...
    q = att.project(x2, pos, "q", held)     # ... held: affine in x2 (the replacement model)
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from attribution.errors import AttributionError
from attribution.models.frozen import frozen_norm, norm_scale

PARTS = ("q", "k", "v")


@dataclass
class Held:
    """Norm factors held at their clean values: the block's input norm [n, 1], the head norm [n, heads, 1]."""

    norm: Tensor
    head: Tensor | None


class Attention:
    """Layer `layer`'s self-attention read from its modules (see the module docstring)."""

    def __init__(self, model, layer: int):
        if not 0 <= layer < model.n_layers:
            raise AttributionError(f"layer {layer} out of range: the model has layers 0..{model.n_layers - 1}")
        fam, cfg = model.family, model.hf.config
        block = f"{fam.layers}.{layer}"
        self.model, self.layer = model, layer
        self.module = model.hf.get_submodule(f"{block}.{fam.inner[0] if fam.inner else fam.attn[0]}")
        self.norm = model.hf.get_submodule(f"{block}.{fam.norms[0]}")  # the block's input norm
        self.post = model.hf.get_submodule(f"{block}.{fam.attn[0]}") if fam.inner else None  # Gemma's post-norm
        self.offset = fam.norm_offset
        m = self.module
        self.n_heads = cfg.num_attention_heads if hasattr(cfg, "num_attention_heads") else cfg.n_head
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.d_head = getattr(m, "head_dim", None) or getattr(m, "head_size", None) or model.d_model // self.n_heads
        self.scaling = float(getattr(m, "scaling", self.d_head**-0.5))
        self.window = getattr(m, "sliding_window", None)
        self.softcap = getattr(cfg, "attn_logit_softcapping", None)
        types = getattr(cfg, "layer_types", None)
        self._rotary = getattr(model.hf.base_model, "rotary_emb", None)
        self._rotary_kw = {}
        if self._rotary is not None and "layer_type" in inspect.signature(self._rotary.forward).parameters:
            self._rotary_kw = {"layer_type": types[layer]}
        self._apply = getattr(sys.modules[type(m).__module__], "apply_rotary_pos_emb", None)
        if not any(hasattr(m, a) for a in ("q_proj", "c_attn", "query_key_value")):
            raise AttributionError(f"{type(m).__name__}: no q_proj, c_attn or query_key_value to read heads from")

    def kv_head(self, head: int) -> int:
        """The key/value head a query head reads (grouped-query attention)."""
        return head // (self.n_heads // self.n_kv)

    def check_head(self, head: int) -> None:
        if not 0 <= head < self.n_heads:
            raise AttributionError(f"head {head} out of range: layer {self.layer} has heads 0..{self.n_heads - 1}")

    def visible(self, q: int, k: int) -> bool:
        """Whether query position q attends to key position k (causal, within a sliding window)."""
        return k <= q and (self.window is None or q - k < self.window)

    def held(self, x: Tensor, part: str) -> Held:
        """The clean norm factors at x (rows of the residual), to hold in project() (rotary comes after them)."""
        x = x.reshape(-1, x.shape[-1])
        scale = norm_scale(self.norm, x)
        head = self._head_norm(part)
        raw = self._raw(frozen_norm(self.norm, x, self.offset, scale), part)
        return Held(scale, norm_scale(head, raw) if head is not None else None)

    def project(self, x: Tensor, pos: Tensor | int, part: str, held: Held | None = None) -> Tensor:
        """[n, heads, d_head] queries (part "q", scaled by the attention's scaling), keys ("k") or values ("v")
        of residual rows x [n, d_model] at positions pos, after the input norm (and the head norm and rotary
        embedding for q and k). held: norm factors to hold (affine in x); None: x's own, gradients through
        them (the real model)."""
        if part not in PARTS:
            raise AttributionError(f"part must be one of {PARTS}, got {part!r}")
        x = x.reshape(-1, x.shape[-1])
        pos = torch.as_tensor(pos).reshape(-1).expand(x.shape[0]).to(x.device)
        live = held is None  # the norms' own factors, gradients through them included: the real model
        scale = norm_scale(self.norm, x) if live else held.norm
        y = self._raw(frozen_norm(self.norm, x, self.offset, scale), part)
        head = self._head_norm(part)
        if head is not None:
            y = frozen_norm(head, y, self.offset, norm_scale(head, y) if live else held.head)
        if part != "v" and self._rotary is not None:
            cos, sin = self._rotary(y, pos[None], **self._rotary_kw)
            y = self._apply(y, y, cos[0], sin[0], unsqueeze_dim=1)[0]
        return y * self.scaling if part == "q" else y

    def scores(self, x: Tensor, positions: Tensor, head: int) -> Tensor:
        """[n, n] head's pre-softmax scores among residual rows x [n, d_model] at `positions` (live norms),
        soft-capped where the model caps them, -inf where the query does not see the key."""
        q = self.project(x, positions, "q")[:, head]
        k = self.project(x, positions, "k")[:, self.kv_head(head)]
        s = q @ k.T
        if self.softcap is not None:
            s = self.softcap * torch.tanh(s / self.softcap)
        p = positions.tolist()
        seen = torch.tensor([[self.visible(a, b) for b in p] for a in p], device=s.device)
        return s.masked_fill(~seen, float("-inf"))

    def pattern(self, x: Tensor, positions: Tensor, head: int) -> Tensor:
        """[n, n] head's attention pattern among rows x at `positions` (softmax in float32 or wider)."""
        s = self.scores(x, positions, head)
        return torch.softmax(s.to(torch.promote_types(s.dtype, torch.float32)), -1)

    def head_out(self, z: Tensor, head: int, scale: Tensor | None = None) -> Tensor:
        """[n, d_model] what head `head`'s mixed values z [n, d_head] add to the residual stream through the
        output projection (bias left out: a constant) and, in Gemma, the post-norm held at `scale` [n, 1]."""
        W = self._out_weight()[:, head * self.d_head : (head + 1) * self.d_head]  # [d_model, d_head]
        y = z.to(W.dtype) @ W.T
        if self.post is not None:
            if scale is None:
                raise AttributionError("a post-norm family needs the post-norm's clean scale: see post_scale()")
            y = frozen_norm(self.post, y, self.offset, scale)
        return y

    def post_scale(self, z_all: Tensor) -> Tensor | None:
        """[n, 1] the post-norm's factor on the attention output of all heads' mixed values z_all [n, heads,
        d_head] (None where the family has no post-norm)."""
        if self.post is None:
            return None
        W = self._out_weight()
        o = z_all.reshape(z_all.shape[0], -1).to(W.dtype) @ W.T
        bias = self._out_bias()
        return norm_scale(self.post, o if bias is None else o + bias)

    def _out_weight(self) -> Tensor:
        m = self.module
        if hasattr(m, "o_proj"):
            return m.o_proj.weight
        if hasattr(m, "c_proj"):  # GPT-2's Conv1D: [in, out]
            return m.c_proj.weight.T
        return m.dense.weight

    def _out_bias(self) -> Tensor | None:
        m = self.module
        lin = getattr(m, "o_proj", None) or getattr(m, "c_proj", None) or getattr(m, "dense", None)
        return lin.bias

    def _head_norm(self, part: str):
        return getattr(self.module, f"{part}_norm", None) if part != "v" else None

    def _raw(self, xn: Tensor, part: str) -> Tensor:
        """[n, heads, d_head] the projection's output for `part`, before head norms and rotary."""
        m, n, i = self.module, xn.shape[0], PARTS.index(part)
        if hasattr(m, "q_proj"):
            return getattr(m, f"{part}_proj")(xn).view(n, -1, self.d_head)
        if hasattr(m, "c_attn"):  # GPT-2: [q | k | v], each d_model wide
            return m.c_attn(xn).split(self.model.d_model, -1)[i].reshape(n, -1, self.d_head)
        return m.query_key_value(xn).view(n, self.n_heads, 3 * self.d_head).chunk(3, -1)[i]  # NeoX: per head


def attention(model, layer: int) -> Attention:
    return Attention(model, layer)
