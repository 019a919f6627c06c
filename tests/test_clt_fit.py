"""Training cross-layer transcoders (attribution.training.clt_fit): the sparse step's gradients are autograd's,
the normalisation folds away exactly, decoders stay unit-norm with the skip path fixed, a resumed run is the
uninterrupted one, cross-layer decoders learn what only they can, and the stream trains a CLT beside a
per-layer transcoder from one forward pass."""

import pytest
import torch

from attribution import AttributionError
from attribution.saes import build
from attribution.saes.clt import CrossLayerTranscoder
from attribution.training import stream
from attribution.training.clt_fit import CLTFitter, sparse_backward
from attribution.training.stream import Dictionary, train_dictionaries
from attribution.training.trainer import TrainConfig
from tests.conftest import tiny_model

F64 = torch.float64


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"lr": 1e-2, "progress": False, "log_every": 1, "dtype": "float32"} | kw)


def data(n_layers=4, n=16, d=8, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_layers, n, d, generator=g, dtype=dtype), torch.randn(n_layers, n, d, generator=g, dtype=dtype)


def test_sparse_gradients_are_autograds():
    """All of W_enc, b_enc, own W_dec, W_ahead, b_dec, AuxK included (features go dead after one batch)."""
    n_layers, n, d, k = 4, 16, 8, 2
    clt = CrossLayerTranscoder.create(n_layers, d, 128, reach=3, k=k, skip=False, dtype=F64)
    config = cfg(normalize="none", dead_after_tokens=16, aux_k=4)
    f = CLTFitter(clt, config)
    xs, ts = data(n_layers, n, d)
    f.step(xs, ts)
    f.step(xs, ts)
    with torch.no_grad():
        for a in clt.W_ahead:
            a.add_(0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1), dtype=F64))
    got, before = {}, f.since_fired.clone()

    def record(s):
        for p in (*clt.layers[s].parameters(), clt.W_ahead[s]):
            if p.grad is not None:
                got[id(p)] = p.grad.clone()
                p.grad = None

    sparse_backward(f, xs, ts, record)
    dead = f.since_fired >= config.dead_after_tokens
    assert dead.any(dim=1).all()  # AuxK runs on every layer
    f.since_fired = before
    errs = [t - y for t, y in zip(ts, clt.decode([s.encode(x) for s, x in zip(clt.layers, xs)]))]
    loss = sum(e.pow(2).sum(-1).mean() * f.weight[layer] for layer, e in enumerate(errs)) / n_layers
    for s, sae in enumerate(clt.layers):  # AuxK: the dead reconstruct their layer's residual, own decoder
        di = dead[s].nonzero().squeeze(1)
        top, j = sae.pre_acts(xs[s])[:, di].topk(min(config.aux_k, len(di)), dim=-1)
        recon = torch.zeros(n, 128, dtype=F64).scatter(-1, di[j], torch.relu(top)) @ sae.W_dec
        e = errs[s].detach()
        aux = (e - recon).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean()
        loss = loss + config.aux_coefficient * aux / n_layers
    params = [p for s in range(n_layers) for p in (*clt.layers[s].parameters(), clt.W_ahead[s]) if p.numel()]
    assert len(params) == 5 * n_layers - 1  # the last layer writes nothing ahead
    for p, g in zip(params, torch.autograd.grad(loss, params)):
        torch.testing.assert_close(got[id(p)], g, rtol=1e-10, atol=1e-12)


