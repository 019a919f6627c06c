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

from attribution.saes.base import SAE


class ScheduleFreeSignSGD(torch.optim.Optimizer):
    """Schedule-free sign-SGD. step() expects the gradients of the loss at the current parameters (y)."""

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.95):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "lr_sq_sum": 0.0})

    @torch.no_grad()
    def step(self, closure=None) -> None:
        """One step; it consumes the gradients (each is replaced by its sign, in place).

        Four in-place passes a parameter and no temporary: with two [4,096 x 640] temporaries a parameter (the
        sign, x - z) the step took ~12.7 ms at 640 x 4,096, in place ~7 ms (AMX Xeon, 2 threads)."""
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
                z.add_(p.grad.sign_(), alpha=-lr)
                x.lerp_(z, c)
                torch.lerp(z, x, beta, out=p.data)  # y = (1 - beta) z + beta x

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


# --- the trainer's optimiser and the encoder's layout (attribution.training.trainer) ---------------------------


def make_optimizer(sae: SAE, cfg) -> tuple[torch.optim.Optimizer, list[tuple[Tensor, Tensor]]]:
    """Adam (0.9, 0.999), the fused kernel where the device has one (one pass over each parameter); or
    schedule-free sign-SGD. A transcoder's fitted skip path is not a parameter of either.

    The encoder in its rows layout (encoder_layout) is stepped through a stand-in: its transpose
    [d_sae, d_in], contiguous and sharing its storage, so the optimiser's state is contiguous too (fused Adam
    copies a non-contiguous parameter, its gradient and its state to contiguous ones and back every step: ~25
    ms at 640 x 8,192). Returns the optimiser and the (parameter, stand-in) pairs whose gradients to pass on."""
    params, stand_ins = trainable(sae, cfg)
    return optimizer(params, cfg), stand_ins


def trainable(sae: SAE, cfg) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
    """What the optimiser steps for `sae` (a fitted skip path left out; a rows-layout encoder by its stand-in),
    and the (parameter, stand-in) pairs."""
    params, stand_ins = [], []
    for name, p in sae.named_parameters():
        if name == "W_skip" and not cfg.train_skip:
            continue
        if p.dim() == 2 and not p.is_contiguous() and p.T.is_contiguous():
            q = torch.nn.Parameter(p.detach().T)  # a view: stepping it steps p
            stand_ins.append((p, q))
            p = q
        params.append(p)
    return params, stand_ins


def optimizer(params: list[Tensor], cfg) -> torch.optim.Optimizer:
    """cfg.optimizer over `params`: schedule-free sign-SGD, or Adam (fused where the device has the kernel)."""
    if cfg.optimizer == "signsgd":
        return ScheduleFreeSignSGD(params, lr=cfg.lr, momentum=cfg.momentum)
    try:
        return torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, TypeError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))


def transposed_state(opt: torch.optim.Optimizer) -> None:
    """Optimiser state saved before the encoder's stand-in (state [d_in, d_sae] for a [d_sae, d_in] stand-in),
    transposed to the stand-in's shape, so older checkpoints resume."""
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if isinstance(v, Tensor) and v.dim() == 2 and v.shape != p.shape and v.T.shape == p.shape:
                    opt.state[p][k] = v.T.contiguous()


def encoder_layout(sae: SAE, rows: bool) -> None:
    """rows=True: store W_enc [d_in, d_sae] as the transpose of a contiguous [d_sae, d_in] (one row per
    feature), so the sparse gradient (per-feature rows) and the dense product (a transposed operand) need no
    transposing copy each step (the optimiser steps its contiguous transpose, see make_optimizer); rows=False:
    back to the usual contiguous layout (for saving)."""
    w = sae.W_enc.detach()
    if rows == (w.stride() == (1, w.shape[0])):
        return
    new = w.T.contiguous().T if rows else w.contiguous()
    sae.W_enc = torch.nn.Parameter(new, requires_grad=sae.W_enc.requires_grad)
