"""What a transcoder feature's write does to the next-token logits through the rest of the model, in context.

The logit lens (lens.py) reads only the direct path: W_dec[f] added at mlp_out.L reaches the final norm
unchanged. Later attention and MLPs also read it. Here the feature's write, a * W_dec[f] at mlp_out.L at
the position it fires, is removed with every norm's factor and every attention pattern held at the clean
values (engine.frozen_state: the replacement graph's linearisation), later MLPs running as they do; the
change of the final norm's output at that position, through W_U, is its effect on the next-token logits.
With the final norm frozen the direct path's part of that change is exactly scale_p * gain * a W_dec[f],
so `direct_share` says how much of the effect the logit lens accounts for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attribution.compute import model_autocast
from attribution.edits import Add
from attribution.engine import Group, frozen_state, trace
from attribution.models.model import Batch

N_FROZEN = 6  # tokens kept of a frozen-path effect


@dataclass
class FrozenEffect:
    """The logit change of one write, removed in context: total (through the frozen rest of the model) and
    direct (the logit lens's path alone), both [d_model] changes of the final norm's output."""

    total: Tensor
    direct: Tensor

    @property
    def direct_share(self) -> float:
        """|projection of the total on the direct part| / |total|, in the final norm's output space: 1 when
        the later layers add nothing, near 0 when they carry (or cancel) the effect."""
        n = float(self.total.norm())
        return 0.0 if n == 0 else float((self.total @ self.direct).abs() / (self.direct.norm() * n + 1e-12))


@torch.no_grad()
def frozen_effects(model, sae, ids: Tensor, pos: Tensor, writes: Tensor) -> list[FrozenEffect]:
    """One FrozenEffect per write: `writes` [n, d_model] (a feature's activation x its decoder row) removed at
    `sae.target` (mlp_out.L) at `pos` [n] of the sequence `ids` [seq], one row each, in one forward after the
    clean one that captures the frozen state. Only the prefix up to the last position runs (causal)."""
    if not sae.is_transcoder:
        raise ValueError(f"{sae!r} is not a transcoder: an SAE's write is its reconstruction, see lens.logit_lens")
    pos = torch.as_tensor(pos, dtype=torch.long).reshape(-1)
    batch = Batch.from_ids(ids[: int(pos.max()) + 1][None].cpu(), model.device)
    with model_autocast(model):
        frozen = frozen_state(model, batch)
        group = Group(edits={sae.target: Add(pos.to(model.device), -writes.to(model.device))}, n=len(pos))
        run = trace(model, batch, groups=[group], freeze=frozen)
    rows = torch.arange(len(pos))
    total = (run.hidden[0][pos] - run.hidden[run.groups[0]][rows, pos]).float()  # [n, d_model]
    scale = frozen.scales[model.family.final_norm][0, pos].float()  # [n, 1]: the final norm's clean 1/rms
    direct = scale * model.final_norm_gain.float() * writes.to(scale.device).float()
    return [FrozenEffect(total[i].cpu(), direct[i].cpu()) for i in range(len(pos))]


def top_tokens(model, hidden: Tensor, k: int = N_FROZEN) -> list[tuple[int, float]]:
    """The k tokens whose logits a final-norm output change `hidden` [d_model] raises most, with the rise."""
    W = model.W_U  # [vocab, d_model], in the model's dtype: a float copy of gemma's would be 0.7 GB
    logits = W @ hidden.to(W.device, W.dtype)
    v, i = logits.topk(min(k, len(logits)))
    return list(zip(i.tolist(), v.float().tolist()))
