"""Training an SAE on a stream of activations (the model-free core of `train_sae`).

Follows "Scaling Monosemanticity" and its follow-ups:
- inputs are scaled by one scalar so that E||x||^2 = d_in (the residual norm of gemma-3-270m is ~5,900),
  and that scale is folded into the weights at the end, so the saved SAE works in model space;
  normalize="dim" instead centres and scales each dimension to unit variance (also folded away). Some models
  keep a few "massive" residual dimensions: in gemma-3-270m one of 640 holds 71% of the variance after block
  9, so a plain MSE spends the dictionary on it (dozens of dense features firing on 35-50% of tokens, all
  peaking on the same tokens) while the next layer's RMSNorm gain all but ignores it. Per-dimension
  scaling weighs every direction alike: at that layer it left no feature denser than 10%, raised CE loss
  recovered from 0.92 to 0.96, and made the top emotion features readable (explained variance in model
  space fell from 0.86 to 0.78, since the massive dimension is now reconstructed less exactly);
- ReLU: loss = ||x - x_hat||^2 + lambda * sum_i f_i ||W_dec[i]||, decoder norms left free (the penalty
  weighs them), lambda warmed up linearly over the first 5% of steps;
- TopK: loss = ||x - x_hat||^2 + AuxK (dead features reconstruct the residual error, weight 1/32), decoder
  rows kept at unit norm;
- Adam, learning-rate warm-up over 1% of steps and linear decay to zero over the last 20%; or
  optimizer="signsgd": eai-sparsify's schedule-free sign-SGD (attribution.training.optim), warm-up and no
  decay, so a finished run can be continued on more tokens;
- a transcoder's skip path is fitted beforehand by least squares and kept fixed, or (train_skip=True)
  trained from zero with the features, as eai-sparsify does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attribution.compute import autocast, dtype_name, resolve
from attribution.errors import AttributionError, NumericalError
from attribution.saes.base import SAE
from attribution.training.optim import ScheduleFreeSignSGD, encoder_layout, make_optimizer, transposed_state
from attribution.training.topk_step import Workspace, topk_step

NORMALIZE = ("scalar", "dim", "none")
OPTIMIZERS = ("adam", "signsgd")
INITS = ("tied", "zero_decoder")


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 4096
    lr: float = 4e-4
    l1_coefficient: float = 5.0  # ReLU only; in units of the normalised input (E||x||^2 = d_in)
    l1_warmup: float = 0.05
    lr_warmup: float = 0.01
    lr_decay: float = 0.2
    aux_k: int = 256  # TopK only: dead features used by the auxiliary loss
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int = 1_000_000  # a feature silent for this many tokens counts as dead
    log_every: int = 100
    seed: int = 0  # initialisation and shuffling, from a local generator (the global RNG is left alone)
    # matmul dtype under autocast ("float32", "bfloat16", ...); None: attribution.compute.compute_dtype of the
    # SAE's device (bf16 only where it is native: ~3.5x faster with AMX, ~200x slower on AVX2-only CPUs)
    dtype: str | None = None
    normalize: str = "scalar"  # "scalar": one scale, E||x||^2 = d_in (the paper); "dim": per-dimension z-score
    optimizer: str = "adam"  # or "signsgd": schedule-free sign-SGD (eai-sparsify's default; lr ~1e-2, no decay)
    momentum: float = 0.95  # signsgd only: the schedule-free interpolation
    train_skip: bool = False  # transcoders: train W_skip from zero with the features instead of keeping it fixed
    # "tied": random unit decoder rows, encoder = their transpose; "zero_decoder": eai-sparsify's transcoder
    # init (decoder zero, a random encoder centred on the mean input, b_dec the mean target)
    init: str = "tied"
    progress: bool = True

    def __post_init__(self):
        self.check()

    @property
    def decay_share(self) -> float:
        """The share of the steps over which the learning rate decays to zero: none for schedule-free
        sign-SGD (its running average replaces decay), so only such a run can be continued for more tokens."""
        return 0.0 if self.optimizer == "signsgd" else self.lr_decay

    def check(self) -> None:
        """Raise AttributionError for a value that would train nothing or silently train garbage."""
        for name in ("steps", "batch_size", "log_every", "dead_after_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise AttributionError(f"TrainConfig.{name} must be a whole number >= 1, got {v!r}")
        if isinstance(self.aux_k, bool) or not isinstance(self.aux_k, int) or self.aux_k < 0:
            raise AttributionError(f"TrainConfig.aux_k must be a whole number >= 0, got {self.aux_k!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise AttributionError(f"TrainConfig.lr must be a finite number > 0 (e.g. 4e-4), got {self.lr!r}")
        for name in ("l1_coefficient", "aux_coefficient"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise AttributionError(f"TrainConfig.{name} must be a finite number >= 0, got {v!r}")
        for name in ("l1_warmup", "lr_warmup", "lr_decay"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise AttributionError(f"TrainConfig.{name} is a share of the steps, between 0 and 1; got {v!r}")
        if self.normalize not in NORMALIZE:
            raise AttributionError(f"TrainConfig.normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        if self.optimizer not in OPTIMIZERS:
            raise AttributionError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.init not in INITS:
            raise AttributionError(f"TrainConfig.init must be one of {INITS}, got {self.init!r}")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise AttributionError(f"TrainConfig.momentum must be in [0, 1), got {self.momentum!r}")


@dataclass
class TrainLog:
    steps: list[int] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)  # normalised units
    explained_variance: list[float] = field(default_factory=list)
    l0: list[float] = field(default_factory=list)
    dead_fraction: list[float] = field(default_factory=list)
    scale: float = 1.0

    def last(self) -> dict:
        return {k: v[-1] for k, v in asdict(self).items() if isinstance(v, list) and v}

    def postfix(self) -> dict:
        """The progress bar's view of the last logged step."""
        ev, l0, dead = self.explained_variance[-1], self.l0[-1], self.dead_fraction[-1]
        return {"ev": f"{ev:.3f}", "l0": f"{l0:.1f}", "dead": f"{dead:.1%}"}


