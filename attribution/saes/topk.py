"""TopK: exactly the k largest pre-activations fire (after a ReLU), so L0 is set directly."""

from dataclasses import dataclass

import torch

from attribution.errors import SAEError
from attribution.saes.base import SAE, Options, register


@dataclass(frozen=True)
class TopKOptions(Options):
    k: int = 32  # features firing at each position


@register("topk")
class TopKSAE(SAE):
    Options = TopKOptions

    def __init__(self, d_in, d_sae, hook, *, options: TopKOptions | None = None, **kw):
        super().__init__(d_in, d_sae, hook, options=options, **kw)
        k = self.options.k
        if not 1 <= k <= d_sae:
            raise SAEError(f"TopK SAE needs 1 <= k <= d_sae ({d_sae}), got k={k}")
        self.options = TopKOptions(int(k))

    @property
    def k(self) -> int:
        return self.options.k

    def activation(self, pre):
        vals, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
