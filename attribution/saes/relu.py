"""The paper's SAE: a ReLU encoder (trained with an L1 penalty weighted by decoder norms)."""

import torch

from attribution.saes.base import SAE, register


@register("relu")
class ReLUSAE(SAE):
    def activation(self, pre):
        return torch.relu(pre)
