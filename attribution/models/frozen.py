"""The frozen replacement model's pieces: norms with their scale held at its value on the prompt, and the
attention's queries and keys cut from the gradient (so attention patterns are constants).

With both frozen, and each MLP replaced by constants (its transcoder's features and error term) plus a linear
skip path, a transformer is linear in its residual stream: every edge of a replacement graph is an exact
linear effect. These are pure functions of a module's input or output; attribution.engine applies them:
`trace(..., freeze=True)` detaches (values unchanged, gradients linear), `freeze=Frozen` (captured from the
clean prompt by engine.frozen_state) holds the clean prompt's factors and queries/keys, so that an
intervention runs the replacement model itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def norm_scale(module: nn.Module, x: Tensor) -> Tensor:
    """The normalising factor a LayerNorm or RMSNorm applies to x: 1/std or 1/rms, [..., 1]."""
    if isinstance(module, nn.LayerNorm):
        centred = x - x.mean(-1, keepdim=True)
        return torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + module.eps)
    eps = getattr(module, "eps", None) or getattr(module, "variance_epsilon", None)
    if eps is None:
        raise TypeError(f"{type(module).__name__} is not a LayerNorm or an RMSNorm with eps: cannot freeze it")
    xf = x.to(_at_least_float32(x.dtype))
    return torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """RMSNorms compute in float32 (Hugging Face upcasts); a float64 model keeps float64, so that the frozen
    model is linear to float64 precision (the tests check edges to 1e-9)."""
    return torch.promote_types(dtype, torch.float32)


def frozen_norm(module: nn.Module, x: Tensor, offset: float, scale: Tensor | None = None) -> Tensor:
    """module(x) with its normalising factor held: `scale` (the clean prompt's, [1, pos, 1]) or x's own,
    detached. RMSNorm scales by (offset + weight), Gemma's offset being 1; computed as the module computes
    it, so with x's own factor the value is the module's (in float64 for a float64 model, where Hugging Face
    rounds to float32)."""
    scale = norm_scale(module, x).detach() if scale is None else scale
    if isinstance(module, nn.LayerNorm):
        y = (x - x.mean(-1, keepdim=True)) * scale
        return y * module.weight + module.bias if module.elementwise_affine else y
    wide = _at_least_float32(x.dtype)
    y = x.to(wide) * scale
    if offset:
        return (y * (offset + module.weight.to(wide))).type_as(x)
    return module.weight * y.to(x.dtype)


def frozen_qk(out: Tensor, layout: str, n_heads: int, clean: Tensor | None = None) -> Tensor:
    """A projection's output with its query and key parts held: taken from `clean` (the clean prompt's
    output, [1, pos, d]) or detached. Layouts: "all" (a separate q or k projection), "thirds" (GPT-2's fused
    [q | k | v]) or "heads" (GPT-NeoX's fused per-head [q k v])."""
    held = out.detach() if clean is None else clean.to(out.dtype).expand_as(out)
    if layout == "all":
        return held
    if layout == "thirds":
        d = out.shape[-1] // 3
        return torch.cat([held[..., : 2 * d], out[..., 2 * d :]], -1)
    if layout == "heads":
        per, fix = (t.reshape(*out.shape[:-1], n_heads, 3, -1) for t in (out, held))
        return torch.cat([fix[..., :2, :], per[..., 2:, :]], -2).reshape(out.shape)
    raise ValueError(f"unknown q/k layout {layout!r}")
