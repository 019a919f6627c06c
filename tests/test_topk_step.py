"""The TopK step's sparse pieces (attribution.training.topk_step) against dense computations on tiny cases."""

import pytest
import torch

from attribution.saes import build
from attribution.training import TrainConfig
from attribution.training.topk_step import _bag_rows, _ByFeature, _cast_encoder
from attribution.training.trainer import Fitter


def _dense_selection(sel, vals, d_sae):
    return torch.zeros(sel.shape[0], d_sae, dtype=vals.dtype).index_put_(
        (torch.arange(sel.shape[0])[:, None].expand_as(sel), sel), vals, accumulate=True
    )


@pytest.mark.parametrize("sparse", [True, False], ids=["csr", "index_add"])
def test_weight_gradient_sums_equal_dense_products(sparse, monkeypatch):
    """sum_rows = S^T @ dense with S the [batch, d_sae] selection; with AuxK's pairs (columns k..) stacked on
    their own output gradient: S_main^T @ g_main + S_aux^T @ g_aux. Repeated features in a row add up."""
    if not sparse:
        monkeypatch.setattr("attribution.training.topk_step.SPARSE_DEVICES", ())
    g = torch.Generator().manual_seed(0)
    n, d_sae, d, k, k_aux = 12, 40, 7, 3, 2
    sel = torch.randint(0, d_sae, (n, k + k_aux), generator=g)
    sel[0, 1] = sel[0, 0]  # a feature twice in one row
    vals = torch.randn(n, k + k_aux, generator=g)
    main, aux = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    rows = _ByFeature(sel, d_sae, k_main=k)
    out = torch.full((d_sae, d), float("nan"))  # the buffer's old values must not leak in
    got = rows.sum_rows(vals, torch.cat([main, aux]), out=out, stacked=True)
    s_main = _dense_selection(sel[:, :k], vals[:, :k], d_sae)
    s_aux = _dense_selection(sel[:, k:], vals[:, k:], d_sae)
    torch.testing.assert_close(got, s_main.T @ main + s_aux.T @ aux)
    got = rows.sum_rows(vals, main, out=torch.empty(d_sae, d), stacked=False)
    torch.testing.assert_close(got, (s_main + s_aux).T @ main)


def test_index_add_fallback_matches_its_formula():
    feature = torch.tensor([0, 2, 2, 1])
    cols = torch.tensor([1, 0, 1, 1])
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    dense = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = _bag_rows(feature, cols, v, dense, torch.empty(3, 2))
    torch.testing.assert_close(got, torch.tensor([[0.0, 1.0], [0.0, 4.0], [2.0, 3.0]]))


def test_encoder_cast_keeps_values_and_layout():
    w = torch.randn(24, 10).T  # the rows layout: W_enc [d_in, d_sae] as a transposed contiguous [d_sae, d_in]
    c = _cast_encoder(w, torch.bfloat16)
    assert c.stride() == w.stride() and torch.equal(c, w.to(torch.bfloat16))
    assert _cast_encoder(w, torch.float32) is w


def test_transcoder_step_with_trained_skip_equals_dense_autograd():
    """A transcoder step (target != input, trained skip path, not centred) gives plain autograd's gradients."""
    from attribution.training.topk_step import project_out_radial_grad

    g = torch.Generator().manual_seed(2)
    sae = build("topk", 16, 64, "resid_mid.0", k=4, target="mlp_out.0", skip=True)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
    sae.requires_grad_(True)
    x, t = torch.randn(50, 16, generator=g), torch.randn(50, 16, generator=g)
    cfg = TrainConfig(steps=10, batch_size=50, dtype="float32", train_skip=True, dead_after_tokens=10**6)
    Fitter(sae, cfg)._topk_step(x, t)
    got = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    pre = x @ sae.W_enc + sae.b_enc
    top, idx = pre.topk(sae.k, dim=-1)
    f = torch.zeros_like(pre).scatter(1, idx, torch.relu(top))
    (t - f @ sae.W_dec - sae.b_dec - x @ sae.W_skip).pow(2).sum(-1).mean().backward()
    project_out_radial_grad(sae)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_optimiser_steps_a_contiguous_stand_in_for_the_encoder(arch):
    """The encoder (rows layout) is stepped through its contiguous transpose, which shares its storage; its
    gradient is passed on each step and cleared before the next (no accumulation across steps)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 16, generator=g)
    kw = {"k": 4} if arch == "topk" else {}
    sae = build(arch, 16, 48, "resid_post.0", apply_b_dec_to_input=True, **kw)
    f = Fitter(sae, TrainConfig(steps=5, batch_size=64, lr=1e-30, dtype="float32", progress=False))
    f.step(x)
    ((p, q),) = f.stand_ins
    assert p is sae.W_enc and q.is_contiguous() and q.data_ptr() == p.data_ptr()
    assert all(s.is_contiguous() for s in f.opt.state[q].values() if s.dim() == 2)
    first = sae.W_enc.grad.clone()
    f.step(x)  # the same batch at a learning rate that moves nothing: the same gradient, not twice it
    torch.testing.assert_close(sae.W_enc.grad, first)
    torch.testing.assert_close(q.grad, first.T)
