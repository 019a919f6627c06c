"""What a transcoder feature reads and what it writes, as evidence for its label (index-time parts).

A transcoder reads resid_mid.L (W_enc) and writes mlp_out.L (W_dec): unlike an SAE's, its two directions live in
different places, so each side gets its own evidence.

- Input side, the tokens that drive it: the embedding lens scores every token in the indexed text by its
  direct path to the feature, emb(t) . W_enc[:, f] (the embedding as it enters the residual stream, scaled as
  the model scales it; everything attention and earlier MLPs add on the way to resid_mid.L is left out, so it
  speaks for early layers, where the stream is still mostly the token). It is evidence when the feature's
  top contexts fire on those tokens: the firing token is among the top N_IN embedding-lens tokens (compared
  as words) at >= labels.EVIDENCE_SHARE of them (`in_share`, `in_evidence`).
- The firing words in brackets are whole words (pieces: `Cranston`, where the SAE labels show the token
  `ston`), and evidence when the words shown cover >= HEAD_SHARE of the top contexts (`head_share`) or the
  embedding lens backs them: `[our/the/La]` from 24 contexts that fire on 20 different words says nothing,
  and is shown as `(mixed) [our/the/La]`, or, with no context word around it and the promoted token
  evidence, left out for `→ x` alone.
- Output side, what it does: the decoder row is written at mlp_out.L, which is added to the residual stream
  as it is (after gemma's post-norm), so its direct path to the logits is the logit lens of lens.py (final
  norm's gain, then W_U) with no correction; the path through later layers is measured per context by
  frozen_lens.py. The promoted token is shown as for SAEs: only where the model predicts it at >=
  EVIDENCE_SHARE of the top contexts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attribution.explain.labels import EVIDENCE_SHARE, Words, base_rates, context_words, fit, most_common_words
from attribution.explain.lens import _lens_dtype

N_IN = 10  # embedding-lens tokens kept per feature
HEAD_SHARE = 0.5  # of a feature's top contexts whose firing word must be among the bracket's words
MIXED = "(mixed) "
MAX_PIECES = 4  # tokens of one word a label joins


@torch.no_grad()
def embedding_lens(model, sae, seen: Tensor, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """([d_sae, N_IN] ids, values) of the tokens among `seen` [vocab] (those in the indexed text) whose embedding
    adds most to each feature's pre-activation, emb(t) . W_enc[:, f]."""
    lens = _lens_dtype(model)
    seen_ids = seen.nonzero().flatten()
    if not len(seen_ids):
        empty = torch.zeros(sae.d_sae, 0)
        return empty.long(), empty
    E = model.hf.get_input_embeddings()(seen_ids.to(model.device)).to(lens)  # [n_seen, d_model], model-scaled
    k = min(N_IN, len(seen_ids))
    ids, vals = [], []
    for i in range(0, sae.d_sae, chunk):
        pre = E @ sae.W_enc[:, i : i + chunk].to(E.device, lens)  # [n_seen, chunk]
        v, j = pre.topk(k, dim=0)  # [k, chunk]
        ids.append(seen_ids.to(j.device)[j].T), vals.append(v.T.float())
    return torch.cat(ids).cpu(), torch.cat(vals).cpu()


def _firing(t: dict) -> tuple[Tensor, Tensor]:
    """([d_sae, N_TOP] firing token ids, [d_sae, N_TOP] alive) of every feature's top contexts."""
    return t["tokens"][t["top_seq"], t["top_pos"]], t["top_acts"] > 0


def input_evidence(tok, t: dict) -> tuple[Tensor, Tensor]:
    """(share [d_sae]: of each feature's top contexts whose firing token is among its embedding-lens tokens
    t["in_ids"], compared as words; is_evidence: share >= EVIDENCE_SHARE)."""
    words = Words(tok)
    firing, alive = _firing(t)
    share = torch.zeros(len(alive))
    for f in alive.any(1).nonzero().flatten().tolist():
        lens = {k for k in map(words.key, t["in_ids"][f].tolist()) if k}
        fired = [words.key(i) for i, a in zip(firing[f].tolist(), alive[f].tolist()) if a]
        share[f] = sum(k in lens for k in fired if k) / len(fired)
    return share, share >= EVIDENCE_SHARE


