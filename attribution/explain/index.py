"""The feature index: per-feature statistics of one SAE over a fixed text, built in one pass and cached on disk.

Everything a label or a card needs from a pass over text is computed once per SAE (top contexts, histograms,
frequencies, logit-lens tokens: lens.py, neighbours: neighbours.py, the model's predictions at the top
contexts, labels: labels.py), so labelling hundreds of graph nodes is a lookup. The entry is keyed by the
model, the SAE's weights and the text, never another's.

Which text: token ids the caller gives, or a named text source (`register_text`). explain knows no corpus
of its own: attribution.training registers "default" (its default corpus, used for tokens=None) and "real".
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
from attribution.compute import compute_dtype
from attribution.errors import AttributionError, CacheError
from attribution.explain.activations import features
from attribution.explain.labels import evidence, labels
from attribution.explain.lens import N_NEXT, logit_lens, top_predictions
from attribution.explain.neighbours import neighbours
from attribution.explain.transcoder import embedding_lens, input_evidence, tc_labels

N_TOP = 24  # contexts kept per feature
N_BINS = 10
VERSION = 7  # 3: neighbours in per-dimension standard units; 4: labels promote tokens seen in the text; 5:
# the logit lens through the final norm's gain; 6: special tokens never label; 7: the model's predictions at
# the top contexts, labels from the contexts' words, the promoted token only as evidence
TC_VERSION = 9  # a transcoder's index (an SAE's is unchanged, its cache stays valid): 8: the embedding lens and
# its evidence, neighbours in the units of the hook the decoder writes, labels marking mixed firing words; 9:
# whole words in the labels' brackets
RELABEL = {9: 8}  # {transcoder index version: an older one with the same tensors}: only the labels changed, so
# an index of the older version is relabelled (seconds), not rebuilt (a pass over the text, ~20 min at 18 layers)
Text = Tensor | str | None  # the text to index: token ids, a registered text's name, or None ("default")
TextSource = Callable[..., Tensor]  # fn(model, n_tokens, progress) -> [n_seq, seq] ids starting with <bos>
TEXTS: dict[str, TextSource] = {}


def register_text(name: str, source: TextSource) -> None:
    """Make `name` a text indexes can be built over (tokens=name; "default" is what tokens=None means).
    The training package registers its corpora here, so that explain never imports training."""
    TEXTS[name] = source


class FeatureIndex:
    """Per-feature statistics of one SAE over a fixed token set, loaded from (or saved to) a folder."""

    def __init__(self, path: Path, tensors: dict[str, Tensor], info: dict):
        self.path, self.info = path, info
        self.hook: str = info["hook"]
        self.labels_: list[str] = info["labels"]
        self.t = tensors  # see build for the names and shapes

    @property
    def n_tokens(self) -> int:
        return self.info["n_tokens"]

    @property
    def d_sae(self) -> int:
        return len(self.labels_)

    def label(self, feature: int) -> str:
        return self.labels_[self.check(feature)]

    def labels(self, features) -> list[str]:
        return [self.label(int(f)) for f in features]

    def frequency(self, feature: int) -> float:
        return float(self.t["count"][self.check(feature)]) / self.n_tokens

    def max_activation(self, feature: int) -> float:
        return float(self.t["max"][self.check(feature)])

    def evidence(self, feature: int) -> bool:
        """Whether the feature's promoted token is among the model's predictions at enough top contexts."""
        return bool(self.t["evidence"][self.check(feature)])

    def check(self, feature: int) -> int:
        """`feature` if this index has it, else an AttributionError naming the SAE's size."""
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
    folders = {h: root / f"{sae_fingerprint(s)}-{key}-v{version(s)}" for h, s in saes.items()}
    out = {} if rebuild else {h: i for h, f in folders.items() if (i := _quiet_load(f)) is not None}
    todo = {h: s for h, s in saes.items() if h not in out}
    if todo:
        with locked(*(folders[h] for h in todo)):  # another process building one of them: wait, then load it
            if not rebuild:
                out |= {h: i for h in list(todo) if (i := load_entry(folders[h], _load)) is not None}
                todo = {h: s for h, s in todo.items() if h not in out}
            for h in [h for h, s in todo.items() if s.is_transcoder]:
                if (old := relabel(model, folders[h])) is not None:
                    out[h] = old
                    del todo[h]
            if todo:
                for h, (tensors, info) in build(model, todo, tokens, progress).items():
                    out[h] = _save(folders[h], tensors, info)
    return out


