"""JumpReLU (Gemma Scope): a feature fires only above its own learned threshold, and never negative.

As SAELens's inference JumpReLU: relu(pre) * (pre > threshold). The ReLU matters when a threshold is
negative (SAELens's training keeps them >= 0, but files from elsewhere need not): pre-activations between
the threshold and zero stay off rather than firing negative.
"""

import torch
from torch import nn

from attribution.saes.base import SAE, register


@register("jumprelu")
class JumpReLUSAE(SAE):
    def __init__(self, d_in, d_sae, hook, **kw):
        super().__init__(d_in, d_sae, hook, **kw)
        self.threshold = nn.Parameter(torch.zeros(d_sae, dtype=self.W_enc.dtype))

    def activation(self, pre):
        return torch.relu(pre) * (pre > self.threshold)
