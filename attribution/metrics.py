"""Metrics: scalar functions of the model's output that attribution explains.

A metric maps the final-norm hidden states to one value per batch row. `LogitDiff` unembeds only the
two answer tokens at one position; any plain callable on logits [rows, pos, vocab] works too (it is
given full logits, which costs a full unembedding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attribution.errors import AttributionError, TokenizationError, check_finite


@dataclass
class Rows:
    """Which prompt each batch row belongs to and how far it is left-padded."""

    prompt: Tensor  # [rows] long
    offset: Tensor  # [rows] long

    @classmethod
    def of(cls, batch) -> Rows:
        """One row per prompt of a (left-padded) batch."""
        return cls(torch.arange(batch.size), torch.tensor([batch.offset(b) for b in range(batch.size)]))

    @classmethod
    def copies(cls, prompt: int, n: int) -> Rows:
        """n unpadded rows that all belong to one prompt (a growing batch)."""
        return cls(torch.full((n,), prompt), torch.zeros(n, dtype=torch.long))


class LogitDiff:
    """logit(good) - logit(bad) at one position (default: the last token of each prompt).

    good/bad are single-token strings such as " sad" (mind the leading space), or one per prompt.
    """

    def __init__(self, model, good: str | list[str], bad: str | list[str], position: int = -1):
        goods, bads = _as_list(good), _as_list(bad)
        if len(goods) != len(bads):
            raise TokenizationError(
                f"{len(goods)} good answers but {len(bads)} bad ones: give one of each "
                "per prompt, or a single pair for all prompts"
            )
        if isinstance(position, bool) or not isinstance(position, int):
            raise AttributionError(f"position must be a token index (an int; -1 = the last token), got {position!r}")
        self.good, self.bad, self.position = goods, bads, position
        self.good_ids = torch.tensor([model.token_id(w) for w in goods])
        self.bad_ids = torch.tensor([model.token_id(w) for w in bads])
        self._model = model.name
        self._tokens = _id_tokens(model, self.good_ids, self.bad_ids)  # ids mean nothing in another vocabulary

    def __repr__(self):
        g = self.good[0] if len(self.good) == 1 else self.good
        b = self.bad[0] if len(self.bad) == 1 else self.bad
        return f"LogitDiff({g!r} - {b!r})"

    def _ids(self, rows: Rows):
        if len(self.good_ids) == 1:
            return self.good_ids.expand(len(rows.prompt)), self.bad_ids.expand(len(rows.prompt))
        if int(rows.prompt.max()) >= len(self.good_ids):
            raise TokenizationError(f"{len(self.good_ids)} answer pairs for more prompts; give one per prompt")
        return self.good_ids[rows.prompt], self.bad_ids[rows.prompt]

    def _column(self, width: int, rows: Rows) -> Tensor:
        length = width - int(rows.offset.max())  # the shortest prompt's length
        if not -length <= self.position < length:
            raise AttributionError(
                f"LogitDiff position {self.position} is outside the prompt ({length} tokens, <bos> included): "
                f"give a position in {-length}..{length - 1}, or the default -1 (the last token)"
            )
        if self.position < 0:
            return torch.full_like(rows.offset, width + self.position)
        return rows.offset + self.position

    def from_hidden(self, model, hidden: Tensor, rows: Rows) -> Tensor:
        """[rows, pos, d_model] final-norm states -> [rows], unembedding two columns only."""
        if _id_tokens(model, self.good_ids, self.bad_ids) != self._tokens:
            raise TokenizationError(
                f"this LogitDiff was built for model {self._model!r}, whose vocabulary differs from {model.name!r}'s: "
                "its token ids would name other words. Build it with LogitDiff(model, ...) for the model you attribute"
            )
        r = torch.arange(hidden.shape[0])
        h = hidden[r, self._column(hidden.shape[1], rows)]  # [rows, d_model]
        good, bad = self._ids(rows)
        ids = torch.stack([good, bad], -1)  # [rows, 2]
        W = model.W_U[ids]  # [rows, 2, d_model]
        logits = torch.einsum("rd,rkd->rk", h, W.to(h.dtype))
        if model.b_U is not None:
            logits = logits + model.b_U[ids]
        if model.softcap:
            logits = torch.tanh(logits / model.softcap) * model.softcap
        return logits[:, 0] - logits[:, 1]

    def __call__(self, logits: Tensor, rows: Rows | None = None) -> Tensor:
        """The same metric from full logits [rows, pos, vocab] (for checks against a plain forward)."""
        rows = rows or Rows.copies(0, logits.shape[0])
        r = torch.arange(logits.shape[0])
        lg = logits[r, self._column(logits.shape[1], rows)]
        good, bad = self._ids(rows)
        return lg[r, good] - lg[r, bad]


def evaluate(metric, model, hidden: Tensor, rows: Rows) -> Tensor:
    """Apply a metric to final hidden states; returns [rows], checked finite."""
    if hasattr(metric, "from_hidden"):
        value = metric.from_hidden(model, hidden, rows)
    elif callable(metric):
        value = metric(model.unembed(hidden))
    else:
        raise AttributionError(
            f"metric must be a LogitDiff, have from_hidden(), or be a callable on logits; got {metric!r}"
        )
    if hidden.requires_grad and not (isinstance(value, Tensor) and value.requires_grad):
        raise AttributionError(
            f"the metric returned {type(value).__name__} with no gradient: attribution differentiates it, so "
            "return a torch tensor computed from the logits (no float(), .item(), .tolist() or .detach())"
        )
    value = torch.as_tensor(value)
    if value.dim() == 0:
        value = value.expand(hidden.shape[0]) if hidden.shape[0] == 1 else value
    if value.shape != (hidden.shape[0],):
        raise AttributionError(
            f"metric returned shape {tuple(value.shape)}; it must return one value per batch row ({hidden.shape[0]},)"
        )
    check_finite(value.detach(), "the metric")
    return value


def _id_tokens(model, *ids: Tensor) -> list | None:
    """What the answer ids are in `model`'s vocabulary (None where they are outside it)."""
    flat = torch.cat(ids).tolist()
    if max(flat) >= model.W_U.shape[0]:
        return None
    return model.tokenizer.convert_ids_to_tokens(flat)


def _as_list(x) -> list[str]:
    if isinstance(x, str):
        return [x]
    if not isinstance(x, (list, tuple)):
        raise TokenizationError(f"answer must be a non-empty string (or a list of them), got {x!r}")
    return list(x)
