"""Attribution: a linear estimate of each node's effect on the metric, for every node at once.

Gradients are straight-through at every SAE: d(metric)/dx at a hook is the real model's gradient (the
error term absorbs the SAE, so later SAEs do not bend it), and d(metric)/d f_i = W_dec[i] . d(metric)/dx.
So grad_x_act needs one plain forward and one backward whatever the number of SAEs, and
`activation * gradient` estimates metric(clean) - metric(feature zeroed, error term kept).

- grad_x_act: f * g
- atp (attribution patching): (f_clean - f_corrupt) * g_clean, estimating the effect of patching in the
  corrupt prompt's value
- ig (integrated gradients): (f - f_base) * mean_alpha g(alpha), the SAE's input interpolated from the
  baseline (zero, or the corrupt prompt) to clean at one hook at a time; per hook the attributions add up
  to metric(clean) - metric(baseline at that hook), up to the midpoint-rule error of `steps`.

<bos> is left out of the node set by default (include_bos=True keeps it): its residual is an attention
sink with a norm ~10x the median, and attributions there are artefacts of that norm, not of meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from attribution import memory
from attribution.engine import Group, trace
from attribution.errors import AttributionError, check_finite
from attribution.metrics import Rows, evaluate
from attribution.models import Batch
from attribution.nodes import NodeTable, is_int
from attribution.splice import Decomposition, decompose, prepare_saes

METHODS = ("grad_x_act", "atp", "ig")


@dataclass
class Attribution(NodeTable):
    """Activations, gradients and attributions of every active feature and error node."""

    method: str = "grad_x_act"
    metric: Tensor = field(default_factory=lambda: torch.zeros(0))  # [batch] metric on the clean prompts
    baseline: Tensor | None = None  # [batch] metric on the corrupt prompts (atp, ig with corrupt)
    d_sae: dict[str, int] = field(default_factory=dict)

    @property
    def attribution(self) -> Tensor:
        return self.value

    def dense(self, hook: str, prompt: int = 0) -> Tensor:
        """Feature attributions of one hook as a tensor [pos, d_sae] (zeros where a feature is inactive)."""
        h = self._hook_index(hook, prompt)
        out = self.value.new_zeros(len(self.tokens[prompt]), self.d_sae[self.hooks[h]])
        sel = (self.hook_idx == h) & (self.prompt == prompt) & (self.feature >= 0)
        out[self.position[sel], self.feature[sel]] = self.value[sel]
        return out

    def error(self, hook: str, prompt: int = 0) -> Tensor:
        """Error-node attributions of one hook, [pos]."""
        h = self._hook_index(hook, prompt)
        out = self.value.new_zeros(len(self.tokens[prompt]))
        sel = (self.hook_idx == h) & (self.prompt == prompt) & (self.feature < 0)
        out[self.position[sel]] = self.value[sel]
        return out

    def total(self, prompt: int = 0, hook: str | None = None) -> float:
        h = self._hook_index(hook, prompt)
        sel = self.prompt == prompt
        if h is not None:
            sel &= self.hook_idx == h
        return float(self.value[sel].sum())

    def _hook_index(self, hook: str | None, prompt: int) -> int | None:
        """Index of `hook` among this result's hooks (canonical or TransformerLens spelling), checked."""
        self._check_order(None, prompt, "abs")
        if hook is None:
            return None
        from attribution.models.hooks import canonical

        name = canonical(hook)
        if name not in self.hooks:
            raise AttributionError(f"no SAE at {hook!r} in this attribution; its hooks are {self.hooks}")
        return self.hooks.index(name)

    def __str__(self) -> str:
        lines = [
            f"Attribution ({self.method}) over {len(self)} nodes at {len(self.hooks)} hook(s); "
            f"metric = {self.metric.tolist()}"
        ]
        lines += [str(n) for n in self.top(10)]
        return "\n".join(lines)