def skip_clt(n_layers=3, d=8, d_sae=32, reach=2, seed=0):
    clt = CrossLayerTranscoder.create(n_layers, d, d_sae, reach=reach, k=3, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sae in clt.layers:
            sae.W_skip.copy_(0.3 * torch.randn(d, d, generator=g, dtype=F64))
    return clt


def test_finish_folds_the_normalisation_exactly():
    clt = skip_clt()
    xs, ts = data(3, 64, 8)
    xs, ts = 3 * xs + 1, 0.5 * ts - 2
    f = CLTFitter(clt, cfg(normalize="dim"))
    for _ in range(5):
        f.step(xs, ts)
    in_shift, in_scale, out_shift, out_scale = f.norm
    with torch.no_grad():
        xn = [(x - a) * b for x, a, b in zip(xs, in_shift, in_scale)]
        recon = clt.decode(clt.encode(xn))  # normalised units, no skip
        want = [r / c + a + sae.skip(x) for r, a, c, sae, x in zip(recon, out_shift, out_scale, clt.layers, xs)]
    f.finish()
    got, _ = clt(list(xs))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    assert clt.meta["training"]["steps_done"] == 5 and "final_explained_variance" in clt.meta


def test_decoders_stay_unit_norm_and_the_skip_path_fixed():
    clt = skip_clt(n_layers=4, reach=3)
    skips = [sae.W_skip.clone() for sae in clt.layers]
    f = CLTFitter(clt, cfg(optimizer="signsgd", dead_after_tokens=32))
    for i in range(6):
        f.step(*data(4, 32, 8, seed=i))
    for s, opt in enumerate(f.opts):
        norms = clt.decoders(s).flatten(1).norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
        for k in ("z", "x"):  # sign-SGD's copies too
            w = opt.state[clt.layers[s].W_dec][k]
            a = opt.state[clt.W_ahead[s]][k] if clt.W_ahead[s].numel() else w[:, :0]
            norms = (w.pow(2).sum(-1) + a.flatten(1).pow(2).sum(-1)).sqrt()
            torch.testing.assert_close(norms, torch.ones_like(norms))
        assert torch.equal(clt.layers[s].W_skip, skips[s])
    assert clt.W_ahead[0].abs().max() > 0  # the decoders ahead learn


@pytest.mark.parametrize("optimizer", ["signsgd", "adam"])
def test_resumed_training_equals_uninterrupted(optimizer):
    config = cfg(optimizer=optimizer, steps=8, dead_after_tokens=32, normalize="dim")
    batches = [data(3, 32, 8, seed=i, dtype=torch.float32) for i in range(8)]
    whole = CrossLayerTranscoder.create(3, 8, 64, reach=2, k=3)
    f = CLTFitter(whole, config)
    for b in batches:
        f.step(*b)
    first = CrossLayerTranscoder.create(3, 8, 64, reach=2, k=3)
    f1 = CLTFitter(first, config)
    for b in batches[:3]:
        f1.step(*b)
    state = f1.state_dict()
    resumed = CrossLayerTranscoder.create(3, 8, 64, reach=2, k=3)
    f2 = CLTFitter(resumed, config)
    f2.load_state_dict(state)
    for b in batches[3:]:
        f2.step(*b)
    f.finish(), f2.finish()
    for (k, v), w in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(w, v, rtol=1e-6, atol=1e-6, msg=k)
    assert f2.log.steps == f.log.steps


def cross_layer_data(step: int, n=256, d=16, m=8):
    """Layer 1's target is partly a sparse nonlinear code of layer 0's input, which layer 1 cannot read."""
    g = torch.Generator().manual_seed(1234)
    a0, a1, a2 = (torch.randn(d, m, generator=g) for _ in range(3))
    b0, b1, b2 = (torch.randn(m, d, generator=g) for _ in range(3))
    g.manual_seed(step)
    x = torch.randn(2, n, d, generator=g)
    code = lambda x, a: torch.relu(x @ a / d**0.5 - 1.0)  # noqa: E731  fires on ~16% of tokens
    t0 = code(x[0], a0) @ b0
    t1 = code(x[0], a1) @ b1 + code(x[1], a2) @ b2
    return x, torch.stack([t0, t1])


def explained(reach: int, steps: int = 150) -> float:
    clt = CrossLayerTranscoder.create(2, 16, 64, reach=reach, k=8, skip=False)
    f = CLTFitter(clt, cfg(lr=3e-2, steps=steps, log_every=10_000, dead_after_tokens=2048))
    for i in range(steps):
        f.step(*cross_layer_data(i))
    f.finish()
    x, t = cross_layer_data(10_000)
    with torch.no_grad():
        y, _ = clt(list(x))
    return float(sum(1 - (ti - yi).var(0).sum() / ti.var(0).sum() for ti, yi in zip(t, y)) / 2)


def test_cross_layer_decoders_explain_what_one_layer_cannot():
    """Measured (mean over the two layers, held out): reach 1 0.75, reach 2 0.96 (layer 1: 0.51 -> 0.95)."""
    one, two = explained(reach=1), explained(reach=2)
    assert two > one + 0.1, (one, two)


def test_refusals_name_the_fix():
    with pytest.raises(AttributionError, match="architecture='topk'"):
        CLTFitter(CrossLayerTranscoder.create(2, 8, 16, architecture="relu"), cfg())
    with pytest.raises(AttributionError, match="train_skip=False"):
        CLTFitter(CrossLayerTranscoder.create(2, 8, 16, k=2), cfg(train_skip=True))
    f = CLTFitter(CrossLayerTranscoder.create(2, 8, 16, k=2), cfg())
    with pytest.raises(AttributionError, match="n_layers=2"):
        f.step(torch.zeros(3, 4, 8), torch.zeros(3, 4, 8))


# --- the stream ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3", dtype=torch.float32)


def windows(model, n: int = 48, seq: int = 12) -> torch.Tensor:
    ids = torch.randint(10, model.W_U.shape[0], (n, seq), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids


def pair(model, optimizer="adam") -> dict[str, Dictionary]:
    """A CLT (two optimiser steps a forward batch) and a per-layer transcoder, side by side."""
    config = TrainConfig(lr=3e-3, optimizer=optimizer, dead_after_tokens=200, dtype="float32", log_every=2)
    clt = CrossLayerTranscoder.create(model.n_layers, model.d_model, 32, reach=2, k=4, skip=False)
    targets = [s.target for s in clt.layers]
    tc = build("topk", model.d_model, 32, "resid_mid.1", target="mlp_out.1", k=4)
    return {
        "clt": Dictionary(clt, TrainConfig(**{**config.__dict__, "batch_size": 44}), clt.hooks, targets),
        "tc": Dictionary(tc, config, "resid_mid.1", "mlp_out.1"),
    }


def weights(d: Dictionary) -> dict:
    return {k: v.clone() for k, v in d.sae.state_dict().items()}


def test_stream_trains_a_clt_beside_a_transcoder_from_one_forward(model, monkeypatch):
    ids, traces = windows(model), []
    real_trace = stream.trace
    monkeypatch.setattr(stream, "trace", lambda *a, **kw: (traces.append(1), real_trace(*a, **kw))[1])
    ds = pair(model)
    logs = train_dictionaries(model, ds, ids, batch_windows=8, progress=False)
    assert len(traces) == len(ids) // 8  # one forward a batch for both
    assert logs["clt"].steps[-1] == 2 * len(ids) // 8 - 1  # two steps a batch
    meta = ds["clt"].sae.meta
    assert meta["training"]["tokens_seen"] == 48 * 11 and meta["curve"]["tokens"][1] == 2 * 44
    assert logs["clt"].explained_variance[-1] > logs["clt"].explained_variance[0]
    assert ds["tc"].sae.meta["training"]["tokens_seen"] == 48 * 11
    with pytest.raises(AttributionError, match="lists of 3"):
        bad = pair(model)["clt"]
        train_dictionaries(model, {"c": Dictionary(bad.sae, bad.config, "resid_mid.0", "mlp_out.0")}, ids)


def test_stream_resumes_a_clt_from_its_checkpoint(model, tmp_path, monkeypatch):
    ids = windows(model)
    whole = pair(model)
    train_dictionaries(model, whole, ids, batch_windows=8, progress=False)
    ckpt, real_step, calls = tmp_path / "run.ckpt", CLTFitter.step, []

    def dying_step(self, xs, ts):
        calls.append(1)
        if len(calls) == 7:  # during the 4th batch (two steps a batch)
            raise KeyboardInterrupt
        return real_step(self, xs, ts)

    monkeypatch.setattr(CLTFitter, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_dictionaries(model, pair(model), ids, batch_windows=8, checkpoint=ckpt, checkpoint_s=0, progress=False)
    monkeypatch.setattr(CLTFitter, "step", real_step)
    resumed = pair(model)
    train_dictionaries(model, resumed, ids, batch_windows=8, checkpoint=ckpt, checkpoint_s=0, progress=False)
    for name in whole:
        for k, v in weights(whole[name]).items():
            torch.testing.assert_close(weights(resumed[name])[k], v, rtol=0, atol=0, msg=f"{name}.{k}")


def test_stream_continues_a_kept_clt(model, tmp_path):
    ids, kept = windows(model), tmp_path / "state.pt"
    longer = pair(model, "signsgd")
    train_dictionaries(model, longer, ids, batch_windows=8, tokens=72 * 11, progress=False)
    train_dictionaries(model, pair(model, "signsgd"), ids, batch_windows=8, tokens=24 * 11, keep=kept, progress=False)
    more = pair(model, "signsgd")
    train_dictionaries(model, more, ids, batch_windows=8, tokens=72 * 11, start=kept, progress=False)
    for name in longer:
        for k, v in weights(longer[name]).items():
            torch.testing.assert_close(weights(more[name])[k], v, rtol=0, atol=0, msg=f"{name}.{k}")
