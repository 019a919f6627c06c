"""Ablation: the exact effect of intervening on each node, with every SAE's error term kept.

Ablating feature i at (hook, position) replaces the activation x there by decode(f') + e with f'_i set to
zero (mode="zero"), to its mean over reference prompts ("mean"), or to its value on a corrupted prompt
("patch"); for an error node, e is replaced instead. Because the decoder is linear, that is x + delta with
delta = (f'_i - f_i) W_dec[i], and no other hook changes: later SAEs pass their input through unchanged.

All ablations of one prompt ride the batch dimension of a few forward passes. Row 0 is the clean prompt;
at each hook the rows ablated there are appended as edited copies of row 0, so everything upstream of a
hook is computed once, not once per ablation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attribution import memory
from attribution.engine import Add, Group, Past, trace
from attribution.errors import AttributionError
from attribution.metrics import Rows, evaluate
from attribution.nodes import Node, NodeTable, as_key
from attribution.splice import Decomposition, decompose, prepare_saes
from attribution.spliced import ablation_values

MODES = ("zero", "mean", "patch")


@dataclass
class Ablation(NodeTable):
    """`value` holds each node's real effect, metric(clean) - metric(ablated)."""

    mode: str = "zero"
    metric: Tensor = field(default_factory=lambda: torch.zeros(0))  # [batch] clean metric
    ablated: Tensor = field(default_factory=lambda: torch.zeros(0))  # [n] metric with the node ablated

    @property
    def effect(self) -> Tensor:
        return self.value

    def __str__(self) -> str:
        lines = [f"Ablation ({self.mode}) of {len(self)} nodes; clean metric = {self.metric.tolist()}"]
        lines += [str(n).replace("attr", "effect") for n in self.top(10)]
        return "\n".join(lines)


class Key(NamedTuple):
    """One node to ablate: feature -1 is the error term."""

    prompt: int
    hook: str
    position: int
    feature: int


