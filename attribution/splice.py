"""The forward-pass engine: one nnsight trace with edits and captures at hook points.

Everything else (attribution, ablation, splicing SAEs) is built from `trace`. The forward stops at the
final norm: metrics unembed only what they need. An edit may return more rows than it received; later
layers then run on the larger batch. Ablations and integrated-gradient steps use this to share the work
upstream of their hook ("growing batch"), which is exact for a single unpadded prompt.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from attribution.errors import SAEError, check_finite

Edit = Callable[[Tensor], Tensor]  # [rows, pos, d_model] -> [rows', pos, d_model]


@dataclass
class Trace:
    acts: dict[str, Tensor]  # hook -> [rows, pos, d_model], the value that flowed downstream
    hidden: Tensor | None  # [rows, pos, d_model], after the final norm (None with stop_early)


def trace(
    model,
    batch,
    *,
    edits: dict[str, Edit] | None = None,
    capture: Iterable[str] = (),
    grad: bool = False,
    stop_early: bool = False,
    past: Past | None = None,
) -> Trace:
    """Run the model on `batch` with `edits` applied and `capture`d activations kept (with graph if grad).

    stop_early: stop right after the last hook (no final hidden state), e.g. to collect activations.
    past: run only the tokens from `past.start` on, over the clean prefix's keys and values (see Past);
        activations and hidden states then cover those tokens only.
    """
    edits = {model.hook(h).name: fn for h, fn in (edits or {}).items()}
    capture = {model.hook(h).name for h in capture}
    specs = sorted((model.hooks[h] for h in set(edits) | capture), key=lambda s: s.order)
    acts: dict[str, Tensor] = {}
    out: list[Tensor] = []
    inputs = {"attention_mask": batch.attention_mask, "position_ids": batch.position_ids}
    ids = batch.input_ids
    if past is not None:
        ids, inputs["position_ids"] = ids[:, past.start :], inputs["position_ids"][:, past.start :]
        inputs.update(cache=past.fresh(), use_cache=True)
    with (
        torch.set_grad_enabled(grad),
        model.lm.trace(ids, **inputs) as tracer,
    ):
        for spec in specs:
            env = model.envoy(spec.module)
            x = _get(env, spec)
            edited = spec.name in edits
            if edited:
                x = edits[spec.name](x)
            if grad and spec.name in capture and not x.requires_grad:
                # model weights are frozen, so the first captured activation becomes the graph's leaf
                x, edited = x.detach().requires_grad_(True), True
            if edited:
                _set(env, spec, x)
            if spec.name in capture:
                acts[spec.name] = x
        if not stop_early:
            out.append(model.envoy(model.family.final_norm).output)
        tracer.stop()
    if stop_early:
        return Trace(acts, None)
    hidden = out[0]
    what = "the model's final hidden state"
    if model.dtype == torch.float16:  # the usual cause there: gemma-3-270m overflows float16 (NaN at the end)
        what += " (float16 holds at most 65504 and some models' activations exceed it: load it in bfloat16)"
    check_finite(hidden.detach(), what)
    return Trace(acts, hidden)


class Past:
    """The keys and values of a prompt's first `start` tokens, from one clean forward of that prefix.

    An edit at position p leaves every earlier position unchanged (causal attention), so ablations at
    positions >= start need only the tokens from `start` on: on a long prompt whose nodes sit near the end
    that is a few tokens per row, not the whole prompt. Rows of a growing batch join over the same prefix:
    each layer's cached row is broadcast to the rows that reach it.
    """

    @torch.no_grad()
    def __init__(self, model, batch, start: int):
        self.start = start
        self._cache = model.hf.base_model(
            input_ids=batch.input_ids[:, :start],
            attention_mask=batch.attention_mask[:, :start],
            position_ids=batch.position_ids[:, :start],
            use_cache=True,
        ).cache

    def fresh(self):
        """A copy for one forward (the model appends to its cache), whose layers grow with the batch."""
        cache = copy.deepcopy(self._cache)
        for layer in cache.layers:
            layer.update = _broadcasting(layer, layer.update)
        return cache


def _broadcasting(layer, update):
    """The layer's cache update for one forward over the prefix: the cached row broadcast to the rows that
    reach this layer, and nothing of this pass kept (the cache is used once; keeping 64 rows' keys and
    values of a 2,048-token prompt would hold gigabytes)."""

    def fn(keys, values, *args, **kwargs):
        kept = layer.keys, layer.values
        if layer.is_initialized and kept[0].shape[0] != keys.shape[0]:  # rows joined before this layer
            layer.keys = kept[0].expand(keys.shape[0], -1, -1, -1)
            layer.values = kept[1].expand(keys.shape[0], -1, -1, -1)
        out = update(keys, values, *args, **kwargs)
        layer.keys, layer.values = kept
        return out

    return fn


Maker = Callable[[Tensor], Tensor]  # the clean row at a hook [1, pos, d_model] -> new rows [n, pos, d_model]


def grow_edits(model, makers: dict[str, tuple[int, Maker]]) -> dict[str, Edit]:
    """Edits that append `n` rows at each hook, made from row 0 (the clean prompt) by `make`.

    Rows may only join at block boundaries (inside a block the residual is held at the old batch size),
    so rows for attn_out/mlp_out join at the block's input as copies of row 0 and are overwritten at their
    hook. Rows are appended in hook order; row 0 stays clean.
    """
    specs = sorted((model.hook(h) for h in makers), key=lambda s: s.order)
    edits: dict[str, Edit] = {}
    for layer in sorted({s.layer for s in specs}):
        inner = [s for s in specs if s.layer == layer and s.kind in ("attn_out", "mlp_out")]
        pre = next((s for s in specs if s.layer == layer and s.kind == "resid_pre"), None)
        post = next((s for s in specs if s.layer == layer and s.kind == "resid_post"), None)
        if pre is not None or inner:
            edits[f"resid_pre.{layer}"] = _join(
                makers[pre.name] if pre else None,
                [makers[s.name] for s in inner],
                [s.name for s in inner],
                edits,
            )
        if post is not None:
            edits[post.name] = _append(*makers[post.name])
    return edits


def _append(n: int, make: Maker) -> Edit:
    def edit(x):
        rows = make(x[:1])
        if rows.shape[0] != n:
            raise ValueError(f"maker returned {rows.shape[0]} rows, expected {n}")
        return torch.cat([x, rows.to(x.dtype)])

    return edit


def _join(own, inner: list[tuple[int, Maker]], names: list[str], edits: dict[str, Edit]) -> Edit:
    state = {}

    def edit(x):
        parts = [x]
        if own is not None:
            parts.append(own[1](x[:1]).to(x.dtype))
        state["start"] = sum(p.shape[0] for p in parts)
        parts.append(x[:1].repeat(sum(n for n, _ in inner), 1, 1))
        return torch.cat(parts)

    offset = 0
    for (n, make), name in zip(inner, names):
        edits[name] = _overwrite(state, offset, n, make)
        offset += n
    return edit


def _overwrite(state: dict, offset: int, n: int, make: Maker) -> Edit:
    def edit(x):
        start = state["start"] + offset
        return torch.cat([x[:start], make(x[:1]).to(x.dtype), x[start + n :]])

    return edit


def _get(env, spec):
    value = env.output if spec.io == "output" else env.input
    return value if spec.index is None else value[spec.index]


def _set(env, spec, x):
    if spec.io == "input":
        env.input = x
    elif spec.index is None:
        env.output = x
    else:
        old = env.output
        env.output = (*old[: spec.index], x, *old[spec.index + 1 :])


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
def decompose(sae, x: Tensor) -> Decomposition:
    x = x.to(wide(x.dtype, sae))
    f = sae.encode(x)
    return Decomposition(f, x - decode(sae, f).to(x.dtype))


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


@dataclass
class SplicedRun:
    logits: Tensor  # [batch, pos, vocab], left-padded like Model.tokenize
    features: dict[str, Tensor]  # hook -> [batch, pos, d_sae] (after any edit)
    errors: dict[str, Tensor]  # hook -> [batch, pos, d_model], kept from the clean activations


FeatureEdit = Callable[[Tensor], Tensor]  # [batch, pos, d_sae] -> [batch, pos, d_sae]


@torch.no_grad()
def run_with_saes(model, saes, prompt, *, edit_features: dict[str, FeatureEdit] | None = None) -> SplicedRun:
    """Run with SAEs spliced in: x' = decode(edit(f)) + e, with e = x - decode(f) kept.

    Without edits the logits equal the plain model's (up to float rounding). With edits (clamping or
    zeroing features) this is the intervention that steering and ablation are made of.
    """
    saes = prepare_saes(model, saes)
    edit_features = {model.hook(h).name: fn for h, fn in (edit_features or {}).items()}
    unknown = set(edit_features) - set(saes)
    if unknown:
        raise SAEError(f"feature edits at {sorted(unknown)} but no SAE is spliced there; SAEs at {list(saes)}")
    batch = model.tokenize(prompt)
    features, errors = {}, {}

    def splice(hook):
        sae = saes[hook]

        def edit(x):
            d = decompose(sae, x)
            f = edit_features[hook](d.features) if hook in edit_features else d.features
            features[hook], errors[hook] = f, d.error
            return (decode(sae, f).to(d.error.dtype) + d.error).to(x.dtype)

        return edit

    tr = trace(model, batch, edits={h: splice(h) for h in saes})
    return SplicedRun(model.unembed(tr.hidden), features, errors)
