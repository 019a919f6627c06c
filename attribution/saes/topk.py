"""TopK: exactly the k largest pre-activations fire (after a ReLU), so L0 is set directly."""

import torch

from attribution.errors import SAEError
from attribution.saes.base import SAE, register


@register("topk")
class TopKSAE(SAE):
    def __init__(self, d_in, d_sae, hook, *, k: int = 32, **kw):
        super().__init__(d_in, d_sae, hook, **kw)
        if not 1 <= k <= d_sae:
            raise SAEError(f"TopK SAE needs 1 <= k <= d_sae ({d_sae}), got k={k}")
        self.k = int(k)

    def extra_config(self):
        return {"k": self.k}

    def activation(self, pre):
        vals, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
