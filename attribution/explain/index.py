"""What a feature is: top contexts, the whole activation distribution, logit-lens tokens, neighbours, a label.

A feature is more than its top examples, so every card also carries a histogram of its activations by
interval with the share of all its firings in each. Everything that needs a pass over text is computed once
per SAE into a `FeatureIndex` on disk (top contexts, histograms, frequencies, logit-lens tokens,
neighbours, the model's predictions at the top contexts, labels: attribution.labels), so labelling hundreds
of graph nodes is a lookup; only a card's per-token activations in its contexts are recomputed, from the ids.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from attribution.cache import (
    atomic_write,
    cache_dir,
    corrupt,
    load_entry,
    locked,
    model_fingerprint,
    read_json,
    read_safetensors,
    sae_fingerprint,
    tensor_digest,
)
from attribution.compute import compute_dtype, model_autocast
from attribution.errors import AttributionError, CacheError, SAEError
from attribution.labels import N_NEXT, evidence, labels, logit_lens, top_predictions
from attribution.models.model import Batch
from attribution.nodes import is_int
from attribution.splice import place, trace
from attribution.tokens import OUTLIER, keep_tokens

N_TOP = 24  # contexts kept per feature
N_BINS = 10
N_NEIGHBOURS = 8
VERSION = 7  # 3: neighbours in per-dimension standard units; 4: labels promote tokens seen in the text; 5:
# the logit lens through the final norm's gain; 6: special tokens never label; 7: the model's predictions at
# the top contexts, labels from the contexts' words, the promoted token only as evidence
Text = Tensor | str | None  # the text to index: token ids, "real" or None (the default corpus)


@dataclass
class Context:
    tokens: list[str]  # a window of the text around the firing token
    acts: list[float]  # the feature's activation at each of those tokens
    position: int  # index in `tokens` of the top-firing token
    activation: float
    predicted: list[str]  # the model's top next-token predictions at the top-firing token


@dataclass
class Bin:
    lo: float
    hi: float
    count: int
    share: float  # of all the feature's non-zero activations in the indexed text


@dataclass
class FeatureCard:
    hook: str
    feature: int
    label: str
    frequency: float  # share of indexed tokens on which it fires
    max_activation: float
    contexts: list[Context]
    histogram: list[Bin]
    promoted: list[tuple[str, float]]  # tokens whose logits the decoder direction raises most (logit lens)
    promoted_seen: str  # the token it promotes most of those in the indexed text, which the label may show:
    evidence_share: float  # the share of its top contexts where the model predicts it (top labels.N_NEXT)
    evidence: bool  # evidence_share >= attribution.labels.EVIDENCE_SHARE: the label shows it
    suppressed: list[tuple[str, float]]
    neighbours: list[tuple[int, float]]  # (feature, cosine of decoder directions)
    n_tokens: int  # how many tokens the index covers

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"{self.hook} #{self.feature}: {self.label}",
            f"  fires on {self.frequency:.3%} of {self.n_tokens} tokens, max {self.max_activation:.3g}",
        ]
        for c in self.contexts[:5]:
            text = "".join(f"[[{t}]]" if i == c.position else t for i, t in enumerate(c.tokens))
            lines.append(f"  {c.activation:7.3g}  {text!r}")
        lines.append("  histogram: " + ", ".join(f"{b.lo:.3g}-{b.hi:.3g}: {b.share:.1%}" for b in self.histogram))
        lines.append("  promotes:  " + ", ".join(repr(t) for t, _ in self.promoted[:8]))
        lines.append(f"  the model predicts {self.promoted_seen!r} at {self.evidence_share:.0%} of the top contexts")
        lines.append("  suppresses: " + ", ".join(repr(t) for t, _ in self.suppressed[:8]))
        lines.append("  neighbours: " + ", ".join(f"#{f} ({c:.2f})" for f, c in self.neighbours[:5]))
        return "\n".join(lines)

    def to_html(self) -> str:
        """A self-contained snippet (inline styles only)."""
        esc = html.escape
        peak = max(self.max_activation, 1e-9)

        def tok(t: str, a: float, top: bool) -> str:
            alpha = min(1.0, max(0.0, a / peak))
            border = "border-bottom:2px solid #b00;" if top else ""
            return f'<span style="background:rgba(255,120,0,{alpha:.2f});{border}" title="{a:.3g}">{esc(t)}</span>'

        ctx = "".join(
            f'<div style="font-family:monospace;white-space:pre-wrap;margin:2px 0">'
            f"<b>{c.activation:.3g}</b> "
            + "".join(tok(t, a, i == c.position) for i, (t, a) in enumerate(zip(c.tokens, c.acts)))
            + "</div>"
            for c in self.contexts
        )
        top_share = max((b.share for b in self.histogram), default=1.0) or 1.0
        hist = "".join(
            f'<div style="font-family:monospace;font-size:11px">{b.lo:7.3g}–{b.hi:<7.3g} '
            f'<span style="display:inline-block;background:#4a7;height:9px;width:{160 * b.share / top_share:.0f}px">'
            f"</span> {b.share:.1%} ({b.count})</div>"
            for b in self.histogram
        )
        promoted = ", ".join(f"<code>{esc(repr(t))}</code>" for t, _ in self.promoted)
        suppressed = ", ".join(f"<code>{esc(repr(t))}</code>" for t, _ in self.suppressed)
        neighbours = ", ".join(f"#{f} ({c:.2f})" for f, c in self.neighbours)
        return (
            f'<div class="feature-card" style="border:1px solid #ccc;padding:8px;margin:8px 0">'
            f"<h4 style='margin:0'>{esc(self.hook)} #{self.feature}: {esc(self.label)}</h4>"
            f"<div>fires on {self.frequency:.3%} of {self.n_tokens} tokens; max activation "
            f"{self.max_activation:.3g}</div><h5>Top contexts</h5>{ctx}"
            f"<h5>Activation histogram (share of firings per interval)</h5>{hist}"
            f"<div><b>promotes</b> {promoted}; the model predicts {esc(repr(self.promoted_seen))} at "
            f"{self.evidence_share:.0%} of the top contexts</div><div><b>suppresses</b> {suppressed}</div>"
            f"<div><b>nearest by decoder cosine</b> {neighbours}</div></div>"
        )


class FeatureIndex:
    """Per-feature statistics of one SAE over a fixed token set, loaded from (or saved to) a folder."""

    def __init__(self, path: Path, tensors: dict[str, Tensor], info: dict):
        self.path, self.info = path, info
        self.hook: str = info["hook"]
        self.labels_: list[str] = info["labels"]
        self.t = tensors  # see _build for the names and shapes

    @property
    def n_tokens(self) -> int:
        return self.info["n_tokens"]

    @property
    def d_sae(self) -> int:
        return len(self.labels_)

    def label(self, feature: int) -> str:
        return self.labels_[self._check(feature)]

    def labels(self, features) -> list[str]:
        return [self.label(int(f)) for f in features]

    def frequency(self, feature: int) -> float:
        return float(self.t["count"][self._check(feature)]) / self.n_tokens

    def max_activation(self, feature: int) -> float:
        return float(self.t["max"][self._check(feature)])

    def evidence(self, feature: int) -> bool:
        """Whether the feature's promoted token is among the model's predictions at enough top contexts."""
        return bool(self.t["evidence"][self._check(feature)])

    def _check(self, feature: int) -> int:
        if not 0 <= feature < self.d_sae:
            raise AttributionError(f"feature {feature} does not exist: the SAE at {self.hook} has {self.d_sae}")
        return feature


def feature_index(
    model, sae, *, tokens: Text = None, n_tokens: int = 65_536, rebuild: bool = False, progress: bool = True
) -> FeatureIndex:
    """The index of `sae`, built on first use over `tokens` ([n_seq, seq] ids starting with <bos>, or "real" or
    None: see index_text) and cached by the SAE's weights and the text."""
    kw = {"tokens": tokens, "n_tokens": n_tokens, "rebuild": rebuild, "progress": progress}
    indexes = feature_indexes(model, {sae.hook: sae}, **kw)
    return indexes[model.hook(sae.hook).name]


