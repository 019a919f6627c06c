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
- Adam, learning-rate warm-up over 1% of steps and linear decay to zero over the last 20%.
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

NORMALIZE = ("scalar", "dim")


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
    progress: bool = True

    def __post_init__(self):
        self.check()

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


def fit(sae: SAE, batches: Iterable[Tensor], cfg: TrainConfig | None = None) -> TrainLog:
    """Train `sae` in place on batches of activations [batch, d_in]; returns the training log.

    Training runs on the SAE's device (move the SAE first to train on a GPU); batches are moved there. Random
    numbers come from a CPU generator seeded with cfg.seed and are moved, so a seed gives the same SAE on
    any device up to matmul rounding, and the global RNG is not touched.
    """
    cfg = cfg or TrainConfig()
    cfg.check()  # again: fields may have been changed after construction
    if sae.architecture not in ("relu", "topk"):
        raise AttributionError(f"training {sae.architecture!r} SAEs is not supported; train 'relu' or 'topk'")
    device = sae.W_dec.device
    dtype = resolve(cfg.dtype, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    stream = (b.to(device) for b in _batches(batches, cfg.batch_size, cfg.seed))
    first = next(stream, None)
    if first is None or first.shape[0] == 0:
        raise AttributionError("no activations to train on: the corpus is empty")
    if first.shape[-1] != sae.d_in:
        raise AttributionError(f"activations are {first.shape[-1]} wide but the SAE expects d_in={sae.d_in}")
    shift, scale = _normalizer(first.float(), cfg.normalize)  # [d_in] each: x -> (x - shift) * scale
    _init(sae, (first.float() - shift) * scale, gen)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    log = TrainLog(scale=float(scale.mean()))
    since_fired = torch.zeros(sae.d_sae, device=device)
    topk = sae.architecture == "topk"
    bar = tqdm(range(cfg.steps), desc=f"training SAE {sae.hook}", disable=not cfg.progress)
    x = first
    for step in bar:
        if step:
            x = next(stream, None)
            if x is None:
                break
        if not torch.isfinite(x).all():
            raise NumericalError(
                f"training batch {step} holds NaN/inf activations; check the model's weights and the corpus, "
                "or collect activations in float32"
            )
        x = (x.float() - shift) * scale
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg)
        with autocast(device, dtype):
            pre = sae.pre_acts(x)  # [batch, d_sae]; matmuls in `dtype`, parameters and the loss in float32
        if topk:
            # sparse decoding: only the k active rows of W_dec are read and receive gradient (a dense
            # [batch, d_sae] feature matrix and its matmul cost more than the encoder itself)
            vals, idx = pre.topk(sae.k, dim=-1)  # [batch, k]
            vals = torch.relu(vals.float())
            x_hat = _sparse_decode(sae, idx, vals)
            counts = torch.bincount(idx[vals > 0], minlength=sae.d_sae)  # [d_sae] firings in this batch
            l0 = (vals > 0).float().sum(-1).mean()
        else:
            f = sae.activation(pre.float())  # [batch, d_sae]
            with autocast(device, dtype):
                x_hat = sae.decode(f).float()
            counts = (f > 0).sum(0)
            l0 = (f > 0).float().sum(-1).mean()
        err = x - x_hat
        mse = err.pow(2).sum(-1).mean()
        since_fired = torch.where(counts > 0, torch.zeros_like(since_fired), since_fired + x.shape[0])
        dead = since_fired >= cfg.dead_after_tokens
        if topk:
            loss = mse + cfg.aux_coefficient * _aux_k_loss(sae, pre, err, dead, cfg.aux_k)
        else:
            lam = cfg.l1_coefficient * min(1.0, (step + 1) / max(1, cfg.l1_warmup * cfg.steps))
            loss = mse + lam * (f * sae.W_dec.norm(dim=-1)).sum(-1).mean()
        if not torch.isfinite(loss):
            raise NumericalError(
                f"training diverged at step {step}: the loss is {float(loss)}; lower TrainConfig.lr "
                f"(now {cfg.lr}) or train with bf16=False"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if topk:
            _project_out_radial_grad(sae)
        opt.step()
        if topk:
            with torch.no_grad():
                sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            with torch.no_grad():
                ev = 1 - err.var(0).sum() / x.var(0).sum()
            log.steps.append(step)
            log.mse.append(float(mse.detach()))
            log.explained_variance.append(float(ev))
            log.l0.append(float(l0))
            log.dead_fraction.append(float(dead.float().mean()))
            bar.set_postfix(ev=f"{float(ev):.3f}", l0=f"{log.l0[-1]:.1f}", dead=f"{log.dead_fraction[-1]:.1%}")
    _fold_normalizer(sae, shift, scale)
    sae.requires_grad_(False)
    training = {**asdict(cfg), "dtype": dtype_name(dtype)}
    sae.meta.update({"training": training, "scale": log.scale, **{f"final_{k}": v for k, v in log.last().items()}})
    return log


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


def _init(sae: SAE, x: Tensor, gen: torch.Generator) -> None:
    """Decoder rows: random directions (norm 0.1 for ReLU, 1 for TopK); encoder = decoder^T; b_dec = mean."""
    with torch.no_grad():
        w = torch.randn(sae.d_sae, sae.d_in, generator=gen, dtype=sae.W_dec.dtype).to(sae.W_dec.device)
        w /= w.norm(dim=-1, keepdim=True)
        sae.W_dec.copy_(w if sae.architecture == "topk" else 0.1 * w)
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(x.mean(0))
    sae.requires_grad_(True)


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.lr_warmup * cfg.steps))
    decay_start = int((1 - cfg.lr_decay) * cfg.steps)
    if step < warm:
        return (step + 1) / warm
    if step >= decay_start:
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - decay_start))
    return 1.0


