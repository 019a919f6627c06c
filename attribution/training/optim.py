"""Optimisers for dictionary training beyond torch's Adam.

`ScheduleFreeSignSGD` is eai-sparsify's default recipe, written from its description (Defazio et al. 2024,
"The Road Less Scheduled", with sign-SGD as the base step): the parameters hold the point y where gradients
are taken; the state keeps z (plain sign-SGD iterates) and x (their running average, weighted by lr^2), and
y = (1 - momentum) z + momentum x. There is no decay schedule, so training can be continued for more tokens
at any time and lose nothing, and the average x is what a finished dictionary keeps (`use_average`).
"""

from __future__ import annotations

import torch
from torch import Tensor


class ScheduleFreeSignSGD(torch.optim.Optimizer):
    """Schedule-free sign-SGD. step() expects the gradients of the loss at the current parameters (y)."""

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.95):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "lr_sq_sum": 0.0})

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            lr, beta = group["lr"], group["momentum"]
            group["lr_sq_sum"] += lr * lr
            c = lr * lr / group["lr_sq_sum"] if group["lr_sq_sum"] > 0 else 1.0  # x's weight for the new z
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["z"], state["x"] = p.detach().clone(), p.detach().clone()
                z, x = state["z"], state["x"]
                z.add_(p.grad.sign(), alpha=-lr)
                x.lerp_(z, c)
                torch.add(z, x - z, alpha=beta, out=p.data)  # y = (1 - beta) z + beta x

    def copies(self, p: Tensor) -> list[Tensor]:
        """Every tensor that stands for parameter p (p itself, and z and x once stepped), for a constraint
        (unit-norm decoder rows) that must hold on all of them."""
        state = self.state.get(p, {})
        return [p.data, *(state[k] for k in ("z", "x") if k in state)]

    @torch.no_grad()
    def use_average(self) -> None:
        """Set every parameter to its average x (what a finished run keeps; better than y or z)."""
        for group in self.param_groups:
            for p in group["params"]:
                if "x" in self.state.get(p, {}):
                    p.data.copy_(self.state[p]["x"])
