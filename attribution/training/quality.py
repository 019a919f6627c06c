"""How good the default SAEs are on text the model did not write, and which features never fire.

The default SAEs train on text sampled from the model, so their quality is also measured on real English
that Debian packages ship (the `fortunes` collection and the Jargon File: `apt-get install fortunes
jargon-text`, ~1M tokens). Dead features are counted the way the paper does, on many held-out tokens: a
feature is dead when it fires on none of them.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attribution.errors import AttributionError
from attribution.explain import feature_activations
from attribution.training.corpus import windows

FORTUNES = Path("/usr/share/games/fortunes")
JARGON = Path("/usr/share/doc/jargon-text/jargon.txt.gz")


def reference_text(model, *, seq_len: int = 128, max_tokens: int | None = None) -> Tensor:
    """[n_seq, seq_len] token ids (rows start with <bos>) of English text from Debian packages."""
    docs = []
    if FORTUNES.is_dir():  # plain files of quotes separated by "%" lines; mario.* are Portuguese
        for f in sorted(FORTUNES.iterdir()):
            if f.is_file() and "." not in f.name and not f.is_symlink():
                docs.append(re.sub(r"^%$", "", f.read_text(errors="replace"), flags=re.M))
    if JARGON.is_file():
        docs.append(gzip.decompress(JARGON.read_bytes()).decode("utf-8", "replace"))
    if not docs:
        raise AttributionError(
            f"no reference text found ({FORTUNES}, {JARGON}); install it with "
            "`apt-get install -y fortunes jargon-text`, or pass your own token ids"
        )
    ids: list[int] = []
    for doc in docs:
        ids += model.tokenizer(doc, add_special_tokens=False).input_ids
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    max_seq = None if max_tokens is None else -(-max_tokens // (seq_len - 1))
    return windows(model, ids, seq_len, max_seq)


@torch.no_grad()
def firing_counts(model, saes: dict, tokens: Tensor, *, batch_size: int = 32, progress: bool = True):
    """({hook: [d_sae] number of tokens each feature fired on}, tokens seen), one pass for all hooks (in
    attribution.compute's dtype), counted on the model's device."""
    hooks = list(saes)
    counts = {h: torch.zeros(saes[h].d_sae, dtype=torch.long, device=model.device) for h in hooks}
    n = 0
    for ids in tqdm(tokens.split(batch_size), desc="counting feature firings", disable=not progress):
        feats = feature_activations(model, saes, ids)
        for h in hooks:
            counts[h] += (feats[h][:, 1:] > 0).flatten(0, 1).sum(0)  # <bos> left out
        n += ids.shape[0] * (ids.shape[1] - 1)
    return {h: c.cpu() for h, c in counts.items()}, n


def evaluate_defaults(
    model, saes: dict, *, dead_tokens: int = 1_000_000, ce_sequences: int = 32, progress: bool = True
) -> dict:
    """Per hook: quality on held-out sampled text (from training), on reference text, and dead features."""
    from attribution.training.evaluate import evaluate_sae

    text = reference_text(model, max_tokens=dead_tokens)
    counts, n = firing_counts(model, saes, text, progress=progress)
    report = {}
    for h, sae in saes.items():
        report[h] = {
            "d_sae": sae.d_sae,
            "k": getattr(sae, "k", None),
            "held_out": sae.meta.get("eval"),  # the SAE's own held-out text (its corpus's held-out documents)
            "reference_text": evaluate_sae(model, sae, text[:ce_sequences], progress=progress),
            "dead_fraction": float((counts[h] == 0).float().mean()),
            "dead_tokens": n,
        }
    return report


def quality_table(report: dict) -> str:
    """The markdown table docs/training.md quotes."""
    # v2 reports (trained on sampled text) hold "sampled_held_out"; later ones "held_out": their corpus's
    # held-out documents, beside Debian's fortunes + Jargon File (modern English, not the corpus's style)
    own, ref = (
        ("held-out docs", "Debian text") if any("held_out" in r for r in report.values()) else ("sampled", "real text")
    )
    rows = [
        f"| hook | d_sae | EV ({own}) | CE rec. ({own}) | EV ({ref}) | CE rec. ({ref}) | L0 | dead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h, r in report.items():
        if not isinstance(r, dict) or "d_sae" not in r:
            continue  # e.g. "build": how long the SAEs took
        s, t = r.get("held_out", r.get("sampled_held_out")) or {}, r["reference_text"]
        rows.append(
            f"| {h} | {r['d_sae']} | {s.get('explained_variance', float('nan')):.3f} | "
            f"{s.get('ce_loss_recovered', float('nan')):.3f} | {t['explained_variance']:.3f} | "
            f"{t['ce_loss_recovered']:.3f} | {t['l0']:.0f} | {r['dead_fraction']:.1%} of "
            f"{r['dead_tokens'] / 1e6:.2f}M tok |"
        )
    return "\n".join(rows)


def save_report(report: dict, path: Path) -> Path:
    from attribution.cache import write_json

    write_json(path, report, lock=True)  # atomic: a reader never sees half a report
    return path
