"""`default_saes`: the dictionaries the case studies use, trained on first use and then loaded from a cache.

TopK SAEs on the residual stream after every other block (0, 2, ..., enough for multi-layer graphs) plus a
wider one after the middle block, where the paper's single-layer analyses live. All of them train on one
shared corpus sampled from the model itself (so a fresh machine with no network can build them), whose
activations are collected for every hook in one pass; each SAE then trains on shuffled in-memory
activations, each dimension centred and scaled to unit variance (TrainConfig.normalize="dim": gemma keeps
most of the residual variance in one dimension, see attribution.training.trainer). A folder per SAE under the
model's fingerprint, named by its whole recipe and written atomically under a file lock, is the cache: a
finished SAE is never retrained, and two processes wanting it train it once.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from attribution.cache import build_once, cache_dir, corrupt, digest, model_fingerprint
from attribution.errors import AttributionError, SAEError
from attribution.saes import build, load_sae, model_names, save_sae

VERSION = 2  # bump when the recipe changes, so stale caches are not reused (2: per-dimension normalisation)


@dataclass(frozen=True)
class DefaultSpec:
    """The recipe of one default SAE."""

    hook: str
    d_sae: int
    k: int = 32
    steps: int = 200
    batch_size: int = 4096
    lr: float = 4e-4
    normalize: str = "dim"

    @property
    def folder(self) -> str:
        """Readable fields, then a hash of the whole recipe and the shared corpus's size (a change to any of
        them, e.g. the learning rate, is another SAE)."""
        recipe = digest({"spec": asdict(self), "corpus": [CORPUS_TOKENS, SEQ_LEN, HELD_OUT], "version": VERSION})
        return f"{self.hook}-topk{self.d_sae}-k{self.k}-s{self.steps}-{recipe[:10]}-v{VERSION}"


# the corpus every default SAE trains on: ~120k tokens sampled from the model (5 min on 2 cores, cached)
CORPUS_TOKENS = 120_000
SEQ_LEN = 128
HELD_OUT = 0.05


def middle_hook(model) -> str:
    """The residual stream after the middle block, where the wide default SAE and single-layer studies live."""
    return model.hook(f"resid_post.{model.n_layers // 2}").name


def default_specs(model) -> dict[str, DefaultSpec]:
    """{hook: recipe}: resid_post of every other block, and a 2x wider SAE after the middle block."""
    mid = model.hooks[middle_hook(model)].layer
    base = 2 ** round(math.log2(6.4 * model.d_model))  # 4096 features for a width of 640
    specs = {}
    for layer in sorted(set(range(0, model.n_layers - 1, 2)) | {mid}):
        hook = model.hook(f"resid_post.{layer}").name
        specs[hook] = DefaultSpec(hook, d_sae=2 * base, steps=300) if layer == mid else DefaultSpec(hook, d_sae=base)
    return specs


def default_saes(model=None, hooks=None, *, train: bool = True, progress: bool = True) -> dict:
    """{hook: SAE} for `hooks` (default: every default hook), training the missing ones first.

    train=False raises instead of training (e.g. for a quick check whether the cache is built).
    """
    from attribution.models.loading import load_model

    model = model if model is not None else load_model()
    specs = default_specs(model)
    wanted = list(specs) if hooks is None else [model.hook(h).name for h in _as_list(hooks)]
    for h in wanted:
        if h not in specs:
            if model.hooks[h].kind != "resid_post":
                raise AttributionError(
                    f"default SAEs live on the residual stream (resid_post.*), not at {h!r}; "
                    "train one there with train_sae(model, hook)"
                )
            specs[h] = DefaultSpec(h, d_sae=min(s.d_sae for s in specs.values()))
    root = saes_dir(model)
    folders = {h: root / specs[h].folder for h in wanted}

    def load(path: Path):
        try:
            return load_sae(path, model=model)
        except SAEError as exc:
            raise corrupt(path, exc) from None

    if not train:
        missing = [h for h in wanted if not os.path.lexists(folders[h])]
        if missing:
            raise AttributionError(
                f"default SAEs for {missing} are not built yet; run `python -m attribution saes` "
                "(or call default_saes(model)) to train them"
            )
        return {h: load(folders[h]) for h in wanted}  # a corrupt one raises CacheError naming its folder
    shared = _SharedData(model, [specs[h] for h in wanted], progress)
    return {h: build_once(folders[h], load, lambda tmp, h=h: _train(model, specs[h], shared, tmp)) for h in wanted}


def saes_dir(model) -> Path:
    return cache_dir() / "saes" / model_fingerprint(model)


def default_corpus(model, progress: bool = True):
    """([n_train, seq], [n_eval, seq]) token ids: the shared sampled corpus and its held-out tail."""
    from attribution.training.corpus import sample_tokens

    ids = sample_tokens(model, CORPUS_TOKENS, seq_len=SEQ_LEN, progress=progress)
    n_eval = max(1, round(HELD_OUT * len(ids)))
    return ids[:-n_eval], ids[-n_eval:]


def fit_spec(model, spec: DefaultSpec, activations, progress: bool = True):
    """A TopK SAE at spec.hook trained by the recipe `spec` on `activations` (a tensor or batches, [n, d_model])."""
    from attribution.training.trainer import TrainConfig, fit

    sae = build("topk", model.d_model, spec.d_sae, spec.hook, k=spec.k, apply_b_dec_to_input=True).to(model.device)
    cfg = TrainConfig(
        steps=spec.steps,
        batch_size=spec.batch_size,
        lr=spec.lr,
        normalize=spec.normalize,
        dead_after_tokens=200_000,
        progress=progress,
    )
    fit(sae, activations, cfg)
    return sae


class _SharedData:
    """The corpus and the activations every default SAE trains on, made on the first call (only when some SAE
    is missing). Always every default hook (plus any extra asked for): the tokens kept (no <bos>, no
    massive-norm outliers) are chosen at the last hook collected, so building one SAE alone must see the same
    data as building all of them, or the same cache folder would hold different SAEs on different machines."""

    def __init__(self, model, specs: list[DefaultSpec], progress: bool):
        self.model, self.specs, self.progress, self.data = model, specs, progress, None

    def __call__(self):
        if self.data is None:
            from attribution.training.activations import cached_activations

            train_ids, eval_ids = default_corpus(self.model, self.progress)
            hooks = [*default_specs(self.model), *(s.hook for s in self.specs)]  # the cache's key covers the set
            cache = cached_activations(self.model, hooks, train_ids, "defaults", progress=self.progress)
            self.data = train_ids, eval_ids, cache
        return self.data


def _train(model, spec: DefaultSpec, shared: _SharedData, out: Path) -> None:
    from attribution.training.evaluate import evaluate_sae

    progress = shared.progress
    train_ids, eval_ids, cache = shared()
    sae = fit_spec(model, spec, cache.tensor(spec.hook), progress)
    sae.meta["eval"] = evaluate_sae(model, sae, eval_ids[:16], progress=progress)
    sae.meta["corpus"] = {
        "source": "sampled from the model (seed 0, top-k 40)",
        "sequences": len(train_ids) + len(eval_ids),
        "seq_len": SEQ_LEN,
        "train_tokens": cache.n_tokens,
    }
    sae.meta["default_spec"] = {"folder": spec.folder, "version": VERSION}
    if names := model_names(model):
        sae.meta["model_name"] = names[0]  # saved as SAELens's metadata.model_name; load_sae warns on a mismatch
    save_sae(sae, out)


def _as_list(hooks) -> list[str]:
    return [hooks] if isinstance(hooks, str) else list(hooks)