def index_text(model, tokens: Text = None, n_tokens: int = 65_536, progress: bool = True) -> Tensor:
    """The token ids an index is built over: `tokens` checked; a name: the first `n_tokens` of that
    registered text (attribution.training registers "real", the real-text training split in 128-token
    windows); None: the first `n_tokens` of the "default" text (the default training corpus)."""
    if tokens is None or isinstance(tokens, str):
        name = "default" if tokens is None else tokens
        if name not in TEXTS or tokens == "default":
            named = "".join(f"{n!r} or " for n in TEXTS if n != "default")
            raise AttributionError(f"tokens must be token ids, {named}None (the default corpus), got {tokens!r}")
        return TEXTS[name](model, n_tokens, progress)
    check_tokens(model, tokens)
    return tokens


@torch.no_grad()
def build(model, saes: dict, tokens: Tensor, progress: bool) -> dict[str, tuple[dict, dict]]:
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
        feats, acts, kept, hidden = features(model, saes, ids, outliers=False, final=True)
        final[start : start + 16] = hidden  # for the model's predictions at the top contexts, after the pass
        for h, f in feats.items():
            x = acts[saes[h].target or h][kept[h]].double()  # [kept tokens, d_model] where the decoder writes
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
        nb_ids, nb_cos = neighbours(sae, std)
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
        info = {"hook": h, "n_tokens": n_tok, "version": version(sae)}
        if sae.is_transcoder:
            tensors["in_ids"], tensors["in_vals"] = embedding_lens(model, sae, seen)
            tensors["in_share"], tensors["in_evidence"] = input_evidence(model.tokenizer, tensors)
            info |= {"transcoder": True, "labels": tc_labels(model.tokenizer, tensors)}
        else:
            info["labels"] = labels(model.tokenizer, tensors)
        out[h] = (tensors, info)
    return out


TENSORS = ("tokens", "top_acts", "top_seq", "top_pos", "count", "max", "hist", "hist_edges", "up_ids", "up_vals")
TENSORS += ("up_seen", "down_ids", "down_vals", "nb_ids", "nb_cos", "next_ids", "evidence_share", "evidence")
TC_TENSORS = ("in_ids", "in_vals", "in_share", "in_evidence")  # and these for a transcoder
# ^ what build writes and cards.explain reads


def version(sae) -> int:
    """The index version of `sae`'s kind: transcoders' indexes hold more (TC_VERSION)."""
    return TC_VERSION if sae.is_transcoder else VERSION


def _older(name: str) -> str:
    """A transcoder index folder's name at the version RELABEL reads its tensors from (the name itself if none)."""
    stem, _, v = name.rpartition("-v")
    return f"{stem}-v{RELABEL[int(v)]}" if v.isdigit() and int(v) in RELABEL else name


def relabel(model, folder: Path) -> FeatureIndex | None:
    """The transcoder index at `folder` made from the one of the version RELABEL names (`_older`) with this
    version's labels; None when there is no such index. The older one is left in place (another checkout may
    still read it)."""
    older = folder.with_name(_older(folder.name))
    if older == folder or (old := _quiet_load(older, version=RELABEL[TC_VERSION])) is None:
        return None
    info = dict(old.info) | {"version": TC_VERSION, "labels": tc_labels(model.tokenizer, old.t)}
    return _save(folder, old.t, info)


def _load(folder: Path, version: int | None = None) -> FeatureIndex | None:
    """The index in `folder` (of this code's version, or `version`); None if absent; CacheError (then
    rebuilt) if a file or a tensor is missing."""
    if not folder.exists():
        return None
    info = read_json(folder / "index.json", entry=folder)
    tensors = read_safetensors(folder / "index.safetensors", entry=folder)
    tc = isinstance(info, dict) and bool(info.get("transcoder"))
    missing = [n for n in TENSORS + TC_TENSORS * tc if n not in tensors]
    want = version if version is not None else (TC_VERSION if tc else VERSION)
    if missing or not isinstance(info, dict) or info.get("version") != want:
        raise corrupt(folder, f"missing tensors {missing}" if missing else "index.json is not this version's")
    if len(info.get("labels", [])) != len(tensors["count"]) or "hook" not in info or "n_tokens" not in info:
        raise corrupt(folder, "index.json does not match its tensors")
    return FeatureIndex(folder, tensors, info)


def _quiet_load(folder: Path, version: int | None = None) -> FeatureIndex | None:
    try:
        return _load(folder, version)
    except CacheError:
        return None  # corrupt: reported and rebuilt under the lock


def _save(folder: Path, tensors: dict, info: dict) -> FeatureIndex:
    with atomic_write(folder, check=_load, lock=False) as tmp:  # feature_indexes holds the lock
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "index.safetensors"))
        (tmp / "index.json").write_text(json.dumps(info))
    return FeatureIndex(folder, tensors, info)


def check_tokens(model, tokens) -> None:
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