def feature_indexes(
    model, saes, *, tokens: Text = None, n_tokens: int = 65_536, rebuild: bool = False, progress: bool = True
) -> dict[str, FeatureIndex]:
    """Indexes for several SAEs (tokens as in feature_index); the missing ones share one pass over the text."""
    from attribution.splice import prepare_saes

    saes = {h: s for h, s in prepare_saes(model, saes).items() if s.d_sae > 0}
    tokens = index_text(model, tokens, n_tokens, progress)
    # keyed by the model, the SAE (weights and hyper-parameters such as k) and the text: never another's index
    root = cache_dir() / "index" / model_fingerprint(model)
    key = tensor_digest(tokens)[:16]
    folders = {h: root / f"{sae_fingerprint(s)}-{key}-v{VERSION}" for h, s in saes.items()}
    out = {} if rebuild else {h: i for h, f in folders.items() if (i := _quiet_load(f)) is not None}
    todo = {h: s for h, s in saes.items() if h not in out}
    if todo:
        with locked(*(folders[h] for h in todo)):  # another process building one of them: wait, then load it
            if not rebuild:
                out |= {h: i for h in list(todo) if (i := load_entry(folders[h], _load)) is not None}
                todo = {h: s for h, s in todo.items() if h not in out}
            if todo:
                for h, (tensors, info) in _build(model, todo, tokens, progress).items():
                    out[h] = _save(folders[h], tensors, info)
    return out