def check_loss(loss: Tensor, step: int, lr: float) -> None:
    """Raise NumericalError for a loss that is not finite, naming the step and the fix."""
    if not torch.isfinite(loss):
        raise NumericalError(
            f"training diverged at step {step}: the loss is {float(loss)}; lower TrainConfig.lr "
            f"(now {lr}) or train in float32 (TrainConfig.dtype='float32')"
        )


def fit(sae: SAE, batches: Iterable[Tensor], cfg: TrainConfig | None = None) -> TrainLog:
    """Train `sae` in place on batches of activations [batch, d_in]; returns the training log.

    Training runs on the SAE's device (move the SAE first to train on a GPU); batches are moved there. Random
    numbers come from a CPU generator seeded with cfg.seed and are moved, so a seed gives the same SAE on
    any device up to matmul rounding, and the global RNG is not touched.
    """
    cfg = cfg or TrainConfig()
    fitter = Fitter(sae, cfg)
    bar = tqdm(total=cfg.steps, desc=f"training SAE {sae.hook}", disable=not cfg.progress)
    for x in _batches(batches, cfg.batch_size, cfg.seed):
        fitter.step(x)  # an empty first batch raises: the corpus is empty
        bar.update(1)
        if fitter.logged:
            bar.set_postfix(fitter.postfix())
        if fitter.step_ >= cfg.steps:
            break
    bar.close()
    return fitter.finish()


