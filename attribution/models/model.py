"""The model wrapper: nnsight's LanguageModel plus what attribution needs to know about it."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from attribution.errors import TokenizationError
from attribution.models.hooks import HookSpec, family_of, hook_points, parse_hook


@dataclass
class Batch:
    """Tokenized prompts, left-padded so that position -1 is every prompt's last token.

    Positions reported to users are each prompt's own (0 = its first token, usually <bos>); `offset(b)`
    converts them to the padded tensor's columns. position_ids are explicit so that padding does not shift
    rotary positions: a batched run then equals one-at-a-time runs.
    """

    input_ids: Tensor  # [batch, pos]
    attention_mask: Tensor  # [batch, pos]
    position_ids: Tensor  # [batch, pos]
    lengths: list[int]
    tokens: list[list[str]]  # each prompt's own tokens, as decoded strings
    bos: bool  # whether each prompt starts with the BOS token

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    def offset(self, b: int) -> int:
        return self.width - self.lengths[b]

    def node_mask(self, include_bos: bool = False) -> Tensor:
        """[batch, pos] True at real tokens, <bos> excluded unless include_bos (docs/attribution.md: sinks)."""
        mask = self.attention_mask.bool().clone()
        if self.bos and not include_bos:
            cols = torch.tensor([self.offset(b) for b in range(self.size)], device=mask.device)
            mask[torch.arange(self.size, device=mask.device), cols] = False
        return mask

    def same_shape(self, other: Batch) -> Batch:
        """`other` (corrupted prompts), checked to have this batch's token counts: patching is per position."""
        if other.lengths != self.lengths:
            raise TokenizationError(
                f"corrupt prompt(s) tokenize to {other.lengths} tokens, the clean ones to {self.lengths}; "
                "patching compares position by position, so they must have the same number of tokens."
            )
        return other

    def inputs(self) -> dict[str, Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }

    @classmethod
    def from_ids(cls, ids: Tensor, device=None) -> Batch:
        """Unpadded rows of token ids [batch, seq], each starting with <bos> (corpus windows), on `device`
        (default: where ids are; pass the model's)."""
        ids = ids if device is None else ids.to(device)
        n, seq = ids.shape
        pos = torch.arange(seq, device=ids.device).expand(n, seq)
        return cls(ids, torch.ones_like(ids), pos, [seq] * n, [[] for _ in range(n)], True)

    def select(self, b: int) -> Batch:
        """Prompt b alone, without padding."""
        off = self.offset(b)
        return Batch(
            self.input_ids[b : b + 1, off:],
            self.attention_mask[b : b + 1, off:],
            self.position_ids[b : b + 1, off:],
            [self.lengths[b]],
            [self.tokens[b]],
            self.bos,
        )


def _for_nnsight(tokenizer):
    """The tokenizer, or where nnsight would set its pad token and padding side (it does so in place), a copy
    of it one level deep (its dicts and lists too, the Rust backend shared): the caller's stays as it was."""
    if tokenizer.padding_side == "left" and (tokenizer.pad_token is not None or tokenizer.eos_token is None):
        return tokenizer
    own = copy.copy(tokenizer)
    own.__dict__.update({k: copy.copy(v) for k, v in vars(tokenizer).items() if isinstance(v, (dict, list, set))})
    return own


