"""The standard edits the engine (attribution.engine) applies: values, pure functions of the rows' activation
([rows, pos, d_model] -> [rows, pos, d_model]), with no side effects and no writes into their input (which may
be a broadcast view of one row). An edit with a `reads` attribute is called as edit(x, read): a transcoder's
splice at its target hook reads its input hook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attribution.splice import wide


@dataclass
class Add:
    """Row r gets vec[r] added at position pos[r]: one node's ablation ((target - f_i) W_dec[i], or
    target - e for an error node) or a steering vector."""

    pos: Tensor  # [n] long
    vec: Tensor  # [n, d_model]

    def __call__(self, x: Tensor) -> Tensor:
        x = x.clone()
        x[torch.arange(len(self.pos)), self.pos] += self.vec.to(x.dtype)
        return x


@dataclass
class Set:
    """The rows' activation replaced by `value` (broadcast to the rows): a reconstruction, or zeros."""

    value: Tensor  # [rows or 1, pos, d_model]

    def __call__(self, x: Tensor) -> Tensor:
        return self.value.to(x.dtype).expand_as(x)


@dataclass
class Splice:
    """Encode the rows' actual input with `sae` and replace the features where `keep` is False by `values`
    (and error terms where `keep_error` is False by `error_value`): x + (f' - f) W_dec + (e' - e).

    Exactly x where nothing is replaced; downstream of an upstream edit, the features are those of the
    input this hook actually receives (graph checks, group ablation and steering, clamping). A transcoder's
    splice sits at its target (splice.edit_hook) and reads its input hook: f = encode(read), and the error
    term e = x - decode(f) - read W_skip."""

    sae: object
    keep: Tensor  # [n, pos, d_sae] bool, True = left as computed
    values: Tensor  # [n, pos, d_sae] (or broadcastable): what replaced features become
    keep_error: Tensor | None = None  # [n, pos, 1] bool (None: every error term kept)
    error_value: Tensor | None = None  # [d_model]: what replaced error terms become

    @property
    def reads(self) -> str | None:
        return self.sae.hook if self.sae.is_transcoder else None

    def __call__(self, x: Tensor, read: Tensor | None = None) -> Tensor:
        sae = self.sae
        f = sae.encode(x if read is None else read)  # [rows, pos, d_sae]
        new = torch.where(self.keep, f, self.values.to(f.dtype))
        dx = (new - f) @ sae.W_dec  # [rows, pos, d_model]; b_dec cancels
        if self.keep_error is not None and not bool(self.keep_error.all()):
            xw = x.to(wide(x.dtype, sae))  # the error term in the wider dtype, as decompose makes it
            e = xw - sae.decode(f).to(xw.dtype)
            if read is not None:
                e = e - sae.skip(read.to(xw.dtype)).to(xw.dtype)
            dx = dx.to(xw.dtype) + torch.where(self.keep_error, e, self.error_value.to(xw.dtype)) - e
        return x + dx.to(x.dtype)