def index_text(model, tokens: Text = None, n_tokens: int = 65_536, progress: bool = True) -> Tensor:
    """The token ids an index is built over: `tokens` checked; "real": the first `n_tokens` of the real-text
    training split (attribution.training.text.real_tokens, 128-token windows); None: the first `n_tokens` of
    the default training corpus (attribution.training.defaults.default_corpus)."""
    if isinstance(tokens, str):
        if tokens != "real":
            raise AttributionError(f"tokens must be token ids, 'real' or None (the default corpus), got {tokens!r}")
        from attribution.training.text import real_tokens

        return real_tokens(model, "train", seq_len=128, max_tokens=n_tokens + 127, progress=progress)
    if tokens is not None:
        _check_tokens(model, tokens)
        return tokens
    from attribution.training.defaults import default_corpus

    train, _ = default_corpus(model, tokens=n_tokens + 127, progress=progress)  # the corpus's first windows
    return train[: max(1, -(-n_tokens // (train.shape[1] - 1)))]


def explain(model, sae, feature: int, *, index: FeatureIndex | None = None, n_contexts: int = 8) -> FeatureCard:
    """The card of one feature (top contexts, histogram, logit-lens tokens, neighbours, label)."""
    if sae.d_sae == 0:
        raise SAEError(f"{sae!r} has no features to explain (WholeActivation): explain an SAE's features")
    if not is_int(feature):
        raise AttributionError(f"feature must be an integer index into the SAE's {sae.d_sae} features, got {feature!r}")
    if isinstance(n_contexts, bool) or not isinstance(n_contexts, int) or n_contexts < 0:
        raise AttributionError(f"n_contexts must be a whole number >= 0, got {n_contexts!r}")
    if index is not None and (index.hook != model.hook(sae.hook).name or index.d_sae != sae.d_sae):
        raise AttributionError(
            f"the index given is for {index.d_sae} features at {index.hook}, not for {sae!r}: "
            "pass feature_index(model, sae), or no index"
        )
    index = index or feature_index(model, sae)
    feature = index._check(int(feature))
    tok = model.tokenizer
    t = index.t
    acts, seqs, poss = t["top_acts"][feature], t["top_seq"][feature], t["top_pos"][feature]
    chosen, seen = [], set()
    for a, s, p in zip(acts.tolist(), seqs.tolist(), poss.tolist()):
        if len(chosen) >= n_contexts:
            break
        if a <= 0 or s in seen:
            continue  # one context per sequence: neighbouring positions of one text say the same thing
        seen.add(s)
        chosen.append((a, s, p))
    contexts = []
    if chosen:
        ids = t["tokens"][[s for _, s, _ in chosen]]  # [n, seq]
        f = feature_activations(model, {index.hook: sae}, ids)[index.hook][..., feature]  # [n, seq]
        for row, (a, s, p) in enumerate(chosen):
            lo, hi = max(1, p - 12), min(ids.shape[1], p + 5)
            pieces = [tok.decode([i]) for i in ids[row, lo:hi].tolist()]
            pred = [tok.decode([i]) for i in t["next_ids"][s, p].tolist() if i >= 0]
            contexts.append(Context(pieces, [float(v) for v in f[row, lo:hi]], p - lo, a, pred))
    edges = t["hist_edges"][feature].tolist()
    counts = t["hist"][feature].tolist()
    total = max(1, sum(counts))
    histogram = [Bin(edges[i], edges[i + 1], int(c), c / total) for i, c in enumerate(counts)]
    return FeatureCard(
        hook=index.hook,
        feature=feature,
        label=index.label(feature),
        frequency=index.frequency(feature),
        max_activation=index.max_activation(feature),
        contexts=contexts,
        histogram=histogram,
        promoted=_tokens(tok, t["up_ids"][feature], t["up_vals"][feature]),
        suppressed=_tokens(tok, t["down_ids"][feature], t["down_vals"][feature]),
        promoted_seen=tok.decode([int(t["up_seen"][feature])]),
        evidence_share=float(t["evidence_share"][feature]),
        evidence=bool(t["evidence"][feature]),
        neighbours=[(int(i), float(c)) for i, c in zip(t["nb_ids"][feature], t["nb_cos"][feature])],
        n_tokens=index.n_tokens,
    )


def _tokens(tok, ids: Tensor, vals: Tensor) -> list[tuple[str, float]]:
    return [(tok.decode([int(i)]), float(v)) for i, v in zip(ids, vals)]


@torch.no_grad()
def feature_activations(model, saes: dict, ids: Tensor, *, outliers: bool = True) -> dict[str, Tensor]:
    """{hook: [n, seq, d_sae]} feature activations on ids (forward in attribution.compute's dtype, stopping at
    the last hook; on the model's device).

    outliers=False zeroes the tokens the SAEs were not trained on (<bos>, and massive-norm tokens over 10x
    the median): their huge activations would otherwise fill every feature's top contexts."""
    return _features(model, saes, ids, outliers)[0]


def _features(model, saes: dict, ids: Tensor, outliers: bool, final: bool = False) -> tuple:
    """(features as in feature_activations, {hook: [n, seq, d_model] activations}, with outliers=False
    {hook: [n, seq] bool tokens kept} else None, and with final=True (the whole model runs) the final-norm
    hidden states [n, seq, d_model] else None)."""
    with model_autocast(model):
        run = trace(model, Batch.from_ids(ids, model.device), capture=list(saes), stop_early=not final)
    acts = run.acts
    kept = None if outliers else {h: keep_tokens(acts[h], OUTLIER) for h in saes}
    feats = {}
    for h, sae in saes.items():
        place(model, sae)
        f = sae.encode(acts[h].float()).float()
        feats[h] = f if kept is None else f * kept[h][..., None]
    return feats, acts, kept, run.hidden


@torch.no_grad()
def _build(model, saes: dict, tokens: Tensor, progress: bool) -> dict[str, tuple[dict, dict]]:
    n_seq, seq = tokens.shape
    dev = model.device  # the index is built on the model's device and saved from the CPU
    state = {
        h: {
            "top_acts": torch.zeros(s.d_sae, N_TOP, device=dev),
            "top_seq": torch.zeros(s.d_sae, N_TOP, dtype=torch.long, device=dev),
            "top_pos": torch.zeros(s.d_sae, N_TOP, dtype=torch.long, device=dev),
            "count": torch.zeros(s.d_sae, dtype=torch.long, device=dev),
            "fired": [],  # (feature ids, values) of every non-zero activation, for the histograms
            "moments": torch.zeros(3, model.d_model, dtype=torch.float64, device=dev),  # count, sum, sum of squares
        }
        for h, s in saes.items()
    }
    n_tok, final = 0, torch.zeros(n_seq, seq, model.d_model, dtype=compute_dtype(dev), device=dev)
    for start in tqdm(range(0, n_seq, 16), desc=f"indexing features at {','.join(saes)}", disable=not progress):
        ids = tokens[start : start + 16]
        feats, acts, kept, hidden = _features(model, saes, ids, outliers=False, final=True)
        final[start : start + 16] = hidden  # for the model's predictions at the top contexts, after the pass
        for h, f in feats.items():
            x = acts[h][kept[h]].double()  # [kept tokens, d_model]
            state[h]["moments"] += torch.stack([torch.full_like(x[0], len(x)), x.sum(0), x.pow(2).sum(0)])
            f = f[:, 1:]  # [n, seq-1, d_sae]: <bos> is not a token the SAEs explain
            flat = f.reshape(-1, f.shape[-1])  # [n*(seq-1), d_sae]
            st = state[h]
            nz = flat.nonzero(as_tuple=True)
            st["fired"].append((nz[1].to(torch.int32), flat[nz].to(torch.float32)))
            st["count"] += (flat > 0).sum(0)
            k = min(N_TOP, flat.shape[0])
            vals, where = flat.T.topk(k, dim=-1)  # [d_sae, k] over this batch's tokens
            seq_i = start + where // (seq - 1)
            pos_i = where % (seq - 1) + 1
            all_vals = torch.cat([st["top_acts"], vals], 1)
            best, pick = all_vals.topk(N_TOP, dim=-1)
            st["top_acts"] = best
            st["top_seq"] = torch.cat([st["top_seq"], seq_i], 1).gather(1, pick)
            st["top_pos"] = torch.cat([st["top_pos"], pos_i], 1).gather(1, pick)
        n_tok += ids.shape[0] * (seq - 1)
    # what the model predicts next at every top context (of any feature): the unembedding only where needed
    where = torch.cat([(st["top_seq"] * seq + st["top_pos"])[st["top_acts"] > 0] for st in state.values()]).unique()
    next_ids = torch.full((n_seq * seq, N_NEXT), -1, dtype=torch.int32, device=dev)
    next_ids[where] = top_predictions(model, final.flatten(0, 1)[where]).to(dev)
    del final
    seen = torch.zeros(model.W_U.shape[0], dtype=torch.bool, device=dev)  # [vocab] tokens of the indexed text
    seen[tokens.flatten().clamp(0, len(seen) - 1).to(dev)] = True
    seen[[i for i in model.tokenizer.all_special_ids if i < len(seen)]] = False  # <bos>, <pad>, ...
    out = {}
    for h, sae in saes.items():
        st = state[h]
        feat_ids = torch.cat([a for a, _ in st["fired"]]).long()
        values = torch.cat([v for _, v in st["fired"]])
        peak = torch.zeros(sae.d_sae, device=dev).scatter_reduce(0, feat_ids, values, "amax")
        width = (peak / N_BINS).clamp_min(1e-12)
        bins = (values / width[feat_ids]).long().clamp(0, N_BINS - 1)
        hist = torch.zeros(sae.d_sae * N_BINS, dtype=torch.long, device=dev)
        hist.index_add_(0, feat_ids * N_BINS + bins, torch.ones_like(bins))
        edges = width[:, None] * torch.arange(N_BINS + 1, device=dev)  # [d_sae, N_BINS + 1]
        up_ids, up_vals, down_ids, down_vals, up_seen = logit_lens(model, sae, seen)
        n, s1, s2 = st["moments"]
        std = (s2 / n.clamp_min(1) - (s1 / n.clamp_min(1)).pow(2)).clamp_min(0).sqrt().float()  # [d_model]
        nb_ids, nb_cos = _neighbours(sae, std)
        tensors = {
            "tokens": tokens,
            "top_acts": st["top_acts"],
            "top_seq": st["top_seq"],
            "top_pos": st["top_pos"],
            "count": st["count"],
            "max": peak,
            "hist": hist.reshape(sae.d_sae, N_BINS),
            "hist_edges": edges,
            "up_ids": up_ids,
            "up_vals": up_vals,
            "up_seen": up_seen,
            "down_ids": down_ids,
            "down_vals": down_vals,
            "nb_ids": nb_ids,
            "nb_cos": nb_cos,
            "next_ids": next_ids.reshape(n_seq, seq, N_NEXT),  # [n_seq, seq, N_NEXT], -1 off the top contexts
        }
        tensors = {k: v.cpu() for k, v in tensors.items()}
        tensors["evidence_share"], tensors["evidence"] = evidence(model.tokenizer, tensors)
        info = {"hook": h, "n_tokens": n_tok, "labels": labels(model.tokenizer, tensors), "version": VERSION}
        out[h] = (tensors, info)
    return out


@torch.no_grad()
def _neighbours(sae, std: Tensor, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """Nearest features by decoder cosine, measured with each residual dimension in units of its standard
    deviation on the indexed text: in raw units one massive dimension (71% of the variance after gemma's
    block 9) would dominate every cosine; for a stream without such dimensions this is the plain cosine."""
    std = torch.where(std > 0, std, std[std > 0].median() if (std > 0).any() else torch.ones_like(std))
    w = torch.nn.functional.normalize(sae.W_dec.float() / std, dim=-1)  # [d_sae, d_in]
    k = min(N_NEIGHBOURS, sae.d_sae - 1)
    ids, cos = [], []
    for i in range(0, sae.d_sae, chunk):
        sims = w[i : i + chunk] @ w.T  # [chunk, d_sae]
        sims[torch.arange(sims.shape[0]), torch.arange(i, i + sims.shape[0])] = -2  # not itself
        v, j = sims.topk(k, dim=-1)
        ids.append(j), cos.append(v)
    return torch.cat(ids), torch.cat(cos)


TENSORS = ("tokens", "top_acts", "top_seq", "top_pos", "count", "max", "hist", "hist_edges", "up_ids", "up_vals")
TENSORS += ("up_seen", "down_ids", "down_vals", "nb_ids", "nb_cos", "next_ids", "evidence_share", "evidence")
# ^ what _build writes and explain reads


def _load(folder: Path) -> FeatureIndex | None:
    """The index in `folder`; None if absent; CacheError (then rebuilt) if a file or a tensor is missing."""
    if not folder.exists():
        return None
    info = read_json(folder / "index.json", entry=folder)
    tensors = read_safetensors(folder / "index.safetensors", entry=folder)
    missing = [n for n in TENSORS if n not in tensors]
    if missing or not isinstance(info, dict) or info.get("version") != VERSION:
        raise corrupt(folder, f"missing tensors {missing}" if missing else "index.json is not this version's")
    if len(info.get("labels", [])) != len(tensors["count"]) or "hook" not in info or "n_tokens" not in info:
        raise corrupt(folder, "index.json does not match its tensors")
    return FeatureIndex(folder, tensors, info)


def _quiet_load(folder: Path) -> FeatureIndex | None:
    try:
        return _load(folder)
    except CacheError:
        return None  # corrupt: reported and rebuilt under the lock


def _save(folder: Path, tensors: dict, info: dict) -> FeatureIndex:
    with atomic_write(folder, check=_load, lock=False) as tmp:  # feature_indexes holds the lock
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "index.safetensors"))
        (tmp / "index.json").write_text(json.dumps(info))
    return FeatureIndex(folder, tensors, info)


def _check_tokens(model, tokens) -> None:
    """Token ids to index over: a non-empty integer [n_seq, seq >= 2] tensor of ids the model knows."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool:
        what = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
        raise AttributionError(
            f"tokens must be an integer tensor [n_seq, seq] of token ids starting with <bos>, got {what}"
        )
    if tokens.numel() == 0 or tokens.shape[1] < 2:
        raise AttributionError(f"tokens {tuple(tokens.shape)} hold no text to index: give >= 1 sequence of >= 2 ids")
    vocab = model.W_U.shape[0]
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise AttributionError(
            f"tokens hold ids outside the model's vocabulary 0..{vocab - 1} (found {int(tokens.min())}.."
            f"{int(tokens.max())}): tokenize the text with this model's tokenizer"
        )