class Model:
    """A causal LM wrapped in nnsight, with uniform hook names (`resid_post.9`, `attn_out.3`, ...).

    `lm` is the nnsight LanguageModel (trace it yourself for custom interventions), `hf` the underlying
    transformers model, `hooks` the hook-point table in forward order.
    """

    def __init__(self, hf_model, tokenizer, name: str = "model"):
        """Wraps `hf_model` as it is, setting it to eval mode and freezing its weights: `load_model` hands us
        a copy that shares the caller's weights, so the caller's module keeps its own flags. The tokenizer
        is not changed: padding uses `pad_id` (its pad token, else EOS, else BOS)."""
        from nnsight import LanguageModel

        self.name = name
        self.hf = hf_model.eval().requires_grad_(False)  # we differentiate activations, never weights
        self.tokenizer = tokenizer
        self.pad_id: int = next(
            (i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) if i is not None), 0
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.lm = LanguageModel(self.hf, tokenizer=_for_nnsight(tokenizer))
        cfg = self.hf.config
        self.model_type: str = cfg.model_type
        self.family = family_of(self.model_type)
        self.n_layers: int = cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layer
        self.d_model: int = cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.n_embd
        self.max_context: int | None = getattr(cfg, "max_position_embeddings", None) or getattr(
            cfg, "n_positions", None
        )
        self.softcap: float | None = getattr(cfg, "final_logit_softcapping", None)
        self.hooks: dict[str, HookSpec] = hook_points(self.model_type, self.n_layers)

    def __repr__(self) -> str:
        return (
            f"Model({self.name!r}, family={self.model_type}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, dtype={self.dtype})"
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.W_U.dtype

    @property
    def device(self) -> torch.device:
        return self.W_U.device

    def hook(self, name: str) -> HookSpec:
        return parse_hook(name, self.hooks)

    def envoy(self, path: str):
        """The nnsight Envoy of a dotted module path, e.g. 'model.layers.3.mlp'."""
        obj = self.lm
        for part in path.split("."):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return obj

    # --- tokens --------------------------------------------------------------------------------
    @cached_property
    def _adds_bos(self) -> bool:
        bos = self.tokenizer.bos_token_id
        return bos is not None and self.tokenizer("a").input_ids[:1] == [bos]

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, starting with BOS (added if the tokenizer does not add it itself)."""
        ids = self.tokenizer(text).input_ids
        bos = self.tokenizer.bos_token_id
        if bos is not None and not self._adds_bos:
            ids = [bos, *ids]
        return ids

    def to_str_tokens(self, ids) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def token_id(self, word: str) -> int:
        """The id of an answer that must be exactly one token (e.g. ' sad', with its leading space)."""
        if not isinstance(word, str) or word == "":
            raise TokenizationError(f"answer must be a non-empty string, got {word!r}")
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        unk = self.tokenizer.unk_token_id
        if len(ids) == 1 and unk is not None and ids[0] == unk and word != self.tokenizer.unk_token:
            # the vocabulary lacks the word: its logit would be the unknown token's, a silently wrong metric
            raise TokenizationError(
                f"answer {word!r} is not in the model's vocabulary (it tokenizes to the unknown token "
                f"{self.tokenizer.unk_token!r}); pick a word the tokenizer knows."
            )
        if len(ids) != 1:
            pieces = self.to_str_tokens(ids)
            hint = "" if word.startswith(" ") else f" Did you mean {' ' + word!r} with a leading space?"
            raise TokenizationError(
                f"answer {word!r} is {len(ids)} tokens {pieces}, not one. A logit difference needs "
                f"single-token answers: pick a word that is one token.{hint}"
            )
        return ids[0]

    def tokenize(self, prompts: str | list[str]) -> Batch:
        """Tokenize one prompt or a list, left-padded, checking length against the context window."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)):
            raise TokenizationError(
                f"prompts must be a string or a list of strings, got {type(prompts).__name__}; "
                "pass text, not token ids (decode them with model.tokenizer.decode first)"
            )
        if not prompts:
            raise TokenizationError("no prompts given: pass a string or a non-empty list of strings")
        seqs = []
        for p in prompts:
            if not isinstance(p, str):
                raise TokenizationError(
                    f"each prompt must be a string, got {type(p).__name__} {p!r}; pass text, not token ids"
                )
            if not p.strip():
                raise TokenizationError(f"empty prompt {p!r}: give some text to attribute")
            ids = self.encode(p)
            if self.max_context is not None and len(ids) > self.max_context:
                raise TokenizationError(
                    f"prompt is {len(ids)} tokens, longer than the model's context of {self.max_context}. "
                    "Shorten the prompt."
                )
            seqs.append(ids)
        return self.batch_of_ids(seqs)

    def batch_of_ids(self, seqs: list[list[int]]) -> Batch:
        """Token-id sequences as one left-padded Batch, exactly those tokens (no decoding and re-tokenizing):
        what generation feeds back."""
        if not seqs or any(len(s) == 0 for s in seqs):
            raise TokenizationError("batch_of_ids needs at least one non-empty sequence of token ids")
        width = max(len(s) for s in seqs)
        pad = self.pad_id
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, s in enumerate(seqs):
            input_ids[b, width - len(s) :] = torch.tensor(s)
            mask[b, width - len(s) :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        bos = self.tokenizer.bos_token_id is not None and all(s[0] == self.tokenizer.bos_token_id for s in seqs)
        return Batch(
            input_ids.to(self.device),
            mask.to(self.device),
            position_ids.to(self.device),
            [len(s) for s in seqs],
            [self.to_str_tokens(s) for s in seqs],
            bos,
        )

    # --- unembedding ---------------------------------------------------------------------------
    @property
    def W_U(self) -> Tensor:
        """Unembedding matrix, [vocab, d_model]."""
        return self.hf.get_output_embeddings().weight

    @property
    def final_norm_gain(self) -> Tensor:
        """The final norm's per-dimension gain, [d_model]: what a residual direction is multiplied by (besides
        the per-token 1/rms) before the unembedding. gemma's reaches ~280 on some dimensions and ~0 on others,
        so a logit lens without it ranks tokens by dimensions the model barely reads."""
        norm = self.hf.get_submodule(self.family.final_norm)
        if isinstance(norm, torch.nn.LayerNorm):
            w = norm.weight
            if w is None:
                return torch.ones(self.d_model, dtype=self.dtype, device=self.device)
            return w.detach().clone()
        with torch.no_grad():  # an RMSNorm of the all-ones vector (rms 1) returns its gain, whatever its form
            return norm(torch.ones(1, self.d_model, dtype=self.dtype, device=self.device))[0].detach()

    @property
    def b_U(self) -> Tensor | None:
        return getattr(self.hf.get_output_embeddings(), "bias", None)

    def unembed(self, hidden: Tensor, token_ids: Tensor | None = None) -> Tensor:
        """Logits from final-norm hidden states: [..., d_model] -> [..., vocab] or [..., len(token_ids)].

        Passing token_ids computes only those columns: the default model's vocabulary is 262k, so a metric
        that needs two logits should not pay for all of them.
        """
        W, b = self.W_U, self.b_U
        if token_ids is not None:
            W = W[token_ids]
            b = None if b is None else b[token_ids]
        logits = hidden @ W.T
        if b is not None:
            logits = logits + b
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @torch.no_grad()
    def logits(self, prompts: str | list[str]) -> Tensor:
        """Plain forward: full logits [batch, pos, vocab] (left-padded like `tokenize`)."""
        batch = self.tokenize(prompts)
        return self.hf(**batch.inputs()).logits
