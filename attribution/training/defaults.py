"""`default_saes`: the dictionaries the case studies use, trained on first use and then loaded from a cache.

TopK SAEs on the residual stream after every other block (0, 2, ..., enough for multi-layer graphs) plus a
wider one after the middle block, where the paper's single-layer analyses live. They train on real English
prose (attribution.training.text: the Brown Corpus, State of the Union addresses, Moby-Dick, from pinned npm
packages; CORPUS = "sampled" trains on the model's own samples instead, with no network at all), streamed:
every missing SAE trains from one forward pass per batch (attribution.training.stream), each dimension
centred and scaled to unit variance (TrainConfig.normalize="dim": gemma keeps most of the residual variance
in one dimension, see attribution.training.trainer). The held-out documents are never trained on; they
evaluate each SAE. A folder per SAE under the model's fingerprint, named by its whole recipe and written
atomically under a file lock, is the cache: a finished SAE is never retrained, and two processes wanting it
train it once. An interrupted build resumes from its checkpoint.

`quick_sae` is a small middle-layer dictionary trained on a tenth of the text in a few minutes on any CPU,
for a first run before the full set is built.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from attribution.cache import cache_dir, corrupt, digest, locked, model_fingerprint
from attribution.errors import AttributionError, SAEError
from attribution.saes import build, load_sae, model_names, save_sae

VERSION = 3  # bump when the recipe changes (2: per-dimension normalisation; 3: real text, streamed, 16k middle)

CORPUS = "real"  # "real": English prose (held out by document); "sampled": text the model writes itself
SEQ_LEN = 128
BATCH_WINDOWS = 32  # windows a forward pass: ~4,064 training tokens a step for every SAE
EVAL_WINDOWS = 32  # held-out windows each SAE is evaluated on when it is built


@dataclass(frozen=True)
class DefaultSpec:
    """The recipe of one default SAE: where, how wide, how sparse, on how many tokens."""

    hook: str
    d_sae: int
    k: int = 32
    tokens: int = 2_000_000
    lr: float = 4e-4
    normalize: str = "dim"

    @property
    def folder(self) -> str:
        """Readable fields, then a hash of the whole recipe and of the corpus it trains on (a change to any of
        them, e.g. the learning rate, is another SAE)."""
        recipe = digest({"spec": asdict(self), "corpus": [CORPUS, SEQ_LEN, BATCH_WINDOWS], "version": VERSION})
        return f"{self.hook}-topk{self.d_sae}-k{self.k}-t{_short(self.tokens)}-{recipe[:10]}-v{VERSION}"


def _short(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def middle_hook(model) -> str:
    """The residual stream after the middle block, where the wide default SAE and single-layer studies live."""
    return model.hook(f"resid_post.{model.n_layers // 2}").name


def default_specs(model) -> dict[str, DefaultSpec]:
    """{hook: recipe}: resid_post of every other block, and a 4x wider SAE after the middle block (16,384
    features at gemma-3-270m's width: the smallest Gemma Scope 2 ships)."""
    mid = model.hooks[middle_hook(model)].layer
    base = 2 ** round(math.log2(6.4 * model.d_model))  # 4096 features for a width of 640
    specs = {}
    for layer in sorted(set(range(0, model.n_layers - 1, 2)) | {mid}):
        hook = model.hook(f"resid_post.{layer}").name
        specs[hook] = DefaultSpec(hook, d_sae=4 * base if layer == mid else base)
    return specs


def quick_spec(model) -> DefaultSpec:
    """The quick dictionary: the middle layer, 4,096 features, 250k tokens (a few minutes on any CPU)."""
    base = 2 ** round(math.log2(6.4 * model.d_model))
    return DefaultSpec(middle_hook(model), d_sae=base, tokens=250_000, lr=1e-3)


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
    load = _loader(model)
    if not train:
        missing = [h for h in wanted if not os.path.lexists(folders[h])]
        if missing:
            raise AttributionError(
                f"default SAEs for {missing} are not built yet; run `python -m attribution saes` "
                "(or call default_saes(model)) to train them"
            )
        return {h: load(folders[h]) for h in wanted}  # a corrupt one raises CacheError naming its folder
    return _build_missing(model, {h: specs[h] for h in wanted}, folders, load, progress)


def is_built(model, hooks=None) -> bool:
    """Whether the default SAEs at `hooks` (default: all) are in the cache (built, not necessarily valid)."""
    specs = default_specs(model)
    hooks = list(specs) if hooks is None else [model.hook(h).name for h in _as_list(hooks)]
    return all(h in specs and os.path.lexists(saes_dir(model) / specs[h].folder) for h in hooks)


def quick_sae(model, *, train: bool = True, progress: bool = True):
    """The quick middle-layer dictionary (quick_spec), trained on first use like the default ones."""
    spec = quick_spec(model)
    folder = saes_dir(model) / spec.folder
    if not train and not os.path.lexists(folder):
        raise AttributionError("the quick SAE is not built yet; call quick_sae(model) to train it")
    return _build_missing(model, {spec.hook: spec}, {spec.hook: folder}, _loader(model), progress)[spec.hook]


def _loader(model):
    """Loads a cached SAE folder for `model`; a folder that does not load is reported as a corrupt entry."""

    def load(path: Path):
        try:
            return load_sae(path, model=model)
        except SAEError as exc:
            raise corrupt(path, exc) from None

    return load


def saes_dir(model) -> Path:
    return cache_dir() / "saes" / model_fingerprint(model)


def default_corpus(model, tokens: int = 2_000_000, progress: bool = True):
    """([n_train, SEQ_LEN], [EVAL_WINDOWS, SEQ_LEN]) token ids: windows of the training text (CORPUS), at
    most `tokens` tokens, and windows of held-out text no default SAE trains on."""
    per = SEQ_LEN - 1
    if CORPUS == "real":
        from attribution.training.corpus import real_tokens

        train = real_tokens(model, "train", seq_len=SEQ_LEN, max_tokens=tokens, progress=progress)
        held = real_tokens(model, "heldout", seq_len=SEQ_LEN, max_tokens=EVAL_WINDOWS * per, progress=False)
        return train, held
    if CORPUS == "sampled":
        from attribution.training.corpus import sample_tokens

        ids = sample_tokens(model, tokens + EVAL_WINDOWS * per, seq_len=SEQ_LEN, progress=progress)
        return ids[:-EVAL_WINDOWS], ids[-EVAL_WINDOWS:]
    raise AttributionError(f"defaults.CORPUS must be 'real' or 'sampled', got {CORPUS!r}")


def index_tokens(model, n_tokens: int = 65_536, progress: bool = True):
    """The first `n_tokens` of the default corpus (its first windows): the text feature indexes are built
    over by default (registered with attribution.explain as "default")."""
    train, _ = default_corpus(model, tokens=n_tokens + 127, progress=progress)
    return train[: max(1, -(-n_tokens // (train.shape[1] - 1)))]


def _build_missing(model, specs: dict, folders: dict[str, Path], load, progress: bool, train=None) -> dict:
    """{hook: SAE}: the cached ones loaded, the missing ones trained together (one stream per token budget)
    under their folders' locks, so two processes wanting them train them once. train(model, specs, folders,
    tokens, load, progress) trains and saves one budget's group (default: the default SAEs' _train; the
    default transcoders pass theirs)."""
    train = _train if train is None else train
    from attribution.cache import load_entry

    out = {h: s for h in specs if (s := load_entry(folders[h], load)) is not None}
    missing = [h for h in specs if h not in out]
    if missing:
        with locked(*(folders[h] for h in missing)):
            out |= {h: s for h in missing if (s := load_entry(folders[h], load)) is not None}
            todo = [h for h in missing if h not in out]
            for tokens in sorted({specs[h].tokens for h in todo}):
                group = {h: specs[h] for h in todo if specs[h].tokens == tokens}
                train(model, group, folders, tokens, load, progress)
                out |= {h: load(folders[h]) for h in group}
    return {h: out[h] for h in specs}


def _train(model, specs: dict[str, DefaultSpec], folders: dict[str, Path], tokens: int, load, progress) -> None:
    """Train `specs` from one stream of `tokens` training tokens, evaluate each on held-out text, save each."""
    from attribution.cache import atomic_write
    from attribution.training.evaluate import evaluate_sae
    from attribution.training.stream import Dictionary, train_dictionaries
    from attribution.training.trainer import TrainConfig

    train_ids, eval_ids = default_corpus(model, tokens, progress)
    dicts = {}
    for h, s in specs.items():
        sae = build("topk", model.d_model, s.d_sae, h, k=s.k, apply_b_dec_to_input=True).to(model.device)
        cfg = TrainConfig(lr=s.lr, normalize=s.normalize, dead_after_tokens=200_000, log_every=10)
        dicts[h] = Dictionary(sae, cfg, h)
    key = digest(sorted(folders[h].name for h in specs))[:12]
    checkpoint = saes_dir(model) / f"checkpoint-{key}.pt"
    train_dictionaries(
        model,
        dicts,
        train_ids,
        batch_windows=BATCH_WINDOWS,
        mask_hook=middle_hook(model),  # the same tokens kept whichever SAEs train together
        checkpoint=checkpoint,
        progress=progress,
    )
    for h, s in specs.items():
        sae = dicts[h].sae
        sae.meta["eval"] = evaluate_sae(model, sae, eval_ids, progress=progress)
        sae.meta["corpus"] = {
            "source": "English prose (attribution.training.text)" if CORPUS == "real" else "sampled from the model",
            "train_tokens": int(train_ids.shape[0] * (SEQ_LEN - 1)),
            "held_out": "documents (attribution.training.text.split_of)" if CORPUS == "real" else "last windows",
            "seq_len": SEQ_LEN,
        }
        quick = s == quick_spec(model)
        sae.meta["default_spec"] = {"folder": s.folder, "version": VERSION, "quick": quick, **asdict(s)}
        if names := model_names(model):
            sae.meta["model_name"] = names[0]  # saved as SAELens's metadata.model_name; load_sae warns on a mismatch
        with atomic_write(folders[h], check=load, lock=False) as tmp:  # we hold the folder's lock
            save_sae(sae, tmp)


def _as_list(hooks) -> list[str]:
    return [hooks] if isinstance(hooks, str) else list(hooks)
