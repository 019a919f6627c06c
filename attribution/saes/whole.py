"""A dictionary with no features: the whole activation at each position is one (error) node.

With it, attribution and ablation work on (hook, position) nodes of the raw residual stream: classic
activation patching and attribution patching, before any SAE is trained, and a baseline that tells how
much an SAE's features add.
"""

import torch

from attribution.saes.base import SAE


class WholeActivation(SAE):
    architecture = "whole"
    min_features = 0

    def __init__(self, d_in: int, hook: str, *, dtype: torch.dtype = torch.float32):
        super().__init__(d_in, 0, hook, dtype=dtype)  # zero features and b_dec = 0: x = 0 + e
        self.requires_grad_(False)

    def activation(self, pre):
        return pre

    @classmethod
    def at(cls, model, hooks) -> dict[str, "WholeActivation"]:
        """{hook: WholeActivation} for each hook of `model`."""
        return {model.hook(h).name: cls(model.d_model, model.hook(h).name, dtype=model.dtype) for h in hooks}
