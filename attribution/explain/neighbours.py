"""A feature's nearest neighbours: the features whose decoder directions point the same way."""

from __future__ import annotations

import torch
from torch import Tensor

N_NEIGHBOURS = 8


@torch.no_grad()
def neighbours(sae, std: Tensor, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """([d_sae, k] ids, [d_sae, k] cosines) of the nearest features by decoder cosine, measured with each
    residual dimension in units of its standard deviation `std` [d_model] on the indexed text: in raw units
    one massive dimension (71% of the variance after gemma's block 9) would dominate every cosine; for a
    stream without such dimensions this is the plain cosine."""
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
