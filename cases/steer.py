"""Steering: clamp one SAE feature and watch the next token and a greedy continuation change.

The clamp is an engine edit (attribution.engine.Splice: x' = x + (f' - f) W_dec, the error term kept), so a
clamp to the feature's own value changes nothing, and a clamp to 0 at one position is exactly `ablate`'s zero
ablation of that node. Every condition (unedited, 0, 5x, 10x max) is one row of the same batch, and greedy
generation feeds back the token ids each row chose (never decoded and re-tokenized) and re-runs the whole
sequence each step: simple and exact, and cheap for a dozen tokens.

Which positions are clamped (`positions`):
- "after" (default): from the first prompt position where the feature fires through every generated token,
  the way the paper clamps a feature once its concept is on the page;
- "all": every position but <bos> (its residual is an attention sink; see docs/attribution.md);
- a list of prompt positions: only those (generated tokens are left alone).
"""

from __future__ import annotations

import torch

from attribution.engine import Splice, trace
from cases.report import Clamp, Steering


def first_fire(model, sae, prompt: str, feature: int) -> int | None:
    """The first position (after <bos>) where `feature` is active on `prompt`, or None."""
    from attribution import run_with_saes

    f = run_with_saes(model, {sae.hook: sae}, prompt).features[model.hook(sae.hook).name][0, :, feature]
    start = 1 if model.tokenize(prompt).bos else 0
    active = (f[start:] != 0).nonzero()
    return None if len(active) == 0 else int(active[0]) + start


def steer(
    model,
    sae,
    prompt: str,
    metric,
    feature: int,
    *,
    max_activation: float,
    max_source: str = "given",
    multiples: tuple[float, ...] = (0.0, 5.0, 10.0),
    positions: str | list[int] = "after",
    n_tokens: int = 12,
    top: int = 10,
    label: str = "",
) -> Steering:
    """Clamp `feature` of `sae` to each multiple of `max_activation` and compare with the unedited run."""
    from attribution import AttributionError

    if not 0 <= feature < sae.d_sae:
        raise AttributionError(f"feature {feature} does not exist: the SAE at {sae.hook} has {sae.d_sae}")
    first = first_fire(model, sae, prompt, feature)
    n_prompt = len(model.encode(prompt))
    bos = 1 if model.tokenize(prompt).bos else 0
    if isinstance(positions, str):
        if positions not in ("after", "all"):
            raise AttributionError(f"positions must be 'after', 'all' or a list of positions, got {positions!r}")
        start = bos if positions == "all" or first is None else first
        where = (start, None)  # a range: start .. end of every row, generated tokens included
        words = (
            f"positions {start}.. of the prompt and every generated token"
            + ("" if positions == "all" else " (from where the feature first fires)")
            + (
                " (the feature never fires on the prompt: all positions)"
                if first is None and positions == "after"
                else ""
            )
        )
    else:
        bad = [p for p in positions if not bos <= p < n_prompt]
        if bad:
            raise AttributionError(f"steering positions {bad} are outside the prompt's 1..{n_prompt - 1}")
        where = sorted(set(int(p) for p in positions))
        words = f"prompt positions {where} only"
    names = ["unedited"] + [_name(m) for m in multiples]
    values = [None] + [float(m * max_activation) for m in multiples]
    next_tokens, metrics, conts = _generate(model, sae, prompt, metric, feature, values, where, n_tokens, top)
    clamps = [Clamp(n, v, m, t, c) for n, v, m, t, c in zip(names, values, metrics, next_tokens, conts)]
    return Steering(
        sae.hook, int(feature), label, -1 if first is None else first, words, float(max_activation), max_source, clamps
    )


def _name(multiple: float) -> str:
    return "clamp 0" if multiple == 0 else f"clamp {multiple:g}x max"


def _clamp(sae, feature: int, values: list[float | None], starts: list[int], width: int, where) -> Splice:
    """The engine edit for a left-padded batch whose row r holds condition r; starts[r] = row r's padding."""
    keep = torch.ones(len(values), width, sae.d_sae, dtype=torch.bool)
    to = torch.zeros(len(values), width, sae.d_sae, dtype=sae.W_dec.dtype)
    for r, v in enumerate(values):
        if v is None:
            continue
        cols = slice(starts[r] + where[0], None) if isinstance(where, tuple) else [starts[r] + p for p in where]
        keep[r, cols, feature] = False
        to[r, cols, feature] = v
    return Splice(sae, keep.to(sae.W_dec.device), to.to(sae.W_dec.device))


@torch.no_grad()
def _generate(model, sae, prompt, metric, feature, values, where, n_tokens, top):
    """Greedy continuations of every condition at once; also the metric and next-token top-k at step 0."""
    from attribution.metrics import Rows

    prompt_ids = model.encode(prompt)
    gen: list[list[int]] = [[] for _ in values]
    done = [False] * len(values)
    eos = model.tokenizer.eos_token_id
    next_tokens, metrics = [], []
    for step in range(max(1, n_tokens)):
        batch = model.batch_of_ids([[*prompt_ids, *g] for g in gen])
        starts = [batch.offset(r) for r in range(batch.size)]
        edit = _clamp(sae, feature, values, starts, batch.width, where)
        logits = model.unembed(trace(model, batch, edits={sae.hook: edit}).hidden)
        last = logits[:, -1].float()
        if step == 0:
            probs = last.softmax(-1)
            p, ids = probs.topk(min(top, probs.shape[-1]), dim=-1)
            next_tokens = [
                [(model.tokenizer.decode([int(i)]), float(q)) for q, i in zip(p[r], ids[r])] for r in range(len(values))
            ]
            rows = Rows.copies(0, batch.size)
            value = metric(logits, rows) if hasattr(metric, "from_hidden") else metric(logits)
            metrics = [float(m) for m in torch.as_tensor(value).reshape(-1)]
        if n_tokens == 0:
            break
        for r, i in enumerate(last.argmax(-1).tolist()):
            if not done[r]:
                gen[r].append(i)
                done[r] = i == eos
        if all(done):
            break
    return next_tokens, metrics, [_continuation(model, prompt_ids, g) for g in gen]


def _continuation(model, prompt_ids: list[int], gen: list[int]) -> str:
    """The generated tokens as text after the prompt (with its leading space, whatever the tokenizer)."""
    full = model.tokenizer.decode([*prompt_ids, *gen], skip_special_tokens=True)
    start = model.tokenizer.decode(prompt_ids, skip_special_tokens=True)
    if gen and full.startswith(start):
        return full[len(start) :]
    return model.tokenizer.decode(gen, skip_special_tokens=True)