def ablate(
    model,
    saes,
    prompt: str | list[str],
    metric,
    nodes,
    *,
    mode: str = "zero",
    corrupt: str | list[str] | None = None,
    reference: str | list[str] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> Ablation:
    """Exact effect of ablating each node (Node, or (hook, position, feature|None[, prompt]) tuples).

    mode="mean" uses each feature's (and error term's) mean over the non-<bos> positions of `reference`
    prompts (default: the prompts themselves); mode="patch" uses the values on `corrupt`.
    batch_size: ablations per forward pass (None: as many as memory allows, at most 64). A request that
    cannot fit raises memory.OutOfMemoryError before any work.
    """
    _check_options(mode, corrupt, batch_size, nodes)
    saes = prepare_saes(model, saes)
    batch = model.tokenize(prompt)
    keys = [
        _check_key(as_key(n), model, saes, batch) for n in (nodes.top(None) if isinstance(nodes, NodeTable) else nodes)
    ]
    if not keys:
        raise AttributionError("no nodes to ablate")
    batch_size = _rows_per_pass(model, saes, keys, batch, batch_size, patch=mode == "patch")
    cbatch = batch.same_shape(model.tokenize(corrupt)) if mode == "patch" else None
    means = (
        ablation_values(model, saes, model.tokenize(reference) if reference is not None else batch, "mean")
        if mode == "mean"
        else None
    )
    hooks = list(saes)
    order = sorted(range(len(keys)), key=lambda n: (keys[n].prompt, model.hooks[keys[n].hook].order, keys[n][2:]))
    out = _Out(*(torch.zeros(len(keys), dtype=torch.float64) for _ in range(3)), torch.zeros(batch.size).double())
    n_chunks = sum(-(-sum(1 for k in keys if k.prompt == b) // batch_size) for b in range(batch.size))
    bar = tqdm(total=len(keys), desc="ablations", disable=not progress or n_chunks <= 1, leave=False)
    for b in range(batch.size):
        mine = [n for n in order if keys[n].prompt == b]
        if mine:
            cprompt = cbatch.select(b) if cbatch is not None else None
            _ablate_prompt(model, saes, metric, keys, mine, batch.select(b), b, cprompt, means, mode, batch_size, out)
            bar.update(len(mine))
    bar.close()
    result = Ablation(hooks=hooks, tokens=batch.tokens, mode=mode)
    result.prompt = torch.tensor([k.prompt for k in keys])
    result.hook_idx = torch.tensor([hooks.index(k.hook) for k in keys])
    result.position = torch.tensor([k.position for k in keys])
    result.feature = torch.tensor([k.feature for k in keys])
    result.activation = out.activation
    result.gradient = torch.full((len(keys),), float("nan"))
    result.value, result.ablated, result.metric = out.effect, out.ablated, out.metrics
    return result


class _Out(NamedTuple):
    """What ablate fills in, one entry per node (per prompt for metrics)."""

    effect: Tensor
    ablated: Tensor
    activation: Tensor
    metrics: Tensor


def _check_options(mode, corrupt, batch_size, nodes) -> None:
    if mode not in MODES:
        raise AttributionError(f"unknown ablation mode {mode!r}; choose one of {MODES}")
    if mode == "patch" and corrupt is None:
        raise AttributionError("mode='patch' needs corrupt='...' to patch values from")
    if batch_size is not None and batch_size < 1:
        raise AttributionError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(nodes, (str, Node)) or (isinstance(nodes, tuple) and nodes and not isinstance(nodes[0], tuple)):
        raise AttributionError(
            f"nodes must be a list of nodes (or an Attribution), got {nodes!r}; wrap a single node in a list"
        )


def _ablate_prompt(model, saes, metric, keys, mine, one, b, cprompt, means, mode, batch_size, out: _Out) -> None:
    """Ablate prompt b's nodes `mine` (indices into keys), in chunks of batch_size rows per forward pass."""
    used = sorted({keys[n].hook for n in mine}, key=lambda h: model.hooks[h].order)
    clean = trace(model, one, capture=used)
    at = {h: sorted({keys[n].position for n in mine if keys[n].hook == h}) for h in used}  # positions with nodes
    dec = {h: _at_positions(saes[h], clean.acts[h], at[h]) for h in used}
    cdec = None
    if cprompt is not None:
        ctr = trace(model, cprompt, capture=used)
        cdec = {h: _at_positions(saes[h], ctr.acts[h], at[h]) for h in used}
    # chunks by position (latest first), so each chunk runs only the tokens from its earliest node on
    by_pos = sorted(mine, key=lambda n: -keys[n].position)
    rank = {n: i for i, n in enumerate(mine)}
    pasts: dict[int, Past] = {}  # chunks starting at the same token share one prefix forward
    for start in range(0, len(by_pos), batch_size):
        chunk = sorted(by_pos[start : start + batch_size], key=rank.__getitem__)
        first = _first_position(metric, min(keys[n].position for n in chunk), one.width)
        deltas: dict[str, tuple[list[int], list[int], list[Tensor]]] = {}  # hook -> nodes, positions, deltas
        for n in chunk:
            k = keys[n]
            delta, act = _delta(
                saes[k.hook], dec[k.hook], cdec[k.hook] if cdec else None, means[k.hook] if means else None,
                k.position, k.feature, mode,
            )  # fmt: skip
            mine_h = deltas.setdefault(k.hook, ([], [], []))
            mine_h[0].append(n)
            mine_h[1].append(k.position - first)
            mine_h[2].append(delta)
            out.activation[n] = act
        if first > 0 and first not in pasts:
            pasts[first] = Past(model, one, first)
        hooks_here = sorted(deltas, key=lambda h: model.hooks[h].order)
        groups = [
            Group({h: Add(torch.tensor(deltas[h][1]), torch.stack(deltas[h][2]))}, n=len(deltas[h][0]))
            for h in hooks_here
        ]
        tr = trace(model, one, groups=groups, past=pasts.get(first))
        rows = Rows(torch.full((tr.hidden.shape[0],), b), torch.full((tr.hidden.shape[0],), -first))
        m = evaluate(metric, model, tr.hidden, rows).detach().double().cpu()
        for h, span in zip(hooks_here, tr.groups):
            out.ablated[deltas[h][0]] = m[span]
            out.effect[deltas[h][0]] = m[0] - m[span]
        out.metrics[b] = m[0]


def _first_position(metric, earliest: int, width: int) -> int:
    """The first token a chunk must run: its earliest node, unless the metric reads an earlier position
    (or reads full logits, which need every position: then 0)."""
    if not hasattr(metric, "from_hidden") or not isinstance(getattr(metric, "position", None), int):
        return 0
    return max(0, min(earliest, metric.position % width))


def _rows_per_pass(model, saes, keys, batch, requested: int | None, patch: bool) -> int:
    """Ablations per forward pass that fit in memory (the longest prompt decides), checked before any work."""
    per_row, fixed = pass_bytes(model, saes, keys, batch, patch)
    pos = max(batch.lengths[k.prompt] for k in keys)
    return memory.chunk_rows(
        requested, per_row, fixed, what=f"ablation on {pos} tokens", arg="batch_size=", most=min(64, len(keys))
    )


def pass_bytes(model, saes, keys, batch, patch: bool) -> tuple[int, int]:
    """(bytes per ablation row, bytes fixed per pass): rows' working set; decompositions and the clean row."""
    keys = [Key(*k) for k in keys]
    pos = max(batch.lengths[k.prompt] for k in keys)
    at = {(k.hook, k.position) for k in keys}  # decompositions are made at node positions only
    dense = sum(saes[h].d_sae * 4 * 3 + model.d_model * 4 * 2 for h, _ in at)
    row = memory.forward_bytes(model, 1, pos, 1, grad=False)
    return row + pos * model.d_model * 4 * 3, dense * (2 if patch else 1) + row


def _at_positions(sae, x: Tensor, positions: list[int]) -> tuple[dict[int, int], Decomposition]:
    """The decomposition at the positions that hold nodes only (an SAE acts token by token), not a dense
    [pos, d_sae] one for the whole prompt."""
    return {p: i for i, p in enumerate(positions)}, decompose(sae, x[:, positions])


def _delta(sae, dec, cdec, mean, pos: int, feat: int, mode: str) -> tuple[Tensor, float]:
    """The change in the hook's activation at `pos` that ablating the node makes, and its clean activation."""
    index, dec = dec
    pos = index[pos]
    cdec = cdec[1] if cdec else None
    if feat >= 0:
        f = dec.features[0, pos, feat]
        target = {
            "zero": torch.zeros_like(f),
            "mean": mean[0][feat] if mean else None,
            "patch": cdec.features[0, pos, feat] if cdec else None,
        }[mode]
        return (target - f) * sae.W_dec[feat], float(f)
    e = dec.error[0, pos]
    target = {
        "zero": torch.zeros_like(e),
        "mean": mean[1] if mean else None,
        "patch": cdec.error[0, pos] if cdec else None,
    }[mode]
    return target - e, float(e.norm())


def _check_key(key, model, saes, batch):
    prompt, hook, pos, feat = key
    name = model.hook(hook).name
    if name not in saes:
        raise AttributionError(f"node at {hook!r} but no SAE is spliced there; SAEs are at {list(saes)}")
    if not 0 <= prompt < batch.size:
        raise AttributionError(f"node names prompt {prompt} but only {batch.size} prompt(s) were given")
    if not 0 <= pos < batch.lengths[prompt]:
        raise AttributionError(f"node position {pos} is outside prompt {prompt} ({batch.lengths[prompt]} tokens)")
    if feat >= saes[name].d_sae:
        raise AttributionError(f"feature {feat} does not exist: the SAE at {name} has {saes[name].d_sae}")
    return Key(prompt, name, pos, feat)
