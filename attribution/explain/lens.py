"""What a feature writes, read through the unembedding: the logit lens of its decoder direction, and the
model's own next-token predictions at its top contexts (whether a promoted token is evidence: labels.py).

Both unembed in bf16 where the device multiplies it natively: ranking needs no more, and the vocabulary may
be 262k wide (a float chunk of logits is 0.5 GB); float32 elsewhere, where emulated bf16 takes minutes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attribution.compute import compute_dtype

N_LOGIT = 10  # promoted / suppressed tokens of the logit lens
N_NEXT = 10  # the model's top next-token predictions kept at each top context


def _lens_dtype(model) -> torch.dtype:
    return torch.bfloat16 if compute_dtype(model.device) == torch.bfloat16 else torch.float32


@torch.no_grad()
def logit_lens(model, sae, seen: Tensor, chunk: int = 512) -> tuple[Tensor, ...]:
    """Top promoted / suppressed tokens of each decoder direction through the final norm's gain and the
    unembedding (a direction added to the residual changes the logits by W_U (gain * d), up to the norm's
    per-token 1/rms), and the top promoted token among those `seen` [vocab] in the indexed text, for the
    label: most of a 262k vocabulary is rare scripts and word pieces the model seldom writes. A transcoder's
    W_dec is what it writes at mlp_out.L, which joins the stream as it is (after gemma's post-norm), so this
    is its direct path too; its encoder's hook (resid_mid.L) plays no part (frozen_lens.py: the other paths)."""
    lens = _lens_dtype(model)
    chunk = chunk if lens == torch.bfloat16 else chunk // 2
    W_U = model.W_U.to(lens).T  # [d_model, vocab]
    seen_ids = seen.nonzero().flatten()  # [n_seen]
    W_seen = W_U[:, seen_ids]  # [d_model, n_seen]
    gain = model.final_norm_gain.float()  # [d_model]
    ups, upv, downs, downv, up_seen = [], [], [], [], []
    for i in range(0, sae.d_sae, chunk):
        d = (sae.W_dec[i : i + chunk].float() * gain).to(lens)  # [chunk, d_model]
        logits = d @ W_U  # [chunk, vocab]
        v, j = logits.topk(N_LOGIT, dim=-1)
        ups.append(j), upv.append(v.float())
        v, j = logits.topk(N_LOGIT, dim=-1, largest=False)
        downs.append(j), downv.append(v.float())
        up_seen.append(seen_ids[(d @ W_seen).argmax(-1)] if len(seen_ids) else ups[-1][:, 0])
    return torch.cat(ups), torch.cat(upv), torch.cat(downs), torch.cat(downv), torch.cat(up_seen)


@torch.no_grad()
def top_predictions(model, hidden: Tensor, chunk: int = 1024) -> Tensor:
    """[m, d_model] final-norm hidden states -> [m, N_NEXT] int32 ids of the model's highest next-token
    logits (a final softcap is monotonic and changes no ranking)."""
    lens = _lens_dtype(model)
    W, b = model.W_U.to(lens), model.b_U
    k = min(N_NEXT, W.shape[0])
    out = []
    for i in range(0, len(hidden), chunk):
        logits = hidden[i : i + chunk].to(W.device, lens) @ W.T  # [chunk, vocab]
        if b is not None:
            logits = logits + b.to(lens)
        out.append(logits.topk(k, dim=-1).indices.to(torch.int32))
    ids = torch.cat(out) if out else torch.zeros(0, k, dtype=torch.int32)
    return torch.nn.functional.pad(ids, (0, N_NEXT - k), value=-1)  # a vocabulary under N_NEXT: -1 fills
