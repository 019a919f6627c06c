"""The intervention engine: the one place that runs the model through nnsight and edits activations.

`trace(model, batch, groups=[Group(...), ...], edits={hook: edit}, capture=[hooks])` runs one forward pass.
- `edits` change the batch's own rows at a hook (steering a batch of continuations, an SAE's reconstruction).
- `groups` are groups of extra rows, each made of copies of one clean row of the batch. A group joins the
  batch just before its first edited hook, so everything upstream of that hook is computed once for all
  groups (the "growing batch"); then each of its edits is applied to its own rows. Ablations, integrated
  gradients, graph checks and edges all ride this: many edit sets per forward pass.
Rows may only join at block boundaries (inside a block the residual is held at the old batch size), so a
group whose first hook is inside a block (attn_out, mlp_out) joins at the block's input, as copies of the
clean row, and its edit then receives the clean row's value at its hook.

Edits are values: an `Add`, a `Splice`, a `Set`, or any function [n, pos, d_model] -> [n, pos, d_model]
that only computes: no side effects, and no writes into its input (which may be a broadcast view of one
row). Values leave a trace only through nnsight's `.save()`, so the same code can run where the model lives
(nnsight's remote execution). `edits` change the batch's own rows; a group is a copy of its source row as
that row is where the group joins, changed from then on by its own edits only. The forward stops at the
final norm: metrics unembed only what they need.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from attribution.edits import Add, Set, Splice  # noqa: F401  (the standard edits, re-exported)
from attribution.errors import AttributionError, check_finite
from attribution.models.frozen import frozen_norm, frozen_qk, norm_scale
from attribution.models.hooks import KINDS

Edit = Callable[[Tensor], Tensor]  # [rows, pos, d_model] -> [rows, pos, d_model], a pure function


@dataclass
class Group:
    """`n` extra rows, copies of the batch's row `source`, edited at every hook of `edits`.

    leaves: hooks where the group's edited rows become gradient leaves (Trace.leaves[(group, hook)]), e.g.
        integrated gradients' interpolations or the replicated activation whose rows edges differentiate.
    An edit with a `reads` attribute (a hook earlier in the same block) is called as edit(x, read), read being
    the rows' value at that hook: a transcoder's splice at mlp_out.L reads resid_mid.L.
    """

    edits: dict[str, Edit]
    n: int = 1
    source: int = 0
    leaves: tuple[str, ...] = ()
    probes: tuple[str, ...] = ()  # hooks where a zero leaf is added after the edit: its gradient is the one at
    # that activation, and (unlike a leaf) gradients still flow upstream through it (replacement graphs)


@dataclass
class Trace:
    acts: dict[str, Tensor]  # hook -> [rows, pos, d_model], the value that flowed downstream
    hidden: Tensor | None  # [rows, pos, d_model], after the final norm (None with stop_early)
    groups: list[slice] = field(default_factory=list)  # group g's rows in acts / hidden
    leaves: dict[tuple[int, str], Tensor] = field(default_factory=dict)  # (group, hook) -> [n, pos, d_model]


@contextmanager
def eager_attention(model) -> Iterator[None]:
    """Attention computed as softmax(q k^T) v while the block runs (Hugging Face's "eager" implementation). With
    the pattern frozen (trace(freeze=True)) its backward is then one matmul per head, pattern^T x gradient,
    where CPU SDPA's backward recomputes the pattern and every q/k gradient, and runs once per row under vmap
    (50x slower at 512 tokens on gemma-3-270m). Not for a float64 model: eager's softmax runs in float32."""
    hf = model.hf
    before = getattr(hf.config, "_attn_implementation", "eager")
    if before == "eager" or not hasattr(hf, "set_attn_implementation") or model.dtype == torch.float64:
        yield
        return
    hf.set_attn_implementation("eager")
    try:
        yield
    finally:
        hf.set_attn_implementation(before)


def trace(
    model,
    batch,
    *,
    groups: Sequence[Group] = (),
    edits: dict[str, Edit] | None = None,
    capture: Iterable[str] = (),
    grad: bool = False,
    stop_early: bool = False,
    past: Past | None = None,
    keep_batch: bool = True,
    freeze: bool | Frozen | dict = False,
) -> Trace:
    """Run the model on `batch` with `edits` on every row, the `groups` of rows appended, and `capture`d
    activations kept (with their graph if grad).

    Row order: the batch's rows, then the groups in the order they join (by hook, then as listed);
    Trace.groups says where each went. stop_early: stop right after the last hook (no final hidden state).
    past: run only the tokens from `past.start` on, over the clean prefix's keys and values (see Past).
    keep_batch=False: the groups replace the batch's rows where they join (all at one hook), for callers
        that need no clean row downstream (graph checks, edges): no row is computed that nobody reads.
    freeze: the replacement model's linearisation (attribution.models.frozen): True holds every norm's
        factor and attention pattern for gradients (values unchanged); a Frozen (frozen_state) holds them at
        the clean prompt's values, so that edits run in the replacement model itself.
    """
    plan = _plan(model, batch, groups, edits, capture, freeze, keep_batch)
    edits, capture, groups, firsts, reads = plan.edits, plan.capture, plan.groups, plan.firsts, plan.reads
    inputs = {"attention_mask": batch.attention_mask, "position_ids": batch.position_ids}
    ids = batch.input_ids
    if past is not None:
        ids, inputs["position_ids"] = ids[:, past.start :], inputs["position_ids"][:, past.start :]
        inputs.update(cache=past.fresh(), use_cache=True)
    import nnsight  # here, not at import: `import attribution` stays light (nnsight pulls in a web client)

    hidden = None
    batch_rows = batch.size
    with torch.set_grad_enabled(grad), model.lm.trace(ids, **inputs) as tracer:
        acts = nnsight.save({})
        leaves = nnsight.save({})
        spans = nnsight.save({})
        seen = {}  # hook -> the value that flowed downstream, for edits that read it
        scales, qks = nnsight.save({}), nnsight.save({})  # frozen_state's capture of the clean factors and q/k
        mode = {"scales": scales, "qk": qks} if isinstance(freeze, dict) else freeze
        for spec, frozen in plan.steps:
            if spec is None:  # a frozen point that is no hook: a block's input norm, a query/key projection
                _freeze(model, mode, *frozen)
                continue
            env = model.envoy(spec.module)
            if frozen is not None:
                _freeze(model, mode, *frozen)
            x = _get(env, spec)
            new = x
            if spec.name in edits and batch_rows:  # the batch's own rows (before any group joins, only they exist)
                n, fn = batch_rows, edits[spec.name]
                read = seen[reads[id(fn)]][:n] if id(fn) in reads else None
                new = torch.cat([_call(fn, x[:n], read), x[n:]]) if n < x.shape[0] else _call(fn, x, read)
            new = _edit_groups(new, spec.name, groups, firsts, spans, leaves, seen, reads)
            if spec.name in plan.joining:
                new = _join(new, spec.name, plan, spans, leaves, keep_batch)
                batch_rows = batch_rows if keep_batch else 0  # replaced by the groups
            if grad and spec.name in capture and not new.requires_grad:
                # model weights are frozen, so the first captured activation becomes the graph's leaf
                new = new.detach().requires_grad_(True)
            if new is not x:
                _set(env, spec, new)
            if spec.name in capture:
                acts[spec.name] = new
            seen[spec.name] = new
        if not stop_early:
            if freeze is not False:
                _freeze(model, mode, "norm", model.family.final_norm)
            hidden = model.envoy(model.family.final_norm).output.save()
        tracer.stop()
    if isinstance(freeze, dict):
        freeze.update(scales=scales, qk=qks)
    if hidden is not None:
        _check_hidden(model, hidden)
    return Trace(acts, hidden, [spans[g] for g in range(len(groups))], leaves)


class _Plan(NamedTuple):
    """What a trace does at which hook, worked out before it runs."""

    edits: dict  # hook -> the edit on the batch's own rows
    capture: set  # hooks whose activations are kept
    groups: list  # the groups, hook names canonical
    firsts: list  # each group's first edited hook
    joining: dict  # hook -> indices of the groups that join the batch there
    reads: dict  # id(edit) -> the hook whose downstream value it reads
    steps: list  # (HookSpec or None, frozen point or None), in forward order


def _plan(model, batch, groups, edits, capture, freeze, keep_batch) -> _Plan:
    edits = {model.hook(h).name: fn for h, fn in (edits or {}).items()}
    capture = {model.hook(h).name for h in capture}
    groups = [_canonical(model, g, batch.size) for g in groups]
    firsts = [min(g.edits, key=lambda h: model.hooks[h].order) for g in groups]
    joins = [_join_hook(model, h) for h in firsts]
    reads = _reads(model, [edits, *(g.edits for g in groups)])
    names = set(edits) | capture | set(joins) | {h for g in groups for h in g.edits} | set(reads.values())
    if freeze is not False:  # every norm and attention pattern of the model is frozen: every block is visited
        names |= set(model.hooks)
    specs = sorted((model.hooks[h] for h in names), key=lambda s: s.order)
    joining = {h: [i for i, j in enumerate(joins) if j == h] for h in joins}
    if not keep_batch and len(joining) != 1:
        raise AttributionError("keep_batch=False needs groups that all join at one hook (it replaces the batch there)")
    return _Plan(edits, capture, groups, firsts, joining, reads, _steps(model, specs, freeze is not False))


def _join(new, name: str, plan: _Plan, spans, leaves, keep_batch: bool):
    """The groups that join at `name`: copies of their source row, edited here if they start here, appended
    to the batch's rows (or replacing them, keep_batch=False)."""
    parts = [new] if keep_batch else []  # not new[:0]: it would tie the groups to the batch's graph
    at = new.shape[0] if keep_batch else 0
    for g in plan.joining[name]:
        grp = plan.groups[g]
        rows = new[grp.source : grp.source + 1].expand(grp.n, -1, -1)
        if plan.firsts[g] == name:
            rows = _apply(grp, g, name, rows, leaves, None)
        spans[g] = slice(at, at + grp.n)
        parts.append(rows)
        at += grp.n
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _check_hidden(model, hidden) -> None:
    what = "the model's final hidden state"
    if model.dtype == torch.float16:  # gemma-3-270m overflows float16 (NaN at the end)
        what += " (float16 holds at most 65504 and some models' activations exceed it: load it in bfloat16)"
    check_finite(hidden.detach(), what)


def _canonical(model, group: Group, size: int) -> Group:
    """The group with canonical hook names, checked."""
    if not isinstance(group, Group):
        raise AttributionError(f"groups must be engine.Group objects, got {type(group).__name__}")
    if group.n < 1 or not 0 <= group.source < size:
        raise AttributionError(f"a group needs n >= 1 rows copied from a row of the batch; got {group}")
    if not group.edits:
        raise AttributionError("a group of rows needs at least one edit (a hook it changes)")
    edits = {model.hook(h).name: fn for h, fn in group.edits.items()}
    leaves = tuple(model.hook(h).name for h in group.leaves)
    probes = tuple(model.hook(h).name for h in group.probes)
    if set(leaves + probes) - set(edits):
        raise AttributionError(f"leaves at {sorted(set(leaves + probes) - set(edits))} where the group edits nothing")
    return Group(edits, group.n, group.source, leaves, probes)


def _join_hook(model, hook: str) -> str:
    """Where a group whose first edit is at `hook` joins: there if it is a block boundary, else the input of
    its block."""
    first = model.hooks[hook]
    return first.name if first.kind in ("resid_pre", "resid_post") else model.hook(f"resid_pre.{first.layer}").name


def _edit_groups(
    x: Tensor, hook: str, groups: list[Group], firsts: list[str], spans: dict, leaves: dict, seen: dict, reads: dict
) -> Tensor:
    """x with the edit at `hook` of each group already in the batch applied to its rows, in one concatenation.
    A group whose first edit is at an inner hook (it joined at the block's input) receives there the clean
    source row's value, as if it had joined at that hook."""
    mine = sorted((spans[g].start, g) for g, grp in enumerate(groups) if hook in grp.edits and g in spans)
    if not mine:
        return x
    parts, at = [], 0
    for start, g in mine:
        grp, span = groups[g], spans[g]
        clean = firsts[g] == hook and grp.source < span.start  # its source row is still in the batch
        fn = grp.edits[hook]
        read = _rows(seen[reads[id(fn)]], grp, span, clean) if id(fn) in reads else None
        if start > at:  # an empty slice of x would still tie the result to x's graph (a backward of zeros)
            parts.append(x[at:start])
        parts.append(_apply(grp, g, hook, _rows(x, grp, span, clean), leaves, read))
        at = span.stop
    if at < x.shape[0]:
        parts.append(x[at:])
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _rows(x: Tensor, grp: Group, span: slice, clean: bool) -> Tensor:
    """A group's rows of x: its own, or (clean) copies of its source row."""
    return x[grp.source : grp.source + 1].repeat(grp.n, 1, 1) if clean else x[span]


def _apply(grp: Group, g: int, hook: str, rows: Tensor, leaves: dict, read: Tensor | None) -> Tensor:
    """The group's edit at `hook` on its rows, checked, made a gradient leaf (or given a probe) where the
    group asks."""
    new = _call(grp.edits[hook], rows, read).to(rows.dtype)
    if new.shape != rows.shape:
        raise AttributionError(f"an edit at {hook} returned shape {tuple(new.shape)}, expected {tuple(rows.shape)}")
    if hook in grp.leaves:  # its own storage (the rows may be views of one source row)
        new = new.detach().clone().requires_grad_(True)
        leaves[(g, hook)] = new
    elif hook in grp.probes:
        probe = torch.zeros_like(new, requires_grad=True)
        leaves[(g, hook)] = probe
        new = new + probe
    return new


def _call(fn, rows: Tensor, read: Tensor | None) -> Tensor:
    return fn(rows) if read is None else fn(rows, read)


def _reads(model, edit_sets) -> dict[int, str]:
    """id(edit) -> the hook an edit reads (its `reads` attribute), checked to be earlier in the same block."""
    out = {}
    for edits in edit_sets:
        for hook, fn in edits.items():
            wanted = getattr(fn, "reads", None)
            if wanted is None:
                continue
            at, read = model.hook(hook), model.hook(wanted)
            if read.layer != at.layer or read.order >= at.order or at.kind in ("resid_pre",):
                raise AttributionError(
                    f"an edit at {at.name} reads {read.name}: an edit may only read a hook earlier in its own block"
                )
            out[id(fn)] = read.name
    return out


def _steps(model, specs, freeze: bool) -> list[tuple]:
    """The points a trace visits in forward order: (hook spec, frozen point to apply first or None), and with
    freeze the frozen points that are no hook, as (None, point). A point is ("norm", module path) or
    ("qk", module path, layout)."""
    if not freeze:
        return [(s, None) for s in specs]
    fam = model.family
    outputs = {s.module for s in specs if s.io == "output"}
    keyed = []
    for s in specs:
        norm = s.io == "output" and any(s.module == f"{fam.layers}.{s.layer}.{n}" for n in fam.norms)
        keyed.append(((s.layer, 10 * KINDS.index(s.kind)), (s, ("norm", s.module) if norm else None)))
    for layer in range(model.n_layers):
        block = f"{fam.layers}.{layer}"
        for n in fam.norms:  # norms that are no hook's module: the block's input norm, read before attention
            if f"{block}.{n}" not in outputs:
                keyed.append(((layer, 5), (None, ("norm", f"{block}.{n}"))))
        for module, layout in fam.qk:
            keyed.append(((layer, 6), (None, ("qk", f"{block}.{module}", layout))))
    return [step for _, step in sorted(keyed, key=lambda kv: kv[0])]


@dataclass
class Frozen:
    """The clean prompt's norm factors and query/key projections (module path -> [1, pos, 1] or [1, pos, d]),
    for trace(freeze=...): the replacement model with attention patterns and norms held at these values."""

    scales: dict[str, Tensor]
    qk: dict[str, Tensor]


@torch.no_grad()
def frozen_state(model, batch) -> Frozen:
    """Frozen for `batch`'s first row, from one forward of the clean prompt."""
    keep: dict = {}
    trace(model, batch, freeze=keep)
    return Frozen({k: v[:1] for k, v in keep["scales"].items()}, {k: v[:1] for k, v in keep["qk"].items()})


def _freeze(model, freeze, what: str, path: str, layout: str | None = None) -> None:
    """Apply one frozen point: freeze is True (detach), a Frozen (held values) or a dict to capture into."""
    env, module = model.envoy(path), model.hf.get_submodule(path)
    held = freeze if isinstance(freeze, Frozen) else None
    if what == "norm":
        x = env.input
        if isinstance(freeze, dict):
            freeze["scales"][path] = norm_scale(module, x).save()
        scale = held.scales[path] if held is not None else None
        env.output = frozen_norm(module, x, model.family.norm_offset, scale)
    else:
        out = env.output
        if isinstance(freeze, dict):
            freeze["qk"][path] = out.save()
        clean = held.qk[path] if held is not None else None
        env.output = frozen_qk(out, layout, model.hf.config.num_attention_heads, clean)


# --- the clean prefix ------------------------------------------------------------------------------


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
