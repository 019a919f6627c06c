"""The TopK training step (`Fitter`'s, attribution.training.trainer), sparse wherever the maths is.

The one dense product is the encoder's [batch, d_in] x [d_in, d_sae] (in the compute dtype). Everything after
TopK touches only the selected (token, feature) pairs, k (+ k_aux for AuxK) of d_sae per token:

- the decode is an embedding bag over the k active rows of W_dec; autograd runs only from the loss back to the
  decode's output and its per-token weights (the activations), never to a dense [batch, d_sae];
- both weight gradients are one sparse-dense product each, S^T @ dense, with S the [batch, d_sae] selection
  held as a CSR matrix of S^T (built once per step from one sort of the selected feature indices): W_dec's
  gradient is sum over pairs (b, j) of act[b, j] * d loss / d decode[b], W_enc's is sum of
  (d loss / d pre[b, j]) * x[b]. torch runs these in MKL's (CPU) or cuSPARSE's (CUDA) sparse kernels;
  on other devices an embedding bag's backward does the same sums;
- a centred encoder's b_dec gradient needs sum_b d loss / d x_c[b] = W_enc @ (b_enc's gradient): one
  matrix-vector product instead of a [batch, d_in] gather.

The large per-step buffers (the pre-activations, the two weight gradients) are reused from step to step
(`Workspace`): allocated fresh, a [4,096 x 8,192] tensor is page-faulted in on every step.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch.nn.functional import embedding_bag

from attribution.saes.base import SAE

SPARSE_DEVICES = ("cpu", "cuda")  # where torch multiplies a CSR matrix by a dense one


class Workspace:
    """Named buffers kept between steps, reallocated only when a shape, dtype or device changes."""

    def __init__(self):
        self._bufs: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> Tensor:
        b = self._bufs.get(name)
        if b is None or tuple(b.shape) != tuple(shape) or b.dtype != dtype or b.device != torch.device(device):
            b = self._bufs[name] = torch.empty(shape, dtype=dtype, device=device)
        return b


def topk_step(fitter, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Forward and backward of one TopK step on normalised inputs x and targets t [batch, d_in]: sets every
    trained parameter's .grad; returns (error [batch, d_in], mean L0, dead features [d_sae] bool)."""
    sae, cfg, ws = fitter.sae, fitter.cfg, fitter.work
    centred = sae.apply_b_dec_to_input
    n = len(x)
    with torch.no_grad():
        x_c = x - sae.b_dec if centred else x  # [batch, d_in], float32
        pre = torch.addmm(
            sae.b_enc.detach().to(fitter.dtype),
            x_c.to(fitter.dtype),
            _cast_encoder(sae.W_enc.detach(), fitter.dtype),
            out=ws.get("pre", (n, sae.d_sae), fitter.dtype, x.device),
        )
        top, idx = pre.topk(sae.k, dim=-1)  # [batch, k]
    w_dec = sae.W_dec.detach()  # its gradient is taken below, sparsely
    vals = top.float().requires_grad_()
    act = torch.relu(vals)
    dec = embedding_bag(idx, w_dec, per_sample_weights=act, mode="sum")  # [batch, d_in]
    x_hat = dec + sae.b_dec
    if cfg.train_skip:  # a transcoder's skip path, trained here in the normalised space
        x_hat = x_hat + x @ sae.W_skip
    err = t - x_hat
    loss = err.pow(2).sum(-1).mean()
    dead = fitter._dead_after(torch.bincount(idx[act > 0], minlength=sae.d_sae), n)
    leaves, outs, acts, sel = [vals], [dec], [act], [idx]
    n_dead = int(dead.sum())
    if n_dead and cfg.aux_k and cfg.aux_coefficient:
        dead_idx = dead.nonzero().squeeze(1)  # [n_dead]
        with torch.no_grad():
            aux_top, j = pre[:, dead_idx].topk(min(cfg.aux_k, n_dead), dim=-1)  # among the dead only
        aux_vals = aux_top.float().requires_grad_()
        aux_act = torch.relu(aux_vals)
        recon = embedding_bag(dead_idx[j], w_dec, per_sample_weights=aux_act, mode="sum")
        e = err.detach()
        aux_loss = (e - recon).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp_min(1e-8)
        loss = loss + cfg.aux_coefficient * aux_loss
        leaves, outs, acts, sel = [vals, aux_vals], [dec, recon], [act, aux_act], [idx, dead_idx[j]]
    fitter._check_loss(loss)
    params = [sae.b_dec] + ([sae.W_skip] if cfg.train_skip else [])
    grads = torch.autograd.grad(loss, [*params, *leaves, *outs])
    for p, gr in zip(params, grads, strict=False):
        p.grad = gr
    g_pre = torch.cat(grads[len(params) : len(params) + len(leaves)], dim=1)  # d loss / d pre at sel
    g_out = grads[len(params) + len(leaves) :]  # d loss / d (each decode's output) [batch, d_in]
    sel = torch.cat(sel, dim=1)  # [batch, k (+ k_aux)]
    a = torch.cat([v.detach() for v in acts], dim=1)
    rows = _ByFeature(sel, sae.d_sae, k_main=sae.k)
    g_dec = ws.get("W_dec.grad", tuple(sae.W_dec.shape), torch.float32, x.device)
    rows.sum_rows(a, torch.cat(g_out) if len(g_out) > 1 else g_out[0], out=g_dec, stacked=len(g_out) > 1)
    g_enc = ws.get("W_enc.grad", (sae.d_sae, sae.d_in), torch.float32, x.device)  # W_enc^T's layout
    rows.sum_rows(g_pre, x_c, out=g_enc, stacked=False)
    sae.W_dec.grad = g_dec
    sae.W_enc.grad = g_enc.T  # the parameter's own layout (see optim.encoder_layout)
    sae.b_enc.grad = torch.zeros_like(sae.b_enc).index_add_(0, sel.flatten(), g_pre.flatten().to(sae.b_enc.dtype))
    if centred:  # x_c = x - b_dec feeds the encoder: d loss / d b_dec -= sum_b d loss / d x_c[b]
        sae.b_dec.grad = sae.b_dec.grad - sae.W_enc.detach() @ sae.b_enc.grad
    project_out_radial_grad(sae, ws.get("radial", tuple(sae.W_dec.shape), torch.float32, x.device))
    l0 = (act > 0).float().sum(-1).mean()
    return err.detach(), l0, dead


