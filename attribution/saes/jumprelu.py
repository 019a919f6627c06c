"""JumpReLU (Gemma Scope): a feature fires only above its own learned threshold."""

import torch
from torch import nn

from attribution.saes.base import SAE, register


@register("jumprelu")
class JumpReLUSAE(SAE):
    def __init__(self, d_in, d_sae, hook, **kw):
        super().__init__(d_in, d_sae, hook, **kw)
        self.threshold = nn.Parameter(torch.zeros(d_sae, dtype=self.W_enc.dtype))

    def activation(self, pre):
        return pre * (pre > self.threshold)
