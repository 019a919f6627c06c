"""Many dictionaries trained from one forward pass over a stream of text, with checkpoints.

Activations are never stored: each batch of token windows runs through the model once (stopping after the
last hook needed), and every dictionary takes one optimiser step on its hook's activations of that batch,
so the number of training tokens is bounded by time, not by memory or disk. A dictionary reads one hook and
reconstructs it (an SAE), or reads one hook and reconstructs another (a transcoder: `target`), or (a
cross-layer transcoder, trained by attribution.training.clt_fit) reads one hook a layer and reconstructs one a
layer: `hook` and `target` are then lists, and its steps take [n_layers, n, d] stacks of them.

Windows are visited in a seeded random order, `batch_windows` at a time; the tokens kept are the same for
every dictionary (not <bos>, not the rare massive-norm tokens, judged at `mask_hook`), so a dictionary
trained alone sees exactly the data it would see beside others. A checkpoint (every dictionary's weights,
optimiser state and the number of batches done) is written atomically every `checkpoint_s` seconds; a run
that finds one for the same recipe resumes from it without re-running the batches it covered.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attribution.cache import atomic_write, digest, model_fingerprint, remove, sae_fingerprint, tensor_digest
from attribution.compute import model_autocast
from attribution.engine import trace
from attribution.errors import AttributionError
from attribution.models.model import Batch
from attribution.saes.base import SAE
from attribution.saes.clt import CrossLayerTranscoder
from attribution.tokens import OUTLIER, keep_tokens
from attribution.training import clt_fit
from attribution.training.clt_fit import CLTFitter
from attribution.training.trainer import Fitter, TrainConfig, TrainLog


@dataclass
class Dictionary:
    """One dictionary to train: the SAE (initialised by the first batch), its recipe, the hook it reads and,
    for a transcoder, the hook it reconstructs (a CrossLayerTranscoder: one of each a layer, as lists)."""

    sae: SAE | CrossLayerTranscoder
    config: TrainConfig
    hook: str | list[str]
    target: str | list[str] | None = None


def train_dictionaries(
    model,
    dictionaries: dict[str, Dictionary],
    windows: Tensor,
    *,
    batch_windows: int = 32,
    tokens: int | None = None,
    seed: int = 0,
    mask_hook: str | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_s: float = 300.0,
    keep: str | Path | None = None,
    start: str | Path | None = None,
    progress: bool = True,
) -> dict[str, TrainLog]:
    """Train every dictionary in place on `windows` ([n_seq, seq] token ids, rows starting with <bos>), one
    forward pass per batch of `batch_windows` windows for all of them; returns {name: training log}.

    tokens: how many training tokens to stream (default: every window once); more than the windows hold
    makes epochs, each in a new seeded order. A dictionary whose config.batch_size is smaller than a
    forward batch's tokens takes several optimiser steps on it (each a random share of its tokens): the
    forward is shared, and more, smaller steps learn more from the same tokens. Each config.steps becomes
    the number of optimiser steps of the run (its learning-rate schedule spans it). checkpoint: a file to
    save progress to and resume from (deleted when the run finishes).

    keep: a file to write the final training state to (every dictionary's unfinished weights and optimiser
    state: a checkpoint at the last batch), so a later run can continue it. start: such a file to continue
    from: the run skips the batches it covered (this run's order, which extends a shorter run's over the same
    windows) and trains the rest from its state; it must come from the same dictionaries and recipe, with
    fewer batches. A checkpoint of this run, if any, wins (it is later).
    """
    if not dictionaries:
        raise AttributionError("no dictionaries to train")
    if windows.dim() != 2 or len(windows) < batch_windows or batch_windows < 1:
        raise AttributionError(
            f"need [n_seq, seq] token ids with at least batch_windows={batch_windows} rows, got {tuple(windows.shape)}"
        )
    decaying = [n for n, d in dictionaries.items() if d.config.decay_share > 0]
    if (keep is not None or start is not None) and decaying:
        raise AttributionError(
            f"{decaying} decay their learning rate to zero at the run's end (Adam's schedule), so a run of them "
            "cannot be continued: use optimizer='signsgd' (schedule-free, no decay) or TrainConfig(lr_decay=0)"
        )
    hooks = {name: _hooks(model, d) for name, d in dictionaries.items()}
    mask_hook = model.hook(mask_hook).name if mask_hook else None
    capture = {h for hs in hooks.values() for h in _flat(hs)} | ({mask_hook} if mask_hook else set())
    capture = sorted(capture, key=lambda h: model.hooks[h].order)
    mask_hook = mask_hook or capture[-1]
    per_step = batch_windows * (windows.shape[1] - 1)  # tokens a batch (its <bos> column not trained on)
    per_epoch = len(windows) // batch_windows
    n_batches = per_epoch if tokens is None else max(1, -(-int(tokens) // per_step))
    order = _order(len(windows), per_epoch * batch_windows, n_batches * batch_windows, seed)
    fitters, splits = {}, {}
    for name, d in dictionaries.items():
        splits[name] = max(1, round(per_step / d.config.batch_size))  # optimiser steps a forward batch
        cfg = dataclasses.replace(d.config, steps=n_batches * splits[name], progress=False)
        fitters[name] = (CLTFitter if isinstance(d.sae, CrossLayerTranscoder) else Fitter)(d.sae.to(model.device), cfg)
    recipe = _recipe(model, dictionaries, windows, batch_windows, seed, mask_hook, n_batches)
    lineage = _lineage(model, dictionaries, batch_windows, seed, mask_hook)
    done = _resume(checkpoint, recipe, fitters) or _continue(start, lineage, n_batches, fitters)
    n_tokens = n_batches * per_step
    bar = tqdm(
        total=n_tokens,
        initial=done * per_step,
        desc=f"training {len(fitters)} dictionar{'y' if len(fitters) == 1 else 'ies'}",
        unit="tok",
        unit_scale=True,
        disable=not progress,
    )
    saved = started = time.monotonic()
    for i in range(done, n_batches):
        ids = windows[order[i * batch_windows : (i + 1) * batch_windows]]
        with torch.no_grad(), model_autocast(model):
            acts = trace(model, Batch.from_ids(ids, model.device), capture=capture, stop_early=True).acts
        kept = keep_tokens(acts[mask_hook], OUTLIER)  # [batch, seq]: not <bos>, not a massive-norm token
        shuffle = None
        for name, f in fitters.items():
            x, target = (_gather(acts, h, kept) for h in hooks[name])  # [n, d], a CLT's [n_layers, n, d]
            if splits[name] == 1:
                f.step(x, target)
                continue
            if shuffle is None:  # one order of the batch's tokens for every dictionary, fixed by (seed, i)
                shuffle = torch.randperm(x.shape[-2], generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
            parts = shuffle.to(x.device).chunk(splits[name])
            for part in parts:
                f.step(x[..., part, :], None if target is None else target[..., part, :])
        bar.update(per_step)
        if progress and next(iter(fitters.values())).logged:
            evs = [f.log.explained_variance[-1] for f in fitters.values()]
            bar.set_postfix(ev=f"{min(evs):.3f}-{max(evs):.3f}")
        if checkpoint is not None and time.monotonic() - saved >= checkpoint_s and i + 1 < n_batches:
            _save(checkpoint, recipe, i + 1, fitters)
            saved = time.monotonic()
    bar.close()
    if keep is not None:  # before finish(), which folds the normalisation and the optimiser's average in
        _save(keep, recipe, n_batches, fitters, lineage=lineage)
    logs = {name: f.finish() for name, f in fitters.items()}
    for name, d in dictionaries.items():
        d.sae.meta["training"] |= {
            "tokens_seen": n_tokens,
            "epochs": n_batches / per_epoch,
            "batch_windows": batch_windows,
            "stream_seed": seed,
            "stream_seconds": time.monotonic() - started,  # this process's batches (a resumed run: its part)
            "stream_tokens": (n_batches - done) * per_step,  # the tokens those seconds streamed
        }
        log = logs[name]  # each batch is new text: its statistics before the step are held-out ones
        d.sae.meta["curve"] = {
            "tokens": [s * per_step // splits[name] for s in log.steps],
            "explained_variance": log.explained_variance,
            "l0": log.l0,
            "dead_fraction": log.dead_fraction,
        }
    if checkpoint is not None:
        remove(checkpoint)
    return logs


def _hooks(model, d: Dictionary) -> tuple:
    """(read, target) hook names, each a list for a cross-layer transcoder (HookError if one is missing)."""
    if not isinstance(d.sae, CrossLayerTranscoder):
        return model.hook(d.hook).name, model.hook(d.target).name if d.target else None
    n = d.sae.n_layers
    if not (
        isinstance(d.hook, list | tuple) and isinstance(d.target, list | tuple) and len(d.hook) == len(d.target) == n
    ):
        raise AttributionError(
            f"a cross-layer transcoder's Dictionary reads and writes one hook a layer: give hook and target as "
            f"lists of {n} (hook=clt.hooks, target=[s.target for s in clt.layers]); got {d.hook!r}, {d.target!r}"
        )
    return [model.hook(h).name for h in d.hook], [model.hook(h).name for h in d.target]


def _flat(hooks) -> list[str]:
    return [h for hs in hooks if hs for h in ([hs] if isinstance(hs, str) else hs)]


def _gather(acts: dict, hook, kept: Tensor) -> Tensor | None:
    """A hook's kept tokens [n, d]; a list of hooks' stacked [len, n, d]; None for no hook."""
    if not hook:
        return None
    return acts[hook][kept] if isinstance(hook, str) else torch.stack([acts[h][kept] for h in hook])


def _order(n: int, per_epoch: int, total: int, seed: int) -> Tensor:
    """[total] window indices: epochs of `per_epoch` windows, each a new seeded permutation of the n."""
    gen = torch.Generator().manual_seed(seed)
    parts, have = [], 0
    while have < total:
        parts.append(torch.randperm(n, generator=gen)[:per_epoch])
        have += per_epoch
    return torch.cat(parts)[:total]


def _recipe(
    model, dictionaries: dict, windows: Tensor, batch_windows: int, seed: int, mask_hook: str, n_batches: int
) -> str:
    """What a checkpoint must match to be resumed: the model, the text and its order, every dictionary's
    hooks, initial weights and recipe."""
    parts = {
        name: [d.hook, d.target, _fingerprint(d.sae), dataclasses.asdict(d.config)] for name, d in dictionaries.items()
    }
    return digest([model_fingerprint(model), tensor_digest(windows), batch_windows, seed, mask_hook, parts, n_batches])


def _lineage(model, dictionaries: dict, batch_windows: int, seed: int, mask_hook: str) -> str:
    """What a kept state must match to be continued: _recipe without the text, the run's length and the
    initial weights (a longer run over more of the corpus continues a shorter one)."""
    parts = {  # the shape, not the initial weights: the kept state replaces them (a fitted skip path included)
        name: [d.hook, d.target, _shape(d.sae), dataclasses.asdict(dataclasses.replace(d.config, steps=1))]
        for name, d in dictionaries.items()
    }
    return digest([model_fingerprint(model), batch_windows, seed, mask_hook, parts])


def _shape(sae: SAE | CrossLayerTranscoder) -> list:
    if isinstance(sae, CrossLayerTranscoder):
        return clt_fit.shape(sae, _shape)
    return [sae.architecture, sae.d_in, sae.d_sae, dataclasses.asdict(sae.options), sae.W_skip is not None]


def _fingerprint(sae: SAE | CrossLayerTranscoder) -> str:
    return clt_fit.fingerprint(sae) if isinstance(sae, CrossLayerTranscoder) else sae_fingerprint(sae)


def _continue(start, lineage: str, n_batches: int, fitters: dict) -> int:
    """Batches covered by the kept state `start` (train_dictionaries' keep), whose state is loaded; 0 when
    there is none. A state of other dictionaries, or as long as this run or longer, is an error."""
    if start is None:
        return 0
    try:
        state = torch.load(start, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise AttributionError(f"cannot continue from {start}: it is unreadable ({exc})") from exc
    if not isinstance(state, dict) or state.get("lineage") != lineage:
        raise AttributionError(
            f"cannot continue from {start}: it was kept by other dictionaries, another recipe or another model "
            "(continue a run with the same dictionaries and settings, or train from the start)"
        )
    if int(state["batches"]) >= n_batches:
        raise AttributionError(
            f"cannot continue from {start}: it already covers {state['batches']} batches and this run has "
            f"{n_batches}; ask for more tokens than it was trained on"
        )
    return _load_state(state, fitters)


def _resume(checkpoint, recipe: str, fitters: dict) -> int:
    """Batches already done: those of a checkpoint of this recipe, whose state is loaded; else 0."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return 0
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # truncated or not ours
        warnings.warn(f"checkpoint {checkpoint} is unreadable ({exc}); training from the start", stacklevel=3)
        return 0
    if not isinstance(state, dict) or state.get("recipe") != recipe:
        return 0
    return _load_state(state, fitters)


def _load_state(state: dict, fitters: dict) -> int:
    """Load a checkpoint's or kept state's fitters; the batches it covered."""
    for name, f in fitters.items():
        f.load_state_dict(state["fitters"][name])
    return int(state["batches"])


def _save(checkpoint, recipe: str, batches: int, fitters: dict, lineage: str | None = None) -> None:
    state = {"recipe": recipe, "batches": batches, "fitters": {n: f.state_dict() for n, f in fitters.items()}}
    state["lineage"] = lineage
    with atomic_write(checkpoint, directory=False) as tmp:  # makes the parent folder
        torch.save(state, tmp)