def attribute(
    model,
    saes,
    prompt: str | list[str],
    metric,
    *,
    method: str = "grad_x_act",
    corrupt: str | list[str] | None = None,
    steps: int = 10,
    include_bos: bool = False,
    max_rows: int | None = None,
) -> Attribution:
    """Attribute `metric` to every SAE feature and error node of `saes` ({hook: SAE}) on `prompt`.

    max_rows: rows per integrated-gradients pass (None: as many as memory allows, at most 160).
    Prompts are processed in groups that fit in memory; a prompt that cannot fit raises
    memory.OutOfMemoryError before any work.
    """
    if method not in METHODS:
        raise AttributionError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "atp" and corrupt is None:
        raise AttributionError("method='atp' patches from a corrupted prompt: pass corrupt='...'")
    if not is_int(steps) or steps < 1:
        raise AttributionError(f"steps must be a whole number >= 1 (integrated-gradient steps), got {steps!r}")
    if max_rows is not None and (not is_int(max_rows) or max_rows < 1):
        raise AttributionError(f"max_rows must be a whole number >= 1 (rows per pass), got {max_rows!r}")
    saes = prepare_saes(model, saes)
    if not saes:
        raise AttributionError("no SAEs given: pass {hook: SAE} for at least one hook")
    batch = model.tokenize(prompt)
    cbatch = None if corrupt is None else batch.same_shape(model.tokenize(corrupt))
    valid = batch.node_mask(include_bos)
    table = Attribution(
        hooks=list(saes), tokens=batch.tokens, method=method, d_sae={h: s.d_sae for h, s in saes.items()}
    )
    if method == "ig":
        per_row = memory.forward_bytes(model, 1, batch.width, model.n_layers, grad=True) + batch.width * max(
            4 * s.d_sae * 3 for s in saes.values()
        )
        rows = memory.chunk_rows(
            max_rows,
            per_row,
            0,
            what=f"integrated gradients on {batch.width} tokens with steps={steps}",
            arg="max_rows=",
            most=160,
            least=min(steps + 1, 160),
            smaller="lower `steps=` (each pass holds steps + 1 rows), or ",
        )
        parts, table.metric, table.baseline = _integrated_gradients(
            model, saes, batch, cbatch, metric, steps, valid, rows
        )
        _fill(table, _columns(parts, batch, valid, torch.arange(batch.size)))
        table.metric = table.metric.cpu()
        table.baseline = None if table.baseline is None else table.baseline.cpu()
        return table
    per_prompt = _prompt_bytes(model, saes, batch.width, corrupt=cbatch is not None)
    group = memory.chunk_rows(
        None, per_prompt, 0, what=f"attribution on {batch.width} tokens with {len(saes)} SAEs", arg="", most=batch.size
    )
    cols, metrics, baselines = [], [], []
    for start in range(0, batch.size, group):
        idx = list(range(start, min(start + group, batch.size)))
        sub, csub = _subset(batch, idx), None if cbatch is None else _subset(cbatch, idx)
        parts, m, mc = _gradient_times(model, saes, sub, csub, metric, torch.tensor(idx))
        cols.append(_columns(parts, sub, valid[idx], torch.tensor(idx)))
        metrics.append(m.cpu())
        baselines.append(None if mc is None else mc.cpu())
    table.metric = torch.cat(metrics)
    table.baseline = None if cbatch is None else torch.cat(baselines)
    _fill(table, *cols)
    return table


def _prompt_bytes(model, saes, width: int, corrupt: bool) -> int:
    """Memory of one prompt's forward + backward and its SAE decompositions (dense until made sparse)."""
    grad = memory.forward_bytes(model, 1, width, model.n_layers, grad=True)
    per_hook = max(width * (s.d_sae * 4 * 3 + model.d_model * 4 * 4) for s in saes.values())
    kept = sum(width * model.d_model * 4 * (3 if corrupt else 2) for _ in saes)  # activations and gradients
    return grad + per_hook * (2 if corrupt else 1) + kept


def _subset(batch: Batch, idx: list[int]) -> Batch:
    """Prompts `idx` of a batch, with the batch's padding kept (so their rows compute what they did in it)."""
    return Batch(
        batch.input_ids[idx],
        batch.attention_mask[idx],
        batch.position_ids[idx],
        [batch.lengths[i] for i in idx],
        [batch.tokens[i] for i in idx],
        batch.bos,
    )


@dataclass
class Gradients:
    """One forward and one backward of the clean prompts: what grad_x_act and graph nodes are made of."""

    metric: Tensor  # [batch], detached
    acts: dict[str, Tensor]  # hook -> [batch, pos, d_model], detached
    grads: dict[str, Tensor]  # hook -> [batch, pos, d_model], d(metric)/dx through the real model (0 if unused)
    hidden: Tensor  # [batch, pos, d_model], final-norm states, detached


