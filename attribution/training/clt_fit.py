"""Training a cross-layer transcoder (attribution.saes.clt) one batch at a time: `Fitter`'s TopK recipe
(attribution.training.trainer) on every layer at once, with the decoders ahead trained jointly.

- each layer's inputs and targets are normalised as Fitter does (cfg.normalize, fixed by the first batch), and
  a skip path is fitted beforehand and kept fixed: the training target is t - x W_skip;
- init per layer is Fitter's "tied" one (random unit decoder rows, encoder = their transpose, b_enc 0, b_dec
  the mean target); the decoders ahead start at zero, so step 0 is exactly a per-layer set;
- loss = mean over layers l of ||t_l - recon_l||^2 / var_l, recon_l = b_dec_l + sum over sources s of
  f_s W_dec[s -> l], var_l the layer's summed target variance on the first batch (so every layer weighs
  alike), plus AuxK per layer (dead features reconstruct their own layer's residual with its own decoder);
- each feature's whole decoder (reach x d_out) has unit Frobenius norm (the TopK convention: the gradient
  along it is projected out and the norm restored after every step, on every copy sign-SGD keeps).

The step is sparse where the maths is: one dense encoder product per layer, then only the k active (token,
feature) pairs: decodes are embedding bags, and the decoder and encoder gradients are sparse-dense products
over those pairs (topk_step._ByFeature). Each layer has its own optimiser, stepped as soon as its gradients
are known (all gradients come from the same forward), so one set of gradient buffers serves every layer.
At n = 1,024 tokens, 18 layers, d_sae 4,096, d 640, reach 4, k 32 in float32 on a quiet 2-core AVX2 AMD EPYC,
a step costs 1.54x the 18 per-layer transcoders' steps (bench/results/transcoder_set_step.json); the dense
encoder products are a third of it, the embedding bags' backward a tenth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import torch
from torch import Tensor
from torch.nn.functional import embedding_bag

from attribution.cache import digest, sae_fingerprint, weights_digest
from attribution.compute import dtype_name, resolve
from attribution.errors import AttributionError, NumericalError
from attribution.saes.clt import CrossLayerTranscoder
from attribution.training.optim import ScheduleFreeSignSGD, encoder_layout, optimizer, trainable
from attribution.training.topk_step import Workspace, _ByFeature, _cast_encoder
from attribution.training.trainer import (
    TrainConfig,
    TrainLog,
    _finite,
    _fold_normalizer,
    _init,
    _lr_factor,
    _normalizer,
    check_loss,
)


class CLTFitter:
    """A CLT's training state with Fitter's surface: `step(xs, ts)` on inputs [n_layers, n, d_in] and targets
    [n_layers, n, d_out], `log`/`logged`/`postfix()`, `state_dict()`/`load_state_dict()`, and `finish()`, which
    folds the normalisation into the weights so the CLT works in model space."""

    def __init__(self, clt: CrossLayerTranscoder, cfg: TrainConfig):
        cfg.check()
        if not isinstance(clt, CrossLayerTranscoder):
            raise AttributionError(f"CLTFitter trains a CrossLayerTranscoder, got {type(clt).__name__}; use Fitter")
        if clt.architecture != "topk":
            raise AttributionError(
                f"training {clt.architecture!r} cross-layer transcoders is not supported; build it with "
                "CrossLayerTranscoder.create(..., architecture='topk')"
            )
        if cfg.train_skip:
            raise AttributionError(
                "a cross-layer transcoder's skip paths are fitted beforehand and kept fixed: set "
                "TrainConfig(train_skip=False) (fit W_skip by least squares first, e.g. transcoder_defaults.fit_skip)"
            )
        if cfg.init != "tied":
            raise AttributionError(f"a cross-layer transcoder starts from the 'tied' init; got init={cfg.init!r}")
        self.clt, self.cfg = clt, cfg
        self.device = clt.layers[0].W_dec.device
        self.wdtype = clt.layers[0].W_dec.dtype
        # a float64 CLT (exactness checks) computes in float64; else Fitter's compute dtype
        self.dtype = self.wdtype if self.wdtype == torch.float64 else resolve(cfg.dtype, self.device)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step_, self.logged = 0, False
        self.log = TrainLog()
        self.norm: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # [n_layers, d] each: in/out shift, scale
        self.weight: Tensor | None = None  # [n_layers]: 1 / each layer's summed target variance (first batch)
        self.since_fired = torch.zeros(clt.n_layers, clt.d_sae, device=self.device)
        self.opts: list[torch.optim.Optimizer] = []  # one a layer
        self.stand_ins: list[list[tuple[Tensor, Tensor]]] = []
        self.work = Workspace()

    # --- a step ---------------------------------------------------------------------------------------------

    def step(self, xs: Tensor, ts: Tensor) -> None:
        """One optimiser step on inputs xs [n_layers, n, d_in] and targets ts [n_layers, n, d_out]."""
        clt, cfg = self.clt, self.cfg
        d_out = clt.layers[0].W_dec.shape[1]
        if (
            xs.dim() != 3
            or xs.shape[0] != clt.n_layers
            or xs.shape[2] != clt.d_in
            or ts.shape != (*xs.shape[:2], d_out)
        ):
            raise AttributionError(
                f"{clt!r} trains on inputs [n_layers={clt.n_layers}, n, d_in={clt.d_in}] and targets "
                f"[n_layers, n, d_out={d_out}]; got {tuple(xs.shape)} and {tuple(ts.shape)}"
            )
        xs, ts = xs.to(self.device, self.wdtype), ts.to(self.device, self.wdtype)
        with torch.no_grad():  # the skip paths, fitted beforehand, are kept fixed
            ts = torch.stack([t if s.W_skip is None else t - s.skip(x) for s, x, t in zip(clt.layers, xs, ts)])
        for name, t in (("activations", xs), ("targets", ts)):
            if not _finite(t):
                raise NumericalError(
                    f"training batch {self.step_} holds NaN/inf {name}; check the model's weights and the corpus, "
                    "or collect activations in float32"
                )
        if self.norm is None:
            self._start(xs, ts)
        in_shift, in_scale, out_shift, out_scale = self.norm
        xs = (xs - in_shift[:, None]) * in_scale[:, None]
        ts = (ts - out_shift[:, None]) * out_scale[:, None]
        lr = cfg.lr * _lr_factor(self.step_, cfg)
        for opt in self.opts:
            for group in opt.param_groups:
                group["lr"] = lr
        errs, l0, dead = sparse_backward(self, xs, ts, self._apply)
        self.logged = self.step_ % cfg.log_every == 0 or self.step_ == cfg.steps - 1
        if self.logged:
            with torch.no_grad():
                ev = torch.stack([1 - e.var(0).sum() / t.var(0).sum() for e, t in zip(errs, ts)])
                mse = torch.stack([e.pow(2).sum(-1).mean() for e in errs])
            log = self.log
            log.steps.append(self.step_)
            log.mse.append(float(mse.mean()))
            log.explained_variance.append(float(ev.mean()))
            log.l0.append(float(l0))
            log.dead_fraction.append(float(dead.float().mean()))
        self.step_ += 1

    def _apply(self, s: int) -> None:
        """Step layer s's parameters, whose gradients sparse_backward has just set, and renormalise its decoders."""
        clt = self.clt
        w, a = clt.layers[s].W_dec, clt.W_ahead[s]
        with torch.no_grad():
            radial = (w.grad * w).sum(-1) + (a.grad * a).sum((1, 2)) if a.numel() else (w.grad * w).sum(-1)
            w.grad.addcmul_(radial[:, None], w, value=-1)  # [d_sae]: each decoder's gradient along itself
            if a.numel():
                a.grad.addcmul_(radial[:, None, None], a, value=-1)
        for p, q in self.stand_ins[s]:
            q.grad, p.grad = p.grad.T, None
        self.opts[s].step()
        opt = self.opts[s]
        ws = opt.copies(w) if isinstance(opt, ScheduleFreeSignSGD) else [w.data]
        as_ = opt.copies(a) if isinstance(opt, ScheduleFreeSignSGD) and a.numel() else [a.data] * len(ws)
        with torch.no_grad():
            for wc, ac in zip(ws, as_, strict=True):
                norm = (wc.pow(2).sum(-1) + ac.pow(2).sum((1, 2))).sqrt().clamp_min(1e-8)  # [d_sae]
                wc.div_(norm[:, None])
                ac.div_(norm[:, None, None])
        for p in (*clt.layers[s].parameters(), a):
            p.grad = None
        for _, q in self.stand_ins[s]:
            q.grad = None

    def _dead_after(self, s: int, counts: Tensor, n: int) -> Tensor:
        """[d_sae] bool: layer s's features silent for cfg.dead_after_tokens tokens, this batch's counts included."""
        fired = self.since_fired[s]
        self.since_fired[s] = torch.where(counts > 0, torch.zeros_like(fired), fired + n)
        return self.since_fired[s] >= self.cfg.dead_after_tokens

    def _check_loss(self, loss: Tensor) -> None:
        check_loss(loss, self.step_, self.cfg.lr)

    def _start(self, xs: Tensor, ts: Tensor) -> None:
        if xs.shape[1] == 0:
            raise AttributionError("no activations to train on: the corpus is empty")
        how = self.cfg.normalize
        ins = [_normalizer(x.float(), how) for x in xs]
        outs = [_normalizer(t.float(), how) for t in ts]
        self.norm = tuple(torch.stack([p[i] for p in ps]).to(self.wdtype) for ps in (ins, outs) for i in (0, 1))
        in_shift, in_scale, out_shift, out_scale = self.norm
        xn = (xs - in_shift[:, None]) * in_scale[:, None]
        tn = (ts - out_shift[:, None]) * out_scale[:, None]
        self.weight = 1.0 / tn.var(1).sum(-1).clamp_min(1e-8)  # [n_layers]
        for sae, x, t in zip(self.clt.layers, xn, tn):
            _init(sae, t, self.gen, False, "tied", x)
        with torch.no_grad():
            for a in self.clt.W_ahead:
                a.zero_()
        self._optimizers()
        self.log.scale = float(in_scale.mean())

    def _optimizers(self) -> None:
        """One optimiser a layer: its encoder (by its rows-layout stand-in), b_enc, W_dec, b_dec and decoders ahead."""
        self.opts, self.stand_ins = [], []
        for sae, a in zip(self.clt.layers, self.clt.W_ahead):
            encoder_layout(sae, rows=True)
            sae.requires_grad_(True)
            if sae.W_skip is not None:
                sae.W_skip.requires_grad_(False)
            a.requires_grad_(True)
            params, stand_ins = trainable(sae, self.cfg)
            self.opts.append(optimizer(params + ([a] if a.numel() else []), self.cfg))
            self.stand_ins.append(stand_ins)

    # --- the surface Fitter has ------------------------------------------------------------------------------

    def postfix(self) -> dict:
        return self.log.postfix()

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly where this one stopped."""
        if self.norm is None:
            return {"step": 0}
        return {
            "step": self.step_,
            "clt": {k: v.detach().clone() for k, v in self.clt.state_dict().items()},
            "opts": [opt.state_dict() for opt in self.opts],
            "norm": list(self.norm),
            "weight": self.weight.clone(),
            "since_fired": self.since_fired.clone(),
            "log": asdict(self.log),
            "gen": self.gen.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["step"] == 0:
            return
        for sae in self.clt.layers:
            encoder_layout(sae, rows=True)
        self.clt.load_state_dict(state["clt"])  # copies into the parameters, keeping their layout
        self.norm = tuple(t.to(self.device) for t in state["norm"])
        self.weight = state["weight"].to(self.device)
        self._optimizers()
        for opt, s in zip(self.opts, state["opts"], strict=True):
            opt.load_state_dict(s)
        self.since_fired = state["since_fired"].to(self.device)
        self.log = TrainLog(**state["log"])
        self.gen.set_state(state["gen"])
        self.step_ = state["step"]

    def finish(self) -> TrainLog:
        """Fold the normalisation into the weights (the CLT now works in model space) and record the recipe:
        each layer's encoder, own decoder and b_dec as Fitter folds them; a decoder into layer l is divided by
        layer l's output scale."""
        if self.norm is None:
            raise AttributionError("no activations to train on: the corpus is empty")
        clt = self.clt
        for opt in self.opts:
            if isinstance(opt, ScheduleFreeSignSGD):
                opt.use_average()
        in_shift, in_scale, out_shift, out_scale = self.norm
        with torch.no_grad():
            for s, sae in enumerate(clt.layers):
                encoder_layout(sae, rows=False)
                _fold_normalizer(sae, in_shift[s], in_scale[s], out_shift[s], out_scale[s])
                for j in range(clt.reach_of(s) - 1):
                    clt.W_ahead[s][:, j].div_(out_scale[s + j + 1])
        clt.requires_grad_(False)
        training = {**asdict(self.cfg), "dtype": dtype_name(self.dtype), "steps_done": self.step_}
        clt.meta.update(
            {"training": training, "scale": self.log.scale, **{f"final_{k}": v for k, v in self.log.last().items()}}
        )
        return self.log