def head_share(heads: list[str], head: list[str]) -> float:
    """The share of the firing words `heads` that are one of `head` (the bracket's words), as words."""
    keys = {w.casefold() for w in head}
    return sum(w.casefold() in keys for w in heads) / max(1, len(heads))


class Pieces:
    """The word a firing token ends: the token with the pieces before it that it continues (` Cran` `ston` is
    `Cranston`, not `ston`), at most MAX_PIECES tokens back. Only pieces before it: the model has not seen
    those after, so a feature firing on ` Cran` reads `Cran`."""

    def __init__(self, tok, words: Words):
        self.tok, self.words, self.raw = tok, words, {}

    def _raw(self, i: int) -> str:
        if i not in self.raw:
            self.raw[i] = "" if i in self.words.special else self.tok.decode([i])
        return self.raw[i]

    def joins(self, a: int, b: int) -> bool:
        """Whether token b continues token a's word (no space or punctuation between)."""
        x, y = self._raw(a), self._raw(b)
        return bool(x) and bool(y) and x[-1].isalnum() and y[0].isalnum()

    def start(self, row: list[int], p: int) -> int:
        q = p
        while q > 1 and p - q < MAX_PIECES - 1 and self.joins(row[q - 1], row[q]):
            q -= 1
        return q

    def word(self, row: list[int], p: int) -> str:
        return "".join(self.words(i) for i in row[self.start(row, p) : p + 1])


def tc_labels(tok, t: dict) -> list[str]:
    """A label per transcoder feature: the SAE format (labels.py) with whole words in the bracket (Pieces),
    marked `(mixed)` when it is not evidence (covers < HEAD_SHARE of the top contexts and the embedding lens
    does not back it), and a mixed bracket with no context word to carry it dropped for the promoted token
    where that is evidence."""
    words = Words(tok)
    pieces = Pieces(tok, words)
    base, total = base_rates(words, t["tokens"])
    rows = t["tokens"].tolist()
    return [label(p) if (p := parts(pieces, rows, base, total, t, f)) else "(dead)" for f in range(len(t["count"]))]


def parts(pieces: Pieces, rows: list, base, total: int, t: dict, f: int) -> dict | None:
    """Feature f's label parts with their evidence (None when dead): head (firing words), head_share, input
    (the embedding lens backs them), before / after (context words or None), promoted ("" unless evidence)."""
    if t["count"][f] == 0:
        return None
    words = pieces.words
    ctx = [(s, p) for s, p, a in zip(t["top_seq"][f].tolist(), t["top_pos"][f].tolist(), t["top_acts"][f]) if a > 0]
    heads = [pieces.word(rows[s], p) for s, p in ctx]
    head = most_common_words(heads)  # as labels.firing_words, on whole words
    skip = {w.casefold() for w in head}
    starts = [(s, pieces.start(rows[s], p)) for s, p in ctx]  # context before the word, not its own pieces
    return {
        "head": head,
        "head_share": head_share(heads, head),
        "input": bool(t["in_evidence"][f]),
        "before": context_words(words, rows, starts, base, total, -1, skip),
        "after": context_words(words, rows, ctx, base, total, 1, skip),
        "promoted": words(int(t["up_seen"][f])) if bool(t["evidence"][f]) else "",
    }


def label(p: dict) -> str:
    """The label of parts(...)."""
    text = fit(p["head"], p["before"], p["after"], p["promoted"])
    if p["head_share"] >= HEAD_SHARE or p["input"]:
        return text
    return MIXED + text if p["before"] or p["after"] or not p["promoted"] else f"→ {p['promoted']}"
