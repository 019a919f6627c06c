"""Splicing SAEs: an activation as SAE features plus an error term, x = decode(f) + e, and the checks that
put an SAE beside a model. Pure tensor math; attribution.engine runs the model with these in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from attribution.errors import SAEError


def prepare_saes(model, saes) -> dict:
    """{hook: SAE} keyed by canonical hook names, each checked against the model and on its device.

    An SAE on another device is moved to the model's (in place, like nn.Module.to: later calls find it
    there); it keeps its own dtype, and activations are cast at the boundary (see SAE)."""
    from attribution.saes import SAE

    if isinstance(saes, SAE):
        raise SAEError(f"saes must be {{hook: SAE}} or a list of SAEs, got one {saes!r}: pass {{sae.hook: sae}}")
    if not isinstance(saes, dict):
        items = list(saes) if isinstance(saes, Iterable) and not isinstance(saes, str) else None
        if items is None or not all(isinstance(s, SAE) for s in items):
            raise SAEError(f"saes must be {{hook: SAE}} or a list of SAEs, got {type(saes).__name__} {saes!r:.80}")
        saes = {s.hook: s for s in items}
    prepared = {}
    for hook, sae in saes.items():
        if not isinstance(sae, SAE):
            raise SAEError(f"the value at {hook!r} is {type(sae).__name__}, not an SAE: load one with load_sae(path)")
        name = model.hook(hook).name
        if model.hook(sae.hook).name != name:
            raise SAEError(f"SAE trained at {sae.hook!r} was given for hook {hook!r}; key it by its own hook")
        place(model, sae)
        sae.check(model)
        prepared[name] = sae
    return dict(sorted(prepared.items(), key=lambda kv: model.hooks[kv[0]].order))


def place(model, sae):
    """The SAE on the model's device: moved there in place (like nn.Module.to) if it is elsewhere, in its own
    dtype. Every entry point that runs an SAE beside the model calls this (or prepare_saes)."""
    if sae.W_dec.device != model.device:
        sae.to(model.device)
    return sae


@dataclass
class Decomposition:
    """An activation split into SAE features and the error term: x = decode(f) + e.

    Both are in the wider of the model's and the SAE's dtype: for a bf16 model and a float32 SAE the error
    is x (exactly representable in float32) minus the float32 reconstruction, not a bf16 difference of two
    large numbers (gemma's residual reaches ~6,000, where a bf16 step is 32)."""

    features: Tensor  # [rows, pos, d_sae]
    error: Tensor  # [rows, pos, d_model]


@torch.no_grad()
def decompose(sae, x: Tensor, out: Tensor | None = None) -> Decomposition:
    """x's features and the error term; for a transcoder, of `out` (its target hook's value) from x:
    out = decode(f) + x W_skip + e."""
    x = x.to(wide(x.dtype, sae))
    f = sae.encode(x)
    if sae.is_transcoder:
        if out is None:
            raise SAEError(f"{sae!r} is a transcoder: its error term needs the value at {sae.target} too")
        out = out.to(x.dtype)
        return Decomposition(f, out - (decode(sae, f) + sae.skip(x)).to(x.dtype))
    return Decomposition(f, x - decode(sae, f).to(x.dtype))


@torch.no_grad()
def decompose_clt(clt, xs: list[Tensor], outs: list[Tensor]) -> list[Decomposition]:
    """Each layer's features and error term under a cross-layer transcoder (attribution.saes.clt), from every
    layer's input xs[L] and MLP output outs[L]: out_l = sum_s f_s W_dec[s -> l] + b_dec_l + x_l W_skip_l + e_l."""
    xs = [x.to(wide(x.dtype, clt.layers[0])) for x in xs]
    fs = clt.encode(xs)
    return [Decomposition(f, out.to(y.dtype) - y) for f, y, out in zip(fs, clt.decode(fs, xs), outs)]


def decompose_acts(sae, acts: dict, hook: str) -> Decomposition:
    """decompose with the values a trace captured (for a transcoder its input `hook` and its target)."""
    return decompose(sae, acts[hook], acts[sae.target] if sae.is_transcoder else None)


def edit_hook(model, sae, hook: str) -> str:
    """Where a splice of `sae` (keyed by its read hook) edits the model: its own hook, or a transcoder's target."""
    return model.hook(sae.target).name if sae.is_transcoder else hook


def wide(dtype: torch.dtype, sae) -> torch.dtype:
    """The wider of an activation's dtype and the SAE's: where features and error terms are computed."""
    return torch.promote_types(dtype, sae.W_dec.dtype)


@torch.no_grad()
def decode(sae, f: Tensor) -> Tensor:
    """sae.decode(f), summing only the active features' decoder rows when few are active (TopK: k of d_sae)."""
    flat = f.flatten(0, -2)  # [n, d_sae]
    rows, cols = flat.nonzero(as_tuple=True)
    if len(rows) > 0.05 * flat.numel():
        return sae.decode(f)
    out = sae.b_dec.expand(flat.shape[0], -1).clone()  # [n, d_in]
    out.index_add_(0, rows, flat[rows, cols, None] * sae.W_dec[cols])
    return out.reshape(*f.shape[:-1], -1)