class Fitter:
    """One dictionary's training state, advanced one batch at a time by `step` (so many dictionaries can
    train from one forward pass, see attribution.training.stream), saved and restored by `state_dict` /
    `load_state_dict` (checkpoints), and made a model-space SAE by `finish`.

    The first batch fixes the input normalisation and initialises the SAE. `step(x, target)` trains on
    activations x [batch, d_in]; a target [batch, d_in] makes it a transcoder step (encode x, reconstruct
    the target, e.g. an MLP's output from its input); without one the SAE reconstructs x.
    """

    def __init__(self, sae: SAE, cfg: TrainConfig):
        cfg.check()  # again: fields may have been changed after construction
        if sae.architecture not in ("relu", "topk"):
            raise AttributionError(f"training {sae.architecture!r} SAEs is not supported; train 'relu' or 'topk'")
        if cfg.train_skip and sae.W_skip is None:
            raise AttributionError("TrainConfig.train_skip needs a transcoder with a skip path (build(..., skip=True))")
        self.sae, self.cfg = sae, cfg
        self.device = sae.W_dec.device
        self.dtype = resolve(cfg.dtype, self.device)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step_, self.logged = 0, False
        self.log = TrainLog()
        self.norm: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # in shift, in scale, out shift, out scale
        self.since_fired = torch.zeros(sae.d_sae, device=self.device)
        self.opt: torch.optim.Optimizer | None = None
        self.stand_ins: list[tuple[Tensor, Tensor]] = []  # (parameter, what the optimiser steps in its place)
        self.work = Workspace()  # buffers the TopK step reuses (not state: a resumed run makes its own)

    def step(self, x: Tensor, target: Tensor | None = None) -> None:
        """One optimiser step on x [batch, d_in] (and a transcoder's target [batch, d_in])."""
        sae, cfg = self.sae, self.cfg
        if x.shape[-1] != sae.d_in:
            raise AttributionError(f"activations are {x.shape[-1]} wide but the SAE expects d_in={sae.d_in}")
        if target is not None and (target.shape != x.shape or sae.apply_b_dec_to_input):
            raise AttributionError(
                "a transcoder target must have the input's shape, and its SAE apply_b_dec_to_input=False "
                "(b_dec lives in the output's space)"
            )
        x = x.to(self.device)
        target = None if target is None else target.to(self.device)
        if target is not None and sae.W_skip is not None and not cfg.train_skip:  # fitted beforehand, kept fixed
            with torch.no_grad():
                target = target.float() - sae.skip(x).float()
        for name, t in (("activations", x), ("targets", target)):
            if t is not None and not _finite(t):
                raise NumericalError(
                    f"training batch {self.step_} holds NaN/inf {name}; check the model's weights and the "
                    "corpus, or collect activations in float32"
                )
        if self.norm is None:
            self._start(x.float(), None if target is None else target.float())
        in_shift, in_scale, out_shift, out_scale = self.norm
        x = (x.float() - in_shift) * in_scale
        t = x if target is None else (target.float() - out_shift) * out_scale
        lr = cfg.lr * _lr_factor(self.step_, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        for p, _ in self.stand_ins:  # the optimiser clears only its stand-in's gradient
            p.grad = None
        step = self._topk_step if sae.architecture == "topk" else self._relu_step
        err, l0, dead = step(x, t)
        for p, q in self.stand_ins:
            q.grad = None if p.grad is None else p.grad.T
        self.opt.step()
        if sae.architecture == "topk":
            with torch.no_grad():
                for w in self.opt.copies(sae.W_dec) if isinstance(self.opt, ScheduleFreeSignSGD) else [sae.W_dec]:
                    w.div_(w.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        self.logged = self.step_ % cfg.log_every == 0 or self.step_ == cfg.steps - 1
        if self.logged:
            with torch.no_grad():
                ev = 1 - err.var(0).sum() / t.var(0).sum()
            log = self.log
            log.steps.append(self.step_)
            log.mse.append(float(err.pow(2).sum(-1).mean()))
            log.explained_variance.append(float(ev))
            log.l0.append(float(l0))
            log.dead_fraction.append(float(dead.float().mean()))
        self.step_ += 1

    def stepped(self, p: Tensor) -> Tensor:
        """What the optimiser steps for parameter p: its stand-in (see optim.make_optimizer), or p itself."""
        return next((q for q0, q in self.stand_ins if q0 is p), p)

    def _topk_step(self, x: Tensor, t: Tensor):
        """Forward and backward of a TopK step, sparse wherever the maths is (attribution.training.topk_step)."""
        return topk_step(self, x, t)

    def _relu_step(self, x: Tensor, t: Tensor):
        sae, cfg = self.sae, self.cfg
        with autocast(self.device, self.dtype):
            pre = sae.pre_acts(x)  # [batch, d_sae]; matmuls in `dtype`, parameters and the loss in float32
        f = sae.activation(pre.float())  # [batch, d_sae]
        with autocast(self.device, self.dtype):
            x_hat = sae.decode(f).float()
        if cfg.train_skip:
            x_hat = x_hat + x @ sae.W_skip
        err = t - x_hat
        mse = err.pow(2).sum(-1).mean()
        dead = self._dead_after((f > 0).sum(0), len(x))
        lam = cfg.l1_coefficient * min(1.0, (self.step_ + 1) / max(1, cfg.l1_warmup * cfg.steps))
        loss = mse + lam * (f * sae.W_dec.norm(dim=-1)).sum(-1).mean()
        self._check_loss(loss)
        loss.backward()
        l0 = (f > 0).float().sum(-1).mean()
        return err.detach(), l0, dead

    def _check_loss(self, loss: Tensor) -> None:
        check_loss(loss, self.step_, self.cfg.lr)

    def _dead_after(self, counts: Tensor, n: int) -> Tensor:
        """[d_sae] bool: the features silent for cfg.dead_after_tokens tokens, once this batch's firing
        counts [d_sae] over its n tokens are recorded."""
        self.since_fired = torch.where(counts > 0, torch.zeros_like(self.since_fired), self.since_fired + n)
        return self.since_fired >= self.cfg.dead_after_tokens

    def _start(self, x: Tensor, target: Tensor | None) -> None:
        if x.shape[0] == 0:
            raise AttributionError("no activations to train on: the corpus is empty")
        in_shift, in_scale = _normalizer(x, self.cfg.normalize)  # [d_in] each: x -> (x - shift) * scale
        out_shift, out_scale = (in_shift, in_scale) if target is None else _normalizer(target, self.cfg.normalize)
        self.norm = in_shift, in_scale, out_shift, out_scale
        t = (x - in_shift) * in_scale if target is None else (target - out_shift) * out_scale
        _init(self.sae, t, self.gen, self.cfg.train_skip, self.cfg.init, (x - in_shift) * in_scale)
        encoder_layout(self.sae, rows=True)
        self.opt, self.stand_ins = make_optimizer(self.sae, self.cfg)
        self.log.scale = float(in_scale.mean())

    def postfix(self) -> dict:
        return self.log.postfix()

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly where this one stopped."""
        if self.norm is None:
            return {"step": 0}
        return {
            "step": self.step_,
            "sae": {k: v.detach().clone() for k, v in self.sae.state_dict().items()},
            "opt": self.opt.state_dict(),
            "norm": list(self.norm),
            "since_fired": self.since_fired.clone(),
            "log": asdict(self.log),
            "gen": self.gen.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["step"] == 0:
            return
        encoder_layout(self.sae, rows=True)
        self.sae.load_state_dict(state["sae"])  # copies into the parameters, keeping their layout
        self.sae.requires_grad_(True)
        self.norm = tuple(t.to(self.device) for t in state["norm"])
        self.opt, self.stand_ins = make_optimizer(self.sae, self.cfg)
        self.opt.load_state_dict(state["opt"])
        transposed_state(self.opt)
        self.since_fired = state["since_fired"].to(self.device)
        self.log = TrainLog(**state["log"])
        self.gen.set_state(state["gen"])
        self.step_ = state["step"]

    def finish(self) -> TrainLog:
        """Fold the normalisation into the weights (the SAE now works in model space) and record the recipe."""
        if self.norm is None:
            raise AttributionError("no activations to train on: the corpus is empty")
        if isinstance(self.opt, ScheduleFreeSignSGD):
            self.opt.use_average()
        encoder_layout(self.sae, rows=False)
        if self.cfg.train_skip:
            _fold_skip(self.sae, *self.norm)
        _fold_normalizer(self.sae, *self.norm)
        self.sae.requires_grad_(False)
        training = {**asdict(self.cfg), "dtype": dtype_name(self.dtype), "steps_done": self.step_}
        self.sae.meta.update(
            {"training": training, "scale": self.log.scale, **{f"final_{k}": v for k, v in self.log.last().items()}}
        )
        return self.log


def _finite(t: Tensor) -> bool:
    """Whether every value of t is finite. A sum is finite only if all its terms are, so one reduction
    settles the usual case; the elementwise check runs only when the sum is not (NaN/inf, or overflow)."""
    return bool(torch.isfinite(t.sum(dtype=torch.float32))) or bool(torch.isfinite(t).all())


def _batches(batches: Iterable[Tensor], size: int, seed: int = 0) -> Iterator[Tensor]:
    """Re-chunk [n, d] tensors (or one big tensor) into batches of `size` rows, in epochs when `batches`
    can be iterated again (a list, a tensor, a cache on disk); a one-shot iterator is read once."""
    if isinstance(batches, Tensor):
        yield from _shuffled(batches.reshape(-1, batches.shape[-1]), size, seed)
        return

    def epochs():
        while True:
            empty = True
            for b in batches:
                empty = False
                yield b
            if empty or iter(batches) is batches:
                return

    buf, n = [], 0
    for b in epochs():
        b = b.reshape(-1, b.shape[-1])
        buf.append(b)
        n += b.shape[0]
        while n >= size:
            cat = torch.cat(buf)
            yield cat[:size]
            buf, n = [cat[size:]], n - size
    if n:
        yield torch.cat(buf)


def _shuffled(x: Tensor, size: int, seed: int = 0) -> Iterator[Tensor]:
    """Batches of an in-memory [n, d] tensor, reshuffled every epoch (seeded), endlessly. The permutation is
    drawn on the CPU (the same on every device) and moved to x's device."""
    if len(x) == 0:
        return
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=gen).to(x.device)
        for i in range(0, len(x) - size + 1 if len(x) >= size else 1, size):
            yield x[perm[i : i + size]]


def _init(
    sae: SAE, t: Tensor, gen: torch.Generator, train_skip: bool = False, how: str = "tied", x: Tensor | None = None
) -> None:
    """From the first batch's target t (= the normalised input x for an SAE). "tied": decoder rows random
    directions (norm 0.1 for ReLU, 1 for TopK), encoder = decoder^T, b_enc = 0. "zero_decoder" (eai-sparsify's
    transcoder init): decoder zero, encoder columns random unit directions, b_enc = -mean(x) W_enc (every
    feature starts centred on the input's mean). Both: b_dec = mean(t); a trained skip path starts at zero."""
    with torch.no_grad():
        w = torch.randn(sae.d_sae, sae.d_in, generator=gen, dtype=sae.W_dec.dtype).to(sae.W_dec.device)
        w /= w.norm(dim=-1, keepdim=True)
        if how == "zero_decoder":
            sae.W_dec.zero_()
            sae.W_enc.copy_(w.T)
            mean = (x if x is not None else t).mean(0) - (t.mean(0) if sae.apply_b_dec_to_input else 0)
            sae.b_enc.copy_(-mean @ sae.W_enc)  # the encoder reads x - b_dec when apply_b_dec_to_input
        else:
            sae.W_dec.copy_(w if sae.architecture == "topk" else 0.1 * w)
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_enc.zero_()
        sae.b_dec.copy_(t.mean(0))
        if train_skip:
            sae.W_skip.zero_()
    sae.requires_grad_(True)
    if sae.W_skip is not None:
        sae.W_skip.requires_grad_(train_skip)


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.lr_warmup * cfg.steps))
    decay_start = int((1 - cfg.decay_share) * cfg.steps)
    if step < warm:
        return (step + 1) / warm
    if step >= decay_start:
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - decay_start))
    return 1.0