def gradients(model, batch, metric, hooks: list[str], prompts: Tensor | None = None) -> Gradients:
    """Activations and metric gradients at `hooks`, from one forward and one backward.

    prompts: the caller's prompt index of each batch row (default: 0..batch-1), for metrics with one answer
    pair per prompt."""
    hooks = list(dict.fromkeys(model.hook(h).name for h in hooks))
    tr = trace(model, batch, capture=hooks, grad=True)
    rows = Rows.of(batch) if prompts is None else Rows(prompts, Rows.of(batch).offset)
    m = evaluate(metric, model, tr.hidden, rows)
    grads = torch.autograd.grad(m.sum(), [tr.acts[h] for h in hooks], allow_unused=True)
    acts, gs = {}, {}
    for h, g in zip(hooks, grads):
        acts[h] = tr.acts[h].detach()
        gs[h] = torch.zeros_like(acts[h]) if g is None else g.detach()
        check_finite(gs[h], f"the gradient at {h}")
    return Gradients(m.detach(), acts, gs, tr.hidden.detach())


def grad_x_act(saes: dict, grads: Gradients, batch, valid: Tensor, decs: dict | None = None) -> dict:
    """hook index -> (feature columns, error-node columns) of activation x gradient (see _columns), from one
    clean pass's `grads` (and its decompositions `decs` where the caller has them): the one place grad x act
    is computed, for attribute() and for graph nodes alike."""
    return _columns(_parts(saes, grads, decs=decs), batch, valid, torch.arange(batch.size))


def _parts(saes: dict, grads: Gradients, *, decs: dict | None = None, corrupt: dict | None = None, free=False):
    """Per hook (index, sae, clean decomposition, corrupt decomposition or None, gradient [batch, pos, d_model]),
    one hook at a time so only one dense [rows, pos, d_sae] decomposition lives at once. free: drop each
    hook's activation and gradient from `grads` (and `corrupt`) once it is yielded (the caller's own copies)."""
    take = dict.pop if free else dict.get
    for j, (h, sae) in enumerate(saes.items()):
        dec = decs[h] if decs is not None else decompose(sae, take(grads.acts, h))
        base = decompose(sae, take(corrupt, h)) if corrupt is not None else None
        yield j, sae, dec, base, take(grads.grads, h)


def _gradient_times(model, saes, batch, cbatch, metric, prompts: Tensor):
    """One forward + backward of `batch` (the caller's prompts `prompts`); per-hook parts come lazily."""
    hooks = list(saes)
    clean = gradients(model, batch, metric, hooks, prompts)
    corrupt = None
    mc = None
    if cbatch is not None:
        ctr = trace(model, cbatch, capture=hooks)
        mc = evaluate(metric, model, ctr.hidden, Rows(prompts, Rows.of(cbatch).offset)).detach()
        corrupt = ctr.acts
    return _parts(saes, clean, corrupt=corrupt, free=True), clean.metric, mc


