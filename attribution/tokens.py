"""Which tokens a dictionary learns from and is explained on: one rule and one threshold for both.

Training (attribution.training) and the feature index (attribution.explain) must leave out the same tokens,
or an index would rank features on tokens their dictionary never saw: <bos> (an attention sink whose norm
is ~10x the median) and the rare massive-activation tokens whose norm exceeds OUTLIER x the batch median.
"""

from __future__ import annotations

from torch import Tensor

OUTLIER = 10.0  # a token whose norm exceeds this many times its batch's median is left out


def keep_tokens(x: Tensor, outlier: float = OUTLIER) -> Tensor:
    """[batch, seq] bool of the tokens to keep in activations x [batch, seq, d]: not <bos>, not over
    `outlier` x the median norm of the batch's other tokens."""
    norms = x.float().norm(dim=-1)  # [batch, seq]
    keep = norms <= outlier * norms[:, 1:].median()
    keep[:, 0] = False  # <bos>
    return keep
