"""Feature labels read from their top contexts, and whether the logit-lens token is evidence.

A label is a concordance line of the feature's top contexts (at most MAX_CHARS characters):

    feels [sad/lonely] → sad        the … [capital] of        [La/San/Los]

- `[a/b/c]`: the words the feature fires on most often in its top contexts (only the first when it holds
  half of them); `[␣]` when it fires on whitespace.
- before the brackets: the most characteristic word of the BEFORE tokens preceding the firing token; after
  them: of the AFTER tokens following it. Characteristic: in the windows of at least MIN_SHARE of the
  distinct texts (sequences) the contexts come from, and at least 2, at >= MIN_LIFT times the count its base
  rate in the indexed text predicts; the best by count x log(ratio). `…` stands between it and the brackets
  when it is usually not adjacent. Words one of which begins the other (the shorter of >= 4 letters) count
  as one, shown `feel*`.
- `→ x`: the token the decoder direction promotes most (logit lens, of those in the indexed text), only
  when it is evidence: among the model's own top lens.N_NEXT next-token predictions at >= EVIDENCE_SHARE of the
  feature's top contexts, compared as words (stripped, case-folded), so ` Sad` matches `sad`.
Special tokens and whitespace never appear in a label. When one is too long, the extra firing words, then
the word after, then the word before are left out. "(dead)": the feature never fired in the indexed text.

Everything here is deterministic and reads the index's tensors (see attribution.explain.index.build); the
promoted token and the model's predictions come from lens.py (logit_lens, top_predictions).
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter, defaultdict

import torch
from torch import Tensor

EVIDENCE_SHARE = 0.25  # of a feature's top contexts where its promoted token must be among those predictions
BEFORE, AFTER = 3, 2  # tokens either side of the firing token searched for context words
MIN_SHARE, MIN_LIFT = 0.2, 4.0  # a context word's least share of the contexts' texts, and over its base rate
MAX_CHARS, MAX_WORD = 40, 12


class Words:
    """Token id -> the word it shows (whitespace collapsed and stripped, invisible format characters such
    as U+FEFF dropped, other non-printables escaped; "" for whitespace and special tokens), cached; `key` is
    the word case-folded, what comparisons use."""

    def __init__(self, tok):
        self.tok, self.special, self.cache = tok, set(tok.all_special_ids), {}

    def __call__(self, i: int) -> str:
        if i not in self.cache:
            w = "" if i < 0 or i in self.special else " ".join(self.tok.decode([i]).split())
            w = "".join(c if c.isprintable() else repr(c)[1:-1] for c in w if unicodedata.category(c) != "Cf")
            self.cache[i] = w.strip()
        return self.cache[i]

    def key(self, i: int) -> str:
        return self(i).casefold()


def evidence(tok, t: dict) -> tuple[Tensor, Tensor]:
    """(share [d_sae]: of each feature's top contexts where its promoted token t["up_seen"] is among the
    model's predictions there (t["next_ids"] [n_seq, seq, N_NEXT], -1 where none), compared as words;
    is_evidence [d_sae] bool: share >= EVIDENCE_SHARE)."""
    words = Words(tok)
    alive = t["top_acts"] > 0  # [d_sae, N_TOP]
    preds = t["next_ids"][t["top_seq"], t["top_pos"]].long()  # [d_sae, N_TOP, N_NEXT]
    ids = torch.cat([preds.flatten(), t["up_seen"].long()]).unique()
    cls = torch.full((int(ids.max()) + 2,), -1, dtype=torch.long)  # id -> word class; -1 (also at id -1): none
    classes: dict[str, int] = {}
    for i in ids.tolist():
        if key := words.key(i):
            cls[i] = classes.setdefault(key, len(classes))
    target = cls[t["up_seen"].long()][:, None, None]  # [d_sae, 1, 1]
    hit = ((cls[preds] == target) & (target >= 0)).any(-1) & alive  # [d_sae, N_TOP]
    share = hit.sum(1) / alive.sum(1).clamp_min(1)
    return share.float(), share >= EVIDENCE_SHARE


def labels(tok, t: dict) -> list[str]:
    """A label per feature, in the module's format, from the index's tensors (tokens, top_acts, top_seq,
    top_pos, count, up_seen, evidence)."""
    words = Words(tok)
    base, total = base_rates(words, t["tokens"])
    rows = t["tokens"].tolist()
    out = []
    for f in range(len(t["count"])):
        if t["count"][f] == 0:
            out.append("(dead)")
            continue
        ctx = [(s, p) for s, p, a in zip(t["top_seq"][f].tolist(), t["top_pos"][f].tolist(), t["top_acts"][f]) if a > 0]
        head = firing_words(words, [rows[s][p] for s, p in ctx])
        skip = {w.casefold() for w in head}
        before = context_words(words, rows, ctx, base, total, -1, skip)
        after = context_words(words, rows, ctx, base, total, 1, skip)
        promoted = words(int(t["up_seen"][f])) if bool(t["evidence"][f]) else ""
        out.append(fit(head, before, after, promoted))
    return out


def base_rates(words: Words, tokens: Tensor) -> tuple[Counter, int]:
    """(word key -> its count in the indexed text, the text's token count), <bos> left out."""
    ids, counts = tokens[:, 1:].flatten().unique(return_counts=True)
    base: Counter = Counter()
    for i, c in zip(ids.tolist(), counts.tolist()):
        if k := words.key(i):
            base[k] += c
    return base, max(1, int(counts.sum()))


def firing_words(words: Words, ids: list[int]) -> list[str]:
    """The (up to 3) most frequent words among the firing tokens `ids` (most_common_words)."""
    return most_common_words(list(map(words, ids)))


def most_common_words(found: list[str]) -> list[str]:
    """The (up to 3) most frequent non-empty words of `found` (ties: the first seen, so the higher activation,
    wins); only the first when it holds half of them."""
    count = Counter(w for w in found if w)
    common = [w for w, _ in count.most_common(3)]
    return common[:1] if len(common) > 1 and count[common[0]] >= 0.5 * len(found) else common


def context_words(words, rows, ctx, base, total, side, skip) -> tuple[list[str], bool] | None:
    """(the most characteristic word on `side` (-1 before, 1 after) of the contexts, and the next one when it
    is as often adjacent; whether they are usually adjacent), or None; see the module's docstring."""
    width = BEFORE if side < 0 else AFTER
    where: dict[str, dict[int, int]] = defaultdict(dict)  # key -> {sequence: nearest distance}
    shown: dict[str, Counter] = defaultdict(Counter)
    for s, p in ctx:
        for d in range(1, width + 1):
            q = p + side * d
            if q < 1 or q >= len(rows[s]):
                continue
            w = words(rows[s][q])
            if not w or (k := w.casefold()) in skip:
                continue
            where[k][s] = min(where[k].get(s, d), d)
            shown[k][w] += 1
    n = len({s for s, _ in ctx})
    groups: dict[str, list[str]] = {}  # stem -> keys; the shorter word (>= 4 letters) begins the others
    for k in sorted(where, key=lambda k: (len(k), k)):
        stem = next((r for r in groups if len(r) >= 4 and k.startswith(r)), k)
        groups.setdefault(stem, []).append(k)
    found = []
    for stem, keys in groups.items():
        seqs: dict[int, int] = {}
        for k in keys:
            for s, d in where[k].items():
                seqs[s] = min(seqs.get(s, d), d)
        c = len(seqs)
        rate = sum(base[k] for k in keys) / total
        expected = n * (1 - (1 - min(rate, 1.0)) ** width)
        if c < max(2, math.ceil(MIN_SHARE * n)) or c < MIN_LIFT * expected:
            continue
        word = stem + "*" if len(keys) > 1 else min(shown[stem].items(), key=lambda x: (-x[1], x[0]))[0]
        found.append((-c * math.log(c / max(expected, 1e-12)), stem, word, 2 * sum(d == 1 for d in seqs.values()) >= c))
    if not found:
        return None
    found.sort()  # best score first; ties by the word, so deterministic
    adjacent = found[0][3]
    return [w for _, _, w, a in found if a == adjacent][:2], adjacent


def fit(head: list[str], before, after, promoted: str) -> str:
    """The label from its parts (before / after: None or ([words], adjacent)), within MAX_CHARS: the extra
    firing words, the second context words, then the word after, then the word before are left out until
    it fits."""
    cut = [w[:MAX_WORD] for w in head] or ["␣"]
    tail = f" → {promoted[:MAX_WORD]}" if promoted else ""

    def side(found, n: int, pre: bool) -> str:
        if found is None or n == 0:
            return ""
        text, gap = "/".join(w[:MAX_WORD] for w in found[0][:n]), " " if found[1] else " … "
        return text + gap if pre else gap + text

    for h, b, a in [(3, 2, 2), (2, 2, 2), (1, 2, 2), (1, 1, 1), (1, 1, 0), (1, 0, 0)]:
        label = f"{side(before, b, True)}[{'/'.join(cut[:h])}]{side(after, a, False)}{tail}"
        if len(label) <= MAX_CHARS:
            return label
    return label