def _integrated_gradients(model, saes, batch, cbatch, metric, steps, valid, max_rows):
    """Per prompt, one growing-batch forward/backward per chunk of hooks: `steps` rows join at each hook."""
    hooks = list(saes)
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoint rule
    per_hook = max(1, (max_rows - 1) // steps)
    metrics, baselines = [], []
    out = {h: [] for h in hooks}  # per prompt: (clean, base, g_mean)
    for b in range(batch.size):
        one = batch.select(b)
        base_acts = None
        if cbatch is not None:
            ctr = trace(model, cbatch.select(b), capture=hooks)
            baselines.append(evaluate(metric, model, ctr.hidden, Rows.copies(b, 1)).detach()[0])
            base_acts = ctr.acts
        mask = valid[b, batch.offset(b) :][None, :, None]  # [1, pos, 1]
        for start in range(0, len(hooks), per_hook):
            chunk = hooks[start : start + per_hook]
            base = {h: decompose(saes[h], base_acts[h]) for h in chunk} if base_acts is not None else {}
            groups = [
                Group({h: _Interpolation(saes[h], alphas, mask, base.get(h))}, n=steps, leaves=(h,)) for h in chunk
            ]
            tr = trace(model, one, groups=groups, capture=chunk, grad=True)
            n = tr.hidden.shape[0]
            m = evaluate(metric, model, tr.hidden, Rows.copies(b, n))
            if start == 0:
                metrics.append(m[0].detach())  # row 0 of every growing batch is the clean prompt
            grads = torch.autograd.grad(m.sum(), [tr.leaves[(g, h)] for g, h in enumerate(chunk)])
            for h, g in zip(chunk, grads):
                check_finite(g, f"the gradient at {h}")
                clean = decompose(saes[h], tr.acts[h][:1].detach())  # row 0 is never edited: the clean value
                g_mean = g.mean(0, keepdim=True)  # [1, pos, d_model]
                out[h].append((clean, base.get(h) or _zeros(clean), g_mean))
    parts = []
    for j, h in enumerate(hooks):
        clean = _pad_cat([c for c, _, _ in out[h]], batch)
        base = _pad_cat([bb for _, bb, _ in out[h]], batch)
        g = _pad_stack([x for _, _, x in out[h]], batch)
        parts.append((j, saes[h], clean, base, g))
    baseline = torch.stack(baselines) if baselines else None
    return parts, torch.stack(metrics), baseline


@dataclass
class _Interpolation:
    """The engine edit of one hook's integrated-gradient rows: `steps` interpolations from the baseline
    (zero, or the corrupt prompt's decomposition) to the clean activation, at the non-<bos> positions."""

    sae: object
    alphas: Tensor  # [steps]
    mask: Tensor  # [1, pos, 1] positions that interpolate
    base: Decomposition | None

    def __call__(self, x: Tensor) -> Tensor:  # [steps, pos, d_model], copies of the clean row
        clean = decompose(self.sae, x[:1])
        base = self.base or _zeros(clean)
        a = self.alphas.to(x.device, x.dtype)[:, None, None]
        fa = base.features + a * (clean.features - base.features)  # [steps, pos, d_sae]
        ea = base.error + a * (clean.error - base.error)  # [steps, pos, d_model]
        return torch.where(self.mask, self.sae.decode(fa).to(x.dtype) + ea, x)


def _zeros(d: Decomposition) -> Decomposition:
    return Decomposition(torch.zeros_like(d.features), torch.zeros_like(d.error))


def _pad_stack(xs: list[Tensor], batch) -> Tensor:
    """Per-prompt [1, len_b, d] tensors -> one left-padded [batch, pos, d]."""
    out = xs[0].new_zeros(batch.size, batch.width, xs[0].shape[-1])
    for b, x in enumerate(xs):
        out[b, batch.offset(b) :] = x[0]
    return out


def _pad_cat(decs: list[Decomposition], batch) -> Decomposition:
    return Decomposition(_pad_stack([d.features for d in decs], batch), _pad_stack([d.error for d in decs], batch))


def _columns(parts, batch, valid: Tensor, prompts: Tensor) -> dict[int, tuple[dict, dict]]:
    """Per hook, the sparse node columns (active features, error nodes) of per-hook dense tensors.

    `prompts` maps the batch's rows to the caller's prompt indices, so groups of prompts can be filled
    separately and concatenated.
    """
    out = {}
    offsets = torch.tensor([batch.offset(b) for b in range(batch.size)], device=valid.device)
    prompts = prompts.to(valid.device)
    for j, sae, clean, base, g in parts:  # g: [batch, pos, d_model], the gradient at the hook
        f, e = clean.features, clean.error
        df = f if base is None else f - base.features
        de = e if base is None else e - base.error
        active = (f != 0) if base is None else (f != 0) | (base.features != 0)
        active &= valid[..., None]
        b, t, i = active.nonzero(as_tuple=True)
        del active
        gf = torch.einsum("nd,nd->n", sae.W_dec[i], g[b, t].to(sae.W_dec.dtype)).double()
        feats = {
            "prompt": prompts[b],
            "hook_idx": torch.full_like(b, j),
            "position": t - offsets[b],
            "feature": i,
            "activation": f[b, t, i].double(),
            # d(metric)/d f_i = W_dec[i] . g, needed only where a node exists (not a dense [.., d_sae] product)
            "gradient": gf,
            "value": df[b, t, i].double() * gf,
        }
        b, t = valid.nonzero(as_tuple=True)  # one error node per (prompt, position)
        norm = e[b, t].double().norm(dim=-1)
        errs = {
            "prompt": prompts[b],
            "hook_idx": torch.full_like(b, j),
            "position": t - offsets[b],
            "feature": torch.full_like(b, -1),
            "activation": norm,
            "gradient": (e[b, t].double() * g[b, t].double()).sum(-1) / norm.clamp_min(1e-12),
            "value": (de[b, t].double() * g[b, t].double()).sum(-1),
        }
        out[j] = (feats, errs)
    return out


def _fill(table: Attribution, *groups: dict[int, tuple[dict, dict]]) -> None:
    """The node table from groups of prompts' columns: per hook, its feature nodes, then its error nodes."""
    keys = ("prompt", "hook_idx", "position", "feature", "activation", "gradient", "value")
    cols = {k: [] for k in keys}
    for j in sorted(groups[0]):
        for kind in (0, 1):
            for grp in groups:
                for k in keys:
                    cols[k].append(grp[j][kind][k])
    for k, v in cols.items():
        setattr(table, k, torch.cat(v).cpu())  # node tables are small results: they live on the CPU