def _normalizer(x: Tensor, how: str) -> tuple[Tensor, Tensor]:
    """(shift, scale), each [d_in], from a first batch x [batch, d_in]; training sees (x - shift) * scale."""
    d_in = x.shape[-1]
    if how == "scalar":
        scale = float((d_in / x.pow(2).sum(-1).mean()).sqrt())
        return torch.zeros(d_in, device=x.device), torch.full((d_in,), scale, device=x.device)
    if how == "none":
        return torch.zeros(d_in, device=x.device), torch.ones(d_in, device=x.device)
    if how == "dim":
        std = x.std(0)
        return x.mean(0), 1.0 / std.clamp_min(1e-6 * float(std.max()))
    raise AttributionError(f"normalize must be one of {NORMALIZE}, got {how!r}")


def _fold_skip(sae: SAE, shift: Tensor, scale: Tensor, out_shift: Tensor, out_scale: Tensor) -> None:
    """A skip path S trained in the normalised space (t_n = x_n S + ...) in model space: W_skip = diag(scale)
    S diag(1 / out_scale), and its constant -(shift * scale) S lands in b_dec (before b_dec is folded)."""
    with torch.no_grad():
        s = sae.W_skip.detach().clone()
        sae.b_dec.sub_((shift * scale) @ s)
        sae.W_skip.copy_(scale[:, None] * s / out_scale[None, :])
        sae.W_skip.requires_grad_(False)


def _fold_normalizer(
    sae: SAE, shift: Tensor, scale: Tensor, out_shift: Tensor | None = None, out_scale: Tensor | None = None
) -> None:
    """Make the SAE take and return raw activations x, having trained on z = (x - shift) * scale (and, for a
    transcoder, to reconstruct targets normalised by out_shift and out_scale; default: the input's).

    Encoder: z - b_dec = scale * (x - (shift + b_dec / scale)), so W_enc's rows take the scale and b_dec
    becomes shift + b_dec / scale; without b_dec applied to the input, b_enc absorbs -(shift * scale) W_enc.
    Decoder: x_hat = z_hat / out_scale + out_shift, so W_dec's columns are divided by the output's scale.
    """
    out_shift = shift if out_shift is None else out_shift
    out_scale = scale if out_scale is None else out_scale
    with torch.no_grad():
        if not sae.apply_b_dec_to_input:
            sae.b_enc.sub_((shift * scale).to(sae.W_enc.dtype) @ sae.W_enc)
        sae.W_enc.mul_(scale[:, None])
        sae.W_dec.div_(out_scale[None, :])
        sae.b_dec.copy_(sae.b_dec / out_scale + out_shift)