def _aux_k_loss(sae: SAE, pre: Tensor, err: Tensor, dead: Tensor, k_aux: int) -> Tensor:
    """Dead features, through their top-k_aux pre-activations, learn to reconstruct the residual error."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k = min(k_aux, n_dead)
    dead_idx = dead.nonzero().squeeze(1)  # [n_dead]
    vals, j = pre[:, dead_idx].topk(k, dim=-1)  # [batch, k] among the dead features only
    recon = _sparse_decode(sae, dead_idx[j], torch.relu(vals.float()), bias=False)
    return (err.detach() - recon).pow(2).sum(-1).mean() / err.detach().pow(2).sum(-1).mean().clamp_min(1e-8)


def _sparse_decode(sae: SAE, idx: Tensor, vals: Tensor, bias: bool = True) -> Tensor:
    """sum_j vals[:, j] W_dec[idx[:, j]] (+ b_dec): [batch, k] indices and values -> [batch, d_in]."""
    out = torch.nn.functional.embedding_bag(idx, sae.W_dec, per_sample_weights=vals, mode="sum")
    return out + sae.b_dec if bias else out


def _project_out_radial_grad(sae: SAE) -> None:
    """With unit-norm decoder rows, drop the gradient component that would only change their norm."""
    if sae.W_dec.grad is None:
        return
    w = sae.W_dec.data
    g = sae.W_dec.grad
    g -= (g * w).sum(-1, keepdim=True) * w


def _normalizer(x: Tensor, how: str) -> tuple[Tensor, Tensor]:
    """(shift, scale), each [d_in], from a first batch x [batch, d_in]; training sees (x - shift) * scale."""
    d_in = x.shape[-1]
    if how == "scalar":
        scale = float((d_in / x.pow(2).sum(-1).mean()).sqrt())
        return torch.zeros(d_in, device=x.device), torch.full((d_in,), scale, device=x.device)
    if how == "dim":
        std = x.std(0)
        return x.mean(0), 1.0 / std.clamp_min(1e-6 * float(std.max()))
    raise AttributionError(f"normalize must be 'scalar' or 'dim', got {how!r}")


def _fold_normalizer(sae: SAE, shift: Tensor, scale: Tensor) -> None:
    """Make the SAE take and return raw activations x, having trained on z = (x - shift) * scale.

    Encoder: z - b_dec = scale * (x - (shift + b_dec / scale)), so W_enc's rows take the scale and b_dec
    becomes shift + b_dec / scale; without b_dec applied to the input, b_enc absorbs -(shift * scale) W_enc.
    Decoder: x_hat = z_hat / scale + shift, so W_dec's columns are divided by the scale.
    """
    with torch.no_grad():
        if not sae.apply_b_dec_to_input:
            sae.b_enc.sub_((shift * scale).to(sae.W_enc.dtype) @ sae.W_enc)
        sae.W_enc.mul_(scale[:, None])
        sae.W_dec.div_(scale[None, :])
        sae.b_dec.copy_(sae.b_dec / scale + shift)