def sparse_backward(fitter: CLTFitter, xs: Tensor, ts: Tensor, each: Callable[[int], None]):
    """Forward and backward of one step on normalised xs [n_layers, n, d_in] and ts [n_layers, n, d_out]: sets
    layer s's gradients (its encoder's W_enc.grad, b_enc, W_dec, b_dec, and W_ahead[s]) and calls each(s),
    layer by layer; the buffers are reused for the next layer, so `each` must consume them. Returns (each
    layer's error [n, d_out], the mean L0 over layers, dead features [n_layers, d_sae] bool)."""
    clt, cfg, ws = fitter.clt, fitter.cfg, fitter.work
    n_layers, n, k, d_sae = clt.n_layers, xs.shape[1], clt.layers[0].k, clt.d_sae
    d_out = clt.layers[0].W_dec.shape[1]
    sel, vals, aux = [], [], []  # per layer: [n, k] features, their pre-activations, (features, pre) of AuxK
    dead = torch.zeros(n_layers, d_sae, dtype=torch.bool, device=xs.device)
    for s, sae in enumerate(clt.layers):
        with torch.no_grad():
            pre = torch.addmm(
                sae.b_enc.detach().to(fitter.dtype),
                xs[s].to(fitter.dtype),
                _cast_encoder(sae.W_enc.detach(), fitter.dtype),
                out=fitter.work.get("pre", (n, d_sae), fitter.dtype, xs.device),
            )  # [n, d_sae]: the one dense product
            top, idx = pre.topk(k, dim=-1)  # [n, k]
        sel.append(idx)
        vals.append(top.to(fitter.wdtype).requires_grad_())
        dead[s] = fitter._dead_after(s, torch.bincount(idx[top > 0], minlength=d_sae), n)
        n_dead = int(dead[s].sum())
        if n_dead and cfg.aux_k and cfg.aux_coefficient:
            dead_idx = dead[s].nonzero().squeeze(1)
            with torch.no_grad():
                aux_top, j = pre[:, dead_idx].topk(min(cfg.aux_k, n_dead), dim=-1)  # among the dead only
            aux.append((dead_idx[j], aux_top.to(fitter.wdtype).requires_grad_()))
        else:
            aux.append(None)
    acts = [torch.relu(v) for v in vals]
    own = [
        embedding_bag(i, sae.W_dec.detach(), per_sample_weights=a, mode="sum")
        for i, sae, a in zip(sel, clt.layers, acts)
    ]
    ahead = [
        embedding_bag(i, w.detach().reshape(d_sae, -1), per_sample_weights=a, mode="sum") if w.numel() else None
        for i, w, a in zip(sel, clt.W_ahead, acts)
    ]  # [n, (reach_s - 1) * d_out]
    errs, loss = [], 0.0
    for layer in range(n_layers):
        recon = own[layer] + clt.layers[layer].b_dec
        for s in clt.sources(layer)[:-1]:
            j = layer - s - 1
            recon = recon + ahead[s][:, j * d_out : (j + 1) * d_out]
        errs.append(ts[layer] - recon)
        loss = loss + errs[-1].pow(2).sum(-1).mean() * fitter.weight[layer]
    loss = loss / n_layers
    aux_out = []
    for s, sae in enumerate(clt.layers):
        if aux[s] is None:
            continue
        recon = embedding_bag(aux[s][0], sae.W_dec.detach(), per_sample_weights=torch.relu(aux[s][1]), mode="sum")
        e = errs[s].detach()
        aux_loss = (e - recon).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp_min(1e-8)
        loss = loss + cfg.aux_coefficient * aux_loss / n_layers
        aux_out.append(recon)
    fitter._check_loss(loss)
    b_decs = [sae.b_dec for sae in clt.layers]
    aux_vals = [a[1] for a in aux if a is not None]
    heads = [h for h in ahead if h is not None]
    groups = [b_decs, vals, aux_vals, own, heads, aux_out]
    grads = iter(torch.autograd.grad(loss, [t for group in groups for t in group]))
    g_bdec, g_vals, g_aux_vals, g_own, g_heads, g_aux_out = ([next(grads) for _ in group] for group in groups)
    for s, sae in enumerate(clt.layers):
        a = acts[s].detach()
        pairs, g_pre, a_all, g_dec_in = sel[s], g_vals[s], a, g_own[s]
        if aux[s] is not None:
            pairs = torch.cat([pairs, aux[s][0]], dim=1)
            g_pre = torch.cat([g_pre, g_aux_vals.pop(0)], dim=1)
            a_all = torch.cat([a, torch.relu(aux[s][1].detach())], dim=1)
            g_dec_in = torch.cat([g_dec_in, g_aux_out.pop(0)])
        rows = _ByFeature(pairs, d_sae, k_main=k)
        g = ws.get("W_dec.grad", (d_sae, d_out), fitter.wdtype, xs.device)
        sae.W_dec.grad = rows.sum_rows(a_all, g_dec_in, out=g, stacked=aux[s] is not None)
        w = clt.W_ahead[s]
        if w.numel():  # AuxK's pairs write nothing ahead: weight 0
            a_main = torch.cat([a, torch.zeros_like(a_all[:, k:])], dim=1)
            g = ws.get("W_ahead.grad", (d_sae, w.shape[1] * d_out), fitter.wdtype, xs.device)
            w.grad = rows.sum_rows(a_main, g_heads.pop(0), out=g, stacked=False).view(w.shape)
        g = ws.get("W_enc.grad", (d_sae, clt.d_in), fitter.wdtype, xs.device)  # W_enc^T's layout
        sae.W_enc.grad = rows.sum_rows(g_pre, xs[s], out=g, stacked=False).T
        sae.b_enc.grad = torch.zeros_like(sae.b_enc).index_add_(0, pairs.flatten(), g_pre.flatten().to(sae.b_enc.dtype))
        sae.b_dec.grad = g_bdec[s]
        each(s)
    l0 = torch.stack([(a > 0).float().sum(-1).mean() for a in acts]).mean()
    return [e.detach() for e in errs], l0, dead


# --- the stream's bookkeeping (attribution.training.stream) ------------------------------------------------------


def fingerprint(clt: CrossLayerTranscoder) -> str:
    """What a checkpoint's recipe records of a CLT: every layer's fingerprint, the reach and every weight."""
    return digest(
        {"layers": [sae_fingerprint(s) for s in clt.layers], "reach": clt.reach, "weights": weights_digest(clt)}
    )


def shape(clt: CrossLayerTranscoder, layer_shape: Callable) -> list:
    """What a kept state's lineage records of a CLT: its reach and every layer's shape (`layer_shape`)."""
    return ["clt", clt.reach, [layer_shape(s) for s in clt.layers]]