def _cast_encoder(w: Tensor, dtype: torch.dtype) -> Tensor:
    """W_enc [d_in, d_sae] in `dtype`, cast through its contiguous transpose when it has the rows layout
    (a strided cast of that layout reads memory out of order: ~9x slower at 640 x 8,192)."""
    if w.dtype == dtype:
        return w
    return w.T.to(dtype).T if w.T.is_contiguous() else w.to(dtype)


class _ByFeature:
    """The selected pairs sel [batch, K] sorted by feature: the CSR structure of S^T [d_sae, batch] shared by
    both weight gradients. Columns k_main.. of sel are AuxK's (their decode has its own output gradient)."""

    def __init__(self, sel: Tensor, d_sae: int, k_main: int):
        self.sel, self.d_sae, self.k_main = sel, d_sae, k_main
        flat = sel.flatten()
        self.order = torch.argsort(flat)
        self.crow = torch.zeros(d_sae + 1, dtype=torch.long, device=sel.device)
        torch.cumsum(torch.bincount(flat, minlength=d_sae), 0, out=self.crow[1:])
        self.token = torch.div(self.order, sel.shape[1], rounding_mode="floor")  # each sorted pair's token

    def sum_rows(self, vals: Tensor, dense: Tensor, out: Tensor, stacked: bool) -> Tensor:
        """out[f] = sum over pairs (b, j) with sel[b, j] = f of vals[b, j] * dense[b'] ([d_sae, d]), where
        b' = b, or with stacked=True (dense = [main; aux], 2 x batch rows) b + batch for AuxK's pairs."""
        n = self.sel.shape[0]
        cols = self.token
        if stacked:
            cols = cols + n * (self.order % self.sel.shape[1] >= self.k_main)
        v = vals.flatten()[self.order].to(dense.dtype)
        if dense.device.type not in SPARSE_DEVICES:
            return _bag_rows(self.sel.flatten()[self.order], cols, v, dense, out)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            s = torch.sparse_csr_tensor(self.crow, cols, v, (self.d_sae, len(dense)), check_invariants=False)
        return torch.addmm(out, s, dense, beta=0, out=out)  # beta=0: out's old values are ignored; mm is ~2x slower


def _bag_rows(feature: Tensor, cols: Tensor, v: Tensor, dense: Tensor, out: Tensor) -> Tensor:
    """sum_rows without sparse kernels: one index_add of the weighted rows (pairs x d, materialised)."""
    return out.zero_().index_add_(0, feature, v[:, None] * dense[cols])


def project_out_radial_grad(sae: SAE, work: Tensor | None = None) -> None:
    """With unit-norm decoder rows, drop the gradient component that would only change their norm.
    work: a buffer of W_dec's shape for the products (else one is allocated)."""
    if sae.W_dec.grad is None:
        return
    w = sae.W_dec.data
    g = sae.W_dec.grad
    radial = torch.mul(g, w, out=work).sum(-1, keepdim=True)  # [d_sae, 1]: each row's gradient along it
    g.addcmul_(radial, w, value=-1)
